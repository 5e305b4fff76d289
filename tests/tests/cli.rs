//! The spine through the `runbox` binary, as a person or a script uses it.

use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{process_gone, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cd_and_export_persist_between_invocations() {
    let cli = Cli::new();
    let out = cli.exec("demo", "cd /tmp && export FOO=bar").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.exec("demo", "pwd; echo $FOO").await;
    assert_eq!(text(&out.stdout), "/tmp\nbar\n");
    assert_eq!(out.status.code(), Some(0));
    // Several words after `--` are joined like ssh does.
    let out = cli
        .run(&["exec", "-s", "demo", "--", "echo", "$FOO", "again"])
        .await;
    assert_eq!(text(&out.stdout), "bar again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_stderr_pass_through() {
    let cli = Cli::new();
    let out = cli.exec("f", "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = cli
        .run(&[
            "exec",
            "-s",
            "f",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--",
            "echo $A $B",
        ])
        .await;
    assert_eq!(text(&out.stdout), "1 x=y\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_exits_124_and_leaves_no_process() {
    let cli = Cli::new();
    let out = cli
        .run(&[
            "exec",
            "-s",
            "t",
            "--timeout",
            "1",
            "--",
            "(sleep 1000 & echo $! > sleeper.pid); sleep 1000",
        ])
        .await;
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    let pid = cli.exec("t", "cat sleeper.pid").await;
    let pid: i32 = text(&pid.stdout).trim().parse().unwrap();
    assert!(process_gone(pid), "sleep {pid} survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_binary_output_reach_the_terminal_exactly() {
    let cli = Cli::new();
    let out = cli
        .exec("o", "head -c 5242880 /dev/zero | tr '\\0' b")
        .await;
    assert_eq!(out.stdout.len(), 5 * 1024 * 1024);
    assert!(out.stdout.iter().all(|b| *b == b'b'));
    let out = cli.exec("o", r"printf '\x00\xff\xfeA'").await;
    assert_eq!(out.stdout, b"\x00\xff\xfeA");

    let out = cli
        .run(&[
            "exec",
            "-s",
            "o",
            "--json",
            "--",
            "head -c 2000000 /dev/zero",
        ])
        .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "SUCCEEDED");
    assert_eq!(json["stdoutTruncated"], true);
    assert_eq!(json["stdoutBytes"], 2_000_000);
    assert!(json["stdoutLog"].as_str().unwrap().starts_with("logs/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_isolated_and_can_be_listed_shown_removed() {
    let cli = Cli::new();
    cli.exec("one", "cd /tmp; export ONE=1").await;
    let out = cli.exec("two", "echo ${ONE:-none}; pwd").await;
    let ws = cli.home.path().join("sessions/two/workspace");
    assert_eq!(text(&out.stdout), format!("none\n{}\n", ws.display()));

    let out = cli.run(&["sessions", "list"]).await;
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("one ") && l.ends_with("/tmp")),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l.starts_with("two ")), "{listing}");
    let out = cli.run(&["sessions", "show", "one"]).await;
    assert!(text(&out.stdout).contains("ONE=1"), "{}", text(&out.stdout));
    let out = cli.run(&["sessions", "show", "one", "--json"]).await;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["cwd"], "/tmp");
    assert_eq!(state["env"]["ONE"], "1");

    let out = cli.run(&["sessions", "rm", "one"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!cli.home.path().join("sessions/one").exists());
    let out = cli.run(&["sessions", "show", "one"]).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["sessions", "rm", "one"]).await;
    assert_eq!(out.status.code(), Some(125));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_early_ends_the_listing_quietly() {
    let cli = Cli::new();
    // Long working directories make each row about a kilobyte, so the
    // listing outgrows the one-page pipe and runbox is still writing when
    // the reader goes away.
    let deep = vec!["d".repeat(200); 5].join("/");
    let script = format!("mkdir -p {deep} && cd {deep}");
    let sessions: Vec<String> = (0..6).map(|i| format!("pipe{i}")).collect();
    let runs = sessions.iter().map(|s| cli.exec(s, &script));
    for out in within(300, futures::future::join_all(runs)).await {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    let (first, out) = cli.run_into_closed_pipe(&["sessions", "list"]).await;
    assert!(first.starts_with("SESSION "), "{first:?}");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_on_one_session_lose_no_update() {
    let cli = Cli::new();
    cli.exec("shared", "export N=0").await;
    let scripts: Vec<String> = (0..50)
        .map(|i| format!("echo {i} >> seen.txt; export N=$((N+1))"))
        .collect();
    let runs: Vec<_> = scripts.iter().map(|s| cli.exec("shared", s)).collect();
    let outs = within(300, futures::future::join_all(runs)).await;
    for out in &outs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = cli
        .exec("shared", "sort -n seen.txt | tr '\\n' ' '; echo N=$N")
        .await;
    let expected: String = (0..50).map(|i| format!("{i} ")).collect::<String>() + "N=50\n";
    assert_eq!(text(&out.stdout), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_executor_is_reported_lost() {
    let cli = Cli::new();
    let out = cli.exec("c", "kill -9 $PPID; sleep 2").await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("LOST") && err.contains("SIGKILL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_bad_config_are_clear_errors() {
    let cli = Cli::new();
    for bad in ["../x", "", &"a".repeat(65)] {
        let out = cli.exec(bad, "true").await;
        assert_eq!(out.status.code(), Some(125), "session {bad:?}");
        assert!(
            text(&out.stderr).contains("[A-Za-z0-9_-]"),
            "{}",
            text(&out.stderr)
        );
    }
    // Three 100 KiB words: over the 256 KiB limit once joined.
    let word = "x".repeat(100 * 1024);
    let out = cli.run(&["exec", "--", &word, &word, &word]).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("at most 262144 bytes"),
        "{}",
        text(&out.stderr)
    );
    for t in ["0", "-1", "99999999"] {
        let out = cli.run(&["exec", "--timeout", t, "--", "true"]).await;
        assert_ne!(out.status.code(), Some(0), "timeout {t}");
        assert!(
            text(&out.stderr).contains("timeout"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(
        !cli.home.path().join("requests").exists()
            || std::fs::read_dir(cli.home.path().join("requests"))
                .unwrap()
                .next()
                .is_none(),
        "bad input wrote a request"
    );

    let out = within(
        30,
        cli.command(&["sessions", "list"])
            .env("RUNBOX_BACKEND", "aws")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("RUNBOX_BACKEND"),
        "{}",
        text(&out.stderr)
    );

    std::fs::create_dir_all(cli.home.path().join("sessions/bad")).unwrap();
    std::fs::write(cli.home.path().join("sessions/bad/state.json"), "][").unwrap();
    let out = cli.exec("bad", "echo no").await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("REJECTED") && err.contains("session bad"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// The client is shut down however the command ends: on the gcp backend that
/// deletes this process's Pub/Sub subscription; on the embedded backend it
/// shows as the notifier stopping because it was shut down (a dropped
/// client's notifier is aborted and logs nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_shut_down_when_a_command_fails() {
    let cli = Cli::new();
    let cases: [(&[&str], i32); 3] = [
        (&["files", "read", "-s", "s", "missing.txt"], 125),
        (&["exec", "-s", "../x", "--", "true"], 125),
        (&["sessions", "list"], 0),
    ];
    for (args, code) in cases {
        let out = within(
            120,
            cli.command(args)
                .env("RUNBOX_LOG", "runbox_notifier=debug")
                .output(),
        )
        .await
        .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains("notifier stopped") && err.contains("reason=notifier shut down"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_from_the_executor_shows_whatever_the_status() {
    let cli = Cli::new();
    // The saved cwd is removed by the command that is in it: the next
    // command starts in the workspace, and the result says so.
    let out = cli
        .exec("note", "mkdir gone && cd gone && rmdir ../gone")
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.exec("note", "echo ran").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    let err = text(&out.stderr);
    assert!(err.starts_with("runbox: cwd "), "{err}");
    assert!(err.contains("no longer exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_bg_default_to_the_default_session_like_exec() {
    let cli = Cli::new();
    let out = cli
        .run_with(&["files", "write", "hello.txt"], b"hi\n")
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.run(&["exec", "--", "cat hello.txt"]).await;
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let out = cli.run(&["files", "read", "hello.txt"]).await;
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let out = cli.run(&["bg", "list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_finished_executions_and_dry_run_only_reports() {
    let cli = Cli::new();
    for script in ["echo one", "echo two"] {
        let out = cli.exec("gc", script).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let results = || {
        std::fs::read_dir(cli.home.path().join("results"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(results(), 2);

    let out = cli.run(&["gc", "--older-than", "0s", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert_eq!(printed.matches("would delete ").count(), 3, "{printed}");
    assert!(printed.contains("of 2 finished executions"), "{printed}");
    assert_eq!(results(), 2, "a dry run deletes nothing");

    let out = cli.run(&["gc", "--older-than", "0s", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["executions"], 2, "{report}");
    assert_eq!(report["keptBackground"], 0, "{report}");
    assert!(report["objects"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(results(), 0);

    // The session survives: its state is not an execution object.
    let out = cli.exec("gc", "echo three").await;
    assert_eq!(text(&out.stdout), "three\n");

    let out = cli.run(&["gc", "--older-than", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
