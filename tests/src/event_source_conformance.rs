//! The conformance suite of the [`EventSource`] trait: what every backend
//! must give the [`Notifier`], written once and run against each (DESIGN §7):
//! the filesystem source (inotify on a local store's `results/`) and the
//! Pub/Sub source (fake-gcs-server's real notifications through Google's
//! Pub/Sub emulator). A backend's test file implements [`Backend`] (and
//! [`LosesSubscription`] where the backend can lose its subscription while
//! it runs) and calls each property, one test per property.
//!
//! Every property runs a real [`Notifier`] over a fresh source of the
//! backend and writes real result objects to the backend's store; it only
//! uses the public API of the notifier. Between the two sits an observing
//! source that forwards every item unchanged and reports two things the
//! notifier does not expose: which deliveries it acknowledged (after
//! routing them), and when it has finished a resync (it asks for the next
//! item only once it has handled the previous one). So properties wait for
//! what they need to have happened, never for a guessed time.
//!
//! Every property panics with a message saying what did not hold, and never
//! takes longer than [`PROPERTY_TIMEOUT`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use runbox_core::{ExecutionId, ObjectMeta, PutOptions, Store, layout};
use runbox_notifier::{
    Acker, EventSource, Notifier, NotifierStats, ObjectEvent, SourceError, SourceItem, WaitError,
    Waiter, Waiters,
};
use tokio::sync::{mpsc, watch};

