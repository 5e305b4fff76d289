"""Checks the deployment in infra/terraform/ and infra/docker/ against the code.

Run by tests/tests/deploy.rs as

    python3 check_deploy.py --repo ROOT --infra DIR --bin-dir DIR

No cloud and no terraform binary: every `.tf` file is parsed with
python-hcl2 (a real HCL2 parser) and compared with what runbox reads and
writes (core/src/config.rs, core/src/layout.rs, core/src/contract.rs, every
string constant naming an environment variable in the sources), with the
permission tables of infra/terraform/README.md, the retention rule of
README.md and docs/openapi.json. The Dockerfiles are read statically; their
entrypoints are compared with the binaries `cargo metadata` lists.

`--infra` may point at a modified copy of infra/ (the test breaks copies on
purpose to see each check fail). Prints `deploy checks: ok (N checks)` and
exits 0, or prints one `FAIL [check] ...` line per problem and exits 1.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import hcl2

# Variables the deployment may set before runbox reads them: the request
# topic of `runbox serve` (its env names are fixed by the feature's spec).
# A name here is accepted while no source reads it; once one does, the
# source scan accepts it anyway.
PENDING_ENV = {"RUNBOX_REQUESTS_SUBSCRIPTION", "RUNBOX_COMPLETIONS_TOPIC"}

# What the dispatcher side calls, as IAM permissions: Cloud Storage objects
# (store), the notifications subscription it owns (notifier/src/pubsub_source.rs),
# the lease announcement (notifier/src/pubsub_announce.rs), the request
# topic and its completions, and the Cloud Run launcher
# (dispatcher/src/launcher/cloud_run/).
SERVE_NEEDS = {
    "storage.objects.create",
    "storage.objects.get",
    "storage.objects.list",
    "storage.objects.delete",
    "pubsub.subscriptions.create",
    "pubsub.topics.attachSubscription",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.consume",
    "pubsub.subscriptions.delete",
    "pubsub.topics.publish",
    "run.jobs.run",
    "run.jobs.runWithOverrides",
    "run.executions.get",
    "run.executions.list",
    "run.executions.cancel",
    "run.operations.get",
}
# The executor's account needs nothing: each execution uses the downscoped
# token its dispatcher minted (from the serve account's own storage role).
EXECUTOR_NEEDS = set()

# The permissions of the predefined roles the deployment uses (from Google's
# role reference), as far as the checks above depend on them.
PREDEFINED = {
    "roles/storage.objectUser": {
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
        "storage.objects.list",
        "storage.objects.update",
        "storage.objects.restore",
        "storage.multipartUploads.create",
        "storage.multipartUploads.abort",
        "storage.multipartUploads.list",
        "storage.multipartUploads.listParts",
    },
    "roles/pubsub.publisher": {"pubsub.topics.publish"},
    "roles/pubsub.subscriber": {
        "pubsub.subscriptions.consume",
        "pubsub.topics.attachSubscription",
        "pubsub.snapshots.seek",
    },
    "roles/secretmanager.secretAccessor": {"secretmanager.versions.access"},
    "roles/run.invoker": {"run.routes.invoke", "run.jobs.run"},
    "roles/cloudtrace.agent": {"cloudtrace.traces.patch", "telemetry.traces.write"},
}
# Roles far wider than anything runbox calls.
TOO_WIDE = re.compile(
    r"^roles/(owner|editor|viewer|[a-z]+\.admin|run\.developer|pubsub\.editor|"
    r"storage\.objectAdmin|iam\.serviceAccount(User|TokenCreator))$"
)

IAM_MEMBER_TYPES = {
    "google_project_iam_member": None,
    "google_storage_bucket_iam_member": ("bucket", "google_storage_bucket"),
    "google_pubsub_topic_iam_member": ("topic", "google_pubsub_topic"),
    "google_pubsub_subscription_iam_member": ("subscription", "google_pubsub_subscription"),
    "google_cloud_run_v2_job_iam_member": ("name", "google_cloud_run_v2_job"),
    "google_cloud_run_v2_service_iam_member": ("name", "google_cloud_run_v2_service"),
    "google_secret_manager_secret_iam_member": ("secret_id", "google_secret_manager_secret"),
}

REF = re.compile(r"\b((?:data\.)?google_[a-z0-9_]+|var|local|each)\.([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?")


class Checks:
    def __init__(self):
        self.failures = []
        self.count = 0

    def check(self, name, ok, message):
        self.count += 1
        if not ok:
            self.failures.append(f"FAIL [{name}] {message}")
        return ok


# --- reading the Terraform -------------------------------------------------


def unquote(value):
    """A parsed HCL value as text: literals lose their quotes, expressions
    keep their `${...}` form, so both read alike."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def blocks(body, name):
    """The nested blocks `name { ... }` of a parsed block body."""
    found = body.get(name, [])
    if isinstance(found, dict):
        found = [found]
    return [b for b in found if isinstance(b, dict)]


