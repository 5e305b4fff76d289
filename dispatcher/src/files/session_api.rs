//! The file API as methods on [`Session`]: each builds the session's
//! [`Workspace`] and runs one operation on it.

use bytes::Bytes;
use runbox_core::layout;
use tokio::io::AsyncRead;

use super::{
    DeleteOptions, DirEntry, Download, FileInfo, FileText, ReadOptions, ReplaceOptions,
    SearchMatch, TextStream, UploadOptions, Workspace, WriteOptions,
};
#[cfg(doc)]
use super::{FileError, MAX_EDIT_BYTES};
use crate::engine::WorkspacePlacement;
use crate::error::Result;
use crate::session::Session;

impl Session {
    /// The absolute path commands in this session see as their workspace:
    /// `/workspace` (or `RUNBOX_WORKSPACE_PATH`) on every backend. Absolute
    /// paths given to the file API must lie below it (on the embedded
    /// backend, paths below the workspace directory itself,
    /// `RUNBOX_HOME/sessions/{session}/workspace`, are accepted too: that is
    /// what commands see where no namespace can be made).
    pub fn workspace_root(&self) -> String {
        self.workspace().root
    }

    /// Reads lines of a text file: the range and length in `opts`, the
    /// file's line count, and whether the text was cut or had invalid UTF-8.
    /// The file is streamed, so only the lines returned are held in memory.
    pub async fn read_file(&self, path: &str, opts: ReadOptions) -> Result<FileText> {
        Ok(self.workspace().read_text(path, opts).await?)
    }

    /// Like [`Session::read_file`], but the text comes as a stream of
    /// chunks, so a file of any size is read in constant memory; the line
    /// count is not known (reading stops after the last line asked for).
    pub async fn read_file_stream(&self, path: &str, opts: ReadOptions) -> Result<TextStream> {
        Ok(self.workspace().text_stream(path, opts).await?)
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
        let engine = self.engine();
        let prefix = layout::workspace_prefix(&self.id);
        let root = engine.workspace_path.clone();
        let host = match &engine.placement {
            // `components` drops the prefix's trailing '/'.
            WorkspacePlacement::Host(home) => Some(home.join(&prefix).components().collect()),
            WorkspacePlacement::Executor => None,
        };
        Workspace::new(engine.store.clone(), prefix, root, host)
    }
}
