//! A task attempt as a local process that stands in for a container: the
//! leader of its own process group, so that everything it starts can be
//! stopped together, as a container's processes are.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How the container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    Exited(Exit),
    /// The timeout passed; the group was stopped.
    TimedOut,
    /// The cancel token fired; the group was stopped.
    Cancelled,
}

/// A running attempt. Dropping it (for instance when the runtime shuts down
/// under it) kills its whole process group, so no task outlives the emulator.
#[derive(Debug)]
pub(crate) struct TaskProcess {
    child: Child,
    pgid: i32,
    /// Whether the group may still hold processes we are responsible for.
    armed: bool,
}

impl TaskProcess {
    /// Spawns `command` as the leader of a new process group.
    pub(crate) fn spawn(command: &mut Command) -> io::Result<Self> {
        // Its own group: a grandchild that keeps running (or keeps an
        // inherited pipe open) is reached by killpg, never left behind.
        command.process_group(0);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
        let pgid = i32::try_from(pid).map_err(io::Error::other)?;
        Ok(Self {
            child,
            pgid,
            armed: true,
        })
    }

    /// Waits for the main process to exit, the timeout to pass, or `cancel`.
    /// Whatever happens, the group is gone (SIGKILLed) when this returns:
    /// when a container's main process exits, its other processes die with it.
    pub(crate) async fn run(
        mut self,
        timeout: Duration,
        cancel: &CancellationToken,
        grace: Duration,
    ) -> io::Result<AttemptEnd> {
        let stop = tokio::select! {
            status = self.child.wait() => {
                let status = status?;
                self.kill_group(Signal::KILL);
                self.armed = false;
                let exit = match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Code(-1),
                };
                return Ok(AttemptEnd::Exited(exit));
            }
            () = tokio::time::sleep(timeout) => AttemptEnd::TimedOut,
            () = cancel.cancelled() => AttemptEnd::Cancelled,
        };
        self.stop(grace).await?;
        Ok(stop)
    }

    /// SIGTERM to the group, SIGKILL after `grace` (or as soon as the main
    /// process has exited: what is left of the group gets no more time).
    async fn stop(&mut self, grace: Duration) -> io::Result<()> {
        self.kill_group(Signal::TERM);
        // Err means the grace passed; either way SIGKILL comes next.
        let _ = tokio::time::timeout(grace, self.child.wait()).await;
        self.kill_group(Signal::KILL);
        self.child.wait().await?;
        self.armed = false;
        Ok(())
    }

    fn kill_group(&self, signal: Signal) {
        // The pgid cannot name another group while any member of ours is
        // alive (Linux keeps a pid reserved while it is in use as a pgid);
        // once the group is empty the call fails with ESRCH, which is the
        // wanted outcome.
        let Some(pgid) = Pid::from_raw(self.pgid) else {
            return;
        };
        match rustix::process::kill_process_group(pgid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pgid, ?signal, error = %e, "killpg failed");
            }
        }
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        if self.armed {
            self.kill_group(Signal::KILL);
        }
    }
}
