//! The Launcher conformance suite against the embedded [`LocalLauncher`]:
//! one test per property, each with its own store in a fresh directory,
//! plus the whole suite on one launcher.

use std::sync::Arc;

use runbox_core::config::{BackendConfig, GcpConfig};
use runbox_dispatcher::{Launcher, LocalLauncher};
use runbox_tests::embedded;
use runbox_tests::launcher_conformance::{self as suite, Fixture};

/// Most executors one test's launcher runs at once.
const MAX_RUNNING: usize = 4;

/// A LocalLauncher over an embedded store in a fresh directory, and a
/// second one whose executors get an unusable configuration (the gcp
/// backend without a bucket), so they exit at once with status 64.
fn fixture() -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let config = embedded::config(&home);
    let store = runbox_core::store::LocalStore::open(&home).expect("open the embedded store");
    let launcher = LocalLauncher::new(&config, MAX_RUNNING).expect("local launcher");
    // An empty bucket reaches the executor as an unset RUNBOX_BUCKET.
    let mut broken = config.clone();
    broken.backend = BackendConfig::Gcp(GcpConfig::new("", "p"));
    let failing = LocalLauncher::new(&broken, MAX_RUNNING).expect("failing local launcher");
    let fixture = Fixture {
        launcher: Arc::new(launcher) as Arc<dyn Launcher>,
        failing: Arc::new(failing),
        store: Arc::new(store),
        scratch,
    };
    (dir, fixture)
}

/// One `#[tokio::test]` per property of the suite.
macro_rules! properties {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $property() {
            let (_dir, fixture) = fixture();
            suite::$property(&fixture).await;
        }
    )*};
}

properties!(
    launch_runs_to_success,
    failing_executor_reports_failure,
    state_follows_the_execution,
    cancel_stops_a_running_execution,
    unknown_execution_is_unknown,
);

/// The whole suite on one launcher and one store: properties must not
/// disturb each other.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_on_one_launcher() {
    let (_dir, fixture) = fixture();
    suite::run_all(&fixture).await;
}

/// The failing executor's message says why it failed.
#[tokio::test(flavor = "multi_thread")]
async fn failure_message_carries_the_executor_error() {
    let (_dir, fixture) = fixture();
    let id = suite::write_request(&fixture, "true").await;
    let spec = runbox_dispatcher::LaunchSpec {
        execution_id: id.clone(),
        timeout: std::time::Duration::from_secs(10),
        traceparent: None,
        store_token: None,
    };
    embedded::within(30, fixture.failing.launch(spec))
        .await
        .expect("launch");
    let ended = embedded::within(30, fixture.failing.ended(&id)).await;
    assert!(ended.message.contains("status 64"), "{}", ended.message);
    assert!(ended.message.contains("RUNBOX_BUCKET"), "{}", ended.message);
}

/// A launcher that stops while its executor runs (a CLI exiting right
/// after `exec --background`) reports no end it did not see: `ended()`
/// stays pending instead of a failed end that its caller would settle as
/// LOST, `state()` still says running, and the executor, left running,
/// writes its own SUCCEEDED result.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_launcher_reports_no_end_it_did_not_see() {
    use futures::FutureExt;
    use runbox_tests::pipes::{Announcements, Gate};

    let (_dir, fixture) = fixture();
    let mut ready = Announcements::new(&fixture.scratch, "stopped-ready");
    let mut gate = Gate::new(&fixture.scratch, "stopped-gate");
    let command = format!(
        "echo running > {}; read -r _ < {}; echo released",
        ready.shell_path(),
        gate.shell_path()
    );
    let id = suite::write_request(&fixture, &command).await;
    let spec = runbox_dispatcher::LaunchSpec {
        execution_id: id.clone(),
        timeout: std::time::Duration::from_secs(60),
        traceparent: None,
        store_token: None,
    };
    embedded::within(30, fixture.launcher.launch(spec))
        .await
        .expect("launch");
    assert_eq!(embedded::within(30, ready.next()).await, "running");
    let executor = runbox_tests::procs::executor_of(id.as_str()).expect("the executor runs");

    // Shutdown returns once the launcher's tasks have: whatever `ended()`
    // would answer, it answers at the first poll now.
    embedded::within(30, fixture.launcher.shutdown()).await;
    let ended = fixture.launcher.ended(&id).now_or_never();
    assert!(ended.is_none(), "an end nobody saw: {ended:?}");
    let state = fixture.launcher.state(&id).await.expect("state()");
    assert_eq!(state, runbox_dispatcher::ExecutionState::Running);
    assert!(suite::read_result(&fixture, &id).await.is_none());

    gate.release(1).await;
    let alive =
        runbox_tests::procs::wait_exited(&[executor], std::time::Duration::from_secs(30)).await;
    assert!(alive.is_empty(), "the executor did not exit");
    let result = suite::read_result(&fixture, &id)
        .await
        .expect("the executor wrote its result");
    assert_eq!(result.exec_status(), runbox_proto::ExecStatus::Succeeded);
    assert_eq!(result.stdout, "released\n");
}
