//! Warm sessions on the Cloud Run launcher, on the emulator stack: the
//! Cloud Run emulator runs `runbox-executor` tasks on the gcp backend
//! (fake-gcs-server, whose finalize notifications reach Google's Pub/Sub
//! emulator), the first command of a warm session is one RunJob, and later
//! commands reach that execution over the commands topic.

use std::future::IntoFuture;
use std::time::Duration;

use googleapis_tonic_google_cloud_run_v2::google::cloud::run::v2::{
    GetExecutionRequest, condition, executions_client::ExecutionsClient,
};
use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
use runbox_core::store::{PutOptions, Store};
use runbox_core::warm::WarmMarker;
use runbox_core::{ExecutionId, SessionId, layout};
use runbox_dispatcher::{Client, ExecStatus, Session, SessionMode, SessionSettings};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::Announcements;
use runbox_tests::procs::{executor_of, kill_executor, wait_exited};
use runbox_tests::warm::{ECHO_LINES, stdout_until};

const PARENT: &str = "projects/p/locations/us-central1";
const IMAGE: &str = "runbox-executor:warm";
const COMMANDS_TOPIC: &str = "runbox-commands";

/// A pipe the commands of a Cloud Run task can write: they run as
/// `nobody` there (the executor is root), so the pipe is opened to all.
fn pipe(dir: &std::path::Path, name: &str) -> Announcements {
    use std::os::unix::fs::PermissionsExt;
    let pipe = Announcements::new(dir, name);
    std::fs::set_permissions(pipe.path(), std::fs::Permissions::from_mode(0o666))
        .expect("open the pipe to commands");
    pipe
}

/// The emulators, the Cloud Run emulator with a `runbox` job on them, and
/// a client using the Cloud Run launcher.
struct Stack {
    client: Client,
    cloud_run: Emulator,
    emu: Emulators,
    /// The client's configuration, for a `runbox` process of its own.
    env: std::collections::BTreeMap<String, String>,
    _dirs: [tempfile::TempDir; 2],
}

impl Stack {
    /// The stack; `client_env` is added to the client's configuration.
    async fn start(client_env: &[(&str, &str)]) -> Self {
        Self::start_with(client_env, &[]).await
    }

