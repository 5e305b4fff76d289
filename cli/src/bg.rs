//! `runbox bg ...` and `runbox exec --background`: background processes from
//! the command line.
//!
//! ```text
//! runbox exec -s S --background -- CMD        prints the handle, nothing else
//! runbox bg list -s S [--json]                 HANDLE STATE EXIT STARTED COMMAND
//! runbox bg logs -s S HANDLE [-f]              stdout to stdout, stderr to stderr
//! runbox bg kill -s S (HANDLE | --all | --match TEXT)
//! runbox bg wait -s S HANDLE [--timeout SECS]  exits with the process's code
//! ```
//!
//! `bg wait` exits like `runbox exec`: the process's exit code, 124 when it
//! timed out or when the wait's `--timeout` elapsed first (the process
//! still runs; the message says which), 130 when it was cancelled (killed),
//! 125 when it was LOST or REJECTED, 66 when the handle is unknown.
//! `bg logs -f` reads new output every 0.5 s (chunk objects raise no events)
//! and stops at once when the process's completion event arrives.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use runbox_dispatcher::{
    BackgroundHandle, BackgroundState, Client, Error, ExecResult, Session, Stream,
};

use crate::exec::exit_code;
use crate::stdout::{Stdout, note};
use crate::{seconds, timestamp};

/// Background process operations.
#[derive(Subcommand)]
pub enum BgCommand {
    /// List a session's background processes, running and ended.
    List {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a background process's output so far (stdout to stdout,
    /// stderr to stderr).
    Logs {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The handle printed by `runbox exec --background`.
        handle: String,
        /// Keep printing new output until the process ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop background processes: SIGTERM, then SIGKILL after the kill grace.
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Kill {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The handle of the process to stop.
        #[arg(group = "which")]
        handle: Option<String>,
        /// Stop every running background process of the session.
        #[arg(long, group = "which")]
        all: bool,
        /// Stop the running processes whose command contains this text
        /// (plain substring, case-sensitive).
        #[arg(long = "match", value_name = "TEXT", group = "which")]
        pattern: Option<String>,
    },
    /// Wait for a background process to end; exit with its exit code.
    Wait {
        /// The session (default: `default`, as for `runbox exec`).
        #[arg(short, long, default_value = "default")]
        session: String,
        /// The handle.
        handle: String,
        /// Give up after this many seconds (fractions allowed; 0 looks once
        /// without waiting); default RUNBOX_MAX_TIMEOUT_SECS.
        #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = seconds::wait)]
        timeout: Option<Duration>,
    },
}

impl BgCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        matches!(self, BgCommand::List { json: true, .. })
    }
}

/// Runs one `bg` subcommand.
pub async fn run(client: &Client, command: BgCommand) -> Result<ExitCode, Error> {
    match command {
        BgCommand::List { session, json } => list(client, &session, json).await,
        BgCommand::Logs {
            session,
            handle,
            follow,
        } => {
            let handle = client.session(&session)?.background(&handle).await?;
            logs(client, &handle, follow).await
        }
        BgCommand::Kill {
            session,
            handle,
            all,
            pattern,
        } => {
            let session = client.session(&session)?;
            let results = match (handle, pattern) {
                (Some(h), _) => vec![session.kill_background(&h).await?],
                (None, Some(p)) => session.kill_background_matching(&p).await?,
                (None, None) => {
                    debug_assert!(all, "clap requires one of HANDLE, --all, --match");
                    session.kill_all_background().await?
                }
            };
            if results.is_empty() {
                note!(
                    "no running background process in session {} matched",
                    session.id()
                );
            }
            for r in &results {
                note!("{}: {}", r.execution_id, describe_end(r));
            }
            Ok(ExitCode::SUCCESS)
        }
        BgCommand::Wait {
            session,
            handle,
            timeout,
        } => {
            let timeout = timeout.unwrap_or(client.config().limits.max_timeout);
            let handle = client.session(&session)?.background(&handle).await?;
            let result = client.wait_background(&handle, timeout).await?;
            // As for `exec`: a note is shown whatever the status.
            if !result.exec_status().is_exit() || !result.message.is_empty() {
                note!("runbox: {}: {}", handle, describe_end(&result));
            }
            Ok(exit_code(&result))
        }
    }
}

