//! `parcours demo`: the engine on a synthetic cohort with an accelerated virtual clock.
//!
//! Hospitals discharge heart-failure patients (one stay in eight not coded yet: the
//! coordinator refers those patients) and GPs record type 2 diabetes diagnoses; a
//! simulated care team answers the tasks the engine asks for (mostly on time, some late,
//! some never), nurses send weights, labs send results; timers fire as the virtual clock
//! moves. Everything goes through the real runtime: a SQLite log, atomic commits (the
//! events of each ten virtual minutes together), durable timers, the outbox relay to the
//! in-process bus. At the end: what happened per pathway, from the log's projections, and
//! a replay of the whole log checked against them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::state::{Change, EffectKind};
use parcours_runtime::{Engine, EngineConfig, InProcessBus, PathwayRegistry, Relay, replay};
use parcours_store::{EventStore, InstanceFilter};
use parcours_store_sqlite::SqliteStore;

/// Demo settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) heart_failure: usize,
    pub(crate) diabetes: usize,
    pub(crate) days: i64,
    pub(crate) seed: u64,
    pub(crate) quiet: bool,
}

/// A small deterministic generator (xorshift64*): the same seed gives the same cohort.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }
    fn hours(&mut self, lo: i64, hi: i64) -> SignedDuration {
        let span = (hi - lo).max(1) as u64;
        SignedDuration::from_hours(lo + (self.next() % span) as i64)
    }
}

struct Queue {
    heap: BinaryHeap<Reverse<(Timestamp, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, e: Event) {
        self.seq += 1;
        self.heap.push(Reverse((e.occurred_at, self.seq)));
        self.events.insert(self.seq, e);
    }
    fn pop(&mut self) -> Option<Event> {
        let Reverse((_, seq)) = self.heap.pop()?;
        self.events.remove(&seq)
    }
    fn peek_time(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }
}

const TENANT: &str = "cpts-demo";

fn event(
    id: String,
    subject: &str,
    at: Timestamp,
    ty: EventType,
    data: serde_json::Value,
) -> anyhow::Result<Event> {
    Ok(Event {
        id,
        tenant: TENANT.into(),
        source: "parcours/demo".into(),
        subject: subject.into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).context("demo payload")?,
    })
}

