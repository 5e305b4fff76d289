//! The embedded store's own tests; the shared conformance suite runs in `runbox-tests`.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;

use super::*;

/// Every test is bounded: a lock bug must fail the test, not hang CI.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test did not finish within 60 s")
}

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

/// Whether the file carries the store's metadata stamp.
fn stamped(path: &Path) -> bool {
    rustix::fs::getxattr(path, "user.runbox.meta", &mut [0u8; 4096][..]).is_ok()
}

fn names(page: &ListPage) -> Vec<&str> {
    page.objects.iter().map(|m| m.name.as_str()).collect()
}

fn mtime_us(path: &Path) -> i64 {
    let md = fs::metadata(path).expect("stat");
    md.mtime() * 1_000_000 + md.mtime_nsec() / 1_000
}

#[tokio::test(flavor = "multi_thread")]
async fn content_is_a_plain_file_and_bookkeeping_stays_under_runbox() {
    let (_dir, store) = store();
    bounded(async {
        let meta = store
            .put(
                "results/a.json",
                Bytes::from_static(b"{}"),
                PutOptions::create().with_metadata("k", "v"),
            )
            .await
            .unwrap();
        let path = store.path_of("results/a.json").unwrap();
        assert_eq!(path, store.root().join("results/a.json"));
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        // The bookkeeping is on the file itself, or in a sidecar under
        // `.runbox/` where the file system cannot hold it.
        let sidecar = store.root().join(".runbox/meta/results/a.json");
        assert!(stamped(&path) != sidecar.is_file());
        // Nothing staged is left behind by a successful write.
        let leftovers: Vec<_> = fs::read_dir(store.root().join(".runbox/tmp"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        let page = store.list(&ListOptions::default()).await.unwrap();
        assert_eq!(names(&page), ["results/a.json"]);
        assert_eq!(page.objects[0], meta);
        assert!(store.describe().starts_with("file:///"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_written_directly_are_objects() {
    let (_dir, store) = store();
    bounded(async {
        let name = "sessions/s/workspace/notes.txt";
        let path = store.path_of(name).unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"written by a command").unwrap();

        let head = store.head(name).await.unwrap();
        assert_eq!(head.generation, mtime_us(&path));
        assert_eq!(head.size, 20);
        assert!(head.metadata.is_empty());
        let object = store.get(name).await.unwrap();
        assert_eq!(object.data, Bytes::from_static(b"written by a command"));
        assert_eq!(object.meta, head);
        let listed = store
            .list(&ListOptions {
                prefix: "sessions/s/".into(),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.objects, std::slice::from_ref(&head));

        let err = store
            .put(name, Bytes::new(), PutOptions::create())
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        let next = store
            .put(
                name,
                Bytes::from_static(b"via the store"),
                PutOptions::when(Precondition::GenerationMatch(head.generation)),
            )
            .await
            .unwrap();
        assert!(next.generation > head.generation);
        assert_eq!(store.head(name).await.unwrap(), next);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_file_behind_the_store_makes_a_new_generation() {
    let (_dir, store) = store();
    bounded(async {
        let name = "sessions/s/workspace/log.txt";
        let written = store
            .put(
                name,
                Bytes::from_static(b"one\n"),
                PutOptions::default().with_metadata("k", "v"),
            )
            .await
            .unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(store.path_of(name).unwrap())
            .unwrap();
        file.write_all(b"two\n").unwrap();
        drop(file);

        let head = store.head(name).await.unwrap();
        assert!(head.generation > written.generation);
        assert_eq!(head.size, 8);
        // The custom metadata described the content the store wrote.
        assert!(head.metadata.is_empty());
        let err = store
            .put(
                name,
                Bytes::new(),
                PutOptions::when(Precondition::GenerationMatch(written.generation)),
            )
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        assert_eq!(store.get(name).await.unwrap().data.as_ref(), b"one\ntwo\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_stores_on_one_directory_admit_exactly_one_create() {
    let (dir, first) = store();
    // A second instance stands in for another process: flock locks
    // belong to open file descriptions, so the two exclude each other
    // exactly as two processes would.
    let second = LocalStore::open(dir.path().join("store")).unwrap();
    bounded(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tasks.spawn(async move {
                let data = Bytes::from(format!("writer {i}"));
                (
                    i,
                    store
                        .put("results/x.json", data, PutOptions::create())
                        .await,
                )
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (i, Ok(meta)) => winners.push((i, meta)),
                (_, Err(e)) => assert!(e.is_conflict(), "unexpected error: {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let (i, meta) = &winners[0];
        let object = second.get("results/x.json").await.unwrap();
        assert_eq!(object.data, Bytes::from(format!("writer {i}")));
        assert_eq!(&object.meta, meta);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_never_pair_new_metadata_with_old_content() {
    let (_dir, store) = store();
    bounded(async {
        let name = "sessions/s/state.json";
        let put = |i: u32| {
            store.put(
                name,
                Bytes::from(i.to_string()),
                PutOptions::default().with_metadata("i", i.to_string()),
            )
        };
        put(0).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let store = store.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut reads = 0;
                while !done.load(Ordering::Acquire) {
                    let object = store.get(name).await.unwrap();
                    let content = std::str::from_utf8(&object.data).unwrap();
                    assert_eq!(Some(&content.to_owned()), object.meta.metadata.get("i"));
                    reads += 1;
                }
                reads
            })
        };
        let mut last = 0;
        for i in 1..=200 {
            let meta = put(i).await.unwrap();
            assert!(meta.generation > last);
            last = meta.generation;
        }
        done.store(true, Ordering::Release);
        let reads = reader.await.unwrap();
        assert!(reads > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generations_never_repeat_after_a_delete() {
    let (_dir, store) = store();
    bounded(async {
        let mut last = 0;
        // Faster than the clock ticks: only the stripe's record of what
        // it issued keeps a re-created object from reusing a generation.
        for _ in 0..20 {
            let meta = store
                .put("results/r.json", Bytes::new(), PutOptions::create())
                .await
                .unwrap();
            assert!(meta.generation > last, "{} after {last}", meta.generation);
            last = meta.generation;
            store
                .delete("results/r.json", Precondition::GenerationMatch(last))
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_prunes_empty_directories() {
    let (_dir, store) = store();
    bounded(async {
        for name in ["a/b/c/d.txt", "a/x.txt"] {
            store
                .put(name, Bytes::new(), PutOptions::create())
                .await
                .unwrap();
        }
        store
            .delete("a/b/c/d.txt", Precondition::None)
            .await
            .unwrap();
        let root = store.root();
        assert!(!root.join("a/b").exists());
        assert!(!root.join(".runbox/meta/a/b").exists());
        assert!(root.join("a/x.txt").is_file());

        store.delete("a/x.txt", Precondition::None).await.unwrap();
        assert!(!root.join("a").exists());
        assert!(!root.join(".runbox/meta/a").exists());
        assert!(root.join(".runbox/meta").is_dir());
        let page = store
            .list(&ListOptions {
                delimiter: Some('/'),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert!(
            page.objects.is_empty() && page.prefixes.is_empty(),
            "{page:?}"
        );
        let err = store
            .delete("a/x.txt", Precondition::None)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_directories_symlinks_and_fifos_are_not_objects() {
    let (_dir, store) = store();
    bounded(async {
        let root = store.root().to_path_buf();
        store
            .put("real.txt", Bytes::from_static(b"x"), PutOptions::create())
            .await
            .unwrap();
        fs::create_dir_all(root.join("empty/deeper")).unwrap();
        std::os::unix::fs::symlink(root.join("real.txt"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();

        let page = store
            .list(&ListOptions {
                delimiter: Some('/'),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&page), ["real.txt"]);
        assert!(page.prefixes.is_empty(), "{:?}", page.prefixes);
        let all = list_all(&store, "").await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        for name in ["empty", "empty/deeper", "link", "pipe", "loop/real.txt"] {
            let err = store.get(name).await.unwrap_err();
            assert!(err.is_not_found(), "{name}: {err:?}");
        }
        for name in ["empty", "link", "pipe"] {
            let err = store.head(name).await.unwrap_err();
            assert!(err.is_not_found(), "{name}: {err:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_never_lead_the_store_out_of_its_root() {
    let (dir, store) = store();
    bounded(async {
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"host file").unwrap();
        fs::create_dir_all(store.root().join("ws")).unwrap();
        // What a command in a workspace could plant.
        std::os::unix::fs::symlink(&outside, store.root().join("ws/link")).unwrap();

        let err = store
            .put("ws/link/planted", Bytes::new(), PutOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(!outside.join("planted").exists());
        for result in [
            store.get("ws/link/secret").await.map(|_| ()),
            store.head("ws/link/secret").await.map(|_| ()),
            store.delete("ws/link/secret", Precondition::None).await,
        ] {
            let err = result.unwrap_err();
            assert!(err.is_not_found(), "{err:?}");
        }
        assert!(outside.join("secret").exists());
        let page = store
            .list(&ListOptions {
                prefix: "ws/link/".into(),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert!(page.objects.is_empty(), "{page:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_follows_full_name_order_across_directories() {
    let (_dir, store) = store();
    bounded(async {
        // '-' < '/' < '0': the directory `a/` sorts between its siblings.
        for name in ["a0", "a/x", "a-b", "a/y/z"] {
            store
                .put(name, Bytes::new(), PutOptions::create())
                .await
                .unwrap();
        }
        let expected = ["a-b", "a/x", "a/y/z", "a0"];
        let all = list_all(&store, "").await.unwrap();
        let all: Vec<_> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(all, expected);

        let mut opts = ListOptions {
            page_size: Some(1),
            ..ListOptions::default()
        };
        let mut paged = Vec::new();
        loop {
            let page = store.list(&opts).await.unwrap();
            assert!(page.objects.len() <= 1);
            paged.extend(page.objects.into_iter().map(|m| m.name));
            match page.next_page_token {
                Some(token) => opts.page_token = Some(token),
                None => break,
            }
        }
        assert_eq!(paged, expected);

        // A delimiter other than '/' folds across directories too.
        let page = store
            .list(&ListOptions {
                prefix: "a".into(),
                delimiter: Some('-'),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert_eq!(page.prefixes, ["a-"]);
        assert_eq!(names(&page), ["a/x", "a/y/z", "a0"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn page_tokens_from_elsewhere_are_rejected() {
    let (_dir, store) = store();
    bounded(async {
        for i in 0..3 {
            store
                .put(&format!("a/{i}"), Bytes::new(), PutOptions::create())
                .await
                .unwrap();
        }
        let first = store
            .list(&ListOptions {
                prefix: "a/".into(),
                page_size: Some(1),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        let token = first.next_page_token.expect("more pages");
        for (prefix, token) in [("a/", "garbage"), ("a/", "l1.zz"), ("b/", token.as_str())] {
            let err = store
                .list(&ListOptions {
                    prefix: prefix.into(),
                    page_token: Some(token.into()),
                    ..ListOptions::default()
                })
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidPageToken { .. }),
                "{prefix} {token}: {err:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixes_outside_the_objects_list_nothing() {
    let (_dir, store) = store();
    bounded(async {
        store
            .put("x", Bytes::new(), PutOptions::create())
            .await
            .unwrap();
        for prefix in ["../", ".runbox/", ".run", "a//", "/"] {
            let page = store
                .list(&ListOptions {
                    prefix: prefix.into(),
                    ..ListOptions::default()
                })
                .await
                .unwrap();
            assert!(page.objects.is_empty(), "{prefix}: {page:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_metadata_is_corrupt_until_a_plain_put_repairs_it() {
    let (_dir, store) = store();
    bounded(async {
        let name = "sessions/s/state.json";
        let meta = store
            .put(name, Bytes::new(), PutOptions::create())
            .await
            .unwrap();
        let sidecar = store.root().join(".runbox/meta").join(name);
        fs::create_dir_all(sidecar.parent().unwrap()).unwrap();
        fs::write(&sidecar, b"not json").unwrap();

        assert!(matches!(
            store.head(name).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get(name).await,
            Err(StoreError::Corrupt { .. })
        ));
        let conditional = store
            .put(
                name,
                Bytes::new(),
                PutOptions::when(Precondition::GenerationMatch(meta.generation)),
            )
            .await;
        assert!(matches!(conditional, Err(StoreError::Corrupt { .. })));
        // One bad sidecar does not break listings.
        assert_eq!(list_all(&store, "sessions/").await.unwrap().len(), 1);

        let repaired = store
            .put(name, Bytes::from_static(b"{}"), PutOptions::default())
            .await
            .unwrap();
        assert!(repaired.generation > meta.generation);
        assert_eq!(store.head(name).await.unwrap(), repaired);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_without_metadata_keeps_its_generation_in_its_mtime() {
    let (_dir, store) = store();
    bounded(async {
        let name = "sessions/s/state.json";
        let sidecar = store.root().join(".runbox/meta").join(name);
        let path = store.path_of(name).unwrap();
        // Metadata too large for a stamp goes to a sidecar.
        let large = "x".repeat(4096);
        let with_metadata = store
            .put(
                name,
                Bytes::from_static(b"1"),
                PutOptions::create().with_metadata("k", large.as_str()),
            )
            .await
            .unwrap();
        assert!(sidecar.is_file());
        assert!(!stamped(&path));
        assert_eq!(store.head(name).await.unwrap(), with_metadata);

        // No sidecar to write and sync: the generation is the mtime, and
        // the sidecar of the replaced generation is gone.
        let plain = store
            .put(
                name,
                Bytes::from_static(b"22"),
                PutOptions::when(Precondition::GenerationMatch(with_metadata.generation)),
            )
            .await
            .unwrap();
        assert!(plain.generation > with_metadata.generation);
        assert!(plain.metadata.is_empty());
        assert!(!sidecar.exists());
        assert_eq!(mtime_us(&path), plain.generation);
        assert_eq!(store.head(name).await.unwrap(), plain);
        let page = store.list(&ListOptions::default()).await.unwrap();
        assert_eq!(page.objects, std::slice::from_ref(&plain));

        // Volatile writes keep the same rules, and preconditions hold.
        let volatile = store
            .put(
                name,
                Bytes::from_static(b"333"),
                PutOptions::when(Precondition::GenerationMatch(plain.generation)).volatile(),
            )
            .await
            .unwrap();
        assert!(volatile.generation > plain.generation);
        assert_eq!(store.head(name).await.unwrap(), volatile);
        let stale = store
            .put(
                name,
                Bytes::new(),
                PutOptions::when(Precondition::GenerationMatch(plain.generation)),
            )
            .await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })));

        // A change behind the store's back moves the generation.
        fs::write(&path, b"edited").unwrap();
        let edited = store.head(name).await.unwrap();
        assert_ne!(edited.generation, volatile.generation);
        assert_eq!(edited.size, 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stamped_metadata_lasts_until_the_file_is_edited_in_place() {
    let (_dir, store) = store();
    bounded(async {
        let name = "results/r.json";
        let path = store.path_of(name).unwrap();
        let written = store
            .put(
                name,
                Bytes::from_static(b"{}"),
                PutOptions::create().with_metadata("k", "v"),
            )
            .await
            .unwrap();
        let supported = stamped(&path);
        assert_eq!(store.head(name).await.unwrap(), written);
        assert_eq!(store.get(name).await.unwrap().meta, written);
        if !supported {
            // No user extended attributes here: the sidecar holds it all.
            return;
        }
        assert_eq!(mtime_us(&path), written.generation);
        assert!(!store.root().join(".runbox/meta").join(name).exists());

        // An edit in place keeps the attribute but moves the mtime: the
        // stamp no longer describes the file.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b" ").unwrap();
        drop(file);
        // Coarse file timestamps may not move within one tick: make sure.
        let moved = written.generation + 1_000;
        let edited = std::fs::File::options().write(true).open(&path).unwrap();
        edited.set_modified(from_us(moved)).unwrap();
        let head = store.head(name).await.unwrap();
        assert_eq!(head.generation, moved);
        assert!(head.metadata.is_empty());
        assert_eq!(head.size, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_keeps_the_generation_it_opened() {
    let (_dir, store) = store();
    bounded(async {
        store
            .put("f", Bytes::from_static(b"old"), PutOptions::create())
            .await
            .unwrap();
        let (meta, mut stream) = store.get_stream("f").await.unwrap();
        store
            .put("f", Bytes::from_static(b"new!"), PutOptions::default())
            .await
            .unwrap();
        let mut read = Vec::new();
        stream.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"old");
        assert_eq!(meta.size, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_cannot_be_both_an_object_and_a_directory() {
    let (_dir, store) = store();
    bounded(async {
        let meta = store
            .put("a/b", Bytes::from_static(b"b"), PutOptions::create())
            .await
            .unwrap();
        for name in ["a", "a/b/c"] {
            let err = store
                .put(name, Bytes::new(), PutOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Io { .. }), "{name}: {err:?}");
        }
        // The failed writes left the existing object as it was.
        assert_eq!(store.head("a/b").await.unwrap(), meta);
        assert_eq!(list_all(&store, "").await.unwrap(), [meta]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_stream_write_leaves_nothing_behind() {
    let (_dir, store) = store();
    bounded(async {
        // A stream that fails half-way, like a broken upload.
        let failing = tokio::io::AsyncReadExt::chain(&b"partial"[..], FailingReader);
        let err = store
            .put_stream("up", Box::pin(failing), PutOptions::create())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { op: "write", .. }), "{err:?}");
        assert!(store.head("up").await.unwrap_err().is_not_found());
        let leftovers = fs::read_dir(store.root().join(".runbox/tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
    })
    .await;
}

struct FailingReader;

impl tokio::io::AsyncRead for FailingReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(io::Error::other("connection reset")))
    }
}

/// The one file in `dir`.
fn only_file(dir: &Path) -> fs::Metadata {
    let entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].metadata().unwrap()
}

/// Creates `key` in a runtime of its own, and waits for that runtime's
/// blocking pool, where a store with a spare makes its next one: with one
/// blocking thread its tasks run in turn, so a task queued after the put's
/// runs after the spare is made (dropping the runtime would not wait for a
/// task not yet started).
fn put_in_own_runtime(store: &LocalStore, key: &str, bytes: &'static [u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime
        .block_on(store.put(key, Bytes::from_static(bytes), PutOptions::create()))
        .unwrap();
    let after = runtime.spawn_blocking(|| ());
    runtime.block_on(after).unwrap();
    drop(runtime);
}

#[test]
fn a_spare_staging_file_becomes_the_next_object_and_goes_with_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join(".runbox/tmp");
    // Without a runtime the spare is made at once.
    let store = LocalStore::open_with(dir.path(), Durability::NoSync)
        .unwrap()
        .with_spare();
    let spare = only_file(&tmp);
    assert_eq!(spare.len(), 0);
    put_in_own_runtime(&store, "results/a.json", b"{}");
    let object = store.path_of("results/a.json").unwrap();
    assert_eq!(fs::read(&object).unwrap(), b"{}");
    assert_eq!(fs::metadata(&object).unwrap().ino(), spare.ino());
    let next = only_file(&tmp);
    assert_ne!(next.ino(), spare.ino());
    assert_eq!(next.len(), 0);
    // A spare removed behind the store's back is not written into.
    fs::remove_file(fs::read_dir(&tmp).unwrap().next().unwrap().unwrap().path()).unwrap();
    put_in_own_runtime(&store, "results/b.json", b"[]");
    assert_eq!(
        fs::read(store.path_of("results/b.json").unwrap()).unwrap(),
        b"[]"
    );
    only_file(&tmp);
    drop(store);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "the spare outlived its store"
    );
}

#[test]
fn a_store_counting_its_writes_keeps_a_spare_from_the_third_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join(".runbox/tmp");
    let store = LocalStore::open_with(dir.path(), Durability::NoSync)
        .unwrap()
        .with_spare_after(2);
    // Left by a process long gone (no process has this pid): swept when
    // the spare starts, not before.
    let stale = tmp.join(format!("{}-1-1.tmp", u32::MAX));
    let file = fs::File::create(&stale).unwrap();
    file.set_modified(SystemTime::now() - write::STALE_STAGING - Duration::from_secs(60))
        .unwrap();
    put_in_own_runtime(&store, "requests/a.json", b"a");
    assert_eq!(
        only_file(&tmp).ino(),
        fs::metadata(&stale).unwrap().ino(),
        "a spare after one write"
    );
    put_in_own_runtime(&store, "requests/b.json", b"b");
    let spare = only_file(&tmp);
    assert!(!stale.exists());
    assert_eq!(spare.len(), 0);
    put_in_own_runtime(&store, "requests/c.json", b"c");
    let object = store.path_of("requests/c.json").unwrap();
    assert_eq!(fs::read(&object).unwrap(), b"c");
    assert_eq!(fs::metadata(&object).unwrap().ino(), spare.ino());
    assert_ne!(only_file(&tmp).ino(), spare.ino());
    drop(store);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn a_store_that_keeps_a_spare_removes_staging_files_of_processes_long_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join(".runbox/tmp");
    fs::create_dir_all(&tmp).unwrap();
    let old = SystemTime::now() - write::STALE_STAGING - Duration::from_secs(60);
    // No process has this pid (above the kernel's limit).
    let gone = u32::MAX;
    let staged = |name: String, modified: SystemTime| {
        let file = fs::File::create(tmp.join(&name)).unwrap();
        file.set_modified(modified).unwrap();
        name
    };
    let swept = staged(format!("{gone}-1-1.tmp"), old);
    let recent = staged(format!("{gone}-2-2.tmp"), SystemTime::now());
    let alive = staged(format!("{}-3-3.tmp", std::process::id()), old);
    let other = staged("notes".to_owned(), old);
    let store = LocalStore::open_with(dir.path(), Durability::NoSync)
        .unwrap()
        .with_spare();
    let mut left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert!(!left.contains(&swept), "{left:?}");
    for kept in [&recent, &alive, &other] {
        assert!(left.contains(kept), "{kept} removed: {left:?}");
    }
    // The three kept and the new spare.
    assert_eq!(left.len(), 4, "{left:?}");
    drop(store);
}
