//! The production benchmark: `parcours serve` processes on PostgreSQL and NATS
//! JetStream, fed by a load generator that publishes discharges, consents, weights and
//! lab results to `PARCOURS_IN` as hospitals would, and watches `PARCOURS_OUT`.
//!
//! In one run, on the same machine and services:
//!
//! 1. the raw JetStream publish rate (a scratch file stream with the engines' replicas,
//!    `Nats-Msg-Id` on every message, acknowledgements pipelined);
//! 2. the raw PostgreSQL batched-insert rate (a scratch copy of the `records` table, its
//!    keys and indexes, multi-row `INSERT … SELECT FROM UNNEST`, one transaction per
//!    batch);
//! 3. the engines' throughput: every event published as fast as JetStream takes them,
//!    until each is committed (the work-queue stream `PARCOURS_IN` is empty: a message
//!    is acknowledged only after its commit) and its effects are on `PARCOURS_OUT`;
//! 4. a paced run (`--rate`, default 2 000 events/s): latency from publish to the first
//!    effect of the event observed on `PARCOURS_OUT`, p50 and p99, over the run and by
//!    5 s of publishing; the three seconds with the highest p99, and the run's p99
//!    without them. With `--scrape-every SECS`, each engine's `/metrics` is read every
//!    SECS during the paced phase, as Prometheus would (each read folds the log's new
//!    records into the pathway indicators); the reads' durations are printed.
//!
//! A private database is created for the run and dropped after; the bench tenant's
//! messages are purged from `PARCOURS_OUT` at the end.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use jiff::{SignedDuration, Timestamp};
use sqlx::{Connection as _, PgConnection};

use crate::{arg, hashed_id, hashed_key, ms, pct, scattered_keys};

const TENANT: &str = "bench";

/// One event ready to publish.
struct Outgoing {
    id: String,
    subject: String,
    payload: bytes::Bytes,
}

/// A patient's events as CloudEvents JSON: a heart-failure discharge, a consent, then
/// daily weights (a gain now and then raises an alert); every tenth patient is a
/// diabetic with HbA1c results (lab results). Clinical times lie in the last hour, one
/// minute apart, so no pathway deadline falls due during the run.
fn patient_events(p: usize, per_patient: usize, base: Timestamp) -> Vec<serde_json::Value> {
    let subject = format!("p-{p:07}");
    // Ids unique to the run: JetStream drops a `Nats-Msg-Id` it saw within its
    // duplicate window (an earlier run's).
    let run = std::process::id();
    let at = |i: usize| (base + SignedDuration::from_secs(60 * i as i64)).to_string();
    let ev = |id: String, i: usize, ty: &str, data: serde_json::Value| {
        serde_json::json!({"id": id, "tenant": TENANT, "source": "loadgen", "subject": subject,
            "occurredat": at(i), "type": ty, "data": data})
    };
    let mut out = Vec::with_capacity(per_patient);
    if p % 10 == 9 {
        out.push(ev(
            format!("{run}-dx-{p}"),
            0,
            "diagnosis.recorded",
            serde_json::json!({"code": "E11.9", "system": "icd-10"}),
        ));
        for i in 1..per_patient {
            out.push(ev(
                format!("{run}-a1c-{p}-{i}"),
                i,
                "observation.recorded",
                serde_json::json!({"code": "4548-4", "value": 6.5 + (i % 4) as f64 * 0.5, "unit": "%"}),
            ));
        }
        return out;
    }
    out.push(ev(
        format!("{run}-adt-{p}"),
        0,
        "encounter.discharged",
        serde_json::json!({"encounter_id": format!("V{p}"), "destination": "home", "diagnoses": ["I50.1"]}),
    ));
    out.push(ev(
        format!("{run}-consent-{p}"),
        1,
        "consent.given",
        serde_json::json!({}),
    ));
    let mut kg = 80.0;
    for i in 2..per_patient {
        kg += if i % 7 == 0 { 1.5 } else { -0.1 };
        out.push(ev(
            format!("{run}-w-{p}-{i}"),
            i,
            "observation.recorded",
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        ));
    }
    out
}

/// How patients' first events (discharges, diagnoses: enrolments, the heaviest
/// decisions) are spread over the run. Either way 256 patients are in flight together,
/// one event of each in turn, so a patient's events keep their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrivals {
    /// A new patient takes a slot as soon as one is free, and the slots start staggered:
    /// one event in `per_patient` is a first one, all through the run, as discharges come
    /// from hospitals.
    Staggered,
    /// 256 new patients at once, then the next event of each, block after block: every
    /// block starts with 256 enrolments, then 256 consents (the workload of the figures
    /// up to 2026-12-04).
    Blocks,
}

impl std::str::FromStr for Arrivals {
    type Err = String;
    fn from_str(s: &str) -> Result<Arrivals, String> {
        match s {
            "staggered" => Ok(Arrivals::Staggered),
            "blocks" => Ok(Arrivals::Blocks),
            other => Err(format!("--arrivals {other}: staggered or blocks")),
        }
    }
}

