//! Traces and metrics over OTLP/gRPC, configured by the standard
//! OpenTelemetry variables and installed by [`super::Logging::init_with_telemetry`].
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: where both signals go (`http://host:4317`,
//!   `https://telemetry.googleapis.com`); `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   and `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` set one signal's own (and
//!   enable only that signal when the general one is unset).
//! - `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,...` sent with every export.
//! - `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds one export may take (default
//!   10000); it also bounds how long a process's exit waits for its last
//!   export, so an unreachable endpoint delays an exit by at most this.
//! - `OTEL_SERVICE_NAME`: the `service.name` resource attribute (default:
//!   the binary's name).
//! - `OTEL_SDK_DISABLED=true`: nothing is exported whatever else is set.
//!
//! With no endpoint set, nothing here runs: no exporter, no OpenTelemetry
//! layer in the subscriber, no propagation (see [`crate::trace_context`]).
//! Log lines then carry no trace fields.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::google_auth;
use crate::trace_context::{self, Propagation, Traceparent};

/// The general endpoint variable.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces endpoint variable.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The metrics endpoint variable.
pub const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// The export headers variable.
pub const HEADERS_VAR: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// How long one export may take, in milliseconds.
pub const TIMEOUT_VAR: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// The service name variable.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// The kill switch.
pub const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";
/// The variables a process forwards to an executor it starts without its
/// environment (the local launcher), so the executor exports where it does.
pub const FORWARDED_VARS: [&str; 6] = crate::contract::TELEMETRY_ENV;
/// Where the project for Cloud Logging's trace field is read, in order.
pub const PROJECT_VARS: [&str; 2] = ["RUNBOX_PROJECT", "GOOGLE_CLOUD_PROJECT"];

/// Span targets never exported: the exporter's own transport would
/// otherwise trace its exports, which export more spans.
pub const SILENCED_TARGETS: [&str; 4] = ["h2", "hyper", "tonic", "tower"];

/// How long one export may take before it is abandoned, unless
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise (the specification's default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The telemetry settings read from the environment (or a map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where spans go; `None`: no traces.
    pub traces_endpoint: Option<String>,
    /// Where metrics go; `None`: no metrics.
    pub metrics_endpoint: Option<String>,
    /// Request metadata of every export.
    pub headers: Vec<(String, String)>,
    /// `service.name`.
    pub service_name: String,
    /// The Google Cloud project log lines name their trace in.
    pub project: Option<String>,
    /// How long one export, and the flush at exit, may take; `None`:
    /// [`DEFAULT_EXPORT_TIMEOUT`].
    pub export_timeout: Option<Duration>,
    /// Whether the connection to each endpoint opens at start-up, while the
    /// process works ([`TelemetryConfig::from_lookup`] says yes), or on the
    /// first export. A process whose only export comes after its useful
    /// work (the executor, after its result) says no: a handshake during
    /// the work would compete with it for the CPU.
    pub connect_at_start: bool,
    /// Whether spans and metrics are only recorded in memory while the
    /// process works (no export thread, and no channel unless
    /// `connect_at_start` opens one) and sent once, at
    /// [`Telemetry::shutdown`] ([`super::at_exit`]), rather than exported in
    /// batches as they come. For a process whose life is one short task
    /// (a CLI command, a one-shot executor); [`TelemetryConfig::from_lookup`]
    /// says no.
    pub export_at_exit: bool,
}

/// The telemetry settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `OTEL_EXPORTER_OTLP_HEADERS` is not `key=value,...`.
    #[error("{HEADERS_VAR}: {entry:?} is not key=value")]
    Header {
        /// The entry refused.
        entry: String,
    },
    /// An endpoint is not an http(s) URL.
    #[error("{var}={value:?} is not an http:// or https:// URL")]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` is not a whole number of milliseconds.
    #[error("{TIMEOUT_VAR}={value:?} is not a whole number of milliseconds")]
    Timeout {
        /// Its value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The endpoint is no URI a gRPC channel can use, or its TLS set-up
    /// failed.
    #[error("OTLP endpoint {endpoint:?}")]
    Channel {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The exporter refused its configuration.
    #[error("configure the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

impl TelemetryConfig {
    /// Reads the settings; `default_service` names the service when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn from_lookup(
        default_service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let service_name = get(SERVICE_NAME_VAR).unwrap_or_else(|| default_service.to_owned());
        let project = PROJECT_VARS.iter().find_map(|v| get(v));
        if get(DISABLED_VAR).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self {
                service_name,
                project,
                ..Self::default()
            });
        }
        let endpoint = |var: &'static str| -> Result<Option<String>, TelemetryError> {
            match get(var) {
                None => Ok(None),
                Some(v) if v.starts_with("http://") || v.starts_with("https://") => Ok(Some(v)),
                Some(value) => Err(TelemetryError::Endpoint { var, value }),
            }
        };
        let general = endpoint(ENDPOINT_VAR)?;
        let traces_endpoint = endpoint(TRACES_ENDPOINT_VAR)?.or_else(|| general.clone());
        let metrics_endpoint = endpoint(METRICS_ENDPOINT_VAR)?.or(general);
        let headers = match get(HEADERS_VAR) {
            None => Vec::new(),
            Some(list) => parse_headers(&list)?,
        };
        let export_timeout = match get(TIMEOUT_VAR) {
            None => None,
            Some(value) => match value.parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(source) => return Err(TelemetryError::Timeout { value, source }),
            },
        };
        Ok(Self {
            traces_endpoint,
            metrics_endpoint,
            headers,
            service_name,
            project,
            export_timeout,
            connect_at_start: true,
            export_at_exit: false,
        })
    }

    /// How long one export, and the flush at exit, may take.
    pub fn export_timeout(&self) -> Duration {
        self.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT)
    }

    /// Whether anything is exported.
    pub fn is_enabled(&self) -> bool {
        self.traces_endpoint.is_some() || self.metrics_endpoint.is_some()
    }
}

