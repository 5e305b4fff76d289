//! `runbox serve` end to end on the embedded backend: the real binary, a
//! real Python HTTP client, the OpenAPI document against the checked-in
//! one and a real validator, the drain on SIGTERM, and what an attacker
//! can reach over HTTP.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use runbox_tests::embedded::within;
use runbox_tests::serve::{Response, Serve, request};

const TOKEN: &str = "test-token-0123456789";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn assert_problem(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["status"], status);
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:runbox:problem:")),
        "{p}"
    );
}

/// Runs `tests/python/{script}` against `url` with Python's own HTTP
/// client.
async fn run_python(url: &str, script: &str) -> std::process::Output {
    within(
        240,
        tokio::process::Command::new("python3")
            .arg(repo_root().join("tests/python").join(script))
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run python3")
}

/// [`run_python`], which must succeed and print `{what} scenario: ok`.
async fn python_scenario(url: &str, script: &str, what: &str) {
    let out = run_python(url, script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} scenario failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(&format!("{what} scenario: ok")), "{stdout}");
}

#[tokio::test]
async fn python_client_runs_the_agent_scenario() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    python_scenario(&serve.url(), "serve_agent.py", "agent").await;
}

/// stdin over HTTP (`tests/python/serve_stdin.py`): lines written while a
/// warm command runs are answered one by one, a oneshot command gets its
/// input once closed, whole stdins as text and base64, refusals before
/// anything runs, and no path reaches another session's command.
#[tokio::test]
async fn python_client_streams_a_commands_stdin() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    python_scenario(&serve.url(), "serve_stdin.py", "stdin").await;
}

#[tokio::test]
async fn openapi_document_is_the_checked_in_one_and_valid() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    let served = request(&serve.addr, "GET", "/openapi.json", &[], b"")
        .await
        .expect("GET /openapi.json");
    assert_eq!(served.status, 200);
    let checked_in = repo_root().join("docs/openapi.json");
    let expected = std::fs::read(&checked_in).unwrap_or_default();
    assert!(
        served.body == expected,
        "docs/openapi.json differs from the document runbox serves; regenerate it with:\n  \
         cargo run -p runbox-cli -- serve --openapi > docs/openapi.json"
    );
    let doc = served.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in [
        "/v1/sessions",
        "/v1/sessions/{session}",
        "/v1/sessions/{session}/exec",
        "/v1/sessions/{session}/files/{path}",
        "/v1/sessions/{session}/background",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route} not documented");
    }
    let exec_body = &doc["components"]["schemas"]["ExecBody"]["properties"];
    for field in ["command", "timeoutMs", "env", "requestId"] {
        assert!(exec_body.get(field).is_some(), "ExecBody lacks {field}");
    }

    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &served.body).expect("write document");
    let out = within(
        120,
        tokio::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(file.path())
            .output(),
    )
    .await
    .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "openapi-spec-validator is not installed: run infra/local/install-emulators\n{text}"
    );
    assert!(
        out.status.success(),
        "the validator refused the document:\n{text}"
    );
}

