//! The runbox executor: the program inside each execution (a Cloud Run task
//! or, on the embedded backend, a child process). It loads
//! `requests/{id}.json` and the session state, runs the command in bash,
//! saves the state with the generation it read, and writes
//! `results/{id}.json` last and once: that write is the completion signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runbox_core::config::{Config, MAX_COMMAND_BYTES};
use runbox_core::layout::{self, Stream};
use runbox_core::store::{self, JsonObjectError, Precondition, PutOptions, Store, StoreError};
use runbox_core::{ExecutionId, SessionId};
use runbox_proto::{ExecRequest, ExecResult, ExecStatus, SessionState};

pub mod background;
pub mod output;
pub mod process;
pub mod shell;
pub mod workspace;

/// Exit code reported for a command that ran past its timeout.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Custom metadata key carrying the W3C trace context on result objects.
pub const TRACEPARENT_KEY: &str = "traceparent";

/// Why the executor could not write a result. Anything short of this ends
/// in a result object; this ends in reconciliation writing LOST.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Writing the result object failed.
    #[error("write result of execution {id}")]
    WriteResult {
        /// The execution.
        id: ExecutionId,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

/// What the executor needs besides the store.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The execution to run.
    pub execution_id: ExecutionId,
    /// Shared configuration (limits, grace periods).
    pub config: Config,
    /// Directory under which each session's workspace lives at
    /// `{base}/sessions/{session}/workspace`; on the embedded backend this is
    /// the store's own directory, so commands work on the stored files directly.
    pub workspace_base: PathBuf,
}

/// How the write of the result went.
#[derive(Debug)]
pub enum Outcome {
    /// This executor wrote the result.
    Written(Box<ExecResult>),
    /// A result already existed (reconciliation or a retried task got there
    /// first); ours was dropped, as the write-once rule demands.
    AlreadyWritten(Box<ExecResult>),
}

