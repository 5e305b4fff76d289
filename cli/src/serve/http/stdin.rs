//! `POST /v1/sessions/{session}/executions/{execution}/stdin`: input for a
//! command started by `POST …/exec` with `stdinStream: true` (and an event
//! stream, whose `started` event names the execution).
//!
//! The writers live in this process only, keyed by session and execution:
//! a path naming another session, or an execution this server did not
//! start with a streamed stdin, is 404 whatever exists elsewhere. A
//! writer leaves the registry when its command ends or its input is
//! closed, so the registry holds only commands that are still reading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use runbox_dispatcher::{StdinError, StdinWriter};
use serde::Deserialize;

use super::Api;
use super::extract::{Params, QueryArgs};
use super::problem::{Problem, ProblemKind};

/// Largest body of one stdin request: 1 MiB (the command reads it in
/// 64 KiB frames; send more in further requests).
pub const MAX_STDIN_BODY_BYTES: usize = 1 << 20;

type Slot = Arc<tokio::sync::Mutex<Option<StdinWriter>>>;

/// The streamed stdins of the commands this server runs.
#[derive(Debug, Default)]
pub struct StdinRegistry {
    writers: Mutex<HashMap<(String, String), Slot>>,
}

impl StdinRegistry {
    /// Keeps `writer` for the command `execution` of `session` until
    /// [`StdinRegistry::remove`] or its input is closed.
    pub fn insert(&self, session: &str, execution: &str, writer: StdinWriter) {
        let slot = Arc::new(tokio::sync::Mutex::new(Some(writer)));
        self.lock()
            .insert((session.to_owned(), execution.to_owned()), slot);
    }

    /// Forgets the command's writer (its command ended); dropping it closes
    /// the input of a command that never got a close.
    pub fn remove(&self, session: &str, execution: &str) {
        self.lock()
            .remove(&(session.to_owned(), execution.to_owned()));
    }

    fn get(&self, session: &str, execution: &str) -> Option<Slot> {
        self.lock()
            .get(&(session.to_owned(), execution.to_owned()))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Slot>> {
        // A panic while holding the map leaves it consistent (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Path of the stdin route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its documentation is used.
pub struct ExecutionParams {
    /// The session id.
    session: String,
    /// The execution id from the exec's `started` event.
    execution: String,
}

/// Query of `POST …/stdin`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StdinQuery {
    /// Close the command's stdin after this body (which may be empty): it
    /// then reads end of file.
    #[serde(default)]
    close: bool,
}

/// Writes the body to the command's standard input, in order with earlier
/// writes; answers once the command's side took it (a command that does
/// not read makes this wait, up to its own timeout). Concurrent requests
/// for one command are written one after the other, never interleaved.
#[utoipa::path(post, path = "/v1/sessions/{session}/executions/{execution}/stdin", operation_id = "writeStdin", tag = "exec",
    params(ExecutionParams, StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Bytes for the command's stdin"),
    responses(
        (status = 204, description = "Written (and closed, with close=true)"),
        (status = 404, description = "No command of this session started by this server reads a streamed stdin under that id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The command has ended, or its stdin was closed", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn write(
    State(api): State<Arc<Api>>,
    Params((session, execution)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<StdinQuery>,
    body: Body,
) -> Result<StatusCode, Problem> {
    let Some(slot) = api.stdin.get(&session, &execution) else {
        return Err(Problem::new(
            ProblemKind::NotFound,
            format!("no command {execution} of session {session} reads a streamed stdin here"),
        ));
    };
    let data = axum::body::to_bytes(body, MAX_STDIN_BODY_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                ProblemKind::TooLarge,
                format!("a stdin body is at most {MAX_STDIN_BODY_BYTES} bytes"),
            )
        })?;
    let mut guard = slot.lock().await;
    let Some(writer) = guard.as_ref() else {
        return Err(ended());
    };
    if !data.is_empty() {
        writer
            .write(data)
            .await
            .map_err(|StdinError::Ended| ended())?;
    }
    if query.close {
        let closed = guard.take().map(StdinWriter::close);
        drop(guard);
        api.stdin.remove(&session, &execution);
        if let Some(closed) = closed {
            closed.await.map_err(|StdinError::Ended| ended())?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn ended() -> Problem {
    Problem::new(
        ProblemKind::Conflict,
        "the command has ended or its stdin is closed; it reads no more",
    )
}
