//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers'
//! and types' annotations. It is checked in as `docs/openapi.json`; the
//! `serve_http` integration test fails when the two differ. Regenerate it
//! with `cargo run -p runbox-cli -- serve --openapi > docs/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::file_tools::{FoundFiles, ReplaceBody, Replaced, SearchMatchView, SearchMatches};
use super::problem::Problem;
use super::schema::{
    BackgroundList, BackgroundView, CreateSessionBody, Deleted, DirEntryView, DirList, ExecBody,
    ExecResultSchema, FileView, ModeName, ResultList, SessionList, SessionView, SpawnBody,
};
use super::{background, exec, file_tools, files, sessions, stdin};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runbox",
        description = "Run shell commands for AI agents in stateful sessions: the Sandbox \
            protocol over HTTP. Bodies are proto3 JSON of runbox.v1 (lowerCamelCase); errors \
            are RFC 9457 application/problem+json with a stable `type` per kind. Every route \
            but /healthz requires `Authorization: Bearer <RUNBOX_API_TOKEN>` when the server \
            has a token (always, on a non-loopback address). JSON bodies are at most 1 MiB, \
            uploads at most the server's --max-upload-bytes (1 GiB by default).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::healthz, super::readyz, super::openapi_json,
        sessions::list, sessions::create, sessions::ensure, sessions::show, sessions::close,
        sessions::delete,
        exec::exec, stdin::write,
        files::get, files::head, files::put, files::delete, files::list_root, files::list,
        file_tools::replace, file_tools::search, file_tools::find,
        background::spawn, background::list, background::logs, background::kill,
        background::wait,
    ),
    components(schemas(
        Problem, ExecBody, SpawnBody, CreateSessionBody, ModeName, SessionView, SessionList, Deleted,
        ResultList, FileView, DirEntryView, DirList, BackgroundView, BackgroundList,
        ExecResultSchema, exec::StartedEvent, ReplaceBody, Replaced, SearchMatchView, SearchMatches, FoundFiles,
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Adds the bearer scheme the `security` requirement names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON with a final newline, exactly as checked in.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // Serialising a document built from static annotations cannot fail;
    // an empty body would make the checked-in comparison fail loudly.
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
