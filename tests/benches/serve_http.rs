//! HTTP `exec` through `runbox serve` vs the library's `exec`, both on the
//! embedded backend, interleaved in one run: prints figures, asserts
//! nothing about speed (target: at most 1 ms more at p50 over HTTP).
//!
//! Run with `cargo build --release && cargo bench -p runbox-tests --bench serve_http`
//! (`RUNBOX_BENCH_ITERATIONS`, default 200).

use std::time::{Duration, Instant};

use runbox_dispatcher::{Client, ExecStatus};
use runbox_tests::embedded::config;
use runbox_tests::serve::{Http, Serve, bounded};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let iterations: usize = std::env::var("RUNBOX_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(http_vs_library(iterations)) {
        eprintln!("serve_http bench failed: {e:#}");
        std::process::exit(1);
    }
}

async fn http_vs_library(iterations: usize) -> anyhow::Result<()> {
    let mut serve = Serve::start("127.0.0.1:0", &[]).await?;
    let mut http = Http::connect(&serve.addr).await?;
    let lib_home = tempfile::tempdir()?;
    let client = Client::from_config(config(lib_home.path())).await?;
    let session = client.session("bench")?;
    let body = br#"{"command":"true"}"#;

    let mut over_http = Vec::with_capacity(iterations);
    let mut in_library = Vec::with_capacity(iterations);
    // Warm-up: first launches, page cache, the connection.
    for _ in 0..5 {
        bounded(
            60,
            http.request("POST", "/v1/sessions/bench/exec", &[], body),
        )
        .await??;
        bounded(60, session.exec("true")).await??;
    }
    for _ in 0..iterations {
        let start = Instant::now();
        let r = bounded(
            60,
            http.request("POST", "/v1/sessions/bench/exec", &[], body),
        )
        .await??;
        over_http.push(start.elapsed());
        anyhow::ensure!(
            r.status == 200 && r.json()["status"] == "SUCCEEDED",
            "HTTP exec: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );

        let start = Instant::now();
        let result = bounded(60, session.exec("true")).await??;
        in_library.push(start.elapsed());
        anyhow::ensure!(result.exec_status() == ExecStatus::Succeeded);
    }
    over_http.sort();
    in_library.sort();
    let (h50, h99) = (pct(&over_http, 0.5), pct(&over_http, 0.99));
    let (l50, l99) = (pct(&in_library, 0.5), pct(&in_library, 0.99));
    println!("exec(\"true\"), embedded backend, {iterations} each, interleaved:");
    println!(
        "  library             p50 {:7.2} ms  p99 {:7.2} ms",
        ms(l50),
        ms(l99)
    );
    println!(
        "  HTTP (runbox serve) p50 {:7.2} ms  p99 {:7.2} ms",
        ms(h50),
        ms(h99)
    );
    println!(
        "  HTTP extra at p50: {:+.2} ms (target <= 1 ms)",
        ms(h50) - ms(l50)
    );
    client.shutdown().await;
    serve.terminate();
    serve.wait().await;
    Ok(())
}
