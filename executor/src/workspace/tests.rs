//! Restores and saves against a local store, in both modes.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use runbox_core::store::{self, Durability, LocalStore, PutOptions};
use sha2::{Digest, Sha256};

use super::mtime::{now_ns, set_mtime};
use super::transfer::hex;
use super::*;

/// Generous: two cores, other tests alongside.
const T: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

fn session() -> SessionId {
    SessionId::new("ws").unwrap()
}

/// A store and, for in-place mode, its own workspace directory.
fn in_place() -> (tempfile::TempDir, LocalStore, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open_with(root.path(), Durability::NoSync).unwrap();
    let dir = root
        .path()
        .join(layout::workspace_prefix(&session()).trim_end_matches('/'));
    (root, store, dir)
}

/// Every entry below `dir` as "kind mode content", read independently of
/// the code under test.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    fn go(abs: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(abs).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::symlink_metadata(e.path()).unwrap();
            let mode = md.mode() & 0o7777;
            let line = if md.is_dir() {
                go(&e.path(), &path, out);
                format!("dir {mode:o}")
            } else if md.is_symlink() {
                format!("link -> {}", fs::read_link(e.path()).unwrap().display())
            } else {
                let data = fs::read(e.path()).unwrap();
                format!("file {mode:o} {}", String::from_utf8_lossy(&data))
            };
            out.insert(path, line);
        }
    }
    let mut out = BTreeMap::new();
    go(dir, "", &mut out);
    out
}

fn write(dir: &Path, path: &str, data: &str) {
    let abs = dir.join(path);
    fs::create_dir_all(abs.parent().unwrap()).unwrap();
    fs::write(abs, data).unwrap();
}

fn chmod(dir: &Path, path: &str, mode: u32) {
    fs::set_permissions(dir.join(path), fs::Permissions::from_mode(mode)).unwrap();
}

fn sha(data: &str) -> String {
    hex(&Sha256::digest(data.as_bytes()))
}

/// The manifest entries, as the listing would show them.
fn manifest_listing(m: &Manifest, dir: &Path) -> BTreeMap<String, String> {
    m.entries
        .iter()
        .map(|(p, e)| {
            let line = match e {
                EntryKind::Dir { mode } => format!("dir {mode:o}"),
                EntryKind::Symlink { target } => format!("link -> {target}"),
                EntryKind::File(f) => {
                    let data = fs::read_to_string(dir.join(p)).unwrap();
                    assert_eq!(f.sha256, sha(&data), "checksum of {p}");
                    assert_eq!(f.size, data.len() as u64, "size of {p}");
                    format!("file {:o} {data}", f.mode)
                }
            };
            (p.clone(), line)
        })
        .collect()
}

async fn stored_manifest(store: &dyn Store) -> (Manifest, i64) {
    within(read_manifest(store, &layout::manifest(&session())))
        .await
        .unwrap()
}

/// Every generation in the manifest is the object's, and the store
/// holds no workspace object the manifest does not list.
async fn assert_objects_match(store: &dyn Store, m: &Manifest) {
    let prefix = layout::workspace_prefix(&session());
    let objects: BTreeMap<String, i64> = within(store::list_all(store, &prefix))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name[prefix.len()..].to_owned(), o.generation))
        .collect();
    let files: BTreeMap<String, i64> = m
        .files()
        .map(|(p, f)| (p.to_owned(), f.generation))
        .collect();
    assert_eq!(objects, files);
}

