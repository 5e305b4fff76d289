//! The object layout (DESIGN §4): one function per object name, so no other
//! code formats a path by hand.

use crate::ids::{ExecutionId, SessionId};

/// Prefix of every request object.
pub const REQUESTS_PREFIX: &str = "requests/";
/// Prefix of every result object; its finalize events are completion signals.
pub const RESULTS_PREFIX: &str = "results/";
/// Prefix of every log object.
pub const LOGS_PREFIX: &str = "logs/";
/// Prefix of every session's objects.
pub const SESSIONS_PREFIX: &str = "sessions/";

/// `requests/{execution}.json`: the ExecRequest, written before launch.
pub fn request(id: &ExecutionId) -> String {
    format!("{REQUESTS_PREFIX}{id}.json")
}

/// `requests/{execution}.stdin`: the command's standard input, written
/// before the request when the request has `stdin_bytes` > 0.
pub fn request_stdin(id: &ExecutionId) -> String {
    format!("{REQUESTS_PREFIX}{id}.stdin")
}

/// `results/{execution}.json`: the ExecResult, written last and once.
pub fn result(id: &ExecutionId) -> String {
    format!("{RESULTS_PREFIX}{id}.json")
}

/// The execution id of a result object name, if `name` is one.
pub fn parse_result(name: &str) -> Option<ExecutionId> {
    let id = name.strip_prefix(RESULTS_PREFIX)?.strip_suffix(".json")?;
    ExecutionId::new(id).ok()
}

/// `results/{execution}.taken`: written (empty, create-only) by a warm
/// execution on Cloud Run when it takes a command delivered over Pub/Sub,
/// before it runs it; its finalize event tells the dispatcher that
/// published the command that it was taken (see [`crate::warm`]).
pub fn warm_taken(id: &ExecutionId) -> String {
    format!("{RESULTS_PREFIX}{id}.taken")
}

/// `logs/{execution}/stdout` or `…/stderr`: a full output stream.
pub fn log(id: &ExecutionId, stream: Stream) -> String {
    format!("{LOGS_PREFIX}{id}/{}", stream.as_str())
}

/// `logs/{execution}/`: every log object of one execution.
pub fn logs_prefix(id: &ExecutionId) -> String {
    format!("{LOGS_PREFIX}{id}/")
}

/// `sessions/{session}/`: every object of one session.
pub fn session_prefix(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/")
}

/// `sessions/{session}/state.json`: the SessionState.
pub fn session_state(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/state.json")
}

/// `sessions/{session}/mode.json`: the session's settings (mode, idle
/// timeout; see [`crate::warm::SessionSettings`]), written when it is
/// created.
pub fn session_settings(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/mode.json")
}

/// `sessions/{session}/warm.json`: the session's running warm execution
/// on Cloud Run ([`crate::warm::WarmMarker`]), written by the dispatcher
/// that launched it.
pub fn warm_marker(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/warm.json")
}

/// `sessions/{session}/workspace/`: the session's files, one object per file.
pub fn workspace_prefix(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/workspace/")
}

/// `sessions/{session}/lease`: who runs the session's command now, and
/// until when (the gcp backend's cross-process session order).
pub fn session_lease(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/lease")
}

/// The session whose lease `name` is, if it is one.
pub fn parse_session_lease(name: &str) -> Option<SessionId> {
    let id = name.strip_prefix(SESSIONS_PREFIX)?.strip_suffix("/lease")?;
    SessionId::new(id).ok()
}

/// `sessions/{session}/manifest.json`: the list of every entry of the
/// session's workspace (files with size, mode, checksum and generation,
/// directories, symlinks), written after the files it describes.
pub fn manifest(id: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{id}/manifest.json")
}

/// `sessions/{session}/background/{execution}.json`: the marker of one
/// background process, written by the dispatcher at launch; listing the
/// prefix lists the session's background processes.
pub fn background_marker(session: &SessionId, id: &ExecutionId) -> String {
    format!("{SESSIONS_PREFIX}{session}/background/{id}.json")
}

/// `sessions/{session}/background/`: every background marker of a session.
pub fn background_prefix(session: &SessionId) -> String {
    format!("{SESSIONS_PREFIX}{session}/background/")
}

