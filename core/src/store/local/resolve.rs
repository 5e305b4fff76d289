//! Resolving object names to files below the root one segment at a time,
//! never following a symlink, so a symlink planted in a workspace cannot lead
//! the store outside its root.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::{Errno, retry_on_intr};

use super::*;

/// How reads open a content file. O_NOFOLLOW: symlinks are not objects.
/// O_NONBLOCK: opening a FIFO a command left in its workspace must not hang;
/// it changes nothing for regular files.
pub(super) const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK);

/// Opens the directory that holds `name`'s last segment, one segment at a
/// time from `root`, never following a symlink: a command that plants
/// `workspace/link -> /` cannot make the store read or write outside its
/// root. With `create`, missing directories are made.
pub(super) fn open_parent<'n>(
    root: &Path,
    name: &'n str,
    create: bool,
) -> io::Result<(OwnedFd, &'n str)> {
    let (dirs, leaf) = match name.rsplit_once('/') {
        Some((dirs, leaf)) => (Some(dirs), leaf),
        None => (None, name),
    };
    let mut dir = OwnedFd::from(File::open(root)?);
    for segment in dirs.into_iter().flat_map(|dirs| dirs.split('/')) {
        dir = open_child_dir(&dir, segment, create)?;
    }
    Ok((dir, leaf))
}

/// Opens the directory `segment` of `parent` without following a symlink,
/// making it first when `create` is set and it is missing.
fn open_child_dir(parent: impl AsFd, segment: &str, create: bool) -> io::Result<OwnedFd> {
    let parent = parent.as_fd();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        match open_at(parent, segment, flags) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound && attempt < PLACE_ATTEMPTS => {
                match rustix::fs::mkdirat(parent, segment, Mode::from_raw_mode(0o777)) {
                    // Made by a concurrent writer meanwhile: open it.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            opened => return opened,
        }
    }
}

/// `openat(2)`, retried on EINTR; the descriptor is close-on-exec.
pub(super) fn open_at(dir: impl AsFd, segment: &str, flags: OFlags) -> io::Result<OwnedFd> {
    // No O_CREAT, so the mode is not used.
    retry_on_intr(|| rustix::fs::openat(&dir, segment, flags | OFlags::CLOEXEC, Mode::empty()))
        .map_err(io::Error::from)
}

/// `unlinkat(2)` of a file.
pub(super) fn unlink_at(dir: impl AsFd, segment: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, segment, AtFlags::empty()).map_err(io::Error::from)
}

/// The last segment of an object name.
pub(super) fn leaf_of(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, leaf)| leaf)
}
