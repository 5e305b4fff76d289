//! The HTTP API of `runbox serve`: the Sandbox protocol as routes, each
//! handler a thin adapter over one `Client`/`Session` call.
//!
//! - [`problem`]: errors as RFC 9457 problem documents;
//! - [`schema`]: the JSON shapes that are not `runbox.v1` messages;
//! - `extract`: request parts whose rejections are problem documents too;
//! - `sessions`, `exec`, `files`, `file_tools`, `background`: the routes;
//! - [`openapi`]: the OpenAPI 3.1 document generated from all of them.
//!
//! Every route but `/healthz` sits behind the bearer token when one is
//! configured; `serve` refuses to listen on a non-loopback address without
//! one (see `super::settings`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runbox_dispatcher::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::problem::{Problem, ProblemKind};

mod background;
mod exec;
mod extract;
mod file_tools;
mod files;
pub mod openapi;
pub mod problem;
pub mod schema;
mod sessions;
pub mod stdin;

/// Largest JSON request body: 1 MiB (a command is at most 256 KiB).
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;

/// What every handler shares.
pub struct Api {
    /// The one client of this process: one notifications subscription.
    pub client: Client,
    /// The bearer token every route but `/healthz` requires, when set.
    pub token: Option<String>,
    /// Cancelled when the server starts draining: `/readyz` turns 503 and
    /// followed log streams end.
    pub draining: CancellationToken,
    /// Work that must finish even when its caller hangs up (a command
    /// whose connection dropped still runs and saves its result); the
    /// drain waits for it.
    pub tasks: TaskTracker,
    /// Largest file upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// The streamed stdins of running commands (`…/executions/{execution}/stdin`).
    pub stdin: stdin::StdinRegistry,
}

/// The router of the whole API.
pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/sessions", get(sessions::list).post(sessions::create))
        .route(
            "/sessions/{session}",
            get(sessions::show)
                .put(sessions::ensure)
                .delete(sessions::delete),
        )
        .route("/sessions/{session}/close", post(sessions::close))
        .route("/sessions/{session}/exec", post(exec::exec))
        .route(
            "/sessions/{session}/executions/{execution}/stdin",
            post(stdin::write),
        )
        .route(
            "/sessions/{session}/files/{*path}",
            get(files::get)
                .put(files::put)
                .delete(files::delete)
                .head(files::head),
        )
        .route(
            "/sessions/{session}/replace/{*path}",
            post(file_tools::replace),
        )
        .route(
            "/sessions/{session}/search/{*path}",
            get(file_tools::search),
        )
        .route("/sessions/{session}/find", get(file_tools::find))
        .route("/sessions/{session}/dirs", get(files::list_root))
        .route("/sessions/{session}/dirs/{*path}", get(files::list))
        .route(
            "/sessions/{session}/background",
            get(background::list).post(background::spawn),
        )
        .route(
            "/sessions/{session}/background/{handle}",
            axum::routing::delete(background::kill),
        )
        .route(
            "/sessions/{session}/background/{handle}/logs",
            get(background::logs),
        )
        .route(
            "/sessions/{session}/background/{handle}/wait",
            post(background::wait),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        // Uploads stream past this limit with their own cap; JSON bodies stop here.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        // Outside the token check: a liveness probe carries no credentials.
        .route("/healthz", get(healthz))
        .with_state(api)
}

/// Refuses requests without the bearer token, when one is configured.
async fn authorize(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let Some(token) = &api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = Problem::new(
                ProblemKind::Unauthorized,
                "send Authorization: Bearer <RUNBOX_API_TOKEN>",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Compares in time that depends only on the lengths, so the token cannot
/// be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", security(()),
    responses((status = 200, description = "The process is alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 while taking work, 503 once draining.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, description = "Taking work", body = String),
        (status = 503, description = "Draining", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if api.draining.is_cancelled() {
        return Problem::new(ProblemKind::Unavailable, "draining: not taking new work")
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
