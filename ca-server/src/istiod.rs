//! istiod's serving certificate: with `ENABLE_CA_SERVER=false` istiod still serves xDS on port
//! 15012, and proxies verify it with the same root file they use for us (`istio-ca-root-cert`).
//! So the CA issues istiod a DNS serving certificate under its own root, through the same
//! profile, record and audit as every other certificate, renews it at two thirds of its life,
//! and writes it where istiod reads it: `tls.crt` (leaf, then intermediate), `tls.key`
//! (PKCS #8, mode 0600) and `ca.crt` (the trust set), in `[istiod] output_dir`, each replaced
//! atomically. Mount that directory into istiod as its `istiod-tls` certificate directory
//! (`/var/run/secrets/istiod/tls`). Writing the `istiod-tls` Secret through the Kubernetes API
//! is the Kubernetes integration's job (not built yet).

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
    pub async fn start(ca: &Ca, config: IstiodConfig, now: OffsetDateTime) -> Result<Self, Error> {
        let issued = issue_and_write(ca, &config, now).await?;
        Ok(IstiodCertificate {
            config,
            current: Mutex::new((issued.not_before, issued.not_after)),
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

async fn issue_and_write(
    ca: &Ca,
    config: &IstiodConfig,
    now: OffsetDateTime,
) -> Result<IssuedServing, Error> {
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
    let dir = &config.output_dir;
    write_atomically(&dir.join("tls.key"), key.as_bytes(), 0o600)?;
    write_atomically(&dir.join("tls.crt"), chain.as_bytes(), 0o644)?;
    write_atomically(&dir.join("ca.crt"), issued.roots_pem.as_bytes(), 0o644)?;
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
    Ok(issued)
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
