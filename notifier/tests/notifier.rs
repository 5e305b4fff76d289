//! The notifier task against a scripted event source.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runbox_core::{ExecutionId, Store, layout};
use runbox_notifier::{
    Acker, EventSource, Notifier, NotifierStats, ObjectEvent, SourceError, SourceItem, WaitError,
    Waiters,
};
use support::MemStore;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// A source that returns whatever the test sends, and waits forever once the
/// test stops sending (so only the notifier can end the task).
struct Scripted {
    items: mpsc::UnboundedReceiver<Result<SourceItem, SourceError>>,
}

#[async_trait]
impl EventSource for Scripted {
    fn describe(&self) -> String {
        "scripted".to_owned()
    }

    async fn next(&mut self) -> Result<SourceItem, SourceError> {
        match self.items.recv().await {
            Some(item) => item,
            None => std::future::pending().await,
        }
    }
}

/// A source whose `next` panics.
struct Panicking;

#[async_trait]
impl EventSource for Panicking {
    fn describe(&self) -> String {
        "panicking".to_owned()
    }

    async fn next(&mut self) -> Result<SourceItem, SourceError> {
        panic!("source exploded");
    }
}

/// One acknowledgement: the object it was for, and whether a waiter for
/// that object's execution was still pending when the ack ran.
#[derive(Debug, PartialEq, Eq)]
struct AckRecord {
    name: String,
    still_pending: bool,
}

struct Harness {
    waiters: Arc<Waiters>,
    store: Arc<MemStore>,
    items: mpsc::UnboundedSender<Result<SourceItem, SourceError>>,
    acks_tx: mpsc::UnboundedSender<AckRecord>,
    acks: mpsc::UnboundedReceiver<AckRecord>,
    notifier: Notifier,
}

impl Harness {
    fn start() -> Self {
        let waiters = Waiters::new();
        let store = Arc::new(MemStore::default());
        let (items, rx) = mpsc::unbounded_channel();
        let notifier = Notifier::spawn(
            Box::new(Scripted { items: rx }),
            Arc::clone(&waiters),
            Arc::clone(&store) as Arc<dyn Store>,
        );
        let (acks_tx, acks) = mpsc::unbounded_channel();
        Self {
            waiters,
            store,
            items,
            acks_tx,
            acks,
            notifier,
        }
    }

    /// Sends an event on `name` with an acker that records the routing state.
    fn event(&self, name: &str, generation: i64) {
        let acker = self.acker(name);
        self.send(SourceItem::Event(event(name, generation), acker));
    }

    fn acker(&self, name: &str) -> Acker {
        let waiters = Arc::clone(&self.waiters);
        let acks = self.acks_tx.clone();
        let name = name.to_owned();
        Acker::new(move || {
            Box::pin(async move {
                let still_pending =
                    layout::parse_result(&name).is_some_and(|id| waiters.pending().contains(&id));
                acks.send(AckRecord {
                    name,
                    still_pending,
                })
                .unwrap();
            })
        })
    }

    fn send(&self, item: SourceItem) {
        self.items.send(Ok(item)).unwrap();
    }

    async fn next_ack(&mut self) -> AckRecord {
        timeout(LIMIT, self.acks.recv())
            .await
            .expect("an ack in time")
            .expect("ack channel open")
    }

    /// Waits until everything sent so far has been handled: the task handles
    /// items in order, so once a marker sent now is acked, all before it are.
    async fn settle(&mut self) {
        self.event("marker/settle", 1);
        assert_eq!(self.next_ack().await.name, "marker/settle");
    }
}

fn id(s: &str) -> ExecutionId {
    ExecutionId::new(s).unwrap()
}

fn event(name: &str, generation: i64) -> ObjectEvent {
    ObjectEvent {
        bucket: "bucket".to_owned(),
        name: name.to_owned(),
        generation,
        metadata: BTreeMap::new(),
    }
}

