//! Moving running patients to another pathway version over the API, as `parcours
//! migrate` does from a shell: the body is a migration file (YAML or JSON: `migration`,
//! `tenant`, `pathway`, `from`, `to`, `states`, `instances`; see the README).
//!
//! - `POST /v1/migrations/check?tenant=T`: what would happen to each selected instance
//!   (its states' moves, timers cancelled and armed, new tracks, what the new version
//!   drops), or why it cannot move. Nothing is written.
//! - `POST /v1/migrations?tenant=T`: the same, then each instance that can move is moved
//!   (its `instance.migrated` decision in the log, one commit per instance), the
//!   migration recorded by name; each moved instance gets an audit entry. Running
//!   engines holding a moved instance reload it.
//!
//! The migration's `tenant` must be the caller's (a coordinator's); its versions must be
//! loaded by this engine (publish the new one first: `POST /v1/pathways`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use jiff::Timestamp;
use parcours_runtime::migration::{self, InstanceOutcome, MigrationFile};
use parcours_store::{AuditEntry, AuditLog, AuditOutcome, EventStore};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::pathways::posted_text;

type St<S> = State<Arc<AppState<S>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantQuery {
    tenant: Option<String>,
}

/// Read a migration file named `name` (its path, or how a request calls it): an error
/// says where (`name:line:column`) and what is expected, in a coordinator's words rather
/// than the YAML library's (no `untagged enum`, no `DuplicateKeyPolicy`).
pub fn parse_migration(name: &str, text: &str) -> Result<MigrationFile, String> {
    use serde_saphyr::MessageFormatter as _;
    serde_saphyr::from_str(text).map_err(|e| {
        let message = serde_saphyr::UserMessageFormatter.format_message(&e);
        // A missing field is placed at the mapping's last key, which is not where it goes.
        let place = e
            .location()
            .filter(|_| !message.starts_with("missing field"));
        match place {
            Some(at) if at.line() > 0 => {
                format!("{name}:{}:{}: {message}", at.line(), at.column())
            }
            _ => format!("{name}: {message}"),
        }
    })
}

/// The posted migration, checked against the caller and this engine's versions.
fn migration<S>(
    app: &AppState<S>,
    caller: &Caller,
    q: &TenantQuery,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<MigrationFile, ApiError> {
    let text = posted_text(headers, body, "a migration file")?;
    let m = parse_migration("the migration file", text)
        .map_err(|e| ApiError::unprocessable("invalid_migration", e))?;
    // The file's tenant is the one whose patients move: the caller's, and the one the
    // request names (the route guard checked the query's).
    if !caller.owns(&m.tenant) {
        return Err(ApiError::forbidden(format!(
            "you are not a member of tenant `{}`",
            m.tenant
        )));
    }
    if q.tenant.as_deref().is_some_and(|t| t != m.tenant) {
        return Err(ApiError::bad_request(
            "ambiguous_tenant",
            format!(
                "the migration moves tenant `{}`'s patients: ask with `?tenant={}`",
                m.tenant, m.tenant
            ),
        ));
    }
    let registry = app.registry.current();
    for v in [m.from, m.to] {
        if registry.get(&m.pathway, v).is_none() {
            return Err(ApiError::unprocessable(
                "unknown_version",
                format!(
                    "this engine has no `{}` v{v}: publish it first (POST /v1/pathways), or \
                     ask again within {} s if another process just did",
                    m.pathway,
                    parcours_runtime::PUBLISHED_CHECK_EVERY.as_secs()
                ),
            ));
        }
    }
    Ok(m)
}

/// One instance's outcome as JSON.
fn outcome(o: &InstanceOutcome) -> Value {
    match &o.result {
        Ok(p) => json!({
            "instance": o.instance,
            "can_move": true,
            "moved": o.applied,
            "moves": p.moves.iter().map(|(track, from, to)| {
                json!({"track": track, "from": from, "to": to})
            }).collect::<Vec<_>>(),
            "new_tracks": p.new_tracks.iter().map(|(track, state)| {
                json!({"track": track, "state": state})
            }).collect::<Vec<_>>(),
            "cancelled_timers": p.cancelled_timers,
            "armed_timers": p.armed_timers,
            "dropped": p.dropped,
        }),
        Err(e) => json!({
            "instance": o.instance,
            "can_move": false,
            "moved": false,
            "reason": e.to_string(),
        }),
    }
}

fn answer(m: &MigrationFile, applied: bool, outcomes: &[InstanceOutcome]) -> Value {
    let can = outcomes.iter().filter(|o| o.result.is_ok()).count();
    json!({
        "migration": m.migration,
        "tenant": m.tenant,
        "pathway": m.pathway,
        "from": m.from,
        "to": m.to,
        "applied": applied,
        "selected": outcomes.len(),
        "can_move": can,
        "moved": outcomes.iter().filter(|o| o.applied).count(),
        "cannot_move": outcomes.len() - can,
        "instances": outcomes.iter().map(outcome).collect::<Vec<_>>(),
    })
}

/// Run the posted migration for the caller: checked only, or `apply`-ed.
async fn run<S: EventStore>(
    app: &AppState<S>,
    caller: &Caller,
    q: &TenantQuery,
    headers: &HeaderMap,
    body: &Bytes,
    apply: bool,
) -> Result<(MigrationFile, Timestamp, Vec<InstanceOutcome>), ApiError> {
    let m = migration(app, caller, q, headers, body)?;
    caller.target(&m.migration);
    let registry = app.registry.current();
    // The migration's instant is the wall clock's: when it was decided.
    #[allow(clippy::disallowed_methods)]
    let now = Timestamp::now();
    let outcomes = migration::run(&app.store, &registry, &m, now, apply).await?;
    Ok((m, now, outcomes))
}

/// `POST /v1/migrations/check`: the dry run.
pub(crate) async fn check<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (m, _, outcomes) = run(&app, &caller, &q, &headers, &body, false).await?;
    Ok(Json(answer(&m, false, &outcomes)))
}

