//! The steps of [`save`](super::save), in the order it takes them.

use std::collections::BTreeMap;
use std::path::Path;

use runbox_core::store::{Precondition, Store, StoreError};

use super::plan::{Change, racy, with_stat};
use super::scan::{Local, Scan, scan};
use super::stored::put_manifest;
use super::tasks::{blocking, bounded};
use super::transfer::{hash_file, upload_file};
use super::{
    EntryKind, FileEntry, MAX_NAME_BYTES, Manifest, Result, SaveStats, Skipped, Snapshot,
    WorkspaceError, store_err,
};

/// The local files sorted against the manifest of the restore.
pub(super) struct Sorted {
    /// The new manifest's entries known so far: directories, symlinks and
    /// unchanged files.
    pub(super) entries: BTreeMap<String, EntryKind>,
    /// Files of the same size whose mtime proves nothing: the checksum
    /// decides.
    pub(super) to_hash: Vec<String>,
    /// New and changed files.
    pub(super) changed: Vec<Change>,
}

/// Scans the directory; paths whose object name (below `prefix`) would be
/// too long are unsupported.
pub(super) async fn scan_workspace(dir: &Path, prefix: &str) -> Result<Scan> {
    let root = dir.to_owned();
    let max_path = MAX_NAME_BYTES.saturating_sub(prefix.len());
    blocking(move || scan(&root, max_path)).await
}

