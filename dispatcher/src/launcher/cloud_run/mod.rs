//! The Cloud Run launcher: every execution is a RunJob on one pre-created
//! job template, through the Cloud Run Admin API v2 over gRPC.
//!
//! - **Launch**: RunJob with overrides — container env `RUNBOX_EXECUTION_ID`
//!   (and `TRACEPARENT`), task count 1, task timeout = the command's timeout
//!   plus a margin, so the executor reports TIMED_OUT itself before Cloud Run
//!   kills the task. RunJob answers with a long-running operation whose
//!   metadata is the new Execution: the launcher keeps execution id →
//!   (Execution name, operation name).
//! - **Admission** ([`admission`]): at most `max_running` executions
//!   at once and `runjob_per_minute` RunJob calls per minute; launches over
//!   either limit wait in arrival order. RESOURCE_EXHAUSTED and UNAVAILABLE
//!   are retried with backoff and jitter within a budget, then reported as
//!   [`LaunchError::Throttled`] (retryable).
//! - **End**: `google.longrunning.Operations/WaitOperation` on the RunJob
//!   operation — a wait held by the server, not polling — in a loop until
//!   the operation is done, then the Execution's terminal condition.
//! - **State**: GetExecution; **cancel**: CancelExecution (Cloud Run sends
//!   SIGTERM, the executor writes a CANCELLED result).
//!
//! The job template must run `runbox-executor` with the store's settings in
//! its env (`RUNBOX_BACKEND`, `RUNBOX_BUCKET`, ...), one task, and
//! `max_retries: 0` (overrides cannot set it, and a retried task would run
//! the command twice). In production every call carries Application Default
//! Credentials, through the same `gcloud-auth` token source the Pub/Sub and
//! Storage clients use, over TLS to `run.googleapis.com:443`; with
//! `RUNBOX_CLOUD_RUN_ENDPOINT` set, calls go in plaintext, without
//! credentials, to that emulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use gcloud_auth::project::Config as AuthConfig;
use gcloud_auth::token_source::TokenSource;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CancelExecutionRequest, Condition, EnvVar, Execution, GetExecutionRequest, RunJobRequest,
    condition, env_var, executions_client::ExecutionsClient, jobs_client::JobsClient,
    run_job_request,
};
use googleapis_tonic_google_longrunning::google::longrunning::{
    Operation, WaitOperationRequest, operation, operations_client::OperationsClient,
};
use prost::Message;
use runbox_core::ExecutionId;
use runbox_core::config::CloudRunConfig;
use tokio::time::Instant;
use tonic::codegen::http::{self, HeaderValue, header::AUTHORIZATION};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

pub mod admission;

use self::admission::{RateLimiter, RetryPolicy, RunningSlots, Slot};
use crate::launcher::{Ended, ExecutionState, LaunchError, LaunchSpec, Launcher, Observed};

/// Cloud Run's Admin API, reached over TLS.
pub const CLOUD_RUN_URL: &str = "https://run.googleapis.com";
const CLOUD_RUN_DOMAIN: &str = "run.googleapis.com";
/// The OAuth scope the Admin API asks for.
const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];
/// Cloud Run's longest task timeout (168 h).
const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(168 * 3600);
/// The type of RunJob's operation metadata and response.
const EXECUTION_TYPE: &str = "google.cloud.run.v2.Execution";
/// WaitOperation calls sharing one HTTP/2 connection: below the 100
/// concurrent streams servers commonly allow.
const WAITS_PER_CONNECTION: usize = 80;
/// The header carrying a call's routing parameters to Google's front end.
const ROUTING_HEADER: &str = "x-goog-request-params";

/// Where the Admin API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudRunEndpoint {
    /// Cloud Run itself: TLS, Application Default Credentials on every call.
    Google,
    /// An emulator: plaintext, no credentials. `http://host:port`.
    Emulator(String),
}

impl CloudRunEndpoint {
    /// The emulator at `host:port` or `http://host:port`.
    pub fn emulator(address: &str) -> Self {
        if address.contains("://") {
            Self::Emulator(address.trim_end_matches('/').to_owned())
        } else {
            Self::Emulator(format!("http://{address}"))
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::Google => CLOUD_RUN_URL,
            Self::Emulator(url) => url,
        }
    }
}