/// The longest one property may take, emulator round trips included.
pub const PROPERTY_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest one step of a property may take (one notification, one
/// resync, one emulator restart).
const STEP: Duration = Duration::from_secs(90);

/// Custom metadata every result carries, as the executor's `traceparent` does.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// How many results the resync properties write where no event can report
/// them.
const UNSEEN: usize = 5;

/// What the properties run against: a store whose result objects the
/// backend's sources report.
pub trait Backend: Send + Sync {
    /// The store results are written to; the notifier reads it to resync.
    fn store(&self) -> Arc<dyn Store>;

    /// A fresh execution id whose result this backend's sources report.
    fn execution_id(&self) -> ExecutionId;

    /// A new source, watching from now on.
    fn source(&self) -> impl Future<Output = Box<dyn EventSource>> + Send;

    /// Makes the last source deliver the notification of `meta` (same name,
    /// same generation) once more, as an at-least-once channel may.
    fn notify_again(&self, meta: &ObjectMeta) -> impl Future<Output = ()> + Send;

    /// Ends the last source for good, as a lost watch or a deleted
    /// subscription does; it then reports that it stopped.
    fn end_source(&self) -> impl Future<Output = ()> + Send;
}

/// A backend whose running source can lose its subscription and get it
/// back by itself, announcing that with [`SourceItem::Resubscribed`].
pub trait LosesSubscription: Backend {
    /// Takes the subscription away: results written from now until
    /// [`LosesSubscription::restore_subscription`] are never notified.
    fn lose_subscription(&mut self) -> impl Future<Output = ()> + Send;

    /// Lets the source subscribe again.
    fn restore_subscription(&mut self) -> impl Future<Output = ()> + Send;
}

/// A result written after its waiter was registered resolves that waiter
/// with the result's name, generation and custom metadata, through an event
/// that is acknowledged; it is counted as delivered, and nothing but
/// duplicates of it is counted besides.
pub async fn a_result_resolves_its_waiter<B: Backend>(backend: &B) {
    bounded("a_result_resolves_its_waiter", async {
        let mut run = Running::start(backend, Waiters::new()).await;
        run.resynced(1).await;
        let id = backend.execution_id();
        let waiter = run.register(&id);
        let meta = write_result(backend, &id).await;

        let event = resolved(waiter).await;
        assert_same_object(&event, &meta);
        run.acked(&meta.name, 1).await;
        let stats = run.notifier.stats();
        assert_eq!(
            stats,
            NotifierStats {
                delivered: 1,
                // Delivery is at least once: a source may report one write
                // twice (the filesystem source sees the rename into place
                // and, at times, the close of the writer's handle after it).
                duplicates: stats.duplicates,
                ..NotifierStats::default()
            }
        );
        run.stop().await;
    })
    .await;
}

/// Each repeated notification of a delivered result is acknowledged and
/// counted as a duplicate; the waiter resolved once, with the first.
pub async fn duplicates_deliver_once<B: Backend>(backend: &B) {
    bounded("duplicates_deliver_once", async {
        let mut run = Running::start(backend, Waiters::new()).await;
        run.resynced(1).await;
        let id = backend.execution_id();
        let waiter = run.register(&id);
        let meta = write_result(backend, &id).await;
        assert_same_object(&*resolved(waiter).await, &meta);
        run.acked(&meta.name, 1).await;

        // One at a time: a source may fold notifications of one object that
        // are still queued together, which is not what is tested here.
        for copies in 2..=3 {
            step("notify again", backend.notify_again(&meta)).await;
            run.acked(&meta.name, copies).await;
        }
        let stats = run.notifier.stats();
        assert_eq!(
            stats,
            NotifierStats {
                delivered: 1,
                // At least the two copies sent; more when the source
                // reported the write itself twice (see above).
                duplicates: stats.duplicates.max(2),
                ..NotifierStats::default()
            }
        );
        // The id is no longer awaited, and no waiter came back for it.
        assert!(run.waiters.is_empty(), "{:?}", run.waiters.pending());
        run.stop().await;
    })
    .await;
}

/// A result of an execution nobody here awaits is acknowledged, counted as
/// unknown and resolves nothing; routing goes on.
pub async fn unknown_executions_are_acked_and_counted<B: Backend>(backend: &B) {
    bounded("unknown_executions_are_acked_and_counted", async {
        let mut run = Running::start(backend, Waiters::new()).await;
        run.resynced(1).await;
        let bystander = backend.execution_id();
        let mut waiter = run.register(&bystander);
        let stranger = backend.execution_id();
        let meta = write_result(backend, &stranger).await;

        run.acked(&meta.name, 1).await;
        let stats = run.notifier.stats();
        assert_eq!(
            stats,
            NotifierStats {
                // At least once, for each report of the write (see above).
                unknown: stats.unknown.max(1),
                ..NotifierStats::default()
            }
        );
        assert_eq!(run.waiters.pending(), vec![bystander.clone()]);
        assert!(
            (&mut waiter).now_or_never().is_none(),
            "another execution's result resolved a waiter"
        );

        let meta = write_result(backend, &bystander).await;
        assert_same_object(&*resolved(waiter).await, &meta);
        run.acked(&meta.name, 1).await;
        let stats = run.notifier.stats();
        assert_eq!((stats.delivered, stats.resynced), (1, 0), "{stats:?}");
        run.stop().await;
    })
    .await;
}

/// Results written before the source watched (nobody is notified of them)
/// are found by the resync on its first subscribe and resolve their
/// waiters; a result written afterwards still arrives as an event
/// (list-then-watch).
pub async fn results_written_before_the_watch_are_resynced<B: Backend>(backend: &B) {
    bounded("results_written_before_the_watch_are_resynced", async {
        let waiters = Waiters::new();
        let early: Vec<ExecutionId> = (0..UNSEEN).map(|_| backend.execution_id()).collect();
        let late = backend.execution_id();
        let early_waiters: Vec<Waiter> = early
            .iter()
            .map(|id| waiters.register(id.clone()).expect("register"))
            .collect();
        let late_waiter = waiters.register(late.clone()).expect("register");
        let mut written = Vec::new();
        for id in &early {
            written.push(write_result(backend, id).await);
        }

        let mut run = Running::start(backend, waiters).await;
        let events = step("the early waiters", join_all(early_waiters)).await;
        for (event, meta) in events.into_iter().zip(&written) {
            let event = event.unwrap_or_else(|e| panic!("{}: {e}", meta.name));
            assert_same_object(&event, meta);
        }
        run.resynced(1).await;
        assert_eq!(
            run.notifier.stats(),
            NotifierStats {
                resynced: UNSEEN as u64,
                ..NotifierStats::default()
            }
        );

        let meta = write_result(backend, &late).await;
        assert_same_object(&*resolved(late_waiter).await, &meta);
        let stats = run.counted(UNSEEN as u64 + 1).await;
        assert_eq!(
            stats.delivered + stats.resynced,
            UNSEEN as u64 + 1,
            "{stats:?}"
        );
        run.stop().await;
    })
    .await;
}

/// When the running source loses its subscription and results are written
/// meanwhile (their notifications are lost), the source subscribes again,
/// the notifier's resync finds those results and every pending waiter
/// resolves exactly once; later results arrive as events again.
pub async fn resubscribe_resyncs_what_was_missed<B: LosesSubscription>(backend: &mut B) {
    bounded("resubscribe_resyncs_what_was_missed", async {
        let mut run = Running::start(&*backend, Waiters::new()).await;
        run.resynced(1).await;
        // A first result through an event: the source is live.
        let probe = backend.execution_id();
        let waiter = run.register(&probe);
        let meta = write_result(&*backend, &probe).await;
        assert_same_object(&*resolved(waiter).await, &meta);
        run.acked(&meta.name, 1).await;
        let before = run.notifier.stats();

        let ids: Vec<ExecutionId> = (0..UNSEEN).map(|_| backend.execution_id()).collect();
        let waiters: Vec<Waiter> = ids.iter().map(|id| run.register(id)).collect();
        step("lose the subscription", backend.lose_subscription()).await;
        let mut written = Vec::new();
        for id in &ids {
            written.push(write_result(&*backend, id).await);
        }
        step("restore the subscription", backend.restore_subscription()).await;

        let events = step("the waiters", join_all(waiters)).await;
        for (event, meta) in events.into_iter().zip(&written) {
            let event = event.unwrap_or_else(|e| panic!("{}: {e}", meta.name));
            assert_same_object(&event, meta);
        }
        run.resynced(2).await;
        let stats = run.counted(UNSEEN as u64 + 1).await;
        // Only the resync can have resolved these: no event of theirs exists
        // on the new subscription before it announced itself, and the
        // notifier resyncs before it routes anything that came after.
        assert!(
            stats.resynced - before.resynced >= UNSEEN as u64,
            "the resync recovered fewer than the {UNSEEN} lost results: {stats:?}"
        );
        // Each waiter exactly once: a late copy of a lost notification may
        // still come, but only as a duplicate.
        assert_eq!(
            stats.delivered + stats.resynced,
            UNSEEN as u64 + 1,
            "{stats:?}"
        );

        let after = backend.execution_id();
        let waiter = run.register(&after);
        let meta = write_result(&*backend, &after).await;
        assert_same_object(&*resolved(waiter).await, &meta);
        let stats = run.counted(UNSEEN as u64 + 2).await;
        assert_eq!(
            stats.delivered + stats.resynced,
            UNSEEN as u64 + 2,
            "{stats:?}"
        );
        run.stop().await;
    })
    .await;
}

/// Stopping the notifier fails every waiting future at once with
/// [`WaitError::NotifierStopped`], and every later registration too.
pub async fn stop_fails_every_waiter<B: Backend>(backend: &B) {
    bounded("stop_fails_every_waiter", async {
        let mut run = Running::start(backend, Waiters::new()).await;
        run.resynced(1).await;
        let waiters: Vec<Waiter> = (0..3)
            .map(|_| run.register(&backend.execution_id()))
            .collect();
        let table = Arc::clone(&run.waiters);
        step("shutdown", run.notifier.shutdown()).await;
        // Closed by the time shutdown returns: nothing left to wait for.
        assert!(table.is_closed());
        assert!(table.is_empty(), "{:?}", table.pending());

        let stopped = WaitError::NotifierStopped("notifier shut down".to_owned());
        for result in step("the stopped waiters", join_all(waiters)).await {
            assert_eq!(result.expect_err("a stopped waiter resolved"), stopped);
        }
        let later = table
            .register(backend.execution_id())
            .expect("register after stop");
        assert_eq!(
            step("a waiter registered after stop", later)
                .await
                .expect_err("resolved after stop"),
            stopped
        );
    })
    .await;
}

/// A source that ends for good fails every waiting future with
/// [`WaitError::NotifierStopped`], naming the source.
pub async fn a_source_that_ends_fails_every_waiter<B: Backend>(backend: &B) {
    bounded("a_source_that_ends_fails_every_waiter", async {
        let mut run = Running::start(backend, Waiters::new()).await;
        run.resynced(1).await;
        let waiters: Vec<Waiter> = (0..3)
            .map(|_| run.register(&backend.execution_id()))
            .collect();
        step("end the source", backend.end_source()).await;

        let source = run.notifier.source_name().to_owned();
        for result in step("the waiters", join_all(waiters)).await {
            match result {
                Err(WaitError::NotifierStopped(reason)) => {
                    assert!(reason.contains(&source), "{reason:?} names no {source}")
                }
                other => panic!("expected NotifierStopped, got {other:?}"),
            }
        }
        assert!(run.waiters.is_closed());
        step("shutdown after the source ended", run.notifier.shutdown()).await;
    })
    .await;
}

/// A notifier over an observed source of the backend.
struct Running {
    notifier: Notifier,
    waiters: Arc<Waiters>,
    acks: mpsc::UnboundedReceiver<String>,
    /// How often each object's deliveries were acknowledged so far.
    acked: HashMap<String, usize>,
    resyncs: watch::Receiver<u64>,
}

impl Running {
    async fn start<B: Backend>(backend: &B, waiters: Arc<Waiters>) -> Self {
        let source = step("connect the source", backend.source()).await;
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (resyncs_tx, resyncs) = watch::channel(0);
        let observed = Observed {
            inner: source,
            acks: acks_tx,
            resyncs: resyncs_tx,
            resync_in_hand: false,
        };
        let notifier = Notifier::spawn(Box::new(observed), Arc::clone(&waiters), backend.store());
        Self {
            notifier,
            waiters,
            acks,
            acked: HashMap::new(),
            resyncs,
        }
    }

    fn register(&self, id: &ExecutionId) -> Waiter {
        self.waiters.register(id.clone()).expect("register")
    }

    /// Waits until the notifier has finished `n` resyncs in all.
    async fn resynced(&mut self, n: u64) {
        step("the resync", self.resyncs.wait_for(|&done| done >= n))
            .await
            .expect("the observed source is alive while the notifier runs");
    }

    /// Waits until deliveries of `name` have been acknowledged `n` times.
    async fn acked(&mut self, name: &str, n: usize) {
        while self.acked.get(name).copied().unwrap_or(0) < n {
            let acked = step("an acknowledgement", self.acks.recv())
                .await
                .expect("the observed source is alive while the notifier runs");
            *self.acked.entry(acked).or_default() += 1;
        }
    }

    /// The counters once at least `n` waiters have been resolved in all.
    /// A waiter resolves a moment before its delivery is counted, so the
    /// counters are awaited rather than read.
    async fn counted(&self, n: u64) -> NotifierStats {
        let mut changed = self.notifier.stats_changed();
        step("the notifier's counters", async {
            loop {
                let stats = self.notifier.stats();
                if stats.delivered + stats.resynced >= n {
                    return stats;
                }
                changed.changed().await.expect("the notifier runs");
            }
        })
        .await
    }

    async fn stop(self) {
        step("shutdown", self.notifier.shutdown()).await;
    }
}

/// Forwards the backend's items unchanged, reporting acknowledgements and
/// finished resyncs.
struct Observed {
    inner: Box<dyn EventSource>,
    acks: mpsc::UnboundedSender<String>,
    resyncs: watch::Sender<u64>,
    /// The last item handed out was `Resubscribed`.
    resync_in_hand: bool,
}

impl EventSource for Observed {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn next<'a, 'b>(&'a mut self) -> BoxFuture<'b, Result<SourceItem, SourceError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            if std::mem::take(&mut self.resync_in_hand) {
                // The notifier asks for an item only once it has handled the
                // one before: the resync is over.
                self.resyncs.send_modify(|done| *done += 1);
            }
            let item = self.inner.next().await?;
            Ok(match item {
                SourceItem::Event(event, ack) => {
                    let ack = self.recorded(event.name.clone(), ack);
                    SourceItem::Event(event, ack)
                }
                SourceItem::Malformed { reason, ack } => SourceItem::Malformed {
                    ack: self.recorded(format!("malformed: {reason}"), ack),
                    reason,
                },
                SourceItem::Resubscribed => {
                    self.resync_in_hand = true;
                    SourceItem::Resubscribed
                }
            })
        })
    }
}

