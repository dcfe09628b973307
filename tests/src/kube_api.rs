//! A stand-in Kubernetes API server for tests that drive the real kube-rs client and
//! kube-runtime's `watcher`: HTTPS on 127.0.0.1 with a CA made at start, bearer-token
//! authentication, an in-memory object store with one global resourceVersion, list and watch
//! (label and field selectors, bookmarks, watch-list, `410 Expired` after
//! [`FakeApiServer::compact`]), create / replace / patch / delete, the `status` and `approval`
//! subresources, TokenReview, OIDC discovery, and injected failures.
//!
//! Deliberate simplifications, each where a test is unlikely to notice:
//! - `application/apply-patch+yaml` bodies must be JSON (kube-rs sends JSON) and are applied as a
//!   JSON merge patch (no field ownership); like server-side apply, it creates a missing object.
//!   `application/strategic-merge-patch+json` is a JSON merge patch too (lists replaced whole).
//! - Field selectors accept any dotted JSON path (a missing field reads as `""`); label selectors
//!   support `k=v`, `k==v`, `k!=v`, `k` and `!k`, not the set forms (`in`, `notin`: 400).
//! - `limit` and `continue` are accepted and ignored (lists are never paged). Namespaces need not
//!   exist for objects to be created in them. No validation beyond names and resourceVersions.
//! - As on a real server, an update over HTTP that changes nothing keeps the resourceVersion and
//!   sends no watch event; [`FakeApiServer::put`] always writes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use ring::rand::SecureRandom;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What a TokenReview reports when a request names no audiences: the API server's own.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const DEFAULT_REQUESTER: &str = "system:serviceaccount:istio-system:istiod";
const MAX_BODY: usize = 1 << 20;
const DEFAULT_WATCH_TIMEOUT_SECONDS: u64 = 300;
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
const MODIFIED_MESSAGE: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

const ADDED: &str = "ADDED";
const MODIFIED: &str = "MODIFIED";
const DELETED: &str = "DELETED";
const BOOKMARK: &str = "BOOKMARK";
const ERROR: &str = "ERROR";

/// One kind of object the server knows (every group here is served at version `v1`).
#[derive(Debug)]
struct Resource {
    plural: &'static str,
    kind: &'static str,
    group: &'static str,
    namespaced: bool,
    subresources: &'static [&'static str],
}

const RESOURCES: &[Resource] = &[
    Resource::new("namespaces", "Namespace", "", false, &["status"]),
    Resource::new("pods", "Pod", "", true, &["status"]),
    Resource::new("configmaps", "ConfigMap", "", true, &[]),
    Resource::new("secrets", "Secret", "", true, &[]),
    Resource::new("leases", "Lease", "coordination.k8s.io", true, &[]),
    Resource::new(
        "certificatesigningrequests",
        "CertificateSigningRequest",
        "certificates.k8s.io",
        false,
        &["status", "approval"],
    ),
    // Create-only and never stored: answered from `set_token_review`.
    Resource::new(
        "tokenreviews",
        "TokenReview",
        "authentication.k8s.io",
        false,
        &[],
    ),
];

impl Resource {
    const fn new(
        plural: &'static str,
        kind: &'static str,
        group: &'static str,
        namespaced: bool,
        subresources: &'static [&'static str],
    ) -> Resource {
        Resource {
            plural,
            kind,
            group,
            namespaced,
            subresources,
        }
    }

    fn named(plural: &str) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap_or_else(|| panic!("the fake API server has no resource {plural:?}"))
    }

    /// The resource of an object, by its apiVersion and kind.
    fn of(object: &Value) -> Option<&'static Resource> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        RESOURCES
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
    }

    fn api_version(&self) -> String {
        match self.group {
            "" => "v1".to_owned(),
            group => format!("{group}/v1"),
        }
    }

    /// `pods`, `leases.coordination.k8s.io`: how error messages name the resource.
    fn qualified(&self) -> String {
        match self.group {
            "" => self.plural.to_owned(),
            group => format!("{}.{group}", self.plural),
        }
    }

    fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    fn key(&self, namespace: Option<&str>, name: &str) -> Key {
        let namespace = if self.namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        };
        (self.plural, namespace.to_owned(), name.to_owned())
    }

    fn key_of(&self, object: &Value) -> Key {
        self.key(Some(meta(object, "namespace")), meta(object, "name"))
    }
}

/// (resource plural, namespace or "" when cluster-scoped, name): sorts lists by namespace/name.
type Key = (&'static str, String, String);

/// `metadata.<field>` of an object as a string, "" when missing.
fn meta<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

/// The user a TokenReview reports for a token (see [`FakeApiServer::set_token_review`]).
#[derive(Debug, Clone, Default)]
pub struct ReviewedUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: Map<String, Value>,
    /// The token's audiences: a review is authenticated only for requested audiences among these.
    pub audiences: Vec<String>,
}

/// A fake Kubernetes API server on `https://127.0.0.1:<ephemeral>`; it stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    ca_pem: String,
    accept: JoinHandle<()>,
    /// Dropped with the server: every connection task sees its receiver close and ends.
    _stop: watch::Sender<()>,
}

struct Shared {
    token: String,
    url: String,
    store: Mutex<Store>,
    /// Bumped by `drop_watches`: every open watch stream ends with an error.
    cut: watch::Sender<u64>,
    open_watches: AtomicUsize,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }
}

struct Store {
    rv: u64,
    /// The history up to this resourceVersion is forgotten: watches and exact lists from it or
    /// before are answered 410 Expired (`compact` moves `rv` past it).
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    /// The latest resourceVersion, to wake watch streams.
    changes: watch::Sender<u64>,
    reviews: HashMap<String, ReviewedUser>,
    oidc: Option<(String, Value)>,
    anonymous_oidc: bool,
    /// (requests left to fail, their HTTP status).
    failures: (usize, u16),
    requests: Vec<(String, String)>,
    requester: String,
}

/// One write, kept for watches that start from an older resourceVersion.
struct Event {
    rv: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
    /// The object before the write (for watches whose selector it leaves or enters).
    previous: Option<Value>,
}

impl Store {
    fn too_old(&self, from: u64) -> bool {
        0 < from && from <= self.compacted
    }

    fn expired(&self, from: u64) -> ApiError {
        ApiError::expired(from, self.compacted + 1)
    }

    fn get(&self, res: &Resource, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.objects.get(&res.key(namespace, name)).cloned()
    }

    /// Stores (or, for DELETED, removes) `object` at the next resourceVersion and records the
    /// event; returns the object as stored.
    fn commit(&mut self, res: &'static Resource, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let key = res.key_of(&object);
        let previous = if kind == DELETED {
            self.objects.remove(&key)
        } else {
            self.objects.insert(key, object.clone())
        };
        self.history.push(Event {
            rv: self.rv,
            resource: res.plural,
            kind,
            object: object.clone(),
            previous,
        });
        self.changes.send_replace(self.rv);
        object
    }

    /// Replaces `stored` by `updated` unless nothing changed (then no new resourceVersion).
    fn update(&mut self, res: &'static Resource, stored: Value, updated: Value) -> Value {
        if stored == updated {
            stored
        } else {
            self.commit(res, updated, MODIFIED)
        }
    }

    /// Creates a new object (name and namespace already set): 409 if the name is taken.
    fn create(&mut self, res: &'static Resource, mut object: Value) -> Result<Value, ApiError> {
        let name = meta(&object, "name").to_owned();
        if self.objects.contains_key(&res.key_of(&object)) {
            return Err(ApiError::already_exists(res, &name));
        }
        if res.plural == "certificatesigningrequests" {
            // Status is only writable through /status; the requester fills spec.username.
            object["status"] = json!({});
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
                && !spec.contains_key("username")
            {
                spec.insert("username".to_owned(), self.requester.clone().into());
            }
        }
        object["metadata"]["uid"] = new_uid().into();
        object["metadata"]["creationTimestamp"] = now_timestamp().into();
        Ok(self.commit(res, object, ADDED))
    }
}

