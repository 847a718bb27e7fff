//! The API's OpenAPI 3.1 document (`engine/http/openapi.yaml`), served at
//! `GET /v1/openapi.json`: every route, who may call it, its parameters, bodies and
//! answers. The tests hold the server to it: every answer a test of this crate receives
//! is validated against the document (`tests/contract/mod.rs`), and `tests/openapi.rs`
//! checks that it names every route of [`crate::routes::ROUTES`] and no other, with the
//! roles of each route's permission.

use std::sync::OnceLock;

use axum::Json;
use parcours_core::events::{EventData, EventType, FieldDef};
use parcours_core::value::Type;
use serde_json::{Map, Value, json};

/// The document as written (YAML).
pub const SOURCE: &str = include_str!("../openapi.yaml");

/// The document as JSON, read once. It is part of the binary and checked by the tests:
/// a document that does not parse is a build that does not pass them.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = read(SOURCE, "OpenAPI");
        if let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
        {
            add_event_schemas(schemas);
        }
        doc
    })
}

/// A document written in YAML as JSON; `null` (and an error logged) when it does not
/// parse — which the tests of this crate fail on, so no release serves it.
pub(crate) fn read(source: &str, what: &str) -> Value {
    serde_saphyr::from_str(source).unwrap_or_else(|e| {
        tracing::error!(error = %e, document = what, "an API document does not parse");
        Value::Null
    })
}

/// `CloudEvent` and one `EventData.<type>` per canonical event, made from the event
/// catalogue (the same that `parcours events` prints), so that the document names
/// every event type and field the engine reads, as the engine reads them.
fn add_event_schemas(schemas: &mut Map<String, Value>) {
    let mut branches = Vec::new();
    for ty in EventType::ALL {
        let name = format!("EventData.{}", ty.as_str());
        branches.push(json!({
            "title": ty.as_str(),
            "required": ["type", "data"],
            "properties": {
                "type": {"const": ty.as_str()},
                "data": {"$ref": format!("#/components/schemas/{name}")},
            },
            // The envelope's attributes are the parent's.
            "additionalProperties": true,
        }));
        schemas.insert(name, data_schema(*ty));
    }
    schemas.insert(
        "CloudEvent".into(),
        json!({
            "type": "object",
            "description": "A canonical event in CloudEvents JSON (structured mode): the \
                CloudEvents attributes, `tenant` (the CPTS) and `occurredat` (when it \
                happened, clinically); `type` names the event of the catalogue and `data` \
                holds its fields (`parcours events` lists them). Other CloudEvents \
                attributes (`specversion`, `datacontenttype`, extensions) are accepted \
                and not kept.",
            "required": ["id", "tenant", "subject", "occurredat", "type", "data"],
            "properties": {
                "id": {"type": "string", "minLength": 1,
                    "description": "Unique per event (the idempotency key): the same event sent again is a duplicate; another event under an id the log holds is refused."},
                "tenant": {"$ref": "#/components/schemas/Tenant"},
                "source": {"type": "string",
                    "description": "Who emitted it: a hospital, a lab, a care-team system."},
                "subject": {"$ref": "#/components/schemas/Subject"},
                "occurredat": {"$ref": "#/components/schemas/Timestamp"},
                "time": {"$ref": "#/components/schemas/Timestamp",
                    "description": "CloudEvents `time`, optional, kept as sent: parcours reads `occurredat` (the clinical time) and records its own time of recording in the log."},
                "type": {"enum": EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>()},
                "data": {"type": "object"},
                "specversion": {"type": "string"},
                "datacontenttype": {"type": "string"},
            },
            "additionalProperties": true,
            "oneOf": branches,
        }),
    );
}

/// The fields of one event type's `data`: each field's JSON type, and those the engine
/// cannot do without as `required` (found by leaving each out of a complete example:
/// a field with a default is not required).
fn data_schema(ty: EventType) -> Value {
    let fields = ty.fields();
    let full: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name.to_owned(), example(&f.ty)))
        .collect();
    let reads = |data: &Map<String, Value>| {
        serde_json::from_value::<EventData>(json!({"type": ty.as_str(), "data": data})).is_ok()
    };
    let complete = reads(&full);
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| {
            !f.optional && {
                let mut less = full.clone();
                less.remove(f.name);
                !complete || !reads(&less)
            }
        })
        .map(|f| f.name)
        .collect();
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name.to_owned(), field_schema(f)))
        .collect();
    json!({
        "type": "object",
        "description": ty.doc(),
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn field_schema(f: &FieldDef) -> Value {
    let mut s = type_schema(&f.ty);
    if f.optional
        && let Some(t) = s.get("type").cloned()
    {
        s["type"] = json!([t, "null"]);
    }
    s["description"] = json!(f.doc);
    s
}

fn type_schema(t: &Type) -> Value {
    match t {
        Type::Bool => json!({"type": "boolean"}),
        Type::Int => json!({"type": "integer"}),
        Type::Double => json!({"type": "number"}),
        Type::String => json!({"type": "string"}),
        Type::Timestamp => json!({"type": "string", "format": "date-time"}),
        Type::Duration => {
            json!({"type": "string", "description": "a clinical duration (`3d`, `3mo`)"})
        }
        Type::List(item) => json!({"type": "array", "items": type_schema(item)}),
        Type::Null => json!({"type": "null"}),
        Type::Opaque => json!({"type": "object"}),
    }
}

fn example(t: &Type) -> Value {
    match t {
        Type::Bool => json!(true),
        Type::Int => json!(1),
        Type::Double => json!(1.5),
        Type::String => json!("x"),
        Type::Timestamp => json!("2026-01-05T09:00:00Z"),
        Type::Duration => json!("3d"),
        Type::List(item) => json!([example(item)]),
        Type::Null => Value::Null,
        Type::Opaque => json!({}),
    }
}

/// `GET /v1/openapi.json`.
pub(crate) async fn serve() -> Json<&'static Value> {
    Json(document())
}
