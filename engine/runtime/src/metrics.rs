//! The runtime's Prometheus metrics: one process-wide registry, every metric with its
//! help text here, names `parcours_<name>_<unit>[_total]`.
//!
//! Labels are **bounded** and never carry patient data: the intake channel (`source`),
//! an outcome, an effect kind, a NATS consumer name (one per partition). Never a subject,
//! an instance id, an event id or a free text. The per-tenant, per-pathway figures
//! computed from the log are in [`crate::indicators`] (labels: tenant, pathway, track,
//! state, role, … all bounded by configuration).
//!
//! Label values are known in advance and every series is created at start with 0, so
//! dashboards and `rate()` see a series before its first event.

use std::sync::LazyLock;
use std::time::Duration;

use jiff::Timestamp;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::service::{EventResult, Handle, SubmitError};
use crate::{IngestOutcome, Refused};

/// Where inbound events come from (the `source` label of ingest metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/events` (CloudEvents JSON).
    Http,
    /// `/fhir/{tenant}/…` (FHIR R4 JSON).
    Fhir,
    /// HL7 v2 over MLLP.
    Mllp,
    /// The NATS JetStream inbound stream.
    Nats,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 4] = [Source::Http, Source::Fhir, Source::Mllp, Source::Nats];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Fhir => "fhir",
            Source::Mllp => "mllp",
            Source::Nats => "nats",
        }
    }
}

/// Values of the `outcome` label of `parcours_ingest_events_total`.
pub const INGEST_OUTCOMES: [&str; 6] = [
    "committed",
    "duplicate",
    "forwarded",
    "queued",
    "refused",
    "failed",
];

/// Values of the `kind` label of `parcours_effects_published_total`.
pub const EFFECT_KINDS: [&str; 3] = ["task", "alert", "handoff"];

/// Values of the `outcome` label of `parcours_relay_handoffs_total`.
pub const HANDOFF_OUTCOMES: [&str; 2] = ["published", "log"];

/// Values of the `outcome` label of `parcours_identity_links_total`: a link recorded,
/// one the log held already, one refused (its local key linked to another national
/// identity, or its national key a linked local key).
pub const LINK_OUTCOMES: [&str; 3] = ["linked", "already", "refused"];

/// Values of the `outcome` label of `parcours_nats_relinked_events_total`: an event a
/// partition consumer took to its linked national key in the same batch (`moved`), one
/// it published to the national key's partition (`published`), one whose publication
/// failed (`failed`: handed back, tried again).
pub const RELINK_OUTCOMES: [&str; 3] = ["moved", "published", "failed"];

/// Values of the `source` label of `parcours_dead_letters_total`.
pub const DEAD_LETTER_SOURCES: [&str; 5] = ["http", "fhir", "mllp", "nats", "other"];

/// Values of the `outcome` label of `parcours_auth_reloads_total` and
/// `parcours_auth_jwks_fetches_total`.
pub const AUTH_OUTCOMES: [&str; 2] = ["applied", "failed"];

/// Metrics only the production wiring (NATS) sets: registered, without series in the
/// embedded mode.
pub const PRODUCTION_ONLY: &[&str] = &[
    "parcours_nats_consumer_pending_messages",
    "parcours_nats_consumer_ack_pending_messages",
];

/// Every label name a metric of parcours may carry, runtime and indicators together
/// (`le` is the histogram bucket bound). A test checks the exposition against it.
pub const LABEL_NAMES: &[&str] = &[
    "source",
    "outcome",
    "kind",
    "consumer",
    "version",
    "tenant",
    "pathway",
    "status",
    "track",
    "state",
    "from",
    "to",
    "role",
    "severity",
    "indicator",
    "group",
    "le",
];

