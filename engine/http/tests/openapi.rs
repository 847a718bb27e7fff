//! The API documents. The OpenAPI document (`engine/http/openapi.yaml`): valid OpenAPI
//! 3.1, every route of the route table and no other, each with the roles its permission
//! grants. (That the server answers as it says: `contract/mod.rs`, under every test of
//! this crate.) The NATS interface's AsyncAPI document (`engine/http/asyncapi.yaml`):
//! valid AsyncAPI 3.0, its references resolved, its payloads the OpenAPI document's.
//! (That the NATS adapter publishes what it says: `adapters/nats/tests`.)

mod contract;

use std::collections::BTreeSet;

use parcours_http::auth::{Permission, Role};
use parcours_http::routes::{Action, ROUTES};
use serde_json::Value;

/// The OpenAPI Initiative's schema of 3.1 documents (2022-10-07, Apache-2.0; vendored
/// from the OAI specification repository through `openapi-spec-validator`'s copy: no
/// network in tests).
const OAS_3_1: &str = include_str!("data/oas-3.1-schema-2022-10-07.json");

/// The AsyncAPI Initiative's schema of 3.0.0 documents (`@asyncapi/specs` 6.11.1,
/// `schemas/3.0.0-without-$id.json`, Apache-2.0; vendored: no network in tests).
const ASYNCAPI_3_0: &str = include_str!("data/asyncapi-3.0.0-schema.json");

fn doc() -> &'static Value {
    parcours_http::openapi::document()
}

/// What the JSON Schema `schema` (of `draft`) finds wrong in `doc`.
fn refusals(schema: &str, draft: jsonschema::Draft, doc: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(schema).expect("a vendored schema");
    jsonschema::options()
        .with_draft(draft)
        .build(&schema)
        .expect("the vendored schema compiles")
        .iter_errors(doc)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let errors = refusals(OAS_3_1, jsonschema::Draft::Draft202012, doc());
    assert!(errors.is_empty(), "not OpenAPI 3.1:\n{}", errors.join("\n"));
    assert_eq!(
        doc()["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "info.version is the release's"
    );
}

/// Every `$ref` of the document leads somewhere, and every schema compiles.
#[test]
fn every_reference_resolves_and_every_schema_compiles() {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let here = format!("{at}/{}", contract::escape(k));
                    if k == "$ref" {
                        out.push((here.clone(), child.as_str().unwrap_or("").to_owned()));
                    }
                    if k == "schema" && child.is_object() {
                        out.push((here.clone(), format!("#{here}")));
                    }
                    walk(child, &here, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(contract::document(), "", &mut refs);
    assert!(
        refs.len() > 50,
        "references and schemas found: {}",
        refs.len()
    );
    for (from, to) in &refs {
        let target = to
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{from}: `{to}` is not a reference within the document"));
        let found = contract::document().pointer(target);
        assert!(found.is_some(), "{from}: `{to}` leads nowhere");
        if from.ends_with("/schema") {
            // Compiles, and accepts or refuses a value without a panic.
            contract::validator_of(to);
        }
    }
}

fn roles_of(p: Permission) -> Vec<&'static str> {
    let roles = [
        ("coordinator", Role::Coordinator),
        ("care-team", Role::CareTeam("gp".into())),
        ("integration", Role::Integration),
        ("ops", Role::Ops),
    ];
    roles
        .into_iter()
        .filter(|(_, r)| p.granted_by(r))
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn every_route_is_documented_with_who_may_call_it_and_nothing_else() {
    let paths = doc()["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().expect("a path item") {
            if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented, not routes"
    );
    assert_eq!(
        routes.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes, not documented"
    );
    let mut ids = BTreeSet::new();
    for route in ROUTES {
        let op = &paths[route.path][route.method.to_ascii_lowercase()];
        let name = format!("{} {}", route.method, route.path);
        let id = op["operationId"].as_str().unwrap_or("");
        assert!(!id.is_empty(), "{name}: no operationId");
        assert!(
            ids.insert(id.to_owned()),
            "{name}: operationId `{id}` twice"
        );
        for key in ["summary", "description"] {
            assert!(
                op[key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{name}: no {key}"
            );
        }
        assert_eq!(op["x-action"], route.action.name(), "{name}: x-action");
        let permission = route.action.permission();
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|k| k.starts_with('2')),
            "{name}: no success answer"
        );
        assert!(responses.contains_key("default"), "{name}: no default");
        if permission == Permission::Public {
            assert_eq!(op["security"], Value::Array(vec![]), "{name}: public");
            assert!(op.get("x-roles").is_none(), "{name}: public, yet x-roles");
        } else {
            assert!(op.get("security").is_none(), "{name}: credentials needed");
            let roles: Vec<&str> = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no x-roles"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(roles, roles_of(permission), "{name}: x-roles");
            assert_eq!(
                op.get("x-deployment-wide").and_then(Value::as_bool) == Some(true),
                permission.deployment_wide(),
                "{name}: x-deployment-wide"
            );
            for status in ["401", "403", "429"] {
                assert!(responses.contains_key(status), "{name}: no {status}");
            }
        }
        // Every path parameter declared.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| match p.get("$ref").and_then(Value::as_str) {
                Some(r) => contract::at(r),
                None => p,
            })
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_path: BTreeSet<&str> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, in_path, "{name}: path parameters");
    }
    // Every action has its route (a route table without one would be a test above).
    assert!(ROUTES.iter().any(|r| r.action == Action::OpenApi));
}

#[test]
fn the_nats_document_is_valid_asyncapi_3_0_and_shares_the_payloads() {
    let async_doc = parcours_http::asyncapi::document();
    let errors = refusals(ASYNCAPI_3_0, jsonschema::Draft::Draft7, async_doc);
    assert!(
        errors.is_empty(),
        "not AsyncAPI 3.0:\n{}",
        errors.join("\n")
    );
    assert_eq!(async_doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Every reference leads somewhere in it.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|c| refs(c, out));
            }
            Value::Array(items) => items.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(async_doc, &mut all);
    assert!(all.len() > 10, "references: {}", all.len());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("`{r}` is not within the document"));
        assert!(async_doc.pointer(pointer).is_some(), "`{r}` leads nowhere");
    }
    // One event, one effect: the payloads are the HTTP API's schemas.
    for name in ["CloudEvent", "Effect", "EventData.encounter.discharged"] {
        assert_eq!(
            async_doc["components"]["schemas"][name],
            doc()["components"]["schemas"][name],
            "{name}"
        );
    }
}
