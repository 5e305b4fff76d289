//! The conformance suite of the [`Store`] trait: the properties every backend
//! must have (Cloud Storage's semantics), written once and run against each
//! backend (DESIGN §7). A backend's test file calls [`run_all`], or, for
//! readable failures, each property on its own:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread")]
//! async fn create_if_absent() {
//!     let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path())?);
//!     store_conformance::create_if_absent(&store, "conformance").await;
//! }
//! ```
//!
//! Every property works under its own sub-prefix of `prefix`, so runs that
//! share a bucket do not see each other's objects, and deletes what it wrote
//! when it passes. A property panics with a message saying what did not
//! hold, and never takes longer than [`PROPERTY_TIMEOUT`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use runbox_core::store::{self, ByteStream};
use runbox_core::{ListOptions, ListPage, ObjectMeta, Precondition, PutOptions, Store, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Size of the object [`run_all`] streams through [`streaming_roundtrip`].
pub const DEFAULT_STREAM_BYTES: u64 = 8 << 20;

/// The longest one property may take, emulator round trips included.
pub const PROPERTY_TIMEOUT: Duration = Duration::from_secs(180);

/// How many tasks race to create one object in [`concurrent_creates`].
pub const CONCURRENT_WRITERS: usize = 20;

/// Runs every property against `store`, under `prefix`.
pub async fn run_all(store: Arc<dyn Store>, prefix: &str) {
    create_if_absent(&store, prefix).await;
    overwrite_with_generation(&store, prefix).await;
    generation_increases(&store, prefix).await;
    get_returns_what_was_written(&store, prefix).await;
    head_matches_get(&store, prefix).await;
    missing_objects_are_not_found(&store, prefix).await;
    delete_honours_preconditions(&store, prefix).await;
    list_with_prefix_and_pages(&store, prefix).await;
    list_with_delimiter(&store, prefix).await;
    streaming_roundtrip(&store, prefix, DEFAULT_STREAM_BYTES).await;
    invalid_names_are_rejected(&store, prefix).await;
    concurrent_creates(&store, prefix).await;
}

/// A create succeeds once; a second create, from memory or from a stream,
/// is a [`StoreError::PreconditionFailed`] and leaves the first content.
pub async fn create_if_absent(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "create-if-absent");
    bounded("create_if_absent", async {
        let name = key(&base, "object");
        let first = store
            .put(&name, Bytes::from_static(b"first"), PutOptions::create())
            .await
            .expect("first create");
        assert_eq!(first.name, name);
        assert_eq!(first.size, 5);
        assert!(first.generation > 0, "generation {}", first.generation);

        let err = store
            .put(&name, Bytes::from_static(b"second"), PutOptions::create())
            .await
            .expect_err("second create must fail");
        assert_conflict(&err, &name, Precondition::DoesNotExist);
        let err = store
            .put_stream(&name, reader(b"third"), PutOptions::create())
            .await
            .expect_err("second create from a stream must fail");
        assert_conflict(&err, &name, Precondition::DoesNotExist);

        let object = store.get(&name).await.expect("get");
        assert_eq!(object.data, Bytes::from_static(b"first"));
        assert_eq!(object.meta.generation, first.generation);
    })
    .await;
    cleanup(store, &base).await;
}

