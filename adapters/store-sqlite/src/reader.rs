//! The log's bulk reader: pages of records read on a blocking thread by connections of
//! its own (rusqlite, on the SQLite sqlx-sqlite links: one SQLite in the build).
//!
//! sqlx-sqlite steps a statement on its worker thread and sends each row through a
//! channel, each value copied first: readers of the whole log (replay, the relay,
//! projection rebuilds) paid a thread wake-up and a dozen allocations per record before
//! decoding anything. Here a page is one statement stepped in place, each column read
//! straight into the record; `scan` (`EventStore::scan_all`) does not even build the
//! record: its visitor sees each row's columns borrowed (only those a `RecordView` shows).
//! The file is read with `pread`, not memory-mapped: a mapped file that shrinks under
//! the reader (a `VACUUM` by hand while the engine runs) kills the process with SIGBUS,
//! for 0.05 s of system time saved on a 200 000-record replay.
//!
//! The connections only read (`query_only`): a page is one statement, so one read
//! transaction, which sees exactly the commits made before it started (WAL), like the
//! pool's connections do.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use parcours_store::{Codec, NewRecord, RecordHead, RecordView, StoreError, StoredRecord};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};

/// The columns [`record`] reads, in its order.
macro_rules! columns {
    () => {
        "position, stream, version, id, record_type, type_version, codec, tenant, subject, \
         occurred_at, recorded_at, cause, payload"
    };
}

/// Idle reader connections kept for the next page.
const IDLE: usize = 2;

/// Opens reader connections on the log file and keeps a few idle ones.
#[derive(Debug)]
pub(crate) struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("log reader: {e}"))
}

impl Reader {
    pub(crate) fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(c);
        }
        // The pool created the file and its schema before any read.
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed)?;
        c.busy_timeout(Duration::from_secs(30)).map_err(failed)?;
        c.pragma_update(None, "query_only", true).map_err(failed)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE
        {
            idle.push(c);
        }
    }

    /// `read` on an idle connection (blocking); a connection whose statement failed is
    /// dropped, not reused.
    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let c = self.connection()?;
        let out = read(&c);
        if out.is_ok() {
            self.give_back(c);
        }
        out
    }

    /// Up to `limit` records with position > `after`, in position order (blocking).
    pub(crate) fn read_all(&self, after: i64, limit: i64) -> Result<Vec<StoredRecord>, StoreError> {
        self.with(|c| page(c, after, limit))
    }

    /// [`read_all`](Reader::read_all)'s heads (blocking).
    pub(crate) fn read_heads(&self, after: i64, limit: i64) -> Result<Vec<RecordHead>, StoreError> {
        self.with(|c| heads(c, after, limit))
    }

    /// The records at these positions, in position order (blocking).
    pub(crate) fn read_at(&self, positions: &[i64]) -> Result<Vec<StoredRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM records WHERE position = ?1"
                ))
                .map_err(failed)?;
            let mut out = Vec::with_capacity(positions.len());
            for &p in positions {
                let mut rows = stmt.query([p]).map_err(failed)?;
                if let Some(row) = rows.next().map_err(failed)? {
                    out.push(record(row)?);
                }
            }
            Ok(out)
        })
    }

    /// [`read_all`](Reader::read_all) seen through `visit`, each record borrowed from its
    /// row (blocking): the last position seen.
    pub(crate) fn scan(
        &self,
        after: i64,
        limit: i64,
        visit: &mut dyn FnMut(RecordView<'_>),
    ) -> Result<Option<u64>, StoreError> {
        self.with(|c| scan(c, after, limit, visit))
    }
}

/// Heads only: the payload is neither copied nor, when it overflows its page, read.
fn heads(c: &Connection, after: i64, limit: i64) -> Result<Vec<RecordHead>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT position, stream, record_type, recorded_at \
             FROM records WHERE position > ?1 ORDER BY position LIMIT ?2",
        )
        .map_err(failed)?;
    let mut rows = stmt.query((after, limit)).map_err(failed)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(failed)? {
        let position = u64::try_from(int(row, 0)?).unwrap_or_default();
        out.push(RecordHead {
            position,
            stream: text(row, 1)?.to_owned(),
            record_type: text(row, 2)?.to_owned(),
            recorded_at: text(row, 3)?.parse().map_err(|e| StoreError::Corrupt {
                position,
                reason: format!("recorded_at: {e}"),
            })?,
        });
    }
    Ok(out)
}

/// Only the columns a [`RecordView`] shows.
fn scan(
    c: &Connection,
    after: i64,
    limit: i64,
    visit: &mut dyn FnMut(RecordView<'_>),
) -> Result<Option<u64>, StoreError> {
    let mut stmt = c
        .prepare(
            "SELECT position, stream, version, id, record_type, type_version, codec, payload, \
             recorded_at FROM records WHERE position > ?1 ORDER BY position LIMIT ?2",
        )
        .map_err(failed)?;
    let mut rows = stmt.query((after, limit)).map_err(failed)?;
    let mut last = None;
    while let Some(row) = rows.next().map_err(failed)? {
        let (position, type_version, codec) = head(row)?;
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        visit(RecordView {
            position,
            stream: text(row, 1)?,
            version: u64::try_from(int(row, 2)?).unwrap_or_default(),
            recorded_at: recorded_at(text(row, 8)?)
                .map_err(|e| corrupt(format!("recorded_at: {e}")))?,
            id: text(row, 3)?,
            record_type: text(row, 4)?,
            type_version,
            codec,
            payload: match row.get_ref(7).map_err(failed)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b,
                _ => return Err(corrupt("payload is not a blob".into())),
            },
        });
        last = Some(position);
    }
    Ok(last)
}

