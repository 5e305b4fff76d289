//! Background processes through the library API on the embedded backend:
//! spawn returns at once, output streams to chunks while the process runs,
//! wait/kill/list see its end, and foreground commands are not held up.

use std::time::Duration;

use runbox_core::store;
use runbox_dispatcher::{
    BackgroundError, BackgroundHandle, BackgroundState, Client, Error, ExecStatus, Stream,
};
use runbox_tests::embedded::{client, process_gone, within};

/// Timeout of every long-running background process here: if a test fails
/// before killing one, it still ends on its own soon after.
const LEFTOVER_LIMIT: Duration = Duration::from_secs(120);

/// Follows `stream` from the start until its text contains `needle`;
/// returns the text so far. Fails if the process ends first.
async fn follow_until(
    client: &Client,
    handle: &BackgroundHandle,
    stream: Stream,
    needle: &str,
) -> String {
    follow_until_all(client, handle, stream, &[needle]).await
}

/// Like [`follow_until`], until the text contains every one of `needles`.
async fn follow_until_all(
    client: &Client,
    handle: &BackgroundHandle,
    stream: Stream,
    needles: &[&str],
) -> String {
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let read = within(30, client.follow_background_logs(handle, stream, offset))
            .await
            .unwrap();
        offset = read.next_offset;
        seen.extend_from_slice(&read.data);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(!read.ended, "ended before printing {needles:?}: {text:?}");
    }
}

/// Everything a stream's chunks hold, read after the process ended.
async fn all_logs(client: &Client, handle: &BackgroundHandle, stream: Stream) -> String {
    let read = within(30, client.background_logs(handle, stream, 0))
        .await
        .unwrap();
    assert!(read.ended, "read after the end reports the end");
    String::from_utf8(read.data.to_vec()).unwrap()
}

/// Whether any process is still in process group `pgid`.
/// The host's pid and process group of the process an execution's command
/// knows as `inner`: commands run in a PID namespace of their own, so `$$`
/// and `$!` there are not the host's numbers.
fn on_host(inner: i32, execution: &str) -> (i32, i32) {
    for pid in runbox_tests::procs::with_env("RUNBOX_EXECUTION_ID", execution) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last()?.parse::<i32>().ok());
        if nspid == Some(inner) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok())
                .unwrap_or(pid);
            return (pid, pgrp);
        }
    }
    panic!("no process of execution {execution} is {inner} in its namespace");
}

fn group_gone(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<i32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .all(|stat| {
            // Fields after the parenthesised name: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return true;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z") || fields.get(2) != Some(&pgid.to_string().as_str())
        })
}

