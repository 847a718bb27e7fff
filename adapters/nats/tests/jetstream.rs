//! The adapter against real `nats-server` processes, each test once on NATS 2.9 and once
//! on a current 2.1x server, with the real engine over a temporary SQLite log.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy};
use parcours_core::events::{Event, EventData, EventType};
use parcours_nats::subject::{consumer_name, partition_token};
use parcours_nats::topology::{HEADER_LOST_SEQUENCE, consumer_config};
use parcours_nats::{
    Ensured, InboundConsumer, Ingest, NatsBus, NatsError, PublishError, STREAM_DLQ, STREAM_FHIR,
    STREAM_IN, STREAM_OUT, StreamSettings,
};
use parcours_runtime::service::EventResult;
use parcours_runtime::{Bus, Handle, SubmitError};
use parcours_store::{EventStore, partition_of};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use support::*;

on_both_servers!(
    streams_are_created_then_validated,
    incompatible_stream_and_consumer_are_refused,
    the_topology_is_created_at_start_up_and_replicas_a_lone_server_cannot_hold_are_refused,
    effects_with_the_same_id_are_stored_once,
    inbound_end_to_end_with_the_real_engine,
    poison_messages_are_dead_lettered_once,
    messages_no_partition_takes_are_dead_lettered_not_left_in_the_stream,
    refused_bodies_are_kept_in_the_log_not_in_the_dlq,
    a_message_failing_alone_is_dead_lettered_after_max_attempts,
    redelivery_after_a_lost_reply_makes_no_duplicate_effect,
    a_transient_failure_keeps_a_patients_order,
    a_slow_commit_holds_up_only_its_own_patient,
    server_restart_mid_stream_loses_and_duplicates_nothing,
    a_message_the_consumer_would_never_deliver_is_found_and_published_again,
    a_partition_loop_gets_a_lost_message_back_by_itself,
    the_owner_replies_what_it_said_of_a_commit_to_a_forwarder_asking,
    the_owner_replies_its_refusals_to_a_forwarder_asking,
    events_under_a_linked_local_key_reach_the_national_keys_patient,
    a_link_in_flight_holds_its_local_keys_later_events,
    a_copy_in_the_batch_is_decided_before_a_later_event_taken_in_place,
    one_pull_request_delivers_messages_one_by_one_as_they_arrive,
    a_consumer_deals_its_messages_in_turn_to_its_open_requests,
    each_patients_order_holds_when_two_requests_are_open_on_a_partition,
);

/// Consume every partition until the returned token is cancelled.
fn consume<I: Ingest>(nats: &parcours_nats::Nats, ingest: I) -> (CancellationToken, TaskTracker) {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let consumer = InboundConsumer::new(nats.clone(), ingest);
    consumer.spawn(
        (0..nats.config().partitions).map(|p| (p, token.child_token())),
        &tracker,
    );
    (token, tracker)
}

/// A weight of patient `p-<patient>`.
fn weight_of(patient: usize, id: String, kg: f64) -> Event {
    Event {
        id,
        data: EventData::from_json(
            EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        )
        .expect("payload"),
        ..discharge(patient)
    }
}

/// The ids of the inbound events in the log, in log order.
async fn inbound_order(engine: &Running) -> Vec<String> {
    all_records(&engine.store)
        .await
        .into_iter()
        .filter(|r| r.stream.starts_with("inbound/"))
        .map(|r| r.record.id)
        .collect()
}

async fn stop_consuming((token, tracker): (CancellationToken, TaskTracker)) {
    token.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("partition loops stop when cancelled");
}

async fn streams_are_created_then_validated(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    let created = nats.ensure_streams().await.expect("streams");
    assert_eq!(
        created,
        vec![
            (STREAM_IN.to_string(), Ensured::Created),
            (STREAM_OUT.to_string(), Ensured::Created),
            (STREAM_DLQ.to_string(), Ensured::Created),
        ]
    );
    let consumers = nats.ensure_consumers().await.expect("consumers");
    assert_eq!(consumers.len(), 4);
    assert!(consumers.iter().all(|(_, e)| *e == Ensured::Created));

    let mut inbound = nats.jetstream().get_stream(STREAM_IN).await.expect("in");
    let info = inbound.info().await.expect("info");
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.config.discard, DiscardPolicy::New);
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert!(info.config.duplicate_window >= Duration::from_secs(120));
    let c = inbound.consumer_info("in-p02").await.expect("consumer");
    assert_eq!(c.config.filter_subject, "parcours.*.in.p02.>");
    assert_eq!(c.config.ack_wait, Duration::from_secs(2));

    // A second start, on another connection: everything validated, nothing changed.
    let again = connect(config(&server)).await;
    let checked = again.ensure_streams().await.expect("streams again");
    assert!(
        checked.iter().all(|(_, e)| *e == Ensured::Unchanged),
        "{checked:?}"
    );
    let checked = again.ensure_consumers().await.expect("consumers again");
    assert!(
        checked.iter().all(|(_, e)| *e == Ensured::Unchanged),
        "{checked:?}"
    );

    // Updatable settings follow the configuration, and the report says so.
    let mut changed = config(&server);
    changed.streams = StreamSettings {
        out_max_age: Duration::from_secs(7 * 24 * 3600),
        ..changed.streams
    };
    changed.consumer.ack_wait = Duration::from_secs(5);
    let changed = connect(changed).await;
    let report = changed.ensure_streams().await.expect("updated");
    assert_eq!(report[0].1, Ensured::Unchanged);
    assert!(
        matches!(&report[1].1, Ensured::Updated(c) if c.len() == 1 && c[0].starts_with("max_age")),
        "{report:?}"
    );
    let (_, outcome) = changed.ensure_consumer(1).await.expect("consumer updated");
    assert!(
        matches!(&outcome, Ensured::Updated(c) if c[0].starts_with("ack_wait")),
        "{outcome:?}"
    );
    let c = inbound.consumer_info("in-p01").await.expect("consumer");
    assert_eq!(c.config.ack_wait, Duration::from_secs(5));
}

async fn the_topology_is_created_at_start_up_and_replicas_a_lone_server_cannot_hold_are_refused(
    bin: ServerBin,
) {
    let server = NatsServer::start(&bin).await;
    // Three replicas on a server outside a cluster: the server refuses them for good, so
    // the start-up's wait for JetStream ends at once with what to fix (it retries a
    // timeout or a cluster without a leader).
    let mut settings = config(&server);
    settings.streams.replicas = 3;
    let lone = connect(settings).await;
    let err = tokio::time::timeout(Duration::from_secs(30), lone.ensure_topology())
        .await
        .expect("an answer, not a wait")
        .expect_err("refused");
    assert!(err.is_permanent(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("creating PARCOURS_IN: the server refuses it")
            && message.contains("replicas"),
        "{message}"
    );

    let nats = connect(config(&server)).await;
    let made = nats.ensure_topology().await.expect("the topology");
    let names: Vec<&str> = made.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [STREAM_IN, STREAM_OUT, STREAM_DLQ, STREAM_FHIR]);
    assert!(made.iter().all(|(_, e)| *e == Ensured::Created), "{made:?}");
}

