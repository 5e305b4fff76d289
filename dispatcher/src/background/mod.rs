//! Background processes: [`crate::Session::spawn`] starts a command in its own
//! execution and returns a [`BackgroundHandle`] at once; the process keeps
//! running while foreground commands come and go.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runbox_dispatcher::Error> {
//! use runbox_dispatcher::{Client, Stream};
//! let client = Client::from_env().await?;
//! let session = client.session("demo")?;
//! let server = session.spawn("python3 -m http.server 8000").await?;
//! // Foreground commands keep running, one at a time, as before.
//! session.exec("ls").await?;
//! let logs = client.background_logs(&server, Stream::Stderr, 0).await?;
//! println!("{}", String::from_utf8_lossy(&logs.data));
//! let result = client.kill_background(&server).await?; // CANCELLED
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A background process is an ordinary execution whose request says
//! `background: true`, with a long timeout (default `RUNBOX_MAX_TIMEOUT_SECS`,
//! 24 h). It does not go through the session's foreground queue, so it never
//! blocks the commands behind it. Its objects:
//!
//! - `sessions/{session}/background/{execution}.json`, the marker, written by
//!   the dispatcher before the launch (command, start time). Listing these
//!   lists the session's background processes; whether one still runs comes
//!   from whether `results/{execution}.json` exists.
//! - `logs/{execution}/stdout.000001`, `.000002`, … (and `stderr.…`): its
//!   output, uploaded by the executor while it runs whenever 64 KiB are
//!   waiting or at least every 2 s. A reader keeps the number of chunks it
//!   has read (the offset) and reads on from there ([`LogRead`]).
//! - `results/{execution}.json`, written when it ends, as for every
//!   execution; every chunk is written before it.
//!
//! The handle shown to callers (the protocol's "process id") is the
//! execution id.
//!
//! # What a background process does not do
//!
//! - It never saves cwd or env to the session: it starts with the session's
//!   cwd and env as they are when it is spawned, but a `cd` or `export` in
//!   it is forgotten, because saving it when it ends would overwrite what
//!   the foreground commands saved meanwhile.
//! - It does not save the session's workspace either: on the embedded
//!   backend it works in the workspace directory itself, so its files are
//!   there at once; on Cloud Run its workspace is a copy, and what it writes
//!   there is not copied back when it ends (its snapshot would be stale).
//! - In oneshot mode each execution is its own container on Cloud Run: a
//!   foreground command **cannot** reach a background server's port there
//!   (separate containers, separate network namespaces), nor see files it
//!   writes outside the synced workspace. On the embedded backend both run
//!   on the same machine, so `curl localhost:PORT` from a foreground command
//!   does reach it. Session mode (DESIGN §9) will put both in one container.
//! - On the embedded backend each background process holds one of the local
//!   launcher's slots (64) for its whole life.
//!
//! # Where it lives
//!
//! `spawn` writes the request and the marker and launches; `control`
//! lists, waits for and kills processes; `logs` reads and follows their
//! output. All of it runs on the execution engine (`crate::engine`):
//! the same submission, wait and settling as a foreground command.
//!
//! # Completion and killing across processes
//!
//! The dispatcher that spawned a process watches its launch: when the
//! executor exits without a result (crash, OOM), it writes a LOST result, so
//! nothing waits for a result that will never come.
//!
//! [`crate::Client::wait_background`], [`crate::Client::kill_background`] and
//! [`crate::Client::follow_background_logs`] wait for the result's completion event
//! (registered before they read or cancel anything) and, at the same time,
//! for the executor to end: through the launcher when this dispatcher
//! launched it; on the embedded backend, for a process spawned by another
//! dispatcher process (a `runbox exec --background` that has exited), by
//! finding its executor by its `RUNBOX_EXECUTION_ID` in `/proc` and waiting
//! on a pidfd (Linux). An executor that is gone without a result makes the
//! result LOST (output it had not uploaded yet, at most ~2 s of it, is lost
//! with it), and on the embedded backend whatever its command left running
//! is killed first. Killing cancels through the launcher (SIGTERM to the
//! executor, which kills the process group and writes CANCELLED), or signals
//! the found executor the same way. On Cloud Run only the instance that
//! launched an execution knows its name, so killing it from another
//! instance fails with [`crate::BackgroundError::Unreachable`], and a process whose
//! executor crashed after its launching instance went away stays listed as
//! running (reconciliation by Cloud Run's execution state is left to do).
//!
//! A kill that comes right after the launch can reach the executor before
//! it handles SIGTERM (it installs its handler only once the command has
//! started); it then dies at once, without a result and without killing
//! its command. Because a kill first records `killRequested` in the marker,
//! whoever settles that end kills what is left (embedded backend) and
//! writes CANCELLED, not LOST.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use runbox_core::{ExecutionId, SessionId};
use runbox_proto::ExecStatus;

pub use runbox_core::layout::Stream;
pub use spawn::Spawn;

pub(crate) mod control;
pub(crate) mod logs;
pub(crate) mod spawn;

/// How long [`crate::Client::follow_background_logs`] waits between two reads of
/// the next chunk. Chunk objects raise no completion event (only `results/`
/// does), so following output means reading again; twice a second is
/// prompt for a person at a terminal and costs one small read per stream.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Beyond the kill grace, how long [`crate::Client::kill_background`] waits for the
/// result of a cancelled process: the executor still uploads the last output
/// chunks and the result.
pub const KILL_SLACK: Duration = Duration::from_secs(30);

/// Most bytes one [`crate::Client::background_logs`] call returns; the rest is read
/// by the next call from the returned offset.
pub const MAX_LOG_READ_BYTES: usize = 16 * 1024 * 1024;

/// How many markers' results are read at once when listing.
const LIST_CONCURRENCY: usize = 16;

/// A running (or finished) background process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackgroundHandle {
    /// Its execution; shown as the handle.
    pub execution_id: ExecutionId,
    /// The session it runs in.
    pub session: SessionId,
    /// The command.
    pub command: String,
    /// When the dispatcher accepted it.
    pub started_at: SystemTime,
}

impl fmt::Display for BackgroundHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.execution_id.as_str())
    }
}

/// One background process as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackgroundEntry {
    /// The process.
    pub handle: BackgroundHandle,
    /// Whether it still runs.
    pub state: BackgroundState,
}

/// Whether a background process still runs (its result does not exist yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackgroundState {
    /// No result yet.
    Running,
    /// Its result exists.
    Exited {
        /// How it ended.
        status: ExecStatus,
        /// Its exit code (124 timed out, 128+15 cancelled, -1 lost).
        exit_code: i32,
    },
}

/// Output read from a background process's chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The bytes of the chunks read, in order (possibly empty).
    pub data: Bytes,
    /// Pass to the next read to continue after these bytes (chunks read so far).
    pub next_offset: u64,
    /// The process had ended before this read and `data` reaches the end of
    /// its output: no later read will return more.
    pub ended: bool,
}
