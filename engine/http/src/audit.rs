//! `GET /v1/audit?tenant=&after=&limit=`: a tenant's audit trail, for its coordinators
//! (and for export: page with `after` = the last `id`). Entries are written by the route
//! guard ([`crate::routes`]), one per guarded request.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use parcours_store::{AuditFilter, AuditLog, EventStore};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    tenant: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn read<S: EventStore + AuditLog>(
    State(app): State<Arc<AppState<S>>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = q
        .tenant
        .filter(|t| caller.owns(t))
        .ok_or_else(|| ApiError::bad_request("missing_tenant", "give `?tenant=<cpts id>`"))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app
        .store
        .audit_entries(&AuditFilter {
            tenant,
            after: q.after.unwrap_or(0),
            limit,
        })
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let out: Vec<Value> = entries
        .iter()
        .map(|s| {
            let e = &s.entry;
            json!({
                "id": s.id,
                "at": e.at.to_string(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "tenant": e.tenant,
                "outcome": e.outcome.as_str(),
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({"entries": out, "next": next})))
}
