//! A foreground command: [`Exec`] collects its options, validates them
//! before any side effect, and queues it on its session in the engine;
//! [`CancelHandle`] stops it.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use runbox_core::contract;
use runbox_core::trace_context::{self, Traceparent};
use runbox_core::{Config, ExecutionId, SessionId};
use runbox_proto::ExecResult;

pub use crate::engine::CancelHandle;
use crate::engine::{Handle, Submission};
use crate::error::{Error, Result};
use crate::live_output::{self, LiveTx, OutputStream};
use crate::stdin_stream::{self, FeedSlot, StdinWriter};

/// A command about to run: set options, then `.await`.
///
/// # Tracing
///
/// The command is one `exec` span (with `queue wait`, `launch` and `wait
/// for completion` inside it) whose parent is the caller's current
/// `tracing` span when the future is created, or the remote span given to
/// [`Exec::parent`]. Where the OpenTelemetry layer is installed
/// ([`runbox_core::trace_context`]), the trace continues in the executor and
/// in the completion event.
///
/// # Cancelling, and dropping the future
///
/// [`Exec::cancel_handle`] gives a handle that stops the command:
/// [`CancelHandle::cancel`] kills it (the local launcher signals the
/// executor, which kills the command's whole process group; the Cloud Run
/// launcher calls `CancelExecution`), and the future then resolves once the
/// execution has settled, normally with a stored result whose status is
/// `CANCELLED`. A command that had already finished keeps its own result; a
/// command cancelled before it was launched resolves with
/// [`Error::Cancelled`] without running. Because the future waits for the
/// settled result, the session's next command starts only after the
/// cancelled one has ended.
///
/// Dropping the future does **not** cancel a command that has started: it
/// runs to its end (or its timeout) and the session's later commands still
/// wait for it, because a command with side effects should not be killed
/// by an implicit drop (a `select!` that lost, a caller's own timeout).
/// A future dropped before its turn in the session's queue never runs.
///
/// ```no_run
/// # async fn example(session: runbox_dispatcher::Session) -> Result<(), runbox_dispatcher::Error> {
/// use runbox_dispatcher::ExecStatus;
///
/// let exec = session.exec("make test");
/// let cancel = exec.cancel_handle();
/// let running = tokio::spawn(exec.into_future());
/// // ... later, from anywhere (a Ctrl-C handler, a user's "stop" button):
/// cancel.cancel();
/// let result = running.await.expect("task")?;
/// assert_eq!(result.exec_status(), ExecStatus::Cancelled);
/// # Ok(())
/// # }
/// ```
#[must_use = "an Exec does nothing until awaited"]
pub struct Exec {
    handle: Handle,
    session: SessionId,
    command: String,
    options: Options,
    cancel: CancelHandle,
}

/// What a caller may set on a command, before validation.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) timeout: Option<Duration>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) output_cap: Option<u64>,
    pub(crate) request_id: String,
    pub(crate) stdin: Option<Bytes>,
    pub(crate) stdin_stream: Option<FeedSlot>,
    pub(crate) live: Option<LiveTx>,
    pub(crate) execution_id: Option<ExecutionId>,
    pub(crate) parent: Option<Traceparent>,
}

impl Exec {
    pub(crate) fn new(handle: Handle, session: SessionId, command: String) -> Self {
        Self {
            handle,
            session,
            command,
            options: Options::default(),
            cancel: CancelHandle::default(),
        }
    }

