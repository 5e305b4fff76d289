//! Workspace file tools beyond reading and writing: replace text in a
//! file, search a file by regular expression, find files by glob.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use runbox_dispatcher::ReplaceOptions;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::extract::{JsonBody, Params, QueryArgs};
use super::files::FileParams;
use super::problem::Problem;
use super::sessions::SessionParam;

/// The body of `POST …/replace/{path}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplaceBody {
    /// The text to replace; not empty.
    pub old: String,
    /// What to put in its place.
    pub new: String,
    /// Replace at most this many occurrences, first to last; absent: all.
    #[serde(default)]
    pub max_replacements: Option<usize>,
}

/// How many occurrences were replaced.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replaced {
    /// 0 when `old` was not found (the file is then untouched).
    pub replaced: usize,
}

/// Query of `GET …/search/{path}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A regular expression (Rust `regex` syntax), matched against each line.
    pattern: String,
}

/// One matching line.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchMatchView {
    /// 1-based line number.
    pub line_number: u64,
    /// The line without its line ending.
    pub line: String,
}

/// The lines that matched.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchMatches {
    /// In file order.
    pub matches: Vec<SearchMatchView>,
}

/// Query of `GET …/find`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindQuery {
    /// The directory to search below (default `.`, the workspace root).
    #[serde(default = "workspace_root")]
    dir: String,
    /// `*` and `?` within a segment, `**` across segments, `[...]` classes.
    glob: String,
}

/// Files that matched.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoundFiles {
    /// Workspace-relative paths in name order.
    pub paths: Vec<String>,
}

/// Replaces occurrences of `old` with `new` in a file of up to 64 MiB.
#[utoipa::path(post, path = "/v1/sessions/{session}/replace/{path}", operation_id = "replaceInFile",
    tag = "files", params(FileParams), request_body = ReplaceBody,
    responses((status = 200, body = Replaced),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json")))]
pub async fn replace(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
    JsonBody(body): JsonBody<ReplaceBody>,
) -> Result<Json<Replaced>, Problem> {
    let opts = match body.max_replacements {
        Some(n) => ReplaceOptions::first(n),
        None => ReplaceOptions::all(),
    };
    let replaced = api
        .client
        .session(&session)?
        .replace_in_file(&path, &body.old, &body.new, opts)
        .await?;
    Ok(Json(Replaced { replaced }))
}

/// The lines of a file that match a regular expression.
#[utoipa::path(get, path = "/v1/sessions/{session}/search/{path}", operation_id = "searchFile",
    tag = "files", params(FileParams, SearchQuery),
    responses((status = 200, body = SearchMatches),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn search(
    State(api): State<Arc<Api>>,
    Params((session, path)): Params<(String, String)>,
    QueryArgs(query): QueryArgs<SearchQuery>,
) -> Result<Json<SearchMatches>, Problem> {
    let matches = api
        .client
        .session(&session)?
        .search_file(&path, &query.pattern)
        .await?;
    Ok(Json(SearchMatches {
        matches: matches
            .into_iter()
            .map(|m| SearchMatchView {
                line_number: m.line_number,
                line: m.line,
            })
            .collect(),
    }))
}

/// Files below `dir` whose path relative to it matches `glob`.
#[utoipa::path(get, path = "/v1/sessions/{session}/find", operation_id = "findFiles",
    tag = "files", params(SessionParam, FindQuery),
    responses((status = 200, body = FoundFiles),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn find(
    State(api): State<Arc<Api>>,
    Params(session): Params<String>,
    QueryArgs(query): QueryArgs<FindQuery>,
) -> Result<Json<FoundFiles>, Problem> {
    let paths = api
        .client
        .session(&session)?
        .find_files(&query.dir, &query.glob)
        .await?;
    Ok(Json(FoundFiles { paths }))
}

fn workspace_root() -> String {
    ".".to_owned()
}
