//! Application Default Credentials: where every Google client runbox builds
//! (Cloud Storage, Pub/Sub, the Cloud Run Admin API, Cloud Trace, the token
//! exchange of per-execution credentials) gets its access tokens.
//!
//! The credentials are found as Google's libraries find them:
//! `GOOGLE_APPLICATION_CREDENTIALS_JSON` (the file's content, plain or
//! base64, a gcloud-auth extension), else the file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
//! `~/.config/gcloud/application_default_credentials.json`, else the
//! metadata server on Google Cloud. The file's `type` picks the token
//! source, here and only here: `impersonated_service_account` gets
//! runbox's own ([`ImpersonatedTokenSource`]); `service_account`,
//! `authorized_user` and `external_account` get gcloud-auth's.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use token_source::{TokenSource, TokenSourceProvider};

use super::impersonated::{ImpersonatedFile, ImpersonatedTokenSource};
use crate::config::{Env, Lookup};

/// `GOOGLE_APPLICATION_CREDENTIALS`: the path of a credentials file.
pub const CREDENTIALS_FILE_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// `GOOGLE_APPLICATION_CREDENTIALS_JSON`: a credentials file's content.
pub const CREDENTIALS_JSON_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS_JSON";
/// The `type` of the files [`ImpersonatedTokenSource`] serves.
pub const IMPERSONATED_SERVICE_ACCOUNT: &str = "impersonated_service_account";

/// How long one call to a token endpoint may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The scope source credentials are asked for before an impersonation.
pub(super) const CLOUD_PLATFORM: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];

/// The Application Default Credentials, loaded for one set of scopes: a
/// token source provider for the gcloud clients and the project the
/// credentials name.
pub struct DefaultCredentials {
    tokens: Arc<dyn TokenSource>,
    project_id: Option<String>,
    kind: String,
}

impl std::fmt::Debug for DefaultCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultCredentials")
            .field("kind", &self.kind)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl DefaultCredentials {
    /// Loads the credentials the process environment points at, for
    /// `scopes` (and, for service-account keys, a self-signed JWT for
    /// `audience` when given, as gcloud-pubsub asks). The first token is
    /// fetched here, so bad credentials fail at start.
    pub async fn from_env(scopes: &[&str], audience: Option<&str>) -> Result<Self, AdcError> {
        Self::from_lookup(&Env, scopes, audience).await
    }

    /// Like [`DefaultCredentials::from_env`], reading the variables through
    /// `env`. Only when no file is found does gcloud-auth look on its own
    /// (at the process environment, then the metadata server).
    pub async fn from_lookup(
        env: &(dyn Lookup + Sync),
        scopes: &[&str],
        audience: Option<&str>,
    ) -> Result<Self, AdcError> {
        let mut config = gcloud_auth::project::Config::default().with_scopes(scopes);
        if let Some(audience) = audience {
            config = config.with_audience(audience);
        }
        let Some(json) = locate(env).await? else {
            let provider = gcloud_auth::token::DefaultTokenSourceProvider::new(config)
                .await
                .map_err(|source| AdcError::Load { source })?;
            return Ok(Self {
                tokens: provider.token_source(),
                project_id: provider.project_id.clone(),
                kind: "metadata_server".to_owned(),
            });
        };
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: String,
        }
        let Kind { kind } = serde_json::from_str(&json.text).map_err(|source| AdcError::Parse {
            origin: json.origin.clone(),
            source,
        })?;
        if kind == IMPERSONATED_SERVICE_ACCOUNT {
            let file: ImpersonatedFile =
                serde_json::from_str(&json.text).map_err(|source| AdcError::Parse {
                    origin: json.origin.clone(),
                    source,
                })?;
            let project_id = file.quota_project_id.clone();
            let source = Arc::new(ImpersonatedTokenSource::new(file, scopes).await?);
            source.access_token().await?;
            return Ok(Self {
                tokens: source,
                project_id,
                kind,
            });
        }
        let file = gcloud_auth::credentials::CredentialsFile::new_from_str(&json.text)
            .await
            .map_err(|source| AdcError::Load { source })?;
        let project_id = file
            .project_id
            .clone()
            .or_else(|| file.quota_project_id.clone());
        let provider = gcloud_auth::token::DefaultTokenSourceProvider::new_with_credentials(
            config,
            Box::new(file),
        )
        .await
        .map_err(|source| AdcError::Load { source })?;
        Ok(Self {
            tokens: provider.token_source(),
            project_id,
            kind,
        })
    }

    /// The credentials' `type` (`service_account`, `authorized_user`,
    /// `external_account`, `impersonated_service_account`), or
    /// `metadata_server`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The project the credentials name (`project_id`, else
    /// `quota_project_id`; the metadata server's project on Google Cloud).
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }
}

impl TokenSourceProvider for DefaultCredentials {
    fn token_source(&self) -> Arc<dyn TokenSource> {
        Arc::clone(&self.tokens)
    }
}

