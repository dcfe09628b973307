//! `cactl` against a fake admin API that answers canned JSON (shaped like ca-server's handlers):
//! every byte of stdout and stderr, the exit code, and the requests sent are compared with
//! `tests/cactl_golden.txt`, so the CLI's code can be rearranged without its behaviour changing.
//!
//! The golden file was recorded with the binary before it was split into modules. To record it
//! again after an intended change: `CACTL_BLESS=1 cargo test -p ca-client --test cactl_golden`,
//! then review the diff.

// Test code: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// (method, request target) → (status, body).
type Routes = Vec<(&'static str, String, u16, String)>;

/// A one-thread HTTP/1.1 server that answers from `routes` and records what it was asked.
struct FakeAdmin {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeAdmin {
    fn start(routes: Routes) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                let mut length = 0;
                let mut auth = String::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "authorization" => auth = value.trim().to_owned(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                // Bodies as parsed JSON: key order is the client's business, not behaviour.
                let body = serde_json::from_slice::<serde_json::Value>(&body)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                log.lock()
                    .unwrap()
                    .push(format!("{method} {target} [{auth}] {body}"));
                let (status, answer) = routes
                    .iter()
                    .find(|(m, t, _, _)| *m == method && *t == target)
                    .map(|(_, _, s, b)| (*s, b.clone()))
                    .unwrap_or((
                        404,
                        r#"{"error":{"code":"not_found","message":"no such route"}}"#.to_owned(),
                    ));
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(response.as_bytes()).unwrap();
            }
        });
        FakeAdmin { url, requests }
    }

    fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut self.requests.lock().unwrap())
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cactl-golden")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs cactl with `args` against `admin` and appends a transcript section to `out`.
fn case(out: &mut String, admin: &FakeAdmin, dir: &Path, args: &[&str]) {
    let token = dir.join("admin.token");
    std::fs::write(&token, "secret-token\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cactl"));
    for var in [
        "CA_ADMIN",
        "CA_ADMIN_TOKEN_FILE",
        "CA_HTTP",
        "CA_GRPC",
        "CA_CA_FILE",
        "CA_SERVER_NAME",
        "CA_TOKEN_FILE",
        "CA_CLUSTER_ID",
    ] {
        command.env_remove(var);
    }
    command.current_dir(dir).args(["--admin", &admin.url]);
    if !args.contains(&"--admin-token-file") {
        command.arg("--admin-token-file").arg(&token);
    }
    let output = command.args(args).output().unwrap();
    let dir_text = dir.display().to_string();
    let clean = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .replace(&dir_text, "$DIR")
            .replace(&admin.url, "$ADMIN")
    };
    writeln!(out, "== cactl {}", args.join(" ")).unwrap();
    writeln!(out, "exit {:?}", output.status.code()).unwrap();
    writeln!(out, "-- stdout").unwrap();
    out.push_str(&clean(&output.stdout));
    writeln!(out, "-- stderr").unwrap();
    out.push_str(&clean(&output.stderr));
    writeln!(out, "-- requests").unwrap();
    for request in admin.take_requests() {
        writeln!(out, "{}", request.replace(&dir_text, "$DIR")).unwrap();
    }
}

fn compare(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(format!("{name}.txt"));
    if std::env::var_os("CACTL_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    if expected != actual {
        for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
            assert_eq!(e, a, "{name}.txt line {}", i + 1);
        }
        assert_eq!(expected, actual, "{name}.txt");
    }
}

const SERIAL: &str = "0a1b2c3d";
const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn certificate(serial: &str, status: &str, revoked: bool, pem: bool) -> String {
    let mut value = serde_json::json!({
        "serial": serial,
        "spiffe_id": ID,
        "trust_domain": "cluster.local",
        "status": status,
        "not_before": "2026-01-01T00:00:00Z",
        "not_after": "2026-01-02T00:00:00Z",
        "issuer_key_id": "9f8e7d",
        "requested_by": "admin:bootstrap",
        "api": "admin",
        "created_at": "2026-01-01T00:00:05Z",
    });
    if revoked {
        value["revoked_at"] = "2026-01-01T12:00:00Z".into();
        value["revocation_reason"] = "keyCompromise".into();
    }
    if pem {
        value["certificate_pem"] =
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into();
    }
    value.to_string()
}

fn summary(not_after: &str) -> serde_json::Value {
    serde_json::json!({
        "subject": "CN=x", "serial": "01", "not_before": "2026-01-01T00:00:00Z",
        "not_after": not_after, "pem": "-----BEGIN CERTIFICATE-----\n"
    })
}

