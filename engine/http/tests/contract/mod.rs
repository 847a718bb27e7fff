//! The API held to its OpenAPI document (`engine/http/openapi.yaml`): the tests' router
//! is wrapped by [`checked`], which validates every answer the server gives — its status
//! must be documented for the operation, its content type listed, its body valid against
//! the schema — and, for requests the server accepted (2xx), that every query parameter
//! is documented and a JSON body valid against the documented request body. The tests
//! of `parcours serve` as a process (`engine/cli/tests/support`, which includes this
//! module by path) hold what they receive over a socket to it with [`verify`].
//!
//! Stricter than the document as published (`schemas.rs`): a field the server sends and
//! the document does not name fails a test. 405, 408 and 500 may be answered under
//! `default` (a method a path lacks, a request over its time, a failure).
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

/// The router, every request and answer checked against the document.
pub fn checked(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(check))
}

async fn check(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let sent = to_bytes(body, usize::MAX).await.expect("request body");
    let method = parts.method.as_str().to_owned();
    let target = parts.uri.to_string();
    let sent_type = mime(parts.headers.get(axum::http::header::CONTENT_TYPE));
    let res = next
        .run(Request::from_parts(parts, Body::from(sent.clone())))
        .await;
    let (rparts, body) = res.into_parts();
    let answered = to_bytes(body, usize::MAX).await.expect("response body");
    let headers: Vec<(String, String)> = rparts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    verify(
        &Exchange {
            method: &method,
            target: &target,
            sent_type: sent_type.as_deref(),
            sent: &sent,
        },
        rparts.status.as_u16(),
        &headers,
        &answered,
    );
    Response::from_parts(rparts, Body::from(answered))
}

/// A request as sent: method, target (path and query), body and its type.
pub struct Exchange<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub sent_type: Option<&'a str>,
    pub sent: &'a [u8],
}

/// Hold one answer (status, headers with lower-case names, body) to the document, and
/// the request, when the server accepted it (2xx); a panic says what does not match.
/// The tests of `parcours serve` as a process call it on what they receive.
pub fn verify(req: &Exchange<'_>, status: u16, headers: &[(String, String)], answered: &[u8]) {
    let method = req.method.to_ascii_lowercase();
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target, None),
    };
    let answered_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let what = format!("{} {path} → {status}", method.to_ascii_uppercase());
    match operation(path, &method) {
        Some((template, op)) => {
            let at = format!("#/paths/{}/{method}", escape(&template));
            seen(&method, &template, status);
            fhir_sample(answered_type.as_deref(), answered);
            let answer = Answer {
                status,
                mime: answered_type.as_deref(),
                headers,
                body: answered,
            };
            check_response(&what, &at, op, &answer);
            if (200..300).contains(&status) {
                check_request(&what, &at, op, query, req.sent_type, req.sent);
            }
        }
        // No such operation: an unknown route (404) or a method the path lacks (405),
        // answered with an error body.
        None => {
            assert!(
                status == 404 || status == 405,
                "{what}: no operation of the document matches, yet the server answered"
            );
            let schema = if path.starts_with("/fhir/") {
                "#/components/schemas/OperationOutcome"
            } else {
                "#/components/schemas/Error"
            };
            validate(&what, schema, answered);
        }
    }
}

