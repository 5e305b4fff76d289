//! Everything but the token exchange: Cloud Storage's JSON API, checked
//! against the bearer token's boundary, then forwarded to fake-gcs-server.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::json;

use crate::boundary::Permission;
use crate::cel;
use crate::{RequestRecord, State, TokenKind, lock};

/// The largest body the proxy buffers.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// What a request is about.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// One object.
    Object { bucket: String, name: String },
    /// A list, with its prefix.
    List { bucket: String, prefix: String },
    /// A new upload (multipart, media, or a resumable session's start).
    Upload {
        bucket: String,
        name: Option<String>,
    },
    /// A chunk of a resumable session.
    Resume { upload_id: String },
    /// A bucket, or nothing the stand-in knows.
    Other,
}

pub(crate) async fn forward(Extract(state): Extract<Arc<State>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return gcs_error(StatusCode::BAD_REQUEST, &format!("read body: {e}")),
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (kind, issued) = state.classify(&parts.headers);
    let mut record = RequestRecord {
        token: kind,
        token_id: issued.as_ref().map(|i| i.id),
        boundary: issued
            .as_ref()
            .map(|i| {
                i.boundary
                    .rules
                    .iter()
                    .map(|r| r.expression.clone().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default(),
        method: parts.method.to_string(),
        permission: None,
        object: None,
        status: 0,
    };
    let target = target(&parts.method, &path, &query, &parts.headers, &body, &state);
    let (needed, object, bucket) = needs(&parts.method, &target);
    record.object = object.clone();

    let refusal = match kind {
        TokenKind::Source => None,
        TokenKind::None => Some((
            StatusCode::UNAUTHORIZED,
            "Anonymous caller does not have access".to_owned(),
        )),
        TokenKind::Unknown => Some((StatusCode::UNAUTHORIZED, "Invalid Credentials".to_owned())),
        TokenKind::Expired => Some((
            StatusCode::UNAUTHORIZED,
            "The access token has expired".to_owned(),
        )),
        TokenKind::Downscoped => {
            let boundary = &issued.as_ref().map(|i| &i.boundary);
            let mut needed = needed.clone();
            // Overwriting takes delete as well, as on Cloud Storage.
            if let (
                Target::Upload {
                    name: Some(name), ..
                },
                Some(bucket),
            ) = (&target, &bucket)
                && query_value(&query, "ifGenerationMatch").as_deref() != Some("0")
                && exists(&state, bucket, name).await
            {
                needed.push(Permission::Delete);
            }
            let denied = needed.iter().copied().find(|p| {
                let Some(bucket) = &bucket else { return true };
                let req = request_of(&target, bucket);
                !boundary.is_some_and(|b| {
                    b.allows(
                        bucket,
                        *p,
                        &cel::Request {
                            resource_name: &req.0,
                            list_prefix: &req.1,
                        },
                    )
                })
            });
            denied.map(|p| {
                record.permission = Some(p);
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "The downscoped token does not have {} access to {}",
                        p.as_str(),
                        object.as_deref().unwrap_or("this resource")
                    ),
                )
            })
        }
    };
    if record.permission.is_none() {
        record.permission = needed.first().copied();
    }
    if let Some((status, message)) = refusal {
        record.status = status.as_u16();
        state.record(record);
        return gcs_error(status, &message);
    }
    let response = match upstream(&state, &parts.method, &path, &query, &parts.headers, body).await
    {
        Ok(r) => r,
        Err(e) => {
            record.status = 502;
            state.record(record);
            return gcs_error(StatusCode::BAD_GATEWAY, &format!("fake-gcs-server: {e}"));
        }
    };
    let status = response.status();
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if name == header::LOCATION {
            if let Some(rewritten) = rewrite_location(&state, &target, value) {
                headers.insert(header::LOCATION, rewritten);
            }
        } else if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
        {
            headers.append(name.clone(), value.clone());
        }
    }
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            record.status = 502;
            state.record(record);
            return gcs_error(StatusCode::BAD_GATEWAY, &format!("fake-gcs-server: {e}"));
        }
    };
    record.status = status.as_u16();
    state.record(record);
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The permissions a request needs before any existence check, the object
/// (or list prefix) it is about, and its bucket.
fn needs(method: &Method, target: &Target) -> (Vec<Permission>, Option<String>, Option<String>) {
    match target {
        Target::Object { bucket, name } => {
            let p = match *method {
                Method::GET | Method::HEAD => Permission::Get,
                Method::DELETE => Permission::Delete,
                _ => Permission::Update,
            };
            (vec![p], Some(name.clone()), Some(bucket.clone()))
        }
        Target::List { bucket, prefix } => (
            vec![Permission::List],
            Some(format!("{prefix}*")),
            Some(bucket.clone()),
        ),
        Target::Upload { bucket, name } => {
            (vec![Permission::Create], name.clone(), Some(bucket.clone()))
        }
        // Checked where the session started; a chunk of an unknown session
        // (or one whose name could not be read) is refused below.
        Target::Resume { .. } | Target::Other => (vec![Permission::Bucket], None, None),
    }
}

