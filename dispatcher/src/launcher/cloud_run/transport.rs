//! How calls reach the Admin API: one tonic channel per HTTP/2 connection,
//! TLS and Application Default Credentials towards Google (plaintext and
//! no credentials towards an emulator), and the routing header Google's
//! front end reads.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use runbox_core::credentials::DefaultCredentials;
use token_source::{TokenSource, TokenSourceProvider};
use tonic::Status;
use tonic::codegen::http::{self, HeaderValue, header::AUTHORIZATION};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::settings::{CLOUD_RUN_DOMAIN, CloudRunEndpoint, SCOPES};

/// The header carrying a call's routing parameters to Google's front end.
const ROUTING_HEADER: &str = "x-goog-request-params";
/// What routing values escape: every byte but RFC 3986's unreserved
/// characters (letters, digits, `-`, `_`, `.`, `~`), as Google's clients do.
const ROUTING_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Opens connections to one Admin API endpoint, all sharing its TLS setup
/// and (against Google) one token source.
pub(super) struct Connector {
    endpoint: Endpoint,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl Connector {
    /// A connector for `endpoint`. Against Cloud Run this loads Application
    /// Default Credentials (and fails when there are none); no connection is
    /// made yet.
    pub(super) async fn new(endpoint: &CloudRunEndpoint) -> Result<Self, StdError> {
        let builder = Endpoint::from_shared(endpoint.url().to_owned())?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        match endpoint {
            CloudRunEndpoint::Google => {
                let tls = ClientTlsConfig::new()
                    .with_webpki_roots()
                    .domain_name(CLOUD_RUN_DOMAIN);
                let builder = builder.tls_config(tls)?;
                let credentials = DefaultCredentials::from_env(&SCOPES, None).await?;
                Ok(Self {
                    endpoint: builder,
                    tokens: Some(credentials.token_source()),
                })
            }
            CloudRunEndpoint::Emulator(url) => {
                if !url.starts_with("http://") {
                    return Err(format!(
                        "{url}: the emulator endpoint is plaintext (host:port or http://host:port)"
                    )
                    .into());
                }
                Ok(Self {
                    endpoint: builder,
                    tokens: None,
                })
            }
        }
    }

    /// A channel on a connection of its own, opened on first use.
    pub(super) fn connection(&self) -> Transport {
        Transport {
            channel: self.endpoint.connect_lazy(),
            tokens: self.tokens.clone(),
        }
    }
}

/// The channel every call goes through: a tonic channel plus, against
/// Google, a bearer token from Application Default Credentials on each
/// request. A tower service rather than a tonic interceptor, because
/// interceptors are synchronous and fetching or refreshing a token is not.
#[derive(Clone)]
pub(super) struct Transport {
    channel: Channel,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        // `poll_ready` readied this channel handle: send on it and leave a
        // fresh clone behind for the next call.
        let fresh = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, fresh);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            if let Some(tokens) = tokens {
                let token = tokens.token().await.map_err(|e| {
                    Status::unauthenticated(format!(
                        "get an access token (Application Default Credentials): {e}"
                    ))
                })?;
                let value = HeaderValue::from_str(&token).map_err(|e| {
                    Status::unauthenticated(format!(
                        "access token is not a valid header value: {e}"
                    ))
                })?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            channel.call(request).await.map_err(Into::into)
        })
    }
}

/// Sets the `x-goog-request-params` header: `key=value` pairs joined by
/// `&`, values percent-encoded as Google's clients encode them.
pub(super) fn route<T>(request: &mut tonic::Request<T>, params: &[(&str, &str)]) {
    let value = params
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, ROUTING_VALUE)))
        .collect::<Vec<_>>()
        .join("&");
    if let Ok(value) = value.parse() {
        request.metadata_mut().insert(ROUTING_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_params_are_encoded() {
        let mut r = tonic::Request::new(());
        route(&mut r, &[("name", "projects/p/locations/l/operations/a b")]);
        assert_eq!(
            r.metadata().get(ROUTING_HEADER).unwrap(),
            "name=projects%2Fp%2Flocations%2Fl%2Foperations%2Fa%20b"
        );
        route(&mut r, &[("location", "europe-west1")]);
        assert_eq!(
            r.metadata().get(ROUTING_HEADER).unwrap(),
            "location=europe-west1"
        );
    }

    #[test]
    fn routing_values_escape_all_but_the_unreserved_characters() {
        let encode = |v: &str| utf8_percent_encode(v, ROUTING_VALUE).to_string();
        // The strings a hand-written encoder (unreserved bytes kept, every
        // other byte as upper-case %XX) gave for the same input.
        for (value, expected) in [
            ("europe-west1", "europe-west1"),
            (
                "projects/p/locations/l/jobs/j",
                "projects%2Fp%2Flocations%2Fl%2Fjobs%2Fj",
            ),
            ("A-Z_a.z~0-9", "A-Z_a.z~0-9"),
            ("a b+c&d=e%f?g#h", "a%20b%2Bc%26d%3De%25f%3Fg%23h"),
            ("!*'();:@$,[]", "%21%2A%27%28%29%3B%3A%40%24%2C%5B%5D"),
            ("\t\n\u{7f}", "%09%0A%7F"),
            ("é€", "%C3%A9%E2%82%AC"),
            ("", ""),
        ] {
            assert_eq!(encode(value), expected, "{value:?}");
        }
    }
}
