//! The background marker, `sessions/{session}/background/{execution}.json`:
//! written before a background launch (so whatever runs is listed), and
//! consulted when settling an execution that ended without a result (a kill
//! that was asked for makes it CANCELLED, not LOST).

use std::time::SystemTime;

use bytes::Bytes;
use runbox_core::store::{PutOptions, Store};
use runbox_core::{ExecutionId, SessionId, layout};

use crate::error::{BackgroundError, Error, Result};

/// A marker as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The command.
    pub(crate) command: String,
    /// When the dispatcher accepted it (millisecond precision).
    pub(crate) started_at: SystemTime,
    /// A kill was asked for.
    pub(crate) kill_requested: bool,
}

/// The marker's JSON: `{executionId, sessionId, command, startedAt}`, plus
/// `killRequested: true` once a kill was asked for.
pub(crate) fn encode(session: &SessionId, id: &ExecutionId, marker: &Marker) -> Bytes {
    let mut value = serde_json::json!({
        "executionId": id.as_str(),
        "sessionId": session.as_str(),
        "command": marker.command,
        "startedAt": humantime::format_rfc3339_millis(marker.started_at).to_string(),
    });
    if marker.kill_requested {
        value["killRequested"] = serde_json::Value::Bool(true);
    }
    Bytes::from(value.to_string())
}

/// Decodes a marker, checking that it names `id`.
pub(crate) fn decode(data: &[u8], id: &ExecutionId) -> std::result::Result<Marker, String> {
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("missing string field {name:?}"))
    };
    if field("executionId")? != id.as_str() {
        return Err(format!("names execution {:?}", field("executionId")?));
    }
    let started_at =
        humantime::parse_rfc3339(field("startedAt")?).map_err(|e| format!("startedAt: {e}"))?;
    Ok(Marker {
        command: field("command")?.to_owned(),
        started_at,
        kill_requested: value.get("killRequested") == Some(&serde_json::Value::Bool(true)),
    })
}

/// Reads and decodes the marker of `id` in `session`.
pub(crate) async fn read(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
) -> Result<Marker> {
    let name = layout::background_marker(session, id);
    let data = store
        .get(&name)
        .await
        .map_err(|e| Error::store(format!("read background marker {name}"), e))?
        .data;
    decode(&data, id).map_err(|detail| {
        Error::Background(BackgroundError::InvalidMarker {
            name: name.clone(),
            detail,
        })
    })
}

/// Writes the marker of `id` with `opts` (create-only for a new process).
pub(crate) async fn write(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
    marker: &Marker,
    opts: PutOptions,
) -> Result<()> {
    let name = layout::background_marker(session, id);
    store
        .put(&name, encode(session, id, marker), opts)
        .await
        .map(drop)
        .map_err(|e| Error::store(format!("write background marker {name}"), e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn markers_round_trip_and_reject_mismatches() {
        let session = SessionId::new("s").unwrap();
        let id = ExecutionId::new("abc-1").unwrap();
        let marker = Marker {
            command: "python3 -m http.server 0".into(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kill_requested: false,
        };
        let bytes = encode(&session, &id, &marker);
        assert_eq!(decode(&bytes, &id).unwrap(), marker);
        let killed = Marker {
            kill_requested: true,
            ..marker.clone()
        };
        assert_eq!(
            decode(&encode(&session, &id, &killed), &id).unwrap(),
            killed
        );
        let other = ExecutionId::new("abc-2").unwrap();
        assert!(decode(&bytes, &other).is_err());
        assert!(decode(b"{}", &id).is_err());
        assert!(decode(b"not json", &id).is_err());
    }
}