/// Patients in flight together.
const SLOTS: usize = 256;

/// The order in which patients `from..to` send their events: `(patient, event index)`.
/// Each patient's events in order; see [`Arrivals`].
fn arrival_order(
    from: usize,
    to: usize,
    per_patient: usize,
    arrivals: Arrivals,
) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity((to - from) * per_patient);
    match arrivals {
        Arrivals::Blocks => {
            let mut block_start = from;
            while block_start < to {
                let block_end = (block_start + SLOTS).min(to);
                for i in 0..per_patient {
                    out.extend((block_start..block_end).map(|p| (p, i)));
                }
                block_start = block_end;
            }
        }
        Arrivals::Staggered => {
            // Slot s takes its first patient at round s % per_patient: from then on about
            // SLOTS / per_patient slots take a new patient each round, spread through it
            // (every per_patient-th slot).
            let mut slots: Vec<Option<(usize, usize)>> = vec![None; SLOTS];
            let mut next = from;
            let mut round = 0;
            while next < to || slots.iter().any(Option::is_some) {
                for (s, slot) in slots.iter_mut().enumerate() {
                    if slot.is_none() && next < to && round >= s % per_patient {
                        *slot = Some((next, 0));
                        next += 1;
                    }
                    if let Some((p, i)) = *slot {
                        out.push((p, i));
                        *slot = (i + 1 < per_patient).then_some((p, i + 1));
                    }
                }
                round += 1;
            }
        }
    }
    out
}

/// Patients `from..to`'s events as messages for `PARCOURS_IN`, in the order of
/// [`arrival_order`]; `scattered`: their ids and keys hashed (`--keys scattered`).
fn workload(
    from: usize,
    to: usize,
    per_patient: usize,
    arrivals: Arrivals,
    partitions: u16,
    base: Timestamp,
    scattered: bool,
) -> Vec<Outgoing> {
    let mut events: HashMap<usize, std::vec::IntoIter<serde_json::Value>> = HashMap::new();
    let mut out = Vec::with_capacity((to - from) * per_patient);
    for (p, i) in arrival_order(from, to, per_patient, arrivals) {
        let patient = events
            .entry(p)
            .or_insert_with(|| patient_events(p, per_patient, base).into_iter());
        let Some(mut e) = patient.next() else {
            continue;
        };
        if scattered {
            let id = hashed_id(e["id"].as_str().unwrap_or_default());
            let key = hashed_key(e["subject"].as_str().unwrap_or_default());
            e["id"] = id.into();
            e["subject"] = key.into();
        }
        if i + 1 == per_patient {
            events.remove(&p);
        }
        let subject_key = e["subject"].as_str().unwrap_or_default();
        let kind = e["type"].as_str().unwrap_or_default();
        let partition = parcours_store::partition_of(TENANT, subject_key, partitions);
        out.push(Outgoing {
            id: e["id"].as_str().unwrap_or_default().to_string(),
            subject: format!("parcours.{TENANT}.in.p{partition:02}.{kind}"),
            payload: e.to_string().into(),
        });
    }
    out
}

fn publish_message(payload: bytes::Bytes, id: &str) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert("Content-Type", "application/cloudevents+json");
    PublishMessage::build().payload(payload).headers(headers)
}

/// Publishes with at most `window` acknowledgements awaited at once; fails on the
/// first refused publish.
struct Pipeline {
    js: jetstream::Context,
    window: usize,
    pending:
        FuturesUnordered<futures::future::BoxFuture<'static, Result<PublishAck, PublishError>>>,
}

impl Pipeline {
    fn new(js: jetstream::Context, window: usize) -> Pipeline {
        Pipeline {
            js,
            window,
            pending: FuturesUnordered::new(),
        }
    }

    fn check(r: Result<PublishAck, PublishError>) -> anyhow::Result<()> {
        let ack = r.context("jetstream refused a publish")?;
        anyhow::ensure!(
            !ack.duplicate,
            "jetstream took a message as a duplicate: ids must be new to the stream"
        );
        Ok(())
    }

    async fn send(&mut self, subject: String, message: PublishMessage) -> anyhow::Result<()> {
        while self.pending.len() >= self.window {
            if let Some(r) = self.pending.next().await {
                Pipeline::check(r)?;
            }
        }
        let ack = self.js.send_publish(subject, message).await?;
        self.pending.push(Box::pin(ack.into_future()));
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.pending.next().await {
            Pipeline::check(r)?;
        }
        Ok(())
    }
}

/// The raw JetStream publish rate: `n` messages of `size` bytes with `Nats-Msg-Id`, to
/// a scratch file stream (with `replicas`, like `PARCOURS_IN`), `window` acks in flight.
async fn raw_jetstream(
    client: &async_nats::Client,
    n: usize,
    size: usize,
    window: usize,
    replicas: usize,
) -> anyhow::Result<f64> {
    let name = format!("BENCH_RAW_{}", std::process::id());
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("bench.raw.{}.>", std::process::id())],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .context("creating the scratch stream")?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut pipe = Pipeline::new(js.clone(), window);
    let started = Instant::now();
    for i in 0..n {
        let subject = format!("bench.raw.{}.p{:02}", std::process::id(), i % 16);
        pipe.send(
            subject,
            publish_message(payload.clone(), &format!("raw-{i}")),
        )
        .await?;
    }
    pipe.finish().await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(rate)
}

