//! Reading one message of the request topic: the proto3 JSON of a
//! `runbox.v1.ExecRequest` with `sessionId`, `command` and `requestId`.
//! Everything is checked here, before any side effect; what cannot run is
//! a [`Rejection`] that keeps whatever ids could be read, so the caller
//! can be answered.

use runbox_core::{RequestId, SessionId};
use runbox_proto::ExecRequest;

/// The largest message accepted: a command is at most 256 KiB, and a
/// message is that plus a little JSON.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest id echoed back in a REJECTED completion: Pub/Sub attribute
/// values and ordering keys are at most 1024 bytes.
const MAX_ECHO_BYTES: usize = 1024;

/// A request that can run.
#[derive(Debug)]
pub struct TopicRequest {
    /// The session it runs in.
    pub session: SessionId,
    /// The caller's id; the execution id derives from it.
    pub request_id: RequestId,
    /// The command and its options as sent.
    pub request: ExecRequest,
}

/// A message that cannot run, with what could be read of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The `requestId` as sent, when it is a string fit to echo (at most
    /// 1024 bytes, no control characters); `None`: nobody can be answered.
    pub request_id: Option<String>,
    /// The `sessionId` as sent, when fit to echo.
    pub session_id: Option<String>,
    /// Why, for the completion's `error` and the log.
    pub reason: String,
}

/// Reads and checks one message.
pub fn parse(data: &[u8]) -> Result<TopicRequest, Rejection> {
    // Ids are recovered leniently first, so even a message failing the
    // strict parse below (an oversized one too: Pub/Sub caps messages at
    // 10 MB) can be answered.
    let loose: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(data).ok();
    let echo = |field: &str| {
        loose
            .as_ref()
            .and_then(|m| m.get(field))
            .and_then(|v| v.as_str())
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_ECHO_BYTES && !s.chars().any(char::is_control)
            })
            .map(str::to_owned)
    };
    let reject = |reason: String| Rejection {
        request_id: echo("requestId"),
        session_id: echo("sessionId"),
        reason,
    };
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(reject(format!(
            "message is {} bytes; at most {MAX_MESSAGE_BYTES} bytes are allowed",
            data.len()
        )));
    }
    let request: ExecRequest = runbox_proto::from_json("ExecRequest", data)
        .map_err(|e| reject(format!("not an ExecRequest: {}", e.detail())))?;
    let request_id = RequestId::new(&request.request_id).map_err(|e| reject(e.to_string()))?;
    let session =
        SessionId::new(&request.session_id).map_err(|e| reject(format!("sessionId: {e}")))?;
    if request.command.is_empty() {
        return Err(reject("command is required".to_owned()));
    }
    // Fields that name objects or need objects of their own are runbox's
    // to set: a caller choosing them could aim at another execution.
    if !request.execution_id.is_empty() {
        return Err(reject(
            "executionId is assigned by runbox (derived from requestId); leave it out".to_owned(),
        ));
    }
    if request.background {
        return Err(reject(
            "background is not available on the request topic".to_owned(),
        ));
    }
    if request.stdin_bytes != 0 {
        return Err(reject(
            "stdinBytes is not available on the request topic".to_owned(),
        ));
    }
    // A topic request has no channel to send input on; a streamed stdin
    // would wait for bytes that cannot come.
    if request.stdin_stream || !request.stdin_token_sha256.is_empty() {
        return Err(reject(
            "stdinStream is not available on the request topic".to_owned(),
        ));
    }
    Ok(TopicRequest {
        session,
        request_id,
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(data: &[u8]) -> Rejection {
        parse(data).expect_err("should be rejected")
    }

    #[test]
    fn a_good_request_parses() {
        let r = parse(br#"{"sessionId":"s1","command":"echo hi","requestId":"r-1","timeoutMs":5000,"env":{"A":"b"}}"#).unwrap();
        assert_eq!(r.session.as_str(), "s1");
        assert_eq!(r.request_id.as_str(), "r-1");
        assert_eq!(r.request.timeout_ms, 5000);
        assert_eq!(r.request.env["A"], "b");
    }

    #[test]
    fn bad_messages_keep_the_ids_they_can() {
        let r = rejected(b"not json");
        assert_eq!(r.request_id, None);
        assert!(r.reason.contains("not an ExecRequest"), "{}", r.reason);

        let r = rejected(br#"{"sessionId":"s","command":"x","requestId":"r","colour":"red"}"#);
        assert_eq!(r.request_id.as_deref(), Some("r"));
        assert_eq!(r.session_id.as_deref(), Some("s"));
        assert!(r.reason.contains("colour"), "{}", r.reason);

        let r = rejected(br#"{"sessionId":"s","command":"x"}"#);
        assert_eq!(r.request_id, None);
        assert!(r.reason.contains("requestId is required"), "{}", r.reason);

        let r = rejected(br#"{"sessionId":"../victim","command":"x","requestId":"r"}"#);
        assert_eq!(r.request_id.as_deref(), Some("r"));
        assert!(r.reason.starts_with("sessionId"), "{}", r.reason);

        let r = rejected(br#"{"sessionId":"s","command":"","requestId":"r"}"#);
        assert!(r.reason.contains("command"), "{}", r.reason);
    }

    #[test]
    fn hostile_request_ids_are_refused() {
        let r = rejected(br#"{"sessionId":"s","command":"x","requestId":"../../results/x"}"#);
        assert_eq!(r.request_id.as_deref(), Some("../../results/x"));
        assert!(r.reason.contains("'/'"), "{}", r.reason);
        // Control characters: refused, and not echoed into attributes.
        let r = rejected(br#"{"sessionId":"s","command":"x","requestId":"a\nb"}"#);
        assert_eq!(r.request_id, None);
        let huge = format!(
            r#"{{"sessionId":"s","command":"x","requestId":"{}"}}"#,
            "r".repeat(5000)
        );
        let r = rejected(huge.as_bytes());
        assert_eq!(r.request_id, None);
        assert!(r.reason.contains("5000"), "{}", r.reason);
    }

    #[test]
    fn runbox_owned_fields_are_refused() {
        for (field, value) in [
            ("executionId", r#""abc123-0000000000000000""#),
            ("background", "true"),
            ("stdinBytes", "5"),
            ("stdinStream", "true"),
        ] {
            let msg =
                format!(r#"{{"sessionId":"s","command":"x","requestId":"r","{field}":{value}}}"#);
            let r = rejected(msg.as_bytes());
            assert!(r.reason.contains(field), "{field}: {}", r.reason);
            assert_eq!(r.request_id.as_deref(), Some("r"));
        }
    }

    #[test]
    fn oversized_messages_are_refused_unread() {
        let msg = format!(
            r#"{{"sessionId":"s","requestId":"r","command":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        let r = rejected(msg.as_bytes());
        assert!(r.reason.contains("at most"), "{}", r.reason);
        assert_eq!(r.request_id.as_deref(), Some("r"));
    }
}