fn parse_headers(list: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    list.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (k, v) = entry
                .split_once('=')
                .ok_or_else(|| TelemetryError::Header {
                    entry: entry.to_owned(),
                })?;
            let key = k.trim().to_ascii_lowercase();
            let value = v.trim().to_owned();
            let ok_key =
                tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes())
                    .is_ok();
            let ok_value =
                tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str())
                    .is_ok();
            if key.is_empty() || !ok_key || !ok_value {
                return Err(TelemetryError::Header {
                    entry: entry.to_owned(),
                });
            }
            Ok((key, value))
        })
        .collect()
}

/// The installed exporters; [`Telemetry::shutdown`] flushes them. Dropping
/// it without a shutdown loses what was not yet exported.
#[must_use = "shut it down before the process exits, or the last spans are lost"]
pub struct Telemetry {
    pub(super) tracer: Option<SdkTracerProvider>,
    pub(super) meter: Option<SdkMeterProvider>,
    /// Google's credentials, whose first token a flush waits for.
    tokens: Option<google_auth::Tokens>,
    /// How long the flush at shutdown may take.
    pub(super) flush_timeout: Duration,
    /// Set when the providers only record ([`TelemetryConfig::export_at_exit`]):
    /// what the shutdown exports.
    pub(super) at_exit: Option<super::at_exit::AtExit>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            tracer: None,
            meter: None,
            tokens: None,
            flush_timeout: DEFAULT_EXPORT_TIMEOUT,
            at_exit: None,
        }
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.tracer.is_some())
            .field("metrics", &self.meter.is_some())
            .field("at_exit", &self.at_exit.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Whether anything is exported.
    pub fn is_enabled(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Exports what is buffered and stops the exporters. The SDK's
    /// shutdown blocks its thread, so it runs on the blocking pool: call it
    /// inside the runtime the exporters were built in, which must keep
    /// running until this returns.
    ///
    /// With [`TelemetryConfig::export_at_exit`], it ends the recording and
    /// sends what was recorded in one request per signal, both at once,
    /// each bounded by the export timeout (see [`super::at_exit`]).
    pub async fn shutdown(self) {
        if !self.is_enabled() {
            return;
        }
        let Self {
            tracer,
            meter,
            tokens,
            flush_timeout,
            at_exit,
        } = self;
        if let Some(at_exit) = at_exit {
            at_exit.export(tracer, meter).await;
            return;
        }
        if let Some(mut tokens) = tokens {
            // A process shorter than the first token fetch would export
            // without one, and be refused.
            let _ = tokio::time::timeout(
                google_auth::FIRST_TOKEN_WAIT,
                tokens.ready.wait_for(|ready| *ready),
            )
            .await;
        }
        // Both signals at once: each flush is a round trip to the endpoint.
        let traces = tokio::task::spawn_blocking(move || {
            Self {
                tracer,
                meter: None,
                tokens: None,
                flush_timeout,
                at_exit: None,
            }
            .shutdown_blocking()
        });
        let metrics = tokio::task::spawn_blocking(move || {
            Self {
                tracer: None,
                meter,
                tokens: None,
                flush_timeout,
                at_exit: None,
            }
            .shutdown_blocking()
        });
        for outcome in [traces.await, metrics.await] {
            if let Err(e) = outcome {
                eprintln!("runbox: telemetry shutdown failed: {e}");
            }
        }
    }

    /// The batch exporters' shutdown, which blocks this thread (the runtime
    /// must be running elsewhere).
    fn shutdown_blocking(self) {
        // Errors are only reported: telemetry never changes an exit status.
        // Bounded, so an unreachable endpoint (whose exports the exporter
        // retries) delays an exit by at most the export timeout.
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown_with_timeout(self.flush_timeout)
        {
            eprintln!("runbox: flush traces: {e}");
        }
        if let Some(meter) = self.meter
            && let Err(e) = meter.shutdown()
        {
            eprintln!("runbox: flush metrics: {e}");
        }
    }
}

/// The OpenTelemetry layer's pieces once built.
pub(super) struct Built {
    pub(super) telemetry: Telemetry,
    pub(super) tracer: Option<opentelemetry_sdk::trace::Tracer>,
}

/// Where one signal's exports go.
#[derive(Clone)]
pub(super) struct Route {
    /// The endpoint, as configured.
    pub(super) endpoint: String,
    /// The channel to it, shared with the other signal's route when both
    /// go to the same endpoint.
    pub(super) channel: tonic::transport::Channel,
    /// The metadata of every request: `OTEL_EXPORTER_OTLP_HEADERS`, and the
    /// quota project for Google.
    pub(super) metadata: tonic::metadata::MetadataMap,
    /// Google's credentials, for Google's endpoint only.
    pub(super) tokens: Option<google_auth::Tokens>,
}

/// The routes of the signals `config` enables.
pub(super) struct Routes {
    pub(super) traces: Option<Route>,
    pub(super) metrics: Option<Route>,
}

/// The channels, metadata and credentials `config` asks for: one channel,
/// so one connection, per endpoint. Must run inside a tokio runtime when
/// an endpoint is Google's (the token task is spawned on it).
pub(super) fn routes(config: &TelemetryConfig) -> Result<Routes, TelemetryError> {
    let google = [&config.traces_endpoint, &config.metrics_endpoint]
        .into_iter()
        .flatten()
        .any(|e| google_auth::is_google(e));
    let tokens = google.then(google_auth::Tokens::start);
    let metadata = || {
        let mut map = tonic::metadata::MetadataMap::new();
        if google
            && let Some(project) = &config.project
            && let Ok(v) = tonic::metadata::MetadataValue::try_from(project.as_str())
        {
            // The project quota and billing are charged to.
            map.insert("x-goog-user-project", v);
        }
        for (k, v) in &config.headers {
            // Validated when the config was read.
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.as_str()),
            ) {
                map.insert(k, v);
            }
        }
        map
    };
    // Traces and metrics to the same place share one connection, and a
    // flush of both signals pays for one handshake, not two.
    let mut channels: Vec<(String, tonic::transport::Channel)> = Vec::new();
    let mut route_to = |endpoint: &str| -> Result<Route, TelemetryError> {
        let channel = match channels.iter().find(|(e, _)| *e == endpoint) {
            Some((_, channel)) => channel.clone(),
            None => {
                let channel = channel(endpoint, config.export_timeout())?;
                channels.push((endpoint.to_owned(), channel.clone()));
                channel
            }
        };
        Ok(Route {
            endpoint: endpoint.to_owned(),
            channel,
            metadata: metadata(),
            tokens: tokens.clone().filter(|_| google_auth::is_google(endpoint)),
        })
    };
    Ok(Routes {
        traces: config
            .traces_endpoint
            .as_deref()
            .map(&mut route_to)
            .transpose()?,
        metrics: config
            .metrics_endpoint
            .as_deref()
            .map(&mut route_to)
            .transpose()?,
    })
}

