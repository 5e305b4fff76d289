# Holds the images built from infra/docker/: `executor` and `serve`.
resource "google_artifact_registry_repository" "runbox" {
  project       = var.project
  location      = var.region
  repository_id = var.repository
  format        = "DOCKER"
  description   = "runbox executor and serve images"

  depends_on = [google_project_service.apis]
}

locals {
  image_base     = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.runbox.repository_id}"
  executor_image = "${local.image_base}/executor:${var.image_tag}"
  serve_image    = "${local.image_base}/serve:${var.image_tag}"
}
