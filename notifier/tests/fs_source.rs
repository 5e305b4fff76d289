//! The filesystem event source against a real directory (inotify on Linux).
//! What it must give the notifier, like every event source, is checked by
//! the EventSource conformance suite (`tests/tests/event_source_fs.rs`).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::Store;
use runbox_notifier::{EventSource, FsEventSource, ObjectEvent, SourceItem};
use support::MemStore;
use tokio::time::timeout;

/// One test at a time: the shared-watch test counts the inotify instances
/// this process holds, which the other tests' sources would change under it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(10);

/// Publishes a file the way the local store does: written under
/// `.runbox/tmp/`, then renamed into place as the last step.
fn publish(root: &Path, name: &str, content: &str) {
    let tmp_dir = root.join(".runbox/tmp");
    std::fs::create_dir_all(&tmp_dir).unwrap();
    let tmp = tmp_dir.join(name.replace('/', "_"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, root.join(name)).unwrap();
}

fn source(root: &Path, store: &Arc<MemStore>) -> FsEventSource {
    FsEventSource::new(root, Arc::clone(store) as Arc<dyn Store>).unwrap()
}

async fn next(source: &mut FsEventSource) -> SourceItem {
    timeout(LIMIT, source.next())
        .await
        .expect("an item in time")
        .expect("the source works")
}

async fn next_event(source: &mut FsEventSource) -> ObjectEvent {
    match next(source).await {
        SourceItem::Event(event, _ack) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn resubscribed(source: &mut FsEventSource) {
    assert!(matches!(next(source).await, SourceItem::Resubscribed));
}

#[tokio::test]
async fn a_file_renamed_into_results_is_an_event_with_the_stored_generation() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::default());
    let mut src = source(root, &store);
    assert!(root.join("results").is_dir());
    assert!(src.describe().ends_with("results"), "{}", src.describe());
    resubscribed(&mut src).await;

    store.insert("results/inst-1.json", 1234, &[("traceparent", "00-t-s-01")]);
    publish(root, "results/inst-1.json", "{}");

    let event = next_event(&mut src).await;
    assert_eq!(event.name, "results/inst-1.json");
    assert_eq!(event.generation, 1234);
    assert_eq!(event.metadata["traceparent"], "00-t-s-01");
    assert_eq!(event.bucket, root.display().to_string());
}

#[tokio::test]
async fn dot_files_directories_and_vanished_objects_are_skipped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::default());
    let mut src = source(root, &store);
    resubscribed(&mut src).await;

    // Both readable in the store, so only the source's own filter keeps
    // them from being reported.
    store.insert("results/.partial", 1, &[]);
    store.insert("results/sub", 1, &[]);
    std::fs::write(root.join("results/.partial"), "x").unwrap();
    std::fs::create_dir(root.join("results/sub")).unwrap();
    // Renamed in, but gone from the store by the time it is read.
    publish(root, "results/gone.json", "{}");
    store.insert("results/kept.json", 7, &[]);
    publish(root, "results/kept.json", "{}");

    let event = next_event(&mut src).await;
    assert_eq!(event.name, "results/kept.json");
    assert_eq!(event.generation, 7);
}

#[tokio::test]
async fn every_file_of_a_burst_is_reported() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::default());
    let mut src = source(root, &store);
    resubscribed(&mut src).await;

    let mut expected = BTreeSet::new();
    for i in 0..200 {
        let name = format!("results/burst-{i}.json");
        store.insert(&name, i, &[]);
        publish(root, &name, "{}");
        expected.insert(name);
    }
    let mut seen = BTreeSet::new();
    while seen != expected {
        let event = next_event(&mut src).await;
        assert!(expected.contains(&event.name), "{}", event.name);
        seen.insert(event.name);
    }
}

#[tokio::test]
async fn next_is_cancel_safe_while_reading_the_store() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::gated());
    let mut src = source(root, &store);
    resubscribed(&mut src).await;

    store.insert("results/inst-2.json", 5, &[]);
    publish(root, "results/inst-2.json", "{}");
    // Drop `next()` while its store read is in flight...
    timeout(LIMIT, async {
        tokio::select! {
            item = src.next() => panic!("the read is gated, yet got {item:?}"),
            () = store.head_started() => {}
        }
    })
    .await
    .unwrap();
    // ...and the object is still reported by the next call.
    store.release(1);
    let event = next_event(&mut src).await;
    assert_eq!(event.name, "results/inst-2.json");
    assert_eq!(event.generation, 5);
}

#[tokio::test]
async fn removing_the_results_directory_is_an_error() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::default());
    let mut src = source(root, &store);
    resubscribed(&mut src).await;

    std::fs::remove_dir(root.join("results")).unwrap();
    let err = timeout(LIMIT, src.next())
        .await
        .unwrap()
        .expect_err("the watch is gone");
    assert!(err.reason.contains("removed"), "{err}");
    // And it stays failed.
    assert!(timeout(LIMIT, src.next()).await.unwrap().is_err());
}

/// The inotify instances this process holds.
fn inotify_instances() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_str() == Some("anon_inode:inotify"))
        .count()
}

/// Takes what `source` has ready now, without waiting.
async fn drain(source: &mut FsEventSource) {
    while let Ok(item) = timeout(Duration::ZERO, source.next()).await {
        item.expect("the source works");
    }
}

/// Waits until `source` has told of `name`: its event, or a `Resubscribed`
/// (a handover of the shared watch) on which a notifier reads the store
/// again and finds it. Events of other objects are skipped.
async fn learns_of(source: &mut FsEventSource, name: &str) {
    loop {
        match next(source).await {
            SourceItem::Event(event, _ack) if event.name == name => return,
            SourceItem::Event(..) => continue,
            SourceItem::Resubscribed => return,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Many sources on one store cost one inotify instance between them (the
/// kernel allows 128 per user by default), every one of them sees every
/// result, and when the one holding the watch goes, another takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_on_one_store_share_one_watch_and_survive_its_holder() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(MemStore::default());
    let before = inotify_instances();
    let mut sources: Vec<FsEventSource> = (0..5).map(|_| source(root, &store)).collect();
    for src in &mut sources {
        resubscribed(src).await;
    }
    assert_eq!(
        inotify_instances() - before,
        1,
        "one watch for five sources"
    );

    // The first round has no handover: every source must see the event.
    let name = "results/r0.json";
    store.insert(name, 100, &[]);
    publish(root, name, "{}");
    for src in &mut sources {
        assert_eq!(next_event(src).await.name, name);
    }
    for round in 1..=4 {
        for src in &mut sources {
            drain(src).await;
        }
        let name = format!("results/r{round}.json");
        store.insert(&name, round, &[]);
        publish(root, &name, "{}");
        for src in &mut sources {
            learns_of(src, &name).await;
        }
        // Drop the oldest: in the first round that is, most likely, the one
        // holding the watch; whichever it was, the rest carry on.
        sources.remove(0);
    }
}
