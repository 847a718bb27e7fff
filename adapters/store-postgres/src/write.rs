//! Appending a commit inside a transaction: the writer mark, the checks, the rows.

use std::collections::HashMap;

use parcours_store::{Guard, NetChanges, NewRecord, StoreError, StreamWrite};
use sqlx::{PgConnection, Row};

use crate::rows::{nanos, to_i64, to_u64};
use crate::{MAX_RECORDS_PER_TRANSACTION, sql};

/// What a commit came to, short of a database error.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written (not yet committed by the caller).
    Written { last_position: u64 },
    /// An id of the commit is stored already: nothing written.
    Duplicate,
    /// A stream is not at the expected version: nothing written.
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
}

/// Why a write stopped: the database said no (some of which `append` classifies or
/// retries), or the commit cannot be stored as given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Refused(#[from] StoreError),
}

/// Every record id of the writes, in commit order.
pub(crate) fn record_ids(writes: &[StreamWrite]) -> Vec<&str> {
    writes
        .iter()
        .flat_map(|w| w.records.iter().map(|r| r.id.as_str()))
        .collect()
}

/// The first write whose expected version is not the stream's, given the stored
/// versions; several writes to one stream in a commit follow each other.
pub(crate) fn first_conflict<'a>(
    writes: &'a [StreamWrite],
    stored: &HashMap<String, u64>,
) -> Option<(&'a str, u64, u64)> {
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for w in writes {
        let actual = versions
            .get(w.stream.as_str())
            .copied()
            .or_else(|| stored.get(&w.stream).copied())
            .unwrap_or(0);
        if actual != w.expected_version {
            return Some((&w.stream, w.expected_version, actual));
        }
        versions.insert(&w.stream, actual + w.records.len() as u64);
    }
    None
}

/// Write a commit on `conn` in one call (`parcours_commit`, migration 0009): on its own
/// it is its own transaction, inside one the caller's. The commit is planned here as if
/// every stream were at the version its first write expects; the server takes the writer
/// mark, locks the streams, refuses a duplicate or a stale version (nothing written), then
/// writes the records, the stream versions and the index changes. With guards,
/// `parcours_commit_guarded` (migration 0016) first takes their locks and checks their
/// streams' versions.
pub(crate) async fn write_commit(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    guards: &[Guard],
    index: &NetChanges,
    recorded_at: i64,
) -> Result<Outcome, WriteError> {
    if writes.is_empty() && guards.is_empty() {
        write_index(conn, index).await?;
        return Ok(Outcome::Written { last_position: 0 });
    }
    let ids: usize = writes.iter().map(|w| w.records.len()).sum();
    if ids > MAX_RECORDS_PER_TRANSACTION {
        return Err(StoreError::Backend(format!(
            "a commit of {ids} records is more than one transaction holds ({MAX_RECORDS_PER_TRANSACTION})"
        ))
        .into());
    }
    let plan = Plan::of(writes, recorded_at)?;
    let query = if guards.is_empty() {
        sqlx::query(sql::COMMIT)
    } else {
        sqlx::query(sql::COMMIT_GUARDED)
            .bind(guards.iter().map(|g| g.lock.as_str()).collect::<Vec<_>>())
            .bind(guards.iter().map(|g| g.shared).collect::<Vec<_>>())
            .bind(guards.iter().map(|g| g.stream.as_str()).collect::<Vec<_>>())
            .bind(
                guards
                    .iter()
                    .map(|g| to_i64(g.version, "guarded version"))
                    .collect::<Result<Vec<_>, _>>()?,
            )
    };
    let row = IndexColumns::of(index)?
        .bind(plan.bind(query))
        .fetch_one(&mut *conn)
        .await?;
    let outcome: String = row.try_get(0)?;
    let last_position: Option<i64> = row.try_get(1)?;
    let names: Vec<String> = row.try_get(2)?;
    let versions: Vec<i64> = row.try_get(3)?;
    match outcome.as_str() {
        "written" => Ok(Outcome::Written {
            last_position: to_u64(last_position.unwrap_or(0), "position")?,
        }),
        // Idempotency first: a commit already made is acknowledged whatever the versions.
        "duplicate" => Ok(Outcome::Duplicate),
        "conflict" => {
            let mut stored = HashMap::with_capacity(names.len());
            for (stream, version) in names.into_iter().zip(versions) {
                stored.insert(stream, to_u64(version, "stream version")?);
            }
            let (stream, expected, actual) = first_conflict(writes, &stored).ok_or_else(|| {
                StoreError::Backend(
                    "PostgreSQL refused a commit as stale, but the stream versions it returned \
                     match the commit"
                        .into(),
                )
            })?;
            Ok(Outcome::Conflict {
                stream: stream.to_string(),
                expected,
                actual,
            })
        }
        // A guarded stream is not at its version: the first such guard, in commit order.
        "guard" => {
            let stored: HashMap<&str, i64> =
                names.iter().map(String::as_str).zip(versions).collect();
            let (guard, actual) = guards
                .iter()
                .find_map(|g| stored.get(g.stream.as_str()).map(|v| (g, *v)))
                .ok_or_else(|| {
                    StoreError::Backend(
                        "PostgreSQL refused a commit's guards, but named none of its streams"
                            .into(),
                    )
                })?;
            Ok(Outcome::Conflict {
                stream: guard.stream.clone(),
                expected: guard.version,
                actual: to_u64(actual, "stream version")?,
            })
        }
        other => Err(StoreError::Backend(format!("parcours_commit returned {other:?}")).into()),
    }
}