/// A write conditioned on the current generation succeeds and makes a
/// newer one; the same condition again (now stale) fails and changes
/// nothing; a generation condition on a missing object fails and creates
/// nothing.
pub async fn overwrite_with_generation(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "overwrite-with-generation");
    bounded("overwrite_with_generation", async {
        let name = key(&base, "object");
        let v1 = store
            .put(&name, Bytes::from_static(b"v1"), PutOptions::create())
            .await
            .expect("create");
        let v2 = store
            .put(
                &name,
                Bytes::from_static(b"v2"),
                match_generation(v1.generation),
            )
            .await
            .expect("write with the current generation");
        assert!(v2.generation > v1.generation, "{v2:?} after {v1:?}");

        let err = store
            .put(
                &name,
                Bytes::from_static(b"v3"),
                match_generation(v1.generation),
            )
            .await
            .expect_err("write with a stale generation must fail");
        assert_conflict(&err, &name, Precondition::GenerationMatch(v1.generation));
        let err = store
            .put_stream(&name, reader(b"v3"), match_generation(v1.generation))
            .await
            .expect_err("stream write with a stale generation must fail");
        assert_conflict(&err, &name, Precondition::GenerationMatch(v1.generation));
        let object = store.get(&name).await.expect("get");
        assert_eq!(object.data, Bytes::from_static(b"v2"));
        assert_eq!(object.meta.generation, v2.generation);

        let v3 = store
            .put_stream(&name, reader(b"v3"), match_generation(v2.generation))
            .await
            .expect("stream write with the current generation");
        assert!(v3.generation > v2.generation, "{v3:?} after {v2:?}");

        let missing = key(&base, "missing");
        let err = store
            .put(&missing, Bytes::new(), match_generation(v3.generation))
            .await
            .expect_err("a generation condition on a missing object must fail");
        assert!(err.is_conflict(), "{err:?}");
        let err = store.head(&missing).await.expect_err("nothing was created");
        assert!(err.is_not_found(), "{err:?}");
    })
    .await;
    cleanup(store, &base).await;
}

/// Every write makes a larger generation, and `head` reports the last one;
/// an object deleted and written again never reuses a generation (it would
/// defeat deduplication of notifications on name + generation).
pub async fn generation_increases(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "generation-increases");
    bounded("generation_increases", async {
        let name = key(&base, "object");
        let mut last = 0;
        for i in 0..5 {
            let meta = store
                .put(
                    &name,
                    Bytes::from(format!("write {i}")),
                    PutOptions::default(),
                )
                .await
                .expect("unconditional write");
            assert!(
                meta.generation > last,
                "write {i}: {} after {last}",
                meta.generation
            );
            last = meta.generation;
        }
        assert_eq!(store.head(&name).await.expect("head").generation, last);

        store
            .delete(&name, Precondition::GenerationMatch(last))
            .await
            .expect("delete");
        let recreated = store
            .put(&name, Bytes::new(), PutOptions::create())
            .await
            .expect("create after delete");
        assert!(
            recreated.generation > last,
            "re-created at {} after {last}",
            recreated.generation
        );
    })
    .await;
    cleanup(store, &base).await;
}

/// `get` returns exactly the bytes (any bytes, none at all) and the custom
/// metadata written; a later write without metadata has none.
pub async fn get_returns_what_was_written(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "get-returns-what-was-written");
    bounded("get_returns_what_was_written", async {
        let name = key(&base, "binary");
        // Every byte value, so nothing may assume UTF-8 or text.
        let data: Bytes = (0..=255u8).cycle().take(3000).collect::<Vec<u8>>().into();
        let metadata = BTreeMap::from([
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
            ("session".to_owned(), "s-1".to_owned()),
            ("note".to_owned(), "héllo ✓".to_owned()),
        ]);
        let opts = PutOptions {
            metadata: metadata.clone(),
            ..PutOptions::create()
        };
        let written = store.put(&name, data.clone(), opts).await.expect("put");
        assert_eq!(written.size, 3000);
        assert_eq!(written.metadata, metadata);

        let object = store.get(&name).await.expect("get");
        assert!(object.data == data, "content differs from what was written");
        assert_eq!(object.meta.name, name);
        assert_eq!(object.meta.size, 3000);
        assert_eq!(object.meta.generation, written.generation);
        assert_eq!(object.meta.metadata, metadata);

        // A new generation carries only its own metadata.
        store
            .put(&name, Bytes::from_static(b"plain"), PutOptions::default())
            .await
            .expect("overwrite");
        let object = store.get(&name).await.expect("get after overwrite");
        assert_eq!(object.data, Bytes::from_static(b"plain"));
        assert!(
            object.meta.metadata.is_empty(),
            "{:?}",
            object.meta.metadata
        );

        let empty = key(&base, "empty");
        store
            .put(&empty, Bytes::new(), PutOptions::create())
            .await
            .expect("put empty");
        let object = store.get(&empty).await.expect("get empty");
        assert!(object.data.is_empty());
        assert_eq!(object.meta.size, 0);
    })
    .await;
    cleanup(store, &base).await;
}

