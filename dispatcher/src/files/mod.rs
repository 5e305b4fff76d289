//! The workspace file API: the Sandbox protocol's `file_*` operations
//! (DESIGN §1) as methods on [`Session`], reading and writing the session's
//! workspace objects (`sessions/{session}/workspace/…`, one object per file)
//! directly through the [`Store`], without launching a job.
//!
//! ```no_run
//! # async fn demo(session: runbox_dispatcher::Session) -> runbox_dispatcher::Result<()> {
//! use runbox_dispatcher::files::{ReadOptions, WriteOptions};
//! session.write_file("app.py", "print('hi')\n", WriteOptions::default()).await?;
//! let text = session.read_file("app.py", ReadOptions::default()).await?;
//! assert_eq!(text.content, "print('hi')\n");
//! # Ok(()) }
//! ```
//!
//! **Paths** are what a command in the session would use: relative to the
//! workspace, or absolute under the workspace root that commands see
//! ([`Session::workspace_root`]). They are normalised by
//! [`WorkspacePath::parse`]; anything that leaves the workspace (`..` above
//! the root, an absolute path elsewhere, a NUL byte) is refused with a typed
//! [`FileError`] before any I/O. On the embedded backend a path is also
//! resolved on the real filesystem: symlinks inside the workspace are
//! followed, and a path whose existing part resolves through a symlink to
//! somewhere outside the workspace is refused ([`FileError::SymlinkEscape`]).
//!
//! **Directories** are not objects: a directory exists while some object
//! lies below it (on the embedded backend, also while it exists on disk, so
//! an empty directory a command made is listed). Writing a file creates its
//! parent "directories" implicitly.
//!
//! **What commands see.** On the embedded backend the objects are the very
//! files commands use, so a file written here is seen by the next command and
//! the other way round. On the gcp backend that depends on the executor
//! restoring and saving the workspace around each command.
//!
//! **Ordering.** These operations are not queued behind the session's
//! commands: a write made while a command runs may land before, during or
//! after that command's own file changes (and, on the gcp backend, be
//! overwritten when the executor saves the workspace). Await the command
//! first. Queueing mutations through the session's command queue is a later
//! improvement. Edits that read and write back (append, replace) are
//! conditioned on the generation they read, so two concurrent API edits of
//! one file never lose either change.
//!
//! [`Session`]: crate::Session
//! [`Session::workspace_root`]: crate::Session::workspace_root

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use runbox_core::store::{ByteStream, ListOptions, ObjectMeta, Store};
use runbox_core::workspace_path::{PathError, WorkspacePath};
use tokio::io::{AsyncRead, ReadBuf};

mod edit;
mod glob;
mod host;
mod read;
mod session_api;
mod transfer;
mod tree;

pub use crate::error::FileError;

use host::confine;
pub use read::TextStream;

/// Largest upload accepted by default: 1 GiB ([`UploadOptions::max_bytes`]).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Largest file that operations holding it in memory accept (append,
/// replace, [`Session::read_file_bytes`]): 64 MiB. Use
/// [`Session::upload`]/[`Session::download`] for larger files.
///
/// [`Session::read_file_bytes`]: crate::Session::read_file_bytes
/// [`Session::upload`]: crate::Session::upload
/// [`Session::download`]: crate::Session::download
pub const MAX_EDIT_BYTES: u64 = 64 << 20;

/// Where the executor keeps session workspaces on disk on the gcp backend
/// (its `RUNBOX_WORKSPACE_DIR` default), at `{base}/sessions/{session}/workspace`;
/// commands see them at the workspace path, not there.
pub const GCP_WORKSPACE_BASE: &str = runbox_core::contract::DEFAULT_WORKSPACE_BASE;

/// Longest object name the stores accept.
const MAX_OBJECT_NAME_BYTES: usize = 1024;

/// How often an edit that reads, changes and writes back a file retries when
/// another writer changed the file in between.
const EDIT_ATTEMPTS: usize = 5;

/// Buffer for streaming reads of a file's lines.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Which lines of a text file to read, and how much of them.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// First line to return, 1-based; `None`: the first.
    pub start_line: Option<u64>,
    /// Last line to return, 1-based and inclusive; `None`: the last.
    pub end_line: Option<u64>,
    /// Most bytes of text to return (cut on a character boundary; sets
    /// [`FileText::truncated`]); `None`: no limit.
    pub max_length: Option<usize>,
}

impl ReadOptions {
    /// Lines `start..=end`, 1-based.
    #[must_use]
    pub fn lines(mut self, start: Option<u64>, end: Option<u64>) -> Self {
        self.start_line = start;
        self.end_line = end;
        self
    }

    /// At most `bytes` of text.
    #[must_use]
    pub fn max_length(mut self, bytes: usize) -> Self {
        self.max_length = Some(bytes);
        self
    }
}

