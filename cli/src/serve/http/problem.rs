//! Errors as RFC 9457 `application/problem+json`: one stable `type` per
//! kind of failure, and the HTTP status that fits it.
//!
//! The kind comes from the CLI's own classification ([`Kind::of`] in
//! `failure.rs`), so the command line and the HTTP API never disagree on
//! whose fault a failure is; HTTP then tells apart a few cases that share a
//! CLI exit status but not a status code (conflict, too large, throttled,
//! unavailable).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runbox_dispatcher::{BackgroundError, Error, ExecResult, FileError, LaunchError, error_chain};
use serde::Serialize;
use utoipa::ToSchema;

use crate::failure::Kind;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The kinds of failure an HTTP caller can tell apart, each with its
/// `type` URI and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A value was refused before anything was written (400).
    InvalidInput,
    /// The Authorization header is missing or wrong (401).
    Unauthorized,
    /// No such session, file, background process or route (404).
    NotFound,
    /// The resource exists already, or changed under the operation (409).
    Conflict,
    /// A body, command or file is larger than allowed (413).
    TooLarge,
    /// The platform refuses launches for quota; try again later (429).
    Throttled,
    /// A wait asked for by the caller ran out of time (504).
    TimedOut,
    /// runbox is shutting down or a backend is briefly unavailable (503).
    Unavailable,
    /// runbox itself failed (500).
    Internal,
}

impl ProblemKind {
    /// Every kind, for the tests.
    #[cfg(test)]
    pub const ALL: [ProblemKind; 9] = [
        ProblemKind::InvalidInput,
        ProblemKind::Unauthorized,
        ProblemKind::NotFound,
        ProblemKind::Conflict,
        ProblemKind::TooLarge,
        ProblemKind::Throttled,
        ProblemKind::TimedOut,
        ProblemKind::Unavailable,
        ProblemKind::Internal,
    ];

    /// The stable `type` of the problem document.
    pub fn type_uri(self) -> &'static str {
        match self {
            ProblemKind::InvalidInput => "urn:runbox:problem:invalid-input",
            ProblemKind::Unauthorized => "urn:runbox:problem:unauthorized",
            ProblemKind::NotFound => "urn:runbox:problem:not-found",
            ProblemKind::Conflict => "urn:runbox:problem:conflict",
            ProblemKind::TooLarge => "urn:runbox:problem:too-large",
            ProblemKind::Throttled => "urn:runbox:problem:throttled",
            ProblemKind::TimedOut => "urn:runbox:problem:timed-out",
            ProblemKind::Unavailable => "urn:runbox:problem:unavailable",
            ProblemKind::Internal => "urn:runbox:problem:internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::InvalidInput => StatusCode::BAD_REQUEST,
            ProblemKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::Conflict => StatusCode::CONFLICT,
            ProblemKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
            ProblemKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            ProblemKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `title`: the same for every problem of the kind.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidInput => "invalid input",
            ProblemKind::Unauthorized => "missing or wrong bearer token",
            ProblemKind::NotFound => "not found",
            ProblemKind::Conflict => "conflict",
            ProblemKind::TooLarge => "too large",
            ProblemKind::Throttled => "throttled; try again later",
            ProblemKind::TimedOut => "timed out",
            ProblemKind::Unavailable => "unavailable; try again later",
            ProblemKind::Internal => "runbox failed",
        }
    }

    /// The kind of a library error: the CLI's kind, refined where HTTP has
    /// a more precise status.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::SessionExists(_)
            | Error::StateConflict { .. }
            | Error::File(FileError::Conflict { .. }) => return ProblemKind::Conflict,
            Error::CommandTooLarge { .. }
            | Error::StdinTooLarge { .. }
            | Error::File(FileError::UploadTooLarge { .. } | FileError::TooLargeToEdit { .. }) => {
                return ProblemKind::TooLarge;
            }
            Error::Launch(LaunchError::Throttled { .. }) => return ProblemKind::Throttled,
            Error::Closed | Error::Launch(LaunchError::Closed) => {
                return ProblemKind::Unavailable;
            }
            Error::Background(BackgroundError::Unreachable { .. }) => {
                return ProblemKind::Conflict;
            }
            _ => {}
        }
        match Kind::of(error) {
            Kind::Usage | Kind::InvalidInput => ProblemKind::InvalidInput,
            Kind::NotFound => ProblemKind::NotFound,
            Kind::TimedOut => ProblemKind::TimedOut,
            Kind::Config | Kind::Runbox if error.is_retryable() => ProblemKind::Unavailable,
            Kind::Config | Kind::Runbox => ProblemKind::Internal,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:runbox:problem:not-found`, …);
    /// stable, so callers branch on it.
    #[serde(rename = "type")]
    pub type_uri: &'static str,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong this time, with its causes.
    pub detail: String,
    /// With a `conflict` from a command whose session state changed while
    /// it ran: the command's result (it did run).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::serve::http::schema::ExecResultSchema>)]
    pub result: Option<Box<ExecResult>>,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.type_uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            result: None,
        }
    }

    /// The problem a library error stands for.
    pub fn from_error(error: &Error) -> Self {
        let mut problem = Self::new(ProblemKind::of(error), error_chain(error));
        if let Error::StateConflict { result, .. } = error {
            problem.result = Some(result.clone());
        }
        problem
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        Self::from_error(&error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_kind_has_its_own_type_and_an_error_status() {
        let types: HashSet<_> = ProblemKind::ALL.iter().map(|k| k.type_uri()).collect();
        assert_eq!(types.len(), ProblemKind::ALL.len());
        for kind in ProblemKind::ALL {
            assert!(kind.status().is_client_error() || kind.status().is_server_error());
        }
    }

    #[test]
    fn library_errors_get_the_fitting_status() {
        let cases = [
            (Error::SessionExists("s".into()), 409),
            (Error::NoSuchSession("s".into()), 404),
            (Error::CommandHasNul, 400),
            (Error::CommandTooLarge { bytes: 9, max: 1 }, 413),
            (Error::Closed, 503),
            (Error::File(FileError::NotFound { path: "a".into() }), 404),
            (
                Error::File(FileError::UploadTooLarge {
                    path: "a".into(),
                    limit: 1,
                }),
                413,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(Problem::from_error(&error).status, status, "{error}");
        }
    }
}