/// An audit page whose hash chain is intact (or broken at the second event).
fn audit_events(broken: bool) -> String {
    use ring::digest::{SHA256, digest};
    let mut events = Vec::new();
    let mut prev = String::new();
    for (id, action) in [(1, "certificate.issue"), (2, "token.create")] {
        let mut event = serde_json::json!({
            "id": id, "at": 1_767_225_600 + id, "actor": "bootstrap", "action": action,
            "target": ID, "outcome": "success", "request_id": format!("req-{id}"),
            "detail": "", "prev_hash": prev,
        });
        let canonical = serde_json::json!([
            event["at"],
            event["actor"],
            event["action"],
            event["target"],
            event["outcome"],
            event["request_id"],
            event["detail"],
        ])
        .to_string();
        let hash = hex::encode(digest(&SHA256, format!("{prev}\n{canonical}").as_bytes()));
        event["hash"] = hash.clone().into();
        if broken && id == 2 {
            event["detail"] = "edited".into();
        }
        prev = hash;
        events.push(event);
    }
    events.reverse();
    serde_json::json!({"items": events}).to_string()
}

#[test]
fn admin_commands() {
    let td = serde_json::json!({"items": [{
    "name": "cluster.local", "bundle_sequence": 3, "federates_with": ["example.org"],
    "future_field": {"x": 1},
    "generations": [
        {"generation": 2, "state": "active", "key_algorithm": "ecdsa-p256", "issuer_key_id": "aa",
         "root": summary("2036-01-01T00:00:00Z"), "intermediate": summary("2027-01-01T00:00:00Z")},
        {"generation": 1, "state": "retired", "key_algorithm": "rsa-3072", "issuer_key_id": "bb",
         "root": summary("2035-01-01T00:00:00Z"), "intermediate": summary("2026-06-01T00:00:00Z")}
    ]}]});
    let page = |items: Vec<String>, cursor: Option<&str>| {
        let items: Vec<serde_json::Value> = items
            .iter()
            .map(|i| serde_json::from_str(i).unwrap())
            .collect();
        let mut page = serde_json::json!({"items": items});
        if let Some(c) = cursor {
            page["next_cursor"] = c.into();
        }
        page.to_string()
    };
    let id_query = "spiffe_id=spiffe%3A%2F%2Fcluster.local%2Fns%2Fdefault%2Fsa%2Fweb";
    let routes: Routes = vec![
        ("GET", "/admin/v1/trust-domains".into(), 200, td.to_string()),
        (
            "GET",
            format!("/admin/v1/certificates?{id_query}&limit=50"),
            200,
            page(vec![certificate(SERIAL, "valid", false, false)], Some("next")),
        ),
        (
            "GET",
            "/admin/v1/certificates?status=valid&limit=500".into(),
            200,
            page(
                vec![
                    certificate("01", "valid", false, false),
                    certificate("02", "valid", false, false),
                ],
                Some("c2"),
            ),
        ),
        (
            "GET",
            "/admin/v1/certificates?status=valid&limit=500&cursor=c2".into(),
            200,
            page(vec![certificate("03", "valid", false, false)], None),
        ),
        (
            "GET",
            format!("/admin/v1/certificates/{SERIAL}"),
            200,
            certificate(SERIAL, "revoked", true, true),
        ),
        (
            "POST",
            format!("/admin/v1/certificates/{SERIAL}/revoke"),
            200,
            serde_json::json!({"serial": SERIAL, "spiffe_id": ID, "revoked_at": "2026-01-01T12:00:00Z",
                "reason": "keyCompromise", "newly_revoked": true})
            .to_string(),
        ),
        (
            "POST",
            "/admin/v1/certificates/ffff/revoke".into(),
            404,
            r#"{"error":{"code":"not_found","message":"no certificate with serial ffff"}}"#.into(),
        ),
        (
            "POST",
            "/admin/v1/certificates/eeee/revoke".into(),
            502,
            "<html>bad gateway</html>".into(),
        ),
        (
            "POST",
            "/admin/v1/denied-identities".into(),
            201,
            serde_json::json!({"id": "7", "spiffe_id": ID, "reason": "", "created_at": "2026-01-01T00:00:00Z",
                "created_by": "bootstrap", "revoked_certificates": 2})
            .to_string(),
        ),
        (
            "GET",
            "/admin/v1/denied-identities".into(),
            200,
            page(
                vec![serde_json::json!({"id": "7", "spiffe_id": ID, "reason": "compromised",
                    "created_at": "2026-01-01T00:00:00Z", "created_by": "bootstrap"})
                .to_string()],
                None,
            ),
        ),
        ("DELETE", "/admin/v1/denied-identities/7".into(), 204, String::new()),
        (
            "POST",
            "/admin/v1/tokens".into(),
            201,
            serde_json::json!({"name": "reader", "role": "viewer", "token": "c0ffee",
                "expires_at": "2026-01-02T00:00:00Z"})
            .to_string(),
        ),
        (
            "GET",
            "/admin/v1/tokens".into(),
            200,
            page(
                vec![
                    serde_json::json!({"name": "bootstrap", "role": "admin", "created_by": "server",
                        "created_at": "2026-01-01T00:00:00Z"})
                    .to_string(),
                    serde_json::json!({"name": "reader", "role": "viewer", "created_by": "bootstrap",
                        "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z"})
                    .to_string(),
                ],
                None,
            ),
        ),
        ("DELETE", "/admin/v1/tokens/reader".into(), 204, String::new()),
        ("GET", "/admin/v1/audit?limit=50".into(), 200, audit_events(false)),
        ("GET", "/admin/v1/audit?limit=500".into(), 200, audit_events(false)),
    ];
    let admin = FakeAdmin::start(routes);
    let dir = scratch("admin");
    let mut out = String::new();
    for args in [
        &["trust-domains"][..],
        &["--output", "json", "trust-domains"],
        &["certs", "list", "--spiffe-id", ID],
        &["--output", "json", "certs", "list", "--spiffe-id", ID],
        &["certs", "list", "--all", "--status", "valid"],
        &[
            "--output", "json", "certs", "list", "--all", "--status", "valid",
        ],
        &["certs", "show", SERIAL],
        &["certs", "show", SERIAL, "--pem"],
        &["certs", "show", SERIAL, "--output", "json"],
        &["certs", "revoke", SERIAL, "--reason", "keyCompromise"],
        &["--output", "json", "certs", "revoke", SERIAL],
        &["certs", "revoke", "ffff"],
        &["certs", "revoke", "eeee"],
        &["deny", "add", ID, "--revoke-existing"],
        &["--output", "json", "deny", "add", ID, "--reason", "why"],
        &["deny", "list"],
        &["--output", "json", "deny", "list"],
        &["deny", "remove", "7"],
        &["--output", "json", "deny", "remove", "7"],
        &[
            "tokens",
            "create",
            "reader",
            "--role",
            "viewer",
            "--expires-in",
            "1d",
        ],
        &[
            "--output", "json", "tokens", "create", "reader", "--role", "viewer",
        ],
        &["tokens", "list"],
        &["--output", "json", "tokens", "list"],
        &["tokens", "delete", "reader"],
        &["--output", "json", "tokens", "delete", "reader"],
        &["audit", "list"],
        &["--output", "json", "audit", "list"],
        &["audit", "verify"],
        &["--output", "json", "audit", "verify"],
        &["--admin-token-file", "/nonexistent/token", "trust-domains"],
        &["issue", "--out", "x"],
        &["issue", "--key", "dsa", "--spiffe-id", ID, "--out", "x"],
    ] {
        case(&mut out, &admin, &dir, args);
    }

    let broken = FakeAdmin::start(vec![(
        "GET",
        "/admin/v1/audit?limit=500".into(),
        200,
        audit_events(true),
    )]);
    case(&mut out, &broken, &dir, &["audit", "verify"]);
    case(
        &mut out,
        &broken,
        &dir,
        &["--output", "json", "audit", "verify"],
    );
    compare("cactl_golden", &out);
}