def block(body, name):
    found = blocks(body, name)
    return found[0] if len(found) == 1 else None


def refs(value):
    """The references (`kind`, `name`, `attribute`) inside an expression."""
    text = value if isinstance(value, str) else json.dumps(value)
    return [(m.group(1), m.group(2), m.group(3)) for m in REF.finditer(text)]


def single_ref(value, kind, attr=None):
    """The label of the one `kind.LABEL[.attr]` that `value` is, or None."""
    text = unquote(value)
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"\$\{" + re.escape(kind) + r"\.([A-Za-z0-9_]+)" + (r"\." + attr if attr else "") + r"\}", text)
    return m.group(1) if m else None


class Terraform:
    def __init__(self, directory):
        self.resources = {}
        self.data = {}
        self.variables = {}
        self.locals = {}
        self.files = sorted(f for f in os.listdir(directory) if f.endswith(".tf"))
        for name in self.files:
            with open(os.path.join(directory, name)) as f:
                doc = hcl2.load(f)
            for item in doc.get("resource", []):
                for rtype, labelled in item.items():
                    for label, body in labelled.items():
                        self.resources[(unquote(rtype), unquote(label))] = body
            for item in doc.get("data", []):
                for rtype, labelled in item.items():
                    for label, body in labelled.items():
                        self.data[(unquote(rtype), unquote(label))] = body
            for item in doc.get("variable", []):
                for label, body in item.items():
                    self.variables[unquote(label)] = body
            for item in doc.get("locals", []):
                self.locals.update({k: v for k, v in item.items() if k != "__is_block__"})

    def of_type(self, rtype):
        return {label: body for (t, label), body in self.resources.items() if t == rtype}

    def default(self, name):
        var = self.variables.get(name)
        return unquote(var.get("default")) if var else None

    def value(self, raw):
        """A value with `var.X` (defaults) and `local.X` substituted, when
        that gives a literal."""
        text = unquote(raw)
        if not isinstance(text, str):
            return text
        for _ in range(5):
            def sub(m):
                kind, name = m.group(1), m.group(2)
                if kind == "var":
                    d = self.default(name)
                    return str(d) if d is not None else m.group(0)
                if kind == "local" and name in self.locals:
                    inner = unquote(self.locals[name])
                    return inner if isinstance(inner, str) else m.group(0)
                return m.group(0)

            new = re.sub(r"\$\{(var|local)\.([A-Za-z0-9_]+)\}", sub, text)
            if new == text:
                break
            text = new
        return text


def env_of(container):
    """The variables a container sets: its `env` blocks, and the content of
    its `dynamic "env"` blocks (set only when their `for_each` is not
    empty, so optional, but still names runbox must read)."""
    env = {}
    for e in blocks(container, "env"):
        env[unquote(e.get("name"))] = e
    for d in blocks(container, "dynamic"):
        for label, body in d.items():
            if unquote(label) != "env" or not isinstance(body, dict):
                continue
            for content in blocks(body, "content"):
                env[unquote(content.get("name"))] = dict(content, dynamic=True)
    return env


def env_value(entry):
    return unquote(entry.get("value")) if "value" in entry else None


# --- reading the code ------------------------------------------------------


def read(path):
    with open(path) as f:
        return f.read()


def rust_sources(repo):
    for crate in ("proto", "core", "notifier", "dispatcher", "executor", "cli"):
        for root, _, files in os.walk(os.path.join(repo, crate, "src")):
            for name in files:
                if name.endswith(".rs"):
                    yield os.path.join(root, name)


def env_names_read(repo):
    """Every environment variable name runbox's sources name as a string
    constant, a clap `env = ...` or a direct `env::var` call."""
    patterns = [
        re.compile(r"const\s+[A-Z0-9_]+\s*:\s*&(?:'static\s+)?str\s*=\s*\"([A-Z][A-Z0-9_]*)\""),
        re.compile(r"\benv\s*=\s*\"([A-Z][A-Z0-9_]*)\""),
        re.compile(r"env::var(?:_os)?\(\s*\"([A-Z][A-Z0-9_]*)\""),
    ]
    names = set()
    for path in rust_sources(repo):
        text = read(path)
        for p in patterns:
            names.update(p.findall(text))
    return names


