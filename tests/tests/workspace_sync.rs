//! Workspace persistence in transfer mode (the Cloud Run path): restore into
//! a fresh directory, a "command" that changes the tree, save, restore again.
//! Every scenario runs on fake-gcs-server and on a local store kept apart
//! from the workspace directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use runbox_core::store::{Durability, LocalStore, list_all};
use runbox_core::{PutOptions, SessionId, Store, layout};
use runbox_executor::workspace::{
    self, EntryKind, Manifest, SaveStats, Snapshot, SyncOptions, WorkspaceError,
};
use runbox_tests::embedded::within;
use runbox_tests::harness::Emulators;

/// Each scenario as a test on fake-gcs-server and one on a local store.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gcs() {
                let emu = super::emulators().await;
                super::$scenario(&emu.store()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                let root = tempfile::tempdir().unwrap();
                let store = super::LocalStore::open_with(root.path(), super::Durability::NoSync)
                    .unwrap();
                super::$scenario(&store).await;
            }
        }
    )*};
}

on_both_stores!(
    round_trip_moves_only_changed_bytes,
    size_cap_changes_nothing,
    one_of_two_saves_wins,
    objects_written_beside_the_manifest_are_restored,
);

async fn emulators() -> Emulators {
    // Storage only: these tests need no notifications.
    within(120, Emulators::storage_only())
        .await
        .expect("fake-gcs-server")
}

fn session() -> SessionId {
    SessionId::new("sync").unwrap()
}

fn opts() -> SyncOptions {
    SyncOptions::default()
}

async fn restore(store: &dyn Store, dir: &Path) -> Snapshot {
    within(60, workspace::restore(store, &session(), dir, &opts()))
        .await
        .unwrap_or_else(|e| panic!("restore into {}: {e:?}", dir.display()))
}

async fn save(store: &dyn Store, dir: &Path, before: &Snapshot) -> SaveStats {
    within(60, workspace::save(store, &session(), dir, before, &opts()))
        .await
        .unwrap_or_else(|e| panic!("save {}: {e:?}", dir.display()))
}

async fn stored(store: &dyn Store) -> (Manifest, i64) {
    within(30, workspace::load_manifest(store, &session()))
        .await
        .unwrap()
}

/// Every workspace object: name relative to the workspace → generation.
async fn objects(store: &dyn Store) -> BTreeMap<String, i64> {
    let prefix = layout::workspace_prefix(&session());
    within(30, list_all(store, &prefix))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name[prefix.len()..].to_owned(), o.generation))
        .collect()
}

fn write(dir: &Path, path: &str, data: &str) {
    let abs = dir.join(path);
    fs::create_dir_all(abs.parent().unwrap()).unwrap();
    fs::write(abs, data).unwrap();
}

fn chmod(dir: &Path, path: &str, mode: u32) {
    fs::set_permissions(dir.join(path), fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry below `dir`: "dir MODE", "file MODE CONTENT" or
/// "link -> TARGET", read with std only.
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
                format!("file {mode:o} {}", fs::read_to_string(e.path()).unwrap())
            };
            out.insert(path, line);
        }
    }
    let mut out = BTreeMap::new();
    go(dir, "", &mut out);
    out
}

/// File path → mtime in ns.
fn mtimes(dir: &Path) -> BTreeMap<String, i64> {
    listing(dir)
        .into_iter()
        .filter(|(_, line)| line.starts_with("file "))
        .map(|(p, _)| {
            let md = fs::metadata(dir.join(&p)).unwrap();
            (p, md.mtime() * 1_000_000_000 + md.mtime_nsec())
        })
        .collect()
}