/// `resource.name` and the list-prefix attribute of a request.
fn request_of(target: &Target, bucket: &str) -> (String, String) {
    match target {
        Target::Object { name, .. }
        | Target::Upload {
            name: Some(name), ..
        } => (
            format!("projects/_/buckets/{bucket}/objects/{name}"),
            String::new(),
        ),
        Target::List { prefix, .. } => (format!("projects/_/buckets/{bucket}"), prefix.clone()),
        _ => (format!("projects/_/buckets/{bucket}"), String::new()),
    }
}

fn target(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    state: &State,
) -> Target {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    match segments.as_slice() {
        ["storage", "v1", "b", bucket, "o"] | ["download", "storage", "v1", "b", bucket, "o"]
            if *method == Method::GET =>
        {
            Target::List {
                bucket: decode(bucket).unwrap_or_default(),
                prefix: query_value(query, "prefix").unwrap_or_default(),
            }
        }
        ["storage", "v1", "b", bucket, "o", object]
        | ["download", "storage", "v1", "b", bucket, "o", object] => {
            match (decode(bucket), decode(object)) {
                (Some(bucket), Some(name)) => Target::Object { bucket, name },
                _ => Target::Other,
            }
        }
        ["upload", "storage", "v1", "b", bucket, "o"] => {
            if let Some(id) = query_value(query, "upload_id") {
                return match lock(&state.uploads).get(&id) {
                    Some(name) => Target::Upload {
                        bucket: decode(bucket).unwrap_or_default(),
                        name: Some(name.clone()),
                    },
                    None => Target::Resume { upload_id: id },
                };
            }
            Target::Upload {
                bucket: decode(bucket).unwrap_or_default(),
                name: query_value(query, "name").or_else(|| upload_name(headers, body)),
            }
        }
        _ => Target::Other,
    }
}

/// The object name in an upload's metadata: the JSON body of a resumable
/// session's start, or the first part of a multipart body.
fn upload_name(headers: &HeaderMap, body: &Bytes) -> Option<String> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let json: &[u8] = if content_type.starts_with("multipart/") {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()?
            .trim_matches('"');
        let delimiter = format!("--{boundary}");
        let text = body.as_ref();
        let start = find(text, delimiter.as_bytes())? + delimiter.len();
        let part = &text[start..];
        let headers_end = find(part, b"\r\n\r\n")? + 4;
        let part = &part[headers_end..];
        let end = find(part, delimiter.as_bytes())?;
        &part[..end]
    } else {
        body.as_ref()
    };
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    value.get("name")?.as_str().map(str::to_owned)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Whether the object exists (asked with no credential of the caller's).
async fn exists(state: &State, bucket: &str, name: &str) -> bool {
    let url = format!(
        "{}/storage/v1/b/{}/o/{}",
        state.settings.upstream,
        encode(bucket),
        encode(name)
    );
    matches!(state.http.get(url).send().await, Ok(r) if r.status().is_success())
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn upstream(
    state: &State,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut url = format!("{}{path}", state.settings.upstream);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let mut request = state.http.request(method.clone(), url).body(body);
    for (name, value) in headers {
        // The caller's token stays here; fake-gcs-server needs none.
        if name != header::AUTHORIZATION && name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    request.send().await
}

/// A resumable session's location, pointed back at the proxy (so its
/// chunks are checked too), with its upload id remembered.
fn rewrite_location(state: &State, target: &Target, value: &HeaderValue) -> Option<HeaderValue> {
    let location = value.to_str().ok()?;
    let rest = location
        .strip_prefix(&state.settings.upstream)
        .or_else(|| {
            location
                .split_once("://")
                .and_then(|(_, r)| r.find('/').map(|i| &r[i..]))
        })?;
    if let (
        Target::Upload {
            name: Some(name), ..
        },
        Some(id),
    ) = (
        target,
        rest.split_once('?')
            .and_then(|(_, q)| query_value(q, "upload_id")),
    ) {
        lock(&state.uploads).insert(id, name.clone());
    }
    HeaderValue::from_str(&format!("{}{rest}", state.base)).ok()
}

/// An error in Cloud Storage's JSON shape.
fn gcs_error(status: StatusCode, message: &str) -> Response {
    let reason = match status {
        StatusCode::UNAUTHORIZED => "required",
        StatusCode::FORBIDDEN => "forbidden",
        _ => "backendError",
    };
    (
        status,
        axum::Json(json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "errors": [{ "message": message, "domain": "global", "reason": reason }],
            }
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_uploads_name_their_object() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/related; boundary=xyz"),
        );
        let body = Bytes::from_static(
            b"--xyz\r\nContent-Type: application/json\r\n\r\n{\"name\":\"sessions/A/state.json\"}\r\n--xyz\r\n\r\ndata\r\n--xyz--",
        );
        assert_eq!(
            upload_name(&headers, &body).as_deref(),
            Some("sessions/A/state.json")
        );
        assert_eq!(
            query_value("a=1&prefix=sessions%2FA%2F", "prefix").as_deref(),
            Some("sessions/A/")
        );
    }
}
