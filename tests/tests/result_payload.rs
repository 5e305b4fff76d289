//! Small results ride in their completion event: the dispatcher resolves
//! `exec` from the result in the result object's metadata without reading
//! the object, and falls back to reading it for a result too large to
//! carry (or when `RUNBOX_RESULT_IN_METADATA=false`). Run on the embedded
//! backend and on the production wire (fake-gcs-server + Pub/Sub emulator).
//! A counting store decorator sees every read the dispatcher makes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use runbox_core::store::get_json;
use runbox_core::{Config, ExecutionId, InstanceId, Store, layout, result_metadata};
use runbox_dispatcher::client::ResultStats;
use runbox_dispatcher::{Client, ExecResult, ExecStatus, LocalLauncher, Parts, SessionLocks};
use runbox_notifier::{EventSource, FsEventSource};
use runbox_tests::counting_store::CountingStore;
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;

/// 1 MiB of output: far past the metadata budget, kept inline by the cap.
const LARGE: usize = 1 << 20;

/// Settings on top of a backend's own: every result must come through its
/// event (a long completion grace), and 1 MiB of output stays inline.
fn settings(env: &mut BTreeMap<String, String>, home: &Path, payload: bool) {
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_COMPLETION_GRACE_MS".into(), "60000".into());
    env.insert("RUNBOX_OUTPUT_CAP_BYTES".into(), (2 * LARGE).to_string());
    env.insert("RUNBOX_RESULT_IN_METADATA".into(), payload.to_string());
}

/// A client whose store counts reads of `results/`; `emu` selects the gcp
/// backend on the emulators, else the embedded one.
async fn client(emu: Option<&Emulators>, home: &Path, payload: bool) -> (Client, Stores) {
    let mut env = emu.map(Emulators::env).unwrap_or_default();
    settings(&mut env, home, payload);
    let config = Config::from_lookup(&env).expect("config");
    let inner = runbox_core::backend::open_store(&config)
        .await
        .expect("store");
    let counting = CountingStore::new(inner.clone(), layout::RESULTS_PREFIX);
    let store: Arc<dyn Store> = counting.clone();
    let instance = InstanceId::random();
    let (events, session_locks, host_workspace): (Box<dyn EventSource>, _, _) = match emu {
        Some(emu) => (
            Box::new(
                within(60, emu.event_source(&instance))
                    .await
                    .expect("events"),
            ),
            None,
            None,
        ),
        None => (
            Box::new(FsEventSource::new(home, store.clone()).expect("events")),
            Some(SessionLocks::new(home.join(".runbox/session-locks"))),
            Some(std::path::absolute(home).expect("absolute home")),
        ),
    };
    let launcher = Arc::new(LocalLauncher::new(&config, 8).expect("launcher"));
    let client = Client::from_parts(Parts {
        config,
        store,
        events,
        launcher,
        instance,
        session_locks,
        host_workspace,
    });
    (client, Stores { inner, counting })
}

/// The store under the counter (reads there are not counted), and the counter.
struct Stores {
    inner: Arc<dyn Store>,
    counting: Arc<CountingStore>,
}

/// The result object's body, read past the counter.
async fn body(store: &Stores, result: &ExecResult) -> ExecResult {
    let id = ExecutionId::new(&result.execution_id).expect("execution id");
    within(
        30,
        get_json::<ExecResult>(&*store.inner, &layout::result(&id), "ExecResult"),
    )
    .await
    .expect("result object")
    .value
}

/// A small result, then a large one; `payload` says whether the client
/// resolves from the metadata.
async fn small_then_large(client: &Client, store: &Stores, payload: bool) {
    let s = client.session("payload").unwrap();

    let small = within(60, s.exec("cd /tmp && seq 1 100; echo oops >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(small.exec_status(), ExecStatus::Failed, "{small:?}");
    assert_eq!(small.exit_code, 3);
    assert!(small.stdout.starts_with("1\n2\n") && small.stdout.ends_with("100\n"));
    assert_eq!(small.stderr, "oops\n");
    assert!(
        result_metadata::encode(&small).is_some(),
        "small enough to carry"
    );
    // Field for field what the object says (timestamps to the nanosecond).
    assert_eq!(small, body(store, &small).await);
    let (reads, stats) = if payload {
        (
            0,
            ResultStats {
                from_payload: 1,
                by_read: 0,
            },
        )
    } else {
        (
            1,
            ResultStats {
                from_payload: 0,
                by_read: 1,
            },
        )
    };
    assert_eq!(store.counting.reads(), reads, "result object reads");
    assert_eq!(client.result_stats(), stats);

    let large = within(
        120,
        s.exec(format!("head -c {LARGE} /dev/zero | tr '\\0' x; echo; pwd")),
    )
    .await
    .unwrap();
    assert_eq!(
        large.exec_status(),
        ExecStatus::Succeeded,
        "{}",
        large.message
    );
    assert_eq!(large.stdout.len(), LARGE + "\n/tmp\n".len());
    assert!(large.stdout.ends_with("x\n/tmp\n"));
    assert!(!large.stdout_truncated);
    assert!(
        result_metadata::encode(&large).is_none(),
        "too large to carry"
    );
    assert_eq!(large, body(store, &large).await);
    // Too large for the metadata: read from the object, once.
    assert_eq!(store.counting.reads(), reads + 1, "result object reads");
    assert_eq!(
        client.result_stats(),
        ResultStats {
            by_read: stats.by_read + 1,
            ..stats
        }
    );
    let notified = client.notifier_stats();
    assert_eq!(notified.delivered, 2, "{notified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_small_results_resolve_without_a_read() {
    let home = tempfile::tempdir().unwrap();
    let (client, store) = client(None, home.path(), true).await;
    small_then_large(&client, &store, true).await;
    within(30, client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_switched_off_reads_every_result() {
    let home = tempfile::tempdir().unwrap();
    let (client, store) = client(None, home.path(), false).await;
    small_then_large(&client, &store, false).await;
    within(30, client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_notifications_carry_small_results() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    for payload in [true, false] {
        let home = tempfile::tempdir().unwrap();
        let (client, store) = client(Some(&emu), home.path(), payload).await;
        small_then_large(&client, &store, payload).await;
        within(30, client.shutdown()).await;
    }
}
