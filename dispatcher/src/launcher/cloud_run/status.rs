//! Reading what Cloud Run answered: an Execution's terminal condition, the
//! Execution packed in a long-running operation, which failures are worth
//! another try, and the errors that name the call that failed.

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Condition, Execution, condition,
};
use googleapis_tonic_google_longrunning::google::longrunning::{Operation, operation};
use prost::Message;
use tonic::{Code, Status};

use crate::launcher::Ended;

/// The type of RunJob's operation metadata and response.
const EXECUTION_TYPE: &str = "google.cloud.run.v2.Execution";

/// A Cloud Run call that failed, naming the call and its resource.
#[derive(Debug, thiserror::Error)]
#[error("{call} {resource}")]
pub struct CallError {
    /// The RPC, e.g. `RunJob`.
    pub call: &'static str,
    /// The resource it addressed.
    pub resource: String,
    /// What the server (or the transport) answered.
    #[source]
    pub status: Status,
}

impl CallError {
    /// Whether the resource does not exist (NOT_FOUND).
    pub fn is_not_found(&self) -> bool {
        self.status.code() == Code::NotFound
    }
}

/// RunJob answered with an operation that names no Execution.
#[derive(Debug, thiserror::Error)]
#[error("RunJob {job} answered operation {operation:?} without an Execution{}", error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
pub struct NoExecution {
    /// The job template.
    pub job: String,
    /// The operation's name.
    pub operation: String,
    /// The operation's error, when it ended at once with one.
    pub error: Option<String>,
}

/// The operation's response, when it ended with one.
pub(super) fn response_of(op: &Operation) -> Option<&prost_types::Any> {
    match &op.result {
        Some(operation::Result::Response(any)) => Some(any),
        _ => None,
    }
}

/// The Execution packed in `any`; `None` for any other type. The generated
/// types lack `prost::Name`, so the type URL is matched by hand.
pub(super) fn decode_execution(any: &prost_types::Any) -> Option<Execution> {
    if !any.type_url.ends_with(EXECUTION_TYPE) {
        return None;
    }
    Execution::decode(any.value.as_slice()).ok()
}

/// The end of an execution, if it has ended: its `Completed` condition when
/// terminal, else its completion time and task counts.
pub(super) fn terminal(e: &Execution) -> Option<Ended> {
    let completed = e.conditions.iter().find(|c| c.r#type == "Completed");
    let counts = format!(
        "{} of {} task(s) succeeded, {} failed, {} cancelled",
        e.succeeded_count, e.task_count, e.failed_count, e.cancelled_count
    );
    let message = |c: Option<&Condition>| match c.map(|c| c.message.as_str()) {
        Some(m) if !m.is_empty() => format!("Cloud Run execution {}: {m}", e.name),
        _ => format!("Cloud Run execution {}: {counts}", e.name),
    };
    match completed.map(Condition::state) {
        Some(condition::State::ConditionSucceeded) => Some(Ended {
            succeeded: true,
            message: message(completed),
        }),
        Some(condition::State::ConditionFailed) => Some(Ended {
            succeeded: false,
            message: message(completed),
        }),
        _ if e.completion_time.is_some() => Some(Ended {
            succeeded: e.failed_count == 0 && e.cancelled_count == 0 && e.succeeded_count > 0,
            message: message(completed),
        }),
        _ => None,
    }
}

/// Codes that say "not now" rather than "no": the call may succeed later.
pub(super) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution(conditions: Vec<Condition>, done: bool) -> Execution {
        Execution {
            name: "projects/p/locations/l/jobs/j/executions/e".to_owned(),
            task_count: 1,
            conditions,
            completion_time: done.then(prost_types::Timestamp::default),
            ..Default::default()
        }
    }

    fn completed(state: condition::State, message: &str) -> Condition {
        Condition {
            r#type: "Completed".to_owned(),
            state: state as i32,
            message: message.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn terminal_reads_the_completed_condition() {
        assert_eq!(terminal(&execution(vec![], false)), None);
        let running = completed(condition::State::ConditionReconciling, "");
        assert_eq!(terminal(&execution(vec![running], false)), None);
        let failed = completed(
            condition::State::ConditionFailed,
            "Task failed with exit code 1",
        );
        let ended = terminal(&execution(vec![failed], true)).unwrap();
        assert!(!ended.succeeded);
        assert!(
            ended.message.ends_with(": Task failed with exit code 1"),
            "{}",
            ended.message
        );
        let ok = completed(condition::State::ConditionSucceeded, "");
        let ended = terminal(&execution(vec![ok], true)).unwrap();
        assert!(ended.succeeded);
        assert!(
            ended.message.contains("0 of 1 task(s) succeeded"),
            "{}",
            ended.message
        );
        // No condition, but a completion time and a failed task.
        let mut e = execution(vec![], true);
        e.failed_count = 1;
        assert!(!terminal(&e).unwrap().succeeded);
    }
}
