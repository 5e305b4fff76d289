//! The public library API: [`Client`] → [`Session`] → `exec(..).await`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runbox_dispatcher::Error> {
//! use std::time::Duration;
//! let client = runbox_dispatcher::Client::from_env().await?;
//! let session = client.session("demo")?;
//! session.exec("cd /tmp && export GREETING=hi").await?;
//! let result = session
//!     .exec("echo $GREETING from $(pwd)")
//!     .timeout(Duration::from_secs(10))
//!     .await?;
//! assert_eq!(result.stdout, "hi from /tmp\n");
//! # Ok(()) }
//! ```
//!
//! Each `exec` follows DESIGN §2: the request object is written first, the
//! waiter registered before the launch, and the future resolves from the
//! result object's finalize event. When the platform reports that the
//! executor ended, or the deadline (timeout + grace) passes, the dispatcher
//! reads the result object once; if there is none it writes a LOST result,
//! so no future waits forever.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dashmap::DashMap;
use futures::future::BoxFuture;
use runbox_core::config::{Backend, MAX_COMMAND_BYTES};
use runbox_core::layout;
use runbox_core::store::{self, JsonObjectError, ListOptions, PutOptions, Store};
use runbox_core::{Config, ExecutionId, InstanceId, SessionId};
use runbox_notifier::{
    EventSource, FsEventSource, Notifier, NotifierStats, PubSubConfig, PubSubEventSource, Waiters,
};
use runbox_proto::{ExecRequest, ExecResult, ExecStatus, SessionState};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::launcher::{ExecutionState, LaunchSpec, Launcher};
use crate::local_launcher::LocalLauncher;
use crate::session_lock::SessionLocks;

/// Most executors the embedded launcher runs at once; more wait for a slot.
const LOCAL_MAX_RUNNING: usize = 64;

/// A handle to runbox: cheap to clone, shared by all sessions.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) instance: InstanceId,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) launcher: Arc<dyn Launcher>,
    pub(crate) waiters: Arc<Waiters>,
    notifier: std::sync::Mutex<Option<Notifier>>,
    sessions: DashMap<SessionId, mpsc::UnboundedSender<Job>>,
    session_locks: Option<SessionLocks>,
    shutdown_hook: std::sync::Mutex<Option<ShutdownHook>>,
}

/// The parts a client is assembled from; [`Client::from_config`] picks them
/// from configuration, tests and other backends pass their own.
pub struct Parts {
    /// Configuration (limits, grace periods).
    pub config: Config,
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// Where completion events come from.
    pub events: Box<dyn EventSource>,
    /// How executions start.
    pub launcher: Arc<dyn Launcher>,
    /// This dispatcher instance's id (the execution-id prefix).
    pub instance: InstanceId,
    /// Per-session file locks that order commands across processes sharing
    /// one machine (embedded backend); `None` elsewhere.
    pub session_locks: Option<SessionLocks>,
    /// Run once by [`Client::shutdown`] after the notifier stopped (for
    /// example: delete this instance's subscription).
    pub shutdown_hook: Option<ShutdownHook>,
}

/// Cleanup run at graceful shutdown.
pub type ShutdownHook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

impl Client {
    /// A client configured from the process environment (see [`Config`]).
    pub async fn from_env() -> Result<Self> {
        let config = Config::from_env().map_err(Error::Config)?;
        Self::from_config(config).await
    }

    /// The embedded backend rooted at `home` (objects, events and executors
    /// all local), with default limits.
    pub async fn embedded(home: impl Into<PathBuf>) -> Result<Self> {
        let config = Config {
            home: home.into(),
            ..Config::default()
        };
        Self::from_config(config).await
    }

