//! Workspace file API vs an `exec` of `cat`: prints figures, asserts
//! nothing about speed.
//!
//! Run with `cargo build --release && infra/local/install-emulators && cargo bench -p runbox-tests --bench file_api`.
//!
//! On the embedded backend and on the emulator stack (fake-gcs-server +
//! Pub/Sub emulator), for a 1 KiB file: p50/p99 of `read_file` and
//! `write_file` (N=200 each, alternating) against `exec("cat FILE")` (N=50),
//! the way an agent without the file API would read it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runbox_core::Config;
use runbox_dispatcher::files::{ReadOptions, WriteOptions};
use runbox_dispatcher::{Client, Session};
use runbox_tests::embedded::binary;
use runbox_tests::harness::Emulators;

const API_N: usize = 200;
const EXEC_N: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Figures {
    read: Vec<Duration>,
    write: Vec<Duration>,
    cat: Vec<Duration>,
}

async fn measure(session: &Session) -> anyhow::Result<Figures> {
    let content = "x".repeat(1023) + "\n";
    session
        .write_file("bench.txt", content.clone(), WriteOptions::default())
        .await?;
    // Warm-up: connections, page cache, the session's first state.
    for _ in 0..5 {
        session
            .read_file("bench.txt", ReadOptions::default())
            .await?;
        session.exec("cat bench.txt").await?;
    }
    let mut f = Figures {
        read: Vec::with_capacity(API_N),
        write: Vec::with_capacity(API_N),
        cat: Vec::with_capacity(EXEC_N),
    };
    for i in 0..API_N {
        let t = Instant::now();
        session
            .write_file("bench.txt", content.clone(), WriteOptions::default())
            .await?;
        f.write.push(t.elapsed());
        let t = Instant::now();
        let text = session
            .read_file("bench.txt", ReadOptions::default())
            .await?;
        f.read.push(t.elapsed());
        assert_eq!(text.content.len(), 1024);
        if i % (API_N / EXEC_N) == 0 {
            let t = Instant::now();
            let r = session.exec("cat bench.txt").await?;
            f.cat.push(t.elapsed());
            assert_eq!(r.stdout.len(), 1024);
        }
    }
    f.read.sort();
    f.write.sort();
    f.cat.sort();
    Ok(f)
}

fn print(backend: &str, f: &Figures) {
    let cat50 = percentile(&f.cat, 0.5);
    println!("== {backend}: 1 KiB file");
    for (label, v) in [
        ("read_file", &f.read),
        ("write_file", &f.write),
        ("exec(\"cat\")", &f.cat),
    ] {
        let p50 = percentile(v, 0.5);
        println!(
            "{label:<14} p50 {p50:>8.3} ms   p99 {:>8.3} ms   exec(cat)/this at p50 {:>6.1}x   (N={})",
            percentile(v, 0.99),
            cat50 / p50,
            v.len()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let embedded = Client::from_config(runbox_tests::embedded::config(home.path())).await?;
    let figures = measure(&embedded.session("bench")?).await?;
    print("embedded backend", &figures);
    embedded.shutdown().await;

    println!("starting the emulators...");
    let emu = Emulators::start().await?;
    let gcp_home = tempfile::tempdir()?;
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), gcp_home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    let gcp = Client::from_config(Config::from_lookup(&env)?).await?;
    let figures = measure(&gcp.session("bench")?).await?;
    print(
        "gcp backend on fake-gcs-server + Pub/Sub emulator",
        &figures,
    );
    gcp.shutdown().await;
    Ok(())
}
