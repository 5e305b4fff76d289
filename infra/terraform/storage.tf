# The one bucket: requests/, results/, logs/ keyed by execution, sessions/
# keyed by session (core/src/layout.rs).
resource "google_storage_bucket" "runbox" {
  name                        = var.bucket
  project                     = var.project
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # What `runbox gc` does, without a process (README, Retention). sessions/
  # is never aged out: it holds live workspaces and leases.
  lifecycle_rule {
    condition {
      age            = var.retention_days
      matches_prefix = ["requests/", "results/", "logs/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# The project's Cloud Storage service agent publishes the notifications; it
# exists once the Storage API is on.
data "google_storage_project_service_account" "gcs" {
  project = var.project
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_notifications" {
  project = var.project
  topic   = google_pubsub_topic.notifications.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# Completion signal: a finalize event per result object. Without the grant
# above the notification is refused, and without the notification every
# command would end through crash detection instead.
resource "google_storage_notification" "results" {
  bucket             = google_storage_bucket.runbox.name
  topic              = google_pubsub_topic.notifications.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = "results/"

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes_notifications]
}
