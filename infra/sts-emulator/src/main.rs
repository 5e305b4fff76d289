//! `runbox-sts-emulator --upstream URL --source-token TOKEN [--listen ADDR] [--token-ttl-secs N]`
//! (or the token in `RUNBOX_STS_SOURCE_TOKEN`)
//!
//! Serves the token exchange and the boundary-enforcing Cloud Storage proxy
//! (see the library docs). The first line on stdout is `listening on
//! HOST:PORT`. Exits 64 on bad arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Exit status for a command line that cannot be used (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// A stand-in for Google's token exchange and Cloud Storage's boundary checks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// fake-gcs-server's base URL.
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// The dispatcher's token: may do everything, and is the only subject
    /// token the exchange accepts. Better passed in the environment, where
    /// (the process being non-dumpable) other users cannot read it.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RUNBOX_STS_SOURCE_TOKEN",
        hide_env_values = true
    )]
    source_token: String,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    token_ttl_secs: u64,
}

fn main() -> ExitCode {
    // Commands under test must not find the source token in this process's
    // environment or memory through /proc.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("error: make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if cli.source_token.is_empty() || !cli.upstream.starts_with("http") {
        eprintln!("error: --source-token must be non-empty and --upstream an http(s) URL");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = runbox_sts_emulator::Settings {
        upstream: cli.upstream.trim_end_matches('/').to_owned(),
        source_token: cli.source_token,
        token_ttl: Duration::from_secs(cli.token_ttl_secs),
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen).await?;
        println!("listening on {}", listener.local_addr()?);
        runbox_sts_emulator::serve(listener, settings).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
