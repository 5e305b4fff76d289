//! Application Default Credentials of every kind runbox accepts, with local
//! HTTP stand-ins for Google's token endpoints: `external_account` through
//! gcloud-auth, `impersonated_service_account` through runbox's own token
//! source ([`DefaultCredentials`] picks one or the other, for every Google
//! client runbox builds).

use gcloud_auth::credentials::CredentialsFile;
use gcloud_auth::project::{Config, create_token_source_from_credentials};
use runbox_core::credentials::{AdcError, CREDENTIALS_FILE_ENV, DefaultCredentials};
use runbox_core::store::{GcsStore, PutOptions, Store};
use runbox_tests::embedded::within;
use runbox_tests::harness::Emulators;
use runbox_tests::sts::StsStandIn;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use token_source::TokenSourceProvider;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];

/// Answers one HTTP POST with `reply` (JSON); returns the endpoint URL and
/// a receiver of the request's body.
async fn token_endpoint(reply: &'static str) -> (String, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/v1/token",
        listener.local_addr().expect("address")
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut reader = BufReader::new(stream);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("read header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.expect("read body");
        let _ = tx.send(String::from_utf8(body).expect("UTF-8 body"));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
            reply.len()
        );
        reader
            .into_inner()
            .write_all(response.as_bytes())
            .await
            .expect("write response");
    });
    (url, rx)
}

/// Workload identity federation (`external_account`, subject token from a
/// file): the subject token is exchanged at the configured token URL, and
/// the access token it answers is the one runbox's calls carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_credentials_exchange_the_subject_token() {
    let (url, body) = token_endpoint(
        r#"{"access_token":"ya29.federated","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("oidc-token");
    std::fs::write(&subject, "eyJ.subject.token").unwrap();
    let credentials = serde_json::json!({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": url,
        "credential_source": { "file": subject.display().to_string() },
    });
    let file = CredentialsFile::new_from_str(&credentials.to_string())
        .await
        .expect("parse the credentials");
    let config = Config::default().with_scopes(&SCOPES);
    let source = within(30, create_token_source_from_credentials(&file, &config))
        .await
        .expect("external_account credentials are accepted");
    let token = within(30, source.token()).await.expect("token");
    assert_eq!(token.access_token, "ya29.federated");
    let body = within(10, body).await.expect("the endpoint was called");
    let form: std::collections::HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(form["subject_token"], "eyJ.subject.token");
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
}

/// One request a [`StandIn`] answered.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: String,
}

/// A scripted HTTP server: each POST is answered by the reply registered
/// for its path (404 otherwise) and recorded.
struct StandIn {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    async fn start(replies: Vec<(String, u16, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let replies = Arc::new(replies);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                let replies = Arc::clone(&replies);
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.is_err() {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let mut length = 0usize;
                    let mut authorization = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            } else if name.eq_ignore_ascii_case("authorization") {
                                authorization = Some(value.trim().to_owned());
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    record.lock().unwrap().push(Seen {
                        path: path.clone(),
                        authorization,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    let (status, reply) = replies
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, s, r)| (*s, r.clone()))
                        .unwrap_or((404, "{}".to_owned()));
                    let extra = if (300..400).contains(&status) {
                        // A redirect's target is its reply.
                        format!("location: {reply}\r\n")
                    } else {
                        String::new()
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = reader.into_inner().write_all(response.as_bytes()).await;
                });
            }
        });
        Self { base, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

const TOKEN_PATH: &str = "/token";
const IMPERSONATE_PATH: &str =
    "/v1/projects/-/serviceAccounts/runbox@p.iam.gserviceaccount.com:generateAccessToken";
const REFRESH_TOKEN: &str = "1//refresh-s3cr3t";
const CLIENT_SECRET: &str = "client-s3cr3t";
const SOURCE_TOKEN: &str = "ya29.source-user";
const DELEGATES: [&str; 1] = ["projects/-/serviceAccounts/hop@p.iam.gserviceaccount.com"];

fn source_reply() -> (String, u16, String) {
    (
        TOKEN_PATH.to_owned(),
        200,
        json!({"access_token": SOURCE_TOKEN, "token_type": "Bearer", "expires_in": 3599})
            .to_string(),
    )
}

/// A `generateAccessToken` answer issuing `token`, valid `ttl` from now.
fn impersonation_reply(token: &str, ttl: Duration) -> (String, u16, String) {
    let expiry = humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string();
    (
        IMPERSONATE_PATH.to_owned(),
        200,
        json!({"accessToken": token, "expireTime": expiry}).to_string(),
    )
}

/// What `gcloud auth application-default login
/// --impersonate-service-account` writes, with the token endpoints at
/// `base`; returns the directory holding it and the file's path.
fn impersonated_file(base: &str) -> (tempfile::TempDir, String) {
    let file = json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!("{base}{IMPERSONATE_PATH}"),
        "delegates": DELEGATES,
        "source_credentials": {
            "type": "authorized_user",
            "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "token_uri": format!("{base}{TOKEN_PATH}"),
        },
        "quota_project_id": "quota-p",
    });
    write_file(&file)
}

