//! `runbox exec`: one command in a session, its output on the terminal and
//! its exit status as runbox's own.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runbox_dispatcher::{Client, Error, ExecResult, ExecStatus};
use tokio::io::AsyncReadExt;

use crate::stdout::{Stdout, io_error};
use crate::{EXIT_RUNBOX, bg, spinner};

/// What `runbox exec` takes.
#[derive(clap::Args)]
pub struct ExecArgs {
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

/// Runs `runbox exec`; the exit code is the command's (see the crate docs).
pub async fn run(client: &Client, args: ExecArgs) -> Result<ExitCode, Error> {
    let session = client.session(&args.session)?;
    if args.background {
        return bg::spawn(&session, args.command.join(" "), args.env, args.timeout).await;
    }
    let stdin = match read_stdin(client.config().limits.stdin_cap) {
        Ok(data) => data,
        // Bad input, like a bad flag: said before anything is written.
        Err(e @ Error::StdinTooLarge { .. }) => {
            eprintln!("runbox: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e),
    };
    let mut exec = session.exec(args.command.join(" "));
    if !stdin.is_empty() {
        exec = exec.stdin(stdin);
    }
    if let Some(secs) = args.timeout {
        if !secs.is_finite() || secs <= 0.0 {
            return Err(Error::InvalidTimeout {
                requested: Duration::ZERO,
                max: client.config().limits.max_timeout,
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
    let mut out = Stdout::new();
    if args.json {
        out.write_with(|w| {
            serde_json::to_writer_pretty(&mut *w, &result)?;
            writeln!(w)
        })?;
    } else {
        print_stream(client, &result.stdout, &result.stdout_log, Some(&mut out)).await?;
        print_stream(client, &result.stderr, &result.stderr_log, None).await?;
    }
    let status = result.exec_status();
    match status {
        // A note the executor left (nothing saved because the workspace is
        // over the limit, ...) matters whatever the command's own status.
        ExecStatus::Succeeded | ExecStatus::Failed if !args.json && !result.message.is_empty() => {
            eprintln!("runbox: {}", result.message)
        }
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

/// Exit status for bad usage or bad input (as clap's own).
const EXIT_USAGE: u8 = 2;

/// The command's standard input: what runbox's own stdin holds, read to its
/// end, at most `cap` bytes (`RUNBOX_STDIN_CAP_BYTES`). Nothing is read from
/// a terminal (a person typing a command does not mean to feed it). A closed
/// stdin (`<&-`) reads as empty: the standard library opens `/dev/null` in
/// its place at start, and reads EBADF as the end.
fn read_stdin(cap: u64) -> Result<Vec<u8>, Error> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut data = Vec::new();
    // One byte past the cap tells "exactly the cap" from "more".
    stdin
        .lock()
        .take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| io_error("read standard input", e))?;
    if data.len() as u64 > cap {
        return Err(Error::StdinTooLarge { max: cap });
    }
    Ok(data)
}

/// The exit status of `runbox exec` (and `runbox bg wait`) for a result.
pub fn exit_code(result: &ExecResult) -> ExitCode {
    match result.exec_status() {
        ExecStatus::Succeeded | ExecStatus::Failed => {
            ExitCode::from(u8::try_from(result.exit_code.clamp(0, 255)).unwrap_or(1))
        }
        ExecStatus::TimedOut => ExitCode::from(124),
        ExecStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::from(EXIT_RUNBOX),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
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
/// The log is streamed, a piece at a time, so memory stays flat however much
/// the command printed. The command's stdout goes to `stdout`; with `None`,
/// the stream is the command's stderr and goes to runbox's.
async fn print_stream(
    client: &Client,
    inline: &str,
    log: &str,
    mut stdout: Option<&mut Stdout>,
) -> Result<(), Error> {
    let mut write = |bytes: &[u8]| match stdout.as_deref_mut() {
        Some(out) => out.bytes(bytes).map(|()| !out.gone()),
        None => {
            // As with the status messages: a closed stderr is not worth
            // failing the command over.
            Ok(std::io::stderr().lock().write_all(bytes).is_ok())
        }
    };
    if log.is_empty() {
        write(inline.as_bytes())?;
        return Ok(());
    }
    let (_, mut stream) = client.open_log(log).await?;
    let mut chunk = vec![0u8; LOG_CHUNK_BYTES];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_error(format!("read log {log}"), e))?;
        // Stop at the end, or once the reader has gone: the rest would
        // only be thrown away.
        if n == 0 || !write(&chunk[..n])? {
            return Ok(());
        }
    }
}

/// How much of a log object is held at a time while printing it.
const LOG_CHUNK_BYTES: usize = 256 * 1024;