    /// A client for the backends the configuration names.
    pub async fn from_config(config: Config) -> Result<Self> {
        let instance = InstanceId::random();
        let mut shutdown_hook: Option<ShutdownHook> = None;
        let store = runbox_core::backend::open_store(&config)
            .await
            .map_err(|e| Error::store("open store", e))?;
        let events: Box<dyn EventSource> = match config.backend {
            Backend::Local => {
                Box::new(FsEventSource::new(&config.home, store.clone()).map_err(Error::Events)?)
            }
            Backend::Gcp => {
                // Config::validate guarantees a project for the gcp backend.
                let mut settings = PubSubConfig::new(
                    config.project.clone().unwrap_or_default(),
                    config.notifications_topic.clone(),
                    instance.as_str(),
                );
                settings.emulator_host = config.pubsub_emulator_host.clone();
                let source = PubSubEventSource::connect(settings)
                    .await
                    .map_err(Error::Events)?;
                let subscription = source.subscription();
                // The subscription is this instance's alone: delete it at a
                // graceful shutdown (its expiration policy covers crashes).
                shutdown_hook = Some(Box::new(move || {
                    Box::pin(async move {
                        if let Err(e) = subscription.delete().await {
                            tracing::warn!(error = %e, "could not delete the notifications subscription");
                        }
                    })
                }));
                Box::new(source)
            }
        };
        let launcher: Arc<dyn Launcher> = match config.launcher {
            runbox_core::config::LauncherKind::Local => {
                Arc::new(LocalLauncher::new(&config, LOCAL_MAX_RUNNING)?)
            }
            runbox_core::config::LauncherKind::CloudRun => Arc::new(
                crate::cloud_run::CloudRunLauncher::connect(
                    crate::cloud_run::CloudRunSettings::from_config(&config)
                        .map_err(Error::Config)?,
                )
                .await?,
            ),
        };
        let session_locks = match config.backend {
            Backend::Local => Some(SessionLocks::new(config.home.join(".runbox/session-locks"))),
            Backend::Gcp => None,
        };
        Ok(Self::from_parts(Parts {
            session_locks,
            config,
            store,
            events,
            launcher,
            instance,
            shutdown_hook,
        }))
    }

    /// Assembles a client from explicit parts and starts its notifier.
    pub fn from_parts(parts: Parts) -> Self {
        let waiters = Waiters::new();
        let notifier = Notifier::spawn(parts.events, waiters.clone(), parts.store.clone());
        Self {
            inner: Arc::new(Inner {
                config: parts.config,
                instance: parts.instance,
                store: parts.store,
                launcher: parts.launcher,
                waiters,
                notifier: std::sync::Mutex::new(Some(notifier)),
                sessions: DashMap::new(),
                session_locks: parts.session_locks,
                shutdown_hook: std::sync::Mutex::new(parts.shutdown_hook),
            }),
        }
    }

