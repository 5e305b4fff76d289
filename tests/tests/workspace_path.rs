//! One workspace path: every session's commands see their workspace at
//! `/workspace`, with a private `/tmp`, on the embedded backend, on gcp
//! with the local launcher and through the Cloud Run launcher (emulator);
//! the stored cwd is relative to the workspace, so states stay portable.
//!
//! Where this machine allows no namespace (an unprivileged user without
//! user namespaces), the namespace tests say so and check the fallback.

use std::collections::BTreeMap;
use std::time::Duration;

use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::Config;
use runbox_dispatcher::files::{ReadOptions, WriteOptions};
use runbox_dispatcher::{Client, ExecStatus, Session};
use runbox_tests::embedded::{self, binary, within};
use runbox_tests::harness::Emulators;

async fn run(s: &Session, command: &str) -> runbox_proto::ExecResult {
    let r = within(60, s.exec(command)).await.expect("exec");
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{command}: {r:?}");
    r
}

fn out(r: &runbox_proto::ExecResult) -> &str {
    r.stdout.trim_end()
}

/// Whether commands here get a namespace: the executor remembers its
/// probe beside the store.
fn namespaces_here(home: &std::path::Path) -> bool {
    std::fs::read_to_string(home.join(".runbox/namespace-probe"))
        .is_ok_and(|t| t.lines().nth(1) == Some("ok"))
}

