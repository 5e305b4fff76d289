//! `Client::gc`: finished foreground executions' objects go; sessions,
//! running executions and background executions stay. On the embedded
//! backend, and once on the emulators (the same code through the GCS store).

use std::collections::BTreeMap;
use std::time::Duration;

use runbox_core::store::list_all;
use runbox_core::{Config, Store, layout};
use runbox_dispatcher::{BackgroundState, Client, ExecStatus, GcReport, ReadOptions};
use runbox_tests::embedded::{binary, client, within};
use runbox_tests::harness::Emulators;

/// Timeout of the long-running background process: if a test fails before
/// killing it, it still ends on its own soon after.
const LEFTOVER_LIMIT: Duration = Duration::from_secs(120);

/// Longer than any test runs: nothing here is that old.
const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Every object name under `prefix`.
async fn names(store: &dyn Store, prefix: &str) -> Vec<String> {
    within(30, list_all(store, prefix))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

/// Every object name of the store, by top-level prefix.
async fn everything(store: &dyn Store) -> Vec<String> {
    let mut all = Vec::new();
    for prefix in [
        layout::REQUESTS_PREFIX,
        layout::RESULTS_PREFIX,
        layout::LOGS_PREFIX,
        layout::SESSIONS_PREFIX,
    ] {
        all.extend(names(store, prefix).await);
    }
    all
}

/// Whether `name` belongs to one of `ids`' execution objects.
fn belongs_to(name: &str, ids: &[&str]) -> bool {
    ids.iter().any(|id| name.contains(&format!("/{id}")))
}

/// Runs foreground commands and two background processes (one running, one
/// finished), collects twice and checks what is left.
async fn collects_only_finished_foreground(client: &Client) {
    let store = client.store().clone();
    let s = client.session("keep").unwrap();
    let mut foreground = Vec::new();
    for script in [
        "echo kept > note.txt && cd /tmp && export KEPT=yes",
        "echo out; echo err >&2",
        "exit 3",
    ] {
        let r = within(60, s.exec(script)).await.unwrap();
        assert_ne!(r.exec_status(), ExecStatus::Lost, "{r:?}");
        foreground.push(r.execution_id);
    }
    let running = within(
        30,
        s.spawn("echo up; exec sleep 300").timeout(LEFTOVER_LIMIT),
    )
    .await
    .unwrap();
    let finished = within(30, s.spawn("echo done")).await.unwrap();
    let r = within(
        60,
        client.wait_background(&finished, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");

    let before = everything(&*store).await;
    let fg: Vec<&str> = foreground.iter().map(String::as_str).collect();
    for id in &fg {
        assert!(
            before.contains(&format!("results/{id}.json")),
            "{id}: {before:?}"
        );
    }

    // Nothing is a year old.
    let report = within(60, client.gc(A_YEAR)).await.unwrap();
    assert_eq!(report, GcReport::default());
    assert_eq!(everything(&*store).await, before);

    // A dry run counts without deleting.
    let plan = within(60, client.gc_plan(Duration::ZERO)).await.unwrap();
    assert_eq!(plan.report.executions, fg.len(), "{plan:?}");
    assert_eq!(plan.report.kept_background, 1, "{plan:?}");
    assert_eq!(plan.candidates.len(), fg.len());
    assert_eq!(everything(&*store).await, before);

    let report = within(60, client.gc(Duration::ZERO)).await.unwrap();
    let deleted: Vec<&String> = before
        .iter()
        .filter(|n| !n.starts_with(layout::SESSIONS_PREFIX) && belongs_to(n, &fg))
        .collect();
    assert_eq!(
        report,
        GcReport {
            executions: fg.len(),
            objects: deleted.len(),
            kept_background: 1,
        }
    );
    assert_eq!(plan.report, report);
    let after = everything(&*store).await;
    let expected: Vec<String> = before
        .iter()
        .filter(|n| !deleted.contains(n))
        .cloned()
        .collect();
    assert_eq!(after, expected);
    // What stays: the session's objects, and both background processes'.
    let bg = [
        running.execution_id.as_str(),
        finished.execution_id.as_str(),
    ];
    for name in &after {
        assert!(
            name.starts_with(layout::SESSIONS_PREFIX) || belongs_to(name, &bg),
            "{name} should have been collected"
        );
    }
    assert!(after.contains(&format!("results/{}.json", bg[1])));
    assert!(after.contains(&format!("requests/{}.json", bg[0])));
    assert!(
        !after
            .iter()
            .any(|n| n == &format!("results/{}.json", bg[0]))
    );

    // Collecting again finds nothing more.
    let again = within(60, client.gc(Duration::ZERO)).await.unwrap();
    assert_eq!(
        again,
        GcReport {
            kept_background: 1,
            ..GcReport::default()
        }
    );
    assert_eq!(everything(&*store).await, after);

    // The session works as before: state, files and background listing.
    let r = within(60, s.exec("echo $KEPT $(pwd)")).await.unwrap();
    assert_eq!(r.stdout, "yes /tmp\n", "{r:?}");
    let file = within(30, s.read_file("note.txt", ReadOptions::default()))
        .await
        .unwrap();
    assert_eq!(file.content, "kept\n");
    let listed = within(30, s.list_background()).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|e| e.handle == running && e.state == BackgroundState::Running)
    );
    assert!(listed.iter().any(|e| e.handle == finished
        && matches!(
            e.state,
            BackgroundState::Exited {
                status: ExecStatus::Succeeded,
                ..
            }
        )));

    within(60, client.kill_background(&running)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_finished_foreground_executions_only() {
    let (client, _dir) = client().await;
    collects_only_finished_foreground(&client).await;
    within(30, client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_an_empty_store_deletes_nothing() {
    let (client, _dir) = client().await;
    let report = within(30, client.gc(Duration::ZERO)).await.unwrap();
    assert_eq!(report, GcReport::default());
    within(30, client.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_works_on_the_emulators() {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let home = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = emu.env();
    env.insert("RUNBOX_HOME".into(), home.path().display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    let config = Config::from_lookup(&env).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    collects_only_finished_foreground(&client).await;
    within(30, client.shutdown()).await;
}