/// `cactl issue` on the admin path: the files written and the report, with a real certificate.
#[test]
fn admin_issue() {
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x4f, 0x11, 0x22]));
    params.subject_alt_names = vec![rcgen::SanType::URI(ID.try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().pem();
    let issued = serde_json::json!({
        "serial": "4f1122", "spiffe_id": ID, "not_after": "4096-01-01T00:00:00Z",
        "certificate_pem": cert, "chain_pem": format!("{cert}{cert}"), "root_pem": cert,
    })
    .to_string();
    let admin = FakeAdmin::start(vec![("POST", "/admin/v1/issue".into(), 200, issued)]);
    let dir = scratch("issue");
    let mut out = String::new();
    case(
        &mut out,
        &admin,
        &dir,
        &["issue", "--spiffe-id", ID, "--out", "a"],
    );
    case(
        &mut out,
        &admin,
        &dir,
        &[
            "--output",
            "json",
            "issue",
            "--spiffe-id",
            ID,
            "--ttl",
            "1h",
            "--out",
            "b",
        ],
    );
    // The CSR in the request is random: keep only the fields around it.
    let out = out
        .lines()
        .map(|l| match l.find("-----BEGIN CERTIFICATE REQUEST") {
            Some(at) => {
                let end = at + l[at..].find('"').unwrap();
                format!("{}<CSR>{}", &l[..at], &l[end..])
            }
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("a/cert-chain.pem")).unwrap(),
        format!("{cert}{cert}")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("b/root-cert.pem")).unwrap(),
        cert
    );
    compare("cactl_golden_issue", &out);
}
