//! How runbox's programs log: one set-up every binary calls once at start,
//! so the output format, the filter variable and telemetry export
//! ([`telemetry`]) change here and nowhere else.
//!
//! Logs go to stderr, because stdout belongs to the program's own output
//! (a command's output, a JSON document, an address line), as human-readable
//! text or, for Cloud Logging, as JSON lines ([`json`]). Only with the
//! `logging` feature: a library that embeds runbox keeps its own subscriber
//! and does not get tracing-subscriber.

#![cfg(feature = "logging")]

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

mod at_exit;
mod google_auth;
pub mod json;
pub mod telemetry;
mod trace_ids;

pub use telemetry::{Telemetry, TelemetryConfig, TelemetryError};

/// The variable the runbox binaries read their log filter from, in
/// `EnvFilter` syntax (`warn`, `runbox_dispatcher=debug,info`).
pub const FILTER_VAR: &str = crate::contract::LOG_ENV;

/// The variable choosing the line format: `text` or `json`.
pub const FORMAT_VAR: &str = crate::contract::LOG_FORMAT_ENV;

/// Variables Cloud Run sets in a service's (`K_SERVICE`) or a job's
/// (`CLOUD_RUN_JOB`) containers: where either is set, lines are JSON unless
/// `RUNBOX_LOG_FORMAT` says otherwise.
pub const CLOUD_RUN_VARS: [&str; 2] = ["K_SERVICE", "CLOUD_RUN_JOB"];

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human-readable lines.
    Text,
    /// One JSON object per line in Cloud Logging's structure ([`json`]).
    Json,
}

impl LogFormat {
    /// The format `RUNBOX_LOG_FORMAT` names (`text` or `json`, any case);
    /// unset or empty, `json` where a [`CLOUD_RUN_VARS`] variable is set and
    /// `text` elsewhere. `lookup` reads a variable (the process environment
    /// in the binaries, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LoggingError> {
        match lookup(FORMAT_VAR).as_deref().map(str::trim) {
            None | Some("") => Ok(
                if CLOUD_RUN_VARS
                    .iter()
                    .any(|v| lookup(v).is_some_and(|x| !x.is_empty()))
                {
                    Self::Json
                } else {
                    Self::Text
                },
            ),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(v) => Err(LoggingError::Format {
                value: v.to_owned(),
            }),
        }
    }
}

/// The format the process-wide logger writes, once [`Logging::init`] has
/// installed it.
pub fn active_format() -> Option<LogFormat> {
    ACTIVE.get().copied()
}

static ACTIVE: OnceLock<LogFormat> = OnceLock::new();

/// Installs the process-wide logger: events to stderr, filtered by
/// `RUNBOX_LOG` (or by `default_filter` when it is unset or does not parse),
/// in the format `RUNBOX_LOG_FORMAT` chooses ([`LogFormat::from_lookup`]),
/// text in colour when stderr is a terminal. Call it once, before logging.
///
/// A `RUNBOX_LOG_FORMAT` it does not know still installs the default format
/// and returns [`LoggingError::Format`] for the caller to report.
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
    format: Option<LogFormat>,
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
    /// `RUNBOX_LOG_FORMAT` names no format.
    #[error("{FORMAT_VAR}={value:?} is neither `text` nor `json`; logging in the default format")]
    Format {
        /// The value found.
        value: String,
    },
    /// The `OTEL_*` settings are unusable; logging goes on without export.
    #[error("telemetry is off")]
    Telemetry(#[source] TelemetryError),
}

impl Logging {
    /// The set-up [`init`] uses: filter from `RUNBOX_LOG`, `default_filter`
    /// when it is unset or does not parse, colour when stderr is a terminal.
    pub fn new(default_filter: impl Into<String>) -> Self {
        Self {
            filter_var: FILTER_VAR.to_owned(),
            default_filter: default_filter.into(),
            color: Color::WhenTerminal,
            format: None,
        }
    }

