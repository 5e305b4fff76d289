//! The workspace manifest (`sessions/{session}/manifest.json`): every entry
//! of a session's workspace, including what file objects cannot hold
//! (permission bits, modification times, empty directories, symlinks).
//! Written by the executor after each save; the dispatcher's file API
//! removes what it deletes with [`Manifest::forget`].
//!
//! Stored as JSON:
//!
//! ```json
//! {"version": 1, "checksum": "sha256", "scanned_at_ns": 1760000000000000000,
//!  "entries": [
//!    {"path": "src", "kind": "dir", "mode": 493},
//!    {"path": "src/main.py", "kind": "file", "size": 12, "mode": 420,
//!     "mtime_ns": 1759999999000000000, "sha256": "…", "generation": 1759999999123456},
//!    {"path": "latest", "kind": "symlink", "target": "src/main.py"}]}
//! ```
//!
//! `mode` is the permission bits (`st_mode & 0o7777`) as a number;
//! `generation` the file object's generation; `pending` (absent when false)
//! marks a save in progress or interrupted. A manifest without `version` is
//! version 1; one with a version newer than [`MANIFEST_VERSION`] is refused
//! rather than half understood.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::workspace_path::MAX_PATH_BYTES;

/// Version of the manifest format written (and the newest read) by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// The only checksum algorithm manifests use: SHA-256, lowercase hex.
pub const CHECKSUM: &str = "sha256";

/// Why manifest bytes do not decode.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the manifest's shape.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Written by a newer build, in a format this one does not know.
    #[error(
        "manifest version {found} is newer than version {supported}, the newest this build reads"
    )]
    NewerVersion {
        /// The manifest's version.
        found: u32,
        /// [`MANIFEST_VERSION`].
        supported: u32,
    },
    /// A version no build writes.
    #[error("manifest version {found} does not exist")]
    UnknownVersion {
        /// The manifest's version.
        found: u32,
    },
    /// The checksum algorithm is not [`CHECKSUM`].
    #[error("manifest checksum {found:?} is not supported; this build reads {CHECKSUM}")]
    Checksum {
        /// The manifest's algorithm.
        found: String,
    },
    /// An entry's path could escape the workspace directory.
    #[error("entry path {path:?} is not allowed")]
    InvalidPath {
        /// The path.
        path: String,
    },
}

/// The listing of a workspace: every file, directory and symlink below its
/// root, by path relative to it (`/`-separated). See the module docs for
/// the stored form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// When the scan that produced it started, ns since the Unix epoch.
    pub scanned_at_ns: i64,
    /// A save claimed the manifest and has not finished (or died).
    pub pending: bool,
    /// Every entry, by relative path.
    pub entries: BTreeMap<String, EntryKind>,
}

/// What one manifest entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file, stored as the object of the same path.
    File(FileEntry),
    /// A directory (kept so empty ones and modes survive).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link; never followed.
    Symlink {
        /// The link's target, as `readlink` gives it.
        target: String,
    },
}

/// A regular file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the content, lowercase hex; empty when not known yet.
    pub sha256: String,
    /// Generation of the file's object.
    pub generation: i64,
}

