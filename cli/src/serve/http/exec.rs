//! `POST /v1/sessions/{session}/exec`: one command, answered with its
//! `ExecResult`, or (`stream=true`, or `Accept: text/event-stream`) with a
//! stream of server-sent events: its output while it runs, then the result.
//! With `stdinStream` the stream starts with a `started` event naming the
//! execution whose stdin `super::stdin` writes to.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, StreamExt};
use runbox_core::ExecutionId;
use runbox_core::trace_context::{self, Traceparent};
use runbox_dispatcher::{OutputChunk, StdinWriter, Stream};
use serde::{Deserialize, Serialize};

use super::Api;
use super::extract::{JsonBody, Params, QueryArgs};
use super::problem::{Problem, ProblemKind};
use super::schema::ExecBody;
use super::sessions::SessionParam;

/// Query of `POST …/exec`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecQuery {
    /// Answer with `text/event-stream` (as `Accept: text/event-stream`
    /// does): `stdout` and `stderr` events carry the output while the
    /// command runs, in order per stream (data: ChunkEvent), then one
    /// `result` event carries the `ExecResult` (or one `problem` event a
    /// problem document), and the stream ends. The result stays the
    /// record; the output events are a preview of it.
    #[serde(default)]
    stream: bool,
}

/// The data of a `stdout` or `stderr` event: one piece of output, as the
/// command wrote it (not necessarily whole lines).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEvent {
    /// The piece's number within its stream, from 1, without gaps.
    pub seq: u64,
    /// The bytes as UTF-8 text; invalid sequences (a character cut between
    /// two pieces, binary output) replaced by U+FFFD and flagged by `lossy`.
    pub text: String,
    /// `text` is not the exact bytes; `base64` holds them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lossy: bool,
    /// With `lossy`: the exact bytes, base64 (standard alphabet, padded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// Runs a command in the session and answers its result. A command that
/// ran answers 200 whatever its exit code; the status is in the result.
/// The command runs to its end even when the connection drops. With
/// `stream=true` (or `Accept: text/event-stream`) the 200 answer is an
/// event stream: output events while it runs, then the result.
#[utoipa::path(post, path = "/v1/sessions/{session}/exec", operation_id = "exec", tag = "exec", params(SessionParam, ExecQuery),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (or timed out, was cancelled or lost). As an event stream: with stdinStream first `started` (data: StartedEvent), then events `stdout` and `stderr` (data: ChunkEvent) while it runs, then `result` (data: ExecResult) or `problem` (data: Problem)",
            content(
                (crate::serve::http::schema::ExecResultSchema = "application/json"),
                (ChunkEvent = "text/event-stream"),
            )),
        (status = 400, description = "Bad session id, timeout, env or stdin; nothing ran", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The command ran but the session state changed meanwhile; `result` holds its result", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Command or body too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn exec(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
    QueryArgs(query): QueryArgs<ExecQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Response, Problem> {
    let mut exec = api.client.session(&session)?.exec(body.command);
    // A W3C `traceparent` request header makes the command's trace continue
    // the caller's (README, Traces and metrics); an invalid one is ignored.
    if let Some(parent) = headers
        .get(trace_context::ATTRIBUTE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Traceparent::parse(v).ok())
    {
        exec = exec.parent(parent);
    }
    if body.timeout_ms > 0 {
        exec = exec.timeout(Duration::from_millis(body.timeout_ms));
    }
    for (name, value) in body.env {
        exec = exec.env(name, value);
    }
    if !body.request_id.is_empty() {
        exec = exec.request_id(body.request_id);
    }
    let event_stream = query.stream || wants_event_stream(&headers);
    match (body.stdin, body.stdin_base64, body.stdin_stream) {
        (None, None, false) => {}
        (Some(text), None, false) => exec = exec.stdin(text.into_bytes()),
        (None, Some(encoded), false) => {
            let data = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &encoded)
                .map_err(|e| {
                    Problem::new(ProblemKind::InvalidInput, format!("stdinBase64: {e}"))
                })?;
            exec = exec.stdin(data);
        }
        (None, None, true) if event_stream => {
            // The caller learns the id from the `started` event, so it is
            // chosen here rather than by the engine.
            let id = api.client.instance().next_execution_id();
            let (exec, writer) = exec.execution_id(id.clone()).stdin_stream();
            return stream(
                &api,
                exec,
                Some(StreamedStdin {
                    session,
                    id,
                    writer,
                }),
            );
        }
        (None, None, true) => {
            return Err(Problem::new(
                ProblemKind::InvalidInput,
                "stdinStream needs the event-stream answer (stream=true or Accept: \
                 text/event-stream): its `started` event names the execution to write to",
            ));
        }
        _ => {
            return Err(Problem::new(
                ProblemKind::InvalidInput,
                "give at most one of stdin, stdinBase64 and stdinStream",
            ));
        }
    }
    if event_stream {
        return stream(&api, exec, None);
    }
    // Its own task: a caller that hangs up drops this handler, not the
    // command, which still runs and saves its result and state.
    let future = exec.into_future();
    let result = api
        .tasks
        .spawn(future)
        .await
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("exec task: {e}")))??;
    Ok(Json(result).into_response())
}