/// Live processes of this execution's command (every one carries
/// `RUNBOX_EXECUTION_ID` in its environment). The executor carries it too
/// and may still be exiting after its result is written: it is left out.
fn running_with_id(id: &str) -> Vec<i32> {
    let needle = format!("RUNBOX_EXECUTION_ID={id}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| !process_gone(*pid))
        .filter(|pid| {
            let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
            !argv0.ends_with(b"runbox-executor")
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn number_after(text: &str, label: &str) -> i32 {
    text.split(label)
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_logs_serves_foreground_and_dies_with_its_group() {
    let (client, _dir) = client().await;
    let s = client.session("srv").unwrap();
    let server = within(
        30,
        s.spawn(
            "echo \"group $$\"; python3 -u -m http.server 0 --bind 127.0.0.1 & echo \"pid $!\"; wait",
        )
        .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    assert_eq!(server.session.as_str(), "srv");
    let out = follow_until_all(
        &client,
        &server,
        Stream::Stdout,
        &["group ", "pid ", "Serving HTTP"],
    )
    .await;
    let port = number_after(&out, " port ");
    let id = server.execution_id.to_string();
    let (pid, _) = on_host(number_after(&out, "pid "), &id);
    let (_, pgid) = on_host(number_after(&out, "group "), &id);

    // On the embedded backend a foreground command shares the machine, so
    // it reaches the background server's port.
    let fetch = format!(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/').status)\""
    );
    let r = within(30, s.exec(fetch)).await.unwrap();
    assert_eq!(r.stdout, "200\n", "{r:?}");

    let listed = within(30, s.list_background()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, server);
    assert_eq!(listed[0].state, BackgroundState::Running);

    let killed = within(60, client.kill_background(&server)).await.unwrap();
    assert_eq!(killed.exec_status(), ExecStatus::Cancelled, "{killed:?}");
    assert!(process_gone(pid), "server {pid} survived the kill");
    assert!(group_gone(pgid), "process group {pgid} survived the kill");

    // The last chunks were written before the result: the request the
    // foreground command made is in the server's stderr log.
    let log = all_logs(&client, &server, Stream::Stderr).await;
    assert!(log.contains("\"GET / HTTP/1.1\" 200"), "{log}");
    let listed = within(30, s.list_background()).await.unwrap();
    assert_eq!(
        listed[0].state,
        BackgroundState::Exited {
            status: ExecStatus::Cancelled,
            exit_code: killed.exit_code
        }
    );
    // Killing an ended process changes nothing and returns its result.
    let again = within(30, client.kill_background(&server)).await.unwrap();
    assert_eq!(again, killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_logs_and_listing_from_running_to_exited() {
    let (client, _dir) = client().await;
    let s = client.session("exit").unwrap();
    within(30, s.exec("mkfifo gate")).await.unwrap();
    // Blocks on the fifo until a foreground command opens it for writing.
    let bg = within(
        30,
        s.spawn("echo hi; echo oops >&2; read line < gate; exit 3")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    // Both streams followed at once, while it runs.
    let (mut out, mut err, mut offsets) = (Vec::new(), Vec::new(), [0, 0]);
    while out != b"hi\n" || err != b"oops\n" {
        let [o, e] = within(
            30,
            client.follow_background_output(&bg, offsets[0], offsets[1]),
        )
        .await
        .unwrap();
        assert!(!o.ended && !e.ended, "it waits at the gate");
        out.extend_from_slice(&o.data);
        err.extend_from_slice(&e.data);
        offsets = [o.next_offset, e.next_offset];
    }
    let listed = within(30, client.list_background("exit")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, BackgroundState::Running);
    assert_eq!(
        listed[0].handle.command,
        "echo hi; echo oops >&2; read line < gate; exit 3"
    );

    // A short wait times out with a typed error; the process is unharmed.
    let early = within(30, client.wait_background(&bg, Duration::from_millis(200))).await;
    assert!(
        matches!(
            early,
            Err(Error::Background(BackgroundError::WaitTimedOut { .. }))
        ),
        "{early:?}"
    );

    within(30, s.exec("echo go > gate")).await.unwrap();
    let r = within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Failed, "{r:?}");
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.stdout, "hi\n", "the result keeps the inline output");
    assert_eq!(all_logs(&client, &bg, Stream::Stdout).await, "hi\n");
    assert_eq!(all_logs(&client, &bg, Stream::Stderr).await, "oops\n");
    let listed = within(30, s.list_background()).await.unwrap();
    assert_eq!(
        listed[0].state,
        BackgroundState::Exited {
            status: ExecStatus::Failed,
            exit_code: 3
        }
    );
    // Waiting again answers from the result object at once.
    let again = within(30, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(again, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_commands_run_beside_a_background_process_and_keep_their_state() {
    let (client, dir) = client().await;
    let s = client.session("beside").unwrap();
    within(30, s.exec("export FROM_FG=1")).await.unwrap();
    // Its cd/export must not reach the session; it sees the session's env.
    let bg = within(
        30,
        s.spawn("cd /tmp; export FROM_BG=1; echo \"fg=$FROM_FG\"; exec sleep 600")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    follow_until(&client, &bg, Stream::Stdout, "fg=1\n").await;
    for i in 0..3 {
        // Far less than the background process's 600 s: it blocks nothing.
        let r = within(
            20,
            s.exec(format!("echo {i} $FROM_FG ${{FROM_BG:-unset}} $(pwd)")),
        )
        .await
        .unwrap();
        assert!(dir.path().join("sessions/beside/workspace").is_dir());
        assert_eq!(r.stdout, format!("{i} 1 unset /workspace\n"));
    }
    let killed = within(60, s.kill_all_background()).await.unwrap();
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0].exec_status(), ExecStatus::Cancelled);
    assert_eq!(killed[0].execution_id, bg.execution_id.as_str());
    let state = client.session_info("beside").await.unwrap().state.unwrap();
    assert_eq!(state.exec_count, 4, "a background process saves no state");
    assert!(!state.env.contains_key("FROM_BG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_in_chunks_while_the_process_runs() {
    let (client, _dir) = client().await;
    let s = client.session("chunks").unwrap();
    // 200 000 bytes, then silence: they must arrive before it ends.
    let bg = within(
        30,
        s.spawn("head -c 200000 /dev/zero | tr '\\0' a; echo; echo done; exec sleep 600")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    let text = follow_until(&client, &bg, Stream::Stdout, "done\n").await;
    assert_eq!(text.len(), 200_000 + "\ndone\n".len());
    let read = within(30, client.background_logs(&bg, Stream::Stdout, 0))
        .await
        .unwrap();
    assert!(!read.ended, "still running");
    assert_eq!(read.data.len(), text.len());
    // From the returned offset nothing new until it prints again.
    let rest = within(
        30,
        client.background_logs(&bg, Stream::Stdout, read.next_offset),
    )
    .await
    .unwrap();
    assert!(rest.data.is_empty());
    assert_eq!(rest.next_offset, read.next_offset);
    within(60, client.kill_background(&bg)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_by_pattern_leaves_the_others() {
    let (client, _dir) = client().await;
    let s = client.session("pattern").unwrap();
    let alpha = within(
        30,
        s.spawn("echo up; exec sleep 300 # alpha")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    let beta = within(
        30,
        s.spawn("echo up; exec sleep 300 # beta")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    let killed = within(60, s.kill_background_matching("# alpha"))
        .await
        .unwrap();
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0].execution_id, alpha.execution_id.as_str());
    let listed = within(30, s.list_background()).await.unwrap();
    let states: Vec<_> = listed
        .iter()
        .map(|e| (e.handle.execution_id.clone(), e.state))
        .collect();
    assert!(states.contains(&(beta.execution_id.clone(), BackgroundState::Running)));
    assert!(
        within(60, s.kill_background_matching("no such"))
            .await
            .unwrap()
            .is_empty()
    );
    let killed = within(60, s.kill_background(beta.execution_id.as_str()))
        .await
        .unwrap();
    assert_eq!(killed.exec_status(), ExecStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handles_and_bad_input_are_typed_errors_before_any_write() {
    let (client, _dir) = client().await;
    let s = client.session("bad").unwrap();
    for handle in ["nope-0000000000", "../x", ""] {
        let err = within(30, s.kill_background(handle)).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Background(BackgroundError::UnknownHandle { session, handle: h })
                    if session == "bad" && h == handle
            ),
            "{err:?}"
        );
    }
    // A handle of another session is unknown here.
    let other = client.session("other").unwrap();
    let bg = within(30, other.spawn("true")).await.unwrap();
    let err = within(30, s.background(bg.execution_id.as_str()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Background(BackgroundError::UnknownHandle { .. })
        ),
        "{err:?}"
    );
    within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();

    assert!(matches!(
        s.spawn("x".repeat(256 * 1024 + 1)).await,
        Err(Error::CommandTooLarge { .. })
    ));
    assert!(matches!(
        s.spawn("true").timeout(Duration::ZERO).await,
        Err(Error::InvalidTimeout { .. })
    ));
    let over = client.config().limits.max_timeout + Duration::from_secs(1);
    assert!(matches!(
        s.spawn("true").timeout(over).await,
        Err(Error::InvalidTimeout { .. })
    ));
    assert!(matches!(
        s.spawn("true").env("NOT-VALID", "1").await,
        Err(Error::InvalidEnv { .. })
    ));
    assert!(matches!(s.spawn("a\0b").await, Err(Error::CommandHasNul)));
    assert!(
        store::list_all(&**client.store(), "sessions/bad/")
            .await
            .unwrap()
            .is_empty(),
        "bad input wrote a marker"
    );
    let requests = store::list_all(&**client.store(), "requests/")
        .await
        .unwrap();
    assert_eq!(requests.len(), 1, "only the good spawn wrote a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_dying_without_a_result_is_lost_not_a_hang() {
    let (client, _dir) = client().await;
    let s = client.session("crash").unwrap();
    // The command cannot reach its executor (its own PID namespace): the
    // executor is killed from outside once the command runs.
    let bg = within(
        30,
        s.spawn("echo bye; exec sleep 30").timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    follow_until(&client, &bg, Stream::Stdout, "bye\n").await;
    runbox_tests::procs::kill_executor(bg.execution_id.as_str());
    let r = within(60, client.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Lost, "{r:?}");
    assert!(r.message.contains("SIGKILL"), "{}", r.message);
    // Its command outlived it (nobody killed the group): it is cleaned up
    // before the LOST result is written.
    assert!(
        r.message.contains("left running were killed"),
        "{}",
        r.message
    );
    let left = running_with_id(&r.execution_id);
    assert!(left.is_empty(), "{left:?} left running");
    let listed = within(30, s.list_background()).await.unwrap();
    assert!(matches!(
        listed[0].state,
        BackgroundState::Exited {
            status: ExecStatus::Lost,
            ..
        }
    ));
}

/// The same flow on the production wire: objects (marker, chunks, result)
/// in fake-gcs-server, completions as GCS notifications through the Pub/Sub
/// emulator, executors as local child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_process_on_the_emulators() {
    use runbox_core::{Config, ExecutionId, SessionId, Store, layout};
    use runbox_tests::embedded::binary;
    use runbox_tests::harness::Emulators;

    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    let executor = binary("runbox-executor").display().to_string();
    env.insert("RUNBOX_EXECUTOR".into(), executor);
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    // Results must come as events, not from the read after the executor exits.
    env.insert("RUNBOX_COMPLETION_GRACE_MS".into(), "60000".into());
    let client = within(60, Client::from_config(Config::from_lookup(&env).unwrap()))
        .await
        .unwrap();
    // The session's workspace is restored around each command on this
    // backend: the gate lives in the session's private /tmp instead, which
    // the executor keeps at `{RUNBOX_WORKSPACE_DIR}/.runbox/tmp/{session}`
    // and the command sees as /tmp.
    let session = format!("bgwire{}", std::process::id());
    let s = client.session(&session).unwrap();
    let session_tmp = std::path::Path::new(runbox_core::contract::DEFAULT_WORKSPACE_BASE)
        .join(".runbox/tmp")
        .join(&session);
    std::fs::create_dir_all(&session_tmp).unwrap();
    let gate = session_tmp.join("gate");
    let made = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap();
    assert!(made.success());

    let bg = within(
        30,
        s.spawn("echo started; read x < /tmp/gate; echo bye; exit 3")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    follow_until(&client, &bg, Stream::Stdout, "started\n").await;
    let listed = within(30, s.list_background()).await.unwrap();
    assert_eq!(listed[0].state, BackgroundState::Running);

    let open = tokio::task::spawn_blocking(move || std::fs::write(gate, "go\n"));
    within(30, open).await.unwrap().unwrap();
    let r = within(60, client.wait_background(&bg, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Failed, "{r:?}\n{}", emu.logs());
    assert_eq!(r.exit_code, 3);
    assert_eq!(
        all_logs(&client, &bg, Stream::Stdout).await,
        "started\nbye\n"
    );

    // Every object lives in the bucket.
    let store = emu.store();
    let id = ExecutionId::new(bg.execution_id.as_str()).unwrap();
    let sid = SessionId::new(&session).unwrap();
    for name in [
        layout::background_marker(&sid, &id),
        layout::log_chunk(&id, Stream::Stdout, 1),
        layout::result(&id),
    ] {
        store
            .head(&name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let sleeper = within(30, s.spawn("exec sleep 600").timeout(LEFTOVER_LIMIT))
        .await
        .unwrap();
    let killed = within(60, client.kill_background(&sleeper)).await.unwrap();
    assert_eq!(killed.exec_status(), ExecStatus::Cancelled, "{killed:?}");
    assert!(
        client.notifier_stats().delivered >= 1,
        "{:?}",
        client.notifier_stats()
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_right_after_spawn_is_cancelled() {
    let (client, _dir) = client().await;
    let s = client.session("quick").unwrap();
    for _ in 0..3 {
        // Whether the signal finds the executor before or after it handles
        // SIGTERM, the outcome is CANCELLED.
        let bg = within(30, s.spawn("exec sleep 600").timeout(LEFTOVER_LIMIT))
            .await
            .unwrap();
        let r = within(60, client.kill_background(&bg)).await.unwrap();
        assert_eq!(r.exec_status(), ExecStatus::Cancelled, "{r:?}");
        assert_eq!(r.exit_code, 128 + 15);
        let left = running_with_id(&r.execution_id);
        assert!(left.is_empty(), "{left:?} left running: {}", r.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_without_executor_or_result_settles_lost_or_cancelled() {
    use runbox_core::store::PutOptions;
    use runbox_core::{ExecutionId, SessionId, layout};

    let (client, _dir) = client().await;
    let s = client.session("orphan").unwrap();
    let sid = SessionId::new("orphan").unwrap();
    // Markers as a dispatcher process that died right after writing them
    // would leave them: no executor runs them, no result exists.
    for (id, kill_requested, status) in [
        ("gone00-0000000000000001", false, ExecStatus::Lost),
        ("gone00-0000000000000002", true, ExecStatus::Cancelled),
    ] {
        let eid = ExecutionId::new(id).unwrap();
        let mut marker = serde_json::json!({
            "executionId": id,
            "sessionId": "orphan",
            "command": "sleep 1",
            "startedAt": "2025-01-01T00:00:00.000Z",
        });
        if kill_requested {
            marker["killRequested"] = true.into();
        }
        client
            .store()
            .put(
                &layout::background_marker(&sid, &eid),
                bytes::Bytes::from(marker.to_string()),
                PutOptions::create(),
            )
            .await
            .unwrap();
        let handle = within(30, s.background(id)).await.unwrap();
        assert_eq!(handle.command, "sleep 1");
        let r = within(30, client.wait_background(&handle, Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(r.exec_status(), status, "{r:?}");
        assert!(r.message.contains("no executor process runs it"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_kills_background_processes_and_leaves_no_object() {
    let (client, dir) = client().await;
    let s = client.session("doomed").unwrap();
    within(30, s.exec("echo data > file.txt")).await.unwrap();
    let handle = within(
        30,
        s.spawn("echo $$ > bg.pid; echo started; sleep 300")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    follow_until(&client, &handle, Stream::Stdout, "started").await;
    let info = client.session_info("doomed").await.unwrap();
    assert_eq!(info.background_running, 1);
    let inner: i32 = std::fs::read_to_string(dir.path().join("sessions/doomed/workspace/bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (pid, _) = on_host(inner, handle.execution_id.as_str());

    let deleted = within(60, client.delete_session("doomed")).await.unwrap();
    assert!(deleted >= 3, "{deleted}");
    let id = handle.execution_id.to_string();
    let left: Vec<String> = store::list_all(&**client.store(), "")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.starts_with("sessions/doomed/") || n.contains(&id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(process_gone(pid), "background shell {pid} survived destroy");
}

/// A client that shuts down right after a spawn (a CLI exiting after
/// `exec --background`) leaves the process running and unsettled: no LOST
/// result is written for it, and another client's wait sees it succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_shutting_down_leaves_its_background_process_to_finish() {
    let (client, dir) = client().await;
    let s = client.session("leaves").unwrap();
    within(30, s.exec("mkfifo gate")).await.unwrap();
    let bg = within(
        30,
        s.spawn("read line < gate; echo done")
            .timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    within(30, client.shutdown()).await;
    drop(client);

    let other = Client::from_config(runbox_tests::embedded::config(dir.path()))
        .await
        .expect("a second client");
    let running = within(30, other.list_background("leaves")).await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(
        running[0].state,
        BackgroundState::Running,
        "settled by a client that stopped watching it"
    );
    let s = other.session("leaves").unwrap();
    within(30, s.exec("echo go > gate")).await.unwrap();
    let r = within(60, other.wait_background(&bg, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "done\n");
}
