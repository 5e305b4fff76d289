//! The per-task supervisor: `runbox-cloudrun-emulator __task GRACE_MS --
//! PROGRAM ARGS...`, a process between the emulator and a task's main
//! process that stands in for a container's boundary.
//!
//! A process group alone is not one: a task's main process may put its own
//! children in groups (or sessions) of their own, as `runbox-executor` does
//! with the command's shell, and when the main process dies those children
//! would be orphaned and live on. The supervisor is their subreaper, so
//! every orphan of the task becomes its child, and when the main process
//! ends (exits, is killed, or is stopped after a SIGTERM and the grace) it
//! kills and reaps every process left, then exits with the main process's
//! status. Cloud Run does the same when a container's main process ends.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions, getpid, kill_process};

/// The first argument that makes the emulator's binary a task supervisor.
pub const SUPERVISE_ARG: &str = "__task";

/// Exit status when the supervisor's arguments are unusable (EX_USAGE).
const EX_USAGE: u8 = 64;

/// Runs as the supervisor of one task; `args` follow [`SUPERVISE_ARG`]:
/// `GRACE_MS -- PROGRAM ARGS...`. Returns the main process's exit status
/// (128 + N when a signal N other than SIGKILL ended it; a SIGKILL is
/// passed on as such).
pub fn supervise(args: Vec<OsString>) -> ExitCode {
    let mut args = args.into_iter();
    let grace = args
        .next()
        .and_then(|g| g.to_str()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    let separator = args.next();
    let program = args.next();
    let (Some(grace), Some(true), Some(program)) = (grace, separator.map(|s| s == "--"), program)
    else {
        eprintln!("usage: runbox-cloudrun-emulator {SUPERVISE_ARG} GRACE_MS -- PROGRAM ARGS...");
        return ExitCode::from(EX_USAGE);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("task supervisor: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(run_main(program, args.collect(), grace));
    // Whatever happened to the main process, nothing of the task remains.
    kill_leftovers();
    match status {
        Ok(status) => exit_like(status),
        Err(e) => {
            eprintln!("task supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the main process and waits for it; on SIGTERM (the emulator
/// stopping the task's group, which the main process gets too) gives it
/// `grace` before killing it.
async fn run_main(
    program: OsString,
    args: Vec<OsString>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    // Orphans of the task become our children, not init's.
    rustix::process::set_child_subreaper(Some(getpid()))?;
    // Caught, so the supervisor outlives its main process and can clean up.
    let mut term = signal(SignalKind::terminate())?;
    let mut main = tokio::process::Command::new(&program).args(&args).spawn()?;
    tokio::select! {
        status = main.wait() => status,
        _ = term.recv() => match tokio::time::timeout(grace, main.wait()).await {
            Ok(status) => status,
            Err(_) => {
                main.start_kill()?;
                main.wait().await
            }
        },
    }
}

/// Kills every child of this process, again and again as the children of
/// those that die are handed to us, until none is left; reaps them all.
fn kill_leftovers() {
    let me = getpid();
    loop {
        for pid in children_of(me) {
            // Gone meanwhile is the wanted outcome.
            let _ = kill_process(pid, Signal::KILL);
        }
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(_) | Err(Errno::INTR) => {}
            // No child left at all.
            Err(_) => return,
        }
    }
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent.as_raw_nonzero().get())
                .then(|| Pid::from_raw(pid))
                .flatten()
        })
        .collect()
}

/// This process's exit status, as close to `status` as a process can make it.
fn exit_like(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match status.signal() {
        Some(sig) if sig == Signal::KILL.as_raw() => {
            // A SIGKILL of the main process reads as one to the emulator.
            let _ = kill_process(getpid(), Signal::KILL);
            ExitCode::from(128 + 9)
        }
        Some(sig) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        None => ExitCode::FAILURE,
    }
}