/// Loading Application Default Credentials, or getting a token with them,
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum AdcError {
    /// The credentials file could not be read.
    #[error("read the credentials file {origin}")]
    File {
        /// Where the file was looked for.
        origin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The credentials are not a credentials file runbox understands.
    #[error("parse the credentials in {origin}")]
    Parse {
        /// The file or variable they came from.
        origin: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A field of the credentials is unusable.
    #[error("credentials field {field}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An impersonation starts from credentials of a kind runbox cannot use.
    #[error(
        "impersonation from source credentials of type {kind:?} is not supported (authorized_user, service_account and external_account are)"
    )]
    UnsupportedSource {
        /// The source's `type`.
        kind: String,
    },
    /// gcloud-auth could not load the credentials or get their token.
    #[error("load Application Default Credentials")]
    Load {
        /// The cause.
        #[source]
        source: gcloud_auth::error::Error,
    },
    /// The source credentials of an impersonation gave no token.
    #[error("get an access token of the {kind} source credentials")]
    SourceToken {
        /// The source's `type`.
        kind: String,
        /// The cause.
        #[source]
        source: gcloud_auth::error::Error,
    },
    /// The token endpoint refused the source credentials' refresh token.
    #[error(
        "token endpoint {endpoint} refused the source credentials with HTTP {status}: {error}: {description}"
    )]
    SourceRefused {
        /// The token endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth error code (`invalid_grant`, ...).
        error: String,
        /// The endpoint's explanation.
        description: String,
    },
    /// IAM Credentials refused to issue a token for the service account.
    #[error("impersonation at {url} refused with HTTP {status} {code}: {message}")]
    ImpersonationRefused {
        /// The `generateAccessToken` URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Google's status name (`PERMISSION_DENIED`, ...), if it gave one.
        code: String,
        /// Google's error message.
        message: String,
    },
    /// A token endpoint could not be reached or did not answer in time.
    #[error("reach {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A token endpoint's answer is not what it should answer.
    #[error("unexpected answer from {url}")]
    BadAnswer {
        /// The endpoint.
        url: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AdcError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::SourceRefused { status, .. } | Self::ImpersonationRefused { status, .. } => {
                *status == 429 || *status >= 500
            }
            Self::Load { source } | Self::SourceToken { source, .. } => gcloud_retryable(source),
            Self::File { .. }
            | Self::Parse { .. }
            | Self::BadField { .. }
            | Self::UnsupportedSource { .. }
            | Self::BadAnswer { .. } => false,
        }
    }
}

fn gcloud_retryable(error: &gcloud_auth::error::Error) -> bool {
    use gcloud_auth::error::Error;
    match error {
        Error::HttpError(e) => e.is_timeout() || e.is_connect(),
        Error::TokenErrorResponse { status, .. }
        | Error::UnexpectedImpersonateTokenResponse(status, _) => *status == 429 || *status >= 500,
        _ => false,
    }
}

/// A credentials file's content and where it came from.
struct Found {
    origin: String,
    text: String,
}

/// The credentials file, if there is one.
async fn locate(env: &(dyn Lookup + Sync)) -> Result<Option<Found>, AdcError> {
    if let Some(value) = env.get(CREDENTIALS_JSON_ENV) {
        let engine = base64::engine::general_purpose::STANDARD;
        let text = engine
            .decode(value.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or(value);
        return Ok(Some(Found {
            origin: CREDENTIALS_JSON_ENV.to_owned(),
            text,
        }));
    }
    if let Some(path) = env.get(CREDENTIALS_FILE_ENV) {
        // Named explicitly: a missing file is an error, not a reason to
        // try other credentials.
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|source| AdcError::File {
                origin: path.clone(),
                source,
            })?;
        return Ok(Some(Found { origin: path, text }));
    }
    let Some(home) = env.get("HOME") else {
        return Ok(None);
    };
    let path =
        std::path::Path::new(&home).join(".config/gcloud/application_default_credentials.json");
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(Some(Found {
            origin: path.display().to_string(),
            text,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AdcError::File {
            origin: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_named_file_that_is_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let env = [(CREDENTIALS_FILE_ENV, missing.to_str().unwrap())];
        let err = DefaultCredentials::from_lookup(&env, &CLOUD_PLATFORM, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdcError::File { origin, .. } if origin.ends_with("nope.json")),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn content_in_the_variable_may_be_base64() {
        let json = r#"{"type":"impersonated_service_account","service_account_impersonation_url":"gopher://x","source_credentials":{"type":"authorized_user","client_id":"a","client_secret":"b","refresh_token":"c"}}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(json);
        for value in [json.to_owned(), encoded] {
            let env = [(CREDENTIALS_JSON_ENV, value.as_str())];
            let err = DefaultCredentials::from_lookup(&env, &CLOUD_PLATFORM, None)
                .await
                .unwrap_err();
            // Reaching the URL check proves the content was read as an
            // impersonation file.
            assert!(matches!(err, AdcError::BadField { .. }), "{err:?}");
        }
        let env = [(CREDENTIALS_JSON_ENV, "{not json")];
        let err = DefaultCredentials::from_lookup(&env, &CLOUD_PLATFORM, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdcError::Parse { origin, .. } if origin == CREDENTIALS_JSON_ENV),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn gclouds_well_known_file_is_found_under_home() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("application_default_credentials.json"),
            r#"{"type":"impersonated_service_account"}"#,
        )
        .unwrap();
        let env = [("HOME", home.path().to_str().unwrap())];
        let err = DefaultCredentials::from_lookup(&env, &CLOUD_PLATFORM, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdcError::Parse { origin, .. } if origin.ends_with("application_default_credentials.json")),
            "{err:?}"
        );
    }

    #[test]
    fn refusals_by_an_overloaded_endpoint_are_retryable() {
        let refused = |status| AdcError::ImpersonationRefused {
            url: "u".into(),
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(refused(503).is_retryable());
        assert!(refused(429).is_retryable());
        assert!(!refused(403).is_retryable());
    }
}
