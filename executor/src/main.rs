//! `runbox-executor`: runs one execution. Configured only by environment:
//! `RUNBOX_EXECUTION_ID` names the request to run; the store is chosen by the
//! same variables as the dispatcher's (`RUNBOX_BACKEND`, `RUNBOX_HOME`,
//! `RUNBOX_BUCKET`, ...). Exit status: 0 when a result object exists for the
//! execution (ours or an earlier one), 1 when none could be written, 64 on
//! bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use runbox_core::ExecutionId;
use runbox_core::config::{BackendConfig, Config};
use runbox_core::contract::{DEFAULT_WORKSPACE_BASE, EXECUTION_ID_ENV, WORKSPACE_DIR_ENV};
use runbox_executor::{Outcome, Settings, error_chain, execute, process};

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    if let Err(e) = runbox_core::logging::init("info") {
        eprintln!("runbox-executor: {}", error_chain(&e));
    }
    let id = match std::env::var(EXECUTION_ID_ENV) {
        Ok(v) => match ExecutionId::new(&v) {
            Ok(id) => id,
            Err(e) => return config_error(&format!("{EXECUTION_ID_ENV}: {e}")),
        },
        Err(_) => return config_error(&format!("{EXECUTION_ID_ENV} must be set")),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()),
    };
    let workspace_base = match &config.backend {
        BackendConfig::Local(embedded) => embedded.home.clone(),
        BackendConfig::Gcp(_) => std::env::var_os(WORKSPACE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKSPACE_BASE)),
    };
    // Orphans that escape the command's process group are re-parented here,
    // so the executor can kill them before it exits.
    process::become_subreaper();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runbox-executor: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Handlers go in before anything else: a SIGTERM (Cloud Run's cancel,
        // `runbox bg kill`) that arrives while the request is still loading
        // must cancel the command, not kill the executor before it can
        // write a CANCELLED result.
        let cancel = shutdown_signal();
        let store = match runbox_core::backend::open_store(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("runbox-executor: open store: {}", error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        let settings = Settings {
            execution_id: id.clone(),
            config,
            workspace_base,
        };
        match execute(store, &settings, cancel).await {
            Ok(Outcome::Written(r)) => {
                tracing::debug!(
                    execution = %id,
                    status = %r.exec_status(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "result written"
                );
                ExitCode::SUCCESS
            }
            Ok(Outcome::AlreadyWritten(_)) => {
                tracing::warn!(execution = %id, "a result already existed; ours was dropped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("runbox-executor: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(message: &str) -> ExitCode {
    // A configuration error lists one problem per line: each gets the
    // prefix, so every line of the log says where it comes from.
    for line in message.lines() {
        eprintln!("runbox-executor: bad configuration: {line}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Installs SIGTERM (Cloud Run's cancel) and SIGINT handlers now and
/// returns a future that resolves when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the default action (exit) applies, and
            // reconciliation reports the execution LOST.
            _ => std::future::pending().await,
        }
    }
}
