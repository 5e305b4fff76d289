//! The routing task between an [`EventSource`] and the [`Waiters`].
//!
//! One background task pulls items from the source and routes finalize
//! events of `results/{id}.json` to the waiter of `id`, acknowledging each
//! message only after it has been routed. Whenever the task ends — source
//! failure, shutdown, the [`Notifier`] being dropped, even a panic — the
//! waiters are closed, so no completion future is left hanging. A graceful
//! [`Notifier::shutdown`] then closes the source ([`EventSource::close`]),
//! releasing what it holds outside the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use runbox_core::trace_context;
use runbox_core::{ExecutionId, Store, contract, layout, result_metadata};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::{EventSource, ObjectEvent, Routed, SourceItem, Waiters};

/// How many result objects are read at once when resyncing after a
/// (re)subscribe: enough to hide store latency, few enough not to flood it
/// when thousands of executions are pending.
pub const RESYNC_CONCURRENCY: usize = 16;

/// Counters of what the notifier has routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Events that resolved a waiter or woke an object watch.
    pub delivered: u64,
    /// Events already delivered before (same name and generation).
    pub duplicates: u64,
    /// Result events for executions nobody here awaits.
    pub unknown: u64,
    /// Events on objects outside `results/` that nobody watches, or with
    /// unusable names.
    pub ignored: u64,
    /// Messages that were not usable events.
    pub malformed: u64,
    /// Events of another bucket than the source's ([`crate::EventSource::bucket`]).
    pub foreign: u64,
    /// Results found by reading the store after a (re)subscribe.
    pub resynced: u64,
}

/// A running notifier; dropping it (or [`Notifier::shutdown`]) stops routing
/// and fails every pending waiter.
pub struct Notifier {
    counters: Arc<Counters>,
    waiters: Arc<Waiters>,
    source_name: String,
    /// Dropped or fired to stop the task; `None` once shut down.
    stop: Option<oneshot::Sender<()>>,
    /// Hands the source back when routing ends, for closing; `None` once
    /// shut down.
    task: Option<JoinHandle<Box<dyn EventSource>>>,
}

impl Notifier {
    /// Starts routing `source` into `waiters`; `store` is read on every
    /// (re)subscribe for the results of pending executions.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(
        source: Box<dyn EventSource>,
        waiters: Arc<Waiters>,
        store: Arc<dyn Store>,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let source_name = source.describe();
        let expected_bucket = source.bucket().map(str::to_owned);
        let (stop, stopped) = oneshot::channel();
        let router = Router {
            bucket: store.describe(),
            expected_bucket,
            waiters: Arc::clone(&waiters),
            store,
            counters: Arc::clone(&counters),
        };
        let task = tokio::spawn(run(source, router, stopped));
        Self {
            counters,
            waiters,
            source_name,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> NotifierStats {
        self.counters.snapshot()
    }

    /// A receiver that changes after every item the notifier has handled;
    /// read [`Notifier::stats`] after each change.
    pub fn stats_changed(&self) -> watch::Receiver<()> {
        self.counters.changed.subscribe()
    }

    /// The source being routed, as it describes itself.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Stops routing and waits for the task to end; pending waiters fail.
    /// Then closes the source ([`EventSource::close`]: the Pub/Sub source
    /// deletes its subscription), so this is the only call a graceful
    /// shutdown needs. A failed close is logged, not returned: nothing is
    /// left for the caller to do about it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // An error means the task has already ended on its own.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(mut source) => {
                    if let Err(e) = source.close().await {
                        tracing::warn!(source = %self.source_name, error = %e, "could not close the event source");
                    }
                }
                Err(e) => {
                    tracing::error!(source = %self.source_name, error = %e, "notifier task failed");
                }
            }
        }
        // The task closed the table on its way out; this only matters if it
        // was cancelled before it could (runtime shutting down).
        self.waiters.close("notifier shut down".to_owned());
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Close first, so waiters fail now rather than whenever the
            // aborted task is next polled; the task's own guard then finds
            // the table already closed.
            self.waiters.close("notifier dropped".to_owned());
            task.abort();
        }
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("source", &self.source_name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The task body: route until the source fails or we are told to stop; the
/// source is handed back for [`Notifier::shutdown`] to close.
async fn run(
    mut source: Box<dyn EventSource>,
    router: Router,
    mut stopped: oneshot::Receiver<()>,
) -> Box<dyn EventSource> {
    let source_name = source.describe();
    let mut guard = CloseOnExit {
        waiters: Arc::clone(&router.waiters),
        reason: None,
    };
    tracing::debug!(source = %source_name, "notifier started");
    let reason = loop {
        // Handling is inside the select too, so a slow ack or resync cannot
        // delay shutdown. Cancelling `next()` is safe by the trait's
        // contract; cancelling mid-ack only means the message is redelivered
        // (to whoever subscribes next).
        let step = async {
            let item = source.next().await?;
            router.handle(item).await;
            Ok::<(), crate::SourceError>(())
        };
        tokio::select! {
            biased;
            // Fired by `shutdown`, or the sender was dropped with the Notifier.
            _ = &mut stopped => break "notifier shut down".to_owned(),
            result = step => {
                if let Err(e) = result {
                    tracing::error!(source = %source_name, error = %e, "event source failed");
                    break e.to_string();
                }
            }
        }
    };
    tracing::debug!(source = %source_name, %reason, "notifier stopped");
    guard.reason = Some(reason);
    source
}

/// Closes the waiters however the task ends: normally with the reason set,
/// or by panic or cancellation (abort, runtime shutdown) without one.
struct CloseOnExit {
    waiters: Arc<Waiters>,
    reason: Option<String>,
}

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let reason = self.reason.take().unwrap_or_else(|| {
            if std::thread::panicking() {
                "notifier task panicked".to_owned()
            } else {
                "notifier task cancelled".to_owned()
            }
        });
        self.waiters.close(reason);
    }
}

