//! `runbox doctor`: checks the configured deployment end to end and prints a
//! checklist, each failure with its fix.
//!
//! The checks, in order (a check whose prerequisite failed is skipped):
//! - **store**: a probe object written with a create-only precondition,
//!   then deleted with a generation precondition;
//! - **events**: a probe result under `results/` whose completion event must
//!   reach a notifier of this process (a subscription of its own on the gcp
//!   backend, inotify on the embedded one) within `--event-timeout`: the
//!   path every command's completion takes, with nothing read back;
//! - **job**: with the Cloud Run launcher, the job template (GetJob): its
//!   container, `max_retries = 0`, an environment that points executors at
//!   this store;
//! - **permissions**: testIamPermissions on the job where the endpoint
//!   offers it;
//! - **otlp**: a TCP connection to `OTEL_EXPORTER_OTLP_ENDPOINT` when set.
//!
//! Exit status: 0 when no check failed (skipped ones included), 1 when one
//! did, 64 on bad configuration (before any check).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use runbox_core::config::{BackendConfig, Config, Env, LauncherConfig, Lookup};
use runbox_core::{ExecutionId, InstanceId, Precondition, PutOptions, Store, layout};
use runbox_dispatcher::{
    CloudRunLauncher, CloudRunSettings, Error, ExecResult, ExecStatus, error_chain,
    template_problems,
};
use runbox_notifier::{
    EventSource, FsEventSource, Notifier, PubSubConfig, PubSubEventSource, Waiters,
};
use serde::Serialize;

use crate::stdout::Stdout;

/// Exit status when a check failed.
pub const EXIT_CHECK_FAILED: u8 = 1;

/// Where the store probe goes: outside every prefix runbox reads.
const PROBE_PREFIX: &str = "doctor/probe-";

/// Permissions the dispatcher uses on the job template (RunJob with
/// overrides; GetExecution, CancelExecution and the RunJob operation are
/// granted by the same roles on the job).
const JOB_PERMISSIONS: [&str; 3] = ["run.jobs.get", "run.jobs.run", "run.jobs.runWithOverrides"];

/// The variables the OTLP exporter reads its endpoint from, most specific first.
const OTLP_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long connecting to the OTLP endpoint may take.
const OTLP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `runbox doctor`'s arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checklist as one JSON object.
    #[arg(long)]
    json: bool,
    /// How long the probe's completion event may take to arrive.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    event_timeout: Duration,
}