/// With `PARCOURS_CONTRACT_SEEN=FILE`, each answer checked appends `method template
/// status` to FILE: `sort -u` of it beside the document shows the documented answers no
/// test receives.
fn seen(method: &str, template: &str, status: u16) {
    use std::io::Write as _;
    let Ok(file) = std::env::var("PARCOURS_CONTRACT_SEEN") else {
        return;
    };
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    // One write per line: the test binaries' threads and processes append whole lines.
    out.write_all(format!("{method} {template} {status}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
}

/// With `PARCOURS_FHIR_SAMPLES=DIR`, each FHIR answer (`application/fhir+json`) is
/// written to DIR, one file each, for `scripts/fhir-conformance.py` to check against
/// the FHIR R4 resource models.
fn fhir_sample(mime: Option<&str>, body: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let Ok(dir) = std::env::var("PARCOURS_FHIR_SAMPLES") else {
        return;
    };
    if mime != Some("application/fhir+json") || body.is_empty() {
        return;
    }
    let name = format!(
        "{}-{}-{}.json",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::path::Path::new(&dir).join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn mime(v: Option<&axum::http::HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

pub mod schemas;

use schemas::Schemas;
pub use schemas::escape;

/// The OpenAPI document as read by the server, made strict.
pub fn openapi() -> &'static Schemas {
    static DOC: OnceLock<Schemas> = OnceLock::new();
    DOC.get_or_init(|| Schemas::new(parcours_http::openapi::document().clone()))
}

/// The OpenAPI document, made strict.
pub fn document() -> &'static Value {
    openapi().doc()
}

/// The value at a `#/…` pointer of the OpenAPI document.
pub fn at(pointer: &str) -> &'static Value {
    openapi().at(pointer)
}

/// An object of the document, `$ref`s followed.
fn resolve(v: &'static Value) -> &'static Value {
    openapi().resolve(v, String::new()).0
}

/// The validator of the schema at `pointer` of the OpenAPI document.
pub fn validator_of(pointer: &str) -> Arc<jsonschema::Validator> {
    openapi().validator(pointer)
}

/// The operation for a request: among the paths with this method, the one whose
/// template matches with the most fixed segments (as the router prefers them).
pub fn operation(path: &str, method: &str) -> Option<(String, &'static Value)> {
    let segments: Vec<&str> = path.split('/').collect();
    let paths = document()["paths"].as_object()?;
    let mut best: Option<(usize, &String)> = None;
    for template in paths.keys() {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segments.len() {
            continue;
        }
        let mut fixed = 0;
        let fits = t.iter().zip(&segments).all(|(t, s)| {
            if t.starts_with('{') && t.ends_with('}') {
                !s.is_empty()
            } else {
                fixed += 1;
                t == s
            }
        });
        if fits && best.is_none_or(|(n, _)| fixed > n) {
            best = Some((fixed, template));
        }
    }
    // The router matches the path first, then the method: a path whose best template
    // lacks the method answers 405, whatever other templates have.
    let (_, template) = best?;
    let op = paths[template].get(method)?;
    Some((template.clone(), op))
}

/// What the server answered.
struct Answer<'a> {
    status: u16,
    mime: Option<&'a str>,
    headers: &'a [(String, String)],
    body: &'a [u8],
}

fn check_response(what: &str, at_op: &str, op: &'static Value, answer: &Answer<'_>) {
    let Answer {
        status,
        mime,
        headers,
        body,
    } = *answer;
    let responses = &op["responses"];
    let code = status.to_string();
    let (key, response) = match responses.get(&code) {
        Some(r) => (code, r),
        None if matches!(status, 405 | 408 | 500) && responses.get("default").is_some() => {
            ("default".to_owned(), &responses["default"])
        }
        None => panic!(
            "{what}: status {status} is not documented at {at_op}/responses; body: {}",
            String::from_utf8_lossy(body)
        ),
    };
    let response = resolve(response);
    // The headers the document says every such answer carries.
    for (name, header) in response
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if resolve(header)["required"] == true {
            assert!(
                headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)),
                "{what}: the answer lacks the `{name}` header the document requires at {at_op}/responses/{key}"
            );
        }
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{what}: the document gives {at_op}/responses/{key} no content, yet a body came"
        );
        return;
    };
    let mime = mime.unwrap_or_else(|| panic!("{what}: an answer without a content type"));
    let Some(media) = content.get(mime) else {
        panic!(
            "{what}: content type `{mime}` is not documented at {at_op}/responses/{key} ({:?})",
            content.keys().collect::<Vec<_>>()
        );
    };
    if media.get("schema").is_none() {
        return;
    }
    let pointer = match response_pointer(at_op, &key, op) {
        Some(p) => format!("{p}/content/{}/schema", escape(mime)),
        None => unreachable!(),
    };
    if is_json(mime) {
        validate(what, &pointer, body);
    } else {
        validate_value(
            what,
            &pointer,
            &Value::String(String::from_utf8_lossy(body).into_owned()),
        );
    }
}

/// Where a response object is: at the operation, or where its `$ref` leads.
fn response_pointer(at_op: &str, key: &str, op: &Value) -> Option<String> {
    let mut pointer = format!("{at_op}/responses/{}", escape(key));
    let mut v = &op["responses"][key];
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        pointer = r.to_owned();
        v = at(r);
    }
    Some(pointer)
}

fn is_json(mime: &str) -> bool {
    mime == "application/json" || mime.ends_with("+json")
}

fn check_request(
    what: &str,
    at_op: &str,
    op: &'static Value,
    query: Option<&str>,
    mime: Option<&str>,
    body: &[u8],
) {
    let documented: Vec<&str> = op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(resolve)
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or("");
        assert!(
            documented.contains(&name),
            "{what}: query parameter `{name}` accepted by the server, not documented at {at_op}/parameters"
        );
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let Some(request) = op.get("requestBody").map(resolve) else {
        // A body the route does not read (a GET with one): nothing to check.
        return;
    };
    let content = request["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {at_op}/requestBody has no content"));
    // No content type: the routes that read JSON read it as JSON.
    let mime = mime.unwrap_or("application/json");
    let Some(media) = content.get(mime) else {
        panic!(
            "{what}: the server accepted a body of type `{mime}`, not documented at {at_op}/requestBody ({:?})",
            content.keys().collect::<Vec<_>>()
        );
    };
    if media.get("schema").is_some() && is_json(mime) {
        let pointer = match op["requestBody"].get("$ref").and_then(Value::as_str) {
            Some(r) => r.to_owned(),
            None => format!("{at_op}/requestBody"),
        };
        validate(
            &format!("{what} (the request's body)"),
            &format!("{pointer}/content/{}/schema", escape(mime)),
            body,
        );
    }
}

fn validate(what: &str, pointer: &str, body: &[u8]) {
    let value: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: the body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    validate_value(what, pointer, &value);
}

/// Validate a value against the schema at `pointer` (compiled once per pointer).
pub fn validate_value(what: &str, pointer: &str, value: &Value) {
    openapi().validate(&format!("{what}: the answer"), pointer, value);
}
