//! Workspace sync benchmark: prints figures, asserts only that an
//! incremental save moves no more than the changed file.
//!
//! Run with `cargo bench -p runbox-tests --bench workspace` (fake-gcs-server
//! installed by `infra/local/install-emulators`). On a current-thread
//! runtime, as the executor runs.
//!
//! For 10, 1,000 and 10,000 files of 1 KiB, and for one 100 MiB file beside
//! a 1 KiB one, it measures:
//!
//! - in-place mode on a local store (the embedded backend): restore, a
//!   "command" that rewrites one small file, save;
//! - transfer mode on fake-gcs-server (the Cloud Run path): the first save
//!   (everything uploads), a restore onto a fresh disk (everything
//!   downloads), a restore onto the same disk (nothing downloads), the
//!   command, and the incremental save, with the bytes it moved.
//!
//! The 100 MiB case also rewrites the big file, to show the cost of
//! whole-file granularity. `RUNBOX_BENCH_SKIP_GCS=1` runs the local part only.
//!
//! First, the cost of the workspace namespace: `runbox exec -- true` on the
//! embedded backend with it and with `RUNBOX_WORKSPACE_NAMESPACE=off`,
//! alternating, in the same run (p50, p99 and their ratio).
//! `RUNBOX_BENCH_NAMESPACE_RUNS` sets the runs per series (default 100).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use runbox_core::store::{Durability, LocalStore};
use runbox_core::{SessionId, Store, layout};
use runbox_executor::workspace::{self, SaveStats, Snapshot, SyncMode, SyncOptions};
use runbox_tests::harness::Emulators;

const SMALL: usize = 1024;
const BIG: usize = 100 << 20;

/// Every await of the benchmark is bounded: a stuck emulator fails the run
/// rather than hanging it.
const LIMIT: Duration = Duration::from_secs(300);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {LIMIT:?}"))
}

#[derive(Clone, Copy)]
enum Case {
    Small(usize),
    Big,
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::Small(n) => format!("{n} x 1 KiB"),
            Case::Big => "100 MiB + 1 KiB".to_owned(),
        }
    }

    /// Writes the workspace's files, as a first command would.
    fn populate(self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        match self {
            Case::Small(n) => {
                for i in 0..n {
                    // 100 files per directory, like a source tree.
                    let sub = dir.join(format!("d{:03}", i / 100));
                    if i % 100 == 0 {
                        fs::create_dir_all(&sub).unwrap();
                    }
                    fs::write(sub.join(format!("f{i:05}.txt")), content(i, SMALL)).unwrap();
                }
            }
            Case::Big => {
                fs::write(dir.join("big.bin"), content(7, BIG)).unwrap();
                fs::create_dir_all(dir.join("d000")).unwrap();
                fs::write(dir.join("d000/f00000.txt"), content(0, SMALL)).unwrap();
            }
        }
        backdate(dir);
    }
}

/// Makes every file an hour old. Files written within
/// `workspace::RACY_WINDOW` of a save are read again by the next save (once);
/// the figures here are for files written earlier than that, the steady state.
fn backdate(dir: &Path) {
    let when = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            backdate(&entry.path());
        } else {
            fs::File::options()
                .write(true)
                .open(entry.path())
                .and_then(|f| f.set_modified(when))
                .unwrap();
        }
    }
}

