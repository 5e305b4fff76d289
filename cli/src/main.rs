//! `runbox`: run shell commands in stateful sandboxes.
//!
//! Exit status of `runbox exec`: the command's own exit code; 124 when it
//! timed out; 125 when runbox itself failed or the execution was LOST or
//! REJECTED; 130 when it was cancelled; 64 on bad configuration; 2 on bad
//! usage.
//!
//! One module per group of subcommands ([`exec`], [`sessions`], [`files`],
//! [`bg`], [`gc`]), each a thin adapter over the `runbox-dispatcher` library that
//! borrows the one [`Client`] [`run`] owns. A long-running `runbox serve`
//! will be one more such module, `serve.rs`, with its variant in
//! [`Command`]. Everything a subcommand prints to standard output goes
//! through [`stdout::Stdout`], so a reader that closes early
//! (`runbox sessions list | head -1`) ends the printing, not the process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runbox_core::Config;
use runbox_dispatcher::{Client, Error, error_chain};

mod bg;
mod exec;
mod files;
mod gc;
mod sessions;
mod spinner;
mod stdout;

/// runbox itself failed, or the execution was LOST or REJECTED.
const EXIT_RUNBOX: u8 = 125;
/// The configuration from the environment is unusable.
const EXIT_CONFIG: u8 = 64;

/// Run shell commands in stateful, isolated sessions.
///
/// With no cloud configuration everything runs on this machine: objects in
/// RUNBOX_HOME (default ~/.local/share/runbox), commands as child processes.
#[derive(Parser)]
#[command(name = "runbox", version, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a session; cd and export persist to the next command.
    Exec(exec::ExecArgs),
    /// List, show and remove sessions.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Read and write files in a session's workspace without running a command.
    Files {
        #[command(subcommand)]
        command: files::FilesCommand,
    },
    /// Background processes of a session.
    Bg {
        #[command(subcommand)]
        command: bg::BgCommand,
    },
    /// Delete the requests, results and logs of executions that finished
    /// long ago (background processes' are kept while their session lists them).
    Gc(gc::GcArgs),
}

fn main() -> ExitCode {
    // Commands run as this user on the embedded backend: without this,
    // they could read this process's environment (the caller's secrets,
    // runbox's configuration) and memory through /proc.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("runbox: make the process non-dumpable: {e}");
        return ExitCode::from(EXIT_RUNBOX);
    }
    let cli = Cli::parse();
    if let Err(e) = runbox_core::logging::init("warn") {
        eprintln!("runbox: {}", error_chain(&e));
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // Every problem, one per line, so all can be fixed in one go.
            for problem in e.problems() {
                eprintln!("runbox: bad configuration: {problem}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runbox: start runtime: {e}");
            return ExitCode::from(EXIT_RUNBOX);
        }
    };
    runtime.block_on(async move {
        match run(cli, config).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("runbox: {}", error_chain(&e));
                ExitCode::from(EXIT_RUNBOX)
            }
        }
    })
}

/// Connects, runs one subcommand and shuts the client down whatever the
/// subcommand's outcome: on the gcp backend the shutdown deletes this
/// process's Pub/Sub subscription, which an error must not leave behind.
/// Subcommands only borrow the client, so none can skip this.
async fn run(cli: Cli, config: Config) -> Result<ExitCode, Error> {
    let client = Client::from_config(config).await?;
    let outcome = dispatch(&client, cli.command).await;
    client.shutdown().await;
    outcome
}

async fn dispatch(client: &Client, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Exec(args) => exec::run(client, args).await,
        Command::Sessions { command } => sessions::run(client, command).await,
        Command::Files { command } => files::run(client, command).await,
        Command::Bg { command } => bg::run(client, command).await,
        Command::Gc(args) => gc::run(client, args).await,
    }
}