/// How the Cloud Run launcher runs. [`CloudRunSettings::from_config`] reads
/// the `RUNBOX_*` variables; the other fields keep their defaults there.
#[derive(Clone, Debug)]
pub struct CloudRunSettings {
    /// The job template, `projects/P/locations/L/jobs/J` (`RUNBOX_CLOUD_RUN_JOB`).
    pub job: String,
    /// Where the API is (`RUNBOX_CLOUD_RUN_ENDPOINT`).
    pub endpoint: CloudRunEndpoint,
    /// RunJob calls per minute, on average (`RUNBOX_RUNJOB_PER_MINUTE`).
    pub runjob_per_minute: u32,
    /// RunJob calls allowed at once after a quiet period. Default: a tenth
    /// of the per-minute budget (at least 1), so a burst starts at once while
    /// a sustained load stays within the quota.
    pub runjob_burst: u32,
    /// Executions running at once (`RUNBOX_MAX_RUNNING`).
    pub max_running: usize,
    /// Retries of RunJob refused with RESOURCE_EXHAUSTED or UNAVAILABLE.
    pub retry: RetryPolicy,
    /// Added to the command's timeout to make the task timeout: room for the
    /// executor to kill the command (TERM, kill grace, KILL) and write its
    /// TIMED_OUT result. Default 15 s: below the dispatcher's deadline grace
    /// (30 s), so a hung executor has been stopped by Cloud Run, with a
    /// condition saying so, by the time reconciliation asks.
    pub task_timeout_margin: Duration,
    /// The container the overrides apply to; empty (default) for the job's
    /// only container.
    pub container: String,
    /// Deadline of each RunJob, GetExecution and CancelExecution call.
    pub rpc_timeout: Duration,
    /// How long one WaitOperation call asks the server to hold on before it
    /// answers with the operation still running (then it is called again).
    pub wait_timeout: Duration,
}

impl CloudRunSettings {
    /// Defaults for the job template `job`, against Cloud Run itself.
    pub fn new(job: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            endpoint: CloudRunEndpoint::Google,
            runjob_per_minute: 60,
            runjob_burst: 6,
            max_running: 1000,
            retry: RetryPolicy::default(),
            task_timeout_margin: Duration::from_secs(15),
            container: String::new(),
            rpc_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(60),
        }
    }

    /// The settings the configuration names (`RUNBOX_CLOUD_RUN_*`,
    /// `RUNBOX_RUNJOB_PER_MINUTE`, `RUNBOX_MAX_RUNNING`); the rest keep their
    /// defaults.
    pub fn from_config(config: &CloudRunConfig) -> Self {
        let mut settings = Self::new(config.job.clone());
        if let Some(address) = &config.endpoint {
            settings.endpoint = CloudRunEndpoint::emulator(address);
        }
        settings.runjob_per_minute = config.runjob_per_minute.max(1);
        settings.runjob_burst = (config.runjob_per_minute / 10).max(1);
        settings.max_running = usize::try_from(config.max_running)
            .unwrap_or(usize::MAX)
            .max(1);
        settings
    }
}

/// A Cloud Run call that failed, naming the call and its resource.
#[derive(Debug, thiserror::Error)]
#[error("{call} {resource}")]
pub struct CallError {
    /// The RPC, e.g. `RunJob`.
    pub call: &'static str,
    /// The resource it addressed.
    pub resource: String,
    /// What the server (or the transport) answered.
    #[source]
    pub status: Status,
}

/// RunJob answered with an operation that names no Execution.
#[derive(Debug, thiserror::Error)]
#[error("RunJob {job} answered operation {operation:?} without an Execution{}", error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
pub struct NoExecution {
    /// The job template.
    pub job: String,
    /// The operation's name.
    pub operation: String,
    /// The operation's error, when it ended at once with one.
    pub error: Option<String>,
}

/// Launches executions as Cloud Run job executions.
pub struct CloudRunLauncher {
    settings: CloudRunSettings,
    location: String,
    jobs: JobsClient<Transport>,
    executions: ExecutionsClient<Transport>,
    waits: Vec<OperationsClient<Transport>>,
    next_wait: AtomicUsize,
    limiter: RateLimiter,
    slots: RunningSlots,
    running: DashMap<ExecutionId, Tracked>,
}

/// What is kept about a launched execution until it is released.
struct Tracked {
    execution: String,
    operation: String,
    // Freed early when the platform reports the end, else on release.
    slot: std::sync::Mutex<Option<Slot>>,
}

