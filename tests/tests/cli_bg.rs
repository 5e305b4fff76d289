//! Background processes through the `runbox` binary: the exact shapes of
//! `exec --background` and `bg list|logs|kill|wait`. Every invocation is its
//! own process, so `bg kill` and `bg wait` here act on processes that a CLI
//! process which has already exited started.

use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{config, process_gone, within};

/// `runbox exec --background` for the shared harness.
trait Spawn {
    async fn spawn(&self, session: &str, script: &str) -> String;
}

impl Spawn for Cli {
    /// `runbox exec -s S --background -- CMD`; returns the handle. A two
    /// minute timeout ends the process even if the test fails before
    /// killing it.
    async fn spawn(&self, session: &str, script: &str) -> String {
        let out = self
            .run(&[
                "exec",
                "-s",
                session,
                "--background",
                "--timeout",
                "120",
                "--",
                script,
            ])
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let handle = text(&out.stdout);
        let handle = handle
            .strip_suffix('\n')
            .expect("one line on stdout")
            .to_owned();
        assert!(
            !handle.is_empty()
                && handle
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "stdout is the handle only: {handle:?}"
        );
        handle
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_prints_the_handle_and_logs_wait_list_report_the_end() {
    let cli = Cli::new();
    // The gate keeps it running until the test has seen it listed.
    let out = cli.run(&["exec", "-s", "s", "--", "mkfifo gate"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let h = cli
        .spawn(
            "s",
            "echo hello; echo warn >&2; read x < gate; echo bye; exit 3",
        )
        .await;

    let out = cli.run(&["bg", "list", "-s", "s"]).await;
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(&h))
        .unwrap_or_else(|| panic!("{h} not listed: {listing}"));
    assert!(line.contains(" running "), "{line}");
    assert!(line.ends_with("echo bye; exit 3"), "{line}");

    // A foreground command opens the gate while the process runs.
    let out = cli.run(&["exec", "-s", "s", "--", "echo go > gate"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = cli.run(&["bg", "logs", "-s", "s", &h, "-f"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "hello\nbye\n");
    assert_eq!(text(&out.stderr), "warn\n");

    let out = cli.run(&["bg", "wait", "-s", "s", &h]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let out = cli.run(&["bg", "list", "-s", "s", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["handle"], h.as_str());
    assert_eq!(list[0]["state"], "exited");
    assert_eq!(list[0]["status"], "FAILED");
    assert_eq!(list[0]["exitCode"], 3);

    // Without -f, the output so far (here: all of it).
    let out = cli.run(&["bg", "logs", "-s", "s", &h]).await;
    assert_eq!(text(&out.stdout), "hello\nbye\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_from_another_invocation_cancels_the_process_group() {
    let cli = Cli::new();
    let h = cli
        .spawn(
            "k",
            "echo $$ $RUNBOX_EXECUTION_ID > bg.pid; echo started; exec sleep 600",
        )
        .await;
    // Follow until the first output shows it runs; then stop following by
    // killing it from yet another process.
    let out = cli
        .run(&["bg", "wait", "-s", "k", &h, "--timeout", "0.5"])
        .await;
    // The wait timed out, as `timeout(1)` reports it; the message says the
    // process itself still runs.
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("still running"),
        "{}",
        text(&out.stderr)
    );

    let out = cli.run(&["bg", "kill", "-s", "k", &h]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CANCELLED"),
        "{}",
        text(&out.stderr)
    );
    let out = cli
        .run(&["bg", "wait", "-s", "k", &h, "--timeout", "30"])
        .await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let out = cli.run(&["exec", "-s", "k", "--", "cat bg.pid"]).await;
    // Its pid is its PID namespace's: no process of the execution has it.
    let pid = text(&out.stdout);
    let (inner, execution) = pid.trim().split_once(' ').unwrap();
    let left = runbox_tests::procs::host_pid(inner.parse().unwrap(), execution);
    assert!(
        left.is_none_or(process_gone),
        "background process {left:?} survived"
    );
    let out = cli.run(&["bg", "logs", "-s", "k", &h]).await;
    assert_eq!(text(&out.stdout), "started\n");
    let out = cli.run(&["bg", "list", "-s", "k"]).await;
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&h) && l.contains(" cancelled ")),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_and_by_match() {
    let cli = Cli::new();
    let a = cli.spawn("m", "exec sleep 600 # web").await;
    let b = cli.spawn("m", "exec sleep 600 # worker").await;
    let out = cli
        .run(&["bg", "kill", "-s", "m", "--match", "# web"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&a) && !err.contains(&b), "{err}");
    let out = cli.run(&["bg", "kill", "-s", "m", "--all"]).await;
    let err = text(&out.stderr);
    assert!(err.contains(&b) && !err.contains(&a), "{err}");
    let out = cli.run(&["bg", "list", "-s", "m", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["CANCELLED", "CANCELLED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handles_and_bad_usage_are_clear_errors() {
    let cli = Cli::new();
    for sub in ["kill", "wait", "logs"] {
        let out = cli.run(&["bg", sub, "-s", "s", "nope-123"]).await;
        assert_eq!(out.status.code(), Some(66), "bg {sub}");
        assert!(
            text(&out.stderr).contains("session s has no background process \"nope-123\""),
            "bg {sub}: {}",
            text(&out.stderr)
        );
    }
    // kill needs exactly one of HANDLE, --all, --match.
    let out = cli.run(&["bg", "kill", "-s", "s"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = cli.run(&["bg", "kill", "-s", "s", "x", "--all"]).await;
    assert_eq!(out.status.code(), Some(2));
    // Bad input to a spawn fails like exec, before anything is written.
    let out = cli
        .run(&[
            "exec",
            "-s",
            "s",
            "--background",
            "--timeout",
            "0",
            "--",
            "true",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value '0' for '--timeout"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(!cli.home.path().join("requests").exists());
    // A wait's timeout may be 0 (look once) but not negative or infinite.
    for t in ["-1", "nan", "inf"] {
        let out = cli
            .run(&["bg", "wait", "-s", "s", "nope-123", "--timeout", t])
            .await;
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            text(&out.stderr).contains(&format!("'{t}'")),
            "{}",
            text(&out.stderr)
        );
    }
    let out = cli.run(&["bg", "list", "-s", "s"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_crash_after_the_spawner_exited_is_lost_for_wait_and_follow() {
    let cli = Cli::new();
    let out = cli.run(&["exec", "-s", "c", "--", "mkfifo gate"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Once the gate opens, the command says so and the test kills its
    // executor (out of the command's sight): it dies without a result.
    let mut killed = runbox_tests::pipes::Announcements::new(cli.home.path(), "gate-open");
    let h = cli
        .spawn(
            "c",
            &format!(
                "echo waiting; read x < gate; echo open > {}; exec sleep 5",
                killed.shell_path()
            ),
        )
        .await;
    // Its first line is in a chunk (read through the library on the same
    // home) before the gate opens: output not yet uploaded when an
    // executor dies is lost with it.
    let client = runbox_dispatcher::Client::from_config(config(cli.home.path()))
        .await
        .unwrap();
    let handle = within(30, client.session("c").unwrap().background(&h))
        .await
        .unwrap();
    let first = within(
        30,
        client.follow_background_logs(&handle, runbox_dispatcher::Stream::Stdout, 0),
    )
    .await
    .unwrap();
    assert_eq!(&first.data[..], b"waiting\n");
    // The spawning invocation has exited: nobody watches the launch any
    // more. A waiting and a following invocation must still see the end.
    let wait_args = ["bg", "wait", "-s", "c", &h];
    let follow_args = ["bg", "logs", "-s", "c", &h, "-f"];
    let (wait, follow, gate, ()) = tokio::join!(
        cli.run(&wait_args),
        cli.run(&follow_args),
        cli.run(&["exec", "-s", "c", "--", "echo go > gate"]),
        async {
            within(60, killed.next()).await;
            runbox_tests::procs::kill_executor(&h);
        },
    );
    assert!(gate.status.success(), "{}", text(&gate.stderr));
    assert_eq!(wait.status.code(), Some(125), "{}", text(&wait.stderr));
    assert!(
        text(&wait.stderr).contains("LOST"),
        "{}",
        text(&wait.stderr)
    );
    assert_eq!(follow.status.code(), Some(0), "{}", text(&follow.stderr));
    assert_eq!(text(&follow.stdout), "waiting\n");
}
