//! stdin to a running command in a warm session (embedded backend, local
//! launcher): `Exec::stdin_stream` writes reach the command as they are
//! written, the CLI streams its own stdin, a command that does not read
//! holds up its writer instead of filling memory, writes after the end
//! fail with a typed error, and neither another session nor a swapped
//! file can turn the stream elsewhere. Every "before" is proven by
//! waiting on the chunk itself, never by sleeping.

use std::future::IntoFuture;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runbox_dispatcher::{Client, ExecStatus, Session, SessionMode, SessionSettings, StdinError};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{client, within};
use runbox_tests::warm::{ECHO_LINES, stdout_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn warm(client: &Client, id: &str) -> Session {
    let settings = SessionSettings::new(SessionMode::Warm)
        .with_idle_timeout(Duration::from_secs(60))
        .unwrap();
    within(30, client.create_session_with(id, settings))
        .await
        .unwrap();
    client.session(id).unwrap()
}

/// Write, see the answer, write again: on the first command of a new warm
/// execution (its stdin travels on the executor's standard output) and on
/// a command delivered to the running one (on its delivery connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_answered_before_the_next_on_new_and_running_executions() {
    let (client, _dir) = client().await;
    let s = warm(&client, "talk").await;
    for round in ["first command", "delivered command"] {
        runbox_tests::warm::write_answer_write(&s, round).await;
    }
    // The shell lives on: the next command runs in it as usual.
    let r = within(30, s.exec("echo after")).await.unwrap();
    assert_eq!(r.stdout, "after\n");
    within(30, client.close_session("talk")).await.unwrap();
}

/// `printf 'a\nb\n' | runbox exec -s W -- 'while read l; ...'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_streams_its_piped_stdin() {
    let cli = Cli::new();
    let out = cli.run(&["sessions", "create", "W", "--warm"]).await;
    assert!(out.status.success(), "{out:?}");
    for _ in 0..2 {
        let out = cli
            .run_with(&["exec", "-s", "W", "--", ECHO_LINES], b"a\nb\n")
            .await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(text(&out.stdout), "got a\ngot b\n");
    }
    // A oneshot session still gets its whole stdin first.
    let out = cli
        .run_with(&["exec", "-s", "once", "--", "cat; echo end"], b"whole\n")
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "whole\nend\n");
    cli.run(&["sessions", "close", "W"]).await;
}

/// Interactively: `got a` is on runbox's stdout before `b` is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_each_line_before_the_next_is_written() {
    let cli = Cli::new();
    let out = cli.run(&["sessions", "create", "W", "--warm"]).await;
    assert!(out.status.success(), "{out:?}");
    let mut child = cli
        .command(&["exec", "-s", "W", "--", ECHO_LINES])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for word in ["a", "b", "c"] {
        within(30, stdin.write_all(format!("{word}\n").as_bytes()))
            .await
            .unwrap();
        let line = within(30, lines.next_line()).await.unwrap().unwrap();
        assert_eq!(line, format!("got {word}"));
    }
    // End of runbox's stdin is end of the command's.
    drop(stdin);
    assert_eq!(within(30, lines.next_line()).await.unwrap(), None);
    let status = within(60, child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    cli.run(&["sessions", "close", "W"]).await;
}

/// A command that never reads its stdin: the writer is held up once a
/// bounded amount is on its way, the command's timeout still ends it
/// (TIMED_OUT, the shell kept), and the waiting write then fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_read_holds_up_its_writer() {
    const TOTAL: usize = 64 * 1024 * 1024;
    const BOUND: usize = 8 * 1024 * 1024;
    let (client, _dir) = client().await;
    let s = warm(&client, "deaf").await;
    let (exec, stdin) = s
        .exec("echo started; sleep 600")
        .timeout(Duration::from_secs(3))
        .stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    stdout_until(&mut output, &mut seen, "started").await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let writer = {
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let piece = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            while accepted.load(Ordering::SeqCst) < TOTAL {
                stdin.write(piece.clone()).await?;
                accepted.fetch_add(piece.len(), Ordering::SeqCst);
            }
            Ok::<(), StdinError>(())
        })
    };
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::TimedOut, "{r:?}");
    let written = within(30, writer).await.unwrap();
    assert_eq!(written, Err(StdinError::Ended));
    let accepted = accepted.load(Ordering::SeqCst);
    assert!(
        accepted < BOUND,
        "{accepted} bytes were taken from a writer whose command never reads"
    );
    let r = within(30, s.exec("echo alive")).await.unwrap();
    assert_eq!(r.stdout, "alive\n");
    within(30, client.close_session("deaf")).await.unwrap();
}

