//! The conformance suite of the [`Launcher`] trait: the properties every
//! backend must have, written once and run against each (DESIGN §7): the
//! local child-process launcher and the Cloud Run launcher against the Cloud
//! Run emulator. A backend's test file builds a [`Fixture`] and calls
//! [`run_all`] or, for readable failures, each property on its own.
//!
//! A launcher starts `runbox-executor`, which reads `requests/{id}.json`
//! from the store, so each property writes its request object first, as the
//! dispatcher does. The commands synchronise with the test through named
//! pipes in [`Fixture::scratch`] (a command announces that it runs, or waits
//! to be released), so no property guesses with sleeps; this needs the
//! executors to run on this machine, which both the local launcher and the
//! emulator do.
//!
//! Every property panics with a message saying what did not hold, and never
//! takes longer than [`PROPERTY_TIMEOUT`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::layout;
use runbox_core::store::{self, JsonObjectError, PutOptions, Store};
use runbox_core::{ExecutionId, InstanceId};
use runbox_dispatcher::{ExecutionState, LaunchSpec, Launcher};
use runbox_proto::{ExecRequest, ExecResult, ExecStatus};

use crate::pipes::{Announcements, Gate};

/// Shell lines that wait until the command's parent, the executor, catches
/// SIGTERM. The executor installs its handler only once the command has
/// started, so a cancel sent the moment the command runs can still find the
/// default action and kill the executor without a result (it is then LOST,
/// not CANCELLED). This property is about cancelling a running execution,
/// so it waits for the handler (bit 15 of `SigCgt`); Linux only.
/// In its workspace namespace the command's parent is the namespace's
/// init (pid 1) and the executor is out of sight; there the executor
/// installed its handler before it read the request, so nothing is left to
/// wait for.
const WAIT_FOR_TERM_HANDLER: &str = r#"until (( PPID == 1 )) || (( 16#$(awk '/^SigCgt:/ {print $2}' /proc/$PPID/status) & (1 << 14) )); do sleep 0.01; done"#;

/// The longest one property may take, executor start-up included.
pub const PROPERTY_TIMEOUT: Duration = Duration::from_secs(60);

/// The command timeout given to every launch: far above what the
/// properties need, so a timeout never decides one.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What the properties run against.
pub struct Fixture {
    /// The launcher under test; its executors use [`Fixture::store`].
    pub launcher: Arc<dyn Launcher>,
    /// The same backend, set up so that its executors cannot start (for
    /// example an unusable store configuration): they exit non-zero before
    /// running anything.
    pub failing: Arc<dyn Launcher>,
    /// The store the executors of [`Fixture::launcher`] read and write.
    pub store: Arc<dyn Store>,
    /// A directory on this machine for the named pipes the commands use.
    pub scratch: PathBuf,
}

/// Runs every property against `fixture`.
pub async fn run_all(fixture: &Fixture) {
    launch_runs_to_success(fixture).await;
    failing_executor_reports_failure(fixture).await;
    state_follows_the_execution(fixture).await;
    cancel_stops_a_running_execution(fixture).await;
    unknown_execution_is_unknown(fixture).await;
}

/// A launched execution runs its command: `ended()` reports success and the
/// result object holds the command's output.
pub async fn launch_runs_to_success(fixture: &Fixture) {
    bounded("launch_runs_to_success", async {
        let id = write_request(fixture, "echo conformance-ok").await;
        launch(&fixture.launcher, &id).await;
        let ended = fixture.launcher.ended(&id).await;
        assert!(ended.succeeded, "ended() reports failure: {ended:?}");
        let result = read_result(fixture, &id)
            .await
            .expect("a result object after a successful end");
        assert_eq!(result.exec_status(), ExecStatus::Succeeded, "{result:?}");
        assert_eq!(result.stdout, "conformance-ok\n");
        assert_eq!(result.execution_id, id.as_str());
        fixture.launcher.release(&id);
    })
    .await;
}

/// An executor that cannot run is reported by `ended()` as a failure with
/// a message, and writes no result.
pub async fn failing_executor_reports_failure(fixture: &Fixture) {
    bounded("failing_executor_reports_failure", async {
        let id = write_request(fixture, "echo never-runs").await;
        launch(&fixture.failing, &id).await;
        let ended = fixture.failing.ended(&id).await;
        assert!(
            !ended.succeeded,
            "a failing executor reported success: {ended:?}"
        );
        assert!(!ended.message.trim().is_empty(), "no message: {ended:?}");
        match fixture.failing.state(&id).await {
            Ok(ExecutionState::Ended(e)) => assert!(!e.succeeded, "state(): {e:?}"),
            other => panic!("state() after the end: {other:?}"),
        }
        assert!(
            read_result(fixture, &id).await.is_none(),
            "the failing executor wrote a result"
        );
        fixture.failing.release(&id);
    })
    .await;
}

