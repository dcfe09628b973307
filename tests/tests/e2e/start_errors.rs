//! A server that cannot start says why, with the whole chain of causes on one line and no
//! backtrace, and exits non-zero: one test per class of start failure, against the real binary.

use std::io::{Read, Write};
use std::process::Command;

/// Runs `ca-server --config <toml>` with `top` (top-level keys) before listeners on port 0 (the
/// gRPC one on `grpc_port`) and a private data directory; returns (exit code, stderr). With
/// `short_kek`, the KEK file holds 16 bytes.
fn start(top: &str, grpc_port: u16, short_kek: bool) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "{top}data_dir = {:?}\n[listen]\ngrpc = \"127.0.0.1:{grpc_port}\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[keys]\nkek_file = {:?}\n[admin]\nbootstrap_token_file = {:?}\n",
        data.display().to_string(),
        data.join("kek").display().to_string(),
        data.join("admin.token").display().to_string(),
    );
    let path = dir.path().join("ca.toml");
    std::fs::write(&path, text).unwrap();
    if short_kek {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("kek"), [7u8; 16]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("kek"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let output = Command::new(ca_tests::bin("ca-server"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_says(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "missing {part:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "the chain is said once: {stderr}"
    );
}

#[test]
fn database_unreachable() {
    let (code, stderr) = start(
        "database_url = \"postgres://postgres@127.0.0.1:1/none\"\n",
        0,
        false,
    );
    assert_eq!(code, Some(1));
    assert_says(
        &stderr,
        &["start failed", "cannot open the store", "refused"],
    );
}

/// A Postgres that requires TLS answers a plain startup with an error naming it ("SSL off"); a
/// stand-in speaks exactly that much of the protocol.
#[test]
fn database_requires_tls() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            // SSLRequest (8 bytes): answer 'N' (no TLS here); then the startup message.
            let Ok(n) = stream.read(&mut buf) else {
                continue;
            };
            if n == 8 {
                let _ = stream.write_all(b"N");
                let _ = stream.read(&mut buf);
            }
            let mut fields = Vec::new();
            for (tag, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "28000"),
                (
                    b'M',
                    "no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"none\", SSL off",
                ),
            ] {
                fields.push(tag);
                fields.extend_from_slice(value.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut message = vec![b'E'];
            message.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
            message.extend_from_slice(&fields);
            let _ = stream.write_all(&message);
        }
    });
    let (code, stderr) = start(
        &format!("database_url = \"postgres://postgres@127.0.0.1:{port}/none\"\n"),
        0,
        false,
    );
    assert_eq!(code, Some(1));
    assert_says(
        &stderr,
        &["start failed", "cannot open the store", "SSL off"],
    );
}

#[test]
fn bad_kek() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ca.db");
    let (code, stderr) = start(
        &format!("database_url = \"sqlite://{}\"\n", db.display()),
        0,
        true,
    );
    assert_eq!(code, Some(1));
    assert_says(&stderr, &["start failed", "KEK file", "32 bytes"]);
}

#[test]
fn bad_config_key() {
    let (code, stderr) = start("database_urll = \"sqlite://x\"\n", 0, false);
    assert_eq!(code, Some(2));
    assert_says(&stderr, &["config", "database_urll"]);
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ca.db");
    let (code, stderr) = start(
        &format!("database_url = \"sqlite://{}\"\n", db.display()),
        port,
        false,
    );
    drop(taken);
    assert_eq!(code, Some(1));
    assert_says(
        &stderr,
        &[
            "start failed",
            &format!("cannot listen on 127.0.0.1:{port}"),
            "in use",
        ],
    );
}
