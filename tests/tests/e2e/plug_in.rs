//! Plug-in CAs (SPEC 10, issue 16 item 6) against an external PKI made by openssl in the test:
//! a corporate root, an intermediate under it, and the issuing intermediate Istio's `cacerts`
//! would hold. Every refusal of the admission family (400 with its stable code, nothing
//! changed, audited); the import under a new root (published first, activated once converged);
//! answers carrying the chain up to the external root, verified by openssl; no automatic
//! rotation under a root whose key is not here; the CSR flow (key made here, signed by openssl,
//! installed, active at once under the same root) through `cactl`; a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ca_client::admin::CaFiles;
use ca_client::{Error, KeyType, TokenAuth};
use ca_server::keys::Kek;
use ca_server::spiffe::TrustDomain;
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer, both_backends};
use time::OffsetDateTime;

/// An openssl-made PKI in a directory: each CA is `NAME.crt` and `NAME.key`.
struct Pki {
    dir: PathBuf,
}

/// How a key is made.
#[derive(Clone, Copy)]
enum Key {
    /// P-256 in PKCS#8 (`openssl genpkey`).
    P256,
    /// P-256 in SEC1 (`openssl ecparam -genkey`: `EC PRIVATE KEY`).
    P256Sec1,
    /// RSA-2048 in PKCS#1 (`RSA PRIVATE KEY`).
    Rsa2048Pkcs1,
    Rsa1024,
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

impl Pki {
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("external-pki");
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }

    fn openssl(&self, args: &[&str]) {
        let (ok, _, stderr) =
            ca_tests::run(Command::new("openssl").current_dir(&self.dir).args(args));
        assert!(ok, "openssl {args:?}: {stderr}");
    }

    fn key(&self, name: &str, key: Key) {
        let out = format!("{name}.key");
        match key {
            Key::P256 => self.openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &out,
            ]),
            Key::P256Sec1 => self.openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &out,
            ]),
            Key::Rsa2048Pkcs1 => self.openssl(&["genrsa", "-traditional", "-out", &out, "2048"]),
            Key::Rsa1024 => self.openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                &out,
            ]),
        }
    }

    /// Makes CA `name` with a fresh key, signed by `signer` (self-signed when `None`), with the
    /// extensions `ext`, valid `days`, signed with `digest`.
    fn ca(&self, name: &str, signer: Option<&str>, key: Key, ext: &str, days: u32, digest: &str) {
        self.key(name, key);
        self.sign(name, signer, ext, days, digest);
    }

    /// Signs `name.key`'s public key (or `name.csr` when it exists) as `name.crt`.
    fn sign(&self, name: &str, signer: Option<&str>, ext: &str, days: u32, digest: &str) {
        let ext_file = format!("{name}.ext");
        std::fs::write(self.path(&ext_file), format!("[v3]\n{ext}")).unwrap();
        let csr = format!("{name}.csr");
        if !self.path(&csr).exists() {
            self.openssl(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/O=Example Corp/CN={name}"),
                "-out",
                &csr,
            ]);
        }
        let days = days.to_string();
        let digest = format!("-{digest}");
        let out = format!("{name}.crt");
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-days",
            &days,
            &digest,
            "-extfile",
            &ext_file,
            "-extensions",
            "v3",
            "-out",
            &out,
        ];
        let (ca, ca_key);
        match signer {
            Some(s) => {
                ca = format!("{s}.crt");
                ca_key = format!("{s}.key");
                args.extend(["-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial"]);
            }
            None => {
                ca_key = format!("{name}.key");
                args.extend(["-signkey", &ca_key]);
            }
        }
        self.openssl(&args);
    }

    /// Istio's `cacerts` for issuing CA `issuing` under `chain` (the intermediates above it)
    /// and `root`.
    fn cacerts(&self, issuing: &str, above: &[&str], root: &str) -> CaFiles {
        let mut chain = self.read(&format!("{issuing}.crt"));
        for name in above {
            chain.push_str(&self.read(&format!("{name}.crt")));
        }
        chain.push_str(&self.read(&format!("{root}.crt")));
        CaFiles {
            ca_cert_pem: self.read(&format!("{issuing}.crt")),
            ca_key_pem: Some(self.read(&format!("{issuing}.key"))),
            cert_chain_pem: Some(chain),
            root_cert_pem: self.read(&format!("{root}.crt")),
        }
    }
}

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

