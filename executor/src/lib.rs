//! The runbox executor: the program inside each execution (a Cloud Run task
//! or, on the embedded backend, a child process). It loads
//! `requests/{id}.json` and the session state, runs the command in bash,
//! saves the state with the generation it read, and writes
//! `results/{id}.json` last and once: that write is the completion signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runbox_core::config::{BackendConfig, BackendKind, Config};
use runbox_core::contract;
use runbox_core::layout::{self, Stream};
use runbox_core::result_metadata;
use runbox_core::session_cwd;
use runbox_core::store::{self, JsonObjectError, Precondition, PutOptions, Store, StoreError};
use runbox_core::trace_context;
use runbox_core::{ExecutionId, SessionId};
use runbox_proto::{ExecRequest, ExecResult, ExecStatus, SessionState};
use tracing::Instrument as _;

pub use runbox_core::error_chain;

pub mod background;
pub mod confine;
pub mod identity;
pub mod namespace;
pub mod output;
pub mod process;
pub mod scratch;
pub mod shell;
pub mod stdin;
pub mod warm;
pub mod workspace;

/// Exit code reported for a command that ran past its timeout.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Custom metadata key carrying the W3C trace context on result objects.
pub const TRACEPARENT_KEY: &str = contract::RESULT_TRACEPARENT_KEY;

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
    /// Where each session's workspace lives on disk (below the store's own
    /// directory on the embedded backend, so commands work on the stored
    /// files directly) and where its commands see it.
    pub placement: namespace::Placement,
    /// The user commands run as, when not the executor's own
    /// (see [`identity::decide`]).
    pub run_as: Option<identity::Identity>,
    /// How commands are confined.
    pub confinement: Confinement,
}

/// How commands are confined, as decided at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// The resource limits each command gets.
    pub limits: runbox_core::confinement::Limits,
    /// Whether commands get a Landlock ruleset (wanted, and the kernel has
    /// Landlock).
    pub landlock: bool,
    /// More directories commands may write beneath
    /// (`RUNBOX_LANDLOCK_WRITABLE`), as they see them.
    pub writable: Vec<PathBuf>,
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
    let (mut result, traceparent) = match load_request(&*store, settings).await {
        Err(rejection) => (rejection.into_result(id), String::new()),
        Ok(loaded) => {
            let traceparent = loaded.request.traceparent.clone();
            // The caller's span names the execution; from here its lines
            // name the session too.
            tracing::Span::current().record("session", loaded.request.session_id.as_str());
            (run(&*store, settings, loaded, cancel).await, traceparent)
        }
    };
    result.execution_id = id.to_string();
    if result.started_at.is_none() {
        result.started_at = Some(started);
    }
    result.completed_at = Some(runbox_proto::now());
    let status = result.exec_status();
    let span = tracing::info_span!(
        "result write",
        status = %status,
        otel.status_code = tracing::field::Empty
    );
    if !matches!(status, ExecStatus::Succeeded) {
        trace_context::mark_error(&tracing::Span::current());
        trace_context::mark_error(&span);
    }
    // The notifier's span continues from this one, so the event joins the
    // trace where the result was written; without telemetry here, the
    // request's context still carries the caller's trace on.
    let traceparent = trace_context::traceparent(&span)
        .map(|tp| tp.to_string())
        .unwrap_or(traceparent);
    write_result(&*store, id, result, traceparent)
        .instrument(span)
        .await
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

/// Reads and checks the request, then reads the session's state.
async fn load_request(store: &dyn Store, settings: &Settings) -> Result<Loaded, Rejection> {
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
    // The dispatcher checked it too; a request object written any other
    // way meets the same rules.
    contract::validate_request(&request, settings.config.limits.max_timeout)
        .and_then(|()| {
            contract::validate_stdin(request.stdin_bytes, settings.config.limits.stdin_cap)
        })
        .map_err(|e| reject(session.as_str(), e.to_string()))?;
    let (state, state_precondition) = load_state(store, &session)
        .await
        .map_err(|message| reject(session.as_str(), message))?;
    let workspace = settings.placement.host_workspace(&session);
    Ok(Loaded {
        request,
        session,
        state,
        state_precondition,
        workspace,
    })
}

