//! Per-execution credentials on the gcp backend (least privilege).
//!
//! The dispatcher mints, for every execution, an access token whose Credential
//! Access Boundary ([`AccessBoundary::for_execution`]) allows only that
//! execution's session and its own request, result and log objects, through
//! Google's Security Token Service (RFC 8693 token exchange, [`Minter`]).
//! The executor receives it as [`STORE_TOKEN_ENV`] (on standard input from
//! the local launcher, in the RunJob overrides on Cloud Run) and uses it,
//! and nothing else, for every store request: its own service account
//! needs no role on the bucket.
//!
//! Settings (read with the gcp backend's, see [`CredentialSettings`]):
//! - `RUNBOX_EXECUTION_CREDENTIALS`: `downscoped` or `inherit` (the
//!   executor uses its own credentials, as before). Default: `downscoped` on
//!   Cloud Storage and wherever `RUNBOX_STS_ENDPOINT` is set; `inherit` on
//!   the storage emulator without a token-exchange endpoint.
//! - `RUNBOX_STS_ENDPOINT`: the token-exchange endpoint (`POST
//!   {endpoint}/v1/token`). Default: `https://sts.googleapis.com`.
//! - `RUNBOX_STORAGE_EMULATOR_TOKEN`: on the storage emulator only, the
//!   access token the dispatcher presents to the store and exchanges (a
//!   stand-in endpoint knows it as its source token). Unset: anonymous.
//!
//! Every Google client runbox builds gets its own tokens from
//! [`DefaultCredentials`] (Application Default Credentials, impersonated
//! service accounts included).

mod adc;
mod boundary;
mod impersonated;
mod sts;

pub use adc::{
    AdcError, CREDENTIALS_FILE_ENV, CREDENTIALS_JSON_ENV, DefaultCredentials, HTTP_TIMEOUT,
    IMPERSONATED_SERVICE_ACCOUNT,
};
pub use impersonated::{IMPERSONATED_TOKEN_LIFETIME, ImpersonatedTokenSource, REFRESH_MARGIN};

pub use boundary::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, LIST_PREFIX_ATTRIBUTE, OBJECT_ADMIN,
    OBJECT_CREATOR, OBJECT_VIEWER,
};
pub use sts::{Minter, StaticToken, StsClient};

use std::time::{Duration, SystemTime};

use crate::config::{Lookup, Problem};

/// `RUNBOX_EXECUTION_CREDENTIALS`: `downscoped` or `inherit`.
pub const EXECUTION_CREDENTIALS_ENV: &str = "RUNBOX_EXECUTION_CREDENTIALS";
/// `RUNBOX_STS_ENDPOINT`: where tokens are exchanged.
pub const STS_ENDPOINT_ENV: &str = "RUNBOX_STS_ENDPOINT";
/// `RUNBOX_STORAGE_EMULATOR_TOKEN`: the dispatcher's token on the emulator.
pub const STORAGE_EMULATOR_TOKEN_ENV: &str = "RUNBOX_STORAGE_EMULATOR_TOKEN";
/// The downscoped token an executor uses for the store. Set by the
/// launchers, never by a user; a reserved `RUNBOX_` name, so a request
/// cannot set it and commands never inherit it.
pub const STORE_TOKEN_ENV: &str = "RUNBOX_STORE_TOKEN";
/// Google's Security Token Service.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.googleapis.com";
/// How long one token exchange may take before it fails.
pub const STS_TIMEOUT: Duration = Duration::from_secs(10);

/// Which credentials an executor uses for the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionCredentials {
    /// A token minted per execution, bounded to its session and objects.
    Downscoped,
    /// The executor's own credentials (Application Default Credentials,
    /// or anonymous on the emulator): every command can reach the whole
    /// bucket.
    Inherit,
}

impl ExecutionCredentials {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downscoped => "downscoped",
            Self::Inherit => "inherit",
        }
    }
}

/// The credential settings of the gcp backend.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialSettings {
    /// `RUNBOX_EXECUTION_CREDENTIALS`, resolved (see the module docs).
    pub execution: ExecutionCredentials,
    /// `RUNBOX_STS_ENDPOINT`, without a trailing `/`.
    pub sts_endpoint: String,
    /// `RUNBOX_STORAGE_EMULATOR_TOKEN` (emulator only).
    pub emulator_token: Option<String>,
}

