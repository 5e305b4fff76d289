//! Log lines for Cloud Logging: with `RUNBOX_LOG_FORMAT=json`, or on Cloud
//! Run (`K_SERVICE`, `CLOUD_RUN_JOB`), every line the real binaries write on
//! stderr is one JSON object with Cloud Logging's fields.

use runbox_core::ids::InstanceId;
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, within};
use serde_json::Value;

const SEVERITIES: [&str; 4] = ["DEBUG", "INFO", "WARNING", "ERROR"];

/// Every line of `stderr` as JSON, each checked for the fields every line
/// has; no trace fields, as no span context exists yet.
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    let stderr = text(stderr);
    assert!(!stderr.is_empty(), "no log lines at all");
    stderr
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nall:\n{stderr}"));
            let severity = value["severity"].as_str().unwrap_or_default();
            assert!(
                SEVERITIES.contains(&severity),
                "severity {severity:?}: {line}"
            );
            assert!(value["message"].is_string(), "no message: {line}");
            let time = value["time"].as_str().unwrap_or_default();
            assert!(
                time.ends_with('Z') && time.contains('T') && time.len() >= 20,
                "time {time:?}: {line}"
            );
            assert!(
                value.get("logging.googleapis.com/trace").is_none()
                    && value.get("logging.googleapis.com/spanId").is_none(),
                "a trace without a span context: {line}"
            );
            value
        })
        .collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// `runbox exec` and the executor it starts: the dispatcher's lines about the
/// execution name it, and the executor's lines (relayed by the dispatcher
/// as the message of its own) name the execution and, once the request is
/// read, the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_lines_are_json_with_execution_and_session_ids() {
    let cli = Cli::new();
    let out = within(
        120,
        cli.command(&["exec", "-s", "logs-demo", "--", "true"])
            .env("RUNBOX_LOG", "debug")
            .env("RUNBOX_LOG_FORMAT", "json")
            .output(),
    )
    .await
    .expect("run runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out.stderr);
    let written = lines
        .iter()
        .find(|l| message(l) == "request written")
        .expect("a `request written` line");
    let execution = written["execution_id"]
        .as_str()
        .expect("execution_id")
        .to_owned();
    assert_eq!(
        written["logging.googleapis.com/labels"]["execution_id"],
        execution.as_str()
    );
    assert_eq!(written["severity"], "DEBUG");
    // The executor's own lines, relayed as `executor: {json}`.
    let executor: Vec<Value> = lines
        .iter()
        .filter_map(|l| message(l).strip_prefix("executor: "))
        .map(|inner| serde_json::from_str(inner).expect("the executor's line is JSON"))
        .collect();
    assert!(!executor.is_empty(), "no executor lines relayed");
    assert!(
        executor
            .iter()
            .all(|l| l["execution_id"] == execution.as_str()),
        "{executor:?}"
    );
    assert!(
        executor
            .iter()
            .any(|l| l["session_id"] == "logs-demo" && message(l) == "workspace restored"),
        "{executor:?}"
    );
}

/// On a Cloud Run service (`K_SERVICE`) lines are JSON without being asked;
/// `RUNBOX_LOG_FORMAT=text` still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_service_defaults_to_json_and_text_overrides() {
    let cli = Cli::new();
    let out = within(
        120,
        cli.command(&["exec", "--", "true"])
            .env("RUNBOX_LOG", "debug")
            .env_remove("RUNBOX_LOG_FORMAT")
            .env("K_SERVICE", "runbox-serve")
            .output(),
    )
    .await
    .expect("run runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out.stderr);
    assert!(lines.iter().any(|l| message(l) == "launched"), "{lines:?}");

    let out = within(
        120,
        cli.command(&["exec", "--", "true"])
            .env("RUNBOX_LOG", "debug")
            .env("RUNBOX_LOG_FORMAT", "text")
            .env("K_SERVICE", "runbox-serve")
            .output(),
    )
    .await
    .expect("run runbox");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("request written"), "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "text asked for, JSON written: {stderr}"
    );
}

/// A Cloud Run job's executor (`CLOUD_RUN_JOB`) writes JSON, its errors
/// included: here the request does not exist, so it writes a REJECTED
/// result and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_job_executor_lines_are_json() {
    let home = tempfile::tempdir().unwrap();
    let id = InstanceId::random().next_execution_id();
    let out = within(
        60,
        tokio::process::Command::new(binary("runbox-executor"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLOUD_RUN_JOB", "runbox")
            .env("RUNBOX_LOG", "debug")
            .env("RUNBOX_BACKEND", "local")
            .env("RUNBOX_HOME", home.path())
            .env("RUNBOX_EXECUTION_ID", id.as_str())
            .output(),
    )
    .await
    .expect("run the executor");
    let lines = json_lines(&out.stderr);
    assert!(
        lines.iter().any(|l| l["execution_id"] == id.as_str()),
        "{}",
        text(&out.stderr)
    );

    // Bad configuration, reported before anything runs: still JSON, at ERROR.
    let out = within(
        60,
        tokio::process::Command::new(binary("runbox-executor"))
            .env_clear()
            .env("CLOUD_RUN_JOB", "runbox")
            .env("RUNBOX_BACKEND", "nowhere")
            .env("RUNBOX_EXECUTION_ID", id.as_str())
            .output(),
    )
    .await
    .expect("run the executor");
    assert_eq!(out.status.code(), Some(64));
    let lines = json_lines(&out.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l["severity"] == "ERROR" && message(l).contains("RUNBOX_BACKEND")),
        "{lines:?}"
    );
}

/// The CLI's own messages (here a configuration error) are JSON lines too,
/// and a format runbox does not know is reported, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_messages_follow_the_format_and_a_bad_format_is_reported() {
    let cli = Cli::new();
    let out = within(
        60,
        cli.command(&["exec", "--", "true"])
            .env("RUNBOX_LOG_FORMAT", "json")
            .env("RUNBOX_BACKEND", "nowhere")
            .output(),
    )
    .await
    .expect("run runbox");
    assert_ne!(out.status.code(), Some(0));
    let lines = json_lines(&out.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l["severity"] == "ERROR" && message(l).contains("RUNBOX_BACKEND")),
        "{lines:?}"
    );

    let out = within(
        120,
        cli.command(&["exec", "--", "echo", "ok"])
            .env("RUNBOX_LOG_FORMAT", "xml")
            .output(),
    )
    .await
    .expect("run runbox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    assert!(
        text(&out.stderr).contains("RUNBOX_LOG_FORMAT=\"xml\" is neither `text` nor `json`"),
        "{}",
        text(&out.stderr)
    );
}
