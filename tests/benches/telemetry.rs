//! Telemetry benchmark: prints figures, asserts nothing about speed.
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench
//! telemetry` (the build step provides the `runbox` and `runbox-executor`
//! binaries).
//!
//! `runbox exec -s bench -- true` on the embedded backend, as a user runs
//! it (a process each time), with traces and metrics exported over OTLP to
//! a receiver in this process vs with no `OTEL_*` variable set: the two
//! interleaved, run after run, so both see the same machine. Each traced
//! run includes building the exporters, the spans of the CLI and of the
//! executor, and the flush at exit. Figures: p50, p99 and mean of each,
//! and the differences (target: at most 0.5 ms extra at p50), with traces
//! alone and metrics alone as two more series to say which signal costs.
//! `RUNBOX_BENCH_RUNS` sets the runs per variant (default 60).

// The receiver is shared with tests/telemetry.rs; this uses only part of it.
#[allow(dead_code)]
#[path = "../tests/otlp_receiver/mod.rs"]
mod otlp_receiver;

use std::time::{Duration, Instant};

use runbox_tests::cli::Cli;

const OTEL_VARS: [&str; 7] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "TRACEPARENT",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Figures {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Figures {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        mean,
    }
}

/// Which `OTEL_*` variable carries the receiver's address.
#[derive(Clone, Copy)]
enum Export {
    Off,
    Both,
    TracesOnly,
    MetricsOnly,
}

async fn one_exec(cli: &Cli, export: Export, endpoint: &str) -> Duration {
    let mut cmd = cli.command(&["exec", "-s", "bench", "--", "true"]);
    for var in OTEL_VARS {
        cmd.env_remove(var);
    }
    match export {
        Export::Off => {}
        Export::Both => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        Export::TracesOnly => {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint);
        }
        Export::MetricsOnly => {
            cmd.env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint);
        }
    }
    let started = Instant::now();
    let out = cmd.output().await.expect("run runbox");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let receiver = otlp_receiver::Receiver::start().await;
    let cli = Cli::new();
    let endpoint = receiver.endpoint();
    // Warm-up: page cache, the session's first state, the receiver's first
    // connection.
    for _ in 0..3 {
        one_exec(&cli, Export::Off, endpoint).await;
        one_exec(&cli, Export::Both, endpoint).await;
    }
    let variants = [
        Export::Off,
        Export::Both,
        Export::TracesOnly,
        Export::MetricsOnly,
    ];
    let mut samples: Vec<Vec<Duration>> = variants.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        // Rotate which goes first, so none always follows another.
        for k in 0..variants.len() {
            let v = (i + k) % variants.len();
            samples[v].push(one_exec(&cli, variants[v], endpoint).await);
        }
    }
    let spans = receiver.spans().len();
    let mut figs = samples.into_iter().map(figures);
    let (off, on, traces, metrics) = (
        figs.next().expect("four series"),
        figs.next().expect("four series"),
        figs.next().expect("four series"),
        figs.next().expect("four series"),
    );
    println!("telemetry: `runbox exec -s bench -- true`, embedded, {runs} runs each, interleaved");
    for (name, f) in [
        ("telemetry off    ", &off),
        ("exporting (OTLP) ", &on),
        ("traces only      ", &traces),
        ("metrics only     ", &metrics),
    ] {
        println!(
            "  {name} p50 {:7.2} ms  p99 {:7.2} ms  mean {:7.2} ms",
            ms(f.p50),
            ms(f.p99),
            ms(f.mean)
        );
    }
    println!(
        "  difference        p50 {:+7.2} ms  p99 {:+7.2} ms  mean {:+7.2} ms  (p50 ratio {:.3}; target <= +0.5 ms at p50)",
        ms(on.p50) - ms(off.p50),
        ms(on.p99) - ms(off.p99),
        ms(on.mean) - ms(off.mean),
        on.p50.as_secs_f64() / off.p50.as_secs_f64()
    );
    println!(
        "  p50 extra by signal: traces only {:+.2} ms, metrics only {:+.2} ms",
        ms(traces.p50) - ms(off.p50),
        ms(metrics.p50) - ms(off.p50)
    );
    println!(
        "  spans received: {spans} ({:.1} per traced run)",
        spans as f64 / (2 * runs + 3) as f64
    );
}
