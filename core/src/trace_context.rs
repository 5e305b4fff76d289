//! W3C trace context (`traceparent`) across process boundaries, for crates
//! that only speak `tracing`.
//!
//! The dispatcher, the notifier and the executor create ordinary `tracing`
//! spans. Turning a span into a `traceparent` (to hand to an executor, a
//! result object or a Pub/Sub message) and making a span continue a
//! `traceparent` it received needs the OpenTelemetry layer, which only the
//! binaries install ([`crate::logging`]). They register it here with
//! [`install`]; until then (a library user without telemetry, or a binary
//! with no `OTEL_*` variable set) every function is a cheap no-op and
//! nothing crosses a boundary.
//!
//! A `traceparent` that arrives from outside (environment, object metadata,
//! message attributes) is validated with [`Traceparent::parse`] before use:
//! it ends up in environment variables and object metadata, so only the
//! exact W3C shape is accepted.

use std::fmt;
use std::sync::OnceLock;

/// What the telemetry layer provides: a span's context as a
/// `traceparent`, and a span's parent taken from one.
pub trait Propagation: Send + Sync + 'static {
    /// The W3C `traceparent` of `span`, when it is sampled into a trace.
    fn traceparent(&self, span: &tracing::Span) -> Option<Traceparent>;
    /// Makes `span` a child of the remote span `parent`. Call before the
    /// span is first entered.
    fn set_parent(&self, span: &tracing::Span, parent: &Traceparent);
}

static HOOK: OnceLock<Box<dyn Propagation>> = OnceLock::new();

/// Registers the process's propagation; `false` when one was already
/// registered (the first stays).
pub fn install(propagation: Box<dyn Propagation>) -> bool {
    HOOK.set(propagation).is_ok()
}

/// Whether a propagation is registered, i.e. spans are exported.
pub fn is_active() -> bool {
    HOOK.get().is_some()
}

/// The `traceparent` of `span`; `None` without telemetry.
pub fn traceparent(span: &tracing::Span) -> Option<Traceparent> {
    HOOK.get()?.traceparent(span)
}

/// The `traceparent` of the current span; `None` without telemetry.
pub fn current() -> Option<Traceparent> {
    let hook = HOOK.get()?;
    hook.traceparent(&tracing::Span::current())
}

/// Makes `span` continue the trace of `parent`; nothing without telemetry.
pub fn set_parent(span: &tracing::Span, parent: &Traceparent) {
    if let Some(hook) = HOOK.get() {
        hook.set_parent(span, parent);
    }
}

/// Parses `value` (when there is one) and makes `span` its child; a value
/// that is not a W3C `traceparent` is ignored with a debug line, since
/// telemetry is never a reason to refuse work.
pub fn continue_from(span: &tracing::Span, value: Option<&str>) {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return;
    };
    if !is_active() {
        return;
    }
    match Traceparent::parse(value) {
        Ok(parent) => set_parent(span, &parent),
        Err(e) => tracing::debug!(error = %e, "ignoring the trace context received"),
    }
}

/// The Pub/Sub message attribute (and result-object metadata key) carrying
/// a W3C `traceparent`.
pub const ATTRIBUTE: &str = crate::contract::RESULT_TRACEPARENT_KEY;

/// The trace a received message continues: its [`ATTRIBUTE`] attribute
/// when that is a valid `traceparent`, else `None` (an invalid one is
/// ignored, as W3C asks). This is the hook for a message-driven surface
/// (`runbox serve`'s request topic): pass the result to
/// `runbox_dispatcher::Exec::parent`.
pub fn from_attributes<S: std::hash::BuildHasher>(
    attributes: &std::collections::HashMap<String, String, S>,
) -> Option<Traceparent> {
    Traceparent::parse(attributes.get(ATTRIBUTE)?).ok()
}

/// Adds the current span's `traceparent` to a message's attributes, when
/// there is a trace; for every message runbox publishes.
pub fn inject<S: std::hash::BuildHasher>(
    attributes: &mut std::collections::HashMap<String, String, S>,
) {
    if let Some(tp) = current() {
        attributes.insert(ATTRIBUTE.to_owned(), tp.to_string());
    }
}

/// Marks `span` as failed: its OpenTelemetry status becomes ERROR. The span
/// must declare an `otel.status_code` field (`tracing::field::Empty`).
pub fn mark_error(span: &tracing::Span) {
    span.record("otel.status_code", "ERROR");
}

/// A validated W3C `traceparent`: version `00`, a 32-hex-digit trace id and
/// a 16-hex-digit parent span id (neither all zeros) and 2 hex digits of
/// flags, all lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Traceparent(String);

/// A value that is not a W3C `traceparent`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lower case)")]
pub struct TraceparentError {
    /// The value refused, cut to 80 characters.
    pub value: String,
}

impl Traceparent {
    /// Parses and validates a `traceparent` header value.
    pub fn parse(value: &str) -> Result<Self, TraceparentError> {
        let bad = || TraceparentError {
            value: value.chars().take(80).collect(),
        };
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return Err(bad());
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if *version != "00"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
            || zero(trace)
            || zero(span)
        {
            return Err(bad());
        }
        Ok(Self(value.to_owned()))
    }

    /// Builds one from its parts (the caller's ids are valid by
    /// construction: from a live span context).
    pub fn from_parts(
        trace_id: &str,
        span_id: &str,
        sampled: bool,
    ) -> Result<Self, TraceparentError> {
        Self::parse(&format!(
            "00-{trace_id}-{span_id}-{}",
            if sampled { "01" } else { "00" }
        ))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The 16-hex-digit parent span id.
    pub fn span_id(&self) -> &str {
        &self.0[36..52]
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.0[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_parses_into_its_parts() {
        let tp = Traceparent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.span_id(), "b7ad6b7169203331");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nX-Evil: 1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01",
        ] {
            assert!(Traceparent::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_message_continues_only_a_valid_traceparent() {
        let mut attributes = std::collections::HashMap::new();
        assert_eq!(from_attributes(&attributes), None);
        attributes.insert(ATTRIBUTE.to_owned(), "00-zz-01".to_owned());
        assert_eq!(from_attributes(&attributes), None);
        attributes.insert(ATTRIBUTE.to_owned(), GOOD.to_owned());
        assert_eq!(from_attributes(&attributes).unwrap().as_str(), GOOD);
    }

    #[test]
    fn without_telemetry_nothing_crosses() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), None);
        continue_from(&span, Some(GOOD));
        assert_eq!(current(), None);
        let mut attributes = std::collections::HashMap::new();
        inject(&mut attributes);
        assert!(attributes.is_empty());
    }
}
