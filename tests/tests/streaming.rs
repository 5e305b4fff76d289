//! Output while the command runs: `Exec::streaming` delivers stdout and
//! stderr chunks before the result, in order, each once, capped like the
//! record; `runbox exec` prints them live; `runbox serve` streams them as
//! server-sent events. On the embedded backend and on the emulators (gcp
//! backend: chunk objects in fake-gcs-server, their notifications through
//! Google's Pub/Sub emulator). Every "before" is proven with a gate the
//! command waits on, opened only once the test has seen the chunk.

use std::collections::BTreeMap;
use std::process::Stdio;

use runbox_core::Config;
use runbox_dispatcher::{
    Client, ExecStatus, OutputChunk, OutputStream, SessionMode, SessionSettings, Stream,
};
use runbox_tests::cli::Cli;
use runbox_tests::embedded::{self, binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::Gate;
use runbox_tests::serve::Serve;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Reads the stream to its end.
async fn drain(output: &mut OutputStream) -> Vec<OutputChunk> {
    let mut chunks = Vec::new();
    while let Some(chunk) = within(60, output.next()).await {
        chunks.push(chunk);
    }
    chunks
}

/// The bytes of one stream, checking its numbers run 1, 2, 3, … (in
/// order, no duplicate, no gap).
fn joined(chunks: &[OutputChunk], stream: Stream) -> Vec<u8> {
    let mine: Vec<&OutputChunk> = chunks.iter().filter(|c| c.stream == stream).collect();
    for (i, chunk) in mine.iter().enumerate() {
        assert_eq!(
            chunk.seq,
            i as u64 + 1,
            "{stream:?} chunks out of order: {chunks:?}"
        );
    }
    mine.iter().flat_map(|c| c.data.to_vec()).collect()
}

/// The first chunks come while the command waits on the gate (so before
/// it ends, by as long as the test takes to open it); the rest follow; the
/// stream has everything by the time the result is in; stdout and stderr
/// stay apart and together equal the result's record.
async fn chunks_arrive_in_order_before_the_result(
    client: &Client,
    dir: &std::path::Path,
    session: &str,
) {
    let mut gate = Gate::new(dir, &format!("gate-{session}"));
    let session = client.session(session).unwrap();
    let script = format!(
        "echo first; echo oops >&2; read -r _ < {}; for i in $(seq 1 200); do echo line $i; done; echo done >&2",
        gate.shell_path()
    );
    let (mut output, result) = session.exec(script).streaming();
    let result = tokio::spawn(result);
    let mut early = vec![within(60, output.next()).await.expect("a first chunk")];
    // Both first lines are written before the gate; wait for both.
    while !early.iter().any(|c| c.stream == Stream::Stdout)
        || !early.iter().any(|c| c.stream == Stream::Stderr)
    {
        early.push(
            within(60, output.next())
                .await
                .expect("another early chunk"),
        );
    }
    assert!(
        !result.is_finished(),
        "the command waits on the gate, so no result yet"
    );
    assert_eq!(joined(&early, Stream::Stdout), b"first\n");
    assert_eq!(joined(&early, Stream::Stderr), b"oops\n");
    gate.release(1).await;
    let mut chunks = early;
    chunks.extend(drain(&mut output).await);
    let result = within(60, result).await.unwrap().unwrap();
    assert_eq!(result.exec_status(), ExecStatus::Succeeded, "{result:?}");
    let stdout = joined(&chunks, Stream::Stdout);
    let stderr = joined(&chunks, Stream::Stderr);
    assert_eq!(String::from_utf8(stdout).unwrap(), result.stdout);
    assert_eq!(String::from_utf8(stderr).unwrap(), result.stderr);
    assert!(result.stdout.ends_with("line 200\n"));
    assert_eq!(result.stderr, "oops\ndone\n");

    // A plain exec on the same session asks for no chunks and gets none.
    let r = within(60, session.exec("echo quiet")).await.unwrap();
    assert_eq!(r.stdout, "quiet\n");
}

/// Chunks keep what the record keeps: at most the log cap per stream.
async fn chunks_are_capped_like_the_record(client: &Client, cap: u64, session: &str) {
    let session = client.session(session).unwrap();
    let script = format!("head -c {} /dev/zero | tr '\\0' a", cap * 5);
    let (mut output, result) = session.exec(script).streaming();
    let result = tokio::spawn(result);
    let chunks = drain(&mut output).await;
    let result = within(60, result).await.unwrap().unwrap();
    let stdout = joined(&chunks, Stream::Stdout);
    assert_eq!(stdout.len() as u64, cap, "chunks hold exactly the cap");
    assert!(stdout.iter().all(|&b| b == b'a'));
    assert_eq!(result.stdout_bytes, cap * 5);
}

fn capped(mut config: Config, cap: u64) -> Config {
    config.limits.log_cap = cap;
    config
}

const CAP: u64 = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_chunks_arrive_in_order_before_the_result() {
    let home = tempfile::tempdir().unwrap();
    let client = within(
        60,
        Client::from_config(capped(embedded::config(home.path()), CAP)),
    )
    .await
    .unwrap();
    chunks_arrive_in_order_before_the_result(&client, home.path(), "live").await;
    chunks_are_capped_like_the_record(&client, CAP, "capped").await;

    // Retention: the chunks go with their execution's other objects.
    let chunks = || {
        // The store removes a directory it emptied.
        std::fs::read_dir(home.path().join("results")).map_or(0, |d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".chunk."))
                .count()
        })
    };
    assert!(chunks() > 0);
    let report = within(60, client.gc(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert!(report.executions > 0, "{report:?}");
    assert_eq!(chunks(), 0, "gc left chunk objects behind");
    client.shutdown().await;
}

/// A warm session streams the same chunks: for the command that starts
/// its execution and for one the running shell is fed, with the same
/// order, cap and "all before the result" guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_chunks_arrive_in_order_before_the_result() {
    let home = tempfile::tempdir().unwrap();
    let client = within(
        60,
        Client::from_config(capped(embedded::config(home.path()), CAP)),
    )
    .await
    .unwrap();
    for id in ["warm-live", "warm-capped"] {
        within(
            30,
            client.create_session_with(id, SessionSettings::new(SessionMode::Warm)),
        )
        .await
        .unwrap();
    }
    // The first command starts the warm execution...
    chunks_arrive_in_order_before_the_result(&client, home.path(), "warm-live").await;
    let first = within(30, client.session_info("warm-live")).await.unwrap();
    let running = first.warm_execution.clone().expect("a warm execution runs");
    // ...and the next is fed to the same shell, still streaming.
    chunks_arrive_in_order_before_the_result(&client, home.path(), "warm-live").await;
    assert_eq!(
        within(30, client.session_info("warm-live"))
            .await
            .unwrap()
            .warm_execution,
        Some(running),
        "served by the same warm execution"
    );
    within(60, client.session("warm-capped").unwrap().exec("true"))
        .await
        .unwrap();
    chunks_are_capped_like_the_record(&client, CAP, "warm-capped").await;
    for id in ["warm-live", "warm-capped"] {
        within(30, client.close_session(id)).await.unwrap();
    }
    client.shutdown().await;
}

