//! Workspace persistence: a session's files survive from one command to the
//! next although every Cloud Run execution starts on a fresh disk.
//!
//! # Objects
//!
//! - `sessions/{session}/workspace/{path}`: one object per regular file, so
//!   the file API reads and writes files without launching a job;
//! - `sessions/{session}/manifest.json`: every entry of the tree, including
//!   what objects cannot hold: permission bits, modification times, empty
//!   directories and symlinks. See [`runbox_core::manifest`] for the format.
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

mod local;
mod mtime;
mod plan;
mod restore_steps;
mod save_steps;
mod scan;
mod stored;
mod tasks;
#[cfg(test)]
mod tests;
mod transfer;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_core::SessionId;
use runbox_core::layout;
use runbox_core::manifest::ManifestError;
pub use runbox_core::manifest::{EntryKind, FileEntry, MANIFEST_VERSION, Manifest};
use runbox_core::store::{Precondition, Store, StoreError};

use self::stored::{put_manifest, read_manifest};

/// Default for [`SyncOptions::max_bytes`]: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// Default for [`SyncOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Files whose recorded mtime is this close to the scan that recorded them
/// are checked by content, not by size and mtime (see the module docs).
/// Far above any kernel timestamp granularity, and cheap: only files
/// written in the last seconds before a save are read again.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Object names are at most this long (Cloud Storage's limit).
const MAX_NAME_BYTES: usize = 1024;

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
        /// What is wrong with it.
        #[source]
        source: ManifestError,
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
        return restore_steps::in_place(dir, stored, generation, pending).await;
    }

    let prefix = layout::workspace_prefix(session);
    let (mut target, reconciled) =
        restore_steps::reconcile_with_objects(store, stored, &prefix).await?;
    let mut snapshot = Snapshot {
        generation,
        dirty: pending || reconciled,
        ..Snapshot::default()
    };
    let tmp = restore_steps::create_directories(dir).await?;
    let (local, plan) = restore_steps::plan(dir, &target).await?;
    snapshot.stats.removed = plan.remove.len() + local.unsupported.len();
    restore_steps::clear_the_way(dir, &local, &plan).await?;
    let (keep, download) =
        restore_steps::verify_touched_files(dir, &target, &plan, opts.concurrency).await?;
    let fetched = restore_steps::download_files(
        store,
        &prefix,
        dir,
        tmp.path(),
        &target,
        download,
        opts.concurrency,
    )
    .await?;
    restore_steps::record_downloads(&mut target, &mut snapshot, fetched);
    snapshot.stats.kept_files = keep.len();
    restore_steps::set_metadata(dir, &target, &local, &plan, &keep).await?;
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
    let scanned_at_ns = mtime::now_ns();
    let local = save_steps::scan_workspace(dir, &prefix).await?;
    save_steps::check_size(&local, dir, opts.max_bytes)?;

    let old = &before.manifest;
    let mut stats = SaveStats {
        skipped: save_steps::skipped(&local),
        ..SaveStats::default()
    };
    let mut sorted = save_steps::compare(old, &local, &mut stats);
    save_steps::hash_same_size(dir, old, &local, &mut sorted, &mut stats, opts.concurrency).await?;
    let save_steps::Sorted {
        mut entries,
        changed,
        ..
    } = sorted;
    let deleted = save_steps::deleted_files(old, &local);
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
                precondition = save_steps::claim(store, &manifest_name, old, precondition).await?;
                claimed = true;
            }
            // Deletes first: on a store with directories (a local store
            // used for transfers), `a/b` can only be written once file
            // `a` is gone.
            save_steps::delete_objects(store, &prefix, deleted, opts.concurrency).await?;
            save_steps::upload_changes(
                store,
                &prefix,
                dir,
                changed,
                &mut entries,
                &mut stats,
                opts.concurrency,
            )
            .await?;
        }
        SyncMode::InPlace => {
            save_steps::tidy_deleted_objects(store, &prefix, deleted, opts.concurrency).await?;
            save_steps::describe_changes(
                store,
                &prefix,
                dir,
                changed,
                &mut entries,
                &mut stats,
                opts.concurrency,
            )
            .await?;
        }
    }

    let after = Manifest {
        scanned_at_ns,
        pending: false,
        entries,
    };
    let mut generation = before.generation;
    if claimed || save_steps::manifest_moved(before, &after) {
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

/// The paths (relative to `dir`) whose files or symlinks were added,
/// changed or removed since `before`: what a failed [`save`] did not keep.
/// Judged by size and mtime alone, without reading content, so a file
/// rewritten with the same size within one clock tick of its restore may be
/// missed; a path that is only a directory is not listed.
pub async fn changes_since(dir: &Path, before: &Snapshot) -> Result<Vec<String>> {
    let root = dir.to_owned();
    let local = tasks::blocking(move || scan::scan(&root, usize::MAX)).await?;
    let old = &before.manifest;
    let mut changed: Vec<String> = local
        .entries
        .iter()
        .filter(|(path, entry)| match (entry, old.entries.get(*path)) {
            (scan::Local::Dir { .. }, _) => false,
            (scan::Local::File(have), Some(EntryKind::File(was))) => {
                have.size != was.size || have.mtime_ns != was.mtime_ns
            }
            (scan::Local::Symlink { target }, Some(EntryKind::Symlink { target: was })) => {
                target != was
            }
            _ => true,
        })
        .map(|(path, _)| path.clone())
        .collect();
    changed.extend(
        old.entries
            .iter()
            .filter(|(path, kind)| {
                !matches!(kind, EntryKind::Dir { .. }) && !local.entries.contains_key(*path)
            })
            .map(|(path, _)| path.clone()),
    );
    changed.sort();
    Ok(changed)
}

/// Reads the session's manifest as stored, with its generation; an empty
/// manifest and generation 0 when there is none. (The file API can list
/// modes and symlinks from it; objects stay the truth for content.)
pub async fn load_manifest(store: &dyn Store, session: &SessionId) -> Result<(Manifest, i64)> {
    read_manifest(store, &layout::manifest(session)).await
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
