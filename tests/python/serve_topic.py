"""The request topic of `runbox serve`, driven by Google's own Python
Pub/Sub client (`google-cloud-pubsub`) against the Pub/Sub emulator
(`PUBSUB_EMULATOR_HOST` must be set).

Run by tests/tests/serve_topic.rs and tests/benches/serve_topic.rs:

    serve_topic.py setup PROJECT NAME ACK_SECS [unordered]
        creates topic NAME-requests with subscription NAME-requests (message
        ordering on unless `unordered`, ack deadline ACK_SECS, a dead-letter
        topic after 5 attempts) and topic NAME-completions with subscription
        NAME-completions (message ordering on).
    serve_topic.py scenario PROJECT NAME
        results match, per-session order, bad messages, a duplicate publish.
    serve_topic.py attack PROJECT NAME
        hostile request ids and sessions are refused; nothing of another
        execution is overwritten or read.
    serve_topic.py load PROJECT NAME SESSIONS PER_SESSION TIMEOUT_SECS [SLEEP]
        publishes SESSIONS*PER_SESSION requests (`echo I >> log.txt; sleep SLEEP`, with
        ordering key = session), then one `cat log.txt` per session; prints
        "progress N" lines as completions come, then one JSON line
        `{"summary": ...}` with latencies, statuses and what each log holds.

Every check raises on failure, so the process exits non-zero.
"""

import json
import sys
import threading
import time

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import DeadLetterPolicy

WAIT = 120


def names(project, name):
    return {
        "req_topic": f"projects/{project}/topics/{name}-requests",
        "req_sub": f"projects/{project}/subscriptions/{name}-requests",
        "dead_topic": f"projects/{project}/topics/{name}-dead",
        "comp_topic": f"projects/{project}/topics/{name}-completions",
        "comp_sub": f"projects/{project}/subscriptions/{name}-completions",
    }


def setup(project, name, ack_secs, ordered):
    n = names(project, name)
    pub = pubsub_v1.PublisherClient()
    sub = pubsub_v1.SubscriberClient()
    for topic in (n["req_topic"], n["dead_topic"], n["comp_topic"]):
        pub.create_topic(request={"name": topic})
    sub.create_subscription(
        request={
            "name": n["req_sub"],
            "topic": n["req_topic"],
            "enable_message_ordering": ordered,
            "ack_deadline_seconds": ack_secs,
            # The policy the README recommends: a request that keeps
            # failing stops coming back.
            "dead_letter_policy": DeadLetterPolicy(
                dead_letter_topic=n["dead_topic"], max_delivery_attempts=5
            ),
        }
    )
    sub.create_subscription(
        request={
            "name": n["comp_sub"],
            "topic": n["comp_topic"],
            "enable_message_ordering": True,
        }
    )
    print("ok")


