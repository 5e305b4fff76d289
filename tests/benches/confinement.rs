//! The cost of confining commands: embedded `runbox exec -- true` with
//! Landlock (the default) and with `RUNBOX_LANDLOCK=off`, in the workspace
//! namespace and without it (`RUNBOX_WORKSPACE_NAMESPACE=off`, where the
//! ruleset is built by a re-exec of the executor and lists the entries
//! beside the way to `RUNBOX_HOME`). The four series alternate in one run;
//! prints p50, p99 and each Landlock series' ratio to its baseline. Asserts
//! nothing beyond the commands succeeding.
//!
//! Run with `cargo bench -p runbox-tests --bench confinement`;
//! `RUNBOX_BENCH_CONFINEMENT_RUNS` sets the runs per series (default 100).

use std::path::Path;
use std::time::{Duration, Instant};

use runbox_tests::embedded::binary;

/// One series: its label and its settings.
struct Series {
    label: &'static str,
    namespace: &'static str,
    landlock: &'static str,
    times: Vec<Duration>,
}

fn exec(home: &Path, series: &Series) -> Duration {
    let mut command = std::process::Command::new(binary("runbox"));
    command
        .args(["exec", "-s", "bench", "--", "true"])
        .env("RUNBOX_HOME", home)
        .env("RUNBOX_EXECUTOR", binary("runbox-executor"))
        .env("RUNBOX_WORKSPACE_NAMESPACE", series.namespace)
        .env("RUNBOX_LANDLOCK", series.landlock)
        .stdin(std::process::Stdio::null());
    let started = Instant::now();
    let out = command.output().expect("run runbox");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        series.label,
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn percentile(times: &[Duration], p: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("RUNBOX_BENCH_CONFINEMENT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let abi = runbox_executor::confine::supported_abi();
    println!("Landlock ABI here: {abi:?} (the ruleset uses up to V3)");
    let home = tempfile::tempdir().expect("tempdir");
    let mut series = [
        ("namespace, no Landlock", "auto", "off"),
        ("namespace, Landlock", "auto", "auto"),
        ("no namespace, no Landlock", "off", "off"),
        ("no namespace, Landlock", "off", "auto"),
    ]
    .map(|(label, namespace, landlock)| Series {
        label,
        namespace,
        landlock,
        times: Vec::with_capacity(runs),
    });
    // Warm-up: the first executor probes for namespaces and remembers it.
    for s in &series {
        exec(home.path(), s);
    }
    for _ in 0..runs {
        for s in &mut series {
            let t = exec(home.path(), s);
            s.times.push(t);
        }
    }
    println!("embedded `runbox exec -- true`, {runs} runs per series, alternating:");
    for pair in series.chunks(2) {
        let [base, confined] = pair else { continue };
        let (b50, b99) = (percentile(&base.times, 0.5), percentile(&base.times, 0.99));
        let (c50, c99) = (
            percentile(&confined.times, 0.5),
            percentile(&confined.times, 0.99),
        );
        println!("  {:<26} p50 {b50:7.2} ms  p99 {b99:7.2} ms", base.label);
        println!(
            "  {:<26} p50 {c50:7.2} ms  p99 {c99:7.2} ms  (x{:.3} p50, {:+.2} ms; x{:.3} p99)",
            confined.label,
            c50 / b50,
            c50 - b50,
            c99 / b99
        );
    }
}