impl FakeApiServer {
    /// Starts on `https://127.0.0.1:<ephemeral>` with a CA and serving certificate made now
    /// (SANs: IP 127.0.0.1, DNS localhost). Every request must carry
    /// `Authorization: Bearer <token>` (else 401), except the OIDC discovery and JWKS documents
    /// while anonymous OIDC is allowed (the default, as with Kubernetes'
    /// `system:service-account-issuer-discovery` binding).
    pub async fn start(token: &str) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tls, ca_pem) = tls_config();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            url: format!("https://{addr}"),
            store: Mutex::new(Store {
                rv: 0,
                compacted: 0,
                objects: BTreeMap::new(),
                history: Vec::new(),
                changes: watch::channel(0).0,
                reviews: HashMap::new(),
                oidc: None,
                anonymous_oidc: true,
                failures: (0, 500),
                requests: Vec::new(),
                requester: DEFAULT_REQUESTER.to_owned(),
            }),
            cut: watch::channel(0).0,
            open_watches: AtomicUsize::new(0),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = watch::channel(());
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            router,
            stopped,
        ));
        FakeApiServer {
            shared,
            ca_pem,
            accept,
            _stop: stop,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name`, and
    /// `metadata.namespace` when namespaced, are required): sets a new resourceVersion, and a uid
    /// and creationTimestamp when missing (those of the replaced object, else new ones); sends
    /// ADDED or MODIFIED to watches. Returns the stored object.
    pub fn put(&self, object: Value) -> Value {
        let res = Resource::of(&object)
            .unwrap_or_else(|| panic!("put: unknown apiVersion/kind in {object}"));
        assert!(
            !meta(&object, "name").is_empty(),
            "put: no metadata.name in {object}"
        );
        assert!(
            !res.namespaced || !meta(&object, "namespace").is_empty(),
            "put: no metadata.namespace in {object}"
        );
        let mut object = object;
        let mut store = self.shared.store();
        let stored = store.objects.get(&res.key_of(&object)).cloned();
        for (field, fresh) in [
            ("uid", new_uid as fn() -> String),
            ("creationTimestamp", now_timestamp),
        ] {
            if meta(&object, field).is_empty() {
                object["metadata"][field] = stored
                    .as_ref()
                    .map(|s| meta(s, field))
                    .filter(|v| !v.is_empty())
                    .map_or_else(fresh, str::to_owned)
                    .into();
            }
        }
        let kind = if stored.is_some() { MODIFIED } else { ADDED };
        store.commit(res, object, kind)
    }

    /// The stored object of `resource` (a plural: "pods", "configmaps", "secrets", "leases",
    /// "certificatesigningrequests", "namespaces"); `namespace` is None when cluster-scoped.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared
            .store()
            .get(Resource::named(resource), namespace, name)
    }

    /// Every stored object of `resource`, in all namespaces, sorted by namespace/name.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let res = Resource::named(resource);
        let store = self.shared.store();
        store
            .objects
            .iter()
            .filter(|(key, _)| key.0 == res.plural)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Deletes an object (sending DELETED to watches); nothing when it does not exist.
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) {
        let res = Resource::named(resource);
        let mut store = self.shared.store();
        if let Some(object) = store.get(res, namespace, name) {
            store.commit(res, object, DELETED);
        }
    }

    /// How TokenReviews answer for `token`: `Some(user)` authenticates it as `user` for the
    /// requested audiences among `user.audiences` (no requested audiences: [`DEFAULT_AUDIENCE`]);
    /// if audiences were requested and none is the token's, the review fails with
    /// "token audiences [..] is invalid for the target audiences [..]". `None` (or a token never
    /// set) fails with "invalid bearer token".
    pub fn set_token_review(&self, token: &str, user: Option<ReviewedUser>) {
        let mut store = self.shared.store();
        match user {
            Some(user) => store.reviews.insert(token.to_owned(), user),
            None => store.reviews.remove(token),
        };
    }

    /// Serves `jwks` at `/openid/v1/jwks` and the discovery document naming `issuer` at
    /// `/.well-known/openid-configuration` (both 404 until this is called).
    pub fn set_oidc(&self, issuer: &str, jwks: Value) {
        self.shared.store().oidc = Some((issuer.to_owned(), jwks));
    }

    /// Whether the OIDC documents are served without a bearer token (default true).
    pub fn set_anonymous_oidc(&self, allow: bool) {
        self.shared.store().anonymous_oidc = allow;
    }

    /// The user that creates CertificateSigningRequests: what `spec.username` is set to when a
    /// created CSR has none (default `system:serviceaccount:istio-system:istiod`).
    pub fn set_requester(&self, username: &str) {
        self.shared.store().requester = username.to_owned();
    }

    /// The next `n` authenticated requests fail with HTTP `status` and a Status body (429 with
    /// `Retry-After: 1`). Requests for the OIDC documents are not failed and do not count.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.store().failures = (n, status);
    }

    /// Cuts every open watch stream now: its body ends with an error, as when a connection drops.
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Forgets history and moves the resourceVersion on (with no event): a watch, or a
    /// `resourceVersionMatch=Exact` list, from any resourceVersion given out before is answered
    /// "too old resource version" (410 Expired), so watchers that reconnect (say after
    /// [`FakeApiServer::drop_watches`]) relist. Open watch streams go on, unless one had not yet
    /// been sent every earlier event: it gets the 410 ERROR event.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compacted = store.rv;
        store.rv += 1;
        store.history.clear();
    }

    /// The requests received, in order: (method, path and query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.store().requests.clone()
    }

    /// The number of watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A CA and a serving certificate for 127.0.0.1 and localhost (ECDSA P-256, rustls with ring):
/// the server's TLS configuration and the CA's PEM.
fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake kube-apiserver CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der.into())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), ca_pem)
}

/// Accepts connections until aborted; each serves HTTP/1.1 or HTTP/2 over TLS until the server
/// is dropped (`stop`'s sender with it).
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    stop: watch::Receiver<()>,
) {
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (acceptor, builder, router, mut stop) = (
            acceptor.clone(),
            builder.clone(),
            router.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = TowerToHyperService::new(router);
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(tls), service) => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// An error answered as a Kubernetes `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// With `details` naming the object.
    fn about(mut self, res: &Resource, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": res.plural});
        if !res.group.is_empty() {
            details["group"] = res.group.into();
        }
        self.details = Some(details);
        self
    }

    fn bad_request(message: impl Display) -> ApiError {
        ApiError::new(400, "BadRequest", message.to_string())
    }

    fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn method_not_allowed(method: &Method) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    fn not_found(res: &Resource, name: &str) -> ApiError {
        let message = format!("{} {name:?} not found", res.qualified());
        ApiError::new(404, "NotFound", message).about(res, name)
    }

    fn already_exists(res: &Resource, name: &str) -> ApiError {
        let message = format!("{} {name:?} already exists", res.qualified());
        ApiError::new(409, "AlreadyExists", message).about(res, name)
    }

    fn conflict(res: &Resource, name: &str, why: &str) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            res.qualified()
        );
        ApiError::new(409, "Conflict", message).about(res, name)
    }

    fn invalid(res: &Resource, name: &str, why: impl Display) -> ApiError {
        let message = format!("{} {name:?} is invalid: {why}", res.qualified());
        ApiError::new(422, "Invalid", message).about(res, name)
    }

    fn expired(from: u64, oldest: u64) -> ApiError {
        let message = format!("too old resource version: {from} ({oldest})");
        ApiError::new(410, "Expired", message)
    }

    /// What `fail_next` answers.
    fn injected(code: u16) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut error = ApiError::new(code, reason, format!("injected failure: {code} {reason}"));
        if code == 429 {
            error.message = "Too many requests, please try again later.".to_owned();
            error.details = Some(json!({"retryAfterSeconds": 1}));
        }
        error
    }

    fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = respond(code, self.status());
        if self.code == 429 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

fn respond(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(respond(StatusCode::OK, body))
}