    /// The stack, with `task_env` added to (or replacing) the job's
    /// template variables.
    async fn start_with(client_env: &[(&str, &str)], task_env: &[(&str, &str)]) -> Self {
        let emu = within(120, Emulators::start()).await.expect("emulators");
        let pubsub = within(30, emu.pubsub_client()).await.expect("pubsub");
        within(30, pubsub.topic(COMMANDS_TOPIC).create(None, None))
            .await
            .expect("create the commands topic");
        let config = EmulatorConfig::default()
            .image(IMAGE, [binary("runbox-executor").display().to_string()])
            .inherit_env(false)
            .kill_grace(Duration::from_millis(500))
            .supervisor(binary("runbox-cloudrun-emulator"));
        let cloud_run = within(10, Emulator::start("127.0.0.1:0".parse().unwrap(), config))
            .await
            .expect("start the Cloud Run emulator");
        let endpoint = cloud_run.endpoint();
        let (workspaces, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut template: Vec<(String, String)> = emu.env().into_iter().collect();
        template.push(("RUNBOX_KILL_GRACE_MS".into(), "300".into()));
        template.retain(|(k, _)| !task_env.iter().any(|(name, _)| name == k));
        template.extend(task_env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        template.push((
            "RUNBOX_WORKSPACE_DIR".into(),
            workspaces.path().display().to_string(),
        ));
        runbox_tests::cloud_run::create_executor_job(&endpoint, PARENT, "runbox", IMAGE, &template)
            .await;
        let mut env = emu.env();
        env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
        env.insert("RUNBOX_LAUNCHER".into(), "cloudrun".into());
        env.insert(
            "RUNBOX_CLOUD_RUN_JOB".into(),
            format!("{PARENT}/jobs/runbox"),
        );
        env.insert("RUNBOX_CLOUD_RUN_ENDPOINT".into(), endpoint);
        env.insert("RUNBOX_COMMANDS_TOPIC".into(), COMMANDS_TOPIC.into());
        env.insert("RUNBOX_COMPLETION_GRACE_MS".into(), "1000".into());
        for (k, v) in client_env {
            env.insert((*k).into(), (*v).into());
        }
        let config = runbox_core::Config::from_lookup(&env).expect("config");
        let client = within(60, Client::from_config(config)).await.unwrap();
        Self {
            client,
            cloud_run,
            emu,
            env,
            _dirs: [workspaces, home],
        }
    }

    /// A warm session named `id` with the given idle timeout.
    async fn warm(&self, id: &str, idle: Duration) -> Session {
        let settings = SessionSettings::new(SessionMode::Warm)
            .with_idle_timeout(idle)
            .unwrap();
        within(30, self.client.create_session_with(id, settings))
            .await
            .unwrap();
        self.client.session(id).unwrap()
    }

    /// Runs `command`, expecting success; its stdout.
    async fn ok(&self, s: &Session, command: &str) -> String {
        let r = within(60, s.exec(command)).await.unwrap();
        assert_eq!(
            r.exec_status(),
            ExecStatus::Succeeded,
            "{command}: {r:?}\n{}",
            self.emu.logs()
        );
        r.stdout
    }

    /// The session's warm marker, if there is one.
    async fn marker(&self, session: &str) -> Option<WarmMarker> {
        let name = layout::warm_marker(&SessionId::new(session).unwrap());
        let object = self.emu.store().get(&name).await.ok()?;
        Some(serde_json::from_slice(&object.data).expect("a marker"))
    }

    /// Waits (WaitOperation, held by the emulator) until the warm
    /// execution of `marker` has ended; whether it succeeded.
    async fn execution_succeeded(&self, marker: &WarmMarker) -> bool {
        use googleapis_tonic_google_longrunning::google::longrunning::{
            WaitOperationRequest, operations_client::OperationsClient,
        };
        let channel = tonic::transport::Endpoint::from_shared(self.cloud_run.endpoint()).unwrap();
        let channel = within(10, channel.connect()).await.unwrap();
        let op = within(
            60,
            OperationsClient::new(channel.clone()).wait_operation(WaitOperationRequest {
                name: marker.operation.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 50,
                    nanos: 0,
                }),
            }),
        )
        .await
        .expect("WaitOperation")
        .into_inner();
        assert!(op.done, "the execution still runs");
        let execution = within(
            10,
            ExecutionsClient::new(channel).get_execution(GetExecutionRequest {
                name: marker.execution.clone(),
            }),
        )
        .await
        .expect("GetExecution")
        .into_inner();
        execution.conditions.iter().any(|c| {
            c.r#type == "Completed" && c.state == condition::State::ConditionSucceeded as i32
        })
    }

