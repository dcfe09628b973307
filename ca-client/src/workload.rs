//! The workload side of the gRPC API: call `IstioCertificateService/CreateCertificate` exactly as
//! istio-agent does (bearer JWT + `clusterid` header, or the current certificate over mutual
//! TLS), and our `ca.v1` API.

use std::collections::BTreeMap;
use std::time::Duration;

use prost_types::{Struct, Value, value::Kind};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use ca_proto::ca_v1::certificate_authority_client::CertificateAuthorityClient;
use ca_proto::ca_v1::{IssueRequest, IssueResponse};
use ca_proto::istio::IstioCertificateRequest;
use ca_proto::istio::istio_certificate_service_client::IstioCertificateServiceClient;

use crate::Error;

/// How to reach the gRPC port.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port`.
    pub address: String,
    /// PEM roots that verify the server.
    pub ca_pem: Vec<u8>,
    /// Name to verify in the server's certificate (default: the host of `address`).
    pub server_name: Option<String>,
    /// For renewal over mutual TLS: (certificate chain PEM, private key PEM).
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How the caller authenticates with a token.
#[derive(Debug, Clone, Default)]
pub struct TokenAuth {
    pub token: Option<String>,
    pub cluster_id: Option<String>,
}

/// A gRPC connection to the CA.
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    channel: Channel,
}

impl WorkloadClient {
    pub async fn connect(options: &ConnectOptions) -> Result<WorkloadClient, Error> {
        let host = options
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&options.address);
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&options.ca_pem))
            .domain_name(
                options
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host.to_owned()),
            );
        if let Some((chain, key)) = &options.client_identity {
            tls = tls.identity(Identity::from_pem(chain, key));
        }
        let url = format!("https://{}", options.address);
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Argument(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| Error::Argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| Error::Unreachable {
                url,
                message: format!("{e}: {}", source_chain(&e)),
            })?;
        Ok(WorkloadClient { channel })
    }

    /// `CreateCertificate`; returns Istio's `cert_chain`.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        validity_seconds: i64,
        auth: &TokenAuth,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, Error> {
        let mut request = tonic::Request::new(istio_request(csr_pem, validity_seconds, metadata));
        add_auth(&mut request, auth)?;
        let response = IstioCertificateServiceClient::new(self.channel.clone())
            .create_certificate(request)
            .await
            .map_err(status_error)?;
        Ok(response.into_inner().cert_chain)
    }

    /// `ca.v1.CertificateAuthority/Issue`.
    pub async fn issue(
        &self,
        csr_der: &[u8],
        ttl_seconds: i64,
        auth: &TokenAuth,
    ) -> Result<IssueResponse, Error> {
        let mut request = tonic::Request::new(IssueRequest {
            csr: csr_der.to_vec(),
            ttl_seconds,
        });
        add_auth(&mut request, auth)?;
        let response = CertificateAuthorityClient::new(self.channel.clone())
            .issue(request)
            .await
            .map_err(status_error)?;
        Ok(response.into_inner())
    }
}

impl WorkloadClient {
    /// `ca.v1.CertificateAuthority/WatchBundles`: the current bundles, then each change.
    pub async fn watch_bundles(
        &self,
    ) -> Result<tonic::Streaming<ca_proto::ca_v1::GetBundlesResponse>, Error> {
        let response = CertificateAuthorityClient::new(self.channel.clone())
            .watch_bundles(ca_proto::ca_v1::WatchBundlesRequest {})
            .await
            .map_err(status_error)?;
        Ok(response.into_inner())
    }
}

fn add_auth<T>(request: &mut tonic::Request<T>, auth: &TokenAuth) -> Result<(), Error> {
    if let Some(token) = auth
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Error::Argument("the token has characters a header cannot carry".to_owned())
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    if let Some(cluster) = &auth.cluster_id {
        let value = MetadataValue::try_from(cluster.as_str())
            .map_err(|_| Error::Argument("bad cluster id".to_owned()))?;
        request.metadata_mut().insert("clusterid", value);
    }
    Ok(())
}

fn status_error(status: tonic::Status) -> Error {
    Error::Server {
        status: status.code() as u16,
        code: format!("{:?}", status.code()),
        message: status.message().to_owned(),
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut current = error.source();
    while let Some(e) = current {
        out.push(e.to_string());
        current = e.source();
    }
    out.join(": ")
}

/// Istio's `IstioCertificateRequest`: the CSR, the requested lifetime (`<= 0` for the server's
/// default) and `metadata` as string values of the request's `Struct` (for instance
/// `ImpersonatedIdentity`, which a node agent sends; none when empty).
pub fn istio_request(
    csr_pem: &str,
    validity_seconds: i64,
    metadata: &BTreeMap<String, String>,
) -> IstioCertificateRequest {
    let fields = metadata
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value {
                    kind: Some(Kind::StringValue(v.clone())),
                },
            )
        })
        .collect();
    IstioCertificateRequest {
        csr: csr_pem.to_owned(),
        validity_duration: validity_seconds,
        metadata: (!metadata.is_empty()).then_some(Struct { fields }),
    }
}
