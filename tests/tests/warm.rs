//! Warm sessions on the embedded backend: one execution keeps a live bash
//! for the session, later commands reach it without a launch, and every
//! command still reports through its own result object.

use std::future::IntoFuture;
use std::time::Duration;

use runbox_core::Store;
use runbox_dispatcher::{Client, ExecStatus, Session, SessionMode, SessionSettings};
use runbox_tests::embedded::{client, within};
use runbox_tests::pipes::Announcements;
use runbox_tests::procs::{executor_of, wait_exited};

/// A warm session named `id` with the given idle timeout.
async fn warm(client: &Client, id: &str, idle: Duration) -> Session {
    let settings = SessionSettings::new(SessionMode::Warm)
        .with_idle_timeout(idle)
        .unwrap();
    let info = within(30, client.create_session_with(id, settings))
        .await
        .unwrap();
    assert_eq!(info.settings.mode, SessionMode::Warm);
    client.session(id).unwrap()
}

/// Runs `command`, expecting success; its stdout.
async fn ok(s: &Session, command: &str) -> String {
    let r = within(60, s.exec(command)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{command}: {r:?}");
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_aliases_variables_and_options_persist() {
    let (client, _dir) = client().await;
    let s = warm(&client, "defs", Duration::from_secs(60)).await;
    let first = ok(
        &s,
        "greet() { echo \"hi $1\"; }; alias ll='echo aliased'; plain=unexported; \
         set -o pipefail; shopt -s extglob; mkdir -p sub; cd sub; export KEPT=1; echo $$",
    )
    .await;
    let out = ok(
        &s,
        "greet you; ll; echo \"$plain\"; [[ -o pipefail ]] && echo pipefail; \
         shopt -q extglob && echo extglob; pwd; echo \"$KEPT\"; echo $$",
    )
    .await;
    assert_eq!(
        out,
        format!("hi you\naliased\nunexported\npipefail\nextglob\n/workspace/sub\n1\n{first}")
    );
    // A request's extra variable is for its command only, as in oneshot
    // mode; one the command changed is kept.
    assert_eq!(
        within(30, s.exec("echo ${ONCE:-none}").env("ONCE", "yes"))
            .await
            .unwrap()
            .stdout,
        "yes\n"
    );
    assert_eq!(ok(&s, "echo ${ONCE:-none}").await, "none\n");
    within(30, s.exec("export ONCE=changed").env("ONCE", "yes"))
        .await
        .unwrap();
    assert_eq!(ok(&s, "echo ${ONCE:-none}").await, "changed\n");
    // A command's standard input is its own.
    let r = within(30, s.exec("cat; echo end").stdin("from stdin\n"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "from stdin\nend\n");
    within(30, client.close_session("defs")).await.unwrap();
}

/// The command's text and its extra variables reach the shell on its
/// line, quoted: every byte arrives as sent, none is run as shell syntax
/// of the line itself, and a command without input reads end of file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_text_and_variables_arrive_byte_for_byte() {
    let (client, _dir) = client().await;
    let s = warm(&client, "bytes", Duration::from_secs(60)).await;
    let tricky = "it's \"quoted\" \\ $HOME `x` $(y) ; & | \u{e9}\u{1f600}\nsecond line\t tab";
    let r = within(
        30,
        s.exec("printf '%s|' \"$V\" 'it'\\''s'; echo; echo \"$(printf 'line\\n')\"; cat; echo eof")
            .env("V", tricky),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, format!("{tricky}|it's|\nline\neof\n"), "{r:?}");
    // A `'` or newline in the text cannot end the line early: what follows
    // them is still part of this command, and the next one runs alone.
    let r = within(30, s.exec("echo 'a\nb'\necho \"c'd\""))
        .await
        .unwrap();
    assert_eq!(r.stdout, "a\nb\nc'd\n", "{r:?}");
    assert_eq!(ok(&s, "echo ${V:-unset}").await, "unset\n");
    within(30, client.close_session("bytes")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_execution_serves_many_commands() {
    let (client, _dir) = client().await;
    let s = warm(&client, "many", Duration::from_secs(60)).await;
    let n = 20;
    let mut shells = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let r = within(30, s.exec(format!("echo $$ {i}"))).await.unwrap();
        assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
        let (shell, echoed) = r.stdout.trim().split_once(' ').unwrap();
        assert_eq!(echoed, i.to_string());
        shells.insert(shell.to_owned());
        ids.push(r.execution_id.clone());
    }
    // One shell, one executor process: launched by the first command only.
    assert_eq!(shells.len(), 1, "{shells:?}");
    let info = within(30, client.session_info("many")).await.unwrap();
    assert_eq!(info.warm_execution.as_deref(), Some(ids[0].as_str()));
    let executor = executor_of(&ids[0]).expect("the warm executor runs");
    for later in &ids[1..] {
        assert_eq!(
            executor_of(later),
            None,
            "{later} got an executor of its own"
        );
    }
    // Every command still has its own result object.
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), n);
    // Closing ends it at once.
    within(30, client.close_session("many")).await.unwrap();
    assert!(
        wait_exited(&[executor], Duration::from_secs(10))
            .await
            .is_empty()
    );
    let info = within(30, client.session_info("many")).await.unwrap();
    assert_eq!(info.warm_execution, None);
    // Commands that changed no state are counted when it ends.
    assert_eq!(info.state.unwrap().exec_count, n as u64);
}

/// The generation of session `id`'s state object in the store at `home`.
async fn state_generation(home: &std::path::Path, id: &str) -> i64 {
    let store = runbox_core::store::LocalStore::open(home).expect("open the store");
    let name = runbox_core::layout::session_state(&runbox_core::SessionId::new(id).unwrap());
    store
        .head(&name)
        .await
        .expect("the state exists")
        .generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_changes_no_state_does_not_rewrite_it() {
    let (client, dir) = client().await;
    let s = warm(&client, "still", Duration::from_secs(60)).await;
    let first = within(30, s.exec("mkdir -p d; cd d; export A=1"))
        .await
        .unwrap();
    assert_eq!(first.exec_status(), ExecStatus::Succeeded, "{first:?}");
    let written = state_generation(dir.path(), "still").await;
    assert_eq!(first.state_generation, written);
    // Output, a failing status, an unexported variable, a function: none
    // of it is in the state.
    for command in [
        "true",
        "echo out; false",
        "plain=1; f() { :; }",
        "cd /workspace/d",
    ] {
        let r = within(30, s.exec(command)).await.unwrap();
        assert!(r.not_saved.is_empty(), "{command}: {r:?}");
        assert_eq!(r.state_generation, written, "{command}: {r:?}");
        assert_eq!(r.cwd, "/workspace/d", "{command}: {r:?}");
    }
    assert_eq!(state_generation(dir.path(), "still").await, written);
    // The saved state is still right: a new execution starts from it.
    let executor = executor_of(&first.execution_id).expect("the warm executor runs");
    runbox_tests::procs::kill_executor(&first.execution_id);
    assert!(
        wait_exited(&[executor], Duration::from_secs(10))
            .await
            .is_empty()
    );
    let after = within(30, s.exec("pwd; echo $A")).await.unwrap();
    assert_eq!(after.stdout, "/workspace/d\n1\n", "{after:?}");
    let second = executor_of(&after.execution_id).expect("the new warm executor runs");
    // A command that changes the cwd or env does write it.
    for command in ["cd ..", "export B=2", "unset A"] {
        let r = within(30, s.exec(command)).await.unwrap();
        assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{command}: {r:?}");
        let now = state_generation(dir.path(), "still").await;
        assert_eq!(r.state_generation, now, "{command}: {r:?}");
        assert!(now > written, "{command}: {r:?}");
    }
    within(30, client.close_session("still")).await.unwrap();
    // Its spare staging file goes when its store does, as the process ends.
    assert!(
        wait_exited(&[second], Duration::from_secs(10))
            .await
            .is_empty()
    );
    let state = within(30, client.session_info("still"))
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(
        (state.cwd.as_str(), state.env.get("B").map(String::as_str)),
        ("/workspace", Some("2"))
    );
    assert!(!state.env.contains_key("A"), "{state:?}");
    // The counts of the commands that changed nothing since the last write
    // are what the kill lost: the first command, the one after the kill and
    // the three writes are counted.
    assert_eq!(state.exec_count, 5, "{state:?}");
    // The closed execution took its spare staging file with it; only the
    // killed one's is left (its names begin with its pid), beside this
    // process's own: the client's store keeps one too, once it has written
    // twice.
    let own = format!("{}-", std::process::id());
    let staged: Vec<String> = std::fs::read_dir(dir.path().join(".runbox/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp") && !name.starts_with(&own))
        .collect();
    assert!(staged.len() <= 1, "{staged:?}");
    assert!(
        staged
            .iter()
            .all(|name| name.starts_with(&format!("{executor}-"))),
        "{staged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_server_is_reached_from_the_next_command() {
    let (client, dir) = client().await;
    let s = warm(&client, "server", Duration::from_secs(60)).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut ready = Announcements::new(dir.path(), "ready");
    ok(&s, "echo served > page.txt").await;
    // The server says when it listens, through the pipe; nothing waits on
    // time.
    let start = runbox_tests::warm::http_server_command(port, &ready.shell_path());
    assert_eq!(ok(&s, &start).await, "started\n");
    assert_eq!(within(30, ready.next()).await, "listening");
    // curl where CI has it not: Python's own client, a separate process
    // of the next command, reaching the job of the previous one.
    let page = ok(
        &s,
        &format!(
            "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:{port}/page.txt\").read().decode(), end=\"\")'"
        ),
    )
    .await;
    assert_eq!(page, "served\n");
    // It is the shell's job, still running.
    assert!(ok(&s, "jobs -r").await.contains("python3"));
    within(30, client.close_session("server")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_it_and_the_next_command_starts_from_the_saved_state() {
    let (client, _dir) = client().await;
    let s = warm(&client, "idle", Duration::from_secs(1)).await;
    let r = within(
        30,
        s.exec(
            "mkdir -p d && cd d && export KEEP=kept && fn() { :; } && echo hi > f.txt && echo $$",
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    let executor = executor_of(&r.execution_id).expect("the warm executor runs");
    // It exits by itself once idle.
    assert!(
        wait_exited(&[executor], Duration::from_secs(20))
            .await
            .is_empty(),
        "the warm execution did not end when idle"
    );
    assert_eq!(
        within(30, client.session_info("idle"))
            .await
            .unwrap()
            .warm_execution,
        None
    );
    // The next command starts a fresh shell with cwd, env and files intact.
    let r = within(
        30,
        s.exec("pwd; echo $KEEP; cat f.txt; type fn >/dev/null 2>&1 || echo fresh-shell"),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, "/workspace/d\nkept\nhi\nfresh-shell\n", "{r:?}");
    assert!(
        executor_of(&r.execution_id).is_some(),
        "a new warm execution"
    );
    within(30, client.close_session("idle")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_command_not_the_shell() {
    let (client, _dir) = client().await;
    let s = warm(&client, "timeout", Duration::from_secs(60)).await;
    let shell = ok(&s, "still() { echo defined; }; echo $$").await;
    for command in ["sleep 30; echo after", "while :; do :; done; echo after"] {
        let r = within(30, s.exec(command).timeout(Duration::from_millis(500)))
            .await
            .unwrap();
        assert_eq!(r.exec_status(), ExecStatus::TimedOut, "{command}: {r:?}");
        assert_eq!(r.exit_code, 124);
        assert!(
            !r.stdout.contains("after"),
            "{command}: the rest of the line ran"
        );
        // The same shell, with what was defined before.
        assert_eq!(ok(&s, "still; echo $$").await, format!("defined\n{shell}"));
    }
    // A background job started before a timed-out command survives it.
    ok(&s, "sleep 300 & echo $! > bg.pid").await;
    let r = within(30, s.exec("sleep 30").timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::TimedOut);
    assert_eq!(
        ok(&s, "kill -0 $(cat bg.pid) && echo alive").await,
        "alive\n"
    );
    within(30, client.close_session("timeout")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_warm_execution_loses_its_command_and_the_next_one_starts_afresh() {
    let (client, dir) = client().await;
    let s = warm(&client, "crash", Duration::from_secs(60)).await;
    let first = within(30, s.exec("export SAVED=yes; doomed() { :; }; echo $$"))
        .await
        .unwrap();
    let mut running = Announcements::new(dir.path(), "running");
    let hung = s
        .exec(format!("echo running > {}; sleep 60", running.shell_path()))
        .timeout(Duration::from_secs(120));
    let hung = tokio::spawn(hung.into_future());
    assert_eq!(within(30, running.next()).await, "running");
    // Queued behind the running command when the execution dies.
    let queued = tokio::spawn(s.exec("echo queued $SAVED").into_future());
    runbox_tests::procs::kill_executor(&first.execution_id);
    let lost = within(30, hung).await.unwrap().unwrap();
    assert_eq!(lost.exec_status(), ExecStatus::Lost, "{lost:?}");
    // Delivered to a new execution, not lost.
    let r = within(30, queued).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "queued yes\n");
    let after = ok(&s, "type doomed >/dev/null 2>&1 || echo fresh; echo $SAVED").await;
    assert_eq!(after, "fresh\nyes\n");
    within(30, client.close_session("crash")).await.unwrap();
}

/// The script a command of session B runs against session A's socket:
/// every request the channel knows, with B's own running execution and a
/// made-up one as ids. Prints one line per attempt.
fn attack(socket: &std::path::Path) -> String {
    format!(
        r#"python3 - "$RUNBOX_EXECUTION_ID" <<'EOF'
import socket, sys
for line in ["ping", "close", "run " + sys.argv[1], "run {MADE_UP}"]:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect({path:?})
        s.sendall((line + "\n").encode())
        print(line, "->", repr(s.recv(200)))
    except Exception as e:
        print(line, "->", type(e).__name__)
EOF"#,
        path = socket.display().to_string(),
    )
}

/// An execution id nothing ran.
const MADE_UP: &str = "abcdef-01m8pma3r90000000";

/// Whether an attempt got no answer at all: the socket was not there for
/// the command, or the executor dropped the connection unanswered.
fn unanswered(line: &str) -> bool {
    [
        "FileNotFoundError",
        "b''",
        "ConnectionResetError",
        "BrokenPipeError",
    ]
    .iter()
    .any(|end| line.ends_with(end))
}

/// A command of warm session B tries to reach warm session A's channel:
/// to run a command there, to stop it, or to learn what it runs. In its
/// namespace the socket is out of its sight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_cannot_reach_another_sessions_warm_execution() {
    let (client, dir) = client().await;
    let a = warm(&client, "victim", Duration::from_secs(60)).await;
    let b = warm(&client, "attacker", Duration::from_secs(60)).await;
    let a_shell = ok(&a, "secret() { echo mine; }; echo $$").await;
    let socket = dir.path().join(".runbox/warm/victim");
    assert!(socket.exists(), "A's socket is where the launcher put it");
    let r = within(60, b.exec(attack(&socket).replace("{MADE_UP}", MADE_UP)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 4, "{r:?}");
    for line in r.stdout.lines() {
        assert!(unanswered(line), "{line}");
    }
    // A is untouched: same shell, same definitions; nothing was written
    // in the made-up execution's name.
    assert_eq!(ok(&a, "secret; echo $$").await, format!("mine\n{a_shell}"));
    assert!(!dir.path().join(format!("results/{MADE_UP}.json")).exists());
    within(30, client.close_session("victim")).await.unwrap();
    within(30, client.close_session("attacker")).await.unwrap();
}

/// The same attack where commands see the host's files (no namespace):
/// the socket is in plain sight, and the warm executor refuses every
/// connection that comes from a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_the_executor_refuses_commands_on_its_socket() {
    let cli = runbox_tests::cli::Cli::new();
    let run = |args: Vec<String>| {
        let mut cmd = cli.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.env("RUNBOX_WORKSPACE_NAMESPACE", "off");
        async move { within(60, cmd.output()).await.unwrap() }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for id in ["victim", "attacker"] {
        let out = run(args(&[
            "sessions",
            "create",
            id,
            "--warm",
            "--idle-timeout",
            "60s",
        ]))
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    let out = run(args(&[
        "exec",
        "-s",
        "victim",
        "--",
        "secret() { echo mine; }; echo $$",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let a_shell = String::from_utf8_lossy(&out.stdout).into_owned();
    let socket = cli.home.path().join(".runbox/warm/victim");
    let script = attack(&socket).replace("{MADE_UP}", MADE_UP);
    let out = run(args(&["exec", "-s", "attacker", "--", &script])).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    for line in stdout.lines() {
        // Seen and connected to, but never answered.
        assert!(
            unanswered(line) && !line.ends_with("FileNotFoundError"),
            "{line}"
        );
    }
    let out = run(args(&["sessions", "show", "victim"])).await;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("mode:      warm (idle timeout 1m)"),
        "{shown}"
    );
    assert!(
        shown.contains("warm:      running (started by execution"),
        "{shown}"
    );
    // A bad idle timeout is refused (usage, exit 2) before anything is written.
    let out = run(args(&[
        "sessions",
        "create",
        "bad",
        "--warm",
        "--idle-timeout",
        "0s",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!cli.home.path().join("sessions/bad").exists());
    let out = run(args(&["exec", "-s", "victim", "--", "secret; echo $$"])).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("mine\n{a_shell}"),
        "{out:?}"
    );
    assert!(
        !cli.home
            .path()
            .join(format!("results/{MADE_UP}.json"))
            .exists()
    );
    for id in ["victim", "attacker"] {
        run(args(&["sessions", "close", id])).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_stays_the_default_and_warm_is_stored_with_the_session() {
    let (client, dir) = client().await;
    let s = client.session("plain").unwrap();
    let r = within(30, s.exec("f() { :; }")).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded);
    // Functions do not persist in oneshot mode.
    let r = within(30, s.exec("f")).await.unwrap();
    assert_eq!(r.exit_code, 127, "{r:?}");
    let info = within(30, client.session_info("plain")).await.unwrap();
    assert_eq!(info.settings.mode, SessionMode::Oneshot);
    assert_eq!(info.warm_execution, None);
    // A warm session's mode is in its settings object, for every process.
    warm(&client, "stored", Duration::from_secs(90)).await;
    let stored = std::fs::read_to_string(dir.path().join("sessions/stored/mode.json")).unwrap();
    assert_eq!(stored, r#"{"mode":"warm","idle_timeout_ms":90000}"#);
    let other = Client::from_config(runbox_tests::embedded::config(dir.path()))
        .await
        .unwrap();
    let info = within(30, other.session_info("stored")).await.unwrap();
    assert_eq!(info.settings.mode, SessionMode::Warm);
    assert_eq!(info.settings.idle_timeout(), Duration::from_secs(90));
    // Bad settings are refused before anything is written.
    assert!(
        SessionSettings::new(SessionMode::Warm)
            .with_idle_timeout(Duration::ZERO)
            .is_err()
    );
}

/// The HTTP API of `runbox serve` creates warm sessions and shows whether
/// their execution runs; a bad mode or idle timeout is refused before
/// anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_warm_sessions() {
    use runbox_tests::serve::{Serve, request};
    let serve = Serve::start("127.0.0.1:0", &[]).await.unwrap();
    let a = &serve.addr;
    for bad in [
        r#"{"sessionId":"w","mode":"hot"}"#,
        r#"{"sessionId":"w","mode":"warm","idleTimeoutMs":0}"#,
        r#"{"sessionId":"w","mode":"warm","idleTimeoutMs":86400001}"#,
    ] {
        let r = request(a, "POST", "/v1/sessions", &[], bad.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {:?}", r.json());
    }
    assert!(!serve.home.path().join("sessions/w").exists());
    let r = request(
        a,
        "POST",
        "/v1/sessions",
        &[],
        br#"{"sessionId":"w","mode":"warm","idleTimeoutMs":60000}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["mode"], "warm");
    assert_eq!(r.json()["idleTimeoutMs"], 60000);
    let exec = |command: &'static str| {
        let body = serde_json::json!({ "command": command }).to_string();
        async move {
            request(a, "POST", "/v1/sessions/w/exec", &[], body.as_bytes())
                .await
                .unwrap()
                .json()
        }
    };
    let first = exec("f() { echo kept; }; echo $$").await;
    let second = exec("f; echo $$").await;
    assert_eq!(
        second["stdout"].as_str().unwrap(),
        format!("kept\n{}", first["stdout"].as_str().unwrap())
    );
    let r = request(a, "GET", "/v1/sessions/w", &[], b"").await.unwrap();
    assert_eq!(r.json()["warmExecution"], first["executionId"]);
    let r = request(a, "POST", "/v1/sessions/w/close", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request(a, "GET", "/v1/sessions/w", &[], b"").await.unwrap();
    assert_eq!(r.json()["warmExecution"], serde_json::Value::Null);
}

/// The gcp backend with the local launcher, on the emulators: the mode
/// comes from `RUNBOX_SESSION_MODE`, the workspace travels through the
/// bucket after every command, and one executor serves the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_on_the_gcp_backend_with_the_local_launcher() {
    let emu = within(120, runbox_tests::harness::Emulators::start())
        .await
        .expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        runbox_tests::embedded::binary("runbox-executor")
            .display()
            .to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    env.insert("RUNBOX_SESSION_MODE".into(), "warm".into());
    let config = runbox_core::Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config)).await.unwrap();
    let s = client.session("gcpwarm").unwrap();
    let first = within(
        60,
        s.exec("f() { echo from-f; }; echo data > kept.txt; echo $$"),
    )
    .await
    .unwrap();
    assert_eq!(
        first.exec_status(),
        ExecStatus::Succeeded,
        "{first:?}\n{}",
        emu.logs()
    );
    let r = within(60, s.exec("f; cat kept.txt; echo $$"))
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("from-f\ndata\n{}", first.stdout), "{r:?}");
    // Saved to the bucket before the result was written.
    let name = "sessions/gcpwarm/workspace/kept.txt";
    let object = emu
        .store()
        .get(name)
        .await
        .expect("the file is in the bucket");
    assert_eq!(&object.data[..], b"data\n");
    let info = within(30, client.session_info("gcpwarm")).await.unwrap();
    assert_eq!(info.settings.mode, SessionMode::Warm);
    assert_eq!(
        info.warm_execution.as_deref(),
        Some(first.execution_id.as_str())
    );
    assert_eq!(executor_of(&r.execution_id), None);
    within(30, client.close_session("gcpwarm")).await.unwrap();
    client.shutdown().await;
}

/// A command that ends the shell (`exit`) still has its status, cwd and
/// exports kept: the EXIT trap sends the capture on the shell's control
/// pipe before the shell goes, and the next command starts a fresh shell
/// from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_keeps_the_capture_and_the_next_command_gets_a_fresh_shell() {
    let (client, _dir) = client().await;
    let s = warm(&client, "exiter", Duration::from_secs(60)).await;
    ok(&s, "marker() { :; }").await;
    let r = within(
        60,
        s.exec("mkdir -p gone && cd gone && export LEFT=yes && echo bye && exit 3"),
    )
    .await
    .unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (3, "bye\n"), "{r:?}");
    let out = ok(&s, "echo \"$LEFT $PWD $(type -t marker || echo fresh)\"").await;
    assert_eq!(out, "yes /workspace/gone fresh\n");
    within(30, client.close_session("exiter")).await.unwrap();
}

/// What a command can forge on the shell's control pipe: records for its
/// own line, which set its own session's result and state, no one
/// else's. A job an earlier command left running writes records for every
/// tag it can guess while later commands run; none is taken for theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_records_reach_only_their_own_session() {
    let (client, _dir) = client().await;
    let s = warm(&client, "forger", Duration::from_secs(60)).await;
    let other = warm(&client, "bystander", Duration::from_secs(60)).await;
    ok(&other, "export MINE=kept").await;
    // bash keeps its own standard output (the control pipe) on a
    // descriptor of its own while the command's streams are redirected:
    // the command writes on every one it has.
    let forge = r#"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && printf '\0c%s\0%s\0%s\n\0declare -x FORGED="1"\n\0\0d%s\0' "$__runbox_seq" 7 "$PWD" "$__runbox_seq" >&$fd; done 2>/dev/null; sleep 1"#;
    let r = within(60, s.exec(forge)).await.unwrap();
    assert_eq!(r.exit_code, 7, "its own forged status: {r:?}");
    // A background job that keeps forging records for the next lines'
    // numbers (it cannot know their random part) on every descriptor.
    ok(
        &s,
        r#"fds=$(ls /proc/$$/fd); ( for i in $(seq 3000); do n=${__runbox_seq%%.*}; for k in 1 2 3 4 5 6; do for fd in $fds; do
         printf '\0c%s.0000000000000000\0%s\0/\n\0declare -x STOLEN="2"\n\0\0d%s.0000000000000000\0' $((n+k)) 9 $((n+k)) >&$fd;
         done; done; done ) 2>/dev/null &"#,
    )
    .await;
    for _ in 0..5 {
        let r = within(60, s.exec("sleep 0.05; echo \"${STOLEN-unset}\""))
            .await
            .unwrap();
        assert_eq!((r.exit_code, r.stdout.as_str()), (0, "unset\n"), "{r:?}");
    }
    assert_eq!(
        ok(&other, "echo \"${STOLEN-unset} ${FORGED-unset} $MINE\"").await,
        "unset unset kept\n"
    );
    for id in ["forger", "bystander"] {
        within(30, client.close_session(id)).await.unwrap();
    }
}
