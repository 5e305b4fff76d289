//! Running the shell as its own process group, with a timeout that kills the
//! whole group (grandchildren too), and sweeping up anything that escaped
//! the group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::process::Command;

/// How the shell process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself (any status, or a signal it caused itself).
    Exited(ExitStatus),
    /// The timeout passed; the group was terminated.
    TimedOut,
    /// The executor was asked to stop (SIGTERM/SIGINT); the group was terminated.
    Cancelled,
}

/// Everything needed to start the shell.
pub struct Spawn<'a> {
    /// The `bash -c` script.
    pub script: &'a str,
    /// The complete environment (nothing is inherited).
    pub env: &'a BTreeMap<String, String>,
    /// What standard input reads; `None`: nothing (`/dev/null`).
    pub stdin: Option<std::fs::File>,
    /// Where standard output goes (a capture pipe, see [`crate::output`]).
    pub stdout: Stdio,
    /// Where standard error goes.
    pub stderr: Stdio,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The user the shell runs as; `None` for the executor's own.
    pub run_as: Option<&'a crate::identity::Identity>,
    /// The workspace namespace the shell runs in; `None`: the executor's
    /// own view of the filesystem.
    pub namespace: Option<&'a crate::namespace::Enter>,
    /// Without a namespace: the helper binary that applies the spec and
    /// then becomes the shell (the namespace's init applies it otherwise).
    pub confine: Option<(&'a Path, &'a crate::confine::Spec)>,
}

/// Runs the shell to its end. Only the shell is waited for, never its
/// output: a grandchild that keeps stdout open cannot make us wait here
/// (the capture ends once the group kill and the sweep have ended it).
pub async fn run(
    spawn: Spawn<'_>,
    cancel: impl std::future::Future<Output = ()>,
) -> std::io::Result<Ending> {
    // No `current_dir`: the script changes directory itself, which lets the
    // standard library spawn with posix_spawn (vfork) instead of fork.
    let mut command = bash_command(spawn.namespace, spawn.confine);
    // With a namespace, the helper enters it as this user.
    if let Some(who) = spawn.run_as {
        // The standard library also drops the supplementary groups (root's)
        // when it changes the uid.
        command.uid(who.uid).gid(who.gid);
    }
    let mut child = command
        .arg("--noprofile")
        .arg("--norc")
        .arg("-c")
        .arg(spawn.script)
        .arg("bash")
        .env_clear()
        .envs(spawn.env)
        .stdin(spawn.stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(spawn.stdout)
        .stderr(spawn.stderr)
        // Its own process group, so one signal reaches every descendant
        // that did not deliberately leave it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw);

    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status?),
        () = tokio::time::sleep(spawn.timeout) => Ending::TimedOut,
        () = cancel => Ending::Cancelled,
    };
    if !matches!(ending, Ending::Exited(_)) {
        if let Some(pgid) = pgid {
            signal_group(pgid, Signal::TERM);
        }
        if tokio::time::timeout(spawn.kill_grace, child.wait())
            .await
            .is_err()
        {
            if let Some(pgid) = pgid {
                signal_group(pgid, Signal::KILL);
            }
            child.wait().await?;
        }
    }
    // Background jobs (`cmd &`) stay in the group after the shell exits; in
    // oneshot mode nothing outlives its execution, as on Cloud Run where the
    // container stops.
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::KILL);
    }
    Ok(ending)
}

/// The bash binary: looked up once, at a fixed place where it usually is,
/// rather than searched along PATH on every command.
pub(crate) fn bash_path() -> &'static Path {
    static BASH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASH.get_or_init(|| {
        ["/bin/bash", "/usr/bin/bash", "/usr/local/bin/bash"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("bash"))
    })
}

/// The exit code the protocol reports for a status: the code, or 128+N for
/// signal N (as a shell reports it).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    // ESRCH (group gone) is the expected outcome once everything has exited.
    let _ = rustix::process::kill_process_group(pgid, signal);
}

/// Makes this process the reaper of its orphaned descendants, so processes
/// that escape the group (`setsid`, double fork) are still found by
/// [`sweep_descendants`]. Linux only; elsewhere the group kill is all we do.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // Any non-zero argument sets the attribute (rustix passes it as a pid).
    // Failure only weakens the sweep; the group kill still applies.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// Kills and reaps every remaining child of this process (orphans adopted as
/// subreaper). Call only after the shell itself has been waited for, so no
/// status that tokio expects is stolen.
pub fn sweep_descendants() -> usize {
    #[cfg(target_os = "linux")]
    {
        let mut killed = 0;
        // Each round kills the current children; their own children are then
        // re-parented to us and show up in the next round.
        for _ in 0..50 {
            let children = list_children();
            if children.is_empty() {
                break;
            }
            for pid in children {
                // Failures (already gone) are harmless.
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                killed += 1;
            }
        }
        killed
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(target_os = "linux")]
fn list_children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out.into_iter().filter_map(Pid::from_raw).collect()
}

/// bash, started the way a command's shell is: through the namespace's
/// init when there is a namespace, else through the confinement helper
/// when there is something to apply, else directly. Arguments for bash
/// follow.
pub fn bash_command(
    namespace: Option<&crate::namespace::Enter>,
    confine: Option<(&Path, &crate::confine::Spec)>,
) -> Command {
    match (namespace, confine) {
        (Some(enter), _) => enter.command(bash_path()),
        (None, Some((helper, spec))) => {
            let mut command = Command::new(helper);
            command
                .arg(crate::confine::CONFINE_ARG)
                .args(spec.to_args())
                .arg("--")
                .arg(bash_path());
            command
        }
        (None, None) => Command::new(bash_path()),
    }
}