/// Text read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileText {
    /// The lines asked for, each with its `\n` (the file's last line may
    /// have none).
    pub content: String,
    /// Lines in the whole file: `\n`-terminated lines, plus one when the
    /// file does not end with `\n`; 0 for an empty file.
    pub total_lines: u64,
    /// `content` was cut at [`ReadOptions::max_length`].
    pub truncated: bool,
    /// Some bytes read were not valid UTF-8 and are U+FFFD in `content`;
    /// [`Session::read_file_bytes`] or [`Session::download`] give the exact bytes.
    ///
    /// [`Session::read_file_bytes`]: crate::Session::read_file_bytes
    /// [`Session::download`]: crate::Session::download
    pub lossy: bool,
    /// Size of the whole file in bytes.
    pub size: u64,
}

/// How [`Session::write_file`] writes.
///
/// [`Session::write_file`]: crate::Session::write_file
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Add to the end of the file (created if missing) instead of replacing it.
    pub append: bool,
    /// Write a `\n` before the content.
    pub leading_newline: bool,
    /// Write a `\n` after the content.
    pub trailing_newline: bool,
}

impl WriteOptions {
    /// Appends instead of replacing.
    #[must_use]
    pub fn append() -> Self {
        Self {
            append: true,
            ..Self::default()
        }
    }

    /// Adds a `\n` before the content.
    #[must_use]
    pub fn leading_newline(mut self) -> Self {
        self.leading_newline = true;
        self
    }

    /// Adds a `\n` after the content.
    #[must_use]
    pub fn trailing_newline(mut self) -> Self {
        self.trailing_newline = true;
        self
    }
}

/// How [`Session::delete_file`] deletes.
///
/// [`Session::delete_file`]: crate::Session::delete_file
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOptions {
    /// Delete a directory and everything below it.
    pub recursive: bool,
}

impl DeleteOptions {
    /// Deletes directories with their content.
    #[must_use]
    pub fn recursive() -> Self {
        Self { recursive: true }
    }
}

/// How many occurrences [`Session::replace_in_file`] replaces.
///
/// [`Session::replace_in_file`]: crate::Session::replace_in_file
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceOptions {
    /// At most this many, first to last; `None`: all.
    pub max_replacements: Option<usize>,
}

impl ReplaceOptions {
    /// Every occurrence.
    #[must_use]
    pub fn all() -> Self {
        Self {
            max_replacements: None,
        }
    }

    /// The first `n` occurrences.
    #[must_use]
    pub fn first(n: usize) -> Self {
        Self {
            max_replacements: Some(n),
        }
    }
}

/// Limits of one [`Session::upload`].
///
/// [`Session::upload`]: crate::Session::upload
#[derive(Clone, Copy, Debug)]
pub struct UploadOptions {
    /// Largest upload accepted, in bytes; a longer stream fails with
    /// [`FileError::UploadTooLarge`] and leaves no object behind.
    /// Default [`DEFAULT_MAX_UPLOAD_BYTES`].
    pub max_bytes: u64,
    /// The stream's expected size, when known: more than `max_bytes` is
    /// refused before anything is read. The cap is enforced on the bytes
    /// actually read either way.
    pub size_hint: Option<u64>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            size_hint: None,
        }
    }
}

impl UploadOptions {
    /// Sets the cap.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets the expected size.
    #[must_use]
    pub fn size_hint(mut self, bytes: u64) -> Self {
        self.size_hint = Some(bytes);
        self
    }
}

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// A file (an object).
    File,
    /// A directory: objects lie below it (or, embedded, it exists on disk).
    Dir,
    /// A symbolic link (embedded backend only; not followed by listings).
    Symlink,
}

impl EntryKind {
    /// `file`, `dir` or `symlink`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so `{:<7}` lines up columns.
        f.pad(self.as_str())
    }
}

/// One entry of [`Session::list_dir`], or what [`Session::stat`] found.
///
/// [`Session::list_dir`]: crate::Session::list_dir
/// [`Session::stat`]: crate::Session::stat
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The last segment of its path.
    pub name: String,
    /// Its path relative to the workspace root (`""` for the root).
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Bytes for files (the link's own length for symlinks); 0 for directories.
    pub size: u64,
}

/// A file as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Its path relative to the workspace root.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The store generation written (or read).
    pub generation: i64,
}

/// One line matched by [`Session::search_file`].
///
/// [`Session::search_file`]: crate::Session::search_file
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchMatch {
    /// 1-based line number.
    pub line_number: u64,
    /// The line without its line ending (`\n` or `\r\n`); invalid UTF-8 is
    /// replaced by U+FFFD.
    pub line: String,
}

/// A file being downloaded: read it as an [`AsyncRead`].
pub struct Download {
    info: FileInfo,
    stream: ByteStream,
}

impl Download {
    /// The file's path, size and generation.
    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    /// The byte stream.
    pub fn into_stream(self) -> ByteStream {
        self.stream
    }
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Download {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream.as_mut().poll_read(cx, buf)
    }
}

