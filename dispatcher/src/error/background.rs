//! What can go wrong with a background process specifically.

use std::time::Duration;

/// A background process went wrong in a way specific to background processes.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    /// The session has no background process with this handle.
    #[error("session {session} has no background process {handle:?}")]
    UnknownHandle {
        /// The session.
        session: String,
        /// The handle given.
        handle: String,
    },
    /// [`crate::Client::wait_background`] timed out; the process still runs.
    #[error("background process {handle} still running after {timeout:?}")]
    WaitTimedOut {
        /// The process.
        handle: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// A cancelled process wrote no result in time.
    #[error("background process {handle} was cancelled but reported no end within {timeout:?}")]
    KillTimedOut {
        /// The process.
        handle: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// This dispatcher cannot reach the execution (it was launched by another
    /// instance, on a platform where only the launching instance knows it).
    #[error(
        "background process {handle} was not launched by this dispatcher and {launcher} cannot find it; kill it from the instance that started it"
    )]
    Unreachable {
        /// The process.
        handle: String,
        /// The launcher in use.
        launcher: String,
    },
    /// A marker object exists but cannot be read.
    #[error("background marker {name} is unreadable: {detail}")]
    InvalidMarker {
        /// The object name.
        name: String,
        /// What was wrong.
        detail: String,
    },
}
