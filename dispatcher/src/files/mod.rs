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

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use runbox_core::config::Backend;
use runbox_core::layout;
use runbox_core::store::{
    self, ByteStream, ListOptions, ObjectMeta, Precondition, PutOptions, Store, StoreError,
};
use runbox_core::workspace_path::{PathError, WorkspacePath};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use crate::client::Session;
use crate::error::Result;

mod glob;
mod host;

use host::{confine, is_symlink, list_host_extras};

/// Largest upload accepted by default: 1 GiB ([`UploadOptions::max_bytes`]).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Largest file that operations holding it in memory accept (append,
/// replace, [`Session::read_file_bytes`]): 64 MiB. Use
/// [`Session::upload`]/[`Session::download`] for larger files.
pub const MAX_EDIT_BYTES: u64 = 64 << 20;

/// Where the executor puts session workspaces on the gcp backend (its
/// `RUNBOX_WORKSPACE_DIR` default): the workspace root commands see there is
/// `{base}/sessions/{session}/workspace`. Must match the executor's.
pub const GCP_WORKSPACE_BASE: &str = "/tmp/runbox";

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
    pub lossy: bool,
    /// Size of the whole file in bytes.
    pub size: u64,
}

/// How [`Session::write_file`] writes.
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
        /// [`MAX_EDIT_BYTES`].
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

    fn store(op: impl Into<String>, source: StoreError) -> Self {
        FileError::Store {
            op: op.into(),
            source,
        }
    }

    fn io(op: impl Into<String>, source: io::Error) -> Self {
        FileError::Io {
            op: op.into(),
            source,
        }
    }
}

impl Session {
    /// The absolute path commands in this session see as their workspace:
    /// `RUNBOX_HOME/sessions/{session}/workspace` on the embedded backend,
    /// `{GCP_WORKSPACE_BASE}/sessions/{session}/workspace` on the gcp
    /// backend. Absolute paths given to the file API must lie below it.
    pub fn workspace_root(&self) -> String {
        self.workspace().root
    }

    /// Reads lines of a text file: the range and length in `opts`, the
    /// file's line count, and whether the text was cut or had invalid UTF-8.
    /// The file is streamed, so only the lines returned are held in memory.
    pub async fn read_file(&self, path: &str, opts: ReadOptions) -> Result<FileText> {
        Ok(self.workspace().read_text(path, opts).await?)
    }

    /// The exact bytes of a file of up to [`MAX_EDIT_BYTES`]; larger files
    /// through [`Session::download`].
    pub async fn read_file_bytes(&self, path: &str) -> Result<Bytes> {
        Ok(self.workspace().read_bytes(path).await?)
    }

    /// Writes a file, creating its parent directories implicitly; replaces
    /// it, or with [`WriteOptions::append`] adds to its end (an append reads
    /// and writes back the whole file, conditioned on the generation read,
    /// so files up to [`MAX_EDIT_BYTES`]). Like every mutation here, it is
    /// not queued behind the session's running command (see the module
    /// documentation).
    pub async fn write_file(
        &self,
        path: &str,
        content: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> Result<FileInfo> {
        Ok(self.workspace().write(path, content.into(), opts).await?)
    }

    /// Whether a file or directory exists at `path`.
    pub async fn file_exists(&self, path: &str) -> Result<bool> {
        Ok(self.workspace().stat_path(path).await?.is_some())
    }

    /// What is at `path`: a file, a directory, a (dangling) symlink, or nothing.
    pub async fn stat(&self, path: &str) -> Result<Option<DirEntry>> {
        Ok(self.workspace().stat_path(path).await?)
    }

    /// Deletes a file, or with [`DeleteOptions::recursive`] a directory and
    /// everything below it; returns how many files (and links) were removed.
    /// An empty directory needs no `recursive`. A symlink is removed itself,
    /// never its target. The workspace root cannot be deleted.
    pub async fn delete_file(&self, path: &str, opts: DeleteOptions) -> Result<usize> {
        Ok(self.workspace().delete(path, opts).await?)
    }

    /// The entries of a directory, sorted by name, each with its kind and
    /// size (from the store's delimiter listing; on the embedded backend
    /// also empty directories and symlinks, which are not objects).
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        Ok(self.workspace().list(path).await?)
    }

