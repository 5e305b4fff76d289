//! Embedded event source: filesystem notifications on the local store's `results/`. STUB.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use runbox_core::Store;

use crate::{EventSource, SourceError, SourceItem};

/// Turns finished writes under `<root>/results/` into object events.
pub struct FsEventSource {}

impl FsEventSource {
    /// Watches `<root>/results/` (created if missing) of the local store at
    /// `root`; `store` is used to read each object's generation and metadata.
    pub fn new(_root: &Path, _store: Arc<dyn Store>) -> Result<Self, SourceError> {
        todo!()
    }
}

#[async_trait]
impl EventSource for FsEventSource {
    fn describe(&self) -> String {
        todo!()
    }

    async fn next(&mut self) -> Result<SourceItem, SourceError> {
        todo!()
    }
}
