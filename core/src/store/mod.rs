//! The object store: the one place runbox keeps requests, results, logs and
//! session state. One trait, several backends (local directory, Cloud
//! Storage), one conformance suite (`runbox-tests`, `store_conformance`).
//!
//! The semantics are Cloud Storage's: every write of an object creates a new
//! generation, writes can be made conditional on the generation they expect
//! (or on the object not existing), and a failed condition is the typed
//! [`StoreError::PreconditionFailed`], never a silent overwrite.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncRead;

pub mod gcs;
pub mod local;

pub use gcs::GcsStore;
pub use local::{Durability, LocalStore};

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// What is known about one generation of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full object name, e.g. `results/abc.json`.
    pub name: String,
    /// The generation: unique per write of this name, larger for later writes.
    pub generation: i64,
    /// Size in bytes.
    pub size: u64,
    /// Custom metadata (GCS `metadata`), e.g. `traceparent`.
    pub metadata: BTreeMap<String, String>,
    /// When this generation was written, if the backend knows.
    pub updated: Option<SystemTime>,
}

/// An object's bytes with its metadata.
#[derive(Clone, Debug)]
pub struct Object {
    /// The generation read.
    pub meta: ObjectMeta,
    /// The content.
    pub data: Bytes,
}

/// A condition on the current generation of an object, checked atomically
/// with a write or delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precondition {
    /// No condition: last writer wins. Only for objects with a single writer.
    #[default]
    None,
    /// The object must not exist (GCS `ifGenerationMatch=0`).
    DoesNotExist,
    /// The object's current generation must be this one.
    GenerationMatch(i64),
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precondition::None => f.write_str("none"),
            Precondition::DoesNotExist => f.write_str("object must not exist"),
            Precondition::GenerationMatch(g) => write!(f, "generation must be {g}"),
        }
    }
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Checked atomically with the write.
    pub precondition: Precondition,
    /// Custom metadata stored with the new generation.
    pub metadata: BTreeMap<String, String>,
    /// The caller can do without this write after a power loss or kernel
    /// crash, so a backend may skip waiting for the disk. The write stays
    /// atomic either way; Cloud Storage ignores the hint (every write there
    /// is durable), the local store skips its fsyncs (see
    /// [`PutOptions::volatile()`]).
    pub volatile: bool,
}

impl PutOptions {
    /// A write that must create the object.
    #[must_use]
    pub fn create() -> Self {
        Self {
            precondition: Precondition::DoesNotExist,
            ..Self::default()
        }
    }

    /// A write conditioned on `precondition`.
    #[must_use]
    pub fn when(precondition: Precondition) -> Self {
        Self {
            precondition,
            ..Self::default()
        }
    }

    /// Marks the write volatile (the field of that name): only for an object whose
    /// loss in a crash of the whole machine costs nothing more than the
    /// crash itself (a request that the executor, on the same machine, reads
    /// at once: after the crash that execution can only be LOST anyway).
    #[must_use]
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    /// Adds one custom metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only names starting with this.
    pub prefix: String,
    /// When set, names with this character after the prefix are folded into
    /// [`ListPage::prefixes`] (GCS delimiter semantics); `Some('/')` lists one
    /// "directory".
    pub delimiter: Option<char>,
    /// Continue after a previous page.
    pub page_token: Option<String>,
    /// Largest page wanted; backends may return fewer. `None`: backend default (1000).
    pub page_size: Option<u32>,
}

/// One page of a listing, in lexicographic name order.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Objects on this page.
    pub objects: Vec<ObjectMeta>,
    /// With a delimiter: the distinct "sub-directory" prefixes on this page,
    /// each ending with the delimiter.
    pub prefixes: Vec<String>,
    /// Pass as [`ListOptions::page_token`] to get the next page; `None` at the end.
    pub next_page_token: Option<String>,
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object {name} not found")]
    NotFound {
        /// The object name.
        name: String,
    },
    /// The write's or delete's precondition did not hold: someone else wrote first.
    #[error("conflict on {name}: precondition failed ({precondition})")]
    PreconditionFailed {
        /// The object name.
        name: String,
        /// The condition that did not hold.
        precondition: Precondition,
    },
    /// The object name is not allowed.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A page token that this store did not issue.
    #[error("invalid page token {token:?}")]
    InvalidPageToken {
        /// The token given.
        token: String,
    },
    /// Local I/O failed.
    #[error("{op} {name}")]
    Io {
        /// The operation, e.g. "write", "read".
        op: &'static str,
        /// The object name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store's own bookkeeping for an object is unreadable.
    #[error("corrupt store metadata for {name}: {detail}")]
    Corrupt {
        /// The object name.
        name: String,
        /// What was wrong.
        detail: String,
    },
    /// A remote backend failed.
    #[error("{op} {name}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The object name or prefix.
        name: String,
        /// Whether trying again may succeed (timeouts, 429, 5xx).
        retryable: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Backend { retryable, .. } => *retryable,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether this is [`StoreError::PreconditionFailed`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::PreconditionFailed { .. })
    }
}

