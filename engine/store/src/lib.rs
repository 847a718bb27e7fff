//! parcours-store: the event-log port.
//!
//! The log holds every record parcours keeps: inbound canonical events (the facts from
//! hospitals, labs and care teams) and the instance events `decide` produced from them.
//! Backends (SQLite for the embedded mode, PostgreSQL for production) live in `adapters/`
//! and all pass the same [`conformance`] suite.
//!
//! Guarantees every backend gives:
//! - **atomic commits**: a [`Commit`] (the inbound event and everything decided from it,
//!   across several streams) is stored whole or not at all;
//! - **optimistic concurrency**: each stream write names the version it expects, and a
//!   commit may also name versions of streams it does not write ([`Guard`]: commits
//!   sharing a guard's lock are written one after the other);
//! - **idempotency**: a record id is stored once; a commit containing an id already stored
//!   is acknowledged as [`Appended::Duplicate`] and writes nothing;
//! - **a global position that readers never skip**: [`EventStore::read_all`] after
//!   position `p` returns every committed record after `p`, in position order, even when
//!   commits finish out of order.
//!
//! Every record carries its type, a type version and a codec tag, so stored payloads keep
//! decoding as formats evolve.
//!
//! Next to the records, a commit carries [`IndexChanges`]: the projections the runtime
//! queries (each instance's summary, pending timers, work items open and closed, the latest snapshot
//! of each instance), written in the same transaction so they never disagree with the
//! log. They are derived data: `parcours replay` rebuilds them from the records.

use std::future::Future;

use jiff::Timestamp;

pub mod audit;
pub mod conformance;
#[doc(hidden)]
pub mod delegate;
mod index;
mod keys;

pub use audit::{AuditEntry, AuditFilter, AuditLog, AuditOutcome, StoredAudit};
pub use index::{
    DeadLetter, DeadLetterFilter, IndexChanges, InstanceFilter, InstanceRow, NetChanges, Snapshot,
    StoredDeadLetter, TimerChange, TimerRow, WorkChange, WorkCursor, WorkFilter, WorkItem,
    WorkKind, WorkStatus, WorkUpdate, catch_up_end,
};
pub use keys::{PatientKey, PatientKeys, Rewrapped};

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// UTF-8 JSON (event payloads: auditable, queryable).
    Json,
    /// bincode 2 with serde (snapshots, internal frames).
    Bincode,
}

impl Codec {
    /// The tag stored with each record.
    pub fn tag(self) -> i64 {
        match self {
            Codec::Json => 1,
            Codec::Bincode => 2,
        }
    }

    /// The codec of a stored tag.
    pub fn from_tag(tag: i64) -> Option<Codec> {
        match tag {
            1 => Some(Codec::Json),
            2 => Some(Codec::Bincode),
            _ => None,
        }
    }
}

/// A record to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecord {
    /// Unique id (the inbound event id, or an instance event id).
    pub id: String,
    /// Dotted type (`encounter.discharged`, `task.requested`).
    pub record_type: String,
    /// Version of the type's payload schema.
    pub type_version: u16,
    /// Payload encoding.
    pub codec: Codec,
    /// The CPTS it belongs to.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// Clinical time.
    pub occurred_at: Timestamp,
    /// The record that caused this one (the inbound event of an instance event).
    pub cause: Option<String>,
    /// Encoded payload.
    pub payload: Vec<u8>,
}

/// Records to append to one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamWrite {
    /// Stream id: an instance id, or `inbound/<tenant>` for inbound events.
    pub stream: String,
    /// The stream's version before this write (0 for a new stream).
    pub expected_version: u64,
    /// What to append, in order.
    pub records: Vec<NewRecord>,
}

/// An atomic commit: all its writes and index changes, or none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// The writes.
    pub writes: Vec<StreamWrite>,
    /// The projections that change with them.
    pub index: IndexChanges,
    /// Streams this commit does not write that must be at a version for it to be
    /// written ([`Guard`]); none for most commits, which then pay nothing for them.
    pub guards: Vec<Guard>,
}

