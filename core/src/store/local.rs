//! The embedded store: objects as plain files under a directory, with Cloud
//! Storage's generations and conditional writes.
//!
//! Layout under the root:
//!
//! - `<root>/<name>`: the object's content, a plain file, so a command can use
//!   a session's workspace files directly and a filesystem watcher on
//!   `<root>/results/` sees results appear;
//! - `<root>/.runbox/meta/<name>`: a JSON sidecar with the generation, the
//!   custom metadata, the write time and a fingerprint of the content file it
//!   describes (the meta tree mirrors the content tree exactly, so it can
//!   never collide where the content tree does not);
//! - `<root>/.runbox/tmp/`: temporary files, renamed into place when complete;
//! - `<root>/.runbox/locks/`: striped lock files (`flock`), shared by every
//!   process that opens the same root. Each also holds the last generation it
//!   issued, so generations never repeat, even after a delete.
//!
//! A write stages the content in a temporary file (outside any lock), then,
//! holding the name's lock exclusively, checks the precondition, renames the
//! new sidecar into place and renames the content into place LAST: a watcher
//! reacting to the content's appearance and calling [`Store::head`] sees the
//! new generation. Reads take the lock shared, so they never pair a new
//! sidecar with old content.
//!
//! Files nobody wrote through the store (a command creating or editing a
//! workspace file) are objects too: when the sidecar is missing, or its
//! fingerprint (inode, size, mtime) no longer matches the file, the generation
//! is the file's mtime in microseconds (never below the old sidecar's
//! generation + 1) and the custom metadata is empty.
//!
//! Limits of a directory: only regular files are objects (symlinks, FIFOs and
//! sockets are ignored, empty directories are not objects), and the store
//! cannot hold both `a` and `a/b` at once (a put of the second fails with
//! [`StoreError::Io`]). Content paths are resolved one segment at a time
//! without following symlinks, so a symlink a command plants in a workspace
//! can never make the store read or write outside its root.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::*;

/// How reads open a content file. O_NOFOLLOW: symlinks are not objects.
/// O_NONBLOCK: opening a FIFO a command left in its workspace must not hang;
/// it changes nothing for regular files.
const READ_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// Page size when [`ListOptions::page_size`] is not set (Cloud Storage's).
const DEFAULT_PAGE_SIZE: usize = 1000;

/// Number of lock files; names hash onto them. Unrelated names sharing a
/// stripe only wait for each other briefly (locks are held for a few renames).
const LOCK_STRIPES: u64 = 256;

/// How often a write retries making its directory and renaming into it when
/// a concurrent delete prunes that directory (then empty) in between.
const PLACE_ATTEMPTS: usize = 16;

/// Marks page tokens this store issued.
const TOKEN_TAG: &str = "l1.";

/// Whether writes wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the content, its metadata and the directory before a write
    /// returns: a completed write survives a power loss (the default).
    #[default]
    Sync,
    /// Skip the fsyncs: writes stay atomic for readers (temp file + rename)
    /// and survive a process crash, but the last writes may be lost, or
    /// read back as an older generation, after a power loss or kernel crash.
    NoSync,
}

/// Objects as files under a root directory; see the module documentation.
/// Several instances, in one process or many, may share one root.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`. A relative root
    /// is made absolute against the current directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, Durability::Sync)
    }

    /// Opens a store with the given durability (see [`Durability`]).
    pub fn open_with(root: impl Into<PathBuf>, durability: Durability) -> Result<Self> {
        let root = root.into();
        let io_err = |source| StoreError::Io {
            op: "open store",
            name: root.display().to_string(),
            source,
        };
        let root = std::path::absolute(&root).map_err(io_err)?;
        let internal = root.join(".runbox");
        let inner = Inner {
            sync: durability == Durability::Sync,
            meta: internal.join("meta"),
            tmp: internal.join("tmp"),
            locks: internal.join("locks"),
            root,
        };
        // Temporary files left by a crash are never renamed anywhere and are
        // not objects, so they are harmless; they are not cleaned here
        // because another process may be writing one right now.
        for dir in [&inner.root, &inner.meta, &inner.tmp, &inner.locks] {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file that holds an object's current content.
    pub fn path_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.inner.content_path(name))
    }

    /// Runs `f` on the blocking pool: every file operation here blocks, and
    /// `flock` may block for as long as another process holds the lock.
    async fn blocking<T, F>(&self, op: &'static str, name: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io {
                op,
                name: name.to_owned(),
                source: io::Error::other(e),
            }),
        }
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("stat", name, move |inner| {
            let _lock = StripeLock::acquire(inner, &owned, LockMode::Shared)?;
            inner
                .current(&owned, false)?
                .meta
                .ok_or_else(|| not_found(&owned))
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Object> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("read", name, move |inner| {
            let (meta, mut file) = inner.open_current(&owned)?;
            // The open descriptor pins this generation's inode: a later
            // rename into place does not change what we read.
            let mut data = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0));
            file.read_to_end(&mut data)
                .map_err(io_err("read", &owned))?;
            Ok(Object {
                meta,
                data: Bytes::from(data),
            })
        })
        .await
    }

    async fn get_stream(&self, name: &str) -> Result<(ObjectMeta, ByteStream)> {
        validate_name(name)?;
        let owned = name.to_owned();
        let (meta, file) = self
            .blocking("read", name, move |inner| inner.open_current(&owned))
            .await?;
        let stream: ByteStream = Box::pin(tokio::fs::File::from_std(file));
        Ok((meta, stream))
    }

    async fn put(&self, name: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("write", name, move |inner| {
            // Stage outside the lock: writers of other names sharing the
            // stripe do not wait for our disk.
            let (tmp, mut file) = inner.create_temp(&owned)?;
            file.write_all(&data)
                .and_then(|()| inner.sync_file(&file))
                .map_err(io_err("write", &owned))?;
            inner.commit(&owned, tmp, &file, opts)
        })
        .await
    }

    async fn put_stream(
        &self,
        name: &str,
        mut data: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_name(name)?;
        let owned = name.to_owned();
        let (tmp, file) = self
            .blocking("write", name, move |inner| inner.create_temp(&owned))
            .await?;
        // If this future is dropped mid-copy, `tmp` removes the partial file.
        let write_err = io_err("write", name);
        // Large writes: tokio's File hands each write to the blocking pool,
        // so feed it big chunks rather than the copy loop's small ones.
        let mut writer = BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        tokio::io::copy(&mut data, &mut writer)
            .await
            .map_err(&write_err)?;
        writer.flush().await.map_err(&write_err)?;
        let file = writer.into_inner();
        let file = file.into_std().await;
        if self.inner.sync {
            let (synced, result) = tokio::task::spawn_blocking(move || {
                let r = file.sync_all();
                (file, r)
            })
            .await
            .map_err(|e| write_err(io::Error::other(e)))?;
            result.map_err(&write_err)?;
            return self.commit_staged(name, tmp, synced, opts).await;
        }
        self.commit_staged(name, tmp, file, opts).await
    }

    async fn delete(&self, name: &str, precondition: Precondition) -> Result<()> {
        self.delete_impl(name, precondition).await
    }

    async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        self.list_impl(opts).await
    }
}