/// A fresh session starts at /workspace (HOME too); `cd sub` persists as
/// /workspace/sub, stored as `sub`.
async fn starts_and_stays_at_the_workspace(s: &Session) {
    let r = run(s, "pwd; echo $HOME").await;
    assert_eq!(out(&r), "/workspace\n/workspace");
    assert_eq!(r.cwd, "/workspace");
    let r = run(s, "mkdir -p sub && cd sub").await;
    assert_eq!(r.cwd, "/workspace/sub");
    assert_eq!(out(&run(s, "pwd").await), "/workspace/sub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sessions_see_their_workspace_at_one_path() {
    let (client, dir) = embedded::client().await;
    let s = client.session("a").unwrap();
    starts_and_stays_at_the_workspace(&s).await;
    assert!(namespaces_here(dir.path()), "CI runs where namespaces work");
    let state = std::fs::read_to_string(dir.path().join("sessions/a/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["cwd"], "sub", "stored relative to the workspace");
    let info = within(30, client.session_info("a")).await.unwrap();
    assert_eq!(info.state.unwrap().cwd, "/workspace/sub");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_states_keep_working() {
    let (client, dir) = embedded::client().await;
    let s = client.session("old").unwrap();
    run(&s, "mkdir -p sub/deeper").await;
    // A state as runbox wrote it before: the absolute host directory.
    let state_path = dir.path().join("sessions/old/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["cwd"] = format!("{}/sessions/old/workspace/sub/deeper", dir.path().display()).into();
    // Through the store, so its generation moves on.
    let store = runbox_core::store::local::LocalStore::open(dir.path()).unwrap();
    use runbox_core::Store;
    store
        .put(
            "sessions/old/state.json",
            serde_json::to_vec(&state).unwrap().into(),
            runbox_core::PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out(&run(&s, "pwd").await), "/workspace/sub/deeper");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_private_to_the_session() {
    let (client, dir) = embedded::client().await;
    assert!(namespaces_here(dir.path()) || run_probe(&client).await);
    let name = format!("runbox-wspath-{}", std::process::id());
    let (a, b) = (client.session("a").unwrap(), client.session("b").unwrap());
    run(&a, &format!("echo from-a > /tmp/{name}")).await;
    // The session's later commands see it ...
    assert_eq!(out(&run(&a, &format!("cat /tmp/{name}")).await), "from-a");
    // ... another session does not, nor the host.
    let r = run(
        &b,
        &format!("test -e /tmp/{name} && echo seen || echo absent"),
    )
    .await;
    assert_eq!(out(&r), "absent");
    assert!(!std::path::Path::new("/tmp").join(&name).exists());
    // A background process of the session sees the same paths.
    run(&a, "mkdir -p bgdir && cd bgdir").await;
    let bg = within(30, a.spawn(format!("pwd; echo $HOME; cat /tmp/{name}")))
        .await
        .unwrap();
    let r = within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.stdout, "/workspace/bgdir\n/workspace\nfrom-a\n", "{r:?}");
    client.shutdown().await;
}

/// Runs one command so the executor has probed; true when it found
/// namespaces.
async fn run_probe(client: &Client) -> bool {
    let s = client.session("probe").unwrap();
    out(&run(&s, "pwd").await) == "/workspace"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_api_and_commands_agree_on_every_path() {
    let (client, _dir) = embedded::client().await;
    let s = client.session("files").unwrap();
    assert_eq!(s.workspace_root(), "/workspace");
    within(
        30,
        s.write_file("/workspace/api/one.txt", "one\n", WriteOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(out(&run(&s, "cat /workspace/api/one.txt").await), "one");
    run(&s, "cd api && echo two > two.txt").await;
    // The command's own absolute path, its cwd's relative one, the API's
    // relative one: one file.
    for path in [
        "/workspace/api/two.txt",
        "api/two.txt",
        "./api/../api/two.txt",
    ] {
        let text = within(30, s.read_file(path, ReadOptions::default()))
            .await
            .unwrap();
        assert_eq!(text.content, "two\n", "{path}");
    }
    client.shutdown().await;
}

/// From inside the namespace, as an attacker would: the host's /tmp,
/// another session's workspace and the store stay out of reach, however
/// they are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_session_is_reachable() {
    let home = tempfile::Builder::new()
        .prefix("runbox-wspath-home")
        .tempdir_in("/var/tmp")
        .unwrap();
    let client = within(30, Client::from_config(embedded::config(home.path())))
        .await
        .unwrap();
    let marker = format!("runbox-host-marker-{}", std::process::id());
    let host_marker = std::path::Path::new("/tmp").join(&marker);
    std::fs::write(&host_marker, "host secret\n").unwrap();
    let (victim, attacker) = (
        client.session("victim").unwrap(),
        client.session("attacker").unwrap(),
    );
    run(&victim, "echo victim secret > secret.txt").await;
    let home_text = home.path().display().to_string();
    let tries = [
        format!("/tmp/{marker}"),
        format!("/proc/1/root/tmp/{marker}"),
        format!("/proc/self/root/tmp/{marker}"),
        format!("/workspace/../tmp/{marker}"),
        format!("/workspace/../../../tmp/{marker}"),
        format!("{home_text}/sessions/victim/workspace/secret.txt"),
        format!("/proc/1/root{home_text}/sessions/victim/workspace/secret.txt"),
        "/workspace/../sessions/victim/workspace/secret.txt".to_owned(),
        format!("{home_text}/sessions/victim/state.json"),
    ];
    for path in &tries {
        let r = within(60, attacker.exec(format!("cat {path}")))
            .await
            .unwrap();
        assert_ne!(r.exit_code, 0, "{path} was readable: {}", r.stdout);
        assert!(!r.stdout.contains("secret"), "{path}: {}", r.stdout);
    }
    // Every process it can see is its own: no other session's root.
    let r = run(
        &attacker,
        "for p in /proc/[0-9]*; do cat $p/root/workspace/secret.txt 2>/dev/null; done; \
         find / -xdev -name secret.txt 2>/dev/null; ls /proc | grep -c '^[0-9]' ",
    )
    .await;
    assert!(!r.stdout.contains("victim"), "{}", r.stdout);
    // The store directory is covered; the mounts cannot be undone.
    let r = within(60, attacker.exec(format!("ls -A {home_text}")))
        .await
        .unwrap();
    assert!(r.stdout.trim().is_empty(), "store listed: {}", r.stdout);
    for undo in [
        format!("umount {home_text}"),
        format!("umount -l {home_text}"),
        "umount -l /tmp".to_owned(),
        "umount -l /workspace".to_owned(),
    ] {
        let r = within(
            60,
            attacker.exec(format!("{undo} && ls -A {home_text}/sessions")),
        )
        .await
        .unwrap();
        assert_ne!(r.exit_code, 0, "{undo} worked: {}", r.stdout);
        assert!(!r.stdout.contains("victim"), "{undo}: {}", r.stdout);
    }
    std::fs::remove_file(&host_marker).unwrap();
    client.shutdown().await;
}

// ----- the gcp backend ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_local_launcher_sees_the_same_path() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    let config = Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    let s = client.session("gcp-local").unwrap();
    starts_and_stays_at_the_workspace(&s).await;
    // The state in the bucket holds the portable form.
    let state = within(
        30,
        runbox_core::store::get_json::<runbox_proto::SessionState>(
            &emu.store(),
            "sessions/gcp-local/state.json",
            "SessionState",
        ),
    )
    .await
    .unwrap();
    assert_eq!(state.value.cwd, "sub");
    drop(base);
    client.shutdown().await;
}

const PARENT: &str = "projects/p/locations/us-central1";
const EXECUTOR_IMAGE: &str = "runbox-executor:test";

/// gcp with the Cloud Run launcher: the emulator runs each execution's
/// executor, configured by the job's environment, as Cloud Run would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_cloud_run_launcher_sees_the_same_path() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let emulator_config = EmulatorConfig::default()
        .image(
            EXECUTOR_IMAGE,
            [binary("runbox-executor").display().to_string()],
        )
        .inherit_env(false)
        .kill_grace(Duration::from_millis(500))
        .supervisor(binary("runbox-cloudrun-emulator"));
    let emulator = within(
        10,
        Emulator::start("127.0.0.1:0".parse().expect("address"), emulator_config),
    )
    .await
    .expect("start the emulator");
    let endpoint = emulator.endpoint();
    let env: BTreeMap<String, String> = emu.env();
    create_job(&endpoint, &env).await;
    let mut client_env = env.clone();
    client_env.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
    client_env.insert(
        "RUNBOX_CLOUD_RUN_JOB".into(),
        format!("{PARENT}/jobs/runbox"),
    );
    client_env.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), endpoint.clone());
    let config = Config::from_lookup(&client_env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    let s = client.session("via-cloud-run").unwrap();
    starts_and_stays_at_the_workspace(&s).await;
    // Files written by a command are where the file API looks.
    run(&s, "echo hi > note.txt").await;
    let text = within(
        30,
        s.read_file("/workspace/sub/note.txt", ReadOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(text.content, "hi\n");
    within(10, client.shutdown()).await;
    within(10, emulator.shutdown())
        .await
        .expect("emulator shutdown");
}

/// A job template running the executor image with `env`, one task, no
/// retries.
async fn create_job(endpoint: &str, env: &BTreeMap<String, String>) {
    let env: Vec<_> = env.iter().collect();
    runbox_tests::cloud_run::create_executor_job(endpoint, PARENT, "runbox", EXECUTOR_IMAGE, &env)
        .await;
}