/// Where a request path leads.
enum Route {
    Version,
    ApiVersions,
    ApiGroups,
    /// `/api/v1` or `/apis/<group>/v1`: the group's resources.
    ResourceList(&'static str),
    OidcConfig,
    Jwks,
    Object(Target),
}

/// A collection (no name) or an object, optionally a subresource of it.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<&'static str>,
}

fn parse_route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => Some(Route::Version),
        ["api"] => Some(Route::ApiVersions),
        ["apis"] => Some(Route::ApiGroups),
        [".well-known", "openid-configuration"] => Some(Route::OidcConfig),
        ["openid", "v1", "jwks"] => Some(Route::Jwks),
        ["api", "v1", rest @ ..] => resource_route("", rest),
        ["apis", group, "v1", rest @ ..] => resource_route(group, rest),
        _ => None,
    }
}

fn resource_route(group: &str, rest: &[&str]) -> Option<Route> {
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural)
    };
    if rest.is_empty() {
        let res = RESOURCES.iter().find(|r| r.group == group)?;
        return Some(Route::ResourceList(res.group));
    }
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(res) = find(plural).filter(|r| r.namespaced)
    {
        return target_route(res, Some(namespace), tail);
    }
    let [plural, tail @ ..] = rest else {
        return None;
    };
    let res = find(plural)?;
    if res.namespaced && !tail.is_empty() {
        return None;
    }
    target_route(res, None, tail)
}

fn target_route(res: &'static Resource, namespace: Option<&str>, tail: &[&str]) -> Option<Route> {
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (
            Some(*name),
            Some(*res.subresources.iter().find(|s| *s == sub)?),
        ),
        _ => return None,
    };
    Some(Route::Object(Target {
        res,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        sub,
    }))
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given == token)
}

/// Every request: logged, authenticated, maybe failed on purpose, then served.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
    let route = parse_route(parts.uri.path());
    let oidc = matches!(route, Some(Route::OidcConfig | Route::Jwks));
    {
        let mut store = shared.store();
        store.requests.push((parts.method.to_string(), target));
        let anonymous = oidc && store.anonymous_oidc;
        if !(anonymous || bearer_matches(&parts.headers, &shared.token)) {
            return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
        }
        if !oidc && store.failures.0 > 0 {
            store.failures.0 -= 1;
            return ApiError::injected(store.failures.1).into_response();
        }
    }
    let Some(route) = route else {
        return ApiError::path_not_found().into_response();
    };
    let query = match Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
        Ok(Query(query)) => query,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let message = "the request body is unreadable or larger than 1 MiB";
        return ApiError::new(413, "RequestEntityTooLarge", message).into_response();
    };
    let request = ApiRequest {
        method: parts.method,
        headers: parts.headers,
        query,
        body,
    };
    serve(&shared, route, &request).unwrap_or_else(IntoResponse::into_response)
}

struct ApiRequest {
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: Bytes,
}

impl ApiRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

fn serve(shared: &Arc<Shared>, route: Route, request: &ApiRequest) -> Result<Response, ApiError> {
    match route {
        Route::Version => ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        Route::ApiVersions => ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{
                "clientCIDR": "0.0.0.0/0",
                "serverAddress": shared.url.trim_start_matches("https://"),
            }],
        })),
        Route::ApiGroups => ok(api_groups()),
        Route::ResourceList(group) => ok(resource_list(group)),
        Route::OidcConfig => oidc(shared, false),
        Route::Jwks => oidc(shared, true),
        Route::Object(target) => serve_object(shared, &target, request),
    }
}

/// The OIDC discovery document, or the JWKS (404 until `set_oidc`).
fn oidc(shared: &Shared, jwks: bool) -> Result<Response, ApiError> {
    let store = shared.store();
    let Some((issuer, keys)) = &store.oidc else {
        return Err(ApiError::path_not_found());
    };
    if jwks {
        let mut response = respond(StatusCode::OK, keys.clone());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/jwk-set+json"),
        );
        return Ok(response);
    }
    ok(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", shared.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
}

fn serve_object(
    shared: &Arc<Shared>,
    target: &Target,
    request: &ApiRequest,
) -> Result<Response, ApiError> {
    let (res, namespace, name, sub) = (
        target.res,
        target.namespace.as_deref(),
        target.name.as_deref(),
        target.sub,
    );
    let method = &request.method;
    if res.plural == "tokenreviews" {
        return match (method, name) {
            (&Method::POST, None) => token_review(shared, res, &request.body),
            _ => Err(ApiError::method_not_allowed(method)),
        };
    }
    let watching = matches!(request.param("watch"), Some("1" | "true"));
    match (method, name) {
        (&Method::GET, None) if watching => watch(shared, res, namespace, request),
        (&Method::GET, None) => list(shared, res, namespace, request),
        (&Method::POST, None) => create(shared, res, namespace, &request.body),
        (&Method::GET, Some(name)) => {
            let store = shared.store();
            let object = store.get(res, namespace, name);
            let object = object.ok_or_else(|| ApiError::not_found(res, name))?;
            if wants_metadata_only(&request.headers) {
                ok(partial_metadata(&object))
            } else {
                ok(object)
            }
        }
        (&Method::PUT, Some(name)) => replace(shared, res, namespace, name, sub, &request.body),
        (&Method::PATCH, Some(name)) => patch(shared, res, (namespace, name, sub), request),
        (&Method::DELETE, Some(name)) if sub.is_none() => {
            delete(shared, res, namespace, name, &request.body)
        }
        _ => Err(ApiError::method_not_allowed(method)),
    }
}

fn api_groups() -> Value {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups
        .iter()
        .map(|group| {
            let version = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
            json!({"name": group, "versions": [version], "preferredVersion": version})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &'static str) -> Value {
    let mut resources = Vec::new();
    for res in RESOURCES.iter().filter(|r| r.group == group) {
        let verbs = if res.plural == "tokenreviews" {
            json!(["create"])
        } else {
            json!([
                "create", "delete", "get", "list", "patch", "update", "watch"
            ])
        };
        resources.push(json!({
            "name": res.plural, "singularName": res.kind.to_lowercase(),
            "namespaced": res.namespaced, "kind": res.kind, "verbs": verbs,
        }));
        for sub in res.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", res.plural), "singularName": "",
                "namespaced": res.namespaced, "kind": res.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map(Resource::api_version);
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    })
}

/// A label selector requirement, or a field selector one (only the two equality forms).
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Requirement {
    fn parse_all(text: &str, fields: bool) -> Result<Vec<Requirement>, ApiError> {
        let what = if fields { "field" } else { "label" };
        let pair = |(k, v): (&str, &str)| (k.trim().to_owned(), v.trim().to_owned());
        text.split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| {
                if term.contains(['(', ' ']) {
                    let message = format!("unsupported {what} selector {term:?} in this fake");
                    return Err(ApiError::bad_request(message));
                }
                if let Some(kv) = term.split_once("!=") {
                    let (k, v) = pair(kv);
                    Ok(Requirement::NotEquals(k, v))
                } else if let Some(kv) = term.split_once("==").or_else(|| term.split_once('=')) {
                    let (k, v) = pair(kv);
                    Ok(Requirement::Equals(k, v))
                } else if fields {
                    Err(ApiError::bad_request(format!(
                        "invalid field selector {term:?}"
                    )))
                } else if let Some(key) = term.strip_prefix('!') {
                    Ok(Requirement::Absent(key.to_owned()))
                } else {
                    Ok(Requirement::Exists(term.to_owned()))
                }
            })
            .collect()
    }

    fn key(&self) -> &str {
        match self {
            Requirement::Equals(key, _)
            | Requirement::NotEquals(key, _)
            | Requirement::Exists(key)
            | Requirement::Absent(key) => key,
        }
    }

    fn holds(&self, value: Option<&str>) -> bool {
        match self {
            Requirement::Equals(_, want) => value == Some(want.as_str()),
            Requirement::NotEquals(_, want) => value != Some(want.as_str()),
            Requirement::Exists(_) => value.is_some(),
            Requirement::Absent(_) => value.is_none(),
        }
    }
}

