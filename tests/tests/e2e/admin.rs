//! The admin API: role x route matrix, token lifecycle, pagination under concurrent issuance,
//! the audit chain (tamper detection), hostile filters, sloppy paths, and the OpenAPI document
//! (validated by openapi-spec-validator and checked against the real routes).

use std::collections::BTreeSet;
use std::process::Command;

use ca_client::KeyType;
use ca_tests::{Backend, TestServer, both_backends, python_tool, run};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", server.admin_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_token(
    server: &TestServer,
    name: &str,
    role: &str,
    expires_in: Option<&str>,
) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(e) = expires_in {
        body["expires_in"] = json!(e);
    }
    let (status, answer) = call(
        server,
        Some(&server.admin_token),
        Method::POST,
        "/admin/v1/tokens",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

async fn role_matrix(backend: Backend) {
    let server = TestServer::start(backend).await;
    let viewer = create_token(&server, "ci-viewer", "viewer", None).await;
    let operator = create_token(&server, "ci-operator", "operator", Some("1h")).await;
    let admin = create_token(&server, "ci-admin", "admin", None).await;
    let deleted = create_token(&server, "gone", "admin", None).await;
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::DELETE,
        "/admin/v1/tokens/gone",
        None,
    )
    .await;
    assert_eq!(status, 204);
    // An expired token, written straight to the store.
    server
        .store()
        .await
        .create_token(&ca_server::store::TokenRecord {
            name: "expired".to_owned(),
            role: "admin".to_owned(),
            token_sha256: hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                b"expired-secret",
            )),
            created_by: "test".to_owned(),
            created_at: 1,
            expires_at: Some(2),
        })
        .await
        .unwrap();
    // Duplicate names conflict; the secret is never listed.
    let (status, _) = call(
        &server,
        Some(&admin),
        Method::POST,
        "/admin/v1/tokens",
        Some(json!({"name": "ci-viewer", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 409);
    let (_, listed) = call(&server, Some(&admin), Method::GET, "/admin/v1/tokens", None).await;
    assert!(
        !listed.to_string().contains(&viewer),
        "secrets are never listed"
    );

    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let issued = server
        .admin_client()
        .issue(&csr.csr_pem, WEB, None)
        .await
        .unwrap();
    let serial = issued.serial;
    let routes: Vec<(Method, String, Option<Value>, u8)> = vec![
        (Method::GET, "/admin/v1/trust-domains".into(), None, 1),
        (Method::GET, "/admin/v1/certificates".into(), None, 1),
        (
            Method::GET,
            format!("/admin/v1/certificates/{serial}"),
            None,
            1,
        ),
        (Method::GET, "/admin/v1/denied-identities".into(), None, 1),
        (Method::GET, "/admin/v1/audit".into(), None, 1),
        (
            Method::POST,
            "/admin/v1/issue".into(),
            Some(json!({"csr": csr.csr_pem, "spiffe_id": WEB})),
            2,
        ),
        (
            Method::POST,
            format!("/admin/v1/certificates/{serial}/revoke"),
            Some(json!({"reason": "superseded"})),
            2,
        ),
        (
            Method::POST,
            "/admin/v1/denied-identities".into(),
            Some(json!({"spiffe_id": "spiffe://cluster.local/ns/x/sa/y"})),
            2,
        ),
        (
            Method::DELETE,
            "/admin/v1/denied-identities/999999".into(),
            None,
            2,
        ),
        (
            Method::POST,
            "/admin/v1/trust-domains/cluster.local/rotate".into(),
            None,
            3,
        ),
        (
            Method::POST,
            "/admin/v1/trust-domains/cluster.local/generations/999/revoke".into(),
            Some(json!({})),
            3,
        ),
        (
            Method::POST,
            "/admin/v1/tokens".into(),
            Some(json!({"name": "made-by-matrix", "role": "viewer"})),
            3,
        ),
        (Method::GET, "/admin/v1/tokens".into(), None, 3),
        (
            Method::DELETE,
            "/admin/v1/tokens/no-such-token".into(),
            None,
            3,
        ),
    ];
    let roles = [(&viewer, 1u8), (&operator, 2), (&admin, 3)];
    for (method, path, body, needed) in &routes {
        for (token, level) in roles {
            let (status, answer) =
                call(&server, Some(token), method.clone(), path, body.clone()).await;
            if level >= *needed {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} level {level}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} level {level}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden");
            }
        }
        for token in [
            None,
            Some("wrong"),
            Some(deleted.as_str()),
            Some("expired-secret"),
        ] {
            let (status, answer) = call(&server, token, method.clone(), path, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthenticated");
        }
    }
    server.stop().await;
}
both_backends!(role_matrix_on, role_matrix);

/// Paging newest-first with a cursor returns every certificate exactly once while new ones are
/// being issued (new ones land before the cursor, never inside the walk).
async fn pagination_is_stable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_client();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut before = BTreeSet::new();
    for _ in 0..60 {
        before.insert(admin.issue(&csr.csr_pem, WEB, None).await.unwrap().serial);
    }
    let writer = {
        let admin = server.admin_client();
        let csr = csr.csr_pem.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                admin.issue(&csr, WEB, None).await.unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/admin/v1/certificates?limit=7&spiffe_id={}",
            urlencode(WEB)
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) =
            call(&server, Some(&server.admin_token), Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["serial"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no certificate twice");
    assert!(
        before.is_subset(&unique),
        "every certificate that existed is listed"
    );
    // Filters: status and a malformed cursor.
    let (_, valid) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/certificates?status=revoked",
        None,
    )
    .await;
    assert_eq!(valid["items"].as_array().unwrap().len(), 0);
    let (status, answer) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/certificates?cursor=bogus",
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), answer["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/certificates?status=maybe",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/certificates?limit=100000",
        None,
    )
    .await;
    assert_eq!(status, 400);
    server.stop().await;
}
both_backends!(pagination_is_stable_on, pagination_is_stable);

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// SQL and JSON metacharacters in filters are data, nothing more.
async fn hostile_filters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    server
        .admin_client()
        .issue(&csr.csr_pem, WEB, None)
        .await
        .unwrap();
    for hostile in [
        "' OR 1=1 --",
        "%",
        "_",
        "\"}]",
        "spiffe://cluster.local/ns/default/sa/web' --",
        "\u{0}",
        "ü\u{202e}",
    ] {
        for key in ["spiffe_id", "trust_domain"] {
            let path = format!("/admin/v1/certificates?{key}={}", urlencode(hostile));
            let (status, page) =
                call(&server, Some(&server.admin_token), Method::GET, &path, None).await;
            if hostile.chars().any(char::is_control) {
                assert_eq!(
                    (status.as_u16(), page["error"]["code"].as_str()),
                    (400, Some("invalid_filter")),
                    "{hostile:?}"
                );
                continue;
            }
            assert_eq!(status, 200, "{hostile}: {page}");
            assert_eq!(page["items"].as_array().unwrap().len(), 0, "{hostile}");
        }
    }
    let (_, page) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/certificates?status=valid",
        None,
    )
    .await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        2,
        "the workload and the serving certificate are intact"
    );
    server.stop().await;
}
both_backends!(hostile_filters_on, hostile_filters);