/// `openssl verify` of an Istio answer's leaf with its intermediates against `root_file` only.
fn openssl_verifies(dir: &Path, root_file: &Path, chain: &[String]) -> (bool, String) {
    let untrusted = dir.join("answer-intermediates.pem");
    let leaf = dir.join("answer-leaf.pem");
    std::fs::write(&untrusted, chain[1..chain.len() - 1].concat()).unwrap();
    std::fs::write(&leaf, &chain[0]).unwrap();
    let (ok, stdout, stderr) = ca_tests::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(root_file)
            .arg("-untrusted")
            .arg(&untrusted)
            .arg(&leaf),
    );
    (ok, format!("{stdout}{stderr}"))
}

fn error_code(result: Result<impl std::fmt::Debug, Error>) -> (u16, String) {
    match result {
        Err(Error::Server { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn plug_in_ca(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(backend, &kube, |config| {
        config.listen.public_url = Some("https://ca.example.internal".to_owned());
        for td in &mut config.trust_domains {
            td.refresh_hint = Duration::from_secs(2);
            td.root_activation_max_wait = Duration::from_secs(3600);
        }
    })
    .await;
    let ca = &server.server.ca;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let admin = server.admin_client();
    let pki = Pki::new(server.dir.path());

    // The external PKI: root -> corp intermediate -> the issuing CA of cacerts (SEC1 key).
    pki.ca(
        "root",
        None,
        Key::P256,
        &format!("{CA_EXT}basicConstraints=critical,CA:TRUE,pathlen:2\n"),
        3650,
        "sha256",
    );
    pki.ca("corp", Some("root"), Key::P256, CA_EXT, 1825, "sha256");
    pki.ca(
        "issuing",
        Some("corp"),
        Key::P256Sec1,
        &format!("{CA_EXT}basicConstraints=critical,CA:TRUE,pathlen:0\n"),
        365,
        "sha256",
    );
    let good = pki.cacerts("issuing", &["corp"], "root");

    // Bad imports, each a member of the admission family: 400, its code, nothing changed.
    pki.ca("other-root", None, Key::P256, CA_EXT, 3650, "sha256");
    pki.key("stranger", Key::P256);
    pki.ca("leafish", Some("corp"), Key::P256, "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\n", 365, "sha256");
    pki.ca("no-certsign", Some("corp"), Key::P256, "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n", 365, "sha256");
    pki.ca(
        "tight-root",
        None,
        Key::P256,
        &format!("{CA_EXT}basicConstraints=critical,CA:TRUE,pathlen:0\n"),
        3650,
        "sha256",
    );
    pki.ca(
        "tight-corp",
        Some("tight-root"),
        Key::P256,
        CA_EXT,
        1825,
        "sha256",
    );
    pki.ca(
        "under-tight",
        Some("tight-corp"),
        Key::P256,
        CA_EXT,
        365,
        "sha256",
    );
    pki.ca("short", Some("corp"), Key::P256, CA_EXT, 1, "sha256");
    pki.ca("sha1", Some("corp"), Key::P256, CA_EXT, 365, "sha1");
    pki.ca(
        "server-only",
        Some("corp"),
        Key::P256,
        &format!("{CA_EXT}extendedKeyUsage=serverAuth\n"),
        365,
        "sha256",
    );
    pki.ca(
        "other-domain",
        Some("corp"),
        Key::P256,
        &format!("{CA_EXT}nameConstraints=critical,permitted;URI:other.example\n"),
        365,
        "sha256",
    );
    pki.ca("weak", Some("corp"), Key::Rsa1024, CA_EXT, 365, "sha256");
    pki.ca(
        "odd-critical",
        Some("corp"),
        Key::P256,
        &format!("{CA_EXT}1.3.6.1.4.1.99999.1=critical,ASN1:NULL\n"),
        365,
        "sha256",
    );
    let with = |issuing: &str, above: &[&str], root: &str| pki.cacerts(issuing, above, root);
    let mut cases: Vec<(&str, CaFiles, &str)> = vec![
        (
            "a key that is not ca-cert.pem's",
            CaFiles {
                ca_key_pem: Some(pki.read("stranger.key")),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_key_mismatch",
        ),
        (
            "a root that did not sign the chain",
            CaFiles {
                root_cert_pem: pki.read("other-root.crt"),
                cert_chain_pem: None,
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_chain_invalid",
        ),
        (
            "the chain without its middle",
            CaFiles {
                cert_chain_pem: Some(pki.read("issuing.crt")),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_chain_invalid",
        ),
        (
            "a certificate that is not a CA",
            with("leafish", &["corp"], "root"),
            "import_not_ca",
        ),
        (
            "a CA without keyCertSign",
            with("no-certsign", &["corp"], "root"),
            "import_not_ca",
        ),
        (
            "a root whose path length forbids the CAs below",
            with("under-tight", &["tight-corp"], "tight-root"),
            "import_path_length",
        ),
        (
            "a CA that ends within max_ttl",
            with("short", &["corp"], "root"),
            "import_validity_too_short",
        ),
        (
            "a SHA-1 signature",
            with("sha1", &["corp"], "root"),
            "import_chain_invalid",
        ),
        (
            "an extended key usage without clientAuth",
            with("server-only", &["corp"], "root"),
            "import_profile",
        ),
        (
            "URI name constraints of another domain",
            with("other-domain", &["corp"], "root"),
            "import_profile",
        ),
        (
            "an unknown critical extension",
            with("odd-critical", &["corp"], "root"),
            "import_profile",
        ),
        (
            "an RSA-1024 key",
            with("weak", &["corp"], "root"),
            "import_key_algorithm",
        ),
        (
            "garbage for a certificate",
            CaFiles {
                ca_cert_pem: "not pem at all".to_owned(),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_malformed",
        ),
        (
            "a key where the certificate goes",
            CaFiles {
                ca_cert_pem: pki.read("issuing.key"),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_malformed",
        ),
        (
            "two certificates for ca-cert.pem",
            CaFiles {
                ca_cert_pem: format!("{}{}", pki.read("issuing.crt"), pki.read("corp.crt")),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_malformed",
        ),
        (
            "a file over 64 KiB",
            CaFiles {
                cert_chain_pem: Some("A".repeat(65 * 1024)),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_malformed",
        ),
        (
            "a corrupted certificate body",
            CaFiles {
                ca_cert_pem: pki.read("issuing.crt").replacen("MII", "MIJ", 1),
                ..pki.cacerts("issuing", &["corp"], "root")
            },
            "import_malformed",
        ),
    ];
    // An encrypted key.
    pki.openssl(&[
        "pkey",
        "-in",
        "issuing.key",
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        "encrypted.key",
    ]);
    cases.push((
        "an encrypted key",
        CaFiles {
            ca_key_pem: Some(pki.read("encrypted.key")),
            ..pki.cacerts("issuing", &["corp"], "root")
        },
        "import_malformed",
    ));
    let store = server.store().await;
    let before = store.generations("cluster.local").await.unwrap();
    let mut answers = std::collections::BTreeSet::new();
    for (what, files, code) in &cases {
        match admin.import_ca("cluster.local", files).await {
            Err(Error::Server {
                status,
                code: got,
                message,
            }) => {
                assert_eq!((status, got.as_str()), (400, *code), "{what}: {message}");
                answers.insert(format!("{got}: {message}"));
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    // Expired and not yet valid, at another clock (the check takes `now` like every other).
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let key = good.ca_key_pem.clone().unwrap();
    let files = ca_server::external_ca::CaFiles {
        ca_cert_pem: &good.ca_cert_pem,
        ca_key_pem: Some(&key),
        cert_chain_pem: good.cert_chain_pem.as_deref(),
        root_cert_pem: &good.root_cert_pem,
    };
    for (what, at) in [
        (
            "expired",
            OffsetDateTime::now_utc() + time::Duration::days(400),
        ),
        (
            "not yet valid",
            OffsetDateTime::now_utc() - time::Duration::days(2),
        ),
    ] {
        let err = ca
            .import_intermediate(&kek, &td, &files, "test", at)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ca_server::ca::lifecycle::Error::Import(e) if e.code() == "import_expired"),
            "{what}: {err}"
        );
    }
    // A root without extensions (a trust anchor, as verifiers take it) and an intermediate
    // without keyUsage pass, with warnings; and change nothing by themselves (checked directly).
    pki.ca(
        "bare-root",
        None,
        Key::P256,
        "subjectKeyIdentifier=hash\n",
        3650,
        "sha256",
    );
    pki.ca(
        "under-bare",
        Some("bare-root"),
        Key::P256,
        "basicConstraints=critical,CA:TRUE\nsubjectKeyIdentifier=hash\n",
        365,
        "sha256",
    );
    let bare = pki.cacerts("under-bare", &[], "bare-root");
    let bare_key = bare.ca_key_pem.clone().unwrap();
    let checked = ca_server::external_ca::validate(
        &ca_server::external_ca::CaFiles {
            ca_cert_pem: &bare.ca_cert_pem,
            ca_key_pem: Some(&bare_key),
            cert_chain_pem: bare.cert_chain_pem.as_deref(),
            root_cert_pem: &bare.root_cert_pem,
        },
        None,
        &td,
        Duration::from_secs(24 * 3600),
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    assert_eq!(
        checked
            .warnings
            .iter()
            .filter(|w| w.contains("has no keyUsage"))
            .count(),
        2,
        "{:?}",
        checked.warnings
    );
    let after = store.generations("cluster.local").await.unwrap();
    assert_eq!(after.len(), before.len(), "no refusal left a generation");
    assert_eq!(ca.authorities().get(&td).unwrap().generation, 1);
    let audit = admin.all_audit_events().await.unwrap();
    let refusals = audit
        .body
        .iter()
        .filter(|e| e.action == "ca.import.request" && e.outcome == "rejected")
        .count();
    // Every distinct refusal is a row (an identical repeat within a minute is counted into a
    // summary row instead, as for every refusal).
    assert_eq!(refusals, answers.len(), "every refusal is audited");
    assert!(answers.len() >= cases.len() - 2, "{answers:?}");
    let unknown = admin.import_ca("nowhere.example", &good).await;
    assert_eq!(error_code(unknown).0, 404);

    // The good import: a new root, so it is published first (prepared) and signs nothing yet.
    let imported = admin.import_ca("cluster.local", &good).await.unwrap().body;
    assert_eq!(imported.rotation.state, "prepared");
    assert_eq!(imported.rotation.generation, 2);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
    let bundle = reqwest::get(format!(
        "{}/v1/bundles/cluster.local.pem",
        server.http_url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        bundle.contains(pki.read("root.crt").trim()),
        "the external root is published"
    );
    assert_eq!(
        ca.authorities().get(&td).unwrap().generation,
        1,
        "still signing"
    );
    // A second import while it is in flight: 409, and the same intermediate again too.
    let again = admin.import_ca("cluster.local", &good).await;
    assert_eq!(error_code(again).0, 409);

    // Activated once converged (no live leaf, three refresh hints later).
    ca.lifecycle_tick(
        &kek,
        OffsetDateTime::now_utc() + time::Duration::seconds(10),
        true,
    )
    .await;
    let active = ca.authorities().get(&td).unwrap().clone();
    assert_eq!(active.generation, 2);
    assert!(active.external_root);

    // Answers carry [leaf, issuing, corp, roots]; openssl verifies the leaf against the external
    // root alone; the ca.v1 chain has the same intermediates.
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let none = BTreeMap::new();
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "web")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(chain.len(), 4, "{chain:?}");
    assert_eq!(chain[1].trim(), pki.read("issuing.crt").trim());
    assert_eq!(chain[2].trim(), pki.read("corp.crt").trim());
    assert!(chain[3].contains(pki.read("root.crt").trim()));
    let (ok, out) = openssl_verifies(&pki.dir, &pki.path("root.crt"), &chain);
    assert!(ok, "{out}");
    // Python grpcio (istio-agent's request) gets the same shape, and its leaf verifies with the
    // roots of its own last element (ours and the external one while ours is retired).
    let python = crate::svid::grpcio_chain(&server, &kube, "plug-in").await;
    assert_eq!(python.len(), 4, "{python:?}");
    let roots_file = pki.path("python-roots.pem");
    std::fs::write(&roots_file, python.last().unwrap()).unwrap();
    let (ok, out) = openssl_verifies(&pki.dir, &roots_file, &python);
    assert!(ok, "{out}");
    // mTLS renewal with that leaf works (chain up to the external root).
    let identity = (
        chain[..3].concat().into_bytes(),
        csr.key_pem.as_bytes().to_vec(),
    );
    let renewed = server
        .grpc_client(Some(identity))
        .await
        .create_certificate(&csr.csr_pem, 3600, &TokenAuth::default(), &none)
        .await
        .unwrap();
    assert_eq!(renewed.len(), 4);

    // No rotation under a root whose key is not here; the root-signed CRL is the external CA's.
    let (status, code) = error_code(admin.rotate("cluster.local", "intermediate").await);
    assert_eq!((status, code.as_str()), (409, "external_root"));
    let root_crl = reqwest::get(format!("{}/v1/crl/cluster.local/root", server.http_url()))
        .await
        .unwrap();
    assert_eq!(root_crl.status(), 404);
    let generation_crl = reqwest::get(format!("{}/v1/crl/cluster.local/2", server.http_url()))
        .await
        .unwrap();
    assert_eq!(
        generation_crl.status(),
        200,
        "its own CRL, signed by the imported key"
    );
    let (status, code) = error_code(
        admin
            .revoke_generation("cluster.local", 2, "cACompromise")
            .await,
    );
    assert_eq!(
        (status, code.as_str()),
        (409, "external_root"),
        "the replacement must come first"
    );

    // The CSR flow through cactl: the key is made here, openssl signs it as corp, installed.
    let cactl = |args: &[&str]| {
        let output = Command::new(ca_tests::bin("cactl"))
            .env("CA_ADMIN_TOKEN_FILE", &server.config.bootstrap_token_file)
            .args(["--admin", &server.admin_url(), "--http", &server.http_url()])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let csr_file = pki.path("next.csr");
    let (ok, _, stderr) = cactl(&[
        "ca",
        "csr",
        "cluster.local",
        "--out",
        csr_file.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let first_csr = std::fs::read_to_string(&csr_file).unwrap();
    let (ok, again, _) = cactl(&["ca", "csr", "cluster.local"]);
    assert!(ok);
    assert_eq!(
        again.trim(),
        first_csr.trim(),
        "asking again returns the waiting CSR"
    );
    let (ok, status_text, _) = cactl(&["ca", "status", "cluster.local"]);
    assert!(ok);
    assert!(
        status_text.contains("external (plug-in CA, 1 intermediate(s) above)"),
        "{status_text}"
    );
    assert!(
        status_text.contains("a CSR for the next intermediate waits"),
        "{status_text}"
    );
    // A certificate for another key is refused (the pending key stays).
    let (ok, _, stderr) = cactl(&[
        "ca",
        "install",
        "cluster.local",
        "--cert",
        pki.path("corp.crt").to_str().unwrap(),
        "--root",
        pki.path("root.crt").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("import_key_mismatch"), "{stderr}");
    pki.sign(
        "next",
        Some("corp"),
        &format!("{CA_EXT}basicConstraints=critical,CA:TRUE,pathlen:0\n"),
        365,
        "sha256",
    );
    let (ok, stdout, stderr) = cactl(&[
        "ca",
        "install",
        "cluster.local",
        "--cert",
        pki.path("next.crt").to_str().unwrap(),
        "--chain",
        pki.path("corp.crt").to_str().unwrap(),
        "--root",
        pki.path("root.crt").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("generation 3 active"),
        "same root: active at once: {stdout}"
    );
    let third = ca.authorities().get(&td).unwrap().clone();
    assert_eq!(third.generation, 3);
    assert_eq!(third.chain_der.len(), 2);
    let (ok, _, stderr) = cactl(&[
        "ca",
        "install",
        "cluster.local",
        "--cert",
        pki.path("next.crt").to_str().unwrap(),
        "--root",
        pki.path("root.crt").to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("no_pending_csr"),
        "the key was used: {stderr}"
    );

    // Generation 2 is retired and may now be revoked; the Istio answer chains to the root
    // through the new intermediate.
    let revoked = admin
        .revoke_generation("cluster.local", 2, "superseded")
        .await
        .unwrap();
    assert!(revoked.body.newly_revoked);
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "api")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(chain[1].trim(), pki.read("next.crt").trim());
    let (ok, out) = openssl_verifies(&pki.dir, &pki.path("root.crt"), &chain);
    assert!(ok, "{out}");

    // A restart loads the plug-in generation (no root key, its chain) and issues the same way.
    let (config, dir) = server.stop().await;
    let server = TestServer::start_with(config, dir).await;
    let client = server.grpc_client(None).await;
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "db")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(chain.len(), 4);
    let (ok, out) = openssl_verifies(&pki.dir, &pki.path("root.crt"), &chain);
    assert!(ok, "{out}");
    server.stop().await;
}
both_backends!(plug_in_ca_on, plug_in_ca);

/// `cacerts_dir`: at a trust domain's first start its generation 1 is the plug-in CA in the
/// directory (no root made here, nothing to converge: nothing was issued before); a bad
/// directory stops the start with the import's code, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_dir_at_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.ca("root", None, Key::Rsa2048Pkcs1, CA_EXT, 3650, "sha256");
    pki.ca("issuing", Some("root"), Key::P256, CA_EXT, 365, "sha256");
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir_all(&cacerts).unwrap();
    let files = pki.cacerts("issuing", &[], "root");
    std::fs::write(cacerts.join("ca-cert.pem"), &files.ca_cert_pem).unwrap();
    std::fs::write(
        cacerts.join("ca-key.pem"),
        files.ca_key_pem.as_ref().unwrap(),
    )
    .unwrap();
    std::fs::write(cacerts.join("root-cert.pem"), &files.root_cert_pem).unwrap();

    // A key that does not match: the start fails, naming the code; nothing is stored.
    std::fs::write(cacerts.join("ca-key.pem"), pki.read("root.key")).unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    config.trust_domains[0].cacerts_dir = Some(cacerts.clone());
    let Err(err) = ca_server::server::Server::start(config.clone()).await else {
        panic!("a bad cacerts_dir must stop the start");
    };
    let chain = ca_tests::error_chain(&err);
    assert!(chain.contains("import_key_mismatch"), "{chain}");
    let store = ca_server::store::Store::open(&ca_server::store::StoreOptions::new(&url))
        .await
        .unwrap();
    assert!(store.generations("cluster.local").await.unwrap().is_empty());
    store.close().await;

    // The right key: generation 1 is the plug-in CA; its root is the only one published.
    std::fs::write(
        cacerts.join("ca-key.pem"),
        files.ca_key_pem.as_ref().unwrap(),
    )
    .unwrap();
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |c| {
        c.trust_domains[0].cacerts_dir = Some(cacerts.clone());
    })
    .await;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let active = server.server.ca.authorities().get(&td).unwrap().clone();
    assert_eq!(active.generation, 1);
    assert!(active.external_root);
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let chain = server
        .grpc_client(None)
        .await
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "web")),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(
        chain[2].trim(),
        pki.read("root.crt").trim(),
        "only the external root"
    );
    let (ok, out) = openssl_verifies(&pki.dir, &pki.path("root.crt"), &chain);
    assert!(ok, "{out}");
    server.stop().await;
}
