//! Warm sessions: the session mode, the settings stored with a session
//! (`sessions/{session}/mode.json`), and the local channel a warm
//! execution receives its later commands on.
//!
//! # The local channel
//!
//! A warm executor started by the local launcher listens on a Unix socket
//! (the path it is given in [`WARM_SOCKET_ENV`]). A dispatcher delivers a
//! command by connecting and sending one line, `run {execution}`; the
//! request object is already written, so nothing but the id travels. The
//! executor answers `ok` when it starts that command and `done` once its
//! result is written, then closes. The open connection is how the
//! dispatcher sees the command's executor: end of stream before `done`
//! means the executor died, and the command settles LOST; end of stream
//! before `ok` means the command never started, and it goes to a new
//! execution instead. `close` asks the execution to end at once; `ping`
//! asks which execution it is.
//!
//! # Standard input that streams
//!
//! A command whose request says `stdinStream` gets its standard input on
//! the same connection, after `ok`: frames `data N` followed by exactly N
//! bytes (1 to [`wire::MAX_FRAME`]), then `eof`, which closes the
//! command's stdin; end of stream closes it too. The executor reads a
//! frame only once the command has taken the one before (it writes them
//! into a FIFO that is the command's stdin), so a command that does not
//! read holds up its writer instead of filling memory anywhere. The first
//! command of a new warm execution has no connection yet: the local
//! launcher gives the executor a socket as its standard output, which
//! carries the same lines.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `RUNBOX_SESSION_MODE`: the mode of sessions created without one.
pub const SESSION_MODE_ENV: &str = "RUNBOX_SESSION_MODE";

/// The idle timeout of a warm session created without one: 5 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest idle timeout accepted: 24 hours.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Set in a warm executor's configuration: the socket it listens on.
pub const WARM_SOCKET_ENV: &str = "RUNBOX_WARM_SOCKET";

/// Set in a warm executor's configuration: the session it serves.
pub const WARM_SESSION_ENV: &str = "RUNBOX_WARM_SESSION";

/// Set in a warm executor's configuration: its idle timeout, in ms.
pub const WARM_IDLE_MS_ENV: &str = "RUNBOX_WARM_IDLE_MS";

/// How a session's commands run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// One execution per command (the default).
    #[default]
    Oneshot,
    /// One execution keeps a live bash for the session's commands.
    Warm,
}

impl SessionMode {
    /// Every mode, in the order error messages list them.
    pub const ALL: [Self; 2] = [Self::Oneshot, Self::Warm];

    /// The name used in `RUNBOX_SESSION_MODE` and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oneshot => "oneshot",
            Self::Warm => "warm",
        }
    }

    /// Parses a mode name.
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| SettingsError::UnknownMode(text.to_owned()))
    }
}

impl std::fmt::Display for SessionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is chosen when a session is created and kept with it, so every
/// process that runs its commands agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// How its commands run.
    pub mode: SessionMode,
    /// How long a warm execution waits for the next command before it
    /// exits, in milliseconds (ignored in oneshot mode).
    pub idle_timeout_ms: u64,
}

impl SessionSettings {
    /// Settings in `mode` with the default idle timeout.
    pub fn new(mode: SessionMode) -> Self {
        Self {
            mode,
            idle_timeout_ms: millis(DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// With this idle timeout, checked: more than zero, at most
    /// [`MAX_IDLE_TIMEOUT`].
    pub fn with_idle_timeout(mut self, idle: Duration) -> Result<Self, SettingsError> {
        check_idle(idle)?;
        self.idle_timeout_ms = millis(idle);
        Ok(self)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Checks settings read from a store object.
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_idle(self.idle_timeout())
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self::new(SessionMode::Oneshot)
    }
}

/// Bad session settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Not `oneshot` or `warm`.
    #[error("unknown session mode {0:?} (expected oneshot or warm)")]
    UnknownMode(String),
    /// Zero, or longer than [`MAX_IDLE_TIMEOUT`].
    #[error("idle timeout {0:?} is outside the allowed range (more than 0, at most 24h)")]
    IdleTimeout(Duration),
}

fn check_idle(idle: Duration) -> Result<(), SettingsError> {
    if idle.is_zero() || idle > MAX_IDLE_TIMEOUT {
        return Err(SettingsError::IdleTimeout(idle));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The lines of the local channel (see the module docs).
pub mod wire {
    /// Dispatcher → executor: run this execution (`run {id}`).
    pub const RUN: &str = "run";
    /// Dispatcher → executor: end now.
    pub const CLOSE: &str = "close";
    /// Dispatcher → executor: which execution are you?
    pub const PING: &str = "ping";
    /// Executor → dispatcher: the command has started.
    pub const OK: &str = "ok";
    /// Executor → dispatcher: its result is written.
    pub const DONE: &str = "done";
    /// Executor → dispatcher: refused (`no {reason}`).
    pub const NO: &str = "no";
    /// Executor → dispatcher: answer to `ping` (`warm {first execution}`).
    pub const WARM: &str = "warm";
    /// The longest line either side sends.
    pub const MAX_LINE: usize = 256;
    /// Dispatcher → executor, after `ok`: `data N`, then N bytes of the
    /// command's standard input.
    pub const DATA: &str = "data";
    /// Dispatcher → executor, after `ok`: the command's standard input ends.
    pub const EOF: &str = "eof";
    /// The most bytes one `data` frame carries.
    pub const MAX_FRAME: usize = 64 * 1024;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name() {
        assert_eq!(SessionMode::parse("warm"), Ok(SessionMode::Warm));
        assert_eq!(SessionMode::parse("oneshot"), Ok(SessionMode::Oneshot));
        let err = SessionMode::parse("Warm").unwrap_err();
        assert!(err.to_string().contains("oneshot or warm"), "{err}");
    }

    #[test]
    fn settings_round_trip_and_check_the_idle_timeout() {
        let s = SessionSettings::new(SessionMode::Warm)
            .with_idle_timeout(Duration::from_secs(2))
            .unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"mode":"warm","idle_timeout_ms":2000}"#);
        assert_eq!(serde_json::from_str::<SessionSettings>(&json).unwrap(), s);
        assert!(
            serde_json::from_str::<SessionSettings>(r#"{"mode":"hot","idle_timeout_ms":1}"#)
                .is_err()
        );
        assert_eq!(
            SessionSettings::default().with_idle_timeout(Duration::ZERO),
            Err(SettingsError::IdleTimeout(Duration::ZERO))
        );
        assert!(
            SessionSettings::default()
                .with_idle_timeout(MAX_IDLE_TIMEOUT + Duration::from_secs(1))
                .is_err()
        );
    }
}
