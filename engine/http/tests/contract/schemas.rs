//! The schemas of an API document (OpenAPI 3.1, AsyncAPI 3.0), made strict and compiled
//! once per pointer, to validate real answers and messages against. Used by the HTTP
//! API's contract check (`mod.rs`) and by the NATS adapter's tests (included there by
//! path: it needs only `serde_json` and `jsonschema`).
//!
//! Stricter than the document as published: every object schema with `properties` (and
//! no `additionalProperties` of its own) gets `unevaluatedProperties: false`, so a field
//! the server sends and the document does not name is an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// A document's schemas.
pub struct Schemas {
    doc: Value,
    cache: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Schemas {
    /// The document, made strict.
    pub fn new(mut doc: Value) -> Schemas {
        assert!(doc.is_object(), "the document does not parse");
        strict(&mut doc, false);
        Schemas {
            doc,
            cache: Mutex::default(),
        }
    }

    /// The document as made strict.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The value at a `#/…` pointer.
    pub fn at(&self, pointer: &str) -> &Value {
        let p = pointer.strip_prefix('#').expect("a local pointer");
        self.doc
            .pointer(p)
            .unwrap_or_else(|| panic!("the document has nothing at {pointer}"))
    }

    /// An object of the document, `$ref`s followed; and where it is.
    pub fn resolve<'a>(&'a self, v: &'a Value, at: String) -> (&'a Value, String) {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(self.at(r), r.to_owned()),
            None => (v, at),
        }
    }

    /// The validator of the schema at `pointer` (compiled once).
    pub fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        if let Some(v) = self.cache.lock().expect("cache").get(pointer) {
            return v.clone();
        }
        // The whole document is the root (so that `#/components/…` references resolve),
        // its own `$ref` the schema asked for.
        let mut root: Map<String, Value> = self.doc.as_object().expect("an object").clone();
        // A URI fragment: the braces of path templates percent-encoded.
        let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
        root.insert("$ref".into(), Value::String(fragment));
        root.insert(
            "$schema".into(),
            Value::String("https://json-schema.org/draft/2020-12/schema".into()),
        );
        let v = Arc::new(
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&Value::Object(root))
                .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}")),
        );
        self.cache
            .lock()
            .expect("cache")
            .insert(pointer.to_owned(), v.clone());
        v
    }

    /// What in `value` the schema at `pointer` refuses (empty: valid).
    pub fn errors(&self, pointer: &str, value: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(value)
            .map(|e| format!("  at `{}`: {e}", e.instance_path()))
            .collect()
    }

    /// Panic, saying what and where, unless `value` is valid against the schema at
    /// `pointer`.
    pub fn validate(&self, what: &str, pointer: &str, value: &Value) {
        let errors = self.errors(pointer, value);
        assert!(
            errors.is_empty(),
            "{what}: does not match the document's schema at {pointer}:\n{}\nvalue: {}",
            errors.join("\n"),
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

/// `~` and `/` escaped for a JSON pointer.
pub fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn strict(v: &mut Value, in_all_of: bool) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties")
                && !in_all_of
                && !m.contains_key("additionalProperties")
                && !m.contains_key("unevaluatedProperties")
            {
                m.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for (k, child) in m.iter_mut() {
                if k == "example" || k == "examples" {
                    continue;
                }
                if k == "allOf" {
                    if let Value::Array(items) = child {
                        for i in items {
                            strict_members(i);
                        }
                    }
                } else {
                    strict(child, false);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| strict(i, false)),
        _ => {}
    }
}

/// An `allOf` member: left open itself (the other members name the rest), its children
/// made strict.
fn strict_members(v: &mut Value) {
    if let Value::Object(m) = v {
        for (k, child) in m.iter_mut() {
            if k != "example" && k != "examples" {
                strict(child, false);
            }
        }
    }
}
