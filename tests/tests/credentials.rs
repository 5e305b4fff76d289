//! Per-execution credentials on the gcp backend, played against an
//! attacker: fake-gcs-server behind `runbox-sts-emulator`, which exchanges
//! tokens as Google's STS does and enforces each token's Credential Access
//! Boundary as Cloud Storage does, recording every request.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use runbox_core::credentials::{CredentialError, Minter, StoreToken, StsClient};
use runbox_core::store::{GcsStore, PutOptions, Store, StoreError};
use runbox_core::{Config, ExecutionId, InstanceId, SessionId, layout};
use runbox_dispatcher::{Client, ExecStatus};
use runbox_tests::cli::{Cli, text};
use runbox_tests::embedded::{binary, within};
use runbox_tests::harness::Emulators;
use runbox_tests::sts::StsStandIn;
use serde_json::Value;

async fn stack(token_ttl_secs: u64) -> (Emulators, StsStandIn) {
    let emu = within(120, Emulators::start()).await.expect("emulators");
    let sts = StsStandIn::start(&emu, token_ttl_secs).expect("stand-in");
    (emu, sts)
}

/// The gcp configuration with the store behind the stand-in.
fn env(emu: &Emulators, sts: &StsStandIn, home: &std::path::Path) -> BTreeMap<String, String> {
    let mut env = emu.env();
    env.extend(sts.env());
    env.insert("RUNBOX_HOME".into(), home.display().to_string());
    env.insert(
        "RUNBOX_EXECUTOR".into(),
        binary("runbox-executor").display().to_string(),
    );
    env.insert("RUNBOX_KILL_GRACE_MS".into(), "300".into());
    env
}

/// The HTTP status of a storage client error.
fn http_status(e: &(dyn std::error::Error + Send + Sync + 'static)) -> u16 {
    match e.downcast_ref::<gcloud_storage::http::Error>() {
        Some(gcloud_storage::http::Error::Response(r)) => r.code,
        _ => panic!("not an HTTP answer: {e:?}"),
    }
}

/// A session name of its own: gcp workspaces live under one directory of
/// the machine (`/tmp/runbox`), shared by every test.
fn unique(name: &str) -> String {
    format!("{name}-{}", InstanceId::random())
}

fn str_of<'a>(record: &'a Value, key: &str) -> &'a str {
    record[key].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_works_with_its_own_downscoped_token_and_no_other() {
    let (emu, sts) = stack(3600).await;
    let home = tempfile::tempdir().unwrap();
    let config = Config::from_lookup(&env(&emu, &sts, home.path())).expect("config");
    let client = within(60, Client::from_config(config))
        .await
        .expect("client");
    let alpha = unique("alpha");
    let s = client.session(&alpha).unwrap();
    let r = within(
        60,
        s.exec("mkdir -p d && echo one > d/f.txt && export V=1 && cd d"),
    )
    .await
    .unwrap();
    assert_eq!(
        r.exec_status(),
        ExecStatus::Succeeded,
        "{r:?}\n{}",
        emu.logs()
    );
    let r = within(60, s.exec("cat f.txt; echo $V; basename $(pwd)"))
        .await
        .unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "one\n1\nd\n");
    client.shutdown().await;

    let records = sts.records().await.unwrap();
    // Every request carried a credential the stand-in issued or knows.
    for rec in &records {
        assert!(
            matches!(str_of(rec, "token"), "source" | "downscoped"),
            "a request without a valid token: {rec}"
        );
    }
    let own: Vec<&Value> = records
        .iter()
        .filter(|r| str_of(r, "token") == "downscoped")
        .collect();
    assert!(!own.is_empty(), "no downscoped request: {records:?}");
    for rec in &own {
        // Each token's boundary names this session and nothing wider.
        let boundary = rec["boundary"].to_string();
        assert!(
            boundary.contains(&format!("objects/sessions/{alpha}/")),
            "{rec}"
        );
        assert!(!boundary.contains("objects/sessions/'"), "{rec}");
        // Nothing the executor did was refused (404: state not written yet).
        let status = rec["status"].as_u64().unwrap();
        assert!(status < 400 || status == 404, "refused: {rec}");
    }
    // What only an executor writes was written with a downscoped token,
    // and that token's boundary names the very result it wrote.
    {
        let result = layout::result(&ExecutionId::new(&r.execution_id).unwrap());
        let writes: Vec<&&Value> = own
            .iter()
            .filter(|rec| str_of(rec, "object") == result && str_of(rec, "method") == "POST")
            .collect();
        assert_eq!(writes.len(), 1, "{records:?}");
        assert!(writes[0]["boundary"].to_string().contains(&result));
    }
    for rec in &records {
        let object = str_of(rec, "object");
        let write = matches!(str_of(rec, "method"), "POST" | "PUT" | "DELETE");
        if write
            && (object.starts_with("results/")
                || object.starts_with(&format!("sessions/{alpha}/state")))
        {
            assert_eq!(str_of(rec, "token"), "downscoped", "{rec}");
        }
    }
    // And the state it saved is where the dispatcher (source token) reads it.
    let store = GcsStore::with_token(
        &emu.bucket,
        Some(&sts.url),
        &StoreToken::new(sts.source_token.clone(), None),
    );
    let sid = SessionId::new(&alpha).unwrap();
    within(10, store.head(&layout::session_state(&sid)))
        .await
        .expect("state saved");
}

