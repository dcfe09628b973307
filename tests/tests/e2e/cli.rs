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
    let _guard = KillOnDrop(child);
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
