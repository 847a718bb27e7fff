//! Running a declared migration over the log: dry run first, then apply.
//!
//! A migration file names the tenant, the pathway, the versions `from` and `to`, the state
//! mapping per track, and which instances move (all active ones pinned to `from`, or a
//! list). `parcours migrate FILE` shows what would happen to each instance and why some
//! cannot move; `--apply` records the migration itself in the stream `migration/<name>`
//! and, for each instance, one decision holding its `instance.migrated` event and timer
//! changes, with the projections, in one commit per instance. A running engine that holds
//! one of those instances in memory finds its stream moved on (a version conflict), drops
//! it and reloads it: nothing is overwritten.

use std::collections::BTreeMap;

use jiff::Timestamp;
use parcours_core::migrate::{self, MigrationError, MigrationPlan, Preview};
use parcours_core::model::CompiledPathway;
use parcours_store::{
    Appended, Codec, Commit, EventStore, IndexChanges, InstanceFilter, NewRecord, StoreError,
    StreamWrite,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::engine::{RuntimeError, load_instance};
use crate::projection;
use crate::registry::PathwayRegistry;

/// Which instances a migration moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "`instances` is `all` or a list of instance ids (`- 0f0e…`, one a line)"
)]
pub enum Selection {
    /// `all`: every active instance pinned to `from`.
    All(AllKeyword),
    /// A list of instance ids.
    Ids(Vec<String>),
}

/// The word `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllKeyword {
    /// Every active instance.
    All,
}

/// A migration as written in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationFile {
    /// Its name (unique: the record of the migration is keyed by it).
    pub migration: String,
    /// The CPTS whose instances move.
    pub tenant: String,
    /// Pathway id.
    pub pathway: String,
    /// The version instances leave.
    pub from: u32,
    /// The version they move to.
    pub to: u32,
    /// Per track: old state → new state (unlisted states keep their name).
    #[serde(default)]
    pub states: BTreeMap<String, BTreeMap<String, String>>,
    /// `all`, or a list of instance ids.
    pub instances: Selection,
}

impl MigrationFile {
    /// What in the file does not fit the two versions (`old` = `from`, `new` = `to`):
    /// the same version twice, a track or an old state the `from` version does not have,
    /// a new state the `to` version's track does not have. Each names the file's key.
    pub fn problems(&self, old: &CompiledPathway, new: &CompiledPathway) -> Vec<String> {
        let mut out = Vec::new();
        if self.from == self.to {
            out.push(format!(
                "`from` and `to` are both version {}: a migration moves instances to another version",
                self.from
            ));
        }
        for (track, mapping) in &self.states {
            let Some(t) = old.track_id(track) else {
                let known: Vec<&str> = old.tracks.iter().map(|t| &*t.name).collect();
                out.push(format!(
                    "`states.{track}`: version {} of `{}` has no track `{track}` (its tracks: {})",
                    self.from,
                    self.pathway,
                    known.join(", ")
                ));
                continue;
            };
            for (from_state, to_state) in mapping {
                let in_track = |p: &CompiledPathway, name: &str, track| {
                    p.state_id(name)
                        .is_some_and(|id| p.state(id).track == track)
                };
                if !in_track(old, from_state, t) {
                    out.push(format!(
                        "`states.{track}.{from_state}`: track `{track}` of version {} has no state `{from_state}` (the keys are the states instances leave)",
                        self.from
                    ));
                }
                let new_track = new.track_id(track);
                if !new_track.is_some_and(|nt| in_track(new, to_state, nt)) {
                    out.push(format!(
                        "`states.{track}.{from_state}`: track `{track}` of version {} has no state `{to_state}` (the values are the states instances move to)",
                        self.to
                    ));
                }
            }
        }
        out
    }
}

/// What happened (or would happen) to one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceOutcome {
    /// Instance id.
    pub instance: String,
    /// What moving it does, or why it cannot move.
    pub result: Result<Preview, MigrationError>,
    /// Whether it was moved (only with `apply`).
    pub applied: bool,
}

