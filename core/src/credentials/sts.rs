//! The token exchange (RFC 8693, as Google's Security Token Service serves
//! it) and the per-execution [`Minter`] built on it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use token_source::{TokenSource, TokenSourceProvider};

use super::{AccessBoundary, CredentialError, STS_TIMEOUT, StoreToken};
use crate::ids::{ExecutionId, SessionId};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The scope the dispatcher's own token is asked for (Cloud Storage is all
/// a boundary can name; STS accepts any scope on the source token).
const SOURCE_SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];

/// A client of one token-exchange endpoint.
#[derive(Clone, Debug)]
pub struct StsClient {
    endpoint: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ExchangeAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl StsClient {
    /// A client of `endpoint` (`https://sts.googleapis.com` or a stand-in);
    /// each exchange fails after [`STS_TIMEOUT`].
    pub fn new(endpoint: &str) -> Result<Self, CredentialError> {
        let http = reqwest::Client::builder()
            .timeout(STS_TIMEOUT)
            .build()
            .map_err(|source| CredentialError::Unreachable {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// Exchanges `subject_token` (an access token of the caller) for one
    /// limited to `boundary`.
    pub async fn exchange(
        &self,
        subject_token: &str,
        boundary: &AccessBoundary,
    ) -> Result<StoreToken, CredentialError> {
        let url = format!("{}/v1/token", self.endpoint);
        let options = boundary.to_options();
        let form = [
            ("grant_type", GRANT_TYPE),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject_token),
            ("options", options.as_str()),
        ];
        let asked = SystemTime::now();
        let answer = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if !status.is_success() {
            let e: ErrorAnswer = serde_json::from_slice(&body).unwrap_or_default();
            return Err(CredentialError::Refused {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                error: e.error,
                description: e.error_description,
            });
        }
        let token: ExchangeAnswer =
            serde_json::from_slice(&body).map_err(|e| CredentialError::BadAnswer {
                endpoint: self.endpoint.clone(),
                source: Box::new(e),
            })?;
        let expires_at = token
            .expires_in
            .map(|secs| asked + Duration::from_secs(secs));
        Ok(StoreToken::new(token.access_token, expires_at))
    }

    fn unreachable(&self, source: reqwest::Error) -> CredentialError {
        CredentialError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }
}

/// Where the dispatcher's own access token comes from.
#[derive(Clone)]
enum Subject {
    /// A fixed token (the storage emulator's).
    Fixed(String),
    /// Application Default Credentials.
    Adc(Arc<dyn TokenSource>),
}

/// Mints one downscoped token per execution.
#[derive(Clone)]
pub struct Minter {
    sts: StsClient,
    subject: Subject,
    bucket: String,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("sts", &self.sts)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter exchanging `subject_token` (a fixed token, as on the
    /// emulator) at `sts_endpoint`, for objects in `bucket`.
    pub fn with_subject_token(
        sts_endpoint: &str,
        subject_token: impl Into<String>,
        bucket: impl Into<String>,
    ) -> Result<Self, CredentialError> {
        Ok(Self {
            sts: StsClient::new(sts_endpoint)?,
            subject: Subject::Fixed(subject_token.into()),
            bucket: bucket.into(),
        })
    }

    /// A minter exchanging the dispatcher's Application Default
    /// Credentials token at `sts_endpoint`.
    pub async fn with_default_credentials(
        sts_endpoint: &str,
        bucket: impl Into<String>,
    ) -> Result<Self, CredentialError> {
        let provider = super::DefaultCredentials::from_env(&SOURCE_SCOPES, None)
            .await
            .map_err(|e| CredentialError::Credentials {
                source: Box::new(e),
            })?;
        Ok(Self {
            sts: StsClient::new(sts_endpoint)?,
            subject: Subject::Adc(provider.token_source()),
            bucket: bucket.into(),
        })
    }

    /// A token for the executor of `execution` in `session`
    /// ([`AccessBoundary::for_execution`]). `needed_for` is how long the
    /// execution may run: a token that expires sooner is still returned
    /// (a boundary cannot outlive its source token; see the README), with
    /// a warning.
    pub async fn mint(
        &self,
        session: &SessionId,
        execution: &ExecutionId,
        needed_for: Duration,
    ) -> Result<StoreToken, CredentialError> {
        let subject = match &self.subject {
            Subject::Fixed(token) => token.clone(),
            Subject::Adc(source) => {
                let bearer = source
                    .token()
                    .await
                    .map_err(|source| CredentialError::SubjectToken { source })?;
                bearer.strip_prefix("Bearer ").unwrap_or(&bearer).to_owned()
            }
        };
        let boundary = AccessBoundary::for_execution(&self.bucket, session, execution);
        let token = self.sts.exchange(&subject, &boundary).await?;
        if let Some(expiry) = token.expires_at()
            && expiry < SystemTime::now() + needed_for
        {
            tracing::warn!(
                execution = %execution,
                "the execution's store token expires before its deadline; a long command may fail to save"
            );
        }
        Ok(token)
    }
}

/// A token source that always returns one token: how an executor hands its
/// downscoped token (and nothing else) to the storage client.
#[derive(Clone)]
pub struct StaticToken(Arc<str>);

impl StaticToken {
    /// The provider of `token`.
    pub fn new(token: &StoreToken) -> Self {
        Self(Arc::from(token.secret()))
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(…)")
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        Ok(format!("Bearer {}", self.0))
    }
}

impl TokenSourceProvider for StaticToken {
    fn token_source(&self) -> Arc<dyn TokenSource> {
        Arc::new(self.clone())
    }
}