/// A dotted path's value as a field selector compares it ("" when missing).
fn field_value(object: &Value, path: &str) -> String {
    match path.split('.').try_fold(object, |v, key| v.get(key)) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Which objects a list or watch sees: a resource, maybe one namespace, and the selectors.
struct Filter {
    res: &'static Resource,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    /// `Accept: application/json;as=PartialObjectMetadata...`: objects shown as metadata only.
    metadata_only: bool,
}

impl Filter {
    fn new(
        res: &'static Resource,
        namespace: Option<&str>,
        request: &ApiRequest,
    ) -> Result<Filter, ApiError> {
        let selector =
            |name, fields| Requirement::parse_all(request.param(name).unwrap_or_default(), fields);
        Ok(Filter {
            res,
            namespace: namespace.map(str::to_owned),
            labels: selector("labelSelector", false)?,
            fields: selector("fieldSelector", true)?,
            metadata_only: wants_metadata_only(&request.headers),
        })
    }

    /// An object as the client asked to see it.
    fn present(&self, object: &Value) -> Value {
        if self.metadata_only {
            partial_metadata(object)
        } else {
            object.clone()
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta(object, "namespace") == ns)
            && self
                .labels
                .iter()
                .all(|r| r.holds(labels.get(r.key()).and_then(Value::as_str)))
            && self
                .fields
                .iter()
                .all(|r| r.holds(Some(&field_value(object, r.key()))))
    }

    /// The stored objects that match, as the client sees them.
    fn current<'a>(&'a self, store: &'a Store) -> impl Iterator<Item = Value> + 'a {
        store
            .objects
            .iter()
            .filter(|(key, object)| key.0 == self.res.plural && self.matches(object))
            .map(|(_, object)| self.present(object))
    }

    /// The watch line for `event`, if this watch sees it. As on a real server, an object that
    /// starts matching is ADDED and one that stops matching is DELETED (its last matching state).
    fn line(&self, event: &Event) -> Option<Bytes> {
        if event.resource != self.res.plural {
            return None;
        }
        let now = self.matches(&event.object);
        let before = event.previous.as_ref().is_some_and(|p| self.matches(p));
        match (event.kind, before, now) {
            (MODIFIED, true, false) => {
                let mut last = event.previous.clone()?;
                last["metadata"]["resourceVersion"] = event.rv.to_string().into();
                Some(event_line(DELETED, &self.present(&last)))
            }
            (MODIFIED, false, true) => Some(event_line(ADDED, &self.present(&event.object))),
            (kind, _, true) => Some(event_line(kind, &self.present(&event.object))),
            _ => None,
        }
    }
}

fn wants_metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"))
}

/// What a metadata-only request sees of an object.
fn partial_metadata(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object["metadata"],
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

fn bookmark_line(res: &Resource, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": metadata});
    event_line(BOOKMARK, &object)
}

/// The request's `resourceVersion` (0 when absent or empty).
fn resource_version(request: &ApiRequest) -> Result<u64, ApiError> {
    match request.param("resourceVersion").unwrap_or_default() {
        "" => Ok(0),
        rv => rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

fn list(
    shared: &Arc<Shared>,
    res: &'static Resource,
    namespace: Option<&str>,
    request: &ApiRequest,
) -> Result<Response, ApiError> {
    let filter = Filter::new(res, namespace, request)?;
    let from = resource_version(request)?;
    let store = shared.store();
    if request.param("resourceVersionMatch") == Some("Exact") && store.too_old(from) {
        return Err(store.expired(from));
    }
    let items: Vec<Value> = filter.current(&store).collect();
    let (api_version, kind) = if filter.metadata_only {
        (
            "meta.k8s.io/v1".to_owned(),
            "PartialObjectMetadataList".to_owned(),
        )
    } else {
        (res.api_version(), format!("{}List", res.kind))
    };
    ok(json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

type Line = Result<Bytes, std::io::Error>;

/// Counts an open watch stream while alive.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: &Arc<Shared>) -> OpenWatch {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch(
    shared: &Arc<Shared>,
    res: &'static Resource,
    namespace: Option<&str>,
    request: &ApiRequest,
) -> Result<Response, ApiError> {
    let filter = Filter::new(res, namespace, request)?;
    let from = resource_version(request)?;
    let initial_events = request.param("sendInitialEvents");
    let timeout = match request.param("timeoutSeconds") {
        None => DEFAULT_WATCH_TIMEOUT_SECONDS,
        Some(seconds) => seconds
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {seconds:?}")))?,
    };
    let (lines, body) = mpsc::unbounded_channel::<Line>();
    let open = OpenWatch::new(shared);
    let cut = shared.cut.subscribe();
    let (changes, last) = {
        let store = shared.store();
        // No resourceVersion (or "0"): the current objects first, as ADDED, unless
        // sendInitialEvents=false; sendInitialEvents=true ends them with a bookmark.
        let send_initial = initial_events.map_or(from == 0, |v| v == "true");
        if !send_initial && store.too_old(from) {
            let _ = lines.send(Ok(event_line(ERROR, &store.expired(from).status())));
            return Ok(watch_response(body));
        }
        if send_initial {
            for object in filter.current(&store) {
                let _ = lines.send(Ok(event_line(ADDED, &object)));
            }
            if initial_events == Some("true") {
                let _ = lines.send(Ok(bookmark_line(res, store.rv, true)));
            }
        }
        let last = if send_initial || from == 0 {
            store.rv
        } else {
            from
        };
        (store.changes.subscribe(), last)
    };
    let stream = WatchStream {
        open,
        filter,
        lines,
        cut,
        changes,
        last,
        bookmarks: request.param("allowWatchBookmarks") == Some("true"),
        timeout: Duration::from_secs(timeout),
    };
    tokio::spawn(stream.run());
    Ok(watch_response(body))
}

/// A streaming JSON response of the lines `body` receives, until its sender is dropped.
fn watch_response(body: mpsc::UnboundedReceiver<Line>) -> Response {
    let mut response = Body::from_stream(UnboundedReceiverStream::new(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The task feeding one watch response.
struct WatchStream {
    open: OpenWatch,
    filter: Filter,
    lines: mpsc::UnboundedSender<Line>,
    cut: watch::Receiver<u64>,
    changes: watch::Receiver<u64>,
    /// Every event up to this resourceVersion has been sent (or did not match).
    last: u64,
    bookmarks: bool,
    timeout: Duration,
}

impl WatchStream {
    async fn run(mut self) {
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let start = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
        let mut bookmarks = tokio::time::interval_at(start, BOOKMARK_INTERVAL);
        loop {
            let (pending, expired) = self.pending();
            for line in pending {
                if self.lines.send(Ok(line)).is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            tokio::select! {
                _ = self.changes.changed() => {}
                _ = bookmarks.tick(), if self.bookmarks => {
                    let line = bookmark_line(self.filter.res, self.last, false);
                    if self.lines.send(Ok(line)).is_err() {
                        return;
                    }
                }
                _ = self.cut.changed() => {
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch cut");
                    let _ = self.lines.send(Err(cut));
                    return;
                }
                () = &mut deadline => return,
                () = self.lines.closed() => return,
            }
        }
    }

    /// The lines of events after `last`, and whether the watch expired (its last line is the
    /// 410 ERROR event) because history it still needed was compacted.
    fn pending(&mut self) -> (Vec<Bytes>, bool) {
        let store = self.open.0.store();
        if self.last < store.compacted {
            let status = store.expired(self.last).status();
            return (vec![event_line(ERROR, &status)], true);
        }
        let first = store.history.partition_point(|e| e.rv <= self.last);
        let lines = store.history[first..]
            .iter()
            .filter_map(|event| self.filter.line(event))
            .collect();
        self.last = self.last.max(store.rv);
        (lines, false)
    }
}

/// Parses a request body as an object of `res`: apiVersion and kind filled in when missing
/// (400 when they name another resource), `metadata` an object.
fn parse_object(body: &[u8], res: &Resource) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    for (field, want) in [
        ("apiVersion", res.api_version()),
        ("kind", res.kind.to_owned()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.to_owned(), want.into());
            }
            Some(given) if given != want => {
                let message = format!("{field} {given:?} does not match the request ({want:?})");
                return Err(ApiError::bad_request(message));
            }
            Some(_) => {}
        }
    }
    match map.get("metadata") {
        None | Some(Value::Null) => {
            map.insert("metadata".to_owned(), json!({}));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata is not an object")),
    }
    Ok(object)
}

fn create(
    shared: &Arc<Shared>,
    res: &'static Resource,
    namespace: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut object = parse_object(body, res)?;
    if res.namespaced {
        let Some(namespace) = namespace else {
            return Err(ApiError::method_not_allowed(&Method::POST));
        };
        match meta(&object, "namespace") {
            "" => object["metadata"]["namespace"] = namespace.into(),
            given if given != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on \
                     the request",
                ));
            }
            _ => {}
        }
    }
    if meta(&object, "name").is_empty() {
        let prefix = meta(&object, "generateName");
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                res,
                "",
                "name or generateName is required",
            ));
        }
        object["metadata"]["name"] = format!("{prefix}{}", random_suffix()).into();
    }
    let created = shared.store().create(res, object)?;
    Ok(respond(StatusCode::CREATED, created))
}

