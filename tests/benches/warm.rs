//! Warm sessions, embedded half: prints figures, asserts nothing about
//! speed.
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench warm`
//! (`RUNBOX_BENCH_ITERATIONS`, default 300).
//!
//! `exec("true")` in a warm session vs `bash -c true` spawned directly
//! (the target: the warm command costs less than spawning bash, ratio < 1
//! at p50), with oneshot `exec("true")` for reference; interleaved, so
//! drift on a noisy machine hits every series alike. Both sessions use the
//! embedded store with and without fsync; one more warm session has its
//! store in memory (`/dev/shm`, where there is one), which tells the file
//! system's share of a warm command from the rest (CPU and hand-offs).

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

async fn warm_vs_spawn(iterations: usize) {
    let durable_dir = tempfile::tempdir().expect("tempdir");
    let fast_dir = tempfile::tempdir().expect("tempdir");
    let (durable, durable_warm, durable_oneshot) = sessions(durable_dir.path(), true).await;
    let (fast, fast_warm, fast_oneshot) = sessions(fast_dir.path(), false).await;
    let memory_dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let (memory, memory_warm, _) = sessions(memory_dir.path(), false).await;
    let mut series: Vec<(&str, Vec<Duration>)> = [
        "warm exec true (fsync)",
        "warm exec true (no fsync)",
        "oneshot exec true (fsync)",
        "oneshot exec true (no fsync)",
        "bash -c true",
        "warm, store in memory",
    ]
    .into_iter()
    .map(|name| (name, Vec::with_capacity(iterations)))
    .collect();
    let spawn_bash = || {
        let t = Instant::now();
        let status = std::process::Command::new("bash")
            .args(["-c", "true"])
            .status()
            .expect("bash");
        assert!(status.success());
        t.elapsed()
    };
    // Warm-up: page cache, the warm executions' start.
    for _ in 0..20 {
        for s in [
            &durable_warm,
            &fast_warm,
            &durable_oneshot,
            &fast_oneshot,
            &memory_warm,
        ] {
            s.exec("true").await.expect("exec");
        }
        spawn_bash();
    }
    let sessions = [&durable_warm, &fast_warm, &durable_oneshot, &fast_oneshot];
    for _ in 0..iterations {
        for (slot, session) in sessions.iter().enumerate() {
            let t = Instant::now();
            let r = session.exec("true").await.expect("exec");
            series[slot].1.push(t.elapsed());
            assert_eq!(r.exit_code, 0, "{r:?}");
        }
        let spawned = spawn_bash();
        series[4].1.push(spawned);
        let t = Instant::now();
        let r = memory_warm.exec("true").await.expect("exec");
        series[5].1.push(t.elapsed());
        assert_eq!(r.exit_code, 0, "{r:?}");
    }
    for (_, samples) in &mut series {
        samples.sort();
    }
    let bash_p50 = percentile(&series[4].1, 0.5);
    let bash_p99 = percentile(&series[4].1, 0.99);
    println!("warm vs bash spawn, {iterations} interleaved iterations");
    println!(
        "{:<30} {:>9} {:>9} {:>12} {:>12}",
        "series", "p50 ms", "p99 ms", "p50 / bash", "p99 / bash"
    );
    for (name, samples) in &series {
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        println!(
            "{name:<30} {:>9.3} {:>9.3} {:>12.2} {:>12.2}",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / bash_p50.as_secs_f64(),
            p99.as_secs_f64() / bash_p99.as_secs_f64(),
        );
    }
    let warm_p50 = percentile(&series[1].1, 0.5);
    println!(
        "target: warm exec p50 below a bare bash spawn (ratio < 1): {:.2} ({})",
        warm_p50.as_secs_f64() / bash_p50.as_secs_f64(),
        if warm_p50 < bash_p50 {
            "met"
        } else {
            "not met"
        }
    );
    for client in [&durable, &fast, &memory] {
        for id in ["warm", "oneshot"] {
            client.close_session(id).await.expect("close");
        }
        client.shutdown().await;
    }
}
