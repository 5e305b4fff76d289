//! Finding processes and waiting for their exit without sleeping: a pidfd
//! becomes readable when its process exits.

use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// The processes whose environment holds `name=value`, found in `/proc`
/// (the caller must be allowed to read their environment: same user, or root).
pub fn with_env(name: &str, value: &str) -> Vec<i32> {
    let wanted = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
        })
        .collect()
}

/// The host's pid of the process that execution `execution`'s command
/// knows as `inner`: commands run in a PID namespace of their own, so `$$`
/// there is not the host's number. The command's processes carry the
/// execution id in their environment; the last field of `NSpid` is the pid
/// in the innermost namespace.
pub fn host_pid(inner: i32, execution: &str) -> Option<i32> {
    with_env("RUNBOX_EXECUTION_ID", execution)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last()?.parse::<i32>().ok())
                    == Some(inner)
            })
        })
}

/// The executor running `execution`: the `runbox-executor` process named
/// by `--execution-id` (local launcher) or by `RUNBOX_EXECUTION_ID` in its
/// environment (a Cloud Run task), not its namespace helper. Commands run
/// in a PID namespace of their own and cannot see it: a test that kills an
/// executor does it from here.
pub fn executor_of(execution: &str) -> Option<i32> {
    let args = |pid: i32| -> Vec<Vec<u8>> {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(<[u8]>::to_vec)
            .collect()
    };
    let is_executor = |args: &[Vec<u8>]| {
        args.first()
            .is_some_and(|a| a.ends_with(b"runbox-executor"))
            && args.get(1).is_none_or(|a| a != b"__enter-namespace")
    };
    let by_arg = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let args = args(*pid);
            is_executor(&args)
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--execution-id" && w[1] == execution.as_bytes())
        });
    by_arg.or_else(|| {
        with_env("RUNBOX_EXECUTION_ID", execution)
            .into_iter()
            .find(|pid| is_executor(&args(*pid)))
    })
}

/// SIGKILLs the executor running `execution` (see [`executor_of`]).
pub fn kill_executor(execution: &str) {
    let pid = executor_of(execution).unwrap_or_else(|| panic!("no executor runs {execution}"));
    rustix::process::kill_process(
        Pid::from_raw(pid).expect("a pid"),
        rustix::process::Signal::KILL,
    )
    .expect("SIGKILL the executor");
}

/// The command name (`/proc/PID/comm`) of a process, if it still exists.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Waits until every process of `pids` has exited (a zombie counts as
/// exited); the pids still alive after `timeout`, empty when all are gone.
pub async fn wait_exited(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let pids = pids.to_vec();
    tokio::task::spawn_blocking(move || wait_exited_blocking(&pids, timeout))
        .await
        .expect("the waiting thread")
}

fn wait_exited_blocking(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = std::time::Instant::now() + timeout;
    let mut alive = Vec::new();
    for &pid in pids {
        let Some(fd) = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
        else {
            // No such process any more.
            continue;
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        // A pidfd polls readable once its process has exited.
        let exited = matches!(poll(&mut fds, Some(&left)), Ok(n) if n > 0);
        if !exited && !crate::embedded::process_gone(pid) {
            alive.push(pid);
        }
    }
    alive
}
