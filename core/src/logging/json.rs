//! Log lines as Cloud Logging reads them from a container's stderr: one JSON
//! object per line, whose `severity`, `message`, `time`,
//! `logging.googleapis.com/trace`, `logging.googleapis.com/spanId` and
//! `logging.googleapis.com/labels` become the entry's own fields; every
//! other key stays in its `jsonPayload`.
//!
//! The fields of the spans an event happens in are on its line, so a span
//! entered with `execution` or `session` marks every line inside it.

use std::io::Write;
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{Extensions, LookupSpan};

/// The key under which Cloud Logging expects the trace, as
/// `projects/PROJECT/traces/TRACE_ID`.
pub const TRACE_KEY: &str = "logging.googleapis.com/trace";
/// The key under which Cloud Logging expects the span id (16 hex digits).
pub const SPAN_ID_KEY: &str = "logging.googleapis.com/spanId";
/// The key of the entry's labels (indexed by Cloud Logging).
pub const LABELS_KEY: &str = "logging.googleapis.com/labels";
/// The key naming the execution a line concerns.
pub const EXECUTION_KEY: &str = "execution_id";
/// The key naming the session a line concerns.
pub const SESSION_KEY: &str = "session_id";

/// The trace a log line belongs to, in Cloud Logging's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// `projects/PROJECT/traces/TRACE_ID`.
    pub trace: String,
    /// The span's 16-hex-digit id.
    pub span_id: String,
}

/// Finds the trace of the innermost span of a line from that span's
/// extensions (where a telemetry layer keeps its span context). Without one,
/// or when it answers `None`, lines carry no trace fields.
pub type TraceSource = Arc<dyn Fn(&Extensions<'_>) -> Option<TraceIds> + Send + Sync>;

/// Cloud Logging's name for a level. TRACE has none of its own: DEBUG.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// One line with only a severity, a message and the time: for what a
/// program prints outside `tracing` (the CLI's notes) while JSON lines are on.
pub fn plain_line(level: &Level, message: &str) -> String {
    let mut line = Map::new();
    line.insert("severity".into(), severity(level).into());
    line.insert("message".into(), message.into());
    line.insert("time".into(), now().into());
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    text
}

/// The layer writing JSON lines to `writer`.
pub struct JsonLayer<W> {
    writer: W,
    trace: Option<TraceSource>,
}

impl<W> JsonLayer<W> {
    /// Lines go to `writer`, one `write_all` each so concurrent lines never
    /// interleave.
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            trace: None,
        }
    }

    /// Takes each line's trace and span ids from `source`.
    #[must_use]
    pub fn with_trace_source(mut self, source: TraceSource) -> Self {
        self.trace = Some(source);
        self
    }
}

/// The fields recorded on a span, kept in its extensions.
struct SpanFields(Map<String, Value>);

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.map));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(map)) = extensions.get_mut::<SpanFields>() {
            let mut fields = Fields {
                map: std::mem::take(map),
                message: None,
            };
            values.record(&mut fields);
            *map = fields.map;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        let mut trace = None;
        if let Some(scope) = ctx.event_scope(event) {
            // Outermost first, so an inner span's field wins over an outer's.
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(SpanFields(map)) = extensions.get::<SpanFields>() {
                    line.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                if let Some(source) = &self.trace
                    && let Some(ids) = source(&extensions)
                {
                    trace = Some(ids);
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        line.extend(fields.map);
        let mut labels = Map::new();
        for (names, key) in [
            (["execution", EXECUTION_KEY], EXECUTION_KEY),
            (["session", SESSION_KEY], SESSION_KEY),
        ] {
            for name in names {
                if let Some(value) = line.remove(name) {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    labels.insert(key.to_owned(), text.into());
                }
            }
        }
        line.extend(labels.clone());
        if !labels.is_empty() {
            line.insert(LABELS_KEY.to_owned(), Value::Object(labels));
        }
        let meta = event.metadata();
        // The entry's own fields last: a field of the same name loses.
        line.insert("target".into(), meta.target().into());
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert("message".into(), fields.message.unwrap_or_default().into());
        line.insert("time".into(), now().into());
        if let Some(ids) = trace {
            line.insert(TRACE_KEY.into(), ids.trace.into());
            line.insert(SPAN_ID_KEY.into(), ids.span_id.into());
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // A log line nobody can receive is not worth failing over.
        let _ = self.writer.make_writer().write_all(text.as_bytes());
    }
}

/// RFC 3339 UTC with nanoseconds, as Cloud Logging reads `time`.
fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Collects fields as JSON values; `message` separately.
#[derive(Default)]
struct Fields {
    map: Map<String, Value>,
    message: Option<String>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.map.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain: the cause is usually the useful part.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.put(field, text.into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Lines written, shared with the test.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_carry_severity_ids_from_spans_and_no_trace_without_one() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("exec", session = "s1", execution = tracing::field::Empty);
            let _entered = span.enter();
            span.record("execution", "e1");
            tracing::warn!(attempt = 2, "RunJob \"refused\"");
            tracing::error!(execution = "e2", "inner wins");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["severity"], "WARNING");
        assert_eq!(first["message"], "RunJob \"refused\"");
        assert_eq!(first["attempt"], 2);
        assert_eq!(first[EXECUTION_KEY], "e1");
        assert_eq!(first[SESSION_KEY], "s1");
        assert_eq!(first[LABELS_KEY][SESSION_KEY], "s1");
        assert!(first.get(TRACE_KEY).is_none() && first.get(SPAN_ID_KEY).is_none());
        assert!(
            humantime::parse_rfc3339(first["time"].as_str().unwrap()).is_ok(),
            "{first}"
        );
        assert_eq!(lines[1]["severity"], "ERROR");
        assert_eq!(lines[1][EXECUTION_KEY], "e2");
    }

    #[test]
    fn a_trace_source_fills_the_trace_fields() {
        let buffer = Buffer::default();
        let source: TraceSource = Arc::new(|_| {
            Some(TraceIds {
                trace: "projects/p/traces/0af7651916cd43dd8448eb211c80319c".into(),
                span_id: "b7ad6b7169203331".into(),
            })
        });
        let subscriber = tracing_subscriber::registry()
            .with(JsonLayer::new(buffer.clone()).with_trace_source(source));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("exec").entered();
            tracing::debug!("inside");
            drop(_span);
            tracing::trace!("outside");
        });
        let lines = lines(&buffer);
        assert_eq!(
            lines[0][TRACE_KEY],
            "projects/p/traces/0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(lines[0][SPAN_ID_KEY], "b7ad6b7169203331");
        assert_eq!(lines[0]["severity"], "DEBUG");
        assert!(lines[1].get(TRACE_KEY).is_none());
        assert_eq!(lines[1]["severity"], "DEBUG");
    }

    /// A value with a newline and quotes (a command's text, a session
    /// name from a request) cannot start a line of its own or forge a field.
    #[test]
    fn values_cannot_forge_lines_or_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(buffer.clone()));
        let forged = "x\"}\n{\"severity\":\"ERROR\",\"message\":\"forged";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(session = forged, severity = "ERROR", "{forged}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = &lines(&buffer)[0];
        assert_eq!(line["severity"], "INFO");
        assert_eq!(line["message"], forged);
        assert_eq!(line[SESSION_KEY], forged);
    }

    #[test]
    fn plain_lines_parse() {
        let line = plain_line(&Level::INFO, "runbox serve: listening");
        let value: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["severity"], "INFO");
        assert_eq!(value["message"], "runbox serve: listening");
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
    }
}
