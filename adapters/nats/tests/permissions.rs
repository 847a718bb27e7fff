//! The shipped users and permissions (`deploy/nats/accounts.example.conf`, included as it
//! is) on real `nats-server` processes, once on NATS 2.9 and once on a current 2.1x:
//! the engine runs parcours with its credentials (topology, consuming, effects), tenant A's
//! hospital and care-team system do their part, and tenant B's users are refused every
//! subject of tenant A's — each refusal asserted as the server's permission violation.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::response::Response;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event as ClientEvent, ServerError};
use futures::StreamExt;
use parcours_core::events::Event;
use parcours_nats::config::{Auth, Secret};
use parcours_nats::subject::{fhir_subject, inbound_subject};
use parcours_nats::{Ensured, STREAM_DLQ, STREAM_FHIR, STREAM_IN, STREAM_OUT};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use support::*;

on_both_servers!(the_shipped_permissions_keep_tenants_apart);

/// The users of the shipped file, and the test's passwords for them.
const ENGINE: (&str, &str, &str) = ("parcours-engine", "PARCOURS_ENGINE_PASSWORD", "engine-pw");
const A_HOSPITAL: (&str, &str, &str) = (
    "cpts-a-hospital",
    "CPTS_A_HOSPITAL_PASSWORD",
    "a-hospital-pw",
);
const A_WORKLIST: (&str, &str, &str) = (
    "cpts-a-worklist",
    "CPTS_A_WORKLIST_PASSWORD",
    "a-worklist-pw",
);
const B_HOSPITAL: (&str, &str, &str) = (
    "cpts-b-hospital",
    "CPTS_B_HOSPITAL_PASSWORD",
    "b-hospital-pw",
);
const B_WORKLIST: (&str, &str, &str) = (
    "cpts-b-worklist",
    "CPTS_B_WORKLIST_PASSWORD",
    "b-worklist-pw",
);
const USERS: [(&str, &str, &str); 5] = [ENGINE, A_HOSPITAL, A_WORKLIST, B_HOSPITAL, B_WORKLIST];

fn shipped_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/accounts.example.conf")
}

/// A client of one of the shipped users, with its own inbox prefix (`_INBOX_<user>`), and
/// the server's errors (`-ERR`) it receives.
struct User {
    client: Client,
    js: async_nats::jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl User {
    async fn connect(server: &NatsServer, (user, _, password): (&str, &str, &str)) -> User {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = ConnectOptions::with_user_and_password(user.into(), password.into())
            .custom_inbox_prefix(format!("_INBOX_{user}"))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let ClientEvent::ServerError(e) = event {
                        let text = match e {
                            ServerError::Other(text) => text,
                            other => other.to_string(),
                        };
                        let _ = tx.send(text);
                    }
                }
            })
            .connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        // Refused requests get no answer: wait for the violation, not for long.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(client.clone());
        User { client, js, errors }
    }

    /// Wait (bounded) for the server's permission violation on `subject`.
    async fn refused(&mut self, what: &str, subject: &str) {
        let expected = format!("Permissions Violation for {what} to \"{subject}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(e)) if e.starts_with(&expected) => return,
                Ok(Some(e)) => seen.push(e),
                Ok(None) | Err(_) => {
                    panic!("no `{expected}` from the server; errors seen: {seen:?}")
                }
            }
        }
    }

    /// No permission violation so far (called after answered requests: the server sends
    /// an `-ERR` before the answers to later requests).
    fn nothing_refused(&mut self) {
        assert!(
            self.errors.try_recv().is_err(),
            "unexpected server error for an allowed operation"
        );
    }
}

fn event_of(tenant: &str, i: usize) -> Event {
    let mut e = discharge(i);
    e.tenant = tenant.into();
    e.id = format!("{tenant}-adt-{i}");
    e
}

/// Fetch what a consumer holds until `n` messages arrived (bounded), acknowledging each
/// with a confirmation; returns their subjects and `Nats-Msg-Id`s.
async fn read_all(consumer: &PullConsumer, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages: {out:?}",
            out.len()
        );
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((m.subject.to_string(), id));
            m.double_ack().await.expect("ack confirmed");
        }
    }
    out
}

fn worklist_config(name: &str, filter: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    }
}

