//! The session lease on the gcp backend (fake-gcs-server + Google's Pub/Sub
//! emulator, local launcher): one session's commands run one at a time
//! across processes, a dead holder blocks the session only until its lease
//! expires, and the lease's take/renew/release preconditions hold against
//! the emulator store.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use runbox_core::store::{Precondition, PutOptions};
use runbox_core::{Config, InstanceId, SessionId, Store, layout};
use runbox_dispatcher::session_lease::{LeaseSettings, lease_body};
use runbox_dispatcher::{Client, Error, ExecStatus, LeaseError, SessionLeases};
use runbox_notifier::{Notifier, PubSubAnnouncer, Waiters};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::pipes::{Announcements, Gate};

async fn emulators() -> Emulators {
    within(120, Emulators::start()).await.expect("emulators")
}

fn env(emu: &Emulators, home: &Path, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = emu.env();
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

fn config(emu: &Emulators, home: &Path, extra: &[(&str, &str)]) -> Config {
    Config::from_lookup(&env(emu, home, extra)).expect("config")
}

/// The reproduction: 50 `runbox exec` processes at once on one
/// session, each exporting a variable and appending two lines. Without a
/// cross-process order most state saves conflict and most lines are lost
/// (6 of 50 exports and 15 of 100 lines survived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cli_processes_on_one_session_keep_every_export_and_line() {
    const N: usize = 50;
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let vars = env(&emu, home.path(), &[]);
    let started = Instant::now();
    let runs = (0..N).map(|i| {
        let mut cmd = tokio::process::Command::new(binary("runbox"));
        cmd.args([
            "exec",
            "-s",
            "shared",
            "--",
            &format!("export V{i}={i}; echo {i} >> lines; echo {i} >> lines"),
        ])
        .envs(&vars)
        .kill_on_drop(true);
        async move { cmd.output().await.expect("run runbox") }
    });
    let outputs = within(600, futures::future::join_all(runs)).await;
    let elapsed = started.elapsed();
    let failed: Vec<String> = outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.status.success())
        .map(|(i, o)| {
            format!(
                "#{i}: {:?} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let client = within(60, Client::from_config(config(&emu, home.path(), &[])))
        .await
        .unwrap();
    let s = client.session("shared").unwrap();
    let r = within(
        120,
        s.exec("env | grep -c '^V[0-9]*='; wc -l < lines; sort -n lines | uniq -c | awk '$1 != 2' | wc -l"),
    )
    .await
    .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    let counts: Vec<&str> = r.stdout.split_whitespace().collect();
    eprintln!("{N} processes in {elapsed:?}: exports, lines, numbers not seen twice = {counts:?}");
    assert_eq!(counts, ["50", "100", "0"], "{r:?}");
    within(60, client.shutdown()).await;
}

/// A holder that died leaves its lease behind: the next command waits for
/// its expiry (and not less), takes it over, and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_after_its_expiry_and_not_before() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let client = within(
        60,
        Client::from_config(config(
            &emu,
            home.path(),
            &[("RUNBOX_SESSION_LEASE_TTL_MS", "2000")],
        )),
    )
    .await
    .unwrap();
    let s = client.session("orphan").unwrap();
    within(60, s.exec("export BEFORE=1")).await.unwrap();

    let store = emu.store();
    let session = SessionId::new("orphan").unwrap();
    let name = layout::session_lease(&session);
    let state_before = store.head(&layout::session_state(&session)).await.unwrap();
    let lease = store.head(&name).await.unwrap();
    // The dead holder's lease: valid for 4 s more, and nobody will renew,
    // release or announce it.
    let expires = SystemTime::now() + Duration::from_secs(4);
    store
        .put(
            &name,
            lease_body("dead-holder", expires),
            PutOptions::when(Precondition::GenerationMatch(lease.generation)),
        )
        .await
        .unwrap();

    let r = within(60, s.exec("echo $BEFORE; export AFTER=1"))
        .await
        .unwrap();
    let done = SystemTime::now();
    assert_eq!(r.stdout, "1\n", "{r:?}");
    assert!(
        done >= expires,
        "ran {:?} before the dead holder's lease expired",
        expires.duration_since(done).unwrap_or_default()
    );
    let late = done.duration_since(expires).unwrap();
    assert!(
        late < Duration::from_secs(10),
        "took over {late:?} after the expiry"
    );

    // The takeover fenced the state (a new generation) before the command
    // saved its own, so a save of the dead holder's command would conflict.
    let state_after = store.head(&layout::session_state(&session)).await.unwrap();
    assert!(
        state_after.generation > state_before.generation,
        "{state_before:?} {state_after:?}"
    );
    let r = within(60, s.exec("echo $BEFORE $AFTER")).await.unwrap();
    assert_eq!(r.stdout, "1 1\n");
    within(60, client.shutdown()).await;
}