def rust_consts(path):
    return dict(re.findall(r"pub const ([A-Z0-9_]+)\s*:\s*&str\s*=\s*\"([^\"]*)\"", read(path)))


def required_env(repo):
    """From core/src/config.rs: for each (VAR, value) that makes settings
    required, the names it requires."""
    text = read(os.path.join(repo, "core/src/config.rs"))
    consts = dict(re.findall(r"const ([A-Z0-9_]+)\s*:\s*&str\s*=\s*\"([A-Z][A-Z0-9_]*)\"", text))
    kinds = dict(re.findall(r"Self::(\w+) => \"([a-z0-9]+)\"", text))
    required = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"needed_by = \(([A-Z0-9_]+), \w+::(\w+)\.as_str\(\)\)", line)
        if m:
            current = (consts[m.group(1)], kinds[m.group(2)])
            required.setdefault(current, set())
            continue
        m = re.search(r"self\.required\(([A-Z0-9_]+),", line)
        if m and current:
            required[current].add(consts[m.group(1)])
    return required, kinds


def workspace_bins(repo):
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    bins = {}
    for package in json.loads(out.stdout)["packages"]:
        for target in package["targets"]:
            if "bin" in target["kind"]:
                bins[target["name"]] = package["name"]
    return bins


def markdown_rows(text, marker):
    m = re.search(rf"<!-- {marker}:start -->(.*?)<!-- {marker}:end -->", text, re.S)
    if not m:
        return None
    rows = []
    for line in m.group(1).strip().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if cells and not set(cells[0]) <= {"-"} and cells[0] not in ("principal", "custom role"):
            rows.append(cells)
    return rows


# --- the checks ------------------------------------------------------------


