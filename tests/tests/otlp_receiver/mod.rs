//! A real OTLP/gRPC receiver in the test process: the collector's
//! TraceService and MetricsService from `opentelemetry-proto`, on a port of
//! its own, keeping every span and metric it is sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use tokio::sync::watch;

/// One received span with the resource it came from.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub pid: i64,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// When the span started and ended, in nanoseconds since the epoch.
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

/// One received metric with its resource's service name.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub service: String,
    pub metric: Metric,
}

#[derive(Default)]
struct State {
    spans: Vec<Received>,
    metrics: Vec<ReceivedMetric>,
    requests: usize,
    connections: usize,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<()>,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    shared: Shared,
    endpoint: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Shared {
            state: Arc::default(),
            changed: watch::channel(()).0,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(shared.clone()))
            .add_service(MetricsServiceServer::new(shared.clone()))
            .serve_with_incoming_shutdown(
                // Each accepted connection counted, so a test can tell how
                // many an exporting process opened.
                futures::stream::unfold(
                    (listener, shared.clone()),
                    |(listener, shared)| async move {
                        let accepted = listener.accept().await.map(|(stream, _)| stream);
                        if let Ok(stream) = &accepted {
                            // As collectors do: with Nagle on, the response's
                            // last frame would wait for the exporter's
                            // delayed ACK (up to 40 ms).
                            let _ = stream.set_nodelay(true);
                            shared.state.lock().expect("receiver state").connections += 1;
                            shared.changed.send_replace(());
                        }
                        Some((accepted, (listener, shared)))
                    },
                ),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::spawn(server);
        Self {
            shared,
            endpoint,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Export requests received so far, of either kind.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Waits (at most `secs`) until `count` connections were accepted.
    pub async fn wait_connections(&self, secs: u64, count: usize) {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            while self.connections() < count {
                changed.changed().await.expect("receiver alive");
            }
        };
        if tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .is_err()
        {
            panic!(
                "{count} connections did not arrive in {secs}s: {}",
                self.connections()
            );
        }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.lock().spans.clone()
    }

    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.lock().metrics.clone()
    }

    /// Waits (at most `secs`) until `done` holds of the spans received,
    /// woken by each export; panics with what arrived when it does not.
    pub async fn wait_spans(&self, secs: u64, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                changed.changed().await.expect("receiver alive");
            }
        };
        match tokio::time::timeout(Duration::from_secs(secs), wait).await {
            Ok(spans) => spans,
            Err(_) => panic!("spans did not arrive in {secs}s: {:#?}", self.spans()),
        }
    }

    /// Waits (at most `secs`) until a metric named `name` arrived.
    pub async fn wait_metric(&self, secs: u64, name: &str) -> Vec<ReceivedMetric> {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            loop {
                let found: Vec<_> = self
                    .metrics()
                    .into_iter()
                    .filter(|m| m.metric.name == name)
                    .collect();
                if !found.is_empty() {
                    return found;
                }
                changed.changed().await.expect("receiver alive");
            }
        };
        match tokio::time::timeout(Duration::from_secs(secs), wait).await {
            Ok(found) => found,
            Err(_) => panic!(
                "metric {name} did not arrive in {secs}s; got {:?}",
                self.metrics()
                    .iter()
                    .map(|m| m.metric.name.clone())
                    .collect::<Vec<_>>()
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("receiver state")
    }
}

pub fn value_text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), value_text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        {
            let mut state = self.state.lock().expect("receiver state");
            state.requests += 1;
            for rs in request.resource_spans {
                let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
                let service = resource.get("service.name").cloned().unwrap_or_default();
                let pid = resource
                    .get("process.pid")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(-1);
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        state.spans.push(Received {
                            service: service.clone(),
                            pid,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            name: span.name.clone(),
                            attributes: attributes(&span.attributes),
                            status: span.status.map_or(0, |s| s.code),
                            start_unix_nano: span.start_time_unix_nano,
                            end_unix_nano: span.end_time_unix_nano,
                        });
                    }
                }
            }
        }
        self.changed.send_replace(());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        {
            let mut state = self.state.lock().expect("receiver state");
            state.requests += 1;
            for rm in request.resource_metrics {
                let resource = attributes(&rm.resource.map(|r| r.attributes).unwrap_or_default());
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for sm in rm.scope_metrics {
                    for metric in sm.metrics {
                        state.metrics.push(ReceivedMetric {
                            service: service.clone(),
                            metric,
                        });
                    }
                }
            }
        }
        self.changed.send_replace(());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}