/// `head`, `get`, `get_stream` and `list` describe the same generation the
/// same way, and agree with what `put` returned.
pub async fn head_matches_get(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "head-matches-get");
    bounded("head_matches_get", async {
        let name = key(&base, "object");
        let written = store
            .put(
                &name,
                Bytes::from_static(b"described four ways"),
                PutOptions::create().with_metadata("k", "v"),
            )
            .await
            .expect("put");
        let head = store.head(&name).await.expect("head");
        assert_eq!(head.generation, written.generation);
        assert_eq!(head.size, written.size);
        assert_eq!(head.metadata, written.metadata);

        let object = store.get(&name).await.expect("get");
        assert_eq!(object.meta, head);
        let (streamed, mut stream) = store.get_stream(&name).await.expect("get_stream");
        assert_eq!(streamed, head);
        let mut content = Vec::new();
        stream.read_to_end(&mut content).await.expect("read stream");
        assert_eq!(content, object.data);

        let listed = store::list_all(&**store, &name).await.expect("list");
        assert_eq!(listed, [head]);
    })
    .await;
    cleanup(store, &base).await;
}

/// Every read and delete of a missing object, never written or deleted, is
/// [`StoreError::NotFound`] naming it.
pub async fn missing_objects_are_not_found(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "missing-objects-are-not-found");
    bounded("missing_objects_are_not_found", async {
        let deleted = key(&base, "deleted");
        store
            .put(&deleted, Bytes::from_static(b"x"), PutOptions::create())
            .await
            .expect("put");
        store
            .delete(&deleted, Precondition::None)
            .await
            .expect("delete");
        for name in [key(&base, "never-written"), deleted] {
            let errors = [
                ("head", store.head(&name).await.err()),
                ("get", store.get(&name).await.err()),
                ("get_stream", store.get_stream(&name).await.err()),
                (
                    "delete",
                    store.delete(&name, Precondition::None).await.err(),
                ),
            ];
            for (op, err) in errors {
                match err {
                    Some(StoreError::NotFound { name: reported }) => assert_eq!(reported, name),
                    other => panic!("{op} {name}: expected NotFound, got {other:?}"),
                }
            }
        }
    })
    .await;
    cleanup(store, &base).await;
}

/// A delete with a stale generation, or with "must not exist", is a conflict
/// and deletes nothing; with the current generation it deletes.
pub async fn delete_honours_preconditions(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "delete-honours-preconditions");
    bounded("delete_honours_preconditions", async {
        let name = key(&base, "object");
        let v1 = store
            .put(&name, Bytes::from_static(b"v1"), PutOptions::create())
            .await
            .expect("create");
        let v2 = store
            .put(
                &name,
                Bytes::from_static(b"v2"),
                match_generation(v1.generation),
            )
            .await
            .expect("overwrite");

        for precondition in [
            Precondition::GenerationMatch(v1.generation),
            Precondition::DoesNotExist,
        ] {
            let err = store
                .delete(&name, precondition)
                .await
                .expect_err("delete must fail");
            assert_conflict(&err, &name, precondition);
            let head = store.head(&name).await.expect("still there");
            assert_eq!(head.generation, v2.generation);
        }

        store
            .delete(&name, Precondition::GenerationMatch(v2.generation))
            .await
            .expect("delete with the current generation");
        let err = store.head(&name).await.expect_err("deleted");
        assert!(err.is_not_found(), "{err:?}");
    })
    .await;
    cleanup(store, &base).await;
}

