//! The execution engine: every surface (foreground exec, background spawn,
//! and whatever comes next) submits executions here, and only here are they
//! written, launched, awaited and settled.
//!
//! - [`queue`]: one worker per session runs its foreground commands one at
//!   a time, in submission order.
//! - [`submit`]: request object → waiter registered → launch (DESIGN §6:
//!   the waiter exists before anything can complete).
//! - [`wait`]: the one wait over {completion event, the executor ended,
//!   deadline or timeout}, with the completion grace after an end.
//! - [`resolve`]: a completion event → the result, from the event's
//!   metadata when it carries the result, else by reading the object.
//! - [`settle`]: reading a result, and writing the final one (LOST, or
//!   CANCELLED after a kill) for an executor that wrote none.
//! - [`cancel`]: stopping a foreground execution its caller cancelled, and
//!   waiting for it to settle.
//! - [`marker`]: the background marker, which settling consults.
//!
//! The engine knows no launcher or store kind: what differs between them is
//! behind the [`Launcher`] and [`Store`] traits, chosen once at start-up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dashmap::{DashMap, DashSet};
use runbox_core::store::Store;
use runbox_core::{Config, ExecutionId, InstanceId, SessionId};
use runbox_notifier::{EventSource, Notifier, NotifierStats, Waiters};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launcher::Launcher;
use crate::session_lease::SessionLeases;
use crate::session_lock::SessionLocks;

pub(crate) mod cancel;
pub(crate) mod marker;
pub(crate) mod mode;
pub(crate) mod queue;
pub(crate) mod resolve;
pub(crate) mod settle;
pub(crate) mod submit;
pub(crate) mod wait;

pub use cancel::CancelHandle;
pub use resolve::ResultStats;
pub(crate) use submit::Submission;
pub(crate) use wait::{EndWatch, Limit};

/// Where a session's workspace is, as the store backend places it.
#[derive(Clone, Debug)]
pub(crate) enum WorkspacePlacement {
    /// Objects are files under this directory, and commands work in them
    /// directly (the embedded store).
    Host(PathBuf),
    /// Objects are remote; the executor restores them before a command.
    Executor,
}

/// The shared state of one client: backends, waiters, queues and tasks.
pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) instance: InstanceId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) launcher: Arc<dyn Launcher>,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) placement: WorkspacePlacement,
    /// Where commands see every session's workspace (`RUNBOX_WORKSPACE_PATH`).
    pub(crate) workspace_path: String,
    notifier: Mutex<Option<Notifier>>,
    /// How completion events became results.
    results: resolve::ResultCounters,
    queues: DashMap<SessionId, queue::Sender>,
    /// Each session's settings once read (they never change; see [`mode`]).
    session_settings: DashMap<SessionId, runbox_core::warm::SessionSettings>,
    /// One settle at a time per execution (see [`Engine::settle`]).
    settling: DashMap<ExecutionId, Arc<tokio::sync::Mutex<()>>>,
    /// Foreground executions a caller cancelled, until they are settled:
    /// one that ends without a result is then CANCELLED, not LOST.
    cancelled: DashSet<ExecutionId>,
    session_locks: Option<SessionLocks>,
    /// The gcp backend's cross-process session order (where no file lock
    /// can reach the other processes).
    session_leases: Option<SessionLeases>,
    /// Every task the engine starts (queue workers, background watches).
    tasks: TaskTracker,
    /// Cancelled at shutdown: every task's loop watches it.
    stop: CancellationToken,
    /// Mints each execution's store token, when executors get downscoped
    /// credentials.
    credentials: Option<crate::credentials::Credentials>,
    /// The notifier's counters for the metrics collected after shutdown.
    last_stats: Arc<crate::metrics::LastStats>,
}

/// What an engine is assembled from.
pub(crate) struct EngineParts {
    pub(crate) config: Config,
    pub(crate) instance: InstanceId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) events: Box<dyn EventSource>,
    pub(crate) launcher: Arc<dyn Launcher>,
    pub(crate) placement: WorkspacePlacement,
    pub(crate) workspace_path: String,
    pub(crate) session_locks: Option<SessionLocks>,
}

