//! The EventSource conformance suite against the filesystem source: inotify
//! on `results/` of an embedded [`LocalStore`], one test per property, each
//! in a fresh directory.
//!
//! `resubscribe_resyncs_what_was_missed` does not apply: a watch cannot be
//! lost and regained while the source runs. It either works, or it fails for
//! good (the directory went away), which `a_source_that_ends_fails_every_waiter`
//! covers; its only re-announcement, after the kernel dropped events (queue
//! overflow), cannot be provoked from a test without changing system-wide
//! inotify limits. What such a resync recovers is what
//! `results_written_before_the_watch_are_resynced` checks: results that no
//! event will ever report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runbox_core::store::LocalStore;
use runbox_core::{ExecutionId, InstanceId, ObjectMeta, Store};
use runbox_notifier::{EventSource, FsEventSource};
use runbox_tests::event_source_conformance::{self as suite, Backend};

/// A local store in a temporary directory, watched by the filesystem source.
struct Fs {
    dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    instance: InstanceId,
}

impl Fs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("open LocalStore");
        Self {
            dir,
            store: Arc::new(store),
            instance: InstanceId::random(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

impl Backend for Fs {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    fn execution_id(&self) -> ExecutionId {
        self.instance.next_execution_id()
    }

    async fn source(&self) -> Box<dyn EventSource> {
        Box::new(FsEventSource::new(self.root(), self.store()).expect("watch results/"))
    }

    /// Opens the object's file for writing and closes it unchanged: one more
    /// finished-write event for the same generation.
    async fn notify_again(&self, meta: &ObjectMeta) {
        let path = self.path(&meta.name);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        drop(file);
    }

    /// Removes the (empty) watched directory: the watch dies with it.
    async fn end_source(&self) {
        let dir = self.path("results");
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
}

/// One `#[tokio::test]` per property of the suite.
macro_rules! properties {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $property() {
            suite::$property(&Fs::new()).await;
        }
    )*};
}

properties!(
    a_result_resolves_its_waiter,
    duplicates_deliver_once,
    unknown_executions_are_acked_and_counted,
    results_written_before_the_watch_are_resynced,
    stop_fails_every_waiter,
    a_source_that_ends_fails_every_waiter,
);
