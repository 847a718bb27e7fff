//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use parcours_fhir::Context;
use parcours_identity::{PatientIdentifier, Pseudonymizer};

pub const TENANT: &str = "cpts-test";
pub const BASE: &str = "https://fhir.example.org/r4";

pub fn key() -> Pseudonymizer {
    Pseudonymizer::from_key(&[7u8; 32]).expect("32-byte key")
}

pub fn ctx() -> Context {
    Context::new(TENANT, "chu-test", BASE, key())
}

/// The subject key of a local identifier in the test tenant.
pub fn local(system: &str, value: &str) -> String {
    key().subject(TENANT, &PatientIdentifier::local(system, value))
}

/// The subject key of an INS in the test tenant.
pub fn ins(oid: &str, value: &str) -> String {
    key().subject(TENANT, &PatientIdentifier::ins(oid, value))
}

/// The subject key of `Patient/<id>` on the test source's server.
pub fn on_server(id: &str) -> String {
    local(&format!("{BASE}/Patient"), id)
}

pub fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

pub fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}
