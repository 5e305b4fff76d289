# Completion events of the bucket. Every dispatcher (`runbox` on a machine,
# each `runbox serve` instance) creates its own subscription here at start
# and deletes it at a graceful shutdown, so none is declared.
resource "google_pubsub_topic" "notifications" {
  name    = var.notifications_topic
  project = var.project

  depends_on = [google_project_service.apis]
}

# Later commands of warm sessions, for their running executions. Each warm
# execution gets its own subscription, filtered on its session, created by
# the dispatcher that starts it and deleted when it ends (it expires after a
# day unused), so none is declared.
resource "google_pubsub_topic" "commands" {
  name    = var.commands_topic
  project = var.project

  depends_on = [google_project_service.apis]
}

# Requests published by callers of `runbox serve`, one ordering key per session.
resource "google_pubsub_topic" "requests" {
  name    = var.requests_topic
  project = var.project

  depends_on = [google_project_service.apis]
}

# ExecCompleted answers, one per request.
resource "google_pubsub_topic" "completions" {
  name    = var.completions_topic
  project = var.project

  depends_on = [google_project_service.apis]
}

# Requests that kept failing end here instead of being redelivered forever.
resource "google_pubsub_topic" "dead_letter" {
  name    = var.dead_letter_topic
  project = var.project

  depends_on = [google_project_service.apis]
}

# Shared by every `runbox serve` instance: each request goes to one of them.
resource "google_pubsub_subscription" "requests" {
  name                    = var.requests_subscription
  project                 = var.project
  topic                   = google_pubsub_topic.requests.id
  ack_deadline_seconds    = 60
  enable_message_ordering = true

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "1s"
    maximum_backoff = "60s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

# A topic without a subscription drops what is published to it: this one
# keeps dead letters for an operator to read.
resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${var.dead_letter_topic}-inspect"
  project                    = var.project
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the project's Pub/Sub service agent: it must be
# able to publish to the dead-letter topic and to ack on the source
# subscription.
locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letters" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_requests" {
  project      = var.project
  subscription = google_pubsub_subscription.requests.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
