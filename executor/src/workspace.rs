//! Workspace persistence: a session's files survive from one command to the
//! next although every Cloud Run execution starts on a fresh disk.
//!
//! # Objects
//!
//! - `sessions/{session}/workspace/{path}`: one object per regular file, so
//!   the file API reads and writes files without launching a job;
//! - `sessions/{session}/manifest.json`: every entry of the tree, including
//!   what objects cannot hold: permission bits, modification times, empty
//!   directories and symlinks. See [`Manifest`] for the format.
//!
//! The file objects are the truth for content; the manifest is the truth for
//! everything else. [`restore`] lists the objects and reconciles: an object
//! the manifest does not know (the file API wrote it) is restored with mode
//! 0644, a manifest file whose object is gone (the file API deleted it) is
//! not restored, and a file whose object generation moved is downloaded again.
//! So a save that died half-way, or a file-API write that never touched the
//! manifest, cannot make a restore lose or invent a file.
//!
//! # Checksums
//!
//! SHA-256 of the content, lowercase hex (field `sha256`). Slower than a
//! non-cryptographic hash (about 1.5 GB/s with the SHA extensions most x86
//! servers have), but the checksum decides whether a save may skip an
//! upload, and a command must not be able to craft a change that looks
//! unchanged. It is only computed for files whose size or mtime moved.
//!
//! # Change detection
//!
//! Like rsync's quick check: a file whose size and mtime (nanoseconds) equal
//! the manifest's is unchanged and is not read. Restores set each file's
//! mtime to the recorded one, so a command's write always moves it, with one
//! exception that git calls "racily clean": a file written within one clock
//! tick of the scan that recorded it can be written again without its mtime
//! moving. Entries whose mtime is within [`RACY_WINDOW`] of the manifest's
//! scan time are therefore checked by content. A file whose size moved is
//! changed without reading it twice: its checksum is computed while uploading.
//!
//! # Modes
//!
//! [`SyncMode::Transfer`] (Cloud Storage): restore downloads what the local
//! directory lacks, save uploads what changed. [`SyncMode::InPlace`] (the
//! embedded store): the command runs in the store's own directory, the files
//! ARE the objects, so restore only reads the manifest and save only scans
//! and rewrites the manifest.
//!
//! # Conflicts
//!
//! A save writes nothing unless the manifest still has the generation its
//! restore read. In transfer mode it first rewrites the unchanged manifest
//! with `pending: true` under that precondition (the claim): of two saves
//! from one snapshot, the loser fails there with [`WorkspaceError::Conflict`]
//! before touching any object. File writes and deletes are conditioned on
//! the generation restored too, so a file the file API changed meanwhile is
//! never overwritten. The final manifest is written on the claim's
//! generation. A save that dies after its claim leaves `pending: true`
//! and objects newer than the entries; the reconciliation above handles it.
//!
//! # Limits
//!
//! Special files (FIFOs, sockets, devices), names that are not UTF-8 or hold
//! control characters, symlinks whose target is not UTF-8, and paths whose
//! object name would pass 1024 bytes are not saved; save reports them in
//! [`SaveStats::skipped`] and restore removes them. Hard links are saved as
//! separate files. Setuid and setgid bits are recorded but never restored:
//! the executor may run as root and restores files as its own user. Owners
//! are not kept. Symlinks are recorded with their target and never followed,
//! wherever they point.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use runbox_core::SessionId;
use runbox_core::layout;
use runbox_core::store::{
    self, ByteStream, ObjectMeta, Precondition, PutOptions, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, BufWriter, ReadBuf};

/// Default for [`SyncOptions::max_bytes`]: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// Default for [`SyncOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Version of the manifest format written by this code.
pub const MANIFEST_VERSION: u32 = 1;

/// Files whose recorded mtime is this close to the scan that recorded them
/// are checked by content, not by size and mtime (see the module docs).
/// Far above any kernel timestamp granularity, and cheap: only files
/// written in the last seconds before a save are read again.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Object names are at most this long (Cloud Storage's limit).
const MAX_NAME_BYTES: usize = 1024;

/// I/O buffer of transfers and checksums: large, because tokio's file
/// handles cost a blocking-pool round trip per read or write.
const IO_BUFFER: usize = 1 << 20;

/// Smallest I/O buffer: small files need no more.
const MIN_IO_BUFFER: usize = 8 << 10;

/// Permission bits restored: setuid and setgid are dropped (module docs).
const RESTORE_MODE_MASK: u32 = 0o1777;

/// Mode of a file restored from an object the manifest does not list.
const DEFAULT_FILE_MODE: u32 = 0o644;

/// Mode of a directory only implied by the files below it.
const DEFAULT_DIR_MODE: u32 = 0o755;

/// How files move between the workspace directory and the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// The directory is a copy: restore downloads, save uploads (Cloud
    /// Storage, or a local store kept elsewhere).
    #[default]
    Transfer,
    /// The directory is the store's own content directory (embedded
    /// backend): nothing is copied, only the manifest is kept exact.
    InPlace,
}

/// Settings of [`restore`] and [`save`].
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Transfer or in place.
    pub mode: SyncMode,
    /// Largest total size of the workspace's regular files, in bytes; a save
    /// over it fails with [`WorkspaceError::TooLarge`] and changes nothing.
    /// The executor reads it from `RUNBOX_WORKSPACE_MAX_BYTES`; default
    /// [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// Most transfers (and checksums) at once; default
    /// [`DEFAULT_CONCURRENCY`]. Each holds about 1 MiB of buffers (and, on
    /// Cloud Storage, up to one 8 MiB upload chunk).
    pub concurrency: usize,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            mode: SyncMode::Transfer,
            max_bytes: DEFAULT_MAX_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl SyncOptions {
    /// Default options in `mode`.
    #[must_use]
    pub fn new(mode: SyncMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// Sets [`SyncOptions::max_bytes`].
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets [`SyncOptions::concurrency`] (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
}

/// A failed restore or save.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// Local file system work failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error("{op} {name}")]
    Store {
        /// What was being done, e.g. "upload".
        op: &'static str,
        /// The object name or prefix.
        name: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Someone else changed the workspace since it was restored: another
    /// save from the same snapshot, or the file API. Nothing of it was
    /// overwritten; when this comes from the manifest claim, this save
    /// changed no object at all.
    #[error("workspace changed by another writer since it was restored: conflict on {name}")]
    Conflict {
        /// The object whose precondition failed.
        name: String,
        /// The store's precondition failure.
        #[source]
        source: StoreError,
    },
    /// The workspace is over [`SyncOptions::max_bytes`]; nothing was saved.
    #[error(
        "workspace {} holds {actual} bytes of files, over the limit of {limit} bytes \
         (RUNBOX_WORKSPACE_MAX_BYTES); nothing was saved",
        dir.display()
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
        /// The total size of the workspace's files, in bytes.
        actual: u64,
        /// The workspace directory.
        dir: PathBuf,
    },
    /// The manifest object does not decode.
    #[error("manifest {name} is invalid")]
    InvalidManifest {
        /// The object name.
        name: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A downloaded file does not have the checksum the manifest recorded
    /// for the same generation.
    #[error("object {name} has SHA-256 {actual}, but the manifest records {expected}")]
    Corrupt {
        /// The object name.
        name: String,
        /// The recorded checksum.
        expected: String,
        /// The checksum of the bytes read.
        actual: String,
    },
}

impl WorkspaceError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkspaceError::Store { source, .. } => source.is_retryable(),
            WorkspaceError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    /// Whether this is [`WorkspaceError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, WorkspaceError::Conflict { .. })
    }
}

