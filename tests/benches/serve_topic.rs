//! The request topic of `runbox serve` vs the library, on the emulator
//! stack (Pub/Sub emulator, fake-gcs-server, local launcher), in one run:
//! N requests over N/10 sessions (at most 100) published at once by
//! Google's Python client, then the same commands submitted at once
//! through the library. Prints throughput, publish → completion p50/p99,
//! lost requests and whether each session kept its order; asserts nothing
//! about speed.
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench serve_topic`
//! (`RUNBOX_BENCH_TOPIC_REQUESTS`, default 1000).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use runbox_core::Config;
use runbox_dispatcher::{Client, ExecStatus};
use runbox_tests::harness::Emulators;
use runbox_tests::serve::{Serve, bounded};

fn main() {
    let requests: usize = std::env::var("RUNBOX_BENCH_TOPIC_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(topic_vs_library(requests)) {
        eprintln!("serve_topic bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn env_of(emu: &Emulators, home: &Path) -> BTreeMap<String, String> {
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        runbox_tests::embedded::binary("runbox-executor")
            .display()
            .to_string(),
    );
    env
}

async fn topic_vs_library(requests: usize) -> anyhow::Result<()> {
    let sessions = (requests / 10).clamp(1, 100);
    let per = requests / sessions;
    let requests = sessions * per;
    let emu = bounded(120, Emulators::start()).await??;
    let host = emu.pubsub_host.clone().context("pubsub")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/serve_topic.py");
    let python = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&script)
            .args(args)
            .env("PUBSUB_EMULATOR_HOST", &host)
            .kill_on_drop(true);
        cmd
    };
    let out = bounded(
        120,
        python(&["setup", &emu.project, "bench", "60"]).output(),
    )
    .await??;
    if !out.status.success() {
        bail!("setup: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Over the topic.
    let serve_home = tempfile::tempdir()?;
    let mut env = env_of(&emu, serve_home.path());
    env.insert(
        "RUNBOX_REQUESTS_SUBSCRIPTION".into(),
        "bench-requests".into(),
    );
    env.insert(
        "RUNBOX_COMPLETIONS_TOPIC".into(),
        "bench-completions".into(),
    );
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut serve = Serve::start("127.0.0.1:0", &vars).await?;
    let (s, p) = (sessions.to_string(), per.to_string());
    let out = bounded(
        900,
        python(&["load", &emu.project, "bench", &s, &p, "600"]).output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("summary").cloned())
        .with_context(|| {
            format!(
                "no summary: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    serve.terminate();
    serve.wait().await;
    let completed = summary["completed"].as_u64().unwrap_or(0) as usize;
    let topic_secs = summary["seconds"].as_f64().unwrap_or(f64::NAN);
    let expected: String = (1..=per).map(|i| format!("{i}\n")).collect();
    let topic_order = summary["completion_order_kept"].as_bool() == Some(true)
        && summary["logs"]
            .as_object()
            .is_some_and(|logs| logs.len() == sessions && logs.values().all(|l| l == &expected));
    let topic_p50 = summary["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let topic_p99 = summary["p99_ms"].as_f64().unwrap_or(f64::NAN);

    // The same commands through the library, submitted at once.
    let lib_home = tempfile::tempdir()?;
    let config = Config::from_lookup(&env_of(&emu, lib_home.path()))?;
    let client = Client::from_config(config).await?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 1..=per {
        for s in 0..sessions {
            let exec = client
                .session(&format!("lib-{s}"))?
                .exec(format!("echo {i} >> log.txt; echo {i}"));
            let submitted = Instant::now();
            let future = std::future::IntoFuture::into_future(exec);
            tasks.push(tokio::spawn(async move {
                let r = future.await;
                (r, submitted.elapsed())
            }));
        }
    }
    let mut lib_latencies = Vec::with_capacity(requests);
    let mut lib_ok = 0;
    for task in tasks {
        let (result, took) = bounded(900, task).await??;
        if result.is_ok_and(|r| r.exec_status() == ExecStatus::Succeeded) {
            lib_ok += 1;
        }
        lib_latencies.push(took.as_secs_f64() * 1000.0);
    }
    let lib_secs = start.elapsed().as_secs_f64();
    let mut lib_order = true;
    for s in 0..sessions {
        let log = bounded(60, client.session(&format!("lib-{s}"))?.exec("cat log.txt")).await??;
        lib_order &= log.stdout == expected;
    }
    client.shutdown().await;
    lib_latencies.sort_by(f64::total_cmp);
    let (lib_p50, lib_p99) = (pct(&lib_latencies, 0.5), pct(&lib_latencies, 0.99));

    println!(
        "serve_topic: {requests} requests over {sessions} sessions ({per} each), emulator stack, local launcher"
    );
    println!(
        "  topic:   {:8.1} req/s  publish->completion p50 {:8.1} ms  p99 {:8.1} ms  lost {}  statuses {}  order kept {}  duplicate completions {}",
        requests as f64 / topic_secs,
        topic_p50,
        topic_p99,
        requests - completed,
        summary["statuses"],
        topic_order,
        summary["duplicate_completions"],
    );
    println!(
        "  library: {:8.1} req/s  submit->result      p50 {:8.1} ms  p99 {:8.1} ms  failed {}  order kept {}",
        requests as f64 / lib_secs,
        lib_p50,
        lib_p99,
        requests - lib_ok,
        lib_order,
    );
    println!(
        "  topic/library: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}",
        (requests as f64 / topic_secs) / (requests as f64 / lib_secs),
        topic_p50 / lib_p50,
        topic_p99 / lib_p99,
    );
    Ok(())
}
