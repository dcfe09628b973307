//! JWKS discovery: the cluster's token-signing keys from its API server's OIDC endpoints, so
//! operators need not copy `kubectl get --raw /openid/v1/jwks` into a file per cluster and redo
//! it when the cluster rotates its key. `/.well-known/openid-configuration` names the issuer
//! and the `jwks_uri`; the issuer must be the cluster's configured `issuer` (else we would
//! trust keys for someone else's tokens). The `jwks_uri` is fetched by its *path* from the API
//! server itself, with the same TLS roots and credentials: its host is often a name only
//! reachable from outside the cluster, and the API server serves the path.
//!
//! Refreshing (periodically, and on an unknown `kid`, rate-limited) is the token checker's
//! (`authn::jwt`); on failure it keeps the last good keys.

use serde::Deserialize;

use super::{Error, get_raw};

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The JWKS document (bytes, not yet parsed) of the cluster whose issuer is `issuer`.
pub async fn fetch_jwks(client: &kube::Client, issuer: &str) -> Result<Vec<u8>, Error> {
    let document = get_raw(client, "/.well-known/openid-configuration").await?;
    let discovery: Discovery = serde_json::from_slice(&document)
        .map_err(|e| Error::Answer(format!("openid-configuration: {e}")))?;
    if discovery.issuer != issuer {
        return Err(Error::Answer(format!(
            "openid-configuration names issuer {:?}, the cluster's is {:?}",
            crate::untrusted::bounded(&discovery.issuer, 128),
            crate::untrusted::bounded(issuer, 128),
        )));
    }
    let path = match reqwest::Url::parse(&discovery.jwks_uri) {
        Ok(url) if url.scheme() == "https" => url.path().to_owned(),
        Ok(_) => {
            return Err(Error::Answer("jwks_uri is not https".to_owned()));
        }
        Err(_) if discovery.jwks_uri.starts_with('/') => discovery.jwks_uri.clone(),
        Err(_) => {
            return Err(Error::Answer(format!(
                "jwks_uri {:?} is not a URL",
                crate::untrusted::bounded(&discovery.jwks_uri, 128)
            )));
        }
    };
    if !path.starts_with('/') || path.contains("..") || path.contains('?') {
        return Err(Error::Answer("jwks_uri has an unusable path".to_owned()));
    }
    get_raw(client, &path).await
}