def check_terraform(c, repo, tf, infra):
    jobs = tf.of_type("google_cloud_run_v2_job")
    services = tf.of_type("google_cloud_run_v2_service")
    if not c.check("job", len(jobs) == 1, f"expected one google_cloud_run_v2_job, found {len(jobs)}"):
        return
    if not c.check("service", len(services) == 1, f"expected one google_cloud_run_v2_service, found {len(services)}"):
        return
    (job_label, job), = jobs.items()
    (service_label, service), = services.items()

    # The job template's shape.
    outer = block(job, "template") or {}
    inner = block(outer, "template") or {}
    containers = blocks(inner, "containers")
    c.check("job.containers", len(containers) == 1,
            f"the job template has {len(containers)} containers; RunJob's overrides name none, so it must have exactly one")
    c.check("job.max_retries", inner.get("max_retries") == 0,
            f"max_retries is {inner.get('max_retries')!r}; a retried task runs the command twice: set 0")
    c.check("job.task_count", outer.get("task_count") == 1 and outer.get("parallelism", 1) in (0, 1),
            f"task_count {outer.get('task_count')!r}, parallelism {outer.get('parallelism')!r}: one task per execution")
    c.check("job.execution_environment", unquote(inner.get("execution_environment")) == "EXECUTION_ENVIRONMENT_GEN2",
            f"execution_environment is {inner.get('execution_environment')!r}, not EXECUTION_ENVIRONMENT_GEN2")
    c.check("job.timeout", bool(inner.get("timeout")), "the job template sets no task timeout")
    job_container = containers[0] if containers else {}
    for label, container in (("job", job_container), ("service", (blocks(block(service, "template") or {}, "containers") or [{}])[0])):
        limits = (block(container, "resources") or {}).get("limits") or {}
        c.check(f"{label}.resources", "cpu" in limits and "memory" in limits,
                f"the {label} container sets no CPU and memory limits: {limits!r}")
    svc_template = block(service, "template") or {}
    c.check("service.execution_environment", unquote(svc_template.get("execution_environment")) == "EXECUTION_ENVIRONMENT_GEN2",
            "the service does not run in the second generation execution environment")
    svc_containers = blocks(svc_template, "containers")
    c.check("service.containers", len(svc_containers) == 1, f"the service has {len(svc_containers)} containers")
    svc_container = svc_containers[0] if svc_containers else {}

    job_env = env_of(job_container)
    svc_env = env_of(svc_container)

    # Every variable set is one runbox reads; every required one is set.
    read_names = env_names_read(repo)
    for label, env in (("job", job_env), ("service", svc_env)):
        for name in env:
            known = name in read_names or name in PENDING_ENV
            c.check(f"{label}.env.known", known, f"the {label} sets {name}, which runbox never reads")
    required, kinds = required_env(repo)
    c.check("config.required", bool(required), "found no required settings in core/src/config.rs")
    for label, env in (("job", job_env), ("service", svc_env)):
        for (var, value), names in required.items():
            if env_value(env.get(var, {})) == value:
                for name in sorted(names):
                    c.check(f"{label}.env.required", name in env,
                            f"the {label} sets {var}={value} but not {name}, which that requires")
    backend_values = {"local", "gcp"} & set(kinds.values())
    for label, env in (("job", job_env), ("service", svc_env)):
        c.check(f"{label}.env.backend", env_value(env.get("RUNBOX_BACKEND", {})) == "gcp",
                f"the {label} must set RUNBOX_BACKEND=gcp (one of {sorted(backend_values)}); the embedded backend cannot span containers")
    c.check("service.env.launcher", env_value(svc_env.get("RUNBOX_LAUNCHER", {})) == "cloudrun",
            "the service must set RUNBOX_LAUNCHER=cloudrun, or commands run inside the serve container")
    contract = rust_consts(os.path.join(repo, "core/src/contract.rs"))
    for name in (contract["EXECUTION_ID_ENV"], contract["TRACEPARENT_ENV"]):
        c.check("job.env.override", name not in job_env, f"the job template sets {name}; each RunJob's overrides carry it")
    token_var = rust_consts(os.path.join(repo, "cli/src/serve/settings.rs"))["TOKEN_VAR"]
    token = svc_env.get(token_var, {})
    c.check("service.env.token", bool(token) and "value" not in token and block(token, "value_source") is not None,
            f"the service must take {token_var} from a secret (serve refuses a public address without it; never a literal)")

    # Names wired consistently.
    buckets = tf.of_type("google_storage_bucket")
    c.check("bucket", len(buckets) == 1, f"expected one bucket, found {len(buckets)}")
    bucket_label = next(iter(buckets), None)
    for label, env in (("job", job_env), ("service", svc_env)):
        c.check(f"{label}.env.bucket", single_ref(env.get("RUNBOX_BUCKET", {}).get("value"), "google_storage_bucket", "name") == bucket_label,
                f"the {label}'s RUNBOX_BUCKET is not google_storage_bucket.{bucket_label}.name")
        c.check(f"{label}.env.project", unquote(env.get("RUNBOX_PROJECT", {}).get("value")) == "${var.project}",
                f"the {label}'s RUNBOX_PROJECT is not var.project")
    c.check("service.env.job", single_ref(svc_env.get("RUNBOX_CLOUD_RUN_JOB", {}).get("value"), "google_cloud_run_v2_job", "id") == job_label,
            f"the service's RUNBOX_CLOUD_RUN_JOB is not google_cloud_run_v2_job.{job_label}.id")

    notifications = tf.of_type("google_storage_notification")
    c.check("notification", len(notifications) == 1, f"expected one bucket notification, found {len(notifications)}")
    note = next(iter(notifications.values()), {})
    layout = rust_consts(os.path.join(repo, "core/src/layout.rs"))
    c.check("notification.prefix", unquote(note.get("object_name_prefix")) == layout["RESULTS_PREFIX"],
            f"the notification prefix is {note.get('object_name_prefix')!r}, not the results prefix {layout['RESULTS_PREFIX']!r}")
    c.check("notification.events", [unquote(e) for e in note.get("event_types", [])] == ["OBJECT_FINALIZE"],
            f"event_types {note.get('event_types')!r}: runbox completes on OBJECT_FINALIZE only")
    c.check("notification.payload", unquote(note.get("payload_format")) == "JSON_API_V1",
            "payload_format must be JSON_API_V1: the result rides in the object's metadata")
    c.check("notification.bucket", single_ref(note.get("bucket"), "google_storage_bucket", "name") == bucket_label,
            "the notification is not on the runbox bucket")
    topic_label = single_ref(note.get("topic"), "google_pubsub_topic", "id")
    c.check("notification.topic", topic_label is not None, "the notification's topic is not a google_pubsub_topic's id")
    c.check("service.env.notifications", single_ref(svc_env.get("RUNBOX_NOTIFICATIONS_TOPIC", {}).get("value"), "google_pubsub_topic", "name") == topic_label,
            f"the service's RUNBOX_NOTIFICATIONS_TOPIC is not the notification's topic ({topic_label})")
    config_default = re.search(r'notifications_topic: "([^"]+)"', read(os.path.join(repo, "core/src/config.rs"))).group(1)
    topic_name = tf.value(tf.resources.get(("google_pubsub_topic", topic_label), {}).get("name"))
    c.check("topic.default", topic_name == config_default,
            f"the notifications topic defaults to {topic_name!r}, runbox to {config_default!r}")
    # Warm executions' commands: a topic of their own, named by the service.
    commands_label = single_ref(svc_env.get("RUNBOX_COMMANDS_TOPIC", {}).get("value"), "google_pubsub_topic", "name")
    c.check("service.env.commands", commands_label is not None and commands_label != topic_label,
            f"the service's RUNBOX_COMMANDS_TOPIC must name a topic of its own, not the notifications topic ({commands_label!r})")
    commands_default = re.search(r'commands_topic: "([^"]+)"', read(os.path.join(repo, "core/src/config.rs"))).group(1)
    commands_name = tf.value(tf.resources.get(("google_pubsub_topic", commands_label), {}).get("name"))
    c.check("service.env.commands", commands_name == commands_default,
            f"the commands topic defaults to {commands_name!r}, runbox to {commands_default!r}")

    subs = tf.of_type("google_pubsub_subscription")
    req_sub_label = single_ref(svc_env.get("RUNBOX_REQUESTS_SUBSCRIPTION", {}).get("value"), "google_pubsub_subscription", "name")
    c.check("service.env.requests", req_sub_label in subs, "the service's RUNBOX_REQUESTS_SUBSCRIPTION is not a declared subscription's name")
    req_sub = subs.get(req_sub_label, {})
    requests_topic = single_ref(req_sub.get("topic"), "google_pubsub_topic", "id")
    completions_topic = single_ref(svc_env.get("RUNBOX_COMPLETIONS_TOPIC", {}).get("value"), "google_pubsub_topic", "name")
    c.check("service.env.completions", completions_topic is not None and completions_topic not in (topic_label, requests_topic),
            f"RUNBOX_COMPLETIONS_TOPIC must name its own topic, not the notifications or requests topic ({completions_topic!r})")
    c.check("requests.topic", requests_topic is not None and requests_topic != topic_label,
            "the requests subscription must be on its own topic, not the notifications topic")
    c.check("requests.ordering", req_sub.get("enable_message_ordering") is True,
            "the requests subscription must enable message ordering (one ordering key per session)")
    dlp = block(req_sub, "dead_letter_policy") or {}
    dlt = single_ref(dlp.get("dead_letter_topic"), "google_pubsub_topic", "id")
    c.check("requests.dead_letter", dlt is not None and dlt not in (requests_topic, topic_label, completions_topic),
            "the requests subscription has no dead-letter topic of its own")
    attempts = tf.value(dlp.get("max_delivery_attempts"))
    c.check("requests.attempts", str(attempts).isdigit() and 5 <= int(attempts) <= 100,
            f"max_delivery_attempts {attempts!r} must be 5-100")
    c.check("dead_letter.kept", any(single_ref(s.get("topic"), "google_pubsub_topic", "id") == dlt for s in subs.values()),
            "no subscription on the dead-letter topic: dead letters published there would be lost")
    for label, body in subs.items():
        ttl = block(body, "expiration_policy")
        c.check("subscription.expiry", ttl is not None and unquote(ttl.get("ttl")) == "",
                f"google_pubsub_subscription.{label} expires after 31 idle days unless expiration_policy.ttl is \"\"")

    # Lifecycle: the README's retention rule.
    bucket = buckets.get(bucket_label, {})
    c.check("bucket.uniform", bucket.get("uniform_bucket_level_access") is True, "uniform bucket-level access is off")
    c.check("bucket.public", unquote(bucket.get("public_access_prevention")) == "enforced",
            "public access prevention is not enforced: one public grant would expose every session's files")
    readme = read(os.path.join(repo, "README.md"))
    rule = json.loads(re.search(r'^(\{"rule":.*\})$', readme, re.M).group(1))["rule"][0]
    rules = blocks(bucket, "lifecycle_rule")
    c.check("bucket.lifecycle", len(rules) == 1, f"expected one lifecycle rule, found {len(rules)}")
    lr = rules[0] if rules else {}
    cond = block(lr, "condition") or {}
    action = block(lr, "action") or {}
    expected_prefixes = {layout["REQUESTS_PREFIX"], layout["RESULTS_PREFIX"], layout["LOGS_PREFIX"]}
    prefixes = {unquote(p) for p in cond.get("matches_prefix", [])}
    c.check("bucket.lifecycle.prefixes", prefixes == expected_prefixes == set(rule["condition"]["matchesPrefix"]),
            f"lifecycle prefixes {sorted(prefixes)}, layout {sorted(expected_prefixes)}, README {rule['condition']['matchesPrefix']}")
    c.check("bucket.lifecycle.sessions", layout["SESSIONS_PREFIX"] not in prefixes, "the lifecycle rule would delete live sessions")
    age = tf.value(cond.get("age"))
    c.check("bucket.lifecycle.age", str(age) == str(rule["condition"]["age"]),
            f"lifecycle age {age!r}, README {rule['condition']['age']}")
    c.check("bucket.lifecycle.action", unquote(action.get("type")) == rule["action"]["type"], "the lifecycle action is not Delete")

    # Identities: the job and the service run as different accounts.
    job_sa = single_ref(inner.get("service_account"), "google_service_account", "email")
    svc_sa = single_ref(svc_template.get("service_account"), "google_service_account", "email")
    c.check("identities", job_sa and svc_sa and job_sa != svc_sa,
            f"the job ({job_sa}) and the service ({svc_sa}) must run as two declared service accounts")

    check_grants(c, tf, infra, job_sa, svc_sa, topic_label, dlt, req_sub_label, bucket_label, commands_label)
    check_probes(c, repo, svc_container)
    return {
        "job": (job_container, tf.value(job_env.get("RUNBOX_RUN_AS_USER", {}).get("value"))),
        "service": (svc_container, None),
    }


