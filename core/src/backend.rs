//! Choosing the store backend once, at start-up, from configuration.

use std::sync::Arc;

use crate::config::{Backend, Config};
use crate::store::{Durability, GcsStore, LocalStore, Store, StoreError};

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        Backend::Local => {
            let durability = if config.local_sync {
                Durability::Sync
            } else {
                Durability::NoSync
            };
            Ok(Arc::new(LocalStore::open_with(&config.home, durability)?))
        }
        Backend::Gcp => {
            // Config::validate guarantees a bucket for the gcp backend.
            let bucket = config.bucket.clone().unwrap_or_default();
            let store = GcsStore::connect(bucket, config.storage_emulator_host.as_deref()).await?;
            Ok(Arc::new(store))
        }
    }
}
