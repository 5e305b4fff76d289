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
//! Then, through a whole `Client` (`exec` → engine → result), results in the
//! notification: for a small result (a few hundred bytes of output) and a
//! large one (1 MiB), the floor vs the client resolving from the result in
//! the event's metadata (`RUNBOX_RESULT_IN_METADATA=true`, the default) vs
//! the client reading the result object (`false`), plus how many result
//! objects each client read per command. A bench launcher stands in for the
//! executor: it writes the result object as the executor does (the
//! metadata encoding included) and notes when the write completed.
//!
//! The floor and the event path are sampled alternately, one execution at a
//! time, so both see the same emulator state; the pollers run their
//! executions concurrently (their latency is set by the period, not load).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use gcloud_pubsub::subscription::SubscriptionConfig;
use runbox_core::store::{PutOptions, Store};
use runbox_core::{Config, ExecutionId, InstanceId, layout, result_metadata};
use runbox_dispatcher::launcher::Observed;
use runbox_dispatcher::{
    Client, Ended, ExecResult, ExecStatus, ExecutionState, LaunchError, LaunchSpec, Launcher, Parts,
};
use runbox_notifier::{Notifier, Waiters};
use runbox_tests::counting_store::CountingStore;
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
    let (arrived_tx, arrived) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut floor_sub = Floor { arrived };
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
        floor.push(floor_sub.arrival(&name).await? - written);
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

    payload_in_notification(&emu, store.clone(), &mut floor_sub, n).await?;

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

/// The bare subscriber's arrivals.
struct Floor {
    arrived: mpsc::UnboundedReceiver<(String, Instant)>,
}

impl Floor {
    /// When the notification of `name` arrived (skipping older ones).
    async fn arrival(&mut self, name: &str) -> anyhow::Result<Instant> {
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), self.arrived.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("bare subscriber stopped"))?;
            if got == name {
                return Ok(at);
            }
        }
    }
}

/// Bytes of output of the small and the large result.
const SMALL_OUTPUT: usize = 300;
const LARGE_OUTPUT: usize = 1 << 20;

