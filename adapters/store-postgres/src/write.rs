//! Appending a commit inside a transaction: the writer mark, the checks, the rows.

use std::collections::HashMap;

use parcours_store::{NetChanges, NewRecord, StoreError, StreamWrite};
use sqlx::PgConnection;

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

/// Write a commit in the transaction on `conn`: mark it as a log writer, refuse a
/// duplicate or a stale version, then write the records, the stream versions and the
/// index changes in one statement. The caller commits or rolls back.
pub(crate) async fn write_commit(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    index: &NetChanges,
    recorded_at: i64,
) -> Result<Outcome, WriteError> {
    if writes.is_empty() {
        write_index(conn, index).await?;
        return Ok(Outcome::Written { last_position: 0 });
    }
    let ids = record_ids(writes);
    if ids.len() > MAX_RECORDS_PER_TRANSACTION {
        return Err(StoreError::Backend(format!(
            "a commit of {} records is more than one transaction holds ({MAX_RECORDS_PER_TRANSACTION})",
            ids.len()
        ))
        .into());
    }
    let mut streams: Vec<&str> = writes.iter().map(|w| w.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    // First statement of the transaction: the writer mark comes before any write.
    let (next, dup, names, versions): (Option<i64>, bool, Vec<String>, Vec<i64>) =
        sqlx::query_as(sql::BEGIN_COMMIT)
            .bind(&ids)
            .bind(&streams)
            .fetch_one(&mut *conn)
            .await?;
    // Idempotency first: a commit already made is acknowledged whatever the versions.
    if dup {
        return Ok(Outcome::Duplicate);
    }
    let mut stored = HashMap::with_capacity(names.len());
    for (stream, version) in names.into_iter().zip(versions) {
        stored.insert(stream, to_u64(version, "stream version")?);
    }
    if let Some((stream, expected, actual)) = first_conflict(writes, &stored) {
        return Ok(Outcome::Conflict {
            stream: stream.to_string(),
            expected,
            actual,
        });
    }
    let Some(next) = next.filter(|_| !ids.is_empty()) else {
        // Writes without records: versions checked, nothing to append.
        write_index(conn, index).await?;
        return Ok(Outcome::Written { last_position: 0 });
    };
    let last_position = write_all(conn, writes, &stored, next, recorded_at, index).await?;
    Ok(Outcome::Written { last_position })
}

/// The records (positions `next`, `next + 1`, … in commit order), the streams' new
/// versions and the index changes, in one statement; returns the last position.
async fn write_all(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
    stored: &HashMap<String, u64>,
    next: i64,
    recorded_at: i64,
    index: &NetChanges,
) -> Result<u64, WriteError> {
    let mut planned: Vec<(&str, u64, &NewRecord)> = Vec::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for w in writes {
        let mut version = versions
            .get(w.stream.as_str())
            .copied()
            .or_else(|| stored.get(&w.stream).copied())
            .unwrap_or(0);
        for r in &w.records {
            version += 1;
            planned.push((&w.stream, version, r));
        }
        versions.insert(&w.stream, version);
    }
    let count = i64::try_from(planned.len()).unwrap_or(i64::MAX);
    let offset_in_range = next & ((1 << 20) - 1);
    if offset_in_range + count > 1 << 20 {
        return Err(StoreError::Backend(format!(
            "this transaction has no room for {count} more records (at most \
             {MAX_RECORDS_PER_TRANSACTION} per transaction)"
        ))
        .into());
    }
    let last_position = to_u64(next + count - 1, "position")?;
    // Insert in (stream, version) order: commits racing to create the same streams queue
    // on the same first key instead of deadlocking. Positions keep the commit's order.
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_unstable_by_key(|&i| (planned[i].0, planned[i].1));
    let n = planned.len();
    let mut positions = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut stream_versions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut type_versions = Vec::with_capacity(n);
    let mut codecs = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut subjects = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut causes = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for i in order {
        let (stream, version, r) = planned[i];
        positions.push(next + i64::try_from(i).unwrap_or(i64::MAX));
        streams.push(stream);
        stream_versions.push(to_i64(version, "stream version")?);
        ids.push(r.id.as_str());
        types.push(r.record_type.as_str());
        type_versions.push(i32::from(r.type_version));
        codecs.push(codec_tag(r.codec)?);
        tenants.push(r.tenant.as_str());
        subjects.push(r.subject.as_str());
        occurred.push(nanos(r.occurred_at)?);
        causes.push(r.cause.as_deref());
        payloads.push(r.payload.as_slice());
    }
    let mut heads: Vec<(&str, u64)> = versions.into_iter().collect();
    heads.sort_unstable();
    let mut head_streams = Vec::with_capacity(heads.len());
    let mut head_versions = Vec::with_capacity(heads.len());
    for (stream, version) in heads {
        head_streams.push(stream);
        head_versions.push(to_i64(version, "stream version")?);
    }
    let columns = IndexColumns::of(index)?;
    columns
        .bind(sqlx::query(sql::WRITE_COMMIT))
        .bind(&positions)
        .bind(&streams)
        .bind(&stream_versions)
        .bind(&ids)
        .bind(&types)
        .bind(&type_versions)
        .bind(&codecs)
        .bind(&tenants)
        .bind(&subjects)
        .bind(&occurred)
        .bind(recorded_at)
        .bind(&causes)
        .bind(&payloads)
        .bind(&head_streams)
        .bind(&head_versions)
        .execute(&mut *conn)
        .await?;
    Ok(last_position)
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

/// Net index changes as the 42 column arrays of the index statement part (`$1` to `$42`).
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
    st_id: Vec<&'a str>,
    st_status: Vec<&'a str>,
    s_stream: Vec<&'a str>,
    s_version: Vec<i64>,
    s_codec: Vec<i16>,
    s_type_version: Vec<i32>,
    s_payload: Vec<&'a [u8]>,
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
                .map(|r| nanos(r.fire_at))
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
            st_id: net.work_status.iter().map(|(id, _)| id.as_str()).collect(),
            st_status: net.work_status.iter().map(|(_, st)| st.as_str()).collect(),
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
        })
    }

    /// Bind the 42 arrays, in parameter order.
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
            .bind(self.st_id)
            .bind(self.st_status)
            .bind(self.s_stream)
            .bind(self.s_version)
            .bind(self.s_codec)
            .bind(self.s_type_version)
            .bind(self.s_payload)
    }
}
