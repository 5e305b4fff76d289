//! The deployment (`infra/terraform/`, `infra/docker/`) checked without a
//! cloud: `tests/python/check_deploy.py` parses every `.tf` with
//! python-hcl2 and compares it with the code, the permission tables and
//! the built binaries. Each check is then seen to fail on a copy of
//! `infra/` broken on purpose, so none of them passes vacuously.

use std::path::{Path, PathBuf};
use std::process::Output;

use futures::StreamExt;
use runbox_tests::embedded::{binary, within};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

async fn run_checks(infra: &Path) -> Output {
    let root = repo_root();
    let bin_dir = binary("runbox")
        .parent()
        .expect("binary directory")
        .to_owned();
    let out = within(
        120,
        tokio::process::Command::new("python3")
            .arg(root.join("tests/python/check_deploy.py"))
            .arg("--repo")
            .arg(&root)
            .arg("--infra")
            .arg(infra)
            .arg("--bin-dir")
            .arg(bin_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'hcl2'"),
        "python-hcl2 is not installed: run infra/local/install-emulators\n{stderr}"
    );
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// One deliberate breakage: in `file` (under `infra/`), the `nth`
/// occurrence of `from` becomes `to`, and the check named `check` must
/// report it.
struct Breakage {
    file: &'static str,
    from: &'static str,
    nth: usize,
    to: &'static str,
    check: &'static str,
}

const fn breaks(
    file: &'static str,
    from: &'static str,
    to: &'static str,
    check: &'static str,
) -> Breakage {
    Breakage {
        file,
        from,
        nth: 0,
        to,
        check,
    }
}

const fn breaks_nth(
    file: &'static str,
    from: &'static str,
    nth: usize,
    to: &'static str,
    check: &'static str,
) -> Breakage {
    Breakage {
        file,
        from,
        nth,
        to,
        check,
    }
}

const RUN: &str = "terraform/run.tf";
const IAM: &str = "terraform/iam.tf";
const STORAGE: &str = "terraform/storage.tf";
const PUBSUB: &str = "terraform/pubsub.tf";
const VARS: &str = "terraform/variables.tf";
const DOC: &str = "terraform/README.md";
const EXECUTOR: &str = "docker/executor.Dockerfile";
const SERVE: &str = "docker/serve.Dockerfile";

/// Breakages of the job template, the service's environment and the wiring.
const WIRING: &[Breakage] = &[
    breaks(RUN, "max_retries = 0", "max_retries = 3", "job.max_retries"),
    breaks(
        RUN,
        "value = google_pubsub_topic.commands.name",
        "value = google_pubsub_topic.notifications.name",
        "service.env.commands",
    ),
    breaks(RUN, "task_count  = 1", "task_count  = 2", "job.task_count"),
    breaks(
        RUN,
        "\"EXECUTION_ENVIRONMENT_GEN2\"",
        "\"EXECUTION_ENVIRONMENT_GEN1\"",
        "job.execution_environment",
    ),
    breaks(
        RUN,
        "      containers {\n        image = local.executor_image",
        "      containers {\n        image = \"proxy\"\n      }\n      containers {\n        image = local.executor_image",
        "job.containers",
    ),
    breaks(RUN, "cpu    = var.executor_cpu\n", "", "job.resources"),
    breaks(
        RUN,
        "\"RUNBOX_RUN_AS_USER\"",
        "\"RUNBOX_RUN_AS\"",
        "job.env.known",
    ),
    // The optional (dynamic) variables are checked like the fixed ones.
    breaks(
        RUN,
        "\"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT\"",
        "\"OTEL_EXPORTER_OTLP_TRACE_ENDPOINT\"",
        "job.env.known",
    ),
    breaks_nth(
        RUN,
        "\"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT\"",
        1,
        "\"OTEL_TRACES_ENDPOINT\"",
        "service.env.known",
    ),
    breaks(
        RUN,
        "\"RUNBOX_BUCKET\"",
        "\"RUNBOX_LOG\"",
        "job.env.required",
    ),
    breaks(
        RUN,
        "\"RUNBOX_CLOUD_RUN_JOB\"",
        "\"RUNBOX_CLOUD_RUN_ENDPOINT\"",
        "service.env.required",
    ),
    breaks(
        RUN,
        "\"RUNBOX_RUN_AS_USER\"",
        "\"RUNBOX_EXECUTION_ID\"",
        "job.env.override",
    ),
    breaks(
        RUN,
        "value = \"gcp\"",
        "value = \"local\"",
        "job.env.backend",
    ),
    breaks(
        RUN,
        "value = \"cloudrun\"",
        "value = \"local\"",
        "service.env.launcher",
    ),
    breaks_nth(
        RUN,
        "value = google_storage_bucket.runbox.name",
        1,
        "value = var.bucket",
        "service.env.bucket",
    ),
    breaks(
        RUN,
        "value = google_cloud_run_v2_job.executor.id",
        "value = \"projects/p/locations/l/jobs/other\"",
        "service.env.job",
    ),
    breaks(
        RUN,
        "value = google_pubsub_topic.notifications.name",
        "value = google_pubsub_topic.requests.name",
        "service.env.notifications",
    ),
    breaks(
        RUN,
        "value = google_pubsub_topic.completions.name",
        "value = google_pubsub_topic.notifications.name",
        "service.env.completions",
    ),
    breaks(
        RUN,
        "value = google_pubsub_subscription.requests.name",
        "value = \"runbox-requests\"",
        "service.env.requests",
    ),
    breaks(
        RUN,
        "service_account = google_service_account.executor.email",
        "service_account = google_service_account.serve.email",
        "identities",
    ),
    breaks(
        RUN,
        "startup_probe {\n        tcp_socket {\n          port = 8080\n        }",
        "startup_probe {\n        http_get {\n          path = \"/readyz\"\n        }",
        "service.probes",
    ),
    breaks(
        STORAGE,
        "object_name_prefix = \"results/\"",
        "object_name_prefix = \"result/\"",
        "notification.prefix",
    ),
    breaks(
        STORAGE,
        "[\"OBJECT_FINALIZE\"]",
        "[\"OBJECT_FINALIZE\", \"OBJECT_DELETE\"]",
        "notification.events",
    ),
    breaks(
        STORAGE,
        "\"JSON_API_V1\"",
        "\"NONE\"",
        "notification.payload",
    ),
    breaks(
        STORAGE,
        "depends_on = [google_pubsub_topic_iam_member.gcs_publishes_notifications]",
        "depends_on = []",
        "notification.after_grant",
    ),
    breaks(
        STORAGE,
        "topic   = google_pubsub_topic.notifications.name",
        "topic   = google_pubsub_topic.completions.name",
        "grants.storage_agent",
    ),
    breaks(
        STORAGE,
        "[\"requests/\", \"results/\", \"logs/\"]",
        "[\"requests/\", \"results/\"]",
        "bucket.lifecycle.prefixes",
    ),
    breaks(
        STORAGE,
        "uniform_bucket_level_access = true",
        "uniform_bucket_level_access = false",
        "bucket.uniform",
    ),
    breaks(
        VARS,
        "default     = 7\n",
        "default     = 30\n",
        "bucket.lifecycle.age",
    ),
    breaks(
        VARS,
        "default     = \"runbox-notifications\"",
        "default     = \"runbox-events\"",
        "topic.default",
    ),
    breaks(
        PUBSUB,
        "dead_letter_topic     = google_pubsub_topic.dead_letter.id",
        "dead_letter_topic     = google_pubsub_topic.requests.id",
        "requests.dead_letter",
    ),
    breaks(
        PUBSUB,
        "enable_message_ordering = true",
        "enable_message_ordering = false",
        "requests.ordering",
    ),
    breaks(
        PUBSUB,
        "topic                      = google_pubsub_topic.dead_letter.id",
        "topic                      = google_pubsub_topic.completions.id",
        "dead_letter.kept",
    ),
    breaks(
        PUBSUB,
        "ttl = \"\"",
        "ttl = \"86400s\"",
        "subscription.expiry",
    ),
    breaks(
        PUBSUB,
        "max_delivery_attempts = var.max_delivery_attempts",
        "max_delivery_attempts = 1000",
        "requests.attempts",
    ),
];

/// Breakages of the grants and of the permission tables.
const GRANTS: &[Breakage] = &[
    breaks(
        DOC,
        "| `serve` | `roles/cloudtrace.agent` |",
        "| `serve` | `roles/cloudtrace.user` |",
        "docs.permissions",
    ),
    breaks(
        IAM,
        "topic   = google_pubsub_topic.commands.name\n  role    = \"roles/pubsub.publisher\"",
        "topic   = google_pubsub_topic.notifications.name\n  role    = \"roles/pubsub.publisher\"",
        "grants.commands",
    ),
    breaks(IAM, "    \"run.executions.list\",\n", "", "grants.needed"),
    breaks(
        IAM,
        "    \"run.executions.list\",\n",
        "",
        "docs.custom_roles",
    ),
    breaks(
        IAM,
        "permissions = [\"run.operations.get\"]",
        "permissions = [\"run.operations.get\", \"run.operations.delete\"]",
        "docs.custom_roles",
    ),
    breaks(
        IAM,
        "role    = \"roles/pubsub.publisher\"\n  member  = local.serve_member",
        "role    = \"roles/pubsub.viewer\"\n  member  = local.serve_member",
        "docs.permissions",
    ),
    breaks(
        DOC,
        "| `serve` | `runboxOperations` | `project` |",
        "| `serve` | `runboxOperation` | `project` |",
        "docs.permissions",
    ),
    breaks(
        IAM,
        "resource \"google_project_iam_member\" \"serve_operations\"",
        "resource \"google_project_iam_member\" \"serve_operations\" {\n  project = var.project\n  role    = \"roles/run.developer\"\n  member  = local.serve_member\n}\n\nresource \"google_project_iam_member\" \"serve_operations_2\"",
        "grants.width",
    ),
];

/// What an attacker would go for: a command reaching more through the
/// executor's token (the metadata server hands it to any process of the
/// task), commands running as root, the bucket made public, the API token
/// in the configuration.
const ATTACKER: &[Breakage] = &[
    // Cloud Trace for the executor too: a command could then write spans
    // into the project's traces with the account's token.
    breaks(
        IAM,
        "role    = \"roles/cloudtrace.agent\"\n  member  = local.serve_member",
        "role    = \"roles/cloudtrace.agent\"\n  member  = local.executor_member",
        "grants.executor",
    ),
    breaks(
        IAM,
        "topic   = google_pubsub_topic.completions.name\n  role    = \"roles/pubsub.publisher\"\n  member  = local.serve_member",
        "topic   = google_pubsub_topic.completions.name\n  role    = \"roles/pubsub.publisher\"\n  member  = local.executor_member",
        "grants.executor",
    ),
    breaks(
        IAM,
        "resource \"google_storage_bucket_iam_member\" \"serve_objects\" {",
        "resource \"google_storage_bucket_iam_member\" \"executor_objects\" {\n  bucket = google_storage_bucket.runbox.name\n  role   = \"roles/storage.objectUser\"\n  member = local.executor_member\n}\n\nresource \"google_storage_bucket_iam_member\" \"serve_objects\" {",
        "grants.executor",
    ),
    breaks(
        IAM,
        "role   = \"roles/storage.objectUser\"\n  member = local.serve_member",
        "role   = \"roles/storage.admin\"\n  member = local.serve_member",
        "grants.width",
    ),
    breaks(
        IAM,
        "role   = \"roles/storage.objectUser\"\n  member = local.serve_member",
        "role   = \"roles/storage.objectUser\"\n  member = \"allUsers\"",
        "grants.public",
    ),
    breaks(
        STORAGE,
        "public_access_prevention    = \"enforced\"",
        "public_access_prevention    = \"inherited\"",
        "bucket.public",
    ),
    breaks(
        RUN,
        "name = \"RUNBOX_API_TOKEN\"",
        "name = \"RUNBOX_API_TOKEN\"\n        value = \"0123456789abcdef\"",
        "service.env.token",
    ),
    breaks(
        EXECUTOR,
        "ENTRYPOINT",
        "USER runbox\nENTRYPOINT",
        "executor.Dockerfile.root",
    ),
    breaks(
        EXECUTOR,
        "--user-group runbox",
        "--user-group agent",
        "executor.Dockerfile.run_as_user",
    ),
    breaks(SERVE, "USER runbox\n", "", "serve.Dockerfile.unprivileged"),
];

/// Breakages of the Dockerfiles.
const IMAGES: &[Breakage] = &[
    breaks(
        EXECUTOR,
        "/usr/local/bin/runbox-executor\"]",
        "/usr/local/bin/runbox-exec\"]",
        "executor.Dockerfile.entrypoint",
    ),
    breaks(
        EXECUTOR,
        "ENTRYPOINT [\"/usr/local/bin/runbox-executor\"]",
        "ENTRYPOINT /usr/local/bin/runbox-executor",
        "executor.Dockerfile.entrypoint",
    ),
    breaks(
        EXECUTOR,
        "--bin runbox-executor",
        "--bin runbox",
        "executor.Dockerfile.build",
    ),
    breaks(
        EXECUTOR,
        " python3 git",
        " python3",
        "executor.Dockerfile.packages",
    ),
    breaks(
        EXECUTOR,
        "FROM rust:1.95-slim-trixie AS build",
        "FROM debian:trixie-slim AS build",
        "executor.Dockerfile.build",
    ),
    breaks(
        EXECUTOR,
        "FROM debian:trixie-slim",
        "FROM ubuntu:24.04",
        "executor.Dockerfile.base",
    ),
    breaks(
        SERVE,
        "\"/usr/local/bin/runbox\", \"serve\"]",
        "\"/usr/local/bin/runbox\", \"serv\"]",
        "serve.Dockerfile.arguments",
    ),
    breaks(
        SERVE,
        "COPY --from=build /src/target/release/runbox /usr/local/bin/runbox",
        "COPY --from=build /src/target/release/runbox /usr/bin/runbox",
        "serve.Dockerfile.copy",
    ),
];

#[tokio::test]
async fn the_deployment_matches_the_code() {
    let out = run_checks(&repo_root().join("infra")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deploy checks: ok"), "{stdout}");
}

/// Applies each breakage to its own copy of `infra/` and runs the checks
/// on it, two at a time; every one must fail with its check named.
async fn each_breakage_fails(breakages: &[Breakage]) {
    let infra = repo_root().join("infra");
    let runs = breakages.iter().map(|b| {
        let infra = infra.clone();
        async move {
            let dir = tempfile::tempdir().expect("tempdir");
            for sub in ["terraform", "docker"] {
                copy_dir(&infra.join(sub), &dir.path().join(sub));
            }
            let path = dir.path().join(b.file);
            let text = std::fs::read_to_string(&path).expect("read file");
            let at = text
                .match_indices(b.from)
                .nth(b.nth)
                .unwrap_or_else(|| panic!("{}: {:?} (#{}) not found", b.file, b.from, b.nth))
                .0;
            let broken = format!("{}{}{}", &text[..at], b.to, &text[at + b.from.len()..]);
            std::fs::write(&path, broken).expect("write file");
            let out = run_checks(dir.path()).await;
            (b, out)
        }
    });
    let results: Vec<_> = futures::stream::iter(runs)
        .buffer_unordered(2)
        .collect()
        .await;
    let mut missed = Vec::new();
    for (b, out) in results {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let named = stdout.contains(&format!("FAIL [{}]", b.check));
        if out.status.success() || !named {
            missed.push(format!(
                "{}: {:?} -> {:?} should fail [{}]; got status {:?}:\n{stdout}{}",
                b.file,
                b.from,
                b.to,
                b.check,
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

#[tokio::test]
async fn each_wiring_check_catches_its_breakage() {
    within(300, each_breakage_fails(WIRING)).await;
}

#[tokio::test]
async fn each_grant_check_catches_its_breakage() {
    within(300, each_breakage_fails(GRANTS)).await;
}

#[tokio::test]
async fn each_image_check_catches_its_breakage() {
    within(300, each_breakage_fails(IMAGES)).await;
}

#[tokio::test]
async fn an_attacker_gets_no_more_than_the_deployment_needs() {
    within(300, each_breakage_fails(ATTACKER)).await;
}