impl DoctorArgs {
    /// Whether the output (errors included) is JSON.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It failed; the fix says what to do.
    Fail,
    /// It does not apply here, or could not be made.
    Skip,
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The check's name (`store`, `events`, `job`, `permissions`, `otlp`).
    pub check: &'static str,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skip(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// Runs every check against `config` and prints the checklist.
pub async fn run(args: DoctorArgs, config: Config) -> Result<ExitCode, Error> {
    let checks = checks(&config, &Env, args.event_timeout).await;
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    let mut out = Stdout::new();
    if args.json {
        let value = serde_json::json!({
            "ok": !failed,
            "backend": describe_backend(&config),
            "launcher": describe_launcher(&config),
            "checks": checks,
        });
        out.line(format_args!("{value}"))?;
    } else {
        out.line(format_args!(
            "runbox doctor: {}, {}",
            describe_backend(&config),
            describe_launcher(&config)
        ))?;
        for c in &checks {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            out.line(format_args!("  {mark}  {:<12} {}", c.check, c.detail))?;
            if let Some(fix) = &c.fix {
                out.line(format_args!("        fix: {fix}"))?;
            }
        }
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        out.line(format_args!(
            "{} passed, {} failed, {} skipped",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip)
        ))?;
    }
    Ok(if failed {
        ExitCode::from(EXIT_CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The checklist for `config`; `env` supplies the OTLP variables.
pub async fn checks(config: &Config, env: &dyn Lookup, event_timeout: Duration) -> Vec<Check> {
    let instance = InstanceId::random();
    let mut checks = Vec::new();
    let store = match runbox_core::backend::open_store(config).await {
        Ok(store) => Some(store),
        Err(e) => {
            checks.push(Check::fail(
                "store",
                format!("open the store: {}", error_chain(&e)),
                store_fix(config),
            ));
            None
        }
    };
    let store_ok = match &store {
        Some(store) => {
            let check = check_store(&**store, config, &instance).await;
            let ok = check.status == Status::Pass;
            checks.push(check);
            ok
        }
        None => false,
    };
    checks.push(match (&store, store_ok) {
        (Some(store), true) => check_events(store, config, &instance, event_timeout).await,
        _ => Check::skip("events", "skipped: the store check failed"),
    });
    checks.extend(check_job(config).await);
    checks.push(check_otlp(env).await);
    checks
}

async fn check_store(store: &dyn Store, config: &Config, instance: &InstanceId) -> Check {
    let name = format!("{PROBE_PREFIX}{}", instance.next_execution_id());
    let meta = match store
        .put(
            &name,
            Bytes::from_static(b"runbox doctor probe"),
            PutOptions::create(),
        )
        .await
    {
        Ok(meta) => meta,
        Err(e) => {
            return Check::fail(
                "store",
                format!("write {name} in {}: {}", store.describe(), error_chain(&e)),
                store_fix(config),
            );
        }
    };
    match store
        .delete(&name, Precondition::GenerationMatch(meta.generation))
        .await
    {
        Ok(()) => Check::pass(
            "store",
            format!(
                "{}: created {name} (create-only) and deleted it (generation {})",
                store.describe(),
                meta.generation
            ),
        ),
        Err(e) => Check::fail(
            "store",
            format!("delete {name}: {}", error_chain(&e)),
            store_fix(config),
        ),
    }
}

async fn check_events(
    store: &Arc<dyn Store>,
    config: &Config,
    instance: &InstanceId,
    timeout: Duration,
) -> Check {
    let source: Box<dyn EventSource> = match &config.backend {
        BackendConfig::Local(embedded) => match FsEventSource::new(&embedded.home, store.clone()) {
            Ok(source) => Box::new(source),
            Err(e) => return Check::fail("events", e.to_string(), events_fix(config)),
        },
        BackendConfig::Gcp(gcp) => {
            let mut settings = PubSubConfig::new(
                gcp.project.clone(),
                gcp.notifications_topic.clone(),
                instance.as_str(),
            )
            .with_bucket(gcp.bucket.clone());
            settings.emulator_host = gcp.pubsub_emulator_host.clone();
            match PubSubEventSource::connect(settings).await {
                Ok(source) => Box::new(source),
                Err(e) => return Check::fail("events", e.to_string(), events_fix(config)),
            }
        }
    };
    let waiters = Waiters::new();
    let notifier = Notifier::spawn(source, waiters.clone(), store.clone());
    let id = instance.next_execution_id();
    let check = probe_event(store, config, &notifier, &waiters, &id, timeout).await;
    // The subscription goes with the notifier; the probe is no result of
    // anyone's.
    notifier.shutdown().await;
    if let Err(e) = store.delete(&layout::result(&id), Precondition::None).await
        && !e.is_not_found()
    {
        tracing::warn!(error = %error_chain(&e), "deleting the doctor's probe result failed");
    }
    check
}

async fn probe_event(
    store: &Arc<dyn Store>,
    config: &Config,
    notifier: &Notifier,
    waiters: &Arc<Waiters>,
    id: &ExecutionId,
    timeout: Duration,
) -> Check {
    let name = layout::result(id);
    let waiter = match waiters.register(id.clone()) {
        Ok(w) => w,
        Err(e) => return Check::fail("events", e.to_string(), events_fix(config)),
    };
    let mut result = ExecResult {
        execution_id: id.to_string(),
        message: "runbox doctor probe; not a command's result".to_owned(),
        ..ExecResult::default()
    };
    result.set_status(ExecStatus::Rejected);
    let started = Instant::now();
    if let Err(e) =
        runbox_core::store::put_json(&**store, &name, &result, PutOptions::create()).await
    {
        return Check::fail(
            "events",
            format!("write the probe {name}: {}", error_chain(&e)),
            store_fix(config),
        );
    }
    let mut changed = notifier.stats_changed();
    let arrived = tokio::time::timeout(timeout, async {
        waiter.await?;
        // The waiter may have been resolved by the resync that follows the
        // first subscribe (a read of the object), so the event itself is
        // awaited too: delivered, or a duplicate of the resynced one.
        loop {
            let stats = notifier.stats();
            if stats.delivered + stats.duplicates >= 1 {
                return Ok(());
            }
            if changed.changed().await.is_err() {
                return Err(runbox_notifier::WaitError::NotifierStopped(
                    "the notifier stopped".to_owned(),
                ));
            }
        }
    })
    .await;
    match arrived {
        Ok(Ok(())) => Check::pass(
            "events",
            format!(
                "the completion event of {name} arrived after {} ms ({})",
                started.elapsed().as_millis(),
                notifier.source_name()
            ),
        ),
        Ok(Err(e)) => Check::fail(
            "events",
            format!("waiting for the event of {name}: {e}"),
            events_fix(config),
        ),
        Err(_) => Check::fail(
            "events",
            format!(
                "no completion event for {name} within {} s",
                timeout.as_secs_f64()
            ),
            events_fix(config),
        ),
    }
}

/// The job and permissions checks: Cloud Run launcher only.
async fn check_job(config: &Config) -> Vec<Check> {
    let LauncherConfig::CloudRun(cloud_run) = &config.launcher else {
        return vec![
            Check::skip("job", "skipped: the local launcher needs no job template"),
            Check::skip(
                "permissions",
                "skipped: the local launcher needs no job permissions",
            ),
        ];
    };
    let settings = CloudRunSettings::from_config(cloud_run);
    let job = settings.job.clone();
    let container = settings.container.clone();
    let launcher = match CloudRunLauncher::connect(settings).await {
        Ok(l) => l,
        Err(e) => {
            let detail = format!("connect to Cloud Run: {}", error_chain(&e));
            return vec![
                Check::fail(
                    "job",
                    detail,
                    "check RUNBOX_CLOUD_RUN_ENDPOINT, or Application Default Credentials (gcloud auth application-default login, or the service's account)",
                ),
                Check::skip("permissions", "skipped: Cloud Run cannot be reached"),
            ];
        }
    };
    let job_check = match launcher.get_job().await {
        Ok(found) => {
            let problems = template_problems(&found, &container, config);
            if problems.is_empty() {
                Check::pass(
                    "job",
                    format!("{job}: max_retries 0, its executors use this store"),
                )
            } else {
                Check::fail(
                    "job",
                    format!(
                        "{job}: {}",
                        problems
                            .iter()
                            .map(|p| p.problem.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    problems
                        .iter()
                        .map(|p| p.fix.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            }
        }
        Err(e) if e.is_not_found() => Check::fail(
            "job",
            format!("job template {job} does not exist"),
            format!(
                "create it (infra/terraform, or gcloud run jobs create) with one task, --max-retries 0, the runbox-executor image and env {}; or fix RUNBOX_CLOUD_RUN_JOB",
                executor_env(config)
            ),
        ),
        Err(e) => Check::fail(
            "job",
            format!("GetJob {job}: {}", error_chain(&e)),
            "check RUNBOX_CLOUD_RUN_JOB and that runbox's account may read the job (run.jobs.get)",
        ),
    };
    let permissions = match launcher.test_job_permissions(&JOB_PERMISSIONS).await {
        Ok(None) => Check::skip(
            "permissions",
            "skipped: not offered by this endpoint (testIamPermissions is UNIMPLEMENTED)",
        ),
        Ok(Some(held)) => {
            let missing: Vec<&str> = JOB_PERMISSIONS
                .iter()
                .copied()
                .filter(|p| !held.iter().any(|h| h == p))
                .collect();
            if missing.is_empty() {
                Check::pass(
                    "permissions",
                    format!("{} on {job}", JOB_PERMISSIONS.join(", ")),
                )
            } else {
                Check::fail(
                    "permissions",
                    format!("missing on {job}: {}", missing.join(", ")),
                    "grant runbox's service account roles/run.developer on the job (or a custom role with run.jobs.run, run.jobs.runWithOverrides, run.executions.get, run.executions.cancel, run.operations.get)",
                )
            }
        }
        Err(e) => Check::fail(
            "permissions",
            format!("testIamPermissions on {job}: {}", error_chain(&e)),
            "check that runbox's account can reach the Cloud Run Admin API",
        ),
    };
    vec![job_check, permissions]
}

async fn check_otlp(env: &dyn Lookup) -> Check {
    let Some((var, endpoint)) = OTLP_VARS
        .iter()
        .find_map(|v| env.get(v).filter(|e| !e.is_empty()).map(|e| (*v, e)))
    else {
        return Check::skip("otlp", "skipped: OTEL_EXPORTER_OTLP_ENDPOINT is not set");
    };
    let Some(address) = host_port(&endpoint) else {
        return Check::fail(
            "otlp",
            format!("{var}={endpoint:?} is not a URL with a host"),
            format!("set {var} to http(s)://HOST:PORT"),
        );
    };
    match tokio::time::timeout(
        OTLP_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(address.as_str()),
    )
    .await
    {
        Ok(Ok(_)) => Check::pass("otlp", format!("{var}: connected to {address}")),
        Ok(Err(e)) => Check::fail(
            "otlp",
            format!("{var}: connect to {address}: {e}"),
            format!("start the collector at {address}, or fix or unset {var}"),
        ),
        Err(_) => Check::fail(
            "otlp",
            format!(
                "{var}: no connection to {address} within {} s",
                OTLP_CONNECT_TIMEOUT.as_secs()
            ),
            format!("check the network path to {address}, or fix or unset {var}"),
        ),
    }
}

/// `host:port` of an OTLP endpoint URL; the scheme's port when it has none.
fn host_port(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    // A port after the last colon (outside an IPv6 literal's brackets).
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if has_port {
        Some(authority.to_owned())
    } else {
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        Some(format!("{authority}:{port}"))
    }
}

fn store_fix(config: &Config) -> String {
    match &config.backend {
        BackendConfig::Local(e) => format!(
            "make RUNBOX_HOME ({}) a directory this user can write",
            e.home.display()
        ),
        BackendConfig::Gcp(g) => format!(
            "check RUNBOX_BUCKET and RUNBOX_PROJECT; create the bucket (gcloud storage buckets create gs://{} --project {} --uniform-bucket-level-access) and grant runbox's account roles/storage.objectUser on it",
            g.bucket, g.project
        ),
    }
}

fn events_fix(config: &Config) -> String {
    match &config.backend {
        BackendConfig::Local(e) => format!(
            "check that {}/results is on a local file system with inotify, and fs.inotify.max_user_instances",
            e.home.display()
        ),
        BackendConfig::Gcp(g) => format!(
            "create the topic and the bucket's notification: gcloud pubsub topics create {t} --project {p}; gcloud storage buckets notifications create gs://{b} --topic=projects/{p}/topics/{t} --event-types=OBJECT_FINALIZE --object-prefix=results/ --payload-format=json; grant the Cloud Storage service agent (service-PROJECT_NUMBER@gs-project-accounts.iam.gserviceaccount.com) roles/pubsub.publisher on the topic, and runbox's account roles/pubsub.editor (it creates its subscription)",
            t = g.notifications_topic,
            p = g.project,
            b = g.bucket
        ),
    }
}

fn executor_env(config: &Config) -> String {
    match &config.backend {
        BackendConfig::Gcp(g) => format!(
            "RUNBOX_BACKEND=gcp,RUNBOX_BUCKET={},RUNBOX_PROJECT={}",
            g.bucket, g.project
        ),
        BackendConfig::Local(e) => {
            format!("RUNBOX_BACKEND=local,RUNBOX_HOME={}", e.home.display())
        }
    }
}

fn describe_backend(config: &Config) -> String {
    match &config.backend {
        BackendConfig::Local(e) => format!("embedded backend in {}", e.home.display()),
        BackendConfig::Gcp(g) => format!(
            "gcp backend gs://{} (project {}, topic {})",
            g.bucket, g.project, g.notifications_topic
        ),
    }
}

fn describe_launcher(config: &Config) -> String {
    match &config.launcher {
        LauncherConfig::Local(_) => "local launcher".to_owned(),
        LauncherConfig::CloudRun(c) => format!("Cloud Run launcher ({})", c.job),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints_become_host_and_port() {
        assert_eq!(
            host_port("http://collector:4317").as_deref(),
            Some("collector:4317")
        );
        assert_eq!(
            host_port("https://telemetry.googleapis.com").as_deref(),
            Some("telemetry.googleapis.com:443")
        );
        assert_eq!(
            host_port("http://127.0.0.1:4318/v1/traces").as_deref(),
            Some("127.0.0.1:4318")
        );
        assert_eq!(
            host_port("http://[::1]:4317").as_deref(),
            Some("[::1]:4317")
        );
        assert_eq!(host_port("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(
            host_port("localhost:4317").as_deref(),
            Some("localhost:4317")
        );
        assert_eq!(host_port("http://"), None);
    }

    #[tokio::test]
    async fn otlp_is_skipped_unset_and_fails_on_a_closed_port() {
        let unset: [(&str, &str); 0] = [];
        let check = check_otlp(&unset).await;
        assert_eq!(check.status, Status::Skip);
        // A port that was just free: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let check = check_otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]).await;
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.fix.is_some());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let check = check_otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]).await;
        assert_eq!(check.status, Status::Pass, "{check:?}");
    }
}
