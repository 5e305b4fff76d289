//! Choosing the store backend once, at start-up, from configuration.

use std::sync::Arc;

use crate::config::{BackendConfig, Config};
use crate::store::{Durability, GcsStore, LocalStore, Store, StoreError};

/// Writes an embedded store makes before it keeps a spare staging file
/// (see [`LocalStore::with_spare_after`]).
const SPARE_AFTER_WRITES: u32 = 2;

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.backend {
        BackendConfig::Local(embedded) => {
            let durability = if embedded.sync {
                Durability::Sync
            } else {
                Durability::NoSync
            };
            // From the third write on, each is staged in a file created
            // ahead (a client running command after command); a CLI
            // command's one or two writes are not.
            Ok(Arc::new(
                LocalStore::open_with(&embedded.home, durability)?
                    .with_spare_after(SPARE_AFTER_WRITES),
            ))
        }
        BackendConfig::Gcp(gcp) => {
            if let (Some(host), Some(token)) = (
                gcp.storage_emulator_host.as_deref(),
                gcp.credentials.emulator_token.as_deref(),
            ) {
                let token = crate::credentials::StoreToken::new(token, None);
                return Ok(Arc::new(GcsStore::with_token(
                    gcp.bucket.clone(),
                    Some(host),
                    &token,
                )));
            }
            let store =
                GcsStore::connect(gcp.bucket.clone(), gcp.storage_emulator_host.as_deref()).await?;
            Ok(Arc::new(store))
        }
    }
}
