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

    /// Revokes a certificate by serial with an RFC 5280 reason name.
    pub async fn revoke(&self, serial: &str, reason: &str) -> Result<serde_json::Value, Error> {
        self.post(
            &format!("/admin/v1/certificates/{serial}/revoke"),
            &serde_json::json!({"reason": reason}),
        )
        .await
    }

    /// Denies an identity (optionally revoking its live certificates).
    pub async fn deny(
        &self,
        spiffe_id: &str,
        reason: &str,
        revoke_existing: bool,
    ) -> Result<serde_json::Value, Error> {
        self.post(
            "/admin/v1/denied-identities",
            &serde_json::json!({"spiffe_id": spiffe_id, "reason": reason, "revoke_existing": revoke_existing}),
        )
        .await
    }

    /// Lists denied identities.
    pub async fn denied(&self) -> Result<serde_json::Value, Error> {
        self.send(self.http.get(self.url("/admin/v1/denied-identities")))
            .await
    }

    /// Lifts a deny by its id.
    pub async fn lift_deny(&self, id: &str) -> Result<(), Error> {
        let _: serde_json::Value = self
            .send(
                self.http
                    .delete(self.url(&format!("/admin/v1/denied-identities/{id}"))),
            )
            .await?;
        Ok(())
    }

    /// GET a path (with query) and return the JSON answer.
    pub async fn get(&self, path_and_query: &str) -> Result<serde_json::Value, Error> {
        self.send(self.http.get(self.url(path_and_query))).await
    }

    /// DELETE a path.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        let _: serde_json::Value = self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }

    /// POST a JSON body and return the JSON answer.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        self.post(path, body).await
    }

    /// Every item of a paginated list, following `next_cursor`.
    pub async fn get_all(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<serde_json::Value>, Error> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut pairs: Vec<(&str, String)> = query.to_vec();
            pairs.push(("limit", "500".to_owned()));
            if let Some(c) = &cursor {
                pairs.push(("cursor", c.clone()));
            }
            let page = self
                .send(self.http.get(self.url(path)).query(&pairs))
                .await?;
            let page: serde_json::Value = page;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Error> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// Sends a request with the bearer token; maps error bodies; an empty 2xx body is `null`.
    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let request = request
            .bearer_auth(&self.token)
            .build()
            .map_err(|e| Error::Argument(e.to_string()))?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
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
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| Error::Protocol(e.to_string()))
    }
}
