//! Application Default Credentials for Google's OTLP endpoint
//! (`telemetry.googleapis.com`): a bearer token on every export.
//!
//! The exporter's interceptor is synchronous and fetching a token is not, so
//! a task on the runtime keeps the current token in a cell the interceptor
//! reads. The token sources of [`DefaultCredentials`] cache their token and
//! renew it before it expires, so asking every minute costs nothing between
//! renewals.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use token_source::TokenSourceProvider;
use tokio::sync::watch;

use crate::credentials::DefaultCredentials;

/// The scope the Telemetry API accepts for trace and metric writes.
const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];

/// How often the cached token is asked for again.
const REFRESH: Duration = Duration::from_secs(60);

/// How long a flush at exit waits for the first token.
pub(super) const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(10);

/// Whether exports to `endpoint` go to Google and need its credentials.
pub(super) fn is_google(endpoint: &str) -> bool {
    let host = endpoint
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    endpoint.starts_with("https://") && host == "telemetry.googleapis.com"
}

/// The current token, shared by the interceptors of both exporters.
#[derive(Clone)]
pub(super) struct Tokens {
    value: Arc<RwLock<Option<tonic::metadata::AsciiMetadataValue>>>,
    /// True once the first attempt to get a token has ended.
    pub(super) ready: watch::Receiver<bool>,
}

impl Tokens {
    /// Starts the task keeping the token current. Must run inside a
    /// tokio runtime.
    pub(super) fn start() -> Self {
        let value = Arc::new(RwLock::new(None));
        let (tx, ready) = watch::channel(false);
        let cell = Arc::clone(&value);
        tokio::spawn(async move {
            let source = match DefaultCredentials::from_env(&SCOPES, None).await {
                Ok(credentials) => credentials.token_source(),
                Err(e) => {
                    eprintln!(
                        "runbox: no Application Default Credentials for the OTLP export: {e}"
                    );
                    let _ = tx.send(true);
                    return;
                }
            };
            loop {
                match source.token().await {
                    Ok(token) => match tonic::metadata::AsciiMetadataValue::try_from(token) {
                        Ok(v) => *cell.write().unwrap_or_else(|e| e.into_inner()) = Some(v),
                        Err(e) => eprintln!("runbox: OTLP access token unusable: {e}"),
                    },
                    Err(e) => eprintln!("runbox: get an OTLP access token: {e}"),
                }
                let _ = tx.send(true);
                tokio::time::sleep(REFRESH).await;
            }
        });
        Self { value, ready }
    }
}

impl tonic::service::Interceptor for Tokens {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self
            .value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| tonic::Status::unauthenticated("no access token yet"))?;
        request.metadata_mut().insert("authorization", token);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_googles_https_endpoint_is_google() {
        assert!(is_google("https://telemetry.googleapis.com"));
        assert!(is_google("https://telemetry.googleapis.com:443"));
        assert!(!is_google("http://telemetry.googleapis.com"));
        assert!(!is_google("https://telemetry.googleapis.com.evil.example"));
        assert!(!is_google("http://127.0.0.1:4317"));
    }
}
