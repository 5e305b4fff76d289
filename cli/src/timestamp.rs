//! The one format of every time the CLI prints, in tables and in JSON:
//! RFC 3339 in UTC to the second, `2026-11-30T13:04:05Z`.

use std::time::SystemTime;

use runbox_proto::Timestamp;

/// A time as the CLI prints it.
pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A stored timestamp as the CLI prints it; `None` when absent or out of
/// range.
pub fn format_proto(ts: Option<Timestamp>) -> Option<String> {
    ts.and_then(|t| SystemTime::try_from(t).ok()).map(format)
}

/// Rewrites the named fields of a JSON object (a serialised message, whose
/// timestamps carry as many fractional digits as they have) in the one
/// format.
pub fn normalise(value: &mut serde_json::Value, fields: &[(&str, Option<Timestamp>)]) {
    for (name, ts) in fields {
        if let Some(slot) = value.get_mut(*name) {
            *slot = format_proto(*ts).map_or(serde_json::Value::Null, serde_json::Value::String);
        }
    }
}