/// The session's state and the precondition its save must meet; a fresh
/// state when the session has none yet.
async fn load_state(
    store: &dyn Store,
    session: &SessionId,
) -> Result<(SessionState, Precondition), String> {
    match store::get_json::<SessionState>(store, &layout::session_state(session), "SessionState")
        .await
    {
        Ok(v) => Ok((v.value, Precondition::GenerationMatch(v.generation))),
        Err(JsonObjectError::Store(e)) if e.is_not_found() => {
            let state = SessionState {
                session_id: session.to_string(),
                created_at: Some(runbox_proto::now()),
                ..Default::default()
            };
            Ok((state, Precondition::DoesNotExist))
        }
        Err(e) => Err(format!("session {session}: {}", error_chain(&e))),
    }
}

/// Runs a loaded request: restore, run, collect, save. Every failure ends in
/// the returned result.
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
    let sync = sync_options(&settings.config);
    let restored = match restore_workspace(store, &session, &workspace, &sync)
        .instrument(tracing::info_span!("restore"))
        .await
    {
        Ok(snapshot) => snapshot,
        Err(message) => return rejected(result, message),
    };
    tracing::debug!(execution = %id, "workspace restored");
    if let Some(who) = &settings.run_as {
        // Before anything of the command runs, so it owns what it works on.
        if let Err(e) = identity::hand_over(&workspace, who) {
            return rejected(
                result,
                format!(
                    "give workspace {} to user {}: {e}",
                    workspace.display(),
                    who.name
                ),
            );
        }
    }
    let mut files = match Scratch::with_command(
        &scratch_base(&settings.config),
        &request.command,
        settings.run_as.as_ref(),
    ) {
        Ok(files) => files,
        Err(message) => return rejected(result, message),
    };
    if request.stdin_bytes > 0 {
        let file = match scratch::create_file(files.dir.handle(), "stdin", b"") {
            Ok(file) => file,
            Err(e) => {
                return rejected(
                    result,
                    format!("create standard input file: {}", error_chain(&e)),
                );
            }
        };
        if let Err(message) = stdin::fetch(store, id, request.stdin_bytes, &file).await {
            return rejected(result, message);
        }
        files.stdin = Some(file);
    }

    let placement = &settings.placement;
    let seen = placement.seen_workspace(&session);
    let confine = match confinement(settings, &session, files.dir.path()) {
        Ok(spec) => spec,
        Err(e) => return rejected(result, format!("prepare the command's confinement: {e}")),
    };
    let enter = match placement.mode {
        namespace::Mode::Namespace => match placement.enter(&session, files.dir.path()) {
            Ok(enter) => Some(enter.confined(confine.clone())),
            Err(e) => {
                return rejected(result, format!("prepare the workspace namespace: {e}"));
            }
        },
        namespace::Mode::Direct | namespace::Mode::Host => None,
    };
    let mut notes = Vec::new();
    let cwd = starting_cwd(&state, &session, placement, &mut notes);
    let mut base = base_env(
        &session,
        id,
        &seen,
        files.tmp.as_deref(),
        settings.run_as.as_ref(),
    );
    if enter.is_some() {
        // The session's private /tmp.
        base.insert("TMPDIR".to_owned(), "/tmp".to_owned());
    } else if files.tmp.is_none() && confine.landlock.is_some() {
        // Landlock leaves the host's /tmp read-only: the session's own
        // temporary directory (made by `confinement`) instead.
        base.insert(
            "TMPDIR".to_owned(),
            placement
                .session_tmp(&session)
                .to_string_lossy()
                .into_owned(),
        );
    }
    let start = shell::start_env(&base, &state, &request.env);
    let restored_env = shell::RestoredEnv::split(&base, &start);
    if let Err(message) = files.write_env(&restored_env) {
        return rejected(result, message);
    }
    let Ran {
        started_at,
        ending,
        streamer,
        produced,
    } = match run_command(
        store,
        settings,
        &request,
        &files,
        Place {
            cwd: &cwd,
            enter: enter.as_ref(),
            confine: &confine,
        },
        &restored_env.exec,
        cancel,
    )
    .instrument(tracing::info_span!("run"))
    .await
    {
        Ok(ran) => ran,
        Err(message) => return rejected(result, message),
    };
    result.started_at = Some(started_at);
    let mut capture = read_capture(files.dir.handle(), "capture", &mut notes);
    if let Err(message) = record_ending(
        &mut result,
        ending,
        capture.as_ref(),
        request.timeout_ms,
        &mut notes,
    ) {
        return rejected(result, message);
    }
    // A background process's chunks are its log; the log object is
    // written only as the fallback for chunks that could not be uploaded.
    let mut upload_log = true;
    if let Some(streamer) = streamer {
        // After the sweep, so nothing writes any more; before the result, so
        // every chunk exists once the result does.
        let problems = streamer.finish(store).await;
        upload_log = !problems.is_empty();
        notes.extend(problems);
    }
    let cap = if request.output_cap_bytes > 0 {
        request.output_cap_bytes
    } else {
        settings.config.limits.output_cap
    };
    let output = Output {
        cap,
        log_cap: settings.config.limits.log_cap,
        produced,
        upload_log,
    };
    collect_output(
        store,
        id,
        [&files.stdout, &files.stderr],
        &output,
        &mut result,
        &mut notes,
    )
    .await;
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
    let save = tracing::info_span!("save");
    save_workspace(
        store,
        &session,
        &workspace,
        &restored,
        &sync,
        &mut result,
        &mut notes,
    )
    .instrument(save.clone())
    .await;
    tracing::debug!(execution = %id, "workspace saved");
    if let Some(capture) = &mut capture {
        for refused in shell::refuse_unpersistable(&start, capture) {
            notes.push(refused.to_string());
            result.not_saved.push(format!("env:{}", refused.name));
        }
    }
    update_state(&mut state, capture.as_ref(), &cwd, &seen, &base, &start);
    result.cwd = session_cwd::display(&state.cwd, &seen, session.as_str());
    save_state(
        store,
        &session,
        id,
        &mut state,
        state_precondition,
        &mut result,
        &mut notes,
    )
    .instrument(save)
    .await;
    tracing::debug!(execution = %id, "state saved");
    if !result.not_saved.is_empty() && result.exec_status() == ExecStatus::Succeeded {
        // The command did its work, but the session will not see all of it:
        // a caller that only checks the status must not take it as done.
        result.set_exec_status(ExecStatus::Failed);
    }
    result.message = notes.join("; ");
    result
}