/// The `ExecResult` schema names exactly the fields runbox-proto writes.
#[tokio::test]
async fn exec_result_schema_matches_the_proto_json() {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("docs/openapi.json")).unwrap())
            .unwrap();
    let mut documented: Vec<String> = doc["components"]["schemas"]["ExecResult"]["properties"]
        .as_object()
        .expect("ExecResult schema")
        .keys()
        .cloned()
        .collect();
    let result = runbox_proto::ExecResult {
        started_at: Some(runbox_proto::now()),
        completed_at: Some(runbox_proto::now()),
        ..Default::default()
    };
    let written = serde_json::to_value(&result).unwrap();
    let mut fields: Vec<String> = written.as_object().unwrap().keys().cloned().collect();
    documented.sort();
    fields.sort();
    assert_eq!(documented, fields);
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    const N: usize = 3;
    let mut serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    let dir = tempfile::tempdir().unwrap();
    // Where the command reaches it: its /tmp is the session's own.
    let fifo = runbox_tests::pipes::fifo(dir.path(), "started");
    // Opened read-write, so it never reads end-of-file between writers.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();

    let mut calls = Vec::new();
    for i in 0..N {
        let addr = serve.addr.clone();
        let body = serde_json::json!({
            "command": format!("echo {i} > {}; sleep 1; echo done-{i}", fifo.display()),
        })
        .to_string();
        calls.push(tokio::spawn(async move {
            request(
                &addr,
                "POST",
                &format!("/v1/sessions/drain-{i}/exec"),
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .await
        }));
    }
    // Every command has started (it wrote its line) before the signal.
    let started = within(
        60,
        tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(reader).lines();
            (0..N).map(|_| lines.next()).count()
        }),
    )
    .await
    .unwrap();
    assert_eq!(started, N);
    serve.terminate();

    let mut executions = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let r = within(60, call).await.unwrap().expect("answer in flight");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let result = r.json();
        assert_eq!(result["status"], "SUCCEEDED", "{result}");
        assert_eq!(result["stdout"], format!("done-{i}\n"));
        executions.push(result["executionId"].as_str().unwrap().to_owned());
    }
    let (status, lines) = serve.wait().await;
    let home = serve.home.path().to_owned();
    assert!(status.success(), "{status:?}");
    assert!(lines.iter().any(|l| l.contains("draining")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("drain time over")),
        "{lines:?}"
    );
    // Each result is saved in the store, where any later reader finds it.
    let client = runbox_dispatcher::Client::from_config(runbox_tests::embedded::config(&home))
        .await
        .unwrap();
    for id in &executions {
        let name = format!("results/{id}.json");
        assert!(client.store().head(&name).await.is_ok(), "{name} missing");
    }
    client.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_loses_no_result() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    let dir = tempfile::tempdir().unwrap();
    // Where the command reaches it: its /tmp is the session's own.
    let fifo = runbox_tests::pipes::fifo(dir.path(), "started");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let body = serde_json::json!({
        "command": format!("echo go > {}; sleep 1; echo finished > out.txt; cd sub || mkdir sub", fifo.display()),
    })
    .to_string();
    let addr = serve.addr.clone();
    let call = tokio::spawn(async move {
        request(
            &addr,
            "POST",
            "/v1/sessions/hangup/exec",
            &[],
            body.as_bytes(),
        )
        .await
    });
    within(
        60,
        tokio::task::spawn_blocking(move || std::io::BufReader::new(reader).lines().next()),
    )
    .await
    .unwrap();
    // The caller hangs up while its command runs.
    call.abort();
    let _ = call.await;
    // The session's next command queues behind it, so it sees what it did.
    let r = request(
        &serve.addr,
        "POST",
        "/v1/sessions/hangup/exec",
        &[],
        br#"{"command":"cat out.txt; ls -d sub"}"#,
    )
    .await
    .unwrap();
    let result = r.json();
    assert_eq!(result["stdout"], "finished\nsub\n", "{result}");
    let info = request(&serve.addr, "GET", "/v1/sessions/hangup", &[], b"")
        .await
        .unwrap();
    assert_eq!(info.json()["execCount"], 2, "{}", info.json());
}

#[tokio::test]
async fn the_drain_is_bounded() {
    let mut serve = Serve::start("127.0.0.1:0", &[("RUNBOX_DRAIN_SECS", "1")])
        .await
        .expect("serve");
    let addr = serve.addr.clone();
    let dir = tempfile::tempdir().unwrap();
    // Where the command reaches it: its /tmp is the session's own.
    let fifo = runbox_tests::pipes::fifo(dir.path(), "started");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let body = serde_json::json!({"command": format!("echo go > {}; sleep 5", fifo.display())})
        .to_string();
    let call = tokio::spawn(async move {
        request(
            &addr,
            "POST",
            "/v1/sessions/slow/exec",
            &[],
            body.as_bytes(),
        )
        .await
    });
    within(
        60,
        tokio::task::spawn_blocking(move || std::io::BufReader::new(reader).lines().next()),
    )
    .await
    .unwrap();
    let signalled = std::time::Instant::now();
    serve.terminate();
    let (status, lines) = serve.wait().await;
    assert!(status.success());
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(15),
        "drain took {:?}",
        signalled.elapsed()
    );
    assert!(
        lines.iter().any(|l| l.contains("drain time over")),
        "{lines:?}"
    );
    // The caller's connection was closed, not left hanging.
    let _ = within(30, call).await;
}

