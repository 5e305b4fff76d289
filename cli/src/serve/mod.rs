//! `runbox serve`: runbox as a long-running service.
//!
//! One process, one [`Client`] for its whole life (so one notifications
//! subscription on the gcp backend, deleted at the end), and workers that
//! adapt it to other protocols:
//!
//! - [`http`]: the HTTP/JSON API of the Sandbox protocol, with its OpenAPI
//!   document (`/openapi.json`) and `/healthz`, `/readyz`.
//!
//! - [`topic`]: when `RUNBOX_REQUESTS_SUBSCRIPTION` is set, exec requests
//!   pulled from Pub/Sub and answered on `RUNBOX_COMPLETIONS_TOPIC`; a
//!   request whose instance dies is answered by whichever instance Pub/Sub
//!   delivers it to next (the relay).
//!
//! Each worker takes the same `Client`, stops taking work when
//! [`Shutdown::draining`] is cancelled, and spawns what must outlive its
//! caller on [`Shutdown::tasks`], so the one drain below covers them all.
//!
//! Shutdown (SIGTERM or SIGINT): `/readyz` turns 503 and the listener
//! closes at once; requests in flight (and the commands they started) get
//! up to `--drain` seconds to finish; then the client shuts down, which
//! deletes this instance's subscription. Commands still running past the
//! drain keep running in their executors and save their results; only
//! their HTTP answers are lost.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::Config;
use runbox_dispatcher::files::DEFAULT_MAX_UPLOAD_BYTES;
use runbox_dispatcher::{Client, Error};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::failure::{Failure, Kind};
use crate::stdout::note;

pub mod http;
mod settings;
pub mod topic;

use settings::Settings;

/// Arguments of `runbox serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:$PORT when PORT is set, else
    /// 127.0.0.1:8080]. A non-loopback address needs RUNBOX_API_TOKEN.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Seconds that requests in flight get to finish after SIGTERM.
    #[arg(
        long,
        value_name = "SECS",
        env = "RUNBOX_DRAIN_SECS",
        default_value_t = 30
    )]
    drain: u64,
    /// Largest file upload accepted, in bytes.
    #[arg(long, value_name = "BYTES", env = "RUNBOX_MAX_UPLOAD_BYTES",
          default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

/// What the workers share to stop together.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the process starts draining.
    pub draining: CancellationToken,
    /// Work that must finish before the client shuts down.
    pub tasks: TaskTracker,
}

/// Runs the service until SIGTERM/SIGINT and the drain that follows.
pub async fn run(args: ServeArgs, config: Config) -> Result<ExitCode, Error> {
    if args.openapi {
        print!("{}", http::openapi::document());
        return Ok(ExitCode::SUCCESS);
    }
    let settings = match Settings::resolve(
        args.http,
        Duration::from_secs(args.drain),
        args.max_upload_bytes,
        |name| std::env::var(name).ok(),
    ) {
        Ok(s) => s,
        Err(e) => return Ok(Failure::new(Kind::Config, e.to_string()).report(false)),
    };
    // Signals first: a SIGTERM that comes while the client starts is then
    // a drain of nothing, not a kill.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(
                Failure::new(Kind::Runbox, format!("install signal handlers: {e}")).report(false),
            );
        }
    };
    let listener = match TcpListener::bind(settings.addr).await {
        Ok(l) => l,
        Err(e) => {
            return Ok(
                Failure::new(Kind::Runbox, format!("listen on {}: {e}", settings.addr))
                    .report(false),
            );
        }
    };
    let addr = listener.local_addr().unwrap_or(settings.addr);
    let topic_settings = match topic::TopicSettings::resolve(|name| std::env::var(name).ok()) {
        Ok(t) => t,
        Err(e) => return Ok(Failure::new(Kind::Config, e.to_string()).report(false)),
    };
    let client = Client::from_config(config).await?;
    let shutdown = Shutdown::default();
    let topic = match topic_settings {
        None => None,
        Some(t) => match topic::start(client.clone(), t, shutdown.clone()).await {
            Ok(topic) => Some(topic),
            Err(e) => {
                client.shutdown().await;
                return Ok(Failure::new(Kind::Config, format!("request topic: {e}")).report(false));
            }
        },
    };
    let api = Arc::new(http::Api {
        client: client.clone(),
        token: settings.token.clone(),
        draining: shutdown.draining.clone(),
        tasks: shutdown.tasks.clone(),
        max_upload_bytes: settings.max_upload_bytes,
        stdin: http::stdin::StdinRegistry::default(),
    });
    let server = axum::serve(listener, http::router(api))
        .with_graceful_shutdown(shutdown.draining.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    // Callers (and tests) wait for this line to know the port is open.
    note!("runbox serve: listening on http://{addr}");
    let served = tokio::select! {
        served = &mut server => Some(served),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    let code = match served {
        // The server ended by itself: the listener failed.
        Some(Err(e)) => {
            shutdown.draining.cancel();
            client.shutdown().await;
            return Ok(Failure::new(Kind::Runbox, format!("serve on {addr}: {e}")).report(false));
        }
        Some(Ok(())) => ExitCode::SUCCESS,
        None => {
            note!(
                "runbox serve: draining (at most {}s)",
                settings.drain.as_secs_f64()
            );
            shutdown.draining.cancel();
            shutdown.tasks.close();
            let drained = tokio::time::timeout(settings.drain, async {
                // Errors of connections being closed are not the drain's concern.
                let _ = (&mut server).await;
                shutdown.tasks.wait().await;
            })
            .await;
            if drained.is_err() {
                note!(
                    "runbox serve: drain time over; {} command(s) still running keep running and save their results",
                    shutdown.tasks.len()
                );
            }
            ExitCode::SUCCESS
        }
    };
    client.shutdown().await;
    if let Some(topic) = topic {
        note!("runbox serve: topic: {}", topic.stats.summary());
    }
    note!("runbox serve: stopped");
    Ok(code)
}