/// An object store with generations and conditional writes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where the objects live, for messages: `file:///path` or `gs://bucket`.
    fn describe(&self) -> String;

    /// Metadata of the current generation.
    async fn head(&self, name: &str) -> Result<ObjectMeta>;

    /// The current generation's bytes and metadata.
    async fn get(&self, name: &str) -> Result<Object>;

    /// The current generation as a stream, for objects too large to hold.
    async fn get_stream(&self, name: &str) -> Result<(ObjectMeta, ByteStream)>;

    /// Writes a new generation from memory. Readers see the old or the new
    /// content, never a mix.
    async fn put(&self, name: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta>;

    /// Writes a new generation from a stream without holding it in memory.
    async fn put_stream(
        &self,
        name: &str,
        data: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta>;

    /// Deletes the object.
    async fn delete(&self, name: &str, precondition: Precondition) -> Result<()>;

    /// One page of the objects under a prefix.
    async fn list(&self, opts: &ListOptions) -> Result<ListPage>;
}

/// Checks an object name against the rules every backend shares: non-empty,
/// at most 1024 bytes, relative, no empty, `.` or `..` segments, no NUL or
/// control characters, nothing under the reserved `.runbox/` prefix.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            name: name.chars().take(200).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    if name.starts_with('/') {
        return bad("starts with '/'");
    }
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("has an empty, '.' or '..' segment");
    }
    if name == ".runbox" || name.starts_with(".runbox/") {
        return bad("'.runbox/' is reserved for the store's own files");
    }
    Ok(())
}

/// Reads every page of a listing (no delimiter) into one list.
pub async fn list_all(store: &dyn Store, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut opts = ListOptions {
        prefix: prefix.to_owned(),
        ..ListOptions::default()
    };
    loop {
        let page = store.list(&opts).await?;
        out.extend(page.objects);
        match page.next_page_token {
            Some(token) => opts.page_token = Some(token),
            None => return Ok(out),
        }
    }
}

/// Deletes every object under a prefix; returns how many were deleted.
/// Objects that vanish meanwhile are not an error.
pub async fn delete_prefix(store: &dyn Store, prefix: &str) -> Result<usize> {
    let mut deleted = 0;
    for meta in list_all(store, prefix).await? {
        match store.delete(&meta.name, Precondition::None).await {
            Ok(()) => deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// A JSON object read from the store, with the generation it was read at.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// The generation it was read at; pass to
    /// [`Precondition::GenerationMatch`] to update it safely.
    pub generation: i64,
}

/// Why a JSON object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonObjectError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object exists but does not decode.
    #[error("object {name} is not a valid {message}")]
    Invalid {
        /// The object name.
        name: String,
        /// The message type expected.
        message: &'static str,
        /// The parser's complaint.
        #[source]
        source: runbox_proto::JsonError,
    },
}

/// Reads and decodes a JSON message; `what` names the message in errors.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    name: &str,
    what: &'static str,
) -> Result<Versioned<T>, JsonObjectError> {
    let obj = store.get(name).await?;
    let value =
        runbox_proto::from_json(what, &obj.data).map_err(|source| JsonObjectError::Invalid {
            name: name.to_owned(),
            message: what,
            source,
        })?;
    Ok(Versioned {
        value,
        generation: obj.meta.generation,
    })
}

/// Encodes and writes a JSON message.
pub async fn put_json<T: Serialize + Sync>(
    store: &dyn Store,
    name: &str,
    value: &T,
    opts: PutOptions,
) -> Result<ObjectMeta> {
    store
        .put(name, Bytes::from(runbox_proto::to_json(value)), opts)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("results/a.json").is_ok());
        assert!(validate_name("sessions/s/workspace/dir/file.txt").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "./a",
            "a/",
            "a\0b",
            ".runbox/x",
            ".runbox",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