/// Writing after the command ended fails with a typed error; so does
/// closing; neither waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_end_fail_with_a_typed_error() {
    let (client, _dir) = client().await;
    let s = warm(&client, "late").await;
    let (exec, stdin) = s.exec("echo done").stdin_stream();
    let r = within(60, exec).await.unwrap();
    assert_eq!(r.stdout, "done\n");
    assert!(stdin.is_ended());
    assert_eq!(
        within(10, stdin.write("too late\n")).await,
        Err(StdinError::Ended)
    );
    assert_eq!(within(10, stdin.close()).await, Err(StdinError::Ended));
    within(30, client.close_session("late")).await.unwrap();
}

/// A command that ends before its stdin is closed (`head -n1`): the result
/// is its own, and the writer learns of the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_may_end_before_its_stdin_is_closed() {
    let (client, _dir) = client().await;
    let s = warm(&client, "short").await;
    let (exec, stdin) = s.exec("head -n1; echo end").stdin_stream();
    let result = tokio::spawn(exec.into_future());
    within(30, stdin.write("one\n")).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "one\nend\n");
    assert_eq!(
        within(10, stdin.write("two\n")).await,
        Err(StdinError::Ended)
    );
    within(30, client.close_session("short")).await.unwrap();
}

/// A oneshot session keeps the whole-stdin behaviour: what is written
/// until the close is the command's stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_session_gets_the_whole_stdin_at_its_start() {
    let (client, _dir) = client().await;
    let s = client.session("plain").unwrap();
    let (exec, stdin) = s.exec("cat; echo end").stdin_stream();
    let result = tokio::spawn(exec.into_future());
    within(30, stdin.write("x\n")).await.unwrap();
    within(30, stdin.write("y\n")).await.unwrap();
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.stdout, "x\ny\nend\n");
}

/// A command of session B goes for session A's warm socket while A's
/// command reads a streamed stdin: it tries to join A's running command
/// and send it frames. It is never answered, and A's command reads only
/// what A's writer wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_write_to_a_running_commands_stdin() {
    let (client, dir) = client().await;
    // In its namespace, B does not even see the socket.
    stdin_attack(&client, dir.path(), &["FileNotFoundError"]).await;
}

/// The same where commands see the host's files (no namespace): B
/// connects, and the executor drops it unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_the_executor_refuses_stdin_frames_from_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = runbox_tests::embedded::config(dir.path())
        .with_executor_setting(runbox_core::session_cwd::WORKSPACE_NAMESPACE_ENV, "off");
    let client = Client::from_config(config).await.unwrap();
    stdin_attack(
        &client,
        dir.path(),
        &["b''", "ConnectionResetError", "BrokenPipeError"],
    )
    .await;
}

/// Session B's command tries A's socket three ways; each attempt must end
/// in one of `refusals`; A's command reads only A's writes.
async fn stdin_attack(client: &Client, home: &std::path::Path, refusals: &[&str]) {
    let dir = home;
    let a = warm(client, "victim").await;
    let b = warm(client, "attacker").await;
    within(30, a.exec("true")).await.unwrap();
    let (exec, stdin) = a
        .exec(format!("echo $RUNBOX_EXECUTION_ID; {ECHO_LINES}"))
        .stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    stdout_until(&mut output, &mut seen, "\n").await;
    let victim_id = seen.trim().to_owned();
    let socket = dir.join(".runbox/warm/victim");
    assert!(socket.exists());
    let script = format!(
        r#"python3 - <<'EOF'
import socket
for first in ["run {victim_id}\n", "data 5\nevil\n", ""]:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect({path:?})
        s.sendall((first + "data 5\nevil\neof\n").encode())
        print("sent ->", repr(s.recv(200)))
    except Exception as e:
        print("sent ->", type(e).__name__)
EOF"#,
        path = socket.display().to_string(),
    );
    let r = within(60, b.exec(script)).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 3, "{r:?}");
    for line in r.stdout.lines() {
        assert!(refusals.iter().any(|end| line.ends_with(end)), "{line}");
    }
    within(30, stdin.write("mine\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got mine\n").await;
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.stdout, format!("{victim_id}\ngot mine\n"));
    assert!(!r.stdout.contains("evil"));
    within(30, client.close_session("victim")).await.unwrap();
    within(30, client.close_session("attacker")).await.unwrap();
}

