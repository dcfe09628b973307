//! The operations artefacts in `deploy/` name only metrics a running server exports: every
//! `ca_*` name in the Grafana dashboards, the Prometheus rules and `deploy/METRICS.txt` is on
//! `/metrics` after one issuance and one refusal. (`scripts/check-deploy` checks the rest
//! offline: renders, schemas, policy, promtool, hadolint.)

use std::collections::BTreeSet;
use std::path::Path;

use ca_client::KeyType;
use ca_tests::{Backend, TestServer};

/// Every `ca_...` metric name in a text, without the histogram and counter sample suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ca_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        let name = &text[start..end];
        if boundary && name.len() > 3 {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end.max(start + 3);
    }
    names
}

fn deploy_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            deploy_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "json" || e == "yaml" || e == "yml" || e == "txt")
        {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_rules_name_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["deploy/grafana", "deploy/prometheus"] {
        deploy_files(&root.join(dir), &mut files);
    }
    files.push(root.join("deploy/METRICS.txt"));
    let mut named = BTreeSet::new();
    for file in &files {
        named.extend(metric_names(&std::fs::read_to_string(file).unwrap()));
    }
    assert!(named.len() >= 15, "{named:?}");

    // A server with a federation peer (unreachable: its fetches fail and are counted).
    let dir = tempfile::tempdir().unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    let mut toml = String::from(
        "[[trust_domains]]\nname = \"cluster.local\"\nfederates_with = [\"peer.example\"]\n",
    );
    toml.push_str("[[federation]]\ntrust_domain = \"peer.example\"\nurl = \"https://127.0.0.1:1/bundle\"\nprofile = \"https_web\"\n");
    let parsed = ca_server::config::Config::from_toml(&toml).unwrap();
    config.trust_domains = parsed.trust_domains;
    config.federation = parsed.federation;
    let server = TestServer::start_with(config, dir).await;
    let admin = server.admin_client();
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(id)).unwrap();
    admin.issue(&csr.csr_pem, id, None).await.unwrap();
    let refused = admin.issue("not a CSR", id, None).await;
    assert!(refused.is_err());
    // A bad token at the gRPC port: an authentication failure.
    let client = server.grpc_client(None).await;
    let bad = ca_client::TokenAuth {
        token: Some("not-a-jwt".to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    };
    assert!(
        client
            .create_certificate(&csr.csr_pem, 0, &bad, &Default::default())
            .await
            .is_err()
    );
    // The gauges the jobs set (CRL, revocations, expiring identities) are set at least once.
    ca_server::jobs::refresh_gauges(&server.server.ca, time::OffsetDateTime::now_utc()).await;

    let exported = server.metrics().await;
    let on_metrics: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect();
    let missing: Vec<_> = named.difference(&on_metrics).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not on /metrics: {missing:?}\n{exported}"
    );
    server.stop().await;
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "sum(rate(ca_issuance_duration_seconds_bucket{x=\"y\"}[5m])) / mesh_ca_other + ca_a_total",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ca_a_total", "ca_issuance_duration_seconds"]
    );
}
