//! What the dispatcher and the executor agree on besides the object layout:
//! the environment an executor is started with, where it puts workspaces by
//! default, and the limits a request must keep. Both sides check requests
//! with [`validate_request`] (the dispatcher before it writes anything, the
//! executor again on what it reads), so a limit cannot drift between them.

use std::time::Duration;

use runbox_proto::ExecRequest;

/// Names the execution an executor runs (`requests/{id}.json`). Set by every
/// launcher; the executor exits 64 without it. Commands see it too, so a
/// process can be traced back to its execution (the local launcher finds
/// executors by it in `/proc`).
pub const EXECUTION_ID_ENV: &str = "RUNBOX_EXECUTION_ID";

/// The W3C trace context of the dispatcher's span, set by the launchers when
/// there is one.
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

/// Overrides [`DEFAULT_WORKSPACE_BASE`] on the gcp backend.
pub const WORKSPACE_DIR_ENV: &str = "RUNBOX_WORKSPACE_DIR";

/// The executor's log filter (`tracing` `EnvFilter` syntax; default `info`).
pub const LOG_ENV: &str = "RUNBOX_LOG";

/// The log line format of the runbox binaries: `text` or `json` (one JSON
/// object per line, for Cloud Logging). Default: `json` on Cloud Run
/// (`K_SERVICE` or `CLOUD_RUN_JOB` set), `text` elsewhere.
pub const LOG_FORMAT_ENV: &str = "RUNBOX_LOG_FORMAT";

/// The user commands run as when the executor runs as root: a user name
/// or a numeric `uid[:gid]` (see the README's isolation section). Read by
/// the executor; the local launcher forwards it from its own environment.
pub const RUN_AS_USER_ENV: &str = "RUNBOX_RUN_AS_USER";

/// Names the session a command runs in; set by the executor for commands.
pub const SESSION_ID_ENV: &str = "RUNBOX_SESSION_ID";

/// The OpenTelemetry variables (see `logging::telemetry`) a launcher passes
/// (all but `OTEL_SERVICE_NAME`: an executor names itself `runbox-executor`)
/// on to the executors it starts, so they export where the dispatcher does.
pub const TELEMETRY_ENV: [&str; 6] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SDK_DISABLED",
];

/// Custom metadata key of result objects carrying the W3C trace context of
/// the request, so the completion event continues the dispatcher's trace.
pub const RESULT_TRACEPARENT_KEY: &str = "traceparent";

/// Directory under which a gcp executor keeps each session's workspace, at
/// `{base}/sessions/{session}/workspace`, unless [`WORKSPACE_DIR_ENV`] says
/// otherwise. The executor uses it as its default; the dispatcher uses it to
/// tell callers which absolute paths commands see. (On the embedded backend
/// the base is the store's own directory instead.)
pub const DEFAULT_WORKSPACE_BASE: &str = "/tmp/runbox";

/// The largest command accepted, in bytes (DESIGN §8).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// The largest value of one exported variable a session keeps, in bytes.
/// A command may export a larger one for itself and its children; the save
/// refuses it, names it in the result, and the session keeps its previous
/// value.
pub const MAX_ENV_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// The most a session's exported variables may add up to (names plus
/// values), in bytes, so the state object every command reads stays small.
/// Over it, the save refuses the command's largest changes first.
pub const MAX_ENV_TOTAL_BYTES: usize = 16 * 1024 * 1024;

/// Why a request cannot run. The messages are what callers of the
/// dispatcher see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The command is larger than [`MAX_COMMAND_BYTES`].
    #[error("command is {bytes} bytes; at most {max} bytes are allowed")]
    CommandTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The command contains a NUL byte, which bash cannot receive.
    #[error("command contains a NUL byte")]
    CommandHasNul,
    /// The timeout is zero or above the configured maximum.
    #[error("timeout {requested:?} is outside the allowed range (more than 0, at most {max:?})")]
    InvalidTimeout {
        /// What was asked for.
        requested: Duration,
        /// The configured maximum (`RUNBOX_MAX_TIMEOUT_SECS`).
        max: Duration,
    },
    /// An extra environment variable has an unusable name or value.
    #[error("environment variable {name:?}: {reason}")]
    InvalidEnv {
        /// The name given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The standard input is larger than the configured cap.
    #[error("standard input is larger than {max} bytes, the limit (RUNBOX_STDIN_CAP_BYTES)")]
    StdinTooLarge {
        /// The configured cap (`RUNBOX_STDIN_CAP_BYTES`).
        max: u64,
    },
}

/// Checks the size of a command's standard input against `max`
/// (`RUNBOX_STDIN_CAP_BYTES`).
pub fn validate_stdin(bytes: u64, max: u64) -> Result<(), RequestError> {
    if bytes > max {
        return Err(RequestError::StdinTooLarge { max });
    }
    Ok(())
}