async fn incompatible_stream_and_consumer_are_refused(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    let js = nats.jetstream();
    js.create_stream(stream::Config {
        name: STREAM_IN.into(),
        subjects: vec!["legacy.in.>".into()],
        retention: RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .expect("a stream made by someone else");
    let err = nats.ensure_streams().await.expect_err("refused");
    assert!(err.is_permanent());
    let NatsError::IncompatibleStream {
        stream,
        differences,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(stream, STREAM_IN);
    assert_eq!(differences.len(), 2, "{differences:?}");
    let message = err.to_string();
    assert!(
        message.contains(r#"subjects are ["legacy.in.>"], expected ["parcours.*.in.>"]"#),
        "{message}"
    );
    assert!(
        message.contains("retention is Limits, expected WorkQueue"),
        "{message}"
    );
    // Never edited.
    let mut s = js.get_stream(STREAM_IN).await.expect("still there");
    let info = s.info().await.expect("info");
    assert_eq!(info.config.subjects, vec!["legacy.in.>".to_string()]);
    assert_eq!(info.config.retention, RetentionPolicy::Limits);

    // A partition consumer with another filter is refused too.
    js.delete_stream(STREAM_IN).await.expect("removed");
    nats.ensure_streams().await.expect("streams");
    let mut wrong = consumer_config(&nats.config().consumer, 0);
    wrong.filter_subject = "parcours.*.in.p00.encounter.>".into();
    js.create_consumer_on_stream(wrong, STREAM_IN)
        .await
        .expect("a consumer made by someone else");
    let err = nats.ensure_consumer(0).await.expect_err("refused");
    assert!(err.is_permanent());
    let message = err.to_string();
    assert!(
        message.contains("in-p00") && message.contains("filter is"),
        "{message}"
    );
    let c = js
        .get_stream(STREAM_IN)
        .await
        .expect("in")
        .consumer_info(consumer_name(0))
        .await
        .expect("consumer");
    assert_eq!(c.config.filter_subject, "parcours.*.in.p00.encounter.>");
}

async fn effects_with_the_same_id_are_stored_once(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    // Real effects: what the engine records for two discharges.
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut engine, store) = open_engine(dir.path()).await;
    engine.ingest(&discharge(1)).await.expect("ingest");
    engine.ingest(&discharge(2)).await.expect("ingest");
    let effects: Vec<_> = all_records(&store)
        .await
        .iter()
        .flat_map(|r| parcours_runtime::relay::effects_of(r).expect("decodes"))
        .collect();
    assert!(effects.len() >= 2, "{effects:?}");

    let bus = NatsBus::new(nats.clone());
    bus.publish(&effects).await.expect("published");
    bus.publish(&effects).await.expect("published again");
    bus.publish(&effects[..1]).await.expect("and once more");

    let reads = read_stream(&nats, STREAM_OUT).await;
    assert_eq!(reads.len(), effects.len(), "one message per effect id");
    assert_eq!(stream_len(&nats, STREAM_OUT).await, effects.len() as u64);
    for (effect, read) in effects.iter().zip(&reads) {
        assert_eq!(read.headers["Nats-Msg-Id"], effect.id);
        assert_eq!(
            read.headers["Parcours-Position"],
            effect.position.to_string()
        );
        let kind = parcours_nats::subject::effect_token(effect.kind).expect("published kind");
        assert_eq!(read.headers["Parcours-Kind"], kind);
        assert_eq!(read.subject, format!("parcours.{TENANT}.out.{kind}"));
        let body: serde_json::Value = serde_json::from_slice(&read.payload).expect("json");
        assert_eq!(body["id"], effect.id.as_str());
        assert_eq!(body["subject"], effect.subject.as_str());
    }
    let stats = nats.stats();
    assert_eq!(
        stats.effects_published.load(Ordering::Relaxed),
        2 * effects.len() as u64 + 1
    );
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

async fn inbound_end_to_end_with_the_real_engine(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());

    let events: Vec<Event> = (0..40).map(discharge).collect();
    let published = nats.publish_inbound_all(&events).await;
    assert!(
        published.iter().all(|r| matches!(r, Ok(p) if !p.duplicate)),
        "{published:?}"
    );
    // A publisher retry within the window stores nothing new.
    let again = nats.publish_inbound(&events[3]).await.expect("retry");
    assert!(again.duplicate);
    // What the HTTP API would refuse is refused here too, before anything is sent.
    let mut internal = discharge(99);
    internal.data = EventData::from_json(
        EventType::TimerFired,
        serde_json::json!({"timer_id": "t-1"}),
    )
    .expect("payload");
    assert!(matches!(
        nats.publish_inbound(&internal).await,
        Err(PublishError::Invalid(_))
    ));

    eventually(Duration::from_secs(30), "every event committed", || async {
        engine.inbound_ids().await.len() == events.len()
    })
    .await;
    eventually(Duration::from_secs(30), "every effect relayed", || async {
        engine.relay_lag().await == 0
            && by_msg_id(&read_stream(&nats, STREAM_OUT).await).len()
                == engine.effect_ids().await.len()
    })
    .await;
    let log_effects = engine.effect_ids().await;
    let out = by_msg_id(&read_stream(&nats, STREAM_OUT).await);
    assert!(!log_effects.is_empty());
    assert_eq!(
        out.keys().collect::<BTreeSet<_>>(),
        log_effects.keys().collect::<BTreeSet<_>>()
    );
    assert!(out.values().all(|n| *n == 1), "each effect once: {out:?}");
    eventually(
        Duration::from_secs(10),
        "the work queue emptied",
        || async { stream_len(&nats, STREAM_IN).await == 0 },
    )
    .await;
    assert_eq!(nats.stats().committed.load(Ordering::Relaxed), 40);
    assert_eq!(stream_len(&nats, STREAM_DLQ).await, 0);

    stop_consuming(loops).await;
    engine.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

/// A partition's loop holds one pull request open: messages published one at a time,
/// each committed before the next is published, come through far fewer pull requests
/// than messages, each committed well before the pull would expire (handed over as it
/// arrives, not when its pull ends); cancelled, the loops end at once, pulls open.
async fn one_pull_request_delivers_messages_one_by_one_as_they_arrive(bin: ServerBin) {
    const N: u64 = 20;
    let server = NatsServer::start(&bin).await;
    let mut settings = config(&server);
    let expiry = Duration::from_secs(5);
    settings.consumer.fetch_expiry = expiry;
    settings.consumer.ack_wait = Duration::from_secs(20);
    let nats = connect(settings).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let stats = nats.stats();
    let partitions = u64::from(nats.config().partitions);
    eventually(
        Duration::from_secs(10),
        "every loop's first pull",
        || async { stats.pulls.load(Ordering::Relaxed) >= partitions },
    )
    .await;
    let pulls_before = stats.pulls.load(Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    for i in 0..N {
        let sent = tokio::time::Instant::now();
        nats.publish_inbound(&weight_of(1, format!("obs-{i}"), 80.0 + i as f64))
            .await
            .expect("published");
        eventually(
            expiry / 2,
            "the message committed while its pull is open",
            || async { stats.committed.load(Ordering::Relaxed) == i + 1 },
        )
        .await;
        assert!(
            sent.elapsed() < expiry / 2,
            "committed after {:?}",
            sent.elapsed()
        );
    }
    let pulls = stats.pulls.load(Ordering::Relaxed) - pulls_before;
    // At most one pull per partition per `fetch_expiry` expired meanwhile, plus those a
    // full room ends; one per message (a pull ending at its first message) would be N.
    let expired = partitions * (started.elapsed().as_secs() / expiry.as_secs() + 1);
    assert!(
        pulls <= expired && pulls < N / 2,
        "{N} messages through {pulls} pull requests"
    );
    assert_eq!(stats.fetched.load(Ordering::Relaxed), N);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 0);

    // Cancelled, every loop ends at once, its pull still open.
    let stopping = tokio::time::Instant::now();
    stop_consuming(loops).await;
    assert!(
        stopping.elapsed() < expiry / 2,
        "stopped after {:?}",
        stopping.elapsed()
    );
    engine.stop().await;
}

/// What the partition loop's order rests on (`consumer::arrivals`): with two pull
/// requests open on a consumer, the server deals its messages out in turn — the first
/// to the older request, the second to the newer, the third to the older — not every
/// message to the older request until it ends.
async fn a_consumer_deals_its_messages_in_turn_to_its_open_requests(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let (consumer, _) = nats.ensure_consumer(0).await.expect("consumer");
    let open = || async {
        consumer
            .batch()
            .max_messages(10)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .expect("pull request sent")
    };
    let mut older = open().await;
    nats.client().flush().await.expect("flushed");
    let mut newer = open().await;
    nats.client().flush().await.expect("flushed");
    let subject = key_in("p", 0, true, nats.config().partitions);
    for i in 0..4 {
        publish_as(
            &nats,
            &weight(&format!("w-{i}"), &subject, i, 80.0),
            &format!("w-{i}"),
        )
        .await;
    }
    assert_eq!(
        two_sequences(&mut older).await,
        [1, 3],
        "the older request's"
    );
    assert_eq!(
        two_sequences(&mut newer).await,
        [2, 4],
        "the newer request's"
    );
}

/// The stream sequences of the next two messages a pull request delivers.
async fn two_sequences(batch: &mut async_nats::jetstream::consumer::pull::Batch) -> Vec<u64> {
    let mut sequences = Vec::new();
    while sequences.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(batch))
            .await
            .expect("a message within 5 s")
            .expect("the request is open")
            .expect("a message");
        sequences.push(m.info().expect("a JetStream message").stream_sequence);
    }
    sequences
}

/// A partition loop keeps each patient's order when the server holds two of its pull
/// requests at once and deals messages to both in turn: the server paused now and then
/// (SIGSTOP, then SIGCONT) reads a request late, and so expires it after this side,
/// past the request's expiry, sent the next. Three weights a patient, published in a
/// burst each, go to the log in publication order (before the loop took both requests'
/// messages in the same turn, a patient's third weight could go to the engine before
/// its second, which had reached the other request).
async fn each_patients_order_holds_when_two_requests_are_open_on_a_partition(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let mut settings = config(&server);
    settings.consumer.fetch_expiry = Duration::from_millis(100);
    // A message lost with a request would come back only after this: too late for the
    // order checked below.
    settings.consumer.ack_wait = Duration::from_secs(20);
    let nats = connect(settings).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let partitions = nats.config().partitions;
    // Patients of one partition, so that one loop takes every message.
    let patients: Vec<String> = (0..)
        .map(|n| format!("q-{n}"))
        .filter(|k| partition_of(TENANT, k, partitions) == 0)
        .take(60)
        .collect();
    let stalling = Arc::new(AtomicBool::new(true));
    let pauser = {
        let stalling = stalling.clone();
        let server = &server;
        async move {
            while stalling.load(Ordering::Relaxed) {
                server.pause();
                tokio::time::sleep(Duration::from_millis(150)).await;
                server.resume();
                tokio::time::sleep(Duration::from_millis(90)).await;
            }
        }
    };
    let publisher = async {
        for (p, subject) in patients.iter().enumerate() {
            let mut acks = Vec::new();
            for k in 0..3 {
                let event = weight(&format!("{subject}-{k}"), subject, k, 80.0 + k as f64);
                let wire = parcours_nats::subject::inbound_subject(&event, partitions)
                    .expect("a valid event");
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", event.id.as_str());
                acks.push(
                    nats.jetstream()
                        .publish_with_headers(
                            wire,
                            headers,
                            serde_json::to_vec(&event).expect("json").into(),
                        )
                        .await
                        .expect("sent"),
                );
            }
            for ack in acks {
                ack.await.expect("stored");
            }
            if p % 4 == 3 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        stalling.store(false, Ordering::Relaxed);
    };
    tokio::join!(pauser, publisher);
    server.resume();
    let all = 3 * patients.len();
    eventually(
        Duration::from_secs(15),
        "every weight committed",
        || async { inbound_order(&engine).await.len() == all },
    )
    .await;
    let order = inbound_order(&engine).await;
    for subject in &patients {
        let theirs: Vec<&String> = order
            .iter()
            .filter(|id| id.rsplit_once('-').is_some_and(|(s, _)| s == subject))
            .collect();
        let expected: Vec<String> = (0..3).map(|k| format!("{subject}-{k}")).collect();
        assert_eq!(theirs, expected.iter().collect::<Vec<_>>(), "{order:?}");
    }
    stop_consuming(loops).await;
    engine.stop().await;
}

/// A forwarder (an HTTP or MLLP front of another engine) publishes with
/// `Parcours-Reply`: the owner, once it committed each event, publishes there what it
/// said of it — the warnings (an update for a patient no instance follows), none for a
/// plain discharge; a message without the header gets no reply.
async fn the_owner_replies_what_it_said_of_a_commit_to_a_forwarder_asking(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let inbox = nats.client().new_inbox();
    let mut replies = nats.client().subscribe(inbox.clone()).await.expect("inbox");
    let loops = consume(&nats, engine.handle.clone());

    let update = Event {
        id: "upd-1".into(),
        data: EventData::from_json(
            EventType::ParametersUpdated,
            serde_json::json!({"values": {"weight_gain_kg": 2.5}}),
        )
        .expect("payload"),
        ..discharge(7)
    };
    // Without the header first, committed before the others are sent: a reply to it
    // would reach the inbox before theirs (one publisher, in order).
    let unasked = nats.publish_inbound(&discharge(2)).await;
    assert!(unasked.is_ok(), "{unasked:?}");
    eventually(Duration::from_secs(30), "the first committed", || async {
        engine.inbound_ids().await.contains_key("adt-2")
    })
    .await;
    let asked = [discharge(1), update];
    let published = nats.publish_inbound_replying(&asked, Some(&inbox)).await;
    assert!(published.iter().all(Result::is_ok), "{published:?}");

    let mut heard = std::collections::BTreeMap::new();
    while heard.len() < asked.len() {
        let msg = futures::StreamExt::next(&mut replies)
            .await
            .expect("a reply");
        let reply: parcours_nats::OwnerReply =
            serde_json::from_slice(&msg.payload).expect("a reply in JSON");
        heard.insert(reply.id, reply.warnings);
    }
    assert_eq!(
        heard.keys().collect::<Vec<_>>(),
        ["adt-1", "upd-1"],
        "no reply for the message without the header"
    );
    assert_eq!(heard["adt-1"], Vec::<String>::new());
    assert_eq!(heard["upd-1"].len(), 1, "{heard:?}");
    assert!(
        heard["upd-1"][0].contains("no active instance") && !heard["upd-1"][0].contains("2.5"),
        "{heard:?}"
    );
    assert_eq!(
        engine.inbound_ids().await.len(),
        3,
        "replied once committed"
    );

    stop_consuming(loops).await;
    engine.stop().await;
}

/// An event the owner's engine refuses goes to the DLQ as before, and a forwarder asking
/// (`Parcours-Reply`) is told so, with the kind and the engine's reason: a merge of a key
/// into itself (`invalid`), an id the log holds for another event (`id_reused`: here
/// committed by the engine directly, so the stream's duplicate window does not drop it).
async fn the_owner_replies_its_refusals_to_a_forwarder_asking(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let inbox = nats.client().new_inbox();
    let mut replies = nats.client().subscribe(inbox.clone()).await.expect("inbox");
    let loops = consume(&nats, engine.handle.clone());

    let stored = engine
        .handle
        .submit(vec![discharge(3)])
        .await
        .expect("submitted");
    assert!(matches!(
        stored[..],
        [Ok(parcours_runtime::IngestOutcome::Committed { .. })]
    ));
    let mut reused = discharge(3);
    reused.occurred_at += jiff::SignedDuration::from_hours(1);
    let selfish = Event {
        id: "a40-self".into(),
        data: EventData::from_json(
            EventType::IdentityMerged,
            serde_json::json!({"merged_subject": "p-5"}),
        )
        .expect("payload"),
        ..discharge(5)
    };
    let asked = [reused, selfish];
    let published = nats.publish_inbound_replying(&asked, Some(&inbox)).await;
    assert!(published.iter().all(Result::is_ok), "{published:?}");

    let mut heard = std::collections::BTreeMap::new();
    while heard.len() < asked.len() {
        let msg = tokio::time::timeout(
            Duration::from_secs(30),
            futures::StreamExt::next(&mut replies),
        )
        .await
        .expect("a reply to each refusal")
        .expect("a reply");
        let reply: parcours_nats::OwnerReply =
            serde_json::from_slice(&msg.payload).expect("a reply in JSON");
        assert!(reply.warnings.is_empty(), "{reply:?}");
        heard.insert(reply.id.clone(), reply.refused.expect("a refusal"));
    }
    assert_eq!(heard["adt-3"].kind, "id_reused", "{heard:?}");
    assert!(
        heard["adt-3"]
            .reason
            .contains("already in the log for another event"),
        "{heard:?}"
    );
    assert_eq!(heard["a40-self"].kind, "invalid", "{heard:?}");
    assert!(
        heard["a40-self"].reason.contains("merged into itself")
            && !heard["a40-self"].reason.contains("p-5"),
        "{heard:?}"
    );
    eventually(Duration::from_secs(10), "both dead-lettered", || async {
        stream_len(&nats, STREAM_DLQ).await == 2
    })
    .await;
    assert_eq!(
        engine.inbound_ids().await.len(),
        1,
        "nothing else committed"
    );

    stop_consuming(loops).await;
    engine.stop().await;
}

/// An event of `subject` at `t0 + minutes`.
fn keyed(id: &str, subject: &str, minutes: i64, kind: EventType, data: serde_json::Value) -> Event {
    Event {
        id: id.into(),
        subject: subject.into(),
        occurred_at: t0() + jiff::SignedDuration::from_mins(minutes),
        data: EventData::from_json(kind, data).expect("payload"),
        ..discharge(0)
    }
}

fn weight(id: &str, subject: &str, minutes: i64, kg: f64) -> Event {
    keyed(
        id,
        subject,
        minutes,
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
    )
}

/// A key of the form `<prefix>-<n>`, the first whose partition is (`same`) or is not
/// `partition`.
fn key_in(prefix: &str, partition: u16, same: bool, partitions: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|k| (partition_of(TENANT, k, partitions) == partition) == same)
        .expect("a key")
}

/// Publish `event` as an integration would, with `Nats-Msg-Id` = `msg_id`.
async fn publish_as(nats: &parcours_nats::Nats, event: &Event, msg_id: &str) {
    let subject = parcours_nats::subject::inbound_subject(event, nats.config().partitions)
        .expect("a valid event");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    nats.jetstream()
        .publish_with_headers(
            subject,
            headers,
            serde_json::to_vec(event).expect("json").into(),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
}

/// The inbound streams holding each event id.
async fn inbound_streams(engine: &Running) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut by_id = std::collections::BTreeMap::<String, Vec<String>>::new();
    for r in all_records(&engine.store).await {
        if r.stream.starts_with("inbound/") {
            by_id.entry(r.record.id).or_default().push(r.stream);
        }
    }
    by_id
}

/// The open weight-gain alerts of `subject`.
async fn weight_alerts(engine: &Running, subject: &str) -> usize {
    engine
        .store
        .work_items(&parcours_store::WorkFilter {
            tenant: TENANT.into(),
            limit: 100,
            ..parcours_store::WorkFilter::default()
        })
        .await
        .expect("work items")
        .iter()
        .filter(|w| w.subject == subject && w.code == "weight-gain")
        .count()
}

/// An integration publishes canonical events itself under a local key linked to a
/// national one: they reach the national key's patient — published on its partition
/// when it is another (the original acknowledged after), taken in place when the link
/// and the national key's events are in the same batch — and a redelivery is
/// acknowledged, recorded once; an event committed under the local key before the link
/// and sent again is a duplicate; a forwarder asking hears of the copy's commit.
async fn events_under_a_linked_local_key_reach_the_national_keys_patient(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let partitions = nats.config().partitions;
    let inbound_of = |s: &str| format!("inbound/{TENANT}/{s}");
    let linked = |id: &str, national: &str, local: &str, minutes: i64| {
        keyed(
            id,
            national,
            minutes,
            EventType::IdentityLinked,
            serde_json::json!({"local_subject": local}),
        )
    };
    let discharged = |id: &str, subject: &str| Event {
        id: id.into(),
        subject: subject.into(),
        ..discharge(0)
    };

    // One batch: the national key's discharge, its link, then weights under the local
    // key (the two keys share a partition; the consumer starts after they are stored).
    let ins_1 = "p-ins-one".to_string();
    let ipp_1 = key_in(
        "p-ipp-one",
        partition_of(TENANT, &ins_1, partitions),
        true,
        partitions,
    );
    for e in [
        discharged("adt-ins-1", &ins_1),
        linked("link-1", &ins_1, &ipp_1, 60),
        weight("w-1a", &ipp_1, 120, 80.0),
        weight("w-1b", &ipp_1, 360, 83.0),
    ] {
        nats.publish_inbound(&e).await.expect("published");
    }
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The reader `parcours serve` uses: one query for the batches of several partitions.
    InboundConsumer::new(nats.clone(), engine.handle.clone())
        .following_links(Arc::new(parcours_nats::CoalescedLinks::new(
            engine.store.clone(),
        )))
        .spawn((0..partitions).map(|p| (p, token.child_token())), &tracker);
    eventually(
        Duration::from_secs(20),
        "the first batch committed",
        || async {
            let ids = engine.inbound_ids().await;
            ids.contains_key("w-1a") && ids.contains_key("w-1b")
        },
    )
    .await;
    let streams = inbound_streams(&engine).await;
    for id in ["w-1a", "w-1b"] {
        assert_eq!(streams[id], [inbound_of(&ins_1)], "{id}: {streams:?}");
    }
    assert_eq!(
        weight_alerts(&engine, &ins_1).await,
        1,
        "the weights reached the instance"
    );
    assert_eq!(
        nats.stats().relinked.load(Ordering::Relaxed),
        0,
        "taken in place"
    );

    // Linked first; the local key on another partition than the national key's.
    let ins_2 = "p-ins-two".to_string();
    let ipp_2 = key_in(
        "p-ipp-two",
        partition_of(TENANT, &ins_2, partitions),
        false,
        partitions,
    );
    // Recorded under the local key before the link.
    let early = weight("w-2-early", &ipp_2, 30, 79.0);
    nats.publish_inbound(&early).await.expect("published");
    nats.publish_inbound(&discharged("adt-ins-2", &ins_2))
        .await
        .expect("published");
    eventually(
        Duration::from_secs(20),
        "the discharge committed",
        || async {
            let ids = engine.inbound_ids().await;
            ids.contains_key("adt-ins-2") && ids.contains_key("w-2-early")
        },
    )
    .await;
    nats.publish_inbound(&linked("link-2", &ins_2, &ipp_2, 60))
        .await
        .expect("published");
    eventually(Duration::from_secs(20), "the link committed", || async {
        engine.inbound_ids().await.contains_key("link-2")
    })
    .await;
    let inbox = nats.client().new_inbox();
    let mut replies = nats.client().subscribe(inbox.clone()).await.expect("inbox");
    let weights = [
        weight("w-2a", &ipp_2, 120, 80.0),
        weight("w-2b", &ipp_2, 360, 83.0),
    ];
    let published = nats.publish_inbound_replying(&weights, Some(&inbox)).await;
    assert!(published.iter().all(Result::is_ok), "{published:?}");
    eventually(Duration::from_secs(20), "the weights committed", || async {
        let ids = engine.inbound_ids().await;
        ids.contains_key("w-2a") && ids.contains_key("w-2b")
    })
    .await;
    let streams = inbound_streams(&engine).await;
    for id in ["w-2a", "w-2b"] {
        assert_eq!(streams[id], [inbound_of(&ins_2)], "{id}: {streams:?}");
    }
    assert_eq!(streams["w-2-early"], [inbound_of(&ipp_2)]);
    assert_eq!(
        weight_alerts(&engine, &ins_2).await,
        1,
        "the weights reached the instance"
    );
    assert_eq!(weight_alerts(&engine, &ipp_2).await, 0);
    // The forwarder hears of each commit by its event id.
    let mut heard = BTreeSet::new();
    while heard.len() < weights.len() {
        let msg = futures::StreamExt::next(&mut replies)
            .await
            .expect("a reply");
        let reply: parcours_nats::OwnerReply =
            serde_json::from_slice(&msg.payload).expect("a reply in JSON");
        heard.insert(reply.id);
    }
    assert_eq!(heard.into_iter().collect::<Vec<_>>(), ["w-2a", "w-2b"]);

    // Sent again (as after a lost ack, beyond the publisher's window): the copy is the
    // one the stream knows, the original acknowledged, nothing recorded twice; the event
    // recorded under the local key before the link is a duplicate too.
    // (Timers due by the engine's clock may fire meanwhile: inbound records only.)
    let before = inbound_streams(&engine).await;
    publish_as(&nats, &weights[1], "resent-w-2b").await;
    publish_as(&nats, &early, "resent-w-2-early").await;
    eventually(
        Duration::from_secs(20),
        "the resends acknowledged",
        || async {
            nats.stats().relinked.load(Ordering::Relaxed) == 4
                && stream_len(&nats, STREAM_IN).await == 0
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the early one's copy answered",
        || async { nats.stats().duplicates.load(Ordering::Relaxed) == 1 },
    )
    .await;
    assert_eq!(inbound_streams(&engine).await, before, "nothing recorded");
    for id in ["w-2a", "w-2b", "w-2-early", "w-1a", "w-1b"] {
        assert_eq!(before[id].len(), 1, "{id}");
    }
    assert_eq!(weight_alerts(&engine, &ins_2).await, 1);
    assert_eq!(stream_len(&nats, STREAM_DLQ).await, 0);

    stop_consuming((token, tracker)).await;
    engine.stop().await;
}

/// The copy of an earlier event of a linked local key, published on the national key's
/// partition (which the local key shares), lands in one batch after a later event of
/// the local key, which is taken in place to the national key: the copy is decided
/// first, so the weights are decided in the order they were published and the weight
/// gain is seen (decided the other way round, the earlier weight comes last and no rise
/// is seen: no alert).
async fn a_copy_in_the_batch_is_decided_before_a_later_event_taken_in_place(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let partitions = nats.config().partitions;
    let ins = "p-ins-copy".to_string();
    let ipp = key_in(
        "p-ipp-copy",
        partition_of(TENANT, &ins, partitions),
        true,
        partitions,
    );
    // The national key's discharge and the link, committed.
    let committed = engine
        .handle
        .submit(vec![
            Event {
                id: "adt-copy".into(),
                subject: ins.clone(),
                ..discharge(0)
            },
            keyed(
                "link-copy",
                &ins,
                60,
                EventType::IdentityLinked,
                serde_json::json!({"local_subject": ipp}),
            ),
        ])
        .await
        .expect("submitted");
    assert!(committed.iter().all(Result::is_ok), "{committed:?}");
    // In the partition's stream, both stored before the consumer starts (one batch):
    // the local key's second weight, then the copy of its first (as a consumer publishes
    // it once it read the link: the national key, `Nats-Msg-Id` parcours-linked:<id>).
    publish_as(&nats, &weight("w-copy-2", &ipp, 360, 83.0), "w-copy-2").await;
    publish_as(
        &nats,
        &weight("w-copy-1", &ins, 120, 80.0),
        "parcours-linked:w-copy-1",
    )
    .await;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    InboundConsumer::new(nats.clone(), engine.handle.clone())
        .following_links(Arc::new(parcours_nats::CoalescedLinks::new(
            engine.store.clone(),
        )))
        .spawn((0..partitions).map(|p| (p, token.child_token())), &tracker);
    eventually(Duration::from_secs(20), "the weights committed", || async {
        let ids = engine.inbound_ids().await;
        ids.contains_key("w-copy-1") && ids.contains_key("w-copy-2")
    })
    .await;
    let streams = inbound_streams(&engine).await;
    for id in ["w-copy-1", "w-copy-2"] {
        assert_eq!(
            streams[id],
            [format!("inbound/{TENANT}/{ins}")],
            "{id}: {streams:?}"
        );
    }
    let weights: Vec<String> = inbound_order(&engine)
        .await
        .into_iter()
        .filter(|id| id.starts_with("w-copy-"))
        .collect();
    assert_eq!(weights, ["w-copy-1", "w-copy-2"], "decided in this order");
    assert_eq!(
        weight_alerts(&engine, &ins).await,
        1,
        "the weight gain was seen"
    );
    stop_consuming((token, tracker)).await;
    engine.stop().await;
}

/// A link and an event under its local key, published after it, in one partition:
/// while the link's batch is with the engine (its commit slow), the local key's event
/// waits (another patient of the partition goes), though its key is not the link's;
/// once the link committed, the event reads it and reaches the national key's patient
/// (published on its partition), never decided under the local key.
async fn a_link_in_flight_holds_its_local_keys_later_events(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let partitions = nats.config().partitions;
    let ins = "p-ins-race".to_string();
    let partition = partition_of(TENANT, &ins, partitions);
    let ipp = key_in("p-ipp-race", partition, true, partitions);
    let other = key_in("p-other-race", partition, true, partitions);
    let discharged = |id: &str, subject: &str| Event {
        id: id.into(),
        subject: subject.into(),
        ..discharge(0)
    };
    let gate = Gate {
        inner: engine.handle.clone(),
        subject: ins.clone(),
        open: Arc::new(tokio::sync::watch::channel(false).0),
        held: Arc::default(),
        submitted: Arc::default(),
    };
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    InboundConsumer::new(nats.clone(), gate.clone())
        .following_links(Arc::new(engine.store.clone()))
        .spawn((0..partitions).map(|p| (p, token.child_token())), &tracker);

    // The patient followed under the IPP, then the qualification: its commit is slow.
    nats.publish_inbound(&discharged("adt-ipp", &ipp))
        .await
        .expect("published");
    eventually(
        Duration::from_secs(20),
        "the discharge committed",
        || async { engine.inbound_ids().await.contains_key("adt-ipp") },
    )
    .await;
    let link = keyed(
        "link-race",
        &ins,
        60,
        EventType::IdentityLinked,
        serde_json::json!({"local_subject": ipp}),
    );
    nats.publish_inbound(&link).await.expect("published");
    eventually(
        Duration::from_secs(10),
        "the link's commit begun",
        || async { gate.held.load(Ordering::Relaxed) == 1 },
    )
    .await;
    // A lab result under the IPP, then another patient's discharge.
    let later = weight("w-race", &ipp, 120, 80.0);
    nats.publish_inbound(&later).await.expect("published");
    nats.publish_inbound(&discharged("adt-other", &other))
        .await
        .expect("published");
    eventually(
        Duration::from_secs(20),
        "the other patient committed while the link waits",
        || async { engine.inbound_ids().await.contains_key("adt-other") },
    )
    .await;
    assert!(
        !gate.submitted.lock().expect("lock").contains(&later.id),
        "the local key's event waits for the link's batch"
    );

    gate.open.send_replace(true);
    eventually(Duration::from_secs(20), "the weight committed", || async {
        engine.inbound_ids().await.contains_key("w-race")
    })
    .await;
    let streams = inbound_streams(&engine).await;
    assert_eq!(
        streams["w-race"],
        [format!("inbound/{TENANT}/{ins}")],
        "{streams:?}"
    );
    assert_eq!(streams["link-race"], [format!("inbound/{TENANT}/{ins}")]);
    assert!(
        engine
            .store
            .instances_of(TENANT, &ipp)
            .await
            .expect("rows")
            .is_empty(),
        "no second patient under the IPP"
    );
    assert_eq!(
        engine
            .store
            .instances_of(TENANT, &ins)
            .await
            .expect("rows")
            .len(),
        1
    );
    assert_eq!(nats.stats().relinked.load(Ordering::Relaxed), 1);
    assert_eq!(nats.stats().retried.load(Ordering::Relaxed), 0);
    assert_eq!(stream_len(&nats, STREAM_DLQ).await, 0);

    stop_consuming((token, tracker)).await;
    engine.stop().await;
}

/// A message on the inbound stream that no partition's consumer takes — published on a
/// partition beyond the deployment's count (a publisher configured with more), or on a
/// subject off the scheme — would wait there for ever: the owner of partition 0 finds
/// it at its audit, dead-letters it with the reason and deletes it.
async fn messages_no_partition_takes_are_dead_lettered_not_left_in_the_stream(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let js = nats.jetstream();
    let partitions = nats.config().partitions;
    let beyond = format!(
        "parcours.{TENANT}.in.{}.encounter.discharged",
        partition_token(partitions + 3)
    );
    js.publish(
        beyond.clone(),
        serde_json::to_vec(&discharge(1)).expect("json").into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    js.publish(
        format!("parcours.{TENANT}.in.discharges"),
        serde_json::to_vec(&discharge(2)).expect("json").into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    nats.publish_inbound(&discharge(3))
        .await
        .expect("published");
    eventually(
        Duration::from_secs(30),
        "the two orphans dead-lettered and gone from the inbound stream",
        || async {
            stream_len(&nats, STREAM_DLQ).await == 2 && stream_len(&nats, STREAM_IN).await == 0
        },
    )
    .await;
    let letters = read_stream(&nats, STREAM_DLQ).await;
    for l in &letters {
        assert_eq!(l.subject, format!("parcours.{TENANT}.dlq"));
        assert_eq!(l.headers["Parcours-Stage"], "routing");
        assert_eq!(l.headers["Parcours-Deliveries"], "0");
    }
    let on_partition = letters
        .iter()
        .find(|l| l.headers["Parcours-Origin-Subject"] == beyond)
        .expect("the one beyond the count");
    assert!(
        on_partition.headers["Parcours-Reason"].contains(&format!("{partitions} partitions")),
        "{:?}",
        on_partition.headers
    );
    // The good one went through; the orphans reached no instance.
    let ids = engine.inbound_ids().await;
    assert!(ids.contains_key("adt-3"), "{ids:?}");
    assert!(
        !ids.contains_key("adt-1") && !ids.contains_key("adt-2"),
        "{ids:?}"
    );
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
    stop_consuming(loops).await;
}

async fn poison_messages_are_dead_lettered_once(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let js = nats.jetstream();
    let partitions = nats.config().partitions;
    let subject_of = |e: &Event| {
        format!(
            "parcours.{}.in.{}.{}",
            e.tenant,
            partition_token(partition_of(&e.tenant, &e.subject, partitions)),
            e.event_type()
        )
    };
    // Not JSON at all.
    js.publish(
        format!("parcours.{TENANT}.in.p00.encounter.discharged"),
        "MSH|^~\\&|not json".into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    // parcours's own event type, from outside.
    let mut internal = discharge(7);
    internal.id = "internal-1".into();
    internal.data = EventData::from_json(
        EventType::TimerFired,
        serde_json::json!({"timer_id": "t-1"}),
    )
    .expect("payload");
    js.publish(
        subject_of(&internal),
        serde_json::to_vec(&internal).expect("json").into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    // An event for another tenant on this tenant's subject.
    let mut foreign = discharge(8);
    foreign.id = "foreign-1".into();
    let subject = subject_of(&foreign);
    foreign.tenant = "cpts-other".into();
    js.publish(subject, serde_json::to_vec(&foreign).expect("json").into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    // And a good one.
    nats.publish_inbound(&discharge(9))
        .await
        .expect("published");

    eventually(Duration::from_secs(20), "three dead letters", || async {
        stream_len(&nats, STREAM_DLQ).await == 3
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the good event committed",
        || async { engine.inbound_ids().await.contains_key("adt-9") },
    )
    .await;
    let letters = read_stream(&nats, STREAM_DLQ).await;
    assert_eq!(letters.len(), 3);
    for l in &letters {
        assert_eq!(l.subject, format!("parcours.{TENANT}.dlq"));
        assert_eq!(l.headers["Parcours-Stage"], "decode");
        assert_eq!(l.headers["Parcours-Deliveries"], "1");
        assert!(l.headers["Parcours-Origin-Subject"].starts_with("parcours.cpts-test.in.p"));
    }
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.headers["Parcours-Reason"].as_str())
        .collect();
    let garbage = letters
        .iter()
        .find(|l| l.headers["Parcours-Reason"].contains("not a CloudEvents JSON"))
        .expect("the undecodable message, with its reason");
    assert_eq!(garbage.payload, b"MSH|^~\\&|not json", "kept as it came");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`timer.fired` events are emitted by parcours"))
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("differs from the subject's tenant"))
    );
    assert!(
        letters
            .iter()
            .any(|l| l.headers.get("Parcours-Event-Id").map(String::as_str) == Some("foreign-1"))
    );

    // Terminated, not redelivered: nothing pending anywhere, nothing dead-lettered twice.
    eventually(Duration::from_secs(10), "no message pending", || async {
        let mut s = js.get_stream(STREAM_IN).await.expect("in");
        let mut pending = 0;
        for p in 0..partitions {
            let c = s.consumer_info(consumer_name(p)).await.expect("consumer");
            pending += c.num_ack_pending + c.num_pending as usize + c.num_redelivered;
        }
        pending == 0 && s.info().await.expect("info").state.messages == 0
    })
    .await;
    assert_eq!(nats.stats().dead_lettered.load(Ordering::Relaxed), 3);
    assert!(!engine.inbound_ids().await.contains_key("internal-1"));
    assert!(!engine.inbound_ids().await.contains_key("foreign-1"));

    stop_consuming(loops).await;
    engine.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

/// The engine, except that any batch holding `poison` fails as a store failure would.
/// Remembers the ids of each successful submission, in order.
#[derive(Clone)]
struct FailsOn {
    inner: Handle,
    poison: String,
    attempts: Arc<AtomicUsize>,
    calls: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl Ingest for FailsOn {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventResult>, SubmitError> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        if ids.contains(&self.poison) {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(vec![self.poison.clone()]);
            }
            return Err(SubmitError::Unavailable("constraint failed".into()));
        }
        let r = self.inner.submit(events).await;
        if r.is_ok()
            && let Ok(mut calls) = self.calls.lock()
        {
            calls.push(ids);
        }
        r
    }
    fn store_failing(&self) -> bool {
        Ingest::store_failing(&self.inner)
    }
    fn probe(&self) {
        self.inner.probe();
    }
}

async fn refused_bodies_are_kept_in_the_log_not_in_the_dlq(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    InboundConsumer::new(nats.clone(), engine.handle.clone())
        .keeping_dead_letters(Arc::new(engine.store.clone()))
        .spawn(
            (0..nats.config().partitions).map(|p| (p, token.child_token())),
            &tracker,
        );
    let js = nats.jetstream();
    // An integration publishing what it should not: a name, unpseudonymised.
    let raw = br#"{"patient": "DURAND Ginette", "ipp": "IPP-0042"}"#;
    js.publish(
        format!("parcours.{TENANT}.in.p00.encounter.discharged"),
        raw.to_vec().into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    // And a canonical event with a name where a list belongs: serde's own message
    // would quote it (`invalid type: string "DURAND Ginette", expected a sequence`).
    let mut typed = serde_json::to_value(discharge(8)).expect("json");
    typed["data"]["diagnoses"] = serde_json::json!("DURAND Ginette 1950-03-12");
    js.publish(
        format!("parcours.{TENANT}.in.p00.encounter.discharged"),
        serde_json::to_vec(&typed).expect("json").into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    nats.publish_inbound(&discharge(9))
        .await
        .expect("published");
    eventually(Duration::from_secs(20), "two dead letters", || async {
        stream_len(&nats, STREAM_DLQ).await == 2
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the good event committed",
        || async { engine.inbound_ids().await.contains_key("adt-9") },
    )
    .await;
    let kept = engine
        .store
        .dead_letters(0, 10)
        .await
        .expect("dead letters");
    assert_eq!(kept.len(), 2, "{kept:?}");
    for k in &kept {
        assert!(
            !k.letter.reason.contains("DURAND"),
            "a dead letter's reason quotes the body: {}",
            k.letter.reason
        );
    }
    assert!(
        kept.iter()
            .any(|k| k.letter.reason.contains(
                "`data.diagnoses`: a string where a sequence is expected (line 1, column "
            )),
        "the path, the expected type and the position are kept: {kept:?}"
    );
    let k = kept
        .iter()
        .find(|k| k.letter.payload == raw.to_vec())
        .expect("the first body kept");
    assert_eq!(
        k.letter.source,
        format!("nats:parcours.{TENANT}.in.p00.encounter.discharged")
    );
    assert_eq!(k.letter.tenant.as_deref(), Some(TENANT));
    assert!(k.letter.reason.contains("not a CloudEvents JSON"), "{k:?}");
    let letters = read_stream(&nats, STREAM_DLQ).await;
    assert_eq!(letters.len(), 2, "two DLQ messages");
    let l = letters
        .iter()
        .find(|l| l.headers["Parcours-Dead-Letter"] == k.id.to_string())
        .expect("the first body's DLQ message");
    assert_eq!(l.subject, format!("parcours.{TENANT}.dlq"));
    assert!(l.payload.is_empty(), "the body is not in the DLQ stream");
    assert_eq!(l.headers["Parcours-Dead-Letter"], k.id.to_string());
    assert_eq!(l.headers["Parcours-Stage"], "decode");
    for l in &letters {
        for h in l.headers.values() {
            assert!(!h.contains("DURAND") && !h.contains("IPP-0042"), "{h}");
        }
    }
    // Terminated once: no redelivery, no second letter.
    eventually(
        Duration::from_secs(10),
        "the original terminated",
        || async { stream_len(&nats, STREAM_IN).await == 0 },
    )
    .await;
    assert_eq!(nats.stats().dead_lettered.load(Ordering::Relaxed), 2);
    assert_eq!(
        engine
            .store
            .dead_letters(0, 10)
            .await
            .expect("dead letters")
            .len(),
        2
    );
    stop_consuming((token, tracker)).await;
    engine.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

async fn a_message_failing_alone_is_dead_lettered_after_max_attempts(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let ingest = FailsOn {
        inner: engine.handle.clone(),
        poison: "adt-5".into(),
        attempts: Arc::default(),
        calls: Arc::default(),
    };
    let mut events: Vec<Event> = (0..12).map(discharge).collect();
    // A later event of the poisoned patient: it must wait behind the poison.
    let mut follow_up = discharge(5);
    follow_up.id = "consent-5".into();
    follow_up.data =
        EventData::from_json(EventType::ConsentGiven, serde_json::json!({})).expect("payload");
    events.push(follow_up);
    // Published before the consumers start, so the poison shares a batch with others.
    let published = nats.publish_inbound_all(&events).await;
    assert!(published.iter().all(Result::is_ok));
    let loops = consume(&nats, ingest.clone());

    eventually(
        Duration::from_secs(20),
        "the poison dead-lettered",
        || async { stream_len(&nats, STREAM_DLQ).await == 1 },
    )
    .await;
    eventually(Duration::from_secs(20), "the others committed", || async {
        engine.inbound_ids().await.len() == 12
    })
    .await;
    let letters = read_stream(&nats, STREAM_DLQ).await;
    let l = &letters[0];
    assert_eq!(l.headers["Parcours-Stage"], "attempts");
    assert_eq!(l.headers["Parcours-Deliveries"], "3");
    assert_eq!(l.headers["Parcours-Event-Id"], "adt-5");
    assert!(l.headers["Parcours-Reason"].contains("constraint failed"));
    assert!(!engine.inbound_ids().await.contains_key("adt-5"));
    eventually(
        Duration::from_secs(10),
        "the work queue emptied",
        || async { stream_len(&nats, STREAM_IN).await == 0 },
    )
    .await;
    // At each of deliveries 1, 2 and 3: in a batch (with its patient's later event, held
    // back with it), then alone.
    assert_eq!(ingest.attempts.load(Ordering::Relaxed), 6);
    // The patient's later event was committed only after the poison's last attempt.
    let calls = ingest.calls.lock().expect("calls").clone();
    let last_poison = calls.iter().rposition(|c| c.contains(&"adt-5".to_string()));
    let follow_up = calls
        .iter()
        .position(|c| c.contains(&"consent-5".to_string()));
    assert!(
        matches!((last_poison, follow_up), (Some(p), Some(f)) if p < f),
        "{calls:?}"
    );

    stop_consuming(loops).await;
    engine.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

/// The engine, except that the first reply is lost after the commit (as if the process
/// acknowledging the message had died between commit and ack).
#[derive(Clone)]
struct LosesFirstReply {
    inner: Handle,
    lost: Arc<AtomicBool>,
    duplicates: Arc<AtomicUsize>,
}

impl Ingest for LosesFirstReply {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventResult>, SubmitError> {
        let results = self.inner.submit(events).await?;
        let dups = results
            .iter()
            .filter(|r| matches!(r, Ok(parcours_runtime::IngestOutcome::Duplicate)))
            .count();
        self.duplicates.fetch_add(dups, Ordering::Relaxed);
        if !self.lost.swap(true, Ordering::Relaxed) {
            return Err(SubmitError::Unavailable("reply lost".into()));
        }
        Ok(results)
    }
    fn store_failing(&self) -> bool {
        Ingest::store_failing(&self.inner)
    }
    fn probe(&self) {
        self.inner.probe();
    }
}

async fn redelivery_after_a_lost_reply_makes_no_duplicate_effect(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let ingest = LosesFirstReply {
        inner: engine.handle.clone(),
        lost: Arc::default(),
        duplicates: Arc::default(),
    };
    let loops = consume(&nats, ingest.clone());
    nats.publish_inbound(&discharge(1))
        .await
        .expect("published");

    eventually(
        Duration::from_secs(20),
        "the redelivery acknowledged",
        || async {
            ingest.duplicates.load(Ordering::Relaxed) == 1
                && stream_len(&nats, STREAM_IN).await == 0
        },
    )
    .await;
    eventually(Duration::from_secs(20), "effects relayed", || async {
        engine.relay_lag().await == 0
    })
    .await;
    assert_eq!(engine.inbound_ids().await.get("adt-1"), Some(&1));
    let log_effects = engine.effect_ids().await;
    let out = by_msg_id(&read_stream(&nats, STREAM_OUT).await);
    assert!(!log_effects.is_empty());
    assert_eq!(out, log_effects, "each effect once, as in the log");
    let stats = nats.stats();
    assert_eq!(stats.retried.load(Ordering::Relaxed), 1);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);

    stop_consuming(loops).await;
    engine.stop().await;
}

/// The engine during a short store outage: the first submission fails, and the store
/// reports failing until a submission succeeds.
#[derive(Clone)]
struct OutageFirst {
    inner: Handle,
    failures_left: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Ingest for OutageFirst {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventResult>, SubmitError> {
        let left = self.failures_left.load(Ordering::Relaxed);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::Relaxed);
            self.failing.store(true, Ordering::Relaxed);
            return Err(SubmitError::Unavailable("database unreachable".into()));
        }
        let r = self.inner.submit(events).await;
        self.failing.store(r.is_err(), Ordering::Relaxed);
        r
    }
    fn store_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
    fn probe(&self) {}
}

async fn a_transient_failure_keeps_a_patients_order(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let ingest = OutageFirst {
        inner: engine.handle.clone(),
        failures_left: Arc::new(AtomicUsize::new(1)),
        failing: Arc::default(),
    };
    let loops = consume(&nats, ingest.clone());
    let weight = |n: usize| weight_of(1, format!("obs-{n}"), 80.0 + n as f64);
    nats.publish_inbound(&weight(0)).await.expect("published");
    eventually(
        Duration::from_secs(10),
        "the first commit failing",
        || async { ingest.failures_left.load(Ordering::Relaxed) == 0 },
    )
    .await;
    // Newer events of the same patient arrive while the first waits for its retry.
    let later: Vec<Event> = (1..6).map(weight).collect();
    assert!(
        nats.publish_inbound_all(&later)
            .await
            .iter()
            .all(Result::is_ok)
    );

    eventually(Duration::from_secs(20), "all six committed", || async {
        engine.inbound_ids().await.len() == 6
    })
    .await;
    let order = inbound_order(&engine).await;
    let expected: Vec<String> = (0..6).map(|n| format!("obs-{n}")).collect();
    assert_eq!(
        order, expected,
        "committed in the order they were published"
    );
    assert_eq!(nats.stats().retried.load(Ordering::Relaxed), 1);

    stop_consuming(loops).await;
    engine.stop().await;
}

/// The engine, except that a submission holding one patient's events waits until the
/// gate opens; every submission's event ids are noted in order.
#[derive(Clone)]
struct Gate {
    inner: Handle,
    subject: String,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<AtomicUsize>,
    submitted: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Ingest for Gate {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventResult>, SubmitError> {
        self.submitted
            .lock()
            .expect("lock")
            .extend(events.iter().map(|e| e.id.clone()));
        if events.iter().any(|e| e.subject == self.subject) {
            self.held.fetch_add(1, Ordering::Relaxed);
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
        self.inner.submit(events).await
    }
    fn store_failing(&self) -> bool {
        false
    }
    fn probe(&self) {}
}

/// Two patients of one partition: while the first one's batch is with the engine (its
/// commit slow), the second one's event is handed over and committed; the first one's
/// next event waits for its answer, and the log keeps each patient's order.
async fn a_slow_commit_holds_up_only_its_own_patient(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let partitions = nats.config().partitions;
    let slow = 1;
    let partition = partition_of(TENANT, &discharge(slow).subject, partitions);
    let other = (2..1000)
        .find(|i| partition_of(TENANT, &discharge(*i).subject, partitions) == partition)
        .expect("a patient of the same partition");
    let gate = Gate {
        inner: engine.handle.clone(),
        subject: discharge(slow).subject,
        open: Arc::new(tokio::sync::watch::channel(false).0),
        held: Arc::default(),
        submitted: Arc::default(),
    };
    let loops = consume(&nats, gate.clone());
    nats.publish_inbound(&discharge(slow))
        .await
        .expect("published");
    eventually(Duration::from_secs(10), "the slow commit begun", || async {
        gate.held.load(Ordering::Relaxed) == 1
    })
    .await;
    let later = weight_of(slow, "obs-slow".into(), 81.0);
    nats.publish_inbound(&later).await.expect("published");
    nats.publish_inbound(&discharge(other))
        .await
        .expect("published");
    eventually(
        Duration::from_secs(10),
        "the other patient committed while the first waits",
        || async {
            engine
                .inbound_ids()
                .await
                .contains_key(&format!("adt-{other}"))
        },
    )
    .await;
    assert!(
        !gate.submitted.lock().expect("lock").contains(&later.id),
        "a patient's next event waits for the answer to its batch in flight"
    );
    assert!(!engine.inbound_ids().await.contains_key("adt-1"));

    gate.open.send_replace(true);
    eventually(Duration::from_secs(10), "all three committed", || async {
        engine.inbound_ids().await.len() == 3
    })
    .await;
    let order = inbound_order(&engine).await;
    assert_eq!(
        order,
        [format!("adt-{other}"), "adt-1".into(), "obs-slow".into()]
    );
    assert_eq!(nats.stats().retried.load(Ordering::Relaxed), 0);

    stop_consuming(loops).await;
    engine.stop().await;
}

async fn server_restart_mid_stream_loses_and_duplicates_nothing(bin: ServerBin) {
    const N: usize = 150;
    let mut server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let committed = engine.handle.health().clone();

    // The publisher keeps at most 20 events ahead of the engine until the server is
    // killed, then publishes the rest at once, retrying what NATS did not confirm (as
    // the HTTP API's caller would).
    let killed = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (nats, committed) = (nats.clone(), committed.clone());
        let (killed, failures) = (killed.clone(), failures.clone());
        tokio::spawn(async move {
            for i in 0..N {
                while !killed.load(Ordering::Relaxed)
                    && (i as u64) > committed.committed.load(Ordering::Relaxed) + 20
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                loop {
                    match nats.publish_inbound(&discharge(i)).await {
                        Ok(_) => break,
                        Err(PublishError::Unavailable(_)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
    };

    eventually(Duration::from_secs(20), "a third committed", || async {
        committed.committed.load(Ordering::Relaxed) >= (N / 3) as u64
    })
    .await;
    server.kill();
    killed.store(true, Ordering::Relaxed);
    let at_kill = committed.committed.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "the client noticing", || async {
        !nats.is_connected()
    })
    .await;
    eventually(Duration::from_secs(10), "a publish failing", || async {
        failures.load(Ordering::Relaxed) > 0
    })
    .await;
    server.restart().await;
    publisher.await.expect("publisher");
    let failures = failures.load(Ordering::Relaxed);

    eventually(Duration::from_secs(40), "every event committed", || async {
        engine.inbound_ids().await.len() == N
    })
    .await;
    eventually(Duration::from_secs(30), "every effect relayed", || async {
        engine.relay_lag().await == 0
            && by_msg_id(&read_stream(&nats, STREAM_OUT).await).len()
                == engine.effect_ids().await.len()
    })
    .await;
    assert!(at_kill < N as u64, "the server was killed mid-stream");
    let inbound = engine.inbound_ids().await;
    assert!(inbound.values().all(|n| *n == 1));
    let expected: BTreeSet<String> = (0..N).map(|i| format!("adt-{i}")).collect();
    assert_eq!(inbound.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let log_effects = engine.effect_ids().await;
    let reads = read_stream(&nats, STREAM_OUT).await;
    let out = by_msg_id(&reads);
    assert_eq!(
        out.keys().collect::<BTreeSet<_>>(),
        log_effects.keys().collect::<BTreeSet<_>>(),
        "the effects in PARCOURS_OUT are the log's"
    );
    assert_eq!(reads.len(), log_effects.len(), "each effect id stored once");
    assert_eq!(stream_len(&nats, STREAM_DLQ).await, 0);
    eprintln!(
        "restart on {}: killed at {at_kill}/{N} committed, {failures} publish retries, \
         {} duplicates acked, {} effects",
        bin.version,
        nats.stats().duplicates.load(Ordering::Relaxed),
        log_effects.len()
    );

    stop_consuming(loops).await;
    engine.stop().await;
}

/// A partition consumer with nothing to deliver and nothing awaiting an ack while the work
/// queue still holds messages of its partition is found out — by reading the stream by
/// sequence, past another partition's message — and the messages published again are
/// delivered by the same consumer in their order, the originals gone. The state is made here with a consumer that gives up
/// on a message after one delivery (`max_deliver` 1, the message handed back): the server
/// then leaves it in the work queue, undelivered for good. (On NATS 2.9.10 the chaos test
/// met it without `max_deliver`: the server's look-ups by subject filter missed the
/// message.)
async fn a_message_the_consumer_would_never_deliver_is_found_and_published_again(bin: ServerBin) {
    use async_nats::jetstream::AckKind;

    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    let js = nats.jetstream();
    let publish = |partition: u16, body: &'static str| {
        let subject = format!(
            "parcours.cpts.in.{}.consent.given",
            partition_token(partition)
        );
        async move {
            js.publish(subject, body.into())
                .await
                .expect("sent")
                .await
                .expect("stored")
                .sequence
        }
    };
    // Another partition's message first: the walk by sequence goes past it.
    let other = publish(2, "other").await;
    // m0 as a forwarding engine publishes (a reply asked for, its message id the event
    // id), m1 as a copy for a linked national key (`parcours-linked:`, its event id
    // apart).
    let with_headers = |body: &'static str, headers: &[(&str, &str)]| {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        async move {
            js.publish_with_headers("parcours.cpts.in.p01.consent.given", h, body.into())
                .await
                .expect("sent")
                .await
                .expect("stored")
                .sequence
        }
    };
    let sequences = [
        with_headers(
            "m0",
            &[
                ("Nats-Msg-Id", "evt-m0"),
                ("Parcours-Reply", "_INBOX.fwd.1"),
            ],
        )
        .await,
        with_headers(
            "m1",
            &[
                ("Nats-Msg-Id", "parcours-linked:evt-m1"),
                ("Parcours-Event-Id", "evt-m1"),
            ],
        )
        .await,
        publish(1, "m2").await,
    ];
    assert_eq!(
        nats.lost_messages(1).await.expect("checked"),
        Vec::<u64>::new(),
        "no consumer yet"
    );
    let mut once = consumer_config(&nats.config().consumer, 1);
    once.max_deliver = 1;
    let inbound = js.get_stream(STREAM_IN).await.expect("in");
    let consumer = inbound.create_consumer(once).await.expect("consumer");
    for s in &sequences[..2] {
        assert_eq!(answer_next(&consumer, AckKind::Nak(None)).await, *s);
    }
    assert_eq!(
        nats.lost_messages(1).await.expect("checked"),
        Vec::<u64>::new(),
        "the next message is still to be delivered"
    );
    assert_eq!(answer_next(&consumer, AckKind::Ack).await, sequences[2]);
    assert_eq!(
        nats.lost_messages(1).await.expect("checked"),
        sequences[..2],
        "the first two are in the stream, below what the consumer delivered"
    );
    let mut copies = Vec::new();
    for s in &sequences[..2] {
        let copy = nats
            .publish_lost_again(*s)
            .await
            .expect("published again")
            .expect("a copy");
        assert!(copy > sequences[2], "at the stream's end: {copy}");
        copies.push(copy);
    }
    for (copy, (original, body)) in copies.iter().zip(sequences.iter().zip(["m0", "m1"])) {
        let delivered = fetch_one(&consumer).await;
        assert_eq!(delivered.info().expect("info").stream_sequence, *copy);
        assert_eq!(&delivered.payload[..], body.as_bytes(), "in their order");
        let header = |name: &str| {
            delivered
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        assert_eq!(header(HEADER_LOST_SEQUENCE), Some(original.to_string()));
        // Its event still named for the forwarder; a link's copy still a copy.
        let (event, id_prefix) = match body {
            "m0" => ("evt-m0", "lost-"),
            _ => ("evt-m1", "parcours-linked:lost-"),
        };
        assert_eq!(header("Parcours-Event-Id").as_deref(), Some(event));
        assert!(
            header("Nats-Msg-Id").is_some_and(|id| id.starts_with(id_prefix)),
            "{:?}",
            header("Nats-Msg-Id")
        );
        delivered.ack().await.expect("acked");
        assert!(
            inbound.get_raw_message(*original).await.is_err(),
            "the original deleted"
        );
    }
    assert_eq!(
        nats.publish_lost_again(sequences[0]).await.expect("asked"),
        None,
        "gone: nothing to publish again"
    );
    assert_eq!(
        nats.lost_messages(1).await.expect("checked"),
        Vec::<u64>::new(),
        "all delivered"
    );
    assert!(
        inbound.get_raw_message(other).await.is_ok(),
        "the other partition's message untouched"
    );
}

/// The partition's loop finds out, once the partition is idle, that its consumer would
/// never deliver a message, publishes it again, and the event is committed. The state is made
/// with consumers that give up after four deliveries (`max_deliver` 4, which the loop's
/// consumer keeps) and a message handed back four times before the loop starts.
async fn a_partition_loop_gets_a_lost_message_back_by_itself(bin: ServerBin) {
    use async_nats::jetstream::AckKind;

    let server = NatsServer::start(&bin).await;
    let mut settings = config(&server);
    settings.consumer.max_deliver = 4;
    let nats = connect(settings).await;
    nats.ensure_streams().await.expect("streams");
    let event = discharge(7);
    let p = partition_of(&event.tenant, &event.subject, nats.config().partitions);
    let (consumer, _) = nats.ensure_consumer(p).await.expect("consumer");
    let published = nats.publish_inbound(&event).await.expect("published");
    for _ in 0..4 {
        assert_eq!(
            answer_next(&consumer, AckKind::Nak(None)).await,
            published.sequence
        );
    }

    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    eventually(
        Duration::from_secs(30),
        "the lost event committed",
        || async { engine.inbound_ids().await.len() == 1 },
    )
    .await;
    assert_eq!(nats.stats().lost_published_again.load(Ordering::Relaxed), 1);
    assert_eq!(
        nats.lost_messages(p).await.expect("checked"),
        Vec::<u64>::new(),
        "message {} delivered",
        published.sequence
    );
    stop_consuming(loops).await;
    engine.stop().await;
}

/// Fetch the next message of `consumer` and answer it with `answer`: its stream sequence.
async fn answer_next(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    answer: async_nats::jetstream::AckKind,
) -> u64 {
    let m = fetch_one(consumer).await;
    let sequence = m.info().expect("a JetStream message").stream_sequence;
    m.double_ack_with(answer).await.expect("answered");
    sequence
}

/// The next message of `consumer` (within 2 s).
async fn fetch_one(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> async_nats::jetstream::Message {
    use futures::StreamExt as _;

    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    batch.next().await.expect("a message").expect("delivered")
}
