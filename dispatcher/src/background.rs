//! Background processes: [`Session::spawn`] starts a command in its own
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
//! # Completion and killing across processes
//!
//! The dispatcher that spawned a process watches its launch: when the
//! executor exits without a result (crash, OOM), it writes a LOST result, so
//! nothing waits for a result that will never come.
//!
//! [`Client::wait_background`], [`Client::kill_background`] and
//! [`Client::follow_background_logs`] wait for the result's completion event
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
//! instance fails with [`BackgroundError::Unreachable`], and a process whose
//! executor crashed after its launching instance went away stays listed as
//! running (reconciliation by Cloud Run's execution state is left to do).
//!
//! A kill that comes right after the launch can reach the executor before
//! it handles SIGTERM (it installs its handler only once the command has
//! started); it then dies at once, without a result and without killing
//! its command. Because a kill first records `killRequested` in the marker,
//! whoever settles that end kills what is left (embedded backend) and
//! writes CANCELLED, not LOST.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use runbox_core::config::LauncherKind;
use runbox_core::store::{self, Precondition, PutOptions, Store};
use runbox_core::{ExecutionId, SessionId, layout};
use runbox_notifier::{WaitError, Waiter};
use runbox_proto::{ExecRequest, ExecResult, ExecStatus};

pub use runbox_core::layout::Stream;

use crate::client::{Client, Inner, Session};
use crate::error::{Error, Result};
use crate::launcher::{ExecutionState, LaunchSpec, Launcher};

/// How long [`Client::follow_background_logs`] waits between two reads of
/// the next chunk. Chunk objects raise no completion event (only `results/`
/// does), so following output means reading again; twice a second is
/// prompt for a person at a terminal and costs one small read per stream.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Beyond the kill grace, how long [`Client::kill_background`] waits for the
/// result of a cancelled process: the executor still uploads the last output
/// chunks and the result.
pub const KILL_SLACK: Duration = Duration::from_secs(30);

/// Most bytes one [`Client::background_logs`] call returns; the rest is read
/// by the next call from the returned offset.
pub const MAX_LOG_READ_BYTES: usize = 16 * 1024 * 1024;

/// How many markers' results are read at once when listing.
const LIST_CONCURRENCY: usize = 16;

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
    /// [`Client::wait_background`] timed out; the process still runs.
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

impl Session {
    /// Prepares a background process; `.await` it to start it and get its
    /// handle. Bad input fails exactly as [`Session::exec`] does, before
    /// anything is written.
    pub fn spawn(&self, command: impl Into<String>) -> Spawn {
        Spawn {
            session: self.clone(),
            command: command.into(),
            timeout: None,
            env: BTreeMap::new(),
        }
    }

    /// The background process with this handle (its execution id); fails
    /// with [`BackgroundError::UnknownHandle`] when the session has none.
    pub async fn background(&self, handle: &str) -> Result<BackgroundHandle> {
        let unknown = || {
            Error::Background(BackgroundError::UnknownHandle {
                session: self.id.to_string(),
                handle: handle.to_owned(),
            })
        };
        let id = ExecutionId::new(handle).map_err(|_| unknown())?;
        match read_marker(&*self.client.inner.store, &self.id, &id).await {
            Ok(marker) => Ok(marker.handle),
            Err(Error::Store { source, .. }) if source.is_not_found() => Err(unknown()),
            Err(e) => Err(e),
        }
    }