/// The resource every span and metric of this process carries.
pub(super) fn resource(config: &TelemetryConfig) -> Resource {
    let mut resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())));
    if let Some(project) = &config.project {
        // Google's Telemetry API files data under this project.
        resource = resource.with_attribute(KeyValue::new("gcp.project_id", project.clone()));
    }
    resource.build()
}

/// Builds the exporters `config` asks for and installs the meter provider
/// and the propagation globally. Must run inside a tokio runtime (the gRPC
/// channel's worker is spawned on it).
pub(super) fn build(config: &TelemetryConfig) -> Result<Built, TelemetryError> {
    if config.export_at_exit {
        return super::at_exit::build(config);
    }
    let resource = resource(config);
    let routes = routes(config)?;
    let mut built = Built {
        telemetry: Telemetry::default(),
        tracer: None,
    };
    if let Some(route) = &routes.traces {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(route.channel.clone())
            .with_timeout(config.export_timeout())
            .with_metadata(route.metadata.clone());
        if let Some(tokens) = route.tokens.clone() {
            exporter = exporter.with_interceptor(tokens);
        }
        let exporter = exporter.build().map_err(TelemetryError::Exporter)?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(exporter)
            .build();
        built.tracer = Some(provider.tracer("runbox"));
        trace_context::install(Box::new(OtelPropagation));
        built.telemetry.tracer = Some(provider);
    }
    if let Some(route) = &routes.metrics {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_channel(route.channel.clone())
            .with_timeout(config.export_timeout())
            .with_metadata(route.metadata.clone());
        if let Some(tokens) = route.tokens.clone() {
            exporter = exporter.with_interceptor(tokens);
        }
        let exporter = exporter.build().map_err(TelemetryError::Exporter)?;
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(PeriodicReader::builder(exporter).build())
            .build();
        global::set_meter_provider(provider.clone());
        built.telemetry.meter = Some(provider);
    }
    if config.connect_at_start {
        warm_up(&routes);
    }
    built.telemetry.tokens = routes
        .traces
        .and_then(|r| r.tokens)
        .or_else(|| routes.metrics.and_then(|r| r.tokens));
    built.telemetry.flush_timeout = config.export_timeout();
    Ok(built)
}