/// 409 Conflict when `given` (a resourceVersion a client sent) is set and not the stored one.
fn check_resource_version(
    res: &Resource,
    name: &str,
    stored: &Value,
    given: &str,
) -> Result<(), ApiError> {
    if given.is_empty() || given == meta(stored, "resourceVersion") {
        Ok(())
    } else {
        Err(ApiError::conflict(res, name, MODIFIED_MESSAGE))
    }
}

/// Sets `object[field]` to `value`, or removes it for None.
fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(value) => map.insert(field.to_owned(), value),
            None => map.remove(field),
        };
    }
}

/// What an update (PUT or PATCH result `new`) stores: on the main resource, everything but the
/// identity (and the status, when it has a status subresource); on `status`, only the status;
/// on `approval`, only `status.conditions`.
fn updated(res: &Resource, stored: &Value, mut new: Value, sub: Option<&str>) -> Value {
    match sub {
        None => {
            if !new["metadata"].is_object() {
                new["metadata"] = json!({});
            }
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "resourceVersion",
            ] {
                let kept = stored["metadata"].get(field).cloned();
                set_field(&mut new["metadata"], field, kept);
            }
            new["apiVersion"] = res.api_version().into();
            new["kind"] = res.kind.into();
            if res.has_status() {
                set_field(&mut new, "status", stored.get("status").cloned());
            }
            new
        }
        Some("status") => {
            let mut kept = stored.clone();
            set_field(&mut kept, "status", new.get("status").cloned());
            kept
        }
        Some(_) => {
            let mut kept = stored.clone();
            if !kept["status"].is_object() {
                kept["status"] = json!({});
            }
            let conditions = new.pointer("/status/conditions").cloned();
            set_field(&mut kept["status"], "conditions", conditions);
            kept
        }
    }
}

fn replace(
    shared: &Arc<Shared>,
    res: &'static Resource,
    namespace: Option<&str>,
    name: &str,
    sub: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let object = parse_object(body, res)?;
    for (field, want) in [("name", Some(name)), ("namespace", namespace)] {
        let given = meta(&object, field);
        if let Some(want) = want
            && !given.is_empty()
            && given != want
        {
            let message = format!("the {field} of the object ({given}) does not match the URL's");
            return Err(ApiError::bad_request(message));
        }
    }
    let mut store = shared.store();
    let stored = store
        .get(res, namespace, name)
        .ok_or_else(|| ApiError::not_found(res, name))?;
    check_resource_version(res, name, &stored, meta(&object, "resourceVersion"))?;
    let new = updated(res, &stored, object, sub);
    ok(store.update(res, stored, new))
}

fn patch(
    shared: &Arc<Shared>,
    res: &'static Resource,
    (namespace, name, sub): (Option<&str>, &str, Option<&str>),
    request: &ApiRequest,
) -> Result<Response, ApiError> {
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim();
    let json_patch = match content_type {
        "application/json-patch+json" => true,
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+yaml" => false,
        other => {
            let message = format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media \
                 types include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml"
            );
            return Err(ApiError::new(415, "UnsupportedMediaType", message));
        }
    };
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
    let mut store = shared.store();
    let Some(stored) = store.get(res, namespace, name) else {
        if content_type != "application/apply-patch+yaml" || sub.is_some() {
            return Err(ApiError::not_found(res, name));
        }
        // Server-side apply creates what does not exist.
        let mut object = json!({"metadata": {}});
        merge_patch(&mut object, &body);
        let object = parse_object(&serde_json::to_vec(&object).unwrap(), res)?;
        let mut object = updated(res, &json!({"metadata": {}}), object, None);
        object["metadata"]["name"] = name.into();
        if let (true, Some(namespace)) = (res.namespaced, namespace) {
            object["metadata"]["namespace"] = namespace.into();
        }
        return Ok(respond(StatusCode::CREATED, store.create(res, object)?));
    };
    let mut patched = stored.clone();
    if json_patch {
        apply_json_patch(&mut patched, &body).map_err(|e| ApiError::invalid(res, name, e))?;
    } else {
        merge_patch(&mut patched, &body);
    }
    if !patched.is_object() {
        return Err(ApiError::invalid(
            res,
            name,
            "the patched object is not an object",
        ));
    }
    check_resource_version(res, name, &stored, meta(&patched, "resourceVersion"))?;
    let new = updated(res, &stored, patched, sub);
    ok(store.update(res, stored, new))
}

fn delete(
    shared: &Arc<Shared>,
    res: &'static Resource,
    namespace: Option<&str>,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions are not JSON: {e}")))?
    };
    let mut store = shared.store();
    let stored = store
        .get(res, namespace, name)
        .ok_or_else(|| ApiError::not_found(res, name))?;
    let precondition = |field| options.pointer(field).and_then(Value::as_str);
    if let Some(rv) = precondition("/preconditions/resourceVersion") {
        check_resource_version(res, name, &stored, rv)?;
    }
    if let Some(uid) = precondition("/preconditions/uid")
        && uid != meta(&stored, "uid")
    {
        let why = format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            meta(&stored, "uid")
        );
        return Err(ApiError::conflict(res, name, &why));
    }
    ok(store.commit(res, stored, DELETED))
}

fn token_review(
    shared: &Arc<Shared>,
    res: &'static Resource,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut review = parse_object(body, res)?;
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let requested: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let user = shared.store().reviews.get(token).cloned();
    review["status"] = review_status(user.as_ref(), &requested);
    Ok(respond(StatusCode::CREATED, review))
}

fn review_status(user: Option<&ReviewedUser>, requested: &[String]) -> Value {
    let Some(user) = user else {
        return json!({"authenticated": false, "user": {}, "error": "invalid bearer token"});
    };
    let audiences: Vec<String> = if requested.is_empty() {
        vec![DEFAULT_AUDIENCE.to_owned()]
    } else {
        requested
            .iter()
            .filter(|a| user.audiences.contains(a))
            .cloned()
            .collect()
    };
    if audiences.is_empty() {
        // Go's %q of a []string: ["a" "b"].
        let quoted = |list: &[String]| {
            let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(" "))
        };
        let error = format!(
            "token audiences {} is invalid for the target audiences {}",
            quoted(&user.audiences),
            quoted(requested)
        );
        return json!({"authenticated": false, "user": {}, "error": error});
    }
    json!({
        "authenticated": true,
        "user": {
            "username": user.username, "uid": user.uid,
            "groups": user.groups, "extra": user.extra,
        },
        "audiences": audiences,
    })
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy and test.
fn apply_json_patch(document: &mut Value, patch: &Value) -> Result<(), String> {
    let operations = patch.as_array().ok_or("a JSON patch must be an array")?;
    for operation in operations {
        let field = |name: &str| {
            operation[name]
                .as_str()
                .ok_or_else(|| format!("JSON patch operation without {name:?}: {operation}"))
        };
        let path = field("path")?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| format!("JSON patch operation without \"value\": {operation}"))
        };
        match field("op")? {
            "add" => pointer_add(document, path, value()?)?,
            "remove" => {
                pointer_remove(document, path)?;
            }
            "replace" => {
                pointer_remove(document, path)?;
                pointer_add(document, path, value()?)?;
            }
            "move" => {
                let moved = pointer_remove(document, field("from")?)?;
                pointer_add(document, path, moved)?;
            }
            "copy" => {
                let from = field("from")?;
                let copied = document.pointer(from).cloned();
                pointer_add(document, path, copied.ok_or(format!("no value at {from}"))?)?;
            }
            "test" => {
                if document.pointer(path) != Some(&value()?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            op => return Err(format!("unknown JSON patch operation {op:?}")),
        }
    }
    Ok(())
}

