# The job template every execution runs: RunJob overrides only
# RUNBOX_EXECUTION_ID (and TRACEPARENT) in the container's env, the task
# count and the timeout; everything else is fixed here.
resource "google_cloud_run_v2_job" "executor" {
  name     = var.job
  project  = var.project
  location = var.region

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.executor.email
      # A retried task would run the command a second time; RunJob's
      # overrides cannot set this, so the template must.
      max_retries = 0
      timeout     = var.executor_timeout
      # A full Linux kernel surface: process groups, setuid to the command's
      # user, /proc as the executor expects.
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

      # One container only: the overrides name none, which Cloud Run accepts
      # only for a single-container template.
      containers {
        image = local.executor_image

        resources {
          limits = {
            cpu    = var.executor_cpu
            memory = var.executor_memory
          }
        }

        env {
          name  = "RUNBOX_BACKEND"
          value = "gcp"
        }
        env {
          name  = "RUNBOX_BUCKET"
          value = google_storage_bucket.runbox.name
        }
        env {
          name  = "RUNBOX_PROJECT"
          value = var.project
        }
        env {
          name  = "RUNBOX_RUN_AS_USER"
          value = var.run_as_user
        }
        # The executor's account holds no role, so Cloud Trace's endpoint
        # would refuse it: only a collector that needs no Google token.
        dynamic "env" {
          for_each = var.executor_trace_endpoint == "" ? [] : [var.executor_trace_endpoint]
          content {
            name  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            value = env.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.apis]
}

# The bearer token every `runbox serve` route but /healthz requires; serve
# refuses to listen on a public address without one. Add a version before
# the first apply of the service:
#   openssl rand -hex 32 | gcloud secrets versions add runbox-api-token --data-file=-
resource "google_secret_manager_secret" "api_token" {
  project   = var.project
  secret_id = var.api_token_secret

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_run_v2_service" "serve" {
  name     = var.service
  project  = var.project
  location = var.region
  ingress  = "INGRESS_TRAFFIC_ALL"

  template {
    service_account                  = google_service_account.serve.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    max_instance_request_concurrency = var.serve_concurrency
    # An exec request lasts as long as its command.
    timeout = "3600s"

    scaling {
      min_instance_count = var.serve_min_instances
      max_instance_count = var.serve_max_instances
    }

    containers {
      image = local.serve_image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.serve_cpu
          memory = var.serve_memory
        }
        # The request-topic consumer and the notifications stream work
        # between HTTP requests.
        cpu_idle = false
      }

      env {
        name  = "RUNBOX_BACKEND"
        value = "gcp"
      }
      env {
        name  = "RUNBOX_BUCKET"
        value = google_storage_bucket.runbox.name
      }
      env {
        name  = "RUNBOX_PROJECT"
        value = var.project
      }
      env {
        name  = "RUNBOX_NOTIFICATIONS_TOPIC"
        value = google_pubsub_topic.notifications.name
      }
      env {
        name  = "RUNBOX_COMMANDS_TOPIC"
        value = google_pubsub_topic.commands.name
      }
      env {
        name  = "RUNBOX_LAUNCHER"
        value = "cloudrun"
      }
      env {
        name  = "RUNBOX_CLOUD_RUN_JOB"
        value = google_cloud_run_v2_job.executor.id
      }
      env {
        name  = "RUNBOX_RUNJOB_PER_MINUTE"
        value = tostring(var.runjob_per_minute)
      }
      env {
        name  = "RUNBOX_MAX_RUNNING"
        value = tostring(var.max_running)
      }
      env {
        name  = "RUNBOX_REQUESTS_SUBSCRIPTION"
        value = google_pubsub_subscription.requests.name
      }
      env {
        name  = "RUNBOX_COMPLETIONS_TOPIC"
        value = google_pubsub_topic.completions.name
      }
      dynamic "env" {
        for_each = var.trace_endpoint == "" ? [] : [var.trace_endpoint]
        content {
          name  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
          value = env.value
        }
      }
      # Cloud Run sends SIGKILL 10 s after SIGTERM: drain within that.
      env {
        name  = "RUNBOX_DRAIN_SECS"
        value = "8"
      }
      env {
        name = "RUNBOX_API_TOKEN"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.api_token.secret_id
            version = "latest"
          }
        }
      }

      # /readyz sits behind the bearer token, which probes cannot send.
      startup_probe {
        tcp_socket {
          port = 8080
        }
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.serve_token]
}

variable "serve_invokers" {
  description = "Principals allowed to call the service through Cloud Run IAM (roles/run.invoker), e.g. [\"user:alice@example.com\"]."
  type        = list(string)
  default     = []
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = toset(var.serve_invokers)
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.serve.name
  role     = "roles/run.invoker"
  member   = each.value
}
