//! How runbox's programs log: one set-up every binary calls once at start,
//! so the output format, the filter variable and (later) telemetry export
//! change here and nowhere else.
//!
//! Logs go to stderr, because stdout belongs to the program's own output
//! (a command's output, a JSON document, an address line). Only with the
//! `logging` feature: a library that embeds runbox keeps its own subscriber
//! and does not get tracing-subscriber.

#![cfg(feature = "logging")]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

/// The variable the runbox binaries read their log filter from, in
/// `EnvFilter` syntax (`warn`, `runbox_dispatcher=debug,info`).
pub const FILTER_VAR: &str = crate::contract::LOG_ENV;

/// Installs the process-wide logger: events to stderr, filtered by
/// `RUNBOX_LOG` (or by `default_filter` when it is unset or does not parse),
/// in colour when stderr is a terminal. Call it once, before logging.
pub fn init(default_filter: &str) -> Result<(), LoggingError> {
    Logging::new(default_filter).init()
}

/// A log set-up that differs from [`init`]'s in its filter variable or its
/// colouring; [`Logging::init`] installs it.
#[derive(Clone, Debug)]
pub struct Logging {
    filter_var: String,
    default_filter: String,
    color: Color,
}

/// When log lines carry ANSI colour codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// When stderr is a terminal, so log files and pipes get plain text.
    WhenTerminal,
    /// Always, unless `NO_COLOR` is set to a non-empty value
    /// (tracing-subscriber's own default).
    UnlessNoColor,
}

/// Installing the logger failed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// Another logger was installed first (only one per process).
    #[error("install the logger")]
    Install(#[source] TryInitError),
}

impl Logging {
    /// The set-up [`init`] uses: filter from `RUNBOX_LOG`, `default_filter`
    /// when it is unset or does not parse, colour when stderr is a terminal.
    pub fn new(default_filter: impl Into<String>) -> Self {
        Self {
            filter_var: FILTER_VAR.to_owned(),
            default_filter: default_filter.into(),
            color: Color::WhenTerminal,
        }
    }

    /// Reads the filter from this variable instead of `RUNBOX_LOG`.
    #[must_use]
    pub fn filter_var(mut self, name: impl Into<String>) -> Self {
        self.filter_var = name.into();
        self
    }

    /// Sets when lines are coloured.
    #[must_use]
    pub fn color(mut self, color: Color) -> Self {
        self.color = color;
        self
    }

    /// Installs this set-up as the process-wide logger.
    pub fn init(self) -> Result<(), LoggingError> {
        // A filter that does not parse falls back to the default rather than
        // stopping the program: logging is never the reason a command fails.
        let filter = EnvFilter::try_from_env(&self.filter_var)
            .unwrap_or_else(|_| EnvFilter::new(&self.default_filter));
        let builder = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter);
        let builder = match self.color {
            Color::WhenTerminal => builder.with_ansi(std::io::stderr().is_terminal()),
            Color::UnlessNoColor => builder,
        };
        builder.finish().try_init().map_err(LoggingError::Install)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_logger_is_a_typed_error() {
        // "off": this test's logger must not print into other tests' output.
        init("off").unwrap();
        let err = Logging::new("off")
            .filter_var("RUNBOX_TEST_UNUSED_LOG")
            .color(Color::UnlessNoColor)
            .init()
            .unwrap_err();
        assert!(matches!(err, LoggingError::Install(_)), "{err:?}");
    }
}
