//! The admin HTTP API client (bearer token).

use serde::{Deserialize, Serialize};

use crate::Error;

/// Talks to `listen.admin`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base_url: String,
    token: String,
    http: reqwest::Client,
}

/// `POST /admin/v1/issue` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: String,
    pub certificate_pem: String,
    pub chain_pem: String,
    pub root_pem: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl AdminClient {
    pub fn new(base_url: &str, token: &str) -> Result<AdminClient, Error> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Argument(e.to_string()))?;
        Ok(AdminClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    /// Asks for a certificate for `spiffe_id` over the CSR's public key.
    pub async fn issue(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: Option<&str>,
    ) -> Result<Issued, Error> {
        let mut body = serde_json::json!({"csr": csr_pem, "spiffe_id": spiffe_id});
        if let Some(ttl) = ttl {
            body["ttl"] = serde_json::Value::String(ttl.to_owned());
        }
        self.post("/admin/v1/issue", &body).await
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| Error::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Error::Server {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => Error::Server {
                    status: status.as_u16(),
                    code: "http".to_owned(),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }
}