    /// A handle that cancels this command, taken before the command is
    /// awaited; see [`Exec`] for the semantics and an example.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The command's wall-clock limit (default `RUNBOX_DEFAULT_TIMEOUT_SECS`);
    /// more than zero and at most `RUNBOX_MAX_TIMEOUT_SECS`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// An extra environment variable for this command only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.env.insert(name.into(), value.into());
        self
    }

    /// Inline output kept per stream, in bytes (default `RUNBOX_OUTPUT_CAP_BYTES`).
    pub fn output_cap(mut self, bytes: u64) -> Self {
        self.options.output_cap = Some(bytes);
        self
    }

    /// The command's standard input: at most `RUNBOX_STDIN_CAP_BYTES`
    /// (default 16 MiB), else the exec fails with [`Error::StdinTooLarge`]
    /// before anything is written. Without it (or when empty) the command
    /// reads an empty stdin.
    pub fn stdin(mut self, data: impl Into<Bytes>) -> Self {
        self.options.stdin = Some(data.into());
        self.options.stdin_stream = None;
        self
    }

    /// The command's standard input, written while it runs: returns the
    /// exec and a [`StdinWriter`] to write to and close (in place of
    /// [`Exec::stdin`]). In a warm session on the local launcher the
    /// command reads each write as it comes, so a caller can answer its
    /// output; elsewhere (oneshot sessions, the Cloud Run launcher) the
    /// command starts once the writer is closed, with everything written
    /// as its whole stdin (at most `RUNBOX_STDIN_CAP_BYTES`, else
    /// [`Error::StdinTooLarge`]). See [`crate::stdin_stream`].
    ///
    /// ```no_run
    /// # async fn example(session: runbox_dispatcher::Session) -> Result<(), Box<dyn std::error::Error>> {
    /// let (exec, stdin) = session
    ///     .exec("while read l; do echo got $l; done")
    ///     .stdin_stream();
    /// let (mut output, result) = exec.streaming();
    /// let result = tokio::spawn(result);
    /// stdin.write("a\n").await?;
    /// let chunk = output.next().await; // "got a\n", before "b" is written
    /// stdin.write("b\n").await?;
    /// stdin.close().await?;
    /// let result = result.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn stdin_stream(mut self) -> (Self, StdinWriter) {
        let (writer, feed) = stdin_stream::channel();
        self.options.stdin = None;
        self.options.stdin_stream = Some(FeedSlot::new(feed));
        (self, writer)
    }

    /// A correlation id stored in the request.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.options.request_id = id.into();
        self
    }

    /// Runs the command with its output delivered while it runs: returns
    /// the stream of output chunks and the future of the result (the same
    /// as awaiting the `Exec`). The stream ends once the command has ended
    /// and all its chunks were delivered, before the result future
    /// resolves; the result stays the record of the output (see
    /// [`crate::live_output`] for what the stream promises). Reading the
    /// stream is optional: a dropped stream only stops the reads.
    ///
    /// ```no_run
    /// # async fn example(session: runbox_dispatcher::Session) -> Result<(), runbox_dispatcher::Error> {
    /// use std::io::Write;
    /// use runbox_dispatcher::Stream;
    ///
    /// let (mut output, result) = session.exec("for i in 1 2 3; do echo $i; sleep 1; done").streaming();
    /// let result = tokio::spawn(result);
    /// while let Some(chunk) = output.next().await {
    ///     match chunk.stream {
    ///         Stream::Stdout => std::io::stdout().write_all(&chunk.data).ok(),
    ///         Stream::Stderr => std::io::stderr().write_all(&chunk.data).ok(),
    ///     };
    /// }
    /// let result = result.await.expect("task")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn streaming(
        mut self,
    ) -> (
        OutputStream,
        Pin<Box<dyn Future<Output = Result<ExecResult>> + Send>>,
    ) {
        let (tx, stream) = live_output::channel();
        self.options.live = Some(tx);
        (stream, self.into_future())
    }

    /// Runs under this execution id, at most once, however often the exec
    /// is submitted (in this process or any other): the request object is
    /// written create-only, and when it is already there the command does
    /// not run again. The future then resolves with that execution's
    /// result, waiting for it while it runs, or settling it (LOST) when it
    /// ended without one or its deadline (stored in the request) passed.
    /// The stored request must hold the same session, command and request
    /// id, else the exec fails with [`Error::ExecutionIdInUse`] and touches
    /// nothing. For at-least-once callers such as the request topic, which
    /// derive the id with [`runbox_core::RequestId::execution_id`].
    pub fn execution_id(mut self, id: ExecutionId) -> Self {
        self.options.execution_id = Some(id);
        self
    }

    /// Continues the trace of a remote caller (a `traceparent` that came
    /// with a request) instead of the current span's.
    pub fn parent(mut self, parent: Traceparent) -> Self {
        self.options.parent = Some(parent);
        self
    }
}

impl Options {
    /// Checks the command and options against the limits (the executor
    /// contract's one validation); the submission to run, or the first
    /// problem, before anything is written.
    pub(crate) fn validate(self, config: &Config, command: String) -> Result<Submission> {
        contract::validate_command(&command)?;
        let timeout = self.timeout.unwrap_or(config.limits.default_timeout);
        contract::validate_timeout(timeout, config.limits.max_timeout)?;
        for (name, value) in &self.env {
            contract::validate_env(name, value)?;
        }
        let stdin = self.stdin.filter(|data| !data.is_empty());
        if let Some(data) = &stdin {
            contract::validate_stdin(data.len() as u64, config.limits.stdin_cap)?;
        }
        Ok(Submission {
            command,
            env: self.env,
            timeout,
            output_cap: self.output_cap.unwrap_or(0),
            request_id: self.request_id,
            stdin,
            stdin_stream: self.stdin_stream,
            live: self.live,
            execution_id: self.execution_id,
            span: tracing::Span::none(),
        })
    }
}

impl IntoFuture for Exec {
    type Output = Result<ExecResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<ExecResult>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // Validation and queueing happen here, synchronously, so bad input
        // fails before any side effect and the queue order is the order in
        // which the futures were created.
        let engine = self.handle.engine();
        let span = tracing::info_span!(
            "exec",
            session = %self.session,
            execution = tracing::field::Empty,
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(parent) = &self.options.parent {
            trace_context::set_parent(&span, parent);
        }
        let queued = self
            .options
            .validate(&engine.config, self.command)
            .and_then(|mut submission| {
                submission.span = span;
                engine.enqueue(&self.session, submission, self.cancel)
            });
        // The handle rides along: the engine runs until the result is in.
        let handle = self.handle;
        Box::pin(async move {
            let rx = queued?;
            let result = rx.await.unwrap_or(Err(Error::Closed));
            drop(handle);
            result
        })
    }
}