impl Engine {
    /// Assembles an engine and starts its notifier.
    pub(crate) fn start(parts: EngineParts) -> Arc<Self> {
        let waiters = Waiters::new();
        let notifier = Notifier::spawn(parts.events, waiters.clone(), parts.store.clone());
        parts.launcher.attach(parts.store.clone(), waiters.clone());
        // A file lock already orders the session across processes.
        let session_leases = match parts.session_locks {
            Some(_) => None,
            None => crate::backends::session_leases(
                &parts.config,
                &parts.instance,
                &parts.store,
                &waiters,
            ),
        };
        let config_for_credentials = parts.config.clone();
        let last_stats = Arc::new(crate::metrics::LastStats::default());
        let engine = Arc::new(Self {
            last_stats: Arc::clone(&last_stats),
            config: parts.config,
            instance: parts.instance,
            store: parts.store,
            launcher: parts.launcher,
            waiters,
            placement: parts.placement,
            workspace_path: parts.workspace_path,
            notifier: Mutex::new(Some(notifier)),
            results: resolve::ResultCounters::default(),
            queues: DashMap::new(),
            session_settings: DashMap::new(),
            settling: DashMap::new(),
            cancelled: DashSet::new(),
            session_locks: parts.session_locks,
            session_leases,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            credentials: crate::backends::execution_credentials(&config_for_credentials),
        });
        let observed: std::sync::Weak<Self> = Arc::downgrade(&engine);
        crate::metrics::observe(
            observed as std::sync::Weak<dyn crate::metrics::Observed>,
            last_stats,
        );
        engine
    }

    /// What the notifier has routed so far (zeros once it stopped).
    pub(crate) fn notifier_stats(&self) -> NotifierStats {
        self.with_notifier(|n| n.stats()).unwrap_or_default()
    }

    /// How completion events were turned into results so far.
    pub(crate) fn result_stats(&self) -> ResultStats {
        self.results.snapshot()
    }

    /// A receiver told after every item the notifier handles; `None` once
    /// it stopped.
    pub(crate) fn stats_changed(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.with_notifier(Notifier::stats_changed)
    }

    fn with_notifier<T>(&self, f: impl FnOnce(&Notifier) -> T) -> Option<T> {
        // A poisoned lock only means a panic elsewhere held it; the Option
        // inside is still consistent.
        let guard = self.notifier.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(f)
    }

    /// Stops everything the engine started, in the order that leaves no
    /// future hanging: the notifier first (every waiting future fails at
    /// once; its event source cleans up), then the queue workers and background watches, then the
    /// launcher's own tasks. Idempotent.
    pub(crate) async fn shutdown(&self) {
        let notifier = self
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(n) = notifier {
            self.last_stats.record(n.stats());
            n.shutdown().await;
        }
        self.stop.cancel();
        self.queues.clear();
        self.launcher.shutdown().await;
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Whether [`Engine::shutdown`] has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Starts a tracked task; `make` gets the stop token, which the task's
    /// loop must watch so shutdown can drain it.
    pub(crate) fn spawn_task<F, Fut>(&self, make: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(make(self.stop.clone()));
    }
}

/// A counted handle on the engine, held by every `Client` and `Session`
/// clone and by futures in flight. When the last one goes, the engine's
/// tasks stop (nothing is left to receive their results), so a dropped
/// client does not keep a background watch alive for a day.
#[derive(Clone)]
pub(crate) struct Handle(Arc<HandleInner>);

struct HandleInner(Arc<Engine>);

impl Handle {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self(Arc::new(HandleInner(engine)))
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.0.0
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

impl crate::metrics::Observed for Engine {
    fn pending(&self) -> Option<usize> {
        (!self.is_stopping()).then(|| self.waiters.len())
    }

    fn observed_stats(&self) -> Option<runbox_notifier::NotifierStats> {
        (!self.is_stopping()).then(|| self.notifier_stats())
    }
}
