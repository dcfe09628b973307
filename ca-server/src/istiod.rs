//! istiod's serving certificate: with `ENABLE_CA_SERVER=false` istiod still serves xDS on port
//! 15012, and proxies verify it with the same root file they use for us (`istio-ca-root-cert`).
//! So the CA issues istiod a DNS serving certificate under its own root, through the same
//! profile, record and audit as every other certificate, renews it at two thirds of its life,
//! and writes it where istiod reads it: `tls.crt` (leaf, then intermediate), `tls.key`
//! (PKCS #8, mode 0600) and `ca.crt` (the trust set), in `[istiod] output_dir`, each replaced
//! atomically. Mount that directory into istiod as its `istiod-tls` certificate directory
//! (`/var/run/secrets/istiod/tls`).
//!
//! With `secret_cluster`, the same three keys go into the Secret `secret_namespace/secret_name`
//! (type `kubernetes.io/tls`, default `istio-system/istiod-tls`) through that cluster's API
//! server, written by the replica holding the cluster's Lease (`writers`). The Secret itself is
//! the state: it is reissued when missing, unreadable, past two thirds of its life, or when its
//! `ca.crt` is no longer the current trust set (a rotation or federation change), so any
//! replica that takes the Lease over continues where the last one stopped.

use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::ca::Ca;
use crate::config::IstiodConfig;
use crate::tls::{self, IssuedServing, ServingRequest};

/// Why istiod's certificate could not be issued or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("issuing istiod's certificate")]
    Issue(#[from] tls::Error),
    #[error("writing istiod's Secret")]
    Kubernetes(#[source] crate::kubernetes::Error),
    #[error("writing {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The current istiod certificate's validity, to know when to renew.
#[derive(Debug)]
pub struct IstiodCertificate {
    config: IstiodConfig,
    current: Mutex<(i64, i64)>,
}

impl IstiodCertificate {
    /// Issues the first certificate and writes the files.
    /// Issues the first certificate and writes the files (nothing without `output_dir`: the
    /// Secret is the writers' job).
    pub async fn start(ca: &Ca, config: IstiodConfig, now: OffsetDateTime) -> Result<Self, Error> {
        let current = if config.output_dir.is_some() {
            let issued = issue_and_write(ca, &config, now).await?;
            (issued.not_before, issued.not_after)
        } else {
            (0, i64::MAX)
        };
        Ok(IstiodCertificate {
            config,
            current: Mutex::new(current),
        })
    }

    /// Renews (and rewrites the files) once two thirds of the lifetime have passed; returns
    /// whether it renewed.
    pub async fn renew_if_due(&self, ca: &Ca, now: OffsetDateTime) -> Result<bool, Error> {
        let (not_before, not_after) = self.current.lock().map(|c| *c).unwrap_or((0, 0));
        if now.unix_timestamp() < not_before + (not_after - not_before) * 2 / 3 {
            return Ok(false);
        }
        let issued = issue_and_write(ca, &self.config, now).await?;
        if let Ok(mut current) = self.current.lock() {
            *current = (issued.not_before, issued.not_after);
        }
        Ok(true)
    }

    /// notAfter of the certificate written last.
    pub fn not_after(&self) -> i64 {
        self.current.lock().map(|c| c.1).unwrap_or(0)
    }
}

/// Issues istiod's certificate and audits it; returns it with its PEM (chain, key).
async fn issue(
    ca: &Ca,
    config: &IstiodConfig,
    now: OffsetDateTime,
) -> Result<(IssuedServing, String, String), Error> {
    let issued = tls::issue_dns_certificate(
        ca,
        &ServingRequest {
            trust_domain: &config.trust_domain,
            dns_names: &config.dns_names,
            uri: None,
            ttl: config.ttl,
            api: "istiod",
        },
        now,
    )
    .await?;
    let chain: String = issued
        .chain
        .iter()
        .map(|der| crate::pem::certificate(der))
        .collect();
    let key = pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", issued.key_pkcs8.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    ca.audit(AuditEvent {
        at: now.unix_timestamp(),
        actor: "server".to_owned(),
        action: "certificate.issue".to_owned(),
        target: format!("dns:{}", config.dns_names.join(",")),
        outcome: "success".to_owned(),
        request_id: String::new(),
        detail: format!("istiod serving certificate, serial {}", issued.serial),
    })
    .await;
    Ok((issued, chain, key))
}

