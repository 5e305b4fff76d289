//! The cost of per-execution credentials: prints figures, asserts nothing
//! about speed.
//!
//! Run with `cargo build --release && infra/local/install-emulators && cargo bench -p runbox-tests --bench credentials`.
//!
//! p50/p99 of minting one downscoped token (the dispatcher's token
//! exchange, boundary included) against `runbox-sts-emulator`, next to the
//! baseline of one store read through the same stand-in (its proxy in
//! front of fake-gcs-server), interleaved in the same run, with the ratio.
//! `RUNBOX_BENCH_ITERATIONS` (default 200) sets the count.

use std::time::{Duration, Instant};

use runbox_core::credentials::{Minter, StoreToken};
use runbox_core::store::{GcsStore, Store};
use runbox_core::{InstanceId, SessionId};
use runbox_tests::harness::Emulators;
use runbox_tests::sts::StsStandIn;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::var("RUNBOX_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let emu = Emulators::storage_only().await?;
        let sts = StsStandIn::start(&emu, 3600)?;
        let minter =
            Minter::with_subject_token(&sts.url, sts.source_token.clone(), emu.bucket.clone())?;
        let store = GcsStore::with_token(
            &emu.bucket,
            Some(&sts.url),
            &StoreToken::new(sts.source_token.clone(), None),
        );
        let session = SessionId::new("bench")?;
        let instance = InstanceId::random();
        // Warm both paths (connections, first allocations).
        for _ in 0..10 {
            minter
                .mint(
                    &session,
                    &instance.next_execution_id(),
                    Duration::from_secs(60),
                )
                .await?;
            let _ = store.head("sessions/bench/state.json").await;
        }
        let (mut mint, mut read) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let id = instance.next_execution_id();
            let t = Instant::now();
            minter.mint(&session, &id, Duration::from_secs(60)).await?;
            mint.push(t.elapsed());
            let t = Instant::now();
            let _ = store.head("sessions/bench/state.json").await;
            read.push(t.elapsed());
        }
        mint.sort();
        read.sort();
        println!("per-execution credentials, {iterations} iterations, interleaved");
        println!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms");
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "mint a downscoped token (STS stand-in)",
            ms(pct(&mint, 0.5)),
            ms(pct(&mint, 0.99))
        );
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "baseline: one store read through the proxy",
            ms(pct(&read, 0.5)),
            ms(pct(&read, 0.99))
        );
        println!(
            "ratio mint / read at p50: {:.2}",
            pct(&mint, 0.5).as_secs_f64() / pct(&read, 0.5).as_secs_f64()
        );
        anyhow::Ok(())
    })
}