fn write_file(file: &Value) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("application_default_credentials.json");
    std::fs::write(&path, file.to_string()).expect("write credentials");
    (dir, path.display().to_string())
}

async fn load(path: &str) -> Result<DefaultCredentials, AdcError> {
    let env = [(CREDENTIALS_FILE_ENV, path)];
    within(30, DefaultCredentials::from_lookup(&env, &SCOPES, None)).await
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/")))
        .collect()
}

/// Service-account impersonation with a user's refresh token as source:
/// the refresh token is redeemed at the file's token URI, the user's token
/// is the bearer of `generateAccessToken` (with the requested scopes, the
/// file's delegates and an hour's lifetime), and the token runbox's calls
/// carry is the impersonated one, reused while it is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_credentials_carry_the_impersonated_token() {
    let stand_in = StandIn::start(vec![
        source_reply(),
        impersonation_reply("ya29.impersonated", Duration::from_secs(3600)),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let credentials = load(&path).await.expect("impersonated credentials load");
    assert_eq!(credentials.kind(), "impersonated_service_account");
    assert_eq!(credentials.project_id(), Some("quota-p"));
    let tokens = credentials.token_source();
    for _ in 0..3 {
        let token = within(30, tokens.token()).await.expect("token");
        assert_eq!(token, "Bearer ya29.impersonated");
    }

    let redeemed = stand_in.seen_at(TOKEN_PATH);
    assert_eq!(redeemed.len(), 1, "{redeemed:?}");
    let form = form(&redeemed[0].body);
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], REFRESH_TOKEN);
    assert_eq!(form["client_secret"], CLIENT_SECRET);

    // Loading fetched the first token; the three calls reused it.
    let impersonations = stand_in.seen_at(IMPERSONATE_PATH);
    assert_eq!(impersonations.len(), 1, "{impersonations:?}");
    assert_eq!(
        impersonations[0].authorization.as_deref(),
        Some(format!("Bearer {SOURCE_TOKEN}").as_str())
    );
    let body: Value = serde_json::from_str(&impersonations[0].body).expect("JSON body");
    assert_eq!(body["scope"], json!(SCOPES));
    assert_eq!(body["delegates"], json!(DELEGATES));
    assert_eq!(body["lifetime"], "3600s");
}