def principal_of(member, job_sa, svc_sa):
    m = unquote(member)
    sa = re.fullmatch(r"serviceAccount:\$\{google_service_account\.([a-z0-9_]+)\.email\}", m or "")
    if sa:
        return sa.group(1)
    if m == "${local.serve_member}":
        return svc_sa
    if m == "${local.executor_member}":
        return job_sa
    if "data.google_storage_project_service_account" in m:
        return "storage-agent"
    if m == "${local.pubsub_agent}":
        return "pubsub-agent"
    if m == "${each.value}":
        return "each"
    return m


def check_grants(c, tf, infra, job_sa, svc_sa, notif_topic, dlt, req_sub, bucket_label, commands_topic):
    custom = {}
    for label, body in tf.of_type("google_project_iam_custom_role").items():
        custom[label] = (unquote(body.get("role_id")), {unquote(p) for p in body.get("permissions", [])})
    granted = set()
    by_principal = {}
    storage_grants = set()
    for rtype, scope in IAM_MEMBER_TYPES.items():
        for label, body in tf.of_type(rtype).items():
            role_raw = unquote(body.get("role"))
            custom_label = single_ref(role_raw, "google_project_iam_custom_role", "id")
            role = custom[custom_label][0] if custom_label in custom else role_raw
            perms = custom[custom_label][1] if custom_label in custom else PREDEFINED.get(role, set())
            if scope is None:
                where = "project"
            else:
                attr, target = scope
                target_label = next((r[1] for r in refs(body.get(attr)) if r[0] == target), None)
                where = f"{target}.{target_label}"
            who = principal_of(body.get("member"), job_sa, svc_sa)
            c.check("grants.public", who not in ("allUsers", "allAuthenticatedUsers"),
                    f"{rtype}.{label} grants {role} to {who}")
            if who == "storage-agent":
                storage_grants.add(label)
            if who == "each":
                each = unquote(body.get("for_each"))
                var = re.search(r"var\.([a-z0-9_]+)", each or "")
                who = var.group(1) if var else each
            granted.add((who, role, where))
            by_principal.setdefault(who, set()).update(perms)
            c.check("grants.width", not TOO_WIDE.match(role), f"{rtype}.{label} grants {role}, far wider than runbox needs")
            if custom_label is None:
                c.check("grants.known", role in PREDEFINED, f"{rtype}.{label} grants {role}, a predefined role the checks do not know")

    doc = read(os.path.join(infra, "terraform", "README.md"))
    rows = markdown_rows(doc, "permissions")
    if c.check("docs.permissions", rows, "infra/terraform/README.md has no permissions table"):
        documented = {(r[0], r[1], r[2]) for r in rows}
        for g in sorted(granted - documented):
            c.check("docs.permissions", False, f"granted but not in the permission table: {g}")
        for g in sorted(documented - granted):
            c.check("docs.permissions", False, f"in the permission table but not granted: {g}")
    rows = markdown_rows(doc, "custom-roles")
    if c.check("docs.custom_roles", rows, "infra/terraform/README.md has no custom-roles table"):
        documented = {(r[0], r[1]) for r in rows}
        declared = {(role_id, p) for role_id, perms in custom.values() for p in perms}
        for g in sorted(declared - documented):
            c.check("docs.custom_roles", False, f"custom role permission not in the table: {g}")
        for g in sorted(documented - declared):
            c.check("docs.custom_roles", False, f"custom role permission in the table but not declared: {g}")

    for who, needs in ((svc_sa, SERVE_NEEDS), (job_sa, EXECUTOR_NEEDS)):
        missing = needs - by_principal.get(who, set())
        c.check("grants.needed", not missing, f"{who} lacks {sorted(missing)}, which runbox calls with")
    c.check("grants.commands", {(svc_sa, "roles/pubsub.publisher", f"google_pubsub_topic.{commands_topic}"),
                                (svc_sa, "runboxTopicAttach", f"google_pubsub_topic.{commands_topic}")} <= granted,
            "serve cannot publish to the commands topic or attach a warm execution's subscription to it")
    c.check("grants.storage_agent", ("storage-agent", "roles/pubsub.publisher", f"google_pubsub_topic.{notif_topic}") in granted,
            "the Cloud Storage service agent cannot publish to the notifications topic: the notification would be refused")
    c.check("grants.dead_letter", {("pubsub-agent", "roles/pubsub.publisher", f"google_pubsub_topic.{dlt}"),
                                   ("pubsub-agent", "roles/pubsub.subscriber", f"google_pubsub_subscription.{req_sub}")} <= granted,
            "the Pub/Sub service agent lacks publisher on the dead-letter topic or subscriber on the requests subscription")
    executor_scopes = {w for (who, _, w) in granted if who == job_sa}
    c.check("grants.executor", not executor_scopes,
            f"the executor's account (reachable by commands through the metadata server) holds roles: {sorted(executor_scopes)}")
    note = next(iter(tf.of_type("google_storage_notification").values()), {})
    after = {single_ref(d, "google_pubsub_topic_iam_member") for d in note.get("depends_on", [])}
    c.check("notification.after_grant", bool(storage_grants & after),
            "the notification does not depend on the service agent's publisher grant (creation races the grant)")