/// One session's workspace, for the duration of one operation.
pub(crate) struct Workspace {
    store: Arc<dyn Store>,
    /// `sessions/{session}/workspace/`.
    prefix: String,
    /// The root as commands see it.
    root: String,
    /// Embedded backend: the workspace directory on disk.
    host: Option<PathBuf>,
}

/// What is at a path, as far as the store and the disk tell.
enum Found {
    File(ObjectMeta),
    Dir,
    /// Embedded only: a symlink that could not be followed (dangling).
    Symlink(u64),
}

impl Workspace {
    /// The workspace of one session: its objects are `{prefix}{path}` in
    /// `store`, commands see it at `root`, and on the embedded backend it is
    /// the directory `host`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        prefix: String,
        root: String,
        host: Option<PathBuf>,
    ) -> Self {
        Self {
            store,
            prefix,
            root,
            host,
        }
    }

    /// Normalises `input` and, on the embedded backend, resolves it on disk
    /// (following symlinks inside the workspace; the last segment only when
    /// `follow_last`), refusing anything outside the workspace.
    async fn resolve(&self, input: &str, follow_last: bool) -> Result<WorkspacePath, FileError> {
        let mut path = match (WorkspacePath::parse(&self.root, input), &self.host) {
            // Where no namespace can be made, commands see the directory
            // itself, and `pwd -P` shows it with its symlinks resolved (a
            // temporary directory under /tmp on macOS): accept absolute
            // paths under either spelling too.
            (Err(e @ PathError::OutsideWorkspace { .. }), Some(host)) => {
                let host = host.clone();
                let spellings = blocking(move || {
                    let canonical = std::fs::canonicalize(&host).ok();
                    Ok([Some(host), canonical])
                })
                .await?;
                spellings
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.to_str().map(str::to_owned))
                    .find_map(|dir| WorkspacePath::parse(&dir, input).ok())
                    .ok_or(e)?
            }
            (parsed, _) => parsed?,
        };
        if let Some(host) = &self.host {
            let host = host.clone();
            let root = self.root.clone();
            let input = input.to_owned();
            path = blocking(move || confine(&host, &root, &input, path, follow_last)).await?;
        }
        let max = MAX_OBJECT_NAME_BYTES - self.prefix.len();
        if path.as_str().len() > max {
            return Err(FileError::PathTooLong {
                path: path.as_str().chars().take(200).collect(),
                bytes: path.as_str().len(),
                max,
            });
        }
        Ok(path)
    }

    /// The object name of a file.
    fn object(&self, path: &WorkspacePath) -> String {
        format!("{}{}", self.prefix, path.as_str())
    }

    /// The prefix of every object below a directory.
    fn dir_prefix(&self, path: &WorkspacePath) -> String {
        if path.is_root() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, path.as_str())
        }
    }

    fn host_path(&self, path: &WorkspacePath) -> Option<PathBuf> {
        self.host.as_ref().map(|h| {
            if path.is_root() {
                h.clone()
            } else {
                h.join(path.as_str())
            }
        })
    }

    /// What is at `path`: the object, else objects below it, else (embedded)
    /// what the disk holds.
    async fn found(&self, path: &WorkspacePath) -> Result<Option<Found>, FileError> {
        if path.is_root() {
            return Ok(Some(Found::Dir));
        }
        match self.store.head(&self.object(path)).await {
            Ok(meta) => return Ok(Some(Found::File(meta))),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(FileError::store(format!("stat {path}"), e)),
        }
        if self.has_objects_below(path).await? {
            return Ok(Some(Found::Dir));
        }
        let Some(host) = self.host_path(path) else {
            return Ok(None);
        };
        blocking(move || {
            Ok(match std::fs::symlink_metadata(&host) {
                Ok(md) if md.is_dir() => Some(Found::Dir),
                Ok(md) if md.file_type().is_symlink() => Some(Found::Symlink(md.len())),
                // FIFOs, sockets: not files the API can use.
                _ => None,
            })
        })
        .await
    }

    async fn has_objects_below(&self, path: &WorkspacePath) -> Result<bool, FileError> {
        let page = self
            .store
            .list(&ListOptions {
                prefix: self.dir_prefix(path),
                page_size: Some(1),
                ..ListOptions::default()
            })
            .await
            .map_err(|e| FileError::store(format!("list {path}"), e))?;
        Ok(!page.objects.is_empty())
    }
}

fn entry(path: &WorkspacePath, found: &Found) -> DirEntry {
    let (kind, size) = match found {
        Found::File(meta) => (EntryKind::File, meta.size),
        Found::Dir => (EntryKind::Dir, 0),
        Found::Symlink(len) => (EntryKind::Symlink, *len),
    };
    DirEntry {
        name: path.file_name().unwrap_or("").to_owned(),
        path: path.as_str().to_owned(),
        kind,
        size,
    }
}

fn info(path: &WorkspacePath, meta: &ObjectMeta) -> FileInfo {
    FileInfo {
        path: path.as_str().to_owned(),
        size: meta.size,
        generation: meta.generation,
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(FileError::io("workspace directory", io::Error::other(e))),
    }
}
