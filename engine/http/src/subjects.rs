//! `POST /v1/subjects?tenant=`: the subject keys of patients the caller knows by an
//! identifier.
//!
//! parcours names patients by pseudonymous keys (keyed HMAC of an identifier, with the
//! engine's identity key: `parcours-identity`), and only the engine holds that key. A
//! care-team system or a coordinator who knows a patient by the INS or the hospital's
//! IPP asks here for the key — to find the patient's instances and work items, to record
//! a consent for them on `/v1/events`, or to match the keys of tasks to the patients it
//! follows. Body: `{"identifiers": [{"system": "1.2.250.1.213.1.4.8", "value": "<NIR>"},
//! …]}` (at most [`MAX_IDENTIFIERS`]). The answer, in the order asked, gives each
//! identifier's key (`subject`) and the key parcours follows the patient under
//! (`followed_as`: where the log's identity links and merges lead, an IPP linked to its
//! INS for instance; the key itself otherwise). It never repeats an identifier; the
//! route's guard writes the audit entry, which names the keys only. A key is answered
//! whether or not parcours has heard of the patient.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use parcours_identity::PatientIdentifier;
use parcours_store::EventStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::erasure::{Identifier, TenantQuery};
use crate::error::ApiError;

/// The most identifiers one request may ask for.
pub const MAX_IDENTIFIERS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Body {
    identifiers: Vec<Identifier>,
}

pub(crate) async fn lookup<S: EventStore>(
    State(app): State<Arc<AppState<S>>>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (tenant, body): (String, Body) = q.with_body(
        &caller,
        &headers,
        &body,
        "{\"identifiers\": [{\"system\": \"<OID or namespace>\", \"value\": \"…\"}]}",
    )?;
    if body.identifiers.is_empty() {
        return Err(ApiError::bad_request(
            "empty",
            "the list holds no identifier",
        ));
    }
    if body.identifiers.len() > MAX_IDENTIFIERS {
        return Err(ApiError::bad_request(
            "too_many_identifiers",
            format!(
                "{} identifiers in one request; at most {MAX_IDENTIFIERS} (split the list)",
                body.identifiers.len()
            ),
        ));
    }
    if let Some(i) = body
        .identifiers
        .iter()
        .position(|id| id.system.trim().is_empty() || id.value.trim().is_empty())
    {
        return Err(ApiError::bad_request(
            "bad_identifier",
            format!("identifiers[{i}] needs a system and a value"),
        ));
    }
    let Some(fhir) = app.fhir.as_ref() else {
        return Err(ApiError::unavailable(
            "this engine has no identity key: it cannot name patients by their identifiers",
        ));
    };
    let keys: Vec<String> = body
        .identifiers
        .iter()
        .map(|id| {
            let pid = PatientIdentifier::written(&id.system, &id.value);
            fhir.pseudonymizer.subject(&tenant, &pid)
        })
        .collect();
    let followed = parcours_runtime::links::followed_as(&app.store, &tenant, &keys)
        .await
        .map_err(|e| ApiError::unavailable(format!("the log could not be read: {e}")))?;
    let mut named: Vec<&str> = followed.iter().map(String::as_str).collect();
    named.sort_unstable();
    named.dedup();
    caller.target(&named.join(","));
    let subjects: Vec<Value> = keys
        .iter()
        .zip(&followed)
        .map(|(subject, followed_as)| json!({"subject": subject, "followed_as": followed_as}))
        .collect();
    Ok(Json(json!({"tenant": tenant, "subjects": subjects})))
}
