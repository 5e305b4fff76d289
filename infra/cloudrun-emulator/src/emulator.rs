//! Starting and stopping an emulator: the gRPC server over the shared store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::executions_api::ExecutionsApi;
use crate::grpc::executions_server::ExecutionsServer;
use crate::grpc::jobs_server::JobsServer;
use crate::grpc::operations_server::OperationsServer;
use crate::jobs_api::JobsApi;
use crate::operations_api::OperationsApi;
use crate::store::Store;

/// A running emulator serving plaintext gRPC on [`Emulator::local_addr`].
///
/// Dropping it stops the server and every running task (their process groups
/// are killed); [`Emulator::shutdown`] does the same and waits for it.
#[derive(Debug)]
pub struct Emulator {
    local_addr: SocketAddr,
    store: Arc<Store>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port) and starts serving on the
    /// current tokio runtime.
    pub async fn start(addr: SocketAddr, config: Config) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Self::from_listener(listener, config)
    }

    /// Starts serving on an already bound listener.
    pub fn from_listener(listener: TcpListener, config: Config) -> Result<Self> {
        let local_addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let store = Arc::new(Store::new(config));
        let stop = store.shutdown.clone();
        let router = Server::builder()
            .add_service(JobsServer::new(JobsApi::new(Arc::clone(&store))))
            .add_service(ExecutionsServer::new(ExecutionsApi::new(Arc::clone(
                &store,
            ))))
            .add_service(OperationsServer::new(OperationsApi::new(Arc::clone(
                &store,
            ))));
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
        }));
        tracing::info!(%local_addr, "Cloud Run emulator serving");
        Ok(Self {
            local_addr,
            store,
            server: Some(server),
        })
    }

    /// The bound address, e.g. `127.0.0.1:45678`.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URI clients connect to, e.g. `http://127.0.0.1:45678`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// RunJob calls received so far, valid or not (also in the log, and in
    /// [`Config::stats_file`] when set).
    #[must_use]
    pub fn run_job_calls(&self) -> u64 {
        self.store.run_job_calls()
    }

    /// Creates a one-task, no-retry job running `image`, as a person would
    /// with CreateJob (`infra/local/up` uses this through `--job`), whose
    /// container sets `env`. `name` is the full
    /// `projects/P/locations/L/jobs/J`.
    pub async fn create_job(
        &self,
        name: &str,
        image: &str,
        env: &[(String, String)],
    ) -> Result<(), tonic::Status> {
        use crate::grpc::jobs_server::Jobs as _;
        use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
            Container, CreateJobRequest, EnvVar, ExecutionTemplate, Job, TaskTemplate, env_var,
            task_template::Retries,
        };
        let (parent, job_id) = name
            .rsplit_once("/jobs/")
            .ok_or_else(|| tonic::Status::invalid_argument(format!("bad job name {name:?}")))?;
        let job = Job {
            template: Some(ExecutionTemplate {
                task_count: 1,
                template: Some(TaskTemplate {
                    containers: vec![Container {
                        image: image.to_owned(),
                        env: env
                            .iter()
                            .map(|(name, value)| EnvVar {
                                name: name.clone(),
                                values: Some(env_var::Values::Value(value.clone())),
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    retries: Some(Retries::MaxRetries(0)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        JobsApi::new(Arc::clone(&self.store))
            .create_job(tonic::Request::new(CreateJobRequest {
                parent: parent.to_owned(),
                job: Some(job),
                job_id: job_id.to_owned(),
                validate_only: false,
            }))
            .await
            .map(|_| ())
    }

    /// Serves until `signal` resolves (or the server fails), then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        tokio::select! {
            () = signal => self.shutdown().await,
            joined = server => {
                self.server = None;
                self.shutdown().await?;
                joined.map_err(Error::Join)?.map_err(Error::Serve)
            }
        }
    }

    /// Stops taking requests, cancels every running execution (SIGTERM, then
    /// SIGKILL after the configured grace) and waits until their tasks are
    /// gone and the server has stopped.
    pub async fn shutdown(mut self) -> Result<()> {
        self.store.shutdown.cancel();
        // Each execution's token is a child of the shutdown token; waiting
        // on the executions' own state needs no extra bookkeeping.
        for entry in self.store.unfinished_executions() {
            entry.wait_done().await;
        }
        match self.server.take() {
            Some(server) => server.await.map_err(Error::Join)?.map_err(Error::Serve),
            None => Ok(()),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Without an explicit shutdown the runners still see the token and
        // kill their process groups, as long as the runtime lives; if it is
        // gone, TaskProcess's drop kills them instead.
        self.store.shutdown.cancel();
    }
}