/// A condition a commit is written under: the stream `stream`, which the commit does
/// not write, is at `version` (0: it has no record) when the commit is written;
/// otherwise the commit is refused like a stale write ([`StoreError::Conflict`], nothing
/// written).
///
/// A guard holds against another commit writing `stream` concurrently only if that
/// commit names the same `lock` in a guard of its own: commits sharing a lock are
/// written one after the other — but for two that both hold it `shared` — and each sees
/// the one written before it. So two commits each guarding a stream the other writes,
/// under one lock and not both shared, cannot both be written: whichever is written
/// second is refused, in whatever order they run. (On PostgreSQL, transaction-level
/// advisory locks taken in one order before the versions are read, shared or
/// exclusive; SQLite has one writer.) The runtime guards a patient's identity stream
/// from its events' commits (shared: events do not wait for each other) and its inbound
/// stream from a link's or merge's (exclusive), under one lock per patient key
/// (`parcours-runtime`, `engine/links.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    /// The stream whose version is checked (not written by the commit).
    pub stream: String,
    /// The version it must be at.
    pub version: u64,
    /// What commits racing on the stream serialize on (a name; no patient data).
    pub lock: String,
    /// Held shared: commits holding a lock shared are not ordered among themselves,
    /// only against one holding it exclusive.
    pub shared: bool,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    /// Global position (increasing in commit order for readers).
    pub position: u64,
    /// Stream id.
    pub stream: String,
    /// Version within the stream (1 for the first record).
    pub version: u64,
    /// When the log stored it.
    pub recorded_at: Timestamp,
    /// What was stored.
    pub record: NewRecord,
}

impl StoredRecord {
    /// The record's head ([`EventStore::read_heads`]).
    pub fn head(&self) -> RecordHead {
        RecordHead {
            position: self.position,
            stream: self.stream.clone(),
            record_type: self.record.record_type.clone(),
            recorded_at: self.recorded_at,
        }
    }

    /// The parts a bulk reader sees ([`EventStore::scan_all`]), borrowed.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            position: self.position,
            stream: &self.stream,
            version: self.version,
            recorded_at: self.recorded_at,
            id: &self.record.id,
            record_type: &self.record.record_type,
            type_version: self.record.type_version,
            codec: self.record.codec,
            payload: &self.record.payload,
        }
    }
}

/// Where a record is and what it is, without the rest of it ([`EventStore::read_heads`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// Global position.
    pub position: u64,
    /// Stream id.
    pub stream: String,
    /// The record's type.
    pub record_type: String,
    /// When the log stored it.
    pub recorded_at: Timestamp,
}

/// What the stored record of an id says about the event it holds
/// ([`EventStore::stored_events`]): enough to tell a redelivered event (the same tenant,
/// patient, type and clinical time) from an id reused for another event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredId {
    /// The record id.
    pub id: String,
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// Its type.
    pub record_type: String,
    /// Clinical time.
    pub occurred_at: Timestamp,
}

/// A stored record as [`EventStore::scan_all`] shows it: what readers of the whole log
/// need to decode it (no tenant, subject, clinical time or cause), borrowed from the backend's
/// buffers for as long as the visit lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecordView<'a> {
    /// Global position.
    pub position: u64,
    /// Stream id.
    pub stream: &'a str,
    /// Version within the stream.
    pub version: u64,
    /// When the log stored it (the same instant for every record of a commit: replay
    /// rebuilds the catch-up grace of timer rows from it).
    pub recorded_at: Timestamp,
    /// Record id.
    pub id: &'a str,
    /// Record type.
    pub record_type: &'a str,
    /// Version of the type's payload schema.
    pub type_version: u16,
    /// Payload encoding.
    pub codec: Codec,
    /// Encoded payload.
    pub payload: &'a [u8],
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the highest position written.
    Committed {
        /// Position of the last record written. The commit's records hold consecutive
        /// positions ending here, in the commit's order (its writes, each write's
        /// records): `last_position - n + 1 ..= last_position` for `n` records.
        last_position: u64,
    },
    /// A record id was already stored: nothing written, the commit had already been made.
    Duplicate,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stream was not at the expected version (another writer got there first).
    #[error("stream {stream} is at version {actual}, not {expected}")]
    Conflict {
        /// Stream id.
        stream: String,
        /// Expected version.
        expected: u64,
        /// Actual version.
        actual: u64,
    },
    /// A stored record could not be read back (unknown codec, bad timestamp).
    #[error("record at position {position} is unreadable: {reason}")]
    Corrupt {
        /// Position.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed (IO, connection, constraint): infrastructure, not domain.
    #[error("event store: {0}")]
    Backend(String),
}

