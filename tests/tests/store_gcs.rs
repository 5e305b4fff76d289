//! The Cloud Storage store against fake-gcs-server: the shared Store
//! conformance suite, a 50 MiB streaming round trip, and what is particular
//! to the GCS backend (resumable uploads, emulator addresses, error mapping).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runbox_core::store::{ByteStream, GcsStore};
use runbox_core::{Precondition, PutOptions, Store, StoreError};
use runbox_tests::harness::Emulators;
use runbox_tests::store_conformance;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

/// Generous: the machine has two cores and other tests run alongside.
const T: Duration = Duration::from_secs(60);

async fn emulators() -> Emulators {
    timeout(T, Emulators::storage_only())
        .await
        .expect("fake-gcs-server start timed out")
        .expect("fake-gcs-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let emu = emulators().await;
    let store: Arc<dyn Store> = Arc::new(emu.store());
    timeout(
        Duration::from_secs(120),
        store_conformance::run_all(store, "conformance/"),
    )
    .await
    .expect("conformance suite timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_roundtrip_50_mib() {
    let emu = emulators().await;
    let store: Arc<dyn Store> = Arc::new(emu.store());
    timeout(
        Duration::from_secs(120),
        store_conformance::streaming_roundtrip(&store, "stream/", 50 * 1024 * 1024),
    )
    .await
    .expect("streaming round trip timed out");
}

/// Deterministic bytes that differ at every offset within a chunk, so a
/// misplaced chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn stream_of(data: Vec<u8>) -> ByteStream {
    Box::pin(std::io::Cursor::new(data))
}

async fn read_all(store: &GcsStore, name: &str) -> (runbox_core::ObjectMeta, Vec<u8>) {
    let (meta, mut reader) = timeout(T, store.get_stream(name))
        .await
        .expect("get_stream timed out")
        .expect("get_stream");
    let mut out = Vec::new();
    timeout(T, reader.read_to_end(&mut out))
        .await
        .expect("read timed out")
        .expect("read");
    (meta, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_uploads_keep_metadata_and_preconditions() {
    let emu = emulators().await;
    let store = emu.store();
    const CHUNK: usize = 8 * 1024 * 1024;

    // Crosses a chunk boundary: the upload goes through a resumable session.
    let data = pattern(CHUNK + 12_345);
    let opts = PutOptions::create().with_metadata("traceparent", "00-abc-def-01");
    let meta = timeout(
        T,
        store.put_stream("big/a.bin", stream_of(data.clone()), opts),
    )
    .await
    .expect("put_stream timed out")
    .expect("put_stream");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(
        meta.metadata.get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
    let (read_meta, read) = read_all(&store, "big/a.bin").await;
    assert_eq!(read_meta.generation, meta.generation);
    assert_eq!(read_meta.metadata, meta.metadata);
    assert!(read == data, "content differs after a resumable upload");

    // The create precondition holds for resumable uploads too.
    let err = timeout(
        T,
        store.put_stream(
            "big/a.bin",
            stream_of(pattern(CHUNK + 1)),
            PutOptions::create(),
        ),
    )
    .await
    .expect("put_stream timed out")
    .expect_err("second create must fail");
    assert!(err.is_conflict(), "{err:?}");

    // A stream that ends exactly on a chunk boundary is finished with an
    // empty request; overwrite with the right generation.
    let data = pattern(2 * CHUNK);
    let opts = PutOptions::when(Precondition::GenerationMatch(meta.generation));
    let meta2 = timeout(
        T,
        store.put_stream("big/a.bin", stream_of(data.clone()), opts),
    )
    .await
    .expect("put_stream timed out")
    .expect("put_stream on the current generation");
    assert_ne!(meta2.generation, meta.generation);
    assert!(meta2.metadata.is_empty(), "{:?}", meta2.metadata);
    let (_, read) = read_all(&store, "big/a.bin").await;
    assert_eq!(read.len(), data.len());
    assert!(read == data, "content differs after a chunk-aligned upload");

    // A stale generation is a conflict, and the object is unchanged.
    let opts = PutOptions::when(Precondition::GenerationMatch(meta.generation));
    let err = timeout(
        T,
        store.put_stream("big/a.bin", stream_of(pattern(CHUNK + 7)), opts),
    )
    .await
    .expect("put_stream timed out")
    .expect_err("stale generation must fail");
    assert!(err.is_conflict(), "{err:?}");
    let head = timeout(T, store.head("big/a.bin")).await.unwrap().unwrap();
    assert_eq!(head.generation, meta2.generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_host_is_read_in_both_spellings() {
    let emu = emulators().await;
    let bare = emu.storage_host.trim_start_matches("http://").to_owned();
    for host in [bare, emu.storage_host.clone()] {
        let env = BTreeMap::from([("STORAGE_EMULATOR_HOST".to_owned(), host.clone())]);
        let store = GcsStore::from_lookup(&emu.bucket, &env)
            .await
            .expect("connect");
        assert!(
            store.describe().contains(&emu.bucket),
            "{}",
            store.describe()
        );
        let name = format!("hosts/{}", host.len());
        let meta = timeout(
            T,
            store.put(&name, Bytes::from_static(b"hi"), PutOptions::default()),
        )
        .await
        .expect("put timed out")
        .unwrap_or_else(|e| panic!("put via {host}: {e}"));
        let obj = timeout(T, store.get(&name)).await.unwrap().unwrap();
        assert_eq!(obj.meta.generation, meta.generation);
        assert_eq!(&obj.data[..], b"hi");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_say_whether_to_retry() {
    let emu = emulators().await;
    let store = emu.store();

    let err = timeout(T, store.get("nope/missing.json"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(!err.is_retryable());

    let err = timeout(T, store.head("../escape"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidName { .. }), "{err:?}");

    // Nothing listens on port 1: a connection error, worth retrying.
    let down = GcsStore::emulator(&emu.bucket, "127.0.0.1:1");
    let err = timeout(T, down.head("a")).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Backend {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );

    // A bucket that does not exist reads as a missing object, not as a
    // server fault.
    let other = GcsStore::emulator("no-such-bucket-here", &emu.storage_host);
    let err = timeout(T, other.get("a")).await.unwrap().unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}
