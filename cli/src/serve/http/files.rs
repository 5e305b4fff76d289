//! Workspace file routes: raw bytes in and out, streamed; line ranges;
//! existence, deletion and listings.
//!
//! The `{path}` is what a command in the session would use, relative to
//! its workspace (or absolute under the workspace root); the library
//! refuses anything that leaves the workspace (`..`, other absolute paths,
//! symlinks out) before any I/O. Percent-encoded slashes are decoded before
//! that check, so `a%2F..%2F..` is refused like `a/../..`.

use std::io;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use runbox_dispatcher::files::MAX_EDIT_BYTES;
use runbox_dispatcher::{DeleteOptions, ReadOptions, UploadOptions, WriteOptions};
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use super::Api;
use super::extract::{Params, QueryArgs};
use super::problem::{Problem, ProblemKind};
use super::schema::{Deleted, DirEntryView, DirList, FileView};

/// `Runbox-Total-Lines`: lines in the whole file, on a line-range read.
const TOTAL_LINES: &str = "runbox-total-lines";
/// `Runbox-Truncated`: the text was cut at `maxLength`.
const TRUNCATED: &str = "runbox-truncated";
/// `Runbox-Lossy`: invalid UTF-8 was replaced in a line-range read.
const LOSSY: &str = "runbox-lossy";
/// `Runbox-Generation`: the store generation of the file read.
const GENERATION: &str = "runbox-generation";

/// Query of `GET …/files/{path}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// A 1-based, inclusive line range `A:B` (`A:` to the end, `:B` from the
    /// start): answers those lines as UTF-8 text instead of the raw bytes.
    lines: Option<String>,
    /// With `lines`: most bytes of text to answer.
    max_length: Option<usize>,
}

/// Query of `PUT …/files/{path}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Add the body to the end of the file (created if missing) instead of
    /// replacing it; bodies up to 64 MiB.
    #[serde(default)]
    append: bool,
}

/// Query of `DELETE …/files/{path}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete a directory with everything below it.
    #[serde(default)]
    recursive: bool,
}

/// The session and file path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its documentation is used.
pub struct FileParams {
    /// The session id, `[A-Za-z0-9_-]{1,64}`.
    session: String,
    /// The file's path in the session's workspace.
    path: String,
}