/// A job of the session replaces the command's stdin FIFO by name (a
/// link to a host file, then a plain file) while the command runs: the
/// executor goes on writing into the FIFO it made, never into the file
/// the name now leads to, and the result says the command's files were
/// swapped and keeps none of its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_stdin_name_does_not_redirect_the_executors_writes() {
    let (client, dir) = client().await;
    let s = warm(&client, "swap").await;
    let host = dir.path().join("host-file.txt");
    std::fs::write(&host, "original\n").unwrap();
    let command = format!(
        "( rm -f \"$__runbox_dir/stdin\" && ln -s {host:?} \"$__runbox_dir/stdin\" ) & wait $!; \
         echo swapped; {ECHO_LINES}",
        host = host.display().to_string(),
    );
    let (exec, stdin) = s.exec(command).stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    stdout_until(&mut output, &mut seen, "swapped\n").await;
    within(30, stdin.write("through the fifo\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got through the fifo\n").await;
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "original\n");
    assert_eq!(r.exec_status(), ExecStatus::Failed, "{r:?}");
    assert!(r.message.contains("stdin"), "{}", r.message);

    // Replaced by a plain file of the session's own: the same.
    let (exec, stdin) = s
        .exec(format!(
            "rm -f \"$__runbox_dir/stdin\"; echo planted > \"$__runbox_dir/stdin\"; echo swapped; {ECHO_LINES}; cat \"$__runbox_dir/stdin\""
        ))
        .stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    stdout_until(&mut output, &mut seen, "swapped\n").await;
    within(30, stdin.write("x\n")).await.unwrap();
    within(30, stdin.close()).await.unwrap();
    // Live output goes on as it was produced; the result, the record,
    // keeps none of what may have been read from another file.
    stdout_until(&mut output, &mut seen, "got x\nplanted\n").await;
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.stdout, "", "{r:?}");
    assert!(r.message.contains("withheld"), "{}", r.message);
    assert_eq!(r.exec_status(), ExecStatus::Failed, "{r:?}");
    within(30, client.close_session("swap")).await.unwrap();
}

/// A first command refused because its streamed stdin is over the cap
/// (collected, in a session nobody created) leaves nothing behind: no
/// settings, no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_refused_for_its_stdin_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = runbox_tests::embedded::config(dir.path());
    config.limits.stdin_cap = 4;
    let client = within(30, Client::from_config(config)).await.unwrap();
    let s = client.session("fresh").unwrap();
    let (exec, stdin) = s.exec("cat").stdin_stream();
    let result = tokio::spawn(exec.into_future());
    // Refused once the cap is passed: the write may already see it.
    let _ = within(30, stdin.write("too long")).await;
    drop(stdin);
    let err = within(30, result).await.unwrap().unwrap_err();
    assert!(
        matches!(err, runbox_dispatcher::Error::StdinTooLarge { max: 4 }),
        "{err:?}"
    );
    let session = dir.path().join("sessions/fresh");
    assert!(
        !session.join("mode.json").exists(),
        "the refused command stored the session's settings"
    );
    let requests: Vec<_> = std::fs::read_dir(dir.path().join("requests"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(requests.is_empty(), "{requests:?}");
    // A command that fits is accepted and stores them.
    let (exec, stdin) = s.exec("cat").stdin_stream();
    let result = tokio::spawn(exec.into_future());
    within(30, stdin.write("ok")).await.unwrap();
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.stdout, "ok");
    assert!(session.join("mode.json").exists());
}

/// A warm session whose socket path would not fit the kernel's limit runs
/// its commands oneshot; a streamed stdin is then collected first, as in a
/// oneshot session, instead of failing after its request was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_too_long_collects_the_stdin_first() {
    let dir = tempfile::tempdir().unwrap();
    // `{home}/.runbox/warm/{session}` and its hashed form are both over
    // the 108 bytes of `sun_path`.
    let home = dir
        .path()
        .join("h".repeat(110 - dir.path().as_os_str().len().min(100)));
    std::fs::create_dir_all(&home).unwrap();
    let client = within(
        30,
        Client::from_config(runbox_tests::embedded::config(&home)),
    )
    .await
    .unwrap();
    let s = warm(&client, "far").await;
    let (exec, stdin) = s.exec(ECHO_LINES).stdin_stream();
    let result = tokio::spawn(exec.into_future());
    within(30, stdin.write("a\nb\n")).await.unwrap();
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "got a\ngot b\n");
    assert_eq!(
        within(30, client.session_info("far"))
            .await
            .unwrap()
            .warm_execution,
        None,
        "no warm execution could listen there"
    );
}
