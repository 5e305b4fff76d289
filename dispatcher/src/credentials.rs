//! Minting each execution's store token on the gcp backend (see
//! [`runbox_core::credentials`]): the engine asks here before it writes an
//! execution's request, so a failed mint leaves nothing behind.

use std::time::Duration;

use runbox_core::credentials::{CredentialError, CredentialSettings, Minter, StoreToken};
use runbox_core::{ExecutionId, SessionId};
use tokio::sync::OnceCell;

use crate::launcher::LaunchError;

/// The minter of one client, set up at its first use (loading Application
/// Default Credentials is async, and a client that never runs a command
/// needs none).
pub(crate) struct Credentials {
    settings: CredentialSettings,
    bucket: String,
    minter: OnceCell<Minter>,
}

impl Credentials {
    /// The minter of tokens for `bucket` with `settings`; the wiring
    /// ([`crate::backends::execution_credentials`]) decides whether a
    /// configuration needs one.
    pub(crate) fn new(settings: CredentialSettings, bucket: String) -> Self {
        Self {
            settings,
            bucket,
            minter: OnceCell::new(),
        }
    }

    /// A token for `execution` in `session`, which may run for `needed_for`.
    /// A failure is a launch failure of the execution (retryable where the
    /// exchange may succeed later).
    pub(crate) async fn mint(
        &self,
        session: &SessionId,
        execution: &ExecutionId,
        needed_for: Duration,
    ) -> Result<StoreToken, LaunchError> {
        let spawn_error = |e: CredentialError| LaunchError::Spawn {
            id: execution.clone(),
            retryable: e.is_retryable(),
            source: Box::new(e),
        };
        let minter = self
            .minter
            .get_or_try_init(|| async {
                match &self.settings.emulator_token {
                    Some(token) => Minter::with_subject_token(
                        &self.settings.sts_endpoint,
                        token.clone(),
                        self.bucket.clone(),
                    ),
                    None => {
                        Minter::with_default_credentials(
                            &self.settings.sts_endpoint,
                            self.bucket.clone(),
                        )
                        .await
                    }
                }
            })
            .await
            .map_err(spawn_error)?;
        minter
            .mint(session, execution, needed_for)
            .await
            .map_err(spawn_error)
    }
}
