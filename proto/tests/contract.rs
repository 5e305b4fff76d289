//! The Rust types are the single definition of the wire contract; this test
//! keeps `runbox/v1/runbox.proto` (the document other languages read) in step
//! with them: same field names (as their JSON names) and same tags.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use runbox_proto::{ExecCompleted, ExecRequest, ExecResult, SessionState};
use serde::Serialize;

/// Field name → tag of every message in the .proto file.
fn proto_fields() -> BTreeMap<String, BTreeMap<String, u32>> {
    let text = include_str!("../runbox/v1/runbox.proto");
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("message ") {
            current = Some(rest.trim_end_matches('{').trim().to_owned());
            out.insert(current.clone().unwrap(), BTreeMap::new());
            continue;
        }
        if line == "}" {
            current = None;
            continue;
        }
        let (Some(message), Some((decl, tag))) = (&current, line.split_once('=')) else {
            continue;
        };
        let name = decl.split_whitespace().last().unwrap().to_owned();
        let tag: u32 = tag.trim().trim_end_matches(';').trim().parse().unwrap();
        out.get_mut(message).unwrap().insert(name, tag);
    }
    out
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The tags present in an encoded message (top level only).
fn wire_tags(bytes: &[u8]) -> BTreeSet<u32> {
    let mut tags = BTreeSet::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (tag, wire) = ((key >> 3) as u32, (key & 7) as u8);
        tags.insert(tag);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut buf).unwrap();
            }
            1 => buf = &buf[8..],
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[len..];
            }
            5 => buf = &buf[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    tags
}

fn json_names<T: Serialize + Default>() -> BTreeSet<String> {
    match serde_json::to_value(T::default()).unwrap() {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

fn check<T: Message + Serialize + Default>(name: &str, full: &T) {
    let proto = proto_fields();
    let fields = proto
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from the .proto"));
    let proto_names: BTreeSet<String> = fields.keys().map(|n| camel(n)).collect();
    assert_eq!(json_names::<T>(), proto_names, "{name}: field names differ");
    let proto_tags: BTreeSet<u32> = fields.values().copied().collect();
    assert_eq!(
        wire_tags(&full.encode_to_vec()),
        proto_tags,
        "{name}: tags differ (is every field set in the test value?)"
    );
}

fn ts() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 2,
    })
}

#[test]
fn the_proto_document_matches_the_rust_definitions() {
    let one = BTreeMap::from([("K".to_owned(), "V".to_owned())]);
    let request = ExecRequest {
        execution_id: "e".into(),
        session_id: "s".into(),
        command: "c".into(),
        env: one.clone(),
        timeout_ms: 1,
        output_cap_bytes: 1,
        created_at: ts(),
        traceparent: "t".into(),
        request_id: "r".into(),
        background: true,
        stdin_bytes: 1,
        stream_output: true,
        stdin_stream: true,
        stdin_token_sha256: "h".into(),
    };
    check("ExecRequest", &request);
    let result = ExecResult {
        execution_id: "e".into(),
        session_id: "s".into(),
        status: 1,
        exit_code: 1,
        stdout: "o".into(),
        stderr: "e".into(),
        stdout_truncated: true,
        stderr_truncated: true,
        stdout_lossy: true,
        stderr_lossy: true,
        stdout_log: "l".into(),
        stderr_log: "l".into(),
        stdout_bytes: 1,
        stderr_bytes: 1,
        cwd: "/".into(),
        started_at: ts(),
        completed_at: ts(),
        message: "m".into(),
        state_generation: 1,
        state_conflict: true,
        not_saved: vec!["file:a.txt".into()],
    };
    check("ExecResult", &result);
    check(
        "SessionState",
        &SessionState {
            session_id: "s".into(),
            cwd: "/".into(),
            env: one,
            unset_env: vec!["X".into()],
            exec_count: 1,
            last_execution_id: "e".into(),
            created_at: ts(),
            updated_at: ts(),
        },
    );
    check(
        "ExecCompleted",
        &ExecCompleted {
            execution_id: "e".into(),
            session_id: "s".into(),
            status: 1,
            exit_code: 1,
            result_object: "r".into(),
            result: Some(result),
            request_id: "r".into(),
            error: "x".into(),
        },
    );
}

#[test]
fn json_form_uses_names_and_rfc3339() {
    let mut r = ExecResult {
        started_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    r.set_exec_status(runbox_proto::ExecStatus::TimedOut);
    let json: serde_json::Value = serde_json::from_slice(&runbox_proto::to_json(&r)).unwrap();
    assert_eq!(json["status"], "TIMED_OUT");
    assert_eq!(json["startedAt"], "2023-11-14T22:13:20Z");
    let back: ExecResult =
        runbox_proto::from_json("ExecResult", &runbox_proto::to_json(&r)).unwrap();
    assert_eq!(back, r);
    // Requests from the topic refuse unknown fields; a typo is not ignored.
    let err =
        runbox_proto::from_json::<ExecRequest>("ExecRequest", br#"{"comand":"ls"}"#).unwrap_err();
    assert!(err.detail().contains("comand"), "{}", err.detail());
    let err =
        runbox_proto::from_json::<ExecResult>("ExecResult", br#"{"status":"DONE"}"#).unwrap_err();
    assert!(err.detail().contains("DONE"), "{}", err.detail());
}
