//! The runbox dispatcher: launches executions, learns of their completion
//! from object-finalize events, and exposes the library API
//! ([`Client`] → [`Session`] → `exec(..).await`).

pub mod admission;
pub mod background;
mod client;
pub mod cloud_run;
mod error;
pub mod files;
pub mod launcher;
mod local_executor;
pub mod local_launcher;
pub mod session_lock;

pub use background::{
    BackgroundEntry, BackgroundError, BackgroundHandle, BackgroundState, LogRead, Spawn, Stream,
};
pub use client::{Client, Exec, Parts, Session, SessionInfo, ShutdownHook};
pub use cloud_run::{CloudRunEndpoint, CloudRunLauncher, CloudRunSettings};
pub use error::{Error, Result};
pub use files::{
    DeleteOptions, DirEntry, Download, EntryKind, FileError, FileInfo, FileText, ReadOptions,
    ReplaceOptions, SearchMatch, UploadOptions, WriteOptions,
};
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