/// What the task needs to route one item.
struct Router {
    waiters: Arc<Waiters>,
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
    /// Reported as [`ObjectEvent::bucket`] for results read by a resync.
    bucket: String,
    /// Events of other buckets are foreign.
    expected_bucket: Option<String>,
}

impl Router {
    async fn handle(&self, item: SourceItem) {
        match item {
            SourceItem::Event(event, ack) => {
                let Some(span) = event_span(&event) else {
                    self.route(event);
                    // Only now: a message acked before routing would be
                    // lost if we crashed in between.
                    ack.ack().await;
                    self.counters.changed.send_replace(());
                    return;
                };
                let routed = span.in_scope(|| self.route(event));
                span.record("routed", routed);
                ack.ack().instrument(span).await;
            }
            SourceItem::Malformed { reason, ack } => {
                tracing::warn!(%reason, "unusable event message; acked and dropped");
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                ack.ack().await;
            }
            SourceItem::Resubscribed => {
                // Object watchers re-read their object: a change announced
                // while the subscription was away would be missed otherwise.
                self.waiters.all_objects_changed();
                self.resync().await;
            }
        }
        self.counters.changed.send_replace(());
    }

    /// Routes one event; returns what became of it (a counter's name).
    fn route(&self, event: ObjectEvent) -> &'static str {
        if let Some(expected) = &self.expected_bucket
            && event.bucket != *expected
        {
            // Another bucket's object of the same name is not our result:
            // resolving a waiter with it would hand over a stranger's output.
            tracing::debug!(bucket = %event.bucket, name = %event.name, "event of another bucket; ignored");
            self.counters.foreign.fetch_add(1, Ordering::Relaxed);
            return "foreign";
        }
        if let Some((id, stream, n)) = layout::parse_output_chunk(&event.name) {
            let (counter, name) = if self.waiters.output_chunk(&id, stream, n) {
                (&self.counters.delivered, "delivered")
            } else {
                (&self.counters.ignored, "ignored")
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return name;
        }
        let Some(id) = layout::parse_result(&event.name) else {
            if self.waiters.object_changed(&event.name) {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                return "delivered";
            }
            tracing::trace!(name = %event.name, "event outside results/ that nobody watches; ignored");
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            return "ignored";
        };
        let (counter, name) = match self.waiters.complete(&id, event) {
            Routed::Delivered => (&self.counters.delivered, "delivered"),
            Routed::Duplicate => (&self.counters.duplicates, "duplicate"),
            Routed::Unknown => (&self.counters.unknown, "unknown"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        name
    }

    /// Events may have been lost while (re)subscribing: read the result of
    /// every pending execution once. One that is not there yet will arrive
    /// as an event, since the subscription is now in place.
    async fn resync(&self) {
        let pending = self.waiters.pending();
        if pending.is_empty() {
            return;
        }
        tracing::debug!(pending = pending.len(), "resyncing pending results");
        futures::stream::iter(pending)
            .map(|id| async move {
                let name = layout::result(&id);
                let meta = self.store.head(&name).await;
                (id, name, meta)
            })
            .buffer_unordered(RESYNC_CONCURRENCY)
            .for_each(|(id, name, meta)| async move {
                match meta {
                    Ok(meta) => self.resynced(&id, meta),
                    Err(e) if e.is_not_found() => {}
                    // The event (or the reconciliation deadline) still
                    // completes this execution; a failed read is no reason to
                    // stop routing the others.
                    Err(e) => tracing::warn!(%name, error = %e, "reading a pending result failed"),
                }
            })
            .await;
    }

    fn resynced(&self, id: &ExecutionId, meta: runbox_core::ObjectMeta) {
        let event = ObjectEvent {
            bucket: self.bucket.clone(),
            name: meta.name,
            generation: meta.generation,
            metadata: meta.metadata,
        };
        // Duplicate or Unknown here just means the event won the race (or
        // the caller gave up); neither is a routed message, so not counted.
        if self.waiters.complete(id, event) == Routed::Delivered {
            self.counters.resynced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The span of one event, from receipt to routed, in the trace of the
/// writer that put its `traceparent` in the object's metadata, with the
/// notification lag (the writer's completion time to now, when the event
/// carries the result). `None` without telemetry, so an untraced process
/// decodes nothing.
fn event_span(event: &ObjectEvent) -> Option<tracing::Span> {
    if !trace_context::is_active() {
        return None;
    }
    let span = tracing::info_span!(
        "event routed",
        object = %event.name,
        generation = event.generation,
        routed = tracing::field::Empty,
        notification.lag_ms = tracing::field::Empty,
    );
    trace_context::continue_from(
        &span,
        event
            .metadata
            .get(contract::RESULT_TRACEPARENT_KEY)
            .map(String::as_str),
    );
    let completed = result_metadata::decode(&event.metadata)
        .and_then(Result::ok)
        .and_then(|r| r.completed_at)
        .and_then(|t| std::time::SystemTime::try_from(t).ok());
    if let Some(lag) = completed.and_then(|t| std::time::SystemTime::now().duration_since(t).ok()) {
        span.record("notification.lag_ms", lag.as_secs_f64() * 1000.0);
    }
    Some(span)
}

/// The counters shared between the task (writer) and [`Notifier::stats`].
#[derive(Default)]
struct Counters {
    /// Bumped after every routed item, so observers wait instead of polling.
    changed: watch::Sender<()>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    unknown: AtomicU64,
    ignored: AtomicU64,
    malformed: AtomicU64,
    foreign: AtomicU64,
    resynced: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> NotifierStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NotifierStats {
            delivered: read(&self.delivered),
            duplicates: read(&self.duplicates),
            unknown: read(&self.unknown),
            ignored: read(&self.ignored),
            malformed: read(&self.malformed),
            foreign: read(&self.foreign),
            resynced: read(&self.resynced),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use runbox_core::store::LocalStore;

    use super::*;
    use crate::SourceError;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A source that waits forever, or fails at once, and counts its closes.
    struct Counted {
        fail: bool,
        closes: Arc<AtomicU64>,
    }

    #[async_trait]
    impl EventSource for Counted {
        fn describe(&self) -> String {
            "counted".to_owned()
        }

        async fn next(&mut self) -> Result<SourceItem, SourceError> {
            if self.fail {
                return Err(SourceError {
                    source_name: self.describe(),
                    reason: "broken".to_owned(),
                });
            }
            std::future::pending().await
        }

        async fn close(&mut self) -> Result<(), SourceError> {
            self.closes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn spawn(fail: bool) -> (Notifier, Arc<AtomicU64>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open store");
        let closes = Arc::new(AtomicU64::new(0));
        let source = Counted {
            fail,
            closes: Arc::clone(&closes),
        };
        let notifier = Notifier::spawn(Box::new(source), Waiters::new(), Arc::new(store));
        (notifier, closes, dir)
    }

    #[tokio::test]
    async fn shutdown_closes_the_source_once() {
        let (notifier, closes, _dir) = spawn(false);
        tokio::time::timeout(LIMIT, notifier.shutdown())
            .await
            .expect("shutdown finished");
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_source_that_failed_is_still_closed_at_shutdown() {
        let (notifier, closes, _dir) = spawn(true);
        // The task ends by itself (closing the waiters); shutdown still owes
        // the source a close.
        tokio::time::timeout(LIMIT, async {
            while !notifier.waiters.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the task ended");
        tokio::time::timeout(LIMIT, notifier.shutdown())
            .await
            .expect("shutdown finished");
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_the_notifier_does_not_close_the_source() {
        let (notifier, closes, _dir) = spawn(false);
        drop(notifier);
        tokio::task::yield_now().await;
        assert_eq!(closes.load(Ordering::SeqCst), 0);
    }
}
