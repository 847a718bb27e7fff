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
//! - **optimistic concurrency**: each stream write names the version it expects;
//! - **idempotency**: a record id is stored once; a commit containing an id already stored
//!   is acknowledged as [`Appended::Duplicate`] and writes nothing;
//! - **a global position that readers never skip**: [`EventStore::read_all`] after
//!   position `p` returns every committed record after `p`, in position order, even when
//!   commits finish out of order.
//!
//! Every record carries its type, a type version and a codec tag, so stored payloads keep
//! decoding as formats evolve.

use std::future::Future;

use jiff::Timestamp;

pub mod conformance;

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

/// An atomic commit: all its writes, or none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// The writes.
    pub writes: Vec<StreamWrite>,
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

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the highest position written.
    Committed {
        /// Position of the last record written.
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
    /// Append a commit atomically (see the crate docs for the guarantees).
    fn append(&self, commit: Commit) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Records of one stream with version > `after_version`, in order.
    fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;

    /// Up to `limit` committed records with position > `after`, in position order. A reader
    /// that keeps calling with the last position it saw sees every record exactly once.
    fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;

    /// Whether a record id is stored (an inbound event already processed).
    fn contains(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

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
