//! The dispatcher's error types, all here: [`Error`] for every operation, with the
//! background-process specifics in [`BackgroundError`]. Launch errors are
//! the launcher's own ([`LaunchError`]); file-API errors are [`FileError`].

mod background;
mod file;

use std::time::Duration;

use runbox_core::contract::RequestError;
use runbox_core::store::StoreError;
use runbox_core::{ExecutionId, IdError};
use runbox_notifier::{SourceError, WaitError};
use runbox_proto::ExecResult;

pub use self::background::BackgroundError;
pub use self::file::FileError;

pub use crate::launcher::LaunchError;

/// Result alias for dispatcher operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A dispatcher operation failed. Variants before `Store` are bad input,
/// reported before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The session id breaks the id rule.
    #[error("invalid session id")]
    InvalidSession(#[source] IdError),
    /// The session settings (mode, idle timeout) are not usable.
    #[error("invalid session settings")]
    InvalidSessionSettings(#[source] runbox_core::warm::SettingsError),
    /// The command is larger than allowed.
    #[error("command is {bytes} bytes; at most {max} bytes are allowed")]
    CommandTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The command contains a NUL byte, which bash cannot receive.
    #[error("command contains a NUL byte")]
    CommandHasNul,
    /// The timeout is zero or above the configured maximum.
    #[error("timeout {requested:?} is outside the allowed range (more than 0, at most {max:?})")]
    InvalidTimeout {
        /// What was asked for.
        requested: Duration,
        /// The configured maximum (`RUNBOX_MAX_TIMEOUT_SECS`).
        max: Duration,
    },
    /// An extra environment variable has an unusable name or value.
    #[error("environment variable {name:?}: {reason}")]
    InvalidEnv {
        /// The name given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The standard input is larger than `RUNBOX_STDIN_CAP_BYTES`.
    #[error("standard input is larger than {max} bytes, the limit (RUNBOX_STDIN_CAP_BYTES)")]
    StdinTooLarge {
        /// The configured cap.
        max: u64,
    },
    /// The configuration cannot be used.
    #[error("configuration")]
    Config(#[source] runbox_core::ConfigError),
    /// `RUNBOX_WORKSPACE_PATH` is not a usable workspace path.
    #[error("configuration")]
    WorkspacePath(#[source] runbox_core::session_cwd::WorkspacePathSettingError),
    /// `RUNBOX_LANDLOCK` or a `RUNBOX_LIMIT_*` resource limit is unusable.
    #[error("configuration")]
    Confinement(#[source] runbox_core::confinement::ConfinementSettingError),
    /// The object store failed.
    #[error("{op}")]
    Store {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The execution could not be launched.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The completion notifier stopped, so the result cannot be awaited.
    #[error("waiting for execution {id}")]
    Wait {
        /// The execution.
        id: ExecutionId,
        /// The cause.
        #[source]
        source: WaitError,
    },
    /// The event source could not be started.
    #[error("start completion events")]
    Events(#[source] SourceError),
    /// A result object exists but cannot be decoded.
    #[error("result of execution {id} is unreadable: {detail}")]
    InvalidResult {
        /// The execution.
        id: ExecutionId,
        /// What was wrong.
        detail: String,
    },
    /// The command ran, but the session's state changed meanwhile (another
    /// process ran a command in the same session), so its cwd and env were
    /// not saved. The result is kept.
    #[error("session {session}: state changed by another writer while execution {} ran; its cwd and env were not saved", result.execution_id)]
    StateConflict {
        /// The session.
        session: String,
        /// The command's result.
        result: Box<ExecResult>,
    },
    /// The session already exists.
    #[error("session {0} already exists")]
    SessionExists(String),
    /// The session has no objects.
    #[error("session {0} does not exist")]
    NoSuchSession(String),
    /// The client was shut down.
    #[error("client is shut down")]
    Closed,
    /// The command was cancelled (see [`crate::CancelHandle`]) before it
    /// was launched: nothing ran and nothing was written.
    #[error("cancelled before it started; nothing ran")]
    Cancelled,
    /// A workspace file operation failed (bad path, missing file, …).
    #[error(transparent)]
    File(#[from] FileError),
    /// A background-process operation failed.
    #[error(transparent)]
    Background(#[from] BackgroundError),
    /// The session lease (gcp backend) could not be taken or was lost.
    #[error(transparent)]
    Lease(#[from] crate::session_lease::LeaseError),
    /// An exec with a fixed execution id (see [`crate::Exec::execution_id`])
    /// found that id's request object holding a different command, session
    /// or request id: nothing ran, and the other execution was not touched.
    #[error("execution {id} already holds a different request")]
    ExecutionIdInUse {
        /// The execution id.
        id: ExecutionId,
    },
}

impl Error {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => source.is_retryable(),
            Error::Launch(e) => e.is_retryable(),
            Error::Lease(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn store(op: impl Into<String>, source: StoreError) -> Self {
        Error::Store {
            op: op.into(),
            source,
        }
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::CommandTooLarge { bytes, max } => Error::CommandTooLarge { bytes, max },
            RequestError::CommandHasNul => Error::CommandHasNul,
            RequestError::InvalidTimeout { requested, max } => {
                Error::InvalidTimeout { requested, max }
            }
            RequestError::InvalidEnv { name, reason } => Error::InvalidEnv { name, reason },
            RequestError::StdinTooLarge { max } => Error::StdinTooLarge { max },
        }
    }
}
