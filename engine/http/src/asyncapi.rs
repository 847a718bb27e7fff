//! The NATS interface's AsyncAPI 3.0 document (`engine/http/asyncapi.yaml`), served at
//! `GET /v1/asyncapi.json` and printed by `parcours asyncapi`: every subject parcours
//! reads or writes in production (`parcours serve --nats …`), its messages, headers and
//! payloads, the streams behind them. The payload schemas are the OpenAPI document's
//! ([`crate::openapi`]: the canonical event made from the event catalogue, the effect,
//! the FHIR OperationOutcome): each schema this document refers to and does not define
//! is copied from there when it is read, so the two documents describe one event, one
//! effect. The NATS adapter's tests hold real messages to it (`adapters/nats/tests`).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::Json;
use serde_json::{Map, Value};

/// The document as written (YAML).
pub const SOURCE: &str = include_str!("../asyncapi.yaml");

const SCHEMAS: &str = "#/components/schemas/";

/// The document as JSON, read once, with the OpenAPI document's schemas it refers to.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = crate::openapi::read(SOURCE, "AsyncAPI");
        if let Some(root) = doc.as_object_mut() {
            borrow_schemas(root, crate::openapi::document());
        }
        doc
    })
}

/// Copy into `doc`'s `components.schemas` every schema it refers to (transitively) and
/// lacks, from the OpenAPI document.
fn borrow_schemas(doc: &mut Map<String, Value>, openapi: &Value) {
    let mut wanted = BTreeSet::new();
    refs(&Value::Object(doc.clone()), &mut wanted);
    let components = doc
        .entry("components")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(schemas) = components
        .as_object_mut()
        .map(|c| {
            c.entry("schemas")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    while let Some(name) = wanted.pop_first() {
        if schemas.contains_key(&name) {
            continue;
        }
        let Some(schema) = openapi["components"]["schemas"].get(&name) else {
            tracing::error!(schema = %name, "the AsyncAPI document refers to a schema neither document has");
            continue;
        };
        refs(schema, &mut wanted);
        schemas.insert(name, schema.clone());
    }
}

/// The names of the schemas `v` refers to (`#/components/schemas/<name>`).
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(SCHEMAS))
            {
                out.insert(name.to_owned());
            }
            m.values().for_each(|c| refs(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| refs(c, out)),
        _ => {}
    }
}

/// `GET /v1/asyncapi.json`.
pub(crate) async fn serve() -> Json<&'static Value> {
    Json(document())
}
