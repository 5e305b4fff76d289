//! The local launcher: each execution is a child process of
//! `runbox-executor`, given the same configuration Cloud Run gives it, but
//! not in its environment: the variables travel as one JSON object on the
//! executor's standard input, which it reads before it runs anything, and
//! the execution id as an argument. So a command, which may run as the same
//! user, finds no configuration in its executor's `/proc/PID/environ`
//! (which the non-dumpable executor closes as well). Executions that another
//! process on this machine launched are found in `/proc` by their execution
//! id (`procfs`).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use futures::future::BoxFuture;
use runbox_core::contract::{EXECUTION_ID_ENV, RUN_AS_USER_ENV, TRACEPARENT_ENV};
use runbox_core::credentials::STORE_TOKEN_ENV;
use runbox_core::{Config, ExecutionId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launcher::{
    Ended, ExecutionState, ForeignExecution, LaunchError, LaunchSpec, Launcher, Observed,
    WarmLaunch,
};

mod procfs;
mod warm;

/// Variables of the dispatcher's own environment put in the executor's
/// environment: what a shell needs, the log filter and format, and the credentials
/// path Google's auth library reads from the environment itself. Nothing
/// else of the caller's environment reaches the executor.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TMPDIR",
    "RUNBOX_LOG",
    "RUNBOX_LOG_FORMAT",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// Executor settings that are not part of [`Config`], forwarded from the
/// dispatcher's environment in the configuration the executor reads.
const FORWARDED_SETTINGS: &[&str] = &[
    RUN_AS_USER_ENV,
    runbox_core::session_cwd::WORKSPACE_PATH_ENV,
    runbox_core::session_cwd::WORKSPACE_NAMESPACE_ENV,
    runbox_core::confinement::LANDLOCK_ENV,
    runbox_core::confinement::LIMIT_NOFILE_ENV,
    runbox_core::confinement::LIMIT_NPROC_ENV,
    runbox_core::confinement::LIMIT_AS_ENV,
    runbox_core::confinement::LANDLOCK_WRITABLE_ENV,
];

/// The executor's argument naming its execution.
const EXECUTION_ID_ARG: &str = "--execution-id";
/// The executor's argument saying its configuration comes on stdin.
const CONFIG_STDIN_ARG: &str = "--config-stdin";

/// How many lines of an executor's stderr are kept for the LOST message.
const STDERR_TAIL: usize = 5;

/// Launches executions as local child processes.
pub struct LocalLauncher {
    executor: PathBuf,
    env: Vec<(String, String)>,
    /// The executor's configuration variables (without the execution id).
    config: std::collections::BTreeMap<String, String>,
    running: DashMap<ExecutionId, Running>,
    slots: Arc<Semaphore>,
    /// Where warm executions put their sockets (see [`warm`]).
    warm_dir: PathBuf,
    /// One task per child, reaping it and recording how it ended.
    tasks: TaskTracker,
    stop: CancellationToken,
}

struct Running {
    pid: Option<u32>,
    ended: watch::Receiver<Option<Ended>>,
}

impl LocalLauncher {
    /// A launcher for the given configuration; at most `max_running`
    /// executors run at once (later launches wait for a slot).
    pub fn new(config: &Config, max_running: usize) -> Result<Self, LaunchError> {
        let executor = find_executor(config.launcher.executor_bin())?;
        let env: Vec<(String, String)> = PASS_THROUGH
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        let mut settings: std::collections::BTreeMap<String, String> = config
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        settings.extend(
            FORWARDED_SETTINGS
                .iter()
                .chain(&runbox_core::contract::TELEMETRY_ENV)
                .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v))),
        );
        if let runbox_core::config::LauncherConfig::Local(local) = &config.launcher {
            settings.extend(local.executor_settings.clone());
        }
        Ok(Self {
            executor,
            env,
            config: settings,
            running: DashMap::new(),
            warm_dir: warm::socket_dir(config),
            slots: Arc::new(Semaphore::new(max_running.max(1))),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// The executor binary used.
    pub fn executor(&self) -> &Path {
        &self.executor
    }
}

/// Finds `runbox-executor`: the configured path (`RUNBOX_EXECUTOR`) when
/// one is set; otherwise beside the running binary, one directory up (test
/// binaries live in `target/*/deps/`), then the first executable file of
/// that name in a directory on `PATH`. A configured path that is missing is
/// an error rather than a reason to look elsewhere: running some other
/// executor than the one asked for would hide the mistake.
pub fn find_executor(configured: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let exe = std::env::current_exe().ok();
    search_executor(
        configured,
        exe.as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

/// The file name looked for.
const EXECUTOR_NAME: &str = "runbox-executor";

/// How many `PATH` directories the not-found message names before it
/// summarises the rest.
const PATH_DIRS_SHOWN: usize = 8;

/// [`find_executor`] over explicit inputs (the running binary, the value of
/// `PATH`), so the search order is testable without touching the process
/// environment.
fn search_executor(
    configured: Option<&Path>,
    current_exe: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, LaunchError> {
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        return Err(LaunchError::ExecutorNotFound {
            searched: format!("{} (the configured path)", path.display()),
        });
    }
    let mut searched = Vec::new();
    let mut dir = current_exe.and_then(Path::parent).map(Path::to_owned);
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(EXECUTOR_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
        dir = d.parent().map(Path::to_owned);
    }
    // As a shell looks a command up; an empty entry would mean the current
    // directory there, which is not a place to pick up an executor from.
    let path_dirs: Vec<PathBuf> = path_var
        .map(|v| {
            std::env::split_paths(v)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    for d in &path_dirs {
        let candidate = d.join(EXECUTOR_NAME);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    searched.push(describe_path_dirs(&path_dirs));
    Err(LaunchError::ExecutorNotFound {
        searched: searched.join(", "),
    })
}

/// A regular file (or a link to one) with an execute bit set.
fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `PATH` part of the not-found message: the directories in order, the
/// tail summarised when the list is long.
fn describe_path_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "PATH (empty or not set)".to_owned();
    }
    let mut shown: Vec<String> = dirs
        .iter()
        .take(PATH_DIRS_SHOWN)
        .map(|d| d.display().to_string())
        .collect();
    if dirs.len() > PATH_DIRS_SHOWN {
        shown.push(format!("and {} more", dirs.len() - PATH_DIRS_SHOWN));
    }
    format!("the directories on PATH ({})", shown.join(", "))
}

impl LocalLauncher {
    /// Starts the executor; `hold`, when given, becomes its standard
    /// output; `warm` makes it a warm execution listening on `socket`.
    /// A streamed `stdin` of its first command travels on its standard
    /// output instead, a socket made here (the command has no delivery
    /// connection: it is named on the executor's command line).
    async fn spawn(
        &self,
        spec: LaunchSpec,
        hold: Option<File>,
        warm: Option<(&WarmLaunch, &Path)>,
        stdin: Option<crate::StdinFeed>,
    ) -> Result<(), LaunchError> {
        let mut permit = Some(
            self.slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| LaunchError::Closed)?,
        );
        let id = spec.execution_id.clone();
        let mut config = self.config.clone();
        config.insert(EXECUTION_ID_ENV.to_owned(), id.to_string());
        // On standard input, like the rest: never in an environment a
        // command could read.
        if let Some(token) = &spec.store_token {
            config.insert(STORE_TOKEN_ENV.to_owned(), token.secret().to_owned());
        }
        if let Some((warm, socket)) = warm {
            config.extend(warm::executor_settings(warm, socket));
            // A warm execution lives on after its first command, bounded
            // by its idle timeout rather than by the slots.
            permit = None;
        }
        // With the configuration, not in the environment, like every other
        // setting: the executor's environment is what its commands inherit.
        if let Some(tp) = &spec.traceparent {
            config.insert(TRACEPARENT_ENV.to_owned(), tp.clone());
        }
        let config = serde_json::to_vec(&config).map_err(|e| LaunchError::Spawn {
            id: id.clone(),
            retryable: false,
            source: Box::new(e),
        })?;
        let (stdin_ours, stdin_theirs) = match &stdin {
            Some(_) => {
                let (ours, theirs) =
                    std::os::unix::net::UnixStream::pair().map_err(|e| LaunchError::Spawn {
                        id: id.clone(),
                        retryable: true,
                        source: Box::new(e),
                    })?;
                (Some(ours), Some(std::os::fd::OwnedFd::from(theirs)))
            }
            None => (None, None),
        };
        let mut cmd = Command::new(&self.executor);
        // The id as an argument too: `/proc/PID/cmdline` stays readable
        // when the executor is not, and `procfs` finds executors by it.
        cmd.arg(EXECUTION_ID_ARG)
            .arg(id.as_str())
            .arg(CONFIG_STDIN_ARG)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // Standard input carries the configuration (read, then closed).
            // Standard output, which the executor never writes, keeps the
            // session's lock as an inherited descriptor: a dying dispatcher's
            // lock is then not released while the executor runs. So a
            // `runbox exec` killed with SIGKILL leaves its command to run to
            // its end (nothing can ask it to stop), and the session's next
            // command waits until the orphan has saved its state and exited
            // instead of overlapping it. The command gets its own standard
            // streams, so background processes it starts never hold the lock.
            .stdin(Stdio::piped())
            .stdout(match (hold, &stdin_theirs) {
                (Some(hold), _) => Stdio::from(hold),
                (None, Some(theirs)) => {
                    Stdio::from(theirs.try_clone().map_err(|e| LaunchError::Spawn {
                        id: id.clone(),
                        retryable: true,
                        source: Box::new(e),
                    })?)
                }
                (None, None) => Stdio::null(),
            })
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C meant for the CLI must not kill the
            // executor before it writes a result.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| LaunchError::Spawn {
            id: id.clone(),
            retryable: matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) || e.raw_os_error() == Some(libc::EAGAIN),
            source: Box::new(e),
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // Far below a pipe's buffer, so this does not wait for the
            // executor to read. A failure means the executor already
            // ended, which its exit status reports.
            if let Err(e) = stdin.write_all(&config).await {
                tracing::debug!(execution = %id, "pass configuration to the executor: {e}");
            }
        }
        // Only the executor holds the other end now: its end (or the
        // command's `done`) is the end of the command's input.
        drop(cmd);
        drop(stdin_theirs);
        if let (Some(feed), Some(ours)) = (stdin, stdin_ours) {
            attach_stdin(ours, feed);
        }
        let (tx, rx) = watch::channel(None);
        self.running.insert(
            id.clone(),
            Running {
                pid: child.id(),
                ended: rx,
            },
        );
        if warm.is_some() {
            // Its commands' ends are what callers wait for; its own end
            // (idle, closed) matters only to the first command.
            tracing::debug!(execution = %id, "warm execution started");
        }
        let stderr = child.stderr.take();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let tail = async {
                let mut tail = VecDeque::with_capacity(STDERR_TAIL);
                if let Some(stderr) = stderr {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(execution = %id, "executor: {line}");
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
                tail
            };
            // At shutdown the child is left running (it is in its own
            // process group and writes its own result); only the watch
            // ends, without a status, which `ended()` never turns into one.
            let (status, tail) = tokio::select! {
                both = async { tokio::join!(child.wait(), tail) } => both,
                () = stop.cancelled() => return,
            };
            let ended = match status {
                Ok(status) => Ended {
                    succeeded: status.success(),
                    message: describe_exit(status, &tail),
                },
                Err(e) => Ended {
                    succeeded: false,
                    message: format!("waiting for the executor failed: {e}"),
                },
            };
            let _ = tx.send(Some(ended));
        });
        Ok(())
    }
}