/// A JSON pointer's parent (still escaped) and last token (unescaped).
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, key) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => {
            let index = if key == "-" {
                items.len()
            } else {
                key.parse()
                    .map_err(|_| format!("invalid array index in {path}"))?
            };
            if index > items.len() {
                return Err(format!("array index out of range in {path}"));
            }
            items.insert(index, value);
        }
        _ => return Err(format!("no object or array at the parent of {path}")),
    }
    Ok(())
}

fn pointer_remove(document: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split_pointer(path)?;
    let removed = match document.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&key),
        Some(Value::Array(items)) => key
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("no value at {path}"))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    let mut bytes = random_bytes::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Five characters as the API server appends to a `generateName` (its alphabet: no vowels).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Now, as Kubernetes writes timestamps: RFC 3339 in UTC, whole seconds.
fn now_timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "test-token";

    /// A reqwest client trusting the server's CA, sending its bearer token.
    struct Client {
        http: reqwest::Client,
        url: String,
    }

    impl Client {
        fn new(server: &FakeApiServer) -> Client {
            let ca = reqwest::Certificate::from_pem(server.ca_pem().as_bytes()).unwrap();
            let http = reqwest::Client::builder()
                .add_root_certificate(ca)
                .build()
                .unwrap();
            Client {
                http,
                url: server.url(),
            }
        }

        fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
            self.http
                .request(method, format!("{}{path}", self.url))
                .bearer_auth(TOKEN)
        }

        /// Sends a JSON body (or none); returns the status code and the JSON answer.
        async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
            let mut request = self.request(method, path);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            self.send(Method::GET, path, None).await
        }

        async fn patch(&self, path: &str, content_type: &str, body: Value) -> (u16, Value) {
            let response = self
                .request(Method::PATCH, path)
                .header(header::CONTENT_TYPE, content_type)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        }

        async fn watch(&self, path: &str) -> Events {
            let response = self.request(Method::GET, path).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            Events {
                response,
                buffer: Vec::new(),
            }
        }
    }

    /// The events of a watch response, one JSON line each.
    struct Events {
        response: reqwest::Response,
        buffer: Vec<u8>,
    }

    impl Events {
        /// The next event; None when the stream ended cleanly, Err when it was cut.
        async fn next(&mut self) -> Result<Option<Value>, reqwest::Error> {
            loop {
                if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    return Ok(Some(serde_json::from_slice(&line).unwrap()));
                }
                let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                    .await
                    .expect("a watch event within 10 s")?;
                match chunk {
                    Some(chunk) => self.buffer.extend_from_slice(&chunk),
                    None => return Ok(None),
                }
            }
        }

        /// The next event that is not a periodic bookmark.
        async fn event(&mut self) -> (String, Value) {
            loop {
                let event = self.next().await.unwrap().expect("an event, not the end");
                let kind = event["type"].as_str().unwrap().to_owned();
                let initial_end =
                    &event["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"];
                if kind != "BOOKMARK" || initial_end == "true" {
                    return (kind, event["object"].clone());
                }
            }
        }

        /// The next periodic bookmark.
        async fn bookmark(&mut self) -> Value {
            loop {
                let event = self.next().await.unwrap().expect("a bookmark, not the end");
                if event["type"] == "BOOKMARK" {
                    return event["object"].clone();
                }
            }
        }
    }

    async fn wait_for_watches(server: &FakeApiServer, n: usize) {
        for _ in 0..500 {
            if server.open_watches() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} open watches, not {n}", server.open_watches());
    }

    fn pod(name: &str, node: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node},
        })
    }

    #[tokio::test]
    async fn create_with_generate_name_then_list_with_selectors() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);

        let anonymous = client.http.get(format!("{}/api/v1/pods", server.url()));
        let response = anonymous.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let status: Value = response.json().await.unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("Unauthorized"))
        );

        let configmap = json!({"metadata": {"generateName": "cm-", "labels": {"app": "a"}}});
        let path = "/api/v1/namespaces/default/configmaps";
        let (code, created) = client.send(Method::POST, path, Some(configmap)).await;
        assert_eq!(code, 201, "{created}");
        let name = meta(&created, "name").to_owned();
        assert!(name.starts_with("cm-") && name.len() == 8, "{name}");
        assert_eq!(
            (created["apiVersion"].as_str(), created["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );
        assert_eq!(meta(&created, "resourceVersion"), "1");
        assert_eq!(meta(&created, "uid").len(), 36);
        assert!(meta(&created, "creationTimestamp").ends_with('Z'));
        assert_eq!(
            server.get("configmaps", Some("default"), &name),
            Some(created.clone())
        );

        let again = json!({"metadata": {"name": name}});
        let (code, status) = client.send(Method::POST, path, Some(again)).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (409, Some("AlreadyExists"))
        );
        assert_eq!(
            status["details"],
            json!({"name": name, "kind": "configmaps"})
        );

        server.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "other", "namespace": "kube-system"},
        }));
        let (code, list) = client
            .get("/api/v1/configmaps?fieldSelector=metadata.namespace%3Ddefault&limit=500")
            .await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "ConfigMapList");
        assert_eq!(list["metadata"]["resourceVersion"], "2");
        assert_eq!(list["items"], json!([created]));
        let (_, list) = client.get("/api/v1/configmaps?labelSelector=%21app").await;
        assert_eq!(meta(&list["items"][0], "name"), "other");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (_, list) = client
            .get("/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name!%3Dother")
            .await;
        assert_eq!(list["items"], json!([]));
        let (code, _) = client
            .get("/api/v1/configmaps?labelSelector=app+in+(a)")
            .await;
        assert_eq!(code, 400);
        let metadata_only = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        let request = client.request(Method::GET, "/api/v1/namespaces/kube-system/configmaps");
        let response = request
            .header(header::ACCEPT, metadata_only)
            .send()
            .await
            .unwrap();
        let list: Value = response.json().await.unwrap();
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
        assert_eq!(meta(&list["items"][0], "name"), "other");

        let (code, status) = client.get("/api/v1/nodes").await;
        assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
        let (code, status) = client
            .get("/api/v1/namespaces/default/configmaps/missing")
            .await;
        assert_eq!(status["message"], "configmaps \"missing\" not found");
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn watch_from_a_resource_version_then_selector_transitions() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        let first = server.put(pod("a", "node-1"));
        server.put(pod("b", "node-1"));
        let rv = meta(&first, "resourceVersion");

        let path = format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}");
        let mut events = client.watch(&path).await;
        let (kind, object) = events.event().await;
        assert_eq!((kind.as_str(), meta(&object, "name")), ("ADDED", "b"));
        wait_for_watches(&server, 1).await;

        let labels = json!({"metadata": {"labels": {"x": "y"}}});
        let pod_a = "/api/v1/namespaces/default/pods/a";
        let (code, patched) = client
            .patch(pod_a, "application/merge-patch+json", labels)
            .await;
        assert_eq!(code, 200, "{patched}");
        let (kind, object) = events.event().await;
        assert_eq!((kind.as_str(), &object), ("MODIFIED", &patched));

        // A field selector: objects entering it are ADDED, leaving it DELETED.
        let mut on_node_2 = client
            .watch("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-2&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
            .await;
        let (kind, object) = on_node_2.event().await;
        assert_eq!(kind, "BOOKMARK");
        assert_eq!(
            object["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        let move_to =
            |node: &str| json!([{"op": "replace", "path": "/spec/nodeName", "value": node}]);
        let json_patch = "application/json-patch+json";
        client.patch(pod_a, json_patch, move_to("node-2")).await;
        assert_eq!(on_node_2.event().await.0, "ADDED");
        assert_eq!(events.event().await.0, "MODIFIED");
        client.patch(pod_a, json_patch, move_to("node-3")).await;
        let (kind, object) = on_node_2.event().await;
        assert_eq!(
            (kind.as_str(), object["spec"]["nodeName"].as_str()),
            ("DELETED", Some("node-2"))
        );
        // Bookmarks come about every second.
        let bookmark = on_node_2.bookmark().await;
        assert_eq!(
            (bookmark["kind"].as_str(), bookmark["apiVersion"].as_str()),
            (Some("Pod"), Some("v1"))
        );
        assert_eq!(
            bookmark["metadata"]["resourceVersion"],
            server.shared.store().rv.to_string()
        );

        let (code, _) = client.send(Method::DELETE, pod_a, None).await;
        assert_eq!(code, 200);
        assert_eq!(events.event().await.0, "MODIFIED");
        assert_eq!(events.event().await.0, "DELETED");
        assert_eq!(server.get("pods", Some("default"), "a"), None);
    }

    #[tokio::test]
    async fn replace_and_status_subresources() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        let lease = server.put(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "leader", "namespace": "istio-system"},
            "spec": {"holderIdentity": "one"},
        }));
        let path = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/leader";
        let mut next = lease.clone();
        next["spec"]["holderIdentity"] = "two".into();
        let (code, replaced) = client.send(Method::PUT, path, Some(next.clone())).await;
        assert_eq!(code, 200, "{replaced}");
        assert_ne!(
            meta(&replaced, "resourceVersion"),
            meta(&lease, "resourceVersion")
        );
        assert_eq!(meta(&replaced, "uid"), meta(&lease, "uid"));

        // The first PUT's resourceVersion is stale now.
        let (code, status) = client.send(Method::PUT, path, Some(next)).await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains(MODIFIED_MESSAGE)
        );
        let stale = json!({"metadata": {"resourceVersion": meta(&lease, "resourceVersion")}});
        let (code, _) = client
            .patch(path, "application/merge-patch+json", stale)
            .await;
        assert_eq!(code, 409);
        let missing = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/nope";
        let (code, _) = client.send(Method::PUT, missing, Some(json!({}))).await;
        assert_eq!(code, 404);

        // A CSR: status only through /status, conditions through /approval.
        let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let csr = json!({
            "metadata": {"name": "csr-1"},
            "spec": {"request": "", "signerName": "example.com/signer"},
            "status": {"certificate": "Zm9v"},
        });
        let (code, created) = client.send(Method::POST, csrs, Some(csr)).await;
        assert_eq!(code, 201, "{created}");
        assert_eq!(created["status"], json!({}));
        assert_eq!(created["spec"]["username"], DEFAULT_REQUESTER);
        let approval = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let (code, approved) = client
            .send(
                Method::PUT,
                &format!("{csrs}/csr-1/approval"),
                Some(approval),
            )
            .await;
        assert_eq!(code, 200, "{approved}");
        assert_eq!(approved["status"]["conditions"][0]["type"], "Approved");
        let certificate = json!({"status": {"certificate": "YmFy"}});
        let status_path = format!("{csrs}/csr-1/status");
        let merge = "application/merge-patch+json";
        let (_, issued) = client.patch(&status_path, merge, certificate.clone()).await;
        assert_eq!(issued["status"]["certificate"], "YmFy");
        assert_eq!(issued["status"]["conditions"][0]["type"], "Approved");
        let (_, unchanged) = client
            .patch(&format!("{csrs}/csr-1"), merge, json!({"status": null}))
            .await;
        assert_eq!(unchanged, issued, "a no-op write keeps its resourceVersion");
        let (code, _) = client.patch(&status_path, "text/plain", certificate).await;
        assert_eq!(code, 415);
        let (code, list) = client
            .get(&format!(
                "{csrs}?fieldSelector=spec.signerName%3Dexample.com%2Fsigner"
            ))
            .await;
        assert_eq!((code, list["items"].as_array().unwrap().len()), (200, 1));
    }

    #[tokio::test]
    async fn compaction_expires_old_resource_versions() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        let old = server.put(pod("a", "node-1"));
        server.put(pod("b", "node-1"));
        let old = meta(&old, "resourceVersion").to_owned();

        // A watch that is up to date survives compaction.
        let mut current = client.watch("/api/v1/pods?watch=1&resourceVersion=2").await;
        wait_for_watches(&server, 1).await;
        server.compact();

        let mut events = client
            .watch(&format!("/api/v1/pods?watch=1&resourceVersion={old}"))
            .await;
        let (kind, status) = events.event().await;
        assert_eq!(kind, "ERROR");
        assert_eq!(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (3)", "reason": "Expired", "code": 410,
            })
        );
        assert!(
            events.next().await.unwrap().is_none(),
            "the stream ends after the error"
        );

        let exact = format!("/api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact");
        let (code, status) = client.get(&exact).await;
        assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));
        let (code, _) = client
            .get(&format!("/api/v1/pods?resourceVersion={old}"))
            .await;
        assert_eq!(code, 200);

        // Even the last resourceVersion before the compaction is too old: watchers that
        // reconnect relist, and go on from the list's.
        let mut latest = client.watch("/api/v1/pods?watch=1&resourceVersion=2").await;
        assert_eq!(latest.event().await.0, "ERROR");
        let (_, list) = client.get("/api/v1/pods").await;
        assert_eq!(list["metadata"]["resourceVersion"], "3");
        let mut relisted = client.watch("/api/v1/pods?watch=1&resourceVersion=3").await;

        server.put(pod("c", "node-1"));
        for events in [&mut current, &mut relisted] {
            let (kind, object) = events.event().await;
            assert_eq!((kind.as_str(), meta(&object, "name")), ("ADDED", "c"));
        }
    }

    #[tokio::test]
    async fn drop_watches_cuts_the_streams() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        server.put(pod("a", "node-1"));
        let mut events = client.watch("/api/v1/pods?watch=1").await;
        assert_eq!(events.event().await.0, "ADDED");
        wait_for_watches(&server, 1).await;
        server.drop_watches();
        assert!(
            events.next().await.is_err(),
            "a cut stream is an error, not a clean end"
        );
        wait_for_watches(&server, 0).await;
    }

    /// The real kube-rs client and kube-runtime watcher against the stand-in.
    #[tokio::test]
    async fn kube_rs_client_and_watcher() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
        use kube::runtime::watcher;
        use tokio_stream::StreamExt;

        let server = FakeApiServer::start(TOKEN).await;
        let mut config = kube::Config::new(server.url().parse().unwrap());
        let ca = pem::parse(server.ca_pem()).unwrap().into_contents();
        config.root_cert = Some(vec![ca]);
        config.auth_info.token = Some(TOKEN.to_owned().into());
        let client = kube::Client::try_from(config).unwrap();
        let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
        let mut events = std::pin::pin!(watcher(configmaps.clone(), watcher::Config::default()));
        // The next applied or deleted object's name (errors, restarts and relists skipped).
        let mut next_name = async || loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
            match event.expect("a watcher event within 10 s").unwrap() {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    return ("applied", cm.metadata.name.unwrap());
                }
                Ok(watcher::Event::Delete(cm)) => return ("deleted", cm.metadata.name.unwrap()),
                _ => {}
            }
        };

        let mut cm = ConfigMap::default();
        cm.metadata.generate_name = Some("roots-".to_owned());
        let created = configmaps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
        let name = created.metadata.name.clone().unwrap();
        assert_eq!(next_name().await, ("applied", name.clone()));

        let apply = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}});
        let params = PatchParams::apply("test");
        let applied = configmaps
            .patch(&name, &params, &Patch::Apply(&apply))
            .await
            .unwrap();
        assert_eq!(applied.data.unwrap()["k"], "v");
        assert_eq!(next_name().await, ("applied", name.clone()));
        let stale = configmaps
            .replace(&name, &PostParams::default(), &created)
            .await;
        match stale {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
            }
            other => panic!("a stale replace answered {other:?}"),
        }

        // A cut watch resumes where it was; one that missed a compacted event relists.
        let put = |name: &str| {
            let metadata = json!({"name": name, "namespace": "default"});
            server.put(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}))
        };
        server.drop_watches();
        put("after-cut");
        assert_eq!(next_name().await, ("applied", "after-cut".to_owned()));
        server.drop_watches();
        put("compacted");
        server.compact();
        while next_name().await != ("applied", "compacted".to_owned()) {}
        let lists = server.requests().into_iter().filter(|(method, target)| {
            method == "GET" && target.contains("/configmaps?") && !target.contains("watch=")
        });
        assert_eq!(lists.count(), 2, "{:?}", server.requests());

        configmaps
            .delete("after-cut", &DeleteParams::default())
            .await
            .unwrap();
        // (After the rest of the relist.)
        while next_name().await != ("deleted", "after-cut".to_owned()) {}

        // Watch-list (sendInitialEvents) ends its initial objects with a bookmark.
        let config = watcher::Config::default().streaming_lists();
        let mut streaming = std::pin::pin!(watcher(configmaps, config));
        let mut initial = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), streaming.next()).await;
            match event.unwrap().unwrap().unwrap() {
                watcher::Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(initial, ["compacted".to_owned(), name]);
        assert!(
            server
                .requests()
                .iter()
                .any(|(_, t)| t.contains("sendInitialEvents=true"))
        );
    }

    /// A CSR's status written with kube-rs' `replace_status`, the main resource's ignoring it.
    #[tokio::test]
    async fn kube_rs_status_subresource() {
        use k8s_openapi::api::certificates::v1::{
            CertificateSigningRequest, CertificateSigningRequestStatus,
        };
        use kube::api::{Api, PostParams};

        let server = FakeApiServer::start(TOKEN).await;
        let mut config = kube::Config::new(server.url().parse().unwrap());
        let ca = pem::parse(server.ca_pem()).unwrap().into_contents();
        config.root_cert = Some(vec![ca]);
        config.auth_info.token = Some(TOKEN.to_owned().into());
        let csrs: Api<CertificateSigningRequest> =
            Api::all(kube::Client::try_from(config).unwrap());
        let mut csr = CertificateSigningRequest::default();
        csr.metadata.name = Some("csr-1".to_owned());
        csr.spec.signer_name = "example.com/signer".to_owned();
        let created = csrs.create(&PostParams::default(), &csr).await.unwrap();
        assert_eq!(created.spec.username.as_deref(), Some(DEFAULT_REQUESTER));

        let mut issued = created.clone();
        issued.status = Some(CertificateSigningRequestStatus {
            certificate: Some(k8s_openapi::ByteString(b"cert".to_vec())),
            ..Default::default()
        });
        let replaced = csrs
            .replace("csr-1", &PostParams::default(), &issued)
            .await
            .unwrap();
        assert_eq!(replaced.status.and_then(|s| s.certificate), None);
        issued.metadata.resource_version = replaced.metadata.resource_version;
        let written = csrs
            .replace_status("csr-1", &PostParams::default(), &issued)
            .await
            .unwrap();
        let certificate = written.status.unwrap().certificate.unwrap();
        assert_eq!(certificate.0, b"cert");
        let stored = server
            .get("certificatesigningrequests", None, "csr-1")
            .unwrap();
        assert_eq!(stored["status"]["certificate"], "Y2VydA==");
    }

    #[tokio::test]
    async fn injected_failures_then_success() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        server.fail_next(1, 429);
        let response = client
            .request(Method::GET, "/api/v1/secrets")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let status: Value = response.json().await.unwrap();
        assert_eq!(
            (status["reason"].as_str(), status["code"].as_u64()),
            (Some("TooManyRequests"), Some(429))
        );
        let (code, list) = client.get("/api/v1/secrets").await;
        assert_eq!((code, list["kind"].as_str()), (200, Some("SecretList")));

        server.fail_next(1, 500);
        let (code, status) = client.get("/version").await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (500, Some("InternalError"))
        );
        let (code, version) = client.get("/version").await;
        assert_eq!(
            (code, version["gitVersion"].as_str()),
            (200, Some("v1.33.0"))
        );

        let requests = server.requests();
        assert_eq!(requests.len(), 4);
        assert_eq!(
            requests[0],
            ("GET".to_owned(), "/api/v1/secrets".to_owned())
        );
    }

    #[tokio::test]
    async fn token_reviews() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        let user = ReviewedUser {
            username: "system:serviceaccount:default:app".to_owned(),
            uid: "uid-1".to_owned(),
            groups: vec!["system:serviceaccounts".to_owned()],
            extra: Map::new(),
            audiences: vec!["istio-ca".to_owned()],
        };
        server.set_token_review("good", Some(user));
        let review = |token: &str, audiences: Value| {
            let body = json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences},
            });
            client.send(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(body),
            )
        };

        let (code, answer) = review("good", json!(["istio-ca", "other"])).await;
        assert_eq!(code, 201);
        assert_eq!(answer["spec"]["token"], "good");
        assert_eq!(answer["status"]["authenticated"], true);
        assert_eq!(answer["status"]["audiences"], json!(["istio-ca"]));
        assert_eq!(
            answer["status"]["user"]["username"],
            "system:serviceaccount:default:app"
        );
        assert_eq!(
            answer["status"]["user"]["groups"],
            json!(["system:serviceaccounts"])
        );

        let (_, answer) = review("good", json!([])).await;
        assert_eq!(answer["status"]["audiences"], json!([DEFAULT_AUDIENCE]));

        let (_, answer) = review("good", json!(["elsewhere"])).await;
        assert_eq!(answer["status"]["authenticated"], false);
        assert_eq!(
            answer["status"]["error"],
            "token audiences [\"istio-ca\"] is invalid for the target audiences [\"elsewhere\"]"
        );

        let (_, answer) = review("bad", json!([])).await;
        assert_eq!(answer["status"]["authenticated"], false);
        assert_eq!(answer["status"]["error"], "invalid bearer token");
    }

    #[tokio::test]
    async fn oidc_discovery_is_anonymous() {
        let server = FakeApiServer::start(TOKEN).await;
        let client = Client::new(&server);
        let config_url = format!("{}/.well-known/openid-configuration", server.url());
        let response = client.http.get(&config_url).send().await.unwrap();
        assert_eq!(response.status(), 404);

        let jwks = json!({"keys": [{"kty": "EC", "kid": "k1"}]});
        server.set_oidc("https://kubernetes.default.svc.cluster.local", jwks.clone());
        server.fail_next(1, 500);
        let config: Value = client
            .http
            .get(&config_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            config["issuer"],
            "https://kubernetes.default.svc.cluster.local"
        );
        let jwks_uri = config["jwks_uri"].as_str().unwrap();
        assert_eq!(jwks_uri, format!("{}/openid/v1/jwks", server.url()));
        let served: Value = client
            .http
            .get(jwks_uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(served, jwks);

        server.set_anonymous_oidc(false);
        let response = client.http.get(&config_url).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let (code, _) = client.get("/.well-known/openid-configuration").await;
        assert_eq!(code, 200);
        // The injected failure is still pending: OIDC requests do not take it.
        let (code, _) = client.get("/api").await;
        assert_eq!(code, 500);
    }
}