/// The raw PostgreSQL batched-insert rate: `n` rows shaped like the log's records
/// (same keys and indexes), `batch` rows per statement and transaction, one connection.
async fn raw_postgres(url: &str, n: usize, batch: usize, size: usize) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_raw_records;
         CREATE TABLE bench_raw_records (
            position bigint PRIMARY KEY, stream text COLLATE \"C\" NOT NULL,
            version bigint NOT NULL, id text COLLATE \"C\" NOT NULL UNIQUE,
            record_type text COLLATE \"C\" NOT NULL, type_version integer NOT NULL,
            codec smallint NOT NULL, tenant text COLLATE \"C\" NOT NULL,
            subject text COLLATE \"C\" NOT NULL, occurred_at bigint NOT NULL,
            recorded_at bigint NOT NULL, cause text COLLATE \"C\", payload bytea NOT NULL,
            UNIQUE (stream, version));
         CREATE INDEX ON bench_raw_records (tenant, subject);",
    )
    .execute(&mut conn)
    .await?;
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let mut i = 0usize;
    while i < n {
        let m = batch.min(n - i);
        let rows: Vec<usize> = (i..i + m).collect();
        let positions: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let streams: Vec<String> = rows
            .iter()
            .map(|r| format!("inbound/bench/p-{}", r / 20))
            .collect();
        let versions: Vec<i64> = rows.iter().map(|&r| (r % 20) as i64 + 1).collect();
        let ids: Vec<String> = rows.iter().map(|r| format!("raw-{r}")).collect();
        let subjects: Vec<String> = rows.iter().map(|r| format!("p-{}", r / 20)).collect();
        let payloads: Vec<&[u8]> = rows.iter().map(|_| payload.as_slice()).collect();
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO bench_raw_records (position, stream, version, id, record_type, \
             type_version, codec, tenant, subject, occurred_at, recorded_at, cause, payload) \
             SELECT p, s, v, i, 'observation.recorded', 1, 1, 'bench', sub, p, p, NULL, pl \
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
             $6::bytea[]) AS t(p, s, v, i, sub, pl)",
        )
        .bind(&positions)
        .bind(&streams)
        .bind(&versions)
        .bind(&ids)
        .bind(&subjects)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        i += m;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP TABLE bench_raw_records")
        .execute(&mut conn)
        .await?;
    Ok(rate)
}

/// A private database for the run, dropped when this goes.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin: &str) -> anyhow::Result<Database> {
        let name = format!("parcours_bench_{}", std::process::id());
        let mut conn = PgConnection::connect(admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin, String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        Ok(Database {
            admin: admin.to_string(),
            url: format!("{base}/{name}{query}"),
            name,
        })
    }

    async fn drop_now(&self) {
        if let Ok(mut conn) = PgConnection::connect(&self.admin).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }

    async fn scalar(&self, sql: &'static str) -> anyhow::Result<i64> {
        let mut conn = PgConnection::connect(&self.url).await?;
        Ok(sqlx::query_scalar(sql).fetch_one(&mut conn).await?)
    }
}

/// The `--auth` file a PostgreSQL log requires, with one ops key (every tenant) made by
/// `parcours api-key`; returns the file and the key, which reads the engines' `/metrics`.
fn auth_file(parcours: &Path, identity_key: &Path) -> anyhow::Result<(PathBuf, String)> {
    let out = Command::new(parcours)
        .args(["api-key", "--id", "loadgen", "--principal", "loadgen"])
        .args(["--tenant", "*", "--role", "ops"])
        .output()
        .context("parcours api-key")?;
    anyhow::ensure!(out.status.success(), "parcours api-key failed");
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let key = lines.next().context("no key printed")?.trim().to_string();
    let entry: Vec<&str> = lines.collect();
    let path = identity_key.with_file_name("auth.yaml");
    std::fs::write(&path, format!("api_keys:\n{}\n", entry.join("\n")))?;
    Ok((path, key))
}

/// A `parcours serve` process; killed when dropped.
struct EngineProcess {
    child: Child,
    /// Its HTTP address (`host:port`).
    http: String,
}