/// Opens each route's connection while the process works, with one empty
/// export per channel (the traces route's, and the metrics route's where it
/// has a channel of its own). Spawned, never awaited: start-up does not
/// wait for the endpoint, and an unreachable one costs the exit no more
/// than its own export's timeout. Must run inside a tokio runtime.
pub(super) fn warm_up(routes: &Routes) {
    let metrics_own = routes.metrics.as_ref().filter(|m| {
        routes
            .traces
            .as_ref()
            .is_none_or(|t| t.endpoint != m.endpoint)
    });
    if let Some(route) = routes.traces.clone() {
        tokio::spawn(async move {
            let _ = export_traces(&route, Default::default()).await;
        });
    }
    if let Some(route) = metrics_own.cloned() {
        tokio::spawn(async move {
            let _ = export_metrics(&route, Default::default()).await;
        });
    }
}

/// Sends one traces request over `route`, with its metadata and (for
/// Google) a token, waiting for the first token if none was fetched yet.
/// The channel bounds the request by the export timeout.
///
/// At start-up an empty request (which collectors answer at once) opens
/// the connection while the process works, so that the flush at exit is
/// one round trip rather than a TCP, TLS and HTTP/2 handshake first; its
/// answer does not matter (a refusal has opened the connection too).
pub(super) async fn export_traces(
    route: &Route,
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Result<(), tonic::Status> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let interceptor = interceptor(route).await;
    let mut client = TraceServiceClient::with_interceptor(route.channel.clone(), interceptor);
    client.export(request).await.map(|_| ())
}

