//! The end-to-end load generator of the embedded mode: the real service (engine task,
//! group commit, relay) over a real SQLite log, driven by concurrent clients.
//!
//! ```sh
//! cargo run --release -p parcours-benches --bin loadgen -- ingest
//! cargo run --release -p parcours-benches --bin loadgen -- replay --db /tmp/parcours-load.db [--phases] [--verify]
//! cargo run --release -p parcours-benches --bin loadgen -- memory
//! cargo build --release -p parcours -p parcours-benches && target/release/loadgen nats
//! ```
//!
//! `ingest` measures events committed per second, the time from submission to
//! acknowledgement (the event is in the log), and from submission to the first effect it
//! caused arriving on the in-process bus (ingest-to-effect), with p50 and p99.
//! `replay` folds a whole log again (what `parcours replay` does) and reports records/s;
//! `--verify` first compares the rebuilt state with the stored one, as `parcours replay` does.
//! `memory` writes a log (100 000 patients), then loads its patients into the cache of a
//! fresh engine in a fresh process and reports resident memory per cached instance, over
//! the patients after a first tenth and over each half of them (and, first, the
//! writer's growth per instance it enrolled, its SQLite writing included); with
//! `--keep FILE` the log is written there and kept, not measured; `memory --measure COPY`
//! measures a copy of it alone (e.g. under heaptrack).
//! `nats` is the production benchmark (see `nats.rs`).

// A load generator measures wall-clock time; the determinism rule is for the core.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_runtime::{
    Clock, Engine, EngineConfig, InProcessBus, PathwayRegistry, ServiceConfig, replay, service,
};
use parcours_store_sqlite::SqliteStore;

mod nats;

/// The parcours binary's allocator, so that the embedded figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Clone)]
struct FixedClock(Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn registry() -> PathwayRegistry {
    let mut r = PathwayRegistry::new();
    r.add(parcours_benches::shipped("heart-failure.yaml"));
    r.add(parcours_benches::shipped("type2-diabetes.yaml"));
    r
}

fn ev(id: String, subject: &str, at: Timestamp, ty: EventType, data: serde_json::Value) -> Event {
    Event {
        id,
        tenant: "cpts-load".into(),
        source: "loadgen".into(),
        subject: subject.into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("payload"),
    }
}

/// A patient's events: a heart-failure discharge, a consent, then daily weights (a gain
/// now and then raises an alert); every tenth patient is a diabetic with HbA1c results.
fn patient_events(p: usize, per_patient: usize, t0: Timestamp) -> Vec<Event> {
    let subject = format!("p-{p:07}");
    let at =
        |h: i64| t0 + SignedDuration::from_mins(p as i64 % 600) + SignedDuration::from_hours(h);
    let mut out = Vec::with_capacity(per_patient);
    if p % 10 == 9 {
        out.push(ev(
            format!("dx-{p}"),
            &subject,
            at(0),
            EventType::DiagnosisRecorded,
            serde_json::json!({"code": "E11.9", "system": "icd-10"}),
        ));
        for i in 1..per_patient {
            out.push(ev(format!("a1c-{p}-{i}"), &subject, at(i as i64), EventType::ObservationRecorded,
                serde_json::json!({"code": "4548-4", "value": 6.5 + (i % 4) as f64 * 0.5, "unit": "%"})));
        }
        return out;
    }
    out.push(ev(format!("adt-{p}"), &subject, at(0), EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": format!("V{p}"), "destination": "home", "diagnoses": ["I50.1"]})));
    out.push(ev(
        format!("consent-{p}"),
        &subject,
        at(1),
        EventType::ConsentGiven,
        serde_json::json!({}),
    ));
    let mut kg = 80.0;
    for i in 2..per_patient {
        kg += if i % 7 == 0 { 1.5 } else { -0.1 };
        out.push(ev(
            format!("w-{p}-{i}"),
            &subject,
            at(i as i64),
            EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        ));
    }
    out
}

/// `--keys ordered|scattered` (`ingest`, `nats`): whether events' ids and patients' keys
/// are scattered, i.e. hashes as hospitals and the pseudonymiser make them, spread over
/// their indexes, instead of the ordered texts (`adt-4`, `p-0000004`) that put
/// neighbours of a commit in one index page.
fn scattered_keys(args: &[String]) -> anyhow::Result<bool> {
    match arg(args, "--keys", String::from("ordered")).as_str() {
        "ordered" => Ok(false),
        "scattered" => Ok(true),
        other => anyhow::bail!("--keys {other}: ordered or scattered"),
    }
}

/// An event id as a hash (a UUIDv5, as `parcours-hl7v2` makes them).
fn hashed_id(id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()).to_string()
}

/// A patient's key as a hash, in the pseudonymiser's form (`p-` and 32 hex digits of its
/// HMAC, `parcours-identity`).
fn hashed_key(subject: &str) -> String {
    let h = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, subject.as_bytes());
    format!("p-{}", h.simple())
}

/// The events with [`hashed_id`]s and [`hashed_key`]s (`--keys scattered`).
fn scatter(events: &mut [Event]) {
    for e in events {
        e.id = hashed_id(&e.id);
        e.subject = hashed_key(&e.subject);
    }
}

/// The value of flag `name`, or `default` when it is not given; a value that does not
/// read as a `T` stops the program with the reason (a typo must not measure something
/// else silently). [`check_flags`] has made sure every flag is known and has its value.
fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    let Some(v) = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    else {
        return default;
    };
    v.parse().unwrap_or_else(|_| {
        eprintln!("loadgen: {name} {v}: not a valid value (loadgen --help)");
        std::process::exit(2)
    })
}