/// Results in the notification: floor vs resolving from the payload vs
/// reading the object, for a small and a large result, sampled alternately.
async fn payload_in_notification(
    emu: &Emulators,
    store: Arc<dyn Store>,
    floor_sub: &mut Floor,
    n: usize,
) -> anyhow::Result<()> {
    let on = BenchClient::start(emu, store.clone(), true).await?;
    let off = BenchClient::start(emu, store.clone(), false).await?;
    let floor_ids = InstanceId::random();
    let mut rows = Vec::new();
    for (size, output) in [("small", SMALL_OUTPUT), ("large", LARGE_OUTPUT)] {
        println!(
            "sampling {size} results ({output} bytes of output): floor, payload on, payload off ({n} each, alternating)..."
        );
        let (mut floor, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
        let reads_before = (on.reads.reads(), off.reads.reads());
        for _ in 0..n {
            let id = floor_ids.next_execution_id();
            let name = layout::result(&id);
            let (body, opts) = result_object(&id, output);
            store.put(&name, body, opts).await?;
            let written = Instant::now();
            floor.push(floor_sub.arrival(&name).await? - written);
            with.push(on.exec(output).await?);
            without.push(off.exec(output).await?);
        }
        let per_command =
            |before: u64, client: &BenchClient| (client.reads.reads() - before) as f64 / n as f64;
        rows.push((format!("{size}: floor, upload -> received"), floor));
        rows.push((
            format!(
                "{size}: payload on  ({:.2} result reads/cmd)",
                per_command(reads_before.0, &on)
            ),
            with,
        ));
        rows.push((
            format!(
                "{size}: payload off ({:.2} result reads/cmd)",
                per_command(reads_before.1, &off)
            ),
            without,
        ));
    }
    println!();
    println!(
        "== results in the notification: result write complete -> exec resolved (N={n} per row)"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p90", "p99", "max"
    );
    for (label, mut v) in rows {
        v.sort();
        let s = Stats::of(&v);
        println!(
            "{label:<44} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms",
            s.p50, s.p90, s.p99, s.max
        );
    }
    println!("payload on:  {:?}", on.client.result_stats());
    println!("payload off: {:?}", off.client.result_stats());
    on.client.shutdown().await;
    off.client.shutdown().await;
    Ok(())
}

/// The result object an executor would write for `output` bytes of output:
/// the JSON body and, when it fits, the result in the metadata.
fn result_object(id: &ExecutionId, output: usize) -> (Bytes, PutOptions) {
    let mut result = ExecResult {
        execution_id: id.to_string(),
        session_id: "bench".to_owned(),
        stdout: "x".repeat(output),
        stdout_bytes: output as u64,
        cwd: "/workspace".to_owned(),
        started_at: Some(runbox_proto::now()),
        completed_at: Some(runbox_proto::now()),
        ..Default::default()
    };
    result.set_exec_status(ExecStatus::Succeeded);
    let mut opts = PutOptions::create();
    if let Some((key, value)) = result_metadata::encode(&result) {
        opts = opts.with_metadata(key, value);
    }
    (Bytes::from(runbox_proto::to_json(&result)), opts)
}

/// A client on the emulators whose launcher writes results itself.
struct BenchClient {
    client: Client,
    launcher: Arc<WritingLauncher>,
    reads: Arc<CountingStore>,
}

impl BenchClient {
    async fn start(emu: &Emulators, store: Arc<dyn Store>, payload: bool) -> anyhow::Result<Self> {
        let mut env = emu.env();
        env.insert("RUNBOX_RESULT_IN_METADATA".into(), payload.to_string());
        let config = Config::from_lookup(&env)?;
        let instance = InstanceId::random();
        let events = emu.event_source(&instance).await?;
        let reads = CountingStore::new(store.clone(), layout::RESULTS_PREFIX);
        let launcher = Arc::new(WritingLauncher {
            store,
            output: Mutex::new(0),
            written: Mutex::new(HashMap::new()),
        });
        let client = Client::from_parts(Parts {
            config,
            store: reads.clone(),
            events: Box::new(events),
            launcher: launcher.clone(),
            instance,
            session_locks: None,
            host_workspace: None,
        });
        Ok(Self {
            client,
            launcher,
            reads,
        })
    }

    /// Runs one command whose result has `output` bytes of output; the time
    /// from its result write completing to `exec` resolving.
    async fn exec(&self, output: usize) -> anyhow::Result<Duration> {
        *self.launcher.output.lock().expect("not poisoned") = output;
        let session = self.client.session("bench")?;
        let result = tokio::time::timeout(Duration::from_secs(30), session.exec("true")).await??;
        let resolved = Instant::now();
        anyhow::ensure!(
            result.stdout.len() == output,
            "wrong result: {} bytes",
            result.stdout.len()
        );
        let id = ExecutionId::new(&result.execution_id)?;
        let written = self
            .launcher
            .written
            .lock()
            .expect("not poisoned")
            .remove(&id)
            .ok_or_else(|| anyhow::anyhow!("no write noted for {id}"))?;
        Ok(resolved - written)
    }
}

/// Stands in for the executor: writes each execution's result object at
/// launch and notes when the write completed. Its executions never end
/// otherwise, so only the completion event resolves them.
struct WritingLauncher {
    store: Arc<dyn Store>,
    /// Bytes of output of the next result.
    output: Mutex<usize>,
    written: Mutex<HashMap<ExecutionId, Instant>>,
}

#[async_trait]
impl Launcher for WritingLauncher {
    fn describe(&self) -> String {
        "bench:writes-results".to_owned()
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), LaunchError> {
        let id = spec.execution_id;
        let output = *self.output.lock().expect("not poisoned");
        let (body, opts) = result_object(&id, output);
        self.store
            .put(&layout::result(&id), body, opts)
            .await
            .map_err(|e| LaunchError::Spawn {
                id: id.clone(),
                retryable: false,
                source: Box::new(e),
            })?;
        let at = Instant::now();
        self.written.lock().expect("not poisoned").insert(id, at);
        Ok(())
    }

    async fn ended(&self, _id: &ExecutionId) -> Ended {
        std::future::pending().await
    }

    async fn state(&self, _id: &ExecutionId) -> Result<ExecutionState, LaunchError> {
        Ok(ExecutionState::Running)
    }

    async fn cancel(&self, _id: &ExecutionId) -> Result<(), LaunchError> {
        Ok(())
    }

    fn release(&self, _id: &ExecutionId) {}

    async fn observe(&self, _id: &ExecutionId) -> Observed {
        Observed::Unobservable
    }

    async fn sweep(&self, _id: &ExecutionId) -> usize {
        0
    }

    async fn shutdown(&self) {}
}