impl LocalLauncher {
    /// Delivers the command to the session's running warm execution, or
    /// starts one for it.
    async fn deliver_warm(
        &self,
        spec: LaunchSpec,
        warm: &WarmLaunch,
        socket: &Path,
        mut stdin: Option<crate::StdinFeed>,
    ) -> Result<(), LaunchError> {
        match warm::deliver(socket, &spec.execution_id, &self.stop, &mut stdin).await? {
            Some(delivered) => {
                self.running.insert(
                    spec.execution_id.clone(),
                    Running {
                        pid: delivered.pid,
                        ended: delivered.ended,
                    },
                );
                Ok(())
            }
            None => self.spawn(spec, None, Some((warm, socket)), stdin).await,
        }
    }
}

/// Follows the first command's lines on `ours` and streams `feed` to it
/// once it has started (see [`crate::stdin_stream::follow`]).
fn attach_stdin(ours: std::os::unix::net::UnixStream, feed: crate::StdinFeed) {
    let conn = ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours));
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "streamed stdin cannot be attached; the command reads none");
            feed.end();
            return;
        }
    };
    let (read, write) = conn.into_split();
    let lines = BufReader::new(tokio::io::AsyncReadExt::take(
        read,
        4 * runbox_core::warm::wire::MAX_LINE as u64,
    ));
    tokio::spawn(crate::stdin_stream::follow(lines, write, feed));
}