/// The runtime's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Inbound events by intake and outcome.
    pub ingest_events: IntCounterVec,
    /// From submission to commit (queue wait, decide, the commit itself).
    pub ingest_commit_seconds: HistogramVec,
    /// From the commit of a record to the publication of the effects it carries.
    pub event_to_effect_seconds: Histogram,
    /// One group commit's write to the log (its transaction).
    pub store_commit_seconds: Histogram,
    /// One publish of handed-over effects to the bus, from the first send to the last
    /// acknowledgement.
    pub relay_publish_seconds: Histogram,
    /// Effects published, by kind.
    pub effects_published: IntCounterVec,
    /// Timers fired.
    pub timers_fired: IntCounter,
    /// How late timers fired (firing instant minus due instant).
    pub timer_lateness_seconds: Histogram,
    /// Age of the oldest record the outbox relay has not passed yet (0 when caught up).
    pub outbox_lag_seconds: prometheus::Gauge,
    /// Relay rounds that failed (bus or log unreachable).
    pub relay_failures: IntCounter,
    /// Commits whose effects were handed to the relay in memory, by outcome: published
    /// from memory, or left to the relay's reading of the log.
    pub relay_handoffs: IntCounterVec,
    /// Inbound messages kept as dead letters, by intake.
    pub dead_letters: IntCounterVec,
    /// Identity links (`identity.linked`) by outcome ([`LINK_OUTCOMES`]).
    pub identity_links: IntCounterVec,
    /// Canonical events on NATS under a linked local key, taken to the national key by a
    /// partition consumer, by outcome ([`RELINK_OUTCOMES`]).
    pub nats_relinked_events: IntCounterVec,
    /// Messages waiting in a NATS consumer (per partition consumer).
    pub nats_consumer_pending: IntGaugeVec,
    /// From an inbound message's storage in JetStream to its hand-over to the engine by a
    /// partition consumer.
    pub nats_inbound_wait_seconds: Histogram,
    /// Messages delivered but not yet acknowledged, per NATS consumer.
    pub nats_consumer_ack_pending: IntGaugeVec,
    /// Inbound messages a partition's consumer would never deliver, published again at the
    /// stream's end (should stay 0).
    pub nats_lost_messages: IntCounter,
    /// 1 while the last commit succeeded.
    pub store_up: IntGauge,
    /// 1 while the last relay round succeeded.
    pub bus_up: IntGauge,
    /// 1 while the service takes work (the `/readyz` answer).
    pub ready: IntGauge,
    /// Instances with a pending durable timer: the store's timer rows, one per instance
    /// (its earliest timer).
    pub instances_with_timers: IntGauge,
    /// Re-readings of the `--auth` file that changed it, by outcome (applied, or failed
    /// and the previous one kept).
    pub auth_reloads: IntCounterVec,
    /// 1 while the `--auth` file on disk is refused and the previous one stays in force.
    pub auth_reload_failing: IntGauge,
    /// Fetches of token issuers' keys from their `jwks_uri`, by outcome.
    pub auth_jwks_fetches: IntCounterVec,
    /// Token issuers whose last fetch of their `jwks_uri` failed (their last keys stay
    /// in force).
    pub auth_jwks_failing: IntGauge,
    /// 1 once the pathway indicators have folded the log up to its end.
    pub indicators_caught_up: IntGauge,
    /// Always 1; the labels say which build runs.
    pub build_info: IntGaugeVec,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are constants of this file, each registered once: a failure is a bug here.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric definition"),
    )
}

