//! Session routes: list, create, ensure, show, close, delete.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use runbox_dispatcher::{Error, SessionSettings};

use super::Api;
use super::extract::{JsonBody, Params};
use super::problem::Problem;
use super::schema::{CreateSessionBody, Deleted, ResultList, SessionList, SessionView};

/// Every session that has objects.
#[utoipa::path(get, path = "/v1/sessions", operation_id = "listSessions", tag = "sessions",
    responses((status = 200, body = SessionList), (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(api): State<Arc<Api>>) -> Result<Json<SessionList>, Problem> {
    let sessions = api.client.list_sessions().await?;
    Ok(Json(SessionList {
        sessions: sessions.iter().map(SessionView::from).collect(),
    }))
}

/// Creates a session; 409 when it exists already.
#[utoipa::path(post, path = "/v1/sessions", operation_id = "createSession", tag = "sessions", request_body = CreateSessionBody,
    responses((status = 201, body = SessionView), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(api): State<Arc<Api>>,
    JsonBody(body): JsonBody<CreateSessionBody>,
) -> Result<(StatusCode, Json<SessionView>), Problem> {
    let mode = body
        .mode
        .map_or(api.client.config().limits.session_mode, Into::into);
    let mut settings = SessionSettings::new(mode);
    if let Some(ms) = body.idle_timeout_ms {
        settings = settings
            .with_idle_timeout(std::time::Duration::from_millis(ms))
            .map_err(Error::InvalidSessionSettings)?;
    }
    let info = api
        .client
        .create_session_with(&body.session_id, settings)
        .await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(&info))))
}

/// Creates the session unless it exists; its state either way.
#[utoipa::path(put, path = "/v1/sessions/{session}", operation_id = "ensureSession", tag = "sessions", params(SessionParam),
    responses((status = 200, body = SessionView), (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn ensure(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<SessionView>, Problem> {
    let info = api.client.ensure_session(&session).await?;
    Ok(Json(SessionView::from(&info)))
}

/// One session's state.
#[utoipa::path(get, path = "/v1/sessions/{session}", operation_id = "getSession", tag = "sessions", params(SessionParam),
    responses((status = 200, body = SessionView), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<SessionView>, Problem> {
    let info = api.client.session_info(&session).await?;
    Ok(Json(SessionView::from(&info)))
}

/// Closes a session: ends its warm execution, if one runs, and kills its
/// background processes (their results are returned); its state and files
/// stay.
#[utoipa::path(post, path = "/v1/sessions/{session}/close", operation_id = "closeSession", tag = "sessions", params(SessionParam),
    responses((status = 200, body = ResultList), (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn close(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<ResultList>, Problem> {
    let results = api.client.close_session(&session).await?;
    Ok(Json(ResultList { results }))
}

/// Destroys a session: kills its background processes and deletes its
/// state, files and background executions' objects.
#[utoipa::path(delete, path = "/v1/sessions/{session}", operation_id = "deleteSession", tag = "sessions", params(SessionParam),
    responses((status = 200, body = Deleted), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<Deleted>, Problem> {
    let deleted = api.client.delete_session(&session).await?;
    Ok(Json(Deleted { deleted }))
}

/// The session path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its documentation is used.
pub struct SessionParam {
    /// The session id, `[A-Za-z0-9_-]{1,64}`.
    session: String,
}
