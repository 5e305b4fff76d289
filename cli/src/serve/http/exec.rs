//! `POST /v1/sessions/{session}/exec`: one command, answered with its
//! `ExecResult`.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use runbox_core::trace_context::{self, Traceparent};
use runbox_dispatcher::ExecResult;

use super::Api;
use super::extract::{JsonBody, Params};
use super::problem::{Problem, ProblemKind};
use super::schema::ExecBody;
use super::sessions::SessionParam;

/// Runs a command in the session and answers its result. A command that
/// ran answers 200 whatever its exit code; the status is in the result.
/// The command runs to its end even when the connection drops.
#[utoipa::path(post, path = "/v1/sessions/{session}/exec", operation_id = "exec", tag = "exec", params(SessionParam),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (or timed out, was cancelled or lost)", body = crate::serve::http::schema::ExecResultSchema),
        (status = 400, description = "Bad session id, timeout or env; nothing ran", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The command ran but the session state changed meanwhile; `result` holds its result", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Command or body too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn exec(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecResult>, Problem> {
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
    // Its own task: a caller that hangs up drops this handler, not the
    // command, which still runs and saves its result and state.
    let future = exec.into_future();
    let result = api
        .tasks
        .spawn(future)
        .await
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("exec task: {e}")))??;
    Ok(Json(result))
}
