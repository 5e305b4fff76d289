//! The `runbox-cloudrun-emulator` binary: its first stdout line gives the
//! bound address, it serves Google's clients, writes task output to
//! `--log-dir`, stops on SIGTERM, and rejects bad arguments with exit 64.

mod common;

use std::process::Stdio;

use common::*;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, CreateJobRequest, ExecutionTemplate, GetJobRequest, Job, RunJobRequest,
    TaskTemplate, env_var, jobs_client::JobsClient, task_template::Retries,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    WaitOperationRequest, operations_client::OperationsClient,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runbox-cloudrun-emulator");

#[tokio::test]
async fn binary_prints_its_address_and_runs_jobs() {
    let logs = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--image",
            "example.test/sh:1=sh -c",
            "--log-dir",
        ])
        .arg(logs.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(lines.next_line())
        .await
        .unwrap()
        .expect("a first stdout line");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);

    let channel = connect(&format!("http://{addr}")).await;
    let mut jobs = JobsClient::new(channel.clone());
    let mut operations = OperationsClient::new(channel);
    let job = Job {
        template: Some(ExecutionTemplate {
            template: Some(TaskTemplate {
                containers: vec![Container {
                    image: "example.test/sh:1".to_owned(),
                    args: vec!["echo hello from $CLOUD_RUN_EXECUTION".to_owned()],
                    ..Default::default()
                }],
                retries: Some(Retries::MaxRetries(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    within(jobs.create_job(CreateJobRequest {
        parent: PARENT.to_owned(),
        job: Some(job),
        job_id: "hello".to_owned(),
        validate_only: false,
    }))
    .await
    .unwrap();
    let op = within(jobs.run_job(RunJobRequest {
        name: job_name("hello"),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let done = within(operations.wait_operation(WaitOperationRequest {
        name: op.name,
        timeout: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(done.done);
    let execution = metadata_execution(&done);
    assert_eq!(execution.succeeded_count, 1);
    let id = execution.name.rsplit('/').next().unwrap();
    assert_eq!(
        read(&logs.path().join(id).join("task0.stdout")),
        format!("hello from {id}")
    );
    assert!(
        execution.log_uri.starts_with("file://"),
        "{}",
        execution.log_uri
    );

    // SIGTERM stops it cleanly.
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = within(child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// `--job` with `--job-env`: the job exists at start, its container sets
/// the variables, as a deployed template would.
#[tokio::test]
async fn binary_creates_jobs_with_their_env() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--job"])
        .arg(format!("{}=example.test/sh:1", job_name("preset")))
        .args(["--job-env", "RUNBOX_BACKEND=gcp", "--job-env", "EMPTY="])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(lines.next_line()).await.unwrap().expect("address");
    let addr = first.strip_prefix("listening on ").expect("address line");
    let mut jobs = JobsClient::new(connect(&format!("http://{addr}")).await);
    let job = within(jobs.get_job(GetJobRequest {
        name: job_name("preset"),
    }))
    .await
    .unwrap()
    .into_inner();
    let container = &job.template.unwrap().template.unwrap().containers[0];
    let env: Vec<(String, Option<env_var::Values>)> = container
        .env
        .iter()
        .map(|v| (v.name.clone(), v.values.clone()))
        .collect();
    assert_eq!(
        env,
        vec![
            (
                "RUNBOX_BACKEND".to_owned(),
                Some(env_var::Values::Value("gcp".to_owned()))
            ),
            (
                "EMPTY".to_owned(),
                Some(env_var::Values::Value(String::new()))
            ),
        ]
    );
}

#[tokio::test]
async fn binary_rejects_bad_arguments_with_exit_64() {
    for args in [
        vec!["--listen", "not-an-address"],
        vec!["--listen", "127.0.0.1:0", "--image", "no-equals-sign"],
        vec!["--listen", "127.0.0.1:0", "--image", "img="],
        vec!["--listen", "127.0.0.1:0", "--job", "no-equals-sign"],
        vec!["--listen", "127.0.0.1:0", "--job", "jobs/j=img"],
        vec!["--listen", "127.0.0.1:0", "--job-env", "NO_EQUALS"],
        vec!["--listen", "127.0.0.1:0", "--job-env", "BAD NAME=1"],
        vec!["--listen", "127.0.0.1:0", "--start-delay", "soon"],
        vec![],
    ] {
        let output = within(
            Command::new(BIN)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        assert!(!output.stderr.is_empty());
    }
}
