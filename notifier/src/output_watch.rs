//! Watches on an execution's live output chunks
//! (`results/{execution}.chunk.{stream}.N`, see
//! [`runbox_core::layout::output_chunk`]): each chunk's finalize event is
//! passed on, in the order events arrive, to the one watch of its
//! execution.
//!
//! Events may come twice, late or out of order, and some may be lost (a
//! resubscribe says so with [`OutputSignal::Resync`]): a watcher keeps the
//! next number it expects per stream, and since an executor writes chunk
//! `n + 1` only after chunk `n`, a signal for chunk `k` means every chunk up
//! to `k` can be read by name. Create the watch BEFORE the execution is
//! launched.

use std::sync::Arc;

use dashmap::DashMap;
use runbox_core::ExecutionId;
use runbox_core::layout::Stream;
use tokio::sync::mpsc;

use crate::{WaitError, Waiters};

/// What a watch learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputSignal {
    /// Chunk `n` of `stream` exists.
    Chunk {
        /// Which stream.
        stream: Stream,
        /// Its number (from 1).
        n: u64,
    },
    /// Events may have been lost (the subscription was re-established):
    /// read on from the next expected chunks until one is missing.
    Resync,
}

/// One sender per watched execution.
#[derive(Default)]
pub(crate) struct OutputWatches {
    senders: DashMap<ExecutionId, mpsc::UnboundedSender<OutputSignal>>,
}

impl OutputWatches {
    /// A receiver for `id`'s chunks, replacing an earlier watch of the same
    /// execution (which then ends as if the notifier had stopped).
    pub(crate) fn subscribe(&self, id: &ExecutionId) -> mpsc::UnboundedReceiver<OutputSignal> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.insert(id.clone(), tx);
        rx
    }

    /// Passes a chunk's event on; whether anyone watched its execution.
    pub(crate) fn chunk(&self, id: &ExecutionId, stream: Stream, n: u64) -> bool {
        self.senders
            .get(id)
            .is_some_and(|tx| tx.send(OutputSignal::Chunk { stream, n }).is_ok())
    }

    /// Tells every watch that events may have been lost.
    pub(crate) fn resync(&self) {
        for tx in self.senders.iter() {
            let _ = tx.send(OutputSignal::Resync);
        }
    }

    /// Drops every sender, which ends every watch with an error.
    pub(crate) fn clear(&self) {
        self.senders.clear();
    }

    fn release(&self, id: &ExecutionId) {
        self.senders.remove_if(id, |_, tx| tx.is_closed());
    }
}

/// The chunk events of one execution (see the module docs). Ends with
/// [`WaitError::NotifierStopped`] once the notifier has stopped, so a
/// follower never waits on a producer that is gone.
pub struct OutputWatch {
    id: ExecutionId,
    rx: Option<mpsc::UnboundedReceiver<OutputSignal>>,
    waiters: Arc<Waiters>,
}

impl OutputWatch {
    pub(crate) fn new(
        id: &ExecutionId,
        rx: Option<mpsc::UnboundedReceiver<OutputSignal>>,
        waiters: Arc<Waiters>,
    ) -> Self {
        Self {
            id: id.clone(),
            rx,
            waiters,
        }
    }

    /// The execution watched.
    pub fn id(&self) -> &ExecutionId {
        &self.id
    }

    /// The next signal. Cancel-safe.
    pub async fn next(&mut self) -> Result<OutputSignal, WaitError> {
        let Some(rx) = &mut self.rx else {
            return Err(self.waiters.stopped_error());
        };
        rx.recv().await.ok_or_else(|| self.waiters.stopped_error())
    }
}

impl Drop for OutputWatch {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            drop(rx);
            self.waiters.outputs.release(&self.id);
        }
    }
}

impl std::fmt::Debug for OutputWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWatch").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn chunks_reach_their_execution_only_and_a_close_ends_the_watch() {
        let waiters = Waiters::new();
        let a = ExecutionId::new("i-a").unwrap();
        let b = ExecutionId::new("i-b").unwrap();
        let mut watch = waiters.watch_output(&a);
        assert!(!waiters.output_chunk(&b, Stream::Stdout, 1));
        assert!(waiters.output_chunk(&a, Stream::Stderr, 2));
        let got = tokio::time::timeout(T, watch.next()).await.unwrap();
        assert_eq!(
            got,
            Ok(OutputSignal::Chunk {
                stream: Stream::Stderr,
                n: 2
            })
        );
        waiters.all_objects_changed();
        let got = tokio::time::timeout(T, watch.next()).await.unwrap();
        assert_eq!(got, Ok(OutputSignal::Resync));
        waiters.close("stopped for the test".to_owned());
        let err = tokio::time::timeout(T, watch.next()).await.unwrap();
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("stopped for the test")
        );
        assert!(waiters.watch_output(&a).next().await.is_err());
    }

    #[tokio::test]
    async fn a_dropped_watch_removes_its_entry() {
        let waiters = Waiters::new();
        let a = ExecutionId::new("i-a").unwrap();
        let watch = waiters.watch_output(&a);
        drop(watch);
        assert!(!waiters.output_chunk(&a, Stream::Stdout, 1));
    }
}
