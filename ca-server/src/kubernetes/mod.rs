//! The Kubernetes API of a `[[clusters]]` entry, through kube-rs: the client
//! (`[clusters.kubernetes]`: API server URL, its CA file, our rotating token file) and the
//! read-side parts the authentication layer uses: the pod index for node-bound impersonation
//! (`pods`), TokenReview (`token_review`), JWKS discovery (`discovery`), and the Lease that
//! elects one replica for the writers (`lease`). The writers themselves (CSR signer, root
//! ConfigMaps, istiod's Secret) sit above the service layer and use these.
//!
//! Everything here is off unless a cluster's config turns it on; a cluster without
//! `[clusters.kubernetes]` never opens a connection to any API server.

pub mod discovery;
pub mod lease;
pub mod pods;
pub mod token_review;

use std::time::Duration;

use crate::config::KubernetesConfig;

/// Largest answer we read from the API server outside the typed kube-rs calls (OIDC
/// discovery, the JWKS).
pub const MAX_RAW_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a Kubernetes call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("api_server {0:?} is not a URL")]
    Url(String),
    #[error("Kubernetes API")]
    Api(#[from] kube::Error),
    /// The API server answered, but not with what the Kubernetes API promises.
    #[error("unexpected answer: {0}")]
    Answer(String),
}

/// Makes the kube-rs client of one cluster: TLS verified with `ca_file` only, our bearer token
/// from `token_file` (kube-rs re-reads it as the kubelet rotates it).
pub fn client(config: &KubernetesConfig) -> Result<kube::Client, Error> {
    let uri: http::Uri = config
        .api_server
        .parse()
        .map_err(|_| Error::Url(crate::untrusted::bounded(&config.api_server, 128)))?;
    let path = config.ca_file.display().to_string();
    let pem_text = std::fs::read(&config.ca_file).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let roots: Vec<Vec<u8>> = pem::parse_many(&pem_text)
        .map_err(|_| Error::NoCertificate { path: path.clone() })?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if roots.is_empty() {
        return Err(Error::NoCertificate { path });
    }
    // The token file must exist at start (a typo would otherwise fail every call later).
    std::fs::metadata(&config.token_file).map_err(|source| Error::Read {
        path: config.token_file.display().to_string(),
        source,
    })?;
    let mut kube_config = kube::Config::new(uri);
    kube_config.root_cert = Some(roots);
    kube_config.auth_info.token_file = Some(config.token_file.display().to_string());
    kube_config.connect_timeout = Some(Duration::from_secs(5));
    // Watches are long polls; the server ends them (timeoutSeconds) before this.
    kube_config.read_timeout = Some(Duration::from_secs(330));
    kube_config.write_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(kube_config)?)
}

/// A GET of a raw path (OIDC discovery, the JWKS) through the cluster's client, with the body
/// capped at [`MAX_RAW_ANSWER_BYTES`].
pub async fn get_raw(client: &kube::Client, path: &str) -> Result<Vec<u8>, Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Answer(e.to_string()))?;
    let text = client.request_text(request).await?;
    if text.len() > MAX_RAW_ANSWER_BYTES {
        return Err(Error::Answer(format!(
            "{path}: answer larger than {MAX_RAW_ANSWER_BYTES} bytes"
        )));
    }
    Ok(text.into_bytes())
}

/// Whether a string is a valid Kubernetes namespace or service-account name.
pub fn is_valid_name(name: &str) -> bool {
    crate::spiffe::is_dns_subdomain(name)
}
