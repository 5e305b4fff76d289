//! The runbox dispatcher: launches executions, learns of their completion
//! from object-finalize events, and exposes the library API
//! ([`Client`] → [`Session`] → `exec(..).await`).
//!
//! Where each concern lives:
//! - [`client`], [`session`], `exec`: the public API, thin over the rest;
//! - `engine`: the execution engine (session queues, submission, the one
//!   wait, settling) that every surface submits to;
//! - [`background`], [`files`]: background processes and the workspace file
//!   API, as modules over the engine and the store;
//! - [`launcher`]: the [`Launcher`] trait and its launchers (local, Cloud Run);
//! - [`retention`]: deleting finished executions' objects ([`Client::gc`]);
//! - `backends`: the one place that picks store, events and launcher from
//!   the configuration;
//! - [`error`]: the crate's error types.
//!
//! # Example
//!
//! The embedded backend needs no cloud account: objects live under a
//! directory and each command runs in a child process of `runbox-executor`
//! (found as [`launcher::local::find_executor`] describes). The README shows
//! the same code.
//!
//! ```no_run
//! # async fn example() -> Result<(), runbox_dispatcher::Error> {
//! use std::time::Duration;
//! use runbox_dispatcher::{Client, ExecStatus};
//!
//! let client = Client::embedded("/var/lib/runbox").await?;   // or Client::from_env()
//! let session = client.session("agent-42")?;
//! session.exec("cd /srv && export MODE=test").await?;
//! let result = session
//!     .exec("echo $MODE in $(pwd)")
//!     .timeout(Duration::from_secs(30))
//!     .env("EXTRA", "for this command only")
//!     .await?;
//! assert_eq!(result.exec_status(), ExecStatus::Succeeded);
//! assert_eq!(result.stdout, "test in /srv\n");
//! # Ok(())
//! # }
//! ```

mod backends;
pub mod background;
pub mod client;
mod credentials;
mod engine;
pub mod error;
mod exec;
pub mod files;
pub mod launcher;
pub mod live_output;
pub mod metrics;
pub mod retention;
pub mod session;
pub mod session_lease;
pub mod session_lock;
pub mod stdin_stream;

pub use background::{BackgroundEntry, BackgroundHandle, BackgroundState, LogRead, Spawn, Stream};
pub use client::{Client, Parts};
pub use error::{BackgroundError, Error, FileError, LaunchError, Result};
pub use exec::{CancelHandle, Exec};
pub use files::{
    DeleteOptions, DirEntry, Download, EntryKind, FileInfo, FileText, ReadOptions, ReplaceOptions,
    SearchMatch, TextStream, UploadOptions, WriteOptions,
};
pub use launcher::cloud_run::{
    CloudRunEndpoint, CloudRunLauncher, CloudRunSettings, TemplateProblem, admission,
    template_problems,
};
pub use launcher::local::LocalLauncher;
pub use launcher::{Ended, ExecutionState, LaunchSpec, Launcher, WarmLaunch};
pub use live_output::{OutputChunk, OutputStream};
pub use retention::{GcCandidate, GcPlan, GcReport};
pub use runbox_core::error_chain;
pub use runbox_core::warm::{SessionMode, SessionSettings};
pub use runbox_proto::{ExecResult, ExecStatus, SessionState};
pub use session::{Session, SessionInfo};
pub use session_lease::{LeaseError, SessionLease, SessionLeases};
pub use session_lock::{SessionGuard, SessionLocks};
pub use stdin_stream::{StdinError, StdinFeed, StdinWriter};
