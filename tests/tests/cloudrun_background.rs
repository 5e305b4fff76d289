//! Background processes on the Cloud Run launcher (the emulator) reached
//! from later CLI calls: `bg kill`, `bg kill --all`, `sessions close` and
//! `sessions rm` each run in a process that did not launch the process, and
//! must stop it at once (not at its timeout); markers written before the
//! Execution's name was stored in them are found through ListExecutions.
//! And the emulator, like Cloud Run, leaves nothing of a task running when
//! its executor dies.

use std::path::Path;
use std::time::Duration;

use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::background_marker::BackgroundMarker;
use runbox_core::store::{LocalStore, PutOptions, Store};
use runbox_core::{ExecutionId, SessionId, layout};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{self, within};
use runbox_tests::procs;

const PARENT: &str = "projects/p/locations/us-central1";
const EXECUTOR_IMAGE: &str = "runbox-executor:test";

/// The emulator with a `runbox` job whose executors use the embedded store
/// of the CLI harness's home, and the CLI pointed at both.
struct CloudRun {
    cli: Cli,
    emulator: Emulator,
    endpoint: String,
}

impl CloudRun {
    async fn start() -> Self {
        let cli = Cli::new();
        let config = EmulatorConfig::default()
            .image(
                EXECUTOR_IMAGE,
                [embedded::binary("runbox-executor").display().to_string()],
            )
            .inherit_env(false)
            .kill_grace(Duration::from_millis(500))
            .supervisor(embedded::binary("runbox-cloudrun-emulator"));
        let emulator = within(
            10,
            Emulator::start("127.0.0.1:0".parse().expect("address"), config),
        )
        .await
        .expect("start the emulator");
        let endpoint = emulator.endpoint();
        create_job(&endpoint, cli.home.path()).await;
        Self {
            cli,
            emulator,
            endpoint,
        }
    }

    /// `runbox ARGS` on the Cloud Run launcher; a fresh process each time.
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.cli.command(args);
        cmd.env("RUNBOX_LAUNCHER", "cloudrun")
            .env("RUNBOX_CLOUD_RUN_JOB", format!("{PARENT}/jobs/runbox"))
            .env("RUNBOX_CLOUD_RUN_ENDPOINT", &self.endpoint);
        within(120, cmd.output()).await.expect("run runbox")
    }

    /// Starts `sleep 600` in the background in `session` from its own CLI
    /// call; its handle and the pids of everything that runs for it (the
    /// executor, bash, sleep), once they all run.
    async fn spawn_sleeper(&self, session: &str) -> (String, Vec<i32>) {
        let out = self
            .run(&[
                "exec",
                "-s",
                session,
                "--background",
                "--",
                "sleep 600 & wait",
            ])
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let handle = text(&out.stdout).trim_end().to_owned();
        let pids = self.processes_of(&handle).await;
        (handle, pids)
    }

    /// The processes whose environment carries the execution id, once
    /// `sleep` is among them. The spawn returns after RunJob, before the
    /// task has started, and nothing announces "the command has forked":
    /// each look is one `/proc` scan, with a CLI round trip (`bg list`)
    /// between looks, for at most 30 s.
    async fn processes_of(&self, handle: &str) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pids = procs::with_env("RUNBOX_EXECUTION_ID", handle);
            if pids
                .iter()
                .any(|p| procs::comm(*p).as_deref() == Some("sleep"))
            {
                return pids;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the processes of {handle} did not start: {pids:?}"
            );
            // A CLI round trip between looks: the process needs time to
            // start, and this test has no event for "bash has forked".
            let out = self.run(&["bg", "list", "-s", "s0"]).await;
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }

    /// Removes the Execution's name from a marker, as markers written before
    /// it was stored look.
    async fn forget_locator(&self, session: &str, handle: &str) {
        let store = LocalStore::open(self.cli.home.path()).expect("open the store");
        let (session, id) = (
            SessionId::new(session).expect("session"),
            ExecutionId::new(handle).expect("handle"),
        );
        let name = layout::background_marker(&session, &id);
        let object = store.get(&name).await.expect("read the marker");
        let mut marker =
            BackgroundMarker::decode(&object.data, &session, &id).expect("decode the marker");
        assert!(
            marker
                .locator
                .as_deref()
                .is_some_and(|l| l.starts_with(&format!("{PARENT}/jobs/runbox/executions/"))),
            "the launch stored the Execution's name: {marker:?}"
        );
        marker.locator = None;
        store
            .put(&name, marker.encode(), PutOptions::default())
            .await
            .expect("rewrite the marker");
    }

    async fn shutdown(self) {
        within(10, self.emulator.shutdown())
            .await
            .expect("emulator shutdown");
    }
}

