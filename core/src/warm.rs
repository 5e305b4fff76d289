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
//!
//! # Over Pub/Sub (the Cloud Run launcher)
//!
//! A warm execution on Cloud Run is one RunJob whose overrides add
//! [`WARM_SESSION_ENV`], [`WARM_IDLE_MS_ENV`], [`WARM_SUBSCRIPTION_ENV`]
//! and [`WARM_LIFETIME_MS_ENV`]. Before the RunJob the dispatcher creates
//! the subscription, on the commands topic (`RUNBOX_COMMANDS_TOPIC`),
//! filtered on `attributes.session = "S"`; after it, it writes the marker
//! `sessions/{S}/warm.json` ([`WarmMarker`]). A later command is its
//! request object plus one message ([`commands`]: `kind=run`, the session,
//! the execution id, the warm execution it is meant for). The executor
//! takes a message only when it names this execution, its request names
//! this session and has neither a result nor a taken mark; it then writes
//! `results/{execution}.taken` (create-only), whose finalize event tells
//! the dispatcher the command was taken, acks and runs it. A dispatcher
//! that sees the warm execution end (its RunJob operation) before that
//! mark exists starts a new warm execution with the command as its first.
//! The execution deletes its subscription and its marker when it ends.
//!
//! A streamed stdin travels on the same topic: once the command is taken
//! (the first command of a new execution: once it is launched), its
//! dispatcher publishes `kind=stdin` messages with the session, the
//! execution, the warm execution, a sequence number from 0 ([`commands::SEQ`])
//! and the command's stdin token ([`commands::TOKEN`]); the data is at most
//! [`wire::MAX_FRAME`] bytes, and the last message says `end=1`. The request
//! holds the token's SHA-256 (`stdinTokenSha256`), drawn afresh per command,
//! so a message is accepted only from the dispatcher that wrote the request.
//! The executor restores the order, drops copies, and writes the data into
//! the command's stdin FIFO as it would the socket's frames.

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

/// Set in a warm executor's configuration on Cloud Run: the Pub/Sub
/// subscription (`projects/P/subscriptions/S`) its later commands arrive on.
pub const WARM_SUBSCRIPTION_ENV: &str = "RUNBOX_WARM_SUBSCRIPTION";

/// Set in a warm executor's configuration on Cloud Run: how long after its
/// start it may take commands, in ms. It takes a command only if the
/// command's timeout ends within that time, and exits (handing over) once
/// it has passed, so the task timeout never kills a command.
pub const WARM_LIFETIME_MS_ENV: &str = "RUNBOX_WARM_LIFETIME_MS";

/// The marker of a session's running warm execution on Cloud Run,
/// `sessions/{session}/warm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WarmMarker {
    /// The Cloud Run Execution (`projects/P/locations/L/jobs/J/executions/E`).
    pub execution: String,
    /// Its RunJob operation, which any dispatcher can wait on to see it end.
    pub operation: String,
    /// The execution id of its first command, which names it.
    pub first: String,
    /// The subscription its commands arrive on.
    pub subscription: String,
    /// When dispatchers stop handing it commands (ms since the Unix epoch,
    /// the launching dispatcher's clock): a command whose timeout would end
    /// after this goes to a new execution.
    pub deadline_ms: u64,
}

/// The messages of the commands topic: attribute names and values.
pub mod commands {
    /// Attribute: the session (what a warm execution's subscription filters on).
    pub const SESSION: &str = "session";
    /// Attribute: what the message asks ([`RUN`]; other kinds are acked and
    /// ignored, so later kinds can be added).
    pub const KIND: &str = "kind";
    /// Attribute: the execution id of the command (also the message data).
    pub const EXECUTION: &str = "execution";
    /// Attribute: the first execution id of the warm execution meant.
    pub const WARM: &str = "warm";
    /// [`KIND`]: run the command whose request object is written.
    pub const RUN: &str = "run";
    /// [`KIND`]: a piece of a running command's streamed standard input
    /// (the message data, at most [`super::wire::MAX_FRAME`] bytes).
    pub const STDIN: &str = "stdin";
    /// Attribute of a [`STDIN`] message: its place in the command's input,
    /// from 0 (decimal), so the executor can restore the order and drop
    /// copies.
    pub const SEQ: &str = "seq";
    /// Attribute of a [`STDIN`] message: `"1"` on the last one, which
    /// closes the command's stdin after its data.
    pub const END: &str = "end";
    /// Attribute of a [`STDIN`] message: the command's stdin token, whose
    /// SHA-256 the request holds ([`super::stdin_token_digest`]).
    pub const TOKEN: &str = "token";
}

/// A fresh stdin token: 128 random bits from the kernel, in hex. The
/// dispatcher keeps it; the request object holds only its digest, so a
/// reader of request objects cannot make frames a command accepts.
pub fn new_stdin_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = bytes.get_mut(filled..).unwrap_or_default();
        filled += rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from)?;
    }
    Ok(hex(&bytes))
}

/// The SHA-256 of a stdin token, in hex (a request's `stdinTokenSha256`).
pub fn stdin_token_digest(token: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

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
    fn stdin_tokens_are_fresh_and_only_their_digest_is_shared() {
        let (a, b) = (new_stdin_token().unwrap(), new_stdin_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_eq!(
            stdin_token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(stdin_token_digest(&a), a);
    }

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
