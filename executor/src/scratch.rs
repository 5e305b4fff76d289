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
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags, RenameFlags};

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

/// Where a memory file system usually is.
const SHARED_MEMORY: &str = "/dev/shm";

/// `TMPFS_MAGIC` of `statfs(2)`.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// A directory of this user's own on a memory file system
/// (`/dev/shm/runbox-{uid}`, created 0700 if missing), for scratch
/// directories: a command's files are created and removed per command,
/// and on a disk each of those costs a journal entry. `None` when there is
/// no such file system, or the name is taken by anything but a directory
/// of this user's that no one else can enter (another user may have
/// created it first: nothing of ours goes there then).
pub fn private_memory_base() -> Option<PathBuf> {
    let me = rustix::process::geteuid();
    let parent = Path::new(SHARED_MEMORY);
    let base = parent.join(format!("runbox-{}", me.as_raw()));
    // Only in a directory where no one else can rename or remove ours:
    // owned by root or us, and sticky where others may write.
    let top = rustix::fs::stat(parent).ok()?;
    let others_write = top.st_mode & 0o022 != 0;
    if !(top.st_uid == 0 || top.st_uid == me.as_raw())
        || (others_write && top.st_mode & 0o1000 == 0)
    {
        return None;
    }
    match rustix::fs::mkdir(&base, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(_) => return None,
    }
    let dir = rustix::fs::open(
        &base,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&dir).ok()?;
    let private = stat.st_uid == me.as_raw()
        && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        && stat.st_mode & 0o077 == 0;
    let memory = rustix::fs::fstatfs(&dir).is_ok_and(|fs| fs.f_type as u64 == TMPFS_MAGIC);
    (private && memory).then_some(base)
}

/// Where the scratch directories of the embedded store at `home` go: a
/// directory of that store's own (named after its path) in this user's
/// [`private_memory_base`] when there is one, else the store's
/// [`EMBEDDED_DIR`]. Either way one store's executors sweep only their own
/// leftovers.
pub fn embedded_base(home: &Path) -> PathBuf {
    match private_memory_base() {
        Some(base) => {
            let home = std::path::absolute(home).unwrap_or_else(|_| home.to_owned());
            base.join(format!(
                "{STORE_PREFIX}{:016x}",
                fnv1a(home.as_os_str().as_encoded_bytes())
            ))
        }
        None => home.join(EMBEDDED_DIR),
    }
}

/// Name prefix of a store's directory in the memory base.
const STORE_PREFIX: &str = "store-";

/// FNV-1a, 64 bits: a stable short name for a store's path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A scratch directory, locked while this value lives and removed when it
/// is dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    /// Held open for the lock; closing it (at drop, or when the process
    /// dies) releases the lock.
    _lock: File,
    /// The base is a store's directory in the memory base, removed with
    /// its last scratch directory (memory is not left holding a directory
    /// per store ever used).
    in_memory_base: bool,
}

