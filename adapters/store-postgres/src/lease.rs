//! Leases for scale-out, on PostgreSQL session advisory locks: which engine process owns
//! which partition of patients, and which one relays effects.
//!
//! A lease is a session-level advisory lock held on a dedicated connection
//! ([`Leases`]): PostgreSQL grants it to one session at a time and releases it when the
//! session ends — a process that dies, is killed or loses its connection loses its
//! leases at once (as soon as the server notices the socket closed; TCP keepalives bound
//! that for a silent network partition). No home-made consensus: the server is the
//! arbiter, as it already is of the log.
//!
//! | lock (two-key form) | meaning |
//! |---|---|
//! | `(0x70617201, n)` | a member: the process took member slot `n` (how many engines run) |
//! | `(0x70617202, p)` | the owner of partition `p` |
//! | `(0x70617203, 0)` | the relay: publishes effects from the log |
//!
//! Locks live in one database: engines sharing a log share leases, other databases on
//! the same server are unaffected. [`Leases::holders`] reads `pg_locks` for what the
//! other sessions hold; [`share`] is the fair share a member aims for.

use std::collections::BTreeSet;

use parcours_store::StoreError;
use sqlx::{Connection, PgConnection};

const MEMBER: i32 = 0x7061_7201;
const PARTITION: i32 = 0x7061_7202;
const RELAY: i32 = 0x7061_7203;

/// Member slots tried at most (engines in one deployment).
const MAX_MEMBERS: i32 = 1024;

/// The leases of one engine process, on a connection of their own.
#[derive(Debug)]
pub struct Leases {
    conn: PgConnection,
    member: Option<i32>,
    partitions: BTreeSet<u16>,
    relay: bool,
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Leases {
    /// Open the leases' connection (the log's URL). Nothing is held yet.
    pub async fn connect(url: &str) -> Result<Leases, StoreError> {
        let conn = PgConnection::connect(url).await.map_err(backend)?;
        Ok(Leases {
            conn,
            member: None,
            partitions: BTreeSet::new(),
            relay: false,
        })
    }

    /// Take the lowest free member slot (idempotent); returns it.
    pub async fn join(&mut self) -> Result<i32, StoreError> {
        if let Some(slot) = self.member {
            return Ok(slot);
        }
        for slot in 0..MAX_MEMBERS {
            if self.try_lock(MEMBER, slot).await? {
                self.member = Some(slot);
                return Ok(slot);
            }
        }
        Err(StoreError::Backend(format!(
            "more than {MAX_MEMBERS} engines share this log"
        )))
    }

    /// How many engine processes hold a member slot now (this one included).
    pub async fn members(&mut self) -> Result<usize, StoreError> {
        Ok(self.holders_of(MEMBER).await?.len())
    }

    /// Partitions owned by any engine (this one included).
    pub async fn holders(&mut self) -> Result<BTreeSet<u16>, StoreError> {
        Ok(self
            .holders_of(PARTITION)
            .await?
            .into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .collect())
    }

    /// Try to own a partition; `true` when this process owns it now.
    pub async fn try_acquire(&mut self, partition: u16) -> Result<bool, StoreError> {
        if self.partitions.contains(&partition) {
            return Ok(true);
        }
        let got = self.try_lock(PARTITION, i32::from(partition)).await?;
        if got {
            self.partitions.insert(partition);
        }
        Ok(got)
    }

    /// Give a partition up (after its work stopped).
    pub async fn release(&mut self, partition: u16) -> Result<(), StoreError> {
        if self.partitions.remove(&partition) {
            self.unlock(PARTITION, i32::from(partition)).await?;
        }
        Ok(())
    }

    /// Try to become the relay; `true` when this process is it now.
    pub async fn try_relay(&mut self) -> Result<bool, StoreError> {
        if !self.relay {
            self.relay = self.try_lock(RELAY, 0).await?;
        }
        Ok(self.relay)
    }

    /// Partitions this process owns.
    pub fn owned(&self) -> &BTreeSet<u16> {
        &self.partitions
    }

    /// Whether this process is the relay.
    pub fn is_relay(&self) -> bool {
        self.relay
    }

    /// Check the connection (and so the leases) is alive.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        self.conn.ping().await.map_err(backend)
    }

    /// End the session: every lease is released at once.
    pub async fn close(self) -> Result<(), StoreError> {
        self.conn.close().await.map_err(backend)
    }

    async fn try_lock(&mut self, class: i32, key: i32) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(class)
            .bind(key)
            .fetch_one(&mut self.conn)
            .await
            .map_err(backend)
    }

    async fn unlock(&mut self, class: i32, key: i32) -> Result<(), StoreError> {
        let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
            .bind(class)
            .bind(key)
            .fetch_one(&mut self.conn)
            .await
            .map_err(backend)?;
        if !released {
            tracing::warn!(
                class,
                key,
                "a lease this process believed it held was not held"
            );
        }
        Ok(())
    }

    async fn holders_of(&mut self, class: i32) -> Result<BTreeSet<i32>, StoreError> {
        let keys: Vec<i64> = sqlx::query_scalar(
            "SELECT objid::bigint FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
               AND classid = $1::bigint::oid \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(i64::from(class))
        .fetch_all(&mut self.conn)
        .await
        .map_err(backend)?;
        Ok(keys
            .into_iter()
            .filter_map(|k| i32::try_from(k).ok())
            .collect())
    }
}

/// The partitions an engine aims to own: `ceil(partitions / members)`.
pub fn share(partitions: u16, members: usize) -> usize {
    usize::from(partitions).div_ceil(members.max(1))
}

/// One rebalancing step of an engine: which free partitions to try (lowest first) and
/// which of its own to give up (highest first) so that it owns its [`share`].
/// `held` is every partition owned by anyone, this engine's included.
pub fn rebalance(
    partitions: u16,
    members: usize,
    owned: &BTreeSet<u16>,
    held: &BTreeSet<u16>,
) -> (Vec<u16>, Vec<u16>) {
    let target = share(partitions, members);
    if owned.len() > target {
        let give_up = owned
            .iter()
            .rev()
            .take(owned.len() - target)
            .copied()
            .collect();
        return (Vec::new(), give_up);
    }
    let want = target - owned.len();
    let take = (0..partitions)
        .filter(|p| !held.contains(p) && !owned.contains(p))
        .take(want)
        .collect();
    (take, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u16]) -> BTreeSet<u16> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_lone_engine_takes_everything_and_a_newcomer_gets_half() {
        let none = BTreeSet::new();
        assert_eq!(rebalance(4, 1, &none, &none), (vec![0, 1, 2, 3], vec![]));
        let all = set(&[0, 1, 2, 3]);
        // A second member: the first gives up its two highest, the second takes them.
        assert_eq!(rebalance(4, 2, &all, &all), (vec![], vec![3, 2]));
        let after = set(&[0, 1]);
        assert_eq!(rebalance(4, 2, &none, &after), (vec![2, 3], vec![]));
        // Balanced: nothing moves.
        assert_eq!(rebalance(4, 2, &after, &all), (vec![], vec![]));
    }

    #[test]
    fn the_partitions_of_a_dead_engine_are_taken_up() {
        // Three engines on 8 partitions (share 3); one dies with {6, 7}: the survivors'
        // share becomes 4 and the free ones are taken.
        let a = set(&[0, 1, 2]);
        let held = set(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(rebalance(8, 2, &a, &held), (vec![6], vec![]));
        assert_eq!(share(8, 3), 3);
        assert_eq!(share(8, 0), 8);
    }
}
