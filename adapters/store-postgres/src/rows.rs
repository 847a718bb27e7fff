//! Rows to port types, and port values to column values. Nothing here panics: a value
//! out of range is an error naming the column.

use jiff::Timestamp;
use parcours_store::{
    Codec, InstanceRow, NewRecord, RecordHead, Snapshot, StoreError, StoredDeadLetter,
    StoredRecord, TimerRow, WorkItem, WorkKind, WorkStatus,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::backend;

/// An instant as integer nanoseconds since the Unix epoch: exact, and sortable. The
/// range is what an `i64` holds (1677-09-21 to 2262-04-11); an instant outside it is
/// refused rather than stored wrong.
pub(crate) fn nanos(t: Timestamp) -> Result<i64, StoreError> {
    i64::try_from(t.as_nanosecond()).map_err(|_| {
        StoreError::Backend(format!(
            "instant {t} is outside what the log stores (1677-09-21 to 2262-04-11)"
        ))
    })
}

/// A bound of a query by instant, as nanoseconds: clamped to what the log stores (every
/// stored instant is within it), never refused.
pub(crate) fn nanos_bound(t: Timestamp) -> i64 {
    let n = t.as_nanosecond();
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_nanos(n: i64, column: &str) -> Result<Timestamp, StoreError> {
    Timestamp::from_nanosecond(i128::from(n))
        .map_err(|e| StoreError::Backend(format!("stored {column} {n} out of range: {e}")))
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{what} {v} does not fit a bigint column")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("stored {what} {v} is negative")))
}

/// A limit of 0 means the default of 100 (filters and due timers).
pub(crate) fn limit_of(limit: usize) -> i64 {
    if limit == 0 {
        100
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

pub(crate) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(backend)
}

/// A record's head (`position, stream, record_type, recorded_at`).
pub(crate) fn head(row: &PgRow) -> Result<RecordHead, StoreError> {
    let position = to_u64(get(row, "position")?, "position")?;
    let recorded_at: i64 = get(row, "recorded_at")?;
    Ok(RecordHead {
        position,
        stream: get(row, "stream")?,
        record_type: get(row, "record_type")?,
        recorded_at: Timestamp::from_nanosecond(i128::from(recorded_at)).map_err(|e| {
            StoreError::Corrupt {
                position,
                reason: format!("recorded_at: {e}"),
            }
        })?,
    })
}

pub(crate) fn record(row: &PgRow) -> Result<StoredRecord, StoreError> {
    let position = to_u64(get(row, "position")?, "position")?;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let codec: i16 = get(row, "codec")?;
    let codec = Codec::from_tag(i64::from(codec))
        .ok_or_else(|| corrupt(format!("unknown codec tag {codec}")))?;
    let type_version: i32 = get(row, "type_version")?;
    let instant = |column: &str| -> Result<Timestamp, StoreError> {
        let n: i64 = get(row, column)?;
        Timestamp::from_nanosecond(i128::from(n)).map_err(|e| corrupt(format!("{column}: {e}")))
    };
    let version: i64 = get(row, "version")?;
    Ok(StoredRecord {
        position,
        stream: get(row, "stream")?,
        version: u64::try_from(version)
            .map_err(|_| corrupt(format!("stream version {version}")))?,
        recorded_at: instant("recorded_at")?,
        record: NewRecord {
            id: get(row, "id")?,
            record_type: get(row, "record_type")?,
            type_version: u16::try_from(type_version)
                .map_err(|_| corrupt(format!("type version {type_version} out of range")))?,
            codec,
            tenant: get(row, "tenant")?,
            subject: get(row, "subject")?,
            occurred_at: instant("occurred_at")?,
            cause: get(row, "cause")?,
            payload: get(row, "payload")?,
        },
    })
}

pub(crate) fn instance(row: &PgRow) -> Result<InstanceRow, StoreError> {
    let pathway_version: i64 = get(row, "pathway_version")?;
    let cycle: i64 = get(row, "cycle")?;
    Ok(InstanceRow {
        stream: get(row, "stream")?,
        tenant: get(row, "tenant")?,
        subject: get(row, "subject")?,
        pathway_id: get(row, "pathway_id")?,
        pathway_version: u32::try_from(pathway_version).map_err(|_| {
            StoreError::Backend(format!("stored pathway version {pathway_version}"))
        })?,
        status: get(row, "status")?,
        closed_reason: get(row, "closed_reason")?,
        states: get(row, "states")?,
        cycle: u32::try_from(cycle)
            .map_err(|_| StoreError::Backend(format!("stored cycle {cycle}")))?,
        enrolled_at: from_nanos(get(row, "enrolled_at")?, "enrolled_at")?,
        updated_at: from_nanos(get(row, "updated_at")?, "updated_at")?,
        version: to_u64(get(row, "version")?, "instance version")?,
    })
}

pub(crate) fn timer(row: &PgRow) -> Result<TimerRow, StoreError> {
    // `fire_at` is when it fires; `due_at`, when set, its due instant (a catch-up grace).
    let fires = from_nanos(get(row, "fire_at")?, "fire_at")?;
    let due: Option<i64> = get(row, "due_at")?;
    Ok(TimerRow {
        id: get(row, "id")?,
        stream: get(row, "stream")?,
        tenant: get(row, "tenant")?,
        subject: get(row, "subject")?,
        fire_at: match due {
            Some(due) => from_nanos(due, "due_at")?,
            None => fires,
        },
        not_before: due.map(|_| fires),
    })
}

pub(crate) fn work(row: &PgRow) -> Result<WorkItem, StoreError> {
    let kind: String = get(row, "kind")?;
    let status: String = get(row, "status")?;
    let due: Option<i64> = get(row, "due_at")?;
    let closed: Option<i64> = get(row, "closed_at")?;
    Ok(WorkItem {
        id: get(row, "id")?,
        kind: WorkKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown work kind {kind}")))?,
        stream: get(row, "stream")?,
        tenant: get(row, "tenant")?,
        subject: get(row, "subject")?,
        pathway_id: get(row, "pathway_id")?,
        code: get(row, "code")?,
        role: get(row, "role")?,
        title: get(row, "title")?,
        status: WorkStatus::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown work status {status}")))?,
        priority: get(row, "priority")?,
        due_at: due.map(|n| from_nanos(n, "due_at")).transpose()?,
        opened_at: from_nanos(get(row, "opened_at")?, "opened_at")?,
        opened_by: get(row, "opened_by")?,
        escalated_to: get(row, "escalated_to")?,
        closed_at: closed.map(|n| from_nanos(n, "closed_at")).transpose()?,
    })
}

pub(crate) fn snapshot(row: &PgRow) -> Result<Snapshot, StoreError> {
    let codec: i16 = get(row, "codec")?;
    let type_version: i32 = get(row, "type_version")?;
    Ok(Snapshot {
        stream: get(row, "stream")?,
        version: to_u64(get(row, "version")?, "snapshot version")?,
        codec: Codec::from_tag(i64::from(codec))
            .ok_or_else(|| StoreError::Backend(format!("snapshot codec tag {codec}")))?,
        type_version: u16::try_from(type_version)
            .map_err(|_| StoreError::Backend(format!("snapshot type version {type_version}")))?,
        payload: get(row, "payload")?,
    })
}

pub(crate) fn dead_letter(row: &PgRow) -> Result<StoredDeadLetter, StoreError> {
    Ok(StoredDeadLetter {
        id: to_u64(get(row, "id")?, "dead letter id")?,
        received_at: from_nanos(get(row, "received_at")?, "received_at")?,
        letter: parcours_store::DeadLetter {
            source: get(row, "source")?,
            tenant: get(row, "tenant")?,
            reason: get(row, "reason")?,
            payload: get(row, "payload")?,
        },
    })
}