impl EngineProcess {
    #[allow(clippy::too_many_arguments)]
    fn start(
        parcours: &Path,
        workspace: &Path,
        db: &str,
        nats: &str,
        partitions: u16,
        key: &Path,
        auth: &Path,
        log: &Path,
        replicas: usize,
    ) -> anyhow::Result<EngineProcess> {
        let mut child = Command::new(parcours)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--store",
                db,
                "--nats",
                nats,
            ])
            .args(["--partitions", &partitions.to_string()])
            .args(["--nats-replicas", &replicas.to_string()])
            .arg("--identity-key")
            .arg(key)
            .arg("--auth")
            .arg(auth)
            .args(["--pathways", "pathways"])
            .current_dir(workspace)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", parcours.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let http = loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("serving on http://") => {
                    let at = line
                        .split("http://")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .trim_end_matches('/')
                        .to_string();
                    break at;
                }
                Some(Ok(_)) => {}
                _ => bail!(
                    "parcours serve ended before listening; see {}",
                    log.display()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(EngineProcess { child, http })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the observer of `PARCOURS_OUT` saw.
#[derive(Default)]
struct Observed {
    /// Publish instant of each event (µs since the run's origin; 0: not yet sent).
    sent: Vec<AtomicU64>,
    /// Event index by id.
    index: HashMap<String, usize>,
    /// Publish instant and publish → first effect, per event with effects (µs).
    first: Mutex<Vec<(u64, u64)>>,
    /// Which events have had their first effect seen.
    seen: Mutex<Vec<bool>>,
    /// Distinct effects (by message) seen.
    effects: AtomicUsize,
    /// Instant of the last effect seen (µs since the origin).
    last: AtomicU64,
}

#[derive(serde::Deserialize)]
struct EffectView {
    cause: String,
}

fn micros(origin: Instant) -> u64 {
    micros_of(origin.elapsed())
}

/// Watch the bench tenant's effects (core NATS delivery of what the relay stores in
/// `PARCOURS_OUT`).
async fn observe(
    client: async_nats::Client,
    observed: Arc<Observed>,
    origin: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut sub = client.subscribe(format!("parcours.{TENANT}.out.>")).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let now = micros(origin);
            observed.effects.fetch_add(1, Ordering::Relaxed);
            observed.last.store(now, Ordering::Relaxed);
            let Ok(e) = serde_json::from_slice::<EffectView>(&m.payload) else {
                continue;
            };
            let Some(&i) = observed.index.get(&e.cause) else {
                continue;
            };
            let sent = observed.sent[i].load(Ordering::Relaxed);
            let Ok(mut seen) = observed.seen.lock() else {
                continue;
            };
            if sent > 0 && !seen[i] {
                seen[i] = true;
                if let Ok(mut f) = observed.first.lock() {
                    f.push((sent, now.saturating_sub(sent)));
                }
            }
        }
    }))
}

/// Messages not yet acknowledged in `PARCOURS_IN` (a work queue: an event's message goes
/// once its commit is acknowledged).
async fn inbound_left(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut s = js.get_stream("PARCOURS_IN").await?;
    Ok(s.info().await?.state.messages)
}

