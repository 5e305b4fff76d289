//! `runbox doctor` as an operator runs it: the real binary against the
//! emulator stack (Google's Pub/Sub emulator, fake-gcs-server with its
//! notifications, runbox's Cloud Run emulator) and on the embedded backend.

use std::collections::BTreeMap;
use std::process::Output;

use bytes::Bytes;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, CreateJobRequest, EnvVar, ExecutionTemplate, Job, TaskTemplate, env_var,
    jobs_client::JobsClient, task_template::Retries,
};
use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::store::list_all;
use runbox_core::{ObjectMeta, PutOptions, Store};
use runbox_tests::cli::text;
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use serde_json::Value;

const PARENT: &str = "projects/runbox-test/locations/europe-west1";
const IMAGE: &str = "europe-docker.pkg.dev/runbox-test/runbox/executor:test";
/// A value that must never appear in the doctor's output.
const SECRET: &str = "sk-live-do-not-print-7f3a";

async fn emulators() -> Emulators {
    within(120, Emulators::start()).await.expect("emulators")
}

async fn cloud_run() -> Emulator {
    let config =
        EmulatorConfig::default().image(IMAGE, [binary("runbox-executor").display().to_string()]);
    within(
        10,
        Emulator::start("127.0.0.1:0".parse().expect("address"), config),
    )
    .await
    .expect("start the Cloud Run emulator")
}

/// Creates job `id` running the executor image with `env`; `retries` as
/// given (`None`: Cloud Run's default of 3).
async fn create_job(
    endpoint: &str,
    id: &str,
    env: &BTreeMap<String, String>,
    retries: Option<i32>,
) {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).expect("endpoint");
    let mut jobs = JobsClient::new(within(10, endpoint.connect()).await.expect("connect"));
    let job = Job {
        template: Some(ExecutionTemplate {
            task_count: 1,
            template: Some(TaskTemplate {
                containers: vec![Container {
                    image: IMAGE.to_owned(),
                    env: env
                        .iter()
                        .map(|(name, value)| EnvVar {
                            name: name.clone(),
                            values: Some(env_var::Values::Value(value.clone())),
                        })
                        .collect(),
                    ..Default::default()
                }],
                retries: retries.map(Retries::MaxRetries),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    within(
        10,
        jobs.create_job(CreateJobRequest {
            parent: PARENT.to_owned(),
            job: Some(job),
            job_id: id.to_owned(),
            validate_only: false,
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("CreateJob {id}: {e}"));
}

/// Runs `runbox doctor --json` with exactly `env` (and PATH, HOME).
async fn doctor(env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(binary("runbox"));
    cmd.arg("doctor")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .envs(env)
        .kill_on_drop(true);
    within(120, cmd.output()).await.expect("run runbox doctor")
}

/// The JSON checklist, and each check by name.
fn checklist(out: &Output) -> (Value, BTreeMap<String, Value>) {
    let value: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let checks = value["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (c["check"].as_str().unwrap().to_owned(), c.clone()))
        .collect();
    (value, checks)
}

fn status(checks: &BTreeMap<String, Value>, name: &str) -> String {
    checks[name]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every object of the store, name and generation.
async fn objects(store: &dyn Store) -> Vec<(String, i64)> {
    let all: Vec<ObjectMeta> = within(30, list_all(store, "")).await.expect("list");
    all.into_iter().map(|m| (m.name, m.generation)).collect()
}

/// The whole stack with the Cloud Run launcher passes; nothing it probed is
/// left in the bucket, another session's objects are untouched, and a
/// secret in the job's env is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_on_the_emulator_stack_with_cloud_run() {
    let emu = emulators().await;
    let run = cloud_run().await;
    let mut template_env = emu.env();
    template_env.insert("THIRD_PARTY_API_KEY".into(), SECRET.into());
    create_job(&run.endpoint(), "runbox", &template_env, Some(0)).await;
    let store = emu.store();
    // Another session's file, which the doctor must neither read nor change.
    within(
        30,
        store.put(
            "sessions/victim/workspace/notes.txt",
            Bytes::from_static(b"private"),
            PutOptions::create(),
        ),
    )
    .await
    .expect("put");
    let before = objects(&store).await;

    let mut env = emu.env();
    env.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
    env.insert(
        "RUNBOX_CLOUD_RUN_JOB".into(),
        format!("{PARENT}/jobs/runbox"),
    );
    env.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), run.endpoint());
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(0), "{value:#}");
    assert_eq!(value["ok"], true);
    for name in ["store", "events", "job"] {
        assert_eq!(status(&checks, name), "pass", "{name}: {value:#}");
    }
    assert!(
        checks["events"]["detail"]
            .as_str()
            .unwrap()
            .contains("pubsub:"),
        "{value:#}"
    );
    // The emulator has no IAM: said, not failed.
    assert_eq!(status(&checks, "permissions"), "skip");
    assert!(
        checks["permissions"]["detail"]
            .as_str()
            .unwrap()
            .contains("not offered by this endpoint"),
        "{value:#}"
    );
    assert_eq!(status(&checks, "otlp"), "skip");
    assert!(!text(&out.stdout).contains(SECRET));
    assert!(!text(&out.stderr).contains(SECRET));
    assert_eq!(
        objects(&store).await,
        before,
        "the doctor left or changed objects"
    );

    // The same as a human reads it.
    let out = doctor(&env, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  ok    store"), "{stdout}");
    assert!(stdout.contains("  ok    events"), "{stdout}");
    assert!(stdout.contains("  ok    job"), "{stdout}");
    assert!(stdout.contains("3 passed, 0 failed, 2 skipped"), "{stdout}");
    within(10, run.shutdown()).await.expect("emulator shutdown");
}

/// Without the notifications topic, the events line fails and says how to
/// create the topic and the bucket's notification; the store still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_the_events_line() {
    let emu = emulators().await;
    let mut env = emu.env();
    env.insert("RUNBOX_NOTIFICATIONS_TOPIC".into(), "no-such-topic".into());
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(1), "{value:#}");
    assert_eq!(value["ok"], false);
    assert_eq!(status(&checks, "store"), "pass", "{value:#}");
    assert_eq!(status(&checks, "events"), "fail", "{value:#}");
    let detail = checks["events"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("no-such-topic") && detail.contains("does not exist"),
        "{detail}"
    );
    let fix = checks["events"]["fix"].as_str().unwrap();
    assert!(
        fix.contains("gcloud pubsub topics create no-such-topic"),
        "{fix}"
    );
    assert!(fix.contains("--object-prefix=results/"), "{fix}");

    let out = doctor(&env, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  FAIL  events"), "{stdout}");
    assert!(stdout.contains("        fix: create the topic"), "{stdout}");
}

/// A job template that does not exist, or one that retries failed tasks,
/// fails the job line with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_retrying_job_template_fails_the_job_line() {
    let emu = emulators().await;
    let run = cloud_run().await;
    let mut env = emu.env();
    env.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
    env.insert(
        "RUNBOX_CLOUD_RUN_JOB".into(),
        format!("{PARENT}/jobs/missing"),
    );
    env.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), run.endpoint());
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(1), "{value:#}");
    assert_eq!(status(&checks, "store"), "pass", "{value:#}");
    assert_eq!(status(&checks, "events"), "pass", "{value:#}");
    assert_eq!(status(&checks, "job"), "fail", "{value:#}");
    assert!(
        checks["job"]["detail"]
            .as_str()
            .unwrap()
            .contains("jobs/missing does not exist"),
        "{value:#}"
    );
    assert!(
        checks["job"]["fix"]
            .as_str()
            .unwrap()
            .contains("--max-retries 0"),
        "{value:#}"
    );

    // Cloud Run's default of 3 retries, and executors on another bucket.
    let mut other = emu.env();
    other.insert("RUNBOX_BUCKET".into(), "someone-elses-bucket".into());
    create_job(&run.endpoint(), "retrying", &other, None).await;
    env.insert(
        "RUNBOX_CLOUD_RUN_JOB".into(),
        format!("{PARENT}/jobs/retrying"),
    );
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(1), "{value:#}");
    let detail = checks["job"]["detail"].as_str().unwrap();
    assert!(detail.contains("max_retries is 3"), "{detail}");
    assert!(detail.contains("bucket someone-elses-bucket"), "{detail}");
    let fix = checks["job"]["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("RUNBOX_BUCKET={}", emu.bucket)),
        "{fix}"
    );
    within(10, run.shutdown()).await.expect("emulator shutdown");
}

