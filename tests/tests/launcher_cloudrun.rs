//! The Cloud Run launcher:
//! - the Launcher conformance suite against runbox's Cloud Run emulator
//!   (in process, port 0), whose job template runs the real
//!   `runbox-executor` on an embedded store in a temporary directory, and
//!   RunJob pacing measured from the emulator's execution create times;
//! - admission control and retries against a scripted fake of
//!   `google.cloud.run.v2.Jobs/RunJob` (answers chosen per test, every call
//!   recorded with its time and routing header).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Execution, ListExecutionsRequest, RunJobRequest, env_var, executions_client::ExecutionsClient,
};
use googleapis_tonic_google_longrunning::google::longrunning::{Operation, WaitOperationRequest};
use prost::Message;
use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::config::{CloudRunConfig, LauncherConfig};
use runbox_core::store::LocalStore;
use runbox_core::{ExecutionId, InstanceId};
use runbox_dispatcher::admission::RetryPolicy;
use runbox_dispatcher::{
    CloudRunEndpoint, CloudRunLauncher, CloudRunSettings, LaunchError, LaunchSpec, Launcher,
};
use runbox_tests::embedded::{self, within};
use runbox_tests::launcher_conformance::{self as suite, Fixture};
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::{BoxFuture, Service, http};

const JOB: &str = "projects/p/locations/us-central1/jobs/runbox";

/// One RunJob the fake received.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    routing: Option<String>,
    request: RunJobRequest,
}

/// What the fake answers, in order; when the script runs out it accepts
/// every call.
#[derive(Default)]
struct Script {
    replies: VecDeque<Status>,
    calls: Vec<Call>,
    waits: usize,
}

#[derive(Clone, Default)]
struct FakeJobs {
    script: Arc<Mutex<Script>>,
}

impl FakeJobs {
    fn refuse(&self, statuses: impl IntoIterator<Item = Status>) {
        self.script.lock().unwrap().replies.extend(statuses);
    }

    fn calls(&self) -> Vec<Call> {
        self.script.lock().unwrap().calls.clone()
    }

    fn answer(&self, request: tonic::Request<RunJobRequest>) -> Result<Operation, Status> {
        let routing = request
            .metadata()
            .get("x-goog-request-params")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let request = request.into_inner();
        let mut script = self.script.lock().unwrap();
        let n = script.calls.len();
        script.calls.push(Call {
            at: Instant::now(),
            routing,
            request: request.clone(),
        });
        if let Some(status) = script.replies.pop_front() {
            return Err(status);
        }
        let execution = Execution {
            name: format!("{}/executions/fake-{n}", request.name),
            ..Default::default()
        };
        Ok(Operation {
            name: format!("projects/p/locations/us-central1/operations/op-{n}"),
            metadata: Some(prost_types::Any {
                type_url: "type.googleapis.com/google.cloud.run.v2.Execution".to_owned(),
                value: execution.encode_to_vec(),
            }),
            ..Default::default()
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for FakeJobs {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let fake = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/google.cloud.run.v2.Jobs/RunJob" => {
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(RunJob(fake), request)
                        .await
                }
                "/google.longrunning.Operations/WaitOperation" => {
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(WaitAtOnce(fake), request)
                        .await
                }
                _ => Status::unimplemented("not scripted in the fake").into_http(),
            })
        })
    }
}

struct RunJob(FakeJobs);

/// Answers every WaitOperation at once with the operation not done, as a
/// server that does not hold the call may.
struct WaitAtOnce(FakeJobs);

impl tonic::server::UnaryService<WaitOperationRequest> for WaitAtOnce {
    type Response = Operation;
    type Future = BoxFuture<tonic::Response<Operation>, Status>;

    fn call(&mut self, request: tonic::Request<WaitOperationRequest>) -> Self::Future {
        self.0.script.lock().unwrap().waits += 1;
        let name = request.into_inner().name;
        Box::pin(async move {
            Ok(tonic::Response::new(Operation {
                name,
                done: false,
                ..Default::default()
            }))
        })
    }
}

impl tonic::server::UnaryService<RunJobRequest> for RunJob {
    type Response = Operation;
    type Future = BoxFuture<tonic::Response<Operation>, Status>;

    fn call(&mut self, request: tonic::Request<RunJobRequest>) -> Self::Future {
        let reply = self.0.answer(request).map(tonic::Response::new);
        Box::pin(async move { reply })
    }
}