/// Deterministic, incompressible-looking bytes.
fn content(seed: usize, len: usize) -> Vec<u8> {
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The "command": rewrites the first small file with other bytes.
fn touch_one(dir: &Path, round: usize) {
    fs::write(
        dir.join("d000/f00000.txt"),
        content(1_000_000 + round, SMALL),
    )
    .unwrap();
}

fn ms(d: Duration) -> String {
    format!("{:>9.1} ms", d.as_secs_f64() * 1000.0)
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

async fn timed<T, F: Future<Output = T>>(what: &str, f: F) -> (T, Duration) {
    let start = Instant::now();
    let out = bounded(what, f).await;
    (out, start.elapsed())
}

async fn restore(store: &dyn Store, s: &SessionId, dir: &Path, o: &SyncOptions) -> Snapshot {
    workspace::restore(store, s, dir, o)
        .await
        .unwrap_or_else(|e| panic!("restore: {e:?}"))
}

async fn save(
    store: &dyn Store,
    s: &SessionId,
    dir: &Path,
    before: &Snapshot,
    o: &SyncOptions,
) -> SaveStats {
    workspace::save(store, s, dir, before, o)
        .await
        .unwrap_or_else(|e| panic!("save: {e:?}"))
}

fn moved(stats: &SaveStats) -> String {
    format!(
        "up {} files / {}, hashed {}, deleted {}",
        stats.uploaded_files,
        bytes(stats.uploaded_bytes),
        bytes(stats.hashed_bytes),
        stats.deleted
    )
}

async fn in_place(case: Case, session: &SessionId) {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open_with(root.path(), Durability::Sync).unwrap();
    let dir = root
        .path()
        .join(layout::workspace_prefix(session).trim_end_matches('/'));
    let o = SyncOptions::new(SyncMode::InPlace);
    case.populate(&dir);
    let empty = restore(&store, session, &dir, &o).await;
    let (_, t_first) = timed("first save", save(&store, session, &dir, &empty, &o)).await;
    let (snap, t_restore) = timed("restore", restore(&store, session, &dir, &o)).await;
    touch_one(&dir, 1);
    let (inc, t_save) = timed("save", save(&store, session, &dir, &snap, &o)).await;
    assert_eq!(inc.changed_files, 1);
    assert_eq!(inc.uploaded_bytes, 0, "in place: nothing uploaded");
    println!(
        "in-place  local  {:<16} first save {} | restore {} | incremental save {}  ({} changed, {})",
        case.label(),
        ms(t_first),
        ms(t_restore),
        ms(t_save),
        inc.changed_files,
        moved(&inc)
    );
}

async fn transfer(case: Case, store: &dyn Store, session: &SessionId) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let o = SyncOptions::default();
    // Restore first: a transfer restore makes the directory match the
    // (empty) saved workspace.
    let empty = restore(store, session, &a, &o).await;
    case.populate(&a);
    let (first, t_first) = timed("first save", save(store, session, &a, &empty, &o)).await;
    let (cold, t_cold) = timed("cold restore", restore(store, session, &b, &o)).await;
    let (warm, t_warm) = timed("warm restore", restore(store, session, &b, &o)).await;
    assert_eq!(
        warm.stats().downloaded_files,
        0,
        "warm restore downloads nothing"
    );
    touch_one(&b, 1);
    let (inc, t_save) = timed("save", save(store, session, &b, &warm, &o)).await;
    assert_eq!(inc.uploaded_files, 1);
    assert_eq!(
        inc.uploaded_bytes, SMALL as u64,
        "only the changed file moves"
    );
    println!(
        "transfer  gcs    {:<16} first save {} ({}) | cold restore {} ({}) | warm restore {} | incremental save {}  ({})",
        case.label(),
        ms(t_first),
        bytes(first.uploaded_bytes),
        ms(t_cold),
        bytes(cold.stats().downloaded_bytes),
        ms(t_warm),
        ms(t_save),
        moved(&inc)
    );
    if let Case::Big = case {
        // Whole-file granularity: appending to the big file resends it.
        let mut data = fs::read(b.join("big.bin")).unwrap();
        data.extend_from_slice(b"one more line\n");
        fs::write(b.join("big.bin"), data).unwrap();
        let (big, t_big) = timed("save", save(store, session, &b, &inc.snapshot, &o)).await;
        println!(
            "transfer  gcs    {:<16} append to big.bin, save {}  ({})",
            case.label(),
            ms(t_big),
            moved(&big)
        );
    }
}

/// `runbox exec -s S -- true` as a user runs it, with and without the
/// namespace, alternating so both series see the same machine load.
fn namespace_cost() {
    let runs: usize = std::env::var("RUNBOX_BENCH_NAMESPACE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let home = tempfile::tempdir().unwrap();
    let runbox = runbox_tests::embedded::binary("runbox");
    let exec = |off: bool| {
        let mut command = std::process::Command::new(&runbox);
        command
            .args(["exec", "-s", "bench", "--", "true"])
            .env("RUNBOX_HOME", home.path())
            .env(
                "RUNBOX_EXECUTOR",
                runbox_tests::embedded::binary("runbox-executor"),
            )
            .env_remove("RUNBOX_WORKSPACE_NAMESPACE")
            .stdin(std::process::Stdio::null());
        if off {
            command.env("RUNBOX_WORKSPACE_NAMESPACE", "off");
        }
        let started = Instant::now();
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    };
    // Warm-up: the first executor probes for namespaces and remembers it.
    exec(false);
    exec(true);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        with.push(exec(false));
        without.push(exec(true));
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e3
    };
    let (w50, w99) = (pct(&mut with, 0.5), pct(&mut with, 0.99));
    let (o50, o99) = (pct(&mut without, 0.5), pct(&mut without, 0.99));
    println!("embedded `runbox exec -- true`, {runs} runs each, alternating:");
    println!("  namespace off: p50 {o50:7.2} ms  p99 {o99:7.2} ms");
    println!(
        "  namespace on:  p50 {w50:7.2} ms  p99 {w99:7.2} ms  (x{:.2} p50, +{:.2} ms)",
        w50 / o50,
        w50 - o50
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cases = [
            Case::Small(10),
            Case::Small(1_000),
            Case::Small(10_000),
            Case::Big,
        ];
        namespace_cost();
        let started = Instant::now();
        for (i, case) in cases.into_iter().enumerate() {
            let session = SessionId::new(format!("bench{i}")).unwrap();
            in_place(case, &session).await;
        }
        if std::env::var_os("RUNBOX_BENCH_SKIP_GCS").is_some() {
            return;
        }
        let emu = bounded("start fake-gcs-server", Emulators::storage_only())
            .await
            .expect("fake-gcs-server (infra/local/install-emulators)");
        let store = emu.store();
        for (i, case) in cases.into_iter().enumerate() {
            let session = SessionId::new(format!("bench{i}")).unwrap();
            transfer(case, &store, &session).await;
        }
        println!("total {:.1} s", started.elapsed().as_secs_f64());
        println!(
            "note: fake-gcs-server's memory backend finds an object by a linear search of \
             the bucket, so its per-object cost grows with the number of objects: the \
             10,000-file first save and cold restore measure the emulator more than runbox."
        );
    });
}
