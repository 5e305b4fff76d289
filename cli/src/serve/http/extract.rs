//! Extractors whose rejections are problem documents, so a malformed path,
//! query or body gets the same error shape as every other failure.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::{Problem, ProblemKind};

/// Path parameters, percent-decoded.
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| Problem::new(ProblemKind::InvalidInput, e.body_text()))
    }
}

/// The query string.
pub struct QueryArgs<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryArgs<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Problem::new(ProblemKind::InvalidInput, e.body_text()))
    }
}

/// A JSON body of at most [`super::MAX_JSON_BODY_BYTES`]: unknown fields
/// and malformed JSON are refused before anything runs.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_problem)?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| Problem::new(ProblemKind::InvalidInput, format!("request body: {e}")))
    }
}

fn body_problem(e: BytesRejection) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            ProblemKind::TooLarge,
            format!(
                "request body is larger than {} bytes",
                super::MAX_JSON_BODY_BYTES
            ),
        )
    } else {
        Problem::new(ProblemKind::InvalidInput, e.body_text())
    }
}
