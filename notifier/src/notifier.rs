//! The routing task between an EventSource and the Waiters. STUB.

use std::sync::Arc;

use runbox_core::Store;

use crate::{EventSource, Waiters};

/// Counters of what the notifier has routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Events that resolved a waiter.
    pub delivered: u64,
    /// Events already delivered before (same name and generation).
    pub duplicates: u64,
    /// Result events for executions nobody here awaits.
    pub unknown: u64,
    /// Events on objects outside `results/` or with unusable names.
    pub ignored: u64,
    /// Messages that were not usable events.
    pub malformed: u64,
    /// Results found by reading the store after a (re)subscribe.
    pub resynced: u64,
}

/// A running notifier; dropping it (or [`Notifier::shutdown`]) stops routing
/// and fails every pending waiter.
pub struct Notifier {}

impl Notifier {
    /// Starts routing `source` into `waiters`; `store` is read on every
    /// (re)subscribe for the results of pending executions.
    pub fn spawn(
        _source: Box<dyn EventSource>,
        _waiters: Arc<Waiters>,
        _store: Arc<dyn Store>,
    ) -> Self {
        todo!()
    }

    /// Current counters.
    pub fn stats(&self) -> NotifierStats {
        todo!()
    }

    /// Stops routing and waits for the task to end; pending waiters fail.
    pub async fn shutdown(self) {
        todo!()
    }
}
