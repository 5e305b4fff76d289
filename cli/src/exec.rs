//! `runbox exec`: one command in a session, its output on the terminal and
//! its exit status as runbox's own.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runbox_dispatcher::{Client, Error, ExecResult, ExecStatus};

use crate::failure::{EXIT_CANCELLED, EXIT_RUNBOX, EXIT_TIMED_OUT};
use crate::stdout::{Stdout, note};
use crate::{argv, bg, interrupt, seconds, spinner, timestamp};

/// What `runbox exec` takes.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Session to run in ([A-Za-z0-9_-]{1,64}); created on first use.
    #[arg(short, long, default_value = "default")]
    session: String,
    /// Timeout in seconds (fractions allowed, at least 0.001); default
    /// RUNBOX_DEFAULT_TIMEOUT_SECS.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = seconds::timeout)]
    timeout: Option<Duration>,
    /// Extra environment variable for this command only (repeatable).
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Print the ExecResult as JSON instead of the command's output.
    #[arg(long)]
    json: bool,
    /// Start the command as a background process and print its handle.
    #[arg(long, conflicts_with = "json")]
    background: bool,
    /// The command after `--`: one word is a bash script ('cd /tmp && ls');
    /// several words are one command with exactly those arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl ExecArgs {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Runs `runbox exec`; the exit code is the command's (see the crate docs).
pub async fn run(client: &Client, args: ExecArgs) -> Result<ExitCode, Error> {
    let session = client.session(&args.session)?;
    let script = argv::script(&args.command);
    if args.background {
        return bg::spawn(&session, script, args.env, args.timeout).await;
    }
    let mut exec = session.exec(script);
    if let Some(timeout) = args.timeout {
        exec = exec.timeout(timeout);
    }
    for (k, v) in args.env {
        exec = exec.env(k, v);
    }
    let spinner = spinner::Spinner::start(format!("running in session {}", session.id()));
    let started = Instant::now();
    let outcome = interrupt::run(exec).await;
    spinner.stop().await;
    let Some(outcome) = outcome else {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    };
    let result = match outcome {
        Ok(r) => r,
        Err(Error::Cancelled) => {
            note!("runbox: cancelled before it started; nothing ran");
            return Ok(ExitCode::from(EXIT_CANCELLED));
        }
        Err(Error::StateConflict { session, result }) => {
            note!(
                "runbox: warning: session {session} changed while this command ran; its cwd and env were not saved"
            );
            *result
        }
        Err(e) => return Err(e),
    };
    let mut out = Stdout::new();
    if args.json {
        let value = result_json(&result);
        out.write_with(|w| {
            serde_json::to_writer_pretty(&mut *w, &value)?;
            writeln!(w)
        })?;
    } else {
        print_stream(client, &result.stdout, &result.stdout_log, Some(&mut out)).await?;
        print_stream(client, &result.stderr, &result.stderr_log, None).await?;
    }
    report_end(&result, started.elapsed());
    Ok(exit_code(&result))
}

/// Says on stderr what the exit status alone does not: that the command
/// timed out, or was not run to its end, and any note the executor left
/// (nothing saved because the workspace is over the limit, ...), whatever
/// the status and with `--json` too, where stdout carries only JSON.
fn report_end(result: &ExecResult, elapsed: Duration) {
    let status = result.exec_status();
    let message = (!result.message.is_empty()).then_some(result.message.as_str());
    match (status, message) {
        (ExecStatus::Succeeded | ExecStatus::Failed, None) => {}
        (ExecStatus::Succeeded | ExecStatus::Failed, Some(message)) => note!("runbox: {message}"),
        (ExecStatus::TimedOut, message) => {
            note!(
                "runbox: timed out after {:.1}s; the command's processes were killed",
                elapsed.as_secs_f64()
            );
            if let Some(message) = message {
                note!("runbox: {message}");
            }
        }
        (_, message) => note!(
            "runbox: execution {status}: {}",
            message.unwrap_or("no details")
        ),
    }
}

/// The result as `--json` prints it: the `ExecResult`, its times in the
/// CLI's one format.
fn result_json(result: &ExecResult) -> serde_json::Value {
    let mut value = serde_json::to_value(result).unwrap_or_default();
    timestamp::normalise(
        &mut value,
        &[
            ("startedAt", result.started_at),
            ("completedAt", result.completed_at),
        ],
    );
    value
}

/// The exit status of `runbox exec` (and `runbox bg wait`) for a result.
pub fn exit_code(result: &ExecResult) -> ExitCode {
    match result.exec_status() {
        // The command succeeded but runbox lost some of what it did: that
        // is runbox's failure, not the command's.
        ExecStatus::Failed if result.exit_code == 0 && !result.not_saved.is_empty() => {
            ExitCode::from(EXIT_RUNBOX)
        }
        ExecStatus::Succeeded | ExecStatus::Failed => {
            ExitCode::from(u8::try_from(result.exit_code.clamp(0, 255)).unwrap_or(1))
        }
        ExecStatus::TimedOut => ExitCode::from(EXIT_TIMED_OUT),
        ExecStatus::Cancelled => ExitCode::from(EXIT_CANCELLED),
        _ => ExitCode::from(EXIT_RUNBOX),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Writes a stream as the command produced it: from the log object when the
/// inline text is truncated or lossy, so the terminal gets the exact bytes.
/// The command's stdout goes to `stdout`; with `None`, the stream is the
/// command's stderr and goes to runbox's.
async fn print_stream(
    client: &Client,
    inline: &str,
    log: &str,
    stdout: Option<&mut Stdout>,
) -> Result<(), Error> {
    let logged;
    let bytes: &[u8] = if log.is_empty() {
        inline.as_bytes()
    } else {
        logged = client.read_log(log).await?;
        &logged
    };
    match stdout {
        Some(out) => out.bytes(bytes),
        None => {
            // As with the status messages: a closed stderr is not worth
            // failing the command over.
            let _ = std::io::stderr().lock().write_all(bytes);
            Ok(())
        }
    }
}