/// A result for a request that could not run to the end, saying why.
fn rejected(mut result: ExecResult, message: String) -> ExecResult {
    result.set_exec_status(ExecStatus::Rejected);
    result.exit_code = -1;
    result.message = message;
    result
}

/// How the workspace moves between directory and store on this backend.
fn sync_options(config: &Config) -> workspace::SyncOptions {
    // The embedded store's workspace directory holds the objects themselves;
    // anywhere else the directory is a copy (a fresh disk on Cloud Run).
    workspace::SyncOptions::new(match config.backend.kind() {
        BackendKind::Local => workspace::SyncMode::InPlace,
        BackendKind::Gcp => workspace::SyncMode::Transfer,
    })
    .with_max_bytes(config.limits.workspace_max_bytes)
}

/// Creates the workspace directory and restores the session's files into it.
async fn restore_workspace(
    store: &dyn Store,
    session: &SessionId,
    workspace: &Path,
    sync: &workspace::SyncOptions,
) -> Result<workspace::Snapshot, String> {
    std::fs::create_dir_all(workspace)
        .map_err(|e| format!("create workspace {}: {e}", workspace.display()))?;
    // Running on a partial workspace could only do harm.
    workspace::restore(store, session, workspace, sync)
        .await
        .map_err(|e| format!("restore workspace: {}", error_chain(&e)))
}

/// Where the command starts, as it sees it: the session's cwd while it
/// exists, else the workspace (with a note saying so). The stored cwd is
/// relative to the workspace, or an absolute path of an older state.
fn starting_cwd(
    state: &SessionState,
    session: &SessionId,
    placement: &namespace::Placement,
    notes: &mut Vec<String>,
) -> PathBuf {
    let seen = placement.seen_workspace(session);
    match session_cwd::resolve(&state.cwd, &seen, session.as_str()) {
        Some(cwd) if placement.to_host(session, &cwd).is_dir() => cwd,
        resolved => {
            if !state.cwd.is_empty() {
                let shown = resolved.map_or_else(|| state.cwd.clone(), |p| p.display().to_string());
                notes.push(format!(
                    "cwd {shown} no longer exists; started in the workspace"
                ));
            }
            seen
        }
    }
}