/// Creates the `runbox` job: the executor image, the embedded store at
/// `home`, one task, no retries.
async fn create_job(endpoint: &str, home: &Path) {
    let env = [
        ("RUNBOX_BACKEND", "local".to_owned()),
        ("RUNBOX_HOME", home.display().to_string()),
        ("RUNBOX_KILL_GRACE_MS", "300".to_owned()),
    ];
    runbox_tests::cloud_run::create_executor_job(endpoint, PARENT, "runbox", EXECUTOR_IMAGE, &env)
        .await;
}

/// Asserts that every process of a background process has exited, within a
/// few seconds of the call that killed it (its timeout is 24 h).
async fn assert_stopped(pids: &[i32], what: &str) {
    let alive = procs::wait_exited(pids, Duration::from_secs(10)).await;
    let named: Vec<_> = alive.iter().map(|p| (p, procs::comm(*p))).collect();
    assert!(alive.is_empty(), "{what}: still running: {named:?}");
}

/// Asserts the `bg list` line of `handle` says cancelled.
async fn assert_listed_cancelled(cloud: &CloudRun, session: &str, handle: &str) {
    let out = cloud.run(&["bg", "list", "-s", session]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(handle))
        .unwrap_or_else(|| panic!("{handle} not listed: {listing}"));
    assert!(line.to_lowercase().contains("cancelled"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bg_kill_from_a_later_cli_call_stops_the_execution() {
    let cloud = CloudRun::start().await;
    let (h, pids) = cloud.spawn_sleeper("s0").await;
    let out = cloud.run(&["bg", "kill", "-s", "s0", &h]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_stopped(&pids, "bg kill").await;
    assert_listed_cancelled(&cloud, "s0", &h).await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bg_kill_all_from_a_later_cli_call_stops_every_execution() {
    let cloud = CloudRun::start().await;
    let (a, pids_a) = cloud.spawn_sleeper("s0").await;
    let (b, pids_b) = cloud.spawn_sleeper("s0").await;
    let out = cloud.run(&["bg", "kill", "-s", "s0", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_stopped(&[pids_a, pids_b].concat(), "bg kill --all").await;
    assert_listed_cancelled(&cloud, "s0", &a).await;
    assert_listed_cancelled(&cloud, "s0", &b).await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_and_rm_from_later_cli_calls_stop_the_executions() {
    let cloud = CloudRun::start().await;
    let (_, pids) = cloud.spawn_sleeper("s0").await;
    let out = cloud.run(&["sessions", "close", "s0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 background process(es) killed"),
        "{}",
        text(&out.stderr)
    );
    assert_stopped(&pids, "sessions close").await;

    let (_, pids) = cloud.spawn_sleeper("s0").await;
    let out = cloud.run(&["sessions", "rm", "s0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_stopped(&pids, "sessions rm").await;
    cloud.shutdown().await;
}

/// A marker without the Execution's name (written before it was stored):
/// the kill finds the Execution through ListExecutions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_without_the_execution_name_are_found_by_listing() {
    let cloud = CloudRun::start().await;
    // Others on the job, newer and older, that must not be mistaken for it.
    let (older, older_pids) = cloud.spawn_sleeper("s0").await;
    let (h, pids) = cloud.spawn_sleeper("s0").await;
    let (_newer, newer_pids) = cloud.spawn_sleeper("s0").await;
    cloud.forget_locator("s0", &h).await;
    let out = cloud.run(&["bg", "kill", "-s", "s0", &h]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_stopped(&pids, "bg kill by listing").await;
    assert_listed_cancelled(&cloud, "s0", &h).await;
    for pid in older_pids.iter().chain(&newer_pids) {
        assert!(
            !runbox_tests::embedded::process_gone(*pid),
            "{pid} of another execution was stopped"
        );
    }
    let out = cloud.run(&["bg", "kill", "-s", "s0", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_stopped(&[older_pids, newer_pids].concat(), "cleanup").await;
    assert_listed_cancelled(&cloud, "s0", &older).await;
    cloud.shutdown().await;
}

/// The emulator, like Cloud Run, ends every process of a task when its main
/// process dies: here the executor is SIGKILLed while its command (`bash`
/// in a process group of its own, and `sleep 600`) runs; both must be gone
/// at once, not at the command's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_takes_every_process_of_its_task_with_it() {
    let cloud = CloudRun::start().await;
    let (_, pids) = cloud.spawn_sleeper("s0").await;
    let executor = pids
        .iter()
        .copied()
        .find(|p| procs::comm(*p).as_deref() == Some("runbox-executor"))
        .unwrap_or_else(|| panic!("no executor among {pids:?}"));
    assert!(
        pids.iter()
            .any(|p| procs::comm(*p).as_deref() == Some("sleep")),
        "the command runs: {pids:?}"
    );
    let executor_pid = rustix::process::Pid::from_raw(executor).expect("a pid");
    rustix::process::kill_process(executor_pid, rustix::process::Signal::KILL)
        .expect("SIGKILL the executor");
    assert_stopped(&pids, "the processes of a task whose executor was killed").await;
    cloud.shutdown().await;
}
