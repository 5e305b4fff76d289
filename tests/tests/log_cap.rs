//! Output never fills the disk: at most `RUNBOX_LOG_CAP_BYTES` of each
//! stream is kept, on the executor's disk while the command runs and in the
//! store afterwards; the rest is counted and dropped, and the result says
//! so. `runbox exec --timeout 3 -- 'cat /dev/zero'` ends TIMED_OUT within
//! timeout + kill grace + 1 s. Foreground and background on the embedded
//! backend, foreground on the emulators (fake-gcs-server + Pub/Sub).
//!
//! Also here: the scratch directories of executors that were killed are
//! swept by the next executor (never a live one), and a background
//! process's output is stored once (its chunks), not also as a log object.

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runbox_core::store::list_all;
use runbox_core::{Config, ExecutionId, Store, layout};
use runbox_dispatcher::{BackgroundState, Client, ExecResult, ExecStatus, Stream};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, config, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::{Announcements, Gate};

/// The cap used here: small, so the tests are quick.
const CAP: u64 = 1 << 20;

/// Inline output per stream here: below the cap, so a capped stream also
/// gets a log object whose size can be checked.
const INLINE: u64 = 64 * 1024;

/// The command's timeout in the `cat /dev/zero` cases (the issue's).
const TIMEOUT: Duration = Duration::from_secs(3);

/// The kill grace of every configuration here (`embedded::config`'s).
const KILL_GRACE: Duration = Duration::from_millis(300);

/// The promise: a timed-out command's result arrives within its timeout,
/// the kill grace and one second.
fn deadline() -> Duration {
    TIMEOUT + KILL_GRACE + Duration::from_secs(1)
}

/// An embedded client in `home` keeping at most [`CAP`] per stream.
async fn capped_client(home: &Path) -> Client {
    let mut config = config(home);
    config.limits.log_cap = CAP;
    config.limits.output_cap = INLINE;
    within(60, Client::from_config(config))
        .await
        .expect("embedded client")
}

/// Every object under `logs/{execution}/`, with its size.
async fn logs(store: &dyn Store, result: &ExecResult) -> Vec<(String, u64)> {
    let id = ExecutionId::new(&result.execution_id).unwrap();
    within(30, list_all(store, &layout::logs_prefix(&id)))
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.size))
        .collect()
}

/// Asserts the result of `cat /dev/zero` cut at [`CAP`]: timed out, far
/// more produced than kept, and the store holding exactly the cap.
async fn assert_capped_cat(store: &dyn Store, r: &ExecResult, elapsed: Duration) {
    assert_eq!(r.exec_status(), ExecStatus::TimedOut, "{r:?}");
    assert_eq!(r.exit_code, 124);
    assert!(
        elapsed <= deadline(),
        "took {elapsed:?}, more than {:?}",
        deadline()
    );
    assert!(r.stdout_truncated);
    assert!(
        r.stdout_bytes > 2 * CAP,
        "the total produced is reported: {}",
        r.stdout_bytes
    );
    assert_eq!(r.stdout.len() as u64, INLINE);
    assert!(
        r.message.contains("RUNBOX_LOG_CAP_BYTES")
            && r.message.contains(&r.stdout_bytes.to_string()),
        "{}",
        r.message
    );
    let log = layout::log(&ExecutionId::new(&r.execution_id).unwrap(), Stream::Stdout);
    assert_eq!(r.stdout_log, log);
    assert_eq!(
        logs(store, r).await,
        [(log, CAP)],
        "the store holds the cap"
    );
}

/// The reproduction on the embedded backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_dev_zero_times_out_on_time_and_keeps_the_cap() {
    let home = tempfile::tempdir().unwrap();
    let client = capped_client(home.path()).await;
    let s = client.session("zero").unwrap();
    let started = Instant::now();
    let r = within(60, s.exec("cat /dev/zero").timeout(TIMEOUT))
        .await
        .unwrap();
    assert_capped_cat(&**client.store(), &r, started.elapsed()).await;
    // Nothing is left on the executor's disk either.
    assert_eq!(scratch_dirs(home.path()), BTreeSet::new());
}