/// Latency buckets, in seconds, from half a millisecond to 10 s.
const FAST: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    fn new(r: &Registry) -> Metrics {
        let ingest_commit_seconds = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "parcours_ingest_commit_seconds",
                    "Time from the submission of inbound events to their commit in the log, by intake",
                )
                .buckets(FAST.to_vec()),
                &["source"],
            )
            .expect("valid metric definition"),
        );
        let m = Metrics {
            ingest_events: counter_vec(
                r,
                "parcours_ingest_events_total",
                "Inbound events by intake (http, fhir, mllp, nats) and outcome (committed, duplicate, queued, refused, failed)",
                &["source", "outcome"],
            ),
            ingest_commit_seconds,
            event_to_effect_seconds: histogram(
                r,
                "parcours_event_to_effect_seconds",
                "Time from the commit of a decision to the publication of the tasks, alerts and handoffs it carries",
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0,
                ],
            ),
            store_commit_seconds: histogram(
                r,
                "parcours_store_commit_seconds",
                "Time to write one group commit to the log, from its first statement to its commit",
                FAST,
            ),
            relay_publish_seconds: histogram(
                r,
                "parcours_relay_publish_seconds",
                "Time for one publish of effects handed over in memory, from its first message sent to the bus's last acknowledgement",
                FAST,
            ),
            effects_published: counter_vec(
                r,
                "parcours_effects_published_total",
                "Effects published to the bus by the outbox relay, by kind (task, alert, handoff)",
                &["kind"],
            ),
            timers_fired: register(
                r,
                IntCounter::new("parcours_timers_fired_total", "Durable timers fired")
                    .expect("valid metric definition"),
            ),
            timer_lateness_seconds: histogram(
                r,
                "parcours_timer_lateness_seconds",
                "How late durable timers fired: the firing instant minus when they were to fire, their due instant or, for a timer already due when a backlog's event scheduled it, the end of its catch-up grace (--timer-catch-up)",
                &[0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0],
            ),
            outbox_lag_seconds: register(
                r,
                prometheus::Gauge::new(
                    "parcours_outbox_lag_seconds",
                    "Age of the oldest committed record the outbox relay has not passed yet (0 when caught up)",
                )
                .expect("valid metric definition"),
            ),
            relay_failures: register(
                r,
                IntCounter::new(
                    "parcours_relay_failures_total",
                    "Outbox relay rounds that failed (bus or log unreachable); they are retried",
                )
                .expect("valid metric definition"),
            ),
            relay_handoffs: counter_vec(
                r,
                "parcours_relay_handoffs_total",
                "Commits whose effects the engine handed to the outbox relay in memory, by outcome: published from memory, or left to the relay's reading of the log (queue full, waiting too long, not the relaying process, the log got there first)",
                &["outcome"],
            ),
            dead_letters: counter_vec(
                r,
                "parcours_dead_letters_total",
                "Inbound messages refused and kept as dead letters, by intake",
                &["source"],
            ),
            identity_links: counter_vec(
                r,
                "parcours_identity_links_total",
                "Identity links (a local identifier named with a qualified INS) by outcome: linked (recorded, the local identifier's instances moved), already (the log held it), refused (the local identifier is linked to another INS: the message is a dead letter for identity vigilance)",
                &["outcome"],
            ),
            nats_relinked_events: counter_vec(
                r,
                "parcours_nats_relinked_events_total",
                "Canonical events published on NATS under a local identifier's key linked to an INS, taken to the INS's key by a partition consumer, by outcome: moved (in the same batch as the INS's events), published (to the INS's partition, the original acknowledged after), failed (that publication failed: tried again)",
                &["outcome"],
            ),
            nats_consumer_pending: gauge_vec(
                r,
                "parcours_nats_consumer_pending_messages",
                "Messages of the inbound stream not yet delivered to a partition consumer",
                &["consumer"],
            ),
            nats_inbound_wait_seconds: histogram(
                r,
                "parcours_nats_inbound_wait_seconds",
                "Time from an inbound message's storage in JetStream to its hand-over to the engine by a partition consumer (the server's clock against this process's)",
                FAST,
            ),
            nats_consumer_ack_pending: gauge_vec(
                r,
                "parcours_nats_consumer_ack_pending_messages",
                "Messages delivered to a partition consumer and not yet acknowledged",
                &["consumer"],
            ),
            nats_lost_messages: register(
                r,
                IntCounter::new(
                    "parcours_nats_lost_messages_total",
                    "Inbound messages a partition's consumer would never deliver, found in the stream by sequence and published again at its end (should stay 0)",
                )
                .expect("valid metric definition"),
            ),
            store_up: register(
                r,
                IntGauge::new("parcours_store_up", "1 while the last commit to the log succeeded")
                    .expect("valid metric definition"),
            ),
            bus_up: register(
                r,
                IntGauge::new("parcours_bus_up", "1 while the bus is connected and the last outbox relay round succeeded")
                    .expect("valid metric definition"),
            ),
            ready: register(
                r,
                IntGauge::new("parcours_ready", "1 while the engine takes work (readiness)")
                    .expect("valid metric definition"),
            ),
            instances_with_timers: register(
                r,
                IntGauge::new(
                    "parcours_instances_with_timers",
                    "Instances with a pending durable timer (the timer table: one row per instance, its earliest timer)",
                )
                .expect("valid metric definition"),
            ),
            auth_reloads: counter_vec(
                r,
                "parcours_auth_reloads_total",
                "Changes of the --auth file read again (every 10 s, or at SIGHUP), by outcome: applied, or failed and the previous file kept in force",
                &["outcome"],
            ),
            auth_reload_failing: register(
                r,
                IntGauge::new(
                    "parcours_auth_reload_failing",
                    "1 while the --auth file on disk is refused (its error is logged) and the previous one stays in force",
                )
                .expect("valid metric definition"),
            ),
            auth_jwks_fetches: counter_vec(
                r,
                "parcours_auth_jwks_fetches_total",
                "Fetches of token issuers' keys from their jwks_uri, by outcome: applied, or failed and the last keys kept",
                &["outcome"],
            ),
            auth_jwks_failing: register(
                r,
                IntGauge::new(
                    "parcours_auth_jwks_failing",
                    "Token issuers whose last fetch of their jwks_uri failed (their last keys stay in force)",
                )
                .expect("valid metric definition"),
            ),
            indicators_caught_up: register(
                r,
                IntGauge::new(
                    "parcours_indicators_caught_up",
                    "1 once the pathway indicators have folded the log up to its end; before, after a start on a long log, the indicator families are left out of /metrics rather than shown partial",
                )
                .expect("valid metric definition"),
            ),
            build_info: gauge_vec(
                r,
                "parcours_build_info",
                "Always 1; the version label says which build runs",
                &["version"],
            ),
        };
        for s in Source::ALL {
            for o in INGEST_OUTCOMES {
                m.ingest_events.with_label_values(&[s.label(), o]);
            }
            m.ingest_commit_seconds.with_label_values(&[s.label()]);
        }
        for k in EFFECT_KINDS {
            m.effects_published.with_label_values(&[k]);
        }
        for o in HANDOFF_OUTCOMES {
            m.relay_handoffs.with_label_values(&[o]);
        }
        for s in DEAD_LETTER_SOURCES {
            m.dead_letters.with_label_values(&[s]);
        }
        for o in LINK_OUTCOMES {
            m.identity_links.with_label_values(&[o]);
        }
        for o in RELINK_OUTCOMES {
            m.nats_relinked_events.with_label_values(&[o]);
        }
        for o in AUTH_OUTCOMES {
            m.auth_reloads.with_label_values(&[o]);
            m.auth_jwks_fetches.with_label_values(&[o]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.store_up.set(1);
        m.bus_up.set(1);
        m
    }
}

