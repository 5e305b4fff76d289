//! Commands on one session through the Cloud Run launcher, on the full
//! emulator stack (the `runbox-cloudrun-emulator` binary with
//! `--start-delay`, executors on the gcp backend, results and chunks in
//! fake-gcs-server, their notifications through Google's Pub/Sub emulator).
//! Prints figures, asserts nothing about speed.
//!
//! Run with `cargo build --release && infra/local/install-emulators && cargo bench -p runbox-tests --bench session_latency`
//! (`RUNBOX_BENCH_N` commands, default 100; `RUNBOX_BENCH_START_DELAY`,
//! default `2s`).
//!
//! 1. Oneshot mode: N sequential `exec("true")` on one session: wall time,
//!    RunJob calls read from the emulator's `--stats-file`, exec p50/p99,
//!    beside the notification floor measured in the same run (a bare
//!    subscriber on the notifications topic: upload → notification
//!    received).
//! 2. Warm mode: the same N commands on a warm session (one execution fed
//!    over the commands topic): wall time and its ratio to oneshot's
//!    (target: warm at least 20 times faster), RunJob calls (target: at
//!    most 1), exec p50/p99 beside the same floor (target: p50 within
//!    50 ms of it).
//! 3. Output while it runs: a command that prints, then sleeps 2 s: time
//!    from submission to its first chunk vs to its result.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use gcloud_pubsub::subscription::SubscriptionConfig;
use runbox_core::store::{PutOptions, Store};
use runbox_core::{Config, InstanceId, layout};
use runbox_dispatcher::{Client, ExecStatus, SessionMode, SessionSettings};
use runbox_tests::embedded::binary;
use runbox_tests::harness::Emulators;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const IMAGE: &str = "runbox-executor";
const JOB: &str = "projects/bench/locations/local/jobs/runbox";
const COMMANDS_TOPIC: &str = "runbox-commands";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<46} p50 {:>9.1} ms   p99 {:>9.1} ms   max {:>9.1} ms",
        ms(pct(&samples, 0.5)),
        ms(pct(&samples, 0.99)),
        ms(samples[samples.len() - 1])
    );
}

