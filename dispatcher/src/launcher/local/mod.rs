//! The local launcher: each execution is a child process of
//! `runbox-executor`, given the same environment contract Cloud Run gives it.
//! Executions that another process on this machine launched are found in
//! `/proc` by their execution id (`procfs`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use futures::future::BoxFuture;
use runbox_core::contract::{EXECUTION_ID_ENV, TRACEPARENT_ENV};
use runbox_core::{Config, ExecutionId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launcher::{
    Ended, ExecutionState, ForeignExecution, LaunchError, LaunchSpec, Launcher, Observed,
};

mod procfs;

/// Variables of the dispatcher's own environment handed to the executor:
/// what a shell needs, and the emulator endpoints. Nothing else leaks.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TMPDIR",
    "RUNBOX_LOG",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// How many lines of an executor's stderr are kept for the LOST message.
const STDERR_TAIL: usize = 5;

/// Launches executions as local child processes.
pub struct LocalLauncher {
    executor: PathBuf,
    env: Vec<(String, String)>,
    running: DashMap<ExecutionId, Running>,
    slots: Arc<Semaphore>,
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
        let mut env: Vec<(String, String)> = PASS_THROUGH
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        env.extend(config.to_env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        Ok(Self {
            executor,
            env,
            running: DashMap::new(),
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

/// Finds `runbox-executor`: the configured path, else beside the running
/// binary, else one directory up (test binaries live in `target/*/deps/`).
pub fn find_executor(configured: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let mut searched = Vec::new();
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        searched.push(path.to_owned());
    } else if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_owned);
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join("runbox-executor");
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate);
            dir = d.parent().map(Path::to_owned);
        }
    }
    Err(LaunchError::ExecutorNotFound {
        searched: searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[async_trait]
impl Launcher for LocalLauncher {
    fn describe(&self) -> String {
        format!("local:{}", self.executor.display())
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), LaunchError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LaunchError::Closed)?;
        let id = spec.execution_id.clone();
        let mut cmd = Command::new(&self.executor);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(EXECUTION_ID_ENV, id.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C meant for the CLI must not kill the
            // executor before it writes a result.
            .process_group(0);
        if let Some(tp) = &spec.traceparent {
            cmd.env(TRACEPARENT_ENV, tp);
        }
        let mut child = cmd.spawn().map_err(|e| LaunchError::Spawn {
            id: id.clone(),
            retryable: matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) || e.raw_os_error() == Some(libc::EAGAIN),
            source: Box::new(e),
        })?;
        let (tx, rx) = watch::channel(None);
        self.running.insert(
            id.clone(),
            Running {
                pid: child.id(),
                ended: rx,
            },
        );
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
            // process group and writes its own result); only the watch ends.
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

    async fn ended(&self, id: &ExecutionId) -> Ended {
        let rx = self.running.get(id).map(|r| r.ended.clone());
        let Some(mut rx) = rx else {
            return Ended {
                succeeded: false,
                message: format!("execution {id} is not known to this launcher"),
            };
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            Err(_) => Ended {
                succeeded: false,
                message: "executor watch ended without a status".to_owned(),
            },
        }
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
        let pid = self.running.get(id).and_then(|r| r.pid);
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