class Completions:
    """Collects completions from the completions subscription, in the
    order they arrive, acking each."""

    def __init__(self, subscription):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.all = []  # (receive time, attributes, decoded body)
        self.problems = []
        self.sub = pubsub_v1.SubscriberClient()
        self.future = self.sub.subscribe(subscription, self._on_message)

    def _on_message(self, message):
        body = json.loads(message.data.decode())
        attrs = dict(message.attributes)
        # Checked here, raised in wait_for: the client swallows what a
        # callback raises.
        problems = []
        if attrs["requestId"] != body["requestId"] or attrs["status"] != body["status"]:
            problems.append(("attributes differ from the body", attrs, body))
        if attrs["sessionId"] != body.get("sessionId", ""):
            problems.append(("sessionId attribute", attrs, body))
        if body["status"] != "REJECTED" and message.ordering_key != body["sessionId"]:
            problems.append(("ordering key is not the session", message.ordering_key, body))
        with self.lock:
            self.problems.extend(problems)
            self.all.append((time.monotonic(), attrs, body))
            self.changed.notify_all()
        message.ack()

    def wait_for(self, request_ids, timeout=WAIT):
        """Waits until every id has a completion; returns the first of each."""
        want = set(request_ids)
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                assert not self.problems, self.problems
                seen = {a["requestId"] for _, a, _ in self.all}
                if want <= seen:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no completion for {sorted(want - seen)[:20]}")
                self.changed.wait(left)
            first = {}
            for t, a, b in self.all:
                first.setdefault(a["requestId"], (t, b))
            return first

    def wait_count(self, request_id, n, timeout=WAIT):
        """Waits until `request_id` has at least `n` completions."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while sum(1 for _, a, _ in self.all if a["requestId"] == request_id) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} completion(s) for {request_id}")
                self.changed.wait(left)

    def count(self, request_id):
        with self.lock:
            return sum(1 for _, a, _ in self.all if a["requestId"] == request_id)

    def close(self):
        self.future.cancel()
        try:
            self.future.result(timeout=10)
        except Exception:  # noqa: BLE001 - cancelled futures raise by design
            pass
        self.sub.close()


def publisher():
    return pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )


def request(pub, topic, session, request_id, command, **extra):
    body = {"sessionId": session, "command": command, "requestId": request_id}
    body.update(extra)
    return pub.publish(topic, json.dumps(body).encode(), ordering_key=session)


def scenario(project, name):
    n = names(project, name)
    comps = Completions(n["comp_sub"])
    pub = publisher()
    futures = []
    sessions = ["s1", "s2", "s3"]
    for s in sessions:
        for i in range(1, 6):
            cmd = f"echo {i} >> log.txt && echo out-{s}-{i}"
            futures.append(request(pub, n["req_topic"], s, f"{s}-{i}", cmd))
            if s == "s1" and i == 3:
                # The same request published twice: it must run once.
                futures.append(request(pub, n["req_topic"], s, f"{s}-{i}", cmd))
    futures.append(request(pub, n["req_topic"], "s4", "fail-1", "echo oops >&2; exit 3"))
    # Bad messages: answered REJECTED when the requestId can be read.
    futures.append(pub.publish(n["req_topic"], b"not json at all", ordering_key="s5"))
    futures.append(
        pub.publish(
            n["req_topic"],
            json.dumps({"sessionId": "s5", "command": "echo x", "requestId": "bad-field", "colour": "red"}).encode(),
            ordering_key="s5",
        )
    )
    futures.append(
        pub.publish(
            n["req_topic"],
            json.dumps({"sessionId": "s5", "command": "echo no id"}).encode(),
            ordering_key="s5",
        )
    )
    futures.append(request(pub, n["req_topic"], "s5", "bad-big", "echo " + "x" * (300 * 1024)))
    futures.append(request(pub, n["req_topic"], "s5", "bad-session", "echo x", sessionId="a/b"))
    for f in futures:
        f.result(timeout=30)
    # After every command of a session: what ran, in which order.
    finals = [request(pub, n["req_topic"], s, f"{s}-final", "cat log.txt") for s in sessions]
    for f in finals:
        f.result(timeout=30)

    ids = [f"{s}-{i}" for s in sessions for i in range(1, 6)]
    ids += [f"{s}-final" for s in sessions]
    ids += ["fail-1", "bad-field", "bad-big", "bad-session"]
    got = comps.wait_for(ids)
    for s in sessions:
        for i in range(1, 6):
            _, b = got[f"{s}-{i}"]
            assert b["status"] == "SUCCEEDED", b
            assert b["exitCode"] == 0, b
            assert b["result"]["stdout"] == f"out-{s}-{i}\n", b
            assert b["sessionId"] == s, b
            assert b["executionId"].startswith("rq-"), b
            assert b["resultObject"] == f"results/{b['executionId']}.json", b
        # Each command ran once, in publish order (the duplicate too).
        _, b = got[f"{s}-final"]
        assert b["result"]["stdout"] == "1\n2\n3\n4\n5\n", (s, b["result"]["stdout"])
        # Completions of one session arrive in publish order.
        times = [got[f"{s}-{i}"][0] for i in range(1, 6)] + [got[f"{s}-final"][0]]
        assert times == sorted(times), (s, times)
    _, b = got["fail-1"]
    assert b["status"] == "FAILED" and b["exitCode"] == 3, b
    assert b["result"]["stderr"] == "oops\n", b
    for rid, needle in [
        ("bad-field", "colour"),
        ("bad-big", "at most"),
        ("bad-session", "sessionId"),
    ]:
        _, b = got[rid]
        assert b["status"] == "REJECTED", b
        assert needle in b["error"], (rid, b["error"])
        assert "result" not in b or not b["result"], b
    # The duplicate was answered too (consumers dedupe by requestId), with
    # the same execution and result.
    comps.wait_count("s1-3", 2)
    with comps.lock:
        dups = [b for _, a, b in comps.all if a["requestId"] == "s1-3"]
    assert dups[0]["executionId"] == dups[1]["executionId"], dups
    assert dups[0]["result"]["stdout"] == dups[1]["result"]["stdout"], dups
    comps.close()
    print("ok")


def attack(project, name, marker_dir):
    n = names(project, name)
    comps = Completions(n["comp_sub"])
    pub = publisher()
    request(pub, n["req_topic"], "victim", "victim-1", "echo secret > secret.txt; echo victim-out").result(timeout=30)
    got = comps.wait_for(["victim-1"])
    victim = got["victim-1"][1]
    assert victim["status"] == "SUCCEEDED", victim
    victim_exec = victim["executionId"]

    touch = f"touch {marker_dir}/ran"
    hostile = [
        # Another session's path as the session.
        ("atk-session", "../victim", "atk-session", touch, {}),
        ("atk-session2", "victim/../attacker", "atk-session2", touch, {}),
        # Path traversal in the request id.
        ("atk-traversal", "attacker", "../../results/" + victim_exec, touch, {}),
        # The victim's request id from another session: must not run, and
        # must not be answered with the victim's result.
        ("atk-reuse", "attacker", "victim-1", "cat ../victim/secret.txt; " + touch, {}),
        # The victim's execution id, chosen outright.
        ("atk-execid", "attacker", "atk-execid", touch, {"executionId": victim_exec}),
        # An env name runbox reserves.
        ("atk-env", "attacker", "atk-env", touch, {"env": {"RUNBOX_EXECUTION_ID": victim_exec}}),
    ]
    for _, session, rid, cmd, extra in hostile:
        request(pub, n["req_topic"], session, rid, cmd, **extra).result(timeout=30)
    # Not answerable (no request id fit to echo): dropped unrun.
    for rid in ["a\nb", "c\u0000d", "r" * 5000]:
        request(pub, n["req_topic"], "attacker", rid, touch).result(timeout=30)
    # A canary after them on the same ordering key: once it is answered,
    # everything before it was handled.
    request(pub, n["req_topic"], "attacker", "atk-canary", "echo canary").result(timeout=30)
    got = comps.wait_for(["atk-session", "atk-session2", "../../results/" + victim_exec, "atk-execid", "atk-env", "atk-canary"])
    for rid in ["atk-session", "atk-session2", "../../results/" + victim_exec, "atk-execid", "atk-env"]:
        b = got[rid][1]
        assert b["status"] == "REJECTED", b
        assert "secret" not in json.dumps(b), b
    assert got["atk-canary"][1]["status"] == "SUCCEEDED"
    # The reused id: one answer for the attacker, REJECTED, without the victim's output.
    comps.wait_count("victim-1", 2)
    with comps.lock:
        reuse = [b for _, a, b in comps.all if a["requestId"] == "victim-1"][1]
    assert reuse["status"] == "REJECTED", reuse
    assert reuse["sessionId"] == "attacker", reuse
    assert "victim-out" not in json.dumps(reuse) and "secret" not in json.dumps(reuse), reuse
    # The victim's execution is intact: published again, its request is
    # answered with its own stored result; its file is unchanged.
    request(pub, n["req_topic"], "victim", "victim-1", "echo secret > secret.txt; echo victim-out").result(timeout=30)
    request(pub, n["req_topic"], "victim", "victim-2", "cat secret.txt").result(timeout=30)
    got = comps.wait_for(["victim-2"])
    assert got["victim-2"][1]["result"]["stdout"] == "secret\n", got["victim-2"]
    with comps.lock:
        again = [b for _, a, b in comps.all if a["requestId"] == "victim-1" and b["sessionId"] == "victim"]
    assert len(again) == 2, again
    assert again[1]["executionId"] == victim_exec and again[1]["result"]["stdout"] == "victim-out\n", again
    comps.close()
    print("ok")


def load(project, name, sessions, per_session, timeout, pause):
    n = names(project, name)
    comps = Completions(n["comp_sub"])
    pub = publisher()
    # Sessions are named after the test: executors of tests running at the
    # same time on one host must not share a session name.
    run = f"{time.time_ns():x}"
    sent = {}
    futures = []
    for i in range(1, per_session + 1):
        for s in range(sessions):
            session = f"{name}-load-{s}"
            rid = f"{run}-{session}-{i}"
            sent[rid] = time.monotonic()
            futures.append(request(pub, n["req_topic"], session, rid, f"echo {i} >> log.txt; sleep {pause}; echo {i}"))
    for f in futures:
        f.result(timeout=60)
    # Progress lines let the caller act mid-flight (kill an instance).
    seen = 0
    deadline = time.monotonic() + timeout
    with comps.lock:
        while True:
            done = len({a["requestId"] for _, a, _ in comps.all} & set(sent))
            if done > seen:
                seen = done
                print(f"progress {seen}", flush=True)
            left = deadline - time.monotonic()
            if seen == len(sent) or left <= 0:
                break
            comps.changed.wait(left)
    try:
        first = comps.wait_for(list(sent), timeout=max(1, deadline - time.monotonic()))
    except AssertionError as e:
        # Reported, not raised: the caller prints its own view too.
        with comps.lock:
            have = {a["requestId"] for _, a, _ in comps.all}
        print(json.dumps({"summary": {"requests": len(sent), "completed": len(have & set(sent)), "error": str(e)}}), flush=True)
        comps.close()
        return
    finals = {}
    for s in range(sessions):
        session = f"{name}-load-{s}"
        rid = f"{run}-{session}-final"
        finals[session] = rid
        request(pub, n["req_topic"], session, rid, "cat log.txt").result(timeout=60)
    got = comps.wait_for(list(finals.values()))
    latencies = sorted((first[r][0] - sent[r]) * 1000 for r in sent)
    statuses = {}
    for r in sent:
        st = first[r][1]["status"]
        statuses[st] = statuses.get(st, 0) + 1
    order_kept = True
    for s in range(sessions):
        times = [first[f"{run}-{name}-load-{s}-{i}"][0] for i in range(1, per_session + 1)]
        order_kept &= times == sorted(times)
    logs = {s: got[rid][1]["result"]["stdout"] for s, rid in finals.items()}
    duplicates = sum(comps.count(r) - 1 for r in sent)
    span = max(first[r][0] for r in sent) - min(sent.values())
    summary = {
        "requests": len(sent),
        "completed": len(set(first) & set(sent)),
        "statuses": statuses,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, (len(latencies) * 99) // 100)],
        "seconds": span,
        "completion_order_kept": order_kept,
        "duplicate_completions": duplicates,
        "logs": logs,
        "per_session": per_session,
    }
    comps.close()
    print(json.dumps({"summary": summary}), flush=True)


def traced(project, name, traceparent):
    """One request published with a W3C `traceparent` attribute; prints the
    `traceparent` its completion carries."""
    n = names(project, name)
    comps = Completions(n["comp_sub"])
    pub = publisher()
    body = {"sessionId": "traced", "command": "true", "requestId": "traced-1"}
    pub.publish(
        n["req_topic"], json.dumps(body).encode(), ordering_key="traced", traceparent=traceparent
    ).result(timeout=30)
    got = comps.wait_for(["traced-1"])
    assert got["traced-1"][1]["status"] == "SUCCEEDED", got
    with comps.lock:
        attrs = [a for _, a, _ in comps.all if a["requestId"] == "traced-1"][0]
    comps.close()
    print("completion-traceparent", attrs.get("traceparent", ""))
    print("ok")


def main():
    cmd = sys.argv[1]
    if cmd == "setup":
        ordered = len(sys.argv) <= 5 or sys.argv[5] != "unordered"
        setup(sys.argv[2], sys.argv[3], int(sys.argv[4]), ordered)
    elif cmd == "traced":
        traced(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "scenario":
        scenario(sys.argv[2], sys.argv[3])
    elif cmd == "attack":
        attack(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "load":
        pause = sys.argv[7] if len(sys.argv) > 7 else "0"
        load(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), pause)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
