//! The trace and span ids of JSON log lines ([`super::json::TraceSource`]).
//!
//! The OpenTelemetry layer keeps its span data private, and asking it for a
//! span's context needs the span's extensions unlocked, which they are not
//! while a line is written. So when a span is entered (by then any remote
//! parent is set), this layer asks once and keeps the ids in the span's
//! extensions, where the JSON layer's trace source reads them.

use std::sync::Arc;

use opentelemetry::trace::TraceContextExt;
use tracing::span::Id;
use tracing::{Subscriber, dispatcher};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::json::{TraceIds, TraceSource};

/// Records each entered span's [`TraceIds`] in its extensions.
pub(super) struct TraceIdsLayer {
    /// Cloud Logging's trace field names the project; without one the
    /// field is the bare trace id.
    project: Option<String>,
}

impl TraceIdsLayer {
    pub(super) fn new(project: Option<String>) -> Self {
        Self { project }
    }
}

impl<S> Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<TraceIds>().is_some() {
            return;
        }
        let cx = dispatcher::get_default(|d| tracing_opentelemetry::get_otel_context(id, d));
        let Some(cx) = cx else { return };
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return;
        }
        let trace = match &self.project {
            Some(p) => format!("projects/{p}/traces/{}", sc.trace_id()),
            None => sc.trace_id().to_string(),
        };
        span.extensions_mut().insert(TraceIds {
            trace,
            span_id: sc.span_id().to_string(),
        });
    }
}

/// The trace source reading what [`TraceIdsLayer`] recorded.
pub(super) fn source() -> TraceSource {
    Arc::new(|extensions| extensions.get::<TraceIds>().cloned())
}
