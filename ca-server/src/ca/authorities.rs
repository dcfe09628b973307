//! Loading each configured trust domain's CA from the store, creating the first generation when
//! there is none. Concurrent starts agree on one generation: the loser of the insert race
//! discards its keys and loads the winner's.

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
            Some(record) => record,
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
                    let created = authority::create_generation(config, kek, 1, now)?;
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
