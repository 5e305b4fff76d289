//! The spine through the `runbox` binary, as a person or a script uses it.

use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, process_gone, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cd_and_export_persist_between_invocations() {
    let cli = Cli::new();
    let out = cli.exec("demo", "cd /tmp && export FOO=bar").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.exec("demo", "pwd; echo $FOO").await;
    assert_eq!(text(&out.stdout), "/tmp\nbar\n");
    assert_eq!(out.status.code(), Some(0));
}

/// Several words after `--` are one command with exactly those arguments
/// (the issue's `printf '%s\n' "a b" c` printed `anbncn` when they were
/// joined with spaces); one word is a script, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_words_after_the_separator_keep_their_argv() {
    let cli = Cli::new();
    let out = cli
        .run(&["exec", "--", "printf", "%s\\n", "a b", "c"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a b\nc\n");
    // Nothing in a word is shell syntax any more.
    let out = cli
        .run(&["exec", "--", "echo", "$HOME", "it's", "*", "", "a;b"])
        .await;
    assert_eq!(text(&out.stdout), "$HOME it's *  a;b\n");
    // A command given as words still persists what it changes.
    let out = cli.run(&["exec", "--", "cd", "/tmp"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.exec("default", "pwd; echo $((1 + 2)) | cat").await;
    assert_eq!(text(&out.stdout), "/tmp\n3\n");
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
            "(sleep 1000 & echo $! $RUNBOX_EXECUTION_ID > sleeper.pid); sleep 1000",
        ])
        .await;
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    // The command's pids are its PID namespace's: no process of the
    // execution has that one any more.
    let pid = cli.exec("t", "cat sleeper.pid").await;
    let pid = text(&pid.stdout);
    let (inner, execution) = pid.trim().split_once(' ').unwrap();
    let left = runbox_tests::procs::host_pid(inner.parse().unwrap(), execution);
    assert!(left.is_none_or(process_gone), "sleep {left:?} survived");
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
    assert_eq!(text(&out.stdout), "none\n/workspace\n");

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
    // Not found is 66, for every subcommand that names a session.
    for sub in ["show", "rm", "close"] {
        let out = cli.run(&["sessions", sub, "one"]).await;
        assert_eq!(out.status.code(), Some(66), "sessions {sub}");
        assert!(
            text(&out.stderr).contains("session one does not exist"),
            "{}",
            text(&out.stderr)
        );
    }
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
    // The command cannot see its executor (its own PID namespace): it is
    // killed from here once the command runs.
    let mut started = runbox_tests::pipes::Announcements::new(cli.home.path(), "started");
    let run = cli
        .command(&[
            "exec",
            "-s",
            "c",
            "--",
            &format!(
                "echo $RUNBOX_EXECUTION_ID > {}; sleep 30",
                started.shell_path()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn runbox");
    let execution = within(60, started.next()).await;
    runbox_tests::procs::kill_executor(&execution);
    let out = within(60, run.wait_with_output()).await.expect("runbox");
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("LOST") && err.contains("SIGKILL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_bad_config_are_clear_errors() {
    let cli = Cli::new();
    for bad in ["../x", "", &"a".repeat(65)] {
        let out = cli.exec(bad, "true").await;
        assert_eq!(out.status.code(), Some(2), "session {bad:?}");
        assert!(
            text(&out.stderr).contains("[A-Za-z0-9_-]"),
            "{}",
            text(&out.stderr)
        );
    }
    // Three 100 KiB words: over the 256 KiB limit once joined.
    let word = "x".repeat(100 * 1024);
    let out = cli.run(&["exec", "--", &word, &word, &word]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("at most 262144 bytes"),
        "{}",
        text(&out.stderr)
    );
    // Each bad --timeout is refused with its value quoted; `1e-9` would
    // reach the executor as 0 ms.
    for t in ["0", "-1", "nan", "inf", "1e-9", "99999999"] {
        for background in [false, true] {
            let mut args = vec!["exec", "--timeout", t];
            if background {
                args.push("--background");
            }
            args.extend(["--", "true"]);
            let out = cli.run(&args).await;
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("'{t}'")) && err.contains("--timeout"),
                "{args:?}: {err}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    // Forgetting `--` gets the command line that was meant.
    let out = cli.run(&["exec", "-s", "x", "echo", "a b"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("hint: the command goes after `--`: runbox exec -s x -- echo 'a b'"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["exec"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("hint: "),
        "{}",
        text(&out.stderr)
    );
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
        (&["files", "read", "-s", "s", "missing.txt"], 66),
        (&["exec", "-s", "../x", "--", "true"], 2),
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

/// A note the executor leaves in the result is printed on stderr whatever
/// the status, with `--json` too (where stdout holds only the JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_from_the_executor_shows_whatever_the_status() {
    let cli = Cli::new();
    let cases: [(&[&str], i32); 4] = [
        (&["exec", "-s", "note", "--", "echo ran"], 0),
        (&["exec", "-s", "note", "--", "echo ran; exit 3"], 3),
        (
            &[
                "exec",
                "-s",
                "note",
                "--timeout",
                "1",
                "--",
                "echo ran; sleep 30",
            ],
            124,
        ),
        (&["exec", "-s", "note", "--json", "--", "echo ran"], 0),
    ];
    for (args, code) in cases {
        // The saved cwd is removed by the command that is in it: the next
        // command starts in the workspace, and the result says so.
        let out = cli
            .exec("note", "mkdir -p gone && cd gone && rmdir ../gone")
            .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = cli.run(args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("runbox: cwd ") && l.contains("no longer exists")),
            "{args:?}: {err}"
        );
        if args.contains(&"--json") {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["stdout"], "ran\n");
        } else {
            assert_eq!(text(&out.stdout), "ran\n");
        }
    }
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
    // Result objects; `exec` also leaves its live output chunks beside them.
    let objects = |suffix: &str| {
        std::fs::read_dir(cli.home.path().join("results"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
            })
            .unwrap_or(0)
    };
    let results = || objects(".json");
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
    assert_eq!(objects(""), 0, "chunks are deleted with their execution");

    // The session survives: its state is not an execution object.
    let out = cli.exec("gc", "echo three").await;
    assert_eq!(text(&out.stdout), "three\n");

    let out = cli.run(&["gc", "--older-than", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// With `--json`, a failure is `{"error":{"kind","message"}}` on stdout,
/// with the exit status of its kind: bad usage, bad input, not found and
/// bad configuration alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_errors_are_json_too() {
    let cli = Cli::new();
    let cases: [(&[&str], &str, i32); 6] = [
        (&["exec", "--json", "echo", "hi"], "usage", 2),
        (
            &["exec", "--json", "--timeout", "nan", "--", "true"],
            "usage",
            2,
        ),
        (
            &["exec", "--json", "-s", "a b", "--", "true"],
            "invalid_input",
            2,
        ),
        (&["sessions", "show", "nope", "--json"], "not_found", 66),
        (&["bg", "list", "-s", "../x", "--json"], "invalid_input", 2),
        (&["gc", "--json", "--older-than", "soon"], "usage", 2),
    ];
    for (args, kind, code) in cases {
        let out = cli.run(args).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)));
        assert_eq!(json["error"]["kind"], kind, "{args:?}: {json}");
        assert!(
            !json["error"]["message"].as_str().unwrap().is_empty(),
            "{json}"
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
    // `--json` after `--` is the command's, not runbox's.
    let out = cli.run(&["exec", "--", "echo", "--json"]).await;
    assert_eq!(text(&out.stdout), "--json\n");

    let out = within(
        30,
        cli.command(&["sessions", "list", "--json"])
            .env("RUNBOX_BACKEND", "aws")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "config");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RUNBOX_BACKEND"),
        "{json}"
    );
}

/// Every subcommand that prints ends quietly, with the status it would
/// have had, when its reader goes away early (`| head -1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printing_subcommand_ends_quietly_on_a_closed_pipe() {
    let cli = Cli::new();
    // Enough of everything to outgrow a one-page pipe: 20,000 short lines
    // in a file and in output, a 10 KiB variable, 300 entries to list.
    let setup = "seq 20000 > lines.txt; mkdir many; (cd many && touch $(seq 300)); \
                 export BIG=$(head -c 10000 /dev/zero | tr '\\0' x)";
    let out = cli.exec("p", setup).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let long = format!("seq 20000; : {}", "y".repeat(8000));
    let out = cli
        .run(&["exec", "-s", "p", "--background", "--", &long])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let handle = text(&out.stdout).trim().to_owned();
    let out = cli.run(&["bg", "wait", "-s", "p", &handle]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let cases: [(&[&str], &str, i32); 10] = [
        (&["exec", "-s", "p", "--", "seq 20000"], "1\n", 0),
        (&["exec", "-s", "p", "--", "seq 20000; exit 7"], "1\n", 7),
        (&["exec", "-s", "p", "--json", "--", "seq 20000"], "{\n", 0),
        (&["files", "read", "-s", "p", "lines.txt"], "1\n", 0),
        (&["files", "get", "-s", "p", "lines.txt"], "1\n", 0),
        (&["files", "ls", "-s", "p", "many"], "file ", 0),
        (
            &["files", "grep", "-s", "p", "0", "lines.txt"],
            "10:10\n",
            0,
        ),
        (&["bg", "logs", "-s", "p", &handle], "1\n", 0),
        (&["bg", "list", "-s", "p", "--json"], "[", 0),
        (&["sessions", "show", "p"], "session:", 0),
    ];
    for (args, first, code) in cases {
        let (line, out) = cli.run_into_closed_pipe(args).await;
        let err = text(&out.stderr);
        assert!(line.starts_with(first), "{args:?}: {line:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    }
}

/// `2>&1 | head -1`: standard error closes too, and the messages runbox
/// writes there afterwards (here: that the command timed out) end quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_ends_quietly_too() {
    let cli = Cli::new();
    let script = r#""$RUNBOX" exec --timeout 1 -- 'seq 200000 >&2; sleep 30' 2>&1 | head -1; exit "${PIPESTATUS[0]}""#;
    let out = within(
        120,
        tokio::process::Command::new("bash")
            .args(["-c", script])
            .env("RUNBOX", binary("runbox"))
            .env_remove("RUNBOX_BACKEND")
            .env_remove("RUNBOX_EXECUTOR")
            .env_remove("RUNBOX_LAUNCHER")
            .env("RUNBOX_HOME", cli.home.path())
            .env("RUNBOX_KILL_GRACE_MS", "300")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(text(&out.stdout), "1\n");
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
}

/// `sessions list --json` and `sessions show --json` give a session the
/// same fields, and every time the CLI prints (tables and JSON of
/// sessions, exec, bg and gc) is RFC 3339 UTC to the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_json_agrees_and_times_have_one_format() {
    let cli = Cli::new();
    let out = cli.exec("t", "export A=1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.run(&["sessions", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = cli.run(&["sessions", "show", "t", "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0], shown);
    let keys: Vec<&str> = shown
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "backgroundRunning",
            "createdAt",
            "cwd",
            "env",
            "execCount",
            "idleTimeoutMs",
            "lastExecutionId",
            "mode",
            "sessionId",
            "unsetEnv",
            "updatedAt",
            "warmExecution"
        ]
    );
    assert_eq!(shown["env"]["A"], "1");
    assert_eq!(shown["mode"], "oneshot");
    assert_eq!(shown["execCount"], 1);

    let mut times: Vec<String> = vec![
        shown["createdAt"].as_str().unwrap().to_owned(),
        shown["updatedAt"].as_str().unwrap().to_owned(),
    ];
    let out = cli.run(&["exec", "-s", "t", "--json", "--", "true"]).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["startedAt", "completedAt"] {
        times.push(result[field].as_str().unwrap().to_owned());
    }
    let out = cli
        .run(&["exec", "-s", "t", "--background", "--", "true"])
        .await;
    let handle = text(&out.stdout).trim().to_owned();
    let out = cli.run(&["bg", "wait", "-s", "t", &handle]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = cli.run(&["bg", "list", "-s", "t", "--json"]).await;
    let bg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    times.push(bg[0]["startedAt"].as_str().unwrap().to_owned());
    let out = cli.run(&["bg", "list", "-s", "t"]).await;
    let row = text(&out.stdout);
    let row = row.lines().nth(1).unwrap();
    times.push(row.split_whitespace().nth(3).unwrap().to_owned());
    let out = cli.run(&["sessions", "show", "t"]).await;
    for line in text(&out.stdout).lines() {
        if let Some(t) = line
            .strip_prefix("created:")
            .or_else(|| line.strip_prefix("last used:"))
        {
            times.push(t.trim().to_owned());
        }
    }
    let out = cli
        .run(&["gc", "--older-than", "0s", "--dry-run", "--json"])
        .await;
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    times.push(
        gc["candidates"][0]["finishedAt"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(times.len(), 9, "{times:?}");
    for t in &times {
        assert!(is_rfc3339_seconds(t), "{t:?} in {times:?}");
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339_seconds(t: &str) -> bool {
    let shape = "0000-00-00T00:00:00Z";
    t.len() == shape.len()
        && t.chars().zip(shape.chars()).all(|(c, s)| match s {
            '0' => c.is_ascii_digit(),
            _ => c == s,
        })
}

/// Bare `runbox` and `runbox --help` describe the tool: what it does, an
/// example of each form of `exec`, the exit statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_runbox_describes_the_tool() {
    let cli = Cli::new();
    let bare = cli.run(&[]).await;
    assert_eq!(bare.status.code(), Some(2));
    let help = cli.run(&["--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    for said in [text(&bare.stderr), text(&help.stdout)] {
        assert!(said.starts_with("Run shell commands in stateful"), "{said}");
        assert!(said.contains("runbox exec -- printf"), "{said}");
        assert!(said.contains("66 not found"), "{said}");
        assert!(!said.contains("runbox-dispatcher"), "{said}");
    }
}
