//! Our own `ca.v1.CertificateAuthority`: `Issue` with the same authentication as the Istio
//! service and a structured answer; `GetBundles` and `WatchBundles` (current, then each change).

use std::pin::Pin;

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use ca_proto::ca_v1::certificate_authority_server::CertificateAuthority;
use ca_proto::ca_v1::{
    GetBundlesRequest, GetBundlesResponse, IssueRequest, IssueResponse, TrustDomainBundle,
    WatchBundlesRequest,
};

use crate::ca::{Api, Ca};
use crate::grpc::{audit_issuance, authenticate, refusal, request_id, requested_ttl, status};
use crate::limits::PerCaller;

#[derive(Debug, Clone)]
pub struct ApiService {
    pub ca: Ca,
    /// Open `WatchBundles` streams per caller (capped at `limits::MAX_WATCHES_PER_CALLER`).
    pub(crate) watchers: PerCaller,
    /// Turns true when the server stops: open `WatchBundles` streams end then.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl CertificateAuthority for ApiService {
    async fn issue(
        &self,
        request: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let now = OffsetDateTime::now_utc();
        let principal = authenticate(&self.ca, &request, now).await?;
        let request_id = request_id(request.metadata());
        let message = request.into_inner();
        let ttl = requested_ttl(message.ttl_seconds)?;
        let requested_by = principal.describe();
        let result = self
            .ca
            .enroll(
                &crate::ca::Request {
                    csr: &message.csr,
                    spiffe_id: principal.spiffe_id(),
                    ttl,
                    requested_by: &requested_by,
                    request_id: &request_id,
                    api: Api::CaV1,
                    authenticated_by: principal.method(),
                    impersonated: false,
                },
                now,
            )
            .await;
        audit_issuance(
            &self.ca,
            &principal,
            principal.spiffe_id().as_str(),
            &request_id,
            "ca.v1",
            &result,
            now,
        );
        let enrolled = result.map_err(|e| refusal(&requested_by, &e))?;
        let cert = &enrolled.cert;
        Ok(Response::new(IssueResponse {
            spiffe_id: cert.spiffe_id.to_string(),
            serial: cert.serial.to_hex(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            renew_after: renew_after(cert.not_before, cert.not_after),
            chain: std::iter::once(cert.der.clone())
                .chain(enrolled.chain_der.iter().cloned())
                .collect(),
            trust_bundle: enrolled.roots.clone(),
        }))
    }

    async fn get_bundles(
        &self,
        _request: Request<GetBundlesRequest>,
    ) -> Result<Response<GetBundlesResponse>, Status> {
        Ok(Response::new(current_bundles(&self.ca)))
    }

    type WatchBundlesStream =
        Pin<Box<dyn Stream<Item = Result<GetBundlesResponse, Status>> + Send>>;

    /// Sends the current bundles, then the whole set again after every change.
    ///
    /// A caller may keep `limits::MAX_WATCHES_PER_CALLER` streams open; one more is refused with
    /// `RESOURCE_EXHAUSTED`. The slot lives in the response stream, so it is freed when the
    /// stream is dropped (the client cancels it, or its connection closes).
    async fn watch_bundles(
        &self,
        request: Request<WatchBundlesRequest>,
    ) -> Result<Response<Self::WatchBundlesStream>, Status> {
        let caller = watcher(&self.ca, &request).await?;
        let Some(slot) = self.watchers.try_open(&caller) else {
            tracing::debug!(caller, "WatchBundles refused: too many streams open");
            return Err(status::too_many_watches());
        };
        let ca = self.ca.clone();
        let changes =
            tokio_stream::wrappers::WatchStream::new(ca.bundles().subscribe()).map(|_| true);
        let stop = tokio_stream::wrappers::WatchStream::new(self.stopping.clone())
            .filter(|stopping| *stopping)
            .map(|_| false);
        let stream = changes.merge(stop).take_while(|open| *open).map(move |_| {
            // The stream owns the slot: dropping the stream frees it.
            let _slot = &slot;
            Ok(current_bundles(&ca))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Who a `WatchBundles` caller is, for its stream cap. Bundles are public, so credentials are
/// optional: a caller that presents them (a token, or a client certificate) is the SPIFFE ID
/// they prove, and credentials that fail are refused as on every other call; a caller without
/// is its IP address (all its connections share one cap).
async fn watcher<T>(ca: &Ca, request: &Request<T>) -> Result<String, Status> {
    let presents_credentials = request.metadata().contains_key("authorization")
        || request.peer_certs().is_some_and(|chain| !chain.is_empty());
    if presents_credentials {
        let principal = authenticate(ca, request, OffsetDateTime::now_utc()).await?;
        return Ok(principal.spiffe_id().to_string());
    }
    Ok(request.remote_addr().map_or_else(
        || "unknown address".to_owned(),
        |addr| addr.ip().to_string(),
    ))
}

/// Every bundle we know: our trust domains and the federated ones.
fn current_bundles(ca: &Ca) -> GetBundlesResponse {
    GetBundlesResponse {
        bundles: ca
            .bundles()
            .all()
            .into_iter()
            .map(|(trust_domain, bundle)| TrustDomainBundle {
                trust_domain: trust_domain.to_string(),
                roots: bundle.roots.clone(),
                sequence: bundle.sequence,
            })
            .collect(),
    }
}

/// About half-life, jittered by up to ±5 % of the lifetime so a fleet does not renew at once.
pub fn renew_after(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let spread = lifetime / 10;
    let mut byte = [0u8; 2];
    let jitter = if spread > 0 && SystemRandom::new().fill(&mut byte).is_ok() {
        i64::from(u16::from_be_bytes(byte)) % (spread + 1) - spread / 2
    } else {
        0
    };
    not_before + lifetime / 2 + jitter
}