/// [`export_traces`] for metrics.
pub(super) async fn export_metrics(
    route: &Route,
    request: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> Result<(), tonic::Status> {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let interceptor = interceptor(route).await;
    let mut client = MetricsServiceClient::with_interceptor(route.channel.clone(), interceptor);
    client.export(request).await.map(|_| ())
}

/// What every request of `route` carries; waits (bounded) for Google's
/// first token, since Google refuses a request without one.
async fn interceptor(
    route: &Route,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + use<> {
    let tokens = match route.tokens.clone() {
        Some(mut tokens) => {
            let _ = tokio::time::timeout(
                google_auth::FIRST_TOKEN_WAIT,
                tokens.ready.wait_for(|ready| *ready),
            )
            .await;
            Some(tokens)
        }
        None => None,
    };
    let metadata = route.metadata.clone();
    move |mut request: tonic::Request<()>| {
        for kv in metadata.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                request.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        match &tokens {
            Some(tokens) => tonic::service::Interceptor::call(&mut tokens.clone(), request),
            None => Ok(request),
        }
    }
}

/// A channel to `endpoint` that connects on its first request (the
/// warm-up [`build`] spawns, or the export at exit); TLS with
/// the webpki roots for `https://`; every request bounded by `timeout` (the
/// exporters' own timeout, as a channel given to them must be).
fn channel(endpoint: &str, timeout: Duration) -> Result<tonic::transport::Channel, TelemetryError> {
    let channel_error = |source| TelemetryError::Channel {
        endpoint: endpoint.to_owned(),
        source,
    };
    let mut builder = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(channel_error)?
        .timeout(timeout);
    if endpoint.starts_with("https://") {
        builder = builder
            .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
            .map_err(channel_error)?;
    }
    Ok(builder.connect_lazy())
}

/// [`Propagation`] through the OpenTelemetry layer's span data.
pub(super) struct OtelPropagation;

impl Propagation for OtelPropagation {
    fn traceparent(&self, span: &tracing::Span) -> Option<Traceparent> {
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        if !sc.is_valid() {
            return None;
        }
        Traceparent::from_parts(
            &sc.trace_id().to_string(),
            &sc.span_id().to_string(),
            sc.is_sampled(),
        )
        .ok()
    }

    fn set_parent(&self, span: &tracing::Span, parent: &Traceparent) {
        let (Ok(trace_id), Ok(span_id)) = (
            opentelemetry::trace::TraceId::from_hex(parent.trace_id()),
            opentelemetry::trace::SpanId::from_hex(parent.span_id()),
        ) else {
            return;
        };
        let flags = if parent.sampled() {
            opentelemetry::trace::TraceFlags::SAMPLED
        } else {
            opentelemetry::trace::TraceFlags::default()
        };
        let remote = opentelemetry::trace::SpanContext::new(
            trace_id,
            span_id,
            flags,
            true,
            opentelemetry::trace::TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only when the span is already started (entered): the span
        // then keeps its local parent, which is no reason to stop.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn nothing_set_means_nothing_enabled() {
        let c = TelemetryConfig::from_lookup("runbox", lookup(&[])).unwrap();
        assert!(!c.is_enabled());
        assert_eq!(c.service_name, "runbox");
    }

    #[test]
    fn signal_endpoints_override_the_general_one() {
        let c = TelemetryConfig::from_lookup(
            "runbox",
            lookup(&[
                (ENDPOINT_VAR, "http://a:4317"),
                (METRICS_ENDPOINT_VAR, "https://m:443"),
                (SERVICE_NAME_VAR, "svc"),
                (HEADERS_VAR, "X-Goog-User-Project=p1, k=v"),
                ("GOOGLE_CLOUD_PROJECT", "proj"),
            ]),
        )
        .unwrap();
        assert_eq!(c.traces_endpoint.as_deref(), Some("http://a:4317"));
        assert_eq!(c.metrics_endpoint.as_deref(), Some("https://m:443"));
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.project.as_deref(), Some("proj"));
        assert_eq!(
            c.headers,
            vec![
                ("x-goog-user-project".to_owned(), "p1".to_owned()),
                ("k".to_owned(), "v".to_owned())
            ]
        );
        let only_traces = TelemetryConfig::from_lookup(
            "runbox",
            lookup(&[(TRACES_ENDPOINT_VAR, "http://t:4317")]),
        )
        .unwrap();
        assert!(only_traces.metrics_endpoint.is_none());
    }

    #[test]
    fn disabled_wins_and_bad_values_are_typed_errors() {
        let c = TelemetryConfig::from_lookup(
            "runbox",
            lookup(&[(ENDPOINT_VAR, "http://a:4317"), (DISABLED_VAR, "TRUE")]),
        )
        .unwrap();
        assert!(!c.is_enabled());
        let e = TelemetryConfig::from_lookup("r", lookup(&[(ENDPOINT_VAR, "a:4317")])).unwrap_err();
        assert!(matches!(e, TelemetryError::Endpoint { .. }), "{e:?}");
        let e = TelemetryConfig::from_lookup(
            "r",
            lookup(&[(ENDPOINT_VAR, "http://a"), (HEADERS_VAR, "novalue")]),
        )
        .unwrap_err();
        assert!(matches!(e, TelemetryError::Header { .. }), "{e:?}");
        let e = TelemetryConfig::from_lookup(
            "r",
            lookup(&[(ENDPOINT_VAR, "http://a"), (HEADERS_VAR, "k=a\nb")]),
        )
        .unwrap_err();
        assert!(matches!(e, TelemetryError::Header { .. }), "{e:?}");
    }

    #[test]
    fn export_timeout_is_read_in_milliseconds() {
        let c = TelemetryConfig::from_lookup("r", lookup(&[(ENDPOINT_VAR, "http://a")])).unwrap();
        assert_eq!(c.export_timeout(), DEFAULT_EXPORT_TIMEOUT);
        let c = TelemetryConfig::from_lookup(
            "r",
            lookup(&[(ENDPOINT_VAR, "http://a"), (TIMEOUT_VAR, "250")]),
        )
        .unwrap();
        assert_eq!(c.export_timeout(), Duration::from_millis(250));
        let bad: [&'static [(&str, &str)]; 3] = [
            &[(ENDPOINT_VAR, "http://a"), (TIMEOUT_VAR, "1s")],
            &[(ENDPOINT_VAR, "http://a"), (TIMEOUT_VAR, "-5")],
            &[(ENDPOINT_VAR, "http://a"), (TIMEOUT_VAR, "2.5")],
        ];
        for pairs in bad {
            let e = TelemetryConfig::from_lookup("r", lookup(pairs)).unwrap_err();
            assert!(
                matches!(e, TelemetryError::Timeout { .. }),
                "{pairs:?}: {e:?}"
            );
        }
    }
}