impl ScratchDir {
    /// Creates a new, locked scratch directory in `base` (created if
    /// missing).
    pub fn create(base: &Path) -> io::Result<Self> {
        let in_memory_base = base
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(STORE_PREFIX));
        // Removed on drop until it has its final name. Twice: another
        // executor's last drop may remove the base between the two steps.
        let mut tries = 0;
        let staging = loop {
            tries += 1;
            std::fs::create_dir_all(base)?;
            match tempfile::Builder::new()
                .prefix(STAGING_PREFIX)
                .tempdir_in(base)
            {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => {}
                other => break other?,
            }
        };
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
        Ok(Self {
            path,
            _lock: lock,
            in_memory_base,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as opened when it was created: names resolved from
    /// it stay inside it even if the command renames or replaces the
    /// directory's own path.
    pub fn handle(&self) -> BorrowedFd<'_> {
        self._lock.as_fd()
    }
}

/// Why a scratch file could not be created or read back.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or creating the file failed: for a creation, something
    /// already has its name (perhaps a link the command put there).
    #[error("open scratch file {name}")]
    Open {
        /// The file's name in its directory.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The name is not a plain file of its own (a FIFO, a directory, a
    /// device, or a hard link to a file elsewhere).
    #[error("scratch file {name} is not a plain file ({kind})")]
    NotPlain {
        /// The file's name in its directory.
        name: String,
        /// What was found instead.
        kind: &'static str,
    },
    /// The file is larger than the executor reads.
    #[error("scratch file {name} has {size} bytes, more than the {limit} read")]
    TooLarge {
        /// The file's name in its directory.
        name: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Reading or writing the open file failed.
    #[error("read or write scratch file {name}")]
    Io {
        /// The file's name in its directory.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Whether the file simply does not exist (a command that ended its
    /// shell before the capture, say), as opposed to being refused.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Creates `name` in `dir`, which must not exist in any form (a link the
/// command planted there is refused, never followed), and writes `bytes`
/// to it. Returns the handle, open for reading and writing, positioned at
/// its end.
pub fn create_file(dir: impl AsFd, name: &str, bytes: &[u8]) -> Result<File, FileError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| FileError::Open {
        name: name.to_owned(),
        source: e.into(),
    })?;
    let mut file = File::from(fd);
    file.write_all(bytes).map_err(|source| FileError::Io {
        name: name.to_owned(),
        source,
    })?;
    Ok(file)
}

/// Creates the FIFO `name` in `dir`, which must not exist in any form,
/// and returns a path-only handle (`O_PATH`) on it. The handle names the
/// FIFO as created: it can be checked against what the name leads to
/// later, and reopened (through [`held_path`]) to write, whatever was put
/// at the name since. Being path-only, it neither reads nor writes, so
/// holding it changes nothing for the FIFO's reader.
pub fn create_fifo(dir: impl AsFd, name: &str) -> Result<File, FileError> {
    let open_error = |e: rustix::io::Errno| FileError::Open {
        name: name.to_owned(),
        source: e.into(),
    };
    rustix::fs::mknodat(&dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .map_err(open_error)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_error)?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| FileError::Io {
        name: name.to_owned(),
        source: e.into(),
    })?;
    // Between the mknod and the open, something else may have been put
    // at the name: only a FIFO of this process's user with no other name
    // is the one just made.
    let ours = FileType::from_raw_mode(stat.st_mode) == FileType::Fifo
        && stat.st_nlink == 1
        && stat.st_uid == rustix::process::geteuid().as_raw();
    if !ours {
        return Err(FileError::NotPlain {
            name: name.to_owned(),
            kind: "not the FIFO just made",
        });
    }
    Ok(File::from(fd))
}

/// Creates the directory `name` in `dir` and opens it, never through a
/// link: files made through the returned handle land in that directory
/// whatever later happens to its name.
pub fn create_dir(dir: impl AsFd, name: &str) -> Result<OwnedFd, FileError> {
    let fail = |e: rustix::io::Errno| FileError::Open {
        name: name.to_owned(),
        source: e.into(),
    };
    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(fail)?;
    rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)
}

