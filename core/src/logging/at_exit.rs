//! The export of a process whose life is one short task (a CLI command, a
//! one-shot executor), chosen by [`TelemetryConfig::export_at_exit`].
//!
//! While the process works, its spans go to a `Vec` as they end (a span
//! processor with no thread, no channel and no exporter behind it) and its
//! metrics stay in the meter provider. [`super::Telemetry::shutdown`] then
//! stops both, turns what was recorded into one
//! `ExportTraceServiceRequest` and one `ExportMetricsServiceRequest`, and
//! sends the two at once over the signals' routes, each bounded by the
//! export timeout. The batch exporters would have done the same work, but
//! on threads of their own started with the process, on the way to the
//! task's first useful instruction.
//!
//! With `connect_at_start` the routes (channels, metadata, Google's
//! credentials) are built at start-up and their connections opened while
//! the process works, so the exit pays for one round trip; without it
//! they are built at the exit, and nothing of the network is touched
//! before (the executor: its command must not compete with a handshake).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};

use super::telemetry::{
    self, Built, OtelPropagation, Routes, Telemetry, TelemetryConfig, TelemetryError,
};
use crate::trace_context;

/// What a recording process exports at its shutdown.
pub(super) struct AtExit {
    spans: Arc<Mutex<Recorded>>,
    metrics: Arc<Mutex<Option<ExportMetricsServiceRequest>>>,
    /// Built at start-up when the connection opens then.
    routes: Option<Routes>,
    config: TelemetryConfig,
}

impl AtExit {
    /// Ends the recording (the providers are shut down: nothing more is
    /// recorded) and sends what it holds, both signals at once, each
    /// within the export timeout. Failures are reported on stderr:
    /// telemetry never changes an exit status. Must run inside a tokio
    /// runtime.
    pub(super) async fn export(
        self,
        tracer: Option<SdkTracerProvider>,
        meter: Option<SdkMeterProvider>,
    ) {
        let Self {
            spans,
            metrics,
            routes,
            config,
        } = self;
        if let Some(tracer) = tracer {
            // The recorder holds no thread and no buffer to flush: this only
            // stops later spans from being recorded.
            let _ = tracer.shutdown();
        }
        let traces = traces_request(&spans);
        if traces.is_none() && meter.is_none() {
            return;
        }
        let routes = match routes {
            Some(routes) => routes,
            None => match telemetry::routes(&config) {
                Ok(routes) => routes,
                Err(e) => {
                    eprintln!("runbox: telemetry: {}", crate::error_chain(&e));
                    return;
                }
            },
        };
        let timeout = config.export_timeout();
        let traces = async {
            if let (Some(request), Some(route)) = (traces, &routes.traces) {
                let export = telemetry::export_traces(route, request);
                report("traces", &route.endpoint, bounded(timeout, export).await);
            }
        };
        let metrics = async {
            let Some(meter) = meter else {
                return;
            };
            // Polled after the traces future, which has by then handed its
            // request to the channel's tasks: the reader's thread makes its
            // last collection while the spans are on their way. Blocking
            // this task for it is fine: the collection goes to memory and
            // needs nothing of the runtime, and a thread of the blocking
            // pool would cost more to start than the wait.
            if let Err(e) = meter.shutdown() {
                eprintln!("runbox: collect metrics: {e}");
            }
            if let (Some(request), Some(route)) = (metrics_request(&metrics), &routes.metrics) {
                let export = telemetry::export_metrics(route, request);
                report("metrics", &route.endpoint, bounded(timeout, export).await);
            }
        };
        tokio::join!(traces, metrics);
    }
}

/// The recorded spans as one export request (taken: a second call finds
/// none); `None` when there are none.
fn traces_request(spans: &Mutex<Recorded>) -> Option<ExportTraceServiceRequest> {
    let spans = std::mem::take(&mut *spans.lock().unwrap_or_else(PoisonError::into_inner));
    (!spans.spans.is_empty()).then(|| ExportTraceServiceRequest {
        resource_spans:
            opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                spans.spans,
                &spans.resource,
            ),
    })
}

/// The last metrics collection (taken), unless it holds no metric.
fn metrics_request(
    metrics: &Mutex<Option<ExportMetricsServiceRequest>>,
) -> Option<ExportMetricsServiceRequest> {
    metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .filter(|m| {
            m.resource_metrics
                .iter()
                .any(|r| r.scope_metrics.iter().any(|s| !s.metrics.is_empty()))
        })
}

/// Why one export did not go through.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// The endpoint refused it, or the channel failed (the connection, its
    /// own deadline).
    #[error("refused or failed")]
    Status(#[source] tonic::Status),
    /// No answer within the export timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

async fn bounded(
    timeout: Duration,
    export: impl Future<Output = Result<(), tonic::Status>>,
) -> Result<(), ExportError> {
    match tokio::time::timeout(timeout, export).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) => Err(ExportError::Status(status)),
        Err(_) => Err(ExportError::TimedOut(timeout)),
    }
}

fn report(signal: &str, endpoint: &str, outcome: Result<(), ExportError>) {
    if let Err(e) = outcome {
        eprintln!(
            "runbox: export {signal} to {endpoint}: {}",
            crate::error_chain(&e)
        );
    }
}

/// Spans recorded so far, with the resource the provider gave.
#[derive(Default)]
struct Recorded {
    spans: Vec<SpanData>,
    resource: ResourceAttributesWithSchema,
}