/// SHA-256 by coreutils, independent of the code under test.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The stored manifest describes `dir` exactly, and the objects are the
/// files it lists, at the generations it records, with their content.
async fn assert_exact(store: &dyn Store, dir: &Path) {
    let (m, _) = stored(store).await;
    assert!(!m.pending, "a finished save leaves no claim");
    let described: BTreeMap<String, String> = m
        .entries
        .iter()
        .map(|(p, e)| {
            let line = match e {
                EntryKind::Dir { mode } => format!("dir {mode:o}"),
                EntryKind::Symlink { target } => format!("link -> {target}"),
                EntryKind::File(f) => {
                    let abs = dir.join(p);
                    assert_eq!(f.sha256, sha256sum(&abs), "checksum of {p}");
                    assert_eq!(f.size, fs::metadata(&abs).unwrap().len(), "size of {p}");
                    format!("file {:o} {}", f.mode, fs::read_to_string(abs).unwrap())
                }
            };
            (p.clone(), line)
        })
        .collect();
    assert_eq!(described, listing(dir), "manifest vs directory");
    let files: BTreeMap<String, i64> = m
        .files()
        .map(|(p, f)| (p.to_owned(), f.generation))
        .collect();
    assert_eq!(objects(store).await, files, "objects vs manifest");
    let prefix = layout::workspace_prefix(&session());
    for p in files.keys() {
        let obj = within(30, store.get(&format!("{prefix}{p}")))
            .await
            .unwrap();
        assert_eq!(obj.data, fs::read(dir.join(p)).unwrap(), "content of {p}");
    }
}

/// A tree with every kind of entry.
fn seed(dir: &Path, outside: &Path) {
    write(dir, "keep.txt", "unchanged");
    chmod(dir, "keep.txt", 0o600);
    write(dir, "edit.txt", "v1");
    write(dir, "same-size.txt", "aaaa");
    write(dir, "gone.txt", "bye");
    write(dir, "move.txt", "moving");
    write(dir, "bin/run.sh", "#!/bin/sh\necho hi\n");
    chmod(dir, "bin/run.sh", 0o755);
    write(dir, "ro/file", "read only dir");
    chmod(dir, "ro", 0o555);
    fs::create_dir_all(dir.join("empty")).unwrap();
    chmod(dir, "empty", 0o700);
    symlink("keep.txt", dir.join("link")).unwrap();
    symlink("nowhere", dir.join("dangling")).unwrap();
    // Symlinks out of the workspace are kept as links, never followed.
    write(outside, "secret.txt", "secret");
    symlink(outside.join("secret.txt"), dir.join("escape")).unwrap();
    symlink(outside, dir.join("escape_dir")).unwrap();
}

const SEEDED_FILES: usize = 7;
const SEEDED_BYTES: u64 = (9 + 2 + 4 + 3 + 6 + 18 + 13) as u64;

