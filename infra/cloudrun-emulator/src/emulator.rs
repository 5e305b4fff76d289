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