/// 25 objects listed 10 at a time: pages of 10, 10 and 5, every name once,
/// in lexicographic order; a prefix may end in the middle of a segment and
/// never matches names that merely share its first characters.
pub async fn list_with_prefix_and_pages(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "list-with-prefix-and-pages");
    bounded("list_with_prefix_and_pages", async {
        let dir = key(&base, "list");
        let expected: Vec<String> = (0..25).map(|i| key(&dir, &format!("obj-{i:02}"))).collect();
        // Written out of order, so the order listed is the store's.
        for name in expected.iter().rev() {
            put_empty(store, name).await;
        }
        // Share the characters of the prefix, not the prefix.
        for decoy in [
            format!("{dir}-decoy"),
            format!("{dir}x/obj-00"),
            key(&base, "lis"),
        ] {
            put_empty(store, &decoy).await;
        }

        let pages = all_pages(
            store,
            ListOptions {
                prefix: format!("{dir}/"),
                page_size: Some(10),
                ..ListOptions::default()
            },
        )
        .await;
        let sizes: Vec<usize> = pages.iter().map(|p| p.objects.len()).collect();
        assert_eq!(sizes, [10, 10, 5], "page sizes");
        assert!(
            pages.iter().all(|p| p.prefixes.is_empty()),
            "prefixes without a delimiter"
        );
        assert_eq!(names(&pages), expected);

        let mid_segment = all_pages(
            store,
            ListOptions {
                prefix: format!("{dir}/obj-1"),
                ..ListOptions::default()
            },
        )
        .await;
        assert_eq!(names(&mid_segment), expected[10..20]);

        let nothing = all_pages(
            store,
            ListOptions {
                prefix: format!("{dir}/none"),
                ..ListOptions::default()
            },
        )
        .await;
        assert!(names(&nothing).is_empty());
    })
    .await;
    cleanup(store, &base).await;
}

/// With the delimiter `/`, deeper names fold into prefixes ending with `/`,
/// each listed once, in order, across pages.
pub async fn list_with_delimiter(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "list-with-delimiter");
    bounded("list_with_delimiter", async {
        let tree = key(&base, "tree");
        for rest in ["a.txt", "b/1", "b/2", "c/d/e", "z.txt"] {
            put_empty(store, &key(&tree, rest)).await;
        }
        put_empty(store, &format!("{tree}-sibling")).await;

        let listing = |prefix: String, page_size: Option<u32>| {
            all_pages(
                store,
                ListOptions {
                    prefix,
                    delimiter: Some('/'),
                    page_size,
                    ..ListOptions::default()
                },
            )
        };
        for page_size in [None, Some(2)] {
            let pages = listing(format!("{tree}/"), page_size).await;
            assert_eq!(
                names(&pages),
                [key(&tree, "a.txt"), key(&tree, "z.txt")],
                "objects, page size {page_size:?}"
            );
            assert_eq!(
                prefixes(&pages),
                [format!("{tree}/b/"), format!("{tree}/c/")],
                "prefixes, page size {page_size:?}"
            );
        }

        let pages = listing(format!("{tree}/b"), None).await;
        assert!(names(&pages).is_empty(), "{pages:?}");
        assert_eq!(prefixes(&pages), [format!("{tree}/b/")]);

        let pages = listing(format!("{tree}/c/"), None).await;
        assert!(names(&pages).is_empty(), "{pages:?}");
        assert_eq!(prefixes(&pages), [format!("{tree}/c/d/")]);
    })
    .await;
    cleanup(store, &base).await;
}

