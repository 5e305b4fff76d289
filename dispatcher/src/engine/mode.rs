//! A session's settings (`sessions/{session}/mode.json`): written when the
//! session is created, or by the first command of a session nobody created
//! (with `RUNBOX_SESSION_MODE`'s mode) once that command is accepted, just
//! before its request is written, so every process runs a session's
//! commands the same way. Settings never change once written, so each
//! engine reads them once per session.

use runbox_core::SessionId;
use runbox_core::layout;
use runbox_core::store::{self, JsonObjectError, PutOptions};
use runbox_core::warm::SessionSettings;

use super::Engine;
use crate::error::{Error, Result};

impl Engine {
    /// The session's settings without writing anything: the stored ones
    /// (`true`), else the configured default (`false`), which
    /// [`Engine::store_session_settings`] stores once a command is
    /// accepted.
    pub(crate) async fn peek_session_settings(
        &self,
        session: &SessionId,
    ) -> Result<(SessionSettings, bool)> {
        if let Some(known) = self.session_settings.get(session) {
            return Ok((*known, true));
        }
        match self.read_session_settings(session).await? {
            Some(stored) => {
                self.session_settings.insert(session.clone(), stored);
                Ok((stored, true))
            }
            None => Ok((SessionSettings::new(self.config.limits.session_mode), false)),
        }
    }

    /// Stores `default` as the settings of a session that has none (unless
    /// another process stored some first: those are returned then).
    pub(crate) async fn store_session_settings(
        &self,
        session: &SessionId,
        default: SessionSettings,
    ) -> Result<SessionSettings> {
        let settings = match self.write_session_settings(session, &default, true).await {
            Ok(()) => default,
            Err(Error::Store { source, .. }) if source.is_conflict() => self
                .read_session_settings(session)
                .await?
                .unwrap_or(default),
            Err(e) => return Err(e),
        };
        self.session_settings.insert(session.clone(), settings);
        Ok(settings)
    }

    /// The stored settings, `None` when there are none.
    pub(crate) async fn read_session_settings(
        &self,
        session: &SessionId,
    ) -> Result<Option<SessionSettings>> {
        let name = layout::session_settings(session);
        match store::get_json::<SessionSettings>(&*self.store, &name, "SessionSettings").await {
            Ok(v) => {
                v.value
                    .validate()
                    .map_err(|e| corrupt(session, &name, &e))?;
                Ok(Some(v.value))
            }
            Err(JsonObjectError::Store(e)) if e.is_not_found() => Ok(None),
            Err(JsonObjectError::Store(e)) => {
                Err(Error::store(format!("read session {session} settings"), e))
            }
            Err(e @ JsonObjectError::Invalid { .. }) => Err(corrupt(session, &name, &e)),
        }
    }

    /// Stores the settings (`create_only`: only if there are none yet).
    pub(crate) async fn write_session_settings(
        &self,
        session: &SessionId,
        settings: &SessionSettings,
        create_only: bool,
    ) -> Result<()> {
        let opts = if create_only {
            PutOptions::create()
        } else {
            PutOptions::default()
        };
        store::put_json(
            &*self.store,
            &layout::session_settings(session),
            settings,
            opts,
        )
        .await
        .map_err(|e| Error::store(format!("write session {session} settings"), e))?;
        self.session_settings.insert(session.clone(), *settings);
        Ok(())
    }

    /// Forgets what was read of a session that is being deleted.
    pub(crate) fn forget_session_settings(&self, session: &SessionId) {
        self.session_settings.remove(session);
    }
}

fn corrupt(session: &SessionId, name: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    Error::store(
        format!("read session {session} settings"),
        runbox_core::StoreError::Corrupt {
            name: name.to_owned(),
            detail: crate::error_chain(e),
        },
    )
}
