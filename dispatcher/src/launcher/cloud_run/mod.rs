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
//!   the operation is done, then the Execution's terminal condition. A
//!   server that answers UNIMPLEMENTED (or no longer knows the operation)
//!   gets GetExecution at doubling intervals instead.
//! - **State**: GetExecution; **cancel**: CancelExecution (Cloud Run sends
//!   SIGTERM, the executor writes a CANCELLED result).
//! - **Other processes' executions** (a background process that an earlier
//!   CLI call spawned): the Execution's name is the [`Launcher::locator`]
//!   stored in the background marker; [`Launcher::adopt`] takes it back, or,
//!   for markers without one, finds the Execution with ListExecutions on
//!   the job (newest first, down to the marker's start time) by the
//!   `RUNBOX_EXECUTION_ID` of its template. An adopted execution has no
//!   RunJob operation to wait on here: its end is learnt from its result
//!   event, or from GetExecution at the deadline.
//!
//! The job template must run `runbox-executor` with the store's settings in
//! its env (`RUNBOX_BACKEND`, `RUNBOX_BUCKET`, ...), one task, and
//! `max_retries: 0` (overrides cannot set it, and a retried task would run
//! the command twice). In production every call carries Application Default
//! Credentials, from the same `runbox_core::credentials::DefaultCredentials`
//! the Pub/Sub and Storage clients use, over TLS to `run.googleapis.com:443`; with
//! `RUNBOX_CLOUD_RUN_ENDPOINT` set, calls go in plaintext, without
//! credentials, to that emulator.
//!
//! This file holds the launcher itself; `settings.rs` what it is configured
//! with, `transport.rs` how calls reach the API, `status.rs` how answers are
//! read, and [`admission`] the limits on launches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dashmap::DashMap;
use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    CancelExecutionRequest, EnvVar, Execution, GetExecutionRequest, GetJobRequest, Job,
    ListExecutionsRequest, RunJobRequest, env_var, executions_client::ExecutionsClient,
    jobs_client::JobsClient, run_job_request,
};
use googleapis_tonic_google_iam_v1::google::iam::v1::TestIamPermissionsRequest;
use googleapis_tonic_google_longrunning::google::longrunning::{
    Operation, WaitOperationRequest, operation, operations_client::OperationsClient,
};
use runbox_core::ExecutionId;
use runbox_core::contract::{EXECUTION_ID_ENV, TRACEPARENT_ENV};
use runbox_core::credentials::STORE_TOKEN_ENV;
use tokio::time::Instant;
use tonic::codegen::StdError;
use tonic::{Code, Status};
use tracing::Instrument as _;

pub mod admission;
mod settings;
mod status;
mod template_check;
mod transport;
mod warm;

pub use self::settings::{CLOUD_RUN_URL, CloudRunEndpoint, CloudRunSettings};
pub use self::status::{CallError, NoExecution};
pub use self::template_check::{TemplateProblem, template_problems};
pub use self::warm::WarmCommands;

use self::admission::{RateLimiter, RunningSlots, Slot};
use self::settings::{MAX_TASK_TIMEOUT, WAITS_PER_CONNECTION, job_location};
use self::status::{decode_execution, is_transient, response_of, terminal};
use self::transport::{Connector, Transport, route};
use crate::launcher::{Ended, ExecutionState, LaunchError, LaunchSpec, Launcher, Observed};

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
    /// Warm executions over Pub/Sub, when configured ([`warm`]).
    warm: Option<warm::WarmDelivery>,
}

