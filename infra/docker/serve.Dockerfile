# syntax=docker/dockerfile:1
# The image of the `runbox serve` Cloud Run service (infra/terraform/run.tf).
# Build from the repository root:
#   docker build -f infra/docker/serve.Dockerfile -t REGION-docker.pkg.dev/PROJECT/runbox/serve .

FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p runbox-cli --bin runbox

FROM debian:trixie-slim
# CA certificates for the TLS calls to Cloud Storage, Pub/Sub and Cloud Run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# serve launches nothing locally (RUNBOX_LAUNCHER=cloudrun), so it needs
# no root.
RUN useradd --no-create-home --shell /usr/sbin/nologin --uid 10001 --user-group runbox
COPY --from=build /src/target/release/runbox /usr/local/bin/runbox
USER runbox
ENTRYPOINT ["/usr/local/bin/runbox", "serve"]
