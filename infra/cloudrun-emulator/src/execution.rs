//! One execution's state as Cloud Run reports it: the `Execution` message in
//! a watch channel (so WaitOperation and shutdown are woken, never polling),
//! and the transitions the runner applies to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Condition, Execution, condition, execution_reference::CompletionStatus,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ids;
use crate::names::ExecutionName;

/// Condition types an execution reports, in the order it lists them.
pub(crate) const COMPLETED: &str = "Completed";
const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
const STARTED: &str = "Started";

/// A live execution: its current `Execution` message and the token that stops
/// its tasks (CancelExecution, DeleteExecution, DeleteJob, shutdown).
#[derive(Debug)]
pub(crate) struct ExecutionEntry {
    pub(crate) name: ExecutionName,
    /// Creation order, for "sorted by creation time, descending".
    pub(crate) seq: u64,
    pub(crate) cancel: CancellationToken,
    state: watch::Sender<Execution>,
}

/// How one task ended, after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskOutcome {
    Succeeded,
    /// `message` is the whole condition message (`Task … failed with message: …`).
    Failed {
        message: String,
        reason: FailureReason,
    },
    Cancelled,
}

/// Why a task's last attempt failed; picks the condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// The container exited non-zero or was killed by a signal.
    NonZeroExit,
    /// The task ran past its timeout and was killed.
    Timeout,
    /// The container could not be started.
    StartFailed,
}

impl ExecutionEntry {
    pub(crate) fn new(
        name: ExecutionName,
        seq: u64,
        cancel: CancellationToken,
        execution: Execution,
    ) -> Arc<Self> {
        let (state, _) = watch::channel(execution);
        Arc::new(Self {
            name,
            seq,
            cancel,
            state,
        })
    }

    /// The execution as GetExecution reports it now.
    pub(crate) fn snapshot(&self) -> Execution {
        self.state.borrow().clone()
    }

    pub(crate) fn is_done(&self) -> bool {
        is_done(&self.state.borrow())
    }

    /// Applies a change, stamps update_time and a new etag, and wakes waiters.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Execution)) {
        self.state.send_modify(|execution| {
            change(execution);
            execution.update_time = Some(SystemTime::now().into());
            execution.etag = new_etag();
        });
    }

    /// Resolves with the final execution once it has finished. It cannot
    /// hang on a vanished producer: `self` owns the sender.
    pub(crate) async fn wait_done(&self) -> Execution {
        let mut rx = self.state.subscribe();
        let done = rx.wait_for(is_done).await.map(|e| e.clone());
        // The sender lives in `self`, which outlives this borrow.
        done.unwrap_or_else(|_| self.snapshot())
    }

    /// The job's view of this execution (`Job.latest_created_execution`).
    pub(crate) fn completion_status(&self) -> CompletionStatus {
        let execution = self.state.borrow();
        match completed_condition(&execution).map(|c| (c.state(), c.reasons)) {
            Some((condition::State::ConditionSucceeded, _)) => CompletionStatus::ExecutionSucceeded,
            Some((condition::State::ConditionFailed, Some(reason)))
                if reason == cancelled_reason() =>
            {
                CompletionStatus::ExecutionCancelled
            }
            Some((condition::State::ConditionFailed, _)) => CompletionStatus::ExecutionFailed,
            _ if execution.start_time.is_some() => CompletionStatus::ExecutionRunning,
            _ => CompletionStatus::ExecutionPending,
        }
    }
}

pub(crate) fn is_done(execution: &Execution) -> bool {
    execution.completion_time.is_some()
}

/// Whether a finished execution failed (not succeeded, not cancelled): its
/// operation then ends with an error instead of a response.
pub(crate) fn failed(execution: &Execution) -> Option<&str> {
    let completed = completed_condition(execution)?;
    (completed.state() == condition::State::ConditionFailed
        && completed.reasons != Some(cancelled_reason()))
    .then_some(completed.message.as_str())
}