/// An object of `bytes` bytes goes in through `put_stream` and comes back
/// through `get_stream` unchanged; neither side is ever held in memory (the
/// source is generated and both sides are checksummed as they stream).
pub async fn streaming_roundtrip(store: &Arc<dyn Store>, prefix: &str, bytes: u64) {
    let base = key(prefix, "streaming-roundtrip");
    bounded("streaming_roundtrip", async {
        let name = key(&base, "large");
        let source = Generated::new(bytes);
        let sent = Arc::clone(&source.sent);
        let written = store
            .put_stream(
                &name,
                Box::pin(source),
                PutOptions::create().with_metadata("purpose", "streaming"),
            )
            .await
            .expect("put_stream");
        let sent = *sent.lock().expect("checksum lock");
        assert_eq!(sent.bytes, bytes, "the store did not read the whole stream");
        assert_eq!(written.size, bytes);

        let (meta, mut stream) = store.get_stream(&name).await.expect("get_stream");
        assert_eq!(meta.size, bytes);
        assert_eq!(meta.generation, written.generation);
        assert_eq!(
            meta.metadata.get("purpose").map(String::as_str),
            Some("streaming")
        );
        let mut received = Checksum::default();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = stream.read(&mut chunk).await.expect("read stream");
            if n == 0 {
                break;
            }
            received.update(&chunk[..n]);
        }
        assert_eq!(
            received, sent,
            "content read back differs from content written"
        );
    })
    .await;
    cleanup(store, &base).await;
}

/// Names that are empty, absolute, have empty, `.` or `..` segments, contain
/// control characters, are longer than 1024 bytes or lie under the reserved
/// `.runbox/` are [`StoreError::InvalidName`] for every operation.
pub async fn invalid_names_are_rejected(store: &Arc<dyn Store>, _prefix: &str) {
    // Rejected before any I/O: nothing is written, so no sub-prefix is needed.
    bounded("invalid_names_are_rejected", async {
        let too_long = "x".repeat(1025);
        let bad = [
            "",
            "/absolute",
            "a//b",
            "a/../b",
            "./a",
            "trailing/",
            "nul\0byte",
            "line\nbreak",
            ".runbox/internal",
            too_long.as_str(),
        ];
        for name in bad {
            let results = [
                ("head", store.head(name).await.err()),
                ("get", store.get(name).await.err()),
                ("get_stream", store.get_stream(name).await.err()),
                (
                    "put",
                    store
                        .put(name, Bytes::new(), PutOptions::default())
                        .await
                        .err(),
                ),
                (
                    "put_stream",
                    store
                        .put_stream(name, reader(b""), PutOptions::default())
                        .await
                        .err(),
                ),
                ("delete", store.delete(name, Precondition::None).await.err()),
            ];
            for (op, err) in results {
                assert!(
                    matches!(err, Some(StoreError::InvalidName { .. })),
                    "{op} {name:?}: expected InvalidName, got {err:?}"
                );
            }
        }
    })
    .await;
}

