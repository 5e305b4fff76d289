//! Warm mode: one execution keeps a live bash for its session and runs the
//! session's commands in it one after another, each still with its own
//! execution id, request object and result object (see
//! [`runbox_core::warm`] for the channel the later commands arrive on).
//!
//! # The shell
//!
//! bash runs interactive (`-i`) with job control (`set -m`), reading
//! command lines from a pipe the executor writes. Each command is one line
//! that carries the command's text and extra variables (quoted, so no file
//! per command has to be created for them), exports the variables, runs
//! the command with `eval` in the shell
//! itself (so functions, aliases, unexported variables and `set` options
//! persist) with its standard streams redirected to files of its own, then
//! writes the capture (status, `pwd`, `declare -px`) and a line `d N` on
//! the shell's standard output, a pipe only the executor reads.
//!
//! Why interactive with job control: every pipeline a command starts
//! (foreground or `&`) gets a process group of its own, and an interactive
//! bash that receives SIGINT abandons the rest of the line it runs and
//! goes back to reading the next one, even in the middle of a builtin
//! loop. So a command's timeout kills the process groups the command
//! started, then interrupts the shell: the command ends, the shell and its
//! definitions stay. A subshell per command would have lost every
//! definition the command made. Background processes a command starts with
//! `&` keep running into the next command; only a timed-out or cancelled
//! command's new process groups are killed.
//!
//! After each command the workspace and the state are saved before its
//! result is written, exactly as in oneshot mode, so a warm execution that
//! dies loses no more than a oneshot one. Commands run as the session's
//! `RUNBOX_EXECUTION_ID` changes per command: it is exported anew before
//! each one (and not read-only, unlike in oneshot mode).
//!
//! # Lifetime
//!
//! The execution serves its first command (named on its command line),
//! then waits for the next on its socket. It exits when nothing arrives
//! within the idle timeout, when asked to close, or on SIGTERM; every
//! process the shell started is killed then. The next command of the
//! session starts a new execution, which restores cwd, env and workspace
//! from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runbox_core::config::Lookup;
use runbox_core::contract;
use runbox_core::session_cwd;
use runbox_core::store::{Precondition, Store};
use runbox_core::warm::{
    WARM_IDLE_MS_ENV, WARM_LIFETIME_MS_ENV, WARM_SESSION_ENV, WARM_SOCKET_ENV,
    WARM_SUBSCRIPTION_ENV, wire,
};
use runbox_core::{ExecutionId, SessionId};
use runbox_proto::{ExecResult, ExecStatus};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ExecutorError, Loaded, Outcome, Settings, identity, namespace, output, process, scratch, shell,
};

mod control;
mod pubsub;
mod stdin_stream;

/// What makes an executor warm, from its configuration.
#[derive(Clone, Debug)]
pub struct Warm {
    /// The session it serves; requests of any other are refused.
    pub session: SessionId,
    /// The socket it listens on (the local launcher).
    pub socket: Option<PathBuf>,
    /// The Pub/Sub subscription its commands arrive on (Cloud Run).
    pub subscription: Option<String>,
    /// How long after its start it takes commands (see
    /// [`runbox_core::warm::WARM_LIFETIME_MS_ENV`]); `None`: no limit.
    pub lifetime: Option<Duration>,
    /// How long it waits for the next command before it exits.
    pub idle: Duration,
}

impl Warm {
    /// The warm settings in `lookup`; `None` for a oneshot executor.
    pub fn from_lookup(lookup: &dyn Lookup) -> Result<Option<Self>, String> {
        let socket = lookup.get(WARM_SOCKET_ENV);
        let subscription = lookup.get(WARM_SUBSCRIPTION_ENV);
        let Some(session) = lookup.get(WARM_SESSION_ENV) else {
            return Ok(None);
        };
        if socket.is_none() && subscription.is_none() {
            return Ok(None);
        }
        let lifetime = match lookup.get(WARM_LIFETIME_MS_ENV) {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.parse()
                    .map_err(|e| format!("{WARM_LIFETIME_MS_ENV}={v:?}: {e}"))?,
            )),
        };
        let session = SessionId::new(&session).map_err(|e| format!("{WARM_SESSION_ENV}: {e}"))?;
        let idle_ms: u64 = match lookup.get(WARM_IDLE_MS_ENV) {
            None => u64::try_from(runbox_core::warm::DEFAULT_IDLE_TIMEOUT.as_millis())
                .unwrap_or(u64::MAX),
            Some(v) => v
                .parse()
                .map_err(|e| format!("{WARM_IDLE_MS_ENV}={v:?}: {e}"))?,
        };
        let idle = Duration::from_millis(idle_ms);
        runbox_core::warm::SessionSettings::new(runbox_core::warm::SessionMode::Warm)
            .with_idle_timeout(idle)
            .map_err(|e| format!("{WARM_IDLE_MS_ENV}: {e}"))?;
        Ok(Some(Self {
            session,
            socket: socket.map(PathBuf::from),
            subscription,
            lifetime,
            idle,
        }))
    }
}

/// A warm execution could not serve.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// Its socket could not be set up.
    #[error("listen on {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command's result could not be written.
    #[error("warm execution")]
    Result {
        /// The cause.
        #[source]
        source: ExecutorError,
    },
}

/// Why a warm execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmEnd {
    /// No command came within the idle timeout.
    Idle,
    /// A dispatcher asked it to close.
    Closed,
    /// SIGTERM or SIGINT.
    Stopped,
    /// Its lifetime ran out (see [`Warm::lifetime`]): the session's next
    /// command goes to a new execution.
    HandedOver,
    /// Its subscription could not be pulled: it ran its first command as a
    /// oneshot execution does and took no other.
    Unsubscribed,
}