/// Whether the caller asked for an event stream in its Accept header.
fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The event-stream answer. Bad input still answers a plain problem
/// (validation happens on the future's first poll, before anything is
/// written); from then on the command runs in its own task, as without
/// streaming, and its end comes as the last event.
fn stream(
    api: &Arc<Api>,
    exec: runbox_dispatcher::Exec,
    stdin: Option<StreamedStdin>,
) -> Result<Response, Problem> {
    let (output, mut running) = exec.streaming();
    if let Some(Err(e)) = (&mut running).now_or_never() {
        return Err(e.into());
    }
    // Registered before the answer starts, so a write sent on reading the
    // `started` event finds it.
    let started = stdin.map(|s| {
        api.stdin.insert(&s.session, s.id.as_ref(), s.writer);
        (s.session, s.id)
    });
    // The writer leaves the registry when the command ends, in the task
    // that runs it: a caller that hung up must not leave it behind.
    let registered = started
        .clone()
        .map(|(session, id)| (api.clone(), session, id));
    let result = api.tasks.spawn(async move {
        let ended = running.await;
        if let Some((api, session, id)) = registered {
            api.stdin.remove(&session, id.as_ref());
        }
        ended
    });
    let first = started.as_ref().map(|(_, id)| {
        Ok::<_, Infallible>(
            Event::default()
                .event("started")
                .json_data(StartedEvent {
                    execution_id: id.to_string(),
                })
                .unwrap_or_else(|_| Event::default().event("started").data(id.as_ref())),
        )
    });
    let end = async move {
        let event = match result.await {
            Ok(Ok(result)) => Event::default().event("result").json_data(&result),
            Ok(Err(e)) => problem_event(&Problem::from(e)),
            Err(e) => problem_event(&Problem::new(
                ProblemKind::Internal,
                format!("exec task: {e}"),
            )),
        };
        Ok::<_, Infallible>(event.unwrap_or_else(|e| {
            Event::default()
                .event("problem")
                .data(format!("encoding the last event: {e}"))
        }))
    };
    let events = futures::stream::iter(first)
        .chain(output.map(|chunk| Ok::<_, Infallible>(chunk_event(&chunk))))
        .chain(futures::stream::once(end));
    // Comments every 15 s keep proxies from closing a quiet stream.
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A command's streamed stdin, registered for the stdin route while it runs.
struct StreamedStdin {
    session: String,
    id: ExecutionId,
    writer: StdinWriter,
}

/// The data of the `started` event (only with `stdinStream`): where to
/// send the command's stdin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartedEvent {
    /// The `{execution}` of `POST /v1/sessions/{session}/executions/{execution}/stdin`.
    pub execution_id: String,
}

fn problem_event(problem: &Problem) -> Result<Event, axum::Error> {
    Event::default().event("problem").json_data(problem)
}

fn chunk_event(chunk: &OutputChunk) -> Event {
    let name = match chunk.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let data = match std::str::from_utf8(&chunk.data) {
        Ok(text) => ChunkEvent {
            seq: chunk.seq,
            text: text.to_owned(),
            lossy: false,
            base64: None,
        },
        Err(_) => ChunkEvent {
            seq: chunk.seq,
            text: String::from_utf8_lossy(&chunk.data).into_owned(),
            lossy: true,
            base64: Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &chunk.data,
            )),
        },
    };
    Event::default()
        .event(name)
        .json_data(&data)
        .unwrap_or_else(|_| Event::default().event(name).data(data.text))
}
