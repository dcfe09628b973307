//! The README's quick start, for real: `ca-server` with no config in an empty directory, then
//! `cactl issue` with its defaults, then `openssl verify` on what it wrote.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ca_tests::{bin, run};

use crate::profile::{assert_svid_profile, openssl_verify};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running server has transparent huge pages off, and no mapping of it asks for them
/// (`ca-server/src/main.rs`: a 2 MiB page for a few KiB of heap made the soak's memory drift).
fn assert_no_huge_pages(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|line| line == "THP_enabled:\t0"),
        "THP is on for ca-server: {status}"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut mapping = "";
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            mapping = line;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            assert!(
                !flags.split_whitespace().any(|flag| flag == "hg"),
                "this mapping asks for huge pages (MADV_HUGEPAGE): {mapping}"
            );
        }
    }
    assert!(
        !mapping.is_empty(),
        "no mappings read from /proc/{pid}/smaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_with_the_embedded_default() {
    let cwd = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(cwd.path().join("server.log")).unwrap();
    let child = Command::new(bin("ca-server"))
        .current_dir(cwd.path())
        .env_remove("CA_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child);
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get("http://127.0.0.1:8080/readyz").await
            && response.status() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server did not become ready: {}",
            std::fs::read_to_string(cwd.path().join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_huge_pages(guard.0.id());
    let data = cwd.path().join("ca-data");
    for (file, len) in [("kek", Some(32)), ("admin.token", None)] {
        let meta = std::fs::metadata(data.join(file)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        if let Some(len) = len {
            assert_eq!(meta.len(), len);
        }
    }
    assert!(data.join("ca.db").exists());
    let log_text = std::fs::read_to_string(cwd.path().join("server.log")).unwrap();
    assert!(
        log_text.contains("ca-data/kek") && log_text.contains("ca-data/admin.token"),
        "{log_text}"
    );

    let id = "spiffe://cluster.local/ns/default/sa/quickstart";
    for (key, rsa) in [("ecdsa-p256", false), ("rsa-2048", true)] {
        let out = cwd.path().join(format!("out-{key}"));
        let (ok, stdout, stderr) = run(Command::new(bin("cactl"))
            .current_dir(cwd.path())
            .args(["issue", "--spiffe-id", id, "--key", key, "--out"])
            .arg(&out));
        assert!(ok, "cactl issue failed: {stdout}{stderr}");
        assert!(stdout.contains(id), "{stdout}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
        let root = std::fs::read_to_string(out.join("root-cert.pem")).unwrap();
        let blocks = pem::parse_many(&chain).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_svid_profile(blocks[0].contents(), id, rsa);
        let (ok, output) = openssl_verify(
            cwd.path(),
            &root,
            &pem::encode(&blocks[1]),
            &pem::encode(&blocks[0]),
        );
        assert!(ok, "{output}");
        // The key on disk matches the certificate.
        let key_pem = std::fs::read_to_string(out.join("key.pem")).unwrap();
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let (_, cert) = <x509_parser::prelude::X509Certificate<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(blocks[0].contents()).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key_pair.public_key_raw()
        );
    }

    // JSON output, and a clear error for a bad token.
    let (ok, stdout, _) = run(Command::new(bin("cactl")).current_dir(cwd.path()).args([
        "--output",
        "json",
        "issue",
        "--spiffe-id",
        id,
        "--out",
        "json-out",
    ]));
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["spiffe_id"], id);
    std::fs::write(cwd.path().join("bad.token"), "nope").unwrap();
    let (ok, _, stderr) = run(Command::new(bin("cactl")).current_dir(cwd.path()).args([
        "issue",
        "--admin-token-file",
        "bad.token",
        "--spiffe-id",
        id,
        "--out",
        "x",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains("401") && stderr.contains("unauthenticated"),
        "{stderr}"
    );
}

/// `cactl issue --token-file` (istio-agent's request) and `cactl renew --dir` (mutual TLS) against
/// a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cactl_workload_issue_and_renew() {
    let kube = ca_tests::kube::FakeKube::new();
    let server = ca_tests::TestServer::start_with_cluster(ca_tests::Backend::Sqlite, &kube).await;
    let dir = server.dir.path().to_owned();
    let token_file = dir.join("istio-token");
    std::fs::write(&token_file, kube.token("default", "web")).unwrap();
    let ca_file = dir.join("ca-root.pem");
    std::fs::write(&ca_file, server.serving_root_pem()).unwrap();
    let grpc = server.server.grpc_addr.to_string();
    let out = dir.join("workload");
    let common = |command: &mut Command| {
        command
            .env_remove("CA_TOKEN_FILE")
            .args(["--grpc", &grpc, "--server-name", "localhost", "--ca-file"])
            .arg(&ca_file);
    };
    let mut issue = Command::new(bin("cactl"));
    common(&mut issue);
    issue
        .args([
            "--output",
            "json",
            "issue",
            "--key",
            "rsa-2048",
            "--ttl",
            "2h",
            "--token-file",
        ])
        .arg(&token_file)
        .arg("--out")
        .arg(&out);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut issue))
        .await
        .unwrap();
    assert!(ok, "{stdout}{stderr}");
    let first: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        first["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
    let blocks = pem::parse_many(&chain).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_svid_profile(
        blocks[0].contents(),
        "spiffe://cluster.local/ns/default/sa/web",
        true,
    );

    let mut renew = Command::new(bin("cactl"));
    common(&mut renew);
    renew.args(["--output", "json", "renew", "--dir"]).arg(&out);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut renew))
        .await
        .unwrap();
    assert!(ok, "{stdout}{stderr}");
    let second: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(second["spiffe_id"], first["spiffe_id"]);
    assert_ne!(second["serial"], first["serial"]);
    let records = server
        .store()
        .await
        .certificates_by_serial(second["serial"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert!(
        records[0].requested_by.starts_with("cert:"),
        "{}",
        records[0].requested_by
    );

    // An unreachable server is a clear error.
    let (ok, _, stderr) = run(Command::new(bin("cactl"))
        .args([
            "--grpc",
            "127.0.0.1:1",
            "--server-name",
            "localhost",
            "--ca-file",
        ])
        .arg(&ca_file)
        .args(["issue", "--token-file"])
        .arg(&token_file)
        .args(["--out", "/nonexistent/x"]));
    assert!(!ok);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    server.stop().await;
}

/// The revocation commands: `certs revoke`, `deny add|list|remove`, `verify` (exit codes 0/1/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cactl_revocation_commands() {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Sqlite).await;
    let dir = server.dir.path().to_owned();
    let token_file = dir.join("admin.token");
    let admin = server.admin_url();
    let http = server.http_url();
    let cactl = move |args: &[&str]| {
        let mut command = Command::new(bin("cactl"));
        command
            .args(["--admin", &admin, "--http", &http, "--admin-token-file"])
            .arg(&token_file)
            .args(args);
        let output = command.output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let id = "spiffe://cluster.local/ns/default/sa/cli";
    let out = dir.join("cli-cert");
    let out_s = out.to_str().unwrap().to_owned();
    let c = cactl.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        c(&[
            "--output",
            "json",
            "issue",
            "--spiffe-id",
            id,
            "--out",
            &out_s,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    let serial = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let chain = out.join("cert-chain.pem").to_str().unwrap().to_owned();
    let root = out.join("root-cert.pem").to_str().unwrap().to_owned();

    let run_async = |args: Vec<String>| {
        let c = cactl.clone();
        tokio::task::spawn_blocking(move || c(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();

    // verify: valid (checks the CRL from --http), wrong ID, and JSON.
    let (code, stdout, _) = run_async(s(&["verify", &chain, "--bundle", &root, "--spiffe-id", id]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("valid     yes") && stdout.contains("NotRevoked"),
        "{stdout}"
    );
    let (code, stdout, _) = run_async(s(&[
        "verify",
        &chain,
        "--bundle",
        &root,
        "--spiffe-id",
        "spiffe://cluster.local/ns/x/sa/y",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 1, "{stdout}");
    // Verifying against the wrong roots fails.
    let other = dir.join("other-root.pem");
    std::fs::write(
        &other,
        rcgen::generate_simple_self_signed(vec!["x".to_owned()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let (code, _, _) = run_async(s(&[
        "verify",
        &chain,
        "--bundle",
        other.to_str().unwrap(),
        "--no-revocation",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 1);

    // Revoke, then verify says revoked (exit 1).
    let (code, stdout, stderr) = run_async(s(&[
        "certs",
        "revoke",
        &serial,
        "--reason",
        "keyCompromise",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("keyCompromise") && stdout.contains("newly_revoked"),
        "{stdout}"
    );
    let (code, stdout, _) = run_async(s(&[
        "--output", "json", "verify", &chain, "--bundle", &root,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("revoked"), "{stdout}");
    let (code, _, stderr) = run_async(s(&["certs", "revoke", "ffff", "--reason", "keyCompromise"]))
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("404"), "{stderr}");

    // Deny add / list / remove.
    let (code, stdout, stderr) = run_async(s(&[
        "--output",
        "json",
        "deny",
        "add",
        id,
        "--reason",
        "test",
        "--revoke-existing",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    let deny_id = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, stdout, _) = run_async(s(&["deny", "list"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains(id) && stdout.contains("SPIFFE ID"),
        "{stdout}"
    );
    let out2 = dir.join("denied").to_str().unwrap().to_owned();
    let (code, _, stderr) = run_async(s(&["issue", "--spiffe-id", id, "--out", &out2]))
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("identity_denied"), "{stderr}");
    let (code, stdout, _) = run_async(s(&["--output", "json", "deny", "list"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (code, stdout, _) = run_async(s(&["deny", "remove", &deny_id])).await.unwrap();
    assert_eq!(code, 0, "{stdout}");
    let (code, _, _) = run_async(s(&["issue", "--spiffe-id", id, "--out", &out2]))
        .await
        .unwrap();
    assert_eq!(code, 0);

    // Unreachable server: exit 2 and a clear message.
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        let output = Command::new(bin("cactl"))
            .args(["--http", "http://127.0.0.1:1", "verify"])
            .arg(&chain)
            .args(["--bundle", &root])
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::new(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    server.stop().await;
}

/// Every admin subcommand of `cactl` against a real server, human and JSON output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cactl_admin_commands() {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Sqlite).await;
    let dir = server.dir.path().to_owned();
    let admin = server.admin_url();
    let http = server.http_url();
    let token_file = dir.join("admin.token");
    let cactl = move |args: Vec<String>| {
        let admin = admin.clone();
        let http = http.clone();
        let token_file = token_file.clone();
        tokio::task::spawn_blocking(move || {
            let output = Command::new(bin("cactl"))
                .env("CA_ADMIN_TOKEN_FILE", &token_file)
                .args(["--admin", &admin, "--http", &http])
                .args(&args)
                .output()
                .unwrap();
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let id = "spiffe://cluster.local/ns/default/sa/admin-cli";
    let out = dir.join("c").to_str().unwrap().to_owned();
    let (code, stdout, stderr) = cactl(s(&[
        "--output",
        "json",
        "issue",
        "--spiffe-id",
        id,
        "--out",
        &out,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    let serial = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();

    // trust-domains
    let (code, stdout, _) = cactl(s(&["trust-domains"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains("cluster.local")
            && stdout.contains("active")
            && stdout.contains("ecdsa-p256"),
        "{stdout}"
    );
    let (code, stdout, _) = cactl(s(&["--output", "json", "trust-domains"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["items"][0]["generations"][0]["state"], "active");

    // certs list / show
    let (code, stdout, _) = cactl(s(&["certs", "list", "--spiffe-id", id]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&serial) && stdout.contains("1 certificate(s)"),
        "{stdout}"
    );
    let (code, stdout, _) = cactl(s(&[
        "--output", "json", "certs", "list", "--all", "--status", "valid",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (code, stdout, _) = cactl(s(&["certs", "show", &serial, "--pem"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains(id) && stdout.contains("BEGIN CERTIFICATE") && stdout.contains("valid"),
        "{stdout}"
    );
    let (code, stdout, _) = cactl(s(&["--output", "json", "certs", "show", &serial]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["serial"],
        serial
    );

    // tokens create / list / delete, and the new token works with its role.
    let (code, stdout, _) = cactl(s(&[
        "--output",
        "json",
        "tokens",
        "create",
        "reader",
        "--role",
        "viewer",
        "--expires-in",
        "1d",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}");
    let reader_token = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, stdout, _) = cactl(s(&["tokens", "list"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains("reader") && stdout.contains("viewer"),
        "{stdout}"
    );
    std::fs::write(dir.join("reader.token"), &reader_token).unwrap();
    let reader_file = dir.join("reader.token").to_str().unwrap().to_owned();
    let (code, _, _) = cactl(s(&["--admin-token-file", &reader_file, "certs", "list"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let (code, _, stderr) = cactl(s(&[
        "--admin-token-file",
        &reader_file,
        "certs",
        "revoke",
        &serial,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        stderr.contains("403") && stderr.contains("forbidden"),
        "{stderr}"
    );
    let (code, _, _) = cactl(s(&["tokens", "delete", "reader"])).await.unwrap();
    assert_eq!(code, 0);
    let (code, _, stderr) = cactl(s(&["--admin-token-file", &reader_file, "certs", "list"]))
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("401"), "{stderr}");

    // audit list / verify
    let (code, stdout, _) = cactl(s(&["audit", "list"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains("token.create") && stdout.contains("certificate.issue"),
        "{stdout}"
    );
    let (code, stdout, _) = cactl(s(&["--output", "json", "audit", "verify"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["intact"],
        true
    );

    // inspect: chain, CSR, CRL (DER), SPIFFE bundle (JSON).
    let chain = dir.join("c/cert-chain.pem").to_str().unwrap().to_owned();
    let (code, stdout, _) = cactl(s(&["inspect", &chain])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains(id) && stdout.contains("ECDSA P-256") && stdout.contains("seconds_left"),
        "{stdout}"
    );
    let (code, stdout, _) = cactl(s(&["--output", "json", "inspect", &chain]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let items: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 2);
    assert_eq!(items[0]["spiffe_ids"][0], id);
    assert_eq!(items[1]["is_ca"], true);
    let csr = ca_client::csr::generate(ca_client::KeyType::Rsa2048, Some(id)).unwrap();
    std::fs::write(dir.join("req.csr"), &csr.csr_pem).unwrap();
    let (code, stdout, _) = cactl(s(&[
        "--output",
        "json",
        "inspect",
        dir.join("req.csr").to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0);
    let items: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(items[0]["type"], "csr");
    assert_eq!(items[0]["key_type"], "RSA-2048");
    assert_eq!(items[0]["signature_valid"], true);
    let crl = reqwest::get(format!("{}/v1/crl/cluster.local", server.http_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(dir.join("crl.der"), &crl).unwrap();
    let (code, stdout, _) = cactl(s(&[
        "--output",
        "json",
        "inspect",
        dir.join("crl.der").to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}");
    let items: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(items[0]["type"], "crl");
    let (code, stdout, _) = cactl(s(&["inspect", dir.join("crl.der").to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains("crl_number"), "{stdout}");
    let bundle_text = reqwest::get(format!("{}/v1/bundles/cluster.local", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(dir.join("bundle.json"), bundle_text).unwrap();
    let (code, stdout, _) = cactl(s(&[
        "--output",
        "json",
        "inspect",
        dir.join("bundle.json").to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}");
    let items: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(items[0]["type"], "spiffe_bundle");
    assert_eq!(items[0]["x509_authorities"][0]["is_ca"], true);
    let (code, _, stderr) = cactl(s(&["inspect", "/nonexistent"])).await.unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent"), "{stderr}");
    server.stop().await;
}

/// `cactl bundle get` (SPIFFE and PEM) and `cactl bundle watch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cactl_bundle_commands() {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Sqlite).await;
    let dir = server.dir.path().to_owned();
    let ca_file = dir.join("serving-root.pem");
    std::fs::write(&ca_file, server.serving_root_pem()).unwrap();
    let http = server.http_url();
    let grpc = server.server.grpc_addr.to_string();
    let run_cactl = move |args: Vec<String>| {
        let http = http.clone();
        let grpc = grpc.clone();
        let ca_file = ca_file.clone();
        tokio::task::spawn_blocking(move || {
            run(Command::new(bin("cactl"))
                .args([
                    "--http",
                    &http,
                    "--grpc",
                    &grpc,
                    "--server-name",
                    "localhost",
                    "--ca-file",
                ])
                .arg(&ca_file)
                .args(&args))
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let (ok, stdout, stderr) = run_cactl(s(&["bundle", "get", "cluster.local"]))
        .await
        .unwrap();
    assert!(ok, "{stderr}");
    let bundle: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(bundle["keys"][0]["use"], "x509-svid");
    let (ok, stdout, _) = run_cactl(s(&["bundle", "get", "cluster.local", "--format", "pem"]))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(stdout.as_bytes(), server.serving_root_pem().as_slice());
    let (ok, stdout, stderr) =
        run_cactl(s(&["--output", "json", "bundle", "watch", "--count", "1"]))
            .await
            .unwrap();
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["trust_domain"], "cluster.local");
    assert_eq!(line["roots"], 1);
    let (ok, _, stderr) = run_cactl(s(&["bundle", "get", "nope.example"]))
        .await
        .unwrap();
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
    server.stop().await;
}

/// `cactl renew --watch` keeps the files current: it renews at once when a trust bundle
/// changes (here a root rotation publishes a new root) and rewrites root-cert.pem with both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cactl_renew_watch_follows_a_root_publication() {
    let kube = ca_tests::kube::FakeKube::new();
    let server = ca_tests::TestServer::start_with_cluster(ca_tests::Backend::Sqlite, &kube).await;
    let dir = server.dir.path().to_owned();
    let token_file = dir.join("istio-token");
    std::fs::write(&token_file, kube.token("default", "web")).unwrap();
    let ca_file = dir.join("ca-root.pem");
    std::fs::write(&ca_file, server.serving_root_pem()).unwrap();
    let grpc = server.server.grpc_addr.to_string();
    let out = dir.join("workload");
    let mut issue = Command::new(bin("cactl"));
    issue
        .env_remove("CA_TOKEN_FILE")
        .args(["--grpc", &grpc, "--server-name", "localhost", "--ca-file"])
        .arg(&ca_file)
        .args(["issue", "--token-file"])
        .arg(&token_file)
        .arg("--out")
        .arg(&out);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut issue))
        .await
        .unwrap();
    assert!(ok, "{stdout}{stderr}");
    let first_chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();

    let mut watch = Command::new(bin("cactl"))
        .env_remove("CA_TOKEN_FILE")
        .args([
            "--grpc",
            &grpc,
            "--server-name",
            "localhost",
            "--output",
            "json",
        ])
        .args(["renew", "--watch", "--dir"])
        .arg(&out)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let roots_in = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| pem::parse_many(text).ok())
            .map_or(0, |blocks| blocks.len())
    };
    // It renews at start (a fresh key and chain) ...
    let start = Instant::now();
    while std::fs::read_to_string(out.join("cert-chain.pem")).unwrap() == first_chain {
        assert!(start.elapsed().as_secs() < 20, "no renewal at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and again when the trust bundle changes: both roots land in root-cert.pem.
    assert_eq!(roots_in(&out.join("root-cert.pem")), 1);
    server
        .admin_client()
        .rotate("cluster.local", "root")
        .await
        .unwrap();
    let start = Instant::now();
    while roots_in(&out.join("root-cert.pem")) != 2 {
        assert!(
            start.elapsed().as_secs() < 20,
            "root-cert.pem never got the new root"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.kill().unwrap();
    let _ = watch.wait();
    server.stop().await;
}