async fn the_shipped_permissions_keep_tenants_apart(bin: ServerBin) {
    let env: Vec<(&str, &str)> = USERS.iter().map(|(_, var, pw)| (*var, *pw)).collect();
    let server = NatsServer::start_including(&bin, &shipped_file(), &env).await;

    // No anonymous access, no wrong password.
    let anonymous = ConnectOptions::new().connect(server.url()).await;
    let err = anonymous.expect_err("anonymous clients are refused");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    let wrong = ConnectOptions::with_user_and_password(A_HOSPITAL.0.into(), ENGINE.2.into())
        .connect(server.url())
        .await;
    let err = wrong.expect_err("a wrong password is refused");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    // The engine's start, which waits for a server that does not answer yet, does not
    // wait on a refusal: the wrong password stops it at once, saying why.
    let mut wrong_config = config(&server);
    wrong_config.connection.auth = Auth::UserPassword {
        user: ENGINE.0.into(),
        password: Secret::new(A_HOSPITAL.2),
    };
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        parcours_nats::Nats::connect_waiting(wrong_config),
    )
    .await
    .expect("an answer, not a wait")
    .expect_err("refused");
    assert!(
        matches!(&refused, parcours_nats::NatsError::Connect(m) if m.contains("authorization")),
        "{refused}"
    );

    // The engine, with its credentials: topology, consumers, the real engine.
    let mut engine_config = config(&server);
    engine_config.connection.auth = Auth::UserPassword {
        user: ENGINE.0.into(),
        password: Secret::new(ENGINE.2),
    };
    let nats = connect(engine_config).await;
    let streams = nats.ensure_streams().await.expect("streams, as the engine");
    assert!(
        streams.iter().all(|(_, e)| *e == Ensured::Created),
        "{streams:?}"
    );
    let (_, fhir) = nats
        .ensure_fhir()
        .await
        .expect("FHIR stream, as the engine");
    assert_eq!(fhir, Ensured::Created);
    let consumers = nats.ensure_consumers().await.expect("consumers");
    assert!(consumers.iter().all(|(_, e)| *e == Ensured::Created));
    let engine = Running::start(&nats).await;
    let loops = consume(&nats, engine.handle.clone());
    let partitions = nats.config().partitions;

    let mut a_hospital = User::connect(&server, A_HOSPITAL).await;
    let mut a_worklist = User::connect(&server, A_WORKLIST).await;
    let mut b_hospital = User::connect(&server, B_HOSPITAL).await;
    let mut b_worklist = User::connect(&server, B_WORKLIST).await;

    // Each hospital publishes into its own tenant: stored, committed by the engine.
    let a_events: Vec<Event> = (0..3).map(|i| event_of("cpts-a", i)).collect();
    let b_events: Vec<Event> = (0..2).map(|i| event_of("cpts-b", i)).collect();
    for (user, events) in [(&a_hospital, &a_events), (&b_hospital, &b_events)] {
        for e in events {
            let subject = inbound_subject(e, partitions).expect("subject");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            let ack = user
                .js
                .publish_with_headers(
                    subject,
                    headers,
                    serde_json::to_vec(e).expect("json").into(),
                )
                .await
                .expect("sent")
                .await
                .expect("stored");
            assert_eq!(ack.stream, STREAM_IN);
        }
    }
    let ack = a_hospital
        .js
        .publish(fhir_subject("cpts-a").expect("subject"), "{}".into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    assert_eq!(ack.stream, STREAM_FHIR);
    a_hospital.nothing_refused();
    b_hospital.nothing_refused();

    eventually(Duration::from_secs(30), "every event committed", || async {
        engine.inbound_ids().await.len() == a_events.len() + b_events.len()
    })
    .await;
    eventually(Duration::from_secs(30), "every effect relayed", || async {
        engine.relay_lag().await == 0
    })
    .await;
    let effects = engine.effect_ids().await;
    let out = read_stream(&nats, STREAM_OUT).await;
    let of_tenant = |t: &str| -> BTreeSet<String> {
        out.iter()
            .filter(|r| r.subject.starts_with(&format!("parcours.{t}.out.")))
            .map(|r| r.headers["Nats-Msg-Id"].clone())
            .collect()
    };
    let (a_effects, b_effects) = (of_tenant("cpts-a"), of_tenant("cpts-b"));
    assert!(!a_effects.is_empty() && !b_effects.is_empty(), "{out:?}");
    assert_eq!(a_effects.len() + b_effects.len(), effects.len());

    // Tenant A's care-team system: its consumer, its tenant's effects, nothing else.
    let a_consumer: PullConsumer = a_worklist
        .js
        .create_consumer_on_stream(
            worklist_config("cpts-a-worklist", "parcours.cpts-a.out.>"),
            STREAM_OUT,
        )
        .await
        .expect("tenant A's care-team system creates its consumer");
    let read = read_all(&a_consumer, a_effects.len()).await;
    assert!(
        read.iter()
            .all(|(s, _)| s.starts_with("parcours.cpts-a.out.")),
        "{read:?}"
    );
    assert_eq!(
        read.into_iter().map(|(_, id)| id).collect::<BTreeSet<_>>(),
        a_effects
    );
    // Opening it again later (as after a restart) is allowed too.
    let mut again: PullConsumer = a_worklist
        .js
        .get_consumer_from_stream("cpts-a-worklist", STREAM_OUT)
        .await
        .expect("consumer info");
    assert_eq!(again.info().await.expect("info").num_ack_pending, 0);
    a_worklist.nothing_refused();

    // Tenant B's care-team system reads tenant B's effects the same way.
    let b_consumer: PullConsumer = b_worklist
        .js
        .create_consumer_on_stream(
            worklist_config("cpts-b-worklist", "parcours.cpts-b.out.>"),
            STREAM_OUT,
        )
        .await
        .expect("tenant B's care-team system creates its consumer");
    let read = read_all(&b_consumer, b_effects.len()).await;
    assert_eq!(
        read.into_iter().map(|(_, id)| id).collect::<BTreeSet<_>>(),
        b_effects
    );
    b_worklist.nothing_refused();

    // Tenant B's hospital cannot write into tenant A: refused, never acknowledged.
    let forged = event_of("cpts-a", 50);
    let subject = inbound_subject(&forged, partitions).expect("subject");
    let sent = b_hospital
        .js
        .publish(
            subject.clone(),
            serde_json::to_vec(&forged).expect("json").into(),
        )
        .await
        .expect("sent");
    b_hospital.refused("Publish", &subject).await;
    let err = sent.await.expect_err("no JetStream ack");
    assert_eq!(err.kind(), PublishErrorKind::TimedOut, "{err}");
    let fhir = fhir_subject("cpts-a").expect("subject");
    let sent = b_hospital
        .js
        .publish(fhir.clone(), "{}".into())
        .await
        .expect("sent");
    b_hospital.refused("Publish", &fhir).await;
    assert!(sent.await.is_err(), "no JetStream ack");
    // Nor read anything, nor use another user's replies.
    let _sub = b_hospital
        .client
        .subscribe("parcours.cpts-a.out.>")
        .await
        .expect("sent");
    b_hospital
        .refused("Subscription", "parcours.cpts-a.out.>")
        .await;

    // Tenant B's care-team system cannot read tenant A's effects…
    let _sub = b_worklist
        .client
        .subscribe("parcours.cpts-a.out.>")
        .await
        .expect("sent");
    b_worklist
        .refused("Subscription", "parcours.cpts-a.out.>")
        .await;
    // …nor other clients' replies (where tenant A's fetched effects arrive)…
    let _sub = b_worklist.client.subscribe("_INBOX.>").await.expect("sent");
    b_worklist.refused("Subscription", "_INBOX.>").await;
    let _sub = b_worklist
        .client
        .subscribe("_INBOX_cpts-a-worklist.>")
        .await
        .expect("sent");
    b_worklist
        .refused("Subscription", "_INBOX_cpts-a-worklist.>")
        .await;
    // …nor create a consumer on them, under its own name, tenant A's or none…
    for (name, subject) in [
        (
            Some("cpts-b-worklist"),
            "$JS.API.CONSUMER.CREATE.PARCOURS_OUT.cpts-b-worklist.parcours.cpts-a.out.>",
        ),
        (
            Some("cpts-a-worklist"),
            "$JS.API.CONSUMER.CREATE.PARCOURS_OUT.cpts-a-worklist.parcours.cpts-a.out.>",
        ),
        (None, "$JS.API.CONSUMER.CREATE.PARCOURS_OUT"),
    ] {
        let config = consumer::pull::Config {
            durable_name: name.map(String::from),
            ..worklist_config("x", "parcours.cpts-a.out.>")
        };
        let created = b_worklist
            .js
            .create_consumer_on_stream(config, STREAM_OUT)
            .await;
        assert!(created.is_err(), "{subject}");
        b_worklist.refused("Publish", subject).await;
    }
    // …nor smuggle tenant A's filter in the body of a create it may send: the server
    // checks the body's filter against the subject's.
    let answer: Response<consumer::Info> = b_worklist
        .js
        .request(
            "CONSUMER.CREATE.PARCOURS_OUT.cpts-b-worklist.parcours.cpts-b.out.>",
            &serde_json::json!({
                "stream_name": STREAM_OUT,
                "config": worklist_config("cpts-b-worklist", "parcours.cpts-a.out.>"),
            }),
        )
        .await
        .expect("answered");
    match answer {
        Response::Err { error } => assert_eq!(error.error_code().0, 10131, "{error}"),
        Response::Ok(info) => panic!("created with tenant A's filter: {info:?}"),
    }
    // …nor fetch from, or look at, tenant A's consumer…
    let next = "$JS.API.CONSUMER.MSG.NEXT.PARCOURS_OUT.cpts-a-worklist";
    b_worklist
        .client
        .publish_with_reply(next, "_INBOX_cpts-b-worklist.x", "1".into())
        .await
        .expect("sent");
    b_worklist.refused("Publish", next).await;
    assert!(
        b_worklist
            .js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>("cpts-a-worklist", STREAM_OUT)
            .await
            .is_err()
    );
    b_worklist
        .refused(
            "Publish",
            "$JS.API.CONSUMER.INFO.PARCOURS_OUT.cpts-a-worklist",
        )
        .await;
    // …nor learn anything from the stream (counts, subjects, messages)…
    assert!(b_worklist.js.get_stream(STREAM_OUT).await.is_err());
    b_worklist
        .refused("Publish", "$JS.API.STREAM.INFO.PARCOURS_OUT")
        .await;
    let _ = b_worklist
        .js
        .get_stream_no_info(STREAM_OUT)
        .await
        .expect("no request")
        .get_raw_message(1)
        .await
        .expect_err("refused");
    b_worklist
        .refused("Publish", "$JS.API.STREAM.MSG.GET.PARCOURS_OUT")
        .await;
    // …nor read tenant A's dead letters.
    let _sub = b_worklist
        .client
        .subscribe("parcours.cpts-a.dlq")
        .await
        .expect("sent");
    b_worklist
        .refused("Subscription", "parcours.cpts-a.dlq")
        .await;
    let created = b_worklist
        .js
        .create_consumer_on_stream(
            worklist_config("cpts-b-worklist", "parcours.cpts-a.dlq"),
            STREAM_DLQ,
        )
        .await;
    assert!(created.is_err());
    b_worklist
        .refused(
            "Publish",
            "$JS.API.CONSUMER.CREATE.PARCOURS_DLQ.cpts-b-worklist.parcours.cpts-a.dlq",
        )
        .await;

    // Nothing of B's attempts reached tenant A: the engine committed only the hospitals'
    // own events, the FHIR stream holds tenant A's one message.
    let ids: BTreeSet<String> = engine.inbound_ids().await.into_keys().collect();
    let expected: BTreeSet<String> = a_events
        .iter()
        .chain(&b_events)
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(stream_len(&nats, STREAM_FHIR).await, 1);
    assert_eq!(stream_len(&nats, STREAM_IN).await, 0);

    stop_consuming(loops).await;
    engine.stop().await;
}

/// Consume every partition until the returned token is cancelled.
fn consume<I: parcours_nats::Ingest>(
    nats: &parcours_nats::Nats,
    ingest: I,
) -> (CancellationToken, TaskTracker) {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let consumer = parcours_nats::InboundConsumer::new(nats.clone(), ingest);
    consumer.spawn(
        (0..nats.config().partitions).map(|p| (p, token.child_token())),
        &tracker,
    );
    (token, tracker)
}

async fn stop_consuming((token, tracker): (CancellationToken, TaskTracker)) {
    token.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("partition loops stop when cancelled");
}
