//! The JSON shapes of the HTTP API that are not `runbox.v1` messages, and
//! the OpenAPI schemas of those that are.
//!
//! Bodies are proto3 JSON (lowerCamelCase, enums by name, RFC 3339 times).
//! `ExecResult` and `SessionState` are serialised by `runbox-proto` itself;
//! their schemas here only describe that output, and a test fails when a
//! field is added there and not here.

use std::collections::BTreeMap;

use runbox_dispatcher::SessionInfo;
use runbox_dispatcher::{BackgroundEntry, BackgroundHandle, BackgroundState, DirEntry, FileInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::timestamp;

/// The body of `POST /v1/sessions/{session}/exec`: the caller's fields of
/// `runbox.v1.ExecRequest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecBody {
    /// Run by bash in the session's cwd; at most 256 KiB.
    pub command: String,
    /// Wall-clock limit in milliseconds; absent or 0: the server's default
    /// (`RUNBOX_DEFAULT_TIMEOUT_SECS`).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Extra environment for this command only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Caller-chosen correlation id, stored in the request.
    #[serde(default)]
    pub request_id: String,
    /// The command's whole stdin, as UTF-8 text. At most one of `stdin`,
    /// `stdinBase64` and `stdinStream`; without any the command reads an
    /// empty stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// The command's whole stdin, as base64 (standard alphabet, padded)
    /// for bytes that are not text.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// The stdin is written while the command runs, through
    /// `POST /v1/sessions/{session}/executions/{execution}/stdin`. Needs
    /// the event-stream answer, whose first event, `started`, names the
    /// execution. In a warm session the command reads each write as it
    /// comes; in a oneshot session it starts once the stdin is closed.
    #[serde(default)]
    pub stdin_stream: bool,
}

/// The body of `POST /v1/sessions/{session}/background`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpawnBody {
    /// Run by bash in the session's cwd; at most 256 KiB.
    pub command: String,
    /// How long it may run, in milliseconds; absent or 0: the maximum
    /// (`RUNBOX_MAX_TIMEOUT_SECS`).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Extra environment for this process only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The body of `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSessionBody {
    /// The new session's id, `[A-Za-z0-9_-]{1,64}`.
    pub session_id: String,
    /// How its commands run; default: the server's `RUNBOX_SESSION_MODE`
    /// (itself `oneshot` by default).
    pub mode: Option<ModeName>,
    /// How long a warm session's execution waits for the next command
    /// before it saves and exits, in milliseconds (1 to 86400000; default
    /// 300000).
    pub idle_timeout_ms: Option<u64>,
}

/// A session mode: `oneshot` (one execution per command) or `warm` (one
/// execution keeps a live bash for the session's commands).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// One execution per command.
    Oneshot,
    /// One live bash per session.
    Warm,
}

impl From<ModeName> for runbox_dispatcher::SessionMode {
    fn from(mode: ModeName) -> Self {
        match mode {
            ModeName::Oneshot => Self::Oneshot,
            ModeName::Warm => Self::Warm,
        }
    }
}

impl From<runbox_dispatcher::SessionMode> for ModeName {
    fn from(mode: runbox_dispatcher::SessionMode) -> Self {
        match mode {
            runbox_dispatcher::SessionMode::Oneshot => Self::Oneshot,
            runbox_dispatcher::SessionMode::Warm => Self::Warm,
        }
    }
}

/// A session and its state (the shape `runbox sessions show --json` prints).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// The session id.
    pub session_id: String,
    /// The working directory the next command starts in; null before the first command.
    pub cwd: Option<String>,
    /// Exported variables that persist to the next command.
    pub env: BTreeMap<String, String>,
    /// Variables of the base environment the session has unset.
    pub unset_env: Vec<String>,
    /// Commands run so far.
    pub exec_count: u64,
    /// The last execution that saved the state.
    pub last_execution_id: Option<String>,
    /// When the session was created (RFC 3339).
    pub created_at: Option<String>,
    /// When its state was last saved (RFC 3339).
    pub updated_at: Option<String>,
    /// Background processes still running.
    pub background_running: usize,
    /// How its commands run.
    pub mode: ModeName,
    /// A warm execution's idle timeout, in milliseconds.
    pub idle_timeout_ms: u64,
    /// The first execution of its running warm execution; null when none
    /// runs.
    pub warm_execution: Option<String>,
}

impl From<&SessionInfo> for SessionView {
    fn from(info: &SessionInfo) -> Self {
        let state = info.state.as_ref();
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            session_id: info.id.to_string(),
            cwd: state.and_then(|s| text(&s.cwd)),
            env: state.map(|s| s.env.clone()).unwrap_or_default(),
            unset_env: state.map(|s| s.unset_env.clone()).unwrap_or_default(),
            exec_count: state.map_or(0, |s| s.exec_count),
            last_execution_id: state.and_then(|s| text(&s.last_execution_id)),
            created_at: state.and_then(|s| timestamp::format_proto(s.created_at)),
            updated_at: state.and_then(|s| timestamp::format_proto(s.updated_at)),
            background_running: info.background_running,
            mode: info.settings.mode.into(),
            idle_timeout_ms: info.settings.idle_timeout_ms,
            warm_execution: info.warm_execution.clone(),
        }
    }
}

