//! Shared test harness: an in-process emulator on 127.0.0.1:0 and Google's
//! tonic clients connected to it. Every await goes through [`within`].

#![allow(dead_code)] // each test binary uses a different part of it

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    Container, CreateJobRequest, EnvVar, Execution, ExecutionTemplate, Job, RunJobRequest,
    TaskTemplate, env_var, executions_client::ExecutionsClient, jobs_client::JobsClient,
    task_template::Retries,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    Operation, WaitOperationRequest, operations_client::OperationsClient,
};
use prost::Message;
use runbox_cloudrun_emulator::{Config, EXECUTION_TYPE_URL, Emulator};
use tonic::transport::{Channel, Endpoint};

pub const PARENT: &str = "projects/test-project/locations/us-central1";
/// Mapped to `bash -c`: a job's first arg is its script.
pub const BASH_IMAGE: &str = "example.test/tools/bash:5";
/// How long any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("a test step did not finish within {STEP:?}"),
    }
}

pub struct Harness {
    pub emulator: Emulator,
    pub jobs: JobsClient<Channel>,
    pub executions: ExecutionsClient<Channel>,
    pub operations: OperationsClient<Channel>,
}

/// Starts an emulator that maps [`BASH_IMAGE`] to `bash -c`, with a short
/// kill grace so the SIGKILL path is exercised quickly.
pub async fn start() -> Harness {
    let config = Config::default()
        .image(BASH_IMAGE, ["bash", "-c"])
        .kill_grace(Duration::from_millis(500));
    let emulator = within(Emulator::start("127.0.0.1:0".parse().unwrap(), config))
        .await
        .unwrap();
    let channel = connect(&emulator.endpoint()).await;
    Harness {
        jobs: JobsClient::new(channel.clone()),
        executions: ExecutionsClient::new(channel.clone()),
        operations: OperationsClient::new(channel),
        emulator,
    }
}

pub async fn connect(endpoint: &str) -> Channel {
    within(
        Endpoint::from_shared(endpoint.to_owned())
            .unwrap()
            .connect(),
    )
    .await
    .unwrap()
}

pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        values: Some(env_var::Values::Value(value.to_owned())),
    }
}

/// A job running `script` in bash, with no retries unless `max_retries` says.
pub fn bash_job(script: &str, env: Vec<EnvVar>, max_retries: i32) -> Job {
    Job {
        template: Some(ExecutionTemplate {
            template: Some(TaskTemplate {
                containers: vec![Container {
                    image: BASH_IMAGE.to_owned(),
                    args: vec![script.to_owned()],
                    env,
                    ..Default::default()
                }],
                retries: Some(Retries::MaxRetries(max_retries)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn job_name(id: &str) -> String {
    format!("{PARENT}/jobs/{id}")
}

impl Harness {
    pub async fn create_job(&mut self, id: &str, job: Job) -> Job {
        let op = within(self.jobs.create_job(CreateJobRequest {
            parent: PARENT.to_owned(),
            job: Some(job),
            job_id: id.to_owned(),
            validate_only: false,
        }))
        .await
        .expect("CreateJob")
        .into_inner();
        assert!(op.done, "CreateJob's operation is done at once");
        let Some(
            googleapis_tonic_google_longrunning::google::longrunning::operation::Result::Response(
                any,
            ),
        ) = op.result
        else {
            panic!("CreateJob's operation has no response: {op:?}")
        };
        Job::decode(any.value.as_slice()).unwrap()
    }

    /// RunJob, returning the (not yet done) operation.
    pub async fn run(&mut self, request: RunJobRequest) -> Operation {
        within(self.jobs.run_job(request))
            .await
            .expect("RunJob")
            .into_inner()
    }

    /// Waits for an operation with WaitOperation until it is done.
    pub async fn wait(&mut self, name: &str) -> Operation {
        within(async {
            loop {
                let op = self
                    .operations
                    .wait_operation(WaitOperationRequest {
                        name: name.to_owned(),
                        timeout: Some(prost_types::Duration {
                            seconds: 20,
                            nanos: 0,
                        }),
                    })
                    .await
                    .expect("WaitOperation")
                    .into_inner();
                if op.done {
                    return op;
                }
            }
        })
        .await
    }

    /// RunJob on `job` with no overrides and wait for it.
    pub async fn run_and_wait(&mut self, job: &str) -> Operation {
        let op = self
            .run(RunJobRequest {
                name: job_name(job),
                ..Default::default()
            })
            .await;
        self.wait(&op.name).await
    }
}

/// The Execution packed in an operation's metadata.
pub fn metadata_execution(op: &Operation) -> Execution {
    let any = op.metadata.as_ref().expect("operation metadata");
    assert_eq!(any.type_url, EXECUTION_TYPE_URL);
    Execution::decode(any.value.as_slice()).unwrap()
}

/// Reads a file a task wrote, as trimmed text.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Proves process `pid` has ended, without polling: a pidfd becomes readable
/// when its process terminates (and cannot be opened once it is reaped).
pub async fn assert_process_gone(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return;
    }
    let fd = fd as libc::c_int;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A detached thread, not spawn_blocking: a runtime would wait for a
    // stuck blocking task at shutdown, and the test must fail, not hang.
    std::thread::spawn(move || {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the fd is ours and closed right after.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        // SAFETY: closing the fd we opened, once.
        unsafe { libc::close(fd) };
        let _ = tx.send(ready == 1);
    });
    assert!(within(rx).await.unwrap(), "process {pid} is still running");
}

/// Creates a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Reads one line from the FIFO at `path`: a task signals it has started by
/// writing to it. Blocking open/read on a detached thread (see above).
pub async fn read_fifo(path: &Path) -> String {
    let path = path.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&path));
    });
    within(rx)
        .await
        .unwrap()
        .expect("reading the fifo")
        .trim()
        .to_owned()
}
