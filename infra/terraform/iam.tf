# Two identities: the dispatcher side (`runbox serve`, or any `runbox`
# process given this account) and the executor. Every grant here is listed,
# with its reason, in README.md's permission table; a test keeps the two
# equal.

resource "google_service_account" "serve" {
  project      = var.project
  account_id   = "runbox-serve"
  display_name = "runbox serve and dispatchers"
}

resource "google_service_account" "executor" {
  project      = var.project
  account_id   = "runbox-executor"
  display_name = "runbox executor (Cloud Run job)"
}

# Each dispatcher creates, reads, pulls from and deletes its own
# notifications subscription, named at run time (`runbox-{instance}`), so
# the grant cannot name it in advance. roles/pubsub.editor would also let it
# delete topics and change IAM.
resource "google_project_iam_custom_role" "subscriber" {
  project     = var.project
  role_id     = "runboxSubscriber"
  title       = "runbox dispatcher subscriptions"
  description = "Create, read, pull from and delete the per-dispatcher notifications subscription."
  permissions = [
    "pubsub.subscriptions.consume",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.get",
  ]
}

# The topic side of creating a subscription, granted on the notifications
# topic only.
resource "google_project_iam_custom_role" "attach" {
  project     = var.project
  role_id     = "runboxTopicAttach"
  title       = "runbox attach subscription"
  description = "Attach a subscription to the topic it is granted on."
  permissions = ["pubsub.topics.attachSubscription"]
}

# Launch and follow executions of the one job template. Predefined roles
# either lack ListExecutions/GetExecution (roles/run.jobsExecutorWithOverrides)
# or can also change the job (roles/run.developer).
resource "google_project_iam_custom_role" "launcher" {
  project     = var.project
  role_id     = "runboxLauncher"
  title       = "runbox launcher"
  description = "Run the job template with overrides, read, list and cancel its executions."
  permissions = [
    "run.executions.cancel",
    "run.executions.get",
    "run.executions.list",
    "run.jobs.get",
    "run.jobs.run",
    "run.jobs.runWithOverrides",
  ]
}

# RunJob's long-running operations live under the location, not the job,
# so WaitOperation needs a project-level grant.
resource "google_project_iam_custom_role" "operations" {
  project     = var.project
  role_id     = "runboxOperations"
  title       = "runbox RunJob operations"
  description = "Wait on and read the long-running operations RunJob returns."
  permissions = ["run.operations.get"]
}

locals {
  serve_member    = "serviceAccount:${google_service_account.serve.email}"
  executor_member = "serviceAccount:${google_service_account.executor.email}"
}

# --- the dispatcher side ---

resource "google_storage_bucket_iam_member" "serve_objects" {
  bucket = google_storage_bucket.runbox.name
  role   = "roles/storage.objectUser"
  member = local.serve_member
}

resource "google_project_iam_member" "serve_subscriptions" {
  project = var.project
  role    = google_project_iam_custom_role.subscriber.id
  member  = local.serve_member
}

resource "google_pubsub_topic_iam_member" "serve_attach_notifications" {
  project = var.project
  topic   = google_pubsub_topic.notifications.name
  role    = google_project_iam_custom_role.attach.id
  member  = local.serve_member
}

# A released session lease is announced on the notifications topic.
resource "google_pubsub_topic_iam_member" "serve_publish_notifications" {
  project = var.project
  topic   = google_pubsub_topic.notifications.name
  role    = "roles/pubsub.publisher"
  member  = local.serve_member
}

# Warm executions: the dispatcher creates each one's subscription on the
# commands topic (runboxSubscriber covers the subscription side) and
# publishes its later commands there.
resource "google_pubsub_topic_iam_member" "serve_attach_commands" {
  project = var.project
  topic   = google_pubsub_topic.commands.name
  role    = google_project_iam_custom_role.attach.id
  member  = local.serve_member
}

resource "google_pubsub_topic_iam_member" "serve_publish_commands" {
  project = var.project
  topic   = google_pubsub_topic.commands.name
  role    = "roles/pubsub.publisher"
  member  = local.serve_member
}

resource "google_pubsub_subscription_iam_member" "serve_pull_requests" {
  project      = var.project
  subscription = google_pubsub_subscription.requests.name
  role         = "roles/pubsub.subscriber"
  member       = local.serve_member
}

resource "google_pubsub_topic_iam_member" "serve_publish_completions" {
  project = var.project
  topic   = google_pubsub_topic.completions.name
  role    = "roles/pubsub.publisher"
  member  = local.serve_member
}

resource "google_cloud_run_v2_job_iam_member" "serve_launch" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_job.executor.name
  role     = google_project_iam_custom_role.launcher.id
  member   = local.serve_member
}

resource "google_project_iam_member" "serve_operations" {
  project = var.project
  role    = google_project_iam_custom_role.operations.id
  member  = local.serve_member
}

# Only for Cloud Trace's own endpoint: runbox sends it the serve account's
# token; a collector elsewhere authenticates its own way.
resource "google_project_iam_member" "serve_traces" {
  count   = startswith(var.trace_endpoint, "https://telemetry.googleapis.com") ? 1 : 0
  project = var.project
  role    = "roles/cloudtrace.agent"
  member  = local.serve_member
}

resource "google_secret_manager_secret_iam_member" "serve_token" {
  project   = var.project
  secret_id = google_secret_manager_secret.api_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.serve_member
}

# --- the executor ---

# Nothing. A command can reach the executor account's token through the
# metadata server (README, Least privilege), so the account holds no role:
# each execution works with a token the dispatcher mints for it, bounded to
# its session's objects and its own request, result and logs.
