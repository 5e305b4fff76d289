//! Per-execution completion futures (DESIGN §6).
//!
//! A caller registers its execution id BEFORE launching the execution and
//! gets a [`Waiter`]; the notifier later calls [`Waiters::complete`] with the
//! finalize event of `results/{id}.json`, which resolves that future. Three
//! promises hold whatever happens:
//!
//! - a waiter resolves at most once, and a repeated notification is reported
//!   as [`Routed::Duplicate`] instead of being mistaken for someone else's;
//! - dropping a waiter removes its table entry (a drop guard), so abandoned
//!   executions do not accumulate;
//! - a waiter never hangs because its producer is gone: [`Waiters::close`]
//!   fails every pending waiter at once, and every later registration too.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use runbox_core::ExecutionId;
use tokio::sync::oneshot;

use crate::ObjectEvent;
use crate::object_watch::{ObjectWatch, ObjectWatches};
use crate::output_watch::{OutputWatch, OutputWatches};

/// How many delivered `(execution, generation)` keys are remembered to
/// recognise duplicate notifications. GCS and Pub/Sub redeliver within
/// seconds to minutes; a few thousand completions cover that window at any
/// plausible completion rate of one instance while costing ~0.5 MiB at most.
pub const DEDUPE_CAPACITY: usize = 4096;

/// Why a waiter resolved without an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The notifier stopped (source ended or client shut down).
    #[error("completion notifier stopped: {0}")]
    NotifierStopped(String),
    /// The same execution id is already being awaited in this process.
    #[error("execution {0} is already being awaited")]
    AlreadyRegistered(ExecutionId),
}

/// What routing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// A waiting future was resolved.
    Delivered,
    /// The same name and generation was delivered before.
    Duplicate,
    /// Nobody in this process waits for it.
    Unknown,
}

/// The table of pending executions.
///
/// Each pending execution costs one map entry (the id's `Arc<str>` plus one
/// pointer-sized sender) and one oneshot allocation whose payload is a single
/// `Arc`: the reason a waiter was stopped is kept once here, not per waiter.
pub struct Waiters {
    /// One sender per pending execution. The payload is only the event: a
    /// sender dropped without sending means "stopped", and the waiter reads
    /// why from `stopped`.
    pending: DashMap<ExecutionId, oneshot::Sender<Arc<ObjectEvent>>>,
    /// Set (SeqCst) by `close` before it drains `pending`, and read (SeqCst)
    /// by `register` after it inserts: see `register` for why both orders
    /// matter.
    closed: AtomicBool,
    /// Why the table was closed; the first reason wins.
    stopped: OnceLock<String>,
    /// Recently delivered keys, to tell duplicates from strangers.
    delivered: Mutex<DeliveredKeys>,
    /// Watches on objects outside `results/` (session leases).
    pub(crate) objects: ObjectWatches,
    /// Watches on executions' live output chunks.
    pub(crate) outputs: OutputWatches,
}