fn micros_to_duration(v: &[u64]) -> Vec<Duration> {
    let mut d: Vec<Duration> = v.iter().map(|&u| Duration::from_micros(u)).collect();
    d.sort();
    d
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The kernel's dirty page cache (`Dirty` of `/proc/meminfo`), in MB.
fn dirty_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("Dirty:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Write the saturated phase's dirty pages back before the paced phase (`sync`): left to
/// the kernel, they go out 30 s after they were dirtied (`vm.dirty_expire_centisecs`),
/// hundreds of MB at once in the middle of the paced phase, and the commits' WAL `fsync`
/// waits behind them. The paced phase then measures a steady rate, its own write-back
/// included (it outlasts the expiry: `--paced-secs` 60), not the burst's.
fn settle_disk() {
    let dirty = dirty_mb();
    let begun = Instant::now();
    match std::process::Command::new("sync").status() {
        Ok(s) if s.success() => println!(
            "settled: {dirty:.0} MB of dirty pages written back (sync) in {:.2} s; load {}",
            begun.elapsed().as_secs_f64(),
            load()
        ),
        other => {
            println!("  (sync failed: {other:?}; the paced phase follows the burst's write-back)")
        }
    }
}

/// One measured phase: publish `events[range]` (as fast as possible, or at `rate`
/// events/s), wait until they are committed and their effects stop arriving.
async fn phase(
    js: &jetstream::Context,
    events: &[Outgoing],
    observed: &Arc<Observed>,
    offset: usize,
    origin: Instant,
    rate: Option<f64>,
    window: usize,
) -> anyhow::Result<PhaseResult> {
    let effects_before = observed.effects.load(Ordering::Relaxed);
    let first_before = observed.first.lock().map(|f| f.len()).unwrap_or(0);
    let mut pipe = Pipeline::new(js.clone(), window);
    let started = Instant::now();
    let mut next_pause = started;
    for (k, e) in events.iter().enumerate() {
        if let Some(rate) = rate {
            // Keep to the rate: publish in 2 ms steps, the number due by now.
            let due_at = started + Duration::from_secs_f64(k as f64 / rate);
            if due_at > next_pause {
                tokio::time::sleep_until(due_at.into()).await;
                next_pause = due_at + Duration::from_millis(2);
            }
        }
        observed.sent[offset + k].store(micros(origin).max(1), Ordering::Relaxed);
        pipe.send(e.subject.clone(), publish_message(e.payload.clone(), &e.id))
            .await?;
    }
    pipe.finish().await?;
    let published = started.elapsed();
    // Committed: the work queue is empty (acks come after commits).
    let mut committed = published;
    loop {
        if inbound_left(js).await? == 0 {
            committed = committed.max(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Effects: until none arrives for two seconds.
    let mut last_count = observed.effects.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = observed.effects.load(Ordering::Relaxed);
        if c != last_count {
            last_count = c;
            quiet_since = Instant::now();
        }
    }
    let last_effect = Duration::from_micros(observed.last.load(Ordering::Relaxed))
        .saturating_sub(started.duration_since(origin));
    let first = observed
        .first
        .lock()
        .map(|f| f[first_before..].to_vec())
        .unwrap_or_default();
    let begun = micros_of(started.duration_since(origin));
    Ok(PhaseResult {
        events: events.len(),
        published,
        committed,
        effects_done: last_effect.max(committed),
        effects: last_count - effects_before,
        latencies: micros_to_duration(&first.iter().map(|&(_, l)| l).collect::<Vec<_>>()),
        timeline: first
            .iter()
            .map(|&(sent, l)| (sent.saturating_sub(begun), l))
            .collect(),
    })
}

struct PhaseResult {
    events: usize,
    published: Duration,
    committed: Duration,
    effects_done: Duration,
    effects: usize,
    latencies: Vec<Duration>,
    /// Per event with effects: when it was published (µs since the phase began), and
    /// publish → first effect (µs).
    timeline: Vec<(u64, u64)>,
}

impl PhaseResult {
    fn print(&self, name: &str) {
        let rate = |d: Duration| self.events as f64 / d.as_secs_f64();
        println!(
            "{name}: {} events published in {:.2} s ({:.0}/s); committed after {:.2} s = {:.0} events/s; \
             effects on PARCOURS_OUT ({}) all observed after {:.2} s = {:.0} events/s end to end",
            self.events,
            self.published.as_secs_f64(),
            rate(self.published),
            self.committed.as_secs_f64(),
            rate(self.committed),
            self.effects,
            self.effects_done.as_secs_f64(),
            rate(self.effects_done),
        );
        let l = &self.latencies;
        println!(
            "  publish → first effect observed: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events with effects); load {}",
            ms(pct(l, 0.5)),
            ms(pct(l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            l.len(),
            load()
        );
    }

    /// The latencies (µs) by window of publishing: window number → latencies.
    fn by_window(&self, window: Duration) -> std::collections::BTreeMap<u64, Vec<u64>> {
        let w = micros_of(window).max(1);
        let mut by: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for &(at, l) in &self.timeline {
            by.entry(at / w).or_default().push(l);
        }
        by
    }

    /// p50 and p99 of publish → first effect by window of publishing: whether a slow run
    /// was slow throughout or became so.
    fn print_timeline(&self, window: Duration) {
        let cells: Vec<String> = self
            .by_window(window)
            .into_iter()
            .map(|(k, v)| {
                let d = micros_to_duration(&v);
                format!(
                    "{}–{} s {:.0}/{:.0}",
                    k * window.as_secs(),
                    (k + 1) * window.as_secs(),
                    ms(pct(&d, 0.5)),
                    ms(pct(&d, 0.99))
                )
            })
            .collect();
        println!(
            "  by {} s of publishing, p50/p99 ms: {}",
            window.as_secs(),
            cells.join(", ")
        );
    }

    /// The seconds of publishing with the highest p99 (publish → first effect), and the
    /// phase's p99 without them: whether a phase's tail is its steady state or a few
    /// stalled seconds (on this machine, the kernel writing back dirty pages at once:
    /// benches/README.md).
    fn print_slowest_seconds(&self, n: usize) {
        let by = self.by_window(Duration::from_secs(1));
        let mut p99s: Vec<(u64, Duration)> = by
            .iter()
            .map(|(k, v)| (*k, pct(&micros_to_duration(v), 0.99)))
            .collect();
        p99s.sort_by_key(|(_, p)| std::cmp::Reverse(*p));
        p99s.truncate(n);
        let slowest: Vec<u64> = p99s.iter().map(|(k, _)| *k).collect();
        let rest: Vec<u64> = by
            .iter()
            .filter(|(k, _)| !slowest.contains(k))
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let cells: Vec<String> = p99s
            .iter()
            .map(|(k, p)| format!("{k}–{} s {:.0}", k + 1, ms(*p)))
            .collect();
        println!(
            "  slowest seconds of publishing, p99 ms: {}; the phase's p99 without them: {:.2} ms",
            cells.join(", "),
            ms(pct(&micros_to_duration(&rest), 0.99))
        );
    }
}

fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The engines' own latency histograms (sums and counts, added over the processes):
/// where the time from publish to effect goes.
#[derive(Default)]
struct Steps {
    /// (sum of seconds, count) per histogram.
    sums: HashMap<&'static str, (f64, f64)>,
    /// Cumulative bucket counts per histogram: upper bound (seconds) → count.
    buckets: HashMap<&'static str, Vec<(f64, f64)>>,
    /// Commits' effects handed to the relay in memory, by what became of them
    /// (`parcours_relay_handoffs_total`): published at once, or left to the log.
    handoffs: HashMap<&'static str, f64>,
}

impl Steps {
    const HISTOGRAMS: [(&'static str, &'static str); 5] = [
        (
            "parcours_nats_inbound_wait_seconds",
            "stored in PARCOURS_IN → handed to the engine by the partition's consumer",
        ),
        (
            "parcours_ingest_commit_seconds",
            "submitted to the engine → committed (group wait, decide, the commit)",
        ),
        (
            "parcours_store_commit_seconds",
            "of which the commit's write (one transaction)",
        ),
        (
            "parcours_event_to_effect_seconds",
            "commit → effect published by the relay (handed: from the write's end; from the log: from its start)",
        ),
        (
            "parcours_relay_publish_seconds",
            "of which one publish of handed effects (first send → last JetStream ack)",
        ),
    ];

    fn scrape(procs: &[EngineProcess], key: &str) -> Steps {
        let mut steps = Steps::default();
        for p in procs {
            let text = match http_get(&p.http, "/metrics", key) {
                Ok(t) => t,
                Err(e) => {
                    println!("  (metrics of the engine at {} not read: {e})", p.http);
                    continue;
                }
            };
            for (name, _) in Steps::HISTOGRAMS {
                let value = |suffix: &str| -> f64 {
                    text.lines()
                        .filter(|l| {
                            l.starts_with(&format!("{name}{suffix}"))
                                && (name != "parcours_ingest_commit_seconds"
                                    || l.contains("source=\"nats\""))
                        })
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum()
                };
                let e = steps.sums.entry(name).or_default();
                e.0 += value("_sum");
                e.1 += value("_count");
                let mut bounds: Vec<(f64, f64)> = Vec::new();
                for l in text.lines().filter(|l| {
                    l.starts_with(&format!("{name}_bucket"))
                        && (name != "parcours_ingest_commit_seconds"
                            || l.contains("source=\"nats\""))
                }) {
                    let Some(le) = l
                        .split("le=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .map(|le| le.parse::<f64>().unwrap_or(f64::INFINITY))
                    else {
                        continue;
                    };
                    let Some(n) = l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) else {
                        continue;
                    };
                    bounds.push((le, n));
                }
                let mine = steps.buckets.entry(name).or_default();
                for (le, n) in bounds {
                    match mine.iter_mut().find(|(b, _)| *b == le) {
                        Some(slot) => slot.1 += n,
                        None => mine.push((le, n)),
                    }
                }
                mine.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            for outcome in ["published", "log"] {
                let series = format!("parcours_relay_handoffs_total{{outcome=\"{outcome}\"}}");
                let n: f64 = text
                    .lines()
                    .filter(|l| l.starts_with(&series))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                *steps.handoffs.entry(outcome).or_default() += n;
            }
        }
        steps
    }

    fn since(&self, earlier: &Steps) -> Steps {
        let mut d = Steps::default();
        for (name, (s, c)) in &self.sums {
            let (s0, c0) = earlier.sums.get(name).copied().unwrap_or_default();
            d.sums.insert(name, (s - s0, c - c0));
        }
        for (name, bounds) in &self.buckets {
            let before = earlier.buckets.get(name);
            let delta = bounds
                .iter()
                .map(|&(le, n)| {
                    let n0 = before
                        .and_then(|b| b.iter().find(|(b, _)| *b == le))
                        .map_or(0.0, |(_, n)| *n);
                    (le, n - n0)
                })
                .collect();
            d.buckets.insert(name, delta);
        }
        for (outcome, n) in &self.handoffs {
            let n0 = earlier.handoffs.get(outcome).copied().unwrap_or_default();
            d.handoffs.insert(outcome, n - n0);
        }
        d
    }

    /// The `q` quantile of a histogram's observations, interpolated within its bucket as
    /// Prometheus's `histogram_quantile` does (`None`: no observation).
    fn quantile(&self, name: &str, q: f64) -> Option<f64> {
        let bounds = self.buckets.get(name)?;
        let total = bounds.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in bounds {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = n - below;
                let share = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }

    fn print(&self) {
        for (name, what) in Steps::HISTOGRAMS {
            let (s, c) = self.sums.get(name).copied().unwrap_or_default();
            if c > 0.0 {
                let p99 = self
                    .quantile(name, 0.99)
                    .map_or_else(String::new, |q| format!(", p99 ≈ {:.1} ms", q * 1000.0));
                println!(
                    "  engine: {what}: mean {:.2} ms{p99} over {c:.0}",
                    s / c * 1000.0
                );
            }
        }
        let handed = |o: &str| self.handoffs.get(o).copied().unwrap_or_default();
        println!(
            "  engine: commits' effects handed to the relay: {:.0} published from memory, {:.0} left to the log (a queue full, or behind a commit left to it)",
            handed("published"),
            handed("log")
        );
    }
}

/// A plain HTTP/1.0 GET with an API key (the engines listen on loopback).
/// Prometheus's part during the paced phase: every engine's `/metrics` read every
/// `every`, one engine after the other, each read timed.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Duration>, usize)>,
    every: Duration,
}

impl Scraper {
    fn start(engines: Vec<String>, key: String, every: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut took, mut failed) = (Vec::new(), 0);
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    next += every;
                    for addr in &engines {
                        let begun = Instant::now();
                        match http_get(addr, "/metrics", &key) {
                            Ok(_) => took.push(begun.elapsed()),
                            Err(_) => failed += 1,
                        }
                    }
                }
                (took, failed)
            }
        });
        Scraper {
            stop,
            thread,
            every,
        }
    }

    fn stop_and_print(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut took, failed) = self.thread.join().unwrap_or_default();
        took.sort();
        let n = took.len();
        let at = |q: f64| took.get(((n as f64 * q) as usize).min(n.saturating_sub(1)));
        match (at(0.5), took.last()) {
            (Some(p50), Some(max)) => println!(
                "  /metrics read every {:.0} s during the paced phase: {n} reads ({failed} failed), p50 {:.1} ms, max {:.1} ms",
                self.every.as_secs_f64(),
                ms(*p50),
                ms(*max)
            ),
            _ => println!("  /metrics: no read during the paced phase ({failed} failed)"),
        }
    }
}

fn http_get(addr: &str, path: &str, key: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    anyhow::ensure!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        body.lines().next().unwrap_or_default()
    );
    Ok(body)
}