/// A warm command swaps its output files (which it can name: the shell's
/// `$__runbox_dir`) for links to a host file outside its session, then
/// writes past the log cap: neither its chunks nor its result hold that
/// file, and the file is not cut to the cap. The executor reads and trims
/// only the files it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_command_cannot_redirect_its_output_files_to_the_host() {
    let home = tempfile::tempdir().unwrap();
    let secret = home.path().join("secret.txt");
    let text = "TOPSECRET\n".repeat(2 * CAP as usize);
    std::fs::write(&secret, &text).unwrap();
    let client = within(
        60,
        Client::from_config(capped(embedded::config(home.path()), CAP)),
    )
    .await
    .unwrap();
    within(
        30,
        client.create_session_with("swap", SessionSettings::new(SessionMode::Warm)),
    )
    .await
    .unwrap();
    let session = client.session("swap").unwrap();
    let script = format!(
        "for s in stdout stderr; do rm -f \"$__runbox_dir/$s\"; ln -s {} \"$__runbox_dir/$s\"; done; \
         head -c {} /dev/zero | tr '\\0' a; echo swapped >&2",
        secret.display(),
        CAP * 3
    );
    let (mut output, result) = session.exec(script).streaming();
    let result = tokio::spawn(result);
    let chunks = drain(&mut output).await;
    let result = within(60, result).await.unwrap().unwrap();
    assert_eq!(result.exec_status(), ExecStatus::Succeeded, "{result:?}");
    let stdout = joined(&chunks, Stream::Stdout);
    assert_eq!(stdout.len() as u64, CAP);
    assert!(stdout.iter().all(|&b| b == b'a'));
    assert_eq!(joined(&chunks, Stream::Stderr), b"swapped\n");
    assert!(!result.stdout.contains("TOPSECRET"), "{result:?}");
    assert_eq!(result.stderr, "swapped\n");
    if !result.stdout_log.is_empty() {
        let mut log = Vec::new();
        let (_, mut reader) = within(60, client.open_log(&result.stdout_log))
            .await
            .unwrap();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut log)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&log).contains("TOPSECRET"));
    }
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        text,
        "host file intact"
    );
    within(30, client.close_session("swap")).await.unwrap();
    client.shutdown().await;
}