/// The event-log port.
pub trait EventStore: Send + Sync {
    /// Append a commit atomically (see the crate docs for the guarantees). Its records
    /// get the log's clock as `recorded_at`, and its catch-up timer rows their grace from
    /// it ([`IndexChanges::recorded_at`]).
    fn append(&self, commit: Commit) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Appends one process may have in flight at once with profit: more would only wait
    /// for (or fail on) the log's write lock. 1 unless a backend takes concurrent writers
    /// or queues them.
    fn concurrent_appends(&self) -> usize {
        1
    }

    /// Of [`EventStore::concurrent_appends`], how many are worth having in flight at a
    /// steady rate. Every append costs the log a transaction and a sync whatever its size,
    /// so a caller opens more only while work queues up (a backlog), when each append is
    /// large. 1 unless concurrent appends pay for themselves even when small.
    fn steady_appends(&self) -> usize {
        1
    }

    /// Records of one stream with version > `after_version`, in order.
    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;

    /// Every record of the streams whose name starts with `prefix`, in position order
    /// (all streams for an empty prefix). For the few streams named alike — the
    /// published pathways, `pathway/…` — read through the streams' index, so that what
    /// it costs does not grow with the rest of the log. Streams are compared by their
    /// UTF-8 bytes: [`prefix_end`] bounds the range.
    fn read_streams_by_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;

    /// Up to `limit` committed records with position > `after`, in position order. A reader
    /// that keeps calling with the last position it saw sees every record exactly once.
    fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;