def check_probes(c, repo, container):
    with open(os.path.join(repo, "docs/openapi.json")) as f:
        openapi = json.load(f)
    for probe in ("startup_probe", "liveness_probe"):
        p = block(container, probe)
        http = block(p, "http_get") if p else None
        if http is None:
            continue
        path = unquote(http.get("path", "/"))
        op = openapi["paths"].get(path, {}).get("get")
        c.check("service.probes", op is not None and op.get("security") == [{}],
                f"the {probe} asks {path}, which {'needs the bearer token' if op else 'runbox serve does not answer'}; probes send none")


# --- the Dockerfiles --------------------------------------------------------


def dockerfile(path):
    """Instructions (keyword, text) of a Dockerfile, continuations joined."""
    lines, current = [], ""
    for raw in read(path).splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        current = ""
    return lines


def check_image(c, repo, infra, tf, role, container, run_as, bins, bin_dir):
    image = tf.value(container.get("image"))
    m = re.fullmatch(r"[a-z0-9-]+-docker\.pkg\.dev/[^/]+/[^/]+/([a-z0-9-]+):[^/]+", image or "")
    if not c.check(f"{role}.image", m, f"the {role} image {image!r} is not in the Artifact Registry repository"):
        return
    path = os.path.join(infra, "docker", f"{m.group(1)}.Dockerfile")
    if not c.check(f"{role}.dockerfile", os.path.exists(path), f"the {role} image {m.group(1)} has no infra/docker/{m.group(1)}.Dockerfile"):
        return
    name = os.path.basename(path)
    instr = dockerfile(path)
    froms = [i for i, (k, _) in enumerate(instr) if k == "FROM"]
    c.check(f"{name}.stages", len(froms) >= 2, f"{name} is not multi-stage")
    final = instr[froms[-1]:] if froms else []
    base = final[0][1].split()[0] if final else ""
    c.check(f"{name}.base", re.fullmatch(r"debian:[a-z]+-slim", base) is not None, f"{name}'s final stage is {base!r}, not Debian slim")
    entry = [t for k, t in final if k == "ENTRYPOINT"]
    if not c.check(f"{name}.entrypoint", len(entry) == 1, f"{name}'s final stage has {len(entry)} ENTRYPOINTs"):
        return
    try:
        argv = json.loads(entry[0])
    except json.JSONDecodeError:
        argv = None
    if not c.check(f"{name}.entrypoint", isinstance(argv, list) and argv,
                   f"{name}'s ENTRYPOINT is not in exec form: signals would go to a shell, not runbox"):
        return
    binary = os.path.basename(argv[0])
    c.check(f"{name}.entrypoint", binary in bins, f"{name}'s entrypoint {argv[0]} is not a binary the workspace builds ({sorted(bins)})")
    copies = [shlex.split(t) for k, t in final if k == "COPY"]
    c.check(f"{name}.copy", any(a and a[0].startswith("--from=") and os.path.basename(a[-2]) == binary
                                and (a[-1] == argv[0] or a[-1].rstrip("/") == os.path.dirname(argv[0])) for a in copies),
            f"{name} copies no built {binary} from a build stage to {argv[0]}")
    builds = " ".join(t for k, t in instr[: froms[-1]] if k == "RUN")
    stages = {t.split()[-1]: t.split()[0] for k, t in instr if k == "FROM" and " AS " in t.upper()}
    sources = {a[0].split("=", 1)[1] for a in copies if a and a[0].startswith("--from=")}
    c.check(f"{name}.build", sources and all(stages.get(s, "").startswith("rust:") for s in sources),
            f"{name} copies from stages {sorted(sources)} that are not Rust toolchain images ({stages})")
    c.check(f"{name}.build", re.search(rf"cargo build\b.*--bin {re.escape(binary)}\b", builds) is not None
            and re.search(rf"-p {re.escape(bins.get(binary, '?'))}\b", builds) is not None,
            f"{name}'s build stage does not build {binary} (cargo build -p {bins.get(binary)} --bin {binary})")
    if len(argv) > 1 and binary in bins:
        # The arguments must be a command line the binary accepts.
        out = subprocess.run([os.path.join(bin_dir, binary), *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
        c.check(f"{name}.arguments", out.returncode == 0, f"`{binary} {' '.join(argv[1:])} --help` fails: {out.stderr.strip()[:300]}")
    users = [t for k, t in final if k == "USER"]
    runs = " ".join(t for k, t in final if k == "RUN")
    if role == "job":
        installs = set(re.findall(r"apt-get install ([^&;]*)", runs)[0].split()) if "apt-get install" in runs else set()
        for package in ("bash", "coreutils", "ca-certificates", "python3", "git"):
            c.check(f"{name}.packages", package in installs, f"{name} does not install {package}")
        c.check(f"{name}.root", all(u in ("root", "0") for u in users),
                f"{name} switches to USER {users}: the executor must start as root to run commands as {run_as}")
        created = re.findall(r"useradd\b[^&;]*?\s([a-z_][a-z0-9_-]*)\s*(?:$|&&|;)", runs)
        c.check(f"{name}.run_as_user", run_as not in (None, "", "root") and run_as in created,
                f"RUNBOX_RUN_AS_USER is {run_as!r} but {name} creates {created}")
    else:
        c.check(f"{name}.unprivileged", bool(users) and users[-1] not in ("root", "0"), f"{name} runs runbox serve as root")
        c.check(f"{name}.packages", "ca-certificates" in runs, f"{name} lacks ca-certificates for TLS to Google APIs")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--infra", required=True)
    parser.add_argument("--bin-dir", required=True)
    args = parser.parse_args()

    c = Checks()
    tf = Terraform(os.path.join(args.infra, "terraform"))
    c.check("files", len(tf.files) > 0, "no .tf files")
    images = check_terraform(c, args.repo, tf, args.infra)
    if images:
        bins = workspace_bins(args.repo)
        for role, (container, run_as) in images.items():
            check_image(c, args.repo, args.infra, tf, role, container, run_as, bins, args.bin_dir)
    for line in c.failures:
        print(line)
    if c.failures:
        print(f"deploy checks: {len(c.failures)} failed of {c.count}")
        return 1
    print(f"deploy checks: ok ({c.count} checks, {len(tf.files)} .tf files, {len(tf.resources)} resources)")
    for name in sorted(PENDING_ENV - env_names_read(args.repo)):
        print(f"note: {name} is set but not read by runbox yet (accepted as pending)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