/// Result alias of this module.
pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// The listing of a workspace: every file, directory and symlink below its
/// root, by path relative to it (`/`-separated).
///
/// Stored as JSON:
///
/// ```json
/// {"version": 1, "checksum": "sha256", "scanned_at_ns": 1760000000000000000,
///  "entries": [
///    {"path": "src", "kind": "dir", "mode": 493},
///    {"path": "src/main.py", "kind": "file", "size": 12, "mode": 420,
///     "mtime_ns": 1759999999000000000, "sha256": "…", "generation": 1759999999123456},
///    {"path": "latest", "kind": "symlink", "target": "src/main.py"}]}
/// ```
///
/// `mode` is the permission bits (`st_mode & 0o7777`) as a number;
/// `generation` the file object's generation; `pending` (absent when false)
/// marks a save in progress or interrupted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// When the scan that produced it started, ns since the Unix epoch.
    pub scanned_at_ns: i64,
    /// A save claimed the manifest and has not finished (or died).
    pub pending: bool,
    /// Every entry, by relative path.
    pub entries: BTreeMap<String, EntryKind>,
}

/// What one manifest entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file, stored as the object of the same path.
    File(FileEntry),
    /// A directory (kept so empty ones and modes survive).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link; never followed.
    Symlink {
        /// The link's target, as `readlink` gives it.
        target: String,
    },
}

/// A regular file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Generation of the file's object.
    pub generation: i64,
}

impl Manifest {
    /// Total size of the files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.size).sum()
    }

    /// The file entries.
    pub fn files(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.entries.iter().filter_map(|(p, e)| match e {
            EntryKind::File(f) => Some((p.as_str(), f)),
            _ => None,
        })
    }

    fn file(&self, path: &str) -> Option<&FileEntry> {
        match self.entries.get(path) {
            Some(EntryKind::File(f)) => Some(f),
            _ => None,
        }
    }

    /// Whether a file recorded with this mtime must be checked by content
    /// (written too close to the scan for its mtime to prove anything).
    fn racy(&self, mtime_ns: i64) -> bool {
        mtime_ns
            > self
                .scanned_at_ns
                .saturating_sub(RACY_WINDOW.as_nanos() as i64)
    }

    fn encode(&self) -> Bytes {
        let wire = WireManifest {
            version: MANIFEST_VERSION,
            checksum: "sha256".to_owned(),
            scanned_at_ns: self.scanned_at_ns,
            pending: self.pending,
            entries: self
                .entries
                .iter()
                .map(|(path, kind)| WireEntry {
                    path: path.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        Bytes::from(serde_json::to_vec(&wire).expect("a manifest always encodes"))
    }

    fn decode(name: &str, data: &[u8]) -> Result<Self> {
        let wire: WireManifest =
            serde_json::from_slice(data).map_err(|source| WorkspaceError::InvalidManifest {
                name: name.to_owned(),
                source,
            })?;
        let invalid = |msg: String| WorkspaceError::InvalidManifest {
            name: name.to_owned(),
            source: serde::de::Error::custom(msg),
        };
        if wire.version != MANIFEST_VERSION || wire.checksum != "sha256" {
            return Err(invalid(format!(
                "version {} with checksum {:?}; this executor reads version {MANIFEST_VERSION} with sha256",
                wire.version, wire.checksum
            )));
        }
        let mut entries = BTreeMap::new();
        for e in wire.entries {
            // The paths become local paths: nothing absolute, `..` or empty.
            if !valid_path(&e.path) {
                return Err(invalid(format!("entry path {:?} is not allowed", e.path)));
            }
            entries.insert(e.path, e.kind);
        }
        Ok(Self {
            scanned_at_ns: wire.scanned_at_ns,
            pending: wire.pending,
            entries,
        })
    }
}

/// What [`restore`] did: the manifest as the directory now matches it, with
/// the generation it was read at, for [`save`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    manifest: Manifest,
    /// Generation of the manifest object read; 0 when there was none.
    generation: i64,
    /// The manifest differs from the stored one (reconciled with the
    /// objects, or pending): the next save writes it even if nothing changed.
    dirty: bool,
    stats: RestoreStats,
}

impl Snapshot {
    /// The manifest the directory matches.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Generation of the manifest object this snapshot is based on; 0 when
    /// there is none yet.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// What the restore that made this snapshot did (zero after a save).
    pub fn stats(&self) -> &RestoreStats {
        &self.stats
    }
}

/// Counters of one [`restore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Files downloaded.
    pub downloaded_files: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Files already present with the right content.
    pub kept_files: usize,
    /// Local entries removed because the manifest does not have them.
    pub removed: usize,
}

/// Counters of one [`save`], and the snapshot it leaves.
#[derive(Clone, Debug, Default)]
pub struct SaveStats {
    /// Files uploaded (transfer mode).
    pub uploaded_files: usize,
    /// Bytes uploaded (transfer mode).
    pub uploaded_bytes: u64,
    /// Files whose content changed: uploaded in transfer mode, already in
    /// place in in-place mode.
    pub changed_files: usize,
    /// Files removed since the restore (their objects are deleted).
    pub deleted: usize,
    /// Files whose content did not change (not uploaded).
    pub unchanged: usize,
    /// Bytes read to compute checksums.
    pub hashed_bytes: u64,
    /// Whether the manifest was written (not when nothing changed).
    pub manifest_written: bool,
    /// Entries that cannot be saved, with the reason.
    pub skipped: Vec<Skipped>,
    /// The state after this save, for the next save of the same directory.
    pub snapshot: Snapshot,
}

/// An entry that is not saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The local path (lossy if not UTF-8).
    pub path: String,
    /// Why.
    pub reason: &'static str,
}

