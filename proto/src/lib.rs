//! The runbox wire contract (`runbox.v1`).
//!
//! Each message is defined once, here, and derives both encodings: protobuf
//! through prost (tags as in `runbox/v1/runbox.proto`) and the JSON form that
//! runbox stores in objects and publishes on topics (serde). The JSON mapping
//! follows proto3's: lowerCamelCase names, enums by name, timestamps as RFC 3339
//! strings, absent fields default. 64-bit integers are plain JSON numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use prost::Message;
pub use prost_types::Timestamp;

mod json;

pub use json::{JsonError, from_json, to_json};

/// How an execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ExecStatus {
    /// Not set; never written by runbox.
    Unspecified = 0,
    /// The command exited with status 0.
    Succeeded = 1,
    /// The command exited with a non-zero status.
    Failed = 2,
    /// The command ran past its timeout and its process group was killed (exit code 124).
    TimedOut = 3,
    /// The execution was cancelled before it finished.
    Cancelled = 4,
    /// The execution ended without writing a result (crash, OOM, quota).
    Lost = 5,
    /// The request was refused before the command ran.
    Rejected = 6,
}

impl ExecStatus {
    /// The protobuf and JSON name of the status.
    pub fn name(self) -> &'static str {
        match self {
            ExecStatus::Unspecified => "EXEC_STATUS_UNSPECIFIED",
            ExecStatus::Succeeded => "SUCCEEDED",
            ExecStatus::Failed => "FAILED",
            ExecStatus::TimedOut => "TIMED_OUT",
            ExecStatus::Cancelled => "CANCELLED",
            ExecStatus::Lost => "LOST",
            ExecStatus::Rejected => "REJECTED",
        }
    }

    /// Parses a status name as written by [`ExecStatus::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "EXEC_STATUS_UNSPECIFIED" => ExecStatus::Unspecified,
            "SUCCEEDED" => ExecStatus::Succeeded,
            "FAILED" => ExecStatus::Failed,
            "TIMED_OUT" => ExecStatus::TimedOut,
            "CANCELLED" => ExecStatus::Cancelled,
            "LOST" => ExecStatus::Lost,
            "REJECTED" => ExecStatus::Rejected,
            _ => return None,
        })
    }

    /// Whether the command ran to an exit status of its own.
    pub fn is_exit(self) -> bool {
        matches!(self, ExecStatus::Succeeded | ExecStatus::Failed)
    }
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One command to run in a session; stored as `requests/{execution_id}.json`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExecRequest {
    /// The execution this request belongs to.
    #[prost(string, tag = "1")]
    pub execution_id: String,
    /// The session whose cwd, env and files the command sees.
    #[prost(string, tag = "2")]
    pub session_id: String,
    /// Run by bash in the session's cwd; at most 256 KiB.
    #[prost(string, tag = "3")]
    pub command: String,
    /// Extra environment for this command only.
    #[prost(btree_map = "string, string", tag = "4")]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit for the command, in milliseconds.
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
    /// Inline output cap per stream in bytes; 0 means the executor's default.
    #[prost(uint64, tag = "6")]
    pub output_cap_bytes: u64,
    /// When the dispatcher accepted the request.
    #[prost(message, optional, tag = "7")]
    #[serde(with = "json::timestamp")]
    pub created_at: Option<Timestamp>,
    /// W3C trace context of the caller.
    #[prost(string, tag = "8")]
    pub traceparent: String,
    /// Caller-chosen correlation id, echoed in [`ExecCompleted`].
    #[prost(string, tag = "9")]
    pub request_id: String,
    /// Run as a background process: output is streamed to numbered log
    /// objects while it runs, and cwd/env changes are not saved.
    #[prost(bool, tag = "10")]
    pub background: bool,
    /// Size of the command's standard input in bytes, stored as the object
    /// `requests/{execution_id}.stdin`; 0: none (the command reads an
    /// empty stdin).
    #[prost(uint64, tag = "15")]
    pub stdin_bytes: u64,
    /// Someone follows the output live: while the command runs, the
    /// executor writes what it captures as chunk objects
    /// `results/{execution_id}.chunk.{stdout|stderr}.NNNNNN` (at most
    /// `RUNBOX_LOG_CAP_BYTES` per stream in all). The result is unchanged.
    #[prost(bool, tag = "20")]
    pub stream_output: bool,
    /// The command's standard input streams while it runs (warm sessions):
    /// it arrives on the executor's delivery channel in frames
    /// (`runbox_core::warm::wire`; on Cloud Run, `stdin` messages of the
    /// commands topic), and ends with an end-of-input frame or when the
    /// channel closes. Requests without it
    /// read `stdin_bytes` (or nothing), as before.
    #[prost(bool, tag = "21")]
    pub stdin_stream: bool,
    /// With `stdin_stream` over Pub/Sub (warm sessions on Cloud Run): the
    /// SHA-256, in hex, of the token every stdin message for this command
    /// must carry (`runbox_core::warm::commands`). Empty: none.
    #[prost(string, tag = "22")]
    pub stdin_token_sha256: String,
}