#[tokio::test]
async fn in_place_save_keeps_the_manifest_exact_without_copying() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    assert_eq!(snap.generation(), 0);
    assert!(dir.is_dir(), "restore creates the workspace");

    write(&dir, "a.txt", "alpha");
    write(&dir, "src/main.py", "print(1)\n");
    write(&dir, "gone.txt", "bye");
    write(&dir, "moved.txt", "moving");
    fs::create_dir_all(dir.join("empty")).unwrap();
    chmod(&dir, "src/main.py", 0o755);
    symlink("/etc/hostname", dir.join("outside")).unwrap();
    let first = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    assert_eq!(first.uploaded_files, 0, "in place: nothing is uploaded");
    assert_eq!(first.uploaded_bytes, 0);
    assert_eq!(first.changed_files, 4);
    assert!(first.manifest_written);
    let (m, generation) = stored_manifest(&store).await;
    assert_eq!(generation, first.snapshot.generation());
    assert_eq!(m.entries, first.snapshot.manifest().entries);
    assert_eq!(manifest_listing(&m, &dir), listing(&dir));
    assert_objects_match(&store, &m).await;

    // The "command": create, modify, delete, rename, chmod, mkdir, symlink.
    write(&dir, "new.txt", "fresh");
    write(&dir, "a.txt", "alpha, longer");
    fs::remove_file(dir.join("gone.txt")).unwrap();
    fs::rename(dir.join("moved.txt"), dir.join("src/moved.txt")).unwrap();
    chmod(&dir, "src/main.py", 0o700);
    fs::create_dir_all(dir.join("deep/er")).unwrap();
    symlink("src/main.py", dir.join("main")).unwrap();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    assert_eq!(
        snap.stats(),
        &RestoreStats::default(),
        "in place: no transfer"
    );
    let second = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    assert_eq!(second.uploaded_files, 0);
    assert_eq!(second.changed_files, 3, "new.txt, a.txt, src/moved.txt");
    assert_eq!(second.deleted, 2, "gone.txt, moved.txt");
    assert_eq!(second.unchanged, 1, "src/main.py");
    let (m, _) = stored_manifest(&store).await;
    assert_eq!(manifest_listing(&m, &dir), listing(&dir));
    assert_eq!(
        m.entries.get("main"),
        Some(&EntryKind::Symlink {
            target: "src/main.py".into()
        })
    );
    assert_eq!(m.file("src/main.py").unwrap().mode, 0o700);
    assert!(matches!(
        m.entries.get("deep/er"),
        Some(EntryKind::Dir { .. })
    ));
    assert_objects_match(&store, &m).await;
}

#[tokio::test]
async fn in_place_restore_leaves_the_directory_alone() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    write(&dir, "kept.txt", "k");
    within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    // Not in the manifest, but in place the directory is the truth.
    write(&dir, "later.txt", "l");
    let before = listing(&dir);
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    assert_eq!(listing(&dir), before);
    assert_eq!(snap.stats(), &RestoreStats::default());
}

#[tokio::test]
async fn an_unchanged_workspace_writes_nothing() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    let empty = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    assert!(
        !empty.manifest_written,
        "no manifest for an empty workspace"
    );

    write(&dir, "old.txt", "old");
    // Old enough not to be racily clean.
    set_mtime(&dir.join("old.txt"), now_ns() - 60_000_000_000).unwrap();
    let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    let again = within(save(&store, &s, &dir, &saved.snapshot, &opts))
        .await
        .unwrap();
    assert!(!again.manifest_written);
    assert_eq!(again.hashed_bytes, 0, "size and mtime match: not read");
    assert_eq!(again.snapshot.generation(), saved.snapshot.generation());
}

#[tokio::test]
async fn racily_clean_files_are_checked_by_content() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    write(&dir, "f", "one");
    let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    let mtime = saved.snapshot.manifest().file("f").unwrap().mtime_ns;
    // Same size, same mtime: what a write within one clock tick of the
    // scan looks like.
    write(&dir, "f", "two");
    set_mtime(&dir.join("f"), mtime).unwrap();
    let again = within(save(&store, &s, &dir, &saved.snapshot, &opts))
        .await
        .unwrap();
    assert_eq!(again.changed_files, 1);
    assert_eq!(
        again.snapshot.manifest().file("f").unwrap().sha256,
        sha("two")
    );
}