/// Where one pathway's instances are at the end.
#[derive(Default)]
struct Census {
    states: BTreeMap<String, usize>,
    active: usize,
    completed: usize,
    closed: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Tally {
    requested: u64,
    completed_on_time: u64,
    completed_late: u64,
    not_done: u64,
    overdue: u64,
    escalations: u64,
    reminders: u64,
    alerts: u64,
    alert_escalations: u64,
    handoffs: u64,
}

/// Run the demo with the pathways of `pathways_dir`, the log in `db`.
pub(crate) async fn run(pathways_dir: &Path, db: &Path, s: &Settings) -> anyhow::Result<()> {
    let mut registry = PathwayRegistry::new();
    for l in parcours_lang::load_all(pathways_dir)? {
        match l.pathway {
            Some(p) => registry.add(p),
            None => anyhow::bail!(
                "{} does not compile:\n{}",
                l.path.display(),
                l.report.short()
            ),
        }
    }
    let store = SqliteStore::open(db).await?;
    let relay = Relay::new(store.clone(), "relay");
    let mut engine = Engine::open(store, registry, EngineConfig::default()).await?;
    let bus = InProcessBus::new(1 << 16);
    let mut effects = bus.subscribe();
    let mut rng = Rng(s.seed.max(1));
    let start: Timestamp = "2026-01-05T08:00:00Z".parse()?;
    let end = start + SignedDuration::from_hours(24 * s.days);
    let mut q = Queue {
        heap: BinaryHeap::new(),
        events: HashMap::new(),
        seq: 0,
    };

    // The cohort: discharges spread over the first month, diagnoses over the first weeks.
    let mut referred = 0;
    for i in 0..s.heart_failure {
        let subject = format!("hf-{i:04}");
        let at = start + rng.hours(0, 24 * 30);
        let hf = rng.chance(0.9);
        let home = rng.chance(0.92);
        // One heart-failure stay in eight is not coded yet when the discharge is sent: the
        // message enrols nobody, and the coordinator, who read the discharge letter,
        // refers the patient half an hour later (not drawn: the cohort stays as it was).
        let coded_late = hf && home && i % 8 == 5;
        let dx: &[&str] = match (hf, coded_late) {
            (true, false) => &["I50.1"],
            (true, true) => &[],
            (false, _) => &["J18.9"],
        };
        q.push(event(format!("adt-{subject}-1"), &subject, at, EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": format!("{subject}-V1"), "destination": if home {"home"} else {"nursing-home"}, "diagnoses": dx}))?);
        if coded_late {
            referred += 1;
            q.push(event(
                format!("ref-{subject}"),
                &subject,
                at + SignedDuration::from_mins(30),
                EventType::PatientReferred,
                serde_json::json!({"pathway": "heart-failure", "by": "coordinator"}),
            )?);
        }
        if rng.chance(0.9) {
            q.push(event(
                format!("consent-{subject}"),
                &subject,
                at + rng.hours(1, 30),
                EventType::ConsentGiven,
                serde_json::json!({}),
            )?);
        }
        // A third are on weight telemonitoring: a weight most mornings, sometimes a gain.
        if rng.chance(0.33) {
            let mut kg = 70.0 + rng.f() * 30.0;
            for day in 1..s.days.min(90) {
                if !rng.chance(0.9) {
                    continue;
                }
                kg += if rng.chance(0.03) {
                    2.5
                } else {
                    (rng.f() - 0.55) * 0.4
                };
                let t = at + SignedDuration::from_hours(24 * day) + rng.hours(0, 3);
                q.push(event(format!("w-{subject}-{day}"), &subject, t, EventType::ObservationRecorded,
                    serde_json::json!({"code": "29463-7", "value": (kg * 10.0).round() / 10.0, "unit": "kg"}))?);
            }
        }
        if rng.chance(0.5) {
            let k = 3.8 + rng.f() * 2.2;
            q.push(event(format!("k-{subject}"), &subject, at + rng.hours(24 * 5, 24 * 20), EventType::ObservationRecorded,
                serde_json::json!({"code": "2823-3", "value": (k * 10.0).round() / 10.0, "unit": "mmol/L"}))?);
        }
        if rng.chance(0.12) {
            let back_in = at + rng.hours(24 * 10, 24 * 40);
            q.push(event(
                format!("adt-{subject}-2"),
                &subject,
                back_in,
                EventType::EncounterAdmitted,
                serde_json::json!({"encounter_id": format!("{subject}-V2")}),
            )?);
            q.push(event(format!("adt-{subject}-3"), &subject, back_in + rng.hours(24 * 3, 24 * 9), EventType::EncounterDischarged,
                serde_json::json!({"encounter_id": format!("{subject}-V2"), "destination": "home", "diagnoses": ["I50.9"]}))?);
        }
        if rng.chance(0.03) {
            q.push(event(
                format!("death-{subject}"),
                &subject,
                at + rng.hours(24 * 20, 24 * 150),
                EventType::PatientDeceased,
                serde_json::json!({}),
            )?);
        }
    }
    for i in 0..s.diabetes {
        let subject = format!("dt2-{i:04}");
        let at = start + rng.hours(0, 24 * 21);
        q.push(event(
            format!("dx-{subject}"),
            &subject,
            at,
            EventType::DiagnosisRecorded,
            serde_json::json!({"code": "E11.9", "system": "icd-10"}),
        )?);
        // HbA1c roughly quarterly, sometimes skipped, sometimes above target.
        let mut a1c = 6.2 + rng.f() * 2.5;
        let mut t = at + rng.hours(24 * 10, 24 * 40);
        while t < end {
            if rng.chance(0.8) {
                q.push(event(format!("a1c-{subject}-{}", t.as_second()), &subject, t, EventType::ObservationRecorded,
                    serde_json::json!({"code": "4548-4", "value": (a1c * 10.0).round() / 10.0, "unit": "%"}))?);
            }
            a1c = (a1c + (rng.f() - 0.55) * 0.8).clamp(5.5, 11.0);
            t += rng.hours(24 * 80, 24 * 110);
        }
    }

    // The care team: answers what the engine asks, in the virtual future.
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut pathway_of_instance: HashMap<String, String> = HashMap::new();
    let total_span = (end.as_second() - start.as_second()).max(1) as f64;
    let mut last_shown = -1i64;
    let mut now = start;
    let mut published = 0u64;
    loop {
        let next = q.peek_time().filter(|t| *t <= end);
        let until = next.unwrap_or(end);
        engine.advance(until).await?;
        now = now.max(until);
        if let Some(first) = next {
            // The events of the next ten virtual minutes, up to the next timer, commit
            // together (what the service does with concurrent submissions).
            let horizon = first + SignedDuration::from_mins(10);
            let horizon = match engine.next_timer().await? {
                Some(t) if t < horizon => t,
                _ => horizon,
            };
            let mut batch = Vec::new();
            while let Some(t) = q.peek_time() {
                if t > end || (t >= horizon && !batch.is_empty()) {
                    break;
                }
                batch.extend(q.pop());
            }
            for outcome in engine.ingest_batch(&batch, Default::default()).await? {
                outcome?;
            }
        }
        published += relay.run_once(&bus).await? as u64;
        while let Ok(effect) = effects.try_recv() {
            let pathway = match pathway_of_instance.get(&effect.instance) {
                Some(p) => p.clone(),
                None => {
                    let p = engine
                        .store()
                        .instance(&effect.instance)
                        .await?
                        .map(|r| r.pathway_id)
                        .unwrap_or_default();
                    pathway_of_instance.insert(effect.instance.clone(), p.clone());
                    p
                }
            };
            let t = tally.entry(pathway).or_default();
            match (&effect.kind, &effect.change) {
                (
                    EffectKind::Task,
                    Change::TaskRequested {
                        task_id,
                        code,
                        due_at,
                        ..
                    },
                ) => {
                    t.requested += 1;
                    let r = rng.f();
                    let requested = now;
                    let window = (due_at.as_second() - requested.as_second()).max(3600);
                    let answer_at = if r < 0.72 {
                        t.completed_on_time += 1;
                        Some(
                            requested
                                + SignedDuration::from_secs(
                                    (rng.f() * window as f64 * 0.95) as i64 + 60,
                                ),
                        )
                    } else if r < 0.9 {
                        t.completed_late += 1;
                        Some(*due_at + rng.hours(2, 24 * 12))
                    } else {
                        t.not_done += 1;
                        None
                    };
                    if let Some(at) = answer_at {
                        q.push(event(
                            format!("done-{task_id}"),
                            &effect.subject,
                            at,
                            EventType::TaskCompleted,
                            serde_json::json!({"task_id": task_id.to_string(), "code": &**code}),
                        )?);
                    }
                }
                (EffectKind::Task, Change::TaskOverdue { .. }) => t.overdue += 1,
                (EffectKind::Task, Change::TaskEscalated { .. }) => t.escalations += 1,
                (EffectKind::Task, Change::TaskReminded { .. }) => t.reminders += 1,
                (EffectKind::Alert, Change::AlertRaised { alert_id, code, .. }) => {
                    t.alerts += 1;
                    if rng.chance(0.8) {
                        q.push(event(
                            format!("ack-{alert_id}"),
                            &effect.subject,
                            now + rng.hours(0, 6),
                            EventType::AlertAcknowledged,
                            serde_json::json!({"alert_id": alert_id.to_string(), "code": code}),
                        )?);
                    }
                }
                (EffectKind::Alert, Change::AlertEscalated { .. }) => t.alert_escalations += 1,
                (
                    EffectKind::Handoff,
                    Change::HandoffRequested {
                        handoff_id, code, ..
                    },
                ) => {
                    t.handoffs += 1;
                    q.push(event(
                        format!("accept-{handoff_id}"),
                        &effect.subject,
                        now + rng.hours(2, 24 * 9),
                        EventType::HandoffAccepted,
                        serde_json::json!({"handoff_id": handoff_id.to_string(), "code": code}),
                    )?);
                }
                _ => {}
            }
        }
        if !s.quiet {
            let pct = (((now.as_second() - start.as_second()) as f64 / total_span) * 100.0) as i64;
            if pct != last_shown {
                last_shown = pct;
                let filled = (pct / 4) as usize;
                eprint!(
                    "\r  [{:<25}] {pct:>3}%  day {:>3}/{}  {} events  {} timers fired  {} effects",
                    "#".repeat(filled),
                    (now.as_second() - start.as_second()) / 86_400,
                    s.days,
                    engine.stats().inbound,
                    engine.stats().timers_fired,
                    published,
                );
                let _ = std::io::stderr().flush();
            }
        }
        if next.is_none() {
            break;
        }
    }
    if !s.quiet {
        eprintln!();
    }
    let (checked, _) = replay::verify(engine.store(), engine.registry()).await?;
    if !checked.agrees() {
        anyhow::bail!(
            "replaying the log disagrees with the stored state:\n  {}",
            checked.mismatches.join("\n  ")
        );
    }
    let mut census: BTreeMap<String, Census> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = engine
            .store()
            .list_instances(&InstanceFilter {
                tenant: TENANT.into(),
                after_stream: after.clone(),
                limit: 500,
                ..InstanceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.stream.clone());
        for row in page {
            let e = census.entry(row.pathway_id.clone()).or_default();
            match row.status.as_str() {
                "active" => {
                    e.active += 1;
                    let main = row
                        .states
                        .split(' ')
                        .next()
                        .and_then(|s| s.split_once('='))
                        .map(|(_, s)| s.to_string())
                        .unwrap_or_default();
                    *e.states.entry(main).or_default() += 1;
                }
                "closed" => {
                    *e.closed
                        .entry(row.closed_reason.unwrap_or_default())
                        .or_default() += 1
                }
                "completed" => e.completed += 1,
                _ => {}
            }
        }
    }
    println!();
    println!(
        "parcours demo — {} heart-failure discharges ({referred} not coded yet, referred by the coordinator), {} diabetes diagnoses, {} days (seed {})",
        s.heart_failure, s.diabetes, s.days, s.seed
    );
    report(&engine, &census, &tally, &checked, published, db);
    Ok(())
}

fn report<S: EventStore>(
    engine: &Engine<S>,
    by_pathway: &BTreeMap<String, Census>,
    tally: &BTreeMap<String, Tally>,
    checked: &replay::Report,
    published: u64,
    db: &Path,
) {
    let st = engine.stats();
    println!(
        "  {} inbound events committed in {} commits ({} timers fired), {} instance events, {} effects published",
        st.inbound, st.commits, st.timers_fired, st.instance_events, published
    );
    for (id, c) in by_pathway {
        let (states, active, completed, closed) = (&c.states, c.active, c.completed, &c.closed);
        println!();
        println!("  {id}");
        let closed_txt: Vec<String> = closed.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!(
            "    instances: {active} active, {completed} completed, closed: {}",
            if closed_txt.is_empty() {
                "none".to_string()
            } else {
                closed_txt.join(", ")
            }
        );
        let states_txt: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!("    first track now: {}", states_txt.join(", "));
        if let Some(t) = tally.get(id) {
            let answered = t.completed_on_time + t.completed_late;
            let on_time = if answered > 0 {
                100.0 * t.completed_on_time as f64 / answered as f64
            } else {
                0.0
            };
            println!(
                "    tasks: {} requested, {} reminders, {} overdue, {} escalations; care team answered {} ({:.0}% on time), never {}",
                t.requested, t.reminders, t.overdue, t.escalations, answered, on_time, t.not_done
            );
            println!(
                "    alerts: {} raised, {} escalated; handoffs: {}",
                t.alerts, t.alert_escalations, t.handoffs
            );
        }
    }
    println!();
    println!(
        "  replay check: {} records folded again; {} instances, {} timer rows (each instance's earliest timer) and {} work items (open and closed) equal the stored ones",
        checked.records, checked.instances, checked.timers, checked.work_items
    );
    println!("  the log: {}", db.display());
}
