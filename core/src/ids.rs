//! Session and execution identifiers. Both are validated on construction, so
//! a value of these types is always safe to put in an object name.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest session or execution id accepted.
pub const MAX_ID_LEN: usize = 64;

/// An identifier that breaks the `[A-Za-z0-9_-]{1,64}` rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{kind} id is empty; allowed: 1 to 64 characters from [A-Za-z0-9_-]")]
    Empty {
        /// "session" or "execution".
        kind: &'static str,
    },
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("{kind} id is {len} characters long; allowed: 1 to 64 characters from [A-Za-z0-9_-]")]
    TooLong {
        /// "session" or "execution".
        kind: &'static str,
        /// The length given.
        len: usize,
    },
    /// The id holds a character outside `[A-Za-z0-9_-]`.
    #[error("{kind} id {id:?} contains {ch:?}; allowed: 1 to 64 characters from [A-Za-z0-9_-]")]
    BadChar {
        /// "session" or "execution".
        kind: &'static str,
        /// The id given (escaped by Debug formatting).
        id: String,
        /// The first character not allowed.
        ch: char,
    },
}

fn validate(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar {
            kind,
            id: id.chars().take(80).collect(),
            ch,
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: id.len(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        impl $name {
            /// Validates and wraps an id.
            pub fn new(id: impl AsRef<str>) -> Result<Self, IdError> {
                let id = id.as_ref();
                validate($kind, id)?;
                Ok(Self(Arc::from(id)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A session id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);
id_type!(SessionId, "session");

/// An execution id: `{instance}-{time}{sequence}`, sortable by creation time
/// within one dispatcher instance, prefixed so an instance can recognise its
/// own notifications by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(Arc<str>);
id_type!(ExecutionId, "execution");

/// The short random id of one dispatcher instance (6 characters of
/// lowercase base-32).
#[derive(Clone, Debug)]
pub struct InstanceId {
    id: Arc<str>,
    seq: Arc<AtomicU32>,
}

const B32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn push_b32(out: &mut String, mut value: u64, digits: usize) {
    let mut buf = vec![0u8; digits];
    for slot in buf.iter_mut().rev() {
        *slot = B32[(value & 31) as usize];
        value >>= 5;
    }
    out.push_str(std::str::from_utf8(&buf).expect("base32 alphabet is ASCII"));
}

impl InstanceId {
    /// A fresh random instance id.
    pub fn random() -> Self {
        let mut id = String::with_capacity(6);
        // fastrand seeds each thread's generator from the monotonic clock
        // (nanoseconds) and the thread: instances started apart differ.
        push_b32(&mut id, fastrand::u64(..), 6);
        Self::from_validated(id)
    }

    /// Uses a given instance id (for example from config); must be a valid id
    /// of at most 16 characters.
    pub fn new(id: &str) -> Result<Self, IdError> {
        validate("instance", id)?;
        if id.len() > 16 {
            return Err(IdError::TooLong {
                kind: "instance",
                len: id.len(),
            });
        }
        Ok(Self::from_validated(id.to_owned()))
    }

    fn from_validated(id: String) -> Self {
        Self {
            id: Arc::from(id),
            seq: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The instance id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The prefix every execution id of this instance starts with.
    pub fn execution_prefix(&self) -> String {
        format!("{}-", self.id)
    }

    /// A new execution id: the instance prefix, the creation time in
    /// milliseconds (10 base-32 digits, so ids sort by time), then a sequence
    /// number that keeps ids from the same millisecond apart and in order.
    pub fn next_execution_id(&self) -> ExecutionId {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.id.len() + 18);
        id.push_str(&self.id);
        id.push('-');
        push_b32(&mut id, millis, 10);
        push_b32(&mut id, u64::from(seq), 7);
        ExecutionId(Arc::from(id))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_follow_the_documented_rule() {
        assert!(SessionId::new("demo_1-A").is_ok());
        assert!(SessionId::new("a".repeat(64)).is_ok());
        assert!(matches!(
            SessionId::new(""),
            Err(IdError::Empty { kind: "session" })
        ));
        assert!(matches!(
            SessionId::new("a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        let err = SessionId::new("../x").unwrap_err();
        assert!(matches!(err, IdError::BadChar { ch: '.', .. }));
        assert!(err.to_string().contains("[A-Za-z0-9_-]"), "{err}");
        assert!(SessionId::new("a/b").is_err());
        assert!(SessionId::new("a\0b").is_err());
        assert!(SessionId::new("é").is_err());
    }

    #[test]
    fn execution_ids_carry_the_prefix_and_sort_by_creation() {
        let inst = InstanceId::random();
        assert_eq!(inst.as_str().len(), 6);
        let ids: Vec<_> = (0..1000).map(|_| inst.next_execution_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        for id in &ids {
            assert!(id.as_str().starts_with(&inst.execution_prefix()));
            ExecutionId::new(id.as_str()).expect("generated ids are valid");
        }
        assert_ne!(InstanceId::random().as_str(), InstanceId::random().as_str());
    }
}
