"""A command's stdin over `runbox serve`'s HTTP API, with Python's standard
HTTP client.

Run by tests/tests/serve_http.rs as `python3 serve_stdin.py BASE_URL`:
- a warm session's command reads lines written while it runs: each
  `got X` arrives as an event before the next line is written;
- a oneshot session's command gets what was written once it is closed;
- whole stdins as text and as base64;
- refusals: stdinStream without an event stream, two stdin fields, bad
  base64, another session's path or a made-up execution id (404), a write
  after the command ended.
Any failure raises and the process exits non-zero.
"""

import base64
import http.client
import json
import sys
import urllib.parse

BASE = urllib.parse.urlsplit(sys.argv[1])
TIMEOUT = 60


def connect():
    return http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=TIMEOUT)


def call(method, path, body=None, expect=200, content_type="application/json"):
    conn = connect()
    headers = {}
    if body is not None:
        headers["Content-Type"] = content_type
        if content_type == "application/json":
            body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    content = resp.read()
    conn.close()
    assert resp.status == expect, f"{method} {path}: {resp.status} {content[:500]!r}"
    if resp.status >= 400:
        assert resp.getheader("Content-Type") == "application/problem+json", resp.getheader("Content-Type")
        return json.loads(content)
    return json.loads(content) if content else None


class Events:
    """The server-sent events of one exec answer, read as they come."""

    def __init__(self, session, body):
        self.conn = connect()
        self.conn.request(
            "POST",
            f"/v1/sessions/{session}/exec?stream=true",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, (self.resp.status, self.resp.read()[:500])
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")

    def next(self):
        name, data = None, []
        while True:
            line = self.resp.readline()
            assert line, "the event stream ended early"
            line = line.decode().rstrip("\r\n")
            if line == "":
                if name is not None or data:
                    return name, json.loads("\n".join(data)) if data else None
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def until(self, wanted):
        """Events up to the first `stdout` holding `wanted`, or the end."""
        seen = []
        while True:
            name, data = self.next()
            seen.append((name, data))
            if name == "stdout" and wanted in "".join(d["text"] for n, d in seen if n == "stdout"):
                return seen
            assert name not in ("result", "problem"), f"ended before {wanted!r}: {seen}"

    def result(self):
        while True:
            name, data = self.next()
            if name == "result":
                self.conn.close()
                return data
            assert name != "problem", data


def stdin(session, execution, data, close=False, expect=204):
    path = f"/v1/sessions/{session}/executions/{execution}/stdin" + ("?close=true" if close else "")
    return call("POST", path, data, expect=expect, content_type="application/octet-stream")


def main():
    reader = "while read l; do echo got $l; done"

    # Warm: each line is read while the command runs.
    call("POST", "/v1/sessions", {"sessionId": "warm-1", "mode": "warm"}, expect=201)
    events = Events("warm-1", {"command": reader, "stdinStream": True, "timeoutMs": 60000})
    name, started = events.next()
    assert name == "started", (name, started)
    execution = started["executionId"]
    stdin("warm-1", execution, b"a\n")
    events.until("got a\n")
    # Another session's path, a made-up id: nothing to write to.
    problem = stdin("mallory", execution, b"evil\n", expect=404)
    assert problem["type"] == "urn:runbox:problem:not-found", problem
    stdin("warm-1", "x-" + execution, b"evil\n", expect=404)
    stdin("warm-1", execution, b"b\n")
    events.until("got b\n")
    stdin("warm-1", execution, b"", close=True)
    result = events.result()
    assert result["status"] == "SUCCEEDED", result
    assert result["stdout"] == "got a\ngot b\n", result
    assert result["executionId"] == execution, result
    # The command has ended: its stdin is gone.
    stdin("warm-1", execution, b"late\n", expect=404)

    # A caller that hangs up after `started`: the command still runs and
    # takes its input, and its writer is gone once it ended.
    events = Events("warm-1", {"command": "cat > hung-up.txt", "stdinStream": True, "timeoutMs": 60000})
    name, started = events.next()
    assert name == "started", (name, started)
    execution = started["executionId"]
    events.conn.close()
    stdin("warm-1", execution, b"after hang-up\n", close=True)
    result = call("POST", "/v1/sessions/warm-1/exec", {"command": "cat hung-up.txt"})
    assert result["stdout"] == "after hang-up\n", result
    stdin("warm-1", execution, b"late\n", expect=404)

    # Oneshot: the command starts once its stdin is closed.
    events = Events("oneshot-1", {"command": reader, "stdinStream": True, "timeoutMs": 60000})
    name, started = events.next()
    assert name == "started", (name, started)
    execution = started["executionId"]
    stdin("oneshot-1", execution, b"x\n")
    stdin("oneshot-1", execution, b"y\n", close=True)
    result = events.result()
    assert result["status"] == "SUCCEEDED", result
    assert result["stdout"] == "got x\ngot y\n", result

    # Whole stdins.
    result = call("POST", "/v1/sessions/oneshot-1/exec", {"command": "cat", "stdin": "hello\n"})
    assert result["stdout"] == "hello\n", result
    data = base64.b64encode(b"\x00\xff\n").decode()
    result = call("POST", "/v1/sessions/oneshot-1/exec", {"command": "od -An -tx1", "stdinBase64": data})
    assert result["stdout"].split() == ["00", "ff", "0a"], result

    # Refused before anything runs.
    marker = "touch refused-ran"
    for body, word in (
        ({"command": marker, "stdinStream": True}, "event-stream"),
        ({"command": marker, "stdin": "a", "stdinStream": True}, "at most one"),
        ({"command": marker, "stdin": "a", "stdinBase64": "YQ=="}, "at most one"),
        ({"command": marker, "stdinBase64": "not base64!"}, "stdinBase64"),
    ):
        problem = call("POST", "/v1/sessions/oneshot-1/exec", body, expect=400)
        assert word in problem["detail"], problem
    result = call("POST", "/v1/sessions/oneshot-1/exec", {"command": "test -e refused-ran; echo $?"})
    assert result["stdout"] == "1\n", result

    print("stdin scenario: ok")


if __name__ == "__main__":
    main()