/// Every flag of `args` (the command first) is one `USAGE` lists for the command, and
/// each flag shown with a value has one: a flag that is unknown or misspelt would
/// otherwise leave its default in place unseen.
fn check_flags(usage: &str, args: &[String]) -> Result<(), String> {
    let Some(command) = args.first() else {
        return Err("no command".into());
    };
    // The command's lines: from `  COMMAND  ` to the next command.
    let mut block = String::new();
    let mut inside = false;
    for line in usage.lines() {
        let is_command = line.starts_with("  ") && !line.starts_with("   ");
        if is_command {
            inside = line.split_whitespace().next() == Some(command.as_str());
        }
        if inside {
            block.push_str(line);
            block.push('\n');
        }
    }
    if block.is_empty() {
        return Err(format!("unknown command {command}"));
    }
    // `--name` followed by `]` or `|` takes no value; any other takes one.
    let mut known: Vec<(&str, bool)> = Vec::new();
    for (i, _) in block.match_indices("--") {
        let rest = &block[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        let switch =
            matches!(rest[end..].chars().next(), Some(']' | '|')) || rest[end..].starts_with(" |");
        known.push((&rest[..end], !switch));
    }
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        let Some(&(_, takes_value)) = known.iter().find(|(k, _)| k == a) else {
            return Err(if a.starts_with("--") {
                format!("unknown flag {a} for loadgen {command}")
            } else {
                format!("unexpected argument {a} for loadgen {command}")
            });
        };
        if takes_value {
            match args.get(i + 1) {
                Some(v) if !v.starts_with("--") => i += 1,
                _ => return Err(format!("{a} needs a value")),
            }
        }
        i += 1;
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn ingest(args: &[String]) -> anyhow::Result<()> {
    let patients: usize = arg(args, "--patients", 5_000);
    let per_patient: usize = arg(args, "--per-patient", 20);
    let clients: usize = arg(args, "--clients", 64);
    let batch: usize = arg(args, "--batch", 1);
    let scattered = scattered_keys(args)?;
    let db: PathBuf = arg(args, "--db", std::env::temp_dir().join("parcours-load.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let page_size: u32 = arg(args, "--page-size", 0);
    if page_size > 0 {
        create_with_page_size(&db, page_size).await?;
    }
    let t0: Timestamp = "2026-03-02T09:00:00Z".parse()?;
    let store = SqliteStore::open(&db).await?;
    let engine = Engine::open(store.clone(), registry(), EngineConfig::default()).await?;
    let written_before = write_bytes();
    let bus = InProcessBus::new(1 << 16);
    let mut effects = bus.subscribe();
    let token = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = service::start(
        engine,
        bus,
        FixedClock(t0),
        ServiceConfig::default(),
        token.clone(),
        &tracker,
    );

    // Interleave patients so concurrent clients touch different patients, as real
    // traffic does; each patient's events stay in order within its client.
    let mut per_client: Vec<Vec<Event>> = vec![Vec::new(); clients];
    for p in 0..patients {
        per_client[p % clients].extend(patient_events(p, per_patient, t0));
    }
    if scattered {
        per_client.iter_mut().for_each(|c| scatter(c));
    }
    let total: usize = per_client.iter().map(Vec::len).sum();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let first_effect: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let collector = {
        let sent_at = sent_at.clone();
        let first_effect = first_effect.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while let Some(e) = effects.recv().await {
                if seen.insert(e.cause.clone()) {
                    let t = sent_at.lock().ok().and_then(|m| m.get(&e.cause).copied());
                    if let (Some(t), Ok(mut v)) = (t, first_effect.lock()) {
                        v.push(t.elapsed());
                    }
                }
            }
        })
    };

    eprintln!(
        "loadgen: {total} events, {patients} patients, {clients} clients, {batch} event(s) per submission"
    );
    let started = Instant::now();
    let mut joins = Vec::new();
    for events in per_client {
        let handle = handle.clone();
        let sent_at = sent_at.clone();
        joins.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(events.len());
            for chunk in events.chunks(batch) {
                let t = Instant::now();
                if let Ok(mut m) = sent_at.lock() {
                    for e in chunk {
                        m.insert(e.id.clone(), t);
                    }
                }
                let out = handle.submit(chunk.to_vec()).await.expect("submit");
                assert!(out.iter().all(Result::is_ok), "refused: {out:?}");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut acks = Vec::new();
    for j in joins {
        acks.extend(j.await?);
    }
    let elapsed = started.elapsed();
    // Wait until the relay has published everything committed.
    let relay = parcours_runtime::Relay::new(store.clone(), "relay");
    for _ in 0..6000 {
        if relay.lag().await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = started.elapsed();
    token.cancel();
    tracker.close();
    tracker.wait().await;
    collector.abort();
    acks.sort();
    let mut fx = first_effect.lock().map(|v| v.clone()).unwrap_or_default();
    fx.sort();
    let commits = parcours_store::EventStore::read_all(&store, 0, 1)
        .await
        .map(|_| ());
    drop(commits);
    println!(
        "ingest: {total} events in {:.2} s = {:.0} events/s committed (all effects published after {:.2} s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "  submit → committed: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} submissions of {batch})",
        ms(pct(&acks, 0.5)),
        ms(pct(&acks, 0.99)),
        ms(acks.last().copied().unwrap_or_default()),
        acks.len()
    );
    println!(
        "  submit → first effect on the bus: p50 {:.2} ms, p99 {:.2} ms ({} events with effects)",
        ms(pct(&fx, 0.5)),
        ms(pct(&fx, 0.99)),
        fx.len()
    );
    if let (Some(before), Some(after)) = (written_before, write_bytes()) {
        let bytes = after.saturating_sub(before);
        println!(
            "  written to storage: {:.1} MB = {:.1} KB per event (/proc/self/io write_bytes: WAL, checkpoints)",
            bytes as f64 / 1e6,
            bytes as f64 / 1e3 / total as f64
        );
    }
    println!("  log: {}", db.display());
    Ok(())
}

/// Bytes this process caused to be written to storage so far (`/proc/self/io`), if known.
fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Create an empty SQLite file with another page size than the store's (an experiment
/// knob: a page size is fixed when the file gets its first table).
async fn create_with_page_size(db: &Path, page_size: u32) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .page_size(page_size)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE page_size_probe (x INTEGER)")
        .execute(&mut conn)
        .await?;
    sqlx::query("DROP TABLE page_size_probe")
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn replay_cmd(args: &[String]) -> anyhow::Result<()> {
    let db: PathBuf = arg(args, "--db", std::env::temp_dir().join("parcours-load.db"));
    let store = SqliteStore::open(&db).await?;
    let registry = registry();
    if args.iter().any(|a| a == "--phases") {
        phases(&store).await?;
    }
    if args.iter().any(|a| a == "--verify") {
        // What `parcours replay` does: the rebuilt state against the stored one.
        let started = Instant::now();
        let (report, _) = replay::verify(&store, &registry).await?;
        println!(
            "verify: {} records, {} instances, {} timers, {} work items in {:.2} s: {}",
            report.records,
            report.instances,
            report.timers,
            report.work_items,
            started.elapsed().as_secs_f64(),
            if report.agrees() {
                "replay and store agree".to_string()
            } else {
                format!(
                    "{} mismatches: {:?}",
                    report.mismatches.len(),
                    report.mismatches
                )
            }
        );
    }
    let started = Instant::now();
    let replayed = replay::replay(&store, &registry).await?;
    let elapsed = started.elapsed();
    let instance_events: u64 = replayed.states.values().map(|(_, s)| s.version).sum();
    let secs = elapsed.as_secs_f64();
    println!(
        "replay: {} records ({} inbound events, {} decision records holding {instance_events} instance events) into {} instances in {secs:.2} s = {:.0} records/s, {:.0} inbound events/s, {:.0} instance events/s",
        replayed.records,
        replayed.inbound,
        replayed.records - replayed.inbound,
        replayed.states.len(),
        replayed.records as f64 / secs,
        replayed.inbound as f64 / secs,
        instance_events as f64 / secs,
    );
    Ok(())
}

/// What replay's parts cost on their own: reading every record, then reading and decoding
/// the instance streams' records (no fold).
async fn phases(store: &SqliteStore) -> anyhow::Result<()> {
    use parcours_store::EventStore;
    let started = Instant::now();
    let (mut after, mut records) = (0, 0u64);
    loop {
        let page = store.read_all(after, 4096).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        records += page.len() as u64;
    }
    let read = started.elapsed().as_secs_f64();
    println!("  read only: {records} records in {read:.2} s");
    let started = Instant::now();
    let (mut after, mut events) = (0, 0u64);
    loop {
        let page = store.read_all(after, 4096).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            if parcours_runtime::codec::is_instance(&r.stream) {
                events += parcours_runtime::codec::decode_instance(r)?.len() as u64;
            }
        }
    }
    let decoded = started.elapsed().as_secs_f64();
    println!(
        "  read + decode: {events} instance events in {decoded:.2} s (decode ≈ {:.2} s)",
        decoded - read
    );
    Ok(())
}

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn memory(args: &[String]) -> anyhow::Result<()> {
    let patients: usize = arg(args, "--patients", 100_000);
    let per_patient: usize = arg(args, "--per-patient", 12);
    let t0: Timestamp = "2026-03-02T09:00:00Z".parse()?;
    if let Some(db) = args
        .iter()
        .position(|a| a == "--measure")
        .and_then(|i| args.get(i + 1))
    {
        return memory_measure(Path::new(db), patients, t0).await;
    }
    // `--keep FILE`: the log is written there and kept, not measured (to measure copies
    // of it with `memory --measure COPY`, e.g. under heaptrack: the measuring process
    // adds its events to the log it loads, so each measure needs a fresh copy).
    let dir = tempfile::tempdir()?;
    let kept: Option<PathBuf> = args
        .iter()
        .position(|a| a == "--keep")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let db = kept.unwrap_or_else(|| dir.path().join("mem.db"));
    {
        let store = SqliteStore::open(&db).await?;
        let mut engine = Engine::open(store.clone(), registry(), EngineConfig::default()).await?;
        let events: Vec<Event> = (0..patients)
            .flat_map(|p| patient_events(p, per_patient, t0))
            .collect();
        // The writer's cache holds the patients it enrolled (decided here, not loaded):
        // its growth after a first tenth is reported too, for what it is — the writing
        // side's memory (SQLite's, the WAL's) is in it.
        let chunks: Vec<&[Event]> = events.chunks(2000).collect();
        let warm = chunks.len() / 10;
        let (mut before, mut warm_instances) = (rss(), 0);
        for (i, chunk) in chunks.iter().enumerate() {
            if i == warm {
                (before, warm_instances) = (rss(), engine.cached_instances());
            }
            engine.ingest_batch(chunk, Default::default()).await?;
        }
        let grown = rss().saturating_sub(before);
        let instances = engine.cached_instances() - warm_instances;
        println!(
            "writer: {instances} instances enrolled and cached after a tenth; resident +{:.1} MiB = {:.0} bytes per instance",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / instances.max(1) as f64
        );
        store.close().await;
    }
    if db != dir.path().join("mem.db") {
        println!("log kept in {}", db.display());
        return Ok(());
    }
    // Measured in a fresh process: memory freed by the writing engine would otherwise
    // be reused by the cache and hide its cost.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["memory", "--patients", &patients.to_string(), "--measure"])
        .arg(&db)
        .status()?;
    anyhow::ensure!(status.success(), "the measuring process failed");
    Ok(())
}

/// Load every patient of the log into the cache of a fresh engine with an event no rule
/// uses, and compare resident memory before and after.
async fn memory_measure(db: &Path, patients: usize, t0: Timestamp) -> anyhow::Result<()> {
    let store = SqliteStore::open(db).await?;
    let mut engine = Engine::open(
        store.clone(),
        registry(),
        EngineConfig {
            cache_patients: patients * 2,
            ..EngineConfig::default()
        },
    )
    .await?;
    let touch: Vec<Event> = (0..patients)
        .map(|p| {
            ev(
                format!("touch-{p}"),
                &format!("p-{p:07}"),
                t0 + SignedDuration::from_hours(200),
                EventType::ProcedurePerformed,
                serde_json::json!({"code": "x", "kind": "none"}),
            )
        })
        .collect();
    // A first tenth of the patients warms the allocator, SQLite's page caches (2 MiB
    // per connection, filled by the first few thousand patients read) and the pathway
    // registry up; they are counted out, so that the figure is what one more cached
    // instance costs.
    let warm = (patients / 10).max(200).min(patients);
    engine
        .ingest_batch(&touch[..warm], Default::default())
        .await?;
    // The resident set and the instances cached after the warm-up, half-way through the
    // measured patients, and at the end. Each half's growth is printed too: what fills
    // once (SQLite's page caches, bounded, filling with this process's own commits; the
    // cache's hash table doubling) weighs on the first half more, and on a small run
    // more than on a large one (benches/README.md, "Per cached instance: the slope").
    let start = (rss(), engine.cached_instances());
    let half = warm + (patients - warm) / 2;
    let mut ends = [start; 2];
    for (end, part) in ends.iter_mut().zip([&touch[warm..half], &touch[half..]]) {
        for chunk in part.chunks(2000) {
            engine.ingest_batch(chunk, Default::default()).await?;
        }
        *end = (rss(), engine.cached_instances());
    }
    let [mid, end] = ends;
    let per_instance = |from: (u64, usize), to: (u64, usize)| {
        to.0.saturating_sub(from.0) as f64 / to.1.saturating_sub(from.1).max(1) as f64
    };
    println!(
        "memory: {} patients, {} instances cached ({} measured); resident +{:.1} MiB = {:.0} bytes per cached instance \
         (first half {:.0}, second half {:.0})",
        engine.cached_patients(),
        engine.cached_instances(),
        end.1 - start.1,
        end.0.saturating_sub(start.0) as f64 / (1 << 20) as f64,
        per_instance(start, end),
        per_instance(start, mid),
        per_instance(mid, end),
    );
    Ok(())
}

/// What `loadgen --help` prints (benches/README.md says what each figure means).
const USAGE: &str = "\
usage: loadgen COMMAND [FLAGS]   (figures and their meaning: benches/README.md)

  ingest  embedded ingest through the real service over a SQLite log
          [--patients 5000] [--per-patient 20] [--clients 64] [--batch 1]
          [--db FILE] [--page-size BYTES] [--keys ordered|scattered]
  replay  fold a log written by ingest again, records/s
          [--db FILE] [--phases] [--verify]
  memory  resident memory per cached instance, in a fresh process
          [--patients 100000] [--per-patient 12] [--keep FILE | --measure FILE]
  nats    production: parcours serve processes over NATS JetStream and PostgreSQL
          [--nats nats://127.0.0.1:4222] [--pg postgres://root@127.0.0.1:5432/test]
          [--engines 1] [--partitions 16] [--replicas 1] [--patients 5000] [--per-patient 20]
          [--arrivals staggered|blocks] [--keys ordered|scattered] [--rate 2000] [--paced-secs 30]
          [--window 2048] [--raw 200000 | --no-raw] [--no-settle] [--scrape-every SECS]
          [--parcours BIN]
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "help")
    {
        print!("{USAGE}");
        return Ok(());
    }
    if let Err(e) = check_flags(USAGE, &args) {
        eprint!("loadgen: {e}\n\n{USAGE}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("ingest") => rt.block_on(ingest(&args)),
        Some("replay") => rt.block_on(replay_cmd(&args)),
        Some("memory") => rt.block_on(memory(&args)),
        Some("nats") => rt.block_on(nats::run(&args)),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{USAGE, check_flags, patient_events, scatter};

    fn check(args: &str) -> Result<(), String> {
        let args: Vec<String> = args.split_whitespace().map(String::from).collect();
        check_flags(USAGE, &args)
    }

    #[test]
    fn flags_are_known_per_command_and_values_are_there() {
        assert_eq!(check("nats --rate 200 --paced-secs 20 --no-raw"), Ok(()));
        assert_eq!(
            check("nats --raw 5000 --parcours /bin/x --arrivals blocks"),
            Ok(())
        );
        assert_eq!(check("replay --db /tmp/x.db --phases --verify"), Ok(()));
        assert_eq!(check("memory --keep /tmp/m --patients 10"), Ok(()));
        assert_eq!(check("ingest --keys scattered --clients 8"), Ok(()));
        assert_eq!(check("nats --keys scattered --no-raw"), Ok(()));
        assert_eq!(check("nats --replicas 3 --no-raw"), Ok(()));
        assert_eq!(check("nats --scrape-every 15 --no-raw"), Ok(()));
        assert_eq!(check("ingest --keys"), Err("--keys needs a value".into()));
        assert_eq!(
            check("nats --paced 20"),
            Err("unknown flag --paced for loadgen nats".into())
        );
        assert_eq!(
            check("ingest --rate 200"),
            Err("unknown flag --rate for loadgen ingest".into())
        );
        assert_eq!(check("nats --rate"), Err("--rate needs a value".into()));
        assert_eq!(
            check("nats --rate --no-raw"),
            Err("--rate needs a value".into())
        );
        assert_eq!(
            check("ingest 200"),
            Err("unexpected argument 200 for loadgen ingest".into())
        );
        assert_eq!(check("bench"), Err("unknown command bench".into()));
    }

    #[test]
    fn scattered_keys_are_hashes_the_same_for_a_patient_and_from_one_run_to_the_next() {
        let t0 = "2026-03-02T09:00:00Z".parse().expect("instant");
        let ordered: Vec<_> = (0..3).flat_map(|p| patient_events(p, 4, t0)).collect();
        let mut once = ordered.clone();
        let mut again = ordered.clone();
        scatter(&mut once);
        scatter(&mut again);
        assert_eq!(once, again);
        for (o, s) in ordered.iter().zip(&once) {
            assert_ne!(o.id, s.id);
            assert_eq!(s.id.len(), 36);
            assert!(s.subject.starts_with("p-") && s.subject.len() == 34);
            assert_ne!(o.subject, s.subject);
            assert_eq!((&o.data, o.occurred_at), (&s.data, s.occurred_at));
        }
        // Each of the three patients keeps one key of its own; each event, an id.
        let keys: std::collections::BTreeSet<_> = once.iter().map(|e| &e.subject).collect();
        assert_eq!(keys.len(), 3);
        let ids: std::collections::BTreeSet<_> = once.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), once.len());
    }
}