async fn round_trip_moves_only_changed_bytes(store: &dyn Store) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let outside = tmp.path().join("outside");
    let empty = restore(store, &a).await;
    assert_eq!(empty.generation(), 0, "no manifest yet");
    assert!(a.is_dir());
    seed(&a, &outside);
    let first = save(store, &a, &empty).await;
    assert_eq!(first.uploaded_files, SEEDED_FILES);
    assert_eq!(first.uploaded_bytes, SEEDED_BYTES);
    assert!(first.skipped.is_empty(), "{:?}", first.skipped);
    assert_exact(store, &a).await;
    let names = objects(store).await;
    assert!(
        !names.keys().any(|n| n.starts_with("escape")),
        "nothing behind a symlink is saved: {names:?}"
    );

    // A fresh disk: files, modes, empty directories, symlinks, mtimes.
    let restored = restore(store, &b).await;
    assert_eq!(restored.stats().downloaded_files, SEEDED_FILES);
    assert_eq!(restored.stats().downloaded_bytes, SEEDED_BYTES);
    assert_eq!(listing(&b), listing(&a));
    assert_eq!(mtimes(&b), mtimes(&a));
    assert_eq!(
        fs::read_link(b.join("escape")).unwrap(),
        outside.join("secret.txt")
    );

    // The command: create, modify (longer, same size), delete, rename,
    // chmod, mkdir, symlink.
    write(&b, "new.txt", "brand new");
    write(&b, "edit.txt", "version 2 longer");
    write(&b, "same-size.txt", "bbbb");
    fs::remove_file(b.join("gone.txt")).unwrap();
    fs::create_dir(b.join("moved")).unwrap();
    fs::rename(b.join("move.txt"), b.join("moved/move.txt")).unwrap();
    chmod(&b, "keep.txt", 0o644);
    fs::create_dir_all(b.join("made/empty")).unwrap();
    symlink("bin/run.sh", b.join("newlink")).unwrap();
    let second = save(store, &b, &restored).await;
    assert_eq!(
        (second.uploaded_files, second.uploaded_bytes),
        (4, 9 + 16 + 4 + 6),
        "new.txt, edit.txt, same-size.txt, moved/move.txt"
    );
    assert_eq!(second.deleted, 2, "gone.txt, move.txt");
    assert_eq!(second.unchanged, 3, "keep.txt, bin/run.sh, ro/file");
    assert_exact(store, &b).await;

    // Nothing changed since: nothing moves.
    let third = save(store, &b, &second.snapshot).await;
    assert_eq!((third.uploaded_files, third.uploaded_bytes), (0, 0));
    assert_eq!(third.deleted, 0);

    let again = restore(store, &c).await;
    assert_eq!(listing(&c), listing(&b));
    assert_eq!(mtimes(&c), mtimes(&b));
    assert_eq!(
        again.generation(),
        third.snapshot.generation(),
        "the snapshot names the manifest written last"
    );
}

async fn size_cap_changes_nothing(store: &dyn Store) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let empty = restore(store, &dir).await;
    write(&dir, "a", "12345");
    let saved = save(store, &dir, &empty).await;
    let (_, generation) = stored(store).await;
    let before = objects(store).await;

    write(&dir, "a", "1234567890");
    write(&dir, "b", "123");
    fs::remove_file(dir.join("a")).unwrap();
    write(&dir, "c", "12345678");
    let capped = opts().with_max_bytes(10);
    let err = within(
        60,
        workspace::save(store, &session(), &dir, &saved.snapshot, &capped),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceError::TooLarge {
                limit: 10,
                actual: 11,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("over the limit of 10 bytes"),
        "{err}"
    );
    assert_eq!(objects(store).await, before, "no object changed");
    assert_eq!(stored(store).await.1, generation, "manifest unchanged");
}

async fn one_of_two_saves_wins(store: &dyn Store) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b1, b2, c) = (
        tmp.path().join("a"),
        tmp.path().join("b1"),
        tmp.path().join("b2"),
        tmp.path().join("c"),
    );
    let empty = restore(store, &a).await;
    write(&a, "shared.txt", "base");
    write(&a, "other.txt", "other");
    save(store, &a, &empty).await;

    // Two executions restored the same generation, then both changed it.
    let s1 = restore(store, &b1).await;
    let s2 = restore(store, &b2).await;
    assert_eq!(s1.generation(), s2.generation());
    write(&b1, "one.txt", "from one");
    write(&b1, "shared.txt", "one wrote this");
    write(&b2, "two.txt", "from two");
    write(&b2, "shared.txt", "two");
    fs::remove_file(b2.join("other.txt")).unwrap();
    let o = opts();
    let (r1, r2) = within(
        60,
        futures::future::join(
            workspace::save(store, &session(), &b1, &s1, &o),
            workspace::save(store, &session(), &b2, &s2, &o),
        ),
    )
    .await;
    let (winner, loser) = match (&r1, &r2) {
        (Ok(_), Err(e)) => (&b1, e),
        (Err(e), Ok(_)) => (&b2, e),
        _ => panic!("exactly one save must win: {r1:?} / {r2:?}"),
    };
    assert!(loser.is_conflict(), "{loser:?}");
    // The loser changed no object: the store is exactly the winner's tree.
    assert_exact(store, winner).await;
    restore(store, &c).await;
    assert_eq!(listing(&c), listing(winner));

    // A stale snapshot stays stale.
    let err = within(60, workspace::save(store, &session(), &b1, &s1, &o))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
}

