//! Finding and watching the executor of an execution launched by another
//! process on this machine, and killing what an executor that died left
//! running. Linux only (`/proc`, pidfds); elsewhere nothing is found.

use runbox_core::ExecutionId;

/// An executor process found by its execution id.
pub(crate) struct Executor {
    pid: i32,
    /// A pidfd (Linux ≥ 5.3): signals and exit notification that cannot
    /// reach another process if the pid is reused. `None` on kernels
    /// without pidfds: plain `kill`, and no exit notification.
    #[cfg(target_os = "linux")]
    pidfd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

/// The `runbox-executor` process running `id`: `Some(None)` when there
/// is none, `None` when this platform cannot tell. Blocking: reads /proc.
pub(crate) fn find(id: &ExecutionId) -> Option<Option<Executor>> {
    #[cfg(target_os = "linux")]
    {
        Some(linux::find(id).map(|pid| Executor {
            pid,
            pidfd: linux::pidfd_open(pid),
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = id;
        None
    }
}

/// Kills (SIGKILL) every process that carries `RUNBOX_EXECUTION_ID={id}`
/// in its environment: what a dead executor's command left running.
/// Returns how many were killed. Blocking: reads /proc.
pub(crate) fn kill_leftovers(id: &ExecutionId) -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::kill_leftovers(id)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = id;
        0
    }
}

impl Executor {
    /// Asks the executor to stop (SIGTERM), as the launcher's cancel does.
    pub(crate) fn terminate(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            // ESRCH (already exited) is harmless.
            let _ = rustix::process::pidfd_send_signal(fd.get_ref(), rustix::process::Signal::TERM);
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Resolves once the process has exited; never when that cannot be
    /// watched (no pidfd).
    pub(crate) async fn exited(&self) -> String {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            // A pidfd becomes readable when its process exits; the runtime
            // wakes this task then, with no thread parked on it.
            if fd.readable().await.is_ok() {
                return format!("executor process {} exited", self.pid);
            }
        }
        std::future::pending().await
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;

    use std::time::{Duration, Instant};

    use runbox_core::ExecutionId;
    use rustix::event::{PollFd, PollFlags, Timespec};
    use rustix::process::{Pid, PidfdFlags, Signal};
    use tokio::io::unix::AsyncFd;

    /// The launcher starts each executor with `--execution-id {id}` on its
    /// command line, which stays readable while the (non-dumpable)
    /// executor's environment does not. (Not found by program name:
    /// `RUNBOX_EXECUTOR` may name any binary.) Every process of its command
    /// carries `RUNBOX_EXECUTION_ID={id}` in its environment: when the
    /// executor died, the root of that tree is what its command left
    /// running, which is then watched and signalled in its place.
    pub(crate) fn find(id: &ExecutionId) -> Option<i32> {
        if let Some(executor) = executor_by_argument(id) {
            return Some(executor);
        }
        let tree = processes_with(&env_entry(id));
        let root = |pid: &&i32| parent(**pid).is_none_or(|p| !tree.contains(&p));
        tree.iter().find(root).copied()
    }

    /// The process whose command line has `--execution-id {id}`.
    fn executor_by_argument(id: &ExecutionId) -> Option<i32> {
        let dir = std::fs::read_dir("/proc").ok()?;
        let me = std::process::id() as i32;
        dir.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .filter(|pid| *pid != me)
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.windows(2)
                        .any(|w| w[0] == b"--execution-id" && w[1] == id.as_str().as_bytes())
                })
            })
    }

    /// The parent pid, from `/proc/{pid}/stat` (after the parenthesised
    /// program name: state, then ppid).
    fn parent(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    fn env_entry(id: &ExecutionId) -> Vec<u8> {
        format!("{}={id}", runbox_core::contract::EXECUTION_ID_ENV).into_bytes()
    }

    /// Processes (of this user: others' environments are unreadable)
    /// whose environment holds `entry`, in pid order. Zombies have an
    /// empty command line and are skipped.
    fn processes_with(entry: &[u8]) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        let mut out: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .filter(|pid| *pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
            })
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == entry))
            })
            .collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn kill_leftovers(id: &ExecutionId) -> usize {
        let needle = env_entry(id);
        let mut killed = std::collections::BTreeSet::new();
        // A process may fork between the scan and the kill: a few rounds
        // catch its children (which inherit the variable).
        for _ in 0..5 {
            let pids = processes_with(&needle);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let Some(target) = Pid::from_raw(pid) else {
                    continue;
                };
                // ESRCH (already gone) is harmless.
                if rustix::process::kill_process(target, Signal::KILL).is_ok() {
                    killed.insert(pid);
                }
            }
        }
        wait_gone(&killed, LEFTOVER_EXIT_WAIT);
        killed.len()
    }

    /// How long [`kill_leftovers`] waits for what it killed to be gone.
    const LEFTOVER_EXIT_WAIT: Duration = Duration::from_secs(2);

    /// Waits, at most `limit` in all, until each process has ended: SIGKILL
    /// is delivered at once, but a process inside uninterruptible I/O dies
    /// only when that returns, and a sweep that returns must leave nothing
    /// running. A pidfd becomes readable when its process has ended.
    fn wait_gone(pids: &std::collections::BTreeSet<i32>, limit: Duration) {
        let deadline = Instant::now() + limit;
        for pid in pids.iter().filter_map(|p| Pid::from_raw(*p)) {
            let Ok(fd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) else {
                continue; // already reaped
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(timeout) = Timespec::try_from(left) else {
                return;
            };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            while let Err(rustix::io::Errno::INTR) = rustix::event::poll(&mut fds, Some(&timeout)) {
            }
        }
    }

    /// A pidfd registered with the runtime, so its exit can be awaited.
    /// `None` without pidfd support, or outside a runtime.
    pub(crate) fn pidfd_open(pid: i32) -> Option<AsyncFd<OwnedFd>> {
        let fd = rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::NONBLOCK).ok()?;
        // SAFETY: an OwnedFd is an open descriptor that stays open, and its
        // `as_raw_fd` the same number, for as long as the AsyncFd owns it:
        // the registration ends before the descriptor is closed.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
    }
}