/// Serves `fake` on a free port until the test ends; returns its address.
async fn serve(fake: FakeJobs) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(fake, tonic::transport::server::TcpIncoming::from(listener)),
    );
    address
}

fn settings(address: &str) -> CloudRunSettings {
    let mut s = CloudRunSettings::new(JOB);
    s.endpoint = CloudRunEndpoint::emulator(address);
    s.runjob_per_minute = 60_000;
    s.runjob_burst = 100;
    s.retry = RetryPolicy {
        max_attempts: 3,
        budget: Duration::from_secs(20),
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    };
    s
}

fn spec(timeout: Duration) -> LaunchSpec {
    LaunchSpec {
        execution_id: InstanceId::random().next_execution_id(),
        timeout,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        store_token: None,
    }
}

fn env_of(call: &Call) -> Vec<(String, String)> {
    let overrides = call.request.overrides.as_ref().expect("overrides");
    overrides.container_overrides[0]
        .env
        .iter()
        .map(|e| match &e.values {
            Some(env_var::Values::Value(v)) => (e.name.clone(), v.clone()),
            other => panic!("env {} without a plain value: {other:?}", e.name),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn runjob_carries_the_overrides_and_routing() {
    let fake = FakeJobs::default();
    let launcher = CloudRunLauncher::connect(settings(&serve(fake.clone()).await))
        .await
        .expect("launcher");
    let spec = spec(Duration::from_millis(10_500));
    let id = spec.execution_id.clone();
    within(10, launcher.launch(spec)).await.expect("launch");
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.request.name, JOB);
    // RunJob's routing annotation extracts `location` from the job name.
    assert_eq!(call.routing.as_deref(), Some("location=us-central1"));
    let overrides = call.request.overrides.as_ref().unwrap();
    assert_eq!(overrides.task_count, 1);
    // 10.5 s + the 15 s margin, rounded up to whole seconds.
    assert_eq!(overrides.timeout.as_ref().map(|t| t.seconds), Some(26));
    assert_eq!(
        env_of(call),
        vec![
            ("RUNBOX_EXECUTION_ID".to_owned(), id.to_string()),
            (
                "TRACEPARENT".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()
            ),
        ]
    );
    assert_eq!(
        launcher.execution_name(&id).as_deref(),
        Some("projects/p/locations/us-central1/jobs/runbox/executions/fake-0")
    );
    assert_eq!(launcher.running(), 1);
    launcher.release(&id);
    assert_eq!(launcher.running(), 0);
}

/// A WaitOperation that answers at once, not done, is not called again at
/// once: `ended()` pauses between such calls instead of polling hot.
#[tokio::test(flavor = "multi_thread")]
async fn early_wait_answers_do_not_become_a_busy_poll() {
    let fake = FakeJobs::default();
    let launcher = CloudRunLauncher::connect(settings(&serve(fake.clone()).await))
        .await
        .expect("launcher");
    let spec = spec(Duration::from_secs(5));
    let id = spec.execution_id.clone();
    within(10, launcher.launch(spec)).await.expect("launch");
    let ended = tokio::time::timeout(Duration::from_millis(1500), launcher.ended(&id)).await;
    assert!(ended.is_err(), "ended() resolved for a running execution");
    let waits = fake.script.lock().unwrap().waits;
    // The first call, then a pause of 2 s before the next.
    assert_eq!(waits, 1, "WaitOperation calls in 1.5 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_refusals_are_retried_with_backoff() {
    let fake = FakeJobs::default();
    fake.refuse([
        Status::resource_exhausted("quota"),
        Status::unavailable("busy"),
    ]);
    let launcher = CloudRunLauncher::connect(settings(&serve(fake.clone()).await))
        .await
        .expect("launcher");
    let spec = spec(Duration::from_secs(5));
    let id = spec.execution_id.clone();
    within(10, launcher.launch(spec))
        .await
        .expect("accepted on the third call");
    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    // Backoff: at least half the initial delay, then half the doubled one.
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(10));
    assert!(calls[2].at - calls[1].at >= Duration::from_millis(20));
    assert!(launcher.execution_name(&id).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_budget_runs_out_with_a_retryable_error() {
    let fake = FakeJobs::default();
    fake.refuse((0..10).map(|_| Status::resource_exhausted("quota")));
    let launcher = CloudRunLauncher::connect(settings(&serve(fake.clone()).await))
        .await
        .expect("launcher");
    let spec = spec(Duration::from_secs(5));
    let id = spec.execution_id.clone();
    let err = within(10, launcher.launch(spec)).await.unwrap_err();
    match &err {
        LaunchError::Throttled {
            id: eid, attempts, ..
        } => {
            assert_eq!(eid, &id);
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert!(err.is_retryable());
    let chain = runbox_dispatcher::error_chain(&err);
    assert!(
        chain.contains("RunJob projects/p/locations/us-central1/jobs/runbox"),
        "{chain}"
    );
    assert_eq!(fake.calls().len(), 3);
    assert_eq!(launcher.running(), 0, "a failed launch frees its slot");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_refusals_are_not_retried() {
    let fake = FakeJobs::default();
    fake.refuse([Status::invalid_argument("bad override")]);
    let launcher = CloudRunLauncher::connect(settings(&serve(fake.clone()).await))
        .await
        .expect("launcher");
    let err = within(10, launcher.launch(spec(Duration::from_secs(5))))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::Spawn {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 1);
}

/// Asserts that 20 sorted call times follow a budget of 600 a minute with
/// no burst: one call per 100 ms. A time is taken when the server handles a
/// call, a little after the limiter let it go, so single gaps jitter; what
/// must hold is that no 10 consecutive calls (9 intervals, 900 ms at the
/// budget) come within 800 ms, and all 20 span at least 1.8 s.
fn assert_paced<T>(times: &[T], what: &str)
where
    T: Copy + std::ops::Sub<Output = Duration> + std::fmt::Debug,
{
    assert_eq!(times.len(), 20, "{what}");
    for w in times.windows(10) {
        let span = w[9] - w[0];
        assert!(
            span >= Duration::from_millis(800),
            "{what}: 10 calls within {span:?}: {times:?}"
        );
    }
    let span = times[19] - times[0];
    assert!(
        span >= Duration::from_millis(1800),
        "{what}: 20 calls in {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runjob_calls_are_paced_to_the_budget() {
    let fake = FakeJobs::default();
    let mut settings = settings(&serve(fake.clone()).await);
    settings.runjob_per_minute = 600;
    settings.runjob_burst = 1;
    let launcher = Arc::new(CloudRunLauncher::connect(settings).await.expect("launcher"));
    let launches = (0..20).map(|_| {
        let launcher = launcher.clone();
        async move { launcher.launch(spec(Duration::from_secs(5))).await }
    });
    for result in within(30, futures::future::join_all(launches)).await {
        result.expect("launch");
    }
    let mut times: Vec<Instant> = fake.calls().iter().map(|c| c.at).collect();
    times.sort();
    assert_eq!(times.len(), 20);
    assert_paced(&times, "RunJob calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn launches_beyond_the_running_cap_wait_for_a_release() {
    let fake = FakeJobs::default();
    let mut settings = settings(&serve(fake.clone()).await);
    settings.max_running = 2;
    let launcher = Arc::new(CloudRunLauncher::connect(settings).await.expect("launcher"));
    let first = spec(Duration::from_secs(5));
    let first_id: ExecutionId = first.execution_id.clone();
    within(10, launcher.launch(first)).await.expect("first");
    within(10, launcher.launch(spec(Duration::from_secs(5))))
        .await
        .expect("second");
    let mut third = tokio::spawn({
        let launcher = launcher.clone();
        async move { launcher.launch(spec(Duration::from_secs(5))).await }
    });
    // The third launch queues for a slot: no RunJob goes out for it.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
    assert!(early.is_err(), "the third launch did not wait for a slot");
    assert_eq!(fake.calls().len(), 2);
    launcher.release(&first_id);
    within(10, third)
        .await
        .expect("third task")
        .expect("third launch after a release");
    assert_eq!(fake.calls().len(), 3);
    assert_eq!(launcher.running(), 2);
}

// ---------------------------------------------------------------------------
// Against the Cloud Run emulator.

const PARENT: &str = "projects/runbox-test/locations/europe-west1";
const EXECUTOR_IMAGE: &str = "europe-docker.pkg.dev/runbox-test/runbox/executor:test";

/// The emulator, the launcher fixture, and the directory holding the store.
struct Emulated {
    fixture: Fixture,
    emulator: Emulator,
    endpoint: String,
    dir: tempfile::TempDir,
}

/// Starts the emulator (mapping the executor image to the built
/// `runbox-executor`, with a clean environment), creates two job templates
/// — `runbox` whose executors use an embedded store in a fresh directory,
/// `runbox-broken` whose executors get an unusable configuration (the gcp
/// backend without a bucket) — and a launcher for each.
async fn emulated(tune: impl Fn(&mut CloudRunSettings)) -> Emulated {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let store = LocalStore::open(&home).expect("open the embedded store");
    let config = EmulatorConfig::default()
        .image(
            EXECUTOR_IMAGE,
            [embedded::binary("runbox-executor").display().to_string()],
        )
        .inherit_env(false)
        .kill_grace(Duration::from_millis(500));
    let emulator = within(
        10,
        Emulator::start("127.0.0.1:0".parse().expect("address"), config),
    )
    .await
    .expect("start the emulator");
    let endpoint = emulator.endpoint();
    let home = home.display().to_string();
    create_job(
        &endpoint,
        "runbox",
        &[
            ("RUNBOX_BACKEND", "local"),
            ("RUNBOX_HOME", &home),
            ("RUNBOX_KILL_GRACE_MS", "300"),
        ],
    )
    .await;
    create_job(
        &endpoint,
        "runbox-broken",
        &[("RUNBOX_BACKEND", "gcp"), ("RUNBOX_HOME", &home)],
    )
    .await;
    let launcher = |job: &str| {
        let mut settings = CloudRunSettings::new(format!("{PARENT}/jobs/{job}"));
        settings.endpoint = CloudRunEndpoint::emulator(&endpoint);
        settings.runjob_per_minute = 6000;
        settings.runjob_burst = 100;
        tune(&mut settings);
        CloudRunLauncher::connect(settings)
    };
    let fixture = Fixture {
        launcher: Arc::new(launcher("runbox").await.expect("launcher")),
        failing: Arc::new(launcher("runbox-broken").await.expect("failing launcher")),
        store: Arc::new(store),
        scratch,
    };
    Emulated {
        fixture,
        emulator,
        endpoint,
        dir,
    }
}

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).expect("endpoint");
    within(10, endpoint.connect())
        .await
        .expect("connect to the emulator")
}

/// Creates a job template running the executor image with `env`, one task,
/// no retries (a retried task would run the command again).
async fn create_job(endpoint: &str, id: &str, env: &[(&str, &str)]) {
    runbox_tests::cloud_run::create_executor_job(endpoint, PARENT, id, EXECUTOR_IMAGE, env).await;
}

/// One `#[tokio::test]` per property of the suite, each with its own emulator.
macro_rules! properties {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $property() {
            let emulated = emulated(|_| {}).await;
            suite::$property(&emulated.fixture).await;
            within(10, emulated.emulator.shutdown()).await.expect("emulator shutdown");
        }
    )*};
}

mod conformance {
    use super::*;

    properties!(
        launch_runs_to_success,
        failing_executor_reports_failure,
        state_follows_the_execution,
        cancel_stops_a_running_execution,
        unknown_execution_is_unknown,
    );
}

/// The whole suite on one emulator and one pair of launchers.
#[tokio::test(flavor = "multi_thread")]
async fn run_all_on_one_emulator() {
    let emulated = emulated(|_| {}).await;
    suite::run_all(&emulated.fixture).await;
    within(10, emulated.emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// Cloud Run's own account of a failed task reaches `ended()`.
#[tokio::test(flavor = "multi_thread")]
async fn failure_message_is_the_execution_condition() {
    let emulated = emulated(|_| {}).await;
    let fixture = &emulated.fixture;
    let id = suite::write_request(fixture, "true").await;
    let spec = LaunchSpec {
        execution_id: id.clone(),
        timeout: Duration::from_secs(10),
        traceparent: None,
        store_token: None,
    };
    within(10, fixture.failing.launch(spec))
        .await
        .expect("launch");
    let ended = within(30, fixture.failing.ended(&id)).await;
    assert!(!ended.succeeded);
    assert!(ended.message.contains("exit code 64"), "{}", ended.message);
    within(10, emulated.emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// With a budget of 600 RunJob calls a minute and no burst, 20 launches
/// reach the emulator 100 ms apart, as its executions' create times show.
#[tokio::test(flavor = "multi_thread")]
async fn runjob_rate_is_kept_against_the_emulator() {
    let emulated = emulated(|s| {
        s.runjob_per_minute = 600;
        s.runjob_burst = 1;
    })
    .await;
    let fixture = &emulated.fixture;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(suite::write_request(fixture, "true").await);
    }
    let started = Instant::now();
    let launches = ids.iter().map(|id| {
        fixture.launcher.launch(LaunchSpec {
            execution_id: id.clone(),
            timeout: Duration::from_secs(30),
            traceparent: None,
            store_token: None,
        })
    });
    for result in within(30, futures::future::join_all(launches)).await {
        result.expect("launch");
    }
    let launched_in = started.elapsed();
    assert!(
        launched_in >= Duration::from_millis(1850),
        "20 launches at 600/min took {launched_in:?}"
    );
    for id in &ids {
        let ended = within(30, fixture.launcher.ended(id)).await;
        assert!(ended.succeeded, "{id}: {ended:?}");
        fixture.launcher.release(id);
    }
    let mut executions = ExecutionsClient::new(channel(&emulated.endpoint).await);
    let listed = within(
        10,
        executions.list_executions(ListExecutionsRequest {
            parent: format!("{PARENT}/jobs/runbox"),
            page_size: 100,
            ..Default::default()
        }),
    )
    .await
    .expect("ListExecutions")
    .into_inner();
    let mut created: Vec<Duration> = listed
        .executions
        .iter()
        .map(|e| {
            let t = e.create_time.as_ref().expect("create_time");
            Duration::new(t.seconds as u64, t.nanos as u32)
        })
        .collect();
    assert_eq!(created.len(), 20);
    created.sort();
    assert_paced(&created, "RunJob create times");
    within(10, emulated.emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// `Client::from_config` with `RUNBOX_LAUNCHER=cloudrun` runs commands
/// through the emulator: the launcher is chosen from configuration, and a
/// session's state carries from one execution to the next.
#[tokio::test(flavor = "multi_thread")]
async fn client_runs_commands_through_cloud_run() {
    let emulated = emulated(|_| {}).await;
    let client = cloud_run_client(&emulated).await;
    let session = client.session("via-cloud-run").expect("session");
    let first = within(30, session.exec("cd /tmp && export GREETING=hi"))
        .await
        .expect("first command");
    assert_eq!(
        first.exec_status(),
        runbox_dispatcher::ExecStatus::Succeeded
    );
    let second = within(30, session.exec("echo $GREETING from $(pwd)"))
        .await
        .expect("second command");
    assert_eq!(second.stdout, "hi from /tmp\n");
    within(10, client.shutdown()).await;
    within(10, emulated.emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// An executor killed mid-command through the Cloud Run path: the execution
/// fails, WaitOperation reports it, and the caller gets LOST carrying Cloud
/// Run's condition message, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn killed_executor_is_lost_with_the_cloud_run_condition() {
    let emulated = emulated(|_| {}).await;
    let client = cloud_run_client(&emulated).await;
    let session = client.session("crash").expect("session");
    // The command cannot see the task's process (its own PID namespace):
    // it says it runs, and the test kills the executor.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut started = runbox_tests::pipes::Announcements::new(dir.path(), "started");
    let exec = session.exec(format!(
        "echo $RUNBOX_EXECUTION_ID > {}; sleep 30",
        started.shell_path()
    ));
    let running = tokio::spawn(exec.into_future());
    let execution = within(60, started.next()).await;
    runbox_tests::procs::kill_executor(&execution);
    let r = within(60, running)
        .await
        .expect("task")
        .expect("a LOST result, not an error");
    assert_eq!(
        r.exec_status(),
        runbox_dispatcher::ExecStatus::Lost,
        "{r:?}"
    );
    assert!(
        r.message.contains("Task") && r.message.contains("failed"),
        "the message carries Cloud Run's condition: {}",
        r.message
    );
    let after = within(30, session.exec("echo alive"))
        .await
        .expect("next command");
    assert_eq!(after.stdout, "alive\n");
    within(10, client.shutdown()).await;
    within(10, emulated.emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// A client chosen from configuration with `RUNBOX_LAUNCHER=cloudrun` on the
/// emulator's `runbox` job (whose executors use the embedded store in the
/// emulator's directory).
async fn cloud_run_client(emulated: &Emulated) -> runbox_dispatcher::Client {
    let home = emulated.dir.path().join("home");
    let config = embedded::config(&home).with_launcher(LauncherConfig::CloudRun(CloudRunConfig {
        endpoint: Some(emulated.endpoint.clone()),
        ..CloudRunConfig::new(format!("{PARENT}/jobs/runbox"))
    }));
    config.validate().expect("valid configuration");
    within(10, runbox_dispatcher::Client::from_config(config))
        .await
        .expect("client")
}

/// `RUNBOX_CLOUD_RUN_CONTAINER` names the container RunJob's overrides
/// apply to, as a template with a sidecar needs.
#[tokio::test(flavor = "multi_thread")]
async fn the_configured_container_is_named_in_the_overrides() {
    let fake = FakeJobs::default();
    let address = serve(fake.clone()).await;
    let config = CloudRunConfig {
        endpoint: Some(address.clone()),
        container: Some("executor".to_owned()),
        ..CloudRunConfig::new(JOB)
    };
    let mut configured = CloudRunSettings::from_config(&config);
    assert_eq!(configured.container, "executor");
    configured.runjob_burst = 10;
    let launcher = CloudRunLauncher::connect(configured)
        .await
        .expect("launcher");
    within(10, launcher.launch(spec(Duration::from_secs(5))))
        .await
        .expect("launch");
    let calls = fake.calls();
    let overrides = calls[0].request.overrides.as_ref().expect("overrides");
    assert_eq!(overrides.container_overrides.len(), 1);
    assert_eq!(overrides.container_overrides[0].name, "executor");
    // Unset, the overrides name none (the template's only container).
    let launcher = CloudRunLauncher::connect(settings(&address))
        .await
        .expect("launcher");
    within(10, launcher.launch(spec(Duration::from_secs(5))))
        .await
        .expect("launch");
    let calls = fake.calls();
    assert_eq!(
        calls[1]
            .request
            .overrides
            .as_ref()
            .unwrap()
            .container_overrides[0]
            .name,
        ""
    );
}

/// Against a server that answers WaitOperation UNIMPLEMENTED (the emulator
/// with `wait_operation(false)`), an executor that dies without a result is
/// still seen to end, through GetExecution, long before any deadline; and
/// a job whose container is not the one the overrides name is refused.
#[tokio::test(flavor = "multi_thread")]
async fn without_wait_operation_the_end_comes_from_get_execution() {
    let config = EmulatorConfig::default()
        .image(
            EXECUTOR_IMAGE,
            [embedded::binary("runbox-executor").display().to_string()],
        )
        .inherit_env(false)
        .wait_operation(false)
        .kill_grace(Duration::from_millis(500));
    let emulator = within(
        10,
        Emulator::start("127.0.0.1:0".parse().expect("address"), config),
    )
    .await
    .expect("start the emulator");
    let endpoint = emulator.endpoint();
    // The gcp backend without a bucket: the executor exits 64, no result.
    create_job(&endpoint, "broken", &[("RUNBOX_BACKEND", "gcp")]).await;
    let mut settings = CloudRunSettings::new(format!("{PARENT}/jobs/broken"));
    settings.endpoint = CloudRunEndpoint::emulator(&endpoint);
    settings.get_execution_interval = Duration::from_millis(200);
    settings.get_execution_max_interval = Duration::from_secs(1);
    let launcher = CloudRunLauncher::connect(settings.clone())
        .await
        .expect("launcher");
    let spec = LaunchSpec {
        execution_id: InstanceId::random().next_execution_id(),
        timeout: Duration::from_secs(3600),
        traceparent: None,
        store_token: None,
    };
    let id = spec.execution_id.clone();
    within(10, launcher.launch(spec)).await.expect("launch");
    let ended = within(20, launcher.ended(&id)).await;
    assert!(!ended.succeeded);
    assert!(ended.message.contains("exit code 64"), "{}", ended.message);
    assert_eq!(launcher.running(), 0, "the running slot is freed");

    settings.container = "sidecar".to_owned();
    let launcher = CloudRunLauncher::connect(settings).await.expect("launcher");
    let err = within(
        10,
        launcher.launch(LaunchSpec {
            execution_id: InstanceId::random().next_execution_id(),
            timeout: Duration::from_secs(5),
            traceparent: None,
            store_token: None,
        }),
    )
    .await
    .expect_err("overrides of a container the job lacks");
    assert!(
        runbox_dispatcher::error_chain(&err).contains("no container named")
            && runbox_dispatcher::error_chain(&err).contains("sidecar"),
        "{}",
        runbox_dispatcher::error_chain(&err)
    );
    within(10, emulator.shutdown())
        .await
        .expect("emulator shutdown");
}
