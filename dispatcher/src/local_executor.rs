//! Finding and watching the executor of an execution launched by another
//! process on this machine (embedded backend), and killing what an executor
//! that died left running.

use runbox_core::ExecutionId;

/// An executor process found by its execution id.
pub(crate) struct Executor {
    pid: i32,
    /// A pidfd (Linux ≥ 5.3): signals and exit notification that cannot
    /// reach another process if the pid is reused. `None` on kernels
    /// without pidfds: plain `kill`, and no exit notification.
    #[cfg(target_os = "linux")]
    pidfd: Option<std::os::fd::OwnedFd>,
}

/// Tells when a found executor process exits.
pub(crate) struct ExitWatch {
    pid: i32,
    /// Resolves when the process has exited; `None` when it cannot be
    /// watched (no pidfd), or once it has resolved.
    exited: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Its drop wakes the watching thread, so an abandoned watch does
    /// not hold a blocking thread until the process exits.
    #[cfg(target_os = "linux")]
    _stop: Option<std::os::fd::OwnedFd>,
    #[cfg(target_os = "linux")]
    pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
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
    /// Starts watching for its exit.
    pub(crate) fn watch(self) -> ExitWatch {
        #[cfg(target_os = "linux")]
        {
            let pidfd = self.pidfd.map(std::sync::Arc::new);
            let (exited, stop) = match &pidfd {
                Some(fd) => match linux::watch_exit(std::sync::Arc::clone(fd)) {
                    Some((rx, stop)) => (Some(rx), Some(stop)),
                    None => (None, None),
                },
                None => (None, None),
            };
            ExitWatch {
                pid: self.pid,
                exited,
                _stop: stop,
                pidfd,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            ExitWatch {
                pid: self.pid,
                exited: None,
            }
        }
    }
}

impl ExitWatch {
    /// Asks the executor to stop (SIGTERM), as the launcher's cancel does.
    pub(crate) fn terminate(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            linux::pidfd_signal(fd, libc::SIGTERM);
            return;
        }
        // SAFETY: plain signal syscall; ESRCH (already exited) is harmless.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }

    /// Resolves once the process has exited; never when that cannot be
    /// watched.
    pub(crate) async fn exited(&mut self) -> String {
        match self.exited.take() {
            Some(rx) => match rx.await {
                Ok(()) => format!("executor process {} exited", self.pid),
                // The watching thread failed: nothing more to learn.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;

    use runbox_core::ExecutionId;
    use tokio::sync::oneshot;

    /// The launcher gives each executor `RUNBOX_EXECUTION_ID={id}` in its
    /// environment, and every process of its command inherits it: the
    /// executor is the root of that tree, the one whose parent lacks
    /// it. (Not found by program name: `RUNBOX_EXECUTOR` may name any
    /// binary.) When the executor died, the root is what its command
    /// left running, which is then watched and signalled in its place.
    pub(crate) fn find(id: &ExecutionId) -> Option<i32> {
        let tree = processes_with(&env_entry(id));
        let root = |pid: &&i32| parent(**pid).is_none_or(|p| !tree.contains(&p));
        tree.iter().find(root).copied()
    }

    /// The parent pid, from `/proc/{pid}/stat` (after the parenthesised
    /// program name: state, then ppid).
    fn parent(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    fn env_entry(id: &ExecutionId) -> Vec<u8> {
        format!("RUNBOX_EXECUTION_ID={id}").into_bytes()
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
        let mut killed = 0;
        // A process may fork between the scan and the kill: a few rounds
        // catch its children (which inherit the variable).
        for _ in 0..5 {
            let pids = processes_with(&needle);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: plain signal syscall on a pid just seen; ESRCH
                // (already gone) is harmless.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
        killed
    }

    pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd
        // (or -1); no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative return is a fresh fd that we own.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub(crate) fn pidfd_signal(fd: &OwnedFd, signal: i32) {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags;
        // ESRCH (already exited) is harmless.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// A pidfd becomes readable when its process exits. A blocking
    /// thread waits for that in `poll` (tokio's fd readiness needs a
    /// feature this crate does not enable), together with the read end
    /// of a pipe whose write end is returned: dropping it wakes and
    /// ends the thread.
    pub(crate) fn watch_exit(pidfd: Arc<OwnedFd>) -> Option<(oneshot::Receiver<()>, OwnedFd)> {
        let mut ends = [0; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both fds were just created and are owned here.
        let (read, write) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut fds = [
                libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: read.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: `fds` is a valid array of two pollfds.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n > 0 && fds[0].revents != 0 && fds[1].revents == 0 {
                    let _ = tx.send(());
                }
                return;
            }
        });
        Some((rx, write))
    }
}
