//! The request topic of `runbox serve` on the emulator stack (Google's
//! Pub/Sub emulator, fake-gcs-server, the local launcher), driven by
//! Google's own Python Pub/Sub client (tests/python/serve_topic.py):
//! results, per-session order, bad messages, duplicates, hostile requests,
//! an instance killed mid-flight, and a graceful stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use runbox_tests::embedded::within;
use runbox_tests::harness::Emulators;
use runbox_tests::serve::{Serve, request};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Lease of a request message: how soon a dead instance's requests return.
const ACK_SECS: &str = "10";
/// Longest a test waits for all completions of a load: a request comes back
/// at most one lease after its instance died, and the commands then take
/// well under a minute on a loaded machine.
const LOAD_WAIT_SECS: u64 = 3 * 10 + 90;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/serve_topic.py")
}

/// The emulators with the request and completion topics of `name` made by
/// the Python client.
async fn stack(name: &str) -> Emulators {
    stack_with(name, "ordered").await
}

async fn stack_with(name: &str, ordering: &str) -> Emulators {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let out = python(&emu, &["setup", &emu.project, name, ACK_SECS, ordering]).await;
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    emu
}

fn python_command(emu: &Emulators, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script())
        .args(args)
        .env(
            "PUBSUB_EMULATOR_HOST",
            emu.pubsub_host.as_deref().expect("pubsub"),
        )
        .kill_on_drop(true);
    cmd
}

async fn python(emu: &Emulators, args: &[&str]) -> std::process::Output {
    within(300, python_command(emu, args).output())
        .await
        .expect("run python3")
}

/// `runbox serve` on the stack, pulling `name`'s requests.
async fn serve(emu: &Emulators, name: &str) -> Serve {
    let env = serve_env(emu, name);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Serve::start("127.0.0.1:0", &vars).await.expect("serve")
}

fn serve_env(emu: &Emulators, name: &str) -> BTreeMap<String, String> {
    let mut env = emu.env();
    let executor = runbox_tests::embedded::binary("runbox-executor");
    env.insert("RUNBOX_EXECUTOR".into(), executor.display().to_string());
    env.insert(
        "RUNBOX_REQUESTS_SUBSCRIPTION".into(),
        format!("{name}-requests"),
    );
    env.insert(
        "RUNBOX_COMPLETIONS_TOPIC".into(),
        format!("{name}-completions"),
    );
    env.insert("RUNBOX_REQUESTS_ACK_DEADLINE_SECS".into(), ACK_SECS.into());
    // A killed instance's session leases expire soon.
    env.insert("RUNBOX_SESSION_LEASE_TTL_MS".into(), "3000".into());
    // Each instance logs the messages it receives (id, delivery attempt).
    env.insert(
        "RUNBOX_LOG".into(),
        "warn,runbox::serve::topic=debug".into(),
    );
    env
}

/// Stops `serve` with SIGTERM; its final summary line.
async fn stop(mut serve: Serve) -> String {
    serve.terminate();
    let (status, lines) = serve.wait().await;
    assert!(status.success(), "{lines:?}");
    lines
        .into_iter()
        .find(|l| l.starts_with("runbox serve: topic:"))
        .expect("a topic summary line")
}