fn gcp_config(emu: &Emulators, home: &std::path::Path) -> Config {
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    env.insert("RUNBOX_LOG_CAP_BYTES".into(), CAP.to_string());
    Config::from_lookup(&env).expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_chunks_arrive_through_notifications() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let client = within(60, Client::from_config(gcp_config(&emu, home.path())))
        .await
        .unwrap();
    chunks_arrive_in_order_before_the_result(&client, home.path(), "live").await;
    chunks_are_capped_like_the_record(&client, CAP, "capped").await;
    // The chunks came as events (the notifier routed them), not only
    // through the reads after the result.
    let stats = client.notifier_stats();
    assert!(stats.delivered > 3, "{stats:?}\n{}", emu.logs());
    client.shutdown().await;
}

/// The real `runbox` binary prints `1` while the command still waits to
/// produce `2`.
#[tokio::test]
async fn cli_prints_output_while_the_command_runs() {
    let cli = Cli::new();
    let mut gate = Gate::new(cli.home.path(), "gate");
    let script = format!("echo 1; read -r _ < {}; echo 2", gate.shell_path());
    let mut child = cli
        .command(&["exec", "-s", "live", "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(60, lines.next_line()).await.unwrap();
    assert_eq!(first.as_deref(), Some("1"));
    gate.release(1).await;
    let second = within(60, lines.next_line()).await.unwrap();
    assert_eq!(second.as_deref(), Some("2"));
    assert_eq!(
        within(60, lines.next_line()).await.unwrap(),
        None,
        "printed once"
    );
    let status = within(60, child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// On a warm session too: the real `runbox` binary prints `1` while the
/// command, fed to the session's running shell, still waits to produce
/// `2`.
#[tokio::test]
async fn cli_prints_warm_output_while_the_command_runs() {
    let cli = Cli::new();
    let run = |args: &[&str]| {
        let mut cmd = cli.command(args);
        async move { within(60, cmd.output()).await.unwrap() }
    };
    let out = run(&["sessions", "create", "w", "--warm"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = run(&["exec", "-s", "w", "--", "true"]).await;
    assert!(out.status.success(), "{out:?}");
    let mut gate = Gate::new(cli.home.path(), "gate");
    let script = format!("echo 1; read -r _ < {}; echo 2", gate.shell_path());
    let mut child = cli
        .command(&["exec", "-s", "w", "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(60, lines.next_line()).await.unwrap();
    assert_eq!(first.as_deref(), Some("1"));
    gate.release(1).await;
    let second = within(60, lines.next_line()).await.unwrap();
    assert_eq!(second.as_deref(), Some("2"));
    assert_eq!(
        within(60, lines.next_line()).await.unwrap(),
        None,
        "printed once"
    );
    let status = within(60, child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let shown = run(&["sessions", "show", "w"]).await;
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("warm:      running"),
        "{shown:?}"
    );
    let out = run(&["sessions", "close", "w"]).await;
    assert!(out.status.success(), "{out:?}");
}

/// A real HTTP client (Python's urllib) gets `stdout` events while the
/// command runs, then the `result` event, and the stream ends; `Accept:
/// text/event-stream` asks for the same as `stream=true`. Bad input still
/// answers a plain problem before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_streams_chunks_then_the_result() {
    const CLIENT: &str = r#"
import json, sys, urllib.request, urllib.error
url, body, accept = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
req = urllib.request.Request(url, data=body, method="POST",
    headers={"Content-Type": "application/json", "Accept": accept})
try:
    with urllib.request.urlopen(req) as r:
        print("STATUS", r.status, r.headers.get("Content-Type"), flush=True)
        for line in r:
            sys.stdout.write(line.decode()); sys.stdout.flush()
except urllib.error.HTTPError as e:
    print("STATUS", e.code, e.headers.get("Content-Type"), flush=True)
"#;
    let serve = Serve::start("127.0.0.1:0", &[]).await.unwrap();
    let mut gate = Gate::new(serve.home.path(), "gate");
    let body = serde_json::json!({
        "command": format!("echo first; read -r _ < {}; echo second", gate.shell_path()),
    });
    let run = |url: String, body: String, accept: &str| {
        tokio::process::Command::new("python3")
            .args(["-c", CLIENT, &url, &body, accept])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let url = format!("{}/v1/sessions/web/exec", serve.url());
    let mut child = run(url.clone(), body.to_string(), "text/event-stream");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || within(60, lines.next_line()).await.unwrap();
    let status = next().await.unwrap();
    assert!(
        status.starts_with("STATUS 200 text/event-stream"),
        "{status}"
    );
    assert_eq!(next().await.as_deref(), Some("event: stdout"));
    assert_eq!(
        next().await.as_deref(),
        Some(r#"data: {"seq":1,"text":"first\n"}"#)
    );
    // The command waits on the gate: the first chunk came before its end.
    gate.release(1).await;
    let mut rest = Vec::new();
    while let Some(line) = next().await {
        rest.push(line);
    }
    let events: Vec<(&str, &str)> = rest
        .chunks(3)
        .filter_map(|e| {
            let event = e.iter().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.iter().find_map(|l| l.strip_prefix("data: "))?;
            Some((event, data))
        })
        .collect();
    let (last, data) = events.last().copied().expect("a last event");
    assert_eq!(last, "result", "{rest:?}");
    let result: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(result["status"], "SUCCEEDED");
    assert_eq!(result["stdout"], "first\nsecond\n");
    let streamed: String = events
        .iter()
        .filter(|(e, _)| *e == "stdout")
        .map(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(streamed, "second\n", "only what came after the first chunk");
    within(60, child.wait()).await.unwrap();

    // stream=true without the Accept header; a bad timeout is refused
    // with a plain problem, before any stream starts.
    let bad = serde_json::json!({"command": "true", "timeoutMs": u64::MAX}).to_string();
    let out = within(
        60,
        run(format!("{url}?stream=true"), bad, "*/*").wait_with_output(),
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.starts_with("STATUS 400 application/problem+json"),
        "{out}"
    );
}

/// Session B's command tries to read session A's live chunks, and to slip
/// a forged chunk into A's stream, through the store's files: it cannot
/// reach them, and A's caller sees only A's own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_read_or_forge_chunks() {
    let home = tempfile::tempdir().unwrap();
    let client = within(60, Client::from_config(embedded::config(home.path())))
        .await
        .unwrap();
    let mut gate = Gate::new(home.path(), "gate");
    let a = client.session("alice").unwrap();
    let (mut output, result) = a
        .exec(format!(
            "echo alice-secret; read -r _ < {}; echo alice-end",
            gate.shell_path()
        ))
        .streaming();
    let result = tokio::spawn(result);
    let first = within(60, output.next()).await.unwrap();
    assert_eq!(&first.data[..], b"alice-secret\n");
    let results = home.path().join("results");
    let chunk = std::fs::read_dir(&results)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().contains(".chunk.stdout.000001"))
        .expect("A's first chunk object");
    let forged = chunk.to_string_lossy().replace(".000001", ".000002");
    let attack = format!(
        "cat {chunk} {dir}/*.chunk.* 2>&1; ls {dir} 2>&1; echo forged > {forged} 2>&1; echo forged > {chunk} 2>&1; echo attacked",
        chunk = chunk.display(),
        dir = results.display(),
    );
    let b = within(60, client.session("bob").unwrap().exec(attack))
        .await
        .unwrap();
    assert!(b.stdout.contains("attacked"), "{b:?}");
    assert!(
        !b.stdout.contains("alice-secret"),
        "B read A's chunk: {b:?}"
    );
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !b.stdout.lines().any(|l| l.trim() == name),
        "B listed A's chunks: {b:?}"
    );
    assert!(!std::path::Path::new(&forged).exists(), "B forged a chunk");
    assert_eq!(
        std::fs::read(&chunk).unwrap(),
        b"alice-secret\n",
        "B overwrote A's chunk"
    );
    gate.release(1).await;
    let rest = drain(&mut output).await;
    let result = within(60, result).await.unwrap().unwrap();
    let mut all = vec![first];
    all.extend(rest);
    assert_eq!(joined(&all, Stream::Stdout), b"alice-secret\nalice-end\n");
    assert_eq!(result.stdout, "alice-secret\nalice-end\n");
    client.shutdown().await;
}