/// `{"runJobCalls": N}` from the emulator's stats file; 0 before the
/// first call (the file does not exist yet).
fn run_job_calls(path: &Path) -> anyhow::Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["runJobCalls"]
        .as_u64()
        .context("runJobCalls in the stats file")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("RUNBOX_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let delay = std::env::var("RUNBOX_BENCH_START_DELAY").unwrap_or_else(|_| "2s".to_owned());
    println!("starting the emulators...");
    let emu = Emulators::start().await?;
    emu.pubsub_client()
        .await?
        .topic(COMMANDS_TOPIC)
        .create(None, None)
        .await?;
    let dir = tempfile::tempdir()?;
    let stats = dir.path().join("cloudrun-stats.json");

    // The Cloud Run emulator as a process, as `infra/local/up` runs it; its
    // tasks inherit its environment: the gcp backend on the emulators.
    let mut executor_env = emu.env();
    executor_env.insert(
        "RUNBOX_HOME".into(),
        dir.path().join("executor").display().to_string(),
    );
    let mut cloudrun = Command::new(binary("runbox-cloudrun-emulator"))
        .args(["--listen", "127.0.0.1:0", "--start-delay", &delay])
        .arg("--image")
        .arg(format!("{IMAGE}={}", binary("runbox-executor").display()))
        .arg("--job")
        .arg(format!("{JOB}={IMAGE}"))
        .arg("--stats-file")
        .arg(&stats)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(&executor_env)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start runbox-cloudrun-emulator")?;
    let mut lines = BufReader::new(cloudrun.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("the emulator's address line")?;
    let addr = first
        .strip_prefix("listening on ")
        .context("address line")?
        .to_owned();

    let mut env: BTreeMap<String, String> = emu.env();
    env.insert(
        "RUNBOX_HOME".into(),
        dir.path().join("client").display().to_string(),
    );
    env.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
    env.insert("RUNBOX_CLOUD_RUN_JOB".into(), JOB.into());
    env.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), format!("http://{addr}"));
    env.insert("RUNBOX_COMMANDS_TOPIC".into(), COMMANDS_TOPIC.into());
    let client = Client::from_config(Config::from_lookup(&env)?).await?;
    let session = client.session("bench")?;

    // 1. Oneshot: N sequential short commands.
    println!("running {n} sequential commands on one session (start delay {delay})...");
    let calls_before = run_job_calls(&stats)?;
    let mut execs = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let r = session.exec("true").await?;
        anyhow::ensure!(r.exec_status() == ExecStatus::Succeeded, "{r:?}");
        execs.push(t.elapsed());
    }
    let wall = wall.elapsed();
    let calls = run_job_calls(&stats)? - calls_before;

    // 2. Warm: the same N commands on a warm session.
    println!("running {n} sequential commands on one warm session...");
    client
        .create_session_with("bench-warm", SessionSettings::new(SessionMode::Warm))
        .await?;
    let warm = client.session("bench-warm")?;
    let warm_calls_before = run_job_calls(&stats)?;
    let mut warm_execs = Vec::with_capacity(n);
    let warm_wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let r = warm.exec("true").await?;
        anyhow::ensure!(r.exec_status() == ExecStatus::Succeeded, "{r:?}");
        warm_execs.push(t.elapsed());
    }
    let warm_wall = warm_wall.elapsed();
    let warm_calls = run_job_calls(&stats)? - warm_calls_before;
    client.close_session("bench-warm").await?;

    // The floor, in the same run: a bare subscriber's upload → received.
    let floor = floor(&emu, n.min(100)).await?;

    // 2. First chunk vs result.
    let samples = 5;
    println!("sampling time to first chunk vs result ({samples} commands: echo, then sleep 2)...");
    let (mut first_chunk, mut result) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        let (mut output, running) = session.exec("echo started; sleep 2").streaming();
        let running = tokio::spawn(running);
        let chunk = output.next().await.context("a first chunk")?;
        anyhow::ensure!(&chunk.data[..] == b"started\n", "{chunk:?}");
        first_chunk.push(t.elapsed());
        running.await??;
        result.push(t.elapsed());
    }

    println!();
    println!(
        "== oneshot, Cloud Run launcher, --start-delay {delay} (N={n}, sequential, one session)"
    );
    println!(
        "wall time {:.1} s ({:.1} ms per command); RunJob calls (emulator counter): {calls}",
        wall.as_secs_f64(),
        ms(wall) / n as f64
    );
    row("exec(\"true\") submit -> result", execs.clone());
    row("notification floor: upload -> received", floor.clone());
    let (mut e, mut f) = (execs, floor);
    e.sort();
    f.sort();
    println!(
        "exec over the floor: p50 {:+.1} ms, p99 {:+.1} ms (the start delay is inside the exec)",
        ms(pct(&e, 0.5)) - ms(pct(&f, 0.5)),
        ms(pct(&e, 0.99)) - ms(pct(&f, 0.99)),
    );
    println!("== warm, the same stack and floor (N={n}, sequential, one session)");
    println!(
        "wall time {:.1} s ({:.1} ms per command); RunJob calls (emulator counter): {warm_calls} (target <= 1)",
        warm_wall.as_secs_f64(),
        ms(warm_wall) / n as f64
    );
    println!(
        "oneshot / warm wall time: {:.1}x (target >= 20x)",
        wall.as_secs_f64() / warm_wall.as_secs_f64()
    );
    row("warm exec(\"true\") submit -> result", warm_execs.clone());
    // The first command includes the start delay; the rest reach the
    // running execution.
    row("warm, commands 2..N", warm_execs[1..].to_vec());
    let mut w = warm_execs[1..].to_vec();
    w.sort();
    println!(
        "warm (2..N) over the floor: p50 {:+.1} ms (target <= +50 ms), p99 {:+.1} ms",
        ms(pct(&w, 0.5)) - ms(pct(&f, 0.5)),
        ms(pct(&w, 0.99)) - ms(pct(&f, 0.99)),
    );
    println!("== output while it runs: `echo started; sleep 2` (N={samples})");
    row("submit -> first chunk", first_chunk.clone());
    row("submit -> result", result.clone());
    first_chunk.sort();
    result.sort();
    println!(
        "first chunk / result at p50: {:.2}",
        pct(&first_chunk, 0.5).as_secs_f64() / pct(&result, 0.5).as_secs_f64()
    );

    client.shutdown().await;
    cloudrun.start_kill()?;
    cloudrun.wait().await?;
    Ok(())
}

/// Upload → notification received by a bare subscriber of its own, `n`
/// times, one at a time.
async fn floor(emu: &Emulators, n: usize) -> anyhow::Result<Vec<Duration>> {
    let store: Arc<dyn Store> = Arc::new(emu.store());
    let client = emu.pubsub_client().await?;
    let sub = client.subscription(&format!("bench-floor-{}", InstanceId::random()));
    sub.create(
        &client.fully_qualified_topic_name(&emu.topic),
        SubscriptionConfig::default(),
        None,
    )
    .await?;
    let (tx, mut arrived) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut stream = sub.subscribe(None).await?;
    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let at = Instant::now();
            let name = msg
                .message
                .attributes
                .get("objectId")
                .cloned()
                .unwrap_or_default();
            let _ = msg.ack().await;
            if tx.send((name, at)).is_err() {
                break;
            }
        }
    });
    let ids = InstanceId::random();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = layout::result(&ids.next_execution_id());
        store
            .put(&name, Bytes::from_static(b"{}"), PutOptions::create())
            .await?;
        let written = Instant::now();
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                .await?
                .context("the floor subscriber stopped")?;
            if got == name {
                out.push(at - written);
                break;
            }
        }
    }
    reader.abort();
    let _ = sub.delete(None).await;
    Ok(out)
}
