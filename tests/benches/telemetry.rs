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
//! run includes the CLI's set-up (its connection, opened while it works),
//! the spans of the CLI and of the executor, recorded in memory, and the
//! CLI's export at exit; the executor's export follows its result, so it
//! only competes with the CLI for the CPU. Figures: p50, p99 and mean of each,
//! and the differences (target: at most 0.5 ms extra at p50), with traces
//! alone and metrics alone as two more series to say which signal costs.
//!
//! Beside it, the library in this process: `Client::session(..).exec("true")`
//! on the embedded backend, on a runtime whose threads have a subscriber
//! exporting runbox's spans (`runbox_core::logging::traces_dispatch`, and
//! executors told the same endpoint) vs on a runtime with none, the two
//! interleaved. A library process exports in the background, so no export
//! is waited for here; the spans are flushed once, at the end.
//! `RUNBOX_BENCH_RUNS` sets the runs per variant (default 100).
//!
//! Each extra is given as the p50 of paired differences (run n of a series
//! minus run n of the series without telemetry, taken one after the
//! other), with its quartiles, beside the difference of the two series'
//! own p50s: on a shared, loaded machine the latter swings by more than
//! the cost measured. The load average is printed at the start and end.

// The receiver is shared with tests/telemetry.rs; this uses only part of it.
#[allow(dead_code)]
#[path = "../tests/otlp_receiver/mod.rs"]
mod otlp_receiver;

use std::time::{Duration, Instant};

use runbox_core::logging::{TelemetryConfig, traces_dispatch};
use runbox_dispatcher::Client;
use runbox_tests::cli::Cli;
use runbox_tests::embedded;

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
    /// The samples in the order they were taken: the nth of two series ran
    /// side by side, so their difference saw the same machine.
    in_order: Vec<Duration>,
}

fn figures(in_order: Vec<Duration>) -> Figures {
    let mut samples = in_order.clone();
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Figures {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        mean,
        in_order,
    }
}

/// `on` against `off`, run by run: the p25, p50 and p75 of the paired
/// differences in ms, and the p50 of the paired ratios. On a loaded machine
/// two series' own p50s drift apart by more than the cost measured; a
/// pair's two runs follow each other, so their difference mostly does not.
fn paired(on: &Figures, off: &Figures) -> (f64, f64, f64, f64) {
    let mut diffs: Vec<f64> = on
        .in_order
        .iter()
        .zip(&off.in_order)
        .map(|(a, b)| ms(*a) - ms(*b))
        .collect();
    let mut ratios: Vec<f64> = on
        .in_order
        .iter()
        .zip(&off.in_order)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    diffs.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    let at = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (
        at(&diffs, 0.25),
        at(&diffs, 0.5),
        at(&diffs, 0.75),
        at(&ratios, 0.5),
    )
}

/// The load averages, as `uptime` prints them.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn print_pair(label: &str, on: &Figures, off: &Figures) {
    let (p25, p50, p75, ratio) = paired(on, off);
    println!(
        "  {label} paired p50 {p50:+7.3} ms (p25 {p25:+.3}, p75 {p75:+.3}), paired ratio p50 {ratio:.3}; series p50s {:+.3} ms apart (ratio {:.3})",
        ms(on.p50) - ms(off.p50),
        on.p50.as_secs_f64() / off.p50.as_secs_f64()
    );
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

thread_local! {
    /// The traced runtime's subscriber, set on each of its threads.
    static TRACED: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// A runtime like the CLI's: two workers; `dispatch`, when given, is the
/// default subscriber of each of its threads.
fn runtime(dispatch: Option<tracing::Dispatch>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if let Some(dispatch) = dispatch {
        builder
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&dispatch);
                TRACED.with(|t| *t.borrow_mut() = Some(guard));
            })
            .on_thread_stop(|| TRACED.with(|t| *t.borrow_mut() = None));
    }
    builder.build().expect("runtime")
}