/// Makes `dir` match the session's saved workspace and returns the snapshot
/// that [`save`] compares against. A missing manifest is an empty workspace.
///
/// Transfer mode: files whose local copy is missing or differs are
/// downloaded (`opts.concurrency` at a time, each into a temporary file
/// beside `dir`, then renamed into place); local entries the manifest does
/// not have are removed; directories, symlinks, modes and mtimes are set.
/// In-place mode: only reads the manifest (the directory is the store).
pub async fn restore(
    store: &dyn Store,
    session: &SessionId,
    dir: &Path,
    opts: &SyncOptions,
) -> Result<Snapshot> {
    let name = layout::manifest(session);
    let (stored, generation) = read_manifest(store, &name).await?;
    let pending = stored.pending;
    if opts.mode == SyncMode::InPlace {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io_err("create workspace", dir))?;
        return Ok(Snapshot {
            manifest: stored,
            generation,
            dirty: pending,
            stats: RestoreStats::default(),
        });
    }

    let prefix = layout::workspace_prefix(session);
    let objects = store::list_all(store, &prefix)
        .await
        .map_err(store_err("list workspace", &prefix))?;
    let (mut target, reconciled) = reconcile(stored, objects, &prefix);
    let mut snapshot = Snapshot {
        generation,
        dirty: pending || reconciled,
        ..Snapshot::default()
    };

    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err("create workspace", dir))?;
    let parent = dir.parent().unwrap_or(dir).to_owned();
    // Beside the workspace, not in it: a download in progress is never a
    // workspace file, and the rename into place stays on one file system.
    let tmp = tempfile::Builder::new()
        .prefix(".runbox-restore-")
        .tempdir_in(&parent)
        .map_err(io_err("create temporary directory in", &parent))?;

    let root = dir.to_owned();
    let local = blocking(move || scan(&root, usize::MAX)).await?;
    let plan = RestorePlan::new(&target, &local);
    snapshot.stats.removed = plan.remove.len() + local.unsupported.len();

    let root = dir.to_owned();
    let (remove, make_dirs, unsupported) = (
        plan.remove.clone(),
        plan.make_dirs.clone(),
        local
            .unsupported
            .iter()
            .map(|s| s.abs.clone())
            .collect::<Vec<_>>(),
    );
    let local_dirs: Vec<String> = local
        .entries
        .iter()
        .filter(|(_, e)| matches!(e, Local::Dir { mode } if mode & 0o700 != 0o700))
        .map(|(p, _)| p.clone())
        .collect();
    blocking(move || prepare(&root, &local_dirs, &remove, &unsupported, &make_dirs)).await?;

    // Same size, other mtime: the content decides (a persistent directory
    // touched by something else); reading locally beats downloading.
    let verified = bounded(plan.verify.clone(), opts.concurrency, |path| {
        let abs = dir.join(&path);
        async move {
            let (sha, _) = blocking(move || hash_file(&abs)).await?;
            Ok((path, sha))
        }
    })
    .await?;
    let mut keep = plan.keep.clone();
    let mut download = plan.download.clone();
    for (path, sha) in verified {
        match target.file(&path) {
            Some(f) if f.sha256 == sha => keep.push(path),
            _ => download.push(path),
        }
    }

    let downloads: Vec<(usize, String, FileEntry)> = download
        .into_iter()
        .filter_map(|p| target.file(&p).cloned().map(|f| (p, f)))
        .enumerate()
        .map(|(i, (p, f))| (i, p, f))
        .collect();
    let fetched = bounded(downloads, opts.concurrency, |(i, path, entry)| {
        let name = format!("{prefix}{path}");
        let dest = dir.join(&path);
        let tmp = tmp.path().join(i.to_string());
        async move {
            let got = download_file(store, &name, &tmp, &dest, &entry).await?;
            Ok((path, got))
        }
    })
    .await?;
    for (path, got) in fetched {
        match got {
            Some(file) => {
                snapshot.stats.downloaded_files += 1;
                snapshot.stats.downloaded_bytes += file.size;
                target.entries.insert(path, EntryKind::File(file));
            }
            // Deleted since the listing: the file API removed it.
            None => {
                target.entries.remove(&path);
                snapshot.dirty = true;
            }
        }
    }
    snapshot.stats.kept_files = keep.len();

    let fixes: Vec<Fix> = keep
        .iter()
        .filter_map(|p| {
            let (EntryKind::File(want), Some(Local::File(have))) =
                (target.entries.get(p)?, local.entries.get(p))
            else {
                return None;
            };
            Some(Fix {
                path: p.clone(),
                mode: (want.mode != have.mode).then_some(want.mode),
                mtime_ns: (want.mtime_ns != have.mtime_ns).then_some(want.mtime_ns),
            })
        })
        .collect();
    let links: Vec<(String, String)> = plan
        .links
        .iter()
        .filter_map(|p| match target.entries.get(p) {
            Some(EntryKind::Symlink { target }) => Some((p.clone(), target.clone())),
            _ => None,
        })
        .collect();
    let dir_modes: Vec<(String, u32)> = target
        .entries
        .iter()
        .filter_map(|(p, e)| match e {
            EntryKind::Dir { mode } => Some((p.clone(), *mode)),
            _ => None,
        })
        .collect();
    let root = dir.to_owned();
    blocking(move || finish(&root, &fixes, &links, &dir_modes)).await?;
    drop(tmp);

    snapshot.manifest = target;
    tracing::debug!(
        session = %session,
        downloaded = snapshot.stats.downloaded_files,
        bytes = snapshot.stats.downloaded_bytes,
        kept = snapshot.stats.kept_files,
        removed = snapshot.stats.removed,
        "workspace restored"
    );
    Ok(snapshot)
}

/// Saves `dir` as the session's workspace: compares it with `before` (what
/// [`restore`] returned), uploads new and changed files (transfer mode,
/// `opts.concurrency` at a time), deletes the objects of removed files, and
/// writes the manifest on the generation `before` was read at.
///
/// Fails with [`WorkspaceError::TooLarge`] before changing anything when the
/// files add up to more than `opts.max_bytes`, and with
/// [`WorkspaceError::Conflict`] when someone else saved the workspace (or
/// the file API changed one of the same files) since `before`.
pub async fn save(
    store: &dyn Store,
    session: &SessionId,
    dir: &Path,
    before: &Snapshot,
    opts: &SyncOptions,
) -> Result<SaveStats> {
    let prefix = layout::workspace_prefix(session);
    let manifest_name = layout::manifest(session);
    let scanned_at_ns = now_ns();
    let root = dir.to_owned();
    let max_path = MAX_NAME_BYTES.saturating_sub(prefix.len());
    let local = blocking(move || scan(&root, max_path)).await?;

    let total: u64 = local
        .entries
        .values()
        .map(|e| match e {
            Local::File(f) => f.size,
            _ => 0,
        })
        .sum();
    if total > opts.max_bytes {
        return Err(WorkspaceError::TooLarge {
            limit: opts.max_bytes,
            actual: total,
            dir: dir.to_owned(),
        });
    }

    let old = &before.manifest;
    let mut stats = SaveStats {
        skipped: local
            .unsupported
            .iter()
            .map(|u| Skipped {
                path: u.abs.to_string_lossy().into_owned(),
                reason: u.reason,
            })
            .collect(),
        ..SaveStats::default()
    };
    let mut entries = BTreeMap::new();
    let mut to_hash = Vec::new();
    let mut changed = Vec::new();
    for (path, entry) in &local.entries {
        match entry {
            Local::Dir { mode } => {
                entries.insert(path.clone(), EntryKind::Dir { mode: *mode });
            }
            Local::Symlink { target } => {
                entries.insert(
                    path.clone(),
                    EntryKind::Symlink {
                        target: target.clone(),
                    },
                );
            }
            Local::File(have) => match old.file(path) {
                Some(was)
                    if was.size == have.size
                        && was.mtime_ns == have.mtime_ns
                        && !was.sha256.is_empty()
                        && !old.racy(was.mtime_ns) =>
                {
                    stats.unchanged += 1;
                    entries.insert(path.clone(), EntryKind::File(with_stat(was, have)));
                }
                Some(was) if was.size == have.size && !was.sha256.is_empty() => {
                    to_hash.push(path.clone());
                }
                Some(was) => changed.push(Change::new(path, have, Some(was.generation), None)),
                None => changed.push(Change::new(path, have, None, None)),
            },
        }
    }

    let hashed = bounded(to_hash, opts.concurrency, |path| {
        let abs = dir.join(&path);
        async move {
            let got = blocking(move || hash_file(&abs)).await?;
            Ok((path, got))
        }
    })
    .await?;
    for (path, (sha, bytes)) in hashed {
        stats.hashed_bytes += bytes;
        let (Some(was), Some(Local::File(have))) = (old.file(&path), local.entries.get(&path))
        else {
            continue;
        };
        if was.sha256 == sha {
            stats.unchanged += 1;
            entries.insert(path, EntryKind::File(with_stat(was, have)));
        } else {
            changed.push(Change::new(&path, have, Some(was.generation), Some(sha)));
        }
    }

    let deleted: Vec<(String, i64)> = old
        .files()
        .filter(|(p, _)| !matches!(local.entries.get(*p), Some(Local::File(_))))
        .map(|(p, f)| (p.to_owned(), f.generation))
        .collect();
    stats.deleted = deleted.len();
    stats.changed_files = changed.len();

    let mut claimed = false;
    let mut precondition = match before.generation {
        0 => Precondition::DoesNotExist,
        g => Precondition::GenerationMatch(g),
    };
    match opts.mode {
        SyncMode::Transfer => {
            if !changed.is_empty() || !deleted.is_empty() {
                // The claim: of two saves from one snapshot, the loser
                // stops here, before it changed any object.
                let claim = Manifest {
                    pending: true,
                    ..old.clone()
                };
                let meta = put_manifest(store, &manifest_name, &claim, precondition).await?;
                precondition = Precondition::GenerationMatch(meta.generation);
                claimed = true;
            }
            // Deletes first: on a store with directories (a local store
            // used for transfers), `a/b` can only be written once file
            // `a` is gone.
            bounded(deleted, opts.concurrency, |(path, generation)| {
                let name = format!("{prefix}{path}");
                async move {
                    match store
                        .delete(&name, Precondition::GenerationMatch(generation))
                        .await
                    {
                        Ok(()) => Ok(()),
                        Err(e) if e.is_not_found() => Ok(()),
                        Err(source) if source.is_conflict() => {
                            Err(WorkspaceError::Conflict { name, source })
                        }
                        Err(source) => Err(WorkspaceError::Store {
                            op: "delete workspace file",
                            name,
                            source,
                        }),
                    }
                }
            })
            .await?;
            let uploaded = bounded(changed, opts.concurrency, |change| {
                let name = format!("{prefix}{}", change.path);
                let abs = dir.join(&change.path);
                async move {
                    let (meta, sha, size) =
                        upload_file(store, &name, &abs, change.size, change.precondition()).await?;
                    Ok((change, meta, sha, size))
                }
            })
            .await?;
            for (change, meta, sha, size) in uploaded {
                stats.uploaded_files += 1;
                stats.uploaded_bytes += size;
                entries.insert(
                    change.path,
                    EntryKind::File(FileEntry {
                        size,
                        mode: change.mode,
                        mtime_ns: change.mtime_ns,
                        sha256: sha,
                        generation: meta.generation,
                    }),
                );
            }
        }
        SyncMode::InPlace => {
            // The command already removed the files; deleting the objects
            // only drops the store's bookkeeping for them. Conditioned, so a
            // file written again since the scan is left alone.
            bounded(deleted, opts.concurrency, |(path, generation)| {
                let name = format!("{prefix}{path}");
                async move {
                    match store
                        .delete(&name, Precondition::GenerationMatch(generation))
                        .await
                    {
                        Err(e) if !e.is_not_found() && !e.is_conflict() => {
                            tracing::debug!(object = %name, error = %e, "could not tidy a deleted workspace file");
                        }
                        _ => {}
                    }
                    Ok(())
                }
            })
            .await?;
            let described = bounded(changed, opts.concurrency, |change| {
                let name = format!("{prefix}{}", change.path);
                let abs = dir.join(&change.path);
                async move {
                    let (sha, hashed) = match change.sha256.clone() {
                        Some(sha) => (sha, 0),
                        None => blocking(move || hash_file(&abs)).await?,
                    };
                    let meta = store
                        .head(&name)
                        .await
                        .map_err(store_err("read metadata of", &name))?;
                    Ok((change, meta, sha, hashed))
                }
            })
            .await?;
            for (change, meta, sha, hashed) in described {
                stats.hashed_bytes += hashed;
                entries.insert(
                    change.path,
                    EntryKind::File(FileEntry {
                        size: change.size,
                        mode: change.mode,
                        mtime_ns: change.mtime_ns,
                        sha256: sha,
                        generation: meta.generation,
                    }),
                );
            }
        }
    }

    let after = Manifest {
        scanned_at_ns,
        pending: false,
        entries,
    };
    // Rewriting an identical manifest would cost a store write per
    // command (`ls`, `git status`); it is only needed when something moved,
    // or to refresh the scan time of racily clean entries.
    let racy = old.files().any(|(_, f)| old.racy(f.mtime_ns));
    let mut generation = before.generation;
    if claimed || before.dirty || racy || after.entries != old.entries {
        let meta = put_manifest(store, &manifest_name, &after, precondition).await?;
        generation = meta.generation;
        stats.manifest_written = true;
    }
    tracing::debug!(
        session = %session,
        uploaded = stats.uploaded_files,
        bytes = stats.uploaded_bytes,
        deleted = stats.deleted,
        unchanged = stats.unchanged,
        "workspace saved"
    );
    stats.snapshot = Snapshot {
        manifest: after,
        generation,
        dirty: false,
        stats: RestoreStats::default(),
    };
    Ok(stats)
}