/// A commit as `parcours_commit`'s arguments: the streams (sorted, the order they are
/// locked in) with the version each is expected at, and the records with their
/// versions and position offsets, planned as if every stream were at that version.
struct Plan<'a> {
    wanted: Vec<&'a str>,
    expected: Vec<i64>,
    offsets: Vec<i64>,
    streams: Vec<&'a str>,
    stream_versions: Vec<i64>,
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    type_versions: Vec<i32>,
    codecs: Vec<i16>,
    tenants: Vec<&'a str>,
    subjects: Vec<&'a str>,
    occurred: Vec<i64>,
    recorded_at: i64,
    causes: Vec<Option<&'a str>>,
    payloads: Vec<&'a [u8]>,
    head_streams: Vec<&'a str>,
    head_versions: Vec<i64>,
}

/// The version a commit's writes to a stream expect it at: the first write's, or -1 (a
/// version no stream has: refused, and reported with the stored one) when the commit's
/// own writes to it do not follow each other.
const INCOHERENT: i64 = -1;

impl<'a> Plan<'a> {
    fn of(writes: &'a [StreamWrite], recorded_at: i64) -> Result<Plan<'a>, StoreError> {
        // Per stream: the version expected first, and where the commit's writes leave it.
        let mut streams: HashMap<&str, (i64, u64)> = HashMap::new();
        let mut planned: Vec<(&str, u64, &NewRecord)> = Vec::new();
        for w in writes {
            let expected = to_i64(w.expected_version, "expected version")?;
            let entry = streams
                .entry(w.stream.as_str())
                .or_insert((expected, w.expected_version));
            if entry.1 != w.expected_version {
                entry.0 = INCOHERENT;
            }
            for r in &w.records {
                entry.1 += 1;
                planned.push((&w.stream, entry.1, r));
            }
        }
        let mut wanted: Vec<(&str, i64, u64)> =
            streams.into_iter().map(|(s, (e, h))| (s, e, h)).collect();
        wanted.sort_unstable();
        // Insert in (stream, version) order: commits racing to create the same streams
        // queue on the same first key instead of deadlocking. Offsets keep commit order.
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_unstable_by_key(|&i| (planned[i].0, planned[i].1));
        let n = planned.len();
        let mut plan = Plan {
            wanted: wanted.iter().map(|w| w.0).collect(),
            expected: wanted.iter().map(|w| w.1).collect(),
            offsets: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            stream_versions: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            type_versions: Vec::with_capacity(n),
            codecs: Vec::with_capacity(n),
            tenants: Vec::with_capacity(n),
            subjects: Vec::with_capacity(n),
            occurred: Vec::with_capacity(n),
            recorded_at,
            causes: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            head_streams: Vec::new(),
            head_versions: Vec::new(),
        };
        for i in order {
            let (stream, version, r) = planned[i];
            plan.offsets.push(i64::try_from(i).unwrap_or(i64::MAX));
            plan.streams.push(stream);
            plan.stream_versions
                .push(to_i64(version, "stream version")?);
            plan.ids.push(r.id.as_str());
            plan.types.push(r.record_type.as_str());
            plan.type_versions.push(i32::from(r.type_version));
            plan.codecs.push(codec_tag(r.codec)?);
            plan.tenants.push(r.tenant.as_str());
            plan.subjects.push(r.subject.as_str());
            plan.occurred.push(nanos(r.occurred_at)?);
            plan.causes.push(r.cause.as_deref());
            plan.payloads.push(r.payload.as_slice());
        }
        // The streams' new versions: those the commit appends to.
        for (stream, expected, head) in wanted {
            if u64::try_from(expected).ok() != Some(head) {
                plan.head_streams.push(stream);
                plan.head_versions.push(to_i64(head, "stream version")?);
            }
        }
        Ok(plan)
    }

    /// Bind the 17 commit arguments (`$1` to `$17`), in parameter order.
    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.wanted)
            .bind(self.expected)
            .bind(self.offsets)
            .bind(self.streams)
            .bind(self.stream_versions)
            .bind(self.ids)
            .bind(self.types)
            .bind(self.type_versions)
            .bind(self.codecs)
            .bind(self.tenants)
            .bind(self.subjects)
            .bind(self.occurred)
            .bind(self.recorded_at)
            .bind(self.causes)
            .bind(self.payloads)
            .bind(self.head_streams)
            .bind(self.head_versions)
    }
}