    /// The session's background processes, oldest first, running or not.
    pub async fn list_background(&self) -> Result<Vec<BackgroundEntry>> {
        let store = &*self.client.inner.store;
        let prefix = layout::background_prefix(&self.id);
        let markers = store::list_all(store, &prefix)
            .await
            .map_err(|e| Error::store(format!("list background processes of {}", self.id), e))?;
        let ids: Vec<ExecutionId> = markers
            .iter()
            .filter_map(|m| {
                let id = m.name.strip_prefix(&prefix)?.strip_suffix(".json")?;
                ExecutionId::new(id).ok()
            })
            .collect();
        let found: Vec<Option<BackgroundEntry>> = futures::stream::iter(ids)
            .map(|id| self.entry(id))
            .buffered(LIST_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let mut entries: Vec<BackgroundEntry> = found.into_iter().flatten().collect();
        entries.sort_by(|a, b| {
            (a.handle.started_at, &a.handle.execution_id)
                .cmp(&(b.handle.started_at, &b.handle.execution_id))
        });
        Ok(entries)
    }

    /// Kills the background process with this handle; see
    /// [`Client::kill_background`].
    pub async fn kill_background(&self, handle: &str) -> Result<ExecResult> {
        let handle = self.background(handle).await?;
        self.client.kill_background(&handle).await
    }

    /// Kills every running background process of the session, all at once;
    /// returns their results (or the first error, after every kill was tried).
    pub async fn kill_all_background(&self) -> Result<Vec<ExecResult>> {
        self.kill_where(|_| true).await
    }

    /// Kills the running background processes whose command contains
    /// `pattern` (a plain substring, case-sensitive: no regex, so a pattern
    /// taken from a command line means what it says); returns their results
    /// as [`Session::kill_all_background`] does.
    pub async fn kill_background_matching(&self, pattern: &str) -> Result<Vec<ExecResult>> {
        self.kill_where(|command| command.contains(pattern)).await
    }

    async fn kill_where(&self, matches: impl Fn(&str) -> bool) -> Result<Vec<ExecResult>> {
        let targets: Vec<BackgroundHandle> = self
            .list_background()
            .await?
            .into_iter()
            .filter(|e| e.state == BackgroundState::Running && matches(&e.handle.command))
            .map(|e| e.handle)
            .collect();
        let client = &self.client;
        futures::future::join_all(targets.iter().map(|h| client.kill_background(h)))
            .await
            .into_iter()
            .collect()
    }

    /// One listing entry; `None` when the marker vanished meanwhile (the
    /// session was deleted).
    async fn entry(&self, id: ExecutionId) -> Result<Option<BackgroundEntry>> {
        let inner = &self.client.inner;
        let handle = match read_marker(&*inner.store, &self.id, &id).await {
            Ok(marker) => marker.handle,
            Err(Error::Store { source, .. }) if source.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = match inner.read_result(&id).await {
            Ok(r) => BackgroundState::Exited {
                status: r.exec_status(),
                exit_code: r.exit_code,
            },
            Err(Error::Store { source, .. }) if source.is_not_found() => BackgroundState::Running,
            Err(e) => return Err(e),
        };
        Ok(Some(BackgroundEntry { handle, state }))
    }
}

impl Client {
    /// The background processes of a session; see [`Session::list_background`].
    pub async fn list_background(&self, session: &str) -> Result<Vec<BackgroundEntry>> {
        self.session(session)?.list_background().await
    }

    /// Reads a stream's chunks from chunk `offset` on (0 at first, then the
    /// returned [`LogRead::next_offset`]), without waiting. Reads at most
    /// [`MAX_LOG_READ_BYTES`] (whole chunks; at least one) per call.
    pub async fn background_logs(
        &self,
        handle: &BackgroundHandle,
        stream: Stream,
        offset: u64,
    ) -> Result<LogRead> {
        let inner = &self.inner;
        let id = &handle.execution_id;
        // The result first: the executor writes every chunk before it, so if
        // it exists now, the chunks read below are all there will ever be.
        let ended = match inner.store.head(&layout::result(id)).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(Error::store(format!("read result of execution {id}"), e)),
        };
        let mut data = BytesMut::new();
        let mut next = offset;
        let mut complete = true;
        loop {
            if data.len() >= MAX_LOG_READ_BYTES {
                complete = false;
                break;
            }
            let name = layout::log_chunk(id, stream, next + 1);
            match inner.store.get(&name).await {
                Ok(o) => {
                    data.extend_from_slice(&o.data);
                    next += 1;
                }
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(Error::store(format!("read log {name}"), e)),
            }
        }
        Ok(LogRead {
            data: data.freeze(),
            next_offset: next,
            ended: ended && complete,
        })
    }

    /// Like [`Client::background_logs`], but when nothing new is there yet,
    /// waits until something is or the process ends (reading again every
    /// [`FOLLOW_INTERVAL`], and at once when it ends). Returns empty data
    /// only with `ended: true`. Put a timeout around it: a quiet process may
    /// print nothing for a long time.
    pub async fn follow_background_logs(
        &self,
        handle: &BackgroundHandle,
        stream: Stream,
        offset: u64,
    ) -> Result<LogRead> {
        let [read] = self.follow(handle, [(stream, offset)]).await?;
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
        self.follow(
            handle,
            [
                (Stream::Stdout, stdout_offset),
                (Stream::Stderr, stderr_offset),
            ],
        )
        .await
    }

    async fn follow<const N: usize>(
        &self,
        handle: &BackgroundHandle,
        from: [(Stream, u64); N],
    ) -> Result<[LogRead; N]> {
        let id = &handle.execution_id;
        // Both registered before the first read (list-then-watch): an end
        // that comes between a read and the wait is not missed.
        let mut waiter = self.register(id)?;
        let mut watch = Some(self.end_watch(handle).await?);
        loop {
            let mut reads: [LogRead; N] = std::array::from_fn(|_| LogRead::default());
            for (read, (stream, offset)) in reads.iter_mut().zip(from) {
                *read = self.background_logs(handle, stream, offset).await?;
            }
            if reads.iter().any(|r| !r.data.is_empty()) || reads.iter().all(|r| r.ended) {
                return Ok(reads);
            }
            let event = async {
                match waiter.as_mut() {
                    Some(w) => {
                        let _ = w.await;
                    }
                    None => std::future::pending().await,
                }
            };
            let ended = async {
                match watch.as_mut() {
                    Some(w) => w.ended(&*self.inner.launcher, id).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Whatever it said (event, or the notifier stopped), the next
                // read settles it. A resolved waiter cannot be polled again,
                // so from here on the timer and the end watch remain.
                () = event => waiter = None,
                message = ended => {
                    watch = None;
                    // The executor is gone: its result exists, or it never
                    // will and is settled now; either way the next read
                    // reports the end.
                    self.settle(handle, message).await?;
                }
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }

    /// Waits until the background process ends and returns its result, or
    /// fails with [`BackgroundError::WaitTimedOut`] after `timeout` (the
    /// process keeps running). Event-driven: the completion waiter is
    /// registered first, then the result is read once; when the executor
    /// exits without a result, the result is LOST.
    pub async fn wait_background(
        &self,
        handle: &BackgroundHandle,
        timeout: Duration,
    ) -> Result<ExecResult> {
        let id = &handle.execution_id;
        let waiter = self.register(id)?;
        if let Some(result) = self.existing_result(id).await? {
            return Ok(result);
        }
        let watch = self.end_watch(handle).await?;
        if let Some(message) = watch.ended_already() {
            return self.settle(handle, message).await;
        }
        self.await_end(handle, waiter, watch, timeout)
            .await?
            .ok_or_else(|| {
                Error::Background(BackgroundError::WaitTimedOut {
                    handle: handle.to_string(),
                    timeout,
                })
            })
    }

    /// Stops a background process: the executor gets SIGTERM, kills the
    /// process group (SIGKILL after `RUNBOX_KILL_GRACE_MS`) and writes a
    /// CANCELLED result, which is returned. A process that had already ended
    /// is left alone and its result returned. Waits at most the kill grace
    /// plus [`KILL_SLACK`], then fails with [`BackgroundError::KillTimedOut`].
    pub async fn kill_background(&self, handle: &BackgroundHandle) -> Result<ExecResult> {
        let inner = &self.inner;
        let id = &handle.execution_id;
        // Registered BEFORE the cancel, so the CANCELLED result's event
        // cannot come before anyone listens.
        let waiter = self.register(id)?;
        if let Some(result) = self.existing_result(id).await? {
            return Ok(result);
        }
        let watch = self.end_watch(handle).await?;
        if let Some(message) = watch.ended_already() {
            return self.settle(handle, message).await;
        }
        if matches!(watch, EndWatch::Unobservable) {
            return Err(Error::Background(BackgroundError::Unreachable {
                handle: handle.to_string(),
                launcher: inner.launcher.describe(),
            }));
        }
        self.mark_kill_requested(handle).await?;
        match &watch {
            EndWatch::Launcher(_) => inner.launcher.cancel(id).await?,
            EndWatch::Process(executor) => executor.terminate(),
            EndWatch::Gone | EndWatch::Unobservable => {
                unreachable!("returned above")
            }
        }
        let timeout = inner.config.kill_grace + KILL_SLACK;
        self.await_end(handle, waiter, watch, timeout)
            .await?
            .ok_or_else(|| {
                Error::Background(BackgroundError::KillTimedOut {
                    handle: handle.to_string(),
                    timeout,
                })
            })
    }

    /// How this dispatcher can see the executor of `handle` end, besides
    /// the result's completion event.
    async fn end_watch(&self, handle: &BackgroundHandle) -> Result<EndWatch> {
        let inner = &self.inner;
        match inner.launcher.state(&handle.execution_id).await? {
            ExecutionState::Running => return Ok(EndWatch::Launcher(None)),
            ExecutionState::Ended(ended) => return Ok(EndWatch::Launcher(Some(ended.message))),
            ExecutionState::Unknown => {}
        }
        // Launched by another dispatcher process. Only the embedded
        // launcher's executors can be found: they are processes here.
        if inner.config.launcher != LauncherKind::Local {
            return Ok(EndWatch::Unobservable);
        }
        let id = handle.execution_id.clone();
        let found = tokio::task::spawn_blocking(move || crate::local_executor::find(&id)).await;
        Ok(match found {
            Ok(Some(Some(executor))) => EndWatch::Process(executor.watch()),
            Ok(Some(None)) => EndWatch::Gone,
            // Not Linux, or the lookup task failed: nothing to watch.
            Ok(None) | Err(_) => EndWatch::Unobservable,
        })
    }

    /// The executor has ended; see [`settle`].
    async fn settle(&self, handle: &BackgroundHandle, account: String) -> Result<ExecResult> {
        settle(&self.inner, &handle.session, &handle.execution_id, account).await
    }

    /// Records in the marker that a kill was asked for, before the signal
    /// goes out: if the executor then ends without a result (the signal came
    /// before it could handle it), whoever settles it writes CANCELLED, not
    /// LOST.
    async fn mark_kill_requested(&self, handle: &BackgroundHandle) -> Result<()> {
        let name = layout::background_marker(&handle.session, &handle.execution_id);
        self.inner
            .store
            .put(&name, encode_marker(handle, true), PutOptions::default())
            .await
            .map(drop)
            .map_err(|e| Error::store(format!("write background marker {name}"), e))
    }

    /// Registers a completion waiter; `None` when another caller in this
    /// process already waits for the same execution (one waiter per id),
    /// in which case the end watch and the timeout remain.
    fn register(&self, id: &ExecutionId) -> Result<Option<Waiter>> {
        match self.inner.waiters.register(id.clone()) {
            Ok(w) => Ok(Some(w)),
            Err(WaitError::AlreadyRegistered(_)) => Ok(None),
            Err(source) => Err(Error::Wait {
                id: id.clone(),
                source,
            }),
        }
    }

    /// The result if it exists already.
    async fn existing_result(&self, id: &ExecutionId) -> Result<Option<ExecResult>> {
        match self.inner.read_result(id).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::Store { source, .. }) if source.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for the end of an execution whose result did not exist after
    /// `waiter` was registered: its completion event, or `watch` seeing the
    /// executor end, or `timeout` (`Ok(None)`).
    async fn await_end(
        &self,
        handle: &BackgroundHandle,
        waiter: Option<Waiter>,
        mut watch: EndWatch,
        timeout: Duration,
    ) -> Result<Option<ExecResult>> {
        let inner = &self.inner;
        let id = &handle.execution_id;
        if waiter.is_none() && matches!(watch, EndWatch::Unobservable) {
            // Nothing could tell us of the end before the timeout.
            return Err(Error::Wait {
                id: id.clone(),
                source: WaitError::AlreadyRegistered(id.clone()),
            });
        }
        let has_waiter = waiter.is_some();
        let event = async {
            match waiter {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(event);
        tokio::select! {
            completion = &mut event => match completion {
                Ok(_) => inner.read_result(id).await.map(Some),
                Err(source) => Err(Error::Wait { id: id.clone(), source }),
            },
            message = watch.ended(&*inner.launcher, id) => {
                // As for a foreground command: the executor has exited, so
                // its result write, if any, is done; its event normally
                // follows within milliseconds. Read the store directly only
                // if none comes within the completion grace.
                if has_waiter
                    && let Ok(Ok(_)) =
                        tokio::time::timeout(inner.config.completion_grace, &mut event).await
                {
                    return inner.read_result(id).await.map(Some);
                }
                self.settle(handle, message).await.map(Some)
            }
            () = tokio::time::sleep(timeout) => Ok(None),
        }
    }
}

/// How the end of a background execution can be seen, besides its
/// result's completion event.
enum EndWatch {
    /// This dispatcher launched it; the launcher reports its end. Holds the
    /// launcher's account when it has ended already.
    Launcher(Option<String>),
    /// Another dispatcher process launched it on this machine; its executor
    /// process is watched.
    Process(crate::local_executor::ExitWatch),
    /// It has no result and no executor runs it: it ended without one (or
    /// never started).
    Gone,
    /// Nothing here can see it end (another instance's Cloud Run execution).
    Unobservable,
}

impl EndWatch {
    /// The account of an end that has already happened.
    fn ended_already(&self) -> Option<String> {
        match self {
            EndWatch::Launcher(Some(message)) => Some(message.clone()),
            EndWatch::Gone => Some("no executor process runs it".to_owned()),
            _ => None,
        }
    }

    /// Resolves with an account of the end once the executor has ended;
    /// never, when that cannot be seen.
    async fn ended(&mut self, launcher: &dyn Launcher, id: &ExecutionId) -> String {
        match self {
            EndWatch::Launcher(Some(message)) => message.clone(),
            EndWatch::Launcher(None) => launcher.ended(id).await.message,
            EndWatch::Process(watch) => watch.exited().await,
            EndWatch::Gone => "no executor process runs it".to_owned(),
            EndWatch::Unobservable => std::future::pending().await,
        }
    }
}

/// A background process about to start: set options, then `.await` it.
#[must_use = "a Spawn does nothing until awaited"]
pub struct Spawn {
    session: Session,
    command: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
}

impl Spawn {
    /// How long it may run before it is killed (TIMED_OUT); default and
    /// upper bound `RUNBOX_MAX_TIMEOUT_SECS` (24 h).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An extra environment variable for this process only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

impl IntoFuture for Spawn {
    type Output = Result<BackgroundHandle>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<BackgroundHandle>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // The same checks as a foreground command, done here, synchronously,
        // so bad input fails before any side effect.
        let config = &self.session.client.inner.config;
        let mut exec = self
            .session
            .exec(self.command.clone())
            .timeout(self.timeout.unwrap_or(config.max_timeout));
        for (k, v) in &self.env {
            exec = exec.env(k.clone(), v.clone());
        }
        let timeout = match exec.validate() {
            Ok(t) => t,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        Box::pin(start(self.session, self.command, self.env, timeout))
    }
}

/// Writes the request and the marker, launches, and returns without waiting
/// for the process; a watcher task settles the launch when it ends.
async fn start(
    session: Session,
    command: String,
    env: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<BackgroundHandle> {
    let inner = &session.client.inner;
    let id = inner.instance.next_execution_id();
    // Milliseconds, as the marker stores it, so the handle returned here
    // equals the one read back from the marker.
    let started_at = SystemTime::UNIX_EPOCH
        + Duration::from_millis(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
    let request = ExecRequest {
        execution_id: id.to_string(),
        session_id: session.id.to_string(),
        command: command.clone(),
        env,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        output_cap_bytes: 0,
        created_at: Some(runbox_proto::timestamp(started_at)),
        traceparent: String::new(),
        request_id: String::new(),
        background: true,
    };
    store::put_json(
        &*inner.store,
        &layout::request(&id),
        &request,
        PutOptions::create(),
    )
    .await
    .map_err(|e| Error::store(format!("write request of execution {id}"), e))?;
    let handle = BackgroundHandle {
        execution_id: id.clone(),
        session: session.id.clone(),
        command,
        started_at,
    };
    // The marker before the launch: whatever runs is listed, so it can be
    // found and killed.
    let marker = layout::background_marker(&session.id, &id);
    inner
        .store
        .put(&marker, encode_marker(&handle, false), PutOptions::create())
        .await
        .map_err(|e| Error::store(format!("write background marker {marker}"), e))?;
    let launched = inner
        .launcher
        .launch(LaunchSpec {
            execution_id: id.clone(),
            timeout,
            traceparent: None,
        })
        .await;
    if let Err(e) = launched {
        // Nothing runs: a marker left behind would list it as running forever.
        if let Err(d) = inner.store.delete(&marker, Precondition::None).await {
            tracing::warn!(execution = %id, error = %d, "could not remove the marker of a failed launch");
        }
        return Err(e.into());
    }
    tracing::debug!(execution = %id, session = %session.id, "background process launched");
    watch_launch(
        Arc::downgrade(inner),
        Arc::clone(&inner.launcher),
        id,
        session.id.clone(),
        timeout + inner.config.deadline_grace,
    );
    Ok(handle)
}

/// Observes a background launch to its end so nothing leaks: releases the
/// launcher's record of it and, when the executor ended without a result (or
/// the deadline passed with none), writes LOST. Holds the client only
/// weakly: a client dropped meanwhile is not kept alive for up to 24 h.
fn watch_launch(
    inner: Weak<Inner>,
    launcher: Arc<dyn Launcher>,
    id: ExecutionId,
    session: SessionId,
    deadline: Duration,
) {
    tokio::spawn(async move {
        let ended = tokio::select! {
            ended = launcher.ended(&id) => Some(ended),
            () = tokio::time::sleep(deadline) => None,
        };
        if let Some(inner) = inner.upgrade() {
            let settled = match ended {
                Some(ended) => settle(&inner, &session, &id, ended.message).await,
                None => inner.reconcile(&id, &session, deadline).await,
            };
            match settled {
                Ok(r) => {
                    tracing::debug!(execution = %id, status = %r.exec_status(), "background process ended")
                }
                Err(e) => {
                    tracing::warn!(execution = %id, error = %crate::error_chain(&e), "could not settle a background process")
                }
            }
        }
        launcher.release(&id);
    });
}

/// Settles an execution whose executor has ended (`account`: how, as the
/// platform or the exit watch saw it): its result if it wrote one; else
/// CANCELLED when a kill had been asked for (the executor died of the
/// signal before it could handle it), else LOST. Written with
/// if-generation-match=0, so a real result is never overwritten and
/// concurrent settlers agree.
///
/// An executor that died without a result did not kill its command either.
/// On the embedded backend what is left of it (every process carrying its
/// `RUNBOX_EXECUTION_ID`) is killed here, before the result is written, so
/// a kill that returns leaves nothing running. (On Cloud Run the container
/// ends with its executor.)
async fn settle(
    inner: &Inner,
    session: &SessionId,
    id: &ExecutionId,
    account: String,
) -> Result<ExecResult> {
    match inner.read_result(id).await {
        Err(Error::Store { source, .. }) if source.is_not_found() => {}
        other => return other,
    }
    let killed = match read_marker(&*inner.store, session, id).await {
        Ok(marker) => marker.kill_requested,
        // No readable marker: nothing says a kill was asked for.
        Err(_) => false,
    };
    let mut account = account;
    if inner.config.launcher == LauncherKind::Local {
        let target = id.clone();
        let swept =
            tokio::task::spawn_blocking(move || crate::local_executor::kill_leftovers(&target))
                .await
                .unwrap_or(0);
        if swept > 0 {
            account.push_str(&format!(
                "; {swept} process(es) it left running were killed"
            ));
        }
    }
    if !killed {
        let message = format!("execution ended without a result: {account}");
        return inner.result_or_lost(id, session, message).await;
    }
    inner
        .write_final_result(
            id,
            session,
            ExecStatus::Cancelled,
            128 + libc::SIGTERM,
            format!(
                "killed before its executor could handle the signal, so it wrote no result ({account})"
            ),
        )
        .await
}

/// A marker as stored.
struct Marker {
    handle: BackgroundHandle,
    /// A kill was asked for (see [`settle`]).
    kill_requested: bool,
}

/// The marker's JSON: `{executionId, sessionId, command, startedAt}`, plus
/// `killRequested: true` once a kill was asked for.
fn encode_marker(handle: &BackgroundHandle, kill_requested: bool) -> Bytes {
    let mut value = serde_json::json!({
        "executionId": handle.execution_id.as_str(),
        "sessionId": handle.session.as_str(),
        "command": handle.command,
        "startedAt": humantime::format_rfc3339_millis(handle.started_at).to_string(),
    });
    if kill_requested {
        value["killRequested"] = serde_json::Value::Bool(true);
    }
    Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"))
}

async fn read_marker(store: &dyn Store, session: &SessionId, id: &ExecutionId) -> Result<Marker> {
    let name = layout::background_marker(session, id);
    let data = store
        .get(&name)
        .await
        .map_err(|e| Error::store(format!("read background marker {name}"), e))?
        .data;
    decode_marker(&data, session, id).map_err(|detail| {
        Error::Background(BackgroundError::InvalidMarker {
            name: name.clone(),
            detail,
        })
    })
}

fn decode_marker(
    data: &[u8],
    session: &SessionId,
    id: &ExecutionId,
) -> std::result::Result<Marker, String> {
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("missing string field {name:?}"))
    };
    if field("executionId")? != id.as_str() {
        return Err(format!("names execution {:?}", field("executionId")?));
    }
    let started_at =
        humantime::parse_rfc3339(field("startedAt")?).map_err(|e| format!("startedAt: {e}"))?;
    Ok(Marker {
        handle: BackgroundHandle {
            execution_id: id.clone(),
            session: session.clone(),
            command: field("command")?.to_owned(),
            started_at,
        },
        kill_requested: value.get("killRequested") == Some(&serde_json::Value::Bool(true)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_reject_mismatches() {
        let session = SessionId::new("s").unwrap();
        let id = ExecutionId::new("abc-1").unwrap();
        let handle = BackgroundHandle {
            execution_id: id.clone(),
            session: session.clone(),
            command: "python3 -m http.server 0".into(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let bytes = encode_marker(&handle, false);
        let marker = decode_marker(&bytes, &session, &id).unwrap();
        assert_eq!(marker.handle, handle);
        assert!(!marker.kill_requested);
        let killed = decode_marker(&encode_marker(&handle, true), &session, &id).unwrap();
        assert_eq!(killed.handle, handle);
        assert!(killed.kill_requested);
        let other = ExecutionId::new("abc-2").unwrap();
        assert!(decode_marker(&bytes, &session, &other).is_err());
        assert!(decode_marker(b"{}", &session, &id).is_err());
        assert!(decode_marker(b"not json", &session, &id).is_err());
        assert_eq!(handle.to_string(), "abc-1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn no_executor_runs_an_unknown_execution() {
        let id = ExecutionId::new("nobody-0000000000").unwrap();
        assert!(matches!(crate::local_executor::find(&id), Some(None)));
    }
}