/// Serves the first command (`settings.execution_id`), then every command
/// delivered on the socket, until idle, closed or `cancel`.
pub async fn serve(
    store: Arc<dyn Store>,
    settings: &Settings,
    warm: &Warm,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<WarmEnd, WarmError> {
    let born = tokio::time::Instant::now();
    let listener = match &warm.socket {
        Some(path) => Some(Listener::bind(path).map_err(|source| WarmError::Listen {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let stop = CancellationToken::new();
    let closed = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<(ExecutionId, Delivery)>(1);
    let first = settings.execution_id.clone();
    let commands = match &warm.subscription {
        Some(subscription) => {
            match pubsub::Commands::start(settings, warm, subscription, &first, tx.clone(), &closed)
                .await
            {
                Ok(commands) => Some(commands),
                Err(e) => {
                    return pubsub::oneshot_instead(store, settings, warm, subscription, e, cancel)
                        .await;
                }
            }
        }
        None => None,
    };
    // `close` connections stay open until everything has ended, so the
    // dispatcher that asked knows when it has.
    let closers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accept = listener.as_ref().map(|listener| {
        tokio::spawn(accept_loop(
            listener.inner.clone(),
            tx.clone(),
            Closing {
                token: closed.clone(),
                waiting: Arc::clone(&closers),
            },
            first.to_string(),
        ))
    });
    drop(tx);
    // Past this a command could outlive the task timeout: none is taken.
    let handover = warm.lifetime.map(|l| born + l);
    tokio::pin!(cancel);
    let mut kept = Kept::default();
    let mut next: Option<(ExecutionId, Option<Delivery>)> = Some((first, None));
    let end = loop {
        let (id, mut conn) = match next.take() {
            Some(item) => item,
            None => tokio::select! {
                delivered = rx.recv() => match delivered {
                    Some((id, conn)) => (id, Some(conn)),
                    None => break WarmEnd::Closed,
                },
                () = tokio::time::sleep(warm.idle) => break WarmEnd::Idle,
                // Once the session has been quiet a moment (its caller
                // has its result), so the walk takes no CPU from the
                // result's way there.
                () = tokio::time::sleep(NOTE_JOBS_AFTER), if kept.shell.as_ref().is_some_and(Shell::jobs_unknown) => {
                    if let Some(sh) = kept.shell.as_mut() {
                        sh.note_jobs();
                    }
                    continue;
                }
                () = sleep_until(kept.uncounted.due()) => {
                    kept.uncounted.save(&*store, &warm.session).await;
                    continue;
                }
                () = sleep_until(handover) => break WarmEnd::HandedOver,
                () = closed.cancelled() => break WarmEnd::Closed,
                () = &mut cancel => break WarmEnd::Stopped,
            },
        };
        let settings = Settings {
            execution_id: id.clone(),
            ..settings.clone()
        };
        let loaded = crate::load_request(&*store, &settings).await;
        if conn.is_none() && stdin_stream::wants(&loaded) {
            conn = stdin_stream::first_channel().map(Delivery::Socket);
        }
        // Before the taken mark, after which its dispatcher publishes.
        let messages = stdin_stream::route(commands.as_ref(), &id, &loaded, conn.as_ref());
        if let Some(c) = &mut conn {
            // Only the session's own requests that have no result yet: an
            // id from anywhere else gets no result written in its name.
            if let Err(reason) = check_delivered(&*store, warm, &id, &loaded).await {
                c.refuse(&id, &reason).await;
                continue;
            }
            if let (Some(at), Ok(l)) = (handover, &loaded)
                && tokio::time::Instant::now() + Duration::from_millis(l.request.timeout_ms) > at
            {
                // Left untaken: its dispatcher sees this execution end
                // first and starts the next one with it.
                tracing::info!(execution = %id, "the command would outlive this warm execution; handing over");
                break WarmEnd::HandedOver;
            }
            // A dispatcher that has gone still gets its result object.
            if !c.take(&*store, &id).await {
                continue;
            }
        }
        // Stopping (SIGTERM, close) during a command cancels it.
        let outcome = {
            let run = run_one(
                &*store,
                &settings,
                warm,
                &mut kept,
                loaded,
                &stop,
                conn.as_mut()
                    .and_then(Delivery::socket)
                    .map(stdin_stream::Source::Socket)
                    .or(messages.map(stdin_stream::Source::Messages)),
            );
            tokio::pin!(run);
            loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    () = &mut cancel, if !stop.is_cancelled() => stop.cancel(),
                    () = closed.cancelled(), if !stop.is_cancelled() => stop.cancel(),
                }
            }
        };
        match outcome {
            Ok(Outcome::Written(r)) => {
                tracing::debug!(execution = %id, status = %r.exec_status(), "warm command done");
            }
            Ok(Outcome::AlreadyWritten(_)) => {
                tracing::warn!(execution = %id, "a result already existed; ours was dropped");
            }
            Err(source) => {
                if let Some(accept) = &accept {
                    accept.abort();
                }
                kept.uncounted.save(&*store, &warm.session).await;
                finish(listener.as_ref(), kept.shell).await;
                if let Some(commands) = commands {
                    commands.finish(&*store).await;
                }
                return Err(WarmError::Result { source });
            }
        }
        if let Some(c) = &mut conn {
            c.done().await;
        }
        if stop.is_cancelled() {
            break if closed.is_cancelled() {
                WarmEnd::Closed
            } else {
                WarmEnd::Stopped
            };
        }
    };
    // Deliveries still queued get end-of-stream before `ok`: their
    // dispatchers start a new execution for them.
    if let Some(accept) = &accept {
        accept.abort();
    }
    drop(rx);
    kept.uncounted.save(&*store, &warm.session).await;
    finish(listener.as_ref(), kept.shell).await;
    // Its commands go nowhere once it is gone: what was published and not
    // taken is started anew by its dispatcher, which sees this end.
    if let Some(commands) = commands {
        commands.finish(&*store).await;
    }
    drop(closers);
    Ok(end)
}

/// How long after a command the shell's job groups are noted for the
/// next one (see [`Shell::jobs`]); a command that comes sooner notes them
/// itself.
const NOTE_JOBS_AFTER: Duration = Duration::from_millis(20);

/// What a warm execution keeps from one command to the next.
#[derive(Default)]
struct Kept {
    /// The live shell, once started.
    shell: Option<Shell>,
    /// Commands not counted in the stored state yet.
    uncounted: Uncounted,
}

/// How long at most a command that changed nothing but the state's
/// counters waits for them to be written (see [`Uncounted`]).
const COUNT_WITHIN: Duration = Duration::from_secs(1);

/// Commands this execution ran that changed nothing a command starts from
/// (cwd, exported env), so their state was not rewritten: the saved state
/// was right as it stood, and a crash loses nothing of it but these
/// counts. They are added to the state with its next write: a command's
/// that changes it, a quiet moment at most [`COUNT_WITHIN`] after the
/// first of them, or the end of the execution.
#[derive(Default)]
struct Uncounted {
    commands: u64,
    /// The last of them and when it ended.
    last: Option<(ExecutionId, runbox_proto::Timestamp)>,
    /// When they are to be written.
    due: Option<tokio::time::Instant>,
}

impl Uncounted {
    fn add(&mut self, id: &ExecutionId) {
        self.commands += 1;
        self.last = Some((id.clone(), runbox_proto::now()));
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + COUNT_WITHIN);
    }

    fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }

    /// Adds them to `state`; they are counted once it is written.
    fn apply(&self, state: &mut runbox_proto::SessionState) {
        if let Some((last, at)) = &self.last {
            crate::count_executions(state, self.commands, last, *at);
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    /// Writes them into the session's state as it is now. Counters only:
    /// a failure is logged and they are dropped, never retried forever.
    async fn save(&mut self, store: &dyn Store, session: &SessionId) {
        if self.last.is_none() {
            return;
        }
        // A conflict is another writer's save (a fence) between the read
        // and the write: read again.
        for _ in 0..3 {
            let (mut state, precondition) = match crate::load_state(store, session).await {
                // The session was removed: nothing to count in.
                Ok((_, Precondition::DoesNotExist)) => break,
                Ok(loaded) => loaded,
                Err(message) => {
                    tracing::warn!(%session, %message, "could not count commands in the session state");
                    break;
                }
            };
            self.apply(&mut state);
            match runbox_core::store::put_json(
                store,
                &runbox_core::layout::session_state(session),
                &state,
                runbox_core::store::PutOptions::when(precondition),
            )
            .await
            {
                Ok(_) => break,
                Err(e) if e.is_conflict() => continue,
                Err(e) => {
                    tracing::warn!(%session, error = %crate::error_chain(&e), "could not count commands in the session state");
                    break;
                }
            }
        }
        self.clear();
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a command came from, and how its sender hears of it.
enum Delivery {
    /// A connection to the socket: `ok`, `no …` and `done` lines.
    Socket(UnixStream),
    /// A message of the commands topic.
    PubSub(pubsub::Delivered),
}

impl Delivery {
    /// The connection a streamed stdin arrives on (over Pub/Sub it comes
    /// in messages of its own, [`stdin_stream::route`]).
    fn socket(&mut self) -> Option<&mut UnixStream> {
        match self {
            Delivery::Socket(c) => Some(c),
            Delivery::PubSub(_) => None,
        }
    }

    /// Tells the sender the command is not run.
    async fn refuse(&mut self, id: &ExecutionId, reason: &str) {
        match self {
            Delivery::Socket(c) => {
                let _ = c
                    .write_all(format!("{} {reason}\n", wire::NO).as_bytes())
                    .await;
            }
            Delivery::PubSub(m) => m.refuse(id, reason).await,
        }
    }

    /// Tells the sender the command starts now; `false` when it must not
    /// run after all (another execution took it).
    async fn take(&mut self, store: &dyn Store, id: &ExecutionId) -> bool {
        match self {
            Delivery::Socket(c) => {
                let _ = c.write_all(format!("{}\n", wire::OK).as_bytes()).await;
                true
            }
            Delivery::PubSub(m) => m.take(store, id).await,
        }
    }

    /// Tells the sender its result is written.
    async fn done(&mut self) {
        if let Delivery::Socket(c) = self {
            let _ = c.write_all(format!("{}\n", wire::DONE).as_bytes()).await;
        }
    }
}

/// Removes the socket (when it is still ours) and ends the shell and
/// everything it started.
async fn finish(listener: Option<&Listener>, shell: Option<Shell>) {
    use std::os::unix::fs::MetadataExt;
    if let Some(Listener { path, ino, .. }) = listener
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *ino)
    {
        let _ = std::fs::remove_file(path);
    }
    if let Some(shell) = shell {
        shell.kill().await;
    }
    process::sweep_descendants();
}

/// The listening socket and the inode it was bound to, so the executor
/// removes only its own socket at exit, never a successor's.
struct Listener {
    inner: Arc<UnixListener>,
    path: PathBuf,
    ino: u64,
}

impl Listener {
    fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // A socket left by an execution that died; anything else there is
        // not ours to remove.
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_socket()
        {
            std::fs::remove_file(path)?;
        }
        let inner = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        Ok(Self {
            inner: Arc::new(inner),
            path: path.to_owned(),
            ino,
        })
    }
}

/// How long a connection may take to send its one line.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections: `run ID` goes to the serving loop (one waits at a
/// time), `ping` and `close` are answered here.
/// How the accept loop asks the execution to close.
struct Closing {
    /// Cancelled by `close`.
    token: CancellationToken,
    /// The connections that asked, held open until the end.
    waiting: Arc<std::sync::Mutex<Vec<UnixStream>>>,
}

async fn accept_loop(
    listener: Arc<UnixListener>,
    tx: mpsc::Sender<(ExecutionId, Delivery)>,
    closing: Closing,
    first: String,
) {
    let me = rustix::process::geteuid().as_raw();
    let mut cleared = None;
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        // Only this executor's own user (the dispatcher's): commands run
        // as another user cannot even ask.
        match conn.peer_cred() {
            Ok(cred)
                if cred.uid() == me
                    && !cred
                        .pid()
                        .is_some_and(|pid| runs_under_an_executor(pid, &mut cleared)) => {}
            _ => continue,
        }
        let line = match tokio::time::timeout(LINE_TIMEOUT, read_line(&mut conn)).await {
            Ok(Some(line)) => line,
            _ => continue,
        };
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb {
            wire::PING => {
                let _ = conn
                    .write_all(format!("{} {first}\n", wire::WARM).as_bytes())
                    .await;
            }
            wire::CLOSE => {
                closing.token.cancel();
                let _ = conn.write_all(format!("{}\n", wire::OK).as_bytes()).await;
                // A poisoned lock only means a panic elsewhere held it.
                closing
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
            wire::RUN => match ExecutionId::new(arg) {
                Ok(id) => {
                    if tx.send((id, Delivery::Socket(conn))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = conn
                        .write_all(format!("{} {e}\n", wire::NO).as_bytes())
                        .await;
                }
            },
            _ => {
                let _ = conn
                    .write_all(format!("{} unknown request\n", wire::NO).as_bytes())
                    .await;
            }
        }
    }
}

/// Whether `pid` descends from a `runbox-executor`: a command (of this
/// session or any other), which must not reach a warm execution's
/// channel even where it runs as the dispatcher's user and sees the
/// socket. The parent chain cannot be forged: a process that leaves its
/// parent is adopted by its executor, the subreaper.
///
/// `cleared` remembers the last process found clear, by pid and start
/// time, so the dispatcher's every command costs one `/proc` read rather
/// than one per ancestor. The verdict cannot turn for that process: a
/// reparented process is adopted by one of its own ancestors (the nearest
/// subreaper, or init), so it never gains an executor above it; its own
/// name is checked again on every connection, since `exec` keeps the pid
/// and start time.
fn runs_under_an_executor(pid: i32, cleared: &mut Option<(i32, u64)>) -> bool {
    let Some(peer) = ProcStat::read(pid) else {
        // Gone, or not visible: refuse what cannot be checked.
        return true;
    };
    if peer.executor {
        return true;
    }
    if *cleared == Some((pid, peer.start)) {
        return false;
    }
    let mut parent = peer.parent;
    for _ in 0..256 {
        if parent <= 1 {
            *cleared = Some((pid, peer.start));
            return false;
        }
        match ProcStat::read(parent) {
            Some(stat) if !stat.executor => parent = stat.parent,
            _ => return true,
        }
    }
    true
}

/// What the executor reads of `/proc/PID/stat` (the command name may hold
/// spaces and parentheses, so fields are counted after its last `)`).
struct ProcStat {
    /// The name (`comm`) is a `runbox-executor`'s.
    executor: bool,
    parent: i32,
    /// The process group.
    group: i32,
    /// Start time in clock ticks since boot: with the pid, it names one
    /// process even across pid reuse.
    start: u64,
}

impl ProcStat {
    fn read(pid: i32) -> Option<Self> {
        // `comm` holds at most 15 bytes of the name.
        const EXECUTOR_COMM: &str = "runbox-executo";
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        // After the name: state, ppid, ..., starttime (field 22 of stat).
        let mut fields = stat.get(close + 1..)?.split_whitespace();
        let parent = fields.nth(1)?.parse().ok()?;
        let group = fields.next()?.parse().ok()?;
        let start = fields.nth(16)?.parse().ok()?;
        Some(Self {
            executor: stat.get(open + 1..close)?.starts_with(EXECUTOR_COMM),
            parent,
            group,
            start,
        })
    }
}

/// One line of at most [`wire::MAX_LINE`] bytes, without its newline.
async fn read_line(conn: &mut UnixStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut limited = (&mut *conn).take(wire::MAX_LINE as u64 + 1);
    let mut reader = BufReader::new(&mut limited);
    reader.read_until(b'\n', &mut buf).await.ok()?;
    let line = buf.strip_suffix(b"\n")?;
    String::from_utf8(line.to_vec()).ok()
}

/// Why a delivered id is not run, if it is not: its request must be
/// readable, name this session and have no result yet.
async fn check_delivered(
    store: &dyn Store,
    warm: &Warm,
    id: &ExecutionId,
    loaded: &Result<Loaded, crate::Rejection>,
) -> Result<(), String> {
    match loaded {
        Err(rejection) => Err(rejection.message.clone()),
        Ok(loaded) if loaded.session != warm.session => {
            Err(format!("execution {id} is not of this session"))
        }
        Ok(_) => match store.head(&runbox_core::layout::result(id)).await {
            Ok(_) => Err(format!("execution {id} has a result already")),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(crate::error_chain(&e)),
        },
    }
}

/// Runs one command of the session to its result object.
async fn run_one(
    store: &dyn Store,
    settings: &Settings,
    warm: &Warm,
    kept: &mut Kept,
    loaded: Result<Loaded, crate::Rejection>,
    stop: &CancellationToken,
    stdin: Option<stdin_stream::Source<'_>>,
) -> Result<Outcome, ExecutorError> {
    let id = &settings.execution_id;
    let started = runbox_proto::now();
    let (mut result, traceparent) = match loaded {
        Err(rejection) => (rejection.into_result(id), String::new()),
        Ok(loaded) if loaded.session != warm.session => {
            let rejection = crate::Rejection {
                session_id: loaded.session.to_string(),
                message: format!(
                    "execution {id} belongs to session {}, not to this warm execution's session {}",
                    loaded.session, warm.session
                ),
            };
            (rejection.into_result(id), String::new())
        }
        Ok(loaded) => {
            let traceparent = loaded.request.traceparent.clone();
            (
                run_in_shell(
                    store,
                    settings,
                    loaded,
                    &mut kept.shell,
                    &mut kept.uncounted,
                    stop,
                    stdin,
                )
                .await,
                traceparent,
            )
        }
    };
    result.execution_id = id.to_string();
    if result.started_at.is_none() {
        result.started_at = Some(started);
    }
    result.completed_at = Some(runbox_proto::now());
    crate::write_result(store, id, result, traceparent).await
}

/// Restore, run in the shell (starting one when there is none), collect,
/// save: [`crate::run`] for a command of a warm execution.
async fn run_in_shell(
    store: &dyn Store,
    settings: &Settings,
    loaded: Loaded,
    slot: &mut Option<Shell>,
    uncounted: &mut Uncounted,
    stop: &CancellationToken,
    stdin: Option<stdin_stream::Source<'_>>,
) -> ExecResult {
    let id = &settings.execution_id;
    let Loaded {
        request,
        session,
        mut state,
        state_precondition,
        workspace,
    } = loaded;
    let mut result = ExecResult {
        session_id: session.to_string(),
        ..Default::default()
    };
    let sync = crate::sync_options(&settings.config);
    let restored = match crate::restore_workspace(store, &session, &workspace, &sync).await {
        Ok(snapshot) => snapshot,
        Err(message) => return crate::rejected(result, message),
    };
    if let Some(who) = &settings.run_as
        && let Err(e) = identity::hand_over(&workspace, who)
    {
        return crate::rejected(
            result,
            format!(
                "give workspace {} to user {}: {e}",
                workspace.display(),
                who.name
            ),
        );
    }
    let placement = &settings.placement;
    let seen = placement.seen_workspace(&session);
    let mut notes = Vec::new();
    if slot.as_mut().is_some_and(|s| !s.alive()) {
        // The last command ended the shell (`exit`): a fresh one picks up
        // from the saved state.
        if let Some(dead) = slot.take() {
            dead.kill().await;
        }
    }
    if slot.is_none() {
        match Shell::start(settings, &session, &state, &mut notes).await {
            Ok(started) => *slot = Some(started),
            Err(message) => return crate::rejected(result, message),
        }
    }
    let Some(sh) = slot.as_mut() else {
        return crate::rejected(result, "the shell did not start".to_owned());
    };
    // Without a channel to carry it, a streamed stdin is an empty one.
    let stdin = stdin.filter(|_| request.stdin_stream);
    let mut files = match sh.command_files(
        &request.command,
        request.stdin_bytes > 0,
        settings.run_as.as_ref(),
        stdin.is_some(),
    ) {
        Ok(files) => files,
        Err(message) => return crate::rejected(result, message),
    };
    if let Some(file) = &files.stdin
        && let Err(message) = crate::stdin::fetch(store, id, request.stdin_bytes, file).await
    {
        return crate::rejected(result, message);
    }
    let base = crate::base_env(
        &session,
        id,
        &seen,
        sh.tmp.as_deref(),
        settings.run_as.as_ref(),
    );
    let mut start = sh.env.clone();
    start.insert(contract::EXECUTION_ID_ENV.to_owned(), id.to_string());
    start.extend(
        request
            .env
            .iter()
            .filter(|(k, _)| !contract::is_reserved_env(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let mut extra = BTreeMap::new();
    extra.insert(contract::EXECUTION_ID_ENV.to_owned(), id.to_string());
    extra.extend(request.env.clone());
    // On the command's line rather than in files: every file created costs
    // a journal entry (far more than bash parsing the words), and what is
    // not a file cannot be swapped by what an earlier command left running.
    files.exports = export_words(&extra);
    files.undo = undo_script(&request.env, &sh.env);
    let timeout = Duration::from_millis(request.timeout_ms);
    let log_cap = settings.config.limits.log_cap;
    let [stdout, stderr] = files.held();
    // The same chunks as a oneshot command's, from the files the shell
    // writes (see `output::follow`).
    let mut live = (request.stream_output && !request.background).then(|| output::Live::new(id));
    let follow = match live.as_ref().and_then(output::Live::sender) {
        Some(tx) => match output::Follow::start([&stdout, &stderr], log_cap, tx) {
            Ok(follow) => Some(follow),
            Err(e) => {
                notes.push(format!("no live output: {}", runbox_core::error_chain(&e)));
                live = None;
                None
            }
        },
        None => None,
    };
    result.started_at = Some(runbox_proto::now());
    let run = stdin_stream::beside(
        sh.run(&files, timeout, settings.config.limits.kill_grace, stop),
        stdin.and_then(|conn| files.stdin.as_ref().map(|fifo| (fifo, conn))),
    );
    let ending = match &mut live {
        Some(live) => live.run_while(store, run).await,
        None => run.await,
    };
    let swapped = files.swapped();
    let capture = if swapped.is_empty() {
        let reply = std::mem::take(&mut sh.reply);
        if let Some(why) = reply.refused {
            notes.push(format!(
                "the shell's state capture was refused, so the session state is unchanged: {why}"
            ));
        }
        match (reply.capture, &ending) {
            (Some(bytes), _) => shell::parse_capture(&bytes),
            (None, Ran::ShellEnded(_)) => {
                let tag = sh.tag.clone();
                crate::read_capture_with(&files.dir, CAPTURE, &mut notes, |bytes| {
                    control::capture_in(bytes, &tag)
                })
            }
            (None, _) => None,
        }
    } else {
        // What ran may not be the command: nothing it left is trusted.
        notes.push(format!(
            "the command's {} no longer named the files the executor wrote when it ended \
             (something the session left running replaced them), so the command may not \
             have run as asked; its state was not saved",
            swapped.join(", ")
        ));
        None
    };
    let ending = match ending {
        Ran::Finished => Ok(process::Ending::Exited(exit_status(
            capture.as_ref().map_or(0, |c| c.exit_code),
        ))),
        Ran::ShellEnded(status) => {
            notes.push("the shell ended; the next command starts a new one".to_owned());
            Ok(process::Ending::Exited(status))
        }
        Ran::TimedOut => Ok(process::Ending::TimedOut),
        Ran::Cancelled => Ok(process::Ending::Cancelled),
    };
    if let Err(message) = crate::record_ending(
        &mut result,
        ending,
        capture.as_ref(),
        request.timeout_ms,
        &mut notes,
    ) {
        return crate::rejected(result, message);
    }
    if !swapped.is_empty() {
        result.set_exec_status(ExecStatus::Failed);
    }
    let produced = [&stdout, &stderr].map(|path| produced(path, log_cap));
    // Before the result: once it exists, every chunk does, and together
    // they hold what the result keeps.
    if let Some(follow) = follow {
        follow.finish(produced.clone().map(|p| p.kept)).await;
    }
    if let Some(live) = live {
        live.finish(store).await;
    }
    let cap = if request.output_cap_bytes > 0 {
        request.output_cap_bytes
    } else {
        settings.config.limits.output_cap
    };
    let output = crate::Output {
        cap,
        log_cap,
        produced,
        upload_log: true,
    };
    if swapped.is_empty() {
        crate::collect_output(
            store,
            id,
            [&stdout, &stderr],
            &output,
            &mut result,
            &mut notes,
        )
        .await;
    } else {
        // What the shell read in place of the command's input (a link to
        // any file the session can name) would otherwise come back in
        // this command's result as if the command had produced it.
        notes.push(
            "its stdout and stderr were withheld: what the shell read and wrote may not \
             have been this command's files"
                .to_owned(),
        );
    }
    crate::save_workspace(
        store,
        &session,
        &workspace,
        &restored,
        &sync,
        &mut result,
        &mut notes,
    )
    .await;
    let mut capture = capture;
    if let Some(c) = &capture {
        // What the live shell exports now (after the undo script),
        // whatever the state may keep.
        let mut now = c.env.clone();
        for (name, value) in &request.env {
            if now.get(name) == Some(value) {
                match sh.env.get(name) {
                    Some(old) => now.insert(name.clone(), old.clone()),
                    None => now.remove(name),
                };
            }
        }
        sh.env = now;
    }
    if let Some(capture) = &mut capture {
        for refused in shell::refuse_unpersistable(&start, capture) {
            notes.push(refused.to_string());
            result.not_saved.push(format!("env:{}", refused.name));
        }
    }
    let saved = state.clone();
    crate::update_state(&mut state, capture.as_ref(), &sh.cwd, &seen, &base, &start);
    result.cwd = session_cwd::display(&state.cwd, &seen, session.as_str());
    match state_precondition {
        // The saved state is what the next command starts from already
        // (see `Uncounted`).
        Precondition::GenerationMatch(generation) if crate::same_but_counters(&saved, &state) => {
            result.state_generation = generation;
            uncounted.add(id);
        }
        precondition => {
            uncounted.apply(&mut state);
            if crate::save_state(
                store,
                &session,
                id,
                &mut state,
                precondition,
                &mut result,
                &mut notes,
            )
            .await
            {
                uncounted.clear();
            }
        }
    }
    if !result.not_saved.is_empty() && result.exec_status() == ExecStatus::Succeeded {
        result.set_exec_status(ExecStatus::Failed);
    }
    result.message = notes.join("; ");
    drop(files);
    result
}

/// A wait status for exit code `code`.
fn exit_status(code: i32) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw((code & 0xff) << 8)
}

/// What a stream's file holds: everything the command (and anything it
/// left running) wrote, kept up to the log cap.
fn produced(path: &Path, log_cap: u64) -> output::Produced {
    let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if total > log_cap
        && let Ok(file) = std::fs::OpenOptions::new().write(true).open(path)
    {
        let _ = file.set_len(log_cap);
    }
    output::Produced {
        total,
        kept: total.min(log_cap),
        problem: None,
    }
}

/// `builtin export -- NAME=$'value'` per variable, each its own
/// statement, so a name the shell refuses (read-only) leaves the others
/// exported, as `export` of the whole list did.
fn export_words(env: &BTreeMap<String, String>) -> String {
    let mut words = String::new();
    // Names were checked (`contract::validate_env`): plain shell names.
    for (name, value) in env {
        words.push_str(&format!(
            "builtin export -- {name}={} 2>/dev/null; ",
            ansi_quote(value)
        ));
    }
    words
}

// The files of one command, in its directory. The capture is a file only
// when the command ends the shell: its EXIT trap runs with the command's
// redirections still in place, so it cannot reach the control pipe.
const CAPTURE: &str = "capture";
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";
const STDIN: &str = "stdin";

/// A script that takes back the request's extra variables the command left
/// alone, so they apply to this command only, as in oneshot mode: each
/// goes back to its value before the command, or away.
fn undo_script(extra: &BTreeMap<String, String>, before: &BTreeMap<String, String>) -> String {
    let mut script = String::new();
    // Names were checked (`contract::validate_env`): plain shell names.
    for (name, value) in extra {
        let restore = match before.get(name) {
            Some(old) => format!("builtin export {name}={}", ansi_quote(old)),
            None => format!("builtin unset -v {name}"),
        };
        script.push_str(&format!(
            "if [[ ${{{name}+set}} && ${name} == {} ]]; then {restore}; fi; ",
            ansi_quote(value)
        ));
    }
    script
}

/// Quotes any text as `$'...'`, byte for byte.
fn ansi_quote(text: &str) -> String {
    let mut out = String::from("$'");
    for b in text.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

/// One command's directory, as the executor and as the shell see it;
/// removed when dropped.
struct CommandFiles {
    host: PathBuf,
    seen: PathBuf,
    seq: u64,
    /// The directory as created: the executor makes and reads the
    /// command's files through it only, since what an earlier command
    /// left running can rename the directory or the files in it.
    dir: OwnedFd,
    /// The stdout and stderr files as created, whatever their names
    /// point to later.
    outputs: [std::fs::File; 2],
    /// The standard input file as created, when the request has input
    /// (a path-only handle on a FIFO when stdin streams; without input
    /// the command reads `/dev/null`).
    stdin: Option<std::fs::File>,
    /// The command's text, quoted for the command's line.
    command: String,
    /// The statements exporting the request's variables.
    exports: String,
    /// The statements taking them back after the command.
    undo: String,
}

impl CommandFiles {
    /// Paths that open the output files as created (stdout, stderr).
    fn held(&self) -> [PathBuf; 2] {
        self.outputs.each_ref().map(scratch::held_path)
    }

    /// Which of the names the shell reads (the directory, the command, its
    /// input) no longer lead to what the executor created. The shell opens
    /// them by name, and the directory's name is predictable, so what an
    /// earlier command left running can swap them between their creation
    /// and their use.
    fn swapped(&self) -> Vec<&'static str> {
        use rustix::fs::{AtFlags, CWD, fstat, statat};
        let same = |named: rustix::io::Result<rustix::fs::Stat>,
                    held: rustix::io::Result<rustix::fs::Stat>| {
            matches!((named, held), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        };
        let mut swapped = Vec::new();
        if !same(
            statat(CWD, &self.host, AtFlags::SYMLINK_NOFOLLOW),
            fstat(&self.dir),
        ) {
            swapped.push("directory");
        }
        if let Some(held) = &self.stdin {
            let name = STDIN;
            if !same(
                statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW),
                fstat(held),
            ) {
                swapped.push(name);
            }
        }
        swapped
    }
}

impl Drop for CommandFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// How a command in the shell ended.
enum Ran {
    /// It ran to its end; the shell waits for the next one.
    Finished,
    /// The shell itself ended (`exit`, killed).
    ShellEnded(std::process::ExitStatus),
    /// Its timeout passed; what it started was killed, the shell lives.
    TimedOut,
    /// The execution is stopping; what it started was killed.
    Cancelled,
}

/// The live bash of a warm execution.
struct Shell {
    child: tokio::process::Child,
    control: tokio::process::ChildStdin,
    /// The shell's standard output: its captures and done records.
    replies: control::Control,
    /// What the lines of the command running now sent back.
    reply: control::Reply,
    /// The scratch directory: the shell's files and one directory per
    /// command.
    dir: scratch::ScratchDir,
    /// The scratch directory as the shell sees it.
    seen_dir: PathBuf,
    /// The command's `TMPDIR`, when it runs as another user.
    tmp: Option<PathBuf>,
    /// What the shell exports, as last captured.
    env: BTreeMap<String, String>,
    /// Where it started.
    cwd: PathBuf,
    /// Lines sent so far.
    seq: u64,
    /// The tag of the last line sent.
    tag: String,
    /// The job groups as they were a moment after the last command's
    /// result was written (taken while the execution waits for the next
    /// command, so a command does not start with a walk of `/proc`). A
    /// group an earlier command's job makes after that counts as the next
    /// command's: killed with it if it times out.
    jobs: Option<BTreeSet<i32>>,
    /// bash's pid as found once it answered its first line, so noting
    /// the jobs does not search for it each time (the searches that
    /// signal it look again).
    bash: Option<i32>,
}

impl Shell {
    /// Starts bash in the session's cwd with the session's env.
    async fn start(
        settings: &Settings,
        session: &SessionId,
        state: &runbox_proto::SessionState,
        notes: &mut Vec<String>,
    ) -> Result<Self, String> {
        let run_as = settings.run_as.as_ref();
        let base_dir = match run_as {
            None => crate::scratch_base(&settings.config),
            Some(_) => PathBuf::from(crate::SHARED_TEMP_BASE),
        };
        scratch::sweep(&base_dir);
        let dir = scratch::ScratchDir::create(&base_dir)
            .map_err(|e| format!("create scratch directory in {}: {e}", base_dir.display()))?;
        let tmp = run_as.map(|_| dir.path().join("tmp"));
        if let (Some(who), Some(_)) = (run_as, &tmp) {
            rustix::fs::mkdirat(dir.handle(), "tmp", rustix::fs::Mode::from_raw_mode(0o700))
                .map_err(|e| format!("create command TMPDIR: {e}"))?;
            identity::hand_over(dir.path(), who)
                .map_err(|e| format!("give scratch directory to user {}: {e}", who.name))?;
        }
        let placement = &settings.placement;
        // The same confinement as a oneshot command's shell: the persistent
        // shell and everything it starts live under it.
        let confine = crate::confinement(settings, session, dir.path())
            .map_err(|e| format!("prepare the command's confinement: {e}"))?;
        let enter = match placement.mode {
            namespace::Mode::Namespace => Some(
                placement
                    .enter(session, dir.path())
                    .map_err(|e| format!("prepare the workspace namespace: {e}"))?
                    .confined(confine.clone()),
            ),
            namespace::Mode::Direct | namespace::Mode::Host => None,
        };
        let seen_dir = match enter {
            Some(_) => PathBuf::from(namespace::SCRATCH_SEEN),
            None => dir.path().to_owned(),
        };
        let cwd = crate::starting_cwd(state, session, placement, notes);
        let seen = placement.seen_workspace(session);
        let mut base = crate::base_env(
            session,
            &settings.execution_id,
            &seen,
            tmp.as_deref(),
            run_as,
        );
        if enter.is_some() {
            base.insert("TMPDIR".to_owned(), "/tmp".to_owned());
        } else if tmp.is_none() && confine.landlock.is_some() {
            // Landlock leaves the host's /tmp read-only.
            base.insert(
                "TMPDIR".to_owned(),
                placement
                    .session_tmp(session)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let start = shell::start_env(&base, state, &BTreeMap::new());
        let restored = shell::RestoredEnv::split(&base, &start);
        for (name, bytes) in [("env", &restored.env_file), ("names", &restored.names_file)] {
            scratch::create_file(dir.handle(), name, bytes.as_ref())
                .map_err(|e| format!("write environment file: {}", crate::error_chain(&e)))?;
        }
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("create the shell's pipe: {e}"))?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader)
            .map_err(|e| format!("create the shell's pipe: {e}"))?;
        let mut command = process::bash_command(
            enter.as_ref(),
            (!confine.is_empty()).then_some((placement.helper.as_path(), &confine)),
        );
        if let Some(who) = run_as {
            command.uid(who.uid).gid(who.gid);
        }
        let mut child = command
            .arg("--noprofile")
            .arg("--norc")
            // Without line editing bash reads its input from the pipe a
            // buffer at a time; with it, a byte at a time with two
            // `pselect` calls around each, three system calls per byte of
            // a command's ~300-byte line (more than spawning a shell).
            // Reading ahead is safe: a line goes only once the one before
            // is done (or, for a capture, interrupted), and every command's
            // stdin is redirected away from the pipe.
            .arg("--noediting")
            .arg("-i")
            .env_clear()
            .envs(&restored.exec)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start bash: {e}"))?;
        let control = child
            .stdin
            .take()
            .ok_or_else(|| "start bash: no standard input".to_owned())?;
        let mut shell = Self {
            child,
            control,
            replies: control::Control::new(reader),
            reply: control::Reply::default(),
            tag: String::new(),
            jobs: None,
            bash: None,
            dir,
            seen_dir,
            tmp,
            env: start,
            cwd,
            seq: 0,
        };
        let init = init_line(&shell.cwd, &shell.seen_dir);
        let tag = shell
            .send(&init)
            .await
            .map_err(|e| format!("start bash: {e}"))?;
        match shell.wait_for(&tag).await {
            Some(()) => {
                shell.bash = shell.bash_pid().map(|p| Pid::as_raw(Some(p)));
                Ok(shell)
            }
            None => {
                let status = shell.child.wait().await.ok();
                Err(format!(
                    "the shell ended while starting{}",
                    status.map(|s| format!(" ({s})")).unwrap_or_default()
                ))
            }
        }
    }

    /// A directory for the next command, holding the command.
    fn command_files(
        &mut self,
        command: &str,
        with_stdin: bool,
        run_as: Option<&identity::Identity>,
        stream_stdin: bool,
    ) -> Result<CommandFiles, String> {
        let seq = self.seq + 1;
        let name = format!("c{seq}");
        let host = self.dir.path().join(&name);
        // The directory's name is predictable, so something an earlier
        // command left running may have taken it: then this command is
        // refused rather than run from files the executor did not make.
        let dir = scratch::create_dir(self.dir.handle(), &name)
            .map_err(|e| format!("create command directory: {}", crate::error_chain(&e)))?;
        // The executor writes, reads and trims these files through the
        // handles only: the command can name its directory and could put
        // links to any host file in their place. Created here (never
        // through a link), before the shell opens them, so their live
        // output is followed from the start.
        let create = |file: &str, bytes: &[u8]| {
            scratch::create_file(&dir, file, bytes)
                .map_err(|e| format!("write command file: {}", crate::error_chain(&e)))
        };
        let outputs = [create(STDOUT, b"")?, create(STDERR, b"")?];
        let command = ansi_quote(command);
        let stdin = if stream_stdin {
            Some(
                scratch::create_fifo(&dir, STDIN)
                    .map_err(|e| format!("make command stdin: {}", crate::error_chain(&e)))?,
            )
        } else if with_stdin {
            Some(create(STDIN, b"")?)
        } else {
            None
        };
        let files = CommandFiles {
            seen: self.seen_dir.join(&name),
            host,
            seq,
            dir,
            outputs,
            stdin,
            command,
            exports: String::new(),
            undo: String::new(),
        };
        if let Some(who) = run_as {
            identity::hand_over(&files.host, who)
                .map_err(|e| format!("give command directory to user {}: {e}", who.name))?;
        }
        Ok(files)
    }

    /// Runs the command in `files` to its end, its timeout, or `stop`.
    async fn run(
        &mut self,
        files: &CommandFiles,
        timeout: Duration,
        kill_grace: Duration,
        stop: &CancellationToken,
    ) -> Ran {
        let before = self.jobs.take().unwrap_or_else(|| self.job_groups());
        let line = command_line(files);
        self.reply = control::Reply::default();
        let tag = match self.send(&line).await {
            Ok(tag) => tag,
            Err(_) => return Ran::ShellEnded(self.reap().await),
        };
        debug_assert_eq!(self.seq, files.seq);
        let cut = tokio::select! {
            done = self.wait_for(&tag) => match done {
                Some(()) if self.alive() => return Ran::Finished,
                _ => return Ran::ShellEnded(self.reap().await),
            },
            () = tokio::time::sleep(timeout) => Ran::TimedOut,
            () = stop.cancelled() => Ran::Cancelled,
        };
        self.interrupt(&before, kill_grace).await;
        cut
    }

    /// Ends the command running now: TERM to the process groups it
    /// started, SIGINT to the shell (which abandons the rest of the line),
    /// then the capture the line did not get to write; KILL to what is
    /// left. A shell that does not come back within `grace` is killed.
    async fn interrupt(&mut self, before: &BTreeSet<i32>, grace: Duration) {
        // The interrupt first: a shell that sees its job end before it
        // gets the interrupt would go on with the rest of the line.
        if let Some(bash) = self.bash_pid() {
            let _ = rustix::process::kill_process(bash, Signal::INT);
        }
        let started: Vec<i32> = self.job_groups().difference(before).copied().collect();
        signal_groups(&started, Signal::TERM);
        // Twice: an interrupt handled after the shell read the line
        // discards it.
        let mut back = false;
        for _ in 0..2 {
            let Ok(tag) = self.send(&capture_line()).await else {
                break;
            };
            if tokio::time::timeout(grace, self.wait_for(&tag))
                .await
                .is_ok_and(|r| r.is_some())
            {
                back = true;
                break;
            }
        }
        let started: Vec<i32> = self.job_groups().difference(before).copied().collect();
        signal_groups(&started, Signal::KILL);
        if !back {
            self.kill_tree();
        }
    }

    /// Writes one line for the shell, numbered and tagged; returns its
    /// tag (see [`control`]).
    async fn send(&mut self, line: &str) -> std::io::Result<String> {
        self.seq += 1;
        let tag = line_tag(self.seq);
        let text = format!("__runbox_seq={tag}; {line}\n");
        self.tag.clone_from(&tag);
        self.control.write_all(text.as_bytes()).await?;
        self.control.flush().await?;
        Ok(tag)
    }

    /// Waits for the line tagged `tag` to be done, keeping its capture in
    /// `self.reply`; `None` when the shell's output ended first.
    async fn wait_for(&mut self, tag: &str) -> Option<()> {
        self.replies.wait_for(tag, &mut self.reply).await
    }

    /// Notes the job groups running now, for the next command (see
    /// [`Shell::jobs`]).
    fn note_jobs(&mut self) {
        self.jobs = Some(self.job_groups());
    }

    /// Whether the job groups are not noted since the last command.
    fn jobs_unknown(&self) -> bool {
        self.jobs.is_none()
    }

    /// Whether the shell process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the ended shell and returns its status.
    async fn reap(&mut self) -> std::process::ExitStatus {
        self.kill_tree();
        self.child.wait().await.unwrap_or_else(|_| exit_status(255))
    }

    /// bash itself: the spawned process, or in a namespace the first bash
    /// below the helpers.
    fn bash_pid(&self) -> Option<Pid> {
        let root = self.child.id().and_then(|p| i32::try_from(p).ok())?;
        let mut queue = vec![root];
        let mut i = 0;
        while let Some(&pid) = queue.get(i) {
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "bash")
            {
                return Pid::from_raw(pid);
            }
            queue.extend(children(pid));
            i += 1;
        }
        None
    }

    /// The process groups of the shell's descendants, other than the
    /// shell's own: one per job (`set -m`).
    fn job_groups(&self) -> BTreeSet<i32> {
        let Some(root) = self.child.id().and_then(|p| i32::try_from(p).ok()) else {
            return BTreeSet::new();
        };
        let bash = match self.bash {
            Some(pid) => Some(pid),
            None => self.bash_pid().map(|p| Pid::as_raw(Some(p))),
        };
        let own: BTreeSet<i32> = [Some(root), bash].into_iter().flatten().collect();
        let mut groups = BTreeSet::new();
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            if let Some(pgid) = process_group(pid)
                && !own.contains(&pgid)
            {
                groups.insert(pgid);
            }
            queue.extend(children(pid));
        }
        groups
    }

    /// Kills the shell and every job it started.
    fn kill_tree(&mut self) {
        let groups: Vec<i32> = self.job_groups().into_iter().collect();
        signal_groups(&groups, Signal::KILL);
        if let Some(root) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            signal_groups(&[root], Signal::KILL);
        }
        if let Some(bash) = self.bash_pid() {
            let _ = rustix::process::kill_process(bash, Signal::KILL);
        }
    }

    /// Ends the shell and everything it started.
    async fn kill(mut self) {
        self.kill_tree();
        let _ = self.child.wait().await;
    }
}

fn signal_groups(groups: &[i32], signal: Signal) {
    for pgid in groups.iter().filter_map(|g| Pid::from_raw(*g)) {
        process::signal_group(pgid, signal);
    }
}

/// The children of `pid`, from every one of its threads.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The process group of `pid`.
fn process_group(pid: i32) -> Option<i32> {
    ProcStat::read(pid).map(|stat| stat.group)
}

/// The shell's first line: no prompt or history, job control on, the
/// session's cwd and variables, the capture function and the EXIT trap
/// that captures a command ending the shell.
fn init_line(cwd: &Path, dir: &Path) -> String {
    format!(
        concat!(
            "PS1=; PS2=; PS4=; builtin set +H -m; builtin set +o history; builtin unset HISTFILE; ",
            "builtin cd -- {cwd} || builtin exit 126; ",
            "builtin mapfile -d '' -t __runbox_env < {env}; ",
            "if [[ ${{#__runbox_env[@]}} -gt 0 ]]; then ",
            "builtin export -- \"${{__runbox_env[@]}}\" 2>/dev/null; fi; ",
            "builtin unset -v __runbox_env; ",
            "__runbox_capture() {{ builtin local __runbox_rc=$1; {{ ",
            "builtin printf '\\0c%s\\0%s\\0' \"$__runbox_seq\" \"$__runbox_rc\"; builtin pwd; builtin printf '\\0'; ",
            "builtin declare -px; builtin printf '\\0'; ",
            "}} 2>/dev/null; }}; ",
            "builtin trap '{{ __runbox_capture $?; }} >| \"$__runbox_dir/{CAPTURE}\" 2>/dev/null' EXIT; ",
            "builtin printf '\\0d%s\\0' \"$__runbox_seq\"",
        ),
        cwd = shell_quote(cwd),
        env = shell_quote(&dir.join("env")),
        CAPTURE = CAPTURE,
    )
}

/// A command's line: its variables, its command with its own streams, the
/// capture, the undoing of its variables, then `d N`.
fn command_line(files: &CommandFiles) -> String {
    let stdin = match files.stdin {
        Some(_) => "\"$__runbox_dir/stdin\"",
        None => "/dev/null",
    };
    format!(
        concat!(
            "__runbox_dir={dir}; __runbox_command={command}; {exports}",
            "{{ builtin eval -- \"$__runbox_command\"; }} < {stdin} > \"$__runbox_dir/stdout\" 2> \"$__runbox_dir/stderr\"; ",
            "__runbox_capture $?; ",
            "{undo}",
            "builtin printf '\\0d%s\\0' \"$__runbox_seq\"",
        ),
        dir = shell_quote(&files.seen),
        command = files.command,
        exports = files.exports,
        undo = files.undo,
        stdin = stdin,
    )
}

/// The capture of a command an interrupt cut short.
fn capture_line() -> String {
    format!(
        "__runbox_capture {}; builtin printf '\\0d%s\\0' \"$__runbox_seq\"",
        crate::TIMEOUT_EXIT_CODE,
    )
}

/// A line's tag: its number and a fresh random part, which a job an
/// earlier line left running cannot know (see [`control`]).
fn line_tag(seq: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    // std seeds these keys from the system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(seq);
    format!("{seq}.{:016x}", hasher.finish())
}

/// Quotes a path as `$'...'`, keeping the line one line.
fn shell_quote(path: &Path) -> String {
    let mut out = String::from("$'");
    for c in path.to_string_lossy().chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn proc_stat_names_the_parent_and_a_clear_peer_is_remembered() {
        let me = std::process::id() as i32;
        let stat = ProcStat::read(me).expect("own stat");
        assert_eq!(stat.parent as u32, std::os::unix::process::parent_id());
        assert_eq!(
            stat.group,
            rustix::process::getpgrp().as_raw_nonzero().get()
        );
        assert!(!stat.executor);
        let mut cleared = None;
        assert!(!runs_under_an_executor(me, &mut cleared));
        assert_eq!(cleared, Some((me, stat.start)));
        // A pid that exists nowhere is refused, and leaves the memory alone.
        assert!(runs_under_an_executor(i32::MAX, &mut cleared));
        assert_eq!(cleared, Some((me, stat.start)));
    }
}
