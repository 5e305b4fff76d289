//! Spine benchmark: prints figures, asserts nothing about speed.
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench spine`
//! (the build step provides the `runbox-executor` binary the embedded
//! launcher starts; cargo bench builds only this package's targets).
//!
//! 1. Wall time of `exec("true")` through the library on the embedded
//!    backend vs `bash -c true` spawned directly, in the same run.
//! 2. Waiters: register + complete per second on one thread with 100k
//!    pending, and heap bytes per pending waiter (counting allocator).
//! 3. The cost of `exec("true")` in a session with 0, 1,000 and 10,000
//!    exported variables (target: at most 50 ms over the empty session).
//! 4. Concurrency: 1,000 `runbox exec` processes at once over 100 sessions
//!    on the embedded backend (`RUNBOX_BENCH_PROCESSES` to change the
//!    count): wall time until the last one exits, and failures (must be 0).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use runbox_core::{ExecutionId, InstanceId};
use runbox_notifier::{ObjectEvent, Waiters};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    runtime.block_on(exec_vs_spawn(iterations));
    waiters_throughput();
    runtime.block_on(exported_variables(iterations.clamp(5, 30)));
    let processes: usize = std::env::var("RUNBOX_BENCH_PROCESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    runtime.block_on(concurrent_processes(processes, 100));
}

/// `processes` `runbox exec` CLI processes started at once, spread over
/// `sessions` sessions of one embedded home; each appends a line to its
/// session's file.
async fn concurrent_processes(processes: usize, sessions: usize) {
    let cli = runbox_tests::cli::Cli::new();
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|index| {
            let session = format!("s{}", index % sessions);
            let script = format!("echo {index} >> order");
            cli.command(&["exec", "-s", &session, "--", &script])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn runbox")
                .wait_with_output()
        })
        .collect();
    let outputs = futures::future::join_all(children).await;
    let wall = started.elapsed();
    let failed: Vec<String> = outputs
        .iter()
        .filter_map(|o| match o {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim_end().to_owned()),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    println!("== Concurrency ({processes} runbox exec processes at once, {sessions} sessions)");
    println!(
        "  wall {:.2} s, {:.1} commands/s, failures: {} (must be 0)",
        wall.as_secs_f64(),
        processes as f64 / wall.as_secs_f64(),
        failed.len()
    );
    if let Some(first) = failed.first() {
        println!("  first failure: {first}");
    }
}

async fn exec_vs_spawn(iterations: usize) {
    let durable_dir = tempfile::tempdir().expect("tempdir");
    let fast_dir = tempfile::tempdir().expect("tempdir");
    let durable =
        runbox_dispatcher::Client::from_config(runbox_tests::embedded::config(durable_dir.path()))
            .await
            .expect("embedded client");
    let fast = runbox_dispatcher::Client::from_config(
        runbox_tests::embedded::config(fast_dir.path()).with_local_sync(false),
    )
    .await
    .expect("embedded client");
    let durable_session = durable.session("bench").expect("session");
    let fast_session = fast.session("bench").expect("session");
    // Phase boundaries from the result's own timestamps (same clock, same
    // machine): submit → bash spawned → result being written → resolved.
    let mut phases: [Vec<Duration>; 3] = Default::default();
    let mut series = [
        ("runbox exec (fsync)", Vec::with_capacity(iterations)),
        ("runbox exec (no fsync)", Vec::with_capacity(iterations)),
        ("bash -c true", Vec::with_capacity(iterations)),
    ];
    // Warm-up: page cache, first-session state creation.
    for _ in 0..20 {
        durable_session.exec("true").await.expect("exec");
        fast_session.exec("true").await.expect("exec");
        std::process::Command::new("bash")
            .args(["-c", "true"])
            .status()
            .expect("bash");
    }
    // Interleaved, so drift on a noisy machine hits every series alike.
    for _ in 0..iterations {
        for (session, slot) in [(&durable_session, 0), (&fast_session, 1)] {
            let wall = std::time::SystemTime::now();
            let t = Instant::now();
            let r = session.exec("true").await.expect("exec");
            series[slot].1.push(t.elapsed());
            let resolved = std::time::SystemTime::now();
            assert_eq!(r.exit_code, 0);
            if slot == 0 {
                let at = |ts: Option<runbox_proto::Timestamp>| {
                    std::time::SystemTime::try_from(ts.expect("timestamp")).expect("time")
                };
                let (started, completed) = (at(r.started_at), at(r.completed_at));
                let span = |a: std::time::SystemTime, b: std::time::SystemTime| {
                    b.duration_since(a).unwrap_or_default()
                };
                phases[0].push(span(wall, started));
                phases[1].push(span(started, completed));
                phases[2].push(span(completed, resolved));
            }
        }
        let t = Instant::now();
        let status = tokio::process::Command::new("bash")
            .args(["-c", "true"])
            .status()
            .await
            .expect("bash");
        series[2].1.push(t.elapsed());
        assert!(status.success());
    }
    for (_, s) in series.iter_mut() {
        s.sort();
    }
    let (b50, b99) = (
        percentile(&series[2].1, 0.5),
        percentile(&series[2].1, 0.99),
    );
    println!(
        "== exec(\"true\") on the embedded backend vs bash -c true ({iterations} each, interleaved)"
    );
    for (label, s) in &series {
        let (p50, p99) = (percentile(s, 0.5), percentile(s, 0.99));
        println!(
            "{label:<24} p50 {:>8.3} ms   p99 {:>8.3} ms",
            ms(p50),
            ms(p99)
        );
    }
    for (label, s) in &series[..2] {
        let (p50, p99) = (percentile(s, 0.5), percentile(s, 0.99));
        println!(
            "{label:<24} overhead p50 {:>7.3} ms  p99 {:>7.3} ms  ratio p50 {:.2}x  (target: overhead <= 5 ms at p50)",
            ms(p50.saturating_sub(b50)),
            ms(p99.saturating_sub(b99)),
            p50.as_secs_f64() / b50.as_secs_f64(),
        );
    }
    let labels = [
        "submit -> bash spawned (request write, executor start, state read)",
        "bash spawned -> result write begins (bash, output, state write)",
        "result write begins -> future resolved (write, event, read)",
    ];
    println!("where the time goes (fsync series, p50 of each phase):");
    for (label, mut p) in labels.into_iter().zip(phases) {
        p.sort();
        println!("  {:>7.3} ms  {label}", ms(percentile(&p, 0.5)));
    }
    durable.shutdown().await;
    fast.shutdown().await;
}

fn event(id: &ExecutionId) -> ObjectEvent {
    ObjectEvent {
        bucket: "bench".to_owned(),
        name: runbox_core::layout::result(id),
        generation: 1,
        metadata: Default::default(),
    }
}

fn waiters_throughput() {
    const PENDING: usize = 100_000;
    const OPS: usize = 1_000_000;
    let instance = InstanceId::random();
    let pending_ids: Vec<ExecutionId> =
        (0..PENDING).map(|_| instance.next_execution_id()).collect();
    let op_ids: Vec<ExecutionId> = (0..OPS).map(|_| instance.next_execution_id()).collect();
    let events: Vec<ObjectEvent> = op_ids.iter().map(event).collect();

    let waiters = Waiters::with_capacity(PENDING + 1024);
    let before = ALLOCATED.load(Ordering::Relaxed);
    let held: Vec<_> = pending_ids
        .iter()
        .map(|id| waiters.register(id.clone()).expect("register"))
        .collect();
    let after = ALLOCATED.load(Ordering::Relaxed);
    // The Vec holding the futures is the caller's, not the table's.
    let holder = (held.capacity() * std::mem::size_of_val(&held[0])) as isize;
    let per_waiter = (after - before - holder) as f64 / PENDING as f64;
    let future_size = std::mem::size_of_val(&held[0]);

    let t = Instant::now();
    for (id, ev) in op_ids.iter().zip(events) {
        let waiter = waiters.register(id.clone()).expect("register");
        waiters.complete(id, ev);
        let out = waiter.now_or_never().expect("resolved at once");
        assert!(out.is_ok());
    }
    let elapsed = t.elapsed();
    assert_eq!(waiters.len(), PENDING);
    drop(held);
    println!("== Waiters (single thread, {PENDING} pending)");
    println!(
        "register+complete {:>10.0} /s   ({OPS} in {:.3} s; target >= 1,000,000 /s)",
        OPS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "heap per pending  {per_waiter:>10.1} B    (+ {future_size} B for the Waiter future the caller holds; target <= 256 B)"
    );
}

/// `exec("true")` in sessions holding many exported variables: restoring
/// and capturing them is on every command's path.
async fn exported_variables(iterations: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = runbox_dispatcher::Client::from_config(runbox_tests::embedded::config(dir.path()))
        .await
        .expect("embedded client");
    println!("== exec(\"true\") with many exported variables ({iterations} each, p50)");
    let mut empty = None;
    for count in [0usize, 1_000, 10_000] {
        let session = client.session(&format!("vars{count}")).expect("session");
        let t = Instant::now();
        let setup = format!("for i in $(seq {count}); do export BENCH_VAR_$i=value_$i; done");
        let r = session.exec(setup.as_str()).await.expect("exec");
        assert_eq!(r.exit_code, 0, "{r:?}");
        let exported = t.elapsed();
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let r = session.exec("true").await.expect("exec");
            times.push(t.elapsed());
            assert_eq!(r.exit_code, 0, "{r:?}");
        }
        let check = session
            .exec(format!("echo ${{BENCH_VAR_{count}:-none}}").as_str())
            .await
            .expect("exec");
        assert_eq!(
            check.stdout.trim(),
            if count == 0 {
                "none".to_owned()
            } else {
                format!("value_{count}")
            }
        );
        times.sort();
        let p50 = percentile(&times, 0.5);
        let base = *empty.get_or_insert(p50);
        println!(
            "{count:>6} variables: p50 {:>8.3} ms   over empty {:>8.3} ms (target <= 50 ms)   exporting them took {:>8.3} ms",
            ms(p50),
            ms(p50.saturating_sub(base)),
            ms(exported),
        );
    }
    client.shutdown().await;
}