    /// A session by id; fails on ids outside `[A-Za-z0-9_-]{1,64}`. Sessions
    /// need no creation: the first command creates its state.
    pub fn session(&self, id: &str) -> Result<Session> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        Ok(Session {
            client: self.clone(),
            id,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The object store in use.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// This dispatcher instance's id.
    pub fn instance(&self) -> &InstanceId {
        &self.inner.instance
    }

    /// What the notifier has routed so far.
    pub fn notifier_stats(&self) -> NotifierStats {
        self.inner
            .notifier
            .lock()
            .expect("notifier lock")
            .as_ref()
            .map(Notifier::stats)
            .unwrap_or_default()
    }

    /// Waits until the notifier's counters satisfy `done` (checked after
    /// every item it handles); fails with [`Error::Closed`] if it stops first.
    pub async fn wait_for_stats(
        &self,
        done: impl Fn(&NotifierStats) -> bool,
    ) -> Result<NotifierStats> {
        let mut changed = self
            .inner
            .notifier
            .lock()
            .expect("notifier lock")
            .as_ref()
            .map(Notifier::stats_changed)
            .ok_or(Error::Closed)?;
        loop {
            let stats = self.notifier_stats();
            if done(&stats) {
                return Ok(stats);
            }
            changed.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Every session that has objects, with its state where it has one.
    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>> {
        let store = &*self.inner.store;
        let mut opts = ListOptions {
            prefix: layout::SESSIONS_PREFIX.to_owned(),
            delimiter: Some('/'),
            ..ListOptions::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = store
                .list(&opts)
                .await
                .map_err(|e| Error::store("list sessions", e))?;
            ids.extend(page.prefixes.iter().filter_map(|p| {
                let id = p.strip_prefix(layout::SESSIONS_PREFIX)?.strip_suffix('/')?;
                SessionId::new(id).ok()
            }));
            match page.next_page_token {
                Some(t) => opts.page_token = Some(t),
                None => break,
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.session_info_of(&id).await?);
        }
        Ok(out)
    }

    /// One session's state. A corrupt state object is an error naming the session.
    pub async fn session_info(&self, id: &str) -> Result<SessionInfo> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        let info = self.session_info_of(&id).await?;
        if info.state.is_none() {
            let any = store::list_all(&*self.inner.store, &layout::session_prefix(&id))
                .await
                .map_err(|e| Error::store(format!("list session {id}"), e))?;
            if any.is_empty() {
                return Err(Error::NoSuchSession(id.to_string()));
            }
        }
        Ok(info)
    }

    async fn session_info_of(&self, id: &SessionId) -> Result<SessionInfo> {
        let state = match store::get_json::<SessionState>(
            &*self.inner.store,
            &layout::session_state(id),
            "SessionState",
        )
        .await
        {
            Ok(v) => Some(v.value),
            Err(JsonObjectError::Store(e)) if e.is_not_found() => None,
            Err(JsonObjectError::Store(e)) => {
                return Err(Error::store(format!("read session {id} state"), e));
            }
            Err(e @ JsonObjectError::Invalid { .. }) => {
                return Err(Error::store(
                    format!("read session {id} state"),
                    runbox_core::StoreError::Corrupt {
                        name: layout::session_state(id),
                        detail: crate::error_chain(&e),
                    },
                ));
            }
        };
        let background_running = self
            .list_background(id.as_str())
            .await?
            .iter()
            .filter(|e| e.state == crate::background::BackgroundState::Running)
            .count();
        Ok(SessionInfo {
            id: id.clone(),
            state,
            background_running,
        })
    }

    /// Creates a session: writes its initial state (cwd = its workspace).
    /// Fails with [`Error::SessionExists`] when it already has a state.
    pub async fn create_session(&self, id: &str) -> Result<SessionInfo> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        match self.write_initial_state(&id).await? {
            Some(info) => Ok(info),
            None => Err(Error::SessionExists(id.to_string())),
        }
    }

    /// Creates the session if it does not exist yet; returns its info either
    /// way (idempotent, safe to call before every use).
    pub async fn ensure_session(&self, id: &str) -> Result<SessionInfo> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        match self.write_initial_state(&id).await? {
            Some(info) => Ok(info),
            None => self.session_info_of(&id).await,
        }
    }

    /// Writes a fresh state unless one exists (`None` then). The cwd is left
    /// empty: the executor starts an empty cwd in the session's workspace,
    /// wherever the backend puts it.
    async fn write_initial_state(&self, id: &SessionId) -> Result<Option<SessionInfo>> {
        let now = Some(runbox_proto::now());
        let state = SessionState {
            session_id: id.to_string(),
            created_at: now,
            updated_at: now,
            ..Default::default()
        };
        match store::put_json(
            &*self.inner.store,
            &layout::session_state(id),
            &state,
            PutOptions::create(),
        )
        .await
        {
            Ok(_) => Ok(Some(SessionInfo {
                id: id.clone(),
                state: Some(state),
                background_running: 0,
            })),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(Error::store(format!("create session {id}"), e)),
        }
    }

    /// Closes a session: kills its running background processes (each ends
    /// CANCELLED) and returns their results. Its state and files stay.
    pub async fn close_session(&self, id: &str) -> Result<Vec<ExecResult>> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        Session {
            client: self.clone(),
            id,
        }
        .kill_all_background()
        .await
    }

