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
//!
//! [`Client`] and [`Session`] are thin: the work is done by the execution
//! engine (`crate::engine`), the session lifecycle ([`crate::session`]),
//! background processes ([`crate::background`]) and the file API
//! ([`crate::files`]). Other surfaces (a server, a topic consumer) build on
//! `Client` the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runbox_core::store::{ByteStream, Store};
use runbox_core::warm::SessionSettings;
use runbox_core::{Config, InstanceId, SessionId};
use runbox_notifier::NotifierStats;
use runbox_proto::ExecResult;

pub use crate::backends::Parts;
use crate::background::{self, BackgroundEntry, BackgroundHandle, LogRead, Stream};
pub use crate::engine::ResultStats;
use crate::engine::{Engine, EngineParts, Handle, WorkspacePlacement};
use crate::error::{Error, Result};
use crate::retention::{self, GcPlan, GcReport};
use crate::session::{self, Session, SessionInfo};

/// A handle to runbox: cheap to clone, shared by all sessions.
#[derive(Clone)]
pub struct Client {
    handle: Handle,
}

impl Client {
    /// A client configured from the process environment (see [`Config`]).
    pub async fn from_env() -> Result<Self> {
        let config = Config::from_env().map_err(Error::Config)?;
        Self::from_config(config).await
    }

    /// The embedded backend rooted at `home` (objects, events and executors
    /// all local), with default limits.
    pub async fn embedded(home: impl Into<PathBuf>) -> Result<Self> {
        Self::from_config(Config::embedded(home)).await
    }

    /// A client for the backends the configuration names.
    pub async fn from_config(config: Config) -> Result<Self> {
        Ok(Self::from_parts(crate::backends::assemble(config).await?))
    }

    /// Assembles a client from explicit parts and starts its notifier.
    pub fn from_parts(parts: Parts) -> Self {
        let placement = match parts.host_workspace {
            Some(dir) => WorkspacePlacement::Host(dir),
            None => WorkspacePlacement::Executor,
        };
        // `assemble` refused a bad value; parts assembled by hand get the
        // default rather than a panic.
        let workspace_path = runbox_core::session_cwd::workspace_path(
            std::env::var(runbox_core::session_cwd::WORKSPACE_PATH_ENV)
                .ok()
                .as_deref(),
        )
        .unwrap_or_else(|_| runbox_core::session_cwd::DEFAULT_WORKSPACE_PATH.into());
        let engine = Engine::start(EngineParts {
            workspace_path: workspace_path.to_string_lossy().into_owned(),
            config: parts.config,
            instance: parts.instance,
            store: parts.store,
            events: parts.events,
            launcher: parts.launcher,
            placement,
            session_locks: parts.session_locks,
        });
        Self {
            handle: Handle::new(engine),
        }
    }

    fn engine(&self) -> &Engine {
        self.handle.engine()
    }

    fn session_id(id: &str) -> Result<SessionId> {
        SessionId::new(id).map_err(Error::InvalidSession)
    }

    /// A session by id; fails on ids outside `[A-Za-z0-9_-]{1,64}`. Sessions
    /// need no creation: the first command creates its state.
    pub fn session(&self, id: &str) -> Result<Session> {
        Ok(Session::new(self.handle.clone(), Self::session_id(id)?))
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.engine().config
    }

