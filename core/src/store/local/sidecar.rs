//! The bookkeeping of each object. Usually the content file holds it all:
//! the generation is its mtime and any custom metadata sits in an extended
//! attribute (a stamp). Where that cannot be (a generation ahead of the
//! clock, a file system without such timestamps or attributes, large
//! metadata), a sidecar under `.runbox/meta/` holds the generation, custom
//! metadata and write time, and the fingerprint of the content file it
//! describes, so a file changed behind the store's back is recognised.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use super::write::place;
use super::*;

impl Inner {
    /// The raw sidecar of `name`, if there is one.
    pub(super) fn read_sidecar(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.meta_path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("read metadata of", name)(e)),
        }
    }

    /// Atomically replaces the sidecar of `name` with `encoded`, synced
    /// first when `sync`.
    pub(super) fn write_sidecar(&self, name: &str, encoded: &[u8], sync: bool) -> Result<()> {
        let (tmp, mut file) = self.create_temp(name)?;
        file.write_all(encoded)
            .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
            .and_then(|()| place(tmp, &self.meta_path(name)))
            .map_err(io_err("write metadata of", name))
    }

    /// After a failed write: puts the previous sidecar back (or removes the
    /// new one), so the old content keeps its generation.
    pub(super) fn restore_sidecar(&self, name: &str, previous: Option<&[u8]>) {
        let restored = match previous {
            Some(bytes) => self.write_sidecar(name, bytes, self.sync),
            None => {
                fs::remove_file(self.meta_path(name)).map_err(io_err("remove metadata of", name))
            }
        };
        if let Err(e) = restored {
            tracing::warn!(object = name, error = %e, "could not restore metadata after a failed write");
        }
    }
}

/// The bookkeeping kept beside each object written through the store.
#[derive(Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub(super) generation: i64,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
    /// Write time, microseconds since the Unix epoch.
    pub(super) updated_us: i64,
    /// The content file this sidecar describes; a mismatch means the file
    /// was replaced or edited behind the store's back.
    pub(super) content: Fingerprint,
}

/// Identifies one version of a content file. A rename keeps inode and mtime,
/// so the temporary file's fingerprint is the object's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Fingerprint {
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime_s: i64,
    pub(super) mtime_ns: i64,
}

impl Fingerprint {
    pub(super) fn of(md: &Metadata) -> Self {
        Self {
            ino: md.ino(),
            size: md.len(),
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec(),
        }
    }
}

/// The extended attribute holding a stamped object's custom metadata.
const STAMP_XATTR: &str = "user.runbox.meta";

/// Largest stamp written as an extended attribute: ext4 keeps all of a
/// file's attributes in one block. A larger one goes to a sidecar.
const MAX_STAMP_BYTES: usize = 3 * 1024;

/// The custom metadata of a stamped object (whose generation is its
/// mtime), kept on the content file itself, so the content's fsync makes it
/// durable with the content: no sidecar to write and sync.
#[derive(Serialize, Deserialize)]
struct Stamp {
    /// The generation (the mtime) the metadata belongs to: after an edit in
    /// place behind the store's back the mtime moves, and the attribute,
    /// which stays with the file, no longer describes it.
    generation: i64,
    metadata: BTreeMap<String, String>,
}

/// Puts `metadata` for `generation` on the staged `file`; whether it took
/// (not on a file system without user extended attributes, and not for
/// metadata over [`MAX_STAMP_BYTES`]).
pub(super) fn stamp_metadata(
    file: &File,
    generation: i64,
    metadata: &BTreeMap<String, String>,
) -> bool {
    let stamp = Stamp {
        generation,
        metadata: metadata.clone(),
    };
    let Ok(encoded) = serde_json::to_vec(&stamp) else {
        return false;
    };
    encoded.len() <= MAX_STAMP_BYTES
        && rustix::fs::fsetxattr(file, STAMP_XATTR, &encoded, rustix::fs::XattrFlags::empty())
            .is_ok()
}

/// The custom metadata stamped on `file` for `generation`, if any.
fn stamped_metadata(file: &File, generation: i64) -> Option<BTreeMap<String, String>> {
    let mut buf = [0u8; MAX_STAMP_BYTES];
    // Absent (ENODATA), unsupported, or larger than any stamp written
    // here (ERANGE): not a stamp.
    let len = rustix::fs::fgetxattr(file, STAMP_XATTR, &mut buf[..]).ok()?;
    let stamp: Stamp = serde_json::from_slice(&buf[..len]).ok()?;
    (stamp.generation == generation).then_some(stamp.metadata)
}

/// The metadata of the regular file `file` (`md`) at `name`, given its raw
/// sidecar.
pub(super) fn describe(
    name: &str,
    file: &File,
    md: &Metadata,
    sidecar: Option<&[u8]>,
    tolerate_corrupt: bool,
) -> Result<ObjectMeta> {
    let sidecar = match sidecar.map(serde_json::from_slice::<Sidecar>) {
        None => None,
        Some(Ok(sidecar)) => Some(sidecar),
        Some(Err(e)) if tolerate_corrupt => {
            tracing::warn!(object = name, error = %e, "ignoring unreadable store metadata");
            None
        }
        Some(Err(e)) => {
            return Err(StoreError::Corrupt {
                name: name.to_owned(),
                detail: e.to_string(),
            });
        }
    };
    Ok(match sidecar {
        Some(sidecar) if sidecar.content == Fingerprint::of(md) => ObjectMeta {
            name: name.to_owned(),
            generation: sidecar.generation,
            size: md.len(),
            metadata: sidecar.metadata,
            updated: Some(from_us(sidecar.updated_us)),
        },
        // Stamped by the store (the mtime is the generation, any metadata
        // is on the file), or written behind the store's back: the file's
        // mtime is the best generation there is. After a stale sidecar it
        // must still be newer than the generation the sidecar handed out.
        stale => {
            let mtime_us = md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000;
            let floor = stale.map_or(1, |s| s.generation + 1);
            let generation = mtime_us.max(floor);
            let metadata = (generation == mtime_us)
                .then(|| stamped_metadata(file, generation))
                .flatten()
                .unwrap_or_default();
            ObjectMeta {
                name: name.to_owned(),
                generation,
                size: md.len(),
                metadata,
                updated: md.modified().ok(),
            }
        }
    })
}