    /// Destroys a session: kills its background processes, then deletes
    /// every object under `sessions/{id}/` and the request, result and log
    /// objects of its background executions; returns how many objects were
    /// deleted. Foreground executions' objects are keyed by execution, not
    /// session, and are left to the bucket's lifecycle rules. Fails with
    /// [`Error::NoSuchSession`] when the session had nothing.
    pub async fn delete_session(&self, id: &str) -> Result<usize> {
        let id = SessionId::new(id).map_err(Error::InvalidSession)?;
        // Destroy means nothing of the session keeps running or stays
        // behind: its background processes are killed first, and their
        // execution objects (request, result, logs) go with the session.
        let session = Session {
            client: self.clone(),
            id: id.clone(),
        };
        session.kill_all_background().await?;
        let mut n = 0;
        for entry in session.list_background().await? {
            let exec = &entry.handle.execution_id;
            for prefix in [
                layout::request(exec),
                layout::result(exec),
                layout::logs_prefix(exec),
            ] {
                n += store::delete_prefix(&*self.inner.store, &prefix)
                    .await
                    .map_err(|e| Error::store(format!("delete session {id}"), e))?;
            }
        }
        let n = n + store::delete_prefix(&*self.inner.store, &layout::session_prefix(&id))
            .await
            .map_err(|e| Error::store(format!("delete session {id}"), e))?;
        if self.inner.config.backend == Backend::Local {
            // Empty directories (a fresh workspace, `mkdir` in a command) are
            // not objects, so deleting the objects leaves them behind.
            let dir = self.inner.config.home.join(layout::session_prefix(&id));
            let existed = dir.exists();
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::store(
                    format!("delete session {id}"),
                    runbox_core::StoreError::Io {
                        op: "remove directory",
                        name: layout::session_prefix(&id),
                        source: e,
                    },
                ));
            }
            if n == 0 && existed {
                return Ok(0);
            }
        }
        if n == 0 {
            return Err(Error::NoSuchSession(id.to_string()));
        }
        Ok(n)
    }

    /// The bytes of a log object named in a result (`stdout_log`, `stderr_log`).
    pub async fn read_log(&self, name: &str) -> Result<Bytes> {
        self.inner
            .store
            .get(name)
            .await
            .map(|o| o.data)
            .map_err(|e| Error::store(format!("read log {name}"), e))
    }

    /// Stops the notifier: every future still waiting resolves with an error.
    pub async fn shutdown(&self) {
        let notifier = self.inner.notifier.lock().expect("notifier lock").take();
        if let Some(n) = notifier {
            n.shutdown().await;
        }
        let hook = self.inner.shutdown_hook.lock().expect("hook lock").take();
        if let Some(hook) = hook {
            hook().await;
        }
    }
}

/// A session and its state, as listed.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The session.
    pub id: SessionId,
    /// Its state; `None` when no command has completed in it yet.
    pub state: Option<SessionState>,
    /// Background processes still running.
    pub background_running: usize,
}

/// A stateful shell session. Commands on one session run one at a time, in
/// the order their futures were created; sessions run in parallel.
#[derive(Clone)]
pub struct Session {
    pub(crate) client: Client,
    pub(crate) id: SessionId,
}

impl Session {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Prepares a command; `.await` it (optionally after setting options) to
    /// run it. Its place in the session's queue is taken when it is awaited.
    pub fn exec(&self, command: impl Into<String>) -> Exec {
        Exec {
            session: self.clone(),
            command: command.into(),
            timeout: None,
            env: BTreeMap::new(),
            output_cap: None,
            request_id: String::new(),
        }
    }
}

/// A command about to run: set options, then `.await`.
#[must_use = "an Exec does nothing until awaited"]
pub struct Exec {
    session: Session,
    command: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
    output_cap: Option<u64>,
    request_id: String,
}

impl Exec {
    /// The command's wall-clock limit (default `RUNBOX_DEFAULT_TIMEOUT_SECS`);
    /// more than zero and at most `RUNBOX_MAX_TIMEOUT_SECS`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An extra environment variable for this command only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Inline output kept per stream, in bytes (default `RUNBOX_OUTPUT_CAP_BYTES`).
    pub fn output_cap(mut self, bytes: u64) -> Self {
        self.output_cap = Some(bytes);
        self
    }

    /// A correlation id stored in the request.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub(crate) fn validate(&self) -> Result<Duration> {
        let config = &self.session.client.inner.config;
        if self.command.len() > MAX_COMMAND_BYTES {
            return Err(Error::CommandTooLarge {
                bytes: self.command.len(),
                max: MAX_COMMAND_BYTES,
            });
        }
        if self.command.contains('\0') {
            return Err(Error::CommandHasNul);
        }
        let timeout = self.timeout.unwrap_or(config.default_timeout);
        if timeout.is_zero() || timeout > config.max_timeout {
            return Err(Error::InvalidTimeout {
                requested: timeout,
                max: config.max_timeout,
            });
        }
        for (name, value) in &self.env {
            validate_env(name, value)?;
        }
        Ok(timeout)
    }
}