    /// The object store in use.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.engine().store
    }

    /// This dispatcher instance's id.
    pub fn instance(&self) -> &InstanceId {
        &self.engine().instance
    }

    /// What the notifier has routed so far. How the delivered events then
    /// became results is counted by [`Client::result_stats`].
    pub fn notifier_stats(&self) -> NotifierStats {
        self.engine().notifier_stats()
    }

    /// How completion events have been turned into results so far: decoded
    /// from the result the executor put in the result object's metadata
    /// (no read of the object), or read from the object. Counted once per
    /// event that resolved a wait; reads that follow no event (settling
    /// after an executor ended without one, reconciling after a deadline)
    /// are not counted.
    pub fn result_stats(&self) -> ResultStats {
        self.engine().result_stats()
    }

    /// Waits until the notifier's counters satisfy `done` (checked after
    /// every item it handles); fails with [`Error::Closed`] if it stops first.
    pub async fn wait_for_stats(
        &self,
        done: impl Fn(&NotifierStats) -> bool,
    ) -> Result<NotifierStats> {
        let mut changed = self.engine().stats_changed().ok_or(Error::Closed)?;
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
        session::list(self.engine()).await
    }

    /// One session's state. A corrupt state object is an error naming the session.
    pub async fn session_info(&self, id: &str) -> Result<SessionInfo> {
        session::info(self.engine(), &Self::session_id(id)?).await
    }

    /// Creates a session: writes its initial state (cwd = its workspace).
    /// Fails with [`Error::SessionExists`] when it already has a state.
    pub async fn create_session(&self, id: &str) -> Result<SessionInfo> {
        let id = Self::session_id(id)?;
        match session::create(self.engine(), &id, None).await? {
            Some(info) => Ok(info),
            None => Err(Error::SessionExists(id.to_string())),
        }
    }

    /// Creates a session with these settings (mode, idle timeout) instead
    /// of the configured default (`RUNBOX_SESSION_MODE`); see
    /// [`Client::create_session`]. The settings are stored with the
    /// session, so every process runs its commands the same way.
    pub async fn create_session_with(
        &self,
        id: &str,
        settings: SessionSettings,
    ) -> Result<SessionInfo> {
        let id = Self::session_id(id)?;
        settings.validate().map_err(Error::InvalidSessionSettings)?;
        match session::create(self.engine(), &id, Some(settings)).await? {
            Some(info) => Ok(info),
            None => Err(Error::SessionExists(id.to_string())),
        }
    }

    /// Creates the session if it does not exist yet; returns its info either
    /// way (idempotent, safe to call before every use).
    pub async fn ensure_session(&self, id: &str) -> Result<SessionInfo> {
        session::ensure(self.engine(), &Self::session_id(id)?).await
    }

    /// Closes a session: ends its warm execution, if one runs, and kills
    /// its running background processes (each ends CANCELLED) and returns
    /// their results. Its state and files stay.
    pub async fn close_session(&self, id: &str) -> Result<Vec<ExecResult>> {
        let session = self.session(id)?;
        // A warm execution ends at once; a command it runs ends CANCELLED.
        self.engine().launcher.close_warm(session.id()).await;
        session.kill_all_background().await
    }

    /// Destroys a session: kills its background processes, then deletes
    /// every object under `sessions/{id}/` and the request, result and log
    /// objects of its background executions; returns how many objects were
    /// deleted. Foreground executions' objects are keyed by execution, not
    /// session, and are left to [`Client::gc`] or the bucket's lifecycle
    /// rules. Fails with
    /// [`Error::NoSuchSession`] when the session had nothing.
    pub async fn delete_session(&self, id: &str) -> Result<usize> {
        session::delete(self.engine(), &Self::session_id(id)?).await
    }

    /// Deletes the request, result and log objects of every execution whose
    /// result was written more than `older_than` ago; executions without a
    /// result and background executions (marker present) are kept, and
    /// nothing under `sessions/` is touched. See [`crate::retention`].
    /// With a small `older_than`, a command finishing right now may lose its
    /// result before its caller reads it: keep it well above the longest wait.
    pub async fn gc(&self, older_than: Duration) -> Result<GcReport> {
        retention::collect(&*self.engine().store, older_than).await
    }

    /// What [`Client::gc`] would delete now, deleting nothing.
    pub async fn gc_plan(&self, older_than: Duration) -> Result<GcPlan> {
        retention::plan(&*self.engine().store, older_than).await
    }

    /// The bytes of a log object named in a result (`stdout_log`,
    /// `stderr_log`), held in memory; [`Client::open_log`] streams it.
    pub async fn read_log(&self, name: &str) -> Result<Bytes> {
        self.engine()
            .store
            .get(name)
            .await
            .map(|o| o.data)
            .map_err(|e| Error::store(format!("read log {name}"), e))
    }

    /// A log object named in a result (`stdout_log`, `stderr_log`) as a
    /// byte stream, with its size: a log can be far larger than memory
    /// (its total is `stdout_bytes` / `stderr_bytes`).
    pub async fn open_log(&self, name: &str) -> Result<(u64, ByteStream)> {
        self.engine()
            .store
            .get_stream(name)
            .await
            .map(|(meta, stream)| (meta.size, stream))
            .map_err(|e| Error::store(format!("read log {name}"), e))
    }

    /// The background processes of a session; see [`Session::list_background`].
    pub async fn list_background(&self, session: &str) -> Result<Vec<BackgroundEntry>> {
        self.session(session)?.list_background().await
    }

    /// Reads a stream's chunks from chunk `offset` on (0 at first, then the
    /// returned [`LogRead::next_offset`]), without waiting. Reads at most
    /// [`background::MAX_LOG_READ_BYTES`] (whole chunks; at least one) per call.
    pub async fn background_logs(
        &self,
        handle: &BackgroundHandle,
        stream: Stream,
        offset: u64,
    ) -> Result<LogRead> {
        background::logs::read(self.engine(), handle, stream, offset).await
    }

    /// Like [`Client::background_logs`], but when nothing new is there yet,
    /// waits until something is or the process ends (reading again every
    /// [`background::FOLLOW_INTERVAL`], and at once when it ends). Returns
    /// empty data only with `ended: true`. Put a timeout around it: a quiet
    /// process may print nothing for a long time.
    pub async fn follow_background_logs(
        &self,
        handle: &BackgroundHandle,
        stream: Stream,
        offset: u64,
    ) -> Result<LogRead> {
        let [read] = background::logs::follow(self.engine(), handle, [(stream, offset)]).await?;
        Ok(read)
    }

    /// [`Client::follow_background_logs`] for both streams at once: returns
    /// as soon as either has something new (stdout first, stderr second), or
    /// both have ended. For printing a process's output as it comes.
    pub async fn follow_background_output(
        &self,
        handle: &BackgroundHandle,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<[LogRead; 2]> {
        background::logs::follow(
            self.engine(),
            handle,
            [
                (Stream::Stdout, stdout_offset),
                (Stream::Stderr, stderr_offset),
            ],
        )
        .await
    }

    /// Waits until the background process ends and returns its result, or
    /// fails with [`crate::BackgroundError::WaitTimedOut`] after `timeout`
    /// (the process keeps running). Event-driven: the completion waiter is
    /// registered first, then the result is read once; when the executor
    /// exits without a result, the result is LOST.
    pub async fn wait_background(
        &self,
        handle: &BackgroundHandle,
        timeout: Duration,
    ) -> Result<ExecResult> {
        background::control::wait(self.engine(), handle, timeout).await
    }

    /// Stops a background process: the executor gets SIGTERM, kills the
    /// process group (SIGKILL after `RUNBOX_KILL_GRACE_MS`) and writes a
    /// CANCELLED result, which is returned. A process that had already ended
    /// is left alone and its result returned. Waits at most the kill grace
    /// plus [`background::KILL_SLACK`], then fails with
    /// [`crate::BackgroundError::KillTimedOut`].
    pub async fn kill_background(&self, handle: &BackgroundHandle) -> Result<ExecResult> {
        background::control::kill(self.engine(), handle).await
    }

    /// Stops everything this client started: the notifier first (every
    /// future still waiting resolves with an error at once), then the
    /// session queues and background watches (tracked tasks, drained here),
    /// and the launcher's own tasks; the event source cleans up after itself
    /// (the Pub/Sub source deletes this instance's subscription).
    /// Executions already launched keep running and write their results.
    pub async fn shutdown(&self) {
        self.engine().shutdown().await;
    }
}
