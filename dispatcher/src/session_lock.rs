//! Cross-process ordering of one session's commands on the embedded backend.
//!
//! Inside one dispatcher, a session's commands already run one at a time.
//! Several `runbox` processes on one machine (a shell loop firing commands in
//! the background) are separate dispatchers; without this lock their
//! commands would race and all but one state update per race would be
//! refused as a conflict. The gcp backend orders them through a lease
//! object instead ([`crate::session_lease`]); a lock fits here better: the
//! kernel drops it the instant its process dies (no expiry to wait out),
//! wakes the next waiter without any event, and costs no inotify instance.

use std::fs::File;
use std::path::{Path, PathBuf};

use runbox_core::SessionId;

/// A directory of per-session lock files.
#[derive(Clone, Debug)]
pub struct SessionLocks {
    dir: PathBuf,
}

/// Held while a command of the session runs; released on drop.
#[derive(Debug)]
pub struct SessionGuard {
    _file: File,
}

impl SessionLocks {
    /// Lock files live in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Waits for the session's lock.
    pub async fn lock(&self, session: &SessionId) -> std::io::Result<SessionGuard> {
        let path = self.dir.join(format!("{session}.lock"));
        tokio::task::spawn_blocking(move || lock_file(&path))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn lock_file(path: &Path) -> std::io::Result<SessionGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    loop {
        // Blocks until granted; the lock goes with the file's descriptor.
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(SessionGuard { _file: file }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
