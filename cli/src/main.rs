//! `runbox`: run shell commands in stateful sandboxes.
//!
//! Exit status of `runbox exec`: the command's own exit code; 124 when it
//! timed out; 125 when runbox itself failed or the execution was LOST or
//! REJECTED; 130 when it was cancelled; 64 on bad configuration; 2 on bad
//! usage.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use runbox_core::Config;
use runbox_dispatcher::{Client, Error, ExecResult, ExecStatus, error_chain};

mod bg;
mod files;
mod spinner;

const EXIT_RUNBOX: u8 = 125;
const EXIT_CONFIG: u8 = 64;

/// Run shell commands in stateful, isolated sessions.
///
/// With no cloud configuration everything runs on this machine: objects in
/// RUNBOX_HOME (default ~/.local/share/runbox), commands as child processes.
#[derive(Parser)]
#[command(name = "runbox", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a session; cd and export persist to the next command.
    Exec(ExecArgs),
    /// List, show and remove sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
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
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Session to run in ([A-Za-z0-9_-]{1,64}); created on first use.
    #[arg(short, long, default_value = "default")]
    session: String,
    /// Timeout in seconds (fractions allowed); default RUNBOX_DEFAULT_TIMEOUT_SECS.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Extra environment variable for this command only (repeatable).
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Print the ExecResult as JSON instead of the command's output.
    #[arg(long)]
    json: bool,
    /// Start the command as a background process and print its handle.
    #[arg(long, conflicts_with = "json")]
    background: bool,
    /// The command, run by bash (several words are joined with spaces).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's state.
    Show {
        /// The session id.
        id: String,
        /// Print the SessionState as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Kill a session's background processes; its state and files stay.
    Close {
        /// The session id.
        id: String,
    },
    /// Destroy a session: kill its background processes, delete all its objects.
    Rm {
        /// The session id.
        id: String,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runbox: bad configuration: {e}");
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

async fn run(cli: Cli, config: Config) -> Result<ExitCode, Error> {
    let client = Client::from_config(config).await?;
    let code = match cli.command {
        Command::Exec(args) => exec(&client, args).await?,
        Command::Sessions { command } => sessions(&client, command).await?,
        Command::Files { command } => files::run(&client, command).await?,
        Command::Bg { command } => bg::run(&client, command).await?,
    };
    client.shutdown().await;
    Ok(code)
}

async fn exec(client: &Client, args: ExecArgs) -> Result<ExitCode, Error> {
    let session = client.session(&args.session)?;
    if args.background {
        return bg::spawn(&session, args.command.join(" "), args.env, args.timeout).await;
    }
    let mut exec = session.exec(args.command.join(" "));
    if let Some(secs) = args.timeout {
        if !secs.is_finite() || secs <= 0.0 {
            return Err(Error::InvalidTimeout {
                requested: Duration::ZERO,
                max: client.config().max_timeout,
            });
        }
        exec = exec.timeout(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    for (k, v) in args.env {
        exec = exec.env(k, v);
    }
    let spinner = spinner::Spinner::start(format!("running in session {}", session.id()));
    let started = Instant::now();
    let outcome = exec.await;
    spinner.stop().await;
    let result = match outcome {
        Ok(r) => r,
        Err(Error::StateConflict { session, result }) => {
            eprintln!(
                "runbox: warning: session {session} changed while this command ran; its cwd and env were not saved"
            );
            *result
        }
        Err(e) => return Err(e),
    };
    if args.json {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut out, &result);
        let _ = writeln!(out);
    } else {
        print_stream(client, &result.stdout, &result.stdout_log, false).await?;
        print_stream(client, &result.stderr, &result.stderr_log, true).await?;
    }
    let status = result.exec_status();
    match status {
        ExecStatus::Succeeded | ExecStatus::Failed => {}
        ExecStatus::TimedOut => eprintln!(
            "runbox: timed out after {:.1}s; the command's processes were killed",
            started.elapsed().as_secs_f64()
        ),
        _ if !args.json => eprintln!("runbox: execution {}: {}", status, describe(&result)),
        _ => {}
    }
    Ok(exit_code(&result))
}

fn describe(result: &ExecResult) -> &str {
    if result.message.is_empty() {
        "no details"
    } else {
        &result.message
    }
}

/// Writes a stream as the command produced it: from the log object when the
/// inline text is truncated or lossy, so the terminal gets the exact bytes.
async fn print_stream(client: &Client, inline: &str, log: &str, stderr: bool) -> Result<(), Error> {
    let bytes = if log.is_empty() {
        bytes::Bytes::copy_from_slice(inline.as_bytes())
    } else {
        client.read_log(log).await?
    };
    // A closed pipe (`runbox exec ... | head`) is not an error of runbox's.
    let _ = if stderr {
        std::io::stderr().lock().write_all(&bytes)
    } else {
        std::io::stdout().lock().write_all(&bytes)
    };
    Ok(())
}

fn exit_code(result: &ExecResult) -> ExitCode {
    match result.exec_status() {
        ExecStatus::Succeeded | ExecStatus::Failed => {
            ExitCode::from(u8::try_from(result.exit_code.clamp(0, 255)).unwrap_or(1))
        }
        ExecStatus::TimedOut => ExitCode::from(124),
        ExecStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::from(EXIT_RUNBOX),
    }
}

async fn sessions(client: &Client, command: SessionsCommand) -> Result<ExitCode, Error> {
    match command {
        SessionsCommand::List { json } => {
            let sessions = client.list_sessions().await?;
            if json {
                let list: Vec<_> = sessions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "sessionId": s.id.as_str(),
                            "state": s.state,
                            "backgroundRunning": s.background_running,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if sessions.is_empty() {
                eprintln!("no sessions in {}", client.store().describe());
            } else {
                println!(
                    "{:<24} {:>8} {:>6} {:>4}  {:<24} CWD",
                    "SESSION", "COMMANDS", "ENV", "BG", "LAST USED"
                );
                for s in &sessions {
                    let (count, env, used, cwd) = match &s.state {
                        Some(st) => (
                            st.exec_count.to_string(),
                            st.env.len().to_string(),
                            format_time(st.updated_at),
                            st.cwd.clone(),
                        ),
                        None => ("0".into(), "0".into(), "-".into(), "-".into()),
                    };
                    println!(
                        "{:<24} {count:>8} {env:>6} {:>4}  {used:<24} {cwd}",
                        s.id, s.background_running
                    );
                }
            }
        }
        SessionsCommand::Show { id, json } => {
            let info = client.session_info(&id).await?;
            match (&info.state, json) {
                (Some(state), true) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(state).unwrap_or_default()
                    );
                }
                (None, true) => println!("null"),
                (None, false) => println!("session {id}: no command has completed yet"),
                (Some(st), false) => {
                    println!("session:   {id}");
                    println!("cwd:       {}", st.cwd);
                    println!("commands:  {}", st.exec_count);
                    println!("last:      {}", st.last_execution_id);
                    println!("created:   {}", format_time(st.created_at));
                    println!("last used: {}", format_time(st.updated_at));
                    println!("background: {} running", info.background_running);
                    println!("env:       {} exported", st.env.len());
                    for (k, v) in &st.env {
                        println!("  {k}={v}");
                    }
                    if !st.unset_env.is_empty() {
                        println!("unset:     {}", st.unset_env.join(" "));
                    }
                }
            }
        }
        SessionsCommand::Close { id } => {
            let killed = client.close_session(&id).await?;
            eprintln!(
                "closed session {id} ({} background process(es) killed)",
                killed.len()
            );
        }
        SessionsCommand::Rm { id } => {
            let n = client.delete_session(&id).await?;
            eprintln!("removed session {id} ({n} objects)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn format_time(ts: Option<runbox_proto::Timestamp>) -> String {
    ts.and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".to_owned())
}