/// What is kept about a launched execution until it is released.
struct Tracked {
    execution: String,
    /// The RunJob operation; `None` for an adopted execution.
    operation: Option<String>,
    // Freed early when the platform reports the end, else on release.
    slot: Mutex<Option<Slot>>,
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
        let connector = Connector::new(&settings.endpoint)
            .await
            .map_err(connect_error)?;
        let control = connector.connection();
        // A WaitOperation holds an HTTP/2 stream for up to `wait_timeout`,
        // and servers cap concurrent streams per connection (commonly 100):
        // the waits get connections of their own, so they never queue the
        // RunJob, GetExecution and CancelExecution calls, and enough of them
        // for every running execution to wait at once.
        let wait_connections = settings.max_running.div_ceil(WAITS_PER_CONNECTION).max(1);
        let waits = (0..wait_connections)
            .map(|_| OperationsClient::new(connector.connection()))
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
            warm: None,
            settings,
        })
    }

    /// Runs warm sessions' commands in warm executions, delivering the
    /// later ones over `commands` (without it, they run oneshot).
    #[must_use]
    pub fn with_warm_commands(mut self, commands: WarmCommands) -> Self {
        self.warm = Some(warm::WarmDelivery::new(commands));
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &CloudRunSettings {
        &self.settings
    }

    /// The Cloud Run Execution name of a launched execution, while it is kept.
    pub fn execution_name(&self, id: &ExecutionId) -> Option<String> {
        self.running.get(id).map(|t| t.execution.clone())
    }

    /// The job template as Cloud Run has it (GetJob), for checking a
    /// deployment (`runbox doctor`).
    pub async fn get_job(&self) -> Result<Job, CallError> {
        let job = self.settings.job.clone();
        let mut call = tonic::Request::new(GetJobRequest { name: job.clone() });
        route(&mut call, &[("name", &job)]);
        self.unary(
            call,
            |mut c, r| async move { c.get_job(r).await },
            self.jobs.clone(),
        )
        .await
        .map_err(|status| CallError {
            call: "GetJob",
            resource: job,
            status,
        })
    }

    /// Which of `permissions` the caller holds on the job template
    /// (testIamPermissions); `None` when the server does not offer the call
    /// (UNIMPLEMENTED, as an emulator without IAM answers).
    pub async fn test_job_permissions(
        &self,
        permissions: &[&str],
    ) -> Result<Option<Vec<String>>, CallError> {
        let job = self.settings.job.clone();
        let mut call = tonic::Request::new(TestIamPermissionsRequest {
            resource: job.clone(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        });
        route(&mut call, &[("resource", &job)]);
        match self
            .unary(
                call,
                |mut c, r| async move { c.test_iam_permissions(r).await },
                self.jobs.clone(),
            )
            .await
        {
            Ok(r) => Ok(Some(r.permissions)),
            Err(status) if status.code() == Code::Unimplemented => Ok(None),
            Err(status) => Err(CallError {
                call: "TestIamPermissions",
                resource: job,
                status,
            }),
        }
    }

    /// Executions holding a running slot now.
    pub fn running(&self) -> usize {
        self.slots.in_use()
    }

    fn run_job_request(&self, spec: &LaunchSpec, warm: Option<&warm::Overrides>) -> RunJobRequest {
        let env = |name: &str, value: &str| EnvVar {
            name: name.to_owned(),
            values: Some(env_var::Values::Value(value.to_owned())),
        };
        let mut vars = vec![env(EXECUTION_ID_ENV, spec.execution_id.as_str())];
        if let Some(tp) = &spec.traceparent {
            vars.push(env(TRACEPARENT_ENV, tp));
        }
        // The executor takes it out of every command's environment, and
        // its own /proc files are closed to commands (it is non-dumpable).
        if let Some(token) = &spec.store_token {
            vars.push(env(STORE_TOKEN_ENV, token.secret()));
        }
        let timeout = match warm {
            Some(warm) => {
                vars.extend(warm.env.iter().map(|(k, v)| env(k, v)));
                task_timeout(warm.task_timeout, Duration::ZERO)
            }
            None => task_timeout(spec.timeout, self.settings.task_timeout_margin),
        };
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
                timeout: Some(timeout),
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
            let waited = Instant::now();
            self.limiter
                .acquire()
                .instrument(tracing::info_span!("admission wait", token = true))
                .await;
            crate::metrics::get().admission_wait(waited.elapsed());
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
            crate::metrics::get().runjob_throttled();
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

    /// The name of the Execution of the job whose template carries
    /// `RUNBOX_EXECUTION_ID={id}`, among those created since `since` (less
    /// a margin for clock skew); `None` when there is none.
    async fn find_execution(
        &self,
        id: &ExecutionId,
        since: SystemTime,
    ) -> Result<Option<String>, CallError> {
        let oldest = since
            .checked_sub(FIND_SKEW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut page_token = String::new();
        loop {
            let mut call = tonic::Request::new(ListExecutionsRequest {
                parent: self.settings.job.clone(),
                page_size: FIND_PAGE_SIZE,
                page_token: page_token.clone(),
                show_deleted: false,
            });
            route(&mut call, &[("parent", &self.settings.job)]);
            let page = self
                .unary(
                    call,
                    |mut c, r| async move { c.list_executions(r).await },
                    self.executions.clone(),
                )
                .await
                .map_err(|status| CallError {
                    call: "ListExecutions",
                    resource: self.settings.job.clone(),
                    status,
                })?;
            let mut older = false;
            for execution in page.executions {
                if runs_execution(&execution, id) {
                    return Ok(Some(execution.name));
                }
                older |= created_before(&execution, oldest);
            }
            // Newest first: once a page reaches past `since`, later pages
            // hold only older executions.
            if older || page.next_page_token.is_empty() {
                return Ok(None);
            }
            page_token = page.next_page_token;
        }
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

    /// The end of an execution read with GetExecution at doubling intervals,
    /// for servers that cannot wait on its operation.
    async fn follow_execution(&self, id: &ExecutionId, execution: &str) -> Ended {
        let mut pause = self.settings.get_execution_interval;
        loop {
            tokio::time::sleep(pause).await;
            match self.get_execution(execution).await {
                Ok(e) => {
                    if let Some(ended) = terminal(&e) {
                        return ended;
                    }
                }
                Err(e) if e.status.code() == Code::NotFound => {
                    return Ended {
                        succeeded: false,
                        message: format!("Cloud Run execution {execution} no longer exists"),
                    };
                }
                Err(e) => {
                    tracing::warn!(
                        execution = %id,
                        error = %crate::error_chain(&e),
                        "GetExecution failed"
                    );
                }
            }
            pause = pause
                .saturating_mul(2)
                .min(self.settings.get_execution_max_interval);
        }
    }

    /// Launches `spec` (with the overrides of a warm execution, when
    /// given); returns the Execution's name and its RunJob operation.
    async fn launch_with(
        &self,
        spec: LaunchSpec,
        warm: Option<&warm::Overrides>,
    ) -> Result<(String, String), LaunchError> {
        let id = spec.execution_id.clone();
        // The slot first: a launch that waits for one must not hold a
        // RunJob token meanwhile.
        let admission = tracing::info_span!("admission wait");
        let waited = Instant::now();
        let slot = self
            .slots
            .acquire()
            .instrument(admission)
            .await
            .map_err(|_| LaunchError::Closed)?;
        crate::metrics::get().admission_wait(waited.elapsed());
        let call = tracing::info_span!("RunJob", otel.status_code = tracing::field::Empty);
        let op = self
            .run_job(&id, self.run_job_request(&spec, warm))
            .instrument(call.clone())
            .await;
        if op.is_err() {
            runbox_core::trace_context::mark_error(&call);
        }
        let op = op?;
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
                execution: execution.clone(),
                operation: Some(op.name.clone()),
                slot: Mutex::new(Some(slot)),
            },
        );
        Ok((execution, op.name))
    }

    /// Waits, held by the server, until the RunJob operation `operation`
    /// of `execution` is done; how the execution ended.
    async fn operation_done(&self, id: &ExecutionId, execution: &str, operation: &str) -> Ended {
        // Consecutive calls that came back early: failed, or not done long
        // before the wait asked for (WaitOperation is best effort and may
        // answer at once). Each is followed by a growing pause, so a server
        // that does not hold the call never turns this into a busy poll.
        let mut early: u32 = 0;
        loop {
            let called = Instant::now();
            let outcome = self.wait_operation(operation).await;
            let held = called.elapsed() >= self.settings.wait_timeout / 2;
            match outcome {
                Ok(op) if op.done => {
                    return self.ended_from(op, execution).await;
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
                    // No server-side wait for this operation. Without this
                    // fallback a crashed executor would be noticed only at
                    // the deadline (timeout + grace), hours later for long
                    // commands.
                    tracing::warn!(
                        execution = %id,
                        operation,
                        code = ?status.code(),
                        "WaitOperation unusable; following the execution with GetExecution"
                    );
                    return self.follow_execution(id, execution).await;
                }
                Err(status) => {
                    tracing::warn!(execution = %id, error = %status, "WaitOperation failed");
                }
            }
            early += 1;
            let pause = Duration::from_secs(1u64 << early.min(5)).min(Duration::from_secs(30));
            tokio::time::sleep(pause).await;
        }
    }

    /// Keeps `id` as a command run by the execution `execution` (another
    /// command's warm execution), whose end its end then follows.
    fn track_delivered(&self, id: &ExecutionId, execution: &str, operation: &str) {
        self.running.insert(
            id.clone(),
            Tracked {
                execution: execution.to_owned(),
                operation: Some(operation.to_owned()),
                slot: Mutex::new(None),
            },
        );
    }

    fn free_slot(&self, id: &ExecutionId) {
        if let Some(t) = self.running.get(id) {
            // A panic elsewhere while holding the lock cannot leave the
            // Option half-written: take the slot from a poisoned lock too.
            t.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        self.launch_with(spec, None).await.map(drop)
    }

    async fn launch_warm(
        &self,
        spec: LaunchSpec,
        warm: &crate::launcher::WarmLaunch,
    ) -> Result<(), LaunchError> {
        match &self.warm {
            Some(delivery) => delivery.launch(self, spec, warm, None).await,
            None => self.launch(spec).await,
        }
    }

    fn streams_stdin(&self, _session: &runbox_core::SessionId) -> bool {
        self.warm
            .as_ref()
            .is_some_and(warm::WarmDelivery::is_attached)
    }

    async fn launch_warm_stdin(
        &self,
        spec: LaunchSpec,
        warm: &crate::launcher::WarmLaunch,
        stdin: crate::StdinFeed,
    ) -> Result<(), LaunchError> {
        match &self.warm {
            Some(delivery) => delivery.launch(self, spec, warm, Some(stdin)).await,
            None => Err(LaunchError::StdinNotStreamed {
                id: spec.execution_id,
            }),
        }
    }

    async fn warm_execution(&self, session: &runbox_core::SessionId) -> Option<String> {
        self.warm.as_ref()?.running(self, session).await
    }

    async fn close_warm(&self, session: &runbox_core::SessionId) -> bool {
        match &self.warm {
            Some(delivery) => delivery.close(self, session).await,
            None => false,
        }
    }

    fn attach(
        &self,
        store: std::sync::Arc<dyn runbox_core::Store>,
        waiters: std::sync::Arc<runbox_notifier::Waiters>,
    ) {
        if let Some(delivery) = &self.warm {
            delivery.attach(store, waiters);
        }
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
        let Some(operation) = operation else {
            // Adopted: its operation is known only to the process that
            // launched it. Asking GetExecution over and over would be
            // polling; the result event or the deadline tells the end.
            return std::future::pending().await;
        };
        let ended = self.operation_done(id, &execution, &operation).await;
        self.free_slot(id);
        ended
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

    fn locator(&self, id: &ExecutionId) -> Option<String> {
        self.execution_name(id)
    }

    async fn adopt(
        &self,
        id: &ExecutionId,
        locator: Option<&str>,
        since: SystemTime,
    ) -> Result<bool, LaunchError> {
        if self.running.contains_key(id) {
            return Ok(false);
        }
        let execution = match locator {
            Some(name) => name.to_owned(),
            None => match self.find_execution(id, since).await {
                Ok(Some(name)) => name,
                Ok(None) => return Ok(false),
                Err(e) => {
                    return Err(LaunchError::Platform {
                        op: "look up",
                        id: id.clone(),
                        retryable: is_transient(e.status.code()),
                        source: Box::new(e),
                    });
                }
            },
        };
        tracing::debug!(execution = %id, cloud_run = %execution, "adopted an execution launched elsewhere");
        // Another caller may have adopted it meanwhile: only one of them
        // inserts, and only that one releases it.
        let mut adopted = false;
        self.running.entry(id.clone()).or_insert_with(|| {
            adopted = true;
            Tracked {
                execution,
                operation: None,
                slot: Mutex::new(None),
            }
        });
        Ok(adopted)
    }

    async fn observe(&self, _id: &ExecutionId) -> Observed {
        // Executions launched elsewhere are reached through `adopt`; what
        // it did not find is not there to be watched.
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

/// Executions created this long before a marker's start time are still
/// looked at: the dispatcher's clock and Cloud Run's may disagree.
const FIND_SKEW: Duration = Duration::from_secs(600);

/// Executions per ListExecutions page when looking for one.
const FIND_PAGE_SIZE: i32 = 100;

/// Whether `execution` was started for runbox execution `id` (its template's
/// env, where RunJob's overrides are merged, names it).
fn runs_execution(execution: &Execution, id: &ExecutionId) -> bool {
    let Some(template) = &execution.template else {
        return false;
    };
    template.containers.iter().any(|c| {
        c.env.iter().any(|e| {
            e.name == EXECUTION_ID_ENV
                && matches!(&e.values, Some(env_var::Values::Value(v)) if v == id.as_str())
        })
    })
}

/// Whether `execution` was created before `time`.
fn created_before(execution: &Execution, time: SystemTime) -> bool {
    let Some(created) = &execution.create_time else {
        return false;
    };
    SystemTime::try_from(*created).is_ok_and(|c| c < time)
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
}
