//! Background process routes: start, list, logs (optionally followed as a
//! streamed response), kill, wait.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runbox_dispatcher::{BackgroundHandle, Client, ExecResult, Stream};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Api;
use super::extract::{JsonBody, Params, QueryArgs};
use super::problem::Problem;
use super::schema::{BackgroundList, BackgroundView, SpawnBody};

/// `Runbox-Next-Offset`: pass as `offset` to read on after these bytes.
const NEXT_OFFSET: &str = "runbox-next-offset";
/// `Runbox-Ended`: the process has ended and no later read returns more.
const ENDED: &str = "runbox-ended";

/// Default wait of `…/wait` without `timeoutMs`: 60 s.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Query of `GET …/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `stdout` (default) or `stderr`.
    #[serde(default)]
    #[param(inline)]
    stream: StreamName,
    /// Chunks already read: 0 at first, then `Runbox-Next-Offset`.
    #[serde(default)]
    offset: u64,
    /// Keep the response open and stream output as it comes, until the
    /// process ends (or the server drains).
    #[serde(default)]
    follow: bool,
}

/// Which output stream.
#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

impl From<StreamName> for Stream {
    fn from(s: StreamName) -> Self {
        match s {
            StreamName::Stdout => Stream::Stdout,
            StreamName::Stderr => Stream::Stderr,
        }
    }
}

/// Query of `POST …/wait`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Longest wait in milliseconds (default 60000); past it, 504 and the
    /// process keeps running.
    timeout_ms: Option<u64>,
}

/// The session and handle path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its documentation is used.
pub struct HandleParams {
    /// The session id.
    session: String,
    /// The background process's handle.
    handle: String,
}

/// Starts a background process; answers its handle at once.
#[utoipa::path(post, path = "/v1/sessions/{session}/background", operation_id = "startBackground", tag = "background",
    params(super::sessions::SessionParam), request_body = SpawnBody,
    responses((status = 201, body = BackgroundView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn spawn(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
    JsonBody(body): JsonBody<SpawnBody>,
) -> Result<(StatusCode, Json<BackgroundView>), Problem> {
    let mut spawn = api.client.session(&session)?.spawn(body.command);
    if body.timeout_ms > 0 {
        spawn = spawn.timeout(Duration::from_millis(body.timeout_ms));
    }
    for (name, value) in body.env {
        spawn = spawn.env(name, value);
    }
    let handle = spawn.await?;
    Ok((StatusCode::CREATED, Json(BackgroundView::started(&handle))))
}

/// The session's background processes, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{session}/background", operation_id = "listBackground", tag = "background",
    params(super::sessions::SessionParam),
    responses((status = 200, body = BackgroundList),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<BackgroundList>, Problem> {
    let entries = api.client.list_background(&session).await?;
    Ok(Json(BackgroundList {
        processes: entries.iter().map(BackgroundView::from).collect(),
    }))
}

/// A process's output from chunk `offset` on, as raw bytes; with
/// `follow=true` a streamed response that ends when the process does.
#[utoipa::path(get, path = "/v1/sessions/{session}/background/{handle}/logs", operation_id = "backgroundLogs", tag = "background",
    params(HandleParams, LogsQuery),
    responses((status = 200, description = "Output bytes", content_type = "application/octet-stream",
            headers(("runbox-next-offset" = u64, description = "Without follow: the offset to read on from"),
                    ("runbox-ended" = bool, description = "Without follow: no later read returns more"))),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn logs(
    State(api): State<Arc<Api>>,
    Params((session, handle)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<LogsQuery>,
) -> Result<Response, Problem> {
    let handle = api.client.session(&session)?.background(&handle).await?;
    let stream = Stream::from(query.stream);
    if !query.follow {
        let read = api
            .client
            .background_logs(&handle, stream, query.offset)
            .await?;
        let mut response = octets(Body::from(read.data));
        let headers = response.headers_mut();
        headers.insert(NEXT_OFFSET, HeaderValue::from(read.next_offset));
        headers.insert(
            ENDED,
            HeaderValue::from_static(if read.ended { "true" } else { "false" }),
        );
        return Ok(response);
    }
    let body = follow(
        api.client.clone(),
        handle,
        stream,
        query.offset,
        api.draining.clone(),
    );
    Ok(octets(Body::from_stream(body)))
}

/// Kills a background process and answers its result (CANCELLED, or how
/// it had already ended).
#[utoipa::path(delete, path = "/v1/sessions/{session}/background/{handle}", operation_id = "killBackground", tag = "background",
    params(HandleParams),
    responses((status = 200, body = crate::serve::http::schema::ExecResultSchema),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn kill(
    State(api): State<Arc<Api>>,
    Params((session, handle)): Params<(String, String)>,
) -> Result<Json<ExecResult>, Problem> {
    Ok(Json(
        api.client
            .session(&session)?
            .kill_background(&handle)
            .await?,
    ))
}

/// Waits for a background process to end and answers its result.
#[utoipa::path(post, path = "/v1/sessions/{session}/background/{handle}/wait", operation_id = "waitBackground", tag = "background",
    params(HandleParams, WaitQuery),
    responses((status = 200, body = crate::serve::http::schema::ExecResultSchema),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Still running after timeoutMs", body = Problem, content_type = "application/problem+json")))]
pub async fn wait(
    State(api): State<Arc<Api>>,
    Params((session, handle)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<WaitQuery>,
) -> Result<Json<ExecResult>, Problem> {
    let handle = api.client.session(&session)?.background(&handle).await?;
    let timeout = query.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    Ok(Json(api.client.wait_background(&handle, timeout).await?))
}

/// The output as it comes: each read that has bytes becomes a chunk of
/// the response; the stream ends when the process has ended and all was
/// read, when the server drains, or on an error (which ends the response
/// early, the only way left once the status was sent).
fn follow(
    client: Client,
    handle: BackgroundHandle,
    stream: Stream,
    offset: u64,
    draining: CancellationToken,
) -> impl futures::Stream<Item = Result<Bytes, runbox_dispatcher::Error>> + Send {
    futures::stream::unfold(Some(offset), move |offset| {
        let (client, handle, draining) = (client.clone(), handle.clone(), draining.clone());
        async move {
            let offset = offset?;
            let read = tokio::select! {
                read = client.follow_background_logs(&handle, stream, offset) => read,
                () = draining.cancelled() => return None,
            };
            match read {
                Ok(read) => {
                    let next = (!read.ended).then_some(read.next_offset);
                    Some((Ok(read.data), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

fn octets(body: Body) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}