impl Observed {
    /// `ack`, reporting `name` once it has run.
    fn recorded(&self, name: String, ack: Acker) -> Acker {
        let acks = self.acks.clone();
        Acker::new(move || {
            async move {
                ack.ack().await;
                // The property may be over; nobody to tell then.
                let _ = acks.send(name);
            }
            .boxed()
        })
    }
}

/// Writes the result of `id` (create-only, as the executor does) with a
/// custom metadata entry, returning what the store reports.
async fn write_result<B: Backend + ?Sized>(backend: &B, id: &ExecutionId) -> ObjectMeta {
    let name = layout::result(id);
    let opts = PutOptions::create().with_metadata("traceparent", TRACEPARENT);
    let body = Bytes::from(format!(r#"{{"execution_id":"{id}"}}"#));
    step("write a result", backend.store().put(&name, body, opts))
        .await
        .unwrap_or_else(|e| panic!("writing {name}: {e}"))
}

async fn resolved(waiter: Waiter) -> Arc<ObjectEvent> {
    let id = waiter.id().clone();
    step("the waiter", waiter)
        .await
        .unwrap_or_else(|e| panic!("the waiter of {id} failed: {e}"))
}

fn assert_same_object(event: &ObjectEvent, meta: &ObjectMeta) {
    assert_eq!(event.name, meta.name);
    assert_eq!(event.generation, meta.generation, "{}", meta.name);
    assert_eq!(
        event.metadata.get("traceparent").map(String::as_str),
        Some(TRACEPARENT),
        "{}",
        meta.name
    );
}

/// Awaits one step of a property, failing it when the step takes too long.
async fn step<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

async fn bounded(property: &str, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(PROPERTY_TIMEOUT, fut).await.is_err() {
        panic!("{property}: no answer within {PROPERTY_TIMEOUT:?}");
    }
}