/// One `exec("true")` through `client`, on `runtime`, in `dispatch`'s span
/// context when given.
fn one_library_exec(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    dispatch: Option<&tracing::Dispatch>,
) -> Duration {
    let run = || {
        runtime.block_on(async {
            let session = client.session("bench").expect("session");
            let started = Instant::now();
            let result = session.exec("true").await.expect("exec");
            let elapsed = started.elapsed();
            assert_eq!(result.exit_code, 0, "{result:?}");
            elapsed
        })
    };
    match dispatch {
        Some(d) => tracing::dispatcher::with_default(d, run),
        None => run(),
    }
}

/// The library series: (off, exporting, spans the executors and the
/// library sent).
fn library_series(runs: usize, endpoint: &str) -> (Figures, Figures) {
    let plain = runtime(None);
    let config = TelemetryConfig::from_lookup("runbox-bench", |name| {
        (name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| endpoint.to_owned())
    })
    .expect("telemetry config");
    // The exporter's channel runs on the plain runtime, which outlives the
    // flush below.
    let (telemetry, dispatch) = {
        let _entered = plain.enter();
        traces_dispatch(&config)
            .expect("build the exporter")
            .expect("traces are on")
    };
    let traced = runtime(Some(dispatch.clone()));
    let off_home = tempfile::tempdir().expect("tempdir");
    let on_home = tempfile::tempdir().expect("tempdir");
    let off = plain
        .block_on(Client::from_config(embedded::config(off_home.path())))
        .expect("client");
    let on = traced
        .block_on(Client::from_config(
            embedded::config(on_home.path())
                .with_executor_setting("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ))
        .expect("client");
    // Traced first: tracing settles a call site's interest with the
    // subscriber in effect when it is first hit, and no subscriber at all
    // would leave runbox's spans disabled for the whole process.
    for _ in 0..3 {
        one_library_exec(&traced, &on, Some(&dispatch));
        one_library_exec(&plain, &off, None);
    }
    let (mut off_samples, mut on_samples) = (Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            off_samples.push(one_library_exec(&plain, &off, None));
            on_samples.push(one_library_exec(&traced, &on, Some(&dispatch)));
        } else {
            on_samples.push(one_library_exec(&traced, &on, Some(&dispatch)));
            off_samples.push(one_library_exec(&plain, &off, None));
        }
    }
    traced.block_on(on.shutdown());
    plain.block_on(off.shutdown());
    // Tasks of the client still hold spans until their runtime goes.
    drop(on);
    drop(traced);
    plain.block_on(telemetry.shutdown());
    (figures(off_samples), figures(on_samples))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let load_before = load();
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
    println!("  extra over telemetry off (target: at most +0.5 ms at p50):");
    print_pair("exporting   ", &on, &off);
    print_pair("traces only ", &traces, &off);
    print_pair("metrics only", &metrics, &off);
    println!(
        "  spans received: {spans} ({:.1} per traced run)",
        spans as f64 / (2 * runs + 3) as f64
    );

    let library_endpoint = endpoint.to_owned();
    let (lib_off, lib_on) =
        tokio::task::spawn_blocking(move || library_series(runs, &library_endpoint))
            .await
            .expect("library series");
    let lib_received = receiver.spans();
    let lib_received = &lib_received[spans..];
    let lib_spans = lib_received.len();
    let mut by_service = std::collections::BTreeMap::<&str, usize>::new();
    for s in lib_received {
        *by_service.entry(s.service.as_str()).or_default() += 1;
    }
    println!("library: `Client` exec(\"true\"), embedded, in this process, {runs} runs each");
    for (name, f) in [
        ("telemetry off    ", &lib_off),
        ("exporting (OTLP) ", &lib_on),
    ] {
        println!(
            "  {name} p50 {:7.2} ms  p99 {:7.2} ms  mean {:7.2} ms",
            ms(f.p50),
            ms(f.p99),
            ms(f.mean)
        );
    }
    print_pair("exporting   ", &lib_on, &lib_off);
    println!(
        "  spans received: {lib_spans} ({:.1} per traced exec; by service {by_service:?})",
        lib_spans as f64 / (runs + 3) as f64
    );
    println!(
        "load average (1, 5, 15 min): {load_before} at the start, {} at the end",
        load()
    );
}
