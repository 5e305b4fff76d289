//! What can go wrong in a workspace file operation: one error type for the
//! whole file API, telling bad input from store and disk failures.

use std::io;
use std::path::PathBuf;

use runbox_core::store::StoreError;
use runbox_core::workspace_path::PathError;

/// A file operation failed. Every variant before `Conflict` is bad input,
/// reported before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is malformed or leaves the workspace.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The path is too long for this session's object names.
    #[error(
        "path {path:?} is {bytes} bytes long; in this session's workspace at most {max} bytes are allowed"
    )]
    PathTooLong {
        /// The normalised path (shortened).
        path: String,
        /// Its length.
        bytes: usize,
        /// The limit for this session.
        max: usize,
    },
    /// On the embedded backend, the path resolves through a symlink to a
    /// place outside the workspace.
    #[error(
        "path {path:?} leads through a symlink to {}, outside the workspace {root}",
        target.display()
    )]
    SymlinkEscape {
        /// The path given.
        path: String,
        /// Where it resolves to.
        target: PathBuf,
        /// The workspace root.
        root: String,
    },
    /// The operation cannot apply to the workspace root.
    #[error("cannot {op} the workspace root")]
    Root {
        /// The operation, e.g. "delete".
        op: &'static str,
    },
    /// The line range is empty or starts before line 1.
    #[error(
        "invalid line range {start}..{end}: lines are numbered from 1 and the end may not precede the start"
    )]
    InvalidLineRange {
        /// First line asked for.
        start: u64,
        /// Last line asked for.
        end: u64,
    },
    /// The text to replace is empty.
    #[error("the text to replace is empty")]
    EmptyPattern,
    /// The regular expression does not compile.
    #[error("invalid regular expression {pattern:?}")]
    InvalidRegex {
        /// The expression given.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: regex::Error,
    },
    /// The glob is malformed or reaches outside the directory searched.
    #[error("invalid glob {glob:?}: {reason}")]
    InvalidGlob {
        /// The glob given.
        glob: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An upload is larger than allowed; nothing was written.
    #[error("upload to {path} is larger than the {limit}-byte limit; nothing was written")]
    UploadTooLarge {
        /// The destination.
        path: String,
        /// The limit (`UploadOptions::max_bytes`).
        limit: u64,
    },
    /// The file is too large for an operation that holds it in memory.
    #[error("{path} is {size} bytes; {op} handles files up to {limit} bytes (use download/upload)")]
    TooLargeToEdit {
        /// The file.
        path: String,
        /// Its size (at least).
        size: u64,
        /// [`MAX_EDIT_BYTES`](crate::files::MAX_EDIT_BYTES).
        limit: u64,
        /// The operation.
        op: &'static str,
    },
    /// Nothing exists at the path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path.
        path: String,
    },
    /// The path is a directory where a file is needed.
    #[error("{path} is a directory")]
    IsADirectory {
        /// The path.
        path: String,
    },
    /// A file stands where a directory is needed (the path itself, or one
    /// of its parents when writing).
    #[error("{path} is a file, not a directory")]
    NotADirectory {
        /// The file in the way.
        path: String,
    },
    /// A directory was to be deleted without `recursive`.
    #[error("{path} is a directory and not empty; delete it with `recursive`")]
    DirectoryNotEmpty {
        /// The directory.
        path: String,
    },
    /// Other writers kept changing the file during a read-modify-write edit.
    #[error("{path} kept changing while it was being edited; try again")]
    Conflict {
        /// The file.
        path: String,
    },
    /// The object store failed.
    #[error("{op}")]
    Store {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Local I/O failed (the embedded workspace directory, or the stream
    /// being uploaded).
    #[error("{op}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            FileError::Store { source, .. } => source.is_retryable(),
            FileError::Conflict { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn store(op: impl Into<String>, source: StoreError) -> Self {
        FileError::Store {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        FileError::Io {
            op: op.into(),
            source,
        }
    }
}
