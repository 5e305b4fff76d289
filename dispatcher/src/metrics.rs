//! The dispatcher's metrics, recorded through the global OpenTelemetry
//! meter. The runbox binaries install an OTLP meter provider when the
//! `OTEL_*` variables ask for one (`runbox_core::logging::telemetry`);
//! otherwise the global meter is OpenTelemetry's no-op and recording costs
//! a call that does nothing. An embedding program installs its own provider
//! before it creates the first client: instruments bind to the provider
//! that is global when they are first used.
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `runbox.exec.duration` (s) | histogram | `status`, `launcher` |
//! | `runbox.notification.lag` (s) | histogram | |
//! | `runbox.results.lost` | counter | |
//! | `runbox.admission.wait` (s) | histogram | |
//! | `runbox.runjob.throttled` | counter | |
//! | `runbox.waiters.pending` | gauge | |
//! | `runbox.events.delivered`, `.duplicate`, `.unknown`, `.malformed`, `.foreign` | counter (observed) | |
//!
//! The event counters are the notifier's own ([`runbox_notifier::NotifierStats`]),
//! read when metrics are collected rather than counted twice.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

/// The instrument scope of every runbox metric.
pub const METER: &str = "runbox";

/// Instruments recorded where things happen.
pub(crate) struct Metrics {
    exec_duration: Histogram<f64>,
    notification_lag: Histogram<f64>,
    lost: Counter<u64>,
    admission_wait: Histogram<f64>,
    runjob_throttled: Counter<u64>,
}

/// The process's instruments.
pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter(METER);
        Metrics {
            exec_duration: meter
                .f64_histogram("runbox.exec.duration")
                .with_unit("s")
                .with_description("Foreground command duration, request to settled result")
                .build(),
            notification_lag: meter
                .f64_histogram("runbox.notification.lag")
                .with_unit("s")
                .with_description("Result written (completed_at) to its completion event handled")
                .build(),
            lost: meter
                .u64_counter("runbox.results.lost")
                .with_description("LOST results written on behalf of an executor")
                .build(),
            admission_wait: meter
                .f64_histogram("runbox.admission.wait")
                .with_unit("s")
                .with_description("Time a launch waited for a running slot and a RunJob token")
                .build(),
            runjob_throttled: meter
                .u64_counter("runbox.runjob.throttled")
                .with_description("RunJob calls refused as RESOURCE_EXHAUSTED or UNAVAILABLE")
                .build(),
        }
    })
}

impl Metrics {
    pub(crate) fn exec_finished(&self, elapsed: Duration, status: &str, launcher: &'static str) {
        self.exec_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("status", status.to_owned()),
                KeyValue::new("launcher", launcher),
            ],
        );
    }

    pub(crate) fn notification_lag(&self, lag: Duration) {
        self.notification_lag.record(lag.as_secs_f64(), &[]);
    }

    pub(crate) fn lost(&self) {
        self.lost.add(1, &[]);
    }

    pub(crate) fn admission_wait(&self, waited: Duration) {
        self.admission_wait.record(waited.as_secs_f64(), &[]);
    }

    pub(crate) fn runjob_throttled(&self) {
        self.runjob_throttled.add(1, &[]);
    }
}

/// The notifier's counters as last seen, so the collection at exit (after
/// the engine has stopped its notifier) still reports them.
#[derive(Default)]
pub(crate) struct LastStats(Mutex<runbox_notifier::NotifierStats>);

impl LastStats {
    /// Keeps `stats` as the latest.
    pub(crate) fn record(&self, stats: runbox_notifier::NotifierStats) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    fn get(&self) -> runbox_notifier::NotifierStats {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the metrics read from a running engine (a trait, so this module
/// does not depend on the engine, which records through it).
pub(crate) trait Observed: Send + Sync {
    /// The executions awaited; `None` once the engine is stopping (a
    /// stopped engine awaits nothing: its waiters have failed).
    fn pending(&self) -> Option<usize>;
    /// The notifier's counters; `None` once the engine is stopping.
    fn observed_stats(&self) -> Option<runbox_notifier::NotifierStats>;
}

/// Observes `engine`'s waiters and notifier counters at each collection:
/// live while its notifier runs, then as `last` kept them.
pub(crate) fn observe(engine: Weak<dyn Observed>, last: Arc<LastStats>) {
    let meter: Meter = opentelemetry::global::meter(METER);
    let e = engine.clone();
    let _pending = meter
        .u64_observable_gauge("runbox.waiters.pending")
        .with_description("Executions whose completion this process awaits")
        .with_callback(move |o| {
            let pending = e.upgrade().and_then(|e| e.pending()).unwrap_or(0);
            o.observe(pending as u64, &[]);
        })
        .build();
    type Pick = fn(&runbox_notifier::NotifierStats) -> u64;
    let counters: [(&'static str, &'static str, Pick); 5] = [
        (
            "runbox.events.delivered",
            "Completion events routed to a waiter",
            |s| s.delivered,
        ),
        (
            "runbox.events.duplicate",
            "Completion events seen before",
            |s| s.duplicates,
        ),
        (
            "runbox.events.unknown",
            "Result events nobody here awaits",
            |s| s.unknown,
        ),
        (
            "runbox.events.malformed",
            "Event messages that were not usable",
            |s| s.malformed,
        ),
        ("runbox.events.foreign", "Events of another bucket", |s| {
            s.foreign
        }),
    ];
    for (name, description, pick) in counters {
        let e = engine.clone();
        let last = Arc::clone(&last);
        let _counter = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                let stats = match e.upgrade().and_then(|e| e.observed_stats()) {
                    Some(stats) => {
                        last.record(stats);
                        stats
                    }
                    None => last.get(),
                };
                o.observe(pick(&stats), &[]);
            })
            .build();
    }
}