/// `logs/{execution}/stdout.000001`, `.000002`, ...: the `n`th chunk (from
/// 1) of a background process's stream. Zero-padded so chunks list in order.
pub fn log_chunk(id: &ExecutionId, stream: Stream, n: u64) -> String {
    format!("{LOGS_PREFIX}{id}/{}.{n:06}", stream.as_str())
}

/// `results/{execution}.chunk.stdout.000001`, `.000002`, … (and the same for
/// stderr): the `n`th live output chunk (from 1) of a command run with
/// `streamOutput`, written while the command runs and before its result.
///
/// They live beside the result, not under `logs/`, because the bucket
/// notifies only `results/` (and each dispatcher's subscription filters on
/// `results/{instance}-`): their finalize events reach the caller on the
/// same path as the result's, with no second notification config that
/// would also publish every workspace write. They are not results:
/// [`parse_result`] ignores them.
pub fn output_chunk(id: &ExecutionId, stream: Stream, n: u64) -> String {
    format!(
        "{RESULTS_PREFIX}{id}{CHUNK_INFIX}{}.{n:06}",
        stream.as_str()
    )
}

/// `results/{execution}.chunk.`: every live output chunk of one execution.
pub fn output_chunks_prefix(id: &ExecutionId) -> String {
    format!("{RESULTS_PREFIX}{id}{CHUNK_INFIX}")
}

/// The execution, stream and number of a live output chunk's name, if
/// `name` is one.
pub fn parse_output_chunk(name: &str) -> Option<(ExecutionId, Stream, u64)> {
    let rest = name.strip_prefix(RESULTS_PREFIX)?;
    let (id, rest) = rest.split_once(CHUNK_INFIX)?;
    let (stream, n) = rest.split_once('.')?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    if n.len() < 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = n.parse().ok().filter(|&n| n > 0)?;
    Some((ExecutionId::new(id).ok()?, stream, n))
}

/// Between an execution id and the stream of its live output chunks; ids
/// have no dots, so the split is unambiguous.
const CHUNK_INFIX: &str = ".chunk.";

/// One of the two captured output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// "stdout" or "stderr".
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_names_round_trip() {
        let id = ExecutionId::new("abc123-0001").unwrap();
        assert_eq!(result(&id), "results/abc123-0001.json");
        assert_eq!(parse_result(&result(&id)), Some(id.clone()));
        assert_eq!(parse_result("results/../x.json"), None);
        assert_eq!(parse_result("requests/abc.json"), None);
        assert_eq!(parse_result("results/abc.txt"), None);
        assert_eq!(log(&id, Stream::Stderr), "logs/abc123-0001/stderr");
        let s = SessionId::new("s1").unwrap();
        assert_eq!(manifest(&s), "sessions/s1/manifest.json");
        assert_eq!(session_lease(&s), "sessions/s1/lease");
        assert_eq!(parse_session_lease("sessions/s1/lease"), Some(s.clone()));
        assert_eq!(parse_session_lease("sessions/s1/state.json"), None);
        assert_eq!(parse_session_lease("sessions/a/b/lease"), None);
    }

    #[test]
    fn output_chunk_names_round_trip_and_are_not_results() {
        let id = ExecutionId::new("abc123-0001").unwrap();
        let name = output_chunk(&id, Stream::Stderr, 7);
        assert_eq!(name, "results/abc123-0001.chunk.stderr.000007");
        assert!(name.starts_with(&output_chunks_prefix(&id)));
        assert_eq!(
            parse_output_chunk(&name),
            Some((id.clone(), Stream::Stderr, 7))
        );
        assert_eq!(parse_result(&name), None);
        assert_eq!(parse_output_chunk(&result(&id)), None);
        assert_eq!(parse_output_chunk("results/abc.chunk.stdin.000001"), None);
        assert_eq!(parse_output_chunk("results/abc.chunk.stdout.000000"), None);
        assert_eq!(parse_output_chunk("results/abc.chunk.stdout.1"), None);
        assert_eq!(parse_output_chunk("results/a/b.chunk.stdout.000001"), None);
    }
}
