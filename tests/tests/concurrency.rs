//! Many `runbox` processes at once on the embedded backend: 1,000 `exec`
//! calls over 100 sessions all succeed, and each session's commands run one
//! at a time. Before the store's filesystem watch was shared, every process
//! held an inotify instance of its own, and past the kernel's default of 128
//! per user (`fs.inotify.max_user_instances`) calls failed with "Too many
//! open files".

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::within;

/// Processes started at once; all of them: the machine holds them.
const PROCESSES: usize = 1_000;
const SESSIONS: usize = 100;
const PER_SESSION: usize = PROCESSES / SESSIONS;

/// The command of call `index`: appends `index start` then, in a second
/// write, ` end` and a newline, each time in nanoseconds. Two commands of
/// one session overlapping would interleave the writes, or record a start
/// before the previous end.
fn script(index: usize) -> String {
    format!(
        "printf '%s %s' {index} \"$(date +%s%N)\" >> order; printf ' %s\\n' \"$(date +%s%N)\" >> order"
    )
}

/// One session's `order` file, checked: exactly the indices `expected`, one
/// whole line each, each command starting after the previous one ended.
fn check_order(session: &str, content: &str, expected: &BTreeSet<usize>) {
    let mut seen = BTreeSet::new();
    let mut previous_end: Option<u128> = None;
    for line in content.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [index, start, end] = fields[..] else {
            panic!("{session}: malformed (interleaved?) line {line:?} in:\n{content}");
        };
        let parse = |v: &str| -> u128 {
            v.parse()
                .unwrap_or_else(|_| panic!("{session}: bad number {v:?} in {line:?}"))
        };
        let (index, start, end) = (parse(index) as usize, parse(start), parse(end));
        assert!(start <= end, "{session}: {line:?} ends before it starts");
        if let Some(previous) = previous_end {
            assert!(
                start >= previous,
                "{session}: command {index} started before the previous one ended:\n{content}"
            );
        }
        previous_end = Some(end);
        assert!(seen.insert(index), "{session}: {index} twice:\n{content}");
    }
    assert_eq!(
        &seen, expected,
        "{session}: lost or foreign commands:\n{content}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_exec_processes_over_a_hundred_sessions_all_succeed_in_order() {
    let cli = Cli::new();
    let started = Instant::now();
    // Interleaved: every session gets its first command before any gets a
    // second, so all 100 sessions are busy at once.
    let mut children = Vec::with_capacity(PROCESSES);
    for index in 0..PROCESSES {
        let session = format!("s{}", index % SESSIONS);
        let child = cli
            .command(&["exec", "-s", &session, "--", &script(index)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn runbox {index}: {e}"));
        children.push(child.wait_with_output());
    }
    let outputs = within(900, futures::future::join_all(children)).await;
    let wall = started.elapsed();
    let failures: Vec<String> = outputs
        .iter()
        .enumerate()
        .filter_map(|(index, out)| match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "{index}: {:?}: {}",
                out.status.code(),
                text(&out.stderr).trim_end()
            )),
            Err(e) => Some(format!("{index}: {e}")),
        })
        .collect();
    eprintln!(
        "{PROCESSES} runbox exec processes over {SESSIONS} sessions: {wall:.1?}, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {PROCESSES} failed; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let reads = futures::stream::iter(0..SESSIONS)
        .map(|s| {
            let cli = &cli;
            async move {
                let session = format!("s{s}");
                let out = cli.run(&["files", "read", "-s", &session, "order"]).await;
                (session, s, out)
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for (session, s, out) in reads {
        assert!(out.status.success(), "{session}: {}", text(&out.stderr));
        let expected = (0..PER_SESSION).map(|k| k * SESSIONS + s).collect();
        check_order(&session, &text(&out.stdout), &expected);
    }
}
