//! The steps of [`restore`](super::restore), in the order it takes them.

use std::path::Path;

use runbox_core::store::{self, Store};

use super::local::{Fix, finish, prepare};
use super::plan::{RestorePlan, reconcile};
use super::scan::{Local, Scan, scan};
use super::tasks::{blocking, bounded};
use super::transfer::{download_file, hash_file};
use super::{EntryKind, FileEntry, Manifest, RestoreStats, Result, Snapshot, io_err, store_err};

/// In place the directory is the store: nothing to copy, only make sure it
/// exists.
pub(super) async fn in_place(
    dir: &Path,
    stored: Manifest,
    generation: i64,
    pending: bool,
) -> Result<Snapshot> {
    // A directory that almost always exists already: two system calls,
    // not worth a trip to the blocking pool.
    std::fs::create_dir_all(dir).map_err(io_err("create workspace", dir))?;
    Ok(Snapshot {
        manifest: stored,
        generation,
        dirty: pending,
        stats: RestoreStats::default(),
    })
}

/// The tree to restore: the stored manifest corrected by the objects under
/// `prefix`; whether anything was corrected.
pub(super) async fn reconcile_with_objects(
    store: &dyn Store,
    stored: Manifest,
    prefix: &str,
) -> Result<(Manifest, bool)> {
    let objects = store::list_all(store, prefix)
        .await
        .map_err(store_err("list workspace", prefix))?;
    Ok(reconcile(stored, objects, prefix))
}

/// Creates the workspace directory and, beside it, the directory downloads
/// go to before they are renamed into place.
pub(super) async fn create_directories(dir: &Path) -> Result<tempfile::TempDir> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err("create workspace", dir))?;
    let parent = dir.parent().unwrap_or(dir).to_owned();
    // Beside the workspace, not in it: a download in progress is never a
    // workspace file, and the rename into place stays on one file system.
    tempfile::Builder::new()
        .prefix(".runbox-restore-")
        .tempdir_in(&parent)
        .map_err(io_err("create temporary directory in", &parent))
}

/// Scans what the directory holds and plans how to make it `target`.
pub(super) async fn plan(dir: &Path, target: &Manifest) -> Result<(Scan, RestorePlan)> {
    let root = dir.to_owned();
    let local = blocking(move || scan(&root, usize::MAX)).await?;
    let plan = RestorePlan::new(target, &local);
    Ok((local, plan))
}

/// Removes what does not fit and creates the missing directories.
pub(super) async fn clear_the_way(dir: &Path, local: &Scan, plan: &RestorePlan) -> Result<()> {
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
    blocking(move || prepare(&root, &local_dirs, &remove, &unsupported, &make_dirs)).await
}

/// Sorts the files of the right size but another mtime by content: the
/// paths to keep and the paths to download.
pub(super) async fn verify_touched_files(
    dir: &Path,
    target: &Manifest,
    plan: &RestorePlan,
    concurrency: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    // Same size, other mtime: the content decides (a persistent directory
    // touched by something else); reading locally beats downloading.
    let verified = bounded(plan.verify.clone(), concurrency, |path| {
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
    Ok((keep, download))
}

/// Downloads the files `download` names, `concurrency` at a time, through
/// `tmp`; each path with its new entry, or `None` when its object is gone.
pub(super) async fn download_files(
    store: &dyn Store,
    prefix: &str,
    dir: &Path,
    tmp: &Path,
    target: &Manifest,
    download: Vec<String>,
    concurrency: usize,
) -> Result<Vec<(String, Option<FileEntry>)>> {
    let downloads: Vec<(usize, String, FileEntry)> = download
        .into_iter()
        .filter_map(|p| target.file(&p).cloned().map(|f| (p, f)))
        .enumerate()
        .map(|(i, (p, f))| (i, p, f))
        .collect();
    bounded(downloads, concurrency, |(i, path, entry)| {
        let name = format!("{prefix}{path}");
        let dest = dir.join(&path);
        let tmp = tmp.join(i.to_string());
        async move {
            let got = download_file(store, &name, &tmp, &dest, &entry).await?;
            Ok((path, got))
        }
    })
    .await
}

/// Puts what the downloads found into the target and the counters.
pub(super) fn record_downloads(
    target: &mut Manifest,
    snapshot: &mut Snapshot,
    fetched: Vec<(String, Option<FileEntry>)>,
) {
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
}

/// Creates the symlinks and sets the modes and mtimes of kept files and
/// the modes of directories.
pub(super) async fn set_metadata(
    dir: &Path,
    target: &Manifest,
    local: &Scan,
    plan: &RestorePlan,
    keep: &[String],
) -> Result<()> {
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
    blocking(move || finish(&root, &fixes, &links, &dir_modes)).await
}
