//! Deciding what to do: the tree a restore aims at, what it changes in the
//! local directory, and what a save must send.

use std::collections::{BTreeMap, BTreeSet};

use runbox_core::manifest::is_valid_entry_path;
use runbox_core::store::{ObjectMeta, Precondition};

use super::mtime::{now_ns, system_time_ns};
use super::scan::{Local, LocalFile, Scan};
use super::{DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, EntryKind, FileEntry, Manifest, RACY_WINDOW};

/// The tree to restore: the manifest, corrected by the objects that exist
/// (module docs). Returns whether anything was corrected.
pub(super) fn reconcile(
    mut manifest: Manifest,
    objects: Vec<ObjectMeta>,
    prefix: &str,
) -> (Manifest, bool) {
    let mut changed = false;
    let objects: BTreeMap<String, ObjectMeta> = objects
        .into_iter()
        .filter_map(|m| {
            let path = m.name.strip_prefix(prefix)?.to_owned();
            is_valid_entry_path(&path).then_some((path, m))
        })
        .collect();
    // Manifest files whose object is gone, or not the generation recorded.
    let files: Vec<String> = manifest.files().map(|(p, _)| p.to_owned()).collect();
    for path in files {
        match objects.get(&path) {
            Some(meta) => {
                let Some(EntryKind::File(f)) = manifest.entries.get_mut(&path) else {
                    continue;
                };
                if f.generation != meta.generation {
                    *f = adopted(meta, f.mode);
                    changed = true;
                }
            }
            None => {
                manifest.entries.remove(&path);
                changed = true;
            }
        }
    }
    // Objects the manifest does not list: written by the file API, or by a
    // save that died before its manifest.
    for (path, meta) in &objects {
        match manifest.entries.get(path) {
            Some(EntryKind::File(_)) => {}
            _ => {
                manifest.entries.insert(
                    path.clone(),
                    EntryKind::File(adopted(meta, DEFAULT_FILE_MODE)),
                );
                changed = true;
            }
        }
    }
    // A tree needs every ancestor to be a directory: an entry below a file
    // or symlink cannot exist (objects `a` and `a/b` can, in a bucket). The
    // deeper entry wins, since it is the one with content below it; a
    // symlink ancestor is never written through.
    let blocked: Vec<String> = manifest
        .entries
        .keys()
        .flat_map(|p| ancestors(p))
        .filter(|a| {
            manifest
                .entries
                .get(a.as_str())
                .is_some_and(|e| !matches!(e, EntryKind::Dir { .. }))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for path in blocked {
        tracing::warn!(path = %path, "workspace entry has entries below it; restoring it as a directory");
        manifest.entries.remove(&path);
        changed = true;
    }
    // Directories only implied by the entries below them.
    let implied: Vec<String> = manifest
        .entries
        .keys()
        .flat_map(|p| ancestors(p))
        .filter(|a| !manifest.entries.contains_key(a.as_str()))
        .collect();
    for path in implied {
        manifest.entries.insert(
            path,
            EntryKind::Dir {
                mode: DEFAULT_DIR_MODE,
            },
        );
        changed = true;
    }
    (manifest, changed)
}

/// The entry of an object the manifest does not describe: checksum unknown
/// until it is downloaded.
fn adopted(meta: &ObjectMeta, mode: u32) -> FileEntry {
    FileEntry {
        size: meta.size,
        mode,
        mtime_ns: meta.updated.map_or_else(now_ns, system_time_ns),
        sha256: String::new(),
        generation: meta.generation,
    }
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    path.match_indices('/')
        .map(move |(i, _)| path[..i].to_owned())
}

/// What a restore must do to the local directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RestorePlan {
    /// Local entries to remove (directories with everything below).
    pub(super) remove: Vec<String>,
    /// Directories to create, parents first.
    pub(super) make_dirs: Vec<String>,
    /// Files already right by size and mtime.
    pub(super) keep: Vec<String>,
    /// Files of the right size but another mtime: compare checksums.
    pub(super) verify: Vec<String>,
    /// Files to download.
    pub(super) download: Vec<String>,
    /// Symlinks to create.
    pub(super) links: Vec<String>,
}

impl RestorePlan {
    pub(super) fn new(target: &Manifest, local: &Scan) -> Self {
        let mut plan = RestorePlan::default();
        let mut removed_dirs = BTreeSet::new();
        for (path, have) in &local.entries {
            // Inside a directory already being removed.
            if ancestors(path).any(|a| removed_dirs.contains(&a)) {
                continue;
            }
            let fits = match (target.entries.get(path), have) {
                (Some(EntryKind::Dir { .. }), Local::Dir { .. }) => true,
                (Some(EntryKind::File(_)), Local::File(_)) => true,
                (Some(EntryKind::Symlink { target: want }), Local::Symlink { target: got }) => {
                    want == got
                }
                _ => false,
            };
            if !fits {
                if matches!(have, Local::Dir { .. }) {
                    removed_dirs.insert(path.clone());
                }
                plan.remove.push(path.clone());
            }
        }
        let removed: BTreeSet<&str> = plan.remove.iter().map(String::as_str).collect();
        let present = |p: &str| local.entries.contains_key(p) && !removed.contains(p);
        for (path, want) in &target.entries {
            match want {
                EntryKind::Dir { .. } => {
                    if !present(path) {
                        plan.make_dirs.push(path.clone());
                    }
                }
                EntryKind::Symlink { .. } => {
                    if !present(path) {
                        plan.links.push(path.clone());
                    }
                }
                EntryKind::File(f) => match local.entries.get(path) {
                    Some(Local::File(have)) if present(path) => {
                        if have.size != f.size || f.sha256.is_empty() {
                            plan.download.push(path.clone());
                        } else if have.mtime_ns == f.mtime_ns && !racy(target, f.mtime_ns) {
                            plan.keep.push(path.clone());
                        } else {
                            plan.verify.push(path.clone());
                        }
                    }
                    _ => plan.download.push(path.clone()),
                },
            }
        }
        plan
    }
}

/// A new or changed file to upload (or, in place, to describe).
pub(super) struct Change {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime_ns: i64,
    /// Generation of the object restored, `None` for a new file.
    pub(super) was: Option<i64>,
    /// The checksum, when already computed.
    pub(super) sha256: Option<String>,
}

impl Change {
    pub(super) fn new(
        path: &str,
        have: &LocalFile,
        was: Option<i64>,
        sha256: Option<String>,
    ) -> Self {
        Self {
            path: path.to_owned(),
            size: have.size,
            mode: have.mode,
            mtime_ns: have.mtime_ns,
            was,
            sha256,
        }
    }

    /// Never overwrite an object someone else wrote since the restore.
    pub(super) fn precondition(&self) -> Precondition {
        self.was
            .map_or(Precondition::DoesNotExist, Precondition::GenerationMatch)
    }
}

/// The manifest entry of an unchanged file, with its current mode and mtime.
pub(super) fn with_stat(was: &FileEntry, have: &LocalFile) -> FileEntry {
    FileEntry {
        mode: have.mode,
        mtime_ns: have.mtime_ns,
        ..was.clone()
    }
}

/// Whether a file recorded with this mtime must be checked by content
/// (written too close to the scan of `manifest` for its mtime to prove
/// anything).
pub(super) fn racy(manifest: &Manifest, mtime_ns: i64) -> bool {
    mtime_ns
        > manifest
            .scanned_at_ns
            .saturating_sub(RACY_WINDOW.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn reconcile_trusts_objects_for_content_and_manifest_for_the_rest() {
        let file = |generation, mode| {
            EntryKind::File(FileEntry {
                size: 1,
                mode,
                mtime_ns: 5,
                sha256: "s".into(),
                generation,
            })
        };
        let manifest = Manifest {
            scanned_at_ns: 10,
            pending: false,
            entries: BTreeMap::from([
                ("a".to_owned(), file(1, 0o600)),
                ("b".to_owned(), file(2, 0o700)),
                ("gone".to_owned(), file(3, 0o644)),
                (
                    "c".to_owned(),
                    EntryKind::Symlink {
                        target: "/etc".into(),
                    },
                ),
            ]),
        };
        let object = |name: &str, generation| ObjectMeta {
            name: format!("p/{name}"),
            generation,
            size: 7,
            metadata: BTreeMap::new(),
            updated: Some(UNIX_EPOCH + Duration::from_secs(1)),
        };
        let objects = vec![
            object("a", 1),
            object("b", 9),
            object("d", 4),
            object("c/x", 6),
            object("../evil", 1),
        ];
        let (got, changed) = reconcile(manifest, objects, "p/");
        assert!(changed);
        assert_eq!(got.entries["a"], file(1, 0o600), "same generation: kept");
        let EntryKind::File(b) = &got.entries["b"] else {
            panic!("b is a file")
        };
        assert_eq!((b.generation, b.mode, b.size), (9, 0o700, 7));
        assert!(b.sha256.is_empty(), "checksum learnt on download");
        assert!(!got.entries.contains_key("gone"), "object deleted");
        let EntryKind::File(d) = &got.entries["d"] else {
            panic!("d is a file")
        };
        assert_eq!((d.mode, d.mtime_ns), (DEFAULT_FILE_MODE, 1_000_000_000));
        assert_eq!(
            got.entries["c"],
            EntryKind::Dir {
                mode: DEFAULT_DIR_MODE
            },
            "never restore a file through a symlink"
        );
        assert!(matches!(got.entries["c/x"], EntryKind::File(_)));
        assert!(!got.entries.keys().any(|k| k.contains("..")));
    }

    #[test]
    fn restore_plan_replaces_what_does_not_fit() {
        let target = Manifest {
            // Long after the files' mtimes: none is racily clean.
            scanned_at_ns: 60_000_000_000,
            pending: false,
            entries: BTreeMap::from([
                ("a".to_owned(), EntryKind::Dir { mode: 0o755 }),
                ("a/f".to_owned(), file_entry(3, 100)),
                ("l".to_owned(), EntryKind::Symlink { target: "a".into() }),
                ("same".to_owned(), file_entry(3, 100)),
                ("touched".to_owned(), file_entry(3, 100)),
            ]),
        };
        let local_file = |size, mtime_ns| {
            Local::File(LocalFile {
                size,
                mode: 0o644,
                mtime_ns,
            })
        };
        let local = Scan {
            entries: BTreeMap::from([
                // A symlink where a directory belongs is replaced, never
                // followed; what was "below" it is not looked at.
                ("a".to_owned(), Local::Symlink { target: "/".into() }),
                ("l".to_owned(), Local::Dir { mode: 0o755 }),
                ("l/x".to_owned(), local_file(1, 1)),
                ("same".to_owned(), local_file(3, 100)),
                ("touched".to_owned(), local_file(3, 200)),
                ("stray".to_owned(), local_file(1, 1)),
            ]),
            unsupported: Vec::new(),
        };
        let plan = RestorePlan::new(&target, &local);
        assert_eq!(plan.remove, ["a", "l", "stray"]);
        assert_eq!(plan.make_dirs, ["a"]);
        assert_eq!(plan.links, ["l"]);
        assert_eq!(plan.keep, ["same"]);
        assert_eq!(plan.verify, ["touched"]);
        assert_eq!(plan.download, ["a/f"]);
    }

    fn file_entry(size: u64, mtime_ns: i64) -> EntryKind {
        EntryKind::File(FileEntry {
            size,
            mode: 0o644,
            mtime_ns,
            sha256: "x".into(),
            generation: 1,
        })
    }
}
