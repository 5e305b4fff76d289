//! The JSON half of the encoding: helpers for the fields whose proto3 JSON
//! form differs from serde's default (enums by name, RFC 3339 timestamps).

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON document that does not match the message it was read as.
#[derive(Debug, thiserror::Error)]
#[error("invalid {message} JSON")]
pub struct JsonError {
    message: &'static str,
    #[source]
    source: serde_json::Error,
}

impl JsonError {
    /// The underlying parser's explanation (line, column, what was expected).
    pub fn detail(&self) -> String {
        self.source.to_string()
    }
}

/// Encodes a message as its JSON form (compact).
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string
    // keys, no custom serialisers that error.
    serde_json::to_vec(value).expect("runbox messages always serialise")
}

/// Decodes a message from its JSON form; `what` names the message in errors.
pub fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, JsonError> {
    serde_json::from_slice(bytes).map_err(|source| JsonError {
        message: what,
        source,
    })
}

pub(crate) mod status {
    use super::*;
    use crate::ExecStatus;

    pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
        match ExecStatus::try_from(*value) {
            Ok(status) => s.serialize_str(status.name()),
            Err(_) => s.serialize_i32(*value),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Number(i32),
        }
        match Repr::deserialize(d)? {
            Repr::Number(n) => Ok(n),
            Repr::Name(name) => ExecStatus::from_name(&name)
                .map(|s| s as i32)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown status {name:?}"))),
        }
    }
}

pub(crate) mod timestamp {
    use super::*;
    use prost_types::Timestamp;

    pub fn serialize<S: Serializer>(value: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(ts) => {
                let t = SystemTime::try_from(*ts).map_err(serde::ser::Error::custom)?;
                // proto3 JSON: 0, 3, 6 or 9 fractional digits, as few as exact.
                let text = match ts.nanos {
                    0 => humantime::format_rfc3339_seconds(t).to_string(),
                    n if n % 1_000_000 == 0 => humantime::format_rfc3339_millis(t).to_string(),
                    n if n % 1_000 == 0 => humantime::format_rfc3339_micros(t).to_string(),
                    _ => humantime::format_rfc3339_nanos(t).to_string(),
                };
                s.serialize_str(&text)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let t = humantime::parse_rfc3339_weak(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad timestamp {text:?}: {e}")))?;
        Ok(Some(Timestamp::from(t)))
    }
}
