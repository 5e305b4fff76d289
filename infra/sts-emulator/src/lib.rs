//! A stand-in for Google's Security Token Service and for Cloud Storage's
//! enforcement of Credential Access Boundaries, for tests on the emulators.
//!
//! One HTTP server does both:
//! - `POST /v1/token`: the RFC 8693 token exchange with
//!   `options.accessBoundary`, checked as Google checks it (form fields,
//!   roles, the CEL subset of [`cel`]); the subject token must be the
//!   configured source token. It answers an opaque token that it remembers
//!   with its boundary and expiry.
//! - everything else: a proxy to fake-gcs-server that maps each JSON-API
//!   request (metadata, download, list, multipart and resumable upload,
//!   delete) to a permission and an object and checks the bearer token: the
//!   source token may do everything, a downscoped token what its boundary
//!   allows (else 403 in Cloud Storage's error shape), no token, an unknown
//!   or an expired one gets 401.
//! - `GET /_stand_in/requests`: every request seen, as JSON
//!   ([`RequestRecord`]), so tests can check which credential each used.

pub mod boundary;
pub mod cel;
mod proxy;
mod sts;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use serde::Serialize;

pub use boundary::{Boundary, BoundaryError, Permission};

/// How the stand-in is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// fake-gcs-server's base URL, e.g. `http://127.0.0.1:4443`.
    pub upstream: String,
    /// The token the dispatcher holds: it may do everything and is the only
    /// subject token the exchange accepts.
    pub source_token: String,
    /// The lifetime of issued tokens (Google: the source token's rest, at
    /// most an hour).
    pub token_ttl: Duration,
}

/// Which credential a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// No `Authorization` header.
    None,
    /// The source token.
    Source,
    /// A token this stand-in issued, still valid.
    Downscoped,
    /// A token this stand-in issued, past its expiry.
    Expired,
    /// Anything else.
    Unknown,
}

/// One request the proxy handled.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// The credential.
    pub token: TokenKind,
    /// The issued token's number (from 1), for downscoped and expired ones.
    pub token_id: Option<u64>,
    /// The conditions of that token's boundary, one per rule.
    pub boundary: Vec<String>,
    /// HTTP method.
    pub method: String,
    /// The permission the request needs (the first one refused, if any).
    pub permission: Option<Permission>,
    /// The object, or the list prefix.
    pub object: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct Issued {
    id: u64,
    boundary: Boundary,
    expires: Instant,
}

/// Shared state of the server.
struct State {
    settings: Settings,
    /// The server's own base URL (`http://HOST:PORT`), for rewritten
    /// upload locations.
    base: String,
    tokens: Mutex<HashMap<String, Arc<Issued>>>,
    /// Resumable upload sessions: upload id → object name.
    uploads: Mutex<HashMap<String, String>>,
    records: Mutex<Vec<RequestRecord>>,
    http: reqwest::Client,
}

impl State {
    fn classify(&self, headers: &axum::http::HeaderMap) -> (TokenKind, Option<Arc<Issued>>) {
        let Some(value) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return (TokenKind::None, None);
        };
        let Some(token) = value.strip_prefix("Bearer ") else {
            return (TokenKind::Unknown, None);
        };
        if token == self.settings.source_token {
            return (TokenKind::Source, None);
        }
        let issued = lock(&self.tokens).get(token).cloned();
        match issued {
            Some(i) if i.expires > Instant::now() => (TokenKind::Downscoped, Some(i)),
            Some(i) => (TokenKind::Expired, Some(i)),
            None => (TokenKind::Unknown, None),
        }
    }

    fn record(&self, record: RequestRecord) {
        lock(&self.records).push(record);
    }
}

/// The router of a stand-in whose own address is `addr`.
pub fn router(settings: Settings, addr: SocketAddr) -> anyhow::Result<Router> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let state = Arc::new(State {
        settings,
        base: format!("http://{addr}"),
        tokens: Mutex::default(),
        uploads: Mutex::default(),
        records: Mutex::default(),
        http,
    });
    Ok(Router::new()
        .route("/v1/token", post(sts::exchange))
        .route("/_stand_in/requests", get(records))
        .fallback(proxy::forward)
        .with_state(state))
}

/// Serves on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, settings: Settings) -> anyhow::Result<()> {
    let app = router(settings, listener.local_addr()?)?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn records(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
) -> axum::Json<Vec<RequestRecord>> {
    axum::Json(lock(&state.records).clone())
}

/// A poisoned lock only means another request panicked; the data is still
/// consistent (every critical section is one insert or read).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
