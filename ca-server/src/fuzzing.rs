//! Entry points for the fuzz targets in `fuzz/`; not API. Each takes untrusted bytes, runs the
//! server's own parser on them (and the checks the server runs right after it), ignores the
//! result and must never panic. Fixed inputs the parsers need (a trust domain, a cluster's JWKS,
//! an admin router) are built once per process; a failure to build them is a harness failure
//! and panics with the reason.

#![doc(hidden)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use tokio::runtime::Runtime;

use crate::authn::jwt::{ClusterTokens, Jwks};
use crate::config::{ClusterAuth, ClusterConfig, Config, JwksSource};
use crate::spiffe::{SpiffeId, TrustDomain};

/// The trust domain the bundle, CSR and token entry points check against.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The issuer and audience the fixed cluster accepts in tokens.
pub const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// `kid` of the fixed cluster's P-256 key, which [`jwt_signed`] signs with.
pub const TOKEN_KID: &str = "fuzz-es256";
/// The `now` tokens are checked at (2025-06-15).
pub const TOKEN_NOW: i64 = 1_750_000_000;

/// Public modulus of a throwaway RSA-2048 key (its private half was never kept), so that RS256
/// tokens reach signature verification.
const RSA_MODULUS: &str = "ywG-hXqwvuS4ZSMPXoLmj5Jkr2auzyFVNU2JvcK94NwCENQ8_SCYKY-Ou724_jSgVCMSGKLgDtxkbviDScxWHBL1kUYrV4IawiSLSZwkmm0MDKt4j8-wsKRdqweH2kz-9JK1S2mIRVG86w-Jo07xT_gtyCPQRPAZWFUMAP79k7-B6c7bXYXlTk9hzRA7HLyt3P-F_-WbivOQBZKYQflQSZUoJ-fpyrKVsXXXQaMPVZ6IjVLO67GKnlacqxoic-PDZf9fn1DCrIbAmJo4gKS8aRQZnvYoFuRSmfrwUdp8HhB-eYmv59hVz_D88AyNqt34kZ_iiabzIb7GTuBUUx7hBQ";

fn harness<T>(what: &str, result: Result<T, impl std::fmt::Display>) -> T {
    result.unwrap_or_else(|e| panic!("fuzz harness setup ({what}): {e}"))
}

fn trust_domain() -> &'static TrustDomain {
    static TD: OnceLock<TrustDomain> = OnceLock::new();
    TD.get_or_init(|| harness("trust domain", TrustDomain::parse(TRUST_DOMAIN)))
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        harness(
            "tokio runtime",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        )
    })
}

/// A CSR, PEM or DER, as `issuance::csr::parse` reads it; a CSR that parses is then checked
/// against an identity as enrollment does.
pub fn csr(bytes: &[u8]) {
    if let Ok(csr) = crate::issuance::csr::parse(bytes) {
        let _ = csr.spki_sha256();
        if let Ok(id) = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/fuzz") {
            let _ = crate::issuance::authorize_csr(&csr, &id);
        }
    }
}

/// Istio's `cacerts` files as a plug-in CA import takes them (`external_ca::validate`): the
/// input is split at `0xFF` bytes (never in PEM) into `ca-cert.pem`, `ca-key.pem`,
/// `cert-chain.pem` and `root-cert.pem`.
pub fn cacerts(bytes: &[u8]) {
    let mut parts = bytes.splitn(4, |b| *b == 0xFF).map(String::from_utf8_lossy);
    let ca_cert = parts.next().unwrap_or_default();
    let ca_key = parts.next();
    let chain = parts.next();
    let root = parts.next().unwrap_or_default();
    let files = crate::external_ca::CaFiles {
        ca_cert_pem: &ca_cert,
        ca_key_pem: ca_key.as_deref(),
        cert_chain_pem: chain.as_deref(),
        root_cert_pem: &root,
    };
    let _ = crate::external_ca::validate(
        &files,
        None,
        trust_domain(),
        Duration::from_secs(86_400),
        TOKEN_NOW,
    );
}

/// A SPIFFE ID, a trust domain, and `<namespace>:<service account>` as tokens name them.
pub fn spiffe_id(text: &str) {
    let _ = SpiffeId::parse(text);
    let _ = TrustDomain::parse(text);
    if let Some((namespace, service_account)) = text.split_once(':') {
        let _ = SpiffeId::for_service_account(trust_domain(), namespace, service_account);
    }
}

/// A JWKS document as a cluster's `jwks_file`/`jwks_url` is read.
pub fn jwks(bytes: &[u8]) {
    let _ = Jwks::parse(bytes);
}

/// The fixed cluster: one P-256 key (generated per process, never stored) and one RSA public
/// key, loaded through the same file path a `jwks_file` takes.
struct TokenFixture {
    cluster: ClusterTokens,
    signer: EcdsaKeyPair,
    rng: SystemRandom,
}

fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = harness(
            "P-256 key",
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        );
        let signer = harness(
            "P-256 key",
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng),
        );
        let point = signer.public_key().as_ref();
        let (x, y) = harness(
            "P-256 point",
            point
                .get(1..)
                .and_then(|xy| xy.split_at_checked(32))
                .ok_or("not uncompressed"),
        );
        let jwks = serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": TOKEN_KID,
              "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) },
            { "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "fuzz-rs256",
              "n": RSA_MODULUS, "e": "AQAB" },
        ]});
        let path =
            std::env::temp_dir().join(format!("mesh-ca-fuzz-jwks-{}.json", std::process::id()));
        harness("JWKS file", std::fs::write(&path, jwks.to_string()));
        let cluster = ClusterTokens::new(ClusterConfig {
            name: "fuzz".to_owned(),
            trust_domain: trust_domain().clone(),
            issuer: TOKEN_ISSUER.to_owned(),
            jwks: Some(JwksSource::File(path.clone())),
            auth: ClusterAuth::Jwks,
            audiences: vec![TOKEN_AUDIENCE.to_owned()],
            trusted_node_accounts: Vec::new(),
            jwks_ca_file: None,
            // Loaded once here; an unknown `kid` must not reload it during the run.
            jwks_reload_min_interval: Duration::from_secs(365 * 24 * 3600),
            kubernetes: None,
        });
        harness("JWKS load", runtime().block_on(cluster.reload()));
        let _ = std::fs::remove_file(&path);
        TokenFixture {
            cluster,
            signer,
            rng,
        }
    })
}

/// A bearer token through the whole verify path the gRPC API runs (size cap, header decoding,
/// algorithm and key choice, signature) against the fixed cluster.
pub fn jwt(token: &str) {
    let fixture = token_fixture();
    let _ = runtime().block_on(fixture.cluster.verify(token, TOKEN_NOW));
}

/// A token whose header and claims JSON are `header` and `claims`, signed ES256 with the fixed
/// cluster's key, so that header and claims decoding and every claim check run on arbitrary
/// JSON (a fuzzer cannot forge signatures).
pub fn jwt_signed(header: &[u8], claims: &[u8]) {
    let fixture = token_fixture();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(signature) = fixture.signer.sign(&fixture.rng, signing_input.as_bytes()) else {
        return;
    };
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    let _ = runtime().block_on(fixture.cluster.verify(&token, TOKEN_NOW));
}

/// A DER OCSP request as the OCSP responder reads it.
pub fn ocsp_request(bytes: &[u8]) {
    if let Ok(request) = crate::revocation::ocsp::parse_request(bytes) {
        for item in &request.items {
            let _ = crate::revocation::ocsp::serial_hex(item);
        }
    }
}

/// A peer's SPIFFE bundle or bundle map, read for the trust domain [`TRUST_DOMAIN`], then
/// hashed and re-encoded as federation stores it.
pub fn bundle(bytes: &[u8]) {
    if let Ok(parsed) = crate::trust::bundle::parse(bytes, trust_domain()) {
        let _ = crate::trust::bundle::content_hash(&parsed.roots);
        for root in &parsed.roots {
            let _ = crate::pem::certificate(root);
        }
    }
}

/// A configuration file.
pub fn config(text: &str) {
    let _ = Config::from_toml(text);
}

fn admin_router() -> &'static axum::Router {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        runtime().block_on(async {
            let dir = std::env::temp_dir();
            let mut options = crate::store::StoreOptions::new("sqlite::memory:");
            options.max_connections = 1;
            let store = harness("store", crate::store::Store::open(&options).await);
            let config = Config::ephemeral(&dir, "sqlite::memory:");
            let ca = crate::ca::Ca::new(
                config,
                store,
                crate::authority::Authorities::default(),
                crate::metrics::Metrics::new(),
            );
            crate::http::admin_router(crate::http::HttpState {
                ca,
                kek: Arc::new(crate::keys::Kek::from_bytes([7; 32])),
                bootstrap_token_sha256: Arc::new([0; 32]),
            })
        })
    })
}

/// The admin routes that take a JSON body or a query string, chosen by the first input byte.
const ADMIN_ROUTES: [(&str, &str); 6] = [
    ("POST", "/admin/v1/issue"),
    ("POST", "/admin/v1/certificates/01/revoke"),
    ("POST", "/admin/v1/denied-identities"),
    ("POST", "/admin/v1/tokens"),
    ("GET", "/admin/v1/certificates"),
    ("GET", "/admin/v1/audit"),
];

/// An admin request: the first byte picks a route of [`ADMIN_ROUTES`]; the rest is the JSON
/// body (POST) or the query string (GET). The request goes through the real admin router
/// without a token, so axum's extractors deserialize the body into each route's own body type
/// (`IssueBody`, `RevokeBody`, `DenyBody`, `CreateToken`) or the query into its query type
/// before the handler refuses the caller; nothing reaches the store.
pub fn admin_json(bytes: &[u8]) {
    let Some((selector, rest)) = bytes.split_first() else {
        return;
    };
    let (method, path) = ADMIN_ROUTES[usize::from(*selector) % ADMIN_ROUTES.len()];
    let request = if method == "POST" {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(rest.to_vec()))
    } else {
        let Ok(query) = std::str::from_utf8(rest) else {
            return;
        };
        http::Request::builder()
            .method(method)
            .uri(format!("{path}?{query}"))
            .body(axum::body::Body::empty())
    };
    let Ok(request) = request else {
        return;
    };
    let service = hyper_util::service::TowerToHyperService::new(admin_router().clone());
    let _ = runtime().block_on(hyper::service::Service::call(&service, request));
}