#[async_trait]
impl Launcher for LocalLauncher {
    fn describe(&self) -> String {
        format!("local:{}", self.executor.display())
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), LaunchError> {
        self.spawn(spec, None, None, None).await
    }

    async fn launch_holding(&self, spec: LaunchSpec, hold: File) -> Result<(), LaunchError> {
        self.spawn(spec, Some(hold), None, None).await
    }

    async fn launch_warm(&self, spec: LaunchSpec, warm: &WarmLaunch) -> Result<(), LaunchError> {
        let Some(socket) = warm::socket_path(&self.warm_dir, &warm.session) else {
            tracing::warn!(
                session = %warm.session,
                dir = %self.warm_dir.display(),
                "the warm socket path would be too long; running the command oneshot"
            );
            return self.spawn(spec, None, None, None).await;
        };
        self.deliver_warm(spec, warm, &socket, None).await
    }

    fn streams_stdin(&self, session: &runbox_core::SessionId) -> bool {
        // A session whose socket path would not fit runs oneshot: its
        // command gets its whole stdin at its start.
        warm::socket_path(&self.warm_dir, session).is_some()
    }

    async fn launch_warm_stdin(
        &self,
        spec: LaunchSpec,
        warm: &WarmLaunch,
        stdin: crate::StdinFeed,
    ) -> Result<(), LaunchError> {
        let Some(socket) = warm::socket_path(&self.warm_dir, &warm.session) else {
            return Err(LaunchError::StdinNotStreamed {
                id: spec.execution_id,
            });
        };
        self.deliver_warm(spec, warm, &socket, Some(stdin)).await
    }