/// Runs one execution to its result object. `cancel` resolves when the
/// executor is asked to stop (SIGTERM): the command is then killed and the
/// result is CANCELLED.
pub async fn execute(
    store: Arc<dyn Store>,
    settings: &Settings,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Outcome, ExecutorError> {
    let id = &settings.execution_id;
    let started = runbox_proto::now();
    tracing::debug!(execution = %id, "loading request");
    let (mut result, traceparent) = match load(&*store, settings).await {
        Err(rejection) => (rejection.into_result(id), String::new()),
        Ok(loaded) => {
            let traceparent = loaded.request.traceparent.clone();
            (run(&*store, settings, loaded, cancel).await, traceparent)
        }
    };
    result.execution_id = id.to_string();
    if result.started_at.is_none() {
        result.started_at = Some(started);
    }
    result.completed_at = Some(runbox_proto::now());
    let mut opts = PutOptions::create();
    if !traceparent.is_empty() {
        opts = opts.with_metadata(TRACEPARENT_KEY, traceparent);
    }
    match store::put_json(&*store, &layout::result(id), &result, opts).await {
        Ok(_) => Ok(Outcome::Written(Box::new(result))),
        Err(e) if e.is_conflict() => Ok(Outcome::AlreadyWritten(Box::new(result))),
        Err(source) => Err(ExecutorError::WriteResult {
            id: id.clone(),
            source,
        }),
    }
}

/// A request that cannot run; becomes a REJECTED result.
#[derive(Debug)]
struct Rejection {
    session_id: String,
    message: String,
}

impl Rejection {
    fn into_result(self, id: &ExecutionId) -> ExecResult {
        let mut r = ExecResult {
            execution_id: id.to_string(),
            session_id: self.session_id,
            exit_code: -1,
            message: self.message,
            ..Default::default()
        };
        r.set_exec_status(ExecStatus::Rejected);
        r
    }
}

struct Loaded {
    request: ExecRequest,
    session: SessionId,
    state: SessionState,
    state_precondition: Precondition,
    workspace: PathBuf,
}

async fn load(store: &dyn Store, settings: &Settings) -> Result<Loaded, Rejection> {
    let id = &settings.execution_id;
    let reject = |session_id: &str, message: String| Rejection {
        session_id: session_id.to_owned(),
        message,
    };
    let request: ExecRequest =
        match store::get_json(store, &layout::request(id), "ExecRequest").await {
            Ok(v) => v.value,
            Err(e) => return Err(reject("", error_chain(&e))),
        };
    let session = SessionId::new(&request.session_id)
        .map_err(|e| reject(&request.session_id, e.to_string()))?;
    if request.execution_id != id.as_str() {
        return Err(reject(
            session.as_str(),
            format!(
                "request object for execution {id} names execution {:?}",
                request.execution_id
            ),
        ));
    }
    if request.command.len() > MAX_COMMAND_BYTES {
        return Err(reject(
            session.as_str(),
            format!(
                "command is {} bytes; at most {MAX_COMMAND_BYTES} bytes are allowed",
                request.command.len()
            ),
        ));
    }
    let max = settings.config.max_timeout;
    if request.timeout_ms == 0 || Duration::from_millis(request.timeout_ms) > max {
        return Err(reject(
            session.as_str(),
            format!(
                "timeout of {} ms is outside 1 ms ..= {} s",
                request.timeout_ms,
                max.as_secs()
            ),
        ));
    }
    let (state, state_precondition) = match store::get_json::<SessionState>(
        store,
        &layout::session_state(&session),
        "SessionState",
    )
    .await
    {
        Ok(v) => (v.value, Precondition::GenerationMatch(v.generation)),
        Err(JsonObjectError::Store(e)) if e.is_not_found() => {
            let state = SessionState {
                session_id: session.to_string(),
                created_at: Some(runbox_proto::now()),
                ..Default::default()
            };
            (state, Precondition::DoesNotExist)
        }
        Err(e) => {
            return Err(reject(
                session.as_str(),
                format!("session {session}: {}", error_chain(&e)),
            ));
        }
    };
    let workspace = settings
        .workspace_base
        .join(layout::workspace_prefix(&session));
    Ok(Loaded {
        request,
        session,
        state,
        state_precondition,
        workspace,
    })
}

async fn run(
    store: &dyn Store,
    settings: &Settings,
    loaded: Loaded,
    cancel: impl std::future::Future<Output = ()>,
) -> ExecResult {
    let id = &settings.execution_id;
    let Loaded {
        request,
        session,
        mut state,
        state_precondition,
        workspace,
    } = loaded;
    let mut result = ExecResult {
        session_id: session.to_string(),
        ..Default::default()
    };
    let fail = |mut r: ExecResult, message: String| {
        r.set_exec_status(ExecStatus::Rejected);
        r.exit_code = -1;
        r.message = message;
        r
    };
    if let Err(e) = std::fs::create_dir_all(&workspace) {
        return fail(
            result,
            format!("create workspace {}: {e}", workspace.display()),
        );
    }
    // The embedded store's workspace directory holds the objects themselves;
    // anywhere else the directory is a copy (a fresh disk on Cloud Run).
    let sync = crate::workspace::SyncOptions::new(match settings.config.backend {
        runbox_core::config::Backend::Local => crate::workspace::SyncMode::InPlace,
        runbox_core::config::Backend::Gcp => crate::workspace::SyncMode::Transfer,
    })
    .with_max_bytes(settings.config.workspace_max_bytes);
    let restored = match crate::workspace::restore(store, &session, &workspace, &sync).await {
        Ok(snapshot) => snapshot,
        // Running on a partial workspace could only do harm.
        Err(e) => return fail(result, format!("restore workspace: {}", error_chain(&e))),
    };
    tracing::debug!(execution = %id, "workspace restored");
    let scratch = match tempfile::Builder::new().prefix("runbox-exec-").tempdir() {
        Ok(d) => d,
        Err(e) => return fail(result, format!("create scratch directory: {e}")),
    };
    let files = Scratch::new(scratch.path());
    if let Err(e) = std::fs::write(&files.command, &request.command) {
        return fail(result, format!("write command file: {e}"));
    }

    let mut notes = Vec::new();
    let cwd = if !state.cwd.is_empty() && Path::new(&state.cwd).is_dir() {
        PathBuf::from(&state.cwd)
    } else {
        if !state.cwd.is_empty() {
            notes.push(format!(
                "cwd {} no longer exists; started in the workspace",
                state.cwd
            ));
        }
        workspace.clone()
    };
    let base = base_env(&session, id, &workspace);
    let start = shell::start_env(&base, &state, &request.env);
    let (stdout, stderr) = match (
        std::fs::File::create(&files.stdout),
        std::fs::File::create(&files.stderr),
    ) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return fail(result, format!("create output files: {e}")),
    };
    let script = shell::wrapper_script(&cwd, &files.command, &files.capture);
    tracing::debug!(execution = %id, "starting bash");
    result.started_at = Some(runbox_proto::now());
    let command = process::run(
        process::Spawn {
            script: &script,
            env: &start,
            stdout,
            stderr,
            timeout: Duration::from_millis(request.timeout_ms),
            kill_grace: settings.config.kill_grace,
        },
        cancel,
    );
    let mut streamer = request
        .background
        .then(|| background::Streamer::new(id, &files.stdout, &files.stderr));
    let ending = match &mut streamer {
        Some(streamer) => streamer.run_while(store, command).await,
        None => command.await,
    };
    tracing::debug!(execution = %id, ?ending, "command ended");
    let swept = process::sweep_descendants();
    if swept > 0 {
        tracing::debug!(swept, "killed processes that left the command's group");
    }
    tracing::debug!(execution = %id, "swept");
    let capture = std::fs::read(&files.capture)
        .ok()
        .and_then(|b| shell::parse_capture(&b));
    match ending {
        Err(e) => return fail(result, format!("start bash: {e}")),
        Ok(process::Ending::TimedOut) => {
            result.set_exec_status(ExecStatus::TimedOut);
            result.exit_code = TIMEOUT_EXIT_CODE;
            notes.push(format!(
                "command timed out after {} ms; its process group was killed",
                request.timeout_ms
            ));
        }
        Ok(process::Ending::Cancelled) => {
            result.set_exec_status(ExecStatus::Cancelled);
            result.exit_code = 128 + rustix::process::Signal::TERM.as_raw();
            notes.push("execution cancelled; its process group was killed".to_owned());
        }
        Ok(process::Ending::Exited(status)) => {
            result.exit_code = capture
                .as_ref()
                .map_or_else(|| process::exit_code(status), |c| c.exit_code);
            result.set_exec_status(if result.exit_code == 0 {
                ExecStatus::Succeeded
            } else {
                ExecStatus::Failed
            });
        }
    }
    if let Some(streamer) = streamer {
        // After the sweep, so nothing writes any more; before the result, so
        // every chunk exists once the result does.
        notes.extend(streamer.finish(store).await);
    }
    let cap = if request.output_cap_bytes > 0 {
        request.output_cap_bytes
    } else {
        settings.config.output_cap
    };
    for (stream, path) in [
        (Stream::Stdout, &files.stdout),
        (Stream::Stderr, &files.stderr),
    ] {
        match output::collect(store, id, stream, path, cap).await {
            Ok(c) => match stream {
                Stream::Stdout => {
                    result.stdout = c.text;
                    result.stdout_truncated = c.truncated;
                    result.stdout_lossy = c.lossy;
                    result.stdout_log = c.log;
                    result.stdout_bytes = c.bytes;
                }
                Stream::Stderr => {
                    result.stderr = c.text;
                    result.stderr_truncated = c.truncated;
                    result.stderr_lossy = c.lossy;
                    result.stderr_log = c.log;
                    result.stderr_bytes = c.bytes;
                }
            },
            Err(e) => notes.push(error_chain(&e)),
        }
    }

    tracing::debug!(execution = %id, "output collected");
    if request.background {
        // A background process never saves cwd/env (see background.rs): it
        // would overwrite what foreground commands saved meanwhile.
        result.cwd = capture.map_or_else(|| cwd.to_string_lossy().into_owned(), |c| c.cwd);
        result.message = notes.join("; ");
        return result;
    }
    // Files persist whatever the exit status, like cd and export. Only
    // foreground commands save: a background process's snapshot is stale by
    // the time it ends, and its save would only conflict.
    match crate::workspace::save(store, &session, &workspace, &restored, &sync).await {
        Ok(saved) => {
            for skipped in &saved.skipped {
                notes.push(format!("not saved: {} ({})", skipped.path, skipped.reason));
            }
        }
        Err(e) if e.is_conflict() => notes.push(format!(
            "session {session} workspace changed while the command ran; this command's file changes were not saved"
        )),
        Err(e) => notes.push(format!("save workspace: {}", error_chain(&e))),
    }
    tracing::debug!(execution = %id, "workspace saved");
    // cd and export persist whatever the exit status; a command that never
    // reached its EXIT trap (killed, `exec`) leaves them as they were.
    match &capture {
        Some(c) => {
            state.cwd = c.cwd.clone();
            shell::apply_env_changes(&mut state, &base, &start, &c.env);
        }
        None if state.cwd.is_empty() => state.cwd = cwd.to_string_lossy().into_owned(),
        None => {}
    }
    result.cwd = state.cwd.clone();
    state.session_id = session.to_string();
    state.exec_count += 1;
    state.last_execution_id = id.to_string();
    state.updated_at = Some(runbox_proto::now());
    match store::put_json(
        store,
        &layout::session_state(&session),
        &state,
        PutOptions::when(state_precondition),
    )
    .await
    {
        Ok(meta) => result.state_generation = meta.generation,
        Err(e) if e.is_conflict() => {
            result.state_conflict = true;
            notes.push(format!(
                "session {session} state changed while the command ran; this command's cwd and env were not saved"
            ));
        }
        Err(e) => notes.push(format!("save session {session} state: {}", error_chain(&e))),
    }
    tracing::debug!(execution = %id, "state saved");
    result.message = notes.join("; ");
    result
}

struct Scratch {
    command: PathBuf,
    capture: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Scratch {
    fn new(dir: &Path) -> Self {
        Self {
            command: dir.join("command.sh"),
            capture: dir.join("capture"),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
        }
    }
}

/// The environment every command starts from, before the session's changes.
/// Deliberately small: the executor's own variables (store location,
/// credentials) never reach user commands.
fn base_env(session: &SessionId, id: &ExecutionId, workspace: &Path) -> BTreeMap<String, String> {
    let inherit = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_owned(),
        inherit("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()),
    );
    env.insert("HOME".to_owned(), workspace.to_string_lossy().into_owned());
    env.insert(
        "LANG".to_owned(),
        inherit("LANG").unwrap_or_else(|| "C.UTF-8".into()),
    );
    env.insert("TERM".to_owned(), "dumb".to_owned());
    for name in ["USER", "LOGNAME", "TMPDIR", "TZ"] {
        if let Some(v) = inherit(name) {
            env.insert(name.to_owned(), v);
        }
    }
    env.insert("RUNBOX_SESSION_ID".to_owned(), session.to_string());
    env.insert("RUNBOX_EXECUTION_ID".to_owned(), id.to_string());
    env
}

/// An error and its causes on one line, for messages stored in results.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