    async fn stop(self) {
        self.client.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runjob_serves_every_command_and_the_shell_lives_on() {
    let stack = Stack::start(&[]).await;
    let s = stack.warm("defs", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    let first = within(
        60,
        s.exec("greet() { echo \"hi $1\"; }; alias ll='echo aliased'; plain=unexported; set -o pipefail; echo $$"),
    )
    .await
    .unwrap();
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let n = 5;
    for i in 0..n {
        let out = stack
            .ok(
                &s,
                &format!("greet {i}; ll; echo \"$plain\"; [[ -o pipefail ]] && echo pf; echo $$"),
            )
            .await;
        assert_eq!(
            out,
            format!("hi {i}\naliased\nunexported\npf\n{}", first.stdout)
        );
    }
    assert_eq!(
        stack.cloud_run.run_job_calls() - before,
        1,
        "one RunJob for {} commands",
        n + 1
    );
    let info = within(30, stack.client.session_info("defs")).await.unwrap();
    assert_eq!(info.settings.mode, SessionMode::Warm);
    assert_eq!(
        info.warm_execution.as_deref(),
        Some(first.execution_id.as_str())
    );
    let marker = stack.marker("defs").await.expect("the warm marker");
    assert_eq!(marker.first, first.execution_id);

    // A background server of one command, reached from the next one. It
    // says when it listens, through a pipe: nothing waits on time.
    let dir = tempfile::tempdir().unwrap();
    let mut ready = pipe(dir.path(), "ready");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    stack.ok(&s, "echo served > page.txt").await;
    let start = runbox_tests::warm::http_server_command(port, &ready.shell_path());
    assert_eq!(stack.ok(&s, &start).await, "started\n");
    assert_eq!(within(30, ready.next()).await, "listening");
    let page = stack
        .ok(
            &s,
            &format!(
                "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:{port}/page.txt\").read().decode(), end=\"\")'"
            ),
        )
        .await;
    assert_eq!(page, "served\n");
    assert_eq!(stack.cloud_run.run_job_calls() - before, 1);

    // `sessions close` ends it at once: a command it runs ends CANCELLED.
    let mut running = pipe(dir.path(), "running");
    let hung = tokio::spawn(
        s.exec(format!("echo running > {}; sleep 60", running.shell_path()))
            .into_future(),
    );
    assert_eq!(within(30, running.next()).await, "running");
    let executor = executor_of(&first.execution_id).expect("the warm executor runs");
    within(60, stack.client.close_session("defs"))
        .await
        .unwrap();
    let r = within(60, hung).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Cancelled, "{r:?}");
    assert!(
        wait_exited(&[executor], Duration::from_secs(20))
            .await
            .is_empty()
    );
    let info = within(30, stack.client.session_info("defs")).await.unwrap();
    assert_eq!(info.warm_execution, None);
    assert_eq!(stack.marker("defs").await, None, "the marker is removed");
    // Its subscription went with it.
    let pubsub = stack.emu.pubsub_client().await.unwrap();
    let sub = pubsub.subscription(&format!("runbox-warm-{}", first.execution_id));
    assert!(
        !sub.exists(None).await.unwrap(),
        "the subscription is deleted"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_it_and_the_next_execution_has_the_saved_state() {
    let stack = Stack::start(&[]).await;
    let s = stack.warm("idle", Duration::from_secs(2)).await;
    let before = stack.cloud_run.run_job_calls();
    let r = within(
        60,
        s.exec("mkdir -p d && cd d && export KEEP=kept && fn() { :; } && echo hi > f.txt"),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    let marker = stack.marker("idle").await.expect("the warm marker");
    let executor = executor_of(&r.execution_id).expect("the warm executor runs");
    assert!(
        wait_exited(&[executor], Duration::from_secs(30))
            .await
            .is_empty(),
        "the warm execution did not end when idle"
    );
    assert!(stack.execution_succeeded(&marker).await);
    assert_eq!(stack.marker("idle").await, None, "it removed its marker");
    let out = stack
        .ok(
            &s,
            "pwd; echo $KEEP; cat f.txt; type fn >/dev/null 2>&1 || echo fresh-shell",
        )
        .await;
    assert_eq!(out, "/workspace/d\nkept\nhi\nfresh-shell\n");
    assert_eq!(stack.cloud_run.run_job_calls() - before, 2);
    within(60, stack.client.close_session("idle"))
        .await
        .unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_execution_loses_its_command_and_nothing_published_later_is_lost() {
    let stack = Stack::start(&[]).await;
    let s = stack.warm("crash", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    let first = within(60, s.exec("export SAVED=yes; doomed() { :; }; echo $$"))
        .await
        .unwrap();
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut running = pipe(dir.path(), "running");
    let hung = tokio::spawn(
        s.exec(format!("echo running > {}; sleep 60", running.shell_path()))
            .timeout(Duration::from_secs(120))
            .into_future(),
    );
    assert_eq!(within(30, running.next()).await, "running");
    let executor = executor_of(&first.execution_id).expect("the warm executor");
    kill_executor(&first.execution_id);
    let lost = within(60, hung).await.unwrap().unwrap();
    assert_eq!(lost.exec_status(), ExecStatus::Lost, "{lost:?}");
    assert!(
        wait_exited(&[executor], Duration::from_secs(20))
            .await
            .is_empty()
    );
    // The marker still names the dead execution: this command is published
    // to it, seen not taken, and started in a new execution.
    assert!(
        stack.marker("crash").await.is_some(),
        "the stale marker stays"
    );
    let out = stack
        .ok(&s, "type doomed >/dev/null 2>&1 || echo fresh; echo $SAVED")
        .await;
    assert_eq!(out, "fresh\nyes\n");
    assert_eq!(stack.cloud_run.run_job_calls() - before, 2);

    // Killed while idle: the next command is not lost either.
    let info = within(30, stack.client.session_info("crash"))
        .await
        .unwrap();
    let second = info.warm_execution.expect("a warm execution runs");
    let executor = executor_of(&second).expect("the second warm executor");
    kill_executor(&second);
    assert!(
        wait_exited(&[executor], Duration::from_secs(20))
            .await
            .is_empty()
    );
    assert_eq!(stack.ok(&s, "echo again $SAVED").await, "again yes\n");
    assert_eq!(stack.cloud_run.run_job_calls() - before, 3);
    within(60, stack.client.close_session("crash"))
        .await
        .unwrap();
    stack.stop().await;
}

/// The task timeout: the first command's timeout (8 s) plus the margin
/// (15 s) is the warm execution's task timeout, so it takes commands for
/// 8 s from its start. A command that would outlive that is not taken: the
/// execution hands over (exits cleanly) and the command runs in a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_hands_over_before_the_task_timeout() {
    let stack = Stack::start(&[("RUNBOX_WARM_TASK_TIMEOUT_SECS", "10")]).await;
    let s = stack.warm("handover", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    let first = within(
        60,
        s.exec("export KEEP=kept; f() { :; }; echo $$")
            .timeout(Duration::from_secs(8)),
    )
    .await
    .unwrap();
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let marker = stack.marker("handover").await.expect("the warm marker");
    let executor = executor_of(&first.execution_id).expect("the warm executor");
    // Within its lifetime: taken.
    let r = within(
        60,
        s.exec("f && echo same; echo $$")
            .timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, format!("same\n{}", first.stdout), "{r:?}");
    // Its dispatcher-side deadline would send a 30 s command elsewhere at
    // once; moved out of the way, the executor itself must refuse it.
    let mut forged = marker.clone();
    forged.deadline_ms = u64::MAX;
    stack
        .emu
        .store()
        .put(
            &layout::warm_marker(&SessionId::new("handover").unwrap()),
            serde_json::to_vec(&forged).unwrap().into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let r = within(
        60,
        s.exec("type f >/dev/null 2>&1 || echo fresh; echo $KEEP")
            .timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "fresh\nkept\n");
    assert!(
        wait_exited(&[executor], Duration::from_secs(20))
            .await
            .is_empty()
    );
    assert!(
        stack.execution_succeeded(&marker).await,
        "the first execution ended on its own, not by the task timeout"
    );
    assert_eq!(stack.cloud_run.run_job_calls() - before, 2);
    // The new execution's deadline is honoured by the dispatcher: a
    // command longer than its lifetime starts a third one directly.
    let r = within(60, s.exec("echo $KEEP").timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.stdout, "kept\n", "{r:?}");
    assert_eq!(stack.cloud_run.run_job_calls() - before, 3);
    within(60, stack.client.close_session("handover"))
        .await
        .unwrap();
    stack.stop().await;
}

/// A command of session B publishes `run` messages for session A's warm
/// execution on the commands topic (through the emulator's REST API, which
/// the command can reach): A's finished first command, B's own running
/// command, a made-up id, and one whose data and attribute disagree. A runs
/// none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_command_cannot_make_a_warm_execution_run_anything() {
    let stack = Stack::start(&[]).await;
    let a = stack.warm("victim", Duration::from_secs(120)).await;
    let first = within(60, a.exec("echo one > count.txt; echo $$"))
        .await
        .unwrap();
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let marker = stack.marker("victim").await.expect("the warm marker");
    let result_name = layout::result(&ExecutionId::new(&first.execution_id).unwrap());
    let result_before = stack.emu.store().head(&result_name).await.unwrap();
    let b = stack.client.session("attacker").unwrap();
    let host = stack.emu.pubsub_host.clone().unwrap();
    let script = format!(
        r#"python3 - "$RUNBOX_EXECUTION_ID" <<'EOF'
import base64, json, sys, urllib.request
url = "http://{host}/v1/projects/{project}/topics/{COMMANDS_TOPIC}:publish"
def msg(execution, data=None):
    return {{"data": base64.b64encode((data or execution).encode()).decode(),
            "attributes": {{"session": "victim", "kind": "run", "execution": execution, "warm": "{warm}"}}}}
messages = [msg("{first}"), msg(sys.argv[1]), msg("{MADE_UP}"), msg("{MADE_UP}", data=sys.argv[1]),
            msg("../../etc/passwd")]
body = json.dumps({{"messages": messages}}).encode()
req = urllib.request.Request(url, data=body, headers={{"content-type": "application/json"}})
print(urllib.request.urlopen(req).status)
EOF"#,
        project = stack.emu.project,
        warm = marker.first,
        first = first.execution_id,
    );
    let r = within(60, b.exec(script)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "200\n", "the command reached the topic: {r:?}");
    // The next legitimate command is published after those: once it is
    // done, the execution has pulled them.
    let out = stack.ok(&a, "cat count.txt; echo $$").await;
    assert_eq!(out, format!("one\n{}", first.stdout));
    let store = stack.emu.store();
    let after = store.head(&result_name).await.unwrap();
    assert_eq!(
        after.generation, result_before.generation,
        "A's first result was rewritten"
    );
    for id in [
        r.execution_id.as_str(),
        MADE_UP,
        first.execution_id.as_str(),
    ] {
        let id = ExecutionId::new(id).unwrap();
        assert!(
            store.head(&layout::warm_taken(&id)).await.is_err(),
            "A took {id}"
        );
    }
    assert!(
        store
            .head(&layout::result(&ExecutionId::new(MADE_UP).unwrap()))
            .await
            .is_err(),
        "a result was written for a made-up execution"
    );
    let info = within(30, stack.client.session_info("attacker"))
        .await
        .unwrap();
    assert_eq!(info.state.unwrap().exec_count, 1);
    within(60, stack.client.close_session("victim"))
        .await
        .unwrap();
    // Counted by the time it has ended, even when they changed no state.
    let info = within(30, stack.client.session_info("victim"))
        .await
        .unwrap();
    assert_eq!(
        info.state.unwrap().exec_count,
        2,
        "A ran only its own commands"
    );
    stack.stop().await;
}

/// An execution id nothing ran.
const MADE_UP: &str = "abcdef-01m8pma3r90000000";

/// stdin over Pub/Sub: write, see the answer, write again, on the first
/// command of a new warm execution and on one delivered to it, with one
/// RunJob for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_reaches_a_running_command_over_pubsub() {
    let stack = Stack::start(&[]).await;
    let s = stack.warm("talk", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    for round in ["first command", "delivered command"] {
        runbox_tests::warm::write_answer_write(&s, round).await;
    }
    // More than one message's worth, in order, read to its end.
    let (exec, stdin) = s.exec("wc -c; echo $$").stdin_stream();
    let result = tokio::spawn(exec.into_future());
    let big = vec![b'x'; 3 * runbox_core::warm::wire::MAX_FRAME + 7];
    within(60, stdin.write(big.clone())).await.unwrap();
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("{}\n", big.len())),
        "{:?}",
        r.stdout
    );
    assert_eq!(stack.cloud_run.run_job_calls() - before, 1);
    within(60, stack.client.close_session("talk"))
        .await
        .unwrap();
    stack.stop().await;
}

/// `printf 'a\nb\n' | runbox exec -s W -- 'while read l; ...'` on the Cloud
/// Run launcher: a new execution, then one delivered to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_streams_its_piped_stdin_on_cloud_run() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start(&[]).await;
    stack.warm("W", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    for _ in 0..2 {
        let mut child = tokio::process::Command::new(binary("runbox"))
            .args(["exec", "-s", "W", "--", ECHO_LINES])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&stack.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run runbox");
        let mut input = child.stdin.take().unwrap();
        within(30, input.write_all(b"a\nb\n")).await.unwrap();
        drop(input);
        let out = within(120, child.wait_with_output()).await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got a\ngot b\n");
    }
    assert_eq!(stack.cloud_run.run_job_calls() - before, 1);
    within(60, stack.client.close_session("W")).await.unwrap();
    stack.stop().await;
}

/// A command of session B publishes `stdin` messages for A's running
/// command on the commands topic (the emulator's REST API, which commands
/// can reach), naming A's session, execution and warm execution, with the
/// next sequence numbers: without a token, with a made-up one, with the
/// digest A's request object holds, and one that would end A's input.
/// A's command reads none of them, and its own input goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_feed_a_running_commands_stdin() {
    let stack = Stack::start(&[]).await;
    let a = stack.warm("victim", Duration::from_secs(120)).await;
    let (exec, stdin) = a.exec(ECHO_LINES).stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    within(30, stdin.write("a\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got a\n").await;
    // The first command names the warm execution.
    let marker = stack.marker("victim").await.expect("the warm marker");
    let id = ExecutionId::new(&marker.first).unwrap();
    let request = stack.emu.store().get(&layout::request(&id)).await.unwrap();
    let request: serde_json::Value = serde_json::from_slice(&request.data).unwrap();
    let digest = request["stdinTokenSha256"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64, "{request}");
    let b = stack.client.session("attacker").unwrap();
    let host = stack.emu.pubsub_host.clone().unwrap();
    let script = format!(
        r#"python3 - <<'EOF'
import base64, json, urllib.request
url = "http://{host}/v1/projects/{project}/topics/{COMMANDS_TOPIC}:publish"
def msg(seq, data, token=None, end=False):
    attributes = {{"session": "victim", "kind": "stdin", "execution": "{id}",
                   "warm": "{id}", "seq": str(seq)}}
    if token is not None:
        attributes["token"] = token
    if end:
        attributes["end"] = "1"
    return {{"data": base64.b64encode(data.encode()).decode(), "attributes": attributes}}
messages = []
for seq in (1, 2, 3):
    messages += [msg(seq, "evil\n"), msg(seq, "forged\n", token="0" * 32),
                 msg(seq, "copied\n", token="{digest}"), msg(seq, "", token="{digest}", end=True)]
body = json.dumps({{"messages": messages}}).encode()
req = urllib.request.Request(url, data=body, headers={{"content-type": "application/json"}})
print(urllib.request.urlopen(req).status)
EOF"#,
        project = stack.emu.project,
    );
    let r = within(60, b.exec(script)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "200\n", "the command reached the topic: {r:?}");
    // Published after the attacker's: taken, they would have been its
    // lines 1 and 2 and this input a copy.
    within(30, stdin.write("b\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got b\n").await;
    within(30, stdin.write("c\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got c\n").await;
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "got a\ngot b\ngot c\n");
    within(60, stack.client.close_session("victim"))
        .await
        .unwrap();
    stack.stop().await;
}

/// A warm execution that cannot pull its subscription (here its task
/// reaches no Pub/Sub: the job's `PUBSUB_EMULATOR_HOST` names a closed
/// port) runs its first command as a oneshot execution would, not LOST;
/// the next command starts a fresh attempt and sees the saved state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_subscribe_runs_the_first_command_oneshot() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let stack = Stack::start_with(&[], &[("PUBSUB_EMULATOR_HOST", &nowhere)]).await;
    let s = stack.warm("unsub", Duration::from_secs(120)).await;
    let before = stack.cloud_run.run_job_calls();
    let first = within(90, s.exec("export KEEP=kept; echo first"))
        .await
        .unwrap();
    assert_eq!(
        first.exec_status(),
        ExecStatus::Succeeded,
        "{first:?}\n{}",
        stack.emu.logs()
    );
    assert_eq!(first.stdout, "first\n");
    let r = within(90, s.exec("echo $KEEP")).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "kept\n");
    assert_eq!(
        stack.cloud_run.run_job_calls() - before,
        2,
        "each command started an execution of its own"
    );
    // Nothing names a warm execution that no longer takes commands.
    assert_eq!(stack.marker("unsub").await, None);
    let info = within(30, stack.client.session_info("unsub"))
        .await
        .unwrap();
    assert_eq!(info.warm_execution, None);
    stack.stop().await;
}