/// Refuses a workspace whose files add up to more than `max_bytes`.
pub(super) fn check_size(local: &Scan, dir: &Path, max_bytes: u64) -> Result<()> {
    let total: u64 = local
        .entries
        .values()
        .map(|e| match e {
            Local::File(f) => f.size,
            _ => 0,
        })
        .sum();
    if total > max_bytes {
        return Err(WorkspaceError::TooLarge {
            limit: max_bytes,
            actual: total,
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// What the scan found but cannot save.
pub(super) fn skipped(local: &Scan) -> Vec<Skipped> {
    local
        .unsupported
        .iter()
        .map(|u| Skipped {
            path: u.abs.to_string_lossy().into_owned(),
            reason: u.reason,
        })
        .collect()
}

/// Sorts the local entries by what size and mtime say about them.
pub(super) fn compare(old: &Manifest, local: &Scan, stats: &mut SaveStats) -> Sorted {
    let mut sorted = Sorted {
        entries: BTreeMap::new(),
        to_hash: Vec::new(),
        changed: Vec::new(),
    };
    for (path, entry) in &local.entries {
        match entry {
            Local::Dir { mode } => {
                sorted
                    .entries
                    .insert(path.clone(), EntryKind::Dir { mode: *mode });
            }
            Local::Symlink { target } => {
                sorted.entries.insert(
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
                        && !racy(old, was.mtime_ns) =>
                {
                    stats.unchanged += 1;
                    sorted
                        .entries
                        .insert(path.clone(), EntryKind::File(with_stat(was, have)));
                }
                Some(was) if was.size == have.size && !was.sha256.is_empty() => {
                    sorted.to_hash.push(path.clone());
                }
                Some(was) => {
                    sorted
                        .changed
                        .push(Change::new(path, have, Some(was.generation), None))
                }
                None => sorted.changed.push(Change::new(path, have, None, None)),
            },
        }
    }
    sorted
}

/// Checksums the files `compare` could not decide, `concurrency` at a time,
/// and sorts them into unchanged and changed.
pub(super) async fn hash_same_size(
    dir: &Path,
    old: &Manifest,
    local: &Scan,
    sorted: &mut Sorted,
    stats: &mut SaveStats,
    concurrency: usize,
) -> Result<()> {
    let to_hash = std::mem::take(&mut sorted.to_hash);
    let hashed = bounded(to_hash, concurrency, |path| {
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
            sorted
                .entries
                .insert(path, EntryKind::File(with_stat(was, have)));
        } else {
            sorted
                .changed
                .push(Change::new(&path, have, Some(was.generation), Some(sha)));
        }
    }
    Ok(())
}

/// Files of the old manifest that are no longer local files, with the
/// generation of their object.
pub(super) fn deleted_files(old: &Manifest, local: &Scan) -> Vec<(String, i64)> {
    old.files()
        .filter(|(p, _)| !matches!(local.entries.get(*p), Some(Local::File(_))))
        .map(|(p, f)| (p.to_owned(), f.generation))
        .collect()
}

/// Rewrites the unchanged manifest with `pending: true` under
/// `precondition`; returns the precondition of the claimed manifest.
pub(super) async fn claim(
    store: &dyn Store,
    manifest_name: &str,
    old: &Manifest,
    precondition: Precondition,
) -> Result<Precondition> {
    // The claim: of two saves from one snapshot, the loser stops here,
    // before it changed any object.
    let claim = Manifest {
        pending: true,
        ..old.clone()
    };
    let meta = put_manifest(store, manifest_name, &claim, precondition).await?;
    Ok(Precondition::GenerationMatch(meta.generation))
}

/// Deletes one workspace object on the generation restored; one already
/// gone is no error.
async fn delete_restored(
    store: &dyn Store,
    name: &str,
    generation: i64,
) -> std::result::Result<(), StoreError> {
    match store
        .delete(name, Precondition::GenerationMatch(generation))
        .await
    {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Deletes the objects of deleted files, each on the generation restored.
pub(super) async fn delete_objects(
    store: &dyn Store,
    prefix: &str,
    deleted: Vec<(String, i64)>,
    concurrency: usize,
) -> Result<()> {
    bounded(deleted, concurrency, |(path, generation)| {
        let name = format!("{prefix}{path}");
        async move {
            match delete_restored(store, &name, generation).await {
                Ok(()) => Ok(()),
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
    Ok(())
}

/// Uploads new and changed files and records their entries.
pub(super) async fn upload_changes(
    store: &dyn Store,
    prefix: &str,
    dir: &Path,
    changed: Vec<Change>,
    entries: &mut BTreeMap<String, EntryKind>,
    stats: &mut SaveStats,
    concurrency: usize,
) -> Result<()> {
    let uploaded = bounded(changed, concurrency, |change| {
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
    Ok(())
}

/// In place: drops the store's bookkeeping for deleted files.
pub(super) async fn tidy_deleted_objects(
    store: &dyn Store,
    prefix: &str,
    deleted: Vec<(String, i64)>,
    concurrency: usize,
) -> Result<()> {
    // The command already removed the files; deleting the objects only
    // drops the store's bookkeeping for them. Conditioned, so a file
    // written again since the scan is left alone.
    bounded(deleted, concurrency, |(path, generation)| {
        let name = format!("{prefix}{path}");
        async move {
            match delete_restored(store, &name, generation).await {
                Err(e) if !e.is_conflict() => {
                    tracing::debug!(object = %name, error = %e, "could not tidy a deleted workspace file");
                }
                _ => {}
            }
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// In place: records the entries of new and changed files, which are
/// already their objects.
pub(super) async fn describe_changes(
    store: &dyn Store,
    prefix: &str,
    dir: &Path,
    changed: Vec<Change>,
    entries: &mut BTreeMap<String, EntryKind>,
    stats: &mut SaveStats,
    concurrency: usize,
) -> Result<()> {
    let described = bounded(changed, concurrency, |change| {
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
    Ok(())
}

/// Whether the new manifest must be written although no claim was made.
pub(super) fn manifest_moved(before: &Snapshot, after: &Manifest) -> bool {
    let old = &before.manifest;
    // Rewriting an identical manifest would cost a store write per command
    // (`ls`, `git status`); it is only needed when something moved, or to
    // refresh the scan time of racily clean entries.
    let any_racy = old.files().any(|(_, f)| racy(old, f.mtime_ns));
    before.dirty || any_racy || after.entries != old.entries
}
