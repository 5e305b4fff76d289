//! How an invocation that failed ends: one exit status per kind of failure,
//! and its message as `runbox: …` on standard error or, with `--json`, as
//! one JSON object on standard output.
//!
//! | exit | kind            | meaning |
//! |------|-----------------|---------|
//! | N    |                 | `exec`, `bg wait`: the command's own exit code |
//! | 1    |                 | `files exists`: no such path; `files grep`: no line matched |
//! | 2    | `usage`         | bad usage (unknown flag, missing `--`, …) |
//! | 2    | `invalid_input` | bad input: session id, `--timeout`, path, regex, … |
//! | 64   | `config`        | the configuration from the environment is unusable |
//! | 66   | `not_found`     | no such session, file or background handle |
//! | 124  | `timed_out`     | the command timed out, or `bg wait --timeout` elapsed |
//! | 125  | `runbox`        | runbox itself failed, or the execution was LOST or REJECTED |
//! | 130  |                 | the command was cancelled |
//!
//! "Not found" is 66, `EX_NOINPUT` of sysexits(3) ("an input file did not
//! exist"), beside the 64 runbox already uses from that range, and clear of
//! 1 and 2, which `files exists`, `files grep` and bad usage use.
//!
//! With `--json` an error is `{"error":{"kind":KIND,"message":TEXT}}` on
//! standard output, so a caller reads one JSON document from standard output
//! whatever happened and tells an answer from an error by the exit status or
//! the `error` key.

use std::io::ErrorKind;
use std::process::ExitCode;

use runbox_dispatcher::{BackgroundError, Error, FileError, error_chain};

use crate::stdout::Stdout;

/// Bad usage or bad input.
pub const EXIT_USAGE: u8 = 2;
/// The configuration from the environment is unusable.
pub const EXIT_CONFIG: u8 = 64;
/// No such session, file or background handle (sysexits' `EX_NOINPUT`).
pub const EXIT_NOT_FOUND: u8 = 66;
/// The command timed out (as `timeout(1)` exits).
pub const EXIT_TIMED_OUT: u8 = 124;
/// runbox itself failed, or the execution was LOST or REJECTED.
pub const EXIT_RUNBOX: u8 = 125;
/// The command was cancelled (128 + SIGINT, as a shell reports Ctrl-C).
pub const EXIT_CANCELLED: u8 = 130;

/// What kind of failure ended the invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The command line does not parse.
    Usage,
    /// A value was refused before anything was written.
    InvalidInput,
    /// The configuration is unusable.
    Config,
    /// The session, file or background handle does not exist.
    NotFound,
    /// A wait ran out of time.
    TimedOut,
    /// runbox itself failed.
    Runbox,
}

impl Kind {
    /// The kind's name in a JSON error.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::InvalidInput => "invalid_input",
            Kind::Config => "config",
            Kind::NotFound => "not_found",
            Kind::TimedOut => "timed_out",
            Kind::Runbox => "runbox",
        }
    }

    /// The exit status it ends the invocation with.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Usage | Kind::InvalidInput => EXIT_USAGE,
            Kind::Config => EXIT_CONFIG,
            Kind::NotFound => EXIT_NOT_FOUND,
            Kind::TimedOut => EXIT_TIMED_OUT,
            Kind::Runbox => EXIT_RUNBOX,
        }
    }

    /// The kind of a library error. Anything not known to be the caller's
    /// doing is runbox's own failure.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::InvalidSession(_)
            | Error::InvalidSessionSettings(_)
            | Error::CommandTooLarge { .. }
            | Error::CommandHasNul
            | Error::InvalidTimeout { .. }
            | Error::InvalidEnv { .. }
            | Error::StdinTooLarge { .. }
            | Error::SessionExists(_) => Kind::InvalidInput,
            Error::Config(_) | Error::WorkspacePath(_) | Error::Confinement(_) => Kind::Config,
            Error::NoSuchSession(_) => Kind::NotFound,
            Error::File(e) => file_kind(e),
            Error::Background(BackgroundError::UnknownHandle { .. }) => Kind::NotFound,
            Error::Background(BackgroundError::WaitTimedOut { .. }) => Kind::TimedOut,
            _ => Kind::Runbox,
        }
    }
}

/// A failure with the text to show for it.
#[derive(Debug)]
pub struct Failure {
    kind: Kind,
    message: String,
}

impl Failure {
    /// A failure of this kind; `message` may hold several lines.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The failure a library error stands for, its text in the terms of the
    /// command line (flags rather than option fields).
    pub fn from_error(error: &Error) -> Self {
        Self::new(Kind::of(error), message(error))
    }

    /// Prints the failure (JSON on stdout with `json`, else one
    /// `runbox: …` line per line of the message on stderr) and returns its
    /// exit status.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let value = serde_json::json!({
                "error": { "kind": self.kind.name(), "message": self.message }
            });
            // Nowhere left to report a failure to print the failure.
            let _ = Stdout::new().line(format_args!("{value}"));
        } else {
            for line in self.message.lines() {
                crate::stdout::write_note_at(
                    &tracing::Level::ERROR,
                    format_args!("runbox: {line}"),
                );
            }
        }
        ExitCode::from(self.kind.exit_code())
    }
}

fn file_kind(error: &FileError) -> Kind {
    match error {
        FileError::NotFound { .. } => Kind::NotFound,
        // A local file named on the command line (`files put`).
        FileError::Io { source, .. } if source.kind() == ErrorKind::NotFound => Kind::NotFound,
        FileError::Conflict { .. } | FileError::Store { .. } | FileError::Io { .. } => Kind::Runbox,
        FileError::Path(_)
        | FileError::PathTooLong { .. }
        | FileError::SymlinkEscape { .. }
        | FileError::Root { .. }
        | FileError::InvalidLineRange { .. }
        | FileError::EmptyPattern
        | FileError::InvalidRegex { .. }
        | FileError::InvalidGlob { .. }
        | FileError::UploadTooLarge { .. }
        | FileError::TooLargeToEdit { .. }
        | FileError::IsADirectory { .. }
        | FileError::NotADirectory { .. }
        | FileError::DirectoryNotEmpty { .. } => Kind::InvalidInput,
    }
}

/// The library's message, except where it names an option of the library
/// API that the command line spells as a flag.
fn message(error: &Error) -> String {
    match error {
        Error::File(FileError::DirectoryNotEmpty { path }) => {
            format!("{path} is a directory and not empty; delete it with `runbox files rm -r`")
        }
        Error::File(FileError::TooLargeToEdit {
            path,
            size,
            limit,
            op,
        }) => format!(
            "{path} is {size} bytes; {op} handles files up to {limit} bytes \
             (`runbox files get` and `runbox files put` take any size)"
        ),
        Error::InvalidTimeout { requested, max } => format!(
            "invalid --timeout '{}': the limit is {} seconds (RUNBOX_MAX_TIMEOUT_SECS)",
            requested.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => error_chain(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn messages_name_flags_and_quote_values() {
        let e = Error::File(FileError::DirectoryNotEmpty { path: "d".into() });
        assert!(message(&e).contains("-r"), "{}", message(&e));
        assert!(!message(&e).contains("`recursive`"));
        let e = Error::InvalidTimeout {
            requested: Duration::from_secs(99_999_999),
            max: Duration::from_secs(86_400),
        };
        assert!(message(&e).contains("'99999999'"), "{}", message(&e));
        assert_eq!(Kind::of(&e).exit_code(), 2);
    }
}