pub(crate) fn codec_tag(codec: parcours_store::Codec) -> Result<i16, StoreError> {
    i16::try_from(codec.tag())
        .map_err(|_| StoreError::Backend(format!("codec tag {} out of range", codec.tag())))
}

fn is_empty(net: &NetChanges) -> bool {
    net.instances.is_empty()
        && net.timers_removed.is_empty()
        && net.timers.is_empty()
        && net.work_removed.is_empty()
        && net.work.is_empty()
        && net.work_status.is_empty()
        && net.snapshots.is_empty()
}

/// Apply net index changes in one statement (nothing when there are none).
pub(crate) async fn write_index(
    conn: &mut PgConnection,
    net: &NetChanges,
) -> Result<(), WriteError> {
    if is_empty(net) {
        return Ok(());
    }
    IndexColumns::of(net)?
        .bind(sqlx::query(sql::WRITE_INDEX))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Net index changes as the 48 column arrays `parcours_write_index` takes (`$1` to `$48`
/// of `WRITE_INDEX`, `$18` to `$65` of `COMMIT`; migration 0014's, then `t_due`,
/// migration 0015, last).
struct IndexColumns<'a> {
    timers_removed: Vec<&'a str>,
    work_removed: Vec<&'a str>,
    i_stream: Vec<&'a str>,
    i_tenant: Vec<&'a str>,
    i_subject: Vec<&'a str>,
    i_pathway: Vec<&'a str>,
    i_pathway_version: Vec<i64>,
    i_status: Vec<&'a str>,
    i_closed: Vec<Option<&'a str>>,
    i_states: Vec<&'a str>,
    i_cycle: Vec<i64>,
    i_enrolled: Vec<i64>,
    i_updated: Vec<i64>,
    i_version: Vec<i64>,
    t_id: Vec<&'a str>,
    t_stream: Vec<&'a str>,
    t_tenant: Vec<&'a str>,
    t_subject: Vec<&'a str>,
    t_fire: Vec<i64>,
    t_hash_hi: Vec<i64>,
    t_hash_lo: Vec<i64>,
    w_id: Vec<&'a str>,
    w_kind: Vec<&'a str>,
    w_stream: Vec<&'a str>,
    w_tenant: Vec<&'a str>,
    w_subject: Vec<&'a str>,
    w_pathway: Vec<&'a str>,
    w_code: Vec<&'a str>,
    w_role: Vec<&'a str>,
    w_title: Vec<&'a str>,
    w_status: Vec<&'a str>,
    w_priority: Vec<&'a str>,
    w_due: Vec<Option<i64>>,
    w_opened: Vec<i64>,
    w_opened_by: Vec<&'a str>,
    w_escalated: Vec<Option<&'a str>>,
    w_closed: Vec<Option<i64>>,
    st_id: Vec<&'a str>,
    st_status: Vec<&'a str>,
    st_escalated: Vec<Option<&'a str>>,
    st_priority: Vec<Option<&'a str>>,
    st_closed: Vec<Option<i64>>,
    s_stream: Vec<&'a str>,
    s_version: Vec<i64>,
    s_codec: Vec<i16>,
    s_type_version: Vec<i32>,
    s_payload: Vec<&'a [u8]>,
    /// A timer's due instant when its catch-up grace makes it fire later (`t_fire`).
    t_due: Vec<Option<i64>>,
}

impl<'a> IndexColumns<'a> {
    fn of(net: &'a NetChanges) -> Result<IndexColumns<'a>, StoreError> {
        let i = &net.instances;
        let t = &net.timers;
        let hashes: Vec<(i64, i64)> = t
            .iter()
            .map(|r| parcours_store::subject_hash_halves(&r.tenant, &r.subject))
            .collect();
        let w = &net.work;
        let s = &net.snapshots;
        Ok(IndexColumns {
            timers_removed: net.timers_removed.iter().map(String::as_str).collect(),
            work_removed: net.work_removed.iter().map(String::as_str).collect(),
            i_stream: i.iter().map(|r| r.stream.as_str()).collect(),
            i_tenant: i.iter().map(|r| r.tenant.as_str()).collect(),
            i_subject: i.iter().map(|r| r.subject.as_str()).collect(),
            i_pathway: i.iter().map(|r| r.pathway_id.as_str()).collect(),
            i_pathway_version: i.iter().map(|r| i64::from(r.pathway_version)).collect(),
            i_status: i.iter().map(|r| r.status.as_str()).collect(),
            i_closed: i.iter().map(|r| r.closed_reason.as_deref()).collect(),
            i_states: i.iter().map(|r| r.states.as_str()).collect(),
            i_cycle: i.iter().map(|r| i64::from(r.cycle)).collect(),
            i_enrolled: i
                .iter()
                .map(|r| nanos(r.enrolled_at))
                .collect::<Result<_, _>>()?,
            i_updated: i
                .iter()
                .map(|r| nanos(r.updated_at))
                .collect::<Result<_, _>>()?,
            i_version: i
                .iter()
                .map(|r| to_i64(r.version, "instance version"))
                .collect::<Result<_, _>>()?,
            t_id: t.iter().map(|r| r.id.as_str()).collect(),
            t_stream: t.iter().map(|r| r.stream.as_str()).collect(),
            t_tenant: t.iter().map(|r| r.tenant.as_str()).collect(),
            t_subject: t.iter().map(|r| r.subject.as_str()).collect(),
            t_fire: t
                .iter()
                .map(|r| nanos(r.fires_at()))
                .collect::<Result<_, _>>()?,
            t_hash_hi: hashes.iter().map(|h| h.0).collect(),
            t_hash_lo: hashes.iter().map(|h| h.1).collect(),
            w_id: w.iter().map(|r| r.id.as_str()).collect(),
            w_kind: w.iter().map(|r| r.kind.as_str()).collect(),
            w_stream: w.iter().map(|r| r.stream.as_str()).collect(),
            w_tenant: w.iter().map(|r| r.tenant.as_str()).collect(),
            w_subject: w.iter().map(|r| r.subject.as_str()).collect(),
            w_pathway: w.iter().map(|r| r.pathway_id.as_str()).collect(),
            w_code: w.iter().map(|r| r.code.as_str()).collect(),
            w_role: w.iter().map(|r| r.role.as_str()).collect(),
            w_title: w.iter().map(|r| r.title.as_str()).collect(),
            w_status: w.iter().map(|r| r.status.as_str()).collect(),
            w_priority: w.iter().map(|r| r.priority.as_str()).collect(),
            w_due: w
                .iter()
                .map(|r| r.due_at.map(nanos).transpose())
                .collect::<Result<_, _>>()?,
            w_opened: w
                .iter()
                .map(|r| nanos(r.opened_at))
                .collect::<Result<_, _>>()?,
            w_opened_by: w.iter().map(|r| r.opened_by.as_str()).collect(),
            w_escalated: w.iter().map(|r| r.escalated_to.as_deref()).collect(),
            w_closed: w
                .iter()
                .map(|r| r.closed_at.map(nanos).transpose())
                .collect::<Result<_, _>>()?,
            st_id: net.work_status.iter().map(|u| u.id.as_str()).collect(),
            st_status: net.work_status.iter().map(|u| u.status.as_str()).collect(),
            st_escalated: net
                .work_status
                .iter()
                .map(|u| u.escalated_to.as_deref())
                .collect(),
            st_priority: net
                .work_status
                .iter()
                .map(|u| u.priority.as_deref())
                .collect(),
            st_closed: net
                .work_status
                .iter()
                .map(|u| u.closed_at.map(nanos).transpose())
                .collect::<Result<_, _>>()?,
            s_stream: s.iter().map(|r| r.stream.as_str()).collect(),
            s_version: s
                .iter()
                .map(|r| to_i64(r.version, "snapshot version"))
                .collect::<Result<_, _>>()?,
            s_codec: s
                .iter()
                .map(|r| codec_tag(r.codec))
                .collect::<Result<_, _>>()?,
            s_type_version: s.iter().map(|r| i32::from(r.type_version)).collect(),
            s_payload: s.iter().map(|r| r.payload.as_slice()).collect(),
            t_due: t
                .iter()
                .map(|r| r.not_before.map(|_| nanos(r.fire_at)).transpose())
                .collect::<Result<_, _>>()?,
        })
    }

    /// Bind the 46 arrays, in parameter order.
    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        q.bind(self.timers_removed)
            .bind(self.work_removed)
            .bind(self.i_stream)
            .bind(self.i_tenant)
            .bind(self.i_subject)
            .bind(self.i_pathway)
            .bind(self.i_pathway_version)
            .bind(self.i_status)
            .bind(self.i_closed)
            .bind(self.i_states)
            .bind(self.i_cycle)
            .bind(self.i_enrolled)
            .bind(self.i_updated)
            .bind(self.i_version)
            .bind(self.t_id)
            .bind(self.t_stream)
            .bind(self.t_tenant)
            .bind(self.t_subject)
            .bind(self.t_fire)
            .bind(self.t_hash_hi)
            .bind(self.t_hash_lo)
            .bind(self.w_id)
            .bind(self.w_kind)
            .bind(self.w_stream)
            .bind(self.w_tenant)
            .bind(self.w_subject)
            .bind(self.w_pathway)
            .bind(self.w_code)
            .bind(self.w_role)
            .bind(self.w_title)
            .bind(self.w_status)
            .bind(self.w_priority)
            .bind(self.w_due)
            .bind(self.w_opened)
            .bind(self.w_opened_by)
            .bind(self.w_escalated)
            .bind(self.w_closed)
            .bind(self.st_id)
            .bind(self.st_status)
            .bind(self.st_escalated)
            .bind(self.st_priority)
            .bind(self.st_closed)
            .bind(self.s_stream)
            .bind(self.s_version)
            .bind(self.s_codec)
            .bind(self.s_type_version)
            .bind(self.s_payload)
            .bind(self.t_due)
    }
}
