//! [`rewrap`]: the last step of a rotation of the key provider's keys.
//!
//! A data key is stored wrapped, with the id of the tenant key that wrapped it. Rotating
//! the master key: engines restarted with the new key as the current one and the old
//! one as a previous key (new patients get keys wrapped by the new one, stored ones
//! still unwrap); then [`rewrap`] unwraps each stored key wrapped by another key and
//! wraps it again with the current one, a page at a time, each page in one transaction
//! that replaces a row only while it is still as read (a key erased or wrapped again
//! meanwhile stays as it is), and finally scrubs the old wrappings' bytes from the
//! database files. The data keys do not change, so nothing they encrypted does (tokens,
//! sealed dead letters) and running engines need not stop. Once it reports no key
//! left, the previous key can be dropped from the engines' configuration — but a backup
//! made before holds keys wrapped by it: keep the old key as long as such backups.

use std::collections::BTreeMap;

use parcours_store::{PatientKeys, Rewrapped};

use crate::VaultError;
use crate::provider::KeyProvider;

/// Keys read and written a page at a time.
const PAGE: u32 = 500;

/// What a [`rewrap`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Keys wrapped again by the current key.
    pub rewrapped: u64,
    /// Keys erased or wrapped again by someone else between their read and their write
    /// (left as they are).
    pub changed_meanwhile: u64,
    /// Keys the provider could not unwrap, by the id of the key that wrapped them (a
    /// master key not given): left as they are.
    pub unreadable: BTreeMap<String, u64>,
}

/// Wrap again, with the provider's current key `current`, every stored data key wrapped
/// by another one; then scrub the old wrappings from the database files. A key the
/// provider cannot unwrap is counted in [`RewrapReport::unreadable`] and left; run it
/// again with the missing master key given as a previous one.
pub async fn rewrap<P: KeyProvider, S: PatientKeys>(
    provider: &P,
    current: &str,
    store: &S,
) -> Result<RewrapReport, VaultError> {
    let mut report = RewrapReport::default();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store
            .patient_keys_not_wrapped_by(
                current,
                after.as_ref().map(|(t, s)| (t.as_str(), s.as_str())),
                PAGE,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.tenant.clone(), last.subject.clone()));
        let mut batch = Vec::with_capacity(page.len());
        for read in page {
            let key = match provider
                .unwrap(&read.tenant, &read.subject, &read.key_id, &read.wrapped)
                .await
            {
                Ok(key) => key,
                Err(_) => {
                    *report.unreadable.entry(read.key_id.clone()).or_default() += 1;
                    continue;
                }
            };
            let (key_id, wrapped) = provider.wrap(&read.tenant, &read.subject, &key).await?;
            if key_id != current {
                return Err(VaultError::Provider(format!(
                    "the key provider wraps with {key_id}, not with the current key {current}"
                )));
            }
            batch.push(Rewrapped {
                read,
                key_id,
                wrapped,
            });
        }
        let replaced = store.rewrap_patient_keys(&batch).await?;
        report.rewrapped += replaced;
        report.changed_meanwhile += batch.len() as u64 - replaced;
    }
    if report.rewrapped > 0 {
        store.scrub().await?;
    }
    Ok(report)
}
