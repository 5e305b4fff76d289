//! Starting executions: the [`Launcher`] trait and its launchers, each in
//! its own folder: [`local`] (a child process of `runbox-executor`, with
//! the procfs helpers that find and sweep executors of other processes) and
//! [`cloud_run`] (Cloud Run Jobs over gRPC: settings, transport, status,
//! admission). Every launcher gives the executor the same contract: the env
//! variable `RUNBOX_EXECUTION_ID` (plus `TRACEPARENT`), a task timeout, and
//! nothing else: the command travels in the request object.
//!
//! Nothing outside this folder knows which launcher runs: whatever differs
//! between them (sweeping what a dead executor left, watching an execution
//! another process launched, cancelling) is a method of the trait.

use std::fs::File;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use runbox_core::ExecutionId;

pub mod cloud_run;
pub mod local;

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The execution; its request object is already written.
    pub execution_id: ExecutionId,
    /// The command's timeout; the launcher's task timeout is set above it so
    /// the executor can report TIMED_OUT itself.
    pub timeout: Duration,
    /// W3C trace context to hand to the executor.
    pub traceparent: Option<String>,
    /// The execution's own store token (gcp, downscoped credentials):
    /// the executor uses it and no other credential. Launchers pass it
    /// where the command cannot read it.
    pub store_token: Option<runbox_core::credentials::StoreToken>,
}

/// What makes a launch warm: the session whose live shell runs the
/// command, and how long that execution waits for the next one.
#[derive(Clone, Debug)]
pub struct WarmLaunch {
    /// The session.
    pub session: runbox_core::SessionId,
    /// Its idle timeout.
    pub idle: Duration,
}

/// How a launched execution ended, as the platform saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Whether the platform considers it a success (exit status 0).
    pub succeeded: bool,
    /// The platform's account: exit status, signal, Cloud Run condition.
    pub message: String,
}

/// The platform's view of an execution, for reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutionState {
    /// Still running.
    Running,
    /// Finished.
    Ended(Ended),
    /// The platform knows nothing of it (never started, or forgotten).
    Unknown,
}

/// A launch or lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The executor binary was not found (local launcher).
    #[error(
        "runbox-executor binary not found (looked in: {searched}); build it (`cargo build --release`, or `cargo install --path executor`), set RUNBOX_EXECUTOR to its path, or put it on PATH"
    )]
    ExecutorNotFound {
        /// Where it was looked for.
        searched: String,
    },
    /// Starting the execution failed.
    #[error("launch execution {id}")]
    Spawn {
        /// The execution.
        id: ExecutionId,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The launcher is shutting down.
    #[error("launcher closed")]
    Closed,
    /// This launcher cannot stream a running command's standard input
    /// ([`Launcher::streams_stdin`]).
    #[error(
        "launch execution {id}: this launcher cannot stream standard input to a running command"
    )]
    StdinNotStreamed {
        /// The execution.
        id: ExecutionId,
    },
    /// The platform kept refusing the launch for quota or availability
    /// (Cloud Run: RESOURCE_EXHAUSTED, UNAVAILABLE) until the retry budget
    /// ran out. Trying again later may succeed.
    #[error(
        "launch execution {id}: refused {attempts} time(s) in {elapsed:?}, retry budget used up"
    )]
    Throttled {
        /// The execution.
        id: ExecutionId,
        /// Calls made.
        attempts: u32,
        /// Time from the first call to giving up.
        elapsed: Duration,
        /// The last refusal.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Asking the platform about an execution failed.
    #[error("{op} execution {id}")]
    Platform {
        /// What was asked: `look up`, `cancel`.
        op: &'static str,
        /// The execution.
        id: ExecutionId,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The launcher could not be set up to reach the platform (endpoint,
    /// TLS, credentials).
    #[error("connect the launcher to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LaunchError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LaunchError::Spawn {
                retryable: true,
                ..
            } | LaunchError::Platform {
                retryable: true,
                ..
            } | LaunchError::Throttled { .. }
        )
    }
}