impl Waiters {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Self::with_capacity(0)
    }

    /// An empty table with room for `capacity` pending executions before it
    /// has to grow.
    pub fn with_capacity(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            pending: DashMap::with_capacity(capacity),
            closed: AtomicBool::new(false),
            stopped: OnceLock::new(),
            delivered: Mutex::new(DeliveredKeys::with_capacity(DEDUPE_CAPACITY)),
            objects: ObjectWatches::default(),
            outputs: OutputWatches::default(),
        })
    }

    /// Registers a waiter; call BEFORE launching the execution.
    ///
    /// Fails with [`WaitError::AlreadyRegistered`] when a live waiter for
    /// `id` exists. After [`Waiters::close`] it succeeds with a waiter that
    /// resolves at once with [`WaitError::NotifierStopped`], so callers have
    /// one place to handle a stopped notifier.
    pub fn register(self: &Arc<Self>, id: ExecutionId) -> Result<Waiter, WaitError> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(Waiter {
                id,
                state: State::Stopped,
                waiters: Arc::clone(self),
            });
        }
        let (tx, rx) = oneshot::channel();
        // The entry guard lives only for this match: no map guard outlives
        // this function, let alone an `.await`.
        match self.pending.entry(id.clone()) {
            Entry::Occupied(mut entry) => {
                // A closed sender belongs to a waiter that has been dropped
                // but not yet removed its entry: that execution is no longer
                // awaited, so the slot is free.
                if !entry.get().is_closed() {
                    return Err(WaitError::AlreadyRegistered(id));
                }
                entry.insert(tx);
            }
            Entry::Vacant(entry) => {
                entry.insert(tx);
            }
        }
        let mut waiter = Waiter {
            id,
            state: State::Waiting(rx),
            waiters: Arc::clone(self),
        };
        // `close` sets the flag and then drains the table. If the flag is
        // still clear here, our insert happened before that drain, which
        // will drop our sender. If it is set, the drain may have run before
        // our insert and nobody would ever drop our sender: stop this waiter
        // ourselves. Either way it cannot hang.
        if self.closed.load(Ordering::SeqCst) {
            waiter.abandon();
            waiter.state = State::Stopped;
        }
        Ok(waiter)
    }

    /// Routes a finalize event of `results/{id}.json` to its waiter.
    ///
    /// A live waiter always gets the event, even one registered again after
    /// an earlier delivery: a result object is written once, so any of its
    /// notifications carries the answer that waiter needs. Without a waiter,
    /// a key delivered recently is a [`Routed::Duplicate`], anything else is
    /// [`Routed::Unknown`] (another instance's execution, or one abandoned).
    pub fn complete(&self, id: &ExecutionId, event: ObjectEvent) -> Routed {
        // Removed before sending so the entry guard is released first; the
        // oneshot then guarantees the waiter resolves at most once.
        if let Some((_, tx)) = self.pending.remove(id) {
            let generation = event.generation;
            if tx.send(Arc::new(event)).is_ok() {
                self.delivered_keys().insert(id, generation);
                return Routed::Delivered;
            }
            // The waiter was dropped between its receiver closing and its
            // drop guard running: nobody waits any more.
            return Routed::Unknown;
        }
        if self.delivered_keys().contains(id, event.generation) {
            Routed::Duplicate
        } else {
            Routed::Unknown
        }
    }

    /// Fails every pending waiter and all later registrations. Only the first
    /// call's `reason` is reported; later calls change nothing.
    pub fn close(&self, reason: String) {
        // The reason must be readable before any waiter can observe its
        // dropped sender, hence set before the flag and the drain.
        let _ = self.stopped.set(reason);
        self.closed.store(true, Ordering::SeqCst);
        // Dropping a sender wakes its waiter, which then reports `stopped`.
        self.pending.clear();
        self.objects.clear();
        self.outputs.clear();
    }

    /// Watches object `name` (outside `results/`) for announced changes;
    /// create the watch BEFORE reading the object. After
    /// [`Waiters::close`] the watch fails at once.
    pub fn watch_object(self: &Arc<Self>, name: &str) -> ObjectWatch {
        if self.closed.load(Ordering::SeqCst) {
            return ObjectWatch::new(name, None, Arc::clone(self));
        }
        let rx = self.objects.subscribe(name);
        // As in `register`: a close that drained the table before our
        // insert would leave this watch waiting forever.
        if self.closed.load(Ordering::SeqCst) {
            return ObjectWatch::new(name, None, Arc::clone(self));
        }
        ObjectWatch::new(name, Some(rx), Arc::clone(self))
    }

    /// Wakes the watches of object `name`; whether anyone watched it.
    pub fn object_changed(&self, name: &str) -> bool {
        self.objects.changed(name)
    }

    /// Wakes every object watch and tells every output watch (events may
    /// have been lost).
    pub fn all_objects_changed(&self) {
        self.objects.all_changed();
        self.outputs.resync();
    }

    /// Watches the live output chunks of execution `id` (one watch per
    /// execution; a new one replaces the old); create it BEFORE launching.
    /// After [`Waiters::close`] the watch fails at once.
    pub fn watch_output(self: &Arc<Self>, id: &ExecutionId) -> OutputWatch {
        if self.closed.load(Ordering::SeqCst) {
            return OutputWatch::new(id, None, Arc::clone(self));
        }
        let rx = self.outputs.subscribe(id);
        // As in `register`: a close that drained the table before our
        // insert would leave this watch waiting forever.
        if self.closed.load(Ordering::SeqCst) {
            return OutputWatch::new(id, None, Arc::clone(self));
        }
        OutputWatch::new(id, Some(rx), Arc::clone(self))
    }

    /// Passes on the event of chunk `n` of `stream` of execution `id`;
    /// whether anyone watched it.
    pub fn output_chunk(
        &self,
        id: &ExecutionId,
        stream: runbox_core::layout::Stream,
        n: u64,
    ) -> bool {
        self.outputs.chunk(id, stream, n)
    }

    /// Whether [`Waiters::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ids currently awaited, in no particular order. Used after a
    /// (re)subscribe to read the results that may have been missed.
    pub fn pending(&self) -> Vec<ExecutionId> {
        self.pending
            .iter()
            .filter(|entry| !entry.value().is_closed())
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn stopped_error(&self) -> WaitError {
        WaitError::NotifierStopped(
            self.stopped
                .get()
                .cloned()
                // Unreachable in practice: senders are only dropped unsent by
                // `close`, which sets the reason first.
                .unwrap_or_else(|| "completion table closed".to_owned()),
        )
    }

    fn delivered_keys(&self) -> std::sync::MutexGuard<'_, DeliveredKeys> {
        // The critical sections cannot panic half-way in a way that breaks
        // the ring/set pairing, so a poisoned lock is still consistent.
        self.delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for Waiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiters")
            .field("pending", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A future resolving with the execution's result event.
///
/// Dropping it before it resolves removes its registration, so the same id
/// can be registered again and a late event is reported as unknown.
pub struct Waiter {
    id: ExecutionId,
    state: State,
    waiters: Arc<Waiters>,
}

enum State {
    /// Registered; the event arrives through the receiver.
    Waiting(oneshot::Receiver<Arc<ObjectEvent>>),
    /// The table was closed; resolves at once with the stop reason.
    Stopped,
    /// Already resolved.
    Done,
}

impl Waiter {
    /// The execution awaited.
    pub fn id(&self) -> &ExecutionId {
        &self.id
    }

    /// Closes the receiver, then removes the table entry if it is still this
    /// waiter's.
    fn abandon(&mut self) {
        if let State::Waiting(rx) = std::mem::replace(&mut self.state, State::Done) {
            // Once our receiver is gone our sender reports `is_closed`, which
            // tells our entry apart from one registered for the same id after
            // ours was completed.
            drop(rx);
            self.waiters
                .pending
                .remove_if(&self.id, |_, tx| tx.is_closed());
        }
    }
}

impl Future for Waiter {
    type Output = Result<Arc<ObjectEvent>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match &mut this.state {
            State::Waiting(rx) => match ready!(Pin::new(rx).poll(cx)) {
                Ok(event) => Ok(event),
                Err(_) => Err(this.waiters.stopped_error()),
            },
            State::Stopped => Err(this.waiters.stopped_error()),
            State::Done => panic!("Waiter for {} polled after it resolved", this.id),
        };
        // Resolved: the entry is already gone (removed by `complete` or
        // `close`), so the drop guard has nothing left to do.
        this.state = State::Done;
        Poll::Ready(result)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting(_) => "waiting",
            State::Stopped => "stopped",
            State::Done => "done",
        };
        f.debug_struct("Waiter")
            .field("id", &self.id)
            .field("state", &state)
            .finish()
    }
}

