//! Request ids: the caller's name for one command sent over the request
//! topic, and the execution id derived from it.
//!
//! Pub/Sub delivers at least once, and any instance may receive a message
//! again. Deriving the execution id from the request id (instead of
//! drawing a fresh one) makes every delivery of one request name the same
//! request object, which is written create-only: the second delivery finds
//! it there and waits for that execution instead of running the command
//! again.
//!
//! The id is a hash, not the request id itself, so a request id can never
//! name another execution's objects (every derived id starts with
//! [`TOPIC_EXECUTION_PREFIX`] and has a length no instance's ids have) and
//! the result prefix of all topic executions is known to every instance.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::ids::ExecutionId;

/// The longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The prefix of every execution id derived from a request id. Instance
/// ids are random 6-character ids or configured ones; their execution ids
/// are 18 characters longer than the instance id, so none is 55 long with
/// this prefix.
pub const TOPIC_EXECUTION_PREFIX: &str = "rq-";

/// Domain separation: the same bytes hashed for another purpose never give
/// an execution id.
const DOMAIN: &[u8] = b"runbox.v1 request id\0";

const B32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A request id that breaks the `[A-Za-z0-9._:-]{1,128}` rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    /// The id is empty or missing.
    #[error("requestId is required; allowed: 1 to 128 characters from [A-Za-z0-9._:-]")]
    Empty,
    /// The id is longer than [`MAX_REQUEST_ID_LEN`].
    #[error("requestId is {0} bytes long; allowed: 1 to 128 characters from [A-Za-z0-9._:-]")]
    TooLong(usize),
    /// The id holds a character outside the allowed set.
    #[error("requestId contains {0:?}; allowed: 1 to 128 characters from [A-Za-z0-9._:-]")]
    BadChar(char),
}

/// A caller's request id: `[A-Za-z0-9._:-]{1,128}` (UUIDs, ULIDs and
/// `service:1234`-style ids fit).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Validates and wraps a request id.
    pub fn new(id: &str) -> Result<Self, RequestIdError> {
        if id.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(RequestIdError::BadChar(ch));
        }
        if id.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong(id.len()));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The execution id of this request: [`TOPIC_EXECUTION_PREFIX`] and
    /// the first 260 bits of a SHA-256 of the id, in base 32 (55
    /// characters). The same on every instance and every delivery.
    pub fn execution_id(&self) -> ExecutionId {
        let digest = Sha256::new()
            .chain_update(DOMAIN)
            .chain_update(self.0.as_bytes())
            .finalize();
        let mut id = String::with_capacity(TOPIC_EXECUTION_PREFIX.len() + 52);
        id.push_str(TOPIC_EXECUTION_PREFIX);
        // 52 digits of 5 bits: the 256 bits, then 4 zero bits.
        let mut acc: u16 = 0;
        let mut bits = 0;
        for byte in digest.iter().copied().chain(std::iter::once(0)) {
            acc = (acc << 8) | u16::from(byte);
            bits += 8;
            while bits >= 5 && id.len() < TOPIC_EXECUTION_PREFIX.len() + 52 {
                bits -= 5;
                id.push(char::from(B32[usize::from((acc >> bits) & 31)]));
            }
        }
        ExecutionId::new(&id)
            .unwrap_or_else(|_| unreachable!("base-32 digits after a valid prefix"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an execution id is one derived from a request id.
pub fn is_topic_execution(id: &ExecutionId) -> bool {
    id.as_str().starts_with(TOPIC_EXECUTION_PREFIX)
        && id.as_str().len() == TOPIC_EXECUTION_PREFIX.len() + 52
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_follow_the_rule() {
        for ok in [
            "a",
            "0b9e6f1c-6f8e-4f7a-9d7e-3c1f2a4b5c6d",
            "svc:42.1_x",
            &"r".repeat(128),
        ] {
            assert!(RequestId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(RequestId::new(""), Err(RequestIdError::Empty));
        assert_eq!(
            RequestId::new(&"r".repeat(129)),
            Err(RequestIdError::TooLong(129))
        );
        for (bad, ch) in [
            ("../x", '/'),
            ("a/b", '/'),
            ("a\nb", '\n'),
            ("a\0", '\0'),
            ("é", 'é'),
            ("a b", ' '),
        ] {
            assert_eq!(
                RequestId::new(bad),
                Err(RequestIdError::BadChar(ch)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_execution_id_is_stable_and_distinct() {
        let a = RequestId::new("req-1").unwrap();
        let id = a.execution_id();
        assert_eq!(id, RequestId::new("req-1").unwrap().execution_id());
        assert_ne!(id, RequestId::new("req-2").unwrap().execution_id());
        assert_eq!(id.as_str().len(), 55);
        assert!(id.as_str().starts_with(TOPIC_EXECUTION_PREFIX));
        assert!(is_topic_execution(&id));
        // A fixed value: changing the derivation would run redelivered
        // requests of a running deployment twice.
        // (Computed independently with Python's hashlib.)
        assert_eq!(
            id.as_str(),
            "rq-t5z1gdncbwjwdba080rehfnkja2h8f9cc68ghc73cm0e7jyfh5zg"
        );
        let instance = crate::InstanceId::random().next_execution_id();
        assert!(!is_topic_execution(&instance));
    }
}