#[tokio::test]
async fn routes_an_event_and_acks_only_after_routing() {
    let mut h = Harness::start();
    let x = id("inst-1");
    let waiter = h.waiters.register(x.clone()).unwrap();

    h.event(&layout::result(&x), 3);
    let got = timeout(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(got.generation, 3);
    assert_eq!(
        h.next_ack().await,
        AckRecord {
            name: layout::result(&x),
            still_pending: false,
        }
    );
    h.settle().await;
    assert_eq!(h.notifier.stats().delivered, 1);
}

#[tokio::test]
async fn counts_duplicates_unknown_ignored_and_malformed_and_acks_each() {
    let mut h = Harness::start();
    let x = id("inst-2");
    let waiter = h.waiters.register(x.clone()).unwrap();
    let result = layout::result(&x);

    h.event(&result, 1);
    h.event(&result, 1);
    h.event("results/other-1.json", 1);
    h.event("requests/inst-2.json", 1);
    h.event("results/not an id.json", 1);
    let ack = h.acker("malformed");
    h.send(SourceItem::Malformed {
        reason: "not JSON".to_owned(),
        ack,
    });

    let mut acked = Vec::new();
    for _ in 0..6 {
        acked.push(h.next_ack().await.name);
    }
    assert_eq!(
        acked,
        [
            result.as_str(),
            result.as_str(),
            "results/other-1.json",
            "requests/inst-2.json",
            "results/not an id.json",
            "malformed",
        ]
    );
    assert_eq!(
        h.notifier.stats(),
        NotifierStats {
            delivered: 1,
            duplicates: 1,
            unknown: 1,
            ignored: 2,
            malformed: 1,
            foreign: 0,
            resynced: 0,
        }
    );
    assert_eq!(timeout(LIMIT, waiter).await.unwrap().unwrap().generation, 1);
}

#[tokio::test]
async fn resyncs_pending_results_from_the_store_on_resubscribe() {
    let mut h = Harness::start();
    let done = id("inst-3");
    let running = id("inst-4");
    h.store.insert(
        &layout::result(&done),
        9,
        &[("traceparent", "00-abc-def-01")],
    );
    let done_waiter = h.waiters.register(done.clone()).unwrap();
    let running_waiter = h.waiters.register(running.clone()).unwrap();

    h.send(SourceItem::Resubscribed);
    let got = timeout(LIMIT, done_waiter).await.unwrap().unwrap();
    assert_eq!(got.name, layout::result(&done));
    assert_eq!(got.generation, 9);
    assert_eq!(got.metadata["traceparent"], "00-abc-def-01");

    h.settle().await;
    assert_eq!(h.notifier.stats().resynced, 1);
    // Not written yet: still waiting, for the event this time.
    assert_eq!(h.waiters.pending(), vec![running.clone()]);
    h.event(&layout::result(&running), 2);
    assert_eq!(
        timeout(LIMIT, running_waiter)
            .await
            .unwrap()
            .unwrap()
            .generation,
        2
    );
}

#[tokio::test]
async fn source_failure_fails_pending_and_later_waiters() {
    let h = Harness::start();
    let waiter = h.waiters.register(id("inst-5")).unwrap();
    h.items
        .send(Err(SourceError {
            source_name: "scripted".to_owned(),
            reason: "connection lost".to_owned(),
        }))
        .unwrap();

    let err = timeout(LIMIT, waiter).await.unwrap().unwrap_err();
    let WaitError::NotifierStopped(reason) = &err else {
        panic!("unexpected {err:?}");
    };
    assert!(reason.contains("connection lost"), "{reason}");
    let later = h.waiters.register(id("inst-6")).unwrap();
    assert_eq!(timeout(LIMIT, later).await.unwrap().unwrap_err(), err);
}

#[tokio::test]
async fn shutdown_fails_pending_waiters() {
    let h = Harness::start();
    let waiter = h.waiters.register(id("inst-7")).unwrap();
    timeout(LIMIT, h.notifier.shutdown()).await.unwrap();
    assert_eq!(
        timeout(LIMIT, waiter).await.unwrap().unwrap_err(),
        WaitError::NotifierStopped("notifier shut down".to_owned())
    );
    assert!(h.waiters.is_closed());
}

#[tokio::test]
async fn dropping_the_notifier_fails_pending_waiters() {
    let h = Harness::start();
    let waiter = h.waiters.register(id("inst-8")).unwrap();
    drop(h.notifier);
    assert_eq!(
        timeout(LIMIT, waiter).await.unwrap().unwrap_err(),
        WaitError::NotifierStopped("notifier dropped".to_owned())
    );
}

#[tokio::test]
async fn a_panicking_source_fails_pending_waiters() {
    let waiters = Waiters::new();
    let waiter = waiters.register(id("inst-9")).unwrap();
    let notifier = Notifier::spawn(
        Box::new(Panicking),
        Arc::clone(&waiters),
        Arc::new(MemStore::default()),
    );
    assert_eq!(
        timeout(LIMIT, waiter).await.unwrap().unwrap_err(),
        WaitError::NotifierStopped("notifier task panicked".to_owned())
    );
    // Shutting down after the task died must not hang or panic.
    timeout(LIMIT, notifier.shutdown()).await.unwrap();
}