/// A bounded memory of delivered `(execution, generation)` keys: a FIFO ring
/// decides what to forget, a set answers lookups. Keys share the id's
/// `Arc<str>`, so remembering one allocates nothing once the ring is full.
struct DeliveredKeys {
    order: VecDeque<(ExecutionId, i64)>,
    members: HashSet<(ExecutionId, i64)>,
    capacity: usize,
}

impl DeliveredKeys {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            members: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    fn insert(&mut self, id: &ExecutionId, generation: i64) {
        let key = (id.clone(), generation);
        if self.members.contains(&key) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.order.push_back(key.clone());
        self.members.insert(key);
    }

    fn contains(&self, id: &ExecutionId, generation: i64) -> bool {
        self.members.contains(&(id.clone(), generation))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    fn id(s: &str) -> ExecutionId {
        ExecutionId::new(s).unwrap()
    }

    fn event(id: &ExecutionId, generation: i64) -> ObjectEvent {
        ObjectEvent {
            bucket: "b".into(),
            name: runbox_core::layout::result(id),
            generation,
            metadata: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn waiter_resolves_on_complete() {
        let waiters = Waiters::new();
        let x = id("inst-1");
        let waiter = waiters.register(x.clone()).unwrap();
        assert_eq!(waiter.id(), &x);
        assert_eq!(waiters.pending(), vec![x.clone()]);

        assert_eq!(waiters.complete(&x, event(&x, 5)), Routed::Delivered);
        let got = timeout(LIMIT, waiter).await.unwrap().unwrap();
        assert_eq!(got.generation, 5);
        assert_eq!(got.name, "results/inst-1.json");
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn duplicate_is_reported_and_resolves_once() {
        let waiters = Waiters::new();
        let x = id("inst-2");
        let waiter = waiters.register(x.clone()).unwrap();
        assert_eq!(waiters.complete(&x, event(&x, 5)), Routed::Delivered);
        let mut second = event(&x, 5);
        second.metadata.insert("copy".into(), "2".into());
        assert_eq!(waiters.complete(&x, second), Routed::Duplicate);

        // The waiter got the first delivery, not the duplicate.
        let got = timeout(LIMIT, waiter).await.unwrap().unwrap();
        assert!(got.metadata.is_empty());
        // Another generation of the same name is not a duplicate.
        assert_eq!(waiters.complete(&x, event(&x, 6)), Routed::Unknown);
    }

    #[tokio::test]
    async fn unknown_id_is_reported() {
        let waiters = Waiters::new();
        let _other = waiters.register(id("inst-3")).unwrap();
        let y = id("elsewhere-1");
        assert_eq!(waiters.complete(&y, event(&y, 1)), Routed::Unknown);
        assert_eq!(waiters.len(), 1);
    }

    #[tokio::test]
    async fn second_registration_of_a_pending_id_is_refused() {
        let waiters = Waiters::new();
        let x = id("inst-4");
        let _first = waiters.register(x.clone()).unwrap();
        assert_eq!(
            waiters.register(x.clone()).unwrap_err(),
            WaitError::AlreadyRegistered(x)
        );
    }

    #[test]
    fn dropped_waiter_removes_its_entry() {
        let waiters = Waiters::new();
        let ws: Vec<_> = (0..10)
            .map(|i| waiters.register(id(&format!("inst-{i}"))).unwrap())
            .collect();
        assert_eq!(waiters.len(), 10);
        drop(ws);
        assert_eq!(waiters.len(), 0);
        // The id is free again, and a late event is nobody's.
        let x = id("inst-0");
        assert_eq!(waiters.complete(&x, event(&x, 1)), Routed::Unknown);
        let _again = waiters.register(x).unwrap();
    }

    #[tokio::test]
    async fn stale_waiter_does_not_remove_a_newer_registration() {
        let waiters = Waiters::new();
        let x = id("inst-5");
        let old = waiters.register(x.clone()).unwrap();
        assert_eq!(waiters.complete(&x, event(&x, 1)), Routed::Delivered);
        // `old` was completed but never polled; the id may be awaited again
        // (re-await after restart), and dropping `old` must not unregister it.
        let new = waiters.register(x.clone()).unwrap();
        drop(old);
        assert_eq!(waiters.len(), 1);
        assert_eq!(waiters.complete(&x, event(&x, 1)), Routed::Delivered);
        assert_eq!(timeout(LIMIT, new).await.unwrap().unwrap().generation, 1);
    }

    #[tokio::test]
    async fn close_fails_pending_and_later_waiters() {
        let waiters = Waiters::new();
        let a = waiters.register(id("inst-6")).unwrap();
        let b = waiters.register(id("inst-7")).unwrap();
        waiters.close("source gone".into());
        waiters.close("second reason is ignored".into());
        let stopped = WaitError::NotifierStopped("source gone".into());
        assert_eq!(timeout(LIMIT, a).await.unwrap().unwrap_err(), stopped);
        assert_eq!(timeout(LIMIT, b).await.unwrap().unwrap_err(), stopped);
        assert!(waiters.is_empty());

        let later = waiters.register(id("inst-8")).unwrap();
        assert_eq!(timeout(LIMIT, later).await.unwrap().unwrap_err(), stopped);
        assert!(waiters.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ten_thousand_concurrent_waiters_all_resolve() {
        const TASKS: usize = 8;
        const PER_TASK: usize = 1250;
        let waiters = Waiters::with_capacity(TASKS * PER_TASK);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<ExecutionId>();

        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let waiters = Arc::clone(&waiters);
            let ready_tx = ready_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::with_capacity(PER_TASK);
                for i in 0..PER_TASK {
                    let x = id(&format!("t{t}-{i}"));
                    mine.push(waiters.register(x.clone()).unwrap());
                    ready_tx.send(x).unwrap();
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                for waiter in mine {
                    let expected = waiter.id().clone();
                    let got = waiter.await.unwrap();
                    assert_eq!(got.name, runbox_core::layout::result(&expected));
                }
            }));
        }
        drop(ready_tx);

        let completer = {
            let waiters = Arc::clone(&waiters);
            tokio::spawn(async move {
                let mut delivered = 0;
                while let Some(x) = ready_rx.recv().await {
                    assert_eq!(waiters.complete(&x, event(&x, 1)), Routed::Delivered);
                    delivered += 1;
                }
                delivered
            })
        };

        for task in tasks {
            timeout(LIMIT, task).await.unwrap().unwrap();
        }
        assert_eq!(
            timeout(LIMIT, completer).await.unwrap().unwrap(),
            TASKS * PER_TASK
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn close_racing_registrations_leaves_no_waiter_hanging() {
        for round in 0..20 {
            let waiters = Waiters::new();
            let registrars: Vec<_> = (0..4)
                .map(|t| {
                    let waiters = Arc::clone(&waiters);
                    std::thread::spawn(move || {
                        (0..500)
                            .map(|i| waiters.register(id(&format!("r{round}-{t}-{i}"))).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            waiters.close("racing close".into());
            for registrar in registrars {
                for waiter in registrar.join().unwrap() {
                    let err = timeout(LIMIT, waiter).await.unwrap().unwrap_err();
                    assert_eq!(err, WaitError::NotifierStopped("racing close".into()));
                }
            }
            assert!(waiters.is_empty());
        }
    }

    #[test]
    fn delivered_keys_forget_the_oldest_beyond_capacity() {
        let mut keys = DeliveredKeys::with_capacity(3);
        let ids: Vec<_> = (0..4).map(|i| id(&format!("k{i}"))).collect();
        for x in &ids {
            keys.insert(x, 1);
        }
        keys.insert(&ids[3], 1);
        assert!(!keys.contains(&ids[0], 1));
        assert!(ids[1..].iter().all(|x| keys.contains(x, 1)));
        assert!(!keys.contains(&ids[1], 2));
        assert_eq!(keys.order.len(), 3);
        assert_eq!(keys.members.len(), 3);
    }
}