fn validate_env(name: &str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidEnv {
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("empty name"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return bad("a name starts with a letter or '_'");
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return bad("a name holds only letters, digits and '_'");
    }
    if value.contains('\0') {
        return bad("the value contains a NUL byte");
    }
    Ok(())
}

impl IntoFuture for Exec {
    type Output = Result<ExecResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<ExecResult>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // Validation and queueing happen here, synchronously, so bad input
        // fails before any side effect and the queue order is the order in
        // which the futures were created.
        let timeout = match self.validate() {
            Ok(t) => t,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            command: self.command,
            timeout,
            env: self.env,
            output_cap: self.output_cap.unwrap_or(0),
            request_id: self.request_id,
            reply,
        };
        let queued = self.session.client.inner.enqueue(&self.session.id, job);
        Box::pin(async move {
            queued?;
            rx.await.unwrap_or(Err(Error::Closed))
        })
    }
}

struct Job {
    command: String,
    timeout: Duration,
    env: BTreeMap<String, String>,
    output_cap: u64,
    request_id: String,
    reply: oneshot::Sender<Result<ExecResult>>,
}

impl Inner {
    fn enqueue(self: &Arc<Self>, session: &SessionId, job: Job) -> Result<()> {
        let tx = self
            .sessions
            .entry(session.clone())
            .or_insert_with(|| spawn_worker(Arc::downgrade(self), session.clone()))
            .clone();
        tx.send(job).map_err(|_| Error::Closed)
    }