/// A holder whose lease was taken over while its command ran (its renewals
/// stalled past the expiry: here the lease is overwritten as expired) does
/// not save over the newer holder's work, even when the newer holder's
/// command is still running, and its caller is told the lease was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_saves_nothing_over_the_new_holder() {
    let emu = emulators().await;
    let home = tempfile::tempdir().unwrap();
    let short = [("RUNBOX_SESSION_LEASE_TTL_MS", "1000")];
    let a = within(60, Client::from_config(config(&emu, home.path(), &short)))
        .await
        .unwrap();
    let b = within(60, Client::from_config(config(&emu, home.path(), &short)))
        .await
        .unwrap();
    within(60, a.session("taken").unwrap().exec("export FROM=start"))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut started = Announcements::new(scratch.path(), "started");
    let mut gate_a = Gate::new(scratch.path(), "gate-a");
    let mut gate_b = Gate::new(scratch.path(), "gate-b");
    let announce = started.shell_path();
    let command = |who: &str, gate: &Gate| {
        format!(
            "echo {who} > {announce}; read -r _ < {}; export FROM={who}",
            gate.shell_path()
        )
    };
    let ra = tokio::spawn(
        a.session("taken")
            .unwrap()
            .exec(command("a", &gate_a))
            .into_future(),
    );
    assert_eq!(within(60, started.next()).await, "a");

    // A's lease as if its renewals had stalled past the expiry.
    let store = emu.store();
    let name = layout::session_lease(&SessionId::new("taken").unwrap());
    let past = SystemTime::now() - Duration::from_secs(1);
    store
        .put(&name, lease_body("stalled", past), PutOptions::default())
        .await
        .unwrap();
    let rb = tokio::spawn(
        b.session("taken")
            .unwrap()
            .exec(command("b", &gate_b))
            .into_future(),
    );
    assert_eq!(within(60, started.next()).await, "b");

    // A finishes first, while B (the new holder) still runs.
    within(10, gate_a.release(1)).await;
    let ra = within(90, ra).await.unwrap();
    match &ra {
        Err(Error::Lease(LeaseError::Lost { execution, .. })) => assert!(!execution.is_empty()),
        other => panic!("A's result stood although its lease was lost: {other:?}"),
    }
    within(10, gate_b.release(1)).await;
    let rb = within(90, rb).await.unwrap().unwrap();
    assert_eq!(rb.exec_status(), ExecStatus::Succeeded, "{rb:?}");
    assert!(!rb.state_conflict, "{rb:?}");
    let r = within(60, b.session("taken").unwrap().exec("echo $FROM"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "b\n");
    within(60, a.shutdown()).await;
    within(60, b.shutdown()).await;
}

/// One lease client of its own: a store, a notifier routing the emulator's
/// events into its waiters, an announcer on the topic.
async fn leases(emu: &Emulators, holder: &str, ttl: Duration) -> (SessionLeases, Notifier) {
    let instance = InstanceId::random();
    let store: Arc<dyn Store> = Arc::new(emu.store());
    let waiters = Waiters::new();
    let source = within(60, emu.event_source(&instance)).await.unwrap();
    let notifier = Notifier::spawn(Box::new(source), waiters.clone(), store.clone());
    let announcer = PubSubAnnouncer::new(emu.source_config(&instance));
    let leases = SessionLeases::new(
        store,
        waiters,
        Arc::new(announcer),
        LeaseSettings {
            holder: holder.to_owned(),
            bucket: emu.bucket.clone(),
            ttl,
        },
    );
    (leases, notifier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_take_renew_release_hold_their_preconditions() {
    let emu = emulators().await;
    let ttl = Duration::from_secs(3);
    let (a, notifier_a) = leases(&emu, "a", ttl).await;
    let (b, notifier_b) = leases(&emu, "b", ttl).await;
    let store = emu.store();
    let session = SessionId::new("leased").unwrap();
    let name = layout::session_lease(&session);

    // Take: created where there was none.
    let held = within(30, a.acquire(&session)).await.unwrap();
    let first = store.get(&name).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(body["holder"], "a");
    assert_eq!(body["released"], false);

    // Renew: held well past its time to live, it stays A's, at ever newer
    // generations; B, asking meanwhile, does not get it.
    let mut b_wait = Box::pin(b.acquire(&session));
    let early = tokio::time::timeout(ttl * 2, &mut b_wait).await;
    assert!(early.is_err(), "B took a lease A holds and renews");
    // What A last wrote is the object's generation, or an older one when a
    // renewal lands between the two reads.
    let written = held.generation().await;
    let renewed = store.head(&name).await.unwrap();
    assert!(written > first.meta.generation, "never renewed");
    assert!(renewed.generation >= written);
    assert!(!held.is_lost());

    // Release: written as released and announced; B, waiting all along,
    // wakes on the announcement, well before the expiry it read (at least
    // two thirds of the time to live ahead) would wake it.
    let released_at = Instant::now();
    within(30, held.release()).await.unwrap();
    let b_lease = within(30, &mut b_wait).await;
    let woke_after = released_at.elapsed();
    let b_lease = b_lease.unwrap();
    assert!(
        woke_after < ttl / 2,
        "B woke {woke_after:?} after the release"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&store.get(&name).await.unwrap().data).unwrap();
    assert_eq!(body["holder"], "b");

    // Taken over behind B's back (a stale generation written by someone
    // else): B's next renewal fails its precondition, the lease is lost,
    // and releasing says so instead of overwriting the new holder.
    store
        .put(
            &name,
            lease_body("intruder", SystemTime::now() + Duration::from_secs(60)),
            PutOptions::default(),
        )
        .await
        .unwrap();
    within(30, b_lease.lost()).await;
    let err = within(30, b_lease.release()).await.unwrap_err();
    assert!(matches!(err, LeaseError::Lost { .. }), "{err:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&store.get(&name).await.unwrap().data).unwrap();
    assert_eq!(body["holder"], "intruder");

    notifier_a.shutdown().await;
    notifier_b.shutdown().await;
}
