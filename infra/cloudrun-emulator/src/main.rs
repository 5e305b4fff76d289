//! `runbox-cloudrun-emulator --listen ADDR [--image IMAGE=COMMAND]... [--job NAME=IMAGE]... [--job-env NAME=VALUE]... [--start-delay DUR] [--stats-file FILE]`
//!
//! Serves the Cloud Run Admin API v2 (plaintext gRPC) on ADDR. The first line
//! on stdout is `listening on HOST:PORT` with the bound address (useful with
//! port 0); logs go to stderr. Stops on SIGINT or SIGTERM, killing running
//! tasks. Exits 64 on bad arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use runbox_cloudrun_emulator::{Config, Emulator, ImageMapping, SUPERVISE_ARG, supervise};
use runbox_core::logging::{Color, Logging};

/// Exit status for a command line that cannot be used (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// A local Cloud Run Admin API v2 (Jobs, Executions, Operations) that runs
/// job tasks as local processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Run containers of IMAGE as COMMAND (split on whitespace), followed by
    /// the container's args. Repeatable.
    #[arg(long = "image", value_name = "IMAGE=COMMAND")]
    images: Vec<ImageMapping>,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Write each task's stdout and stderr to DIR/EXECUTION/taskN.{stdout,stderr}
    /// instead of the emulator's own.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Give tasks only PATH and HOME from the emulator's environment.
    #[arg(long)]
    clean_env: bool,
    /// Answer WaitOperation with UNIMPLEMENTED, as an Operations server
    /// without it does (to test clients' fallback).
    #[arg(long)]
    no_wait_operation: bool,
    /// Create a one-task, no-retry job running IMAGE at start, e.g.
    /// `projects/p/locations/local/jobs/runbox=runbox-executor`. Repeatable.
    #[arg(long = "job", value_name = "NAME=IMAGE", value_parser = parse_job)]
    jobs: Vec<(String, String)>,
    /// Set NAME=VALUE in the container env of every `--job` job, as a
    /// deployed job template does (what `runbox doctor` checks).
    /// Repeatable.
    #[arg(long = "job-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    job_env: Vec<(String, String)>,
    /// Delay each execution's start by DURATION after RunJob, as Cloud
    /// Run's container start does (e.g. `2s`).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    start_delay: Duration,
    /// Rewrite FILE after every RunJob call with the counters as JSON,
    /// `{"runJobCalls": N}` (each call is also logged with its count).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Tasks (executors and their commands) are children of this process, as
    // they are of nothing reachable on Cloud Run: they must not read its
    // environment or memory through /proc.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("error: make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    // The same binary supervises each task (see `Config::supervisor`).
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == SUPERVISE_ARG) {
        return supervise(args.collect());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EX_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    // The emulator is configured like any Rust program (RUST_LOG, NO_COLOR),
    // not like runbox; logs go to stderr, as stdout carries the address line.
    let logging = Logging::new("info")
        .filter_var("RUST_LOG")
        .color(Color::UnlessNoColor);
    if let Err(err) = logging.init() {
        eprintln!("error: {:#}", anyhow::Error::new(err));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::default()
        .kill_grace(cli.kill_grace)
        .inherit_env(!cli.clean_env)
        .wait_operation(!cli.no_wait_operation)
        .start_delay(cli.start_delay);
    if let Some(path) = cli.stats_file {
        config = config.stats_file(path);
    }
    match std::env::current_exe() {
        Ok(me) => config = config.supervisor(me),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find the own binary; tasks run unsupervised (only their process group is killed)");
        }
    }
    if let Some(dir) = cli.log_dir {
        config = config.log_dir(dir);
    }
    for mapping in cli.images {
        config = config.mapping(mapping);
    }
    let emulator = Emulator::start(cli.listen, config).await?;
    for (name, image) in &cli.jobs {
        emulator
            .create_job(name, image, &cli.job_env)
            .await
            .with_context(|| format!("creating job {name}"))?;
    }
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", emulator.local_addr())
            .context("writing the address to stdout")?;
        stdout.flush().context("flushing stdout")?;
    }
    emulator.run_until(shutdown_signal()).await?;
    Ok(())
}

/// `--job NAME=IMAGE`, checked with the other arguments so a bad value
/// exits 64 before anything starts.
fn parse_job(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, image))
            if name.starts_with("projects/") && name.contains("/jobs/") && !image.is_empty() =>
        {
            Ok((name.to_owned(), image.to_owned()))
        }
        _ => Err(format!(
            "expected projects/P/locations/L/jobs/J=IMAGE, got {value:?}"
        )),
    }
}

/// `--job-env NAME=VALUE`: a variable name as the Cloud Run API accepts.
fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, v))
            if !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok((name.to_owned(), v.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {value:?}")),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the emulator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
