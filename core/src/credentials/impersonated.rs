//! Service-account impersonation: the `impersonated_service_account`
//! Application Default Credentials that `gcloud auth application-default
//! login --impersonate-service-account SA` writes.
//!
//! Such a file holds the caller's own credentials (`source_credentials`)
//! and the IAM Credentials URL of the service account to act as. A token
//! is had in two steps: an access token of the source credentials, then
//! `generateAccessToken` on that URL with the source token as bearer. The
//! impersonated token is kept until shortly before it expires; the source
//! token is only asked for when a new impersonated token is needed.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::adc::{AdcError, CLOUD_PLATFORM, HTTP_TIMEOUT};

/// How long an impersonated token is asked to live (the most IAM
/// Credentials grants without an organisation policy exception).
pub const IMPERSONATED_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A cached token is renewed this long before it expires, so a request
/// never leaves with a token that dies on the way.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Google's OAuth 2.0 token endpoint, where a refresh token is redeemed
/// when the file names none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Tokens of a service account, had by impersonating it with the source
/// credentials of an `impersonated_service_account` file.
pub struct ImpersonatedTokenSource {
    url: String,
    delegates: Vec<String>,
    scopes: Vec<String>,
    source: Source,
    http: reqwest::Client,
    /// Held across a renewal, so concurrent callers wait for one call to
    /// IAM Credentials instead of each making their own.
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for ImpersonatedTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpersonatedTokenSource")
            .field("url", &self.url)
            .field("delegates", &self.delegates)
            .field("scopes", &self.scopes)
            .field("source", &self.source.kind())
            .finish_non_exhaustive()
    }
}

/// The fields of an `impersonated_service_account` file runbox reads.
#[derive(Deserialize)]
pub(super) struct ImpersonatedFile {
    pub(super) service_account_impersonation_url: String,
    #[serde(default)]
    pub(super) delegates: Vec<String>,
    pub(super) source_credentials: serde_json::Value,
    #[serde(default)]
    pub(super) quota_project_id: Option<String>,
}

impl ImpersonatedTokenSource {
    /// A token source for `file` (the whole credentials file, as JSON)
    /// asking for `scopes`. Bad fields and source credentials of a kind
    /// runbox cannot use are refused here, before any call; no token is
    /// asked for yet, except the first source token of a `service_account`
    /// or `external_account` source (gcloud-auth fetches it when built).
    pub async fn from_json(file: &str, scopes: &[&str]) -> Result<Self, AdcError> {
        let file: ImpersonatedFile =
            serde_json::from_str(file).map_err(|source| AdcError::Parse {
                origin: "impersonated_service_account credentials".to_owned(),
                source,
            })?;
        Self::new(file, scopes).await
    }

