//! `ca-bench rotation`: does issuance keep its pace through the CA's transitions (issue 16,
//! item 10)? A closed-loop load of `CreateCertificate` runs against an in-process server on
//! Postgres while, `--gap` seconds apart, the CA performs each transition of SPEC 10: an
//! intermediate rotation, a root publication, the root's activation and an emergency revocation
//! of the active generation. Every answer's completion time is kept; the issuance rate in the
//! second after each transition (and the worst latency in the three seconds after it) is
//! printed next to the steady rate before the first, median of `--runs` runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::grpc::ClientKind;
use crate::grpc::load::{BenchRequest, Conn};
use crate::process::{ServerMode, Sut};

const TRANSITIONS: [&str; 4] = [
    "intermediate rotation",
    "root published",
    "root activated",
    "emergency revocation",
];

/// One run: the steady rate, then per transition (rate in its first second, rate in its first
/// three seconds, worst latency in those three seconds).
struct RunFigures {
    steady: f64,
    transitions: Vec<(f64, f64, f64)>,
}

pub async fn bench(clients: usize, gap: Duration, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(gap >= Duration::from_secs(4), "--gap is at least 4 s");
    let mut all = Vec::new();
    for _ in 0..runs.max(1) {
        all.push(run(clients, gap).await?);
    }
    println!(
        "issuance through the CA's transitions (Postgres, in-process server, {clients} closed-loop clients, P-256; median of {} runs)",
        all.len()
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let steady = median(all.iter().map(|r| r.steady).collect());
    println!(
        "{:<24} {:>12} {:>10} {:>12} {:>10} {:>14}",
        "phase", "1st s /s", "ratio", "3 s /s", "ratio", "max ms (3 s)"
    );
    println!(
        "{:<24} {:>12.0} {:>10} {:>12.0} {:>10} {:>14}",
        "steady (before)", steady, "1.00", steady, "1.00", "-"
    );
    for (k, name) in TRANSITIONS.iter().enumerate() {
        let first = median(all.iter().map(|r| r.transitions[k].0).collect());
        let three = median(all.iter().map(|r| r.transitions[k].1).collect());
        let worst = median(all.iter().map(|r| r.transitions[k].2).collect());
        println!(
            "{name:<24} {first:>12.0} {:>10.2} {three:>12.0} {:>10.2} {worst:>14.1}",
            first / steady,
            three / steady
        );
    }
    Ok(())
}

async fn run(clients: usize, gap: Duration) -> anyhow::Result<RunFigures> {
    let kube = Arc::new(ca_tests::kube::FakeKube::new());
    let sut = Sut::start(ServerMode::InProcess, ca_tests::Backend::Postgres, &kube).await?;
    let Some((runtime, server)) = sut.in_process() else {
        anyhow::bail!("the rotation benchmark needs the in-process server");
    };
    let ca = server.server.ca.clone();
    let admin = server.admin_client();
    let kek = Arc::new(ca_server::keys::Kek::load_or_create(&server.config.kek_file)?.0);
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local")?;
    let max_wait = server.config.trust_domains[0].root_activation_max_wait;
    let target = sut.target();
    let requests = Arc::new(BenchRequest::workload_requests(
        ca_client::KeyType::EcdsaP256,
        64,
    )?);
    // Completion times (seconds from the start) and latencies of every answer.
    let done: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + gap * (TRANSITIONS.len() as u32 + 1) + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let token = kube.token("bench", &format!("r{i}"));
        let connection = Conn::connect(
            ClientKind::H2,
            &target,
            &token,
            crate::h2load::HeaderStyle::GrpcGo,
        )
        .await?;
        let (requests, done, errors) = (requests.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = i;
            while Instant::now() < deadline {
                let t = Instant::now();
                match connection.call(&requests[n % requests.len()]).await {
                    Ok(_) => mine.push((
                        started.elapsed().as_secs_f64(),
                        t.elapsed().as_secs_f64() * 1000.0,
                    )),
                    Err(()) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                n += clients;
            }
            done.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(mine);
        }));
    }
    // The transitions, `gap` apart.
    let mut at = Vec::new();
    for (k, name) in TRANSITIONS.iter().enumerate() {
        tokio::time::sleep_until((started + gap * (k as u32 + 1)).into()).await;
        at.push(started.elapsed().as_secs_f64());
        match k {
            0 => {
                admin.rotate("cluster.local", "intermediate").await?;
            }
            1 => {
                admin.rotate("cluster.local", "root").await?;
            }
            2 => {
                // Activation at the end of its maximum wait, as the lifecycle job would.
                let later = OffsetDateTime::now_utc()
                    + time::Duration::seconds(max_wait.as_secs() as i64 + 1);
                // On the server's runtime, where its database connections live.
                let (server_ca, kek) = (ca.clone(), kek.clone());
                runtime
                    .spawn(async move { server_ca.lifecycle_tick(&kek, later, true).await })
                    .await?;
                anyhow::ensure!(
                    ca.authorities().prepared(&td).is_none(),
                    "the root did not activate"
                );
            }
            _ => {
                let active = ca
                    .authorities()
                    .get(&td)
                    .map(|a| i64::from(a.generation))
                    .unwrap_or(0);
                admin
                    .revoke_generation("cluster.local", active, "cACompromise")
                    .await?;
            }
        }
        eprintln!("{name} at {:.1} s", at[k]);
    }
    for task in tasks {
        task.await?;
    }
    let done = done
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        errors == 0,
        "{errors} requests failed during the transitions"
    );
    let rate = |from: f64, to: f64| {
        done.iter().filter(|(t, _)| *t >= from && *t < to).count() as f64 / (to - from)
    };
    let worst = |from: f64, to: f64| {
        done.iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, l)| *l)
            .fold(0.0, f64::max)
    };
    // Steady: the seconds before the first transition, after a 2 s warm-up.
    let steady = rate(2.0, at[0]);
    let transitions = at
        .iter()
        .map(|t| (rate(*t, t + 1.0), rate(*t, t + 3.0), worst(*t, t + 3.0)))
        .collect();
    let database_url = sut.database_url().to_owned();
    sut.stop().await?;
    ca_tests::drop_postgres_database(&database_url).await?;
    Ok(RunFigures {
        steady,
        transitions,
    })
}
