//! The Store conformance suite against the embedded [`LocalStore`], one test
//! per property (each in a fresh directory) plus the whole suite on one
//! shared store, as a bucket shared by several runs would be.

use std::sync::Arc;

use runbox_core::Store;
use runbox_core::store::LocalStore;
use runbox_tests::store_conformance as suite;

/// A non-trivial prefix, so every property also proves it stays inside it.
const PREFIX: &str = "conformance/run-1";

fn local_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().join("store")).expect("open LocalStore");
    (dir, Arc::new(store))
}

/// One `#[tokio::test]` per property of the suite.
macro_rules! properties {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $property() {
            let (_dir, store) = local_store();
            suite::$property(&store, PREFIX).await;
        }
    )*};
}

properties!(
    create_if_absent,
    overwrite_with_generation,
    generation_increases,
    get_returns_what_was_written,
    head_matches_get,
    missing_objects_are_not_found,
    delete_honours_preconditions,
    list_with_prefix_and_pages,
    list_with_delimiter,
    invalid_names_are_rejected,
    concurrent_creates,
);

#[tokio::test(flavor = "multi_thread")]
async fn streaming_roundtrip() {
    let (_dir, store) = local_store();
    suite::streaming_roundtrip(&store, PREFIX, suite::DEFAULT_STREAM_BYTES).await;
}

/// The whole suite on one store, with an empty prefix: properties must not
/// disturb each other, and each cleans up after itself.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_on_one_store() {
    let (_dir, store) = local_store();
    suite::run_all(Arc::clone(&store), "").await;
    let left = runbox_core::store::list_all(&*store, "")
        .await
        .expect("list after the suite");
    assert!(left.is_empty(), "the suite left objects behind: {left:?}");
}