    pub(super) async fn new(file: ImpersonatedFile, scopes: &[&str]) -> Result<Self, AdcError> {
        let url = file.service_account_impersonation_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(AdcError::BadField {
                field: "service_account_impersonation_url",
                reason: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // A redirect would carry the source token to wherever the
            // endpoint says: a 3xx is a refusal instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| AdcError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let source = Source::new(file.source_credentials).await?;
        Ok(Self {
            url,
            delegates: file.delegates,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            source,
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The current impersonated access token (without `Bearer `), renewed
    /// when it is within [`REFRESH_MARGIN`] of its expiry.
    pub async fn access_token(&self) -> Result<String, AdcError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && SystemTime::now() + REFRESH_MARGIN < token.expires_at
        {
            return Ok(token.secret.clone());
        }
        let fresh = self.generate().await?;
        let secret = fresh.secret.clone();
        *cached = Some(fresh);
        Ok(secret)
    }

    /// One `generateAccessToken` call with a fresh source token.
    async fn generate(&self) -> Result<Cached, AdcError> {
        let source_token = self.source.access_token(&self.http).await?;
        let body = GenerateRequest {
            scope: &self.scopes,
            lifetime: format!("{}s", IMPERSONATED_TOKEN_LIFETIME.as_secs()),
            delegates: &self.delegates,
        };
        let answer = self
            .http
            .post(&self.url)
            .bearer_auth(source_token)
            .json(&body)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if !status.is_success() {
            let (code, message) = google_error(&bytes);
            return Err(AdcError::ImpersonationRefused {
                url: self.url.clone(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        let answer: GenerateAnswer =
            serde_json::from_slice(&bytes).map_err(|e| self.bad_answer(Box::new(e)))?;
        let expires_at = humantime::parse_rfc3339(&answer.expire_time)
            .map_err(|e| self.bad_answer(Box::new(e)))?;
        Ok(Cached {
            secret: answer.access_token,
            expires_at,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> AdcError {
        AdcError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    fn bad_answer(&self, source: Box<dyn std::error::Error + Send + Sync>) -> AdcError {
        AdcError::BadAnswer {
            url: self.url.clone(),
            source,
        }
    }
}

#[async_trait]
impl token_source::TokenSource for ImpersonatedTokenSource {
    async fn token(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        Ok(format!("Bearer {}", self.access_token().await?))
    }
}

struct Cached {
    secret: String,
    expires_at: SystemTime,
}

#[derive(Serialize)]
struct GenerateRequest<'a> {
    scope: &'a [String],
    lifetime: String,
    delegates: &'a [String],
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateAnswer {
    access_token: String,
    expire_time: String,
}

/// Google's error body: `{"error": {"code": 403, "message": "…",
/// "status": "PERMISSION_DENIED"}}`. Anything else is quoted as it came,
/// cut short.
fn google_error(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default)]
        status: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => (e.error.status, e.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            (String::new(), text.chars().take(500).collect())
        }
    }
}

/// The credentials an impersonation starts from.
enum Source {
    /// `authorized_user` (a `gcloud auth login` user): its refresh token,
    /// redeemed at its token URI.
    User(RefreshToken),
    /// `service_account` or `external_account`, through gcloud-auth's own
    /// token sources (which sign the key's JWT or exchange the subject
    /// token).
    Gcloud {
        kind: String,
        tokens: Box<dyn gcloud_auth::token_source::TokenSource>,
    },
}

impl Source {
    async fn new(json: serde_json::Value) -> Result<Self, AdcError> {
        let kind = json
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "authorized_user" => {
                let user: RefreshToken =
                    serde_json::from_value(json).map_err(|source| AdcError::Parse {
                        origin: "source_credentials (authorized_user)".to_owned(),
                        source,
                    })?;
                Ok(Self::User(user))
            }
            "service_account" | "external_account" => {
                let file =
                    gcloud_auth::credentials::CredentialsFile::new_from_str(&json.to_string())
                        .await
                        .map_err(|source| AdcError::SourceToken {
                            kind: kind.clone(),
                            source,
                        })?;
                let config = gcloud_auth::project::Config::default().with_scopes(&CLOUD_PLATFORM);
                let tokens =
                    gcloud_auth::project::create_token_source_from_credentials(&file, &config)
                        .await
                        .map_err(|source| AdcError::SourceToken {
                            kind: kind.clone(),
                            source,
                        })?;
                Ok(Self::Gcloud { kind, tokens })
            }
            _ => Err(AdcError::UnsupportedSource { kind }),
        }
    }

    fn kind(&self) -> &str {
        match self {
            Self::User(_) => "authorized_user",
            Self::Gcloud { kind, .. } => kind,
        }
    }

    async fn access_token(&self, http: &reqwest::Client) -> Result<String, AdcError> {
        match self {
            Self::User(user) => user.redeem(http).await,
            Self::Gcloud { kind, tokens } => {
                tokens
                    .token()
                    .await
                    .map(|t| t.access_token)
                    .map_err(|source| AdcError::SourceToken {
                        kind: kind.clone(),
                        source,
                    })
            }
        }
    }
}

/// An `authorized_user` source: an OAuth client and a refresh token.
#[derive(Deserialize)]
struct RefreshToken {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct RefreshAnswer {
    access_token: String,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl RefreshToken {
    /// An access token for the user (RFC 6749 section 6).
    async fn redeem(&self, http: &reqwest::Client) -> Result<String, AdcError> {
        let endpoint = self.token_uri.as_deref().unwrap_or(GOOGLE_TOKEN_URI);
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("refresh_token", self.refresh_token.as_str()),
        ];
        let unreachable = |source| AdcError::Unreachable {
            url: endpoint.to_owned(),
            source,
        };
        let answer = http
            .post(endpoint)
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = answer.status();
        let body = answer.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let e: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
            return Err(AdcError::SourceRefused {
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                error: e.error,
                description: e.error_description,
            });
        }
        let token: RefreshAnswer =
            serde_json::from_slice(&body).map_err(|e| AdcError::BadAnswer {
                url: endpoint.to_owned(),
                source: Box::new(e),
            })?;
        Ok(token.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn googles_error_message_is_kept() {
        let (code, message) = google_error(
            br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(code, "PERMISSION_DENIED");
        assert_eq!(
            message,
            "Permission 'iam.serviceAccounts.getAccessToken' denied"
        );
        let (code, message) = google_error(b"upstream connect error");
        assert_eq!(code, "");
        assert_eq!(message, "upstream connect error");
    }

    #[tokio::test]
    async fn bad_files_are_refused_before_any_call() {
        let no_url = r#"{"type":"impersonated_service_account","source_credentials":{}}"#;
        let err = ImpersonatedTokenSource::from_json(no_url, &CLOUD_PLATFORM)
            .await
            .unwrap_err();
        assert!(matches!(err, AdcError::Parse { .. }), "{err:?}");
        let ftp = serde_json::json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": "ftp://example/x",
            "source_credentials": {"type": "authorized_user", "client_id": "a", "client_secret": "b", "refresh_token": "c"},
        });
        let err = ImpersonatedTokenSource::from_json(&ftp.to_string(), &CLOUD_PLATFORM)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AdcError::BadField {
                    field: "service_account_impersonation_url",
                    ..
                }
            ),
            "{err:?}"
        );
        let nested = serde_json::json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": "https://example/x",
            "source_credentials": {"type": "impersonated_service_account"},
        });
        let err = ImpersonatedTokenSource::from_json(&nested.to_string(), &CLOUD_PLATFORM)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdcError::UnsupportedSource { kind } if kind == "impersonated_service_account"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let user = RefreshToken {
            client_id: "id".into(),
            client_secret: "s3cr3t".into(),
            refresh_token: "r3fr3sh".into(),
            token_uri: None,
        };
        let source = ImpersonatedTokenSource {
            url: "https://iam/x".into(),
            delegates: vec![],
            scopes: vec![],
            source: Source::User(user),
            http: reqwest::Client::new(),
            cached: tokio::sync::Mutex::new(Some(Cached {
                secret: "ya29.t0k3n".into(),
                expires_at: SystemTime::now(),
            })),
        };
        let debug = format!("{source:?}");
        assert!(debug.contains("authorized_user"), "{debug}");
        for secret in ["s3cr3t", "r3fr3sh", "ya29.t0k3n"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