/// A token within minutes of its expiry is not handed out: a new one is
/// asked for, with a new source token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impersonated_token_near_its_expiry_is_renewed() {
    let stand_in = StandIn::start(vec![
        source_reply(),
        impersonation_reply("ya29.short-lived", Duration::from_secs(60)),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let tokens = load(&path).await.expect("load").token_source();
    let token = within(30, tokens.token()).await.expect("token");
    assert_eq!(token, "Bearer ya29.short-lived");
    assert_eq!(stand_in.seen_at(IMPERSONATE_PATH).len(), 2);
    assert_eq!(stand_in.seen_at(TOKEN_PATH).len(), 2);
}

/// IAM Credentials refusing the impersonation (the user lacks Service
/// Account Token Creator) is a typed error carrying the HTTP status and
/// Google's message, at start; it names neither the user's token nor its
/// refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_impersonation_is_a_typed_error_with_googles_message() {
    let message =
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).";
    let stand_in = StandIn::start(vec![
        source_reply(),
        (
            IMPERSONATE_PATH.to_owned(),
            403,
            json!({"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}})
                .to_string(),
        ),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let err = load(&path).await.expect_err("refused");
    match &err {
        AdcError::ImpersonationRefused {
            url,
            status,
            code,
            message: said,
        } => {
            assert_eq!(*status, 403);
            assert_eq!(code, "PERMISSION_DENIED");
            assert_eq!(said, message);
            assert!(url.ends_with(IMPERSONATE_PATH), "{url}");
        }
        other => panic!("not a refused impersonation: {other:?}"),
    }
    assert!(!err.is_retryable());
    let shown = format!("{} {err:?}", runbox_core::error_chain(&err));
    assert!(shown.contains(message), "{shown}");
    for secret in [SOURCE_TOKEN, REFRESH_TOKEN, CLIENT_SECRET] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// A refresh token the token endpoint refuses (revoked, say) fails with
/// the endpoint's OAuth error, and no impersonation is attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_source_token_is_a_typed_error() {
    let stand_in = StandIn::start(vec![
        (
            TOKEN_PATH.to_owned(),
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
                .to_string(),
        ),
        impersonation_reply("ya29.never", Duration::from_secs(3600)),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let err = load(&path).await.expect_err("refused");
    assert!(
        matches!(
            &err,
            AdcError::SourceRefused { status: 400, error, description, .. }
                if error == "invalid_grant" && description == "Token has been expired or revoked."
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(stand_in.seen_at(IMPERSONATE_PATH).is_empty());
}

/// An endpoint nobody listens on is a retryable error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_token_endpoint_is_retryable() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let (_dir, path) = impersonated_file(&closed);
    let err = load(&path).await.expect_err("unreachable");
    assert!(matches!(err, AdcError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
}

/// An impersonation endpoint cannot bounce the user's token elsewhere: a
/// redirect is not followed but refused, and its target hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_does_not_carry_the_source_token_away() {
    let elsewhere = StandIn::start(vec![impersonation_reply(
        "ya29.stolen",
        Duration::from_secs(3600),
    )])
    .await;
    let stand_in = StandIn::start(vec![
        source_reply(),
        (
            IMPERSONATE_PATH.to_owned(),
            307,
            format!("{}{IMPERSONATE_PATH}", elsewhere.base),
        ),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let err = load(&path).await.expect_err("a redirect is refused");
    assert!(
        matches!(err, AdcError::ImpersonationRefused { status: 307, .. }),
        "{err:?}"
    );
    assert!(elsewhere.seen().is_empty(), "{:?}", elsewhere.seen());
}

/// Workload identity federation as the source of an impersonation:
/// gcloud-auth's own `external_account` source exchanges the subject token
/// and its answer is the bearer of the impersonation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_account_can_be_the_source_of_an_impersonation() {
    let stand_in = StandIn::start(vec![
        (
            "/v1/token".to_owned(),
            200,
            json!({"access_token": "ya29.federated", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}).to_string(),
        ),
        impersonation_reply("ya29.impersonated-wif", Duration::from_secs(3600)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("oidc-token");
    std::fs::write(&subject, "eyJ.subject.token").unwrap();
    let (_file_dir, path) = write_file(&json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!("{}{IMPERSONATE_PATH}", stand_in.base),
        "delegates": [],
        "source_credentials": {
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", stand_in.base),
            "credential_source": { "file": subject.display().to_string() },
        },
    }));
    let tokens = load(&path).await.expect("load").token_source();
    assert_eq!(
        within(30, tokens.token()).await.expect("token"),
        "Bearer ya29.impersonated-wif"
    );
    let impersonations = stand_in.seen_at(IMPERSONATE_PATH);
    assert_eq!(impersonations.len(), 1);
    assert_eq!(
        impersonations[0].authorization.as_deref(),
        Some("Bearer ya29.federated")
    );
}

/// A real Storage client on the impersonated credentials: every request
/// reaches fake-gcs-server (through the token-checking stand-in proxy)
/// with the impersonated token, and never with the user's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_client_sends_the_impersonated_token() {
    let emu = within(120, Emulators::storage_only())
        .await
        .expect("emulators");
    let proxy = StsStandIn::start(&emu, 3600).expect("stand-in");
    // The proxy lets through its "source token" only: the impersonation
    // issues exactly that.
    let stand_in = StandIn::start(vec![
        source_reply(),
        impersonation_reply(&proxy.source_token, Duration::from_secs(3600)),
    ])
    .await;
    let (_dir, path) = impersonated_file(&stand_in.base);
    let credentials = load(&path).await.expect("load");
    let project = credentials.project_id().map(str::to_owned);
    let store = GcsStore::with_token_source(
        emu.bucket.clone(),
        Some(&proxy.url),
        Box::new(credentials),
        project,
    );
    let name = "sessions/adc/probe";
    within(
        30,
        store.put(
            name,
            bytes::Bytes::from_static(b"hello"),
            PutOptions::create(),
        ),
    )
    .await
    .expect("put through the proxy");
    let object = within(30, store.get(name)).await.expect("get");
    assert_eq!(&object.data[..], b"hello");

    let records = within(10, proxy.records()).await.expect("records");
    assert!(records.len() >= 2, "{records:?}");
    for r in &records {
        assert_eq!(r["token"], "source", "{r}");
        assert!(
            (200..300).contains(&r["status"].as_u64().unwrap_or(0)),
            "{r}"
        );
    }

    // Control: the user's own token is not one the proxy lets through.
    let user = GcsStore::with_token(
        emu.bucket.clone(),
        Some(&proxy.url),
        &runbox_core::credentials::StoreToken::new(SOURCE_TOKEN, None),
    );
    assert!(within(30, user.get(name)).await.is_err());
}
