//! The spine through the library API on the embedded backend: every
//! behaviour of DESIGN §5 and §6 that a caller can observe.

use std::time::Duration;

use futures::future::join_all;
use runbox_core::layout;
use runbox_core::store::{self, PutOptions};
use runbox_dispatcher::{Error, ExecStatus};
use runbox_tests::embedded::{client, process_gone, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cd_and_export_persist_across_commands() {
    let (client, dir) = client().await;
    let s = client.session("persist").unwrap();
    let r = within(
        30,
        s.exec("mkdir -p sub && cd sub && export GREETING='hello world'"),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    let r = within(30, s.exec("pwd; echo \"$GREETING\"")).await.unwrap();
    assert!(dir.path().join("sessions/persist/workspace/sub").is_dir());
    assert_eq!(r.stdout, "/workspace/sub\nhello world\n");
    assert_eq!(r.cwd, "/workspace/sub");

    // They persist whatever the exit status, and `unset` persists too.
    let r = within(30, s.exec("cd /tmp; unset GREETING; export AFTER=1; false"))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Failed);
    let r = within(30, s.exec("pwd; echo \"${GREETING:-unset} $AFTER\""))
        .await
        .unwrap();
    assert_eq!(r.stdout, "/tmp\nunset 1\n");

    // Even `exit` in the middle of a command.
    within(30, s.exec("cd /; export X=2; exit 4"))
        .await
        .unwrap();
    let r = within(30, s.exec("echo $(pwd) $X")).await.unwrap();
    assert_eq!(r.stdout, "/ 2\n");

    // Extra env applies to one command only.
    let r = within(30, s.exec("echo ${ONCE:-none}").env("ONCE", "yes"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "yes\n");
    let r = within(30, s.exec("echo ${ONCE:-none}")).await.unwrap();
    assert_eq!(r.stdout, "none\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_reports_exit_code_and_stderr() {
    let (client, _dir) = client().await;
    let s = client.session("fail").unwrap();
    let r = within(30, s.exec("echo out; echo 'something broke' >&2; exit 42"))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Failed);
    assert_eq!(r.exit_code, 42);
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "something broke\n");
    assert!(r.started_at.is_some() && r.completed_at.is_some());

    let r = within(30, s.exec("no_such_command_xyz")).await.unwrap();
    assert_eq!(r.exit_code, 127);
    assert!(r.stderr.contains("no_such_command_xyz"), "{}", r.stderr);

    let r = within(30, s.exec("if then fi")).await.unwrap();
    assert_eq!(r.exit_code, 2, "a syntax error is bash's status 2");
    assert!(r.stderr.contains("syntax error"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let (client, _dir) = client().await;
    let s = client.session("timeout").unwrap();
    let r = within(
        30,
        s.exec(
            "(sleep 1000 & echo $! $RUNBOX_EXECUTION_ID > sleeper.pid); echo started; sleep 1000",
        )
        .timeout(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::TimedOut, "{r:?}");
    assert_eq!(r.exit_code, 124);
    assert_eq!(r.stdout, "started\n", "partial output is kept");
    // Its pid is its PID namespace's: no process of the execution has it.
    let announced = within(30, s.exec("cat sleeper.pid")).await.unwrap().stdout;
    let (inner, execution) = announced.trim().split_once(' ').unwrap();
    let left = runbox_tests::procs::host_pid(inner.parse().unwrap(), execution);
    assert!(
        left.is_none_or(process_gone),
        "background sleep {left:?} survived the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_truncated_inline_and_complete_in_the_log() {
    let (client, _dir) = client().await;
    let s = client.session("big").unwrap();
    let five_mib = 5 * 1024 * 1024;
    let r = within(
        60,
        s.exec(format!(
            "head -c {five_mib} /dev/zero | tr '\\0' a; echo tail >&2"
        )),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout.len(), 1024 * 1024);
    assert_eq!(r.stdout_bytes, five_mib);
    assert_eq!(r.stdout_log, format!("logs/{}/stdout", r.execution_id));
    let log = client.read_log(&r.stdout_log).await.unwrap();
    assert_eq!(log.len() as u64, five_mib);
    assert!(log.iter().all(|b| *b == b'a'));
    assert!(!r.stderr_truncated);
    assert_eq!(r.stderr, "tail\n");
    assert!(r.stderr_log.is_empty(), "a short stream needs no log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_is_flagged_and_preserved() {
    let (client, _dir) = client().await;
    let s = client.session("bin").unwrap();
    let r = within(30, s.exec(r"printf 'ok\xff\xfe\x00end'"))
        .await
        .unwrap();
    assert!(r.stdout_lossy);
    assert!(r.stdout.starts_with("ok\u{FFFD}"), "{:?}", r.stdout);
    let exact = client.read_log(&r.stdout_log).await.unwrap();
    assert_eq!(&exact[..], b"ok\xff\xfe\x00end");
    assert_eq!(r.stdout_bytes, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated() {
    let (client, dir) = client().await;
    let a = client.session("a").unwrap();
    let b = client.session("b").unwrap();
    within(30, a.exec("cd /tmp && export ONLY_A=1 && echo hi > note"))
        .await
        .unwrap();
    let r = within(30, b.exec("pwd; echo \"${ONLY_A:-unset}\"; ls"))
        .await
        .unwrap();
    assert!(dir.path().join("sessions/b/workspace").is_dir());
    assert_eq!(r.stdout, "/workspace\nunset\n");
    let r = within(30, a.exec("pwd; echo $ONLY_A")).await.unwrap();
    assert_eq!(r.stdout, "/tmp\n1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_session_run_in_submission_order() {
    let (client, _dir) = client().await;
    let s = client.session("ordered").unwrap();
    within(30, s.exec("export N=0")).await.unwrap();
    let futures: Vec<_> = (0..50)
        .map(|i| {
            s.exec(format!("echo {i} >> order.txt; export N=$((N+1)); echo $N"))
                .into_future()
        })
        .collect();
    let results = within(180, join_all(futures)).await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.exec_status(), ExecStatus::Succeeded);
        assert_eq!(
            r.stdout.trim(),
            (i + 1).to_string(),
            "command {i} saw a lost update"
        );
    }
    let r = within(30, s.exec("cat order.txt; echo N=$N"))
        .await
        .unwrap();
    let expected: String = (0..50).map(|i| format!("{i}\n")).collect::<String>() + "N=50\n";
    assert_eq!(r.stdout, expected);
    let info = client.session_info("ordered").await.unwrap();
    assert_eq!(info.state.unwrap().exec_count, 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_commands_across_twenty_sessions_complete() {
    let (client, _dir) = client().await;
    let mut futures = Vec::new();
    for round in 0..10 {
        for s in 0..20 {
            let session = client.session(&format!("s{s}")).unwrap();
            futures.push(
                session
                    .exec(format!("export C=$((${{C:-0}}+1)); echo {s}-{round}-$C"))
                    .into_future(),
            );
        }
    }
    let results = within(300, join_all(futures)).await;
    assert_eq!(results.len(), 200);
    for (k, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        let (round, s) = (k / 20, k % 20);
        assert_eq!(r.exec_status(), ExecStatus::Succeeded);
        assert_eq!(r.stdout, format!("{s}-{round}-{}\n", round + 1));
    }
    let sessions = client.list_sessions().await.unwrap();
    assert_eq!(sessions.len(), 20);
    assert!(
        sessions
            .iter()
            .all(|s| s.state.as_ref().unwrap().exec_count == 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_command_is_lost_not_a_hang() {
    let (client, dir) = client().await;
    let s = client.session("crash").unwrap();
    // The command cannot see its executor (its own PID namespace): it says
    // it runs, and the test kills the executor.
    let mut started = runbox_tests::pipes::Announcements::new(dir.path(), "started");
    let exec = s.exec(format!(
        "echo $$ $RUNBOX_EXECUTION_ID > {}; sleep 300",
        started.shell_path()
    ));
    let running = tokio::spawn(std::future::IntoFuture::into_future(exec));
    let announced = within(60, started.next()).await;
    let (inner, execution) = announced.split_once(' ').unwrap();
    let pid = runbox_tests::procs::host_pid(inner.parse().unwrap(), execution)
        .expect("the command's shell on the host");
    runbox_tests::procs::kill_executor(execution);
    let r = within(30, running).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Lost, "{r:?}");
    assert!(r.message.contains("SIGKILL"), "{}", r.message);
    // The command the dead executor left behind is killed, not orphaned.
    assert!(
        r.message.contains("left running were killed"),
        "{}",
        r.message
    );
    assert!(
        process_gone(pid),
        "the crashed command's shell {pid} survived"
    );
    // The session is still usable afterwards.
    let r = within(30, s.exec("echo alive")).await.unwrap();
    assert_eq!(r.stdout, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_before_any_write() {
    let (client, dir) = client().await;
    for bad in ["../x", "", &"a".repeat(65), "a b", "a/b"] {
        let err = client
            .session(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(matches!(err, Error::InvalidSession(_)), "{err:?}");
        assert!(
            runbox_dispatcher::error_chain(&err).contains("[A-Za-z0-9_-]"),
            "the error says what is allowed: {err}"
        );
    }
    let s = client.session("ok").unwrap();
    let big = "x".repeat(256 * 1024 + 1);
    assert!(matches!(
        s.exec(big).await,
        Err(Error::CommandTooLarge { .. })
    ));
    assert!(matches!(
        s.exec("true").timeout(Duration::ZERO).await,
        Err(Error::InvalidTimeout { .. })
    ));
    let over = client.config().limits.max_timeout + Duration::from_secs(1);
    assert!(matches!(
        s.exec("true").timeout(over).await,
        Err(Error::InvalidTimeout { .. })
    ));
    assert!(matches!(
        s.exec("true").env("NOT-VALID", "1").await,
        Err(Error::InvalidEnv { .. })
    ));
    assert!(matches!(
        s.exec("echo a\0b").await,
        Err(Error::CommandHasNul)
    ));
    for prefix in ["requests", "results", "sessions"] {
        assert!(
            !dir.path().join(prefix).join("ok").exists()
                && store::list_all(&**client.store(), &format!("{prefix}/"))
                    .await
                    .unwrap()
                    .is_empty(),
            "bad input wrote under {prefix}/"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_session_state_is_a_clear_rejection() {
    let (client, _dir) = client().await;
    let id = runbox_core::SessionId::new("broken").unwrap();
    client
        .store()
        .put(
            &layout::session_state(&id),
            bytes::Bytes::from_static(b"{not json"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let s = client.session("broken").unwrap();
    let r = within(30, s.exec("echo should not run")).await.unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Rejected);
    assert!(r.message.contains("session broken"), "{}", r.message);
    assert!(r.message.contains("state.json"), "{}", r.message);
    assert!(r.stdout.is_empty());
    let err = client.session_info("broken").await.unwrap_err();
    assert!(
        runbox_dispatcher::error_chain(&err).contains("broken"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_fail_at_once_when_the_notifier_stops() {
    let (client, _dir) = client().await;
    let s = client.session("stop").unwrap();
    let pending = tokio::spawn(s.exec("sleep 20").into_future());
    // Shutting down while the command runs: the waiting future resolves
    // with a typed error instead of hanging until the command ends.
    client.shutdown().await;
    let outcome = within(10, pending).await.unwrap();
    assert!(matches!(outcome, Err(Error::Wait { .. })), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_can_be_created_ensured_and_destroyed() {
    let (client, dir) = client().await;
    let info = client.create_session("made").await.unwrap();
    assert_eq!(info.state.unwrap().exec_count, 0);
    assert!(matches!(
        client.create_session("made").await,
        Err(Error::SessionExists(_))
    ));
    // ensure is idempotent and keeps what is there.
    let s = client.session("made").unwrap();
    within(30, s.exec("cd /tmp; export KEPT=1")).await.unwrap();
    let info = client.ensure_session("made").await.unwrap();
    assert_eq!(info.state.as_ref().unwrap().cwd, "/tmp");
    assert_eq!(
        client
            .ensure_session("fresh")
            .await
            .unwrap()
            .state
            .unwrap()
            .exec_count,
        0
    );
    // A created session starts in its workspace like any other.
    let r = within(30, client.session("fresh").unwrap().exec("pwd"))
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), "/workspace");
    assert!(dir.path().join("sessions/fresh/workspace").is_dir());
    let n = client.delete_session("made").await.unwrap();
    assert!(n >= 1);
    assert!(
        store::list_all(&**client.store(), "sessions/made/")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        client.session_info("made").await,
        Err(Error::NoSuchSession(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_variables_cannot_be_overridden_or_persisted() {
    let (client, _dir) = client().await;
    let s = client.session("reserved").unwrap();
    // A command that tries to take over the variable the leftover sweep
    // finds its processes by, and to keep a RUNBOX_ name of its own.
    let r = within(
        30,
        s.exec(
            "export RUNBOX_EXECUTION_ID=fake; export RUNBOX_MINE=1; echo \"$RUNBOX_EXECUTION_ID\"",
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, format!("{}\n", r.execution_id), "{r:?}");
    assert!(r.stderr.contains("readonly"), "{r:?}");
    let r = within(
        30,
        s.exec("echo \"$RUNBOX_EXECUTION_ID:${RUNBOX_MINE:-unset}\""),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, format!("{}:unset\n", r.execution_id), "{r:?}");
    let info = client.session_info("reserved").await.unwrap();
    let state = info.state.unwrap();
    assert!(
        state.env.keys().all(|k| !k.starts_with("RUNBOX_")),
        "{:?}",
        state.env
    );
    // A request cannot set them either: refused before anything is written.
    let refused = s.exec("true").env("RUNBOX_EXECUTION_ID", "x").await;
    assert!(
        matches!(refused, Err(Error::InvalidEnv { .. })),
        "{refused:?}"
    );
}