/// The outcome of one execution; stored once as `results/{execution_id}.json`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecResult {
    /// The execution this result belongs to.
    #[prost(string, tag = "1")]
    pub execution_id: String,
    /// The session the command ran in.
    #[prost(string, tag = "2")]
    pub session_id: String,
    /// How the execution ended.
    #[prost(enumeration = "ExecStatus", tag = "3")]
    #[serde(with = "json::status")]
    pub status: i32,
    /// Exit status; 124 on timeout; 128+N when killed by signal N; -1 when it never ran.
    #[prost(int32, tag = "4")]
    pub exit_code: i32,
    /// Standard output as text, at most the inline cap.
    #[prost(string, tag = "5")]
    pub stdout: String,
    /// Standard error as text, at most the inline cap.
    #[prost(string, tag = "6")]
    pub stderr: String,
    /// Standard output exceeded the inline cap.
    #[prost(bool, tag = "7")]
    pub stdout_truncated: bool,
    /// Standard error exceeded the inline cap.
    #[prost(bool, tag = "8")]
    pub stderr_truncated: bool,
    /// Standard output was not valid UTF-8; `stdout` holds a lossy rendering.
    #[prost(bool, tag = "9")]
    pub stdout_lossy: bool,
    /// Standard error was not valid UTF-8; `stderr` holds a lossy rendering.
    #[prost(bool, tag = "10")]
    pub stderr_lossy: bool,
    /// Object with the exact standard output kept (at most the log cap,
    /// `RUNBOX_LOG_CAP_BYTES`) when truncated or lossy; empty for a
    /// background execution, whose output is in its chunks.
    #[prost(string, tag = "11")]
    pub stdout_log: String,
    /// Object with the exact standard error kept, as for `stdout_log`.
    #[prost(string, tag = "12")]
    pub stderr_log: String,
    /// Bytes the command wrote to standard output, including any dropped
    /// beyond the log cap.
    #[prost(uint64, tag = "13")]
    pub stdout_bytes: u64,
    /// Bytes the command wrote to standard error, including any dropped
    /// beyond the log cap.
    #[prost(uint64, tag = "14")]
    pub stderr_bytes: u64,
    /// Working directory after the command.
    #[prost(string, tag = "15")]
    pub cwd: String,
    /// When the command started.
    #[prost(message, optional, tag = "16")]
    #[serde(with = "json::timestamp")]
    pub started_at: Option<Timestamp>,
    /// When the execution completed.
    #[prost(message, optional, tag = "17")]
    #[serde(with = "json::timestamp")]
    pub completed_at: Option<Timestamp>,
    /// Why the execution was rejected, lost or cancelled.
    #[prost(string, tag = "18")]
    pub message: String,
    /// Generation of the session state written by this execution; 0 when none.
    #[prost(int64, tag = "19")]
    pub state_generation: i64,
    /// The session state changed while the command ran (another writer), so
    /// this execution's cwd and env were not saved.
    #[prost(bool, tag = "20")]
    pub state_conflict: bool,
    /// What the command changed that was not saved; the status is then at
    /// least FAILED. Entries: `state` (its cwd and env), `env:NAME` (one
    /// exported variable refused), `file:PATH` (a workspace path relative
    /// to the workspace). Empty when everything was saved.
    #[prost(string, repeated, tag = "21")]
    pub not_saved: Vec<String>,
}

impl ExecResult {
    /// The status as an enum; unknown values read as `Unspecified`.
    pub fn exec_status(&self) -> ExecStatus {
        ExecStatus::try_from(self.status).unwrap_or(ExecStatus::Unspecified)
    }

    /// Sets the status.
    pub fn set_exec_status(&mut self, status: ExecStatus) {
        self.status = status as i32;
    }
}

/// A session's persistent shell state; stored as `sessions/{session_id}/state.json`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionState {
    /// The session.
    #[prost(string, tag = "1")]
    pub session_id: String,
    /// Working directory the next command starts in.
    #[prost(string, tag = "2")]
    pub cwd: String,
    /// Exported variables that differ from the executor's base environment.
    #[prost(btree_map = "string, string", tag = "3")]
    pub env: BTreeMap<String, String>,
    /// Variables of the base environment that the session has unset.
    #[prost(string, repeated, tag = "4")]
    pub unset_env: Vec<String>,
    /// Commands run in this session.
    #[prost(uint64, tag = "5")]
    pub exec_count: u64,
    /// The last execution that updated this state.
    #[prost(string, tag = "6")]
    pub last_execution_id: String,
    /// When the session was first used.
    #[prost(message, optional, tag = "7")]
    #[serde(with = "json::timestamp")]
    pub created_at: Option<Timestamp>,
    /// When the state was last written.
    #[prost(message, optional, tag = "8")]
    #[serde(with = "json::timestamp")]
    pub updated_at: Option<Timestamp>,
}

/// Published on the completions topic when a topic request completes.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecCompleted {
    /// The execution.
    #[prost(string, tag = "1")]
    pub execution_id: String,
    /// The session.
    #[prost(string, tag = "2")]
    pub session_id: String,
    /// How it ended.
    #[prost(enumeration = "ExecStatus", tag = "3")]
    #[serde(with = "json::status")]
    pub status: i32,
    /// The command's exit code.
    #[prost(int32, tag = "4")]
    pub exit_code: i32,
    /// Name of the result object.
    #[prost(string, tag = "5")]
    pub result_object: String,
    /// The full result.
    #[prost(message, optional, tag = "6")]
    pub result: Option<ExecResult>,
    /// The request's correlation id.
    #[prost(string, tag = "7")]
    pub request_id: String,
    /// Set when the request could not be run at all.
    #[prost(string, tag = "8")]
    pub error: String,
}

/// Converts a system time to a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
}