/// Where the command runs: its starting directory as it sees it, and the
/// namespace it sees it in (`None`: the executor's own view).
#[derive(Clone, Copy)]
struct Place<'a> {
    cwd: &'a Path,
    enter: Option<&'a namespace::Enter>,
    /// Applied by the namespace's init, or without a namespace by the
    /// confinement helper.
    confine: &'a confine::Spec,
}

/// How [`run_command`] went.
struct Ran {
    /// When bash was started.
    started_at: runbox_proto::Timestamp,
    /// How it ended; an error when it could not start.
    ending: std::io::Result<process::Ending>,
    /// A background request's output streamer, still to be finished.
    streamer: Option<background::Streamer>,
    /// What the command wrote to stdout and stderr.
    produced: [output::Produced; 2],
}

/// Runs bash to its end (streaming output for a background request), then
/// kills what escaped its group.
async fn run_command(
    store: &dyn Store,
    settings: &Settings,
    request: &ExecRequest,
    files: &Scratch,
    place: Place<'_>,
    start: &BTreeMap<String, String>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Ran, String> {
    let Place {
        cwd,
        enter,
        confine,
    } = place;
    let id = &settings.execution_id;
    let log_cap = settings.config.limits.log_cap;
    // A background request streams its own chunks (see `background`).
    let mut live = (request.stream_output && !request.background).then(|| output::Live::new(id));
    let live_tx = || live.as_ref().and_then(output::Live::sender);
    let (stdout_capture, stdout) =
        output::Capture::start_live(Stream::Stdout, &files.stdout, log_cap, live_tx())
            .map_err(|e| error_chain(&e))?;
    let (stderr_capture, stderr) =
        output::Capture::start_live(Stream::Stderr, &files.stderr, log_cap, live_tx())
            .map_err(|e| error_chain(&e))?;
    let readonly: Vec<&str> = start
        .keys()
        .map(String::as_str)
        .filter(|name| contract::is_reserved_env(name))
        .collect();
    let stdin = match &files.stdin {
        None => None,
        Some(file) => Some(
            file.try_clone()
                .map_err(|e| format!("open standard input file: {e}"))?,
        ),
    };
    // Inside its namespace the shell finds the scratch files where the
    // scratch directory is mounted.
    let seen_files = enter.map(|_| files.seen_from(Path::new(namespace::SCRATCH_SEEN)));
    let script_files = seen_files
        .as_ref()
        .map_or_else(|| files.script_files(), SeenFiles::script_files);
    let script = shell::wrapper_script(cwd, script_files, &readonly);
    tracing::debug!(execution = %id, "starting bash");
    let started_at = runbox_proto::now();
    let command = process::run(
        process::Spawn {
            script: &script,
            env: start,
            stdin,
            stdout,
            stderr,
            timeout: Duration::from_millis(request.timeout_ms),
            kill_grace: settings.config.limits.kill_grace,
            run_as: settings.run_as.as_ref(),
            namespace: enter,
            confine: (!confine.is_empty()).then_some((&settings.placement.helper, confine)),
        },
        cancel,
    );
    let mut streamer = request
        .background
        .then(|| background::Streamer::new(id, &files.stdout, &files.stderr));
    let ending = match (&mut streamer, &mut live) {
        (Some(streamer), _) => streamer.run_while(store, command).await,
        (None, Some(live)) => live.run_while(store, command).await,
        (None, None) => command.await,
    };
    tracing::debug!(execution = %id, ?ending, "command ended");
    let swept = process::sweep_descendants();
    if swept > 0 {
        tracing::debug!(swept, "killed processes that left the command's group");
    }
    tracing::debug!(execution = %id, "swept");
    // Every writer is gone now, so both pipes end at once.
    let (stdout_produced, stderr_produced) = tokio::join!(
        stdout_capture.finish(CAPTURE_DRAIN),
        stderr_capture.finish(CAPTURE_DRAIN)
    );
    let produced = [stdout_produced, stderr_produced];
    // Before the result: once it exists, every chunk does.
    if let Some(live) = live {
        live.finish(store).await;
    }
    Ok(Ran {
        started_at,
        ending,
        streamer,
        produced,
    })
}

/// Sets the status and exit code from how the command ended; an error when
/// bash did not start.
fn record_ending(
    result: &mut ExecResult,
    ending: std::io::Result<process::Ending>,
    capture: Option<&shell::Capture>,
    timeout_ms: u64,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    match ending {
        Err(e) => return Err(format!("start bash: {e}")),
        Ok(process::Ending::TimedOut) => {
            result.set_exec_status(ExecStatus::TimedOut);
            result.exit_code = TIMEOUT_EXIT_CODE;
            notes.push(format!(
                "command timed out after {timeout_ms} ms; its process group was killed"
            ));
        }
        Ok(process::Ending::Cancelled) => {
            result.set_exec_status(ExecStatus::Cancelled);
            result.exit_code = 128 + rustix::process::Signal::TERM.as_raw();
            notes.push("execution cancelled; its process group was killed".to_owned());
        }
        Ok(process::Ending::Exited(status)) => {
            result.exit_code = capture.map_or_else(|| process::exit_code(status), |c| c.exit_code);
            result.set_exec_status(if result.exit_code == 0 {
                ExecStatus::Succeeded
            } else {
                ExecStatus::Failed
            });
        }
    }
    Ok(())
}

/// How long the output capture may still take once the command and
/// everything it started are gone (see [`output::Capture::finish`]).
const CAPTURE_DRAIN: Duration = Duration::from_secs(5);

/// How the captured output goes into the result.
struct Output {
    /// Inline bytes per stream.
    cap: u64,
    /// Bytes kept per stream at all (`RUNBOX_LOG_CAP_BYTES`).
    log_cap: u64,
    /// What the command wrote: stdout, stderr.
    produced: [output::Produced; 2],
    /// Whether a stream longer than the inline text gets a log object.
    upload_log: bool,
}

/// Puts stdout and stderr into the result (inline up to the inline cap
/// each, the kept rest as log objects), with a note for each stream whose
/// output was cut at the log cap or not fully captured.
async fn collect_output(
    store: &dyn Store,
    id: &ExecutionId,
    files: [&Path; 2],
    output: &Output,
    result: &mut ExecResult,
    notes: &mut Vec<String>,
) {
    for ((stream, path), produced) in [(Stream::Stdout, files[0]), (Stream::Stderr, files[1])]
        .into_iter()
        .zip(&output.produced)
    {
        if let Some(problem) = &produced.problem {
            notes.push(problem.clone());
        } else if produced.dropped() {
            notes.push(format!(
                "{} produced {} bytes; only the first {} were kept (RUNBOX_LOG_CAP_BYTES)",
                stream.as_str(),
                produced.total,
                output.log_cap
            ));
        }
        match output::collect(
            store,
            id,
            stream,
            path,
            output.cap,
            produced,
            output.upload_log,
        )
        .await
        {
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
}

/// Saves the workspace. What could not be saved becomes a note, and a
/// failed save names every path whose change it lost in the result.
async fn save_workspace(
    store: &dyn Store,
    session: &SessionId,
    workspace: &Path,
    restored: &workspace::Snapshot,
    sync: &workspace::SyncOptions,
    result: &mut ExecResult,
    notes: &mut Vec<String>,
) {
    let cause = match workspace::save(store, session, workspace, restored, sync).await {
        Ok(saved) => {
            for skipped in &saved.skipped {
                notes.push(format!("not saved: {} ({})", skipped.path, skipped.reason));
            }
            return;
        }
        Err(e) if e.is_conflict() => format!(
            "session {session} workspace changed while the command ran; this command's file changes were not saved"
        ),
        Err(e) => format!("save workspace: {}", error_chain(&e)),
    };
    match workspace::changes_since(workspace, restored).await {
        Ok(lost) if lost.is_empty() => notes.push(cause),
        Ok(lost) => {
            notes.push(format!(
                "{cause}; lost: {}",
                summarise(&lost, MAX_NAMED_PATHS)
            ));
            result.not_saved.extend(
                lost.iter()
                    .take(MAX_NAMED_PATHS)
                    .map(|path| format!("file:{path}")),
            );
            if lost.len() > MAX_NAMED_PATHS {
                result
                    .not_saved
                    .push(format!("files:{} more", lost.len() - MAX_NAMED_PATHS));
            }
        }
        Err(e) => {
            notes.push(format!(
                "{cause}; the changed files could not be listed: {}",
                error_chain(&e)
            ));
            result.not_saved.push("files".to_owned());
        }
    }
}

/// Most workspace paths a result names when a save fails; the rest are
/// counted.
const MAX_NAMED_PATHS: usize = 100;

/// `a, b, c and N more`.
fn summarise(paths: &[String], max: usize) -> String {
    let mut text = paths
        .iter()
        .take(max)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > max {
        text.push_str(&format!(" and {} more", paths.len() - max));
    }
    text
}

/// Takes the command's cwd and exported variables into the state.
fn update_state(
    state: &mut SessionState,
    capture: Option<&shell::Capture>,
    cwd: &Path,
    workspace: &Path,
    base: &BTreeMap<String, String>,
    start: &BTreeMap<String, String>,
) {
    // cd and export persist whatever the exit status; a command that never
    // reached its EXIT trap (killed, `exec`) leaves them as they were.
    // The cwd is stored relative to the workspace, so the state means the
    // same wherever another backend puts the workspace.
    match capture {
        Some(c) => {
            state.cwd = session_cwd::to_stored(&c.cwd, workspace);
            shell::apply_env_changes(state, base, start, &c.env);
        }
        None if state.cwd.is_empty() => {
            state.cwd = session_cwd::to_stored(&cwd.to_string_lossy(), workspace);
        }
        None => {}
    }
}

/// Counts the execution in the state and writes it on the generation read;
/// a conflict or failure becomes a note. `true` when it was written.
async fn save_state(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
    state: &mut SessionState,
    precondition: Precondition,
    result: &mut ExecResult,
    notes: &mut Vec<String>,
) -> bool {
    state.session_id = session.to_string();
    count_executions(state, 1, id, runbox_proto::now());
    match store::put_json(
        store,
        &layout::session_state(session),
        &*state,
        PutOptions::when(precondition),
    )
    .await
    {
        Ok(meta) => {
            result.state_generation = meta.generation;
            true
        }
        Err(e) if e.is_conflict() => {
            result.state_conflict = true;
            result.not_saved.push("state".to_owned());
            notes.push(format!(
                "session {session} state changed while the command ran; this command's cwd and env were not saved"
            ));
            false
        }
        Err(e) => {
            result.not_saved.push("state".to_owned());
            notes.push(format!(
                "save session {session} state: {}; this command's cwd and env were not saved",
                error_chain(&e)
            ));
            false
        }
    }
}

/// Adds `commands` executions, the last of them `last` at `at`, to the
/// state's counters.
fn count_executions(
    state: &mut SessionState,
    commands: u64,
    last: &ExecutionId,
    at: runbox_proto::Timestamp,
) {
    state.exec_count += commands;
    state.last_execution_id = last.to_string();
    state.updated_at = Some(at);
}

/// Whether `a` and `b` differ at most in their counters (what
/// [`count_executions`] changes): what the next command starts from is
/// the same in both.
fn same_but_counters(a: &SessionState, b: &SessionState) -> bool {
    let strip = |s: &SessionState| SessionState {
        exec_count: 0,
        last_execution_id: String::new(),
        updated_at: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Writes `results/{id}.json` once: an existing result wins.
async fn write_result(
    store: &dyn Store,
    id: &ExecutionId,
    result: ExecResult,
    traceparent: String,
) -> Result<Outcome, ExecutorError> {
    let mut opts = PutOptions::create();
    if !traceparent.is_empty() {
        opts = opts.with_metadata(TRACEPARENT_KEY, traceparent);
    }
    // A small result also rides in the metadata, so the finalize
    // notification alone resolves the caller; the body stays the full
    // record either way.
    if let Some((key, value)) = result_metadata::encode(&result) {
        opts = opts.with_metadata(key, value);
    }
    match store::put_json(store, &layout::result(id), &result, opts).await {
        Ok(_) => Ok(Outcome::Written(Box::new(result))),
        Err(e) if e.is_conflict() => Ok(Outcome::AlreadyWritten(Box::new(result))),
        Err(source) => Err(ExecutorError::WriteResult {
            id: id.clone(),
            source,
        }),
    }
}

/// The command's files, in a scratch directory removed on drop.
struct Scratch {
    dir: scratch::ScratchDir,
    command: PathBuf,
    capture: PathBuf,
    /// Paths that open the output files as created (see
    /// [`scratch::held_path`]): the command could replace their names.
    stdout: PathBuf,
    stderr: PathBuf,
    /// The command's own `TMPDIR` when it runs as another user.
    tmp: Option<PathBuf>,
    /// The session's variables for the wrapper script to export.
    env: PathBuf,
    /// Their names.
    names: PathBuf,
    /// The command's standard input, copied from its stdin object, when
    /// the request has one.
    stdin: Option<std::fs::File>,
    /// The stdout and stderr files, held for [`Scratch::stdout`] and
    /// [`Scratch::stderr`].
    _outputs: [std::fs::File; 2],
}

/// What the helper applies to the command of `session`: the limits, and
/// the Landlock rules in the paths the command sees (module docs of
/// [`confine`]). The session's temporary directory, the second writable
/// path, is created when the command runs without a namespace too.
pub(crate) fn confinement(
    settings: &Settings,
    session: &SessionId,
    scratch: &Path,
) -> std::io::Result<confine::Spec> {
    let placement = &settings.placement;
    let policy = &settings.confinement;
    let mut landlock = match (policy.landlock, placement.mode) {
        (false, _) => None,
        (true, namespace::Mode::Namespace) => Some(confine::Rules {
            hidden: None,
            writable: vec![
                placement.path.clone(),
                PathBuf::from("/tmp"),
                PathBuf::from(namespace::SCRATCH_SEEN),
                PathBuf::from("/dev/shm"),
            ],
        }),
        (true, namespace::Mode::Direct | namespace::Mode::Host) => Some(confine::Rules {
            hidden: Some(placement.base.clone()),
            writable: vec![
                placement.host_workspace(session),
                placement.prepare_tmp(session)?,
                scratch.to_owned(),
            ],
        }),
    };
    if let Some(rules) = &mut landlock {
        rules.writable.extend(policy.writable.iter().cloned());
    }
    Ok(confine::Spec {
        limits: Some(policy.limits),
        landlock,
    })
}

/// Where the scratch directory of a command run as another user goes: a
/// directory every user can reach, unlike the executor's own `TMPDIR`,
/// which may be private to it.
const SHARED_TEMP_BASE: &str = "/tmp";

impl Scratch {
    /// A new scratch directory holding `command` as the script bash runs,
    /// in `base`, or for a command run as `run_as` in a directory every
    /// user can reach; it then belongs to that user (the shell writes its
    /// capture there) and holds its `TMPDIR`. Leftovers of killed executors
    /// there are swept first.
    fn with_command(
        base: &Path,
        command: &str,
        run_as: Option<&identity::Identity>,
    ) -> Result<Self, String> {
        let base = match run_as {
            None => base,
            Some(_) => Path::new(SHARED_TEMP_BASE),
        };
        let swept = scratch::sweep(base) + scratch::sweep_memory_siblings(base);
        if swept > 0 {
            tracing::debug!(
                swept,
                "removed scratch directories of executors that were killed"
            );
        }
        let dir = scratch::ScratchDir::create(base)
            .map_err(|e| format!("create scratch directory in {}: {e}", base.display()))?;
        let path = dir.path().to_owned();
        // Every file the executor writes is created through the directory's
        // handle, never through a link: see `scratch::create_file`.
        let create = |name: &str, bytes: &[u8]| {
            scratch::create_file(dir.handle(), name, bytes)
                .map_err(|e| format!("write {name} file: {}", error_chain(&e)))
        };
        create("command.sh", command.as_bytes())?;
        let outputs = [create("stdout", b"")?, create("stderr", b"")?];
        let files = Self {
            command: path.join("command.sh"),
            capture: path.join("capture"),
            stdout: scratch::held_path(&outputs[0]),
            stderr: scratch::held_path(&outputs[1]),
            tmp: run_as.map(|_| path.join("tmp")),
            env: path.join("env"),
            names: path.join("names"),
            stdin: None,
            _outputs: outputs,
            dir,
        };
        if let (Some(who), Some(_)) = (run_as, &files.tmp) {
            rustix::fs::mkdirat(
                files.dir.handle(),
                "tmp",
                rustix::fs::Mode::from_raw_mode(0o700),
            )
            .map_err(|e| format!("create command TMPDIR: {e}"))?;
            identity::hand_over(&path, who)
                .map_err(|e| format!("give scratch directory to user {}: {e}", who.name))?;
        }
        Ok(files)
    }

    /// Writes the files the wrapper script restores the environment from.
    fn write_env(&self, env: &shell::RestoredEnv) -> Result<(), String> {
        for (name, bytes) in [("env", &env.env_file), ("names", &env.names_file)] {
            scratch::create_file(self.dir.handle(), name, bytes.as_ref())
                .map_err(|e| format!("write environment file: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    /// The wrapper script's files as a shell that sees the scratch
    /// directory at `seen` names them.
    fn seen_from(&self, seen: &Path) -> SeenFiles {
        let name = |p: &Path| seen.join(p.file_name().unwrap_or_default());
        SeenFiles {
            command: name(&self.command),
            capture: name(&self.capture),
            env: name(&self.env),
            names: name(&self.names),
        }
    }

    /// What the wrapper script reads and writes.
    fn script_files(&self) -> shell::ScriptFiles<'_> {
        shell::ScriptFiles {
            command: &self.command,
            capture: &self.capture,
            env: &self.env,
            names: &self.names,
        }
    }
}

/// The wrapper script's files under another name for the scratch directory.
struct SeenFiles {
    command: PathBuf,
    capture: PathBuf,
    env: PathBuf,
    names: PathBuf,
}

impl SeenFiles {
    fn script_files(&self) -> shell::ScriptFiles<'_> {
        shell::ScriptFiles {
            command: &self.command,
            capture: &self.capture,
            env: &self.env,
            names: &self.names,
        }
    }
}

/// The most the executor reads of a state capture (cwd and `declare -px`).
const CAPTURE_LIMIT: u64 = 16 << 20;

/// Reads and parses the capture the shell wrote as `name` in `dir`. The
/// command can write that directory and could have put a link to a host
/// file, a FIFO or a directory there: such a capture is refused (see
/// [`scratch::read_file`]) with a note, and the session keeps its state.
/// A missing capture (the shell was killed or ended first) is no news.
pub(crate) fn read_capture(
    dir: impl std::os::fd::AsFd,
    name: &str,
    notes: &mut Vec<String>,
) -> Option<shell::Capture> {
    read_capture_with(dir, name, notes, |bytes| Some(bytes.to_vec()))
}

/// [`read_capture`] of a file that holds the capture inside other bytes,
/// which `extract` finds.
pub(crate) fn read_capture_with(
    dir: impl std::os::fd::AsFd,
    name: &str,
    notes: &mut Vec<String>,
    extract: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Option<shell::Capture> {
    match scratch::read_file(dir, name, CAPTURE_LIMIT) {
        Ok(bytes) => extract(&bytes).and_then(|b| shell::parse_capture(&b)),
        Err(e) if e.is_missing() => None,
        Err(e) => {
            notes.push(format!(
                "the shell's state capture was refused, so the session state is unchanged: {}",
                error_chain(&e)
            ));
            None
        }
    }
}

/// Where scratch directories go: on the embedded backend a directory of
/// the store's own, in memory where a private place there exists (see
/// [`scratch::embedded_base`]), elsewhere in the temporary directory (on
/// Cloud Run a memory file system already).
fn scratch_base(config: &Config) -> PathBuf {
    match &config.backend {
        BackendConfig::Local(embedded) => scratch::embedded_base(&embedded.home),
        BackendConfig::Gcp(_) => std::env::temp_dir(),
    }
}

/// The environment every command starts from, before the session's changes.
/// Deliberately small: the executor's own variables (store location,
/// credentials) never reach user commands. A command run as another user
/// gets that user's name and a `TMPDIR` of its own.
fn base_env(
    session: &SessionId,
    id: &ExecutionId,
    workspace: &Path,
    tmp: Option<&Path>,
    run_as: Option<&identity::Identity>,
) -> BTreeMap<String, String> {
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
    if let Some(who) = run_as {
        env.insert("USER".to_owned(), who.name.clone());
        env.insert("LOGNAME".to_owned(), who.name.clone());
    }
    if let Some(tmp) = tmp {
        env.insert("TMPDIR".to_owned(), tmp.to_string_lossy().into_owned());
    }
    env.insert(contract::SESSION_ID_ENV.to_owned(), session.to_string());
    env.insert(contract::EXECUTION_ID_ENV.to_owned(), id.to_string());
    env
}