/// While the command runs, the executor's disk holds at most the cap of a
/// stream however much it writes (here 5 MiB to stderr, then it waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_disk_holds_at_most_the_cap_while_the_command_runs() {
    let home = tempfile::tempdir().unwrap();
    let client = capped_client(home.path()).await;
    let mut wrote = Announcements::new(home.path(), "wrote");
    let mut gate = Gate::new(home.path(), "gate");
    let s = client.session("disk").unwrap();
    let five_mib = 5 * CAP;
    let exec = s.exec(format!(
        "head -c {five_mib} /dev/zero >&2; echo wrote > {}; read -r _ < {}; echo done",
        wrote.shell_path(),
        gate.shell_path()
    ));
    let running = tokio::spawn(exec.into_future());
    within(60, wrote.next()).await;
    // Everything `head` wrote has passed through the pipe but its last
    // 64 KiB at most, so the capture has seen far more than the cap.
    let dirs = scratch_dirs(home.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = dirs.first().unwrap();
    assert_eq!(file_size(&dir.join("stderr")), CAP);
    let on_disk: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        // Files: the directory also holds the empty mount point of the
        // command's namespace root.
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum();
    assert!(on_disk < CAP + 4096, "{on_disk} bytes in {}", dir.display());
    gate.release(1).await;
    let r = within(60, running).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "done\n");
    assert_eq!(r.stderr_bytes, five_mib);
    assert!(r.stderr_truncated);
    let log = layout::log(&ExecutionId::new(&r.execution_id).unwrap(), Stream::Stderr);
    assert_eq!(logs(&**client.store(), &r).await, [(log, CAP)]);
}

/// A background `cat /dev/zero`: its chunks hold the cap and nothing else
/// is stored; it times out on time with the total reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_output_is_capped_while_it_streams() {
    let home = tempfile::tempdir().unwrap();
    let client = capped_client(home.path()).await;
    let s = client.session("bgzero").unwrap();
    let started = Instant::now();
    let bg = within(30, s.spawn("cat /dev/zero").timeout(TIMEOUT))
        .await
        .unwrap();
    let r = within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.exec_status(), ExecStatus::TimedOut, "{r:?}");
    assert!(elapsed <= deadline(), "took {elapsed:?}");
    assert!(r.stdout_truncated);
    assert!(r.stdout_bytes > 2 * CAP, "{}", r.stdout_bytes);
    assert!(r.message.contains("RUNBOX_LOG_CAP_BYTES"), "{}", r.message);
    let objects = logs(&**client.store(), &r).await;
    assert!(
        objects.iter().all(|(name, _)| name.contains("/stdout.")),
        "only chunks: {objects:?}"
    );
    assert_eq!(objects.iter().map(|(_, size)| size).sum::<u64>(), CAP);
    let read = within(30, client.background_logs(&bg, Stream::Stdout, 0))
        .await
        .unwrap();
    assert_eq!(read.data.len() as u64, CAP);
    assert!(read.ended);
}

/// A background process's output longer than the inline cap is stored
/// once: in its chunks, not also as `logs/{execution}/stdout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_output_is_stored_once() {
    let home = tempfile::tempdir().unwrap();
    let client = capped_client(home.path()).await;
    let s = client.session("once").unwrap();
    let bg = within(30, s.spawn("seq 1 100000")).await.unwrap();
    let r = within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(r.stdout_truncated, "longer than the inline cap");
    assert_eq!(r.stdout_bytes, expected.len() as u64);
    assert!(expected.starts_with(&r.stdout));
    assert_eq!(r.stdout_log, "", "no second copy is named");
    let objects = logs(&**client.store(), &r).await;
    assert!(
        objects.iter().all(|(name, _)| name.contains("/stdout.")),
        "only chunks: {objects:?}"
    );
    assert_eq!(
        objects.iter().map(|(_, size)| size).sum::<u64>(),
        expected.len() as u64
    );
    let read = within(30, client.background_logs(&bg, Stream::Stdout, 0))
        .await
        .unwrap();
    assert_eq!(text(&read.data), expected);
}