fn completed_condition(execution: &Execution) -> Option<&Condition> {
    execution.conditions.iter().find(|c| c.r#type == COMPLETED)
}

fn cancelled_reason() -> condition::Reasons {
    condition::Reasons::ExecutionReason(condition::ExecutionReason::Cancelled as i32)
}

/// A fresh execution's conditions: nothing has happened yet.
pub(crate) fn initial_conditions() -> Vec<Condition> {
    let now = SystemTime::now();
    [COMPLETED, RESOURCES_AVAILABLE, STARTED]
        .into_iter()
        .map(|kind| Condition {
            r#type: kind.to_owned(),
            state: condition::State::ConditionPending as i32,
            last_transition_time: Some(now.into()),
            ..Default::default()
        })
        .collect()
}

/// The runner has started the execution's tasks.
pub(crate) fn mark_started(execution: &mut Execution) {
    execution.start_time = Some(SystemTime::now().into());
    set_condition(
        execution,
        RESOURCES_AVAILABLE,
        condition::State::ConditionSucceeded,
        "",
        None,
    );
    set_condition(
        execution,
        STARTED,
        condition::State::ConditionSucceeded,
        "",
        None,
    );
    set_condition(
        execution,
        COMPLETED,
        condition::State::ConditionReconciling,
        "Execution is running.",
        None,
    );
}

/// CancelExecution was accepted; the tasks are being stopped.
pub(crate) fn mark_cancelling(execution: &mut Execution) {
    set_condition(
        execution,
        COMPLETED,
        condition::State::ConditionReconciling,
        "The execution is being cancelled.",
        Some(condition::Reasons::ExecutionReason(
            condition::ExecutionReason::Cancelling as i32,
        )),
    );
}

/// Counts one finished task.
pub(crate) fn count_task(execution: &mut Execution, outcome: &TaskOutcome) {
    match outcome {
        TaskOutcome::Succeeded => execution.succeeded_count += 1,
        TaskOutcome::Failed { .. } => execution.failed_count += 1,
        TaskOutcome::Cancelled => execution.cancelled_count += 1,
    }
}

/// All tasks have ended: the Completed condition says how, as Cloud Run does.
/// A cancellation wins over failures, and the first failed task (by index)
/// gives the failure's message.
pub(crate) fn mark_finished(execution: &mut Execution, outcomes: &[(i32, TaskOutcome)]) {
    let now = SystemTime::now();
    execution.completion_time = Some(now.into());
    execution.reconciling = false;
    execution.running_count = 0;
    let first_failure = outcomes.iter().find_map(|(_, outcome)| match outcome {
        TaskOutcome::Failed { message, reason } => Some((message.clone(), *reason)),
        _ => None,
    });
    if outcomes
        .iter()
        .any(|(_, outcome)| *outcome == TaskOutcome::Cancelled)
    {
        set_condition(
            execution,
            COMPLETED,
            condition::State::ConditionFailed,
            "The execution was cancelled.",
            Some(cancelled_reason()),
        );
    } else if let Some((message, reason)) = first_failure {
        let reason = match reason {
            FailureReason::NonZeroExit | FailureReason::StartFailed => {
                condition::Reasons::ExecutionReason(
                    condition::ExecutionReason::NonZeroExitCode as i32,
                )
            }
            // No execution reason means "timed out"; the common one does.
            FailureReason::Timeout => {
                condition::Reasons::Reason(condition::CommonReason::ProgressDeadlineExceeded as i32)
            }
        };
        set_condition(
            execution,
            COMPLETED,
            condition::State::ConditionFailed,
            &message,
            Some(reason),
        );
    } else {
        let took = execution
            .start_time
            .and_then(|start| SystemTime::try_from(start).ok())
            .and_then(|start| now.duration_since(start).ok())
            .unwrap_or(Duration::ZERO);
        let message = format!(
            "Execution completed successfully in {:.2}s.",
            took.as_secs_f64()
        );
        set_condition(
            execution,
            COMPLETED,
            condition::State::ConditionSucceeded,
            &message,
            None,
        );
    }
}

/// Sets condition `kind`, moving its transition time only when its state changes.
fn set_condition(
    execution: &mut Execution,
    kind: &str,
    state: condition::State,
    message: &str,
    reason: Option<condition::Reasons>,
) {
    let severity = if state == condition::State::ConditionFailed {
        condition::Severity::Error
    } else {
        condition::Severity::Unspecified
    };
    let index = match execution.conditions.iter().position(|c| c.r#type == kind) {
        Some(index) => index,
        None => {
            execution.conditions.push(Condition {
                r#type: kind.to_owned(),
                ..Default::default()
            });
            execution.conditions.len() - 1
        }
    };
    let current = &mut execution.conditions[index];
    if current.state != state as i32 || current.last_transition_time.is_none() {
        current.last_transition_time = Some(SystemTime::now().into());
    }
    current.state = state as i32;
    current.message = message.to_owned();
    current.reasons = reason;
    current.severity = severity as i32;
}

/// Etags change on every change of a resource; clients only compare them.
pub(crate) fn new_etag() -> String {
    format!("\"{}\"", &ids::uuid4()[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Execution {
        Execution {
            conditions: initial_conditions(),
            task_count: 2,
            ..Default::default()
        }
    }

    #[test]
    fn success_failure_and_cancel_conditions() {
        let mut e = fresh();
        mark_started(&mut e);
        mark_finished(
            &mut e,
            &[(0, TaskOutcome::Succeeded), (1, TaskOutcome::Succeeded)],
        );
        assert!(is_done(&e));
        assert_eq!(failed(&e), None);
        let completed = completed_condition(&e).unwrap();
        assert_eq!(completed.state(), condition::State::ConditionSucceeded);

        let mut e = fresh();
        mark_started(&mut e);
        let failure = TaskOutcome::Failed {
            message: "Task x-task1 failed with message: The container exited with exit code 3."
                .into(),
            reason: FailureReason::NonZeroExit,
        };
        mark_finished(&mut e, &[(0, TaskOutcome::Succeeded), (1, failure)]);
        assert!(failed(&e).unwrap().contains("exit code 3"));

        let mut e = fresh();
        mark_started(&mut e);
        mark_cancelling(&mut e);
        mark_finished(
            &mut e,
            &[(0, TaskOutcome::Cancelled), (1, TaskOutcome::Succeeded)],
        );
        assert_eq!(failed(&e), None);
        assert_eq!(
            completed_condition(&e).unwrap().reasons,
            Some(cancelled_reason())
        );
    }
}