async fn issue_and_write(
    ca: &Ca,
    config: &IstiodConfig,
    now: OffsetDateTime,
) -> Result<IssuedServing, Error> {
    let (issued, chain, key) = issue(ca, config, now).await?;
    if let Some(dir) = &config.output_dir {
        write_atomically(&dir.join("tls.key"), key.as_bytes(), 0o600)?;
        write_atomically(&dir.join("tls.crt"), chain.as_bytes(), 0o644)?;
        write_atomically(&dir.join("ca.crt"), issued.roots_pem.as_bytes(), 0o644)?;
    }
    Ok(issued)
}

/// Keeps istiod's Secret current (see the module docs); returns whether it wrote a new one.
/// Called by the Lease holder of `secret_cluster` only.
pub async fn reconcile_secret(
    ca: &Ca,
    config: &IstiodConfig,
    client: &kube::Client,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};

    let api: Api<Secret> = Api::namespaced(client.clone(), &config.secret_namespace);
    let existing = api
        .get_opt(&config.secret_name)
        .await
        .map_err(|e| Error::Kubernetes(e.into()))?;
    let trust_now = ca
        .authorities()
        .get(&config.trust_domain)
        .map(|authority| ca.roots_pem_for(authority))
        .unwrap_or_default();
    let current = existing.as_ref().and_then(|secret| {
        let data = secret.data.as_ref()?;
        let cert = data.get("tls.crt")?;
        let ca_crt = data.get("ca.crt")?;
        data.get("tls.key")?;
        let (not_before, not_after) = first_validity(&cert.0)?;
        Some((not_before, not_after, ca_crt.0 == trust_now.as_bytes()))
    });
    let due = match current {
        Some((not_before, not_after, same_trust)) => {
            !same_trust || now.unix_timestamp() >= not_before + (not_after - not_before) * 2 / 3
        }
        None => true,
    };
    if !due {
        return Ok(false);
    }
    let (issued, chain, key) = issue(ca, config, now).await?;
    let data = [
        ("tls.crt", chain.into_bytes()),
        ("tls.key", key.into_bytes()),
        ("ca.crt", issued.roots_pem.into_bytes()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v)))
    .collect();
    let mut secret = existing.unwrap_or_default();
    secret.metadata.name = Some(config.secret_name.clone());
    secret.metadata.namespace = Some(config.secret_namespace.clone());
    secret.metadata.labels.get_or_insert_default().insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "mesh-ca".to_owned(),
    );
    secret.type_ = Some("kubernetes.io/tls".to_owned());
    secret.data = Some(data);
    secret.string_data = None;
    let written = if secret.metadata.resource_version.is_some() {
        // Carries the resourceVersion we read: a concurrent edit makes this 409 and the next
        // round starts over from what is there.
        api.replace(&config.secret_name, &PostParams::default(), &secret)
            .await
    } else {
        api.create(&PostParams::default(), &secret).await
    };
    written.map_err(|e| Error::Kubernetes(e.into()))?;
    tracing::info!(
        secret = %format!("{}/{}", config.secret_namespace, config.secret_name),
        serial = %issued.serial,
        "istiod's certificate written to its Secret"
    );
    Ok(true)
}

/// notBefore and notAfter of the first certificate of a PEM chain.
fn first_validity(pem_chain: &[u8]) -> Option<(i64, i64)> {
    let block = pem::parse_many(pem_chain).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Writes `path` through a temporary file in the same directory and a rename, so a reader sees
/// the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    {
        use std::io::Write;
        let mut file = options.open(&temporary).map_err(err)?;
        file.write_all(bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&temporary, path).map_err(err)
}
