//! Faults of the database under load (SPEC 11): three replicas serving a steady stream of
//! workload issuances while their Postgres (a private cluster: its own directory and port, so it
//! can be killed) is killed with SIGKILL and restarted ten times in a row, or while the network
//! to it is cut for 5 s and for 15 s. After each scenario: every certificate any client received
//! has its committed record (0 unrecorded), no serial twice, the audit chain verifies, every
//! replica was not ready during the outage and ready again within 10 s of the database's
//! return, clients got `UNAVAILABLE` (or were shed), never anything else, and the CRLs the
//! replicas served while certificates were being revoked through them had strictly increasing
//! numbers (`CrlWatch`). `cactl audit verify` checks the chain through a replica's admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ca_client::{Error, KeyType, TokenAuth};
use ca_tests::TestServer;
use ca_tests::kube::FakeKube;
use ca_tests::private_postgres::PrivatePostgres;
use ca_tests::proxy::Proxy;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Default)]
struct Outcomes {
    /// (issuer key id as hex of the leaf's AKI, serial) of every certificate received.
    received: Vec<(String, String)>,
    /// gRPC status code -> count, for refusals.
    refused: BTreeMap<u16, usize>,
    /// Open-loop ticks skipped because 64 requests of that replica were already in flight.
    skipped: usize,
    /// Successful renewals over mutual TLS (also counted in `received`).
    renewals: usize,
    /// Serials of the open-loop load's certificates not yet revoked (`CrlWatch` revokes them;
    /// the renewing workloads' certificates are never revoked, their renewals must go on).
    revocable: Vec<String>,
}

/// Records one answer: the certificate's (issuer, serial), or the refusal's gRPC code. Returns
/// the serial of a received certificate.
fn record(outcomes: &Mutex<Outcomes>, result: Result<Vec<String>, Error>) -> Option<String> {
    match result {
        Ok(chain) => {
            let der = pem::parse(&chain[0]).unwrap().into_contents();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let aki = cert
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| hex::encode(k.0))
                    }
                    _ => None,
                })
                .unwrap();
            let serial = hex::encode(cert.raw_serial());
            outcomes
                .lock()
                .unwrap()
                .received
                .push((aki, serial.clone()));
            Some(serial)
        }
        Err(Error::Server { status, .. }) => {
            *outcomes.lock().unwrap().refused.entry(status).or_default() += 1;
            None
        }
        Err(other) => panic!("not a gRPC status: {other:?}"),
    }
}

/// Records an answer of the open-loop load: its certificate may be revoked later.
fn record_revocable(outcomes: &Mutex<Outcomes>, result: Result<Vec<String>, Error>) {
    if let Some(serial) = record(outcomes, result) {
        outcomes.lock().unwrap().revocable.push(serial);
    }
}

/// One CRL as a replica served it.
struct SeenCrl {
    replica: usize,
    number: u64,
    der: Vec<u8>,
    revoked: BTreeSet<String>,
    at: Instant,
}