/// Starts executions and reports on them.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// A short description, e.g. `local:/path/runbox-executor`.
    fn describe(&self) -> String;

    /// Starts an execution. Returns once the platform has accepted it.
    async fn launch(&self, spec: LaunchSpec) -> Result<(), LaunchError>;

    /// Starts an execution that keeps `hold` (a share of the session's
    /// lock, [`crate::SessionGuard::share`]) open until its executor has
    /// exited, so the session stays locked for as long as the command can
    /// run, even if the launching process dies. A launcher whose executors
    /// run on other machines cannot pass a descriptor on: by default `hold`
    /// is closed once the launch returns, and the caller's own guard is all
    /// there is.
    async fn launch_holding(&self, spec: LaunchSpec, hold: File) -> Result<(), LaunchError> {
        let launched = self.launch(spec).await;
        drop(hold);
        launched
    }

    /// Runs the command of a warm session: delivered to the session's
    /// running warm execution when there is one, else as the first
    /// command of a new one. [`Launcher::ended`] then resolves when this
    /// command's executor is done with it (its result written) or gone.
    /// Launchers without warm executions launch a oneshot one.
    async fn launch_warm(&self, spec: LaunchSpec, warm: &WarmLaunch) -> Result<(), LaunchError> {
        let _ = warm;
        self.launch(spec).await
    }

    /// Whether [`Launcher::launch_warm_stdin`] carries a standard input
    /// that streams while `session`'s command runs, asked before anything
    /// of the command is written. Launchers that cannot give every command
    /// its whole stdin at its start instead.
    fn streams_stdin(&self, session: &runbox_core::SessionId) -> bool {
        let _ = session;
        false
    }

    /// [`Launcher::launch_warm`] for a command whose request says
    /// `stdinStream`: `stdin` goes to the running command as it is
    /// written. Called only where [`Launcher::streams_stdin`] says so; the
    /// default refuses.
    async fn launch_warm_stdin(
        &self,
        spec: LaunchSpec,
        warm: &WarmLaunch,
        stdin: crate::StdinFeed,
    ) -> Result<(), LaunchError> {
        let _ = (warm, stdin);
        Err(LaunchError::StdinNotStreamed {
            id: spec.execution_id,
        })
    }

    /// Hands the launcher the client's store and completion waiters once
    /// they exist, for launchers that learn of their executions through
    /// objects and their events (the Cloud Run launcher's warm commands).
    fn attach(
        &self,
        _store: std::sync::Arc<dyn runbox_core::Store>,
        _waiters: std::sync::Arc<runbox_notifier::Waiters>,
    ) {
    }

    /// The first execution of the session's running warm execution, if
    /// one runs.
    async fn warm_execution(&self, _session: &runbox_core::SessionId) -> Option<String> {
        None
    }

    /// Ends the session's warm execution, if one runs (a command it is
    /// running ends CANCELLED); whether one was asked to end.
    async fn close_warm(&self, _session: &runbox_core::SessionId) -> bool {
        false
    }

    /// Resolves when the execution has ended. Backends that cannot observe
    /// the end (without polling) never resolve; the dispatcher's deadline
    /// then reconciles through [`Launcher::state`]. After
    /// [`Launcher::shutdown`] an end the launcher did not see is never
    /// reported: the execution runs on, and its caller would settle it as
    /// LOST.
    async fn ended(&self, id: &ExecutionId) -> Ended;

    /// The platform's current view of the execution.
    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, LaunchError>;

    /// Asks the execution to stop and returns without waiting for it: the
    /// local launcher sends the executor SIGTERM, Cloud Run calls
    /// CancelExecution (which sends SIGTERM to the container); the executor
    /// then kills the command's process group and writes a CANCELLED result.
    /// An execution that has ended already, or that the launcher does not
    /// know, is left alone.
    async fn cancel(&self, id: &ExecutionId) -> Result<(), LaunchError>;

    /// Forgets what is kept about a finished execution.
    fn release(&self, id: &ExecutionId);

    /// Looks for an execution this launcher did not start (another
    /// dispatcher process launched it), for callers that must see it end or
    /// stop it: a background process spawned by a CLI call that has exited.
    async fn observe(&self, id: &ExecutionId) -> Observed;

    /// Where the platform runs an execution this launcher started, for
    /// another dispatcher process to reach it through [`Launcher::adopt`]
    /// (Cloud Run: the Execution's resource name); stored in the background
    /// marker. `None` when the execution id is all another process needs.
    fn locator(&self, _id: &ExecutionId) -> Option<String> {
        None
    }

    /// Makes an execution that another dispatcher process started known to
    /// this launcher, so that [`Launcher::state`], [`Launcher::cancel`] and
    /// [`Launcher::ended`] reach it: from its stored `locator` when there is
    /// one, else by searching the platform for executions started since
    /// `since`. Returns `true` when it was adopted now (the caller then
    /// calls [`Launcher::release`] when done with it), `false` when it was
    /// already known, was not found, or needs no adoption (launchers that
    /// find other processes' executions through [`Launcher::observe`]).
    async fn adopt(
        &self,
        _id: &ExecutionId,
        _locator: Option<&str>,
        _since: SystemTime,
    ) -> Result<bool, LaunchError> {
        Ok(false)
    }

    /// Kills whatever the command of an executor that ended without a result
    /// left running (an executor that dies does not kill its command);
    /// returns how many processes were killed. Launchers whose executions
    /// end with their executor (a Cloud Run container) have nothing to do.
    async fn sweep(&self, id: &ExecutionId) -> usize;

    /// Stops the launcher's own tasks; executions keep running. Called by
    /// the client's shutdown; launches after it fail with
    /// [`LaunchError::Closed`].
    async fn shutdown(&self);
}

/// What [`Launcher::observe`] found.
pub enum Observed {
    /// The execution runs here: it can be watched and stopped.
    Running(Box<dyn ForeignExecution>),
    /// Nothing runs it: it ended (or never started).
    Gone,
    /// This launcher cannot see executions it did not start.
    Unobservable,
}

/// An execution launched by another process, found by [`Launcher::observe`].
pub trait ForeignExecution: Send + Sync {
    /// Asks it to stop, as [`Launcher::cancel`] does for own executions.
    fn terminate(&self);

    /// Resolves with an account of its end once it has ended; never, when
    /// its end cannot be watched.
    fn exited(&mut self) -> BoxFuture<'_, String>;
}
