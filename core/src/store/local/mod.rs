//! The embedded store: objects as plain files under a directory, with Cloud
//! Storage's generations and conditional writes.
//!
//! Layout under the root:
//!
//! - `<root>/<name>`: the object's content, a plain file, so a command can use
//!   a session's workspace files directly and a filesystem watcher on
//!   `<root>/results/` sees results appear;
//! - the content file also holds the object's bookkeeping (a stamp): its
//!   generation is the file's mtime, set to the microsecond when it is
//!   written, and its custom metadata, if any, is in the extended attribute
//!   `user.runbox.meta`. So a durable write syncs one file and one
//!   directory;
//! - `<root>/.runbox/meta/<name>`: only where a stamp cannot be (a file
//!   system without user extended attributes or microsecond timestamps,
//!   metadata over 3 KiB, a generation ahead of the clock), a JSON sidecar
//!   with the generation, the custom metadata, the write time and a
//!   fingerprint of the content file it describes (the meta tree mirrors
//!   the content tree exactly, so it can never collide where the content
//!   tree does not);
//! - `<root>/.runbox/tmp/`: temporary files, renamed into place when complete;
//! - `<root>/.runbox/locks/`: striped lock files (`flock`), shared by every
//!   process that opens the same root. Each also holds the last generation it
//!   issued, so generations never repeat, even after a delete.
//!
//! A write stages the content in a temporary file (outside any lock), then,
//! holding the name's lock exclusively, checks the precondition, stamps the
//! generation (the mtime, or a new sidecar renamed into place) and renames
//! the content into place LAST: a watcher
//! reacting to the content's appearance and calling [`Store::head`] sees the
//! new generation. Reads take the lock shared, so they never pair a new
//! sidecar with old content.
//!
//! Files nobody wrote through the store (a command creating or editing a
//! workspace file) are objects too: when the sidecar is missing, or its
//! fingerprint (inode, size, mtime) no longer matches the file, the generation
//! is the file's mtime in microseconds (never below the old sidecar's
//! generation + 1) and the custom metadata is the stamp's only while the
//! stamp names that same generation (an edit in place moves the mtime).
//!
//! Limits of a directory: only regular files are objects (symlinks, FIFOs and
//! sockets are ignored, empty directories are not objects), and the store
//! cannot hold both `a` and `a/b` at once (a put of the second fails with
//! [`StoreError::Io`]). Content paths are resolved one segment at a time
//! without following symlinks, so a symlink a command plants in a workspace
//! can never make the store read or write outside its root.
//!
//! Where each part lives: `write` (staging, preconditions, placing content
//! and deleting), `sidecar` (the per-object bookkeeping), `lock` (striped
//! file locks and generation issuing), `list` (listings and page tokens),
//! `resolve` (symlink-free name resolution).

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::io::Errno;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::*;

mod list;
mod lock;
mod resolve;
mod sidecar;
mod write;

use lock::{LockMode, StripeLock};
use resolve::{READ_FLAGS, open_at, open_parent};
use sidecar::describe;
use write::TempFile;

/// How often a write retries making its directory and renaming into it when
/// a concurrent delete prunes that directory (then empty) in between.
const PLACE_ATTEMPTS: usize = 16;

