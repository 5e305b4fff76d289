//! What the warm-session tests share: a command that answers each line of
//! its stdin, reading its live output up to an answer, and a background
//! HTTP server that says when it listens.

use runbox_dispatcher::{ExecStatus, OutputStream, Session, Stream};

use crate::embedded::within;

/// Answers each line of its stdin with `got LINE`.
pub const ECHO_LINES: &str = "while read -r l; do echo got $l; done";

/// Reads `output` until the stdout seen so far (kept in `seen`) holds
/// `needle`; panics when the stream ends first or a minute passes with no
/// chunk.
pub async fn stdout_until(output: &mut OutputStream, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        let chunk = within(60, output.next())
            .await
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}; stdout {seen:?}"));
        if chunk.stream == Stream::Stdout {
            seen.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    }
}

/// Runs [`ECHO_LINES`] in `session` with a streamed stdin: writes `a`,
/// waits for `got a` (and asserts `got b` has not come), writes `b`, waits
/// for `got b`, closes; the command must succeed with exactly both
/// answers. `round` names the case in failures.
pub async fn write_answer_write(session: &Session, round: &str) {
    let (exec, stdin) = session.exec(ECHO_LINES).stdin_stream();
    let (mut output, result) = exec.streaming();
    let result = tokio::spawn(result);
    let mut seen = String::new();
    within(30, stdin.write("a\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got a\n").await;
    assert!(!seen.contains("got b"), "{round}: {seen:?}");
    within(30, stdin.write("b\n")).await.unwrap();
    stdout_until(&mut output, &mut seen, "got b\n").await;
    within(30, stdin.close()).await.unwrap();
    let r = within(60, result).await.unwrap().unwrap();
    assert_eq!(r.exec_status(), ExecStatus::Succeeded, "{round}: {r:?}");
    assert_eq!(r.stdout, "got a\ngot b\n", "{round}");
}

/// A command that starts an HTTP server on `port` in the background (its
/// log in `server.log`), serving the cwd; the server writes `listening` to
/// `ready` (a named pipe's shell path) once it accepts connections, and
/// the command prints `started`.
pub fn http_server_command(port: u16, ready: &str) -> String {
    format!(
        "python3 -c 'import http.server as h, sys
s = h.HTTPServer((\"127.0.0.1\", {port}), h.SimpleHTTPRequestHandler)
open(sys.argv[1], \"w\").write(\"listening\\n\")
s.serve_forever()' {ready} > server.log 2>&1 &
echo started"
    )
}