/// The CRLs of a scenario (SPEC 11: CRL numbers strictly increase). Every 300 ms one delivered
/// certificate of the open-loop load is revoked through a replica's admin API, each replica in
/// turn (refused while the database is away, as expected), and every replica's CRL is fetched.
struct CrlWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SeenCrl>>>,
    revoked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CrlWatch {
    /// `replicas`: each replica's public HTTP base URL and an admin client for it.
    fn start(
        replicas: Vec<(String, ca_client::AdminClient)>,
        outcomes: Arc<Mutex<Outcomes>>,
    ) -> CrlWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let revoked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopping, seen_by_task, revoked_by_task) =
            (stop.clone(), seen.clone(), revoked.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut tick = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tick += 1;
                let serial = outcomes.lock().unwrap().revocable.pop();
                if let Some(serial) = serial {
                    let admin = &replicas[tick % replicas.len()].1;
                    if admin.revoke(&serial, "keyCompromise").await.is_ok() {
                        revoked_by_task.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for (i, (base, _)) in replicas.iter().enumerate() {
                    let fetched = http
                        .get(format!("{base}/v1/crl/cluster.local"))
                        .send()
                        .await;
                    let Ok(response) = fetched else { continue };
                    if response.status() != 200 {
                        continue;
                    }
                    let Ok(der) = response.bytes().await else {
                        continue;
                    };
                    let (_, crl) =
                        x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                            .unwrap();
                    let crl = SeenCrl {
                        replica: i,
                        number: u64::try_from(crl.crl_number().unwrap()).unwrap(),
                        revoked: crl
                            .iter_revoked_certificates()
                            .map(|r| hex::encode(r.raw_serial()))
                            .collect(),
                        der: der.to_vec(),
                        at: Instant::now(),
                    };
                    seen_by_task.lock().unwrap().push(crl);
                }
            }
        });
        CrlWatch {
            stop,
            seen,
            revoked,
            task,
        }
    }

    /// The highest number seen before `faults_from`, and the highest seen at all.
    fn highest(&self, faults_from: Instant) -> (u64, u64) {
        let seen = self.seen.lock().unwrap();
        let before = seen.iter().filter(|c| c.at < faults_from).map(|c| c.number);
        let all = seen.iter().map(|c| c.number);
        (before.max().unwrap_or(0), all.max().unwrap_or(0))
    }

    /// Waits (at most 20 s) until a replica serves a CRL numbered above every CRL seen before
    /// `faults_from`, stops, and checks: one number is one CRL (never two different ones), no
    /// replica's number ever goes back (so each replica's successive CRLs have strictly
    /// increasing numbers), and a higher number lists every serial a lower one listed.
    async fn finish(mut self, faults_from: Instant) -> String {
        let wait = Instant::now();
        loop {
            let (before, last) = self.highest(faults_from);
            if last > before || wait.elapsed() > Duration::from_secs(20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.unwrap();
        let (before, last) = self.highest(faults_from);
        assert!(
            last > before,
            "no CRL numbered above {before} (the highest before the faults) after them"
        );
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let mut by_number: BTreeMap<u64, &SeenCrl> = BTreeMap::new();
        for crl in &seen {
            if let Some(other) = by_number.insert(crl.number, crl) {
                assert!(
                    other.der == crl.der,
                    "CRL number {} names two different CRLs (replicas {} and {})",
                    crl.number,
                    other.replica,
                    crl.replica
                );
            }
        }
        let ordered: Vec<&SeenCrl> = by_number.values().copied().collect();
        for pair in ordered.windows(2) {
            assert!(
                pair[1].revoked.is_superset(&pair[0].revoked),
                "CRL {} lists less than CRL {}",
                pair[1].number,
                pair[0].number
            );
        }
        let mut last_of = BTreeMap::new();
        for crl in &seen {
            let previous = last_of.insert(crl.replica, crl.number).unwrap_or(0);
            assert!(
                crl.number >= previous,
                "replica {} served CRL {} after CRL {previous}",
                crl.replica,
                crl.number
            );
        }
        format!(
            "{} CRLs fetched, {} distinct numbers up to {last} ({before} before the faults), {} revocations",
            seen.len(),
            ordered.len(),
            self.revoked.load(Ordering::Relaxed)
        )
    }
}

/// `cactl audit verify` through a replica's admin API: the whole chain, every event.
fn cactl_audit_verify(admin_url: &str, token: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, token).unwrap();
    let output = std::process::Command::new(ca_tests::bin("cactl"))
        .args(["--admin", admin_url, "--admin-token-file"])
        .arg(&token_file)
        .args(["--output", "json", "audit", "verify"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cactl audit verify: {stdout}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["intact"], true, "{stdout}");
    answer["events"].as_u64().unwrap()
}

/// Every certificate a client received has its record in the database at `url`, no serial came
/// twice, and the audit chain verifies over all its events; returns how many events.
async fn delivered_were_recorded(outcomes: &Outcomes, url: &str) -> usize {
    let store = ca_server::store::Store::open(&ca_server::store::StoreOptions::new(url))
        .await
        .unwrap();
    let mut unrecorded = 0;
    for (issuer, serial) in &outcomes.received {
        if store.certificate(issuer, serial).await.unwrap().is_none() {
            unrecorded += 1;
        }
    }
    let distinct: BTreeSet<_> = outcomes.received.iter().collect();
    assert_eq!(unrecorded, 0, "certificates delivered without a record");
    assert_eq!(distinct.len(), outcomes.received.len(), "a serial twice");
    let mut events = Vec::new();
    let mut before = None;
    loop {
        let page = store.audit_page(before, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.id);
        events.extend(page);
    }
    events.reverse();
    ca_server::audit::verify(&events).expect("audit chain");
    store.close().await;
    events.len()
}

async fn ready(server: &TestServer) -> bool {
    reqwest::get(format!("{}/readyz", server.http_url()))
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Three replicas on one database with a load client each.
struct Cluster {
    replicas: Vec<TestServer>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
    load: Vec<tokio::task::JoinHandle<()>>,
    crls: CrlWatch,
    _kek: tempfile::TempDir,
}

impl Cluster {
    async fn start(url: &str) -> Cluster {
        let kube = FakeKube::new();
        let shared = tempfile::tempdir().unwrap();
        let kek_file = shared.path().join("kek");
        let mut replicas = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let jwks = dir.path().join("jwks.json");
            kube.write_jwks(&jwks);
            let mut config = ca_server::config::Config::ephemeral(dir.path(), url);
            config.kek_file = kek_file.clone();
            config.db_max_connections = 4;
            config.clusters = ca_server::config::Config::from_toml(&format!(
                "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"{}\"\njwks_file = \"{}\"\n",
                ca_tests::kube::ISSUER,
                jwks.display()
            ))
            .unwrap()
            .clusters;
            replicas.push(TestServer::start_with(config, dir).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let mut load = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            // Open loop: a request every 10 ms per replica (about 300/s in all), whatever the
            // answers' pace, with at most 64 in flight per replica (beyond, the tick is skipped
            // and counted).
            let client = replica.grpc_client(None).await;
            let tokens: Vec<String> = (0..4)
                .map(|n| kube.token("default", &format!("app-{i}-{n}")))
                .collect();
            let (stop_load, outcomes_load) = (stop.clone(), outcomes.clone());
            let load_client = client.clone();
            load.push(tokio::spawn(async move {
                let client = load_client;
                let csr = Arc::new(ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap());
                let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
                let mut ticker = tokio::time::interval(Duration::from_millis(10));
                let mut requests = tokio::task::JoinSet::new();
                let mut n = 0usize;
                while !stop_load.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        outcomes_load.lock().unwrap().skipped += 1;
                        continue;
                    };
                    let auth = TokenAuth {
                        token: Some(tokens[n % tokens.len()].clone()),
                        cluster_id: Some("Kubernetes".to_owned()),
                    };
                    n += 1;
                    let (client, csr, outcomes) =
                        (client.clone(), csr.clone(), outcomes_load.clone());
                    requests.spawn(async move {
                        let result = client
                            .create_certificate(&csr.csr_pem, 3600, &auth, &BTreeMap::new())
                            .await;
                        record_revocable(&outcomes, result);
                        drop(permit);
                    });
                    while requests.try_join_next().is_some() {}
                }
                while requests.join_next().await.is_some() {}
            }));
            // A renewing workload: renews over mutual TLS with its current certificate, back to
            // back; after a failure it keeps its certificate and tries again.
            let trust = replica.serving_trust_pem();
            let address = replica.server.grpc_addr.to_string();
            let first_key = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
            let first = client
                .create_certificate(
                    &first_key.csr_pem,
                    3600,
                    &TokenAuth {
                        token: Some(kube.token("default", &format!("renewer-{i}"))),
                        cluster_id: Some("Kubernetes".to_owned()),
                    },
                    &BTreeMap::new(),
                )
                .await
                .unwrap();
            let mut identity = (
                first[..first.len() - 1].concat().into_bytes(),
                first_key.key_pem.as_bytes().to_vec(),
            );
            let (stop_renew, outcomes_renew) = (stop.clone(), outcomes.clone());
            load.push(tokio::spawn(async move {
                while !stop_renew.load(Ordering::Relaxed) {
                    let next = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
                    let connected =
                        ca_client::WorkloadClient::connect(&ca_client::ConnectOptions {
                            address: address.clone(),
                            ca_pem: trust.clone(),
                            server_name: Some("localhost".to_owned()),
                            client_identity: Some(identity.clone()),
                        })
                        .await;
                    let Ok(renewing) = connected else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let result = renewing
                        .create_certificate(
                            &next.csr_pem,
                            3600,
                            &TokenAuth::default(),
                            &BTreeMap::new(),
                        )
                        .await;
                    match &result {
                        Ok(chain) => {
                            identity = (
                                chain[..chain.len() - 1].concat().into_bytes(),
                                next.key_pem.as_bytes().to_vec(),
                            );
                            outcomes_renew.lock().unwrap().renewals += 1;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    record(&outcomes_renew, result);
                }
            }));
        }
        let crls = CrlWatch::start(
            replicas
                .iter()
                .map(|r| (r.http_url(), r.admin_client()))
                .collect(),
            outcomes.clone(),
        );
        Cluster {
            replicas,
            stop,
            outcomes,
            load,
            crls,
            _kek: shared,
        }
    }

    fn received(&self) -> usize {
        self.outcomes.lock().unwrap().received.len()
    }

    /// Every replica says not ready within 10 s.
    async fn all_unready(&self, what: &str) {
        let start = Instant::now();
        for replica in &self.replicas {
            while ready(replica).await {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{what}: a replica stayed ready without its database"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Every replica ready again within 10 s; then issuance resumes. Returns the recovery time.
    async fn all_ready_and_issuing(&self, what: &str) -> Duration {
        let back = Instant::now();
        for replica in &self.replicas {
            while !ready(replica).await {
                assert!(
                    back.elapsed() < Duration::from_secs(10),
                    "{what}: a replica was not ready 10 s after the database returned"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let recovered = back.elapsed();
        let before = self.received();
        while self.received() <= before {
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{what}: no issuance after recovery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        recovered
    }

    /// Checks the CRLs served since `faults_from` (the first fault), stops the load and checks
    /// what was delivered against the database at `direct_url`, and the audit chain with
    /// `cactl`. Returns a one-line report.
    async fn finish(
        self,
        direct_url: &str,
        faults_from: Instant,
        recoveries: &[Duration],
    ) -> String {
        let crls = self.crls.finish(faults_from).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.load {
            task.await.unwrap();
        }
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        let audited = delivered_were_recorded(&outcomes, direct_url).await;
        let (admin, token) = (
            self.replicas[0].admin_url(),
            self.replicas[0].admin_token.clone(),
        );
        let verified = tokio::task::spawn_blocking(move || cactl_audit_verify(&admin, &token))
            .await
            .unwrap();
        // Refusals were only "retry later": UNAVAILABLE (14) or RESOURCE_EXHAUSTED (8).
        assert!(
            outcomes
                .refused
                .keys()
                .all(|code| *code == 14 || *code == 8),
            "{:?}",
            outcomes.refused
        );
        assert!(
            outcomes.refused.get(&14).copied().unwrap_or(0) > 0,
            "the outages were seen"
        );
        for replica in self.replicas {
            replica.server.shutdown().await;
        }
        format!(
            "{} issued ({} of them mTLS renewals), refused {:?}, {} open-loop ticks skipped, 0 unrecorded, {} audit events verified ({} by cactl audit verify), {crls}, slowest recovery {:.1} s",
            outcomes.received.len(),
            outcomes.renewals,
            outcomes.refused,
            outcomes.skipped,
            audited,
            verified,
            recoveries
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_and_restarted_ten_times_under_load() {
    let postgres = PrivatePostgres::start(false);
    let cluster = Cluster::start(&postgres.url()).await;
    let mut recoveries = Vec::new();
    let faults_from = Instant::now() + Duration::from_millis(700);
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        postgres.kill();
        cluster.all_unready(&format!("kill {round}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        postgres.restart();
        recoveries.push(
            cluster
                .all_ready_and_issuing(&format!("kill {round}"))
                .await,
        );
    }
    let report = cluster
        .finish(&postgres.url(), faults_from, &recoveries)
        .await;
    println!("10 kills: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_to_postgres_cut_for_5_and_15_seconds_under_load() {
    let postgres = PrivatePostgres::start(false);
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], postgres.port))).await;
    let proxied = postgres.url().replace(
        &format!("127.0.0.1:{}", postgres.port),
        &proxy.addr.to_string(),
    );
    let cluster = Cluster::start(&proxied).await;
    let mut recoveries = Vec::new();
    let faults_from = Instant::now() + Duration::from_secs(1);
    for seconds in [5, 15] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.cut();
        cluster.all_unready(&format!("cut {seconds} s")).await;
        let during = cluster.received();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        assert!(
            cluster.received() <= during + 12,
            "certificates kept coming during the cut"
        );
        proxy.restore();
        recoveries.push(
            cluster
                .all_ready_and_issuing(&format!("cut {seconds} s"))
                .await,
        );
    }
    let report = cluster
        .finish(&postgres.url(), faults_from, &recoveries)
        .await;
    println!("cuts of 5 s and 15 s: {report}");
}

/// A `ca-server` process (the release or debug binary), so it can be killed with SIGKILL.
struct ReplicaProcess {
    child: std::process::Child,
    config: std::path::PathBuf,
    grpc: u16,
    http: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ReplicaProcess {
    fn start(url: &str, kek: &std::path::Path, jwks: &std::path::Path) -> ReplicaProcess {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        let text = format!(
            "database_url = {url:?}\ndata_dir = {data:?}\ndb_max_connections = 4\n\
             [listen]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\n\
             [keys]\nkek_file = {kek:?}\n[admin]\nbootstrap_token_file = {token:?}\n\
             [[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"{issuer}\"\njwks_file = {jwks:?}\n",
            data = dir.path().join("data").display().to_string(),
            kek = kek.display().to_string(),
            token = dir.path().join("admin.token").display().to_string(),
            issuer = ca_tests::kube::ISSUER,
            jwks = jwks.display().to_string(),
        );
        let config = dir.path().join("ca.toml");
        std::fs::write(&config, text).unwrap();
        let child = Self::spawn(&config);
        ReplicaProcess {
            child,
            config,
            grpc,
            http,
            admin,
            dir,
        }
    }

    fn spawn(config: &std::path::Path) -> std::process::Child {
        std::process::Command::new(ca_tests::bin("ca-server"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    /// This replica's bootstrap admin token (written at its first start).
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin.token")).unwrap()
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Waits until ready; returns how long it took.
    async fn wait_ready(&self, what: &str) -> Duration {
        let start = Instant::now();
        while !self.ready().await {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: not ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.config);
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replicas as processes: one killed with SIGKILL under load (its group commits cut midway),
/// then restarted; then every replica restarted in turn (SIGTERM, a rolling restart) under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_killed_and_rolled_under_load() {
    let postgres = PrivatePostgres::start(false);
    let url = postgres.url();
    let kube = FakeKube::new();
    let shared = tempfile::tempdir().unwrap();
    let kek = shared.path().join("kek");
    let jwks = shared.path().join("jwks.json");
    kube.write_jwks(&jwks);
    // The first starts alone (it makes the CA), then the others.
    let mut replicas = vec![ReplicaProcess::start(&url, &kek, &jwks)];
    replicas[0].wait_ready("first replica").await;
    for _ in 0..2 {
        replicas.push(ReplicaProcess::start(&url, &kek, &jwks));
    }
    for replica in &replicas {
        replica.wait_ready("replica").await;
    }
    let root_pem = reqwest::get(format!(
        "http://127.0.0.1:{}/v1/bundles/cluster.local.pem",
        replicas[0].http
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut load = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let options = ca_client::ConnectOptions {
            address: format!("127.0.0.1:{}", replica.grpc),
            ca_pem: root_pem.clone().into_bytes(),
            server_name: Some("localhost".to_owned()),
            client_identity: None,
        };
        let tokens: Vec<String> = (0..4)
            .map(|n| kube.token("default", &format!("proc-{i}-{n}")))
            .collect();
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        load.push(tokio::spawn(async move {
            let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
            let mut client = None;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = ca_client::WorkloadClient::connect(&options).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let auth = TokenAuth {
                    token: Some(tokens[n % tokens.len()].clone()),
                    cluster_id: Some("Kubernetes".to_owned()),
                };
                n += 1;
                let result = client
                    .as_ref()
                    .unwrap()
                    .create_certificate(&csr.csr_pem, 3600, &auth, &BTreeMap::new())
                    .await;
                match result {
                    Ok(_) | Err(Error::Server { .. }) => {
                        // A refusal: the replica went away under the request or shed it.
                        let refused = result.is_err();
                        record_revocable(&outcomes, result);
                        if refused {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(_) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let issued = |outcomes: &Arc<Mutex<Outcomes>>| outcomes.lock().unwrap().received.len();
    let until_more = |outcomes: Arc<Mutex<Outcomes>>, what: &'static str| async move {
        let before = issued(&outcomes);
        let start = Instant::now();
        while issued(&outcomes) < before + 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: no progress"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until_more(outcomes.clone(), "warm-up").await;
    let crls = CrlWatch::start(
        replicas
            .iter()
            .map(|r| {
                let admin = ca_client::AdminClient::new(&r.admin_url(), &r.admin_token()).unwrap();
                (r.http_url(), admin)
            })
            .collect(),
        outcomes.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGKILL in the middle of the load (group commits in flight), then a restart.
    let faults_from = Instant::now();
    replicas[1].kill();
    until_more(outcomes.clone(), "with one replica killed").await;
    replicas[1].restart();
    let killed_back = replicas[1].wait_ready("the killed replica").await;
    until_more(outcomes.clone(), "after the restart").await;

    // A rolling restart: each replica stopped (SIGTERM) and started again in turn.
    let mut rolled = Vec::new();
    for replica in &mut replicas {
        replica.terminate();
        replica.restart();
        rolled.push(replica.wait_ready("rolling restart").await);
        until_more(outcomes.clone(), "rolling restart").await;
    }
    let crls = crls.finish(faults_from).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let audited = delivered_were_recorded(&outcomes, &url).await;
    let (admin, token) = (replicas[0].admin_url(), replicas[0].admin_token());
    let verified = tokio::task::spawn_blocking(move || cactl_audit_verify(&admin, &token))
        .await
        .unwrap();
    println!(
        "replica SIGKILL + rolling restart: {} issued, refused {:?}, 0 unrecorded, {} audit events verified ({} by cactl audit verify), {crls}, killed replica ready in {:.1} s, rolling restarts ready in {:?}",
        outcomes.received.len(),
        outcomes.refused,
        audited,
        verified,
        killed_back.as_secs_f64(),
        rolled
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}

/// A failover: the primary (synchronous replication to a streaming standby) is killed under
/// load, the standby promoted and the proxy switched to it. Every certificate a client received
/// is on the promoted standby: synchronous commit made each record durable there first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_a_synchronous_standby_under_load() {
    let primary = PrivatePostgres::start_primary();
    let standby = PrivatePostgres::start_standby(&primary);
    let direct = sqlx::PgPool::connect(&primary.url()).await.unwrap();
    let start = Instant::now();
    loop {
        let state: Option<String> =
            sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication LIMIT 1")
                .fetch_optional(&direct)
                .await
                .unwrap();
        if state.as_deref() == Some("sync") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "standby not in sync: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    direct.close().await;
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], primary.port))).await;
    let proxied = primary.url().replace(
        &format!("127.0.0.1:{}", primary.port),
        &proxy.addr.to_string(),
    );
    let cluster = Cluster::start(&proxied).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let faults_from = Instant::now();
    primary.kill();
    proxy.cut();
    cluster.all_unready("failover").await;
    standby.promote();
    proxy.retarget(std::net::SocketAddr::from(([127, 0, 0, 1], standby.port)));
    proxy.restore();
    let recovery = cluster.all_ready_and_issuing("failover").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Checked against the promoted standby: what the clients got is there.
    let report = cluster
        .finish(&standby.url(), faults_from, &[recovery])
        .await;
    println!("failover to a synchronous standby: {report}");
}