    async fn warm_execution(&self, session: &runbox_core::SessionId) -> Option<String> {
        let socket = warm::socket_path(&self.warm_dir, session)?;
        warm::ping(&socket).await
    }

    async fn close_warm(&self, session: &runbox_core::SessionId) -> bool {
        match warm::socket_path(&self.warm_dir, session) {
            Some(socket) => warm::close(&socket).await,
            None => false,
        }
    }

    async fn ended(&self, id: &ExecutionId) -> Ended {
        let rx = self.running.get(id).map(|r| r.ended.clone());
        let Some(mut rx) = rx else {
            return Ended {
                succeeded: false,
                message: format!("execution {id} is not known to this launcher"),
            };
        };
        if let Ok(v) = rx.wait_for(Option::is_some).await
            && let Some(ended) = v.clone()
        {
            return ended;
        }
        // The watch closed without a status: the launcher stopped (its
        // task returned at shutdown) while the executor ran on, and it
        // writes its own result. Reporting an end here would have the
        // caller settle a running execution as LOST; the caller's other
        // ends of the wait (the notifier closing, its deadline, the
        // process exiting) end it instead.
        std::future::pending().await
    }

    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, LaunchError> {
        Ok(match self.running.get(id) {
            None => ExecutionState::Unknown,
            Some(r) => match r.ended.borrow().clone() {
                None => ExecutionState::Running,
                Some(e) => ExecutionState::Ended(e),
            },
        })
    }

    async fn cancel(&self, id: &ExecutionId) -> Result<(), LaunchError> {
        // Only while it has not been reaped: afterwards its pid may belong
        // to another process.
        let pid = self
            .running
            .get(id)
            .filter(|r| r.ended.borrow().is_none())
            .and_then(|r| r.pid);
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            // ESRCH (already exited) is harmless.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        Ok(())
    }

    fn release(&self, id: &ExecutionId) {
        self.running.remove(id);
    }

    async fn observe(&self, id: &ExecutionId) -> Observed {
        let id = id.clone();
        match tokio::task::spawn_blocking(move || procfs::find(&id)).await {
            Ok(Some(Some(executor))) => Observed::Running(Box::new(executor)),
            Ok(Some(None)) => Observed::Gone,
            // Not Linux, or the lookup task failed: nothing to watch.
            Ok(None) | Err(_) => Observed::Unobservable,
        }
    }

    async fn sweep(&self, id: &ExecutionId) -> usize {
        let id = id.clone();
        tokio::task::spawn_blocking(move || procfs::kill_leftovers(&id))
            .await
            .unwrap_or(0)
    }