fn assert_ok(what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Subscriptions on the notifications topic, through the emulator's REST API.
async fn notification_subscriptions(emu: &Emulators) -> usize {
    let host = emu.pubsub_host.as_deref().expect("pubsub");
    let topic = format!("projects/{}/topics/{}", emu.project, emu.topic);
    let r = request(
        host,
        "GET",
        &format!("/v1/projects/{}/subscriptions", emu.project),
        &[],
        b"",
    )
    .await
    .expect("list subscriptions");
    r.json()["subscriptions"].as_array().map_or(0, |subs| {
        subs.iter().filter(|s| s["topic"] == topic.as_str()).count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_publishes_requests_and_reads_completions() {
    let emu = stack("t1").await;
    let serve = serve(&emu, "t1").await;
    let out = python(&emu, &["scenario", &emu.project, "t1"]).await;
    assert_ok("scenario", &out);
    let summary = stop(serve).await;
    // "not json" and the message without a requestId: dropped, counted.
    assert!(summary.contains("2 unanswerable"), "{summary}");
    assert!(summary.contains("(3 REJECTED)"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_reach_no_other_session() {
    let emu = stack("t2").await;
    let serve = serve(&emu, "t2").await;
    let marker = tempfile::tempdir().unwrap();
    let out = python(
        &emu,
        &[
            "attack",
            &emu.project,
            "t2",
            marker.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_ok("attack", &out);
    // No hostile command ran.
    assert!(!marker.path().join("ran").exists());
    let summary = stop(serve).await;
    assert!(summary.contains("3 unanswerable"), "{summary}");
    // The victim's result object is still its own.
    let id = runbox_core::RequestId::new("victim-1")
        .unwrap()
        .execution_id();
    let stored = runbox_core::store::get_json::<runbox_proto::ExecResult>(
        &emu.store(),
        &runbox_core::layout::result(&id),
        "ExecResult",
    )
    .await
    .expect("victim's result");
    assert_eq!(stored.value.stdout, "victim-out\n");
    assert_eq!(stored.value.session_id, "victim");
}

/// Runs the load script, calling `on_progress` with each progress count;
/// returns its summary.
async fn load(
    emu: &Emulators,
    name: &str,
    sessions: usize,
    per_session: usize,
    pause: &str,
    mut on_progress: impl FnMut(usize),
) -> serde_json::Value {
    let (s, p) = (sessions.to_string(), per_session.to_string());
    let wait = LOAD_WAIT_SECS.to_string();
    let mut child = python_command(emu, &["load", &emu.project, name, &s, &p, &wait, pause])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let summary = within(LOAD_WAIT_SECS + 120, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(n) = line.strip_prefix("progress ") {
                on_progress(n.parse().unwrap());
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(s) = v.get("summary")
            {
                return s.clone();
            }
        }
        panic!("the load script ended without a summary");
    })
    .await;
    assert!(within(60, child.wait()).await.unwrap().success());
    summary
}

/// Each log holds every command at most once; returns how many ran.
fn ran_once(summary: &serde_json::Value, per_session: usize) -> usize {
    let mut ran = 0;
    for (session, log) in summary["logs"].as_object().unwrap() {
        let lines: Vec<usize> = log
            .as_str()
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for i in 1..=per_session {
            let n = lines.iter().filter(|&&l| l == i).count();
            assert!(n <= 1, "{session}: command {i} ran {n} times: {lines:?}");
        }
        ran += lines.len();
    }
    ran
}

/// Instance A is killed mid-flight; B, started after, answers A's requests
/// once Pub/Sub delivers them again: the relay.
///
/// A is killed as soon as it has answered two requests, so it surely holds
/// the rest (each session's commands run one after another, 0.5 s each).
/// Its leases then run out within `ACK_SECS`; B is the only instance left
/// pulling, so they come to B (requests are pulled, not streamed: the
/// emulator never notices that a streaming client died and would keep
/// delivering to it).
///
/// The requests subscription here has no message ordering: the Pub/Sub
/// emulator (0.8.20) keeps an ordering key pinned to the stream it last
/// used, even a dead one. Order is not what this test checks; the scenario
/// test checks it with ordering on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_no_completion_and_runs_nothing_twice() {
    let emu = stack_with("t3", "unordered").await;
    let a = serve(&emu, "t3").await;
    let a_pid = a.pid();
    let (sessions, per) = (4, 8);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut killed = false;
    let load = load(&emu, "t3", sessions, per, "0.5", |done| {
        if !killed && done >= 2 {
            killed = true;
            let status = std::process::Command::new("kill")
                .args(["-KILL", &a_pid.to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let _ = tx.send(());
        }
    });
    let survivor = async {
        rx.recv().await.expect("A killed");
        let mut a = a;
        let (a_status, _) = a.wait().await;
        assert!(!a_status.success(), "A was not killed: {a_status}");
        serve(&emu, "t3").await
    };
    let (summary, b) = tokio::join!(load, survivor);
    eprintln!("summary: {summary}");
    let mut b = b;
    b.terminate();
    let (b_status, b_lines) = b.wait().await;
    assert!(b_status.success(), "{b_lines:?}");
    let b_summary = b_lines
        .iter()
        .find(|l| l.starts_with("runbox serve: topic:"))
        .expect("a topic summary line")
        .clone();
    eprintln!("B: {b_summary}");
    // A request reached B on its first, second or third delivery: A took
    // it, at most once more the pull A had open when it died took it, then
    // B. Never more, so a dead-letter policy of 5 attempts never takes one.
    let attempts: Vec<u32> = b_lines
        .iter()
        .filter(|l| l.contains("request received"))
        .filter_map(|l| l.split("attempt=").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(!attempts.is_empty(), "{b_lines:?}");
    assert!(attempts.iter().all(|&a| a <= 3), "{attempts:?}");
    let total = sessions * per;
    assert_eq!(summary["requests"], total);
    assert_eq!(summary["completed"], total, "{summary}");
    let ran = ran_once(&summary, per);
    let succeeded = summary["statuses"]["SUCCEEDED"].as_u64().unwrap_or(0) as usize;
    // Everything that succeeded ran exactly once; anything else (LOST: an
    // executor that died with its instance) ran at most once.
    assert!(ran >= succeeded, "{summary}");
    // B answered what A had not: all but the few A answered before it was
    // killed, plus the finals.
    let b_received: usize = b_summary
        .split(" request(s) received, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("B's count");
    assert!(b_received >= total / 2 + sessions, "{b_summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_topic_requests_in_flight_loses_nothing() {
    // Unordered for the emulator's sake, as in the test above: what the
    // stopping instance hands back must reach the next one.
    let emu = stack_with("t4", "unordered").await;
    let a = serve(&emu, "t4").await;
    assert_eq!(notification_subscriptions(&emu).await, 1);
    let a_pid = a.pid();
    let mut termed = false;
    let env = serve_env(&emu, "t4");
    let (sessions, per) = (2, 5);
    // The first completion triggers SIGTERM; a second instance starts once
    // the first has gone, for whatever the first handed back.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let load = load(&emu, "t4", sessions, per, "0.5", |done| {
        if !termed && done >= 1 {
            termed = true;
            let status = std::process::Command::new("kill")
                .args(["-TERM", &a_pid.to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let _ = tx.send(());
        }
    });
    let later = async {
        rx.recv().await.expect("SIGTERM sent");
        let mut a = a;
        let (status, lines) = a.wait().await;
        assert!(status.success(), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("draining")), "{lines:?}");
        // Its notifications subscription is gone.
        assert_eq!(notification_subscriptions(&emu).await, 0);
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Serve::start("127.0.0.1:0", &vars).await.expect("serve B")
    };
    let (summary, b) = tokio::join!(load, later);
    eprintln!("summary: {summary}");
    assert_eq!(summary["completed"], sessions * per, "{summary}");
    assert_eq!(
        summary["statuses"]["SUCCEEDED"],
        sessions * per,
        "{summary}"
    );
    assert_eq!(ran_once(&summary, per), sessions * per);
    stop(b).await;
}

/// The library half of "a redelivered request never runs twice", on the
/// embedded backend: the same execution id submitted again (from another
/// client, as another instance would) awaits the first run's result; a
/// different request under that id is refused and changes nothing.
#[tokio::test]
async fn a_fixed_execution_id_runs_once() {
    let (first, dir) = runbox_tests::embedded::client().await;
    let id = runbox_core::RequestId::new("lib-1").unwrap().execution_id();
    let cmd = "echo run >> runs.txt; echo done";
    let a = within(
        60,
        first
            .session("s")
            .unwrap()
            .exec(cmd)
            .execution_id(id.clone())
            .request_id("lib-1"),
    )
    .await
    .expect("first run");
    assert_eq!(a.execution_id, id.as_str());
    first.shutdown().await;

    let second = runbox_dispatcher::Client::from_config(runbox_tests::embedded::config(dir.path()))
        .await
        .unwrap();
    let b = within(
        60,
        second
            .session("s")
            .unwrap()
            .exec(cmd)
            .execution_id(id.clone())
            .request_id("lib-1"),
    )
    .await
    .expect("second submission");
    assert_eq!(b, a, "the second submission returns the first run's result");
    let other = within(
        60,
        second
            .session("t")
            .unwrap()
            .exec(cmd)
            .execution_id(id.clone())
            .request_id("lib-1"),
    )
    .await;
    assert!(
        matches!(
            other,
            Err(runbox_dispatcher::Error::ExecutionIdInUse { .. })
        ),
        "{other:?}"
    );
    let runs = within(60, second.session("s").unwrap().exec("cat runs.txt"))
        .await
        .unwrap();
    assert_eq!(runs.stdout, "run\n", "the command ran once");
    second.shutdown().await;
}