    /// Replaces occurrences of `old` with `new` in a file of up to
    /// [`MAX_EDIT_BYTES`] (bytes are compared, so files that are not UTF-8
    /// are not damaged) and returns how many were replaced. `old` not found
    /// is not an error: 0 replacements and the file is left untouched. An
    /// empty `old` is [`FileError::EmptyPattern`].
    pub async fn replace_in_file(
        &self,
        path: &str,
        old: &str,
        new: &str,
        opts: ReplaceOptions,
    ) -> Result<usize> {
        Ok(self.workspace().replace(path, old, new, opts).await?)
    }

    /// The lines of a file that match a regular expression (the `regex`
    /// crate's syntax, matched against each line without its line ending),
    /// with 1-based line numbers.
    pub async fn search_file(&self, path: &str, pattern: &str) -> Result<Vec<SearchMatch>> {
        Ok(self.workspace().search(path, pattern).await?)
    }

    /// Files below `dir` whose path relative to `dir` matches `glob`, as
    /// workspace-relative paths in name order. `*` and `?` stay within a
    /// segment (`*.py` matches only in `dir` itself), `**` spans any number
    /// of segments (`**/*.py` matches at any depth), `[...]` is a character
    /// class. Only files match, not directories. A glob with `..` or a
    /// leading `/` is [`FileError::InvalidGlob`].
    pub async fn find_files(&self, dir: &str, glob: &str) -> Result<Vec<String>> {
        Ok(self.workspace().find(dir, glob).await?)
    }

    /// Streams `data` into a file (replacing it), counting bytes as they
    /// pass: past [`UploadOptions::max_bytes`] the upload is aborted with
    /// [`FileError::UploadTooLarge`] and no object is left behind (an older
    /// file at the path is kept).
    pub async fn upload(
        &self,
        path: &str,
        data: impl AsyncRead + Send + 'static,
        opts: UploadOptions,
    ) -> Result<FileInfo> {
        Ok(self.workspace().upload(path, Box::pin(data), opts).await?)
    }

    /// Opens a file for streaming, without holding it in memory.
    pub async fn download(&self, path: &str) -> Result<Download> {
        Ok(self.workspace().download(path).await?)
    }

    fn workspace(&self) -> Workspace {
        let config = &self.client.inner.config;
        let prefix = layout::workspace_prefix(&self.id);
        let (root, host) = match config.backend {
            Backend::Local => {
                let home =
                    std::path::absolute(&config.home).unwrap_or_else(|_| config.home.clone());
                // `components` drops the prefix's trailing '/'.
                let dir: PathBuf = home.join(&prefix).components().collect();
                (dir.to_string_lossy().into_owned(), Some(dir))
            }
            Backend::Gcp => (
                format!("{GCP_WORKSPACE_BASE}/{}", prefix.trim_end_matches('/')),
                None,
            ),
        };
        Workspace {
            store: self.client.inner.store.clone(),
            prefix,
            root,
            host,
        }
    }
}

/// One session's workspace, for the duration of one operation.
struct Workspace {
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
    // ----- the operations ---------------------------------------------------