static REGISTRY: LazyLock<(Registry, Metrics)> = LazyLock::new(|| {
    let r = Registry::new();
    let m = Metrics::new(&r);
    (r, m)
});

/// The process's runtime metrics.
pub fn metrics() -> &'static Metrics {
    &REGISTRY.1
}

/// Every runtime metric family, for an exposition.
pub fn gather() -> Vec<MetricFamily> {
    REGISTRY.0.gather()
}

/// The text exposition format of metric families (`/metrics`).
pub fn encode(families: &[MetricFamily]) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(families, &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The `outcome` label of one submitted event's result.
pub fn outcome_label(r: &EventResult) -> &'static str {
    match r {
        Err(Refused::Decide(_) | Refused::Invalid(_) | Refused::IdReused(_)) => "refused",
        Ok(IngestOutcome::Duplicate) => "duplicate",
        Ok(IngestOutcome::Committed { .. }) => "committed",
        // Handed to the process owning the patient, which counts it as committed: an
        // event is counted `committed` once in the sum over processes.
        Ok(IngestOutcome::CommittedByOwner { .. }) => "forwarded",
        Ok(IngestOutcome::Queued) => "queued",
    }
}

/// How far after this server's clock an event's clinical time may be. Beyond it the
/// sender's clock, year or time zone is wrong (a weight dated 2062 for 2026 would sit in
/// the patient's series for decades, out of every window, and push its watches there):
/// the event is refused with the reason, and kept as a dead letter by its front.
pub const MAX_AHEAD: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Clinical times before this (1900-01-01) are refused: a year typed wrong.
pub const EARLIEST: Timestamp = Timestamp::constant(-2_208_988_800, 0);