impl CloudRunLauncher {
    /// A launcher for `settings`. Against Cloud Run this loads Application
    /// Default Credentials (and fails when there are none); the connection
    /// itself is made on the first call.
    pub async fn connect(settings: CloudRunSettings) -> Result<Self, LaunchError> {
        let endpoint = settings.endpoint.url().to_owned();
        let connect_error = |source: StdError| LaunchError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let location = job_location(&settings.job)
            .ok_or_else(|| {
                connect_error(
                    format!(
                        "job {:?} is not a full job name projects/P/locations/L/jobs/J",
                        settings.job
                    )
                    .into(),
                )
            })?
            .to_owned();
        let builder = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| connect_error(e.into()))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let (builder, tokens) = match &settings.endpoint {
            CloudRunEndpoint::Google => {
                let tls = ClientTlsConfig::new()
                    .with_webpki_roots()
                    .domain_name(CLOUD_RUN_DOMAIN);
                let builder = builder
                    .tls_config(tls)
                    .map_err(|e| connect_error(e.into()))?;
                let project = gcloud_auth::project::project()
                    .await
                    .map_err(|e| connect_error(e.into()))?;
                let tokens = gcloud_auth::project::create_token_source_from_project(
                    &project,
                    AuthConfig::default().with_scopes(&SCOPES),
                )
                .await
                .map_err(|e| connect_error(e.into()))?;
                (builder, Some(Arc::<dyn TokenSource>::from(tokens)))
            }
            CloudRunEndpoint::Emulator(url) => {
                if !url.starts_with("http://") {
                    return Err(connect_error(
                        format!("{url}: the emulator endpoint is plaintext (host:port or http://host:port)")
                            .into(),
                    ));
                }
                (builder, None)
            }
        };
        // Each `connect_lazy` is its own HTTP/2 connection, opened on first use.
        let transport = |builder: &Endpoint| Transport {
            channel: builder.connect_lazy(),
            tokens: tokens.clone(),
        };
        let control = transport(&builder);
        // A WaitOperation holds an HTTP/2 stream for up to `wait_timeout`,
        // and servers cap concurrent streams per connection (commonly 100):
        // the waits get connections of their own, so they never queue the
        // RunJob, GetExecution and CancelExecution calls, and enough of them
        // for every running execution to wait at once.
        let wait_connections = settings.max_running.div_ceil(WAITS_PER_CONNECTION).max(1);
        let waits = (0..wait_connections)
            .map(|_| OperationsClient::new(transport(&builder)))
            .collect();
        Ok(Self {
            location,
            jobs: JobsClient::new(control.clone()),
            executions: ExecutionsClient::new(control),
            waits,
            next_wait: AtomicUsize::new(0),
            limiter: RateLimiter::per_minute(settings.runjob_per_minute, settings.runjob_burst),
            slots: RunningSlots::new(settings.max_running),
            running: DashMap::new(),
            settings,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &CloudRunSettings {
        &self.settings
    }

    /// The Cloud Run Execution name of a launched execution, while it is kept.
    pub fn execution_name(&self, id: &ExecutionId) -> Option<String> {
        self.running.get(id).map(|t| t.execution.clone())
    }

    /// Executions holding a running slot now.
    pub fn running(&self) -> usize {
        self.slots.in_use()
    }

    fn run_job_request(&self, spec: &LaunchSpec) -> RunJobRequest {
        let env = |name: &str, value: &str| EnvVar {
            name: name.to_owned(),
            values: Some(env_var::Values::Value(value.to_owned())),
        };
        let mut vars = vec![env("RUNBOX_EXECUTION_ID", spec.execution_id.as_str())];
        if let Some(tp) = &spec.traceparent {
            vars.push(env("TRACEPARENT", tp));
        }
        RunJobRequest {
            name: self.settings.job.clone(),
            overrides: Some(run_job_request::Overrides {
                container_overrides: vec![run_job_request::overrides::ContainerOverride {
                    name: self.settings.container.clone(),
                    // Env is merged into the template's; args stay the template's.
                    env: vars,
                    ..Default::default()
                }],
                task_count: 1,
                timeout: Some(task_timeout(
                    spec.timeout,
                    self.settings.task_timeout_margin,
                )),
            }),
            ..Default::default()
        }
    }

    /// RunJob, paced by the rate limiter, retried while the platform is
    /// over quota or unavailable and the retry budget lasts.
    async fn run_job(
        &self,
        id: &ExecutionId,
        request: RunJobRequest,
    ) -> Result<Operation, LaunchError> {
        let started = Instant::now();
        let mut attempt: u32 = 1;
        loop {
            self.limiter.acquire().await;
            let mut call = tonic::Request::new(request.clone());
            // RunJob's `google.api.routing` annotation extracts only
            // `location` from `name` (`projects/*/locations/{location=*}/**`);
            // an explicit routing annotation replaces the implicit
            // `name=` that the HTTP rule alone would give.
            route(&mut call, &[("location", &self.location)]);
            let status = match self
                .unary(
                    call,
                    |mut c, r| async move { c.run_job(r).await },
                    self.jobs.clone(),
                )
                .await
            {
                Ok(op) => return Ok(op),
                Err(status) => status,
            };
            let error = CallError {
                call: "RunJob",
                resource: self.settings.job.clone(),
                status,
            };
            // Only refusals that mean "not now" are retried. After a
            // DEADLINE_EXCEEDED the execution may well exist, and a second
            // RunJob would run the command twice; an UNAVAILABLE rarely
            // hides an accepted call, and if it does, the executors' write-once
            // result keeps the outcome single (the second finds it written).
            if !matches!(
                error.status.code(),
                Code::ResourceExhausted | Code::Unavailable
            ) {
                return Err(LaunchError::Spawn {
                    id: id.clone(),
                    retryable: false,
                    source: Box::new(error),
                });
            }
            let Some(delay) = self.settings.retry.delay(attempt, started.elapsed()) else {
                return Err(LaunchError::Throttled {
                    id: id.clone(),
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    source: Box::new(error),
                });
            };
            tracing::warn!(
                execution = %id,
                attempt,
                code = ?error.status.code(),
                retry_in_ms = delay.as_millis() as u64,
                "RunJob refused; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One unary call under `rpc_timeout`, enforced on both sides.
    async fn unary<C, Req, Resp, F, Fut>(
        &self,
        mut request: tonic::Request<Req>,
        call: F,
        client: C,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = self.settings.rpc_timeout;
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, call(client, request)).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    async fn get_execution(&self, name: &str) -> Result<Execution, CallError> {
        let mut call = tonic::Request::new(GetExecutionRequest {
            name: name.to_owned(),
        });
        // Executions methods carry no routing annotation: the implicit
        // routing of their HTTP rule (`/v2/{name=projects/*/...}`) applies.
        route(&mut call, &[("name", name)]);
        self.unary(
            call,
            |mut c, r| async move { c.get_execution(r).await },
            self.executions.clone(),
        )
        .await
        .map_err(|status| CallError {
            call: "GetExecution",
            resource: name.to_owned(),
            status,
        })
    }

    /// One server-side wait on the operation.
    async fn wait_operation(&self, name: &str) -> Result<Operation, Status> {
        let wait = self.settings.wait_timeout;
        let mut call = tonic::Request::new(WaitOperationRequest {
            name: name.to_owned(),
            timeout: Some(prost_types::Duration {
                seconds: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        });
        // Cloud Run's service config maps WaitOperation to
        // `/v2/{name=projects/*/locations/*/operations/*}:wait`: `name=` routing.
        route(&mut call, &[("name", name)]);
        // The RPC deadline must outlast the wait the server was asked for.
        let deadline = wait + self.settings.rpc_timeout;
        call.set_timeout(deadline);
        let n = self.next_wait.fetch_add(1, Ordering::Relaxed) % self.waits.len();
        let mut client = self.waits[n].clone();
        match tokio::time::timeout(deadline, client.wait_operation(call)).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "WaitOperation: no answer within {deadline:?}"
            ))),
        }
    }

    /// The end of a done operation: its final Execution's terminal
    /// condition, or its error; failing both, the Execution as GetExecution
    /// sees it.
    async fn ended_from(&self, op: Operation, execution: &str) -> Ended {
        // The final Execution (response, else metadata) has the terminal
        // condition with Cloud Run's own message; a failed execution's
        // operation also carries an error, used when the Execution says
        // nothing.
        let final_execution = [response_of(&op), op.metadata.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(decode_execution)
            .find_map(|e| terminal(&e));
        let from_op = final_execution.or_else(|| match &op.result {
            Some(operation::Result::Error(status)) => Some(Ended {
                succeeded: false,
                message: format!("Cloud Run execution {execution} failed: {}", status.message),
            }),
            _ => None,
        });
        if let Some(ended) = from_op {
            return ended;
        }
        match self.get_execution(execution).await {
            Ok(e) => terminal(&e).unwrap_or_else(|| Ended {
                succeeded: false,
                message: format!(
                    "Cloud Run says the operation of execution {execution} is done, but the execution has no terminal condition"
                ),
            }),
            Err(e) => Ended {
                succeeded: false,
                message: format!(
                    "the operation of execution {execution} is done; reading the execution failed: {}",
                    crate::error_chain(&e)
                ),
            },
        }
    }

    fn free_slot(&self, id: &ExecutionId) {
        if let Some(t) = self.running.get(id) {
            t.slot.lock().expect("slot lock").take();
        }
    }
}

#[async_trait]
impl Launcher for CloudRunLauncher {
    fn describe(&self) -> String {
        format!(
            "cloudrun:{} via {}",
            self.settings.job,
            self.settings.endpoint.url()
        )
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), LaunchError> {
        let id = spec.execution_id.clone();
        // The slot first: a launch that waits for one must not hold a
        // RunJob token meanwhile.
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| LaunchError::Closed)?;
        let op = self.run_job(&id, self.run_job_request(&spec)).await?;
        let execution = [op.metadata.as_ref(), response_of(&op)]
            .into_iter()
            .flatten()
            .find_map(decode_execution)
            .map(|e| e.name)
            .filter(|n| !n.is_empty());
        let Some(execution) = execution else {
            return Err(LaunchError::Spawn {
                id,
                retryable: false,
                source: Box::new(NoExecution {
                    job: self.settings.job.clone(),
                    operation: op.name,
                    error: match op.result {
                        Some(operation::Result::Error(s)) => Some(s.message),
                        _ => None,
                    },
                }),
            });
        };
        tracing::debug!(execution = %id, cloud_run = %execution, "RunJob accepted");
        self.running.insert(
            id,
            Tracked {
                execution,
                operation: op.name,
                slot: std::sync::Mutex::new(Some(slot)),
            },
        );
        Ok(())
    }

    async fn ended(&self, id: &ExecutionId) -> Ended {
        let tracked = self
            .running
            .get(id)
            .map(|t| (t.execution.clone(), t.operation.clone()));
        let Some((execution, operation)) = tracked else {
            return Ended {
                succeeded: false,
                message: format!("execution {id} is not known to this launcher"),
            };
        };
        // Consecutive calls that came back early: failed, or not done long
        // before the wait asked for (WaitOperation is best effort and may
        // answer at once). Each is followed by a growing pause, so a server
        // that does not hold the call never turns this into a busy poll.
        let mut early: u32 = 0;
        loop {
            let called = Instant::now();
            let outcome = self.wait_operation(&operation).await;
            let held = called.elapsed() >= self.settings.wait_timeout / 2;
            match outcome {
                Ok(op) if op.done => {
                    let ended = self.ended_from(op, &execution).await;
                    self.free_slot(id);
                    return ended;
                }
                // The server held the call for the whole wait: call again.
                Ok(_) if held => {
                    early = 0;
                    continue;
                }
                Ok(_) => {
                    tracing::debug!(execution = %id, "WaitOperation answered early, not done");
                }
                Err(status) if matches!(status.code(), Code::Unimplemented | Code::NotFound) => {
                    // No server-side wait for this operation: do not turn
                    // into a poller. The dispatcher's deadline reconciles
                    // through state().
                    tracing::warn!(
                        execution = %id,
                        operation,
                        code = ?status.code(),
                        "WaitOperation unusable; the end will be found at the deadline"
                    );
                    return std::future::pending().await;
                }
                Err(status) => {
                    tracing::debug!(execution = %id, error = %status, "WaitOperation failed");
                }
            }
            early += 1;
            let pause = Duration::from_secs(1u64 << early.min(5)).min(Duration::from_secs(30));
            tokio::time::sleep(pause).await;
        }
    }

    async fn state(&self, id: &ExecutionId) -> Result<ExecutionState, LaunchError> {
        let Some(execution) = self.execution_name(id) else {
            return Ok(ExecutionState::Unknown);
        };
        match self.get_execution(&execution).await {
            Ok(e) => Ok(match terminal(&e) {
                Some(ended) => {
                    self.free_slot(id);
                    ExecutionState::Ended(ended)
                }
                None => ExecutionState::Running,
            }),
            Err(e) if e.status.code() == Code::NotFound => Ok(ExecutionState::Unknown),
            Err(e) => Err(LaunchError::Platform {
                op: "look up",
                id: id.clone(),
                retryable: is_transient(e.status.code()),
                source: Box::new(e),
            }),
        }
    }

    async fn cancel(&self, id: &ExecutionId) -> Result<(), LaunchError> {
        let Some(execution) = self.execution_name(id) else {
            return Ok(());
        };
        let mut call = tonic::Request::new(CancelExecutionRequest {
            name: execution.clone(),
            ..Default::default()
        });
        route(&mut call, &[("name", &execution)]);
        let result = self
            .unary(
                call,
                |mut c, r| async move { c.cancel_execution(r).await },
                self.executions.clone(),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // Gone, or already finished: nothing left to stop.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                Ok(())
            }
            Err(status) => Err(LaunchError::Platform {
                op: "cancel",
                id: id.clone(),
                retryable: is_transient(status.code()),
                source: Box::new(CallError {
                    call: "CancelExecution",
                    resource: execution,
                    status,
                }),
            }),
        }
    }

    fn release(&self, id: &ExecutionId) {
        self.running.remove(id);
    }

    async fn observe(&self, _id: &ExecutionId) -> Observed {
        // Only the launching instance knows the Cloud Run execution's name.
        Observed::Unobservable
    }

    async fn sweep(&self, _id: &ExecutionId) -> usize {
        // The container, and every process of the command, ends with its
        // executor.
        0
    }

    async fn shutdown(&self) {
        // Launches still waiting for a running slot fail with Closed; the
        // launcher starts no tasks of its own.
        self.slots.close();
    }
}

/// The task timeout for a command timeout: whole seconds, rounded up, at
/// most Cloud Run's limit.
fn task_timeout(command: Duration, margin: Duration) -> prost_types::Duration {
    let total = command.saturating_add(margin).min(MAX_TASK_TIMEOUT);
    let secs = total.as_secs() + u64::from(total.subsec_nanos() > 0);
    prost_types::Duration {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// The location in `projects/P/locations/L/jobs/J`.
fn job_location(job: &str) -> Option<&str> {
    match job.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "locations", l, "jobs", j]
            if !p.is_empty() && !l.is_empty() && !j.is_empty() =>
        {
            Some(l)
        }
        _ => None,
    }
}

/// Sets the `x-goog-request-params` header: `key=value` pairs joined by
/// `&`, values percent-encoded as Google's clients encode them.
fn route<T>(request: &mut tonic::Request<T>, params: &[(&str, &str)]) {
    let value = params
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    if let Ok(value) = value.parse() {
        request.metadata_mut().insert(ROUTING_HEADER, value);
    }
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn response_of(op: &Operation) -> Option<&prost_types::Any> {
    match &op.result {
        Some(operation::Result::Response(any)) => Some(any),
        _ => None,
    }
}

fn decode_execution(any: &prost_types::Any) -> Option<Execution> {
    if !any.type_url.ends_with(EXECUTION_TYPE) {
        return None;
    }
    Execution::decode(any.value.as_slice()).ok()
}

/// The end of an execution, if it has ended: its `Completed` condition when
/// terminal, else its completion time and task counts.
fn terminal(e: &Execution) -> Option<Ended> {
    let completed = e.conditions.iter().find(|c| c.r#type == "Completed");
    let counts = format!(
        "{} of {} task(s) succeeded, {} failed, {} cancelled",
        e.succeeded_count, e.task_count, e.failed_count, e.cancelled_count
    );
    let message = |c: Option<&Condition>| match c.map(|c| c.message.as_str()) {
        Some(m) if !m.is_empty() => format!("Cloud Run execution {}: {m}", e.name),
        _ => format!("Cloud Run execution {}: {counts}", e.name),
    };
    match completed.map(Condition::state) {
        Some(condition::State::ConditionSucceeded) => Some(Ended {
            succeeded: true,
            message: message(completed),
        }),
        Some(condition::State::ConditionFailed) => Some(Ended {
            succeeded: false,
            message: message(completed),
        }),
        _ if e.completion_time.is_some() => Some(Ended {
            succeeded: e.failed_count == 0 && e.cancelled_count == 0 && e.succeeded_count > 0,
            message: message(completed),
        }),
        _ => None,
    }
}

fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

/// The channel every call goes through: a tonic channel plus, against
/// Google, a bearer token from Application Default Credentials on each
/// request. A tower service rather than a tonic interceptor, because
/// interceptors are synchronous and fetching or refreshing a token is not.
#[derive(Clone)]
struct Transport {
    channel: Channel,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        // `poll_ready` readied this channel handle: send on it and leave a
        // fresh clone behind for the next call.
        let fresh = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, fresh);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            if let Some(tokens) = tokens {
                let token = tokens.token().await.map_err(|e| {
                    Status::unauthenticated(format!(
                        "get an access token (Application Default Credentials): {e}"
                    ))
                })?;
                let value = HeaderValue::from_str(&token.value()).map_err(|e| {
                    Status::unauthenticated(format!(
                        "access token is not a valid header value: {e}"
                    ))
                })?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            channel.call(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_timeout_adds_the_margin_rounds_up_and_caps() {
        let t = task_timeout(Duration::from_millis(10_500), Duration::from_secs(15));
        assert_eq!((t.seconds, t.nanos), (26, 0));
        let t = task_timeout(Duration::from_secs(7 * 24 * 3600), Duration::from_secs(15));
        assert_eq!(t.seconds, 168 * 3600);
    }

    #[test]
    fn routing_params_are_encoded() {
        let mut r = tonic::Request::new(());
        route(&mut r, &[("name", "projects/p/locations/l/operations/a b")]);
        assert_eq!(
            r.metadata().get(ROUTING_HEADER).unwrap(),
            "name=projects%2Fp%2Flocations%2Fl%2Foperations%2Fa%20b"
        );
        route(&mut r, &[("location", "europe-west1")]);
        assert_eq!(
            r.metadata().get(ROUTING_HEADER).unwrap(),
            "location=europe-west1"
        );
    }

    #[test]
    fn job_location_needs_a_full_name() {
        assert_eq!(
            job_location("projects/p/locations/us-central1/jobs/j"),
            Some("us-central1")
        );
        assert_eq!(job_location("projects/p/locations//jobs/j"), None);
        assert_eq!(job_location("jobs/j"), None);
    }

    fn execution(conditions: Vec<Condition>, done: bool) -> Execution {
        Execution {
            name: "projects/p/locations/l/jobs/j/executions/e".to_owned(),
            task_count: 1,
            conditions,
            completion_time: done.then(prost_types::Timestamp::default),
            ..Default::default()
        }
    }

    fn completed(state: condition::State, message: &str) -> Condition {
        Condition {
            r#type: "Completed".to_owned(),
            state: state as i32,
            message: message.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn terminal_reads_the_completed_condition() {
        assert_eq!(terminal(&execution(vec![], false)), None);
        let running = completed(condition::State::ConditionReconciling, "");
        assert_eq!(terminal(&execution(vec![running], false)), None);
        let failed = completed(
            condition::State::ConditionFailed,
            "Task failed with exit code 1",
        );
        let ended = terminal(&execution(vec![failed], true)).unwrap();
        assert!(!ended.succeeded);
        assert!(
            ended.message.ends_with(": Task failed with exit code 1"),
            "{}",
            ended.message
        );
        let ok = completed(condition::State::ConditionSucceeded, "");
        let ended = terminal(&execution(vec![ok], true)).unwrap();
        assert!(ended.succeeded);
        assert!(
            ended.message.contains("0 of 1 task(s) succeeded"),
            "{}",
            ended.message
        );
        // No condition, but a completion time and a failed task.
        let mut e = execution(vec![], true);
        e.failed_count = 1;
        assert!(!terminal(&e).unwrap().succeeded);
    }

    #[test]
    fn emulator_addresses() {
        assert_eq!(
            CloudRunEndpoint::emulator("127.0.0.1:9"),
            CloudRunEndpoint::Emulator("http://127.0.0.1:9".to_owned())
        );
        assert_eq!(
            CloudRunEndpoint::emulator("http://127.0.0.1:9/"),
            CloudRunEndpoint::Emulator("http://127.0.0.1:9".to_owned())
        );
    }
}