/// Sloppy paths never reach a handler, even with a valid admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_paths_are_refused() {
    let server = TestServer::start(Backend::Sqlite).await;
    let token = server.admin_token.clone();
    for path in [
        "/admin/v1/tokens/",
        "/admin/v1//tokens",
        "//admin/v1/tokens",
        "/admin/v1/./tokens",
        "/admin/v1/x/../tokens",
        "/admin/v1/tokens%2F",
        "/admin/v1%2Ftokens",
        "/admin/v1/%2e%2e/v1/tokens",
        "/ADMIN/v1/tokens",
        "/admin/V1/tokens",
        "/admin/v1/tokens\\",
    ] {
        // Sent byte for byte: HTTP clients would normalise these paths before sending.
        let (status, body) = raw_get(server.server.admin_addr, path, &token).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("\"not_found\""), "{path}: {body}");
    }
    let (status, _) = call(&server, Some(&token), Method::GET, "/admin/v1/tokens", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// A GET with the path exactly as given, over a raw HTTP/1.1 connection.
async fn raw_get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The OpenAPI document: served, valid (openapi-spec-validator), and in step with the routes:
/// every documented operation is routed (401 without a token, not 404/405), and the routes the
/// test knows of are all documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_routes_and_validates() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, document) = call(&server, None, Method::GET, "/admin/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let file = server.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let (ok, out, err) = run(Command::new(python_tool("openapi-spec-validator")).arg(&file));
    assert!(ok, "openapi-spec-validator: {out}{err}");

    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
            let concrete = path
                .replace("{serial}", "00ff")
                .replace("{id}", "1")
                .replace("{name}", "x")
                .replace("{td}", "cluster.local")
                .replace("{generation}", "1");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, answer) =
                call(&server, None, method.clone(), &concrete, Some(json!({}))).await;
            assert_eq!(
                status, 401,
                "{method} {concrete} is documented but answers {status} {answer}"
            );
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/admin/v1/issue"),
        ("GET", "/admin/v1/trust-domains"),
        ("POST", "/admin/v1/trust-domains/{td}/rotate"),
        (
            "POST",
            "/admin/v1/trust-domains/{td}/generations/{generation}/revoke",
        ),
        ("POST", "/admin/v1/trust-domains/{td}/import"),
        ("POST", "/admin/v1/trust-domains/{td}/csr"),
        ("POST", "/admin/v1/federation/{td}/reset"),
        ("GET", "/admin/v1/certificates"),
        ("GET", "/admin/v1/certificates/{serial}"),
        ("POST", "/admin/v1/certificates/{serial}/revoke"),
        ("POST", "/admin/v1/denied-identities"),
        ("GET", "/admin/v1/denied-identities"),
        ("DELETE", "/admin/v1/denied-identities/{id}"),
        ("POST", "/admin/v1/tokens"),
        ("GET", "/admin/v1/tokens"),
        ("DELETE", "/admin/v1/tokens/{name}"),
        ("GET", "/admin/v1/audit"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);
    // An undocumented method on a documented path is not routed.
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::PUT,
        "/admin/v1/tokens",
        None,
    )
    .await;
    assert_eq!(status, 405);
    server.stop().await;
}

