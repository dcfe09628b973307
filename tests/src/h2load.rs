//! A lean gRPC load client for `ca-bench`: `CreateCertificate` over one TLS HTTP/2 connection,
//! written on the `h2` crate directly, in the manner of h2load or ghz.
//!
//! Why not the tonic client (`ca_client::WorkloadClient`)? The load generator shares the
//! machine's two cores with the server and Postgres, so its cost is subtracted from the figure
//! being measured. tonic's client sends the request headers, the message and the end of the
//! stream as three writes (three loopback `writev`s, each paying the receiver's TCP processing
//! too) and passes every call through a tower buffer task; here each request is pre-encoded and
//! sent as headers plus one final DATA frame, which on a current-thread runtime leave in one
//! write. The server sees exactly the same gRPC requests either way; `ca-bench grpc --client
//! tonic` keeps the tonic path measurable.

use std::sync::Arc;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use ca_proto::istio::{IstioCertificateRequest, IstioCertificateResponse};

const PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// Largest response accepted (a chain is a few KiB).
const MAX_RESPONSE: usize = 1024 * 1024;

/// One HTTP/2 connection to the gRPC port.
#[derive(Clone)]
pub struct H2Client {
    sender: h2::client::SendRequest<Bytes>,
    authorization: http::HeaderValue,
    cluster_id: http::HeaderValue,
}

impl H2Client {
    /// Connects over TLS (ALPN `h2`), verifying the server against `ca_pem` as `server_name`,
    /// and spawns the connection task on the current runtime.
    pub async fn connect(
        address: std::net::SocketAddr,
        ca_pem: &[u8],
        server_name: &str,
        token: &str,
        cluster_id: &str,
    ) -> anyhow::Result<H2Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
            roots.add(cert.context("CA PEM")?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake(tls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2Client {
            sender,
            authorization: http::HeaderValue::try_from(format!("Bearer {token}"))?,
            cluster_id: http::HeaderValue::try_from(cluster_id)?,
        })
    }

    /// `CreateCertificate` with a body from [`encode_request`]; returns the `cert_chain`.
    pub async fn create_certificate(&self, body: Bytes) -> anyhow::Result<Vec<String>> {
        let request = http::Request::post(PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", self.authorization.clone())
            .header("clusterid", self.cluster_id.clone())
            .body(())?;
        let mut sender = self.sender.clone().ready().await?;
        let (response, mut stream) = sender.send_request(request, false)?;
        stream.send_data(body, true)?;
        let response = response.await?;
        anyhow::ensure!(
            response.status() == http::StatusCode::OK,
            "HTTP {}",
            response.status()
        );
        // A trailers-only answer (an error) carries grpc-status in the headers.
        if let Some(status) = response.headers().get("grpc-status") {
            anyhow::bail!("grpc-status {status:?}");
        }
        let mut body = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            anyhow::ensure!(
                message.len() + chunk.len() <= MAX_RESPONSE,
                "response too large"
            );
            message.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?.context("no trailers")?;
        let status = trailers
            .get("grpc-status")
            .context("no grpc-status")?
            .as_bytes();
        anyhow::ensure!(status == b"0", "grpc-status {status:?}");
        anyhow::ensure!(
            message.len() >= 5 && message[0] == 0,
            "not one uncompressed gRPC message"
        );
        let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
        anyhow::ensure!(message.len() == 5 + length, "gRPC message length");
        let response = IstioCertificateResponse::decode(&message[5..])?;
        Ok(response.cert_chain)
    }
}

/// A `CreateCertificate` request body: one uncompressed gRPC message (flag, length, protobuf).
pub fn encode_request(csr_pem: &str, validity_seconds: i64) -> Bytes {
    let message = IstioCertificateRequest {
        csr: csr_pem.to_owned(),
        validity_duration: validity_seconds,
        metadata: None,
    };
    let encoded = message.encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + encoded.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    body.extend_from_slice(&encoded);
    body.freeze()
}

/// The serial (lower-case hex) of the certificate in a PEM chain element: the TLVs down to the
/// serial are walked without decoding the rest (a full X.509 parse per response would be load
/// generator CPU taken from the server).
pub fn leaf_serial(pem: &str) -> anyhow::Result<String> {
    use der::{Reader, SliceReader, Tag, Tagged, asn1::AnyRef};
    let block = ::pem::parse(pem)?;
    let certificate: AnyRef<'_> = SliceReader::new(block.contents())?.decode()?;
    let tbs: AnyRef<'_> = SliceReader::new(certificate.value())?.decode()?;
    let mut fields = SliceReader::new(tbs.value())?;
    let mut field: AnyRef<'_> = fields.decode()?;
    if field.tag().is_context_specific() {
        // [0] version; the serial follows.
        field = fields.decode()?;
    }
    anyhow::ensure!(field.tag() == Tag::Integer, "no serial number");
    Ok(hex::encode(field.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_serial_agrees_with_a_full_parse() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        for serial in [vec![0x01], vec![0x7f, 0xff, 0x00, 0x12], vec![0x5a; 16]] {
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = params.self_signed(&key).unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
            assert_eq!(
                leaf_serial(&cert.pem()).unwrap(),
                hex::encode(parsed.raw_serial())
            );
        }
        assert!(leaf_serial("not PEM").is_err());
    }
}
