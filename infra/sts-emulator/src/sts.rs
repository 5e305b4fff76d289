//! `POST /v1/token`: the token exchange.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{Boundary, Issued, State, lock};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The exchange; errors answer 400 with `{"error", "error_description"}`
/// as Google's endpoint does.
pub(crate) async fn exchange(
    Extract(state): Extract<Arc<State>>,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match form {
        Ok(axum::Form(f)) => f,
        Err(e) => return refuse("invalid_request", &format!("the body is not a form: {e}")),
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("grant_type") != GRANT_TYPE {
        return refuse(
            "unsupported_grant_type",
            &format!(
                "grant_type must be {GRANT_TYPE}, not {:?}",
                field("grant_type")
            ),
        );
    }
    for name in ["subject_token_type", "requested_token_type"] {
        if field(name) != ACCESS_TOKEN_TYPE {
            return refuse(
                "invalid_request",
                &format!("{name} must be {ACCESS_TOKEN_TYPE}, not {:?}", field(name)),
            );
        }
    }
    if field("subject_token").is_empty() {
        return refuse("invalid_request", "subject_token is missing");
    }
    if field("subject_token") != state.settings.source_token {
        return refuse("invalid_grant", "the subject token is invalid or expired");
    }
    if field("options").is_empty() {
        return refuse(
            "invalid_request",
            "options with an accessBoundary is missing",
        );
    }
    let boundary = match Boundary::parse_options(field("options")) {
        Ok(b) => b,
        Err(e) => return refuse("invalid_request", &error_chain(&e)),
    };
    let token = format!("sts-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let mut tokens = lock(&state.tokens);
    let id = tokens.len() as u64 + 1;
    tokens.insert(
        token.clone(),
        Arc::new(Issued {
            id,
            boundary,
            expires: Instant::now() + state.settings.token_ttl,
        }),
    );
    drop(tokens);
    Json(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": state.settings.token_ttl.as_secs(),
    }))
    .into_response()
}

fn refuse(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
