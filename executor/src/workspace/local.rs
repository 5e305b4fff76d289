//! Changes to the local directory during a restore, around the downloads:
//! clearing the way before, links, modes and mtimes after.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::mtime::set_mtime;
use super::{RESTORE_MODE_MASK, Result, io_err};

/// Removes what must go and creates the directories, before any download.
pub(super) fn prepare(
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
pub(super) struct Fix {
    pub(super) path: String,
    pub(super) mode: Option<u32>,
    pub(super) mtime_ns: Option<i64>,
}

/// After the downloads: symlinks (last, so nothing is ever written through
/// one), modes and mtimes of kept files, then directory modes, deepest
/// first (a read-only directory must be the last thing touched below it).
pub(super) fn finish(
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