/// Whether writes wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the content (with its generation), any sidecar and the
    /// directory before a write returns: a completed write survives a power
    /// loss (the default). A write marked [`PutOptions::volatile()`] skips
    /// them, as with [`Durability::NoSync`].
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
        Self::open_impl(root.into(), durability, false)
    }

    /// Opens a store whose file operations run on the calling thread
    /// instead of tokio's blocking pool. For a process that does one thing
    /// at a time, like the executor, where handing each operation to
    /// another thread and back costs more than the operation itself (two
    /// wake-ups, each a wait for a CPU on a busy machine). Never for a
    /// process serving many tasks: a write waiting for the disk, or for a
    /// lock another process holds, stalls its whole runtime thread.
    pub fn open_inline(root: impl Into<PathBuf>, durability: Durability) -> Result<Self> {
        Self::open_impl(root.into(), durability, true)
    }

    /// Keeps one empty staging file created ahead, so a write does not
    /// create its file on its way: creating a file (allocating its inode)
    /// is the one step of a small write that can stall for a millisecond
    /// and more when the file system is busy, while writing and renaming
    /// an existing one cannot. Each successful write has the next one
    /// created after it: on the blocking pool, or on the calling thread
    /// for a store opened with [`LocalStore::open_inline`] (or without a
    /// runtime).
    /// The spare is removed when the last handle to the store is dropped;
    /// a process killed before that leaves it under `.runbox/tmp/`, as a
    /// write cut short does. For a long-lived process that writes in
    /// turns, like a warm executor.
    /// Opening one also removes the staging files of processes that are
    /// gone, once untouched for ten minutes (the age keeps a file
    /// of a live process in another PID namespace that shares the store).
    #[must_use]
    pub fn with_spare(self) -> Self {
        self.inner.sweep_stale_staging();
        self.inner.keep_spare.store(true, Ordering::Relaxed);
        self.inner.replenish_later();
        self
    }

    /// [`LocalStore::with_spare`] for a process that turns out to write in
    /// turns: the spare is made after the store's `writes`-th write, then
    /// kept. A process that writes once or twice and exits (a CLI command)
    /// never makes one, which would only be one more file to create and
    /// remove on its way; a long-lived client has its writes from the next
    /// on staged in files created ahead, off the path of its commands.
    #[must_use]
    pub fn with_spare_after(self, writes: u32) -> Self {
        if writes == 0 {
            return self.with_spare();
        }
        self.inner
            .writes_before_spare
            .store(writes, Ordering::Relaxed);
        self
    }

    fn open_impl(root: PathBuf, durability: Durability, inline: bool) -> Result<Self> {
        let io_err = |source| StoreError::Io {
            op: "open store",
            name: root.display().to_string(),
            source,
        };
        let root = std::path::absolute(&root).map_err(io_err)?;
        let internal = root.join(".runbox");
        let inner = Inner {
            sync: durability == Durability::Sync,
            inline,
            meta: internal.join("meta"),
            tmp: internal.join("tmp"),
            locks: internal.join("locks"),
            root,
            keep_spare: AtomicBool::new(false),
            writes_before_spare: AtomicU32::new(0),
            replenishing: AtomicBool::new(false),
            spare: Mutex::new(None),
        };
        // Temporary files left by a crash are never renamed anywhere and are
        // not objects, so they are harmless; they are not cleaned here
        // because another process may be writing one right now (a store
        // that keeps a spare removes those of processes long gone, see
        // `with_spare`).
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
    /// (On the calling thread for a store opened with
    /// [`LocalStore::open_inline`].)
    async fn blocking<T, F>(&self, op: &'static str, name: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        if self.inner.inline {
            return f(&self.inner);
        }
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
            // stripe do not wait for our copy (the sync waits for the stamp,
            // which is only known under the lock).
            let (tmp, mut file) = inner.create_temp(&owned)?;
            file.write_all(&data).map_err(io_err("write", &owned))?;
            inner.commit(&owned, tmp, file, opts)
        })
        .await
        .inspect(|_| self.inner.replenish_later())
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
        // `commit` syncs the content (on the blocking pool).
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
            inner.commit(&owned, tmp, file, opts)
        })
        .await
        .inspect(|_| self.inner.replenish_later())
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
    /// fsync content, any sidecar and the directory on every write not
    /// marked volatile.
    sync: bool,
    /// Run file operations on the calling thread (see
    /// [`LocalStore::open_inline`]).
    inline: bool,
    root: PathBuf,
    meta: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
    /// Whether a spare staging file is kept (see [`LocalStore::with_spare`]).
    keep_spare: AtomicBool,
    /// Writes left before one is (see [`LocalStore::with_spare_after`]);
    /// 0 when not counting.
    writes_before_spare: AtomicU32,
    /// A spare is being made.
    replenishing: AtomicBool,
    /// That file, when one is ready.
    spare: Mutex<Option<(TempFile, File)>>,
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
        let Some((file, md)) = self.open_content(name)? else {
            return Ok(Current::absent());
        };
        let sidecar = self.read_sidecar(name)?;
        let meta = describe(name, &file, &md, sidecar.as_deref(), tolerate_corrupt)?;
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
        let meta = describe(name, &file, &md, sidecar.as_deref(), false)?;
        Ok((meta, file))
    }

    /// Opens the regular file holding `name`'s content, never following a
    /// symlink below the root; `None` when no regular file holds the name.
    fn open_content(&self, name: &str) -> Result<Option<(File, Metadata)>> {
        let opened = open_parent(&self.root, name, false)
            .and_then(|(parent, leaf)| open_at(&parent, leaf, READ_FLAGS));
        let file = match opened {
            Ok(fd) => File::from(fd),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err("open", name)(e)),
        };
        let md = file.metadata().map_err(io_err("stat", name))?;
        Ok(md.is_file().then_some((file, md)))
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

/// Whether an I/O error means "no such object": missing, a file where a
/// directory was expected, a symlink (O_NOFOLLOW), or an over-long segment.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(
        Errno::from_io_error(e),
        Some(Errno::LOOP | Errno::NAMETOOLONG)
    )
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

#[cfg(test)]
mod tests;