/// `loadgen nats`: see the module docs.
pub(crate) async fn run(args: &[String]) -> anyhow::Result<()> {
    let nats_url: String = arg(args, "--nats", "nats://127.0.0.1:4222".to_string());
    let admin: String = arg(
        args,
        "--pg",
        "postgres://root@127.0.0.1:5432/test".to_string(),
    );
    let engines: usize = arg(args, "--engines", 1);
    let partitions: u16 = arg(args, "--partitions", 16);
    let replicas: usize = arg(args, "--replicas", 1);
    let patients: usize = arg(args, "--patients", 5_000);
    let per_patient: usize = arg(args, "--per-patient", 20);
    let arrivals: Arrivals = match args.iter().position(|a| a == "--arrivals") {
        Some(i) => args
            .get(i + 1)
            .map_or(
                Err("--arrivals needs staggered or blocks".to_string()),
                |v| v.parse(),
            )
            .map_err(anyhow::Error::msg)?,
        None => Arrivals::Staggered,
    };
    let scattered = scattered_keys(args)?;
    let rate: f64 = arg(args, "--rate", 2_000.0);
    let paced_secs: f64 = arg(args, "--paced-secs", 30.0);
    let window: usize = arg(args, "--window", 2_048);
    let raw_n: usize = arg(args, "--raw", 200_000);
    let skip_raw = args.iter().any(|a| a == "--no-raw");
    let settle = !args.iter().any(|a| a == "--no-settle");
    let scrape_every: f64 = arg(args, "--scrape-every", 0.0);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let default_bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("parcours"))
        .unwrap_or_default();
    let parcours: PathBuf = arg(args, "--parcours", default_bin);
    anyhow::ensure!(
        parcours.exists(),
        "no parcours binary at {} (cargo build --release -p parcours, or --parcours PATH)",
        parcours.display()
    );

    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = jetstream::new(client.clone());
    if let Ok(left) = inbound_left(&js).await
        && left > 0
    {
        bail!(
            "PARCOURS_IN on {nats_url} holds {left} messages of an earlier run: not mine to drop"
        );
    }
    let keys = if scattered { "scattered" } else { "ordered" };
    println!(
        "loadgen nats: {nats_url} (streams with {replicas} replica(s)), PostgreSQL {admin}; {per_patient} events per patient, arrivals {arrivals:?}, keys {keys}; load {}",
        load()
    );

    let base = Timestamp::now() - SignedDuration::from_mins(60);
    let paced_n = (rate * paced_secs) as usize;
    let paced_patients = paced_n.div_ceil(per_patient);
    let burst = workload(
        0,
        patients,
        per_patient,
        arrivals,
        partitions,
        base,
        scattered,
    );
    let paced = workload(
        patients,
        patients + paced_patients,
        per_patient,
        arrivals,
        partitions,
        base,
        scattered,
    );
    let size = burst.iter().map(|e| e.payload.len()).sum::<usize>() / burst.len().max(1);

    let db = Database::create(&admin).await?;
    if !skip_raw {
        for w in [512, window] {
            let r = raw_jetstream(&client, raw_n, size, w, replicas).await?;
            println!(
                "raw JetStream publish: {raw_n} messages of {size} B, {w} acks in flight: {r:.0} messages/s; load {}",
                load()
            );
        }
        for batch in [100, 1000] {
            let r = raw_postgres(&db.url, raw_n, batch, size).await?;
            println!(
                "raw PostgreSQL insert into a copy of `records`: {raw_n} rows of {size} B payload, {batch} rows per transaction: {r:.0} rows/s; load {}",
                load()
            );
        }
    }

    let dir = tempfile::tempdir()?;
    let key = dir.path().join("identity.key");
    let (auth, api_key) = auth_file(&parcours, &key)?;
    let mut procs = Vec::new();
    for i in 0..engines {
        let log = dir.path().join(format!("engine-{i}.log"));
        procs.push(EngineProcess::start(
            &parcours, &workspace, &db.url, &nats_url, partitions, &key, &auth, &log, replicas,
        )?);
    }
    // Every partition leased (advisory locks of class 0x70617202 in the database).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned = db
            .scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = 1885434370 AND database = \
                 (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await?;
        if owned == i64::from(partitions) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "partitions never all leased");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{engines} engine process(es), {partitions} partitions, {} + {} events ({size} B average)",
        burst.len(),
        paced.len()
    );

    let all: Vec<&Outgoing> = burst.iter().chain(paced.iter()).collect();
    let observed = Arc::new(Observed {
        sent: all.iter().map(|_| AtomicU64::new(0)).collect(),
        index: all
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect(),
        seen: Mutex::new(vec![false; all.len()]),
        ..Observed::default()
    });
    let origin = Instant::now();
    let watcher = observe(client.clone(), observed.clone(), origin).await?;

    let steps = |procs: &[EngineProcess]| Steps::scrape(procs, &api_key);
    let before = steps(&procs);
    let r = phase(&js, &burst, &observed, 0, origin, None, window).await?;
    r.print("throughput (publish as fast as JetStream takes them)");
    let middle = steps(&procs);
    middle.since(&before).print();
    if settle {
        settle_disk();
    }
    let scraper = (scrape_every > 0.0).then(|| {
        Scraper::start(
            procs.iter().map(|p| p.http.clone()).collect(),
            api_key.clone(),
            Duration::from_secs_f64(scrape_every),
        )
    });
    let r = phase(
        &js,
        &paced,
        &observed,
        burst.len(),
        origin,
        Some(rate),
        window,
    )
    .await?;
    if let Some(scraper) = scraper {
        scraper.stop_and_print();
    }
    r.print(&format!("paced at {rate:.0} events/s"));
    r.print_timeline(Duration::from_secs(5));
    r.print_slowest_seconds(3);
    steps(&procs).since(&middle).print();

    let inbound = db
        .scalar("SELECT count(*) FROM records WHERE stream LIKE 'inbound/%'")
        .await?;
    println!(
        "log: {inbound} inbound events committed of {} published",
        all.len()
    );
    watcher.abort();
    for p in procs {
        p.stop();
    }
    if let Ok(s) = js.get_stream("PARCOURS_OUT").await {
        let _ = s.purge().filter(format!("parcours.{TENANT}.out.>")).await;
    }
    db.drop_now().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_order(order: &[(usize, usize)], from: usize, to: usize, per_patient: usize) {
        let mut next: HashMap<usize, usize> = HashMap::new();
        for &(p, i) in order {
            assert!((from..to).contains(&p), "patient {p} out of range");
            let n = next.entry(p).or_default();
            assert_eq!(*n, i, "patient {p}'s events in order");
            *n += 1;
        }
        assert_eq!(next.len(), to - from, "every patient");
        assert!(next.values().all(|n| *n == per_patient), "every event once");
    }

    /// First events (enrolments) in each window of 256 events, away from the ramps.
    fn firsts_per_window(order: &[(usize, usize)]) -> Vec<usize> {
        let middle = &order[order.len() / 4..order.len() * 3 / 4];
        middle
            .chunks_exact(SLOTS)
            .map(|w| w.iter().filter(|(_, i)| *i == 0).count())
            .collect()
    }

    #[test]
    fn staggered_arrivals_spread_enrolments_evenly() {
        let order = arrival_order(100, 3_100, 20, Arrivals::Staggered);
        check_order(&order, 100, 3_100, 20);
        let firsts = firsts_per_window(&order);
        // 256 / 20 = 12.8 per window.
        assert!(
            firsts.iter().all(|n| (11..=15).contains(n)),
            "enrolments per 256 events: {firsts:?}"
        );
        // The start ramps up instead of enrolling 256 patients at once.
        let first_window = order[..SLOTS].iter().filter(|(_, i)| *i == 0).count();
        assert!(
            first_window < SLOTS / 2,
            "{first_window} enrolments in the first window"
        );
    }

    #[test]
    fn blocks_enrol_256_patients_at_once() {
        let order = arrival_order(0, 1_024, 20, Arrivals::Blocks);
        check_order(&order, 0, 1_024, 20);
        // Every block (256 patients × 20 events) starts with its 256 enrolments.
        for block in order.chunks(SLOTS * 20) {
            assert!(block[..SLOTS].iter().all(|(_, i)| *i == 0));
        }
    }

    #[test]
    fn few_events_per_patient_and_few_patients_are_all_sent() {
        for arrivals in [Arrivals::Staggered, Arrivals::Blocks] {
            for (patients, per_patient) in [(1, 1), (3, 2), (300, 1), (257, 3)] {
                let order = arrival_order(0, patients, per_patient, arrivals);
                check_order(&order, 0, patients, per_patient);
            }
        }
        assert!("sideways".parse::<Arrivals>().is_err());
    }
}
