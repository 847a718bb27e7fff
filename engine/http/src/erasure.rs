//! `POST /v1/erasures?tenant=`: a coordinator erases a patient (right to erasure).
//!
//! Body: `{"subjects": ["p-…"], "identifiers": [{"system": "1.2.250.1.213.1.4.8",
//! "value": "<NIR>"}], "names": ["<family name>"]}` (at least one subject or identifier;
//! identifiers become subject keys with the FHIR endpoints' key; identifier values and
//! names are looked for in the tenant's dead letters). The keys the log's identity links
//! and merges join to them are erased too ([`Vault::erase`]). The patient's data keys are
//! destroyed, `patient.erased` is recorded in the log, their dead letters deleted; the
//! route's guard writes the audit entry. The answer names the subject keys asked and
//! counts only (`subjects_erased`, of which `subjects_linked` found through links and
//! merges).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use parcours_identity::PatientIdentifier;
use parcours_store::{EventStore, PatientKeys};
use parcours_vault::{ErasureReport, ErasureRequest, KeyProvider, Vault, VaultError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::{answer_content_type, json_required};

/// Why an erasure did not happen (no patient data in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseError {
    /// The request cannot be carried out as it is (the keys named join more identities
    /// than one person has): asking again changes nothing; answered 422.
    Refused(String),
    /// The vault or the log failed: nothing was erased, ask again later; answered 503.
    Failed(String),
}

/// What erases patients (the vault of the running engine).
pub trait Eraser: Send + Sync + fmt::Debug + 'static {
    /// Erase as asked; the report, or why not.
    fn erase<'a>(
        &'a self,
        request: ErasureRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ErasureReport, EraseError>> + Send + 'a>>;
}

impl<P, S> Eraser for Vault<P, S>
where
    P: KeyProvider,
    S: EventStore + PatientKeys + Clone + 'static,
{
    fn erase<'a>(
        &'a self,
        request: ErasureRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ErasureReport, EraseError>> + Send + 'a>> {
        Box::pin(async move {
            Vault::erase(self, &request).await.map_err(|e| match e {
                VaultError::Request(m) => EraseError::Refused(m),
                other => EraseError::Failed(other.to_string()),
            })
        })
    }
}

/// The erasure hook of [`AppState`].
pub type SharedEraser = Arc<dyn Eraser>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantQuery {
    tenant: Option<String>,
}

impl TenantQuery {
    /// The tenant asked for (one of the caller's) and the request's JSON body, read as
    /// the answer routes read it (`application/json` or no type) and without quoting a
    /// value back: what these routes take are patient identifiers and names. `shape`
    /// says what to send when the body is empty.
    pub(crate) fn with_body<T: serde::de::DeserializeOwned>(
        self,
        caller: &Caller,
        headers: &HeaderMap,
        body: &Bytes,
        shape: &str,
    ) -> Result<(String, T), ApiError> {
        let tenant = self
            .tenant
            .filter(|t| caller.owns(t))
            .ok_or_else(|| ApiError::bad_request("missing_tenant", "give `?tenant=<cpts id>`"))?;
        answer_content_type(headers)?;
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "missing_body",
                format!("give {shape}"),
            ));
        }
        Ok((tenant, json_required(body)?))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Identifier {
    pub(crate) system: String,
    pub(crate) value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Body {
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    identifiers: Vec<Identifier>,
    #[serde(default)]
    names: Vec<String>,
}

pub(crate) async fn erase<S: EventStore>(
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
        "{\"subjects\": [...], \"identifiers\": [{\"system\", \"value\"}], \"names\": [...]}",
    )?;
    let Some(eraser) = app.erasure.as_ref() else {
        return Err(ApiError::unavailable(
            "erasure is not configured on this engine",
        ));
    };
    let mut subjects = body.subjects;
    let mut needles = body.names;
    if !body.identifiers.is_empty() {
        let Some(fhir) = app.fhir.as_ref() else {
            return Err(ApiError::bad_request(
                "no_identity_key",
                "identifiers need the identity key: give subject keys",
            ));
        };
        for id in body.identifiers {
            let pid = PatientIdentifier::written(&id.system, &id.value);
            subjects.push(fhir.pseudonymizer.subject(&tenant, &pid));
            needles.push(id.value);
        }
    }
    subjects.sort();
    subjects.dedup();
    if subjects.is_empty() {
        return Err(ApiError::bad_request(
            "no_patient",
            "name the patient: subjects or identifiers",
        ));
    }
    if let Some(bad) = subjects.iter().find(|s| !s.starts_with("p-")) {
        return Err(ApiError::bad_request(
            "bad_subject",
            format!("`{bad}` is not a subject key (p-…)"),
        ));
    }
    let request = ErasureRequest {
        tenant: tenant.clone(),
        subjects: subjects.clone(),
        needles,
        at: None,
    };
    let report = eraser.erase(request).await.map_err(|e| match e {
        EraseError::Refused(m) => ApiError::unprocessable("erasure_refused", m),
        EraseError::Failed(m) => ApiError::unavailable(m),
    })?;
    Ok(Json(json!({
        "tenant": tenant,
        "subjects": subjects,
        "subjects_erased": report.subjects,
        "subjects_linked": report.subjects_linked,
        "recorded": report.recorded,
        "keys_destroyed": report.keys_destroyed,
        "dead_letters_deleted": report.dead_letters_deleted,
    })))
}
