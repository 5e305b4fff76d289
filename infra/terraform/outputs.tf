output "service_url" {
  description = "URL of `runbox serve`."
  value       = google_cloud_run_v2_service.serve.uri
}

output "job" {
  description = "Job template name, the value of RUNBOX_CLOUD_RUN_JOB for any other dispatcher."
  value       = google_cloud_run_v2_job.executor.id
}

output "image_repository" {
  description = "Where to push the images built from infra/docker/."
  value       = local.image_base
}

output "serve_service_account" {
  description = "Account a `runbox` process outside Cloud Run impersonates to dispatch."
  value       = google_service_account.serve.email
}
