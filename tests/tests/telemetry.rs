//! Traces and metrics as an operator receives them: the real binaries export
//! over OTLP/gRPC to a real receiver in this process (the collector services
//! of `opentelemetry-proto`), on the embedded backend and on the emulator
//! stack with the Cloud Run emulator launcher.
//!
//! The caller's trace context comes in as `TRACEPARENT`, the way an agent
//! that traces its own work hands it on; the test's "own span" is then the
//! root every runbox span descends from.

mod otlp_receiver;

use std::collections::BTreeMap;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CreateJobRequest, jobs_client::JobsClient,
};
use opentelemetry_proto::tonic::metrics::v1::metric;
use otlp_receiver::{Received, Receiver, attributes};
use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::store::{LocalStore, Store};
use runbox_core::{ExecutionId, layout};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::Gate;
use serde_json::Value;

const OTEL_VARS: [&str; 7] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "TRACEPARENT",
];

const PARENT: &str = "projects/runbox-test/locations/europe-west1";
const IMAGE: &str = "runbox-executor:telemetry";

/// A fresh trace id and span id for the test's own (remote) span, and its
/// `traceparent`.
fn test_parent() -> (String, String, String) {
    let trace = random_hex(32);
    let span = random_hex(16);
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

fn random_hex(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < len {
        // Each RandomState has fresh keys.
        let h = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        out.push_str(&format!("{:016x}", h | 1));
    }
    out.truncate(len);
    out
}

/// `runbox ARGS` on the embedded backend, exporting to `receiver` (when
/// given) under the caller's `traceparent`; no OTEL variable of this
/// process leaks in.
fn command(
    cli: &Cli,
    args: &[&str],
    receiver: Option<&Receiver>,
    traceparent: Option<&str>,
) -> tokio::process::Command {
    let mut cmd = cli.command(args);
    for var in OTEL_VARS {
        cmd.env_remove(var);
    }
    if let Some(receiver) = receiver {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    }
    if let Some(tp) = traceparent {
        cmd.env("TRACEPARENT", tp);
    }
    cmd
}

fn by_name<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

/// Every span of the command's trace, once the executor's and the routed
/// event's are in (the executor exports after its result, possibly after
/// the CLI has exited).
/// Runs `cmd` to its end (within 120 s) and returns what it printed.
async fn run(cmd: &mut tokio::process::Command) -> std::process::Output {
    within(120, cmd.output()).await.expect("run runbox")
}

async fn command_trace(receiver: &Receiver, trace: &str) -> Vec<Received> {
    let spans = receiver
        .wait_spans(60, |spans| {
            let names: Vec<&str> = spans
                .iter()
                .filter(|s| s.trace_id == trace)
                .map(|s| s.name.as_str())
                .collect();
            [
                "runbox",
                "exec",
                "execution",
                "result write",
                "event routed",
            ]
            .iter()
            .all(|n| names.contains(n))
        })
        .await;
    spans.into_iter().filter(|s| s.trace_id == trace).collect()
}

/// The parent links every traced command has, whatever its launcher.
fn assert_links(spans: &[Received], root_span: &str) {
    let parent_of = |name: &str| by_name(spans, name).parent_span_id.clone();
    let id_of = |name: &str| by_name(spans, name).span_id.clone();
    assert_eq!(parent_of("runbox"), root_span, "{spans:#?}");
    assert_eq!(parent_of("exec"), id_of("runbox"));
    assert_eq!(parent_of("queue wait"), id_of("exec"));
    assert_eq!(parent_of("launch"), id_of("exec"));
    assert_eq!(parent_of("wait for completion"), id_of("exec"));
    // The executor continues the launch span, across the process boundary.
    assert_eq!(parent_of("execution"), id_of("launch"));
    assert_eq!(parent_of("result write"), id_of("execution"));
    // The event joins the trace where the result was written.
    assert_eq!(parent_of("event routed"), id_of("result write"));
    let caller = by_name(spans, "exec");
    let executor = by_name(spans, "execution");
    assert_eq!(caller.service, "runbox");
    assert_eq!(executor.service, "runbox-executor");
    assert_ne!(caller.pid, executor.pid, "two processes");
    assert_eq!(
        by_name(spans, "event routed").pid,
        caller.pid,
        "the notifier is the caller's"
    );
    let lag: f64 = by_name(spans, "event routed").attributes["notification.lag_ms"]
        .parse()
        .expect("a lag in ms");
    assert!((0.0..60_000.0).contains(&lag), "lag {lag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_exec_is_one_trace_across_processes_with_metrics() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let (trace, root, header) = test_parent();
    let out = run(&mut command(
        &cli,
        &["exec", "-s", "t1", "--", "true"],
        Some(&receiver),
        Some(&header),
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let spans = command_trace(&receiver, &trace).await;
    assert_links(&spans, &root);
    for name in ["restore", "run", "save"] {
        assert_eq!(
            by_name(&spans, name).parent_span_id,
            by_name(&spans, "execution").span_id,
            "{name}"
        );
    }
    assert!(spans.iter().all(|s| s.status != 2), "no error: {spans:#?}");
    assert_eq!(by_name(&spans, "exec").attributes["status"], "SUCCEEDED");
    // Not one span of the exporter's own transport.
    let all = receiver.spans();
    assert!(
        all.iter().all(|s| s.trace_id == trace),
        "spans outside the command's trace: {all:#?}"
    );

    // The CLI flushed its metrics before exiting.
    let durations = receiver.wait_metric(30, "runbox.exec.duration").await;
    let points: Vec<BTreeMap<String, String>> = durations
        .iter()
        .filter(|m| m.service == "runbox")
        .flat_map(|m| match &m.metric.data {
            Some(metric::Data::Histogram(h)) => h
                .data_points
                .iter()
                .map(|p| attributes(&p.attributes))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(
        points
            .iter()
            .any(|a| a.get("status").map(String::as_str) == Some("SUCCEEDED")
                && a.get("launcher").map(String::as_str) == Some("local")),
        "{points:?}"
    );
    let names: Vec<String> = receiver
        .metrics()
        .iter()
        .map(|m| m.metric.name.clone())
        .collect();
    for name in ["runbox.events.delivered", "runbox.waiters.pending"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

/// The CLI opens its one connection at start-up, while its command runs,
/// and its traces and metrics share it: the exit's flush then pays for no
/// handshake. The executor connects only once its command has ended (its
/// one export follows the result), so no handshake competes with the
/// command; it too uses one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_connects_once_the_executor_after_its_command() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let (trace, _, header) = test_parent();
    let mut gate = Gate::new(cli.home.path(), "gate");
    let mut started = runbox_tests::pipes::Announcements::new(cli.home.path(), "started");
    let script = format!(
        "echo $RUNBOX_EXECUTION_ID > {}; read line < {}",
        started.shell_path(),
        gate.shell_path()
    );
    let mut cmd = command(
        &cli,
        &["exec", "-s", "conn", "--", &script],
        Some(&receiver),
        Some(&header),
    );
    // Spans and metrics leave the CLI only at its exit, whatever the batch
    // settings say: a connection it holds before then is the start-up's.
    let child = cmd.spawn().expect("start runbox");
    let cli_pid = i64::from(child.id().expect("pid"));

    // The CLI connected while the command runs; the executor, which is past
    // its whole start-up once the command speaks, did not.
    receiver.wait_connections(60, 1).await;
    within(60, started.next()).await;
    assert_eq!(
        receiver.connections(),
        1,
        "only the CLI is connected while the command runs"
    );
    assert!(
        receiver.spans().iter().all(|s| s.pid != cli_pid),
        "the CLI exported before its exit: {:#?}",
        receiver.spans()
    );
    gate.release(1).await;
    let out = within(120, child.wait_with_output())
        .await
        .expect("run runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let spans = command_trace(&receiver, &trace).await;
    let pids: std::collections::BTreeSet<i64> = spans.iter().map(|s| s.pid).collect();
    assert!(pids.contains(&cli_pid), "{pids:?}");
    assert_eq!(pids.len(), 2, "the CLI and one executor: {pids:?}");
    receiver.wait_metric(30, "runbox.exec.duration").await;
    assert_eq!(
        receiver.connections(),
        2,
        "one connection per process, whatever it exported"
    );
}

/// A one-shot executor records its spans until its result is written and
/// sends them then: a command its timeout killed still has the executor's
/// spans, the ones that ended with the kill included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_its_timeout_still_has_its_executors_spans() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let (trace, root, header) = test_parent();
    let out = run(&mut command(
        &cli,
        &["exec", "-s", "to", "--timeout", "1", "--", "sleep 30"],
        Some(&receiver),
        Some(&header),
    ))
    .await;
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let spans = command_trace(&receiver, &trace).await;
    assert_links(&spans, &root);
    assert_eq!(by_name(&spans, "exec").attributes["status"], "TIMED_OUT");
    let execution = by_name(&spans, "execution");
    for name in ["restore", "run"] {
        let span = by_name(&spans, name);
        assert_eq!(span.parent_span_id, execution.span_id, "{name}");
        assert_eq!(span.pid, execution.pid, "{name}");
    }
    // The command ran its whole second before the kill ended its span.
    let run = by_name(&spans, "run");
    let ran_ms = (run.end_unix_nano - run.start_unix_nano) / 1_000_000;
    assert!(ran_ms >= 1000, "run lasted {ran_ms} ms");
}

/// An endpoint that accepts connections and never answers costs each
/// process's exit at most the export timeout, and says so on stderr; the
/// command's own outcome is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_delays_the_exit_by_at_most_the_export_timeout() {
    // The kernel completes each connection; nothing reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let cli = Cli::new();
    let started = std::time::Instant::now();
    let out = run(
        command(&cli, &["exec", "-s", "s", "--", "echo hi"], None, None)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", silent.local_addr().expect("address")),
            )
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(
        text(&out.stderr).contains("runbox: export traces to http://127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
    assert!(took >= std::time::Duration::from_millis(500), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_and_a_lost_one_are_errors() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let (trace, _, header) = test_parent();
    let out = run(&mut command(
        &cli,
        &["exec", "-s", "f", "--", "exit 3"],
        Some(&receiver),
        Some(&header),
    ))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let spans = command_trace(&receiver, &trace).await;
    let exec = by_name(&spans, "exec");
    assert_eq!(exec.status, 2, "{exec:?}");
    assert_eq!(exec.attributes["status"], "FAILED");
    assert_eq!(by_name(&spans, "execution").status, 2);
    assert_eq!(by_name(&spans, "result write").status, 2);

    // LOST: the executor is killed while its command runs; the caller's
    // own result write (on the executor's behalf) continues the trace.
    let (trace, _, header) = test_parent();
    let mut started = runbox_tests::pipes::Announcements::new(cli.home.path(), "started");
    let script = format!(
        "echo $RUNBOX_EXECUTION_ID > {}; sleep 30",
        started.shell_path()
    );
    let run = command(
        &cli,
        &["exec", "-s", "l", "--", &script],
        Some(&receiver),
        Some(&header),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn runbox");
    let execution = within(60, started.next()).await;
    runbox_tests::procs::kill_executor(&execution);
    let out = within(60, run.wait_with_output()).await.expect("runbox");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    // The CLI flushed before it exited: its spans are all in.
    let spans: Vec<Received> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    let exec = by_name(&spans, "exec");
    assert_eq!(exec.status, 2);
    assert_eq!(exec.attributes["status"], "LOST");
    // The killed executor exported nothing; the caller wrote the LOST
    // result during the completion wait, with that span's context in the
    // result's metadata, so its completion event (which the CLI may exit
    // before it routes) would join the command's trace.
    let wait = by_name(&spans, "wait for completion");
    assert_eq!(wait.parent_span_id, exec.span_id);
    let store = LocalStore::open(cli.home.path()).expect("open the store");
    let id = ExecutionId::new(execution.trim()).expect("execution id");
    let meta = store
        .head(&layout::result(&id))
        .await
        .expect("the LOST result");
    assert_eq!(
        meta.metadata.get("traceparent").map(String::as_str),
        Some(format!("00-{trace}-{}-01", wait.span_id).as_str()),
        "{spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_of_their_command() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let (trace, _, header) = test_parent();
    let out = run(command(
        &cli,
        &["exec", "-s", "j", "--", "true"],
        Some(&receiver),
        Some(&header),
    )
    .env("RUNBOX_LOG", "debug")
    .env("RUNBOX_LOG_FORMAT", "json")
    .env("GOOGLE_CLOUD_PROJECT", "proj-1"))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let written = lines
        .iter()
        .find(|l| l["message"] == "request written")
        .unwrap_or_else(|| panic!("a `request written` line in {stderr}"));
    assert_eq!(
        written["logging.googleapis.com/trace"],
        format!("projects/proj-1/traces/{trace}").as_str(),
        "{written}"
    );
    let span_id = written["logging.googleapis.com/spanId"]
        .as_str()
        .expect("a span id");
    let spans = command_trace(&receiver, &trace).await;
    assert_eq!(
        span_id,
        by_name(&spans, "exec").span_id,
        "the line's span is the exec span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_nothing_is_sent() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    // Two commands in one session: the second starts only once the first
    // one's executor has exited (it holds the session's lock until then),
    // so whatever the first executor would have sent has been sent.
    for _ in 0..2 {
        let out = run(
            command(&cli, &["exec", "-s", "quiet", "--", "true"], None, None).env(
                "TRACEPARENT",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(receiver.requests(), 0);
    // The result carries no trace of its own when nothing is traced.
}

/// The OTLP headers can hold credentials (Cloud Trace's bearer token, an
/// API key): commands never see them, nor the trace context, and a
/// `TRACEPARENT` built to smuggle a header or a line through is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_see_no_telemetry_credentials_and_bad_context_is_refused() {
    let receiver = Receiver::start().await;
    let cli = Cli::new();
    let secret = "Bearer ya29.do-not-leak-4c1e";
    let evil = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nauthorization: x";
    let out = run(command(
        &cli,
        &[
            "exec",
            "-s",
            "a",
            "--",
            "env; cat /proc/$PPID/environ 2>/dev/null | tr '\\0' '\\n'",
        ],
        Some(&receiver),
        Some(evil),
    )
    .env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        format!("authorization={}", secret.replace(' ', "%20")),
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let seen = text(&out.stdout);
    assert!(
        !seen.contains("ya29"),
        "a command saw the credentials: {seen}"
    );
    assert!(
        !seen.contains("OTEL_"),
        "a command saw telemetry settings: {seen}"
    );
    assert!(!seen.contains("TRACEPARENT"), "{seen}");
    // The command still ran and was traced, in a trace of its own.
    let spans = receiver
        .wait_spans(60, |s| {
            s.iter().any(|s| s.name == "event routed") && s.iter().any(|s| s.name == "runbox")
        })
        .await;
    let runbox = by_name(&spans, "runbox");
    assert_ne!(runbox.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        runbox.parent_span_id, "",
        "no remote parent from a bad header"
    );
}

async fn create_job(endpoint: &str, env: &BTreeMap<String, String>) {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).expect("endpoint");
    let mut jobs = JobsClient::new(within(10, endpoint.connect()).await.expect("connect"));
    let job = runbox_tests::cloud_run::executor_job(IMAGE, &env.iter().collect::<Vec<_>>());
    within(
        10,
        jobs.create_job(CreateJobRequest {
            parent: PARENT.to_owned(),
            job: Some(job),
            job_id: "runbox".to_owned(),
            validate_only: false,
        }),
    )
    .await
    .expect("CreateJob");
}

/// The emulator stack: fake-gcs-server publishes the result's finalize
/// event to the Pub/Sub emulator, the Cloud Run emulator runs the executor
/// from the job template (whose environment names the OTLP endpoint, as a
/// deployment's would) with `TRACEPARENT` in RunJob's overrides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_exec_on_the_emulator_stack_is_one_trace() {
    let receiver = Receiver::start().await;
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let config =
        EmulatorConfig::default().image(IMAGE, [binary("runbox-executor").display().to_string()]);
    let run = within(
        10,
        Emulator::start("127.0.0.1:0".parse().expect("address"), config),
    )
    .await
    .expect("start the Cloud Run emulator");
    let mut template = emu.env();
    template.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        receiver.endpoint().to_owned(),
    );
    create_job(&run.endpoint(), &template).await;

    let (trace, root, header) = test_parent();
    let mut cmd = tokio::process::Command::new(binary("runbox"));
    cmd.args(["exec", "-s", "cr", "--", "echo hi; exit 4"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .envs(emu.env())
        .env("RUNBOX_LAUNCHER", "cloudrun")
        .env("RUNBOX_CLOUD_RUN_JOB", format!("{PARENT}/jobs/runbox"))
        .env("RUNBOX_CLOUD_RUN_ENDPOINT", run.endpoint())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("TRACEPARENT", &header)
        .kill_on_drop(true);
    let out = within(120, cmd.output()).await.expect("run runbox");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let spans = command_trace(&receiver, &trace).await;
    assert_links(&spans, &root);
    let id_of = |name: &str| by_name(&spans, name).span_id.clone();
    assert_eq!(by_name(&spans, "RunJob").parent_span_id, id_of("launch"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "admission wait" && s.parent_span_id == id_of("launch")),
        "{spans:#?}"
    );
    assert_eq!(by_name(&spans, "exec").status, 2, "FAILED is an error");
    assert_eq!(by_name(&spans, "exec").attributes["status"], "FAILED");
    let services: std::collections::BTreeSet<(String, i64)> =
        spans.iter().map(|s| (s.service.clone(), s.pid)).collect();
    assert!(services.len() >= 2, "{services:?}");
    let durations = receiver.wait_metric(30, "runbox.exec.duration").await;
    assert!(
        durations.iter().any(|m| match &m.metric.data {
            Some(metric::Data::Histogram(h)) => h.data_points.iter().any(|p| {
                let a = attributes(&p.attributes);
                a.get("status").map(String::as_str) == Some("FAILED")
                    && a.get("launcher").map(String::as_str) == Some("cloudrun")
            }),
            _ => false,
        }),
        "{durations:?}"
    );
}

/// `runbox serve`: a `traceparent` request header on `POST .../exec` makes
/// the command part of the caller's trace, executor included; the spans are
/// flushed when it stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_continues_the_callers_trace_header() {
    let receiver = Receiver::start().await;
    let mut serve = runbox_tests::serve::Serve::start(
        "127.0.0.1:0",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())],
    )
    .await
    .expect("serve");
    let (trace, root, header) = test_parent();
    let response = runbox_tests::serve::request(
        &serve.addr,
        "POST",
        "/v1/sessions/s1/exec",
        &[
            ("content-type", "application/json"),
            ("traceparent", &header),
        ],
        br#"{"command":"true"}"#,
    )
    .await
    .expect("POST exec");
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    serve.terminate();
    let (status, _) = serve.wait().await;
    assert!(status.success(), "{status:?}");
    let spans = receiver
        .wait_spans(60, |spans| {
            ["exec", "execution", "event routed"]
                .iter()
                .all(|n| spans.iter().any(|s| s.trace_id == trace && s.name == *n))
        })
        .await;
    let spans: Vec<Received> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(by_name(&spans, "exec").parent_span_id, root);
    assert_eq!(
        by_name(&spans, "execution").parent_span_id,
        by_name(&spans, "launch").span_id
    );
}

/// A request published on the request topic with a `traceparent`
/// attribute (Google's Python client publishing) lands in the publisher's
/// trace: `runbox serve`'s `topic request` span is the child of the
/// publisher's span, the command's spans descend from it, and the
/// completion carries the trace on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_request_continues_the_publishers_trace() {
    let receiver = Receiver::start().await;
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/serve_topic.py");
    let python = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&script)
            .args(args)
            .env(
                "PUBSUB_EMULATOR_HOST",
                emu.pubsub_host.as_deref().expect("pubsub"),
            )
            .kill_on_drop(true);
        cmd
    };
    let out = within(
        120,
        python(&["setup", &emu.project, "tr", "10", "ordered"]).output(),
    )
    .await
    .expect("python3 setup");
    assert!(out.status.success(), "setup: {}", text(&out.stderr));

    let mut env = emu.env();
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_REQUESTS_SUBSCRIPTION".into(), "tr-requests".into());
    env.insert("RUNBOX_COMPLETIONS_TOPIC".into(), "tr-completions".into());
    env.insert("RUNBOX_REQUESTS_ACK_DEADLINE_SECS".into(), "10".into());
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        receiver.endpoint().to_owned(),
    );
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut serve = runbox_tests::serve::Serve::start("127.0.0.1:0", &vars)
        .await
        .expect("serve");

    let (trace, root, header) = test_parent();
    let out = within(
        120,
        python(&["traced", &emu.project, "tr", &header]).output(),
    )
    .await
    .expect("python3 traced");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let carried = stdout
        .lines()
        .find_map(|l| l.strip_prefix("completion-traceparent "))
        .unwrap_or_default();
    assert_eq!(
        carried.split('-').nth(1),
        Some(trace.as_str()),
        "the completion carries the publisher's trace: {stdout}"
    );
    serve.terminate();
    let (status, _) = serve.wait().await;
    assert!(status.success(), "{status:?}");

    let spans = receiver
        .wait_spans(60, |spans| {
            ["topic request", "exec", "execution", "event routed"]
                .iter()
                .all(|n| spans.iter().any(|s| s.trace_id == trace && s.name == *n))
        })
        .await;
    let ours: Vec<Received> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
    let request = by_name(&ours, "topic request");
    assert_eq!(request.parent_span_id, root, "{ours:#?}");
    let exec = by_name(&ours, "exec");
    assert_eq!(exec.parent_span_id, request.span_id, "{ours:#?}");
    let execution = by_name(&ours, "execution");
    assert_ne!(execution.pid, exec.pid, "the executor is its own process");
}