impl Manifest {
    /// Total size of the files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.size).sum()
    }

    /// The file entries.
    pub fn files(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.entries.iter().filter_map(|(p, e)| match e {
            EntryKind::File(f) => Some((p.as_str(), f)),
            _ => None,
        })
    }

    /// The file at `path`, if that entry is a file.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        match self.entries.get(path) {
            Some(EntryKind::File(f)) => Some(f),
            _ => None,
        }
    }

    /// Removes the entry at `path` and every entry below it (a deleted file
    /// or directory tree). Returns whether anything was removed, so a caller
    /// can skip rewriting an unchanged manifest.
    pub fn forget(&mut self, path: &str) -> bool {
        let below = format!("{path}/");
        let before = self.entries.len();
        self.entries
            .retain(|p, _| p != path && !p.starts_with(&below));
        self.entries.len() != before
    }

    /// The stored form, at [`MANIFEST_VERSION`].
    pub fn encode(&self) -> Bytes {
        let wire = WireManifest {
            version: MANIFEST_VERSION,
            checksum: CHECKSUM.to_owned(),
            scanned_at_ns: self.scanned_at_ns,
            pending: self.pending,
            entries: self
                .entries
                .iter()
                .map(|(path, kind)| WireEntry {
                    path: path.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        // Strings, integers and a bool: serialising cannot fail.
        Bytes::from(serde_json::to_vec(&wire).expect("a manifest always encodes"))
    }

    /// Reads the stored form. Every path must be safe to join to the
    /// workspace directory (see [`is_valid_entry_path`]).
    pub fn decode(data: &[u8]) -> Result<Self, ManifestError> {
        let wire: WireManifest = serde_json::from_slice(data)?;
        match wire.version {
            0 => return Err(ManifestError::UnknownVersion { found: 0 }),
            v if v > MANIFEST_VERSION => {
                return Err(ManifestError::NewerVersion {
                    found: v,
                    supported: MANIFEST_VERSION,
                });
            }
            _ => {}
        }
        if wire.checksum != CHECKSUM {
            return Err(ManifestError::Checksum {
                found: wire.checksum,
            });
        }
        let mut entries = BTreeMap::new();
        for e in wire.entries {
            // The paths become local paths: nothing absolute, `..` or empty.
            if !is_valid_entry_path(&e.path) {
                return Err(ManifestError::InvalidPath { path: e.path });
            }
            entries.insert(e.path, e.kind);
        }
        Ok(Self {
            scanned_at_ns: wire.scanned_at_ns,
            pending: wire.pending,
            entries,
        })
    }
}

/// Whether `path` is a relative path that is safe to join to the workspace
/// directory: not empty, not absolute, no empty, `.` or `..` segment, no
/// control character, at most [`MAX_PATH_BYTES`] bytes.
pub fn is_valid_entry_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.starts_with('/')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The manifest as stored.
#[derive(Serialize, Deserialize)]
struct WireManifest {
    // Manifests from before the field existed are version 1.
    #[serde(default = "first_version")]
    version: u32,
    checksum: String,
    scanned_at_ns: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    entries: Vec<WireEntry>,
}

fn first_version() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    path: String,
    #[serde(flatten)]
    kind: EntryKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> EntryKind {
        EntryKind::File(FileEntry {
            size,
            mode: 0o644,
            mtime_ns: 7,
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            generation: 9,
        })
    }

    fn sample() -> Manifest {
        Manifest {
            scanned_at_ns: 42,
            pending: true,
            entries: BTreeMap::from([
                ("d".to_owned(), EntryKind::Dir { mode: 0o755 }),
                ("d/f".to_owned(), file(3)),
                (
                    "l".to_owned(),
                    EntryKind::Symlink {
                        target: "../../x".into(),
                    },
                ),
            ]),
        }
    }

    #[test]
    fn manifest_round_trips_in_the_stored_format() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"version":1,"checksum":"sha256","scanned_at_ns":42,"pending":true,"entries":[{"path":"d","kind":"dir","mode":493},{"path":"d/f","kind":"file","size":3,"mode":420,"mtime_ns":7,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","generation":9},{"path":"l","kind":"symlink","target":"../../x"}]}"#
        );
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let done = Manifest {
            pending: false,
            ..m
        };
        let text = String::from_utf8(done.encode().to_vec()).unwrap();
        assert!(!text.contains("pending"), "{text}");
        assert_eq!(Manifest::decode(text.as_bytes()).unwrap(), done);
    }

    #[test]
    fn a_manifest_without_a_version_is_version_1() {
        let json = r#"{"checksum":"sha256","scanned_at_ns":5,"entries":[{"path":"a","kind":"dir","mode":448}]}"#;
        let m = Manifest::decode(json.as_bytes()).unwrap();
        assert_eq!(m.scanned_at_ns, 5);
        assert!(!m.pending);
        assert_eq!(m.entries["a"], EntryKind::Dir { mode: 0o700 });
    }

    #[test]
    fn a_newer_version_is_refused_naming_both() {
        let json = r#"{"version":2,"checksum":"sha256","scanned_at_ns":0,"entries":[]}"#;
        let err = Manifest::decode(json.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::NewerVersion {
                    found: 2,
                    supported: MANIFEST_VERSION
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains('2') && text.contains('1'), "{text}");
        let zero = r#"{"version":0,"checksum":"sha256","scanned_at_ns":0,"entries":[]}"#;
        assert!(matches!(
            Manifest::decode(zero.as_bytes()),
            Err(ManifestError::UnknownVersion { found: 0 })
        ));
    }

    #[test]
    fn escaping_paths_and_other_checksums_are_refused() {
        for bad in ["../x", "/abs", "a//b", "a/./b", ""] {
            let json = format!(
                r#"{{"version":1,"checksum":"sha256","scanned_at_ns":0,"entries":[{{"path":"{bad}","kind":"dir","mode":493}}]}}"#
            );
            let err = Manifest::decode(json.as_bytes()).unwrap_err();
            assert!(matches!(err, ManifestError::InvalidPath { .. }), "{bad}");
        }
        let md5 = r#"{"version":1,"checksum":"md5","scanned_at_ns":0,"entries":[]}"#;
        assert!(matches!(
            Manifest::decode(md5.as_bytes()),
            Err(ManifestError::Checksum { .. })
        ));
        assert!(matches!(
            Manifest::decode(b"not json"),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn forget_removes_a_path_and_everything_below_it() {
        let mut m = sample();
        m.entries.insert("dd".to_owned(), file(1));
        m.entries.insert("d/e/g".to_owned(), file(2));
        assert!(m.forget("d"));
        assert_eq!(
            m.entries.keys().collect::<Vec<_>>(),
            ["dd", "l"],
            "a sibling that only shares the prefix stays"
        );
        assert!(!m.forget("d"), "nothing left to forget");
        assert!(m.forget("l"));
        assert!(!m.forget("nope"));
        assert_eq!(m.entries.keys().collect::<Vec<_>>(), ["dd"]);
        assert!(m.pending, "forget keeps the rest of the manifest");
    }
}
