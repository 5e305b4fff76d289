//! The `ExecCompleted` message that answers each request on the
//! completions topic: the proto3 JSON of `runbox.v1.ExecCompleted`, with
//! the attributes `requestId`, `sessionId` and `status` (for subscription
//! filters) and the session id as ordering key.

use std::collections::HashMap;

use gcloud_googleapis::pubsub::v1::PubsubMessage;
use runbox_core::{ExecutionId, SessionId, layout};
use runbox_proto::{ExecCompleted, ExecResult, ExecStatus};

/// The completion of a request that ran (whatever its status); `error`
/// explains a result that came with an error (a state conflict).
pub fn of_result(request_id: &str, result: ExecResult, error: String) -> PubsubMessage {
    let result_object = ExecutionId::new(&result.execution_id)
        .map(|id| layout::result(&id))
        .unwrap_or_default();
    let completed = ExecCompleted {
        execution_id: result.execution_id.clone(),
        session_id: result.session_id.clone(),
        status: result.status,
        exit_code: result.exit_code,
        result_object,
        request_id: request_id.to_owned(),
        error,
        result: Some(result),
    };
    message(completed)
}

/// The REJECTED completion of a request that did not run.
pub fn rejected(
    request_id: &str,
    session_id: Option<&str>,
    execution_id: Option<&ExecutionId>,
    reason: String,
) -> PubsubMessage {
    let completed = ExecCompleted {
        execution_id: execution_id.map(ToString::to_string).unwrap_or_default(),
        session_id: session_id.unwrap_or_default().to_owned(),
        status: ExecStatus::Rejected as i32,
        exit_code: -1,
        request_id: request_id.to_owned(),
        error: reason,
        ..ExecCompleted::default()
    };
    message(completed)
}

fn message(completed: ExecCompleted) -> PubsubMessage {
    let status = ExecStatus::try_from(completed.status).unwrap_or(ExecStatus::Unspecified);
    let attributes = HashMap::from([
        ("requestId".to_owned(), completed.request_id.clone()),
        ("sessionId".to_owned(), completed.session_id.clone()),
        ("status".to_owned(), status.name().to_owned()),
    ]);
    // Only a valid session id orders: a rejected message's raw session
    // field may be anything up to the attribute limit.
    let ordering_key = SessionId::new(&completed.session_id)
        .map(|s| s.to_string())
        .unwrap_or_default();
    PubsubMessage {
        data: runbox_proto::to_json(&completed),
        attributes,
        ordering_key,
        ..PubsubMessage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_becomes_its_completion() {
        let mut result = ExecResult {
            execution_id: "rq-abc".to_owned(),
            session_id: "s1".to_owned(),
            exit_code: 0,
            stdout: "hi\n".to_owned(),
            ..ExecResult::default()
        };
        result.set_exec_status(ExecStatus::Succeeded);
        let m = of_result("r-1", result, String::new());
        assert_eq!(m.ordering_key, "s1");
        assert_eq!(m.attributes["requestId"], "r-1");
        assert_eq!(m.attributes["sessionId"], "s1");
        assert_eq!(m.attributes["status"], "SUCCEEDED");
        let json: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(json["status"], "SUCCEEDED");
        assert_eq!(json["requestId"], "r-1");
        assert_eq!(json["resultObject"], "results/rq-abc.json");
        assert_eq!(json["result"]["stdout"], "hi\n");
        let back: ExecCompleted = runbox_proto::from_json("ExecCompleted", &m.data).unwrap();
        assert_eq!(back.result.unwrap().stdout, "hi\n");
    }

    #[test]
    fn a_rejection_orders_only_on_a_valid_session() {
        let m = rejected("r", Some("../x"), None, "sessionId: bad".to_owned());
        assert_eq!(m.ordering_key, "");
        assert_eq!(m.attributes["status"], "REJECTED");
        assert_eq!(m.attributes["sessionId"], "../x");
        let json: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(json["error"], "sessionId: bad");
        assert_eq!(json["exitCode"], -1);
        let m = rejected("r", Some("s2"), None, "x".to_owned());
        assert_eq!(m.ordering_key, "s2");
    }
}