    async fn read_text(&self, input: &str, opts: ReadOptions) -> Result<FileText, FileError> {
        let start = opts.start_line.unwrap_or(1);
        let end = opts.end_line.unwrap_or(u64::MAX);
        if start == 0 || end < start {
            return Err(FileError::InvalidLineRange { start, end });
        }
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        let read_err = |e| FileError::io(format!("read {path}"), e);

        // Raw bytes kept: a little past max_length, so a character cut by
        // the limit is dropped below rather than mistaken for invalid UTF-8.
        let keep = opts.max_length.map_or(usize::MAX, |m| m.saturating_add(4));
        let mut raw = Vec::new();
        let mut cut = false;
        let mut line: u64 = 1;
        let mut last_byte = b'\n';
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        loop {
            let buf = reader.fill_buf().await.map_err(read_err)?;
            if buf.is_empty() {
                break;
            }
            let mut pos = 0;
            while pos < buf.len() {
                let newline = buf[pos..].iter().position(|&b| b == b'\n');
                let piece_end = newline.map_or(buf.len(), |i| pos + i + 1);
                if (start..=end).contains(&line) && !cut {
                    let piece = &buf[pos..piece_end];
                    let room = keep - raw.len();
                    if piece.len() > room {
                        raw.extend_from_slice(&piece[..room]);
                        cut = true;
                    } else {
                        raw.extend_from_slice(piece);
                    }
                }
                if newline.is_some() {
                    line += 1;
                }
                pos = piece_end;
            }
            last_byte = buf[buf.len() - 1];
            let n = buf.len();
            reader.consume(n);
        }
        // `line` is one more than the number of newlines seen.
        let total_lines = if last_byte == b'\n' { line - 1 } else { line };
        if cut {
            let incomplete = incomplete_tail(&raw);
            raw.truncate(raw.len() - incomplete);
        }
        let (mut content, lossy) = match String::from_utf8(raw) {
            Ok(s) => (s, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        let mut truncated = false;
        if let Some(max) = opts.max_length
            && content.len() > max
        {
            let mut at = max;
            while !content.is_char_boundary(at) {
                at -= 1;
            }
            content.truncate(at);
            truncated = true;
        }
        Ok(FileText {
            content,
            total_lines,
            truncated,
            lossy,
            size: meta.size,
        })
    }

    async fn read_bytes(&self, input: &str) -> Result<Bytes, FileError> {
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        let data = read_capped(stream, &path, meta.size, "reading a whole file").await?;
        Ok(Bytes::from(data))
    }

    async fn write(
        &self,
        input: &str,
        content: Bytes,
        opts: WriteOptions,
    ) -> Result<FileInfo, FileError> {
        let path = self.resolve(input, true).await?;
        self.check_writable(&path).await?;
        let content = if opts.leading_newline || opts.trailing_newline {
            let mut b = BytesMut::with_capacity(content.len() + 2);
            if opts.leading_newline {
                b.extend_from_slice(b"\n");
            }
            b.extend_from_slice(&content);
            if opts.trailing_newline {
                b.extend_from_slice(b"\n");
            }
            b.freeze()
        } else {
            content
        };
        let name = self.object(&path);
        if !opts.append {
            let meta = self
                .store
                .put(&name, content, PutOptions::default())
                .await
                .map_err(|e| FileError::store(format!("write {path}"), e))?;
            return Ok(info(&path, &meta));
        }
        let written = self
            .edit(&path, "append", true, |old| {
                if old.len() as u64 + content.len() as u64 > MAX_EDIT_BYTES {
                    return Err(FileError::TooLargeToEdit {
                        path: path.to_string(),
                        size: old.len() as u64 + content.len() as u64,
                        limit: MAX_EDIT_BYTES,
                        op: "append",
                    });
                }
                let mut b = BytesMut::with_capacity(old.len() + content.len());
                b.extend_from_slice(old);
                b.extend_from_slice(&content);
                Ok(Some((b.freeze(), ())))
            })
            .await?;
        match written {
            Some((meta, ())) => Ok(info(&path, &meta)),
            None => unreachable!("an append always writes"),
        }
    }

    async fn stat_path(&self, input: &str) -> Result<Option<DirEntry>, FileError> {
        let path = self.resolve(input, true).await?;
        Ok(self.found(&path).await?.map(|found| entry(&path, &found)))
    }

    async fn delete(&self, input: &str, opts: DeleteOptions) -> Result<usize, FileError> {
        // The last segment is not followed: deleting a symlink removes the
        // link, as `rm` does.
        let path = self.resolve(input, false).await?;
        if path.is_root() {
            return Err(FileError::Root { op: "delete" });
        }
        if let Some(host) = self.host_path(&path) {
            let link = blocking(move || Ok(is_symlink(&host).then_some(host))).await?;
            if let Some(link) = link {
                let shown = path.to_string();
                blocking(move || {
                    std::fs::remove_file(&link)
                        .map_err(|e| FileError::io(format!("delete {shown}"), e))
                })
                .await?;
                return Ok(1);
            }
        }
        match self
            .store
            .delete(&self.object(&path), Precondition::None)
            .await
        {
            Ok(()) => {
                self.forget_in_manifest(&path.to_string()).await?;
                return Ok(1);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(FileError::store(format!("delete {path}"), e)),
        }
        // Not a file: a directory, or nothing.
        let below = store::list_all(&*self.store, &self.dir_prefix(&path))
            .await
            .map_err(|e| FileError::store(format!("list {path}"), e))?;
        let host_dir = match self.host_path(&path) {
            Some(host) => blocking(move || Ok(host.is_dir().then_some(host))).await?,
            None => None,
        };
        if below.is_empty() && host_dir.is_none() {
            return Err(FileError::NotFound {
                path: path.to_string(),
            });
        }
        if !opts.recursive {
            if !below.is_empty() {
                return Err(FileError::DirectoryNotEmpty {
                    path: path.to_string(),
                });
            }
            // An empty directory on disk: remove it like `rmdir` would.
            let dir = host_dir.expect("checked above");
            let shown = path.to_string();
            return blocking(move || {
                std::fs::remove_dir(&dir)
                    .map(|()| 0)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::DirectoryNotEmpty => {
                            FileError::DirectoryNotEmpty { path: shown }
                        }
                        _ => FileError::io(format!("delete {shown}"), e),
                    })
            })
            .await;
        }
        let mut deleted = 0;
        for meta in below {
            match self.store.delete(&meta.name, Precondition::None).await {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(FileError::store(format!("delete {path}"), e)),
            }
        }
        if let Some(dir) = host_dir {
            // What is not an object is left: empty directories, symlinks,
            // FIFOs. remove_dir_all removes links without following them.
            let shown = path.to_string();
            blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(FileError::io(format!("delete {shown}"), e))
                }
                _ => Ok(()),
            })
            .await?;
        }
        self.forget_in_manifest(&path.to_string()).await?;
        Ok(deleted)
    }

    /// Removes `path` and everything below it from the workspace manifest
    /// (`sessions/{session}/manifest.json`, written by the executor), so the
    /// next command's restore does not bring back the directories of what
    /// was deleted. Only where the manifest is the record (no directory on
    /// this machine: the gcp backend); conditioned on the generation read
    /// and retried on a conflict.
    async fn forget_in_manifest(&self, path: &str) -> Result<(), FileError> {
        if self.host.is_some() {
            return Ok(());
        }
        let Some(session_prefix) = self.prefix.strip_suffix("workspace/") else {
            return Ok(());
        };
        let name = format!("{session_prefix}manifest.json");
        let below = format!("{path}/");
        for _ in 0..8 {
            let obj = match self.store.get(&name).await {
                Ok(obj) => obj,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(FileError::store(format!("read manifest {name}"), e)),
            };
            let Ok(mut manifest) = serde_json::from_slice::<serde_json::Value>(&obj.data) else {
                // Not ours to repair: the executor reports an unreadable manifest.
                return Ok(());
            };
            let Some(entries) = manifest.get_mut("entries").and_then(|e| e.as_array_mut()) else {
                return Ok(());
            };
            let before = entries.len();
            entries.retain(|e| {
                e.get("path")
                    .and_then(|p| p.as_str())
                    .is_none_or(|p| p != path && !p.starts_with(&below))
            });
            if entries.len() == before {
                return Ok(());
            }
            let data = Bytes::from(serde_json::to_vec(&manifest).expect("JSON re-encodes"));
            match self
                .store
                .put(
                    &name,
                    data,
                    PutOptions::when(Precondition::GenerationMatch(obj.meta.generation)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(FileError::store(format!("update manifest {name}"), e)),
            }
        }
        Err(FileError::io(
            format!("update manifest {name}"),
            io::Error::other("it kept changing under us"),
        ))
    }

    async fn list(&self, input: &str) -> Result<Vec<DirEntry>, FileError> {
        let path = self.resolve(input, true).await?;
        let prefix = self.dir_prefix(&path);
        let mut entries = std::collections::BTreeMap::new();
        let mut opts = ListOptions {
            prefix: prefix.clone(),
            delimiter: Some('/'),
            ..ListOptions::default()
        };
        loop {
            let page = self
                .store
                .list(&opts)
                .await
                .map_err(|e| FileError::store(format!("list {path}"), e))?;
            for meta in page.objects {
                let name = meta.name[prefix.len()..].to_owned();
                let found = Found::File(meta);
                entries.insert(name.clone(), entry(&path.join_normal(&name), &found));
            }
            for p in page.prefixes {
                let name = p[prefix.len()..].trim_end_matches('/').to_owned();
                entries.insert(name.clone(), entry(&path.join_normal(&name), &Found::Dir));
            }
            match page.next_page_token {
                Some(token) => opts.page_token = Some(token),
                None => break,
            }
        }
        if let Some(dir) = self.host_path(&path) {
            // Not objects, but there for commands: empty directories and symlinks.
            let extra = blocking(move || list_host_extras(&dir)).await?;
            for (name, found) in extra {
                if !entries.contains_key(&name) {
                    entries.insert(name.clone(), entry(&path.join_normal(&name), &found));
                }
            }
        }
        if entries.is_empty() && !path.is_root() {
            match self.found(&path).await? {
                Some(Found::Dir) => {}
                Some(_) => {
                    return Err(FileError::NotADirectory {
                        path: path.to_string(),
                    });
                }
                None => {
                    return Err(FileError::NotFound {
                        path: path.to_string(),
                    });
                }
            }
        }
        Ok(entries.into_values().collect())
    }

    async fn replace(
        &self,
        input: &str,
        old: &str,
        new: &str,
        opts: ReplaceOptions,
    ) -> Result<usize, FileError> {
        if old.is_empty() {
            return Err(FileError::EmptyPattern);
        }
        let path = self.resolve(input, true).await?;
        let limit = opts.max_replacements.unwrap_or(usize::MAX);
        let written = self
            .edit(&path, "replace", false, |data| {
                let (replaced, count) = replace_bytes(data, old.as_bytes(), new.as_bytes(), limit);
                Ok((count > 0).then(|| (Bytes::from(replaced), count)))
            })
            .await?;
        Ok(written.map_or(0, |(_, count)| count))
    }

    async fn search(&self, input: &str, pattern: &str) -> Result<Vec<SearchMatch>, FileError> {
        let regex =
            regex::bytes::Regex::new(pattern).map_err(|source| FileError::InvalidRegex {
                pattern: pattern.to_owned(),
                source,
            })?;
        let path = self.resolve(input, true).await?;
        let (_, stream) = self.open(&path).await?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let mut matches = Vec::new();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| FileError::io(format!("read {path}"), e))?;
            if n == 0 {
                break;
            }
            number += 1;
            let text = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&line);
            if regex.is_match(text) {
                matches.push(SearchMatch {
                    line_number: number,
                    line: String::from_utf8_lossy(text).into_owned(),
                });
            }
        }
        Ok(matches)
    }

    async fn find(&self, input: &str, pattern: &str) -> Result<Vec<String>, FileError> {
        let glob = glob::Glob::parse(pattern).map_err(|reason| FileError::InvalidGlob {
            glob: pattern.to_owned(),
            reason,
        })?;
        let dir = self.resolve(input, true).await?;
        if !dir.is_root() {
            match self.found(&dir).await? {
                Some(Found::Dir) => {}
                Some(_) => {
                    return Err(FileError::NotADirectory {
                        path: dir.to_string(),
                    });
                }
                None => {
                    return Err(FileError::NotFound {
                        path: dir.to_string(),
                    });
                }
            }
        }
        let base = self.dir_prefix(&dir);
        let literal = glob.literal_dir();
        let listing = if literal.is_empty() {
            base.clone()
        } else {
            format!("{base}{literal}/")
        };
        let objects = store::list_all(&*self.store, &listing)
            .await
            .map_err(|e| FileError::store(format!("list {dir}"), e))?;
        Ok(objects
            .iter()
            .filter_map(|meta| {
                let rel = &meta.name[base.len()..];
                glob.matches(rel)
                    .then(|| dir.join_normal(rel).as_str().to_owned())
            })
            .collect())
    }

    async fn upload(
        &self,
        input: &str,
        data: ByteStream,
        opts: UploadOptions,
    ) -> Result<FileInfo, FileError> {
        let path = self.resolve(input, true).await?;
        let too_large = || FileError::UploadTooLarge {
            path: path.to_string(),
            limit: opts.max_bytes,
        };
        if opts.size_hint.is_some_and(|n| n > opts.max_bytes) {
            return Err(too_large());
        }
        self.check_writable(&path).await?;
        let exceeded = Arc::new(AtomicBool::new(false));
        let capped = Capped {
            inner: data,
            remaining: opts.max_bytes,
            exceeded: exceeded.clone(),
        };
        // The store writes nothing visible until the stream ends cleanly, so
        // the error Capped raises past the cap aborts the whole upload.
        match self
            .store
            .put_stream(&self.object(&path), Box::pin(capped), PutOptions::default())
            .await
        {
            Ok(meta) => Ok(info(&path, &meta)),
            Err(_) if exceeded.load(Ordering::SeqCst) => Err(too_large()),
            Err(e) => Err(FileError::store(format!("upload {path}"), e)),
        }
    }

    async fn download(&self, input: &str) -> Result<Download, FileError> {
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        Ok(Download {
            info: info(&path, &meta),
            stream,
        })
    }

    // ----- helpers ------------------------------------------------------------

    /// Normalises `input` and, on the embedded backend, resolves it on disk
    /// (following symlinks inside the workspace; the last segment only when
    /// `follow_last`), refusing anything outside the workspace.
    async fn resolve(&self, input: &str, follow_last: bool) -> Result<WorkspacePath, FileError> {
        let mut path = match (WorkspacePath::parse(&self.root, input), &self.host) {
            // `pwd -P` in a command shows the root with its symlinks
            // resolved (a temporary directory under /tmp on macOS): accept
            // absolute paths under that spelling too.
            (Err(e @ PathError::OutsideWorkspace { .. }), Some(host)) => {
                let host = host.clone();
                let canonical = blocking(move || Ok(std::fs::canonicalize(host).ok()))
                    .await?
                    .and_then(|p| p.to_str().map(str::to_owned))
                    .filter(|c| *c != self.root);
                match canonical {
                    Some(c) => WorkspacePath::parse(&c, input).map_err(|_| e)?,
                    None => return Err(e.into()),
                }
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

    /// Opens a file for reading, with a precise error when it is missing or
    /// a directory.
    async fn open(&self, path: &WorkspacePath) -> Result<(ObjectMeta, ByteStream), FileError> {
        if path.is_root() {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        match self.store.get_stream(&self.object(path)).await {
            Ok(opened) => Ok(opened),
            Err(e) if e.is_not_found() => Err(match self.found(path).await? {
                Some(Found::Dir) => FileError::IsADirectory {
                    path: path.to_string(),
                },
                _ => FileError::NotFound {
                    path: path.to_string(),
                },
            }),
            Err(e) => Err(FileError::store(format!("read {path}"), e)),
        }
    }

    /// Refuses to write where a directory is, or below a file: on an object
    /// store both could otherwise coexist, which no filesystem can restore.
    async fn check_writable(&self, path: &WorkspacePath) -> Result<(), FileError> {
        if path.is_root() {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        let ancestors = path.ancestors();
        let heads = ancestors.iter().map(|a| async move {
            match self.store.head(&self.object(a)).await {
                Ok(_) => Err(FileError::NotADirectory {
                    path: a.to_string(),
                }),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(FileError::store(format!("stat {a}"), e)),
            }
        });
        let (_, below) = futures::future::try_join(try_join_all(heads), async {
            self.has_objects_below(path).await
        })
        .await?;
        let empty_dir = match self.host_path(path) {
            Some(host) => blocking(move || Ok(host.is_dir() && !is_symlink(&host))).await?,
            None => false,
        };
        if below || empty_dir {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        Ok(())
    }

    /// Read-modify-write of one file, conditioned on the generation read and
    /// retried when another writer got in between. `change` returns the new
    /// content and a value to pass back, or `None` to leave the file as it
    /// is (then `edit` returns `None`). A missing file reads as empty when
    /// `missing_is_empty`, and is [`FileError::NotFound`] otherwise.
    async fn edit<T>(
        &self,
        path: &WorkspacePath,
        op: &'static str,
        missing_is_empty: bool,
        mut change: impl FnMut(&[u8]) -> Result<Option<(Bytes, T)>, FileError>,
    ) -> Result<Option<(ObjectMeta, T)>, FileError> {
        let name = self.object(path);
        for _ in 0..EDIT_ATTEMPTS {
            let (data, precondition) = match self.open(path).await {
                Ok((meta, stream)) => {
                    let data = read_capped(stream, path, meta.size, op).await?;
                    (data, Precondition::GenerationMatch(meta.generation))
                }
                Err(FileError::NotFound { .. }) if missing_is_empty => {
                    (Vec::new(), Precondition::DoesNotExist)
                }
                Err(e) => return Err(e),
            };
            let Some((new, value)) = change(&data)? else {
                return Ok(None);
            };
            match self
                .store
                .put(&name, new, PutOptions::when(precondition))
                .await
            {
                Ok(meta) => return Ok(Some((meta, value))),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(FileError::store(format!("{op} {path}"), e)),
            }
        }
        Err(FileError::Conflict {
            path: path.to_string(),
        })
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

/// Reads a whole stream of a file of `size` bytes, refusing more than
/// [`MAX_EDIT_BYTES`] (checked on the bytes read too: a file edited by a
/// command may have grown since its size was read).
async fn read_capped(
    stream: ByteStream,
    path: &WorkspacePath,
    size: u64,
    op: &'static str,
) -> Result<Vec<u8>, FileError> {
    let too_large = |size| FileError::TooLargeToEdit {
        path: path.to_string(),
        size,
        limit: MAX_EDIT_BYTES,
        op,
    };
    if size > MAX_EDIT_BYTES {
        return Err(too_large(size));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    stream
        .take(MAX_EDIT_BYTES + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|e| FileError::io(format!("read {path}"), e))?;
    if data.len() as u64 > MAX_EDIT_BYTES {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// `data` with the first `limit` non-overlapping occurrences of `old`
/// replaced, and how many there were.
fn replace_bytes(data: &[u8], old: &[u8], new: &[u8], limit: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut count = 0;
    let mut rest = data;
    while count < limit {
        let Some(at) = find(rest, old) else { break };
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(new);
        rest = &rest[at + old.len()..];
        count += 1;
    }
    out.extend_from_slice(rest);
    (out, count)
}

/// First occurrence of a non-empty `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // UTF-8 text (the usual case) gets the standard library's linear-time
    // substring search; other bytes a plain scan.
    if let (Ok(h), Ok(n)) = (std::str::from_utf8(haystack), std::str::from_utf8(needle)) {
        return h.find(n);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How many bytes at the end of `raw` are the start of a UTF-8 character
/// whose remaining bytes were cut off.
fn incomplete_tail(raw: &[u8]) -> usize {
    for back in 1..=raw.len().min(3) {
        let b = raw[raw.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
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

/// An upload stream that fails once more than `remaining` bytes pass, and
/// records that it did, so the failure can be told from others.
struct Capped {
    inner: ByteStream,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > self.remaining {
                    self.exceeded.store(true, Ordering::SeqCst);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "upload larger than its limit",
                    )));
                }
                self.remaining -= n;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_are_counted_and_limited() {
        assert_eq!(
            replace_bytes(b"a-a-a", b"a", b"bb", usize::MAX),
            (b"bb-bb-bb".to_vec(), 3)
        );
        assert_eq!(
            replace_bytes(b"a-a-a", b"a", b"b", 2),
            (b"b-b-a".to_vec(), 2)
        );
        assert_eq!(
            replace_bytes(b"aaaa", b"aa", b"x", usize::MAX),
            (b"xx".to_vec(), 2)
        );
        assert_eq!(
            replace_bytes(b"abc", b"z", b"y", usize::MAX),
            (b"abc".to_vec(), 0)
        );
        assert_eq!(replace_bytes(b"abc", b"b", b"", 0), (b"abc".to_vec(), 0));
        // Invalid UTF-8 around the match survives untouched.
        assert_eq!(
            replace_bytes(b"\xff old \xfe", b"old", b"new", usize::MAX),
            (b"\xff new \xfe".to_vec(), 1)
        );
    }

    #[test]
    fn a_cut_character_is_recognised() {
        let e_acute = "é".as_bytes(); // 2 bytes
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(&[b'a', e_acute[0]]), 1);
        assert_eq!(incomplete_tail(e_acute), 0);
        assert_eq!(incomplete_tail(&euro[..2]), 2);
        assert_eq!(incomplete_tail(euro), 0);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b""), 0);
    }
}