/// A file's bytes, streamed; with `lines=A:B`, those lines as text.
#[utoipa::path(get, path = "/v1/sessions/{session}/files/{path}", operation_id = "readFile", tag = "files",
    params(FileParams, ReadQuery),
    responses(
        (status = 200, description = "The raw bytes (or, with `lines`, the lines as text)", content_type = "application/octet-stream",
            headers(("runbox-generation" = i64, description = "Store generation of the file"),
                    ("runbox-total-lines" = u64, description = "With `lines`: lines in the whole file"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<ReadQuery>,
) -> Result<Response, Problem> {
    let session = api.client.session(&session)?;
    if let Some(range) = query.lines.as_deref() {
        let (start, end) = parse_lines(range)?;
        let mut opts = ReadOptions::default().lines(start, end);
        if let Some(max) = query.max_length {
            opts = opts.max_length(max);
        }
        let text = session.read_file(&path, opts).await?;
        let mut response = text.content.into_response();
        let headers = response.headers_mut();
        headers.insert(TOTAL_LINES, HeaderValue::from(text.total_lines));
        headers.insert(TRUNCATED, bool_header(text.truncated));
        headers.insert(LOSSY, bool_header(text.lossy));
        return Ok(response);
    }
    if query.max_length.is_some() {
        return Err(Problem::new(
            ProblemKind::InvalidInput,
            "maxLength needs lines",
        ));
    }
    let download = session.download(&path).await?;
    let (size, generation) = (download.info().size, download.info().generation);
    let mut response = Body::from_stream(ReaderStream::new(download)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(GENERATION, HeaderValue::from(generation));
    Ok(response)
}

/// Whether a file or directory exists: 200, or 404.
#[utoipa::path(head, path = "/v1/sessions/{session}/files/{path}", operation_id = "fileExists", tag = "files",
    params(FileParams),
    responses((status = 200, description = "It exists"), (status = 404, description = "Nothing there"),
        (status = 400, description = "The path is refused")))]
pub async fn head(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
) -> Result<StatusCode, Problem> {
    let exists = api.client.session(&session)?.file_exists(&path).await?;
    Ok(if exists {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// Writes the body as the file (streamed, up to the server's upload
/// limit, 1 GiB by default; nothing is written when it is exceeded), or
/// with `append=true` adds it to the file's end.
#[utoipa::path(put, path = "/v1/sessions/{session}/files/{path}", operation_id = "writeFile", tag = "files",
    params(FileParams, WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses((status = 200, body = FileView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<WriteQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FileView>, Problem> {
    let session = api.client.session(&session)?;
    if query.append {
        let limit = usize::try_from(MAX_EDIT_BYTES).unwrap_or(usize::MAX);
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            Problem::new(
                ProblemKind::TooLarge,
                format!("an append body is at most {MAX_EDIT_BYTES} bytes"),
            )
        })?;
        let info = session
            .write_file(&path, bytes, WriteOptions::append())
            .await?;
        return Ok(Json(info.into()));
    }
    let mut opts = UploadOptions::default().max_bytes(api.max_upload_bytes);
    if let Some(n) = content_length(&headers) {
        opts = opts.size_hint(n);
    }
    let stream = body.into_data_stream().map_err(io::Error::other);
    let info = session
        .upload(&path, StreamReader::new(stream), opts)
        .await?;
    Ok(Json(info.into()))
}

/// Deletes a file, or with `recursive=true` a directory and everything below.
#[utoipa::path(delete, path = "/v1/sessions/{session}/files/{path}", operation_id = "deleteFile", tag = "files",
    params(FileParams, DeleteQuery),
    responses((status = 200, body = Deleted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<DeleteQuery>,
) -> Result<Json<Deleted>, Problem> {
    let opts = if query.recursive {
        DeleteOptions::recursive()
    } else {
        DeleteOptions::default()
    };
    let deleted = api
        .client
        .session(&session)?
        .delete_file(&path, opts)
        .await?;
    Ok(Json(Deleted { deleted }))
}

/// The entries of the workspace root.
#[utoipa::path(get, path = "/v1/sessions/{session}/dirs", operation_id = "listWorkspace", tag = "files",
    params(super::sessions::SessionParam),
    responses((status = 200, body = DirList),
        (status = "default", body = Problem, content_type = "application/problem+json")))]
pub async fn list_root(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
) -> Result<Json<DirList>, Problem> {
    list_dir(&api, &session, ".").await
}

/// The entries of a directory, sorted by name.
#[utoipa::path(get, path = "/v1/sessions/{session}/dirs/{path}", operation_id = "listDir", tag = "files",
    params(FileParams),
    responses((status = 200, body = DirList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
) -> Result<Json<DirList>, Problem> {
    list_dir(&api, &session, &path).await
}

async fn list_dir(api: &Api, session: &str, path: &str) -> Result<Json<DirList>, Problem> {
    let entries = api.client.session(session)?.list_dir(path).await?;
    Ok(Json(DirList {
        entries: entries.into_iter().map(DirEntryView::from).collect(),
    }))
}

/// `A:B`, `A:` or `:B`, 1-based.
fn parse_lines(range: &str) -> Result<(Option<u64>, Option<u64>), Problem> {
    let bad = || {
        Problem::new(
            ProblemKind::InvalidInput,
            format!("lines={range:?}: expected A:B, A: or :B with line numbers from 1"),
        )
    };
    let (a, b) = range.split_once(':').ok_or_else(bad)?;
    let number = |s: &str| -> Result<Option<u64>, Problem> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| bad())
        }
    };
    Ok((number(a)?, number(b)?))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn bool_header(value: bool) -> HeaderValue {
    HeaderValue::from_static(if value { "true" } else { "false" })
}

#[cfg(test)]
mod tests {
    use super::parse_lines;

    #[test]
    fn line_ranges() {
        assert_eq!(parse_lines("2:5").ok(), Some((Some(2), Some(5))));
        assert_eq!(parse_lines("3:").ok(), Some((Some(3), None)));
        assert_eq!(parse_lines(":4").ok(), Some((None, Some(4))));
        assert!(parse_lines("4").is_err());
        assert!(parse_lines("a:b").is_err());
        assert!(parse_lines("-1:2").is_err());
    }
}