/// Why an event's clinical time cannot be right, seen at `now` (the server's clock).
/// The reason does not repeat the time (it may be a birth date put in the wrong field).
pub fn implausible_time(event: &parcours_core::events::Event, now: Timestamp) -> Option<Refused> {
    let why = if event.occurred_at > now + MAX_AHEAD {
        "its clinical time (`occurredat`) is more than a day after this server's clock: a \
         wrong year, date or time zone at the sender; correct it and send the event again"
    } else if event.occurred_at < EARLIEST {
        "its clinical time (`occurredat`) is before 1900: a wrong year at the sender; \
         correct it and send the event again"
    } else {
        return None;
    };
    Some(Refused::Invalid(why.to_string()))
}

/// Submit events through `handle` and count them by `source` and outcome, with the time
/// to commit. What every intake calls instead of [`Handle::submit`]. Events whose
/// clinical time cannot be right ([`implausible_time`]) are refused here, at the front
/// that received them, without reaching the engine.
pub async fn submit(
    handle: &Handle,
    source: Source,
    events: Vec<parcours_core::events::Event>,
) -> Result<Vec<EventResult>, SubmitError> {
    let n = events.len() as u64;
    if n == 0 {
        return Ok(Vec::new());
    }
    let m = metrics();
    // Measuring is the runtime's business (the core never reads a clock).
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    // An intake's sanity check of what senders claim, against the wall clock (the
    // engine's decisions use the events' own times, never this).
    #[allow(clippy::disallowed_methods)]
    let now = Timestamp::now();
    let refused: Vec<Option<Refused>> = events.iter().map(|e| implausible_time(e, now)).collect();
    let result = if refused.iter().all(Option::is_none) {
        handle.submit(events).await
    } else {
        let kept: Vec<_> = events
            .into_iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(e, _)| e)
            .collect();
        let submitted = if kept.is_empty() {
            Ok(Vec::new())
        } else {
            handle.submit(kept).await
        };
        submitted.map(|out| {
            let mut out = out.into_iter();
            refused
                .into_iter()
                .map(|r| match r {
                    Some(r) => Err(r),
                    None => out.next().unwrap_or(Err(Refused::Invalid(
                        "the engine gave no outcome for this event".into(),
                    ))),
                })
                .collect()
        })
    };
    match &result {
        Ok(results) => {
            m.ingest_commit_seconds
                .with_label_values(&[source.label()])
                .observe(started.elapsed().as_secs_f64());
            for r in results {
                m.ingest_events
                    .with_label_values(&[source.label(), outcome_label(r)])
                    .inc();
            }
        }
        Err(_) => m
            .ingest_events
            .with_label_values(&[source.label(), "failed"])
            .inc_by(n),
    }
    result
}

/// Count a dead letter kept by an intake (`source`: http, fhir, mllp, nats).
pub fn dead_letter(source: &str) {
    let s = if DEAD_LETTER_SOURCES.contains(&source) {
        source
    } else {
        "other"
    };
    metrics().dead_letters.with_label_values(&[s]).inc();
}

/// What became of identity links: `linked` recorded, `already` held by the log,
/// `refused` ([`LINK_OUTCOMES`]).
pub fn identity_links(linked: u64, already: u64, refused: u64) {
    let m = &metrics().identity_links;
    for (outcome, n) in LINK_OUTCOMES.into_iter().zip([linked, already, refused]) {
        if n > 0 {
            m.with_label_values(&[outcome]).inc_by(n);
        }
    }
}

/// Events a partition consumer took to their linked national key, by outcome
/// ([`RELINK_OUTCOMES`]; another value is not counted).
pub fn relinked(outcome: &str, n: usize) {
    if n > 0 && RELINK_OUTCOMES.contains(&outcome) {
        metrics()
            .nats_relinked_events
            .with_label_values(&[outcome])
            .inc_by(n as u64);
    }
}

/// A timer to fire at `due` (its due instant, or the end of its catch-up grace) fired at
/// `now`.
pub fn timer_fired(now: Timestamp, due: Timestamp) {
    let m = metrics();
    m.timers_fired.inc();
    m.timer_lateness_seconds.observe(seconds_between(due, now));
}

/// `b - a` in seconds, 0 if negative.
pub fn seconds_between(a: Timestamp, b: Timestamp) -> f64 {
    Duration::try_from(b.duration_since(a))
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The wall clock, for latencies (never for decisions).
pub fn wall_now() -> Timestamp {
    #[allow(clippy::disallowed_methods)]
    Timestamp::now()
}
