variable "project" {
  description = "Google Cloud project id everything is created in (RUNBOX_PROJECT)."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the Cloud Run job and service, and the image repository."
  type        = string
  default     = "us-central1"
}

variable "bucket" {
  description = "Name of the Cloud Storage bucket holding requests, results, logs and sessions (RUNBOX_BUCKET). Bucket names are global."
  type        = string
}

variable "notifications_topic" {
  description = "Topic of the bucket's results/ finalize notifications (RUNBOX_NOTIFICATIONS_TOPIC)."
  type        = string
  default     = "runbox-notifications"
}

variable "commands_topic" {
  description = "Topic on which dispatchers hand later commands to warm executions (RUNBOX_COMMANDS_TOPIC)."
  type        = string
  default     = "runbox-commands"
}

variable "requests_topic" {
  description = "Topic callers publish ExecRequest messages to."
  type        = string
  default     = "runbox-requests"
}

variable "requests_subscription" {
  description = "Subscription on the requests topic shared by every `runbox serve` instance (RUNBOX_REQUESTS_SUBSCRIPTION)."
  type        = string
  default     = "runbox-requests"
}

variable "completions_topic" {
  description = "Topic `runbox serve` publishes ExecCompleted messages to (RUNBOX_COMPLETIONS_TOPIC)."
  type        = string
  default     = "runbox-completions"
}

variable "dead_letter_topic" {
  description = "Topic receiving requests that could not be delivered after max_delivery_attempts."
  type        = string
  default     = "runbox-dead-letter"
}

variable "max_delivery_attempts" {
  description = "Deliveries of one request message before it goes to the dead-letter topic (5-100)."
  type        = number
  default     = 5
}

variable "retention_days" {
  description = "Age in days after which requests/, results/ and logs/ objects are deleted (README, Retention)."
  type        = number
  default     = 7
}

variable "job" {
  description = "Name of the Cloud Run job template every execution runs."
  type        = string
  default     = "runbox-executor"
}

variable "service" {
  description = "Name of the Cloud Run service running `runbox serve`."
  type        = string
  default     = "runbox-serve"
}

variable "repository" {
  description = "Artifact Registry repository holding the executor and serve images."
  type        = string
  default     = "runbox"
}

variable "image_tag" {
  description = "Tag of the executor and serve images in the repository."
  type        = string
  default     = "latest"
}

variable "executor_cpu" {
  description = "CPU limit of one execution's container."
  type        = string
  default     = "1"
}

variable "executor_memory" {
  description = "Memory limit of one execution's container (also bounds the workspace restored into /tmp)."
  type        = string
  default     = "2Gi"
}

variable "executor_timeout" {
  description = "Task timeout of the job template; every RunJob overrides it with the command's timeout plus a margin."
  type        = string
  default     = "3600s"
}

variable "run_as_user" {
  description = "Unprivileged user the executor runs commands as (RUNBOX_RUN_AS_USER); created in infra/docker/executor.Dockerfile."
  type        = string
  default     = "runbox"
}

variable "serve_cpu" {
  description = "CPU limit of one `runbox serve` instance."
  type        = string
  default     = "1"
}

variable "serve_memory" {
  description = "Memory limit of one `runbox serve` instance."
  type        = string
  default     = "1Gi"
}

variable "serve_min_instances" {
  description = "Instances of `runbox serve` kept running; at least one keeps the request subscription pulled."
  type        = number
  default     = 1
}

variable "serve_max_instances" {
  description = "Most instances of `runbox serve`."
  type        = number
  default     = 10
}

variable "serve_concurrency" {
  description = "HTTP requests one `runbox serve` instance takes at once."
  type        = number
  default     = 80
}

variable "runjob_per_minute" {
  description = "RunJob calls per minute (RUNBOX_RUNJOB_PER_MINUTE); keep under the project's Cloud Run quota."
  type        = number
  default     = 60
}

variable "max_running" {
  description = "Executions one `runbox serve` instance keeps running at once (RUNBOX_MAX_RUNNING)."
  type        = number
  default     = 100
}

variable "api_token_secret" {
  description = "Secret Manager secret holding the bearer token of `runbox serve` (RUNBOX_API_TOKEN); add its version out of band."
  type        = string
  default     = "runbox-api-token"
}

variable "trace_endpoint" {
  description = "OTLP endpoint `runbox serve` exports its spans to (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), e.g. https://telemetry.googleapis.com for Cloud Trace, which grants the serve account roles/cloudtrace.agent. Empty: no traces."
  type        = string
  default     = ""
}

variable "executor_trace_endpoint" {
  description = "OTLP endpoint the executor exports its spans to (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT in the job template): a collector it reaches without Google credentials, since its account holds no role (commands can read that account's token). Empty: executors export nothing."
  type        = string
  default     = ""
}
