//! Turning a completion event into the execution's result: from the result
//! its executor put in the object's custom metadata when the event carries
//! it ([`runbox_core::result_metadata`]), else by reading the result object.
//!
//! Every path that turns an event into a result goes through
//! [`Engine::result_of`], so the choice and its counters live in one place.
//! Reads that are not about an event (settling after the executor ended,
//! reconciling after a deadline, re-awaiting by id) read the object as they
//! always did.

use std::sync::atomic::{AtomicU64, Ordering};

use runbox_core::{ExecutionId, result_metadata};
use runbox_notifier::ObjectEvent;
use runbox_proto::ExecResult;

use super::Engine;
use crate::error::Result;

/// How completion events were turned into results, as counted by
/// `Client::result_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultStats {
    /// Results decoded from the event's metadata, without reading the
    /// result object.
    pub from_payload: u64,
    /// Results read from the result object after an event: no result in
    /// the metadata (too large, written by the dispatcher on an executor's
    /// behalf, an unknown encoding), one that did not decode, or
    /// `RUNBOX_RESULT_IN_METADATA=false`.
    pub by_read: u64,
}

/// The engine's counters behind [`ResultStats`].
#[derive(Debug, Default)]
pub(crate) struct ResultCounters {
    from_payload: AtomicU64,
    by_read: AtomicU64,
}

impl ResultCounters {
    pub(crate) fn snapshot(&self) -> ResultStats {
        ResultStats {
            from_payload: self.from_payload.load(Ordering::Relaxed),
            by_read: self.by_read.load(Ordering::Relaxed),
        }
    }
}

impl Engine {
    /// The result of execution `id`, whose completion `event` has arrived.
    pub(crate) async fn result_of(
        &self,
        id: &ExecutionId,
        event: &ObjectEvent,
    ) -> Result<ExecResult> {
        if self.config.limits.result_in_metadata {
            match result_metadata::decode(&event.metadata) {
                Some(Ok(result)) if result.execution_id == id.as_str() => {
                    self.results.from_payload.fetch_add(1, Ordering::Relaxed);
                    record_lag(&result);
                    return Ok(result);
                }
                // Not ours to trust: the object's body is the record.
                Some(Ok(result)) => tracing::warn!(
                    execution = %id,
                    carried = %result.execution_id,
                    "result metadata names another execution; reading the result object"
                ),
                Some(Err(e)) => tracing::warn!(
                    execution = %id,
                    error = %crate::error_chain(&e),
                    "result metadata unusable; reading the result object"
                ),
                None => {}
            }
        }
        self.results.by_read.fetch_add(1, Ordering::Relaxed);
        let result = self.read_result(id).await?;
        record_lag(&result);
        Ok(result)
    }
}

/// The notification lag: from the result's completion time (the writer's
/// clock) to now. A clock behind the writer's records nothing.
fn record_lag(result: &ExecResult) {
    let Some(completed) = result.completed_at.as_ref() else {
        return;
    };
    let Ok(completed) = std::time::SystemTime::try_from(*completed) else {
        return;
    };
    if let Ok(lag) = std::time::SystemTime::now().duration_since(completed) {
        crate::metrics::get().notification_lag(lag);
    }
}
