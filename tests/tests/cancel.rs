//! Cancellation is real (issue 9, item 1) and a killed CLI's command is not
//! overlapped (item 7, last bullet):
//! - the library's [`CancelHandle`] stops a running command, whose stored
//!   result is CANCELLED, and the session's next command starts only after
//!   it settled: on the embedded backend, on gcp (fake-gcs-server and the
//!   Pub/Sub emulator, local launcher) and through the Cloud Run launcher
//!   (runbox's emulator, where the execution is cancelled with
//!   CancelExecution);
//! - cancelling a queued command means it never runs; dropping a running
//!   command's future does not stop it;
//! - SIGINT or SIGTERM to `runbox exec` cancels its command and exits 130;
//! - after `runbox exec` is SIGKILLed, the session's next command waits for
//!   the orphaned one to end.
//!
//! Commands announce through named pipes when they have started, so no
//! test waits on a guess.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    ListExecutionsRequest, executions_client::ExecutionsClient,
};
use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::config::{CloudRunConfig, LauncherConfig};
use runbox_core::{Config, ExecutionId, layout, store};
use runbox_dispatcher::{Client, Error, ExecResult, ExecStatus};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{self, binary, process_gone, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::{Announcements, Gate, quote};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The host pid of the shell that announced `"$$ $RUNBOX_EXECUTION_ID"`.
fn shell_on_host(announced: &str) -> i32 {
    let (inner, execution) = announced.split_once(' ').expect("pid and execution id");
    let inner: i32 = inner.parse().expect("the command's pid");
    runbox_tests::procs::host_pid(inner, execution)
        .unwrap_or_else(|| panic!("no host process is {inner} of {execution}"))
}

/// Exit code of a command killed by SIGTERM, as a shell reports it.
const CANCELLED_EXIT_CODE: i32 = 143;

/// The reproduction on a client: a long command is cancelled once it runs,
/// with the session's next command already queued behind it.
async fn cancel_stops_the_command_and_the_next_waits(client: &Client, pipes: &Path) {
    let session = client.session("cancel").expect("session");
    let mut started = Announcements::new(pipes, "started");
    let exec = session.exec(format!(
        "echo $$ $RUNBOX_EXECUTION_ID > {}; sleep 31; echo finished",
        started.shell_path()
    ));
    let cancel = exec.cancel_handle();
    let first = tokio::spawn(exec.into_future());
    let bash = shell_on_host(&within(60, started.next()).await);
    // Queued now, so only the session's order keeps it from overlapping.
    let next = tokio::spawn(session.exec("echo next").into_future());

    let asked = Instant::now();
    cancel.cancel();
    let cancelled = within(30, first)
        .await
        .expect("task")
        .expect("a CANCELLED result, not an error");
    let took = asked.elapsed();
    assert_eq!(
        cancelled.exec_status(),
        ExecStatus::Cancelled,
        "{cancelled:?}"
    );
    assert_eq!(cancelled.exit_code, CANCELLED_EXIT_CODE, "{cancelled:?}");
    assert!(!cancelled.stdout.contains("finished"), "{cancelled:?}");
    assert!(
        took < Duration::from_secs(20),
        "the cancel took {took:?}: the command ran on"
    );
    assert!(process_gone(bash), "the command's shell {bash} still runs");

    let id = ExecutionId::new(&cancelled.execution_id).expect("execution id");
    let stored = store::get_json::<ExecResult>(&**client.store(), &layout::result(&id), "result")
        .await
        .expect("the stored result")
        .value;
    assert_eq!(stored.exec_status(), ExecStatus::Cancelled, "{stored:?}");

    let next = within(60, next)
        .await
        .expect("task")
        .expect("the next command");
    assert_eq!(next.stdout, "next\n", "{next:?}");
    assert!(
        timestamp(&next.started_at) >= timestamp(&cancelled.completed_at),
        "the next command started at {:?}, before the cancelled one settled at {:?}",
        next.started_at,
        cancelled.completed_at
    );
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("a timestamp");
    (t.seconds, t.nanos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_cancel_stops_the_command_and_the_next_waits() {
    let (client, dir) = embedded::client().await;
    cancel_stops_the_command_and_the_next_waits(&client, dir.path()).await;
    within(30, client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_cancel_stops_the_command_and_the_next_waits() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().expect("tempdir");
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    let config = Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    cancel_stops_the_command_and_the_next_waits(&client, home.path()).await;
    within(30, client.shutdown()).await;
}

const PARENT: &str = "projects/runbox-test/locations/europe-west1";
const EXECUTOR_IMAGE: &str = "europe-docker.pkg.dev/runbox-test/runbox/executor:test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_cancel_cancels_the_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let emulator = within(
        10,
        Emulator::start(
            "127.0.0.1:0".parse().expect("address"),
            EmulatorConfig::default()
                .image(
                    EXECUTOR_IMAGE,
                    [binary("runbox-executor").display().to_string()],
                )
                .inherit_env(false)
                .kill_grace(Duration::from_millis(2000)),
        ),
    )
    .await
    .expect("start the emulator");
    let endpoint = emulator.endpoint();
    create_job(
        &endpoint,
        &[
            ("RUNBOX_BACKEND", "local"),
            ("RUNBOX_HOME", &home.display().to_string()),
            ("RUNBOX_KILL_GRACE_MS", "300"),
        ],
    )
    .await;
    let config = embedded::config(&home).with_launcher(LauncherConfig::CloudRun(CloudRunConfig {
        endpoint: Some(endpoint.clone()),
        ..CloudRunConfig::new(format!("{PARENT}/jobs/runbox"))
    }));
    let client = within(10, Client::from_config(config))
        .await
        .expect("client");

    cancel_stops_the_command_and_the_next_waits(&client, dir.path()).await;

    // The cancel went through Cloud Run: the platform's own record says so.
    let channel = within(
        10,
        tonic::transport::Endpoint::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect to the emulator");
    let listed = within(
        10,
        ExecutionsClient::new(channel).list_executions(ListExecutionsRequest {
            parent: format!("{PARENT}/jobs/runbox"),
            page_size: 100,
            ..Default::default()
        }),
    )
    .await
    .expect("ListExecutions")
    .into_inner();
    let cancelled: i32 = listed.executions.iter().map(|e| e.cancelled_count).sum();
    assert_eq!(cancelled, 1, "{:#?}", listed.executions);
    within(30, client.shutdown()).await;
    within(30, emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// The `runbox` job: one task running the executor with `env`, no retries.
async fn create_job(endpoint: &str, env: &[(&str, &str)]) {
    runbox_tests::cloud_run::create_executor_job(endpoint, PARENT, "runbox", EXECUTOR_IMAGE, env)
        .await;
}

/// A command cancelled while it waits for its turn never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_command_cancelled_never_runs() {
    let (client, dir) = embedded::client().await;
    let session = client.session("queued").expect("session");
    let mut started = Announcements::new(dir.path(), "started");
    let mut gate = Gate::new(dir.path(), "gate");
    let marker = dir.path().join("ran");
    let first = tokio::spawn(
        session
            .exec(format!(
                "echo started > {}; read -r _ < {}",
                started.shell_path(),
                gate.shell_path()
            ))
            .into_future(),
    );
    within(30, started.next()).await;
    let second = session.exec(format!("echo ran > {}", quote(&marker)));
    let cancel = second.cancel_handle();
    let second = tokio::spawn(second.into_future());
    cancel.cancel();
    gate.release(1).await;
    let first = within(30, first).await.expect("task").expect("first");
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let second = within(30, second).await.expect("task");
    assert!(matches!(second, Err(Error::Cancelled)), "{second:?}");
    // The session's next command runs after both: by then the cancelled
    // one would have written its marker, had it run.
    let after = within(30, session.exec("echo after")).await.expect("after");
    assert_eq!(after.stdout, "after\n");
    assert!(!marker.exists(), "the cancelled command ran");
    within(30, client.shutdown()).await;
}

/// Dropping a running command's future does not stop it: it runs to its
/// end, and the session's next command runs after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_exec_does_not_cancel_it() {
    let (client, dir) = embedded::client().await;
    let session = client.session("dropped").expect("session");
    let mut started = Announcements::new(dir.path(), "started");
    let mut gate = Gate::new(dir.path(), "gate");
    // Boxed already (Unpin): dropping it below drops the future itself.
    let mut running = session
        .exec(format!(
            "echo started > {}; read -r _ < {}; echo done > dropped.txt",
            started.shell_path(),
            gate.shell_path()
        ))
        .into_future();
    tokio::select! {
        outcome = &mut running => panic!("ended before it was let go: {outcome:?}"),
        _ = within(30, started.next()) => {}
    }
    drop(running);
    gate.release(1).await;
    let after = within(30, session.exec("cat dropped.txt"))
        .await
        .expect("next command");
    assert_eq!(after.stdout, "done\n", "{after:?}");
    within(30, client.shutdown()).await;
}

/// `runbox exec` with a long command, interrupted by `signal` once the
/// command runs, while a second `runbox exec` of the same session waits for
/// its turn.
async fn cli_signal_cancels(signal: rustix::process::Signal) {
    let cli = Cli::new();
    let mut started = Announcements::new(cli.home.path(), "started");
    // In the session's workspace: the store's directory is hidden from
    // commands.
    let file = "f";
    let first = cli
        .command(&[
            "exec",
            "--json",
            "-s",
            "c",
            "--",
            &format!(
                "echo $$ $RUNBOX_EXECUTION_ID > {}; sleep 31; echo first >> {file}",
                started.shell_path()
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runbox");
    let bash = shell_on_host(&within(60, started.next()).await);
    let mut second = waiting_for_the_lock(
        &cli,
        &[
            "exec",
            "--json",
            "-s",
            "c",
            "--",
            &format!("echo second >> {file}"),
        ],
    )
    .await;

    let pid = rustix::process::Pid::from_raw(first.id().expect("pid") as i32).expect("pid");
    let asked = Instant::now();
    rustix::process::kill_process(pid, signal).expect("signal runbox");
    let first = within(30, first.wait_with_output())
        .await
        .expect("wait for runbox");
    let took = asked.elapsed();
    assert_eq!(first.status.code(), Some(130), "{}", text(&first.stderr));
    assert!(took < Duration::from_secs(20), "runbox took {took:?}");
    let cancelled: ExecResult = serde_json::from_slice(&first.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&first.stdout), text(&first.stderr)));
    assert_eq!(
        cancelled.exec_status(),
        ExecStatus::Cancelled,
        "{cancelled:?}"
    );
    assert!(process_gone(bash), "the command's shell {bash} still runs");

    let stdout = second.stdout.take().expect("stdout");
    let out = within(60, async {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut BufReader::new(stdout), &mut bytes)
            .await
            .expect("read stdout");
        bytes
    })
    .await;
    let status = within(60, second.wait()).await.expect("wait for runbox");
    assert!(status.success(), "{status:?}: {}", text(&out));
    let next: ExecResult = serde_json::from_slice(&out).expect("the second result");
    assert!(
        timestamp(&next.started_at) >= timestamp(&cancelled.completed_at),
        "the next command started at {:?}, before the cancelled one settled at {:?}",
        next.started_at,
        cancelled.completed_at
    );
    let written =
        std::fs::read_to_string(cli.home.path().join("sessions/c/workspace/f")).expect("f");
    assert_eq!(written, "second\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sigint_cancels_the_command() {
    cli_signal_cancels(rustix::process::Signal::INT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sigterm_cancels_the_command() {
    cli_signal_cancels(rustix::process::Signal::TERM).await;
}

/// Starts `runbox ARGS` with debug logs and returns once it reports that it
/// waits for the session's lock (held by another process).
async fn waiting_for_the_lock(cli: &Cli, args: &[&str]) -> tokio::process::Child {
    let mut child = cli
        .command(args)
        .env("RUNBOX_LOG", "runbox_dispatcher=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runbox");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    within(30, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("waiting for the session lock") {
                return;
            }
        }
        panic!("runbox ended without waiting for the session lock");
    })
    .await;
    // Keep reading, so its later logs never block it on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Item 7: `runbox exec` SIGKILLed mid-command leaves its command running;
/// the session's next command starts only once that orphan has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_next_command_waits_for_the_orphan() {
    let cli = Cli::new();
    let mut started = Announcements::new(cli.home.path(), "started");
    let mut gate = Gate::new(cli.home.path(), "gate");
    // In the session's workspace: the store's directory is hidden from
    // commands.
    let file = "f";
    let mut first = cli
        .command(&[
            "exec",
            "-s",
            "k",
            "--",
            &format!(
                "echo started > {}; read -r _ < {}; echo a >> {file}",
                started.shell_path(),
                gate.shell_path()
            ),
        ])
        // The orphaned executor must not meet a closed pipe.
        .env_remove("RUNBOX_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runbox");
    within(60, started.next()).await;
    first.start_kill().expect("SIGKILL runbox");
    let status = within(30, first.wait()).await.expect("wait for runbox");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    let second = waiting_for_the_lock(
        &cli,
        &["exec", "-s", "k", "--", &format!("echo b >> {file}")],
    )
    .await;
    // Only now may the orphan go on: the second is already waiting.
    gate.release(1).await;
    let out = within(60, second.wait_with_output())
        .await
        .expect("wait for runbox");
    assert!(out.status.success(), "{out:?}");
    let written =
        std::fs::read_to_string(cli.home.path().join("sessions/k/workspace/f")).expect("f");
    assert_eq!(written, "a\nb\n");
}
