//! The emulator's model of Cloud Run's container start (`--start-delay`)
//! and its RunJob counter (log, stats file, in-process read-out).

mod common;

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::*;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CreateJobRequest, RunJobRequest, jobs_client::JobsClient,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    WaitOperationRequest, operations_client::OperationsClient,
};
use runbox_cloudrun_emulator::{Config, Emulator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runbox-cloudrun-emulator");

const DELAY: Duration = Duration::from_millis(1500);

/// The task records when it really started; that is at least the delay
/// after the RunJob call, and the execution's start time says the same.
/// Every RunJob call is counted, a failed one too, in the stats file and
/// in the log.
#[tokio::test]
async fn binary_delays_each_start_and_counts_run_job_calls() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--image",
            &format!("{BASH_IMAGE}=bash -c"),
            "--start-delay",
            "1500ms",
            "--stats-file",
        ])
        .arg(&stats)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(lines.next_line()).await.unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap().to_owned();
    let channel = connect(&format!("http://{addr}")).await;
    let mut jobs = JobsClient::new(channel.clone());
    let mut operations = OperationsClient::new(channel);
    assert!(!stats.exists(), "no RunJob yet, no stats file");

    let started_file = dir.path().join("started");
    let script = format!("date +%s.%N > {}", started_file.display());
    within(jobs.create_job(CreateJobRequest {
        parent: PARENT.to_owned(),
        job: Some(bash_job(&script, vec![], 0)),
        job_id: "delayed".to_owned(),
        validate_only: false,
    }))
    .await
    .unwrap();

    let called = SystemTime::now();
    let op = within(jobs.run_job(RunJobRequest {
        name: job_name("delayed"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let done = within(operations.wait_operation(WaitOperationRequest {
        name: op.name,
        timeout: Some(prost_types::Duration {
            seconds: 25,
            nanos: 0,
        }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(done.done);
    let execution = metadata_execution(&done);
    assert_eq!(execution.succeeded_count, 1, "{execution:?}");

    let started: f64 = std::fs::read_to_string(&started_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let called = called
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started - called >= DELAY.as_secs_f64(),
        "the task started {:.3} s after RunJob, sooner than the {DELAY:?} delay",
        started - called
    );
    let span = |t: &prost_types::Timestamp| t.seconds as f64 + f64::from(t.nanos) / 1e9;
    let created = span(execution.create_time.as_ref().unwrap());
    let start = span(execution.start_time.as_ref().unwrap());
    assert!(
        start - created >= DELAY.as_secs_f64(),
        "start_time {start} is not {DELAY:?} after create_time {created}"
    );
    assert_eq!(
        std::fs::read_to_string(&stats).unwrap().trim(),
        r#"{"runJobCalls": 1}"#
    );

    // A RunJob on a job that does not exist is still a call.
    let missing = within(jobs.run_job(RunJobRequest {
        name: job_name("missing"),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(
        std::fs::read_to_string(&stats).unwrap().trim(),
        r#"{"runJobCalls": 2}"#
    );

    child.start_kill().unwrap();
    within(child.wait()).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(log.contains("run_job_calls=1"), "{log}");
    assert!(log.contains("run_job_calls=2"), "{log}");
}

/// In process: the counter is readable from the `Emulator`, and a
/// cancellation during the start delay ends the execution without running
/// its task.
#[tokio::test]
async fn cancelling_during_the_start_delay_never_runs_the_task() {
    use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
        CancelExecutionRequest, executions_client::ExecutionsClient,
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .image(BASH_IMAGE, ["bash", "-c"])
        .start_delay(Duration::from_secs(30));
    let emulator = within(Emulator::start("127.0.0.1:0".parse().unwrap(), config))
        .await
        .unwrap();
    let channel = connect(&emulator.endpoint()).await;
    let mut jobs = JobsClient::new(channel.clone());
    let mut executions = ExecutionsClient::new(channel.clone());
    let mut operations = OperationsClient::new(channel);
    let marker = dir.path().join("ran");
    within(jobs.create_job(CreateJobRequest {
        parent: PARENT.to_owned(),
        job: Some(bash_job(&format!("touch {}", marker.display()), vec![], 0)),
        job_id: "slow".to_owned(),
        validate_only: false,
    }))
    .await
    .unwrap();
    assert_eq!(emulator.run_job_calls(), 0);
    let op = within(jobs.run_job(RunJobRequest {
        name: job_name("slow"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(emulator.run_job_calls(), 1);
    let name = metadata_execution(&op).name;
    within(executions.cancel_execution(CancelExecutionRequest {
        name,
        ..Default::default()
    }))
    .await
    .unwrap();
    // Well within the 30 s delay: the cancellation ended the wait.
    let done = within(operations.wait_operation(WaitOperationRequest {
        name: op.name,
        timeout: Some(prost_types::Duration {
            seconds: 25,
            nanos: 0,
        }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(done.done);
    assert_eq!(metadata_execution(&done).cancelled_count, 1);
    assert!(!marker.exists(), "the task ran although it was cancelled");
    emulator.shutdown().await.unwrap();
}