    /// Writes lines in `format` whatever the environment says.
    #[must_use]
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = Some(format);
        self
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
        let (_, outcome) = self.install(None);
        outcome
    }

    /// Installs this set-up and, when `config` enables it, the export of
    /// traces and metrics: an OpenTelemetry layer (fed every `info` span
    /// and above of every target but the transport's, whatever the log
    /// filter), the global meter provider and the propagation of
    /// [`crate::trace_context`]; JSON log lines then carry their span's
    /// trace. Must run inside a tokio runtime, which must outlive
    /// [`Telemetry::shutdown`].
    ///
    /// The outcome is [`Logging::init`]'s; exporters that cannot be built
    /// leave the logger installed without them, with
    /// [`LoggingError::Telemetry`]. The returned [`Telemetry`] (inactive
    /// then) is what to shut down before exiting.
    pub fn init_with_telemetry(
        self,
        config: &TelemetryConfig,
    ) -> (Telemetry, Result<(), LoggingError>) {
        if !config.is_enabled() {
            return self.install(None);
        }
        match telemetry::build(config) {
            Ok(built) => self.install(Some((built, config.project.clone()))),
            Err(e) => {
                let (telemetry, outcome) = self.install(None);
                (telemetry, outcome.and(Err(LoggingError::Telemetry(e))))
            }
        }
    }

    fn install(
        self,
        otel: Option<(telemetry::Built, Option<String>)>,
    ) -> (Telemetry, Result<(), LoggingError>) {
        // A filter that does not parse falls back to the default rather than
        // stopping the program: logging is never the reason a command fails.
        let filter = EnvFilter::try_from_env(&self.filter_var)
            .unwrap_or_else(|_| EnvFilter::new(&self.default_filter));
        let (format, bad_format) = match self.format {
            Some(format) => (format, None),
            None => match LogFormat::from_lookup(|name| std::env::var(name).ok()) {
                Ok(format) => (format, None),
                Err(e) => (
                    LogFormat::from_lookup(|name| {
                        (name != FORMAT_VAR).then(|| std::env::var(name).ok())?
                    })
                    .unwrap_or(LogFormat::Text),
                    Some(e),
                ),
            },
        };
        let (telemetry, tracer, project) = match otel {
            Some((built, project)) => (built.telemetry, built.tracer, project),
            None => (Telemetry::default(), None, None),
        };
        let installed = match tracer {
            None => self.install_logs_only(format, filter),
            Some(tracer) => self.install_traced(format, filter, tracer, project),
        };
        if let Err(e) = installed {
            return (telemetry, Err(LoggingError::Install(e)));
        }
        let _ = ACTIVE.set(format);
        (telemetry, bad_format.map_or(Ok(()), Err))
    }

    /// Logs alone: the filter is global, so a span or event it rejects is
    /// disabled at its call site and costs nothing.
    fn install_logs_only(&self, format: LogFormat, filter: EnvFilter) -> Result<(), TryInitError> {
        match format {
            LogFormat::Text => {
                let builder = tracing_subscriber::fmt()
                    .with_writer(std::io::stderr)
                    .with_env_filter(filter);
                let builder = match self.color {
                    Color::WhenTerminal => builder.with_ansi(std::io::stderr().is_terminal()),
                    Color::UnlessNoColor => builder,
                };
                builder.finish().try_init()
            }
            LogFormat::Json => tracing_subscriber::registry()
                .with(filter)
                .with(json::JsonLayer::new(std::io::stderr))
                .try_init(),
        }
    }

    /// Logs and the OpenTelemetry layer, each with its own filter: the log
    /// filter (default `warn`) must not hide the `info` spans a trace is
    /// made of, nor the span filter flood the log.
    fn install_traced(
        &self,
        format: LogFormat,
        filter: EnvFilter,
        tracer: opentelemetry_sdk::trace::Tracer,
        project: Option<String>,
    ) -> Result<(), TryInitError> {
        let registry = tracing_subscriber::registry()
            .with(otel_layer(tracer))
            .with(trace_ids::TraceIdsLayer::new(project));
        match format {
            LogFormat::Text => {
                let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
                let layer = match self.color {
                    Color::WhenTerminal => layer.with_ansi(std::io::stderr().is_terminal()),
                    Color::UnlessNoColor => layer,
                };
                registry.with(layer.with_filter(filter)).try_init()
            }
            LogFormat::Json => registry
                .with(
                    json::JsonLayer::new(std::io::stderr)
                        .with_trace_source(trace_ids::source())
                        .with_filter(filter),
                )
                .try_init(),
        }
    }
}

/// A subscriber that exports the spans `config` asks for and writes no
/// log line, for a program that embeds the library and keeps its own
/// process-wide subscriber: it applies where the caller installs it
/// (`tracing::dispatcher::with_default`, the threads of a runtime of its
/// own). Registers the propagation of [`crate::trace_context`], which is
/// process-wide (spans of another subscriber carry no context, so they
/// propagate none). Records no metrics: the meter provider would be
/// process-wide too. `None` when `config` exports no traces. Must run
/// inside a tokio runtime, which must outlive [`Telemetry::shutdown`].
pub fn traces_dispatch(
    config: &TelemetryConfig,
) -> Result<Option<(Telemetry, tracing::Dispatch)>, TelemetryError> {
    let config = TelemetryConfig {
        metrics_endpoint: None,
        ..config.clone()
    };
    if !config.is_enabled() {
        return Ok(None);
    }
    let built = telemetry::build(&config)?;
    let Some(tracer) = built.tracer else {
        return Ok(None);
    };
    let subscriber = tracing_subscriber::registry().with(otel_layer(tracer));
    Ok(Some((built.telemetry, tracing::Dispatch::new(subscriber))))
}

/// The OpenTelemetry layer: every `info` span and above, whatever the log
/// filter, but none of the exporter's own transport.
fn otel_layer<S>(tracer: opentelemetry_sdk::trace::Tracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let mut targets = tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    for silenced in telemetry::SILENCED_TARGETS {
        targets = targets.with_target(silenced, tracing::level_filters::LevelFilter::OFF);
    }
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_filter(targets)
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

    #[test]
    fn a_traces_dispatch_needs_a_traces_endpoint() {
        let metrics_only = TelemetryConfig::from_lookup("r", |name| {
            (name == telemetry::METRICS_ENDPOINT_VAR).then(|| "http://127.0.0.1:1".to_owned())
        })
        .unwrap();
        assert!(traces_dispatch(&metrics_only).unwrap().is_none());
        assert!(
            traces_dispatch(&TelemetryConfig::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_format_follows_the_variable_then_cloud_run() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(LogFormat::from_lookup(env(&[])).unwrap(), LogFormat::Text);
        assert_eq!(
            LogFormat::from_lookup(env(&[("K_SERVICE", "runbox")])).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::from_lookup(env(&[("CLOUD_RUN_JOB", "runbox")])).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::from_lookup(env(&[("CLOUD_RUN_JOB", "j"), (FORMAT_VAR, "Text")])).unwrap(),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::from_lookup(env(&[(FORMAT_VAR, "json")])).unwrap(),
            LogFormat::Json
        );
        let err = LogFormat::from_lookup(env(&[(FORMAT_VAR, "xml")])).unwrap_err();
        assert!(
            matches!(&err, LoggingError::Format { value } if value == "xml"),
            "{err:?}"
        );
    }
}