/// A command of session `beta` that looks for every credential it can find
/// (environment, other processes' environ and cmdline, the executor's
/// standard input) and tries each, and none, against the store.
const ATTACKER: &str = r#"
import glob, json, os, re, sys, urllib.request, urllib.error
base, bucket, victim = sys.argv[1], sys.argv[2], sys.argv[3]
found = set()
pattern = re.compile(rb"(?:RUNBOX_STORE_TOKEN=|RUNBOX_STORAGE_EMULATOR_TOKEN=|RUNBOX_STS_SOURCE_TOKEN=|Bearer )([A-Za-z0-9._-]{8,})|(sts-[0-9a-f]{32}|source-[0-9a-f]{16})")
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/fd/0"):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except Exception:
        continue
    for m in pattern.finditer(data):
        found.add((m.group(1) or m.group(2)).decode())
for v in os.environ.values():
    for m in pattern.finditer(v.encode()):
        found.add((m.group(1) or m.group(2)).decode())
print("found", len(found))
q = urllib.parse.quote
ops = [
    ("overwrite-state", "POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={q(f'sessions/{victim}/state.json', safe='')}", b'{"env":{"MARK":"evil"}}'),
    ("read-workspace", "GET", f"/storage/v1/b/{bucket}/o/{q(f'sessions/{victim}/workspace/secret.txt', safe='')}?alt=media", None),
    ("list-session", "GET", f"/storage/v1/b/{bucket}/o?prefix={q(f'sessions/{victim}/', safe='')}", None),
    ("delete-state", "DELETE", f"/storage/v1/b/{bucket}/o/{q(f'sessions/{victim}/state.json', safe='')}", None),
    ("write-other-result", "POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={q('results/zzzzzz-0001.json', safe='')}", b'{}'),
]
for label, token in [("none", None)] + [(f"found{i}", t) for i, t in enumerate(sorted(found))]:
    for name, method, path, body in ops:
        req = urllib.request.Request(base + path, data=body, method=method)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            status = urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            status = e.code
        print(name, label, status)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_cannot_reach_another_session_with_any_credential_it_finds() {
    let (emu, sts) = stack(3600).await;
    let cli = Cli::new();
    let vars = env(&emu, &sts, cli.home.path());
    let (alpha, beta) = (unique("alpha"), unique("beta"));
    let run = |session: &str, script: String| {
        let mut cmd = cli.command(&["exec", "-s", session, "--", &script]);
        cmd.envs(&vars);
        // As root (CI), commands run as nobody, as on Cloud Run.
        if rustix::process::geteuid().is_root() {
            cmd.env("RUNBOX_RUN_AS_USER", "nobody");
        }
        async move { within(120, cmd.output()).await.expect("runbox exec") }
    };
    let out = run(
        &alpha,
        "echo secret-a > secret.txt && export MARK=a1".into(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The script travels in the command (a heredoc): commands have a /tmp
    // of their own.
    let out = run(
        &beta,
        format!(
            "python3 - {} {} {alpha} <<'PY'\n{ATTACKER}\nPY",
            sts.url, emu.bucket
        ),
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().next(),
        Some("found 0"),
        "a credential is readable by the command:\n{stdout}"
    );
    let attempts: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(attempts.len(), 5, "{stdout}");
    for line in &attempts {
        let status = line.rsplit(' ').next().unwrap();
        assert!(matches!(status, "401" | "403"), "allowed: {line}\n{stdout}");
    }

    // With the token of a beta execution itself (the best a command could
    // ever get hold of), the same attempts are refused too.
    let minter =
        Minter::with_subject_token(&sts.url, sts.source_token.clone(), emu.bucket.clone()).unwrap();
    let beta_exec = InstanceId::random().next_execution_id();
    let token = minter
        .mint(
            &SessionId::new(&beta).unwrap(),
            &beta_exec,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let beta_store = GcsStore::with_token(&emu.bucket, Some(&sts.url), &token);
    let alpha_id = SessionId::new(&alpha).unwrap();
    let forbidden = |r: Result<(), StoreError>| match r {
        Err(StoreError::Backend { source, .. }) => http_status(&*source) == 403,
        other => panic!("not refused: {other:?}"),
    };
    assert!(forbidden(
        beta_store
            .put(
                &layout::session_state(&alpha_id),
                Bytes::from_static(b"{}"),
                PutOptions::default()
            )
            .await
            .map(drop)
    ));
    assert!(forbidden(
        beta_store
            .get(&format!(
                "{}secret.txt",
                layout::workspace_prefix(&alpha_id)
            ))
            .await
            .map(drop)
    ));

    // Session alpha is untouched: its next command sees its own state.
    let out = run(&alpha, "cat secret.txt; echo $MARK".into()).await;
    assert_eq!(text(&out.stdout), "secret-a\na1\n", "{}", text(&out.stderr));

    // Beta's executor worked with beta's boundary only.
    let records = sts.records().await.unwrap();
    for rec in records
        .iter()
        .filter(|r| str_of(r, "token") == "downscoped")
    {
        let boundary = rec["boundary"].to_string();
        let object = str_of(rec, "object");
        for session in [&alpha, &beta] {
            let prefix = format!("sessions/{session}/");
            if object.starts_with(&prefix) && rec["status"].as_u64() < Some(400) {
                assert!(boundary.contains(&format!("objects/{prefix}")), "{rec}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_allows_its_own_objects_only_and_expires() {
    let (emu, sts) = stack(3600).await;
    let minter =
        Minter::with_subject_token(&sts.url, sts.source_token.clone(), emu.bucket.clone()).unwrap();
    let session = SessionId::new("beta").unwrap();
    let other = SessionId::new("alpha").unwrap();
    let own = InstanceId::random().next_execution_id();
    let foreign = InstanceId::random().next_execution_id();
    let token = minter
        .mint(&session, &own, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(token.expires_at().is_some());
    let store = GcsStore::with_token(&emu.bucket, Some(&sts.url), &token);
    let data = || Bytes::from_static(b"x");
    let status = |r: Result<(), StoreError>| -> u16 {
        match r {
            Ok(()) => 200,
            Err(e) if e.is_not_found() => 404,
            Err(StoreError::Backend { source, .. }) => http_status(&*source),
            Err(e) => panic!("{e}"),
        }
    };
    // Its own session: everything.
    let mine = format!("{}a.txt", layout::workspace_prefix(&session));
    assert_eq!(
        status(
            store
                .put(&mine, data(), PutOptions::default())
                .await
                .map(drop)
        ),
        200
    );
    assert_eq!(
        status(
            store
                .put(&mine, data(), PutOptions::default())
                .await
                .map(drop)
        ),
        200
    );
    assert_eq!(status(store.get(&mine).await.map(drop)), 200);
    let listed = runbox_core::store::list_all(&store, &layout::session_prefix(&session)).await;
    assert_eq!(listed.unwrap().len(), 1);
    assert_eq!(
        status(store.delete(&mine, runbox_core::Precondition::None).await),
        200
    );
    // Its own result: created once, never overwritten.
    let result = layout::result(&own);
    assert_eq!(
        status(
            store
                .put(&result, data(), PutOptions::create())
                .await
                .map(drop)
        ),
        200
    );
    assert_eq!(
        status(
            store
                .put(&result, data(), PutOptions::default())
                .await
                .map(drop)
        ),
        403
    );
    assert_eq!(status(store.get(&result).await.map(drop)), 403);
    assert_eq!(
        status(
            store
                .put(
                    &layout::log(&own, layout::Stream::Stdout),
                    data(),
                    PutOptions::create()
                )
                .await
                .map(drop)
        ),
        200
    );
    // Its own request: read only.
    assert_eq!(
        status(store.get(&layout::request(&own)).await.map(drop)),
        404
    );
    assert_eq!(
        status(
            store
                .put(&layout::request(&own), data(), PutOptions::default())
                .await
                .map(drop)
        ),
        403
    );
    // Anything else: refused.
    for name in [
        layout::session_state(&other),
        format!("{}a.txt", layout::workspace_prefix(&other)),
        layout::result(&foreign),
        layout::request(&foreign),
        format!("{}x", layout::logs_prefix(&foreign)),
        "sessions/beta".to_owned(),
    ] {
        assert_eq!(
            status(
                store
                    .put(&name, data(), PutOptions::default())
                    .await
                    .map(drop)
            ),
            403,
            "{name}"
        );
        assert_eq!(status(store.get(&name).await.map(drop)), 403, "{name}");
    }
    for prefix in ["sessions/", "sessions/alpha/", "", "results/"] {
        let listed = runbox_core::store::list_all(&store, prefix).await;
        assert!(listed.is_err(), "listed {prefix:?}");
    }
    // No token, or a made-up one: 401.
    let anonymous = GcsStore::emulator(&emu.bucket, &sts.url);
    assert_eq!(status(anonymous.get(&mine).await.map(drop)), 401);
    let made_up =
        GcsStore::with_token(&emu.bucket, Some(&sts.url), &StoreToken::new("sts-0", None));
    assert_eq!(status(made_up.get(&mine).await.map(drop)), 401);

    // A token past its lifetime: 401.
    let short = StsStandIn::start(&emu, 0).unwrap();
    let minter =
        Minter::with_subject_token(&short.url, short.source_token.clone(), emu.bucket.clone())
            .unwrap();
    let token = minter
        .mint(&session, &own, Duration::from_secs(1))
        .await
        .unwrap();
    let expired = GcsStore::with_token(&emu.bucket, Some(&short.url), &token);
    assert_eq!(status(expired.get(&mine).await.map(drop)), 401);
    let records = short.records().await.unwrap();
    assert_eq!(str_of(&records[0], "token"), "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_refuses_bad_input_with_clear_errors() {
    let (emu, sts) = stack(3600).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/token", sts.url);
    let boundary = runbox_core::credentials::AccessBoundary::for_execution(
        &emu.bucket,
        &SessionId::new("s").unwrap(),
        &InstanceId::random().next_execution_id(),
    )
    .to_options();
    let good: Vec<(&str, String)> = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token".into(),
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token".into(),
        ),
        ("subject_token", sts.source_token.clone()),
        ("options", boundary),
    ];
    let post = |form: Vec<(&'static str, String)>| {
        let req = http.post(&url).form(&form);
        async move {
            let resp = within(10, req.send()).await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body)
        }
    };
    let (status, body) = post(good.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 0);

    let with = |key: &'static str, value: &str| {
        let mut form = good.clone();
        form.retain(|(k, _)| *k != key);
        form.push((key, value.to_owned()));
        form
    };
    let rule = |perm: &str, cond: &str| {
        format!(
            r#"{{"accessBoundary":{{"accessBoundaryRules":[{{"availableResource":"//storage.googleapis.com/projects/_/buckets/{}","availablePermissions":["{perm}"],"availabilityCondition":{{"expression":"{cond}"}}}}]}}}}"#,
            emu.bucket
        )
    };
    for (form, error, mentions) in [
        (
            with("grant_type", "client_credentials"),
            "unsupported_grant_type",
            "grant_type",
        ),
        (
            with("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            "invalid_request",
            "subject_token_type",
        ),
        (
            with("subject_token", "someone-else"),
            "invalid_grant",
            "subject token",
        ),
        (with("options", "{}"), "invalid_request", "accessBoundary"),
        (
            with(
                "options",
                &rule("roles/storage.objectViewer", "resource.name == 'x'"),
            ),
            "invalid_request",
            "inRole:",
        ),
        (
            with(
                "options",
                &rule("inRole:roles/storage.admin", "resource.name == 'x'"),
            ),
            "invalid_request",
            "unsupported role",
        ),
        (
            with(
                "options",
                &rule("inRole:roles/storage.objectViewer", "resource.type == 'x'"),
            ),
            "invalid_request",
            "availabilityCondition",
        ),
    ] {
        let (status, body) = post(form).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains(mentions),
            "{body}"
        );
    }

    // Through the client: a typed error naming the endpoint and the reason.
    let client = StsClient::new(&sts.url).unwrap();
    let err = client
        .exchange(
            "wrong",
            &runbox_core::credentials::AccessBoundary::for_execution(
                &emu.bucket,
                &SessionId::new("s").unwrap(),
                &InstanceId::random().next_execution_id(),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CredentialError::Refused { status: 400, error, .. } if error == "invalid_grant"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&sts.url), "{err}");
    // An endpoint that is not there: retryable.
    let gone = StsClient::new("http://127.0.0.1:9").unwrap();
    let err = gone
        .exchange(
            "x",
            &runbox_core::credentials::AccessBoundary::for_execution(
                "b",
                &SessionId::new("s").unwrap(),
                &InstanceId::random().next_execution_id(),
            ),
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// The Cloud Run launcher (runbox's emulator): the token travels in the
/// RunJob env overrides, the job template holds no credential, and a
/// command finds the token nowhere, not in the executor's environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cloud_run_the_token_travels_in_the_overrides_and_stays_hidden() {
    use runbox_cloudrun_emulator::{Config as EmulatorConfig, Emulator};
    const PARENT: &str = "projects/p/locations/us-central1";
    const IMAGE: &str = "runbox-executor:sts";

    let (emu, sts) = stack(3600).await;
    let config = EmulatorConfig::default()
        .image(IMAGE, [binary("runbox-executor").display().to_string()])
        .inherit_env(false)
        .kill_grace(Duration::from_millis(500))
        .supervisor(binary("runbox-cloudrun-emulator"));
    let emulator = within(10, Emulator::start("127.0.0.1:0".parse().unwrap(), config))
        .await
        .expect("start the Cloud Run emulator");
    let endpoint = emulator.endpoint();
    // The template: where the store is, and no credential at all.
    let mut template: Vec<(String, String)> = emu.env().into_iter().collect();
    template.retain(|(k, _)| k != "STORAGE_EMULATOR_HOST");
    template.push(("STORAGE_EMULATOR_HOST".into(), sts.url.clone()));
    template.push(("RUNBOX_KILL_GRACE_MS".into(), "300".into()));
    runbox_tests::cloud_run::create_executor_job(&endpoint, PARENT, "runbox", IMAGE, &template)
        .await;

    let cli = Cli::new();
    let vars = env(&emu, &sts, cli.home.path());
    let run = |session: &str, script: String| {
        let mut cmd = cli.command(&["exec", "-s", session, "--", &script]);
        cmd.envs(&vars)
            .env("RUNBOX_LAUNCHER", "cloudrun")
            .env("RUNBOX_CLOUD_RUN_JOB", format!("{PARENT}/jobs/runbox"))
            .env("RUNBOX_CLOUD_RUN_ENDPOINT", &endpoint);
        async move { within(120, cmd.output()).await.expect("runbox exec") }
    };
    let (alpha, beta) = (unique("alpha"), unique("beta"));
    let out = run(
        &alpha,
        "echo secret-a > secret.txt && export MARK=a1".into(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        &beta,
        format!(
            "python3 - {} {} {alpha} <<'PY'\n{ATTACKER}\nPY",
            sts.url, emu.bucket
        ),
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().next(),
        Some("found 0"),
        "a credential is readable by the command:\n{stdout}"
    );
    for line in stdout.lines().skip(1) {
        let status = line.rsplit(' ').next().unwrap();
        assert!(matches!(status, "401" | "403"), "allowed: {line}\n{stdout}");
    }
    let out = run(&alpha, "cat secret.txt; echo $MARK".into()).await;
    assert_eq!(text(&out.stdout), "secret-a\na1\n", "{}", text(&out.stderr));

    // Every request that got through carried the source token (the
    // dispatcher) or a downscoped one (an executor); the three results were
    // written with downscoped tokens.
    let records = sts.records().await.unwrap();
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["status"].as_u64() < Some(400))
        .collect();
    for rec in &allowed {
        assert!(
            matches!(str_of(rec, "token"), "source" | "downscoped"),
            "{rec}"
        );
    }
    let writes: Vec<&&Value> = allowed
        .iter()
        .filter(|r| str_of(r, "object").starts_with("results/"))
        .filter(|r| str_of(r, "method") == "POST")
        .collect();
    assert_eq!(writes.len(), 3, "{writes:?}");
    for rec in writes {
        assert_eq!(str_of(rec, "token"), "downscoped", "{rec}");
    }
}
