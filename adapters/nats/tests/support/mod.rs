//! Test support: servers, the real engine over a temporary SQLite log, stream readers.

#![allow(dead_code, unreachable_pub)]

pub mod asyncapi;
pub mod server;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_nats::{ConnectionConfig, ConsumerSettings, Nats, NatsBus, NatsConfig};
use parcours_runtime::service::{self, ServiceConfig};
use parcours_runtime::{Clock, Engine, EngineConfig, Handle, PathwayRegistry, Relay};
use parcours_store::EventStore;
use parcours_store_sqlite::SqliteStore;
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use server::{Family, NatsServer, ServerBin, server_bin};

/// Run each test on both server families (Debian's 2.9 and a current 2.1x), each within a
/// minute; `server_bin` fails the test under CI when a family is missing.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod nats_2_9 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(bin) = super::server_bin(super::Family::V2_9) {
                        super::within_a_minute(super::$name(bin)).await;
                    }
                }
            )*
        }
        mod nats_current {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(bin) = super::server_bin(super::Family::Current) {
                        super::within_a_minute(super::$name(bin)).await;
                    }
                }
            )*
        }
    };
}

pub async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes within a minute");
}

/// The tenant of every test event.
pub const TENANT: &str = "cpts-test";

/// Settings for tests: short waits so redeliveries happen within the test's time.
pub fn config(server: &NatsServer) -> NatsConfig {
    NatsConfig {
        connection: ConnectionConfig {
            urls: vec![server.url()],
            name: "parcours-nats-tests".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..ConnectionConfig::default()
        },
        partitions: 4,
        consumer: ConsumerSettings {
            ack_wait: Duration::from_secs(2),
            fetch_expiry: Duration::from_millis(200),
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            ..ConsumerSettings::default()
        },
        ..NatsConfig::default()
    }
}

/// Connect, retrying while a just-started server finishes starting.
pub async fn connect(config: NatsConfig) -> Nats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Nats::connect(config.clone()).await {
            Ok(n) => return n,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Poll `check` until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("timestamp")
}

/// A heart-failure discharge of patient `p-<i>` (it enrols, and asks for tasks).
pub fn discharge(i: usize) -> Event {
    Event {
        id: format!("adt-{i}"),
        tenant: TENANT.into(),
        source: "test".into(),
        subject: format!("p-{i}"),
        occurred_at: t0() + SignedDuration::from_mins(i as i64 % 600),
        recorded_at: None,
        data: EventData::from_json(
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": format!("V{i}"), "destination": "home", "diagnoses": ["I50.1"]}),
        )
        .expect("payload"),
    }
}

/// A clock that stays put: timers due later never fire during a test.
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn registry() -> PathwayRegistry {
    let mut r = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways")
            .join(f);
        let loaded = parcours_lang::load_file(&path).expect("readable pathway");
        r.add(loaded.pathway.expect("the shipped pathway compiles"));
    }
    r
}

/// Open an engine on a fresh SQLite log in `dir`.
pub async fn open_engine(dir: &Path) -> (Engine<SqliteStore>, SqliteStore) {
    let store = SqliteStore::open(&dir.join("log.db"))
        .await
        .expect("sqlite log");
    let engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    (engine, store)
}

/// The real engine service relaying effects through a [`NatsBus`].
pub struct Running {
    pub store: SqliteStore,
    pub handle: Handle,
    pub token: CancellationToken,
    pub tracker: TaskTracker,
    _dir: TempDir,
}

impl Running {
    pub async fn start(nats: &Nats) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let (engine, store) = open_engine(dir.path()).await;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handle = service::start(
            engine,
            NatsBus::new(nats.clone()),
            FixedClock(t0() + SignedDuration::from_hours(12)),
            ServiceConfig::default(),
            token.clone(),
            &tracker,
        );
        Running {
            store,
            handle,
            token,
            tracker,
            _dir: dir,
        }
    }

    /// Ids of the inbound events in the log, with how many times each is there.
    pub async fn inbound_ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for r in all_records(&self.store).await {
            if r.stream.starts_with("inbound/") {
                *ids.entry(r.record.id).or_insert(0) += 1;
            }
        }
        ids
    }

    /// Ids of the effects in the log.
    pub async fn effect_ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for r in all_records(&self.store).await {
            for e in parcours_runtime::relay::effects_of(&r).expect("decodes") {
                *ids.entry(e.id).or_insert(0) += 1;
            }
        }
        ids
    }

    /// Records the relay has not published yet.
    pub async fn relay_lag(&self) -> u64 {
        Relay::new(self.store.clone(), "relay")
            .lag()
            .await
            .expect("lag")
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
    }
}

pub async fn all_records(store: &SqliteStore) -> Vec<parcours_store::StoredRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 1000).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(page);
    }
    out
}

/// One message read back from a stream.
#[derive(Clone, Debug)]
pub struct Read {
    pub subject: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

/// Read every message of a stream with a fresh (ephemeral) JetStream consumer.
pub async fn read_stream(nats: &Nats, stream: &str) -> Vec<Read> {
    let js = nats.jetstream();
    let stream = js.get_stream(stream).await.expect("stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .expect("reader consumer");
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .expect("fetch");
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let headers = m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                subject: m.subject.to_string(),
                headers,
                payload: m.payload.to_vec(),
            });
        }
        if out.len() == before {
            return out;
        }
    }
}

/// How many messages a stream holds.
pub async fn stream_len(nats: &Nats, stream: &str) -> u64 {
    let mut s = nats.jetstream().get_stream(stream).await.expect("stream");
    s.info().await.expect("info").state.messages
}

/// `Nats-Msg-Id` of each message, with how many times it is there.
pub fn by_msg_id(reads: &[Read]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in reads {
        let id = r.headers.get("Nats-Msg-Id").cloned().unwrap_or_default();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}