/// On the embedded backend only the store and the events apply; an
/// unreachable OTLP endpoint fails its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_checks_store_and_events() {
    let home = tempfile::tempdir().unwrap();
    let store = runbox_core::store::LocalStore::open(home.path()).expect("store");
    within(
        10,
        store.put(
            "sessions/victim/workspace/notes.txt",
            Bytes::from_static(b"private"),
            PutOptions::create(),
        ),
    )
    .await
    .expect("put");
    let before = objects(&store).await;
    let env = BTreeMap::from([("RUNBOX_HOME".to_owned(), home.path().display().to_string())]);
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(0), "{value:#}");
    assert_eq!(status(&checks, "store"), "pass");
    assert_eq!(status(&checks, "events"), "pass");
    assert!(
        checks["events"]["detail"]
            .as_str()
            .unwrap()
            .contains("inotify:"),
        "{value:#}"
    );
    for name in ["job", "permissions", "otlp"] {
        assert_eq!(status(&checks, name), "skip", "{name}: {value:#}");
    }
    assert_eq!(
        objects(&store).await,
        before,
        "the doctor left or changed objects"
    );

    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = env;
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(1), "{value:#}");
    assert_eq!(status(&checks, "otlp"), "fail");

    // A home that is a file: the store fails and the events are skipped.
    let file = home.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let env = BTreeMap::from([("RUNBOX_HOME".to_owned(), file.display().to_string())]);
    let out = doctor(&env, &["--json"]).await;
    let (value, checks) = checklist(&out);
    assert_eq!(out.status.code(), Some(1), "{value:#}");
    assert_eq!(status(&checks, "store"), "fail");
    assert_eq!(status(&checks, "events"), "skip");
}
