//! Pathway versions over the API: a CPTS coordinator publishes the file they wrote
//! without a shell on the server.
//!
//! - `POST /v1/pathways/check?file=NAME` (body: a pathway file): compiles it — every
//!   problem at once, each with its code and `NAME:line:col` — and says what publishing
//!   it would do (`new`, `unchanged`), or why it would be refused. Nothing is written.
//! - `POST /v1/pathways?file=NAME`: the same checks, then publishes the version into the
//!   log exactly as `parcours publish` does (the stream `pathway/<id>`): `201` when new,
//!   `200` when published already with the same text, `409` when published with another
//!   text (a published version never changes: give the new text a new version), `422`
//!   with the diagnostics when it does not compile. This process's engine loads it at
//!   once, the others within [`parcours_runtime::PUBLISHED_CHECK_EVERY`]; new patients
//!   enrol in each pathway's highest version, running ones stay on theirs
//!   (`POST /v1/migrations` or `parcours migrate` moves them).
//! - `GET /v1/pathways/{id}/{version}/source`: the text a version was published with.
//!
//! Publishing needs a coordinator of every tenant (`tenants: ["*"]`): the deployment's
//! tenants share its pathway definitions (see the threat model).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jiff::Timestamp;
use parcours_core::CompiledPathway;
use parcours_lang::{Report, Severity};
use parcours_runtime::publish::{self, Publication, PublishError};
use parcours_store::EventStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::NoQuery;

type St<S> = State<Arc<AppState<S>>>;

/// The name a posted file goes by when the request gives none.
const DEFAULT_FILE: &str = "pathway.yaml";

/// How long a publication waits for this process's engine to load the new version.
const LOAD_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileQuery {
    /// The file's name: shown in the diagnostics and kept with the version.
    file: Option<String>,
    /// The route guard's fill-in of a one-tenant caller's tenant (unused here).
    #[serde(rename = "tenant")]
    _tenant: Option<String>,
}

/// A 415 for a form upload (`curl -F`): a file posted here is the body itself, whatever
/// its declared type (YAML, JSON, text, or curl's default for `--data-binary`).
fn refuse_forms(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    if form {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: format!(
                "send {what} itself as the body, not a form: \
                 `curl --data-binary @file.yaml -H 'content-type: application/yaml'`"
            ),
            details: None,
        });
    }
    Ok(())
}

/// A posted file's text: the body itself (not a form), in UTF-8; `what` it is, for the
/// refusals.
pub(crate) fn posted_text<'a>(
    headers: &HeaderMap,
    body: &'a Bytes,
    what: &str,
) -> Result<&'a str, ApiError> {
    refuse_forms(headers, what)?;
    std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "bad_encoding",
            format!("the body must be {what} (YAML) in UTF-8: {e}"),
        )
    })
}

/// The posted file: its name and text.
fn source(q: &FileQuery, headers: &HeaderMap, body: &Bytes) -> Result<(String, String), ApiError> {
    refuse_forms(headers, "a pathway file")?;
    let file = q.file.as_deref().unwrap_or(DEFAULT_FILE);
    let ok = !file.is_empty()
        && file.len() <= 200
        && !file.split('/').any(|part| part.is_empty() || part == "..")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !ok {
        return Err(ApiError::bad_request(
            "bad_file_name",
            "`?file=` is the pathway file's name (`heart-failure-v3.yaml`): letters, digits, \
             `.`, `_`, `-` and `/` between names, at most 200 characters",
        ));
    }
    // Not UTF-8 (a file saved as Latin-1): the report `parcours check` gives, at the
    // line and column where it stops being UTF-8.
    let text = std::str::from_utf8(body)
        .map_err(|e| refused_file(&parcours_lang::not_utf8(file, body, e)))?;
    Ok((file.to_string(), text.to_string()))
}

/// The diagnostics of a report, each with its place in the file.
fn diagnostics(report: &Report, severity: Option<Severity>) -> Vec<Value> {
    report
        .diagnostics
        .iter()
        .filter(|d| severity.is_none_or(|s| d.severity == s))
        .map(|d| {
            let (line, col) = parcours_lang::span::line_col(&report.source, d.span().offset);
            json!({
                "code": d.code,
                "severity": d.severity.as_str(),
                "file": report.file,
                "line": line,
                "col": col,
                "message": d.message,
                "help": d.help,
            })
        })
        .collect()
}

/// The file compiled, or a 422 with every diagnostic.
fn compile(file: &str, text: &str) -> Result<(CompiledPathway, Report), ApiError> {
    parcours_lang::compile_source(file, text).map_err(|report| refused_file(&report))
}

