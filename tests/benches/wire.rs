//! Completion latency on the production wire (fake-gcs-server + Google's
//! Pub/Sub emulator): prints figures, asserts nothing about speed.
//!
//! Run with `infra/local/install-emulators && cargo bench -p runbox-tests --bench wire`.
//!
//! For each execution it measures the time from the result object's write
//! completing to the caller's future resolving (with the result read), for:
//! - the floor: a bare subscriber, upload → notification received;
//! - runbox's event path: PubSubEventSource → Notifier → Waiters → read;
//! - the predecessor's polling: read the result object every 1 s / every 2 s.
//!
//! The floor and the event path are sampled alternately, one execution at a
//! time, so both see the same emulator state; the pollers run their
//! executions concurrently (their latency is set by the period, not load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use gcloud_pubsub::subscription::SubscriptionConfig;
use runbox_core::store::{PutOptions, Store};
use runbox_core::{InstanceId, layout};
use runbox_notifier::{Notifier, Waiters};
use runbox_tests::harness::Emulators;
use tokio::sync::mpsc;

const RESULT: &[u8] = br#"{"executionId":"x","status":"SUCCEEDED","exitCode":0}"#;

fn samples() -> usize {
    std::env::var("RUNBOX_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = samples();
    println!("starting the emulators...");
    let emu = Emulators::start().await?;
    let store: Arc<dyn Store> = Arc::new(emu.store());

    // Bare subscriber: its own subscription, acks everything, reports when
    // each object's notification arrived.
    let client = emu.pubsub_client().await?;
    let bare = client.subscription("bench-floor");
    bare.create(
        &client.fully_qualified_topic_name(&emu.topic),
        SubscriptionConfig::default(),
        None,
    )
    .await?;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut stream = bare.subscribe(None).await?;
    tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let at = Instant::now();
            let name = msg
                .message
                .attributes
                .get("objectId")
                .cloned()
                .unwrap_or_default();
            let _ = msg.ack().await;
            if arrived_tx.send((name, at)).is_err() {
                break;
            }
        }
    });

    // runbox's event path, as the Client assembles it.
    let instance = InstanceId::random();
    let source = emu.event_source(&instance).await?;
    let subscription = source.subscription();
    let waiters = Waiters::new();
    let notifier = Notifier::spawn(Box::new(source), waiters.clone(), store.clone());

    let mut floor = Vec::with_capacity(n);
    let mut event = Vec::with_capacity(n);
    println!("sampling the floor and the event path ({n} each, alternating)...");
    for _ in 0..n {
        // Floor.
        let id = instance.next_execution_id();
        let name = layout::result(&id);
        store
            .put(&name, Bytes::from_static(RESULT), PutOptions::create())
            .await?;
        let written = Instant::now();
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("bare subscriber stopped"))?;
            if got == name {
                floor.push(at - written);
                break;
            }
        }
        // Event path: register, write, resolve, read.
        let id = instance.next_execution_id();
        let name = layout::result(&id);
        let waiter = waiters.register(id.clone())?;
        store
            .put(&name, Bytes::from_static(RESULT), PutOptions::create())
            .await?;
        let written = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), waiter).await??;
        store.get(&name).await?;
        event.push(written.elapsed());
    }

    println!("running the 1 s and 2 s pollers ({n} executions each, concurrently)...");
    let poll_1s = pollers(store.clone(), &instance, n, Duration::from_secs(1)).await?;
    let poll_2s = pollers(store.clone(), &instance, n, Duration::from_secs(2)).await?;

    println!();
    println!("== result write complete -> caller resolved (N={n} per row)");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p90", "p99", "max"
    );
    let rows = [
        ("floor: bare subscriber, upload -> received", floor),
        ("runbox event path (notifier + result read)", event),
        ("polling every 1 s (predecessor)", poll_1s),
        ("polling every 2 s (predecessor)", poll_2s),
    ];
    let mut stats = Vec::new();
    for (label, mut v) in rows {
        v.sort();
        let s = Stats::of(&v);
        println!(
            "{label:<44} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms",
            s.p50, s.p90, s.p99, s.max
        );
        stats.push(s);
    }
    let (fl, ev, p1, p2) = (&stats[0], &stats[1], &stats[2], &stats[3]);
    println!(
        "event path over the floor: p50 {:+.1} ms (target <= 5), p99 {:+.1} ms (target <= 20)",
        ev.p50 - fl.p50,
        ev.p99 - fl.p99
    );
    println!(
        "speed-up at p50: {:.1}x vs the 1 s poller (target >= 10x), {:.1}x vs the 2 s poller (target >= 20x)",
        p1.p50 / ev.p50,
        p2.p50 / ev.p50
    );
    println!("notifier counters: {:?}", notifier.stats());

    notifier.shutdown().await;
    subscription.delete().await?;
    bare.delete(None).await?;
    Ok(())
}

/// The predecessor's design: after launching, read the result object every
/// `period` until it exists. Each execution's result is written at a random
/// moment within three periods of its poller starting, as a command's
/// run time would fall.
async fn pollers(
    store: Arc<dyn Store>,
    instance: &InstanceId,
    n: usize,
    period: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = Vec::with_capacity(n);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    for _ in 0..n {
        // xorshift: a spread of start and write offsets without an RNG crate.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let start = period.mul_f64((seed % 1000) as f64 / 1000.0);
        let run = period.mul_f64(3.0 * ((seed >> 20) % 1000) as f64 / 1000.0);
        let name = layout::result(&instance.next_execution_id());
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let writer = {
                let store = store.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(run).await;
                    store
                        .put(&name, Bytes::from_static(RESULT), PutOptions::create())
                        .await
                        .map(|_| Instant::now())
                })
            };
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if store.get(&name).await.is_ok() {
                    let found = Instant::now();
                    let written = writer.await??;
                    return anyhow::Ok(found.saturating_duration_since(written));
                }
            }
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(sorted: &[Duration]) -> Self {
        let at = |p: f64| {
            let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            sorted[i].as_secs_f64() * 1000.0
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}