    async fn run(&self, session: &SessionId, job: &Job) -> Result<ExecResult> {
        let t0 = std::time::Instant::now();
        let _guard = match &self.session_locks {
            Some(locks) => Some(locks.lock(session).await.map_err(|source| {
                Error::store(
                    format!("lock session {session}"),
                    runbox_core::StoreError::Io {
                        op: "lock",
                        name: layout::session_prefix(session),
                        source,
                    },
                )
            })?),
            None => None,
        };
        let id = self.instance.next_execution_id();
        let request = ExecRequest {
            execution_id: id.to_string(),
            session_id: session.to_string(),
            command: job.command.clone(),
            env: job.env.clone(),
            timeout_ms: u64::try_from(job.timeout.as_millis()).unwrap_or(u64::MAX),
            output_cap_bytes: job.output_cap,
            created_at: Some(runbox_proto::now()),
            traceparent: String::new(),
            request_id: job.request_id.clone(),
            background: false,
        };
        store::put_json(
            &*self.store,
            &layout::request(&id),
            &request,
            PutOptions::create(),
        )
        .await
        .map_err(|e| Error::store(format!("write request of execution {id}"), e))?;

        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "request written");
        // Registered before the launch: the completion cannot come earlier.
        let waiter = self
            .waiters
            .register(id.clone())
            .map_err(|source| Error::Wait {
                id: id.clone(),
                source,
            })?;
        self.launcher
            .launch(LaunchSpec {
                execution_id: id.clone(),
                timeout: job.timeout,
                traceparent: None,
            })
            .await?;
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "launched");
        let deadline = job.timeout + self.config.deadline_grace;
        tokio::pin!(waiter);
        let outcome = tokio::select! {
            completion = &mut waiter => match completion {
                Ok(_event) => {
                    tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "completion event");
                    self.read_result(&id).await
                }
                Err(source) => Err(Error::Wait { id: id.clone(), source }),
            },
            ended = self.launcher.ended(&id) => {
                // The executor has exited, so its result write, if it made
                // one, is complete. Its event normally follows within
                // milliseconds; if none comes within the grace, read the
                // result object once and write LOST if there is none.
                match tokio::time::timeout(self.config.completion_grace, &mut waiter).await {
                    Ok(Ok(_event)) => self.read_result(&id).await,
                    Ok(Err(source)) => Err(Error::Wait { id: id.clone(), source }),
                    Err(_) => {
                        let mut message =
                            format!("execution ended without a result: {}", ended.message);
                        // An executor that died did not kill its command; on
                        // this machine, do it (a Cloud Run container ends
                        // with its executor).
                        if self.config.launcher == runbox_core::config::LauncherKind::Local {
                            let target = id.clone();
                            let swept = tokio::task::spawn_blocking(move || {
                                crate::local_executor::kill_leftovers(&target)
                            })
                            .await
                            .unwrap_or(0);
                            if swept > 0 {
                                message.push_str(&format!(
                                    "; {swept} process(es) it left running were killed"
                                ));
                            }
                        }
                        self.result_or_lost(&id, session, message).await
                    }
                }
            }
            () = tokio::time::sleep(deadline) => self.reconcile(&id, session, deadline).await,
        };
        self.launcher.release(&id);
        tracing::debug!(execution = %id, us = t0.elapsed().as_micros() as u64, "settled");
        let result = outcome?;
        if result.state_conflict {
            return Err(Error::StateConflict {
                session: session.to_string(),
                result: Box::new(result),
            });
        }
        Ok(result)
    }

    pub(crate) async fn read_result(&self, id: &ExecutionId) -> Result<ExecResult> {
        match store::get_json::<ExecResult>(&*self.store, &layout::result(id), "ExecResult").await {
            Ok(v) => Ok(v.value),
            Err(JsonObjectError::Store(e)) => {
                Err(Error::store(format!("read result of execution {id}"), e))
            }
            Err(e) => Err(Error::InvalidResult {
                id: id.clone(),
                detail: crate::error_chain(&e),
            }),
        }
    }

    /// The deadline passed with no completion: ask the platform, stop the
    /// execution if it still runs, then settle the result.
    pub(crate) async fn reconcile(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        deadline: Duration,
    ) -> Result<ExecResult> {
        let state = self.launcher.state(id).await;
        let message = match state {
            Ok(ExecutionState::Running) => {
                if let Err(e) = self.launcher.cancel(id).await {
                    tracing::warn!(execution = %id, error = %e, "cancel after deadline failed");
                }
                format!("no result {deadline:?} after launch; the execution was stopped")
            }
            Ok(ExecutionState::Ended(e)) => {
                format!("execution ended without a result: {}", e.message)
            }
            Ok(ExecutionState::Unknown) => {
                format!(
                    "no result {deadline:?} after launch and the platform does not know the execution"
                )
            }
            Err(e) => format!(
                "no result {deadline:?} after launch; status lookup failed: {}",
                crate::error_chain(&e)
            ),
        };
        self.result_or_lost(id, session, message).await
    }

    /// Reads the result once; if there is none, writes a LOST result with
    /// if-generation-match=0 (so a late executor's result and ours cannot
    /// both land) and returns whichever won.
    pub(crate) async fn result_or_lost(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        message: String,
    ) -> Result<ExecResult> {
        match self.read_result(id).await {
            Err(Error::Store { source, .. }) if source.is_not_found() => {}
            other => return other,
        }
        self.write_final_result(id, session, ExecStatus::Lost, -1, message)
            .await
    }

    /// Writes a result on behalf of an executor that wrote none (LOST, or
    /// CANCELLED for a kill it could not handle), with if-generation-match=0
    /// so it can never replace one the executor did write; returns
    /// whichever result stands.
    pub(crate) async fn write_final_result(
        &self,
        id: &ExecutionId,
        session: &SessionId,
        status: ExecStatus,
        exit_code: i32,
        message: String,
    ) -> Result<ExecResult> {
        let mut result = ExecResult {
            execution_id: id.to_string(),
            session_id: session.to_string(),
            exit_code,
            message,
            completed_at: Some(runbox_proto::timestamp(SystemTime::now())),
            ..Default::default()
        };
        result.set_exec_status(status);
        match store::put_json(
            &*self.store,
            &layout::result(id),
            &result,
            PutOptions::create(),
        )
        .await
        {
            Ok(_) => Ok(result),
            Err(e) if e.is_conflict() => self.read_result(id).await,
            Err(e) => Err(Error::store(
                format!("write {status} result of execution {id}"),
                e,
            )),
        }
    }
}

fn spawn_worker(inner: Weak<Inner>, session: SessionId) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            if job.reply.is_closed() {
                // The caller dropped its future before its turn: skip it.
                continue;
            }
            // Upgraded per job so an idle worker does not keep the client alive.
            let Some(inner) = inner.upgrade() else {
                let _ = job.reply.send(Err(Error::Closed));
                continue;
            };
            let result = inner.run(&session, &job).await;
            let _ = job.reply.send(result);
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(validate_env("FOO_1", "x").is_ok());
        assert!(validate_env("_x", "").is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(validate_env(bad, "v").is_err(), "{bad:?} accepted");
        }
        assert!(validate_env("A", "a\0b").is_err());
    }
}