/// Reads back `name` in `dir`, a file the command could have replaced:
/// never through a link, never blocking on a FIFO, only a plain file with
/// no other name (not a hard link to a host file), and at most `limit`
/// bytes.
pub fn read_file(dir: impl AsFd, name: &str, limit: u64) -> Result<Vec<u8>, FileError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FileError::Open {
        name: name.to_owned(),
        source: e.into(),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| FileError::Io {
        name: name.to_owned(),
        source: e.into(),
    })?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if stat.st_nlink == 1 => None,
        FileType::RegularFile => Some("a hard link"),
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(FileError::NotPlain {
            name: name.to_owned(),
            kind,
        });
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(FileError::TooLarge {
            name: name.to_owned(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::new();
    // Bounded again while reading: the file may still be growing.
    File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            name: name.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            name: name.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// A path that opens `file` as it was created, whatever its name points
/// to later.
pub fn held_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Removed while still locked, so no sweep races this removal.
        let _ = std::fs::remove_dir_all(&self.path);
        if self.in_memory_base
            && let Some(base) = self.path.parent()
        {
            // Fails while other scratch directories are there.
            let _ = std::fs::remove_dir(base);
        }
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

/// [`sweep`] of the other stores' directories beside `own` in the memory
/// base (see [`embedded_base`]), each removed once empty; returns how many
/// scratch directories went. A store whose home is gone (a removed one, a
/// test's) has no executor left to sweep its own leftovers, which would
/// otherwise hold memory until the machine restarts. The locks make this
/// safe: a live executor's directory is locked, a fresh staging one young.
/// Nothing happens when `own` is not a store's directory in memory.
pub fn sweep_memory_siblings(own: &Path) -> usize {
    let in_memory = own
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(STORE_PREFIX));
    let (true, Some(base)) = (in_memory, own.parent()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let store = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STORE_PREFIX));
        if path == own || !store || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        removed += sweep(&path);
        // Fails while anything is left; an executor of that store creating
        // its first directory meanwhile retries (`ScratchDir::create`).
        let _ = std::fs::remove_dir(&path);
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

    #[test]
    fn other_stores_leftovers_in_memory_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let own = base.path().join(format!("{STORE_PREFIX}own"));
        let gone = base.path().join(format!("{STORE_PREFIX}gone"));
        let busy = base.path().join(format!("{STORE_PREFIX}busy"));
        let own_dead = own.join(format!("{PREFIX}dead"));
        std::fs::create_dir_all(&own_dead).unwrap();
        // A killed executor's directory of a store no executor will use again.
        std::fs::create_dir_all(gone.join(format!("{PREFIX}dead"))).unwrap();
        std::fs::write(gone.join(format!("{PREFIX}dead/stdout")), b"x").unwrap();
        // Another store's live executor, and a name that is not a store's.
        let live = ScratchDir::create(&busy).unwrap();
        std::fs::create_dir(base.path().join("other")).unwrap();

        assert_eq!(sweep_memory_siblings(&own), 1);
        assert!(!gone.exists(), "the gone store's directory stays");
        assert!(live.path().is_dir(), "a live directory was removed");
        assert!(own_dead.is_dir(), "the own store is its own sweep's");
        assert!(base.path().join("other").is_dir());
        // Not a store's directory in memory: nothing is looked at.
        assert_eq!(sweep_memory_siblings(&base.path().join("other")), 0);
        drop(live);
        assert_eq!(sweep_memory_siblings(&own), 0);
        assert!(!busy.exists(), "an emptied store's directory stays");
    }

    #[test]
    fn files_are_never_made_or_read_through_what_the_command_planted() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, b"host bytes").unwrap();
        let handle = File::open(dir.path()).unwrap();
        let at = |name: &str| dir.path().join(name);

        std::os::unix::fs::symlink(&secret, at("link")).unwrap();
        assert!(matches!(
            create_file(&handle, "link", b"command"),
            Err(FileError::Open { .. })
        ));
        assert_eq!(std::fs::read(&secret).unwrap(), b"host bytes");
        let err = read_file(&handle, "link", 1024).unwrap_err();
        assert!(
            matches!(err, FileError::Open { .. }) && !err.is_missing(),
            "{err:?}"
        );

        rustix::fs::mkfifoat(&handle, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let err = read_file(&handle, "fifo", 1024).unwrap_err();
        assert!(
            matches!(err, FileError::NotPlain { kind: "a FIFO", .. }),
            "{err:?}"
        );
        std::fs::create_dir(at("dir")).unwrap();
        let err = read_file(&handle, "dir", 1024).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::NotPlain {
                    kind: "a directory",
                    ..
                }
            ),
            "{err:?}"
        );
        std::fs::write(at("own"), b"x").unwrap();
        std::fs::hard_link(at("own"), at("second")).unwrap();
        let err = read_file(&handle, "second", 1024).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::NotPlain {
                    kind: "a hard link",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(read_file(&handle, "absent", 1024).unwrap_err().is_missing());

        create_file(&handle, "capture", b"0123456789").unwrap();
        assert_eq!(read_file(&handle, "capture", 10).unwrap(), b"0123456789");
        let err = read_file(&handle, "capture", 9).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::TooLarge {
                    size: 10,
                    limit: 9,
                    ..
                }
            ),
            "{err:?}"
        );

        // The directory made through the handle stays the one written to
        // even when its name is taken over afterwards.
        let sub = create_dir(&handle, "c1").unwrap();
        std::fs::rename(at("c1"), at("moved")).unwrap();
        std::os::unix::fs::symlink(host.path(), at("c1")).unwrap();
        create_file(&sub, "env", b"A=1").unwrap();
        assert_eq!(std::fs::read(at("moved/env")).unwrap(), b"A=1");
        assert!(!host.path().join("env").exists());
    }
}
