//! `runbox`: run shell commands in stateful sandboxes.
//!
//! Exit status, the same for every subcommand (the README has the same
//! table; [`failure`] holds the codes): the command's own exit code for
//! `exec` and `bg wait`; 124 when it timed out (or `bg wait --timeout`
//! elapsed); 130 when it was cancelled; 2 on bad usage or bad input; 66
//! when a session, file or background handle does not exist; 64 on bad
//! configuration; 125 when runbox itself failed or the execution was LOST
//! or REJECTED. With `--json`, an error is printed as JSON on standard
//! output (see [`failure`]).
//!
//! One module per group of subcommands ([`exec`], [`sessions`], [`files`],
//! [`bg`], [`gc`]), each a thin adapter over the `runbox-dispatcher` library that
//! borrows the one [`Client`] [`run`] owns. The long-running `runbox serve`
//! ([`serve`]) owns its client instead, for the whole life of the service. Everything a subcommand prints to standard output goes
//! through [`stdout::Stdout`], so a reader that closes early
//! (`runbox sessions list | head -1`) ends the printing, not the process.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand};
use runbox_core::Config;
use runbox_core::contract::TRACEPARENT_ENV;
use runbox_core::logging::{Logging, Telemetry, TelemetryConfig};
use runbox_core::trace_context;
use runbox_dispatcher::{Client, Error, error_chain};
use tracing::Instrument as _;

use crate::failure::{EXIT_RUNBOX, EXIT_USAGE, Failure, Kind};
use crate::stdout::note;

mod argv;
mod bg;
mod doctor;
mod exec;
mod failure;
mod files;
mod gc;
mod interrupt;
mod seconds;
mod serve;
mod sessions;
mod spinner;
mod stdout;
mod timestamp;

/// Shown under the help of bare `runbox`: the tool at a glance.
const EXAMPLES: &str = "\
Examples:
  runbox exec -- 'cd /tmp && export A=1'   one word: a bash script; cd and export persist
  runbox exec -- printf '%s\\n' \"a b\" c     several words: one command with these arguments
  runbox exec -s web --background -- 'python -m http.server'
  runbox files read notes.txt               the session defaults to `default`

Exit status: the command's own; 124 timed out; 130 cancelled; 2 bad usage or
input; 66 not found; 64 bad configuration; 125 runbox failed.";

/// Run shell commands in stateful, isolated sessions.
///
/// With no cloud configuration everything runs on this machine: objects in
/// RUNBOX_HOME (default ~/.local/share/runbox), commands as child processes.
#[derive(Parser)]
#[command(name = "runbox", version, long_about, after_help = EXAMPLES)]
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
    /// Serve the HTTP API (see /openapi.json) until SIGTERM.
    Serve(serve::ServeArgs),
    /// Check the configured deployment end to end: store, completion
    /// events, job template, permissions, OTLP endpoint. Exit 0 when no
    /// check failed, 1 when one did.
    Doctor(doctor::DoctorArgs),
}

impl Command {
    /// The subcommand's name, for its span.
    fn name(&self) -> &'static str {
        match self {
            Command::Exec(_) => "exec",
            Command::Sessions { .. } => "sessions",
            Command::Files { .. } => "files",
            Command::Bg { .. } => "bg",
            Command::Gc(_) => "gc",
            Command::Doctor(_) => "doctor",
            Command::Serve(_) => "serve",
        }
    }

    /// Whether the subcommand was asked for JSON, errors included.
    fn json(&self) -> bool {
        match self {
            Command::Exec(args) => args.json(),
            Command::Sessions { command } => command.json(),
            Command::Bg { command } => command.json(),
            Command::Gc(args) => args.json(),
            Command::Doctor(args) => args.json(),
            Command::Files { .. } | Command::Serve(_) => false,
        }
    }
}

fn main() -> ExitCode {
    // Commands run as this user on the embedded backend: without this,
    // they could read this process's environment (the caller's secrets,
    // runbox's configuration) and memory through /proc.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        note!("runbox: make the process non-dumpable: {e}");
        return ExitCode::from(EXIT_RUNBOX);
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, &argv),
    };
    let json = cli.command.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Failure::new(Kind::Runbox, format!("start runtime: {e}")).report(json);
        }
    };
    // `serve` lives on: its spans leave in batches as they end. Every
    // other subcommand is one task whose spans wait for its exit.
    let export_at_exit = !matches!(cli.command, Command::Serve(_));
    let telemetry = start_logging(&runtime, export_at_exit);
    let (code, client) = run_with_config(cli, json, &runtime);
    // Before the runtime goes: the exporters' channel runs on it. The
    // command's spans have ended, so their export overlaps the client's
    // shutdown (closing the event source takes the kernel milliseconds)
    // instead of following it. The export is polled first, so its requests
    // are on their way before the client's shutdown takes its turn.
    runtime.block_on(async move {
        let client = async move {
            if let Some(client) = client {
                client.shutdown().await;
            }
        };
        tokio::join!(telemetry.shutdown(), client);
    });
    code
}