#[tokio::test]
async fn over_the_size_cap_nothing_is_saved() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    write(&dir, "small", "12345");
    let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    write(&dir, "big", "1234567890");
    let capped = opts.clone().with_max_bytes(10);
    let err = within(save(&store, &s, &dir, &saved.snapshot, &capped))
        .await
        .unwrap_err();
    match &err {
        WorkspaceError::TooLarge { limit, actual, .. } => {
            assert_eq!((*limit, *actual), (10, 15));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        err.to_string().contains("RUNBOX_WORKSPACE_MAX_BYTES"),
        "{err}"
    );
    let (m, generation) = stored_manifest(&store).await;
    assert_eq!(generation, saved.snapshot.generation());
    assert!(m.file("big").is_none());
}

#[tokio::test]
async fn two_saves_from_one_snapshot_conflict() {
    let (_root, store, dir) = in_place();
    let opts = SyncOptions::new(SyncMode::InPlace);
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    write(&dir, "a", "1");
    within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    write(&dir, "b", "2");
    let err = within(save(&store, &s, &dir, &snap, &opts))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let (m, _) = stored_manifest(&store).await;
    assert!(m.file("b").is_none(), "the loser wrote nothing");
}

#[tokio::test]
async fn transfer_reuses_local_files_with_the_same_content() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open_with(root.path().join("store"), Durability::NoSync).unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let opts = SyncOptions::default();
    let s = session();
    let snap = within(restore(&store, &s, &a, &opts)).await.unwrap();
    write(&a, "same", "content");
    write(&a, "other", "aaaa");
    within(save(&store, &s, &a, &snap, &opts)).await.unwrap();

    // A persistent directory: one file right but touched, one wrong, one
    // stray.
    write(&b, "same", "content");
    write(&b, "other", "bbbb");
    write(&b, "stray/x", "x");
    let restored = within(restore(&store, &s, &b, &opts)).await.unwrap();
    assert_eq!(restored.stats().downloaded_files, 1, "only `other`");
    assert_eq!(restored.stats().kept_files, 1);
    assert_eq!(listing(&b), listing(&a));
    for f in ["same", "other"] {
        let mtime = |d: &Path| fs::metadata(d.join(f)).unwrap().modified().unwrap();
        assert_eq!(mtime(&a), mtime(&b), "mtime of {f} restored");
    }
}

#[tokio::test]
async fn special_files_are_skipped_and_removed() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open_with(root.path().join("store"), Durability::NoSync).unwrap();
    let dir = root.path().join("w");
    let opts = SyncOptions::default();
    let s = session();
    let snap = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    write(&dir, "ok", "fine");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.join("pipe"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
    fs::write(dir.join(bad), "x").unwrap();
    let saved = within(save(&store, &s, &dir, &snap, &opts)).await.unwrap();
    let mut reasons: Vec<&str> = saved.skipped.iter().map(|k| k.reason).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "name is not UTF-8 or holds a control character",
            "not a regular file, directory or symlink"
        ]
    );
    assert_eq!(saved.uploaded_files, 1);
    let restored = within(restore(&store, &s, &dir, &opts)).await.unwrap();
    assert_eq!(restored.stats().removed, 2);
    assert_eq!(listing(&dir).keys().collect::<Vec<_>>(), ["ok"]);
}

#[tokio::test]
async fn an_unreadable_or_newer_manifest_is_invalid() {
    let (_root, store, dir) = in_place();
    let name = layout::manifest(&session());
    let newer = r#"{"version":2,"checksum":"sha256","scanned_at_ns":0,"entries":[]}"#;
    let escaping = r#"{"version":1,"checksum":"sha256","scanned_at_ns":0,"entries":[{"path":"../x","kind":"dir","mode":493}]}"#;
    for bad in [newer, escaping, "not json"] {
        within(store.put(&name, Bytes::from(bad), PutOptions::default()))
            .await
            .unwrap();
        let err = within(restore(&store, &session(), &dir, &SyncOptions::default()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, WorkspaceError::InvalidManifest { .. }),
            "{bad}: {err:?}"
        );
    }
}