    async fn shutdown(&self) {
        self.slots.close();
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl ForeignExecution for procfs::Executor {
    fn terminate(&self) {
        procfs::Executor::terminate(self);
    }

    fn exited(&mut self) -> BoxFuture<'_, String> {
        Box::pin(procfs::Executor::exited(self))
    }
}

fn describe_exit(status: std::process::ExitStatus, tail: &VecDeque<String>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut msg = match (status.code(), status.signal()) {
        (Some(code), _) => format!("executor exited with status {code}"),
        (None, Some(sig)) => format!("executor was killed by signal {sig}{}", signal_name(sig)),
        _ => "executor ended".to_owned(),
    };
    if let Some(last) = tail.iter().rev().find(|l| !l.trim().is_empty()) {
        msg.push_str(": ");
        msg.push_str(last.trim());
    }
    msg
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// An executable `runbox-executor` in `dir`.
    fn executor_in(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(EXECUTOR_NAME);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn path_var(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs).unwrap()
    }

    /// `root/target/debug/deps/test-binary`, the layout cargo gives tests.
    fn test_exe(root: &Path) -> PathBuf {
        let deps = root.join("target/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        deps.join("test-binary")
    }

    fn not_found_message(result: Result<PathBuf, LaunchError>) -> String {
        match result {
            Err(e @ LaunchError::ExecutorNotFound { .. }) => e.to_string(),
            other => panic!("expected ExecutorNotFound, got {other:?}"),
        }
    }

    #[test]
    fn the_configured_path_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let configured = executor_in(&tmp.path().join("configured"));
        let exe = test_exe(tmp.path());
        executor_in(exe.parent().unwrap());
        let on_path = tmp.path().join("bin");
        executor_in(&on_path);
        let found =
            search_executor(Some(&configured), Some(&exe), Some(&path_var(&[&on_path]))).unwrap();
        assert_eq!(found, configured);
    }

    #[test]
    fn a_missing_configured_path_is_not_replaced_by_another() {
        let tmp = tempfile::tempdir().unwrap();
        let configured = tmp.path().join("nowhere/runbox-executor");
        let on_path = tmp.path().join("bin");
        executor_in(&on_path);
        let msg = not_found_message(search_executor(
            Some(&configured),
            None,
            Some(&path_var(&[&on_path])),
        ));
        assert!(msg.contains(&configured.display().to_string()), "{msg}");
    }

    #[test]
    fn beside_the_binary_then_one_up_come_before_path() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = test_exe(tmp.path());
        let on_path = tmp.path().join("bin");
        executor_in(&on_path);
        let path = path_var(&[&on_path]);

        let one_up = executor_in(&tmp.path().join("target/debug"));
        assert_eq!(
            search_executor(None, Some(&exe), Some(&path)).unwrap(),
            one_up
        );
        let beside = executor_in(exe.parent().unwrap());
        assert_eq!(
            search_executor(None, Some(&exe), Some(&path)).unwrap(),
            beside
        );
    }

    #[test]
    fn path_is_searched_in_order_for_an_executable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = test_exe(tmp.path());
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        // A file of that name without an execute bit is not a candidate.
        let not_executable = tmp.path().join("not-executable");
        std::fs::create_dir_all(&not_executable).unwrap();
        std::fs::write(not_executable.join(EXECUTOR_NAME), "").unwrap();
        let first = executor_in(&tmp.path().join("first"));
        let second = executor_in(&tmp.path().join("second"));
        let mut path = OsString::from(":");
        path.push(path_var(&[
            &empty,
            &not_executable,
            first.parent().unwrap(),
            second.parent().unwrap(),
        ]));
        path.push("::");
        assert_eq!(
            search_executor(None, Some(&exe), Some(&path)).unwrap(),
            first
        );
    }

    #[test]
    fn nothing_found_names_every_place_and_the_fixes() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = test_exe(tmp.path());
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let msg = not_found_message(search_executor(
            None,
            Some(&exe),
            Some(&path_var(&[&a, &b])),
        ));
        for place in [
            exe.parent().unwrap().join(EXECUTOR_NAME),
            tmp.path().join("target/debug").join(EXECUTOR_NAME),
            a,
            b,
        ] {
            assert!(msg.contains(&place.display().to_string()), "{msg}");
        }
        assert!(msg.contains("PATH"), "{msg}");
        assert!(msg.contains("RUNBOX_EXECUTOR"), "{msg}");
        assert!(msg.contains("cargo build"), "{msg}");

        let msg = not_found_message(search_executor(None, Some(&exe), None));
        assert!(msg.contains("PATH (empty or not set)"), "{msg}");
    }

    #[test]
    fn a_long_path_is_shortened_in_the_message() {
        let dirs: Vec<PathBuf> = (0..20)
            .map(|i| PathBuf::from(format!("/nonexistent/runbox-test/{i}")))
            .collect();
        let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let msg = not_found_message(search_executor(None, None, Some(&path_var(&refs))));
        assert!(msg.contains("/nonexistent/runbox-test/7,"), "{msg}");
        assert!(!msg.contains("/nonexistent/runbox-test/8"), "{msg}");
        assert!(msg.contains("and 12 more"), "{msg}");
    }
}
