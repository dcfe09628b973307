//! Wire compatibility checked by an implementation that is not ours: Python grpcio with stubs
//! generated from `proto/istio/v1/auth/ca.proto` by grpcio-tools (installed by scripts/test).

use std::process::Command;

use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer, python_tool, run};

use crate::profile::{assert_svid_profile, openssl_verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_gets_a_certificate() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let ca_file = server.dir.path().join("serving-root.pem");
    std::fs::write(&ca_file, server.serving_root_pem()).unwrap();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let id = "spiffe://cluster.local/ns/default/sa/python";
    let token = kube.keys[1].sign(&FakeKube::claims("default", "python"));
    let addr = server.server.grpc_addr.to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(Command::new(python_tool("python"))
            .arg(workspace.join("tests/python/istio_client.py"))
            .arg("--proto-root")
            .arg(workspace.join("proto"))
            .args([
                "--addr",
                &addr,
                "--token",
                &token,
                "--spiffe-id",
                id,
                "--ca-file",
            ])
            .arg(&ca_file))
    })
    .await
    .unwrap();
    assert!(ok, "python client failed: {stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let chain: Vec<String> = serde_json::from_value(answer["cert_chain"].clone()).unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(answer["leaf_uris"], serde_json::json!([id]));
    assert_eq!(answer["san_critical"], true);
    assert_eq!(answer["anonymous"], "UNAUTHENTICATED");
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    assert_svid_profile(&leaf, id, true);
    let (ok, out) = openssl_verify(server.dir.path(), &chain[2], &chain[1], &chain[0]);
    assert!(ok, "{out}");
    server.stop().await;
}