async fn objects_written_beside_the_manifest_are_restored(store: &dyn Store) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let empty = restore(store, &a).await;
    write(&a, "kept.txt", "kept");
    write(&a, "api-deletes.txt", "x");
    write(&a, "api-edits.txt", "old");
    chmod(&a, "api-edits.txt", 0o600);
    save(store, &a, &empty).await;

    // The file API works on the objects directly, without the manifest.
    let prefix = layout::workspace_prefix(&session());
    let put = |name: &str, data: &'static str| {
        let name = format!("{prefix}{name}");
        async move {
            store
                .put(
                    &name,
                    Bytes::from_static(data.as_bytes()),
                    PutOptions::default(),
                )
                .await
        }
    };
    within(30, put("api-edits.txt", "new content"))
        .await
        .unwrap();
    within(30, put("api/new.txt", "added")).await.unwrap();
    within(
        30,
        store.delete(
            &format!("{prefix}api-deletes.txt"),
            runbox_core::Precondition::None,
        ),
    )
    .await
    .unwrap();

    let restored = restore(store, &b).await;
    assert_eq!(
        listing(&b),
        BTreeMap::from([
            ("api".to_owned(), "dir 755".to_owned()),
            ("api/new.txt".to_owned(), "file 644 added".to_owned()),
            (
                "api-edits.txt".to_owned(),
                "file 600 new content".to_owned()
            ),
            (
                "kept.txt".to_owned(),
                listing(&a).remove("kept.txt").unwrap()
            ),
        ])
    );
    // The next save records what the file API did.
    let saved = save(store, &b, &restored).await;
    assert_eq!(saved.uploaded_files, 0, "the objects are already there");
    assert!(saved.manifest_written);
    assert_exact(store, &b).await;
}

/// Through the real executor on the emulators: every command's workspace is
/// wiped before the next one runs, as a fresh Cloud Run disk would be, and
/// the files, modes, empty directories and symlinks are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_survive_a_fresh_disk_between_commands() {
    use runbox_core::{Config, InstanceId};
    use runbox_dispatcher::{Client, ExecStatus};
    use runbox_tests::embedded::binary;

    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    let config = Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    // The executor's default RUNBOX_WORKSPACE_DIR is shared by every test
    // process on this machine: a session name of our own.
    let name = format!("fresh-{}", InstanceId::random());
    let dir =
        Path::new("/tmp/runbox").join(layout::workspace_prefix(&SessionId::new(&name).unwrap()));
    let s = client.session(&name).unwrap();
    let r = within(
        60,
        s.exec("mkdir -p d/empty && printf hi > d/f && chmod 700 d/f && ln -s d/f link"),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert!(r.message.is_empty(), "{}", r.message);
    assert!(dir.join("d/f").is_file(), "the workspace is where we think");

    fs::remove_dir_all(&dir).unwrap();
    let r = within(
        60,
        s.exec("stat -c %a d/f; cat link; echo; test -d d/empty && echo empty-kept"),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, "700\nhi\nempty-kept\n", "{r:?}");

    // A deletion is saved too.
    within(60, s.exec("rm d/f")).await.unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let r = within(60, s.exec("ls -A d; test -e d/f || echo gone"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "empty\ngone\n", "{r:?}");
    let (m, _) = within(
        30,
        workspace::load_manifest(&emu.store(), &SessionId::new(&name).unwrap()),
    )
    .await
    .unwrap();
    assert!(m.files().next().is_none(), "{m:?}");
    assert!(m.entries.contains_key("d/empty"), "{m:?}");
    client.shutdown().await;
    let _ = fs::remove_dir_all(dir.parent().unwrap());
}