/// [`CONCURRENT_WRITERS`] tasks create one object at once: exactly one
/// succeeds, every other gets a conflict, and the object holds the winner's
/// content.
pub async fn concurrent_creates(store: &Arc<dyn Store>, prefix: &str) {
    let base = key(prefix, "concurrent-creates");
    bounded("concurrent_creates", async {
        let name = key(&base, "contended");
        // Released together, so the creates really overlap.
        let start = Arc::new(tokio::sync::Barrier::new(CONCURRENT_WRITERS));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..CONCURRENT_WRITERS {
            let (store, name, start) = (Arc::clone(store), name.clone(), Arc::clone(&start));
            tasks.spawn(async move {
                start.wait().await;
                let content = Bytes::from(format!("writer {writer}"));
                (
                    writer,
                    store.put(&name, content, PutOptions::create()).await,
                )
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("writer task") {
                (writer, Ok(meta)) => winners.push((writer, meta)),
                (_, Err(err)) => assert_conflict(&err, &name, Precondition::DoesNotExist),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let (writer, meta) = &winners[0];
        let object = store.get(&name).await.expect("get");
        assert_eq!(object.data, Bytes::from(format!("writer {writer}")));
        assert_eq!(object.meta.generation, meta.generation);
    })
    .await;
    cleanup(store, &base).await;
}

/// `prefix/rest`, or `rest` alone for an empty prefix.
fn key(prefix: &str, rest: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => rest.to_owned(),
        prefix => format!("{prefix}/{rest}"),
    }
}

/// Bounds a property: a backend that hangs must fail the run, not stall it.
async fn bounded<F: Future<Output = ()>>(property: &str, f: F) {
    tokio::time::timeout(PROPERTY_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{property} did not finish within {PROPERTY_TIMEOUT:?}"));
}

/// Deletes what a passing property wrote, so shared buckets stay clean.
async fn cleanup(store: &Arc<dyn Store>, base: &str) {
    let prefix = format!("{base}/");
    tokio::time::timeout(PROPERTY_TIMEOUT, store::delete_prefix(&**store, &prefix))
        .await
        .unwrap_or_else(|_| panic!("cleanup of {prefix} did not finish"))
        .unwrap_or_else(|e| panic!("cleanup of {prefix}: {e}"));
}

fn match_generation(generation: i64) -> PutOptions {
    PutOptions::when(Precondition::GenerationMatch(generation))
}

fn reader(bytes: &'static [u8]) -> ByteStream {
    Box::pin(bytes)
}

async fn put_empty(store: &Arc<dyn Store>, name: &str) {
    store
        .put(name, Bytes::new(), PutOptions::create())
        .await
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
}

#[track_caller]
fn assert_conflict(err: &StoreError, name: &str, precondition: Precondition) {
    match err {
        StoreError::PreconditionFailed {
            name: reported,
            precondition: failed,
        } => {
            assert_eq!(reported, name, "conflict reported on the wrong object");
            assert_eq!(
                *failed, precondition,
                "conflict reports the wrong condition"
            );
        }
        other => panic!("{name}: expected PreconditionFailed ({precondition}), got {other:?}"),
    }
}

/// Every page of a listing, following the tokens.
async fn all_pages(store: &Arc<dyn Store>, mut opts: ListOptions) -> Vec<ListPage> {
    let mut pages = Vec::new();
    loop {
        // A token that never ends the listing must fail, not loop forever.
        assert!(pages.len() < 1000, "listing of {} never ends", opts.prefix);
        let page = store
            .list(&opts)
            .await
            .unwrap_or_else(|e| panic!("list {opts:?}: {e}"));
        let next = page.next_page_token.clone();
        pages.push(page);
        match next {
            Some(token) => opts.page_token = Some(token),
            None => return pages,
        }
    }
}

fn names(pages: &[ListPage]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.objects.iter().map(|m: &ObjectMeta| m.name.clone()))
        .collect()
}

fn prefixes(pages: &[ListPage]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.prefixes.iter().cloned())
        .collect()
}

/// Length and FNV-1a hash of a byte stream, updated chunk by chunk, so two
/// streams are compared without holding either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checksum {
    bytes: u64,
    hash: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self {
            bytes: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Checksum {
    fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        for &b in chunk {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A stream of pseudo-random bytes (xorshift64*), made as it is read; what
/// it handed out is checksummed in `sent`.
struct Generated {
    remaining: u64,
    state: u64,
    sent: Arc<Mutex<Checksum>>,
}

impl Generated {
    fn new(bytes: u64) -> Self {
        Self {
            remaining: bytes,
            state: 0x9e37_79b9_7f4a_7c15,
            sent: Arc::default(),
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = (buf.remaining() as u64).min(this.remaining).min(64 << 10) as usize;
        let chunk = buf.initialize_unfilled_to(n);
        for word in chunk.chunks_mut(8) {
            this.state ^= this.state >> 12;
            this.state ^= this.state << 25;
            this.state ^= this.state >> 27;
            let value = this.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&value[..word.len()]);
        }
        this.sent.lock().expect("checksum lock").update(chunk);
        buf.advance(n);
        this.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}