fn page(c: &Connection, after: i64, limit: i64) -> Result<Vec<StoredRecord>, StoreError> {
    let mut stmt = c
        .prepare(concat!(
            "SELECT ",
            columns!(),
            " FROM records WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .map_err(failed)?;
    let mut rows = stmt.query((after, limit)).map_err(failed)?;
    let mut out = Vec::with_capacity(usize::try_from(limit.clamp(0, 4096)).unwrap_or(0));
    while let Some(row) = rows.next().map_err(failed)? {
        out.push(record(row)?);
    }
    Ok(out)
}

/// A row's position, type version and codec (columns 0, 5 and 6 of both reads).
fn head(row: &Row<'_>) -> Result<(u64, u16, Codec), StoreError> {
    let position = u64::try_from(int(row, 0)?).unwrap_or_default();
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let codec = int(row, 6)?;
    let codec =
        Codec::from_tag(codec).ok_or_else(|| corrupt(format!("unknown codec tag {codec}")))?;
    let type_version =
        u16::try_from(int(row, 5)?).map_err(|_| corrupt("type version out of range".into()))?;
    Ok((position, type_version, codec))
}

fn record(row: &Row<'_>) -> Result<StoredRecord, StoreError> {
    let (position, type_version, codec) = head(row)?;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let ts = |i: usize, col: &str| -> Result<Timestamp, StoreError> {
        text(row, i)?
            .parse()
            .map_err(|e| corrupt(format!("{col}: {e}")))
    };
    let cause = match row.get_ref(11).map_err(failed)? {
        ValueRef::Null => None,
        _ => Some(text(row, 11)?.to_owned()),
    };
    Ok(StoredRecord {
        position,
        stream: text(row, 1)?.to_owned(),
        version: u64::try_from(int(row, 2)?).unwrap_or_default(),
        recorded_at: ts(10, "recorded_at")?,
        record: NewRecord {
            id: text(row, 3)?.to_owned(),
            record_type: text(row, 4)?.to_owned(),
            type_version,
            codec,
            tenant: text(row, 7)?.to_owned(),
            subject: text(row, 8)?.to_owned(),
            occurred_at: ts(9, "occurred_at")?,
            cause,
            payload: match row.get_ref(12).map_err(failed)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                _ => return Err(corrupt("payload is not a blob".into())),
            },
        },
    })
}

/// A `recorded_at` as this store writes it (`Timestamp`'s display: `2026-12-06T07:47:30.1Z`,
/// up to nine digits of fraction, or none), read without the general RFC 3339 parser:
/// replay reads one a record, and jiff's parser cost it a few percent. Anything else is
/// read by jiff.
fn recorded_at(s: &str) -> Result<Timestamp, jiff::Error> {
    utc_instant(s.as_bytes()).map_or_else(|| s.parse(), Ok)
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, years 1970 to 9999; `None` for anything else.
fn utc_instant(b: &[u8]) -> Option<Timestamp> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b.last() != Some(&b'Z')
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            let n = digits(20..20 + fraction.len())?;
            n * 10i64.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (H. Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Timestamp::new(seconds, i32::try_from(nanos).ok()?).ok()
}

fn int(row: &Row<'_>, i: usize) -> Result<i64, StoreError> {
    row.get_ref(i)
        .map_err(failed)?
        .as_i64()
        .map_err(|e| StoreError::Backend(format!("log reader: column {i}: {e}")))
}

fn text<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    row.get_ref(i)
        .map_err(failed)?
        .as_str()
        .map_err(|e| StoreError::Backend(format!("log reader: column {i}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the store writes reads back the same, fast or not; what it does not write
    /// goes to jiff.
    #[test]
    fn recorded_at_reads_what_the_store_writes_as_jiff_does() {
        let mut at: Timestamp = "1970-01-01T00:00:00Z".parse().expect("epoch");
        // Every 97 days, 3 hours, 7 minutes, 11.000123457 s: years to 2100, leap days,
        // fractions of every length, none.
        let step = jiff::SignedDuration::new(97 * 86_400 + 3 * 3_600 + 7 * 60 + 11, 123_457);
        for _ in 0..500 {
            for t in [at, at.round(jiff::Unit::Second).expect("round")] {
                let text = t.to_string();
                assert_eq!(utc_instant(text.as_bytes()), Some(t), "{text}");
                assert_eq!(recorded_at(&text).expect("read"), t, "{text}");
            }
            at = at.checked_add(step).expect("add");
        }
        for (text, expected) in [
            ("2024-02-29T23:59:59.5Z", "2024-02-29T23:59:59.5Z"),
            (
                "2026-12-06T07:47:30.123456789Z",
                "2026-12-06T07:47:30.123456789Z",
            ),
        ] {
            let expected: Timestamp = expected.parse().expect("jiff");
            assert_eq!(utc_instant(text.as_bytes()), Some(expected));
        }
        // Not the store's shape: jiff reads it, or refuses it.
        for text in [
            "2026-12-06T08:47:30+01:00",
            "1969-12-31T23:59:59Z",
            "2026-12-06T07:47:30.Z",
            "2026-12-06T07:47:30.1234567890Z",
        ] {
            assert_eq!(utc_instant(text.as_bytes()), None, "{text}");
            assert_eq!(
                recorded_at(text).ok(),
                text.parse::<Timestamp>().ok(),
                "{text}"
            );
        }
        for text in [
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
        ] {
            assert_eq!(utc_instant(text.as_bytes()), None, "{text}");
            assert!(recorded_at(text).is_err(), "{text}");
        }
    }
}
