//! Starting executions: the [`Launcher`] trait. Backends: a local child
//! process of `runbox-executor` ([`crate::LocalLauncher`]); Cloud Run Jobs
//! over gRPC. Every backend gives the executor the same contract: the env
//! variable `RUNBOX_EXECUTION_ID` (plus `TRACEPARENT`), a task timeout, and
//! nothing else: the command travels in the request object.

use std::time::Duration;

use async_trait::async_trait;
use runbox_core::ExecutionId;

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
        "runbox-executor binary not found (looked in: {searched}); build it with `cargo build --release` or set RUNBOX_EXECUTOR"
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

    /// Resolves when the execution has ended. Backends that cannot observe
    /// the end (without polling) never resolve; the dispatcher's deadline
    /// then reconciles through [`Launcher::state`].
    async fn ended(&self, id: &ExecutionId) -> Ended;

    /// The platform's current view of the execution.
    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, LaunchError>;

    /// Asks the execution to stop; its executor writes a CANCELLED result.
    async fn cancel(&self, id: &ExecutionId) -> Result<(), LaunchError>;

    /// Forgets what is kept about a finished execution.
    fn release(&self, id: &ExecutionId);
}