/// Reads the session's manifest as stored, with its generation; an empty
/// manifest and generation 0 when there is none. (The file API can list
/// modes and symlinks from it; objects stay the truth for content.)
pub async fn load_manifest(store: &dyn Store, session: &SessionId) -> Result<(Manifest, i64)> {
    read_manifest(store, &layout::manifest(session)).await
}

// ---------------------------------------------------------------------------
// Manifest I/O and reconciliation

async fn read_manifest(store: &dyn Store, name: &str) -> Result<(Manifest, i64)> {
    match store.get(name).await {
        Ok(obj) => Ok((Manifest::decode(name, &obj.data)?, obj.meta.generation)),
        Err(e) if e.is_not_found() => Ok((Manifest::default(), 0)),
        Err(source) => Err(WorkspaceError::Store {
            op: "read workspace manifest",
            name: name.to_owned(),
            source,
        }),
    }
}

async fn put_manifest(
    store: &dyn Store,
    name: &str,
    manifest: &Manifest,
    precondition: Precondition,
) -> Result<ObjectMeta> {
    match store
        .put(name, manifest.encode(), PutOptions::when(precondition))
        .await
    {
        Ok(meta) => Ok(meta),
        Err(source) if source.is_conflict() => Err(WorkspaceError::Conflict {
            name: name.to_owned(),
            source,
        }),
        Err(source) => Err(WorkspaceError::Store {
            op: "write workspace manifest",
            name: name.to_owned(),
            source,
        }),
    }
}

