//! Choosing the store backend once, at start-up, from configuration.

use std::sync::Arc;

use crate::config::{BackendConfig, Config};
use crate::store::{Durability, GcsStore, LocalStore, Store, StoreError};

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.backend {
        BackendConfig::Local(embedded) => {
            let durability = if embedded.sync {
                Durability::Sync
            } else {
                Durability::NoSync
            };
            Ok(Arc::new(LocalStore::open_with(&embedded.home, durability)?))
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