impl LocalStore {
    async fn commit_staged(
        &self,
        name: &str,
        tmp: TempFile,
        file: File,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        let owned = name.to_owned();
        self.blocking("write", name, move |inner| {
            inner.commit(&owned, tmp, &file, opts)
        })
        .await
    }

    async fn delete_impl(&self, name: &str, precondition: Precondition) -> Result<()> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("delete", name, move |inner| {
            inner.delete(&owned, precondition)
        })
        .await
    }

    async fn list_impl(&self, opts: &ListOptions) -> Result<ListPage> {
        let opts = opts.clone();
        let prefix = opts.prefix.clone();
        self.blocking("list", &prefix, move |inner| inner.list(&opts))
            .await
    }
}

/// The store's directories; shared with blocking tasks.
struct Inner {
    /// fsync content, sidecar and directory on every write.
    sync: bool,
    root: PathBuf,
    meta: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
}

/// What the store holds for a name right now. Only meaningful while the
/// name's lock is held.
struct Current {
    /// `None` when no regular file holds the name.
    meta: Option<ObjectMeta>,
    /// The raw sidecar, to put back if a write fails half-way.
    sidecar: Option<Vec<u8>>,
}

impl Inner {
    fn content_path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.meta.join(name)
    }

    /// Reads the current state of `name`. With `tolerate_corrupt`, an
    /// unparsable sidecar is treated like a missing one (used by writes
    /// without precondition, which repair it, and by listings, which should
    /// not fail as a whole for one bad file).
    fn current(&self, name: &str, tolerate_corrupt: bool) -> Result<Current> {
        let Some((_, md)) = self.open_content(name)? else {
            return Ok(Current::absent());
        };
        let sidecar = self.read_sidecar(name)?;
        let meta = describe(name, &md, sidecar.as_deref(), tolerate_corrupt)?;
        Ok(Current {
            meta: Some(meta),
            sidecar,
        })
    }

    /// Opens the current generation for reading, under the shared lock.
    fn open_current(&self, name: &str) -> Result<(ObjectMeta, File)> {
        let _lock = StripeLock::acquire(self, name, LockMode::Shared)?;
        let (file, md) = self.open_content(name)?.ok_or_else(|| not_found(name))?;
        let sidecar = self.read_sidecar(name)?;
        let meta = describe(name, &md, sidecar.as_deref(), false)?;
        Ok((meta, file))
    }

    /// Opens the regular file holding `name`'s content, never following a
    /// symlink below the root; `None` when no regular file holds the name.
    fn open_content(&self, name: &str) -> Result<Option<(File, Metadata)>> {
        let opened = open_parent(&self.root, name, false)
            .and_then(|(parent, leaf)| open_at(parent.as_raw_fd(), leaf, READ_FLAGS));
        let file = match opened {
            Ok(fd) => File::from(fd),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err("open", name)(e)),
        };
        let md = file.metadata().map_err(io_err("stat", name))?;
        Ok(md.is_file().then_some((file, md)))
    }

    /// The raw sidecar of `name`, if there is one.
    fn read_sidecar(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.meta_path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("read metadata of", name)(e)),
        }
    }

    /// Creates a new, empty temporary file under `.runbox/tmp`.
    fn create_temp(&self, name: &str) -> Result<(TempFile, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = self.tmp.join(format!(
            "{}-{}-{nanos}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // create_new: never write into a file some other process owns.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create temporary file for", name))?;
        Ok((TempFile { path: Some(path) }, file))
    }

    /// Makes the staged content in `tmp` (open as `file`, already synced) the
    /// new generation of `name`, if the precondition holds.
    fn commit(
        &self,
        name: &str,
        tmp: TempFile,
        file: &File,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        let staged = file.metadata().map_err(io_err("stat", name))?;
        let fingerprint = Fingerprint::of(&staged);
        let lock = StripeLock::acquire(self, name, LockMode::Exclusive)?;
        let tolerate_corrupt = opts.precondition == Precondition::None;
        let current = self.current(name, tolerate_corrupt)?;
        check(name, opts.precondition, current.meta.as_ref())?;

        // Resolve (creating) the content's directory before touching the
        // sidecar, so that whatever would stop the content from landing
        // fails the write while nothing has changed yet: a file or a symlink
        // where a directory should be, or a directory at the name itself
        // (the store cannot hold both `a` and `a/b`).
        let write_err = io_err("write", name);
        let (parent, leaf) = open_parent(&self.root, name, true).map_err(&write_err)?;
        let in_the_way = open_at(parent.as_raw_fd(), leaf, READ_FLAGS)
            .is_ok_and(|fd| File::from(fd).metadata().is_ok_and(|md| md.is_dir()));
        if in_the_way {
            return Err(write_err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "a directory of other objects has this name",
            )));
        }

        let previous = current.meta.as_ref().map(|m| m.generation);
        let generation = lock
            .issue_generation(previous)
            .map_err(io_err("allocate generation for", name))?;
        let updated_us = now_us();
        let sidecar = Sidecar {
            generation,
            metadata: opts.metadata,
            updated_us,
            content: fingerprint,
        };
        let encoded = serde_json::to_vec(&sidecar).expect("a sidecar always encodes");
        self.write_sidecar(name, &encoded)?;

        // The content's rename is the last step: whoever sees the new file
        // and then asks for its metadata finds the new sidecar already there.
        let parent = match self.place_content(tmp, name, parent) {
            Ok(parent) => parent,
            Err(e) => {
                self.restore_sidecar(name, current.sidecar.as_deref());
                return Err(write_err(e));
            }
        };
        // Make the rename durable before reporting success.
        if let Err(e) = self.sync_file(&File::from(parent)) {
            tracing::warn!(object = name, error = %e, "could not sync directory after write");
        }
        drop(lock);

        Ok(ObjectMeta {
            name: name.to_owned(),
            generation,
            size: fingerprint.size,
            metadata: sidecar.metadata,
            updated: Some(from_us(updated_us)),
        })
    }

    /// Renames the staged content into `parent`, the last step of a write;
    /// returns the directory it landed in.
    fn place_content(
        &self,
        mut tmp: TempFile,
        name: &str,
        mut parent: OwnedFd,
    ) -> io::Result<OwnedFd> {
        let src = match tmp.path.as_deref() {
            Some(path) => CString::new(path.as_os_str().as_bytes())?,
            None => return Err(io::Error::other("temporary file already placed")),
        };
        let leaf = CString::new(leaf_of(name))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // SAFETY: both strings are NUL-terminated and outlive the call;
            // `parent` is an open directory.
            let renamed = unsafe {
                libc::renameat(
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    parent.as_raw_fd(),
                    leaf.as_ptr(),
                )
            };
            if renamed == 0 {
                tmp.path = None;
                return Ok(parent);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // A concurrent delete pruned the directory, then empty,
                // after we opened it: make it again.
                io::ErrorKind::NotFound if attempt < PLACE_ATTEMPTS => {
                    parent = open_parent(&self.root, name, true)?.0;
                }
                _ => return Err(e),
            }
        }
    }

    /// fsyncs `file` when the store is durable.
    fn sync_file(&self, file: &File) -> io::Result<()> {
        if self.sync { file.sync_all() } else { Ok(()) }
    }

    /// Atomically replaces the sidecar of `name` with `encoded`.
    fn write_sidecar(&self, name: &str, encoded: &[u8]) -> Result<()> {
        let (tmp, mut file) = self.create_temp(name)?;
        file.write_all(encoded)
            .and_then(|()| self.sync_file(&file))
            .and_then(|()| place(tmp, &self.meta_path(name)))
            .map_err(io_err("write metadata of", name))
    }

    /// After a failed write: puts the previous sidecar back (or removes the
    /// new one), so the old content keeps its generation.
    fn restore_sidecar(&self, name: &str, previous: Option<&[u8]>) {
        let restored = match previous {
            Some(bytes) => self.write_sidecar(name, bytes),
            None => {
                fs::remove_file(self.meta_path(name)).map_err(io_err("remove metadata of", name))
            }
        };
        if let Err(e) = restored {
            tracing::warn!(object = name, error = %e, "could not restore metadata after a failed write");
        }
    }

    fn delete(&self, name: &str, precondition: Precondition) -> Result<()> {
        let lock = StripeLock::acquire(self, name, LockMode::Exclusive)?;
        let current = self.current(name, precondition == Precondition::None)?;
        let Some(meta) = current.meta else {
            if current.sidecar.is_some() {
                // A sidecar whose content a command removed: tidy it up.
                let _ = fs::remove_file(self.meta_path(name));
            }
            return Err(not_found(name));
        };
        check(name, precondition, Some(&meta))?;
        // Content first: it is what makes the object exist.
        let removed = open_parent(&self.root, name, false)
            .and_then(|(parent, leaf)| unlink_at(parent.as_raw_fd(), leaf));
        match removed {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Err(not_found(name)),
            Err(e) => return Err(io_err("delete", name)(e)),
        }
        match fs::remove_file(self.meta_path(name)) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            // The object is gone; a leftover sidecar no longer matches any
            // content, so it can never be mistaken for the object's.
            Err(e) => {
                tracing::warn!(object = name, error = %e, "could not remove metadata of a deleted object");
            }
        }
        drop(lock);
        prune(&self.content_path(name), &self.root);
        prune(&self.meta_path(name), &self.meta);
        Ok(())
    }

    fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        let prefix = opts.prefix.as_str();
        let after = opts
            .page_token
            .as_deref()
            .map(|token| decode_token(token, prefix))
            .transpose()?;
        let page_size = opts
            .page_size
            .filter(|&n| n > 0)
            .map_or(DEFAULT_PAGE_SIZE, |n| n as usize);

        // Only the prefix's directory is walked: `results/ab` reads
        // `results/` and keeps the entries starting with `ab`.
        let (dir, leaf) = match prefix.rfind('/') {
            Some(i) => prefix.split_at(i + 1),
            None => ("", prefix),
        };
        // A directory part that is not a valid name (`../`, `a//`,
        // `.runbox/`) cannot be the start of any object name.
        if !dir.is_empty() && validate_name(&dir[..dir.len() - 1]).is_err() {
            return Ok(ListPage::default());
        }
        // Listings never look through a symlink, just like reads.
        if !plain_dirs(&self.root, dir) {
            return Ok(ListPage::default());
        }

        let mut walk = Walk {
            inner: self,
            prefix,
            delimiter: opts.delimiter,
            after: after.as_deref(),
            // One more than the page, to learn whether another page follows.
            want: page_size + 1,
            items: Vec::new(),
        };
        walk.dir(dir, leaf)?;

        let mut items = walk.items;
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items.last().map(|item| encode_token(item.key()))
        } else {
            None
        };
        let mut page = ListPage {
            next_page_token,
            ..ListPage::default()
        };
        for item in items {
            match item {
                Item::Object(meta) => page.objects.push(meta),
                Item::Prefix(p) => page.prefixes.push(p),
            }
        }
        Ok(page)
    }

    /// The metadata of a listed file, under the shared lock; `None` if it
    /// vanished since the directory was read.
    fn list_entry(&self, name: &str) -> Result<Option<ObjectMeta>> {
        let _lock = StripeLock::acquire(self, name, LockMode::Shared)?;
        Ok(self.current(name, true)?.meta)
    }
}