/// The tree to restore: the manifest, corrected by the objects that exist
/// (module docs). Returns whether anything was corrected.
fn reconcile(mut manifest: Manifest, objects: Vec<ObjectMeta>, prefix: &str) -> (Manifest, bool) {
    let mut changed = false;
    let objects: BTreeMap<String, ObjectMeta> = objects
        .into_iter()
        .filter_map(|m| {
            let path = m.name.strip_prefix(prefix)?.to_owned();
            valid_path(&path).then_some((path, m))
        })
        .collect();
    // Manifest files whose object is gone, or not the generation recorded.
    let files: Vec<String> = manifest.files().map(|(p, _)| p.to_owned()).collect();
    for path in files {
        match objects.get(&path) {
            Some(meta) => {
                let Some(EntryKind::File(f)) = manifest.entries.get_mut(&path) else {
                    continue;
                };
                if f.generation != meta.generation {
                    *f = adopted(meta, f.mode);
                    changed = true;
                }
            }
            None => {
                manifest.entries.remove(&path);
                changed = true;
            }
        }
    }
    // Objects the manifest does not list: written by the file API, or by a
    // save that died before its manifest.
    for (path, meta) in &objects {
        match manifest.entries.get(path) {
            Some(EntryKind::File(_)) => {}
            _ => {
                manifest.entries.insert(
                    path.clone(),
                    EntryKind::File(adopted(meta, DEFAULT_FILE_MODE)),
                );
                changed = true;
            }
        }
    }
    // A tree needs every ancestor to be a directory: an entry below a file
    // or symlink cannot exist (objects `a` and `a/b` can, in a bucket). The
    // deeper entry wins, since it is the one with content below it; a
    // symlink ancestor is never written through.
    let blocked: Vec<String> = manifest
        .entries
        .keys()
        .flat_map(|p| ancestors(p))
        .filter(|a| {
            manifest
                .entries
                .get(a.as_str())
                .is_some_and(|e| !matches!(e, EntryKind::Dir { .. }))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for path in blocked {
        tracing::warn!(path = %path, "workspace entry has entries below it; restoring it as a directory");
        manifest.entries.remove(&path);
        changed = true;
    }
    // Directories only implied by the entries below them.
    let implied: Vec<String> = manifest
        .entries
        .keys()
        .flat_map(|p| ancestors(p))
        .filter(|a| !manifest.entries.contains_key(a.as_str()))
        .collect();
    for path in implied {
        manifest.entries.insert(
            path,
            EntryKind::Dir {
                mode: DEFAULT_DIR_MODE,
            },
        );
        changed = true;
    }
    (manifest, changed)
}

/// The entry of an object the manifest does not describe: checksum unknown
/// until it is downloaded.
fn adopted(meta: &ObjectMeta, mode: u32) -> FileEntry {
    FileEntry {
        size: meta.size,
        mode,
        mtime_ns: meta.updated.map_or_else(now_ns, system_time_ns),
        sha256: String::new(),
        generation: meta.generation,
    }
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    path.match_indices('/')
        .map(move |(i, _)| path[..i].to_owned())
}

/// A relative path that is safe to join to the workspace directory.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_NAME_BYTES
        && !path.starts_with('/')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

// ---------------------------------------------------------------------------
// Local scan

/// What a scan found.
#[derive(Default)]
struct Scan {
    entries: BTreeMap<String, Local>,
    unsupported: Vec<Unsupported>,
}

/// An entry that cannot be recorded.
struct Unsupported {
    abs: PathBuf,
    reason: &'static str,
}

/// One local entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Local {
    File(LocalFile),
    Dir { mode: u32 },
    Symlink { target: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LocalFile {
    size: u64,
    mode: u32,
    mtime_ns: i64,
}

/// Walks `dir` without following symlinks. Paths longer than `max_path`
/// bytes (their object name would be too long) are unsupported.
fn scan(dir: &Path, max_path: usize) -> Result<Scan> {
    let mut out = Scan::default();
    match fs::symlink_metadata(dir) {
        // A command may remove its own workspace: then it is empty.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("stat workspace", dir)(e)),
        Ok(md) if !md.is_dir() => {
            return Err(io_err("scan workspace", dir)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(_) => {}
    }
    walk(dir, "", max_path, &mut out)?;
    Ok(out)
}

fn walk(abs: &Path, rel: &str, max_path: usize, out: &mut Scan) -> Result<()> {
    let reader = match fs::read_dir(abs) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read directory", abs)(e)),
    };
    for entry in reader {
        let entry = entry.map_err(io_err("read directory", abs))?;
        let child = entry.path();
        // Does not follow symlinks (lstat semantics on Unix).
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &child)(e)),
        };
        let unsupported = |out: &mut Scan, reason| {
            out.unsupported.push(Unsupported {
                abs: child.clone(),
                reason,
            });
        };
        let Some(name) = entry
            .file_name()
            .to_str()
            .filter(|n| !n.chars().any(char::is_control))
            .map(str::to_owned)
        else {
            unsupported(out, "name is not UTF-8 or holds a control character");
            continue;
        };
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if path.len() > max_path {
            unsupported(out, "path too long for an object name");
            continue;
        }
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        if ft.is_dir() {
            out.entries.insert(path.clone(), Local::Dir { mode });
            walk(&child, &path, max_path, out)?;
        } else if ft.is_file() {
            out.entries.insert(
                path,
                Local::File(LocalFile {
                    size: md.len(),
                    mode,
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                }),
            );
        } else if ft.is_symlink() {
            let target = fs::read_link(&child).map_err(io_err("read symlink", &child))?;
            match target.into_os_string().into_string() {
                Ok(target) => {
                    out.entries.insert(path, Local::Symlink { target });
                }
                Err(_) => unsupported(out, "symlink target is not UTF-8"),
            }
        } else {
            unsupported(out, "not a regular file, directory or symlink");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Restore plan and local changes

/// What a restore must do to the local directory.
#[derive(Debug, Default, PartialEq, Eq)]
struct RestorePlan {
    /// Local entries to remove (directories with everything below).
    remove: Vec<String>,
    /// Directories to create, parents first.
    make_dirs: Vec<String>,
    /// Files already right by size and mtime.
    keep: Vec<String>,
    /// Files of the right size but another mtime: compare checksums.
    verify: Vec<String>,
    /// Files to download.
    download: Vec<String>,
    /// Symlinks to create.
    links: Vec<String>,
}

impl RestorePlan {
    fn new(target: &Manifest, local: &Scan) -> Self {
        let mut plan = RestorePlan::default();
        let mut removed_dirs = BTreeSet::new();
        for (path, have) in &local.entries {
            // Inside a directory already being removed.
            if ancestors(path).any(|a| removed_dirs.contains(&a)) {
                continue;
            }
            let fits = match (target.entries.get(path), have) {
                (Some(EntryKind::Dir { .. }), Local::Dir { .. }) => true,
                (Some(EntryKind::File(_)), Local::File(_)) => true,
                (Some(EntryKind::Symlink { target: want }), Local::Symlink { target: got }) => {
                    want == got
                }
                _ => false,
            };
            if !fits {
                if matches!(have, Local::Dir { .. }) {
                    removed_dirs.insert(path.clone());
                }
                plan.remove.push(path.clone());
            }
        }
        let removed: BTreeSet<&str> = plan.remove.iter().map(String::as_str).collect();
        let present = |p: &str| local.entries.contains_key(p) && !removed.contains(p);
        for (path, want) in &target.entries {
            match want {
                EntryKind::Dir { .. } => {
                    if !present(path) {
                        plan.make_dirs.push(path.clone());
                    }
                }
                EntryKind::Symlink { .. } => {
                    if !present(path) {
                        plan.links.push(path.clone());
                    }
                }
                EntryKind::File(f) => match local.entries.get(path) {
                    Some(Local::File(have)) if present(path) => {
                        if have.size != f.size || f.sha256.is_empty() {
                            plan.download.push(path.clone());
                        } else if have.mtime_ns == f.mtime_ns && !target.racy(f.mtime_ns) {
                            plan.keep.push(path.clone());
                        } else {
                            plan.verify.push(path.clone());
                        }
                    }
                    _ => plan.download.push(path.clone()),
                },
            }
        }
        plan
    }
}

/// Removes what must go and creates the directories, before any download.
fn prepare(
    root: &Path,
    locked_dirs: &[String],
    remove: &[String],
    unsupported: &[PathBuf],
    make_dirs: &[String],
) -> Result<()> {
    // A directory without owner rwx could not be changed below; its mode is
    // set again at the end.
    for path in locked_dirs {
        let abs = root.join(path);
        let mode = fs::symlink_metadata(&abs)
            .map_err(io_err("stat", &abs))?
            .mode();
        fs::set_permissions(&abs, fs::Permissions::from_mode((mode | 0o700) & 0o7777))
            .map_err(io_err("make writable", &abs))?;
    }
    for abs in remove
        .iter()
        .rev()
        .map(|p| root.join(p))
        .chain(unsupported.iter().cloned())
    {
        remove_any(&abs)?;
    }
    for path in make_dirs {
        let abs = root.join(path);
        match fs::create_dir(&abs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &abs)(e)),
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree, without following symlinks.
fn remove_any(abs: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(abs) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(abs),
        Ok(_) => fs::remove_file(abs),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", abs)(e)),
    }
}

/// A kept file whose mode or mtime must be set.
struct Fix {
    path: String,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
}

/// After the downloads: symlinks (last, so nothing is ever written through
/// one), modes and mtimes of kept files, then directory modes, deepest
/// first (a read-only directory must be the last thing touched below it).
fn finish(
    root: &Path,
    fixes: &[Fix],
    links: &[(String, String)],
    dir_modes: &[(String, u32)],
) -> Result<()> {
    for (path, target) in links {
        let abs = root.join(path);
        std::os::unix::fs::symlink(target, &abs).map_err(io_err("create symlink", &abs))?;
    }
    for fix in fixes {
        let abs = root.join(&fix.path);
        if let Some(mode) = fix.mode {
            fs::set_permissions(&abs, fs::Permissions::from_mode(mode & RESTORE_MODE_MASK))
                .map_err(io_err("set mode of", &abs))?;
        }
        if let Some(mtime) = fix.mtime_ns {
            set_mtime(&abs, mtime).map_err(io_err("set mtime of", &abs))?;
        }
    }
    for (path, mode) in dir_modes.iter().rev() {
        let abs = root.join(path);
        let want = mode & RESTORE_MODE_MASK;
        let have = fs::symlink_metadata(&abs)
            .map_err(io_err("stat", &abs))?
            .mode()
            & 0o7777;
        if have != want {
            fs::set_permissions(&abs, fs::Permissions::from_mode(want))
                .map_err(io_err("set mode of", &abs))?;
        }
    }
    Ok(())
}

/// Sets a path's mtime without following a symlink; atime is left alone.
fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
        },
    ];
    // SAFETY: `c` is NUL-terminated and `times` holds two timespecs; both
    // outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Transfers

/// A new or changed file to upload (or, in place, to describe).
struct Change {
    path: String,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    /// Generation of the object restored, `None` for a new file.
    was: Option<i64>,
    /// The checksum, when already computed.
    sha256: Option<String>,
}

impl Change {
    fn new(path: &str, have: &LocalFile, was: Option<i64>, sha256: Option<String>) -> Self {
        Self {
            path: path.to_owned(),
            size: have.size,
            mode: have.mode,
            mtime_ns: have.mtime_ns,
            was,
            sha256,
        }
    }

    /// Never overwrite an object someone else wrote since the restore.
    fn precondition(&self) -> Precondition {
        self.was
            .map_or(Precondition::DoesNotExist, Precondition::GenerationMatch)
    }
}

/// The manifest entry of an unchanged file, with its current mode and mtime.
fn with_stat(was: &FileEntry, have: &LocalFile) -> FileEntry {
    FileEntry {
        mode: have.mode,
        mtime_ns: have.mtime_ns,
        ..was.clone()
    }
}

/// Uploads one file; returns the object's metadata, the checksum and size
/// of the bytes actually sent.
async fn upload_file(
    store: &dyn Store,
    name: &str,
    abs: &Path,
    size_hint: u64,
    precondition: Precondition,
) -> Result<(ObjectMeta, String, u64)> {
    let file = fs::OpenOptions::new()
        .read(true)
        // The scan saw a regular file; never read through a symlink put in
        // its place.
        .custom_flags(libc::O_NOFOLLOW)
        .open(abs)
        .map_err(io_err("open", abs))?;
    let (reader, digest) = Hashing::new(BufReader::with_capacity(
        buffer_for(size_hint),
        tokio::fs::File::from_std(file),
    ));
    let stream: ByteStream = Box::pin(reader);
    let meta = match store
        .put_stream(name, stream, PutOptions::when(precondition))
        .await
    {
        Ok(meta) => meta,
        Err(source) if source.is_conflict() => {
            return Err(WorkspaceError::Conflict {
                name: name.to_owned(),
                source,
            });
        }
        Err(source) => {
            return Err(WorkspaceError::Store {
                op: "upload workspace file",
                name: name.to_owned(),
                source,
            });
        }
    };
    let (sha, size) = digest.finish();
    Ok((meta, sha, size))
}

/// Downloads one object into `tmp`, sets its mode and mtime, verifies it and
/// renames it to `dest`. `None` when the object no longer exists.
async fn download_file(
    store: &dyn Store,
    name: &str,
    tmp: &Path,
    dest: &Path,
    entry: &FileEntry,
) -> Result<Option<FileEntry>> {
    let (meta, stream) = match store.get_stream(name).await {
        Ok(got) => got,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(source) => {
            return Err(WorkspaceError::Store {
                op: "download workspace file",
                name: name.to_owned(),
                source,
            });
        }
    };
    let file = tokio::fs::File::create(tmp)
        .await
        .map_err(io_err("create", tmp))?;
    let (mut reader, digest) = Hashing::new(stream);
    let mut writer = BufWriter::with_capacity(buffer_for(meta.size), file);
    let copied = tokio::io::copy(&mut reader, &mut writer).await;
    if let Err(source) = copied {
        // Reading the store's stream or writing the disk: say which.
        return Err(WorkspaceError::Io {
            op: "download",
            path: dest.to_owned(),
            source,
        });
    }
    writer.flush().await.map_err(io_err("write", tmp))?;
    let file = writer.into_inner().into_std().await;
    let (sha, size) = digest.finish();
    if meta.generation == entry.generation && !entry.sha256.is_empty() && entry.sha256 != sha {
        return Err(WorkspaceError::Corrupt {
            name: name.to_owned(),
            expected: entry.sha256.clone(),
            actual: sha,
        });
    }
    // The same generation keeps its recorded mtime; a newer one (the file
    // API wrote it) takes the object's write time.
    let mtime_ns = if meta.generation == entry.generation {
        entry.mtime_ns
    } else {
        meta.updated.map_or(entry.mtime_ns, system_time_ns)
    };
    let mode = entry.mode;
    let (tmp, dest) = (tmp.to_owned(), dest.to_owned());
    blocking(move || {
        file.set_permissions(fs::Permissions::from_mode(mode & RESTORE_MODE_MASK))
            .map_err(io_err("set mode of", &tmp))?;
        file.set_modified(ns_system_time(mtime_ns))
            .map_err(io_err("set mtime of", &tmp))?;
        drop(file);
        fs::rename(&tmp, &dest).map_err(io_err("move into place", &dest))
    })
    .await?;
    Ok(Some(FileEntry {
        size,
        mode,
        mtime_ns,
        sha256: sha,
        generation: meta.generation,
    }))
}

/// SHA-256 (hex) and size of a file, read without following a symlink.
fn hash_file(abs: &Path) -> Result<(String, u64)> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(abs)
        .map_err(io_err("open", abs))?;
    let size = file.metadata().map_err(io_err("stat", abs))?.len();
    let mut hasher = Sha256::new();
    // One more than the size: the read that returns 0 needs no second pass.
    let mut buf = vec![0; buffer_for(size.saturating_add(1))];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", abs)(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// A reader that hashes what passes through it, so an upload or download
/// reads the bytes once and the checksum is of exactly the bytes moved.
struct Hashing<R> {
    inner: R,
    digest: Arc<Mutex<Running>>,
}

#[derive(Default)]
struct Running {
    hasher: Sha256,
    bytes: u64,
}

/// The other end of a [`Hashing`] reader: the result once it is drained.
struct DigestHandle(Arc<Mutex<Running>>);

impl<R> Hashing<R> {
    fn new(inner: R) -> (Self, DigestHandle) {
        let digest = Arc::new(Mutex::new(Running::default()));
        (
            Self {
                inner,
                digest: Arc::clone(&digest),
            },
            DigestHandle(digest),
        )
    }
}

impl DigestHandle {
    fn finish(self) -> (String, u64) {
        let running = std::mem::take(&mut *self.0.lock().expect("digest lock"));
        (hex(&running.hasher.finalize()), running.bytes)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[start..];
        let mut running = self.digest.lock().expect("digest lock");
        running.hasher.update(new);
        running.bytes += new.len() as u64;
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// Runs `f` on each item, at most `limit` at once; stops at the first error
/// (dropping the others, which cancels their transfers).
async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Result<Vec<R>>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    let mut out = Vec::with_capacity(items.len());
    let mut running = stream::iter(items).map(f).buffer_unordered(limit.max(1));
    while let Some(r) = running.next().await {
        out.push(r?);
    }
    Ok(out)
}

/// Runs file system work on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(WorkspaceError::Io {
            op: "run file system task",
            path: PathBuf::new(),
            source: io::Error::other(e),
        }),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> WorkspaceError + 'a {
    move |source| WorkspaceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn store_err<'a>(op: &'static str, name: &'a str) -> impl Fn(StoreError) -> WorkspaceError + 'a {
    move |source| WorkspaceError::Store {
        op,
        name: name.to_owned(),
        source,
    }
}

/// An I/O buffer for a file of `size` bytes.
fn buffer_for(size: u64) -> usize {
    usize::try_from(size)
        .unwrap_or(IO_BUFFER)
        .clamp(MIN_IO_BUFFER, IO_BUFFER)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn ns_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// The manifest as stored.
#[derive(Serialize, Deserialize)]
struct WireManifest {
    version: u32,
    checksum: String,
    scanned_at_ns: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    entries: Vec<WireEntry>,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    path: String,
    #[serde(flatten)]
    kind: EntryKind,
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use runbox_core::store::{Durability, LocalStore};

    use super::*;

    /// Generous: two cores, other tests alongside.
    const T: Duration = Duration::from_secs(30);

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(T, f).await.expect("timed out")
    }

    fn session() -> SessionId {
        SessionId::new("ws").unwrap()
    }

    /// A store and, for in-place mode, its own workspace directory.
    fn in_place() -> (tempfile::TempDir, LocalStore, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open_with(root.path(), Durability::NoSync).unwrap();
        let dir = root
            .path()
            .join(layout::workspace_prefix(&session()).trim_end_matches('/'));
        (root, store, dir)
    }

    /// Every entry below `dir` as "kind mode content", read independently of
    /// the code under test.
    fn listing(dir: &Path) -> BTreeMap<String, String> {
        fn go(abs: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
            for e in fs::read_dir(abs).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let md = fs::symlink_metadata(e.path()).unwrap();
                let mode = md.mode() & 0o7777;
                let line = if md.is_dir() {
                    go(&e.path(), &path, out);
                    format!("dir {mode:o}")
                } else if md.is_symlink() {
                    format!("link -> {}", fs::read_link(e.path()).unwrap().display())
                } else {
                    let data = fs::read(e.path()).unwrap();
                    format!("file {mode:o} {}", String::from_utf8_lossy(&data))
                };
                out.insert(path, line);
            }
        }
        let mut out = BTreeMap::new();
        go(dir, "", &mut out);
        out
    }

    fn write(dir: &Path, path: &str, data: &str) {
        let abs = dir.join(path);
        fs::create_dir_all(abs.parent().unwrap()).unwrap();
        fs::write(abs, data).unwrap();
    }

    fn chmod(dir: &Path, path: &str, mode: u32) {
        fs::set_permissions(dir.join(path), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn sha(data: &str) -> String {
        hex(&Sha256::digest(data.as_bytes()))
    }

    /// The manifest entries, as the listing would show them.
    fn manifest_listing(m: &Manifest, dir: &Path) -> BTreeMap<String, String> {
        m.entries
            .iter()
            .map(|(p, e)| {
                let line = match e {
                    EntryKind::Dir { mode } => format!("dir {mode:o}"),
                    EntryKind::Symlink { target } => format!("link -> {target}"),
                    EntryKind::File(f) => {
                        let data = fs::read_to_string(dir.join(p)).unwrap();
                        assert_eq!(f.sha256, sha(&data), "checksum of {p}");
                        assert_eq!(f.size, data.len() as u64, "size of {p}");
                        format!("file {:o} {data}", f.mode)
                    }
                };
                (p.clone(), line)
            })
            .collect()
    }

    async fn stored_manifest(store: &dyn Store) -> (Manifest, i64) {
        within(read_manifest(store, &layout::manifest(&session())))
            .await
            .unwrap()
    }

    /// Every generation in the manifest is the object's, and the store
    /// holds no workspace object the manifest does not list.
    async fn assert_objects_match(store: &dyn Store, m: &Manifest) {
        let prefix = layout::workspace_prefix(&session());
        let objects: BTreeMap<String, i64> = within(store::list_all(store, &prefix))
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.name[prefix.len()..].to_owned(), o.generation))
            .collect();
        let files: BTreeMap<String, i64> = m
            .files()
            .map(|(p, f)| (p.to_owned(), f.generation))
            .collect();
        assert_eq!(objects, files);
    }

    #[tokio::test]
    async fn in_place_save_keeps_the_manifest_exact_without_copying() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        assert_eq!(snap.generation(), 0);
        assert!(dir.is_dir(), "restore creates the workspace");

        write(&dir, "a.txt", "alpha");
        write(&dir, "src/main.py", "print(1)\n");
        write(&dir, "gone.txt", "bye");
        write(&dir, "moved.txt", "moving");
        fs::create_dir_all(dir.join("empty")).unwrap();
        chmod(&dir, "src/main.py", 0o755);
        symlink("/etc/hostname", dir.join("outside")).unwrap();
        let first = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        assert_eq!(first.uploaded_files, 0, "in place: nothing is uploaded");
        assert_eq!(first.uploaded_bytes, 0);
        assert_eq!(first.changed_files, 4);
        assert!(first.manifest_written);
        let (m, generation) = stored_manifest(&store).await;
        assert_eq!(generation, first.snapshot.generation());
        assert_eq!(m.entries, first.snapshot.manifest().entries);
        assert_eq!(manifest_listing(&m, &dir), listing(&dir));
        assert_objects_match(&store, &m).await;

        // The "command": create, modify, delete, rename, chmod, mkdir, symlink.
        write(&dir, "new.txt", "fresh");
        write(&dir, "a.txt", "alpha, longer");
        fs::remove_file(dir.join("gone.txt")).unwrap();
        fs::rename(dir.join("moved.txt"), dir.join("src/moved.txt")).unwrap();
        chmod(&dir, "src/main.py", 0o700);
        fs::create_dir_all(dir.join("deep/er")).unwrap();
        symlink("src/main.py", dir.join("main")).unwrap();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        assert_eq!(
            snap.stats(),
            &RestoreStats::default(),
            "in place: no transfer"
        );
        let second = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        assert_eq!(second.uploaded_files, 0);
        assert_eq!(second.changed_files, 3, "new.txt, a.txt, src/moved.txt");
        assert_eq!(second.deleted, 2, "gone.txt, moved.txt");
        assert_eq!(second.unchanged, 1, "src/main.py");
        let (m, _) = stored_manifest(&store).await;
        assert_eq!(manifest_listing(&m, &dir), listing(&dir));
        assert_eq!(
            m.entries.get("main"),
            Some(&EntryKind::Symlink {
                target: "src/main.py".into()
            })
        );
        assert_eq!(m.file("src/main.py").unwrap().mode, 0o700);
        assert!(matches!(
            m.entries.get("deep/er"),
            Some(EntryKind::Dir { .. })
        ));
        assert_objects_match(&store, &m).await;
    }

    #[tokio::test]
    async fn in_place_restore_leaves_the_directory_alone() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        write(&dir, "kept.txt", "k");
        within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        // Not in the manifest, but in place the directory is the truth.
        write(&dir, "later.txt", "l");
        let before = listing(&dir);
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        assert_eq!(listing(&dir), before);
        assert_eq!(snap.stats(), &RestoreStats::default());
    }

    #[tokio::test]
    async fn an_unchanged_workspace_writes_nothing() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        let empty = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        assert!(
            !empty.manifest_written,
            "no manifest for an empty workspace"
        );

        write(&dir, "old.txt", "old");
        // Old enough not to be racily clean.
        set_mtime(&dir.join("old.txt"), now_ns() - 60_000_000_000).unwrap();
        let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        let again = within(save(&store, &s, &dir, &saved.snapshot, &opts))
            .await
            .unwrap();
        assert!(!again.manifest_written);
        assert_eq!(again.hashed_bytes, 0, "size and mtime match: not read");
        assert_eq!(again.snapshot.generation(), saved.snapshot.generation());
    }

    #[tokio::test]
    async fn racily_clean_files_are_checked_by_content() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        write(&dir, "f", "one");
        let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        let mtime = saved.snapshot.manifest().file("f").unwrap().mtime_ns;
        // Same size, same mtime: what a write within one clock tick of the
        // scan looks like.
        write(&dir, "f", "two");
        set_mtime(&dir.join("f"), mtime).unwrap();
        let again = within(save(&store, &s, &dir, &saved.snapshot, &opts))
            .await
            .unwrap();
        assert_eq!(again.changed_files, 1);
        assert_eq!(
            again.snapshot.manifest().file("f").unwrap().sha256,
            sha("two")
        );
    }

    #[tokio::test]
    async fn over_the_size_cap_nothing_is_saved() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        write(&dir, "small", "12345");
        let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        write(&dir, "big", "1234567890");
        let capped = opts.clone().with_max_bytes(10);
        let err = within(save(&store, &s, &dir, &saved.snapshot, &capped))
            .await
            .unwrap_err();
        match &err {
            WorkspaceError::TooLarge { limit, actual, .. } => {
                assert_eq!((*limit, *actual), (10, 15));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            err.to_string().contains("RUNBOX_WORKSPACE_MAX_BYTES"),
            "{err}"
        );
        let (m, generation) = stored_manifest(&store).await;
        assert_eq!(generation, saved.snapshot.generation());
        assert!(m.file("big").is_none());
    }

    #[tokio::test]
    async fn two_saves_from_one_snapshot_conflict() {
        let (_root, store, dir) = in_place();
        let opts = SyncOptions::new(SyncMode::InPlace);
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        write(&dir, "a", "1");
        within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        write(&dir, "b", "2");
        let err = within(save(&store, &s, &dir, &snap, &opts))
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        let (m, _) = stored_manifest(&store).await;
        assert!(m.file("b").is_none(), "the loser wrote nothing");
    }

    #[tokio::test]
    async fn transfer_reuses_local_files_with_the_same_content() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open_with(root.path().join("store"), Durability::NoSync).unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let opts = SyncOptions::default();
        let s = session();
        let snap = within(restore(&store, &s, &a, &opts)).await.unwrap();
        write(&a, "same", "content");
        write(&a, "other", "aaaa");
        within(save(&store, &s, &a, &snap, &opts)).await.unwrap();

        // A persistent directory: one file right but touched, one wrong, one
        // stray.
        write(&b, "same", "content");
        write(&b, "other", "bbbb");
        write(&b, "stray/x", "x");
        let restored = within(restore(&store, &s, &b, &opts)).await.unwrap();
        assert_eq!(restored.stats().downloaded_files, 1, "only `other`");
        assert_eq!(restored.stats().kept_files, 1);
        assert_eq!(listing(&b), listing(&a));
        for f in ["same", "other"] {
            let mtime = |d: &Path| fs::metadata(d.join(f)).unwrap().modified().unwrap();
            assert_eq!(mtime(&a), mtime(&b), "mtime of {f} restored");
        }
    }

    #[tokio::test]
    async fn special_files_are_skipped_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open_with(root.path().join("store"), Durability::NoSync).unwrap();
        let dir = root.path().join("w");
        let opts = SyncOptions::default();
        let s = session();
        let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        write(&dir, "ok", "fine");
        let fifo = CString::new(dir.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(dir.join(bad), "x").unwrap();
        let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
        let mut reasons: Vec<&str> = saved.skipped.iter().map(|k| k.reason).collect();
        reasons.sort_unstable();
        assert_eq!(
            reasons,
            [
                "name is not UTF-8 or holds a control character",
                "not a regular file, directory or symlink"
            ]
        );
        assert_eq!(saved.uploaded_files, 1);
        let restored = within(restore(&store, &s, &dir, &opts)).await.unwrap();
        assert_eq!(restored.stats().removed, 2);
        assert_eq!(listing(&dir).keys().collect::<Vec<_>>(), ["ok"]);
    }

    #[test]
    fn reconcile_trusts_objects_for_content_and_manifest_for_the_rest() {
        let file = |generation, mode| {
            EntryKind::File(FileEntry {
                size: 1,
                mode,
                mtime_ns: 5,
                sha256: "s".into(),
                generation,
            })
        };
        let manifest = Manifest {
            scanned_at_ns: 10,
            pending: false,
            entries: BTreeMap::from([
                ("a".to_owned(), file(1, 0o600)),
                ("b".to_owned(), file(2, 0o700)),
                ("gone".to_owned(), file(3, 0o644)),
                (
                    "c".to_owned(),
                    EntryKind::Symlink {
                        target: "/etc".into(),
                    },
                ),
            ]),
        };
        let object = |name: &str, generation| ObjectMeta {
            name: format!("p/{name}"),
            generation,
            size: 7,
            metadata: BTreeMap::new(),
            updated: Some(UNIX_EPOCH + Duration::from_secs(1)),
        };
        let objects = vec![
            object("a", 1),
            object("b", 9),
            object("d", 4),
            object("c/x", 6),
            object("../evil", 1),
        ];
        let (got, changed) = reconcile(manifest, objects, "p/");
        assert!(changed);
        assert_eq!(got.entries["a"], file(1, 0o600), "same generation: kept");
        let EntryKind::File(b) = &got.entries["b"] else {
            panic!("b is a file")
        };
        assert_eq!((b.generation, b.mode, b.size), (9, 0o700, 7));
        assert!(b.sha256.is_empty(), "checksum learnt on download");
        assert!(!got.entries.contains_key("gone"), "object deleted");
        let EntryKind::File(d) = &got.entries["d"] else {
            panic!("d is a file")
        };
        assert_eq!((d.mode, d.mtime_ns), (DEFAULT_FILE_MODE, 1_000_000_000));
        assert_eq!(
            got.entries["c"],
            EntryKind::Dir {
                mode: DEFAULT_DIR_MODE
            },
            "never restore a file through a symlink"
        );
        assert!(matches!(got.entries["c/x"], EntryKind::File(_)));
        assert!(!got.entries.keys().any(|k| k.contains("..")));
    }

    #[test]
    fn manifest_round_trips_and_rejects_escaping_paths() {
        let m = Manifest {
            scanned_at_ns: 42,
            pending: true,
            entries: BTreeMap::from([
                ("d".to_owned(), EntryKind::Dir { mode: 0o755 }),
                (
                    "d/f".to_owned(),
                    EntryKind::File(FileEntry {
                        size: 3,
                        mode: 0o644,
                        mtime_ns: 7,
                        sha256: sha("abc"),
                        generation: 9,
                    }),
                ),
                (
                    "l".to_owned(),
                    EntryKind::Symlink {
                        target: "../../x".into(),
                    },
                ),
            ]),
        };
        let bytes = m.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""kind":"file""#), "{text}");
        assert!(text.contains(r#""checksum":"sha256""#), "{text}");
        assert_eq!(Manifest::decode("m", &bytes).unwrap(), m);
        for bad in ["../x", "/abs", "a//b", "a/./b", ""] {
            let json = format!(
                r#"{{"version":1,"checksum":"sha256","scanned_at_ns":0,"entries":[{{"path":"{bad}","kind":"dir","mode":493}}]}}"#
            );
            let err = Manifest::decode("m", json.as_bytes()).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::InvalidManifest { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn restore_plan_replaces_what_does_not_fit() {
        let target = Manifest {
            // Long after the files' mtimes: none is racily clean.
            scanned_at_ns: 60_000_000_000,
            pending: false,
            entries: BTreeMap::from([
                ("a".to_owned(), EntryKind::Dir { mode: 0o755 }),
                ("a/f".to_owned(), file_entry(3, 100)),
                ("l".to_owned(), EntryKind::Symlink { target: "a".into() }),
                ("same".to_owned(), file_entry(3, 100)),
                ("touched".to_owned(), file_entry(3, 100)),
            ]),
        };
        let local_file = |size, mtime_ns| {
            Local::File(LocalFile {
                size,
                mode: 0o644,
                mtime_ns,
            })
        };
        let local = Scan {
            entries: BTreeMap::from([
                // A symlink where a directory belongs is replaced, never
                // followed; what was "below" it is not looked at.
                ("a".to_owned(), Local::Symlink { target: "/".into() }),
                ("l".to_owned(), Local::Dir { mode: 0o755 }),
                ("l/x".to_owned(), local_file(1, 1)),
                ("same".to_owned(), local_file(3, 100)),
                ("touched".to_owned(), local_file(3, 200)),
                ("stray".to_owned(), local_file(1, 1)),
            ]),
            unsupported: Vec::new(),
        };
        let plan = RestorePlan::new(&target, &local);
        assert_eq!(plan.remove, ["a", "l", "stray"]);
        assert_eq!(plan.make_dirs, ["a"]);
        assert_eq!(plan.links, ["l"]);
        assert_eq!(plan.keep, ["same"]);
        assert_eq!(plan.verify, ["touched"]);
        assert_eq!(plan.download, ["a/f"]);
    }

    fn file_entry(size: u64, mtime_ns: i64) -> EntryKind {
        EntryKind::File(FileEntry {
            size,
            mode: 0o644,
            mtime_ns,
            sha256: "x".into(),
            generation: 1,
        })
    }
}
