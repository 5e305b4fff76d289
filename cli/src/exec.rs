//! `runbox exec`: one command in a session, its output on the terminal and
//! its exit status as runbox's own.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runbox_dispatcher::{Client, Error, ExecResult, ExecStatus, OutputStream, Stream};
use tokio::io::AsyncReadExt;

use crate::failure::{EXIT_CANCELLED, EXIT_RUNBOX, EXIT_TIMED_OUT};
use crate::stdout::{Stdout, io_error, note};
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
    // Streamed: a warm session's command reads it as it comes; elsewhere
    // the library collects it whole first, and too much is refused like a
    // bad flag (exit 2, JSON with `--json`) before anything is written.
    if !std::io::stdin().is_terminal() {
        let (streamed, writer) = exec.stdin_stream();
        exec = streamed;
        stream_stdin(writer);
    }
    if let Some(timeout) = args.timeout {
        exec = exec.timeout(timeout);
    }
    for (k, v) in args.env {
        exec = exec.env(k, v);
    }
    let spinner = spinner::Spinner::start(format!("running in session {}", session.id()));
    let started = Instant::now();
    // With --json stdout carries the result only: nothing to show live.
    let (outcome, printed) = if args.json {
        let outcome = interrupt::run(exec).await;
        spinner.stop().await;
        (outcome, [0, 0])
    } else {
        let interrupts = interrupt::Interrupts::install();
        let cancel = exec.cancel_handle();
        let (output, running) = exec.streaming();
        let printer = tokio::spawn(print_live(output, spinner));
        let outcome = interrupt::run_future(interrupts, cancel, running).await;
        if outcome.is_none() {
            printer.abort();
        }
        // Every chunk is in the stream by the time the result is, and the
        // stream ends right after, so this wait is short.
        let printed = match printer.await {
            Ok(Ok(printed)) => printed,
            Ok(Err(e)) => return Err(e),
            Err(_) => [0, 0],
        };
        (outcome, printed)
    };
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
        // What was shown live is the start of the record; the rest (all of
        // it, when the preview stopped early or never came) follows.
        let [out_skip, err_skip] = printed;
        print_stream(
            client,
            &result.stdout,
            &result.stdout_log,
            out_skip,
            Some(&mut out),
        )
        .await?;
        print_stream(client, &result.stderr, &result.stderr_log, err_skip, None).await?;
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

/// Feeds runbox's own stdin to the command as it arrives, and closes the
/// command's at its end. Nothing is read from a terminal (a person typing
/// a command does not mean to feed it). A closed stdin (`<&-`) reads as
/// empty: the standard library opens `/dev/null` in its place at start,
/// and reads EBADF as the end. A thread, because reading a pipe or a
/// terminal blocks; it stops once the command takes no more, and one left
/// waiting for input ends with the process.
fn stream_stdin(writer: runbox_dispatcher::StdinWriter) {
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if runtime.block_on(writer.write(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = runtime.block_on(writer.close());
    });
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
/// The log is streamed, a piece at a time, so memory stays flat however much
/// the command printed. The command's stdout goes to `stdout`; with `None`,
/// the stream is the command's stderr and goes to runbox's.
async fn print_stream(
    client: &Client,
    inline: &str,
    log: &str,
    mut skip: u64,
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
        let rest = usize::try_from(skip)
            .ok()
            .and_then(|skip| inline.as_bytes().get(skip..))
            .unwrap_or_default();
        write(rest)?;
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
        if n == 0 {
            return Ok(());
        }
        let skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(n);
        skip -= skipped as u64;
        if skipped < n && !write(&chunk[skipped..n])? {
            return Ok(());
        }
    }
}

/// Prints a command's output as it runs: stdout chunks to runbox's stdout,
/// stderr chunks to its stderr, each flushed at once. Stops the spinner at
/// the first chunk (it shares the terminal). Returns the bytes written per
/// stream (stdout, stderr), so the result's output is printed from there on.
async fn print_live(
    mut output: OutputStream,
    spinner: spinner::Spinner,
) -> Result<[u64; 2], Error> {
    let mut spinner = Some(spinner);
    let mut out = Stdout::new();
    let mut printed = [0u64; 2];
    while let Some(chunk) = output.next().await {
        if let Some(spinner) = spinner.take() {
            spinner.stop().await;
        }
        match chunk.stream {
            Stream::Stdout => {
                if out.gone() {
                    continue;
                }
                out.bytes(&chunk.data)?;
                printed[0] += chunk.data.len() as u64;
            }
            Stream::Stderr => {
                let mut err = std::io::stderr().lock();
                if err
                    .write_all(&chunk.data)
                    .and_then(|()| err.flush())
                    .is_ok()
                {
                    printed[1] += chunk.data.len() as u64;
                }
            }
        }
    }
    if let Some(spinner) = spinner {
        spinner.stop().await;
    }
    Ok(printed)
}

/// How much of a log object is held at a time while printing it.
const LOG_CHUNK_BYTES: usize = 256 * 1024;
