//! Loading each configured trust domain's CA from the store, creating the first generation when
//! there is none. Concurrent starts agree on one generation: the loser of the insert race
//! discards its keys and loads the winner's. With `cacerts_dir`, the first generation is the
//! plug-in CA in that directory (Istio's `cacerts` files), validated like an import.

use time::OffsetDateTime;

use crate::authority::{self, Authorities};
use crate::config::TrustDomainConfig;
use crate::keys::Kek;
use crate::store::{self, Store};

/// Why the CAs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Authority(#[from] authority::Error),
    #[error("cannot read or write the CA generations")]
    Store(#[from] store::Error),
    #[error("trust domain {trust_domain}: cannot read {path}")]
    CaCertsFile {
        trust_domain: String,
        path: String,
        source: std::io::Error,
    },
    #[error("trust domain {trust_domain}: the plug-in CA in {dir} is refused ({}): {source}", source.code())]
    PlugIn {
        trust_domain: String,
        dir: String,
        source: crate::external_ca::ImportError,
    },
}

/// Loads each configured trust domain's active generation, creating the first one when the
/// trust domain has none. Concurrent starts agree on one generation: the loser of the insert
/// race discards its keys and loads the winner's.
pub async fn load_or_create_authorities(
    store: &Store,
    kek: &Kek,
    trust_domains: &[TrustDomainConfig],
    public_url: Option<&str>,
    now: OffsetDateTime,
) -> Result<Authorities, LoadError> {
    let mut authorities = Authorities::default();
    for config in trust_domains {
        let name = config.name.as_str();
        store
            .ensure_trust_domain(name, now.unix_timestamp())
            .await?;
        let record = match store.active_generation(name).await? {
            Some(record) => {
                if let Some(dir) = &config.cacerts_dir {
                    tracing::info!(trust_domain = name, dir = %dir.display(), "cacerts_dir is read only at a trust domain's first start; it has a CA generation already (a new plug-in CA goes through cactl ca import)");
                }
                record
            }
            None => {
                // Another process may have created it since we looked.
                let existing = store.generations(name).await?;
                if let Some(active) = existing.iter().find(|g| g.state == "active") {
                    active.clone()
                } else if !existing.is_empty() {
                    return Err(authority::Error::Inconsistent {
                        trust_domain: name.to_owned(),
                        message:
                            "generations exist but none is active; refusing to create a new root"
                                .to_owned(),
                    }
                    .into());
                } else {
                    let created = match &config.cacerts_dir {
                        Some(dir) => plug_in_from_dir(config, dir, kek, now)?,
                        None => authority::create_generation(config, kek, 1, now)?,
                    };
                    match store.insert_generation(&created).await {
                        Ok(()) => {
                            tracing::info!(trust_domain = name, "created root and intermediate CA");
                            created
                        }
                        Err(store::Error::Conflict(_)) => store
                            .active_generation(name)
                            .await?
                            .ok_or_else(|| authority::Error::Inconsistent {
                                trust_domain: name.to_owned(),
                                message: "lost the creation race but found no active generation"
                                    .to_owned(),
                            })?,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        let mut authority = authority::open_generation(&record, kek)?;
        if let Some(base) = public_url {
            authority.publish_at(base);
        }
        authorities.insert(authority);
    }
    Ok(authorities)
}

/// Generation 1 from Istio's `cacerts` files in `dir` (each read up to the 64 KiB the check
/// allows, plus one byte so a larger file is refused as such).
fn plug_in_from_dir(
    config: &TrustDomainConfig,
    dir: &std::path::Path,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<authority::SealedGeneration, LoadError> {
    use std::io::Read;
    let name = config.name.as_str();
    let read = |file: &str, required: bool| -> Result<Option<String>, LoadError> {
        let path = dir.join(file);
        let failed = |source| LoadError::CaCertsFile {
            trust_domain: name.to_owned(),
            path: path.display().to_string(),
            source,
        };
        let handle = match std::fs::File::open(&path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let mut text = String::new();
        handle
            .take(crate::external_ca::MAX_PEM_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(failed)?;
        Ok(Some(text))
    };
    let ca_cert = read("ca-cert.pem", true)?.unwrap_or_default();
    let ca_key = zeroize::Zeroizing::new(read("ca-key.pem", true)?.unwrap_or_default());
    let chain = read("cert-chain.pem", false)?;
    let root = read("root-cert.pem", true)?.unwrap_or_default();
    let files = crate::external_ca::CaFiles {
        ca_cert_pem: &ca_cert,
        ca_key_pem: Some(ca_key.as_str()),
        cert_chain_pem: chain.as_deref(),
        root_cert_pem: &root,
    };
    let validated = crate::external_ca::validate(
        &files,
        None,
        &config.name,
        config.max_ttl,
        now.unix_timestamp(),
    )
    .map_err(|source| LoadError::PlugIn {
        trust_domain: name.to_owned(),
        dir: dir.display().to_string(),
        source,
    })?;
    for warning in &validated.warnings {
        tracing::warn!(trust_domain = name, warning = %warning, "plug-in CA accepted with a warning");
    }
    tracing::info!(trust_domain = name, dir = %dir.display(), "plug-in CA imported as the first generation");
    Ok(authority::seal_imported(
        name, 1, &validated, None, kek, now,
    )?)
}