#[tokio::test]
async fn without_the_token_every_route_but_healthz_is_401() {
    let serve = Serve::start("0.0.0.0:0", &[("RUNBOX_API_TOKEN", TOKEN)])
        .await
        .expect("serve");
    let auth = format!("Bearer {TOKEN}");
    let doc = request(
        &serve.addr,
        "GET",
        "/openapi.json",
        &[("authorization", &auth)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let target = path
            .replace("{session}", "s")
            .replace("{path}", "f.txt")
            .replace("{handle}", "h");
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let r = request(&serve.addr, &method, &target, &[], b"")
                .await
                .unwrap();
            if path == "/healthz" {
                assert_eq!(r.status, 200, "{method} {path}");
                continue;
            }
            assert_eq!(r.status, 401, "{method} {path} without a token");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            for wrong in ["Bearer nope", "Bearer ", "Basic dGVzdA==", TOKEN] {
                let r = request(
                    &serve.addr,
                    &method,
                    &target,
                    &[("authorization", wrong)],
                    b"",
                )
                .await
                .unwrap();
                assert_eq!(r.status, 401, "{method} {path} with {wrong:?}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations checked");
    // Unknown routes too: their existence is not revealed.
    let r = request(&serve.addr, "GET", "/v2/anything", &[], b"")
        .await
        .unwrap();
    assert_problem(&r, 401);
    let r = request(
        &serve.addr,
        "GET",
        "/readyz",
        &[("authorization", &auth)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_a_token() {
    let home = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["serve", "--http", "0.0.0.0:0"], vec![]),
        (
            vec!["serve", "--http", "[::]:0"],
            vec![("RUNBOX_API_TOKEN", "")],
        ),
        (vec!["serve"], vec![("PORT", "0")]),
    ] {
        let out = within(60, Serve::command(home.path(), &args, &env).output())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("RUNBOX_API_TOKEN"), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
    // Nothing was created before the refusal.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn paths_and_ids_cannot_reach_another_session_or_the_host() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    let a = serve.addr.clone();
    let home = serve.home.path().to_owned();
    let secret = b"victim-secret-content\n";
    let r = request(
        &a,
        "PUT",
        "/v1/sessions/victim/files/secret.txt",
        &[],
        secret,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let victim_ws = home.join("sessions/victim/workspace");
    let victim_file = victim_ws.join("secret.txt");
    assert_eq!(std::fs::read(&victim_file).unwrap(), secret);

    // Symlinks made by a command in the attacker's own session.
    let links = format!(
        "ln -s {} file && ln -s /etc etc && ln -s {} victim && ln -s ../../victim/workspace rel",
        victim_file.display(),
        victim_ws.display()
    );
    let body = serde_json::json!({ "command": links }).to_string();
    let r = request(
        &a,
        "POST",
        "/v1/sessions/mallory/exec",
        &[],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["status"], "SUCCEEDED", "{}", r.json());

    let victim_abs = format!("/{}", victim_file.display());
    let refused = [
        (
            "GET",
            "/v1/sessions/mallory/files/../victim/workspace/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory/files/..%2F..%2Fvictim%2Fworkspace%2Fsecret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory/files/%2E%2E/%2E%2E/victim/workspace/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory/files/a/../../../victim/workspace/secret.txt".to_owned(),
        ),
        ("GET", format!("/v1/sessions/mallory/files{victim_abs}")),
        ("GET", "/v1/sessions/mallory/files//etc/passwd".to_owned()),
        (
            "GET",
            "/v1/sessions/mallory/files/%2Fetc%2Fpasswd".to_owned(),
        ),
        ("GET", "/v1/sessions/mallory/files/file".to_owned()),
        ("GET", "/v1/sessions/mallory/files/etc/passwd".to_owned()),
        (
            "GET",
            "/v1/sessions/mallory/files/victim/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory/files/rel/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory/files/rel/secret.txt?lines=1:1".to_owned(),
        ),
        (
            "HEAD",
            "/v1/sessions/mallory/files/rel/secret.txt".to_owned(),
        ),
        ("GET", "/v1/sessions/mallory/dirs/rel".to_owned()),
        ("GET", "/v1/sessions/mallory/dirs/..%2F..".to_owned()),
        (
            "PUT",
            "/v1/sessions/mallory/files/rel/secret.txt".to_owned(),
        ),
        (
            "PUT",
            "/v1/sessions/mallory/files/victim/secret.txt?append=true".to_owned(),
        ),
        (
            "PUT",
            "/v1/sessions/mallory/files/..%2F..%2Fvictim%2Fworkspace%2Fsecret.txt".to_owned(),
        ),
        (
            "DELETE",
            "/v1/sessions/mallory/files/rel/secret.txt".to_owned(),
        ),
        (
            "DELETE",
            "/v1/sessions/mallory/files/..%2F..%2Fvictim?recursive=true".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/..%2Fvictim/files/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/%2E%2E/files/sessions/victim/workspace/secret.txt".to_owned(),
        ),
        (
            "GET",
            "/v1/sessions/mallory%2F..%2Fvictim/files/secret.txt".to_owned(),
        ),
        ("DELETE", "/v1/sessions/victim%2F..%2Fmallory".to_owned()),
        (
            "GET",
            "/v1/sessions/mallory/background/..%2F..%2Fresults/logs".to_owned(),
        ),
    ];
    for (method, target) in &refused {
        let r = request(&a, method, target, &[], b"pwned").await.unwrap();
        assert!(
            [400, 404].contains(&r.status),
            "{method} {target}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if method != &"HEAD" {
            assert_problem(&r, r.status);
        }
        assert!(
            !String::from_utf8_lossy(&r.body).contains("victim-secret-content"),
            "{method} {target} leaked the secret"
        );
    }
    // The victim's file is untouched and still readable by its session.
    assert_eq!(std::fs::read(&victim_file).unwrap(), secret);
    let r = request(&a, "GET", "/v1/sessions/victim/files/secret.txt", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.body, secret);
}

#[tokio::test]
async fn bad_requests_are_typed_problems_before_anything_runs() {
    let serve = Serve::start("127.0.0.1:0", &[]).await.expect("serve");
    let a = serve.addr.clone();
    let cases: [(&str, &str, Vec<u8>, u16); 7] = [
        ("POST", "/v1/sessions/s/exec", b"not json".to_vec(), 400),
        (
            "POST",
            "/v1/sessions/s/exec",
            br#"{"command":"true","extra":1}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/sessions/s/exec",
            br#"{"command":"true","timeoutMs":999999999999}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/sessions/s/exec",
            br#"{"command":"true","env":{"A=B":"1"}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/sessions/s/exec",
            format!(r#"{{"command":"{}"}}"#, "x".repeat(300 * 1024)).into_bytes(),
            413,
        ),
        ("POST", "/v1/sessions/s/exec", vec![b' '; 2 << 20], 413),
        ("GET", "/v1/sessions/s/files/f?lines=x", vec![], 400),
    ];
    for (method, target, body, status) in &cases {
        let r = request(&a, method, target, &[], body).await.unwrap();
        assert_problem(&r, *status);
    }
    // Nothing ran: no session was created by any of them.
    let r = request(&a, "GET", "/v1/sessions", &[], b"").await.unwrap();
    assert_eq!(r.json()["sessions"], serde_json::json!([]));
    let r = request(&a, "POST", "/v1/sessions", &[], br#"{"sessionId":"s"}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let r = request(&a, "POST", "/v1/sessions", &[], br#"{"sessionId":"s"}"#)
        .await
        .unwrap();
    assert_problem(&r, 409);
    assert_eq!(r.json()["type"], "urn:runbox:problem:conflict");
}

/// Subscriptions on the emulator's notifications topic, through its REST API.
async fn subscriptions(env: &std::collections::BTreeMap<String, String>) -> usize {
    let host = &env["PUBSUB_EMULATOR_HOST"];
    let project = &env["RUNBOX_PROJECT"];
    let topic = format!(
        "projects/{project}/topics/{}",
        env["RUNBOX_NOTIFICATIONS_TOPIC"]
    );
    let r = request(
        host,
        "GET",
        &format!("/v1/projects/{project}/subscriptions"),
        &[],
        b"",
    )
    .await
    .expect("list subscriptions");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["subscriptions"].as_array().map_or(0, |subs| {
        subs.iter().filter(|s| s["topic"] == topic.as_str()).count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_the_agent_scenario_on_the_emulators() {
    let emu = within(120, runbox_tests::harness::Emulators::start())
        .await
        .expect("emulators");
    let env = emu.env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let executor = runbox_tests::embedded::binary("runbox-executor");
    let executor = executor.to_str().unwrap();
    vars.push(("RUNBOX_EXECUTOR", executor));
    let mut serve = Serve::start("127.0.0.1:0", &vars).await.expect("serve");
    // One subscription for the whole life of the service.
    assert_eq!(subscriptions(&env).await, 1);

    let out = run_python(&serve.url(), "serve_agent.py").await;
    assert!(
        out.status.success(),
        "agent scenario failed on the emulators:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        emu.logs()
    );
    assert_eq!(
        subscriptions(&env).await,
        1,
        "the scenario made more subscriptions"
    );

    serve.terminate();
    let (status, _) = serve.wait().await;
    assert!(status.success());
    // A graceful stop deletes the instance's subscription.
    assert_eq!(subscriptions(&env).await, 0);
}
