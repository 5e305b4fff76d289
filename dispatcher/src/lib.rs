//! The runbox dispatcher: launches executions, learns of their completion
//! from object-finalize events, and exposes the library API
//! ([`Client`] → [`Session`] → `exec(..).await`).

mod client;
mod error;
pub mod launcher;
pub mod local_launcher;
pub mod session_lock;

pub use client::{Client, Exec, Parts, Session, SessionInfo, ShutdownHook};
pub use error::{Error, Result};
pub use launcher::{Ended, ExecutionState, LaunchError, LaunchSpec, Launcher};
pub use local_launcher::LocalLauncher;
pub use runbox_proto::{ExecResult, ExecStatus, SessionState};
pub use session_lock::{SessionGuard, SessionLocks};

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // `#[error(transparent)]` and similar wrappers repeat their cause.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
