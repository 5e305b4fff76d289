//! The executor's scratch directory (the command file, the captured
//! output) and the sweep of those that killed executors left behind.
//!
//! An executor removes its scratch directory when it ends, unless it is
//! killed (SIGKILL, OOM). So that such a leftover does not stay forever,
//! every scratch directory is locked (`flock`) by its executor for as long
//! as it lives: the kernel releases the lock when the process dies however
//! it dies, and a directory whose lock can be taken therefore has no live
//! owner. [`sweep`], run by each executor before it creates its own,
//! removes exactly those. A directory gets its final name only once it is
//! locked (it is created under a staging name, locked, then renamed), so a
//! sweep never sees a live directory unlocked. Directories of other users
//! cannot be opened and are left alone, as is anything not named like a
//! scratch directory.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{FlockOperation, RenameFlags};

/// Where scratch directories live on the embedded backend, relative to the
/// store's directory (`RUNBOX_HOME`): under the store's reserved `.runbox/`.
pub const EMBEDDED_DIR: &str = ".runbox/scratch";

/// Name prefix of a locked scratch directory.
pub const PREFIX: &str = "runbox-scratch-";

/// Name prefix of a scratch directory being created (not yet locked).
const STAGING_PREFIX: &str = ".runbox-scratch-new-";

/// A staging directory this old was left by an executor killed between
/// creating and locking it (a few microseconds): far longer than that
/// window, so a directory being created is never taken for one.
const STAGING_MAX_AGE: Duration = Duration::from_secs(600);

/// A scratch directory, locked while this value lives and removed when it
/// is dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    /// Held open for the lock; closing it (at drop, or when the process
    /// dies) releases the lock.
    _lock: File,
}

impl ScratchDir {
    /// Creates a new, locked scratch directory in `base` (created if
    /// missing).
    pub fn create(base: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(base)?;
        // Removed on drop until it has its final name.
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(base)?;
        let lock = File::open(staging.path())?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)?;
        let suffix = staging
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .unwrap_or_default()
            .to_owned();
        let path = base.join(format!("{PREFIX}{suffix}"));
        // NOREPLACE: an empty directory of the same name (vanishingly
        // unlikely) must not be replaced while its owner uses it.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            staging.path(),
            rustix::fs::CWD,
            &path,
            RenameFlags::NOREPLACE,
        )?;
        // Renamed: nothing is left at the staging path for its drop to
        // remove.
        let _ = staging.keep();
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Removed while still locked, so no sweep races this removal.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the scratch directories in `base` whose executor is gone;
/// returns how many were removed. Best effort: what cannot be read or
/// removed is left for a later sweep.
pub fn sweep(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        // Not followed: a link named like a scratch directory is not one.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let candidate = name.starts_with(PREFIX)
            || (name.starts_with(STAGING_PREFIX) && older_than(&entry, STAGING_MAX_AGE));
        if candidate && remove_if_unowned(&entry.path()) {
            removed += 1;
        }
    }
    removed
}

/// Removes `dir` if no process holds its lock.
fn remove_if_unowned(dir: &Path) -> bool {
    let Ok(lock) = File::open(dir) else {
        return false;
    };
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    // Held until the directory is gone, so two sweeps do not both remove it.
    std::fs::remove_dir_all(dir).is_ok()
}

fn older_than(entry: &std::fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|elapsed| elapsed > age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(base: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_live_directory_is_kept_and_an_unlocked_one_swept() {
        let base = tempfile::tempdir().unwrap();
        let live = ScratchDir::create(base.path()).unwrap();
        assert!(live.path().is_dir());
        let name = live.path().file_name().unwrap().to_string_lossy();
        assert!(name.starts_with(PREFIX), "{name}");
        // What a killed executor leaves: its directory, with no lock held.
        let dead = base.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("stdout"), b"x").unwrap();
        // Not ours to touch: another name, and a fresh staging directory.
        std::fs::create_dir(base.path().join("runbox-exec-old")).unwrap();
        std::fs::create_dir(base.path().join(format!("{STAGING_PREFIX}fresh"))).unwrap();

        assert_eq!(sweep(base.path()), 1);
        assert!(!dead.exists());
        assert!(live.path().is_dir(), "the live directory was removed");
        let live_name = name.into_owned();
        assert_eq!(
            names(base.path()),
            [
                format!("{STAGING_PREFIX}fresh"),
                "runbox-exec-old".to_owned(),
                live_name
            ]
        );
        // A second sweep finds nothing more; the live one goes at drop.
        assert_eq!(sweep(base.path()), 0);
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists());
    }
}