/// `GET /v1/sessions`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionList {
    /// Every session that has objects.
    pub sessions: Vec<SessionView>,
}

/// What `DELETE /v1/sessions/{session}` removed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    /// Objects (or files) deleted.
    pub deleted: usize,
}

/// The results of the background processes a close killed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultList {
    /// One result per process killed.
    #[schema(value_type = Vec<ExecResultSchema>)]
    pub results: Vec<runbox_dispatcher::ExecResult>,
}

/// A file as written.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    /// Its path relative to the workspace root.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The store generation written.
    pub generation: i64,
}

impl From<FileInfo> for FileView {
    fn from(info: FileInfo) -> Self {
        Self {
            path: info.path,
            size: info.size,
            generation: info.generation,
        }
    }
}

/// One directory entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirEntryView {
    /// The last segment of its path.
    pub name: String,
    /// Its path relative to the workspace root.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Bytes for files; 0 for directories.
    pub size: u64,
}

impl From<DirEntry> for DirEntryView {
    fn from(e: DirEntry) -> Self {
        Self {
            name: e.name,
            path: e.path,
            kind: e.kind.as_str().to_owned(),
            size: e.size,
        }
    }
}

/// A directory listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirList {
    /// Entries sorted by name.
    pub entries: Vec<DirEntryView>,
}

/// A background process.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundView {
    /// Its handle (the execution id): the protocol's process id.
    pub handle: String,
    /// The session it runs in.
    pub session_id: String,
    /// The command.
    pub command: String,
    /// When it was accepted (RFC 3339).
    pub started_at: String,
    /// `RUNNING`, or how it ended (an `ExecStatus` name).
    pub status: String,
    /// Its exit code once ended.
    pub exit_code: Option<i32>,
}

impl BackgroundView {
    /// A process just started, still running.
    pub fn started(handle: &BackgroundHandle) -> Self {
        Self::new(handle, BackgroundState::Running)
    }

    fn new(handle: &BackgroundHandle, state: BackgroundState) -> Self {
        let (status, exit_code) = match state {
            BackgroundState::Running => ("RUNNING".to_owned(), None),
            BackgroundState::Exited { status, exit_code } => {
                (status.name().to_owned(), Some(exit_code))
            }
        };
        Self {
            handle: handle.execution_id.to_string(),
            session_id: handle.session.to_string(),
            command: handle.command.clone(),
            started_at: timestamp::format(handle.started_at),
            status,
            exit_code,
        }
    }
}

impl From<&BackgroundEntry> for BackgroundView {
    fn from(entry: &BackgroundEntry) -> Self {
        Self::new(&entry.handle, entry.state)
    }
}

/// A session's background processes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundList {
    /// Oldest first, running or not.
    pub processes: Vec<BackgroundView>,
}

/// `runbox.v1.ExecResult` in proto3 JSON, as `runbox-proto` writes it.
#[derive(ToSchema)]
#[schema(as = ExecResult)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Only its schema is used; the values are runbox-proto's.
pub struct ExecResultSchema {
    /// The execution.
    execution_id: String,
    /// The session the command ran in.
    session_id: String,
    /// How the execution ended.
    #[schema(inline)]
    status: ExecStatusSchema,
    /// Exit status; 124 on timeout; 128+N when killed by signal N; -1 when it never ran.
    exit_code: i32,
    /// Standard output as text, at most the inline cap.
    stdout: String,
    /// Standard error as text, at most the inline cap.
    stderr: String,
    /// Standard output exceeded the inline cap.
    stdout_truncated: bool,
    /// Standard error exceeded the inline cap.
    stderr_truncated: bool,
    /// Standard output was not valid UTF-8; `stdout` holds a lossy rendering.
    stdout_lossy: bool,
    /// Standard error was not valid UTF-8; `stderr` holds a lossy rendering.
    stderr_lossy: bool,
    /// Object with the full, exact standard output when truncated or lossy.
    stdout_log: String,
    /// Object with the full, exact standard error when truncated or lossy.
    stderr_log: String,
    /// Total size of standard output in bytes.
    stdout_bytes: u64,
    /// Total size of standard error in bytes.
    stderr_bytes: u64,
    /// Working directory after the command.
    cwd: String,
    /// When the command started (RFC 3339).
    #[schema(format = DateTime)]
    started_at: Option<String>,
    /// When the execution completed (RFC 3339).
    #[schema(format = DateTime)]
    completed_at: Option<String>,
    /// Why the execution was rejected, lost or cancelled.
    message: String,
    /// Generation of the session state written by this execution; 0 when none.
    state_generation: i64,
    /// The session state changed while the command ran, so its cwd and env were not saved.
    state_conflict: bool,
    /// What the command changed but could not be saved (the result is then
    /// at least FAILED): `state`, `env:NAME` or `file:PATH`.
    not_saved: Vec<String>,
}

/// How an execution ended (`runbox.v1.ExecStatus` by name).
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used.
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
enum ExecStatusSchema {
    EXEC_STATUS_UNSPECIFIED,
    SUCCEEDED,
    FAILED,
    TIMED_OUT,
    CANCELLED,
    LOST,
    REJECTED,
}
