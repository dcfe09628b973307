//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, as istio-agent and ztunnel call
//! istiod: authenticate (token or mTLS) -> decide the identity (own, or impersonated by a trusted
//! node agent) -> issue and record -> `[leaf, intermediate, roots]`, each element newline-
//! terminated, roots as one final element.

use prost_types::value::Kind;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use ca_proto::istio::istio_certificate_service_server::IstioCertificateService;
use ca_proto::istio::{IstioCertificateRequest, IstioCertificateResponse};

use crate::authz;
use crate::ca::{Api, Ca, Enrolled};
use crate::grpc::{
    audit_issuance, authenticate, refusal, request_id, requested_ttl, status, workload_event,
};

#[derive(Debug, Clone)]
pub struct IstioService {
    pub ca: Ca,
}

#[tonic::async_trait]
impl IstioCertificateService for IstioService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let now = OffsetDateTime::now_utc();
        let principal = authenticate(&self.ca, &request, now).await?;
        let request_id = request_id(request.metadata());
        let message = request.into_inner();
        let impersonated = metadata_string(&message, "ImpersonatedIdentity");
        let cert_signer = metadata_string(&message, "CertSigner");
        let identity = authz::decide(&principal, impersonated, cert_signer, self.ca.clusters()).map_err(|e| {
            tracing::info!(caller = %principal.describe(), reason = e.reason(), error = %crate::report::Chain(&e), "request refused");
            self.ca.audit_soon(workload_event(
                &principal.describe(),
                "certificate.issue",
                impersonated.unwrap_or_default(),
                "rejected",
                &request_id,
                format!("istio {}", e.reason()),
                now,
            ));
            if !matches!(e, authz::Error::UnknownSigner(_)) {
                self.ca.metrics().authn_failure(e.reason());
            }
            status::from_authz(&e)
        })?;
        let ttl = requested_ttl(message.validity_duration)?;
        let requested_by = principal.describe();
        let result = self
            .ca
            .enroll(
                &crate::ca::Request {
                    csr: message.csr.as_bytes(),
                    spiffe_id: &identity,
                    ttl,
                    requested_by: &requested_by,
                    request_id: &request_id,
                    api: Api::Istio,
                    authenticated_by: principal.method(),
                    impersonated: identity != *principal.spiffe_id(),
                },
                now,
            )
            .await;
        audit_issuance(
            &self.ca,
            &principal,
            identity.as_str(),
            &request_id,
            "istio",
            &result,
            now,
        );
        let enrolled = result.map_err(|e| refusal(&requested_by, &e))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: istio_chain(enrolled),
        }))
    }
}

/// `[leaf, intermediate, ..., roots]`: one certificate per element for the leaf and each
/// intermediate (a plug-in CA's chain has more than one; ztunnel reads one PEM block per
/// element), every root the workload must trust concatenated into the last element.
pub fn istio_chain(enrolled: Enrolled) -> Vec<String> {
    std::iter::once(crate::pem::certificate(&enrolled.cert.der))
        .chain(enrolled.chain_pem)
        .chain(std::iter::once(enrolled.roots_pem))
        .collect()
}

fn metadata_string<'a>(message: &'a IstioCertificateRequest, key: &str) -> Option<&'a str> {
    let field = message.metadata.as_ref()?.fields.get(key)?;
    match field.kind.as_ref()? {
        Kind::StringValue(value) => Some(value.as_str()),
        _ => None,
    }
}