/// Installs the logger and, when the `OTEL_*` variables ask for it, the
/// export of traces and metrics: at the exit only when `export_at_exit`
/// (see [`TelemetryConfig::export_at_exit`]).
fn start_logging(runtime: &tokio::runtime::Runtime, export_at_exit: bool) -> Telemetry {
    let config = match TelemetryConfig::from_lookup("runbox", |name| std::env::var(name).ok()) {
        Ok(c) => TelemetryConfig {
            export_at_exit,
            ..c
        },
        Err(e) => {
            note!("runbox: telemetry is off: {}", error_chain(&e));
            TelemetryConfig::default()
        }
    };
    let _entered = runtime.enter();
    let (telemetry, outcome) = Logging::new("warn").init_with_telemetry(&config);
    if let Err(e) = outcome {
        note!("runbox: {}", error_chain(&e));
    }
    telemetry
}

/// Reads the configuration and runs the subcommand in one `runbox` span,
/// which continues the caller's trace when `TRACEPARENT` names one. The
/// client the subcommand used is returned for the caller to shut down.
fn run_with_config(
    cli: Cli,
    json: bool,
    runtime: &tokio::runtime::Runtime,
) -> (ExitCode, Option<Client>) {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // Every problem, one per line, so all can be fixed in one go.
            let problems: Vec<String> = e
                .problems()
                .iter()
                .map(|p| format!("bad configuration: {p}"))
                .collect();
            return (
                Failure::new(Kind::Config, problems.join("\n")).report(json),
                None,
            );
        }
    };
    // `serve` runs for days: each request it takes is a trace of its own.
    let span = match cli.command {
        Command::Serve(_) => tracing::Span::none(),
        ref command => tracing::info_span!("runbox", command = command.name()),
    };
    trace_context::continue_from(&span, std::env::var(TRACEPARENT_ENV).ok().as_deref());
    let mut client = None;
    let code = runtime.block_on(
        async {
            match run(cli, config, &mut client).await {
                Ok(code) => code,
                Err(e) => Failure::from_error(&e).report(json),
            }
        }
        .instrument(span),
    );
    (code, client)
}

/// A command line clap refused. Help and version are printed as clap
/// prints them; an error is exit 2, as JSON when the subcommand's `--json`
/// is there, with a hint when `exec` lacks the `--` before its command.
fn usage_error(error: &clap::Error, argv: &[OsString]) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let hint = exec_hint(error, argv);
    // Only the words before `--` are runbox's: `--json` after it belongs to
    // the command.
    let json = argv
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    if json {
        let text = error.render().to_string();
        let text = text.trim_start_matches("error: ").trim_end();
        let message = match hint {
            Some(hint) => format!("{text}\n{hint}"),
            None => text.to_owned(),
        };
        return Failure::new(Kind::Usage, message).report(true);
    }
    // Printed as clap prints it (colours on a terminal); a closed stderr is
    // nothing to fail over.
    let _ = error.print();
    if let Some(hint) = hint {
        note!("{hint}");
    }
    ExitCode::from(EXIT_USAGE)
}

/// For `runbox exec` without `--` before its command: the command line
/// that was probably meant.
fn exec_hint(error: &clap::Error, argv: &[OsString]) -> Option<String> {
    let words: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if words.get(1).map(String::as_str) != Some("exec") || words.iter().any(|w| w == "--") {
        return None;
    }
    let example = "hint: the command goes after `--`, as in: runbox exec -- 'ls -l'";
    match error.kind() {
        ErrorKind::MissingRequiredArgument => Some(example.to_owned()),
        ErrorKind::UnknownArgument => {
            let Some(ContextValue::String(unknown)) = error.get(ContextKind::InvalidArg) else {
                return Some(example.to_owned());
            };
            // An unknown flag is more likely a typo of one of runbox's.
            if unknown.starts_with('-') {
                return None;
            }
            let at = words.iter().skip(2).position(|w| w == unknown)? + 2;
            let mut meant: Vec<String> = words[1..at].iter().map(|w| argv::quote(w)).collect();
            meant.push("--".to_owned());
            meant.extend(words[at..].iter().map(|w| argv::quote(w)));
            Some(format!(
                "hint: the command goes after `--`: runbox {}",
                meant.join(" ")
            ))
        }
        _ => None,
    }
}

/// Connects and runs one subcommand, leaving the client in `client` for
/// the caller to shut down whatever the subcommand's outcome: on the gcp
/// backend the shutdown deletes this process's Pub/Sub subscription, which
/// an error must not leave behind. Subcommands only borrow the client, so
/// none can skip this.
async fn run(cli: Cli, config: Config, client: &mut Option<Client>) -> Result<ExitCode, Error> {
    let command = match cli.command {
        Command::Serve(args) => return serve::run(args, config).await,
        // The doctor checks what a client needs, so it must run where a
        // client could not start.
        Command::Doctor(args) => return doctor::run(args, config).await,
        command => command,
    };
    let client = client.insert(Client::from_config(config).await?);
    dispatch(client, command).await
}

async fn dispatch(client: &Client, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Exec(args) => exec::run(client, args).await,
        Command::Sessions { command } => sessions::run(client, command).await,
        Command::Files { command } => files::run(client, command).await,
        Command::Bg { command } => bg::run(client, command).await,
        Command::Gc(args) => gc::run(client, args).await,
        Command::Serve(_) | Command::Doctor(_) => {
            unreachable!("serve and doctor run without the shared client; run() hands them over")
        }
    }
}