/// The 422 of a file with errors: every diagnostic, and the rendered report.
fn refused_file(report: &Report) -> ApiError {
    let (errors, warnings) = report.counts();
    let mut e = ApiError::unprocessable(
        "invalid_pathway",
        format!(
            "{}: {errors} error(s), {warnings} warning(s); nothing published\n{}",
            report.file,
            report.short()
        ),
    );
    e.details = Some(json!({
        "diagnostics": diagnostics(report, None),
        "report": report.render(),
    }));
    e
}

/// A posted pathway file, compiled.
struct Posted {
    file: String,
    text: String,
    pathway: CompiledPathway,
    report: Report,
}

/// The posted file compiled (its version the audit entry's target), or why not.
fn posted(
    caller: &Caller,
    q: &FileQuery,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Posted, ApiError> {
    let (file, text) = source(q, headers, body)?;
    let (pathway, report) = compile(&file, &text)?;
    caller.target(&format!("{} v{}", pathway.id, pathway.version));
    Ok(Posted {
        file,
        text,
        pathway,
        report,
    })
}

/// A refused publication as an answer.
fn refused(e: PublishError) -> ApiError {
    match e {
        e @ PublishError::Changed { .. } => ApiError::conflict("version_published", e.to_string()),
        PublishError::Runtime(e) => e.into(),
    }
}

fn publication_name(p: &Publication) -> &'static str {
    match p {
        Publication::New => "new",
        Publication::Unchanged => "unchanged",
    }
}

/// `GET /v1/pathways/{id}/{version}/source`: the text a version was published with, as
/// the log keeps it (to edit into the next version); its file name in
/// `Content-Disposition`.
pub(crate) async fn source_text<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    Path((id, version)): Path<(String, u32)>,
) -> Result<Response, ApiError> {
    let published = publish::published(&app.store).await?;
    let Some(p) = published
        .into_iter()
        .find(|p| p.id == id && p.version == version)
    else {
        return Err(ApiError::not_found(format!(
            "no published `{id}` v{version}"
        )));
    };
    let name = p
        .file
        .rsplit('/')
        .next()
        .unwrap_or(DEFAULT_FILE)
        .to_string();
    let disposition = format!("inline; filename=\"{}\"", name.replace('"', ""));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/yaml; charset=utf-8".to_string(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        p.text,
    )
        .into_response())
}

/// `POST /v1/pathways/check`: what publishing the posted file would do.
pub(crate) async fn check<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Posted {
        file,
        text,
        pathway: p,
        report,
    } = posted(&caller, &q, &headers, &body)?;
    let would = publish::check(&app.store, &p.id, p.version, &file, &text)
        .await
        .map_err(refused)?;
    Ok(Json(json!({
        "id": p.id,
        "version": p.version,
        "title": p.title,
        "file": file,
        "digest": publish::digest(&text),
        "publication": publication_name(&would),
        "warnings": diagnostics(&report, Some(Severity::Warning)),
    })))
}

/// `POST /v1/pathways`: publish the posted file's version.
pub(crate) async fn publish<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Posted {
        file,
        text,
        pathway: p,
        report,
    } = posted(&caller, &q, &headers, &body)?;
    // The publication's instant is the wall clock's: when the version entered the log.
    #[allow(clippy::disallowed_methods)]
    let now = Timestamp::now();
    let done = publish::publish(&app.store, &p.id, p.version, &file, &text, now)
        .await
        .map_err(refused)?;
    if done == Publication::New {
        tracing::info!(pathway = %p.id, version = p.version, actor = %caller.principal.id,
            "pathway version published over the API");
        app.handle.versions_published();
    }
    let loaded = loaded_here(&app, &p.id, p.version).await;
    let enrols = app
        .registry
        .current()
        .latest()
        .iter()
        .any(|l| l.id == p.id && l.version == p.version);
    let status = match done {
        Publication::New => StatusCode::CREATED,
        Publication::Unchanged => StatusCode::OK,
    };
    let graph = format!("/v1/pathways/{}/{}/graph", p.id, p.version);
    let answer = json!({
        "id": p.id,
        "version": p.version,
        "title": p.title,
        "file": file,
        "digest": publish::digest(&text),
        "publication": publication_name(&done),
        "loaded": loaded,
        "enrols": enrols,
        "graph": graph,
        "warnings": diagnostics(&report, Some(Severity::Warning)),
        "note": format!(
            "engines serving this log load new versions within {} s and enrol new patients in \
             each pathway's highest version; running patients stay on theirs (parcours migrate \
             moves them)",
            parcours_runtime::PUBLISHED_CHECK_EVERY.as_secs()
        ),
    });
    Ok((status, [(header::LOCATION, graph)], Json(answer)).into_response())
}

/// Whether this process's engine has the version, waiting up to [`LOAD_WAIT`] for it.
async fn loaded_here<S>(app: &AppState<S>, id: &str, version: u32) -> bool {
    app.registry
        .wait_for(LOAD_WAIT, |r| r.get(id, version).is_some())
        .await
}
