//! What a Kubernetes service-account token (a JWT) says about its workload, read without
//! verifying it: the server derives the same from the verified token.

use base64::Engine;

/// Why a token does not name a service account.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT")]
    NotJwt,
    #[error("the token payload is not base64url")]
    Base64(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the token payload is not JSON")]
    Json(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the token has no sub")]
    NoSubject,
    #[error("the token's sub is not a service account: {0}")]
    NotServiceAccount(String),
}

/// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>` from the (unverified) `sub` of a service-account
/// token, `system:serviceaccount:<ns>:<sa>`.
pub fn spiffe_id_from_token(token: &str, trust_domain: &str) -> Result<String, TokenError> {
    let payload = token.split('.').nth(1).ok_or(TokenError::NotJwt)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Base64(e.into()))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Json(e.into()))?;
    let sub = claims["sub"].as_str().ok_or(TokenError::NoSubject)?;
    match sub.split(':').collect::<Vec<_>>().as_slice() {
        ["system", "serviceaccount", ns, sa] => {
            Ok(format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
        }
        _ => Err(TokenError::NotServiceAccount(sub.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn a_service_account_token_names_its_identity() {
        let token = jwt(r#"{"sub":"system:serviceaccount:default:web"}"#);
        assert_eq!(
            spiffe_id_from_token(&token, "cluster.local").unwrap(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
    }

    #[test]
    fn other_tokens_are_refused_with_the_cause() {
        assert!(matches!(
            spiffe_id_from_token("nope", "td"),
            Err(TokenError::NotJwt)
        ));
        let err = spiffe_id_from_token("a.!!.c", "td").unwrap_err();
        assert!(matches!(err, TokenError::Base64(_)));
        assert!(std::error::Error::source(&err).is_some());
        assert!(matches!(
            spiffe_id_from_token(&jwt("[1]"), "td"),
            Err(TokenError::NoSubject)
        ));
        assert!(matches!(
            spiffe_id_from_token(&jwt(r#"{"sub":"alice"}"#), "td"),
            Err(TokenError::NotServiceAccount(s)) if s == "alice"
        ));
    }
}
