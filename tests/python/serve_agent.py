"""The agent scenario against `runbox serve`, with Python's standard HTTP client.

Run by tests/tests/serve_http.rs as `python3 serve_agent.py BASE_URL`:
write app.py, run it, read the file it wrote, start `python3 -m
http.server` in the background, read its logs, kill it, delete the
session. Every step checks what it got; any failure raises and the
process exits non-zero.
"""

import json
import re
import sys
import urllib.error
import urllib.request

BASE = sys.argv[1].rstrip("/")
SESSION = "agent-1"
TIMEOUT = 60


def call(method, path, body=None, raw=False, expect=200):
    data = None
    headers = {}
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers["Content-Type"] = "application/octet-stream"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status, content = resp.status, resp.read()
            content_type = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, content = e.code, e.read()
        content_type = e.headers.get("Content-Type", "")
    assert status == expect, f"{method} {path}: {status} {content[:500]!r}"
    if status >= 400:
        assert content_type == "application/problem+json", content_type
    return content if raw else json.loads(content)


def main():
    app = (
        "import os\n"
        "os.makedirs('out', exist_ok=True)\n"
        "with open('out/result.txt', 'w') as f:\n"
        "    f.write('squares: ' + ' '.join(str(i * i) for i in range(5)) + '\\n')\n"
        "print('wrote out/result.txt')\n"
    )
    info = call("PUT", f"/v1/sessions/{SESSION}/files/app.py", app.encode())
    assert info["path"] == "app.py" and info["size"] == len(app), info

    result = call(
        "POST",
        f"/v1/sessions/{SESSION}/exec",
        {"command": "python3 app.py", "timeoutMs": 60000, "requestId": "req-1"},
    )
    assert result["status"] == "SUCCEEDED", result
    assert result["exitCode"] == 0 and result["stdout"] == "wrote out/result.txt\n", result
    assert result["sessionId"] == SESSION, result

    written = call("GET", f"/v1/sessions/{SESSION}/files/out/result.txt", raw=True)
    assert written == b"squares: 0 1 4 9 16\n", written
    first = call("GET", f"/v1/sessions/{SESSION}/files/app.py?lines=2:3", raw=True)
    assert first.decode() == "".join(app.splitlines(True)[1:3]), first

    # A failing command is still a result, not an HTTP error.
    failed = call("POST", f"/v1/sessions/{SESSION}/exec", {"command": "exit 3"})
    assert failed["status"] == "FAILED" and failed["exitCode"] == 3, failed

    server = call(
        "POST",
        f"/v1/sessions/{SESSION}/background",
        {"command": "python3 -u -m http.server 0 --bind 127.0.0.1"},
        expect=201,
    )
    handle = server["handle"]
    assert server["status"] == "RUNNING", server

    # Follow stdout as a streamed response until the server says its port.
    url = f"{BASE}/v1/sessions/{SESSION}/background/{handle}/logs?stream=stdout&follow=true"
    seen = b""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        while not re.search(rb"port \d+ ", seen):
            chunk = resp.read1(65536)
            assert chunk, f"log stream ended early: {seen!r}"
            seen += chunk
    port = int(re.search(rb"port (\d+) ", seen).group(1))

    fetched = call(
        "POST",
        f"/v1/sessions/{SESSION}/exec",
        {
            "command": "python3 -c \"import urllib.request as u; "
            f"print(u.urlopen('http://127.0.0.1:{port}/out/result.txt').read().decode(), end='')\""
        },
    )
    assert fetched["stdout"] == "squares: 0 1 4 9 16\n", fetched

    listed = call("GET", f"/v1/sessions/{SESSION}/background")
    assert [p["handle"] for p in listed["processes"]] == [handle], listed
    assert listed["processes"][0]["status"] == "RUNNING", listed

    killed = call("DELETE", f"/v1/sessions/{SESSION}/background/{handle}")
    assert killed["status"] == "CANCELLED", killed

    # The request log of the GET above, on stderr, read after the end.
    logs = call(
        "GET",
        f"/v1/sessions/{SESSION}/background/{handle}/logs?stream=stderr",
        raw=True,
    )
    assert b"GET /out/result.txt" in logs, logs

    listed = call("GET", f"/v1/sessions/{SESSION}/background")
    assert listed["processes"][0]["status"] == "CANCELLED", listed

    root = call("GET", f"/v1/sessions/{SESSION}/dirs")
    assert [(e["name"], e["kind"]) for e in root["entries"]] == [("app.py", "file"), ("out", "dir")], root
    found = call("GET", f"/v1/sessions/{SESSION}/find?glob=**/*.txt")
    assert found["paths"] == ["out/result.txt"], found
    replaced = call(
        "POST",
        f"/v1/sessions/{SESSION}/replace/out/result.txt",
        {"old": "squares", "new": "SQUARES"},
    )
    assert replaced["replaced"] == 1, replaced
    matches = call("GET", f"/v1/sessions/{SESSION}/search/out/result.txt?pattern=%5ESQ.*16$")
    assert matches["matches"] == [{"lineNumber": 1, "line": "SQUARES: 0 1 4 9 16"}], matches

    deleted = call("DELETE", f"/v1/sessions/{SESSION}")
    assert deleted["deleted"] > 0, deleted
    gone = call("GET", f"/v1/sessions/{SESSION}", expect=404)
    assert gone["type"] == "urn:runbox:problem:not-found", gone
    assert gone["status"] == 404, gone
    print("agent scenario: ok")


if __name__ == "__main__":
    main()
