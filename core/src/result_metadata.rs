//! A small [`ExecResult`] carried in its result object's custom metadata, so
//! that the finalize notification (whose `JSON_API_V1` payload holds the
//! object's metadata) is enough to resolve the caller without reading the
//! object.
//!
//! The encoding is versioned by its key: [`KEY`] (`runbox-result-v1`) holds
//! the result's protobuf bytes (`runbox.v1.ExecResult`), base64-encoded with
//! the standard alphabet and padding. A later encoding gets a new key, so a
//! reader that does not know it finds nothing and reads the object instead;
//! the object's body always stays the full JSON record, the one source of
//! truth.
//!
//! Budget: Cloud Storage allows at most 8 KiB of custom metadata per object,
//! keys and values together. The encoded value may take [`VALUE_BUDGET`]
//! (6 KiB) of it, leaving 2 KiB for the other entries (`traceparent` and
//! whatever comes later). A result whose encoding is larger (roughly, more
//! than about 4.5 KiB of output) is not put in the metadata at all.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use runbox_proto::{ExecResult, Message};

/// The metadata key of the current encoding.
pub const KEY: &str = "runbox-result-v1";

/// Largest encoded value, in bytes (6 KiB of Cloud Storage's 8 KiB of custom
/// metadata per object).
pub const VALUE_BUDGET: usize = 6 * 1024;

/// A value under [`KEY`] that is not a valid encoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is not base64.
    #[error("result metadata {KEY} is not base64")]
    Base64(#[source] base64::DecodeError),
    /// The bytes are not an `ExecResult` message.
    #[error("result metadata {KEY} is not an ExecResult")]
    Protobuf(#[source] prost::DecodeError),
}

/// The metadata entry carrying `result`, or `None` when its encoding exceeds
/// [`VALUE_BUDGET`] (the result is then only in the object's body).
pub fn encode(result: &ExecResult) -> Option<(&'static str, String)> {
    // base64 grows 3 bytes into 4: check before encoding a large result.
    let raw = result.encoded_len();
    if raw.div_ceil(3) * 4 > VALUE_BUDGET {
        return None;
    }
    Some((KEY, STANDARD.encode(result.encode_to_vec())))
}

/// The result carried in `metadata`: `None` when there is none in the
/// current encoding (an older or newer writer, or a result too large), an
/// error when the entry is there but unusable. Either way the caller can
/// read the object instead.
pub fn decode(metadata: &BTreeMap<String, String>) -> Option<Result<ExecResult, DecodeError>> {
    let value = metadata.get(KEY)?;
    Some(
        STANDARD
            .decode(value)
            .map_err(DecodeError::Base64)
            .and_then(|bytes| ExecResult::decode(bytes.as_slice()).map_err(DecodeError::Protobuf)),
    )
}

#[cfg(test)]
mod tests {
    use runbox_proto::ExecStatus;

    use super::*;

    fn result(stdout: String) -> ExecResult {
        let mut r = ExecResult {
            execution_id: "abc123-1".to_owned(),
            session_id: "s".to_owned(),
            exit_code: 0,
            stdout,
            cwd: "/tmp".to_owned(),
            started_at: Some(runbox_proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            state_generation: 42,
            ..Default::default()
        };
        r.set_exec_status(ExecStatus::Succeeded);
        r
    }

    fn metadata(entry: (&str, String)) -> BTreeMap<String, String> {
        BTreeMap::from([(entry.0.to_owned(), entry.1)])
    }

    #[test]
    fn a_small_result_round_trips() {
        let r = result("hello\n".repeat(50));
        let (key, value) = encode(&r).expect("fits");
        assert_eq!(key, KEY);
        assert!(value.len() <= VALUE_BUDGET);
        let back = decode(&metadata((key, value))).expect("present").unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_budget_is_kept_to_the_byte() {
        // Grow the output until the encoding no longer fits: every size that
        // was encoded fits, and the first refusal is just past the budget.
        let mut n = 4000;
        loop {
            let r = result("x".repeat(n));
            match encode(&r) {
                Some((_, value)) => assert!(value.len() <= VALUE_BUDGET, "{n}"),
                None => {
                    assert!(r.encoded_len().div_ceil(3) * 4 > VALUE_BUDGET);
                    assert!(n > 4096, "refused a small result: {n}");
                    break;
                }
            }
            n += 1;
        }
        assert!(encode(&result("x".repeat(1 << 20))).is_none());
    }

    #[test]
    fn absent_or_unknown_encodings_are_not_found() {
        assert!(decode(&BTreeMap::new()).is_none());
        let other = BTreeMap::from([("runbox-result-v2".to_owned(), "AAAA".to_owned())]);
        assert!(decode(&other).is_none());
    }

    #[test]
    fn broken_values_are_errors() {
        let bad = metadata((KEY, "not base64!".to_owned()));
        assert!(matches!(decode(&bad), Some(Err(DecodeError::Base64(_)))));
        // Valid base64 of bytes that are no protobuf message (a truncated
        // length-delimited field).
        let bad = metadata((KEY, STANDARD.encode([0x0a, 0x10, b'a'])));
        assert!(matches!(decode(&bad), Some(Err(DecodeError::Protobuf(_)))));
    }
}