/// Every admin action is an audit event; altering a row is detected by `cactl audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_detects_tampering() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_client();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let issued = admin.issue(&csr.csr_pem, WEB, None).await.unwrap();
    admin.issue("garbage", WEB, None).await.unwrap_err();
    admin.revoke(&issued.serial, "superseded").await.unwrap();
    create_token(&server, "auditor", "viewer", None).await;
    let (_, page) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/admin/v1/audit",
        None,
    )
    .await;
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "token.create",
            "certificate.revoke",
            "certificate.issue",
            "certificate.issue"
        ]
    );

    let verify = |server: &TestServer| {
        run(Command::new(ca_tests::bin("cactl"))
            .args(["--admin", &server.admin_url(), "--admin-token-file"])
            .arg(&server.config.bootstrap_token_file)
            .args(["audit", "verify"]))
    };
    let (ok, stdout, stderr) = verify(&server);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 4 events"), "{stdout}");

    // Someone edits a row behind our back.
    let pool = sqlx::SqlitePool::connect(&server.config.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'success' WHERE action = 'certificate.issue' AND outcome = 'rejected'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (ok, stdout, _) = verify(&server);
    assert!(!ok);
    assert!(stdout.contains("BROKEN"), "{stdout}");
    server.stop().await;
}

/// The admin listener over TLS with the gRPC port's own certificate: a client verifying with
/// the serving root gets through, plain HTTP does not, and a bearer token never crosses in
/// clear. Off loopback without TLS, the config is refused unless the operator says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    config.tls.admin_tls = true;
    let server = TestServer::start_with(config, dir).await;
    let https = format!("https://localhost:{}", server.server.admin_addr.port());
    let admin = ca_client::AdminClient::with_roots(
        &https,
        &server.admin_token,
        Some(&server.serving_root_pem()),
    )
    .unwrap();
    let domains = admin.trust_domains().await.unwrap();
    assert_eq!(domains.body.items[0].name, "cluster.local");
    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = reqwest::get(format!("{}/admin/v1/trust-domains", server.admin_url())).await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
    // A client that does not trust our root refuses the server.
    let stranger = ca_client::AdminClient::new(&https, &server.admin_token).unwrap();
    assert!(stranger.trust_domains().await.is_err());
    server.stop().await;

    let refused = ca_server::config::Config::from_toml("[listen]\nadmin = \"0.0.0.0:9090\"\n")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("listen.admin"), "{refused}");
    assert!(refused.contains("admin_tls"), "{refused}");
    for accepted in [
        "[listen]\nadmin = \"0.0.0.0:9090\"\n[tls]\nadmin_tls = true\n",
        "[listen]\nadmin = \"0.0.0.0:9090\"\n[tls]\nadmin_plaintext_off_loopback = true\n",
        "[listen]\nadmin = \"[::1]:9090\"\n",
    ] {
        ca_server::config::Config::from_toml(accepted).unwrap();
    }
}