/// `runbox exec --background`: starts the command and prints its handle
/// (only the handle, so `h=$(runbox exec --background ...)` works).
pub async fn spawn(
    session: &Session,
    command: String,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
) -> Result<ExitCode, Error> {
    let mut spawn = session.spawn(command);
    if let Some(timeout) = timeout {
        spawn = spawn.timeout(timeout);
    }
    for (k, v) in env {
        spawn = spawn.env(k, v);
    }
    let handle = spawn.await?;
    Stdout::new().line(format_args!("{handle}"))?;
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &Client, session: &str, json: bool) -> Result<ExitCode, Error> {
    let entries = client.list_background(session).await?;
    let mut out = Stdout::new();
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                let (state, status, exit_code) = match e.state {
                    BackgroundState::Running => ("running", None, None),
                    BackgroundState::Exited { status, exit_code } => {
                        ("exited", Some(status.name()), Some(exit_code))
                    }
                };
                serde_json::json!({
                    "handle": e.handle.execution_id.as_str(),
                    "sessionId": e.handle.session.as_str(),
                    "command": e.handle.command,
                    "startedAt": timestamp::format(e.handle.started_at),
                    "state": state,
                    "status": status,
                    "exitCode": exit_code,
                })
            })
            .collect();
        out.line(format_args!("{}", serde_json::Value::Array(list)))?;
    } else if entries.is_empty() {
        note!("session {session} has no background processes");
    } else {
        out.line(format_args!(
            "{:<26} {:<10} {:>4}  {:<20} COMMAND",
            "HANDLE", "STATE", "EXIT", "STARTED"
        ))?;
        for e in &entries {
            let (state, exit) = match e.state {
                BackgroundState::Running => ("running".to_owned(), "-".to_owned()),
                BackgroundState::Exited { status, exit_code } => {
                    (status.name().to_lowercase(), exit_code.to_string())
                }
            };
            out.line(format_args!(
                "{:<26} {state:<10} {exit:>4}  {:<20} {}",
                e.handle.execution_id,
                timestamp::format(e.handle.started_at),
                one_line(&e.handle.command)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints both streams from the start; with `follow`, keeps printing as
/// output comes until the process has ended and its last chunks are out, or
/// until the reader of standard output has gone away.
async fn logs(client: &Client, handle: &BackgroundHandle, follow: bool) -> Result<ExitCode, Error> {
    let mut out = Stdout::new();
    if !follow {
        for stream in [Stream::Stdout, Stream::Stderr] {
            // One read returns at most MAX_LOG_READ_BYTES: read on until
            // caught up.
            let mut offset = 0;
            loop {
                let read = client.background_logs(handle, stream, offset).await?;
                write(&mut out, stream, &read.data)?;
                if read.data.is_empty() || (stream == Stream::Stdout && out.gone()) {
                    break;
                }
                offset = read.next_offset;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut offsets = [0u64; 2];
    loop {
        let reads = client
            .follow_background_output(handle, offsets[0], offsets[1])
            .await?;
        for (i, (read, stream)) in reads
            .iter()
            .zip([Stream::Stdout, Stream::Stderr])
            .enumerate()
        {
            offsets[i] = read.next_offset;
            write(&mut out, stream, &read.data)?;
        }
        if reads.iter().all(|r| r.ended) || out.gone() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Writes a chunk of a stream to the same stream of the terminal.
fn write(out: &mut Stdout, stream: Stream, data: &[u8]) -> Result<(), Error> {
    match stream {
        Stream::Stdout => out.bytes(data),
        Stream::Stderr => {
            // A closed stderr is not worth failing the command over.
            let _ = std::io::stderr().lock().write_all(data);
            Ok(())
        }
    }
}

fn describe_end(result: &ExecResult) -> String {
    let status = result.exec_status();
    let end = if status.is_exit() {
        format!("{status}, exit code {}", result.exit_code)
    } else {
        status.to_string()
    };
    if result.message.is_empty() {
        end
    } else {
        format!("{end}: {}", result.message)
    }
}

/// A command on one line of the listing.
fn one_line(command: &str) -> String {
    let line: String = command
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    if command.chars().count() > 80 {
        format!("{line}…")
    } else {
        line
    }
}