impl Current {
    fn absent() -> Self {
        Self {
            meta: None,
            sidecar: None,
        }
    }
}

/// One listing in progress: a depth-first walk in lexicographic order of
/// full names, stopping as soon as the page (plus one) is full.
struct Walk<'a> {
    inner: &'a Inner,
    prefix: &'a str,
    delimiter: Option<char>,
    /// Resume strictly after this name or prefix.
    after: Option<&'a str>,
    want: usize,
    items: Vec<Item>,
}

/// One entry of a listing page.
enum Item {
    Object(ObjectMeta),
    Prefix(String),
}

impl Item {
    fn key(&self) -> &str {
        match self {
            Item::Object(meta) => &meta.name,
            Item::Prefix(p) => p,
        }
    }
}

impl Walk<'_> {
    /// Walks the directory holding names that start with `dir` (empty, or
    /// ending with '/'), keeping only entries that start with `leaf`.
    fn dir(&mut self, dir: &str, leaf: &str) -> Result<()> {
        let mut entries = Vec::new();
        for (segment, is_dir) in read_dir(&self.inner.root, dir, self.prefix)? {
            if segment.starts_with(leaf) {
                // Keying directories as `d/` makes sorting by key give the
                // order of the full names below them: `a-b` < `a/x` < `a0`.
                let key = if is_dir {
                    format!("{dir}{segment}/")
                } else {
                    format!("{dir}{segment}")
                };
                entries.push((key, is_dir));
            }
        }
        entries.sort_unstable();

        for (key, is_dir) in entries {
            if self.items.len() >= self.want {
                return Ok(());
            }
            if is_dir {
                // Every name below starts with `key`; when the token is
                // beyond them all, skip the whole subtree.
                if self
                    .after
                    .is_some_and(|after| after > key.as_str() && !after.starts_with(&key))
                {
                    continue;
                }
                match self.fold(&key) {
                    // Every name below folds into the same prefix.
                    Some(p) => {
                        if self.wants_prefix(&p) && self.has_object(&key)? {
                            self.items.push(Item::Prefix(p));
                        }
                    }
                    None => self.dir(&key, "")?,
                }
            } else {
                if key.len() > 1024 || self.after.is_some_and(|after| key.as_str() <= after) {
                    continue;
                }
                match self.fold(&key) {
                    Some(p) => {
                        if self.wants_prefix(&p) {
                            self.items.push(Item::Prefix(p));
                        }
                    }
                    None => {
                        if let Some(meta) = self.inner.list_entry(&key)? {
                            self.items.push(Item::Object(meta));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// With a delimiter, the prefix `key` folds into: the listing prefix
    /// plus everything up to and including the first delimiter after it.
    fn fold(&self, key: &str) -> Option<String> {
        let delimiter = self.delimiter?;
        let rest = &key[self.prefix.len()..];
        rest.find(delimiter)
            .map(|i| key[..self.prefix.len() + i + delimiter.len_utf8()].to_owned())
    }

    /// Whether prefix `p` belongs on this page: after the token and not just
    /// emitted (names sharing a prefix are contiguous, so checking the last
    /// item is enough).
    fn wants_prefix(&self, p: &str) -> bool {
        self.after.is_none_or(|after| p > after)
            && !matches!(self.items.last(), Some(Item::Prefix(last)) if last == p)
    }

    /// Whether the directory for names starting with `dir` holds at least
    /// one object, however deep: empty directories are not objects, so they
    /// must not show up as prefixes.
    fn has_object(&self, dir: &str) -> Result<bool> {
        for (segment, is_dir) in read_dir(&self.inner.root, dir, self.prefix)? {
            if !is_dir || self.has_object(&format!("{dir}{segment}/"))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The usable entries of the directory for names starting with `dir`: UTF-8
/// names without control characters, regular files (`false`) and
/// directories (`true`). A missing directory has no entries.
fn read_dir(root: &Path, dir: &str, prefix: &str) -> Result<Vec<(String, bool)>> {
    let path = if dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(&dir[..dir.len() - 1])
    };
    let list_err = io_err("list", prefix);
    let reader = match fs::read_dir(&path) {
        Ok(reader) => reader,
        // Pruned by a concurrent delete, or never there.
        Err(e) if is_absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut out = Vec::new();
    for entry in reader {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(list_err(e)),
        };
        let Ok(segment) = entry.file_name().into_string() else {
            continue;
        };
        if segment.chars().any(char::is_control) || (dir.is_empty() && segment == ".runbox") {
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(list_err(e)),
        };
        // DirEntry::file_type does not follow symlinks: a symlinked
        // directory is skipped, so a walk can never loop.
        if file_type.is_dir() {
            out.push((segment, true));
        } else if file_type.is_file() {
            out.push((segment, false));
        }
    }
    Ok(out)
}

/// The bookkeeping kept beside each object written through the store.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    generation: i64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Write time, microseconds since the Unix epoch.
    updated_us: i64,
    /// The content file this sidecar describes; a mismatch means the file
    /// was replaced or edited behind the store's back.
    content: Fingerprint,
}

/// Identifies one version of a content file. A rename keeps inode and mtime,
/// so the temporary file's fingerprint is the object's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    ino: u64,
    size: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

impl Fingerprint {
    fn of(md: &Metadata) -> Self {
        Self {
            ino: md.ino(),
            size: md.len(),
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec(),
        }
    }
}

/// The metadata of the regular file `md` at `name`, given its raw sidecar.
fn describe(
    name: &str,
    md: &Metadata,
    sidecar: Option<&[u8]>,
    tolerate_corrupt: bool,
) -> Result<ObjectMeta> {
    let sidecar = match sidecar.map(serde_json::from_slice::<Sidecar>) {
        None => None,
        Some(Ok(sidecar)) => Some(sidecar),
        Some(Err(e)) if tolerate_corrupt => {
            tracing::warn!(object = name, error = %e, "ignoring unreadable store metadata");
            None
        }
        Some(Err(e)) => {
            return Err(StoreError::Corrupt {
                name: name.to_owned(),
                detail: e.to_string(),
            });
        }
    };
    Ok(match sidecar {
        Some(sidecar) if sidecar.content == Fingerprint::of(md) => ObjectMeta {
            name: name.to_owned(),
            generation: sidecar.generation,
            size: md.len(),
            metadata: sidecar.metadata,
            updated: Some(from_us(sidecar.updated_us)),
        },
        // Written behind the store's back: the file's mtime is the best
        // generation there is; after a stale sidecar it must still be newer
        // than the generation the sidecar handed out.
        stale => {
            let mtime_us = md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000;
            let floor = stale.map_or(1, |s| s.generation + 1);
            ObjectMeta {
                name: name.to_owned(),
                generation: mtime_us.max(floor),
                size: md.len(),
                metadata: BTreeMap::new(),
                updated: md.modified().ok(),
            }
        }
    })
}

/// Whether `precondition` holds for `current`.
fn check(name: &str, precondition: Precondition, current: Option<&ObjectMeta>) -> Result<()> {
    let holds = match (precondition, current) {
        (Precondition::None, _) => true,
        // Cloud Storage spells "must not exist" as if-generation-match=0.
        (Precondition::DoesNotExist | Precondition::GenerationMatch(0), current) => {
            current.is_none()
        }
        (Precondition::GenerationMatch(g), Some(current)) => current.generation == g,
        (Precondition::GenerationMatch(_), None) => false,
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed {
            name: name.to_owned(),
            precondition,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LockMode {
    Shared,
    Exclusive,
}

/// An `flock` on the lock file of a name's stripe, released on drop (when
/// the descriptor closes). Every acquisition opens the file anew: `flock`
/// locks belong to the open file description, so two acquisitions exclude
/// each other whether they come from two processes, two stores or two
/// threads of one store.
struct StripeLock {
    file: File,
}

impl StripeLock {
    fn acquire(inner: &Inner, name: &str, mode: LockMode) -> Result<Self> {
        let stripe = fnv1a(name.as_bytes()) % LOCK_STRIPES;
        let lock_err = io_err("lock", name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(inner.locks.join(format!("{stripe:03}.lock")))
            .map_err(&lock_err)?;
        let operation = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock takes no pointers; the descriptor is owned by
            // `file`, which outlives the call.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Self { file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(lock_err(e));
            }
        }
    }

    /// A new generation for a name of this stripe: above the clock, the
    /// name's previous generation and every generation this stripe issued
    /// (so a name deleted and written again never reuses one). Needs the
    /// exclusive lock.
    fn issue_generation(&self, previous: Option<i64>) -> io::Result<i64> {
        let mut last = [0u8; 8];
        let issued = match self.file.read_exact_at(&mut last, 0) {
            Ok(()) => i64::from_le_bytes(last),
            // A new lock file: nothing issued yet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        let generation = now_us().max(issued + 1).max(previous.map_or(1, |p| p + 1));
        self.file.write_all_at(&generation.to_le_bytes(), 0)?;
        Ok(generation)
    }
}

/// A staged file under `.runbox/tmp`, removed on drop unless placed.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Opens the directory that holds `name`'s last segment, one segment at a
/// time from `root`, never following a symlink: a command that plants
/// `workspace/link -> /` cannot make the store read or write outside its
/// root. With `create`, missing directories are made.
fn open_parent<'n>(root: &Path, name: &'n str, create: bool) -> io::Result<(OwnedFd, &'n str)> {
    let (dirs, leaf) = match name.rsplit_once('/') {
        Some((dirs, leaf)) => (Some(dirs), leaf),
        None => (None, name),
    };
    let mut dir = OwnedFd::from(File::open(root)?);
    for segment in dirs.into_iter().flat_map(|dirs| dirs.split('/')) {
        dir = open_child_dir(dir.as_raw_fd(), segment, create)?;
    }
    Ok((dir, leaf))
}

/// Opens the directory `segment` of `parent` without following a symlink,
/// making it first when `create` is set and it is missing.
fn open_child_dir(parent: RawFd, segment: &str, create: bool) -> io::Result<OwnedFd> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match open_at(
            parent,
            segment,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound && attempt < PLACE_ATTEMPTS => {
                let c_segment = CString::new(segment)?;
                // SAFETY: a NUL-terminated string that outlives the call;
                // `parent` is an open directory.
                if unsafe { libc::mkdirat(parent, c_segment.as_ptr(), 0o777) } != 0 {
                    let e = io::Error::last_os_error();
                    // Made by a concurrent writer meanwhile: open it.
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
            }
            opened => return opened,
        }
    }
}

/// `openat(2)`, retried on EINTR; the descriptor is close-on-exec.
fn open_at(dir: RawFd, segment: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c_segment = CString::new(segment)?;
    loop {
        // SAFETY: a NUL-terminated string that outlives the call; `dir` is
        // an open directory. No O_CREAT, so no mode argument is read.
        let fd = unsafe { libc::openat(dir, c_segment.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: openat just returned this descriptor; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `unlinkat(2)` of a file.
fn unlink_at(dir: RawFd, segment: &str) -> io::Result<()> {
    let c_segment = CString::new(segment)?;
    // SAFETY: a NUL-terminated string that outlives the call; `dir` is an
    // open directory.
    if unsafe { libc::unlinkat(dir, c_segment.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The last segment of an object name.
fn leaf_of(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, leaf)| leaf)
}

/// Whether every segment of `dir` (empty, or ending with '/') below `root`
/// is a real directory, not a symlink.
fn plain_dirs(root: &Path, dir: &str) -> bool {
    let mut path = root.to_path_buf();
    dir.split_terminator('/').all(|segment| {
        path.push(segment);
        fs::symlink_metadata(&path).is_ok_and(|md| md.is_dir())
    })
}

/// Renames `tmp` to `dest`, creating parent directories; retried when a
/// concurrent delete pruned a parent directory in between.
fn place(mut tmp: TempFile, dest: &Path) -> io::Result<()> {
    let Some(src) = tmp.path.clone() else {
        return Err(io::Error::other("temporary file already placed"));
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::rename(&src, dest) {
            Ok(()) => {
                tmp.path = None;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PLACE_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes the now-empty directories above `path`, up to (not including)
/// `stop`. Stops at the first one that is not empty; a concurrent write
/// recreates what it needs (see [`place`]).
fn prune(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// Whether an I/O error means "no such object": missing, a file where a
/// directory was expected, a symlink (O_NOFOLLOW), or an over-long segment.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENAMETOOLONG))
}

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        name: name.to_owned(),
    }
}

fn io_err(op: &'static str, name: &str) -> impl Fn(io::Error) -> StoreError {
    let name = name.to_owned();
    move |source| StoreError::Io {
        op,
        name: name.clone(),
        source,
    }
}

fn now_us() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

fn from_us(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// FNV-1a: a hash every process computes the same way, whatever its build
/// (std's hasher makes no such promise across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A page token: the last key returned, hex-encoded and tagged, so that it
/// stays opaque and a token from elsewhere is recognised.
fn encode_token(key: &str) -> String {
    let mut token = String::with_capacity(TOKEN_TAG.len() + key.len() * 2);
    token.push_str(TOKEN_TAG);
    for b in key.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The key a token resumes after; it must come from a listing of `prefix`.
fn decode_token(token: &str, prefix: &str) -> Result<String> {
    let invalid = || StoreError::InvalidPageToken {
        token: token.chars().take(200).collect(),
    };
    let hex = token.strip_prefix(TOKEN_TAG).ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    let key = String::from_utf8(bytes).map_err(|_| invalid())?;
    if key.is_empty() || !key.starts_with(prefix) {
        return Err(invalid());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::AtomicBool;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Every test is bounded: a lock bug must fail the test, not hang CI.
    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("test did not finish within 60 s")
    }

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("store")).expect("open store");
        (dir, store)
    }

    fn names(page: &ListPage) -> Vec<&str> {
        page.objects.iter().map(|m| m.name.as_str()).collect()
    }

    fn mtime_us(path: &Path) -> i64 {
        let md = fs::metadata(path).expect("stat");
        md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn content_is_a_plain_file_and_bookkeeping_stays_under_runbox() {
        let (_dir, store) = store();
        bounded(async {
            let meta = store
                .put(
                    "results/a.json",
                    Bytes::from_static(b"{}"),
                    PutOptions::create(),
                )
                .await
                .unwrap();
            let path = store.path_of("results/a.json").unwrap();
            assert_eq!(path, store.root().join("results/a.json"));
            assert_eq!(fs::read(&path).unwrap(), b"{}");
            assert!(store.root().join(".runbox/meta/results/a.json").is_file());
            // Nothing staged is left behind by a successful write.
            let leftovers: Vec<_> = fs::read_dir(store.root().join(".runbox/tmp"))
                .unwrap()
                .collect();
            assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
            let page = store.list(&ListOptions::default()).await.unwrap();
            assert_eq!(names(&page), ["results/a.json"]);
            assert_eq!(page.objects[0], meta);
            assert!(store.describe().starts_with("file:///"));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn files_written_directly_are_objects() {
        let (_dir, store) = store();
        bounded(async {
            let name = "sessions/s/workspace/notes.txt";
            let path = store.path_of(name).unwrap();
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"written by a command").unwrap();

            let head = store.head(name).await.unwrap();
            assert_eq!(head.generation, mtime_us(&path));
            assert_eq!(head.size, 20);
            assert!(head.metadata.is_empty());
            let object = store.get(name).await.unwrap();
            assert_eq!(object.data, Bytes::from_static(b"written by a command"));
            assert_eq!(object.meta, head);
            let listed = store
                .list(&ListOptions {
                    prefix: "sessions/s/".into(),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert_eq!(listed.objects, std::slice::from_ref(&head));

            let err = store
                .put(name, Bytes::new(), PutOptions::create())
                .await
                .unwrap_err();
            assert!(err.is_conflict(), "{err:?}");
            let next = store
                .put(
                    name,
                    Bytes::from_static(b"via the store"),
                    PutOptions::when(Precondition::GenerationMatch(head.generation)),
                )
                .await
                .unwrap();
            assert!(next.generation > head.generation);
            assert_eq!(store.head(name).await.unwrap(), next);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn editing_a_file_behind_the_store_makes_a_new_generation() {
        let (_dir, store) = store();
        bounded(async {
            let name = "sessions/s/workspace/log.txt";
            let written = store
                .put(
                    name,
                    Bytes::from_static(b"one\n"),
                    PutOptions::default().with_metadata("k", "v"),
                )
                .await
                .unwrap();
            let mut file = OpenOptions::new()
                .append(true)
                .open(store.path_of(name).unwrap())
                .unwrap();
            file.write_all(b"two\n").unwrap();
            drop(file);

            let head = store.head(name).await.unwrap();
            assert!(head.generation > written.generation);
            assert_eq!(head.size, 8);
            // The custom metadata described the content the store wrote.
            assert!(head.metadata.is_empty());
            let err = store
                .put(
                    name,
                    Bytes::new(),
                    PutOptions::when(Precondition::GenerationMatch(written.generation)),
                )
                .await
                .unwrap_err();
            assert!(err.is_conflict(), "{err:?}");
            assert_eq!(store.get(name).await.unwrap().data.as_ref(), b"one\ntwo\n");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_stores_on_one_directory_admit_exactly_one_create() {
        let (dir, first) = store();
        // A second instance stands in for another process: flock locks
        // belong to open file descriptions, so the two exclude each other
        // exactly as two processes would.
        let second = LocalStore::open(dir.path().join("store")).unwrap();
        bounded(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..50 {
                let store = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                tasks.spawn(async move {
                    let data = Bytes::from(format!("writer {i}"));
                    (
                        i,
                        store
                            .put("results/x.json", data, PutOptions::create())
                            .await,
                    )
                });
            }
            let mut winners = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                match joined.unwrap() {
                    (i, Ok(meta)) => winners.push((i, meta)),
                    (_, Err(e)) => assert!(e.is_conflict(), "unexpected error: {e:?}"),
                }
            }
            assert_eq!(winners.len(), 1, "winners: {winners:?}");
            let (i, meta) = &winners[0];
            let object = second.get("results/x.json").await.unwrap();
            assert_eq!(object.data, Bytes::from(format!("writer {i}")));
            assert_eq!(&object.meta, meta);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_never_pair_new_metadata_with_old_content() {
        let (_dir, store) = store();
        bounded(async {
            let name = "sessions/s/state.json";
            let put = |i: u32| {
                store.put(
                    name,
                    Bytes::from(i.to_string()),
                    PutOptions::default().with_metadata("i", i.to_string()),
                )
            };
            put(0).await.unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let reader = {
                let store = store.clone();
                let done = Arc::clone(&done);
                tokio::spawn(async move {
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) {
                        let object = store.get(name).await.unwrap();
                        let content = std::str::from_utf8(&object.data).unwrap();
                        assert_eq!(Some(&content.to_owned()), object.meta.metadata.get("i"));
                        reads += 1;
                    }
                    reads
                })
            };
            let mut last = 0;
            for i in 1..=200 {
                let meta = put(i).await.unwrap();
                assert!(meta.generation > last);
                last = meta.generation;
            }
            done.store(true, Ordering::Release);
            let reads = reader.await.unwrap();
            assert!(reads > 0);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn generations_never_repeat_after_a_delete() {
        let (_dir, store) = store();
        bounded(async {
            let mut last = 0;
            // Faster than the clock ticks: only the stripe's record of what
            // it issued keeps a re-created object from reusing a generation.
            for _ in 0..20 {
                let meta = store
                    .put("results/r.json", Bytes::new(), PutOptions::create())
                    .await
                    .unwrap();
                assert!(meta.generation > last, "{} after {last}", meta.generation);
                last = meta.generation;
                store
                    .delete("results/r.json", Precondition::GenerationMatch(last))
                    .await
                    .unwrap();
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn delete_prunes_empty_directories() {
        let (_dir, store) = store();
        bounded(async {
            for name in ["a/b/c/d.txt", "a/x.txt"] {
                store
                    .put(name, Bytes::new(), PutOptions::create())
                    .await
                    .unwrap();
            }
            store
                .delete("a/b/c/d.txt", Precondition::None)
                .await
                .unwrap();
            let root = store.root();
            assert!(!root.join("a/b").exists());
            assert!(!root.join(".runbox/meta/a/b").exists());
            assert!(root.join("a/x.txt").is_file());

            store.delete("a/x.txt", Precondition::None).await.unwrap();
            assert!(!root.join("a").exists());
            assert!(!root.join(".runbox/meta/a").exists());
            assert!(root.join(".runbox/meta").is_dir());
            let page = store
                .list(&ListOptions {
                    delimiter: Some('/'),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert!(
                page.objects.is_empty() && page.prefixes.is_empty(),
                "{page:?}"
            );
            let err = store
                .delete("a/x.txt", Precondition::None)
                .await
                .unwrap_err();
            assert!(err.is_not_found(), "{err:?}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn empty_directories_symlinks_and_fifos_are_not_objects() {
        let (_dir, store) = store();
        bounded(async {
            let root = store.root().to_path_buf();
            store
                .put("real.txt", Bytes::from_static(b"x"), PutOptions::create())
                .await
                .unwrap();
            fs::create_dir_all(root.join("empty/deeper")).unwrap();
            std::os::unix::fs::symlink(root.join("real.txt"), root.join("link")).unwrap();
            std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
            let fifo =
                std::ffi::CString::new(root.join("pipe").into_os_string().into_encoded_bytes())
                    .unwrap();
            // SAFETY: a valid NUL-terminated path; mkfifo keeps no pointer.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

            let page = store
                .list(&ListOptions {
                    delimiter: Some('/'),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert_eq!(names(&page), ["real.txt"]);
            assert!(page.prefixes.is_empty(), "{:?}", page.prefixes);
            let all = list_all(&store, "").await.unwrap();
            assert_eq!(all.len(), 1, "{all:?}");
            for name in ["empty", "empty/deeper", "link", "pipe", "loop/real.txt"] {
                let err = store.get(name).await.unwrap_err();
                assert!(err.is_not_found(), "{name}: {err:?}");
            }
            for name in ["empty", "link", "pipe"] {
                let err = store.head(name).await.unwrap_err();
                assert!(err.is_not_found(), "{name}: {err:?}");
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn symlinks_never_lead_the_store_out_of_its_root() {
        let (dir, store) = store();
        bounded(async {
            let outside = dir.path().join("outside");
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("secret"), b"host file").unwrap();
            fs::create_dir_all(store.root().join("ws")).unwrap();
            // What a command in a workspace could plant.
            std::os::unix::fs::symlink(&outside, store.root().join("ws/link")).unwrap();

            let err = store
                .put("ws/link/planted", Bytes::new(), PutOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
            assert!(!outside.join("planted").exists());
            for result in [
                store.get("ws/link/secret").await.map(|_| ()),
                store.head("ws/link/secret").await.map(|_| ()),
                store.delete("ws/link/secret", Precondition::None).await,
            ] {
                let err = result.unwrap_err();
                assert!(err.is_not_found(), "{err:?}");
            }
            assert!(outside.join("secret").exists());
            let page = store
                .list(&ListOptions {
                    prefix: "ws/link/".into(),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert!(page.objects.is_empty(), "{page:?}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn listing_follows_full_name_order_across_directories() {
        let (_dir, store) = store();
        bounded(async {
            // '-' < '/' < '0': the directory `a/` sorts between its siblings.
            for name in ["a0", "a/x", "a-b", "a/y/z"] {
                store
                    .put(name, Bytes::new(), PutOptions::create())
                    .await
                    .unwrap();
            }
            let expected = ["a-b", "a/x", "a/y/z", "a0"];
            let all = list_all(&store, "").await.unwrap();
            let all: Vec<_> = all.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(all, expected);

            let mut opts = ListOptions {
                page_size: Some(1),
                ..ListOptions::default()
            };
            let mut paged = Vec::new();
            loop {
                let page = store.list(&opts).await.unwrap();
                assert!(page.objects.len() <= 1);
                paged.extend(page.objects.into_iter().map(|m| m.name));
                match page.next_page_token {
                    Some(token) => opts.page_token = Some(token),
                    None => break,
                }
            }
            assert_eq!(paged, expected);

            // A delimiter other than '/' folds across directories too.
            let page = store
                .list(&ListOptions {
                    prefix: "a".into(),
                    delimiter: Some('-'),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert_eq!(page.prefixes, ["a-"]);
            assert_eq!(names(&page), ["a/x", "a/y/z", "a0"]);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn page_tokens_from_elsewhere_are_rejected() {
        let (_dir, store) = store();
        bounded(async {
            for i in 0..3 {
                store
                    .put(&format!("a/{i}"), Bytes::new(), PutOptions::create())
                    .await
                    .unwrap();
            }
            let first = store
                .list(&ListOptions {
                    prefix: "a/".into(),
                    page_size: Some(1),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            let token = first.next_page_token.expect("more pages");
            for (prefix, token) in [("a/", "garbage"), ("a/", "l1.zz"), ("b/", token.as_str())] {
                let err = store
                    .list(&ListOptions {
                        prefix: prefix.into(),
                        page_token: Some(token.into()),
                        ..ListOptions::default()
                    })
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, StoreError::InvalidPageToken { .. }),
                    "{prefix} {token}: {err:?}"
                );
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn prefixes_outside_the_objects_list_nothing() {
        let (_dir, store) = store();
        bounded(async {
            store
                .put("x", Bytes::new(), PutOptions::create())
                .await
                .unwrap();
            for prefix in ["../", ".runbox/", ".run", "a//", "/"] {
                let page = store
                    .list(&ListOptions {
                        prefix: prefix.into(),
                        ..ListOptions::default()
                    })
                    .await
                    .unwrap();
                assert!(page.objects.is_empty(), "{prefix}: {page:?}");
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unreadable_metadata_is_corrupt_until_a_plain_put_repairs_it() {
        let (_dir, store) = store();
        bounded(async {
            let name = "sessions/s/state.json";
            let meta = store
                .put(name, Bytes::new(), PutOptions::create())
                .await
                .unwrap();
            fs::write(store.root().join(".runbox/meta").join(name), b"not json").unwrap();

            assert!(matches!(
                store.head(name).await,
                Err(StoreError::Corrupt { .. })
            ));
            assert!(matches!(
                store.get(name).await,
                Err(StoreError::Corrupt { .. })
            ));
            let conditional = store
                .put(
                    name,
                    Bytes::new(),
                    PutOptions::when(Precondition::GenerationMatch(meta.generation)),
                )
                .await;
            assert!(matches!(conditional, Err(StoreError::Corrupt { .. })));
            // One bad sidecar does not break listings.
            assert_eq!(list_all(&store, "sessions/").await.unwrap().len(), 1);

            let repaired = store
                .put(name, Bytes::from_static(b"{}"), PutOptions::default())
                .await
                .unwrap();
            assert!(repaired.generation > meta.generation);
            assert_eq!(store.head(name).await.unwrap(), repaired);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_open_stream_keeps_the_generation_it_opened() {
        let (_dir, store) = store();
        bounded(async {
            store
                .put("f", Bytes::from_static(b"old"), PutOptions::create())
                .await
                .unwrap();
            let (meta, mut stream) = store.get_stream("f").await.unwrap();
            store
                .put("f", Bytes::from_static(b"new!"), PutOptions::default())
                .await
                .unwrap();
            let mut read = Vec::new();
            stream.read_to_end(&mut read).await.unwrap();
            assert_eq!(read, b"old");
            assert_eq!(meta.size, 3);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_name_cannot_be_both_an_object_and_a_directory() {
        let (_dir, store) = store();
        bounded(async {
            let meta = store
                .put("a/b", Bytes::from_static(b"b"), PutOptions::create())
                .await
                .unwrap();
            for name in ["a", "a/b/c"] {
                let err = store
                    .put(name, Bytes::new(), PutOptions::default())
                    .await
                    .unwrap_err();
                assert!(matches!(err, StoreError::Io { .. }), "{name}: {err:?}");
            }
            // The failed writes left the existing object as it was.
            assert_eq!(store.head("a/b").await.unwrap(), meta);
            assert_eq!(list_all(&store, "").await.unwrap(), [meta]);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_stream_write_leaves_nothing_behind() {
        let (_dir, store) = store();
        bounded(async {
            // A stream that fails half-way, like a broken upload.
            let failing = tokio::io::AsyncReadExt::chain(&b"partial"[..], FailingReader);
            let err = store
                .put_stream("up", Box::pin(failing), PutOptions::create())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Io { op: "write", .. }), "{err:?}");
            assert!(store.head("up").await.unwrap_err().is_not_found());
            let leftovers = fs::read_dir(store.root().join(".runbox/tmp"))
                .unwrap()
                .count();
            assert_eq!(leftovers, 0);
        })
        .await;
    }

    struct FailingReader;

    impl tokio::io::AsyncRead for FailingReader {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::other("connection reset")))
        }
    }
}