impl std::fmt::Debug for CredentialSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSettings")
            .field("execution", &self.execution)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("emulator_token", &self.emulator_token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Default for CredentialSettings {
    /// What Cloud Storage gets with nothing set.
    fn default() -> Self {
        Self {
            execution: ExecutionCredentials::Downscoped,
            sts_endpoint: DEFAULT_STS_ENDPOINT.to_owned(),
            emulator_token: None,
        }
    }
}

impl CredentialSettings {
    /// Reads the settings; `on_emulator`: `STORAGE_EMULATOR_HOST` is set.
    pub fn from_lookup(env: &dyn Lookup, on_emulator: bool) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let endpoint = env.get(STS_ENDPOINT_ENV);
        let execution = match env.get(EXECUTION_CREDENTIALS_ENV).as_deref() {
            None if on_emulator && endpoint.is_none() => ExecutionCredentials::Inherit,
            None | Some("downscoped") => ExecutionCredentials::Downscoped,
            Some("inherit") => ExecutionCredentials::Inherit,
            Some(other) => {
                problems.push(Problem::Invalid {
                    var: EXECUTION_CREDENTIALS_ENV,
                    value: other.to_owned(),
                    reason: "expected `downscoped` or `inherit`".to_owned(),
                });
                ExecutionCredentials::Inherit
            }
        };
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(Problem::Invalid {
                var: STS_ENDPOINT_ENV,
                value: url.clone(),
                reason: "expected an http:// or https:// URL".to_owned(),
            });
        }
        // Minting against Google's endpoint with an emulator's token could
        // only fail, at the first command: say so now.
        if on_emulator && execution == ExecutionCredentials::Downscoped && endpoint.is_none() {
            problems.push(Problem::Invalid {
                var: EXECUTION_CREDENTIALS_ENV,
                value: "downscoped".to_owned(),
                reason: format!(
                    "on the storage emulator, downscoped credentials need {STS_ENDPOINT_ENV} (a stand-in token-exchange endpoint)"
                ),
            });
        }
        let emulator_token = env.get(STORAGE_EMULATOR_TOKEN_ENV).filter(|_| on_emulator);
        if on_emulator
            && execution == ExecutionCredentials::Downscoped
            && endpoint.is_some()
            && emulator_token.is_none()
        {
            problems.push(Problem::Missing {
                var: STORAGE_EMULATOR_TOKEN_ENV,
                needed_by: EXECUTION_CREDENTIALS_ENV,
                needed_by_value: "downscoped",
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            execution,
            sts_endpoint: endpoint
                .as_deref()
                .unwrap_or(DEFAULT_STS_ENDPOINT)
                .trim_end_matches('/')
                .to_owned(),
            emulator_token,
        })
    }
}

/// An access token for the store, kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreToken {
    secret: String,
    expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for StoreToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl StoreToken {
    /// A token and, when known, its expiry.
    pub fn new(secret: impl Into<String>, expires_at: Option<SystemTime>) -> Self {
        Self {
            secret: secret.into(),
            expires_at,
        }
    }

    /// The bearer token itself.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the token stops working, if the issuer said.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// Minting a token failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The dispatcher's own credentials could not be loaded.
    #[error("load the dispatcher's credentials for the token exchange")]
    Credentials {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The dispatcher's own access token could not be had.
    #[error("get the dispatcher's access token for the token exchange")]
    SubjectToken {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The token-exchange endpoint could not be reached or did not answer in time.
    #[error("exchange a token at {endpoint}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint refused the exchange.
    #[error("token exchange at {endpoint} refused with HTTP {status}: {error}: {description}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth error code (`invalid_request`, `invalid_grant`, ...).
        error: String,
        /// The endpoint's explanation.
        description: String,
    },
    /// The endpoint's answer is not a token-exchange response.
    #[error("token exchange at {endpoint}: unexpected answer")]
    BadAnswer {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CredentialError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::SubjectToken { .. } | Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::Credentials { .. } | Self::BadAnswer { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_depends_on_where_the_store_is() {
        let none: [(&str, &str); 0] = [];
        let real = CredentialSettings::from_lookup(&none, false).unwrap();
        assert_eq!(real, CredentialSettings::default());
        let emu = CredentialSettings::from_lookup(&none, true).unwrap();
        assert_eq!(emu.execution, ExecutionCredentials::Inherit);
        // A stand-in endpoint needs the token the dispatcher exchanges.
        let bad =
            CredentialSettings::from_lookup(&[(STS_ENDPOINT_ENV, "http://x")], true).unwrap_err();
        assert!(format!("{bad:?}").contains(STORAGE_EMULATOR_TOKEN_ENV));
        let stand_in = CredentialSettings::from_lookup(
            &[
                (STS_ENDPOINT_ENV, "http://127.0.0.1:9/"),
                (STORAGE_EMULATOR_TOKEN_ENV, "t"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(stand_in.execution, ExecutionCredentials::Downscoped);
        assert_eq!(stand_in.sts_endpoint, "http://127.0.0.1:9");
        assert_eq!(stand_in.emulator_token.as_deref(), Some("t"));
        assert!(!format!("{stand_in:?}").contains("\"t\""));
        // The emulator token means nothing on Cloud Storage.
        let ignored =
            CredentialSettings::from_lookup(&[(STORAGE_EMULATOR_TOKEN_ENV, "t")], false).unwrap();
        assert_eq!(ignored.emulator_token, None);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = CredentialSettings::from_lookup(&[(EXECUTION_CREDENTIALS_ENV, "some")], false)
            .unwrap_err();
        assert!(format!("{bad:?}").contains(EXECUTION_CREDENTIALS_ENV));
        let bad =
            CredentialSettings::from_lookup(&[(STS_ENDPOINT_ENV, "sts.local")], false).unwrap_err();
        assert!(format!("{bad:?}").contains(STS_ENDPOINT_ENV));
        let bad =
            CredentialSettings::from_lookup(&[(EXECUTION_CREDENTIALS_ENV, "downscoped")], true)
                .unwrap_err();
        assert!(format!("{bad:?}").contains(STS_ENDPOINT_ENV));
    }

    #[test]
    fn tokens_stay_out_of_debug_output() {
        let t = StoreToken::new("s3cr3t", None);
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert_eq!(t.secret(), "s3cr3t");
    }
}
