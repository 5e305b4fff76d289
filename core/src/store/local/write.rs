//! Writes and deletes: content staged in a temporary file, the precondition
//! checked under the name's exclusive lock, then the sidecar and the content
//! renamed into place (content last). Deletes prune directories left empty.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use super::resolve::{leaf_of, unlink_at};
use super::sidecar::{Fingerprint, Sidecar, stamp_metadata};
use super::*;

impl Inner {
    /// A new, empty temporary file under `.runbox/tmp`: the spare when one
    /// is ready (see [`LocalStore::with_spare`]).
    pub(super) fn create_temp(&self, name: &str) -> Result<(TempFile, File)> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        // One removed behind the store's back (by hand) is not used.
        if let Some((tmp, file)) = spare
            && file.metadata().is_ok_and(|m| m.nlink() > 0 && m.len() == 0)
        {
            return Ok((tmp, file));
        }
        self.new_temp(name)
    }

    /// Has a spare staging file created, if the store keeps one and has
    /// none ready: right away for a store that works on the caller's
    /// thread (its process does one thing at a time, and a file created
    /// after the write, before the next one, competes with nothing), else
    /// on the blocking pool when there is a runtime.
    /// A store counting its writes towards a spare
    /// ([`LocalStore::with_spare_after`]) starts keeping one here, after
    /// the write that ends the count, and first sweeps leftovers as
    /// [`LocalStore::with_spare`] does.
    pub(super) fn replenish_later(self: &Arc<Self>) {
        let mut sweep = false;
        if !self.keep_spare.load(Ordering::Relaxed) {
            let counted =
                self.writes_before_spare
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if counted != Ok(1) {
                return;
            }
            self.keep_spare.store(true, Ordering::Relaxed);
            sweep = true;
        }
        // One on its way is enough: writes that end together (a server's)
        // would otherwise each create a file only to remove all but one.
        if self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            || self.replenishing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let work = move |inner: &Self| {
            if sweep {
                inner.sweep_stale_staging();
            }
            inner.replenish();
        };
        if self.inline {
            work(self);
            self.replenishing.store(false, Ordering::Release);
            return;
        }
        let replenishing = Replenishing(Arc::clone(self));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || work(&replenishing.0))),
            Err(_) => work(&replenishing.0),
        }
    }

    fn replenish(&self) {
        match self.new_temp("a spare staging file") {
            Ok(made) => {
                let mut slot = self.spare.lock().unwrap_or_else(|e| e.into_inner());
                // Another was made meanwhile: this one is removed on drop.
                if slot.is_none() {
                    *slot = Some(made);
                }
            }
            // The next write creates its own and says why if it cannot.
            Err(e) => tracing::debug!(error = %e, "no spare staging file"),
        }
    }

    /// Removes `.runbox/tmp/{pid}-….tmp` files whose process is gone and
    /// that were untouched for [`STALE_STAGING`]: a spare, or a write, of
    /// a process that was killed.
    pub(super) fn sweep_stale_staging(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".tmp"))
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let stale = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_STAGING);
            if stale && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn new_temp(&self, name: &str) -> Result<(TempFile, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = self.tmp.join(format!(
            "{}-{}-{nanos}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // create_new: never write into a file some other process owns.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create temporary file for", name))?;
        Ok((TempFile { path: Some(path) }, file))
    }

    /// Makes the staged content in `tmp` (open as `file`, not yet synced) the
    /// new generation of `name`, if the precondition holds.
    ///
    /// A durable write waits for the disk twice: the content with its
    /// stamp (the generation as mtime, see [`stamp_generation`], and any
    /// custom metadata in an extended attribute), then the directory
    /// holding its new name. Where no stamp can be made, a sidecar is
    /// written and synced as well.
    pub(super) fn commit(
        &self,
        name: &str,
        tmp: TempFile,
        file: File,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        let sync = self.sync && !opts.volatile;
        let write_err = io_err("write", name);
        let lock = StripeLock::acquire(self, name, LockMode::Exclusive)?;
        let tolerate_corrupt = opts.precondition == Precondition::None;
        let current = self.current(name, tolerate_corrupt)?;
        check(name, opts.precondition, current.meta.as_ref())?;

        // Resolve (creating) the content's directory before touching the
        // sidecar, so that whatever would stop the content from landing
        // fails the write while nothing has changed yet: a file or a symlink
        // where a directory should be, or a directory at the name itself
        // (the store cannot hold both `a` and `a/b`).
        let (parent, leaf) = open_parent(&self.root, name, true).map_err(&write_err)?;
        let in_the_way = open_at(&parent, leaf, READ_FLAGS)
            .is_ok_and(|fd| File::from(fd).metadata().is_ok_and(|md| md.is_dir()));
        if in_the_way {
            return Err(write_err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "a directory of other objects has this name",
            )));
        }

        let previous = current.meta.as_ref().map(|m| m.generation);
        let generation = lock
            .issue_generation(previous)
            .map_err(io_err("allocate generation for", name))?;
        let stamped = stamp_generation(&file, generation)
            && (opts.metadata.is_empty() || stamp_metadata(&file, generation, &opts.metadata));
        if sync {
            // The content and its stamp in one fsync (under the lock, where
            // the generation is issued).
            file.sync_all().map_err(&write_err)?;
        }
        // After the stamp: a sidecar's fingerprint names the final mtime.
        let staged = file.metadata().map_err(io_err("stat", name))?;
        let fingerprint = Fingerprint::of(&staged);
        // Closed before its rename: closing a written file is an event of
        // its own (IN_CLOSE_WRITE) on whatever name it has then, and every
        // process watching `results/` would read and route the object a
        // second time for it.
        drop(file);
        let updated_us = if stamped { generation } else { now_us() };
        if !stamped {
            let sidecar = Sidecar {
                generation,
                metadata: opts.metadata.clone(),
                updated_us,
                content: fingerprint,
            };
            let encoded = serde_json::to_vec(&sidecar).expect("a sidecar always encodes");
            self.write_sidecar(name, &encoded, sync)?;
        }

        // The content's rename is the last step: whoever sees the new file
        // and then asks for its metadata finds the new sidecar already there
        // (or, stamped, the generation in the file itself).
        let parent = match self.place_content(tmp, name, parent) {
            Ok(parent) => parent,
            Err(e) => {
                if !stamped {
                    self.restore_sidecar(name, current.sidecar.as_deref());
                }
                return Err(write_err(e));
            }
        };
        // Make the rename durable before reporting success.
        if sync && let Err(e) = File::from(parent).sync_all() {
            tracing::warn!(object = name, error = %e, "could not sync directory after write");
        }
        if stamped && current.sidecar.is_some() {
            // Only tidiness, after the rename is durable: a sidecar
            // describes one content file, so the old one cannot be taken
            // for the new content's even if this unlink is lost.
            if let Err(e) = fs::remove_file(self.meta_path(name))
                && !is_absent(&e)
            {
                tracing::warn!(object = name, error = %e, "could not remove metadata of a replaced generation");
            }
        }
        drop(lock);

        Ok(ObjectMeta {
            name: name.to_owned(),
            generation,
            size: fingerprint.size,
            metadata: opts.metadata,
            updated: Some(from_us(updated_us)),
        })
    }

    /// Renames the staged content into `parent`, the last step of a write;
    /// returns the directory it landed in.
    fn place_content(
        &self,
        mut tmp: TempFile,
        name: &str,
        mut parent: OwnedFd,
    ) -> io::Result<OwnedFd> {
        let Some(src) = tmp.path.clone() else {
            return Err(io::Error::other("temporary file already placed"));
        };
        let leaf = leaf_of(name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match rustix::fs::renameat(rustix::fs::CWD, &src, &parent, leaf) {
                Ok(()) => {
                    tmp.path = None;
                    return Ok(parent);
                }
                Err(Errno::INTR) => {}
                // A concurrent delete pruned the directory, then empty,
                // after we opened it: make it again.
                Err(Errno::NOENT) if attempt < PLACE_ATTEMPTS => {
                    parent = open_parent(&self.root, name, true)?.0;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn delete(&self, name: &str, precondition: Precondition) -> Result<()> {
        let lock = StripeLock::acquire(self, name, LockMode::Exclusive)?;
        let current = self.current(name, precondition == Precondition::None)?;
        let Some(meta) = current.meta else {
            if current.sidecar.is_some() {
                // A sidecar whose content a command removed: tidy it up.
                let _ = fs::remove_file(self.meta_path(name));
            }
            return Err(not_found(name));
        };
        check(name, precondition, Some(&meta))?;
        // Content first: it is what makes the object exist.
        let removed = open_parent(&self.root, name, false)
            .and_then(|(parent, leaf)| unlink_at(&parent, leaf));
        match removed {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Err(not_found(name)),
            Err(e) => return Err(io_err("delete", name)(e)),
        }
        match fs::remove_file(self.meta_path(name)) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            // The object is gone; a leftover sidecar no longer matches any
            // content, so it can never be mistaken for the object's.
            Err(e) => {
                tracing::warn!(object = name, error = %e, "could not remove metadata of a deleted object");
            }
        }
        drop(lock);
        prune(&self.content_path(name), &self.root);
        prune(&self.meta_path(name), &self.meta);
        Ok(())
    }
}

/// How far ahead of the clock a generation may be and still become a
/// content file's mtime. A generation runs ahead only when its stripe's
/// counter was pushed forward (a file dated in the future by a command):
/// rather than date content in the future, such a write keeps a sidecar.
const MAX_STAMP_AHEAD_US: i64 = 1_000_000;

/// Sets the staged file's mtime to `generation` (microseconds since the
/// epoch), the generation [`describe`] reads from a file without a
/// sidecar. Whether it took: not when the generation is ahead of the clock,
/// and not on a file system whose timestamps cannot hold every microsecond
/// (the file is read back to make sure).
fn stamp_generation(file: &File, generation: i64) -> bool {
    use std::os::unix::fs::MetadataExt;
    if generation > now_us() + MAX_STAMP_AHEAD_US {
        return false;
    }
    let at = rustix::fs::Timespec {
        tv_sec: generation.div_euclid(1_000_000),
        tv_nsec: generation.rem_euclid(1_000_000) * 1_000,
    };
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: at,
    };
    if rustix::fs::futimens(file, &times).is_err() {
        return false;
    }
    file.metadata().is_ok_and(|md| {
        md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000 == generation
            && md.mtime_nsec() % 1_000 == 0
    })
}

/// Whether `precondition` holds for `current`.
fn check(name: &str, precondition: Precondition, current: Option<&ObjectMeta>) -> Result<()> {
    let holds = match (precondition, current) {
        (Precondition::None, _) => true,
        // Cloud Storage spells "must not exist" as if-generation-match=0.
        (Precondition::DoesNotExist | Precondition::GenerationMatch(0), current) => {
            current.is_none()
        }
        (Precondition::GenerationMatch(g), Some(current)) => current.generation == g,
        (Precondition::GenerationMatch(_), None) => false,
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed {
            name: name.to_owned(),
            precondition,
        })
    }
}

/// How long a staging file of a process that is gone stays before a store
/// that keeps a spare removes it.
pub(super) const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(600);

/// A spare on its way: the mark is taken off when the work is done, or
/// dropped unrun (a runtime shut down before its blocking task started),
/// so a lost task does not stop the store from making spares.
struct Replenishing(Arc<Inner>);

impl Drop for Replenishing {
    fn drop(&mut self) {
        self.0.replenishing.store(false, Ordering::Release);
    }
}

/// A staged file under `.runbox/tmp`, removed on drop unless placed.
pub(super) struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Renames `tmp` to `dest`, creating parent directories; retried when a
/// concurrent delete pruned a parent directory in between.
pub(super) fn place(mut tmp: TempFile, dest: &Path) -> io::Result<()> {
    let Some(src) = tmp.path.clone() else {
        return Err(io::Error::other("temporary file already placed"));
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::rename(&src, dest) {
            Ok(()) => {
                tmp.path = None;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PLACE_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes the now-empty directories above `path`, up to (not including)
/// `stop`. Stops at the first one that is not empty; a concurrent write
/// recreates what it needs (see [`place`]).
fn prune(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}
