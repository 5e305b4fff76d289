//! The marker of one background process,
//! `sessions/{session}/background/{execution}.json`: written by the
//! dispatcher before it launches the process, so listing the markers lists
//! what may run, and rewritten with `killRequested` before a kill is sent.
//!
//! Stored as JSON with sorted keys:
//! `{"command":…,"executionId":…,"killRequested":true,"locator":…,"sessionId":…,"startedAt":"2023-11-14T22:13:20.123Z"}`,
//! `killRequested` only once a kill was asked for, `locator` only once the
//! launcher named where the process runs (markers written before it was
//! stored have none), `startedAt` RFC 3339 with milliseconds.

use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;

use crate::{ExecutionId, SessionId};

/// Why marker bytes do not decode. The messages (with their causes, joined
/// by `": "`) are what the dispatcher reports as the marker's problem.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// Not JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A field the marker needs is missing or not a string.
    #[error("missing string field {0:?}")]
    MissingField(&'static str),
    /// The marker is another execution's.
    #[error("names execution {0:?}")]
    OtherExecution(String),
    /// `startedAt` is not an RFC 3339 time.
    #[error("startedAt")]
    StartedAt(#[source] humantime::TimestampError),
}

/// One background process as its marker records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackgroundMarker {
    /// The process's execution.
    pub execution_id: ExecutionId,
    /// The session it runs in.
    pub session: SessionId,
    /// The command.
    pub command: String,
    /// When the dispatcher accepted it; stored to the millisecond.
    pub started_at: SystemTime,
    /// A kill was asked for: a process that then ends without a result was
    /// killed, not lost.
    pub kill_requested: bool,
    /// Where the platform runs it, as the launcher named it after the
    /// launch (Cloud Run: the Execution's resource name), so that another
    /// dispatcher process can reach it; `None` before the launch, for
    /// launchers that need nothing beyond the execution id, and in markers
    /// written before this field existed.
    pub locator: Option<String>,
}

impl BackgroundMarker {
    /// The stored form.
    pub fn encode(&self) -> Bytes {
        // Fields in alphabetical order: the bytes markers always had.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            command: &'a str,
            execution_id: &'a str,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            kill_requested: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            locator: Option<&'a str>,
            session_id: &'a str,
            started_at: String,
        }
        let wire = Wire {
            command: &self.command,
            execution_id: self.execution_id.as_str(),
            kill_requested: self.kill_requested,
            locator: self.locator.as_deref(),
            session_id: self.session.as_str(),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
        };
        // Strings and a bool: serialising cannot fail.
        Bytes::from(serde_json::to_vec(&wire).expect("a marker always encodes"))
    }

    /// Reads the marker of execution `id` in `session` (the names it is
    /// stored under). Fails when it names another execution; the stored
    /// session id is not read, the object's name says it.
    pub fn decode(data: &[u8], session: &SessionId, id: &ExecutionId) -> Result<Self, MarkerError> {
        let value: serde_json::Value = serde_json::from_slice(data)?;
        let field = |name: &'static str| {
            value
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or(MarkerError::MissingField(name))
        };
        let named = field("executionId")?;
        if named != id.as_str() {
            return Err(MarkerError::OtherExecution(named.to_owned()));
        }
        let started_at =
            humantime::parse_rfc3339(field("startedAt")?).map_err(MarkerError::StartedAt)?;
        Ok(Self {
            execution_id: id.clone(),
            session: session.clone(),
            command: field("command")?.to_owned(),
            started_at,
            kill_requested: value.get("killRequested") == Some(&serde_json::Value::Bool(true)),
            locator: match value.get("locator") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(l)) => Some(l.clone()),
                Some(_) => return Err(MarkerError::MissingField("locator")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn marker() -> BackgroundMarker {
        BackgroundMarker {
            execution_id: ExecutionId::new("abc-1").unwrap(),
            session: SessionId::new("s").unwrap(),
            command: "python3 -m http.server 0".into(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kill_requested: false,
            locator: None,
        }
    }

    #[test]
    fn markers_round_trip_in_the_stored_format() {
        let m = marker();
        let bytes = m.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"command":"python3 -m http.server 0","executionId":"abc-1","sessionId":"s","startedAt":"2023-11-14T22:13:20.123Z"}"#
        );
        assert_eq!(
            BackgroundMarker::decode(&bytes, &m.session, &m.execution_id).unwrap(),
            m
        );
        let killed = BackgroundMarker {
            kill_requested: true,
            ..m.clone()
        };
        let bytes = killed.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"command":"python3 -m http.server 0","executionId":"abc-1","killRequested":true,"sessionId":"s","startedAt":"2023-11-14T22:13:20.123Z"}"#
        );
        assert_eq!(
            BackgroundMarker::decode(&bytes, &m.session, &m.execution_id).unwrap(),
            killed
        );
        let located = BackgroundMarker {
            locator: Some("projects/p/locations/l/jobs/j/executions/e".into()),
            ..killed.clone()
        };
        let bytes = located.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"command":"python3 -m http.server 0","executionId":"abc-1","killRequested":true,"locator":"projects/p/locations/l/jobs/j/executions/e","sessionId":"s","startedAt":"2023-11-14T22:13:20.123Z"}"#
        );
        assert_eq!(
            BackgroundMarker::decode(&bytes, &m.session, &m.execution_id).unwrap(),
            located
        );
    }

    #[test]
    fn mismatched_or_broken_markers_are_refused() {
        let m = marker();
        let bytes = m.encode();
        let other = ExecutionId::new("abc-2").unwrap();
        let err = BackgroundMarker::decode(&bytes, &m.session, &other).unwrap_err();
        assert_eq!(err.to_string(), r#"names execution "abc-1""#);
        let err = BackgroundMarker::decode(b"{}", &m.session, &m.execution_id).unwrap_err();
        assert_eq!(err.to_string(), r#"missing string field "executionId""#);
        assert!(matches!(
            BackgroundMarker::decode(b"not json", &m.session, &m.execution_id),
            Err(MarkerError::Json(_))
        ));
        let bad_time = br#"{"executionId":"abc-1","startedAt":"yesterday","command":"x"}"#;
        let err = BackgroundMarker::decode(bad_time, &m.session, &m.execution_id).unwrap_err();
        assert!(
            crate::error_chain(&err).starts_with("startedAt: "),
            "{}",
            crate::error_chain(&err)
        );
    }
}
