//! Runs one execution: its tasks as local processes, at most `parallelism`
//! at a time, each retried up to `max_retries` times, with the execution's
//! counts and conditions kept current for GetExecution and the operation.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::execution::{self, ExecutionEntry, FailureReason, TaskOutcome};
use crate::process::{AttemptEnd, Exit, TaskProcess};
use crate::template::{TaskSpec, cloud_run_env};

/// Beyond the kill grace, how long a supervised task's supervisor gets to
/// kill and reap what its main process left before its group is killed.
const SUPERVISOR_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the tasks of one execution share.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) config: Arc<Config>,
    pub(crate) entry: Arc<ExecutionEntry>,
    pub(crate) spec: TaskSpec,
    pub(crate) task_count: i32,
    /// At most this many tasks run at once (≥ 1).
    pub(crate) parallelism: usize,
}

/// Starts the execution in the background; its state reports the progress.
pub(crate) fn start(run: Run) {
    tokio::spawn(run_execution(Arc::new(run)));
}

async fn run_execution(run: Arc<Run>) {
    tracing::info!(
        execution = %run.entry.name,
        tasks = run.task_count,
        argv = ?run.spec.argv,
        "execution started"
    );
    let delay = run.config.start_delay;
    if !delay.is_zero() {
        // Cloud Run's container start: the execution exists but has not
        // started. A cancellation meanwhile ends the wait; its tasks then
        // never start (see `run_task`).
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = run.entry.cancel.cancelled() => {}
        }
        tracing::info!(execution = %run.entry.name, ?delay, "container started");
    }
    run.entry.update(execution::mark_started);
    let slots = Arc::new(Semaphore::new(run.parallelism));
    // Dropping the set (runtime shutdown) aborts the tasks, whose processes
    // are then killed by TaskProcess's drop.
    let mut tasks = JoinSet::new();
    for index in 0..run.task_count {
        let (run, slots) = (Arc::clone(&run), Arc::clone(&slots));
        tasks.spawn(async move { (index, run_task(&run, index, &slots).await) });
    }
    let mut outcomes = Vec::with_capacity(run.task_count as usize);
    while let Some(joined) = tasks.join_next().await {
        let (index, outcome) = joined.unwrap_or_else(|err| {
            // A panic in the runner is a bug of ours; report the task failed
            // rather than leave the execution running forever.
            let message = format!("Task failed with message: internal emulator error: {err}");
            (
                i32::MAX,
                TaskOutcome::Failed {
                    message,
                    reason: FailureReason::StartFailed,
                },
            )
        });
        run.entry.update(|e| execution::count_task(e, &outcome));
        outcomes.push((index, outcome));
    }
    outcomes.sort_by_key(|(index, _)| *index);
    run.entry.update(|e| execution::mark_finished(e, &outcomes));
    let finished = run.entry.snapshot();
    tracing::info!(
        execution = %run.entry.name,
        succeeded = finished.succeeded_count,
        failed = finished.failed_count,
        cancelled = finished.cancelled_count,
        "execution finished"
    );
}

/// Runs task `index` to its outcome, retrying failed attempts.
async fn run_task(run: &Run, index: i32, slots: &Semaphore) -> TaskOutcome {
    let cancel = &run.entry.cancel;
    let _slot = tokio::select! {
        // A task still waiting for a slot when the execution is cancelled
        // never starts and counts as cancelled, as in Cloud Run.
        biased;
        () = cancel.cancelled() => return TaskOutcome::Cancelled,
        slot = slots.acquire() => match slot {
            Ok(slot) => slot,
            Err(_) => return TaskOutcome::Cancelled,
        },
    };
    let task = format!("{}-task{index}", run.entry.name.execution);
    let mut attempt = 0;
    loop {
        if cancel.is_cancelled() {
            return TaskOutcome::Cancelled;
        }
        let (detail, reason) = match run_attempt(run, index, attempt).await {
            Ok(AttemptEnd::Exited(Exit::Code(0))) => return TaskOutcome::Succeeded,
            Ok(AttemptEnd::Cancelled) => return TaskOutcome::Cancelled,
            Ok(AttemptEnd::Exited(Exit::Code(code))) => (
                format!("The container exited with exit code {code}."),
                FailureReason::NonZeroExit,
            ),
            Ok(AttemptEnd::Exited(Exit::Signal(signal))) => (
                format!("The container was terminated by signal {signal}."),
                FailureReason::NonZeroExit,
            ),
            Ok(AttemptEnd::TimedOut) => (
                format!(
                    "The task timed out after {}: the configured timeout was reached.",
                    humantime::format_duration(run.spec.timeout)
                ),
                FailureReason::Timeout,
            ),
            Err(err) => (
                format!("The container failed to start: {err}."),
                FailureReason::StartFailed,
            ),
        };
        tracing::info!(task = %task, attempt, "{detail}");
        if attempt < run.spec.max_retries && !cancel.is_cancelled() {
            if attempt == 0 {
                run.entry.update(|e| e.retried_count += 1);
            }
            attempt += 1;
            continue;
        }
        return TaskOutcome::Failed {
            message: format!("Task {task} failed with message: {detail}"),
            reason,
        };
    }
}

/// One attempt of one task: spawn, wait (timeout, cancel), reap.
async fn run_attempt(run: &Run, index: i32, attempt: u32) -> std::io::Result<AttemptEnd> {
    let spec = &run.spec;
    let name = &run.entry.name;
    let supervisor = run.config.supervisor.as_ref();
    let mut command = match supervisor {
        Some(program) => {
            let mut command = Command::new(program);
            command
                .arg(crate::supervise::SUPERVISE_ARG)
                .arg(run.config.kill_grace.as_millis().to_string())
                .arg("--")
                .args(&spec.argv);
            command
        }
        None => {
            let mut command = Command::new(&spec.argv[0]);
            command.args(&spec.argv[1..]);
            command
        }
    };
    command.stdin(Stdio::null());
    if !run.config.inherit_env {
        // What a container's image would provide: a PATH and a HOME.
        command.env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    command.envs(cloud_run_env(
        &name.job.job,
        &name.execution,
        index,
        attempt,
        run.task_count,
    ));
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    if let Some(dir) = &run.config.log_dir {
        // Files, not pipes: nobody would drain a pipe, and a full pipe
        // would block the task.
        let dir = dir.join(&name.execution);
        fs::create_dir_all(&dir)?;
        command.stdout(append(&dir.join(format!("task{index}.stdout")))?);
        command.stderr(append(&dir.join(format!("task{index}.stderr")))?);
    }
    let process = TaskProcess::spawn(&mut command)?;
    let _running = RunningGuard::new(&run.entry);
    tracing::debug!(execution = %name, index, attempt, "task attempt started");
    // A supervisor gives the main process the grace itself, then cleans up:
    // it gets a moment more before its group is killed.
    let grace = match supervisor {
        Some(_) => run.config.kill_grace + SUPERVISOR_SLACK,
        None => run.config.kill_grace,
    };
    process.run(spec.timeout, &run.entry.cancel, grace).await
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Counts an attempt in `running_count` for as long as it runs, even if the
/// runner is aborted mid-way.
struct RunningGuard<'a>(&'a ExecutionEntry);

impl<'a> RunningGuard<'a> {
    fn new(entry: &'a ExecutionEntry) -> Self {
        entry.update(|e| e.running_count += 1);
        Self(entry)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0
            .update(|e| e.running_count = (e.running_count - 1).max(0));
    }
}