/// A span processor that keeps every sampled span in memory as it ends.
#[derive(Clone)]
struct SpanRecorder(Arc<Mutex<Recorded>>);

impl std::fmt::Debug for SpanRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanRecorder")
    }
}

impl SpanProcessor for SpanRecorder {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spans
            .push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .resource = resource.into();
    }
}

/// A metric exporter that keeps the last collection, already in OTLP's
/// form (the data are cumulative, so the last supersedes the others).
#[derive(Clone)]
struct MetricRecorder(Arc<Mutex<Option<ExportMetricsServiceRequest>>>);

impl PushMetricExporter for MetricRecorder {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(metrics.into());
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        // What the OTLP exporter sends by default.
        Temporality::Cumulative
    }
}

/// Recording providers for what `config` enables, installed as
/// [`telemetry::build`] installs exporting ones. Needs a tokio runtime only
/// with `connect_at_start` (the routes' channels are then built, and
/// their connections opened, now).
pub(super) fn build(config: &TelemetryConfig) -> Result<Built, TelemetryError> {
    let routes = if config.connect_at_start {
        let routes = telemetry::routes(config)?;
        telemetry::warm_up(&routes);
        Some(routes)
    } else {
        // Refused now, before any work, rather than at the exit.
        for endpoint in [&config.traces_endpoint, &config.metrics_endpoint]
            .into_iter()
            .flatten()
        {
            tonic::transport::Endpoint::from_shared(endpoint.clone()).map_err(|source| {
                TelemetryError::Channel {
                    endpoint: endpoint.clone(),
                    source,
                }
            })?;
        }
        None
    };
    let resource = telemetry::resource(config);
    let spans = Arc::new(Mutex::new(Recorded::default()));
    let metrics = Arc::new(Mutex::new(None));
    let mut built = Built {
        telemetry: Telemetry::default(),
        tracer: None,
    };
    if config.traces_endpoint.is_some() {
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(SpanRecorder(Arc::clone(&spans)))
            .build();
        built.tracer = Some(provider.tracer("runbox"));
        trace_context::install(Box::new(OtelPropagation));
        built.telemetry.tracer = Some(provider);
    }
    if config.metrics_endpoint.is_some() {
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(PeriodicReader::builder(MetricRecorder(Arc::clone(&metrics))).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        built.telemetry.meter = Some(provider);
    }
    built.telemetry.flush_timeout = config.export_timeout();
    built.telemetry.at_exit = Some(AtExit {
        spans,
        metrics,
        routes,
        config: config.clone(),
    });
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TelemetryConfig {
        TelemetryConfig {
            export_at_exit: true,
            connect_at_start: false,
            ..TelemetryConfig::from_lookup("svc", |name| {
                (name == telemetry::ENDPOINT_VAR).then(|| "http://127.0.0.1:1".to_owned())
            })
            .unwrap()
        }
    }

    #[test]
    fn recorded_spans_and_metrics_become_export_requests() {
        let built = build(&config()).unwrap();
        let provider = built.telemetry.tracer.clone().unwrap();
        {
            use opentelemetry::trace::{Span as _, Tracer as _};
            let mut span = provider.tracer("runbox").start("exec");
            span.end();
        }
        let meter = built.telemetry.meter.clone().unwrap();
        {
            use opentelemetry::metrics::MeterProvider as _;
            meter
                .meter("runbox")
                .u64_counter("runbox.events.delivered")
                .build()
                .add(2, &[]);
        }
        provider.shutdown().unwrap();
        meter.shutdown().unwrap();
        let at_exit = built.telemetry.at_exit.as_ref().unwrap();
        let traces = traces_request(&at_exit.spans).expect("a traces request");
        let resource = traces.resource_spans[0].resource.as_ref().unwrap();
        assert!(
            resource
                .attributes
                .iter()
                .any(|kv| kv.key == "service.name"),
            "the resource was recorded"
        );
        let names: Vec<&str> = traces.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["exec"]);
        let metrics = metrics_request(&at_exit.metrics).expect("a metrics request");
        let names: Vec<&str> = metrics.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["runbox.events.delivered"]);
        // Taken: nothing could be sent twice.
        assert_eq!(traces_request(&at_exit.spans), None);
        assert_eq!(metrics_request(&at_exit.metrics), None);
    }

    #[test]
    fn an_endpoint_no_channel_can_use_is_refused_at_start() {
        let config = TelemetryConfig {
            traces_endpoint: Some("http://exa mple:4317".to_owned()),
            ..config()
        };
        let e = build(&config).err().expect("refused");
        assert!(matches!(e, TelemetryError::Channel { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_delays_the_exit_by_at_most_the_timeout() {
        // Connections complete (the kernel accepts them) but nothing ever
        // answers: only the timeout ends the export.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = TelemetryConfig {
            traces_endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
            export_timeout: Some(Duration::from_millis(300)),
            metrics_endpoint: None,
            ..config()
        };
        let built = build(&config).unwrap();
        {
            use opentelemetry::trace::{Span as _, Tracer as _};
            let provider = built.telemetry.tracer.clone().unwrap();
            provider.tracer("runbox").start("exec").end();
        }
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), built.telemetry.shutdown())
            .await
            .expect("the shutdown ends");
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(300)..Duration::from_secs(2)).contains(&took),
            "{took:?}"
        );
    }
}