/// An executor killed with SIGKILL cannot remove its scratch directory; the
/// next executor does, and leaves the one of a live executor alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executors_scratch_is_swept_and_a_live_one_kept() {
    let home = tempfile::tempdir().unwrap();
    let client = capped_client(home.path()).await;
    let s = client.session("sweep").unwrap();
    let mut up = Announcements::new(home.path(), "up");

    let live = within(
        30,
        s.spawn(format!("echo up > {}; exec sleep 120", up.shell_path()))
            .timeout(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    within(60, up.next()).await;
    let live_dirs = scratch_dirs(home.path());
    assert_eq!(live_dirs.len(), 1, "{live_dirs:?}");

    // The command cannot see its executor (its own PID namespace): the
    // test kills it once the command runs.
    let killed = within(
        30,
        s.spawn(format!("echo up > {}; exec sleep 120", up.shell_path())),
    )
    .await
    .unwrap();
    within(60, up.next()).await;
    runbox_tests::procs::kill_executor(killed.execution_id.as_str());
    let r = within(60, client.wait_background(&killed, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Lost, "{r:?}");
    let after_kill = scratch_dirs(home.path());
    let left: Vec<_> = after_kill.difference(&live_dirs).collect();
    assert_eq!(
        left.len(),
        1,
        "the killed executor left its scratch: {after_kill:?}"
    );

    let r = within(60, s.exec("true")).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(
        scratch_dirs(home.path()),
        live_dirs,
        "the leftover is swept, the live scratch kept"
    );
    let listed = within(30, s.list_background()).await.unwrap();
    let still = listed
        .iter()
        .find(|e| e.handle.execution_id == live.execution_id)
        .unwrap();
    assert_eq!(still.state, BackgroundState::Running);

    let r = within(60, client.kill_background(&live)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Cancelled, "{r:?}");
    assert_eq!(scratch_dirs(home.path()), BTreeSet::new());
}

/// The reproduction through the CLI: exit 124, on time, at most the
/// cap in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reproduction_ends_timed_out_with_the_cap_kept() {
    let cli = Cli::new();
    let started = Instant::now();
    let out = within(
        60,
        cli.command(&["exec", "--timeout", "3", "--", "cat /dev/zero"])
            .env("RUNBOX_LOG_CAP_BYTES", CAP.to_string())
            .env("RUNBOX_OUTPUT_CAP_BYTES", INLINE.to_string())
            .output(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(elapsed <= deadline(), "took {elapsed:?}");
    let logs = cli.home.path().join("logs");
    let stored: u64 = walk(&logs).iter().map(|f| file_size(f)).sum();
    assert_eq!(stored, CAP, "logs under {}", logs.display());
}

/// The reproduction on the production wire: the log object in the
/// bucket holds the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_dev_zero_on_the_emulators_keeps_the_cap_in_the_bucket() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert(
        "RUNBOX_KILL_GRACE_MS".into(),
        KILL_GRACE.as_millis().to_string(),
    );
    env.insert("RUNBOX_LOG_CAP_BYTES".into(), CAP.to_string());
    env.insert("RUNBOX_OUTPUT_CAP_BYTES".into(), INLINE.to_string());
    let config = Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    let s = client.session("zero").unwrap();
    let started = Instant::now();
    let r = within(60, s.exec("cat /dev/zero").timeout(TIMEOUT))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let bucket = emu.store();
    assert_capped_cat(&bucket, &r, elapsed).await;
    client.shutdown().await;
}

/// The scratch directories of the embedded store in `home` (in memory
/// where the machine has a private place for them).
fn scratch_dirs(home: &Path) -> BTreeSet<PathBuf> {
    match std::fs::read_dir(runbox_executor::scratch::embedded_base(home)) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}