    /// [`read_all`](EventStore::read_all) without the records' contents: the heads of up
    /// to `limit` committed records with position > `after`, in position order, with the
    /// same guarantee (a reader that keeps calling with the last position it saw sees
    /// every record exactly once). For a reader that needs only some records whole — the
    /// relay, most of whose records' effects went out from memory — and reads those with
    /// [`read_at`](EventStore::read_at). The default reads the records whole.
    fn read_heads(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordHead>, StoreError>> + Send {
        async move {
            Ok(self
                .read_all(after, limit)
                .await?
                .iter()
                .map(StoredRecord::head)
                .collect())
        }
    }

    /// The committed records at these positions (heads read with
    /// [`read_heads`](EventStore::read_heads)), in position order; a position without a
    /// record is left out. The default reads them one at a time with `read_all`.
    fn read_at(
        &self,
        positions: &[u64],
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send {
        async move {
            let mut sorted = positions.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            let mut out = Vec::with_capacity(sorted.len());
            for p in sorted {
                let page = self.read_all(p.saturating_sub(1), 1).await?;
                out.extend(page.into_iter().filter(|r| r.position == p));
            }
            Ok(out)
        }
    }

    /// The highest position of a committed record a reader sees now (0: an empty log).
    /// Every record committed before the call is at or below it.
    fn last_position(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// [`read_all`](EventStore::read_all) for readers of the whole log that decode each
    /// record and keep nothing of it (replay): a fold of up to `limit` committed records
    /// with position > `after`, in position order, into `acc`. `visit` sees each record
    /// borrowed, where the backend reads it (SQLite: on its reading thread, straight from
    /// the row: no copy, no allocation per record). Gives back `acc` and the last position
    /// seen (`None`: no record after `after`). The default reads a page with `read_all`.
    fn scan_all<A, F>(
        &self,
        after: u64,
        limit: usize,
        mut acc: A,
        mut visit: F,
    ) -> impl Future<Output = Result<(A, Option<u64>), StoreError>> + Send
    where
        A: Send + 'static,
        F: FnMut(&mut A, RecordView<'_>) + Send + 'static,
    {
        async move {
            let page = self.read_all(after, limit).await?;
            for r in &page {
                visit(&mut acc, r.view());
            }
            Ok((acc, page.last().map(|r| r.position)))
        }
    }

    /// Whether a record id is stored (an inbound event already processed).
    fn contains(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Which of these record ids are stored (a batch's duplicates, in one query).
    fn stored_ids(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The stored records of these ids (those not stored are left out), as
    /// [`StoredId`]s: a batch's duplicates, in one query, with what tells a redelivery
    /// from an id reused for another event.
    fn stored_events(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<StoredId>, StoreError>> + Send;

    /// The last stored version of a stream (0 when it has none).
    fn stream_version(&self, stream: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The last stored version of each of these streams, in their order (0 for one
    /// without records): [`EventStore::stream_version`] of each, in one query where the
    /// backend can (the engine reads a batch's new patients with it).
    fn stream_versions(
        &self,
        streams: &[String],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(streams.len());
            for s in streams {
                out.push(self.stream_version(s).await?);
            }
            Ok(out)
        }
    }

    /// The subject of each of these streams' latest record, in their order (`None` for
    /// a stream without records): one look-up of the `(stream, version)` index per
    /// stream, in one query where the backend can. The identity links
    /// (`identity/<tenant>/<local key>`, each record naming the national identity's key as
    /// its subject) are read with it.
    fn latest_subjects(
        &self,
        streams: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(streams.len());
            for s in streams {
                let records = self.read_stream(s, 0).await?;
                out.push(records.into_iter().last().map(|r| r.record.subject));
            }
            Ok(out)
        }
    }

    /// Apply index changes without records (rebuilding projections from the log).
    fn write_index(
        &self,
        changes: IndexChanges,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Empty every projection (instances, timers, work items, snapshots) before a rebuild.
    fn clear_index(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One instance's summary.
    fn instance(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<InstanceRow>, StoreError>> + Send;

    /// Every instance of a patient (any status), oldest first.
    fn instances_of(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<InstanceRow>, StoreError>> + Send;

    /// Every instance of each of these patients (`(tenant, subject)`), one list per
    /// patient in their order: [`EventStore::instances_of`] of each, in one query where
    /// the backend can (the engine reads a batch's new patients with it).
    fn instances_of_many(
        &self,
        patients: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<Vec<InstanceRow>>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(patients.len());
            for (tenant, subject) in patients {
                out.push(self.instances_of(tenant, subject).await?);
            }
            Ok(out)
        }
    }

    /// Instances matching a filter, ordered by stream id (page with `after_stream`).
    fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> impl Future<Output = Result<Vec<InstanceRow>, StoreError>> + Send;

    /// Up to `limit` pending timers that fire at or before `until` in `scope`, earliest
    /// first: by [`TimerRow::fires_at`] (a timer in its catch-up grace is not due yet).
    fn due_timers(
        &self,
        until: Timestamp,
        limit: usize,
        scope: &TimerScope,
    ) -> impl Future<Output = Result<Vec<TimerRow>, StoreError>> + Send;

    /// When the earliest pending timer in `scope` fires ([`TimerRow::fires_at`]).
    fn next_timer(
        &self,
        scope: &TimerScope,
    ) -> impl Future<Output = Result<Option<Timestamp>, StoreError>> + Send;

    /// How many timer rows are stored (the engine keeps one per instance with a pending
    /// timer: its earliest).
    fn count_timers(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Work items (tasks, alerts, handoffs) matching a filter — the open ones unless it
    /// asks for other statuses — earliest due first (those without a due time last), then
    /// by id; after [`WorkFilter::after`] when it is given.
    fn work_items(
        &self,
        filter: &WorkFilter,
    ) -> impl Future<Output = Result<Vec<WorkItem>, StoreError>> + Send;

    /// One work item by id, open or closed (see [`WorkStatus::is_open`]).
    fn work_item(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<WorkItem>, StoreError>> + Send;

    /// The latest snapshot of an instance.
    fn snapshot(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Keep something that could not be processed, with the reason.
    fn dead_letter(
        &self,
        letter: DeadLetter,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Dead letters with id > `after`, oldest first.
    fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// Dead letters matching a filter, newest first (by id, descending); before
    /// [`DeadLetterFilter::before`] when it is given. Where ids are numbered like
    /// positions (PostgreSQL), a letter still being written is not listed until it is
    /// committed, nor any after it, so that paging never skips one.
    fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// One dead letter by id.
    fn dead_letter_by_id(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<StoredDeadLetter>, StoreError>> + Send;

    /// A named reader's checkpoint (the outbox relay, projections).
    fn checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Save a named reader's checkpoint.
    fn save_checkpoint(
        &self,
        name: &str,
        position: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The first name after every name that starts with `prefix`, in byte order (the
/// order of UTF-8 text compared byte by byte: SQLite's `BINARY`, PostgreSQL's `"C"`): a
/// name starts with `prefix` exactly when `prefix <= name < prefix_end(prefix)`. `None`
/// when no name is after them all (an empty prefix, or one made of `char::MAX` only).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value, past the surrogates (not chars).
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The partition of a patient: which engine process owns their events in production
/// (`partitions` of them; each patient's events are handled in order by the owner of its
/// partition). Stable across processes, versions and platforms (XXH3-64 of tenant and
/// subject).
pub fn partition_of(tenant: &str, subject: &str, partitions: u16) -> u16 {
    (subject_hash(tenant, subject) % u64::from(partitions.max(1))) as u16
}

/// The stable hash behind [`partition_of`] (XXH3-64 of tenant, a zero byte, subject).
/// Backends store it with each timer, split in two 32-bit halves, so that "timers of
/// the partitions I own" is a query whatever the partition count:
/// `h mod n = ((hi mod n) · (2^32 mod n) + lo mod n) mod n`.
pub fn subject_hash(tenant: &str, subject: &str) -> u64 {
    let mut key = Vec::with_capacity(tenant.len() + subject.len() + 1);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

/// Which timers an engine fires: all of them (one engine), or those of the patients in
/// the partitions it owns (several engines share the work, see [`partition_of`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TimerScope {
    /// Every timer.
    #[default]
    All,
    /// Timers whose patient's partition, out of `count`, is in `owned`.
    Partitions {
        /// How many partitions there are.
        count: u16,
        /// The partitions owned.
        owned: Vec<u16>,
    },
}

impl TimerScope {
    /// Whether a patient's timers are in scope.
    pub fn covers(&self, tenant: &str, subject: &str) -> bool {
        match self {
            TimerScope::All => true,
            TimerScope::Partitions { count, owned } => {
                owned.contains(&partition_of(tenant, subject, *count))
            }
        }
    }

    /// `(count, owned)` for a query, `None` for every timer.
    pub fn query_parts(&self) -> Option<(i64, Vec<i64>)> {
        match self {
            TimerScope::All => None,
            TimerScope::Partitions { count, owned } => Some((
                i64::from((*count).max(1)),
                owned.iter().map(|p| i64::from(*p)).collect(),
            )),
        }
    }
}

/// The two 32-bit halves of [`subject_hash`], as backends store them.
pub fn subject_hash_halves(tenant: &str, subject: &str) -> (i64, i64) {
    let h = subject_hash(tenant, subject);
    ((h >> 32) as i64, (h & 0xffff_ffff) as i64)
}

#[cfg(test)]
mod partition_tests {
    use super::{partition_of, prefix_end};

    #[test]
    fn prefix_end_bounds_exactly_the_names_with_the_prefix() {
        let end = prefix_end("pathway/").expect("an end");
        assert_eq!(end, "pathway0");
        for name in ["pathway/", "pathway/heart-failure", "pathway/\u{10FFFF}x"] {
            assert!(name >= "pathway/" && name < end.as_str(), "{name}");
        }
        for name in [
            "pathway",
            "pathway.",
            "pathway0",
            "pathwayz",
            "inbound/t/p",
            "q",
        ] {
            assert!(!(name >= "pathway/" && name < end.as_str()), "{name}");
        }
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned: a change would move every patient to another owner.
        assert_eq!(partition_of("cpts-a", "p-1", 16), 4);
        assert_eq!(partition_of("cpts-b", "p-00042", 64), 4);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[usize::from(partition_of("cpts-a", &format!("p-{i}"), 16))] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(partition_of("t", "s", 1), 0);
        assert_eq!(partition_of("t", "s", 0), 0);
    }

    #[test]
    fn the_halves_give_the_partition_by_integer_arithmetic() {
        // What the SQL filters compute from the stored halves.
        for i in 0..2_000 {
            let subject = format!("p-{i}");
            let (hi, lo) = super::subject_hash_halves("cpts-a", &subject);
            for n in [1i64, 2, 3, 7, 16, 64, 99, 100] {
                let p = ((hi % n) * ((1i64 << 32) % n) + lo % n) % n;
                assert_eq!(p, i64::from(partition_of("cpts-a", &subject, n as u16)));
            }
        }
    }
}
