# syntax=docker/dockerfile:1
# The image of the Cloud Run job template (infra/terraform/run.tf): one
# `runbox-executor` per task. Build from the repository root:
#   docker build -f infra/docker/executor.Dockerfile -t REGION-docker.pkg.dev/PROJECT/runbox/executor .

FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p runbox-executor --bin runbox-executor

FROM debian:trixie-slim
# What commands expect of a shell box: bash runs every command, CA
# certificates serve both runbox's TLS calls and the commands' own, and
# python3 and git are the tools agents reach for first.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash coreutils ca-certificates python3 git \
    && rm -rf /var/lib/apt/lists/*
# The unprivileged user commands run as (RUNBOX_RUN_AS_USER in the job
# template). The executor itself stays root: it needs root to switch to
# this user and to keep the command away from its credentials.
RUN useradd --create-home --shell /bin/bash --uid 10001 --user-group runbox
COPY --from=build /src/target/release/runbox-executor /usr/local/bin/runbox-executor
ENTRYPOINT ["/usr/local/bin/runbox-executor"]
