//! Striped `flock` locks under `.runbox/locks/`, shared by every process
//! that opens the same root; each lock file also records the last generation
//! its stripe issued.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FlockOperation;
use rustix::io::retry_on_intr;

use super::*;

/// Number of lock files; names hash onto them. Unrelated names sharing a
/// stripe only wait for each other briefly (locks are held for a few renames).
const LOCK_STRIPES: u64 = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LockMode {
    Shared,
    Exclusive,
}

/// An `flock` on the lock file of a name's stripe, released on drop (when
/// the descriptor closes). Every acquisition opens the file anew: `flock`
/// locks belong to the open file description, so two acquisitions exclude
/// each other whether they come from two processes, two stores or two
/// threads of one store.
pub(super) struct StripeLock {
    file: File,
}

impl StripeLock {
    pub(super) fn acquire(inner: &Inner, name: &str, mode: LockMode) -> Result<Self> {
        let stripe = fnv1a(name.as_bytes()) % LOCK_STRIPES;
        let lock_err = io_err("lock", name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(inner.locks.join(format!("{stripe:03}.lock")))
            .map_err(&lock_err)?;
        let operation = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
        };
        retry_on_intr(|| rustix::fs::flock(&file, operation)).map_err(|e| lock_err(e.into()))?;
        Ok(Self { file })
    }

    /// A new generation for a name of this stripe: above the clock, the
    /// name's previous generation and every generation this stripe issued
    /// (so a name deleted and written again never reuses one). Needs the
    /// exclusive lock.
    pub(super) fn issue_generation(&self, previous: Option<i64>) -> io::Result<i64> {
        let mut last = [0u8; 8];
        let issued = match self.file.read_exact_at(&mut last, 0) {
            Ok(()) => i64::from_le_bytes(last),
            // A new lock file: nothing issued yet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        let generation = now_us().max(issued + 1).max(previous.map_or(1, |p| p + 1));
        self.file.write_all_at(&generation.to_le_bytes(), 0)?;
        Ok(generation)
    }
}

/// FNV-1a: a hash every process computes the same way, whatever its build
/// (std's hasher makes no such promise across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
