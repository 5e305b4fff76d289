//! The sidecar kept beside each object under `.runbox/meta/`: its
//! generation, custom metadata and write time, and the fingerprint of the
//! content file it describes, so a file changed behind the store's back is
//! recognised.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
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

/// The metadata of the regular file `md` at `name`, given its raw sidecar.
pub(super) fn describe(
    name: &str,
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
        // Written behind the store's back: the file's mtime is the best
        // generation there is; after a stale sidecar it must still be newer
        // than the generation the sidecar handed out.
        stale => {
            let mtime_us = md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000;
            let floor = stale.map_or(1, |s| s.generation + 1);
            ObjectMeta {
                name: name.to_owned(),
                generation: mtime_us.max(floor),
                size: md.len(),
                metadata: BTreeMap::new(),
                updated: md.modified().ok(),
            }
        }
    })
}