/// `state()` is Running while the command runs and Ended once it finished.
pub async fn state_follows_the_execution(fixture: &Fixture) {
    bounded("state_follows_the_execution", async {
        let mut ready = Announcements::new(&fixture.scratch, "state-ready");
        let mut gate = Gate::new(&fixture.scratch, "state-gate");
        let command = format!(
            "echo running > {}; read -r _ < {}; echo released",
            ready.shell_path(),
            gate.shell_path()
        );
        let id = write_request(fixture, &command).await;
        launch(&fixture.launcher, &id).await;
        assert_eq!(ready.next().await, "running");
        let state = fixture.launcher.state(&id).await.expect("state()");
        assert_eq!(state, ExecutionState::Running, "while the command runs");
        gate.release(1).await;
        let ended = fixture.launcher.ended(&id).await;
        assert!(ended.succeeded, "{ended:?}");
        match fixture
            .launcher
            .state(&id)
            .await
            .expect("state() after the end")
        {
            ExecutionState::Ended(e) => assert!(e.succeeded, "state(): {e:?}"),
            other => panic!("state() after the end: {other:?}"),
        }
        let result = read_result(fixture, &id).await.expect("result");
        assert_eq!(result.stdout, "released\n");
        fixture.launcher.release(&id);
    })
    .await;
}

/// `cancel()` stops a running execution: it ends, and the executor's
/// result says CANCELLED.
pub async fn cancel_stops_a_running_execution(fixture: &Fixture) {
    bounded("cancel_stops_a_running_execution", async {
        let mut ready = Announcements::new(&fixture.scratch, "cancel-ready");
        let command = format!(
            "{WAIT_FOR_TERM_HANDLER}; echo running > {}; exec sleep 600",
            ready.shell_path()
        );
        let id = write_request(fixture, &command).await;
        launch(&fixture.launcher, &id).await;
        assert_eq!(ready.next().await, "running");
        fixture.launcher.cancel(&id).await.expect("cancel()");
        let ended = fixture.launcher.ended(&id).await;
        assert!(!ended.message.is_empty(), "{ended:?}");
        let result = read_result(fixture, &id)
            .await
            .unwrap_or_else(|| panic!("a cancelled executor writes a result; ended: {ended:?}"));
        assert_eq!(result.exec_status(), ExecStatus::Cancelled, "{result:?}");
        assert!(
            matches!(
                fixture.launcher.state(&id).await,
                Ok(ExecutionState::Ended(_))
            ),
            "state() after the cancelled execution ended"
        );
        fixture.launcher.release(&id);
    })
    .await;
}

/// An execution the launcher never started is Unknown, and cancelling it is
/// not an error.
pub async fn unknown_execution_is_unknown(fixture: &Fixture) {
    bounded("unknown_execution_is_unknown", async {
        let id = InstanceId::random().next_execution_id();
        let state = fixture.launcher.state(&id).await.expect("state()");
        assert_eq!(state, ExecutionState::Unknown);
        fixture
            .launcher
            .cancel(&id)
            .await
            .expect("cancel() of an unknown execution");
    })
    .await;
}

/// Writes the request object for a fresh execution (in a session of its
/// own) running `command`.
pub async fn write_request(fixture: &Fixture, command: &str) -> ExecutionId {
    let id = InstanceId::random().next_execution_id();
    let request = ExecRequest {
        execution_id: id.to_string(),
        session_id: format!("conformance-{}", id.as_str().replace('.', "-")),
        command: command.to_owned(),
        env: BTreeMap::new(),
        timeout_ms: COMMAND_TIMEOUT.as_millis() as u64,
        created_at: Some(runbox_proto::now()),
        ..Default::default()
    };
    store::put_json(
        &*fixture.store,
        &layout::request(&id),
        &request,
        PutOptions::create(),
    )
    .await
    .expect("write the request object");
    id
}

/// The execution's result object, if there is one.
pub async fn read_result(fixture: &Fixture, id: &ExecutionId) -> Option<ExecResult> {
    match store::get_json::<ExecResult>(&*fixture.store, &layout::result(id), "ExecResult").await {
        Ok(v) => Some(v.value),
        Err(JsonObjectError::Store(e)) if e.is_not_found() => None,
        Err(e) => panic!("read result of {id}: {e}"),
    }
}

async fn launch(launcher: &Arc<dyn Launcher>, id: &ExecutionId) {
    launcher
        .launch(LaunchSpec {
            execution_id: id.clone(),
            timeout: COMMAND_TIMEOUT,
            traceparent: None,
            store_token: None,
        })
        .await
        .unwrap_or_else(|e| panic!("launch {id}: {}", runbox_dispatcher::error_chain(&e)));
}

async fn bounded(property: &str, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(PROPERTY_TIMEOUT, fut).await.is_err() {
        panic!("{property}: no answer within {PROPERTY_TIMEOUT:?}");
    }
}