/// Run a migration: always check every selected instance; with `apply`, move those that
/// can move.
pub async fn run<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    m: &MigrationFile,
    at: Timestamp,
    apply_it: bool,
) -> Result<Vec<InstanceOutcome>, RuntimeError> {
    let missing = |v: u32| RuntimeError::MissingVersion {
        instance: format!("migration {}", m.migration),
        pathway: m.pathway.clone(),
        version: v,
    };
    let old = registry
        .get(&m.pathway, m.from)
        .ok_or_else(|| missing(m.from))?
        .clone();
    let new = registry
        .get(&m.pathway, m.to)
        .ok_or_else(|| missing(m.to))?
        .clone();
    // Every problem at once: the file's, then the log's (below).
    let mut problems = m.problems(&old, &new);
    let plan = MigrationPlan {
        states: m.states.clone(),
    };
    // The instances: every one of the pathway in the tenant, filtered.
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_instances(&InstanceFilter {
                tenant: m.tenant.clone(),
                pathway_id: Some(m.pathway.clone()),
                status: Some("active".into()),
                after_stream: after.clone(),
                limit: 1000,
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.stream.clone());
        rows.extend(page);
    }
    if rows.is_empty() {
        problems.push(format!(
            "tenant `{}` has no active instance of `{}`: check the tenant and the pathway",
            m.tenant, m.pathway
        ));
    }
    if let Selection::Ids(ids) = &m.instances {
        for id in ids
            .iter()
            .filter(|id| !rows.iter().any(|r| &r.stream == *id))
        {
            problems.push(format!(
                "`instances`: `{id}` is not an active instance of `{}` in tenant `{}`",
                m.pathway, m.tenant
            ));
        }
    }
    if !problems.is_empty() {
        return Err(RuntimeError::InvalidMigration(problems));
    }
    let selected: Vec<_> = match &m.instances {
        Selection::All(_) => rows
            .into_iter()
            .filter(|r| r.pathway_version == m.from)
            .collect(),
        Selection::Ids(ids) => rows
            .into_iter()
            .filter(|r| ids.contains(&r.stream))
            .collect(),
    };
    // The migration's own record: what was decided, by name, for the audit.
    let body = serde_json::to_vec(m)?;
    let record_id = format!(
        "migration:{}:{}",
        m.migration,
        crate::publish::digest(&String::from_utf8_lossy(&body))
    );
    let mut recorded = false;
    let mut out = Vec::new();
    for row in selected {
        let loaded = load_instance(
            store,
            registry,
            &row.stream,
            &row.pathway_id,
            row.pathway_version,
        )
        .await?;
        let preview = migrate::check(&old, &new, &loaded.state, &plan, at);
        let mut outcome = InstanceOutcome {
            instance: row.stream.clone(),
            result: preview,
            applied: false,
        };
        if apply_it && outcome.result.is_ok() {
            if !recorded {
                record_migration(store, m, &record_id, &body, at).await?;
                recorded = true;
            }
            let migrate::Migration {
                records,
                state: after,
            } = match migrate::migrate(&old, &new, &loaded.state, &plan, at, &record_id) {
                Ok(m) => m,
                Err(e) => {
                    outcome.result = Err(e);
                    out.push(outcome);
                    continue;
                }
            };
            let mut index = IndexChanges::default();
            projection::index_changes(
                &new,
                projection::earliest_timer(&loaded.state),
                &after,
                &records,
                // A migration gives no catch-up grace (`projection::grants_catch_up`).
                jiff::SignedDuration::ZERO,
                &mut index,
            );
            let commit = Commit {
                writes: vec![StreamWrite {
                    stream: row.stream.clone(),
                    expected_version: loaded.stream_version,
                    records: vec![codec::encode_decision(&row.tenant, &row.subject, &records)?],
                }],
                index,
                guards: Vec::new(),
            };
            match store.append(commit).await {
                Ok(Appended::Committed { .. }) => outcome.applied = true,
                Ok(Appended::Duplicate) => {}
                Err(StoreError::Conflict { .. }) => {
                    outcome.result = Err(MigrationError::Divergence(
                        "the instance changed while migrating: run the migration again".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.push(outcome);
    }
    Ok(out)
}

async fn record_migration<S: EventStore>(
    store: &S,
    m: &MigrationFile,
    id: &str,
    body: &[u8],
    at: Timestamp,
) -> Result<(), RuntimeError> {
    let stream = format!("migration/{}", m.pathway);
    let version = store.stream_version(&stream).await?;
    let commit = Commit {
        writes: vec![StreamWrite {
            stream,
            expected_version: version,
            records: vec![NewRecord {
                id: id.to_string(),
                record_type: "pathway.migration".into(),
                type_version: 1,
                codec: Codec::Json,
                tenant: m.tenant.clone(),
                subject: String::new(),
                occurred_at: at,
                cause: None,
                payload: body.to_vec(),
            }],
        }],
        ..Commit::default()
    };
    store.append(commit).await?;
    Ok(())
}