/// Checks a command's size and content.
pub fn validate_command(command: &str) -> Result<(), RequestError> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(RequestError::CommandTooLarge {
            bytes: command.len(),
            max: MAX_COMMAND_BYTES,
        });
    }
    if command.contains('\0') {
        return Err(RequestError::CommandHasNul);
    }
    Ok(())
}

/// Checks a timeout: more than zero and at most `max`.
pub fn validate_timeout(requested: Duration, max: Duration) -> Result<(), RequestError> {
    if requested.is_zero() || requested > max {
        return Err(RequestError::InvalidTimeout { requested, max });
    }
    Ok(())
}

/// Names runbox keeps for itself (`RUNBOX_EXECUTION_ID`, `RUNBOX_SESSION_ID`,
/// ...): a request cannot set them, a command cannot change them for itself
/// (they are read-only in its shell) and nothing a command exports under
/// them is saved, so the leftover sweep, which finds a command's processes
/// by `RUNBOX_EXECUTION_ID`, sees the real id.
pub const RESERVED_ENV_PREFIX: &str = "RUNBOX_";

/// Whether `name` is reserved for runbox (see [`RESERVED_ENV_PREFIX`]).
pub fn is_reserved_env(name: &str) -> bool {
    name.starts_with(RESERVED_ENV_PREFIX)
}

/// Checks one extra environment variable: a shell name (a letter or `_`,
/// then letters, digits and `_`) outside the reserved `RUNBOX_` names, and a
/// value without NUL.
pub fn validate_env(name: &str, value: &str) -> Result<(), RequestError> {
    let bad = |reason| {
        Err(RequestError::InvalidEnv {
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("empty name"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return bad("a name starts with a letter or '_'");
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return bad("a name holds only letters, digits and '_'");
    }
    if is_reserved_env(name) {
        return bad("names starting with RUNBOX_ are reserved for runbox");
    }
    if value.contains('\0') {
        return bad("the value contains a NUL byte");
    }
    Ok(())
}

/// Checks a whole request, in the order the dispatcher reports problems:
/// command, timeout (`timeout_ms` against `max_timeout`), then each extra
/// variable by name.
pub fn validate_request(request: &ExecRequest, max_timeout: Duration) -> Result<(), RequestError> {
    validate_command(&request.command)?;
    validate_timeout(Duration::from_millis(request.timeout_ms), max_timeout)?;
    request
        .env
        .iter()
        .try_for_each(|(name, value)| validate_env(name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(validate_env("FOO_1", "x").is_ok());
        assert!(validate_env("_x", "").is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(validate_env(bad, "v").is_err(), "{bad:?} accepted");
        }
        assert!(validate_env("A", "a\0b").is_err());
        // Reserved names are refused, with a reason that says so.
        for reserved in ["RUNBOX_EXECUTION_ID", "RUNBOX_X"] {
            let err = validate_env(reserved, "v").unwrap_err();
            assert!(err.to_string().contains("reserved"), "{err}");
        }
        assert!(validate_env("RUNBOXX", "v").is_ok());
        assert!(validate_env("runbox_x", "v").is_ok());
    }

    #[test]
    fn commands_are_checked() {
        assert!(validate_command("echo hi").is_ok());
        assert!(validate_command(&"x".repeat(MAX_COMMAND_BYTES)).is_ok());
        let err = validate_command(&"x".repeat(MAX_COMMAND_BYTES + 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "command is {} bytes; at most {MAX_COMMAND_BYTES} bytes are allowed",
                MAX_COMMAND_BYTES + 1
            )
        );
        assert_eq!(validate_command("a\0b"), Err(RequestError::CommandHasNul));
    }

    #[test]
    fn timeouts_are_checked() {
        let max = Duration::from_secs(60);
        assert!(validate_timeout(Duration::from_millis(1), max).is_ok());
        assert!(validate_timeout(max, max).is_ok());
        for bad in [Duration::ZERO, max + Duration::from_millis(1)] {
            assert_eq!(
                validate_timeout(bad, max),
                Err(RequestError::InvalidTimeout {
                    requested: bad,
                    max
                })
            );
        }
        assert_eq!(
            validate_timeout(Duration::ZERO, max)
                .unwrap_err()
                .to_string(),
            "timeout 0ns is outside the allowed range (more than 0, at most 60s)"
        );
    }

    #[test]
    fn a_request_is_checked_command_first() {
        let max = Duration::from_secs(60);
        let mut request = ExecRequest {
            command: "true".into(),
            timeout_ms: 1000,
            ..Default::default()
        };
        assert!(validate_request(&request, max).is_ok());
        request.env.insert("A-B".into(), "v".into());
        assert!(matches!(
            validate_request(&request, max),
            Err(RequestError::InvalidEnv { .. })
        ));
        request.timeout_ms = 0;
        assert!(matches!(
            validate_request(&request, max),
            Err(RequestError::InvalidTimeout { .. })
        ));
        request.command = "a\0".into();
        assert_eq!(
            validate_request(&request, max),
            Err(RequestError::CommandHasNul)
        );
    }
}
