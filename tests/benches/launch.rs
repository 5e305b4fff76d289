//! The Cloud Run launcher on runbox's Cloud Run emulator: prints figures,
//! asserts nothing about speed.
//!
//! Run with `cargo build --release && infra/local/install-emulators && cargo bench -p runbox-tests --bench launch`.
//!
//! 1. p50/p99 of the launcher's RunJob round trip (`launch()`), unthrottled.
//! 2. p50/p99 of a whole `exec("true")` on the full emulator stack (Cloud Run
//!    emulator → executor → fake-gcs-server → Pub/Sub emulator → future) vs
//!    the same command on the embedded backend, interleaved, with the ratio.
//! 3. The RunJob rate admission control lets through at 60/min and 600/min,
//!    measured after the initial burst, with its deviation from the budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::config::LauncherKind;
use runbox_core::store::{self, LocalStore, PutOptions, Store};
use runbox_core::{Config, ExecutionId, InstanceId, layout};
use runbox_dispatcher::{
    Client, CloudRunEndpoint, CloudRunLauncher, CloudRunSettings, LaunchSpec, Launcher,
};
use runbox_proto::ExecRequest;
use runbox_tests::embedded::binary;
use runbox_tests::harness::Emulators;

const IMAGE: &str = "runbox-executor";
const PARENT: &str = "projects/bench/locations/local";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn launcher(
    endpoint: &str,
    per_minute: u32,
    burst: Option<u32>,
) -> anyhow::Result<CloudRunLauncher> {
    let mut settings = CloudRunSettings::new(format!("{PARENT}/jobs/local"));
    settings.endpoint = CloudRunEndpoint::emulator(endpoint);
    settings.runjob_per_minute = per_minute;
    if let Some(b) = burst {
        settings.runjob_burst = b;
    }
    Ok(CloudRunLauncher::connect(settings).await?)
}

async fn request(store: &dyn Store) -> anyhow::Result<ExecutionId> {
    let id = InstanceId::random().next_execution_id();
    let req = ExecRequest {
        execution_id: id.to_string(),
        session_id: "bench".to_owned(),
        command: "true".to_owned(),
        timeout_ms: 60_000,
        ..Default::default()
    };
    store::put_json(store, &layout::request(&id), &req, PutOptions::create()).await?;
    Ok(id)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&home)?);
    let emulator = Emulator::start(
        "127.0.0.1:0".parse()?,
        EmulatorConfig::default()
            .image(IMAGE, [binary("runbox-executor").display().to_string()])
            .inherit_env(false),
    )
    .await?;
    let endpoint = emulator.endpoint();
    let local_env = BTreeMap::from([
        ("RUNBOX_BACKEND".to_owned(), "local".to_owned()),
        ("RUNBOX_HOME".to_owned(), home.display().to_string()),
    ]);
    let env: Vec<_> = local_env.iter().collect();
    runbox_tests::cloud_run::create_executor_job(&endpoint, PARENT, "local", IMAGE, &env).await;

    // 1. RunJob round trip, unthrottled.
    let fast = launcher(&endpoint, 100_000, Some(1000)).await?;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(request(&*store).await?);
    }
    let mut rtt = Vec::new();
    for id in &ids {
        let t = Instant::now();
        fast.launch(LaunchSpec {
            execution_id: id.clone(),
            timeout: Duration::from_secs(60),
            traceparent: None,
            store_token: None,
        })
        .await?;
        rtt.push(t.elapsed());
    }
    for id in &ids {
        fast.ended(id).await;
        fast.release(id);
    }
    rtt.sort();
    println!(
        "== RunJob round trip against the Cloud Run emulator (N={})",
        rtt.len()
    );
    println!(
        "launch()        p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(pct(&rtt, 0.5)),
        ms(pct(&rtt, 0.99))
    );

    // 3. Admission: steady-state rate after the burst.
    println!("== RunJob calls let through by admission control (after the initial burst)");
    for (per_minute, after_burst) in [(600u32, 40usize), (60, 12)] {
        let paced = launcher(&endpoint, per_minute, None).await?;
        let burst = (per_minute / 10).max(1) as usize;
        let mut ids = Vec::new();
        for _ in 0..burst + after_burst {
            ids.push(request(&*store).await?);
        }
        let mut done = Vec::new();
        let paced = &paced;
        let launches = ids.iter().map(|id| async move {
            paced
                .launch(LaunchSpec {
                    execution_id: id.clone(),
                    timeout: Duration::from_secs(60),
                    traceparent: None,
                    store_token: None,
                })
                .await
                .map(|()| Instant::now())
        });
        for r in futures::future::join_all(launches).await {
            done.push(r?);
        }
        done.sort();
        let steady = &done[burst..];
        let span = steady[steady.len() - 1] - steady[0];
        let rate = (steady.len() - 1) as f64 / span.as_secs_f64();
        let budget = f64::from(per_minute) / 60.0;
        println!(
            "budget {per_minute:>4}/min ({budget:>5.2}/s): {rate:>6.3} calls/s over {} calls in {:.1} s, {:+.2}% from the budget (target within 5%)",
            steady.len(),
            span.as_secs_f64(),
            (rate / budget - 1.0) * 100.0
        );
        for id in &ids {
            paced.ended(id).await;
            paced.release(id);
        }
    }

    // 2. Whole exec on the full emulator stack vs embedded.
    println!("starting the Pub/Sub and Cloud Storage emulators...");
    let emus = Emulators::start().await?;
    let mut gcp_env = emus.env();
    gcp_env.insert(
        "RUNBOX_HOME".to_owned(),
        dir.path().join("gcp").display().to_string(),
    );
    let env: Vec<_> = gcp_env.iter().collect();
    runbox_tests::cloud_run::create_executor_job(&endpoint, PARENT, "gcp", IMAGE, &env).await;
    let mut lookup = gcp_env.clone();
    lookup.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
    lookup.insert("RUNBOX_CLOUD_RUN_JOB".into(), format!("{PARENT}/jobs/gcp"));
    lookup.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), endpoint.clone());
    lookup.insert("RUNBOX_RUNJOB_PER_MINUTE".into(), "100000".into());
    let full = Client::from_config(Config::from_lookup(&lookup)?).await?;
    assert_eq!(full.config().launcher.kind(), LauncherKind::CloudRun);
    let embedded_home = dir.path().join("embedded");
    let embedded = Client::from_config(runbox_tests::embedded::config(&embedded_home)).await?;
    let (fs, es) = (full.session("bench")?, embedded.session("bench")?);
    for _ in 0..3 {
        fs.exec("true").await?;
        es.exec("true").await?;
    }
    let (mut f, mut e) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        let r = fs.exec("true").await?;
        f.push(t.elapsed());
        assert_eq!(r.exit_code, 0, "{r:?}");
        let t = Instant::now();
        es.exec("true").await?;
        e.push(t.elapsed());
    }
    f.sort();
    e.sort();
    println!("== exec(\"true\"), N=50 each, interleaved");
    println!(
        "full emulator stack  p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(pct(&f, 0.5)),
        ms(pct(&f, 0.99))
    );
    println!(
        "embedded backend     p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(pct(&e, 0.5)),
        ms(pct(&e, 0.99))
    );
    println!(
        "ratio full/embedded  p50 {:>8.2}x     p99 {:>8.2}x",
        pct(&f, 0.5).as_secs_f64() / pct(&e, 0.5).as_secs_f64(),
        pct(&f, 0.99).as_secs_f64() / pct(&e, 0.99).as_secs_f64()
    );
    full.shutdown().await;
    embedded.shutdown().await;
    emulator.shutdown().await?;
    Ok(())
}
