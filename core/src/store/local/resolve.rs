//! Resolving object names to files below the root one segment at a time,
//! never following a symlink, so a symlink planted in a workspace cannot lead
//! the store outside its root.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::*;

/// How reads open a content file. O_NOFOLLOW: symlinks are not objects.
/// O_NONBLOCK: opening a FIFO a command left in its workspace must not hang;
/// it changes nothing for regular files.
pub(super) const READ_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;

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
pub(super) fn open_at(dir: RawFd, segment: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
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
pub(super) fn unlink_at(dir: RawFd, segment: &str) -> io::Result<()> {
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
pub(super) fn leaf_of(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, leaf)| leaf)
}
