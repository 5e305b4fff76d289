//! Warm sessions, embedded half: prints figures, asserts nothing about
//! speed.
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench warm`
//! (`RUNBOX_BENCH_ITERATIONS`, default 300).
//!
//! `exec("true")` in a warm session vs `bash -c true` spawned directly
//! (the target: the warm command costs less than spawning bash, ratio < 1
//! at p50), with oneshot `exec("true")` for reference; interleaved, so
//! drift on a noisy machine hits every series alike. The first pass holds
//! the target's series: a warm session on the embedded store without
//! fsync, one with its store in memory (`/dev/shm`, where there is one),
//! which tells the file system's share of a warm command from the rest
//! (CPU and hand-offs), and the bash spawns. The second pass, with bash
//! spawns of its own, holds the series whose commands leave work behind
//! on the machine: a warm session with fsync, oneshot sessions with and
//! without.

use std::time::{Duration, Instant};

use runbox_dispatcher::{Client, Session, SessionMode, SessionSettings};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let iterations: usize = std::env::var("RUNBOX_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(warm_vs_spawn(iterations));
}

/// A client on a fresh embedded store (`sync`: fsync every write) and two
/// sessions in it, warm and oneshot.
async fn sessions(dir: &std::path::Path, sync: bool) -> (Client, Session, Session) {
    let client = Client::from_config(runbox_tests::embedded::config(dir).with_local_sync(sync))
        .await
        .expect("embedded client");
    let settings = SessionSettings::new(SessionMode::Warm)
        .with_idle_timeout(Duration::from_secs(600))
        .expect("settings");
    client
        .create_session_with("warm", settings)
        .await
        .expect("create warm session");
    client
        .create_session_with("oneshot", SessionSettings::new(SessionMode::Oneshot))
        .await
        .expect("create oneshot session");
    let warm = client.session("warm").expect("session");
    let oneshot = client.session("oneshot").expect("session");
    (client, warm, oneshot)
}

/// `bash -c true`, spawned and waited for.
fn spawn_bash() -> Duration {
    let t = Instant::now();
    let status = std::process::Command::new("bash")
        .args(["-c", "true"])
        .status()
        .expect("bash");
    assert!(status.success());
    t.elapsed()
}

/// Runs each series (a session's `exec("true")`, or a bash spawn for
/// `None`) in turn, `iterations` times after a warm-up, prints their
/// figures beside the bash spawn's, and returns each series' p50 ratio to
/// it.
async fn pass(title: &str, iterations: usize, entries: &[(&str, Option<&Session>)]) -> Vec<f64> {
    // Warm-up: page cache, the warm executions' start.
    for _ in 0..20 {
        for (_, session) in entries {
            match session {
                Some(s) => drop(s.exec("true").await.expect("exec")),
                None => drop(spawn_bash()),
            }
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(iterations); entries.len()];
    for _ in 0..iterations {
        for ((_, session), samples) in entries.iter().zip(&mut samples) {
            let took = match session {
                Some(s) => {
                    let t = Instant::now();
                    let r = s.exec("true").await.expect("exec");
                    let took = t.elapsed();
                    assert_eq!(r.exit_code, 0, "{r:?}");
                    took
                }
                None => spawn_bash(),
            };
            samples.push(took);
        }
    }
    for s in &mut samples {
        s.sort();
    }
    let bash = entries
        .iter()
        .position(|(_, s)| s.is_none())
        .expect("a bash series");
    let (bash_p50, bash_p99) = (
        percentile(&samples[bash], 0.5),
        percentile(&samples[bash], 0.99),
    );
    println!("{title}, {iterations} interleaved iterations");
    println!(
        "{:<30} {:>9} {:>9} {:>12} {:>12}",
        "series", "p50 ms", "p99 ms", "p50 / bash", "p99 / bash"
    );
    let mut ratios = Vec::new();
    for ((name, session), samples) in entries.iter().zip(&samples) {
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        let ratio = p50.as_secs_f64() / bash_p50.as_secs_f64();
        println!(
            "{name:<30} {:>9.3} {:>9.3} {:>12.2} {:>12.2}",
            ms(p50),
            ms(p99),
            ratio,
            p99.as_secs_f64() / bash_p99.as_secs_f64(),
        );
        if session.is_some() {
            ratios.push(ratio);
        }
    }
    ratios
}

async fn warm_vs_spawn(iterations: usize) {
    let durable_dir = tempfile::tempdir().expect("tempdir");
    let fast_dir = tempfile::tempdir().expect("tempdir");
    let (durable, durable_warm, durable_oneshot) = sessions(durable_dir.path(), true).await;
    let (fast, fast_warm, fast_oneshot) = sessions(fast_dir.path(), false).await;
    let memory_dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let (memory, memory_warm, _) = sessions(memory_dir.path(), false).await;
    // Two passes, each interleaved with its own bash spawns: a series that
    // fsyncs or spawns an executor per command leaves work behind (journal
    // commits, which stall the next file created anywhere on the file
    // system; an executor's exit) that would land on whichever series ran
    // next. The target's series run among themselves first.
    let target = pass(
        "warm vs bash spawn",
        iterations,
        &[
            ("warm exec true (no fsync)", Some(&fast_warm)),
            ("bash -c true", None),
            ("warm, store in memory", Some(&memory_warm)),
        ],
    )
    .await;
    println!(
        "target: warm exec p50 below a bare bash spawn (ratio < 1): {:.2} ({})",
        target[0],
        if target[0] < 1.0 { "met" } else { "not met" }
    );
    pass(
        "with fsync, and oneshot, vs bash spawn",
        iterations,
        &[
            ("warm exec true (fsync)", Some(&durable_warm)),
            ("bash -c true", None),
            ("oneshot exec true (fsync)", Some(&durable_oneshot)),
            ("oneshot exec true (no fsync)", Some(&fast_oneshot)),
        ],
    )
    .await;
    for client in [&durable, &fast, &memory] {
        for id in ["warm", "oneshot"] {
            client.close_session(id).await.expect("close");
        }
        client.shutdown().await;
    }
}
