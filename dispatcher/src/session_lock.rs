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
//!
//! The lock belongs to an open file, not to a process: the local launcher
//! hands a [`SessionGuard::share`] of it to the executor of a foreground
//! command, so the session stays locked until that executor has exited even
//! when the dispatcher holding the guard dies first (a `runbox exec` killed
//! with SIGKILL).

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
    file: File,
}

impl SessionLocks {
    /// Lock files live in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Waits for the session's lock.
    pub async fn lock(&self, session: &SessionId) -> std::io::Result<SessionGuard> {
        let path = self.dir.join(format!("{session}.lock"));
        let session = session.clone();
        tokio::task::spawn_blocking(move || lock_file(&path, &session))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl SessionGuard {
    /// Another descriptor of the locked file: the lock is held until the
    /// guard and every share are closed, in whichever process holds them.
    pub fn share(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

fn lock_file(path: &Path, session: &SessionId) -> std::io::Result<SessionGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => return Ok(SessionGuard { file }),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            tracing::debug!(%session, "waiting for the session lock");
        }
        Err(e) => return Err(e.into()),
    }
    loop {
        // Blocks until granted; the lock goes with the file's descriptor.
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(SessionGuard { file }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
