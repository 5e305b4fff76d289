//! `exec` end to end on the production wire: objects in fake-gcs-server,
//! completions as real GCS notifications through Google's Pub/Sub emulator,
//! executors as local child processes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use runbox_core::store::list_all;
use runbox_core::{Config, Store, layout};
use runbox_dispatcher::{Client, ExecStatus};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::{Announcements, Gate, quote};

async fn emulators() -> Emulators {
    within(120, Emulators::start()).await.expect("emulators")
}

/// A gcp configuration on the harness, with extra settings on top.
fn config(emu: &Emulators, home: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(&env).expect("config")
}

async fn client(config: Config) -> Client {
    within(60, Client::from_config(config))
        .await
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_completes_through_gcs_notifications() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    // A long completion grace: every result must arrive as an event, not
    // through the read that follows the executor's exit.
    let client = client(config(
        &emu,
        home.path(),
        &[("RUNBOX_COMPLETION_GRACE_MS", "60000")],
    ))
    .await;
    let s = client.session("wire").unwrap();
    let r = within(60, s.exec("cd /tmp && export WIRE=1 && echo hi"))
        .await
        .unwrap();
    assert_eq!(
        r.exec_status(),
        ExecStatus::Succeeded,
        "{r:?}\n{}",
        emu.logs()
    );
    assert_eq!(r.stdout, "hi\n");
    let r = within(60, s.exec("echo $WIRE $(pwd); exit 3"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "1 /tmp\n");
    assert_eq!(r.exit_code, 3);

    let stats = client.notifier_stats();
    assert_eq!(stats.delivered, 2, "{stats:?}");

    // Every object of the pipeline lives in the bucket.
    let store = emu.store();
    let id = runbox_core::ExecutionId::new(&r.execution_id).unwrap();
    for name in [layout::request(&id), layout::result(&id)] {
        store
            .head(&name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let session = runbox_core::SessionId::new("wire").unwrap();
    let state = store.head(&layout::session_state(&session)).await.unwrap();
    assert_eq!(state.generation, r.state_generation);
    assert_eq!(list_all(&store, "results/").await.unwrap().len(), 2);

    // Graceful shutdown deletes this instance's subscription.
    client.shutdown().await;
    let sub = emu
        .pubsub_client()
        .await
        .unwrap()
        .subscription(&format!("runbox-{}", client.instance()));
    assert!(!sub.exists(None).await.unwrap(), "subscription left behind");
}

/// An executor for the local launcher that runs the real one and then, once
/// it has exited (its result written), writes its execution id (the
/// argument after `--execution-id`) into `exited`.
fn announcing_executor(dir: &Path, exited: &Announcements) -> PathBuf {
    let path = dir.join("announcing-executor");
    let script = format!(
        "#!/bin/sh\n{} \"$@\"\nstatus=$?\necho \"$2\" > {}\nexit $status\n",
        quote(&binary("runbox-executor")),
        exited.shell_path()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_executions_survive_a_pubsub_restart() {
    const TOTAL: usize = 20;
    /// Results written while the Pub/Sub emulator is down: no notification
    /// of theirs reaches a subscription, so only the resync can find them.
    const UNSEEN: usize = 10;
    let mut emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut started = Announcements::new(scratch.path(), "started");
    let mut gate = Gate::new(scratch.path(), "gate");
    let mut exited = Announcements::new(scratch.path(), "exited");
    let executor = announcing_executor(scratch.path(), &exited);
    // Only events and the resync after the resubscribe may complete these.
    let client = client(config(
        &emu,
        home.path(),
        &[
            ("RUNBOX_COMPLETION_GRACE_MS", "600000"),
            ("RUNBOX_EXECUTOR", &executor.display().to_string()),
        ],
    ))
    .await;
    let futures: Vec<_> = (0..TOTAL)
        .map(|i| {
            let s = client.session(&format!("r{i}")).unwrap();
            let command = format!(
                "echo {i} > {}; read -r _ < {}; echo {i}",
                started.shell_path(),
                gate.shell_path()
            );
            tokio::spawn(
                s.exec(command)
                    .timeout(Duration::from_secs(120))
                    .into_future(),
            )
        })
        .collect();
    for _ in 0..TOTAL {
        within(60, started.next()).await;
    }

    // These finish while Pub/Sub is up: each completes through its event.
    within(10, gate.release(TOTAL - UNSEEN)).await;
    let wanted = (TOTAL - UNSEEN) as u64;
    within(60, client.wait_for_stats(|s| s.delivered >= wanted))
        .await
        .unwrap();

    // These finish while it is down: their notifications are lost, and
    // the emulator comes back without the subscription.
    emu.pubsub_stop().unwrap();
    within(10, gate.release(UNSEEN)).await;
    // Every executor has exited, so every result object is written.
    for _ in 0..TOTAL {
        within(60, exited.next()).await;
    }
    within(120, emu.pubsub_start_again())
        .await
        .expect("restart");

    let results = within(90, join_all(futures)).await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r
            .unwrap()
            .unwrap_or_else(|e| panic!("exec {i}: {e}\n{}", emu.logs()));
        assert_eq!(r.exec_status(), ExecStatus::Succeeded);
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    let stats = client.notifier_stats();
    assert!(
        stats.resynced >= UNSEEN as u64,
        "the resync recovered fewer than the {UNSEEN} results written while Pub/Sub was down: {stats:?}"
    );
    // Each waiter resolved exactly once: a late copy of a lost notification
    // can only be a duplicate.
    assert_eq!(stats.delivered + stats.resynced, TOTAL as u64, "{stats:?}");
    within(60, client.shutdown()).await;
}

fn notification(emu: &Emulators, name: &str, generation: &str, data: &[u8]) -> PubsubMessage {
    PubsubMessage {
        data: data.to_vec(),
        attributes: [
            ("eventType", "OBJECT_FINALIZE"),
            ("objectId", name),
            ("objectGeneration", generation),
            ("bucketId", emu.bucket.as_str()),
            ("payloadFormat", "JSON_API_V1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        ..PubsubMessage::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_unknown_and_malformed_notifications_are_acked_and_counted() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let client = client(config(
        &emu,
        home.path(),
        &[("RUNBOX_COMPLETION_GRACE_MS", "60000")],
    ))
    .await;
    let s = client.session("noise").unwrap();
    let r = within(60, s.exec("echo first")).await.unwrap();
    assert_eq!(r.stdout, "first\n");
    let id = runbox_core::ExecutionId::new(&r.execution_id).unwrap();
    let result = emu.store().head(&layout::result(&id)).await.unwrap();

    let prefix = client.instance().execution_prefix();
    let generation = result.generation.to_string();
    for message in [
        // The same notification again.
        notification(&emu, &result.name, &generation, b"{}"),
        // A result of this instance's prefix that nobody awaits.
        notification(&emu, &format!("results/{prefix}unknown.json"), "7", b"{}"),
        // Not JSON at all.
        notification(
            &emu,
            &format!("results/{prefix}x.json"),
            "8",
            b"\xff not json",
        ),
        // Not a result.
        notification(&emu, "sessions/noise/state.json", "9", b"{}"),
    ] {
        within(30, emu.publish(message)).await.unwrap();
    }
    // Each counter moves as its message is routed; the next exec proves the
    // notifier is still alive.
    let wanted = |s: runbox_notifier::NotifierStats| {
        s.duplicates >= 1 && s.unknown >= 1 && s.malformed >= 1 && s.ignored >= 1
    };
    within(60, client.wait_for_stats(|s| wanted(*s)))
        .await
        .unwrap();
    let r = within(60, s.exec("echo second")).await.unwrap();
    assert_eq!(r.stdout, "second\n");
    let stats = client.notifier_stats();
    assert_eq!(stats.delivered, 2, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_on_one_session_take_turns_through_its_lease() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let a = client(config(&emu, home.path(), &[])).await;
    let b = client(config(&emu, home.path(), &[])).await;
    within(60, a.session("race").unwrap().exec("export BASE=1"))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut started = Announcements::new(scratch.path(), "started");
    let mut gate = Gate::new(scratch.path(), "gate");
    let (announce, wait) = (started.shell_path(), gate.shell_path());
    let command = |from: &str| {
        format!("echo {from} > {announce}; read -r _ < {wait}; export FROM=${{FROM}}{from}")
    };
    let ra = tokio::spawn(a.session("race").unwrap().exec(command("a")).into_future());
    assert_eq!(within(60, started.next()).await, "a");
    let rb = tokio::spawn(b.session("race").unwrap().exec(command("b")).into_future());
    // B's command must not start while A's holds the session's lease (a
    // time limit as the assertion, not as synchronisation).
    let overlap = tokio::time::timeout(Duration::from_secs(3), started.next()).await;
    assert!(
        overlap.is_err(),
        "B ran while A held the session: {overlap:?}"
    );
    within(10, gate.release(1)).await;
    let ra = within(90, ra).await.unwrap().unwrap();
    assert_eq!(ra.exec_status(), ExecStatus::Succeeded, "{ra:?}");
    assert_eq!(within(60, started.next()).await, "b");
    within(10, gate.release(1)).await;
    let rb = within(90, rb).await.unwrap().unwrap();
    assert_eq!(rb.exec_status(), ExecStatus::Succeeded, "{rb:?}");
    // Both saved, in turn: B saw A's export.
    let r = within(60, a.session("race").unwrap().exec("echo $BASE $FROM"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "1 ab\n");
    within(60, a.shutdown()).await;
    within(60, b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_on_the_emulators() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let run = |script: &'static str| {
        let mut cmd = tokio::process::Command::new(binary("runbox"));
        cmd.args(["exec", "-s", "cli", "--", script])
            .envs(emu.env())
            .env("RUNBOX_HOME", home.path())
            .kill_on_drop(true);
        async move { within(60, cmd.output()).await.unwrap() }
    };
    let out = run("cd /tmp; export V=ok").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("echo $V $(pwd) >&2; exit 5").await;
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "ok /tmp\n");
    // Nothing of the session landed in the local home: it is all in the bucket.
    assert!(!home.path().join("sessions").exists());
    // The session's state, its settings (mode) and the lease that ordered
    // its commands.
    let names: Vec<String> = list_all(&emu.store(), "sessions/cli/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        names,
        [
            "sessions/cli/lease",
            "sessions/cli/mode.json",
            "sessions/cli/state.json"
        ]
    );

    // A gcp configuration without a bucket is refused at start.
    let out = within(
        30,
        tokio::process::Command::new(binary("runbox"))
            .args(["sessions", "list"])
            .env("RUNBOX_BACKEND", "gcp")
            .env_remove("RUNBOX_BUCKET")
            .env("RUNBOX_PROJECT", "p")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNBOX_BUCKET"));
}