/// `POST /v1/migrations`: move the instances that can move.
pub(crate) async fn apply<S: EventStore + AuditLog>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (m, now, outcomes) = run(&app, &caller, &q, &headers, &body, true).await?;
    // Each moved instance in the trail, as `parcours migrate` records them.
    let moved: Vec<AuditEntry> = outcomes
        .iter()
        .filter(|o| o.applied)
        .map(|o| AuditEntry {
            at: now,
            actor: caller.principal.id.clone(),
            action: "pathway.migrate".into(),
            target: Some(o.instance.clone()),
            tenant: Some(m.tenant.clone()),
            outcome: AuditOutcome::Allowed,
            detail: Some(format!(
                "{} v{} to v{} ({})",
                m.pathway, m.from, m.to, m.migration
            )),
        })
        .collect();
    if !moved.is_empty() {
        tracing::info!(migration = %m.migration, pathway = %m.pathway, moved = moved.len(),
            actor = %caller.principal.id, "instances migrated over the API");
        app.store.audit(moved).await?;
    }
    Ok(Json(answer(&m, true, &outcomes)))
}

#[cfg(test)]
mod tests {
    use super::parse_migration;

    const GOOD: &str = "migration: hf-v2\ntenant: cpts-a\npathway: heart-failure\nfrom: 1\nto: 2\ninstances: all\n";

    fn error_of(text: &str) -> String {
        match parse_migration("m.yaml", text) {
            Ok(m) => panic!("parsed: {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_migration_file_s_mistakes_are_said_where_and_in_plain_words() {
        assert!(parse_migration("m.yaml", GOOD).is_ok());
        for (text, wanted) in [
            (
                GOOD.replace("instances: all", "instances: some"),
                "m.yaml:6:12: `instances` is `all` or a list of instance ids",
            ),
            (
                format!("{GOOD}from: 3\n"),
                "m.yaml:7:1: duplicate mapping key `from` is not allowed here",
            ),
            (GOOD.replace("to: 2\n", ""), "m.yaml: missing field `to`"),
            (
                format!("{GOOD}tennant: x\n"),
                "m.yaml:7:1: unknown field `tennant`, expected one of migration, tenant",
            ),
        ] {
            let e = error_of(&text);
            assert!(e.starts_with(wanted), "{e}");
            assert!(!e.contains("enum") && !e.contains("Policy"), "{e}");
        }
    }
}
