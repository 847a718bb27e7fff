//! One patient, one subject, end to end through `parcours serve` (MLLP), on SQLite and
//! on PostgreSQL: a discharge naming the patient by a qualified INS (PID-32 `VALI`) and
//! the IPP, then lab weights naming the IPP alone, reach the same heart-failure instance
//! (the weight-gain alert fires); a patient followed under the IPP before the
//! qualification moves to the INS's key when an A31 brings it (instances, timers,
//! tasks); an IPP linked to one INS and sent with another is refused (`AE`, a dead
//! letter, a reason naming keys only, nothing recorded); a result recorded under the IPP
//! and resent after the A31 is acknowledged (`AA`) and recorded once; the links hold
//! keys only. With `--nats`, canonical events an integration publishes itself under the
//! IPP's key reach the INS's instance too. Late messages under an IPP an A40 retired
//! reach the survivor's instance (the retired key leads there), also when an earlier
//! release committed the A40 without the retired key's record (the first start of this
//! release writes it); so do those under a FHIR Patient sent `replaced-by` another
//! (HTTP), and those naming its survivor.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use parcours_identity::{OID_INS_NIR, PatientIdentifier, Pseudonymizer};
use parcours_store::{EventStore, InstanceFilter, InstanceRow, WorkFilter, WorkItem};
use support::{
    Db, NatsServer, Server, announced, mllp_send, now_minus_days, pamfr, wait_for, workspace,
};

const TENANT: &str = "cpts-nord";
/// The IPPs' assigning authority (CHU-NORD) in the samples.
const IPP_SYSTEM: &str = "1.2.250.1.211.10.200.2";
/// Qualified from the first message.
const IPP_A: &str = "IPP4401234";
const NIR_A: &str = "180027512345671";
/// Followed under the IPP, qualified later.
const IPP_B: &str = "IPP4405678";
const NIR_B: &str = "290037512345682";
/// Another person's INS, sent with IPP_A by mistake.
const NIR_C: &str = "170017512345693";
const NAME: &str = "MARTINOLLE";

/// An HL7 timestamp `days` days ago (local time read as Paris: within the hour).
fn ts(days: f64) -> String {
    let at = now_minus_days(0) - jiff::SignedDuration::from_secs_f64(days * 86_400.0);
    at.strftime("%Y%m%d%H%M%S").to_string()
}

/// The PAM-FR heart-failure discharge home (I50), three days ago, of the patient with
/// this IPP and NIR, whose identity is `reliability` (PID-32: `VALI`, `PROV`).
fn discharge(control: &str, ipp: &str, nir: &str, reliability: &str, visit: &str) -> Vec<u8> {
    let day = |days: i64| now_minus_days(days).strftime("%Y%m%d").to_string();
    pamfr(
        "a03_discharge_home_not_qualified.hl7",
        &[
            ("GAM-0002", control.to_string()),
            ("MARTIN", NAME.to_string()),
            ("123456^^^", format!("{ipp}^^^")),
            ("280079912345678", nir.to_string()),
            ("PROV", reliability.to_string()),
            ("V-2026-0042", visit.to_string()),
            ("20260302", day(11)),
            ("20260310", day(3)),
        ],
    )
}

/// ADT^A31 (patient update) bringing the qualified identity: IPP and INS, `VALI`.
fn qualification(control: &str, ipp: &str, nir: &str, days: f64) -> Vec<u8> {
    let at = ts(days);
    // From PID-8 (sex) to PID-32 (identity reliability).
    let to_32 = "|".repeat(24);
    format!(
        "MSH|^~\\&|GAM|CHU-NORD^1.2.250.1.211.10.200.1^ISO|PARCOURS|CPTS-NORD|{at}||ADT^A31^ADT_A05|{control}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8\r\
         EVN||{at}\r\
         PID|1||{ipp}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI~{nir}^^^ASIP-SANTE-INS-NIR&{OID_INS_NIR}&ISO^INS||{NAME}^Hélène^Marie^^^^L||19450704|F{to_32}VALI\r\
         PV1|1|N\r"
    )
    .into_bytes()
}

/// A town lab's weight result naming the patient by the hospital's IPP alone (no INS,
/// no PID-32), `days` days ago.
fn weight(control: &str, ipp: &str, kg: f64, days: f64) -> Vec<u8> {
    let at = ts(days);
    format!(
        "MSH|^~\\&|SIL|LABO-VILLE|PARCOURS|CPTS-NORD|{at}||ORU^R01^ORU_R01|{control}|P|2.5|||||FRA|UNICODE UTF-8\r\
         PID|1||{ipp}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI||{NAME}^Hélène||19450704|F\r\
         OBR|1|CMD-{control}^GAM|RES-{control}^SIL|POIDS^Poids^L|||{at}\r\
         OBX|1|NM|29463-7^Poids^LN||{kg}|kg^^UCUM|||||F|||{at}\r"
    )
    .into_bytes()
}

/// Where the log is.
enum Backend {
    Sqlite(PathBuf),
    Postgres(Db),
}

impl Backend {
    fn store_arg(&self) -> String {
        match self {
            Backend::Sqlite(p) => p.display().to_string(),
            Backend::Postgres(db) => db.url.clone(),
        }
    }

    /// `parcours replay` of the log rebuilds the same instances and projections.
    fn assert_replay_agrees(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args([
                "replay",
                "--pathways",
                "pathways",
                "--store",
                &self.store_arg(),
            ])
            .current_dir(workspace())
            .output()
            .expect("replay runs");
        assert!(
            out.status.success(),
            "replay: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the log holds now (read beside the running engine).
    fn state(&self) -> State {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            match self {
                Backend::Sqlite(p) => {
                    let store = parcours_store_sqlite::SqliteStore::open(p)
                        .await
                        .expect("open");
                    let s = State::read(&store).await;
                    store.close().await;
                    s
                }
                Backend::Postgres(db) => {
                    let store = parcours_store_postgres::PgStore::connect(&db.url)
                        .await
                        .expect("connect");
                    State::read(&store).await
                }
            }
        })
    }
}

/// The instances, open work items, identity links and dead letters of the tenant.
struct State {
    instances: Vec<InstanceRow>,
    work: Vec<WorkItem>,
    /// Every record of the `identity/…` streams: (stream, id, subject, cause, payload).
    links: Vec<(String, String, String, String, String)>,
    dead_letters: Vec<String>,
    timers: Vec<String>,
    /// The ids of every inbound record.
    inbound: Vec<String>,
    /// Every inbound record's (id, subject), in log order.
    inbound_subjects: Vec<(String, String)>,
}

impl State {
    async fn read<S: EventStore>(store: &S) -> State {
        let instances = store
            .list_instances(&InstanceFilter {
                tenant: TENANT.into(),
                limit: 1000,
                ..InstanceFilter::default()
            })
            .await
            .expect("instances");
        let work = store
            .work_items(&WorkFilter {
                tenant: TENANT.into(),
                limit: 1000,
                ..WorkFilter::default()
            })
            .await
            .expect("work");
        let links = store
            .read_streams_by_prefix("identity/")
            .await
            .expect("links")
            .into_iter()
            .map(|r| {
                (
                    r.stream,
                    r.record.id,
                    r.record.subject,
                    r.record.cause.unwrap_or_default(),
                    String::from_utf8_lossy(&r.record.payload).into_owned(),
                )
            })
            .collect();
        let dead_letters = store
            .dead_letters(0, 1000)
            .await
            .expect("dead letters")
            .into_iter()
            .map(|d| d.letter.reason)
            .collect();
        let far = jiff::Timestamp::from_second(4_000_000_000).expect("far");
        let timers = store
            .due_timers(far, 1000, &parcours_store::TimerScope::All)
            .await
            .expect("timers")
            .into_iter()
            .map(|t| t.subject)
            .collect();
        let mut inbound_records = store
            .read_streams_by_prefix(&format!("inbound/{TENANT}/"))
            .await
            .expect("inbound");
        inbound_records.sort_by_key(|r| r.position);
        let inbound_subjects: Vec<(String, String)> = inbound_records
            .into_iter()
            .map(|r| (r.record.id, r.record.subject))
            .collect();
        let mut inbound: Vec<String> = inbound_subjects.iter().map(|(id, _)| id.clone()).collect();
        inbound.sort();
        State {
            instances,
            work,
            links,
            dead_letters,
            timers,
            inbound,
            inbound_subjects,
        }
    }

    /// The heart-failure instances of `subject` (the discharge's DG1 also states a type 2
    /// diabetes, whose instance follows the same key: [`Self::all_instances_of`]).
    fn instances_of(&self, subject: &str) -> Vec<&InstanceRow> {
        self.all_instances_of(subject)
            .into_iter()
            .filter(|r| r.pathway_id == "heart-failure")
            .collect()
    }

    fn all_instances_of(&self, subject: &str) -> Vec<&InstanceRow> {
        self.instances
            .iter()
            .filter(|r| r.subject == subject)
            .collect()
    }

    fn weight_alerts_of(&self, subject: &str) -> usize {
        self.work
            .iter()
            .filter(|w| w.subject == subject && w.code == "weight-gain")
            .count()
    }
}

/// The server's log names keys, never one of `identifiers`.
fn assert_log_names_no_identifier(log: &Path, identifiers: &[&str]) {
    let text = std::fs::read_to_string(log).expect("log");
    for value in identifiers {
        assert!(!text.contains(value), "the server log holds an identifier");
    }
}

/// `parcours serve` with MLLP on `backend`; its logs in `log`.
fn serve(
    backend: &Backend,
    identity: &Path,
    log: &Path,
    env: &[(&str, &Path)],
) -> (Server, String) {
    serve_args(backend, identity, log, env, &[])
}

/// [`serve`] with more arguments.
fn serve_args(
    backend: &Backend,
    identity: &Path,
    log: &Path,
    env: &[(&str, &Path)],
    more: &[&str],
) -> (Server, String) {
    let log = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(["--mllp-tenant", TENANT, "--store", &backend.store_arg()])
        .args(more)
        .arg("--identity-key")
        .arg(identity)
        .args(["--pathways", "pathways"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .current_dir(workspace())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (http, mllp) = announced(&mut lines).expect("addresses printed");
    std::thread::spawn(move || for _ in lines {});
    (
        Server { child, addr: http },
        mllp.expect("the MLLP address"),
    )
}

fn is_key(s: &str) -> bool {
    s.len() == 34
        && s.starts_with("p-")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The scenario, on a log that `backend` names.
fn one_patient_one_subject(backend: &Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let identity = dir.path().join("identity.key");
    let log = dir.path().join("serve.log");
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n  - id: links-test\n    principal: links-test\n    sha256: \"{}\"\n    tenants: [{TENANT}]\n    roles: [integration]\n",
            "ab".repeat(32)
        ),
    )
    .expect("auth file");
    let (server, mllp) = serve(backend, &identity, &log, &[("PARCOURS_AUTH", &auth)]);
    let keys = Pseudonymizer::load(&identity).expect("the identity key");
    let ins = |nir: &str| keys.subject(TENANT, &PatientIdentifier::ins(OID_INS_NIR, nir));
    let ipp = |ipp: &str| {
        keys.subject(
            TENANT,
            &PatientIdentifier::local(IPP_SYSTEM, ipp.to_string()),
        )
    };
    let (ins_a, ipp_a, ins_b, ipp_b, ins_c) =
        (ins(NIR_A), ipp(IPP_A), ins(NIR_B), ipp(IPP_B), ins(NIR_C));

    // A: qualified at the discharge; the lab knows the IPP only.
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-8001", IPP_A, NIR_A, "VALI", "V-8001"),
    );
    assert!(ack.contains("MSA|AA|GAM-8001"), "{ack}");
    for (control, kg, days) in [("LAB-8001", 80.0, 2.0), ("LAB-8002", 83.0, 1.0)] {
        let ack = mllp_send(&mllp, &weight(control, IPP_A, kg, days));
        assert!(ack.contains(&format!("MSA|AA|{control}")), "{ack}");
    }
    let s = backend.state();
    let hf = s.instances_of(&ins_a);
    assert_eq!(hf.len(), 1, "one heart-failure instance on the INS's key");
    assert_eq!(hf[0].pathway_id, "heart-failure");
    assert!(
        s.all_instances_of(&ipp_a).is_empty(),
        "nothing on the IPP's key"
    );
    assert_eq!(
        s.all_instances_of(&ins_a).len(),
        2,
        "heart failure and type 2 diabetes (DG1 E11.9) on the INS's key"
    );
    assert_eq!(
        s.weight_alerts_of(&ins_a),
        1,
        "the weights sent under the IPP reached the instance: the weight-gain alert fired"
    );
    assert!(s.work.iter().all(|w| w.subject != ipp_a));
    assert_eq!(s.links.len(), 1, "one link: {:?}", s.links);
    assert_eq!(s.links[0].0, format!("identity/{TENANT}/{ipp_a}"));
    assert_eq!(s.links[0].2, ins_a);

    // The same IPP sent with another person's INS: refused whole, kept, value-free.
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-8002", IPP_A, NIR_C, "VALI", "V-8002"),
    );
    assert!(ack.contains("MSA|AE|GAM-8002"), "{ack}");
    assert!(ack.contains("identity link refused"), "{ack}");
    for value in [IPP_A, NIR_A, NIR_C, NAME] {
        assert!(!ack.contains(value), "the ACK quotes an identifier: {ack}");
    }
    let s = backend.state();
    assert!(
        s.instances_of(&ins_c).is_empty(),
        "nothing recorded for the other INS"
    );
    assert_eq!(s.instances_of(&ins_a).len(), 1);
    assert_eq!(s.links.len(), 1, "the link is unchanged: {:?}", s.links);
    let refused: Vec<&String> = s
        .dead_letters
        .iter()
        .filter(|r| r.contains("GAM-8002"))
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", s.dead_letters);
    assert!(
        refused[0].contains("identity link refused"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains(&ipp_a) && refused[0].contains(&ins_c));
    for value in [IPP_A, NIR_A, NIR_C, NAME] {
        assert!(!refused[0].contains(value), "{}", refused[0]);
    }

    // B: followed under the IPP first (identity provisional), then qualified by an A31.
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-8101", IPP_B, NIR_B, "PROV", "V-8101"),
    );
    assert!(ack.contains("MSA|AA|GAM-8101"), "{ack}");
    let lab_8101 = weight("LAB-8101", IPP_B, 70.0, 2.0);
    let ack = mllp_send(&mllp, &lab_8101);
    assert!(ack.contains("MSA|AA|LAB-8101"), "{ack}");
    let s = backend.state();
    assert_eq!(s.instances_of(&ipp_b).len(), 1, "followed under the IPP");
    assert!(s.work.iter().any(|w| w.subject == ipp_b), "its tasks");
    assert!(s.timers.contains(&ipp_b), "its timers");
    let stream = s.instances_of(&ipp_b)[0].stream.clone();

    let ack = mllp_send(&mllp, &qualification("GAM-8102", IPP_B, NIR_B, 1.5));
    assert!(ack.contains("MSA|AA|GAM-8102"), "{ack}");
    let s = backend.state();
    let moved = s.instances_of(&ins_b);
    assert_eq!(
        moved.len(),
        1,
        "the instance followed the person to the INS's key"
    );
    assert_eq!(moved[0].stream, stream, "the same instance");
    assert!(s.all_instances_of(&ipp_b).is_empty());
    assert!(s.work.iter().all(|w| w.subject != ipp_b), "tasks moved");
    assert!(!s.timers.contains(&ipp_b), "timers moved");
    assert!(s.work.iter().any(|w| w.subject == ins_b));
    assert!(s.timers.contains(&ins_b));
    // The lab's ACK was lost: it sends the result recorded under the IPP again, which
    // the front now resolves to the INS's key. The same event: `AA`, recorded once.
    let ack = mllp_send(&mllp, &lab_8101);
    assert!(
        ack.contains("MSA|AA|LAB-8101"),
        "a resend after the link: {ack}"
    );
    let again = backend.state();
    assert_eq!(again.inbound, s.inbound, "the log holds the result once");
    assert_eq!(
        again.dead_letters, s.dead_letters,
        "the resend is not a dead letter"
    );
    // The next weight under the IPP meets the one recorded before: +3 kg in a day.
    let ack = mllp_send(&mllp, &weight("LAB-8102", IPP_B, 73.0, 1.0));
    assert!(ack.contains("MSA|AA|LAB-8102"), "{ack}");
    let s = backend.state();
    assert_eq!(s.weight_alerts_of(&ins_b), 1, "the weight-gain alert fired");
    assert!(s.all_instances_of(&ipp_b).is_empty());

    // The links hold keys only.
    assert_eq!(s.links.len(), 2, "{:?}", s.links);
    for (stream, id, subject, cause, payload) in &s.links {
        let local = stream
            .strip_prefix(&format!("identity/{TENANT}/"))
            .expect("a link stream");
        assert!(is_key(local) && is_key(subject), "{stream} {subject}");
        let all = format!("{stream} {id} {subject} {cause} {payload}");
        for value in [
            IPP_A, IPP_B, NIR_A, NIR_B, NIR_C, NAME, "IPP44", "1800275", "2900375",
        ] {
            assert!(!all.contains(value), "a link holds an identifier: {all}");
        }
    }
    assert!(server.terminate().success());

    // The logs name keys, never identifiers.
    assert_log_names_no_identifier(&log, &[IPP_A, IPP_B, NIR_A, NIR_B, NIR_C, NAME]);
    // Replay rebuilds the same instances and projections (the moved ones included).
    backend.assert_replay_agrees();
}

#[test]
fn one_patient_one_subject_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    one_patient_one_subject(&Backend::Sqlite(dir.path().join("links.db")));
}

#[test]
fn one_patient_one_subject_on_postgres() {
    one_patient_one_subject(&Backend::Postgres(Db::create("links")));
}

/// Production mode (`--nats`, one process on SQLite): an MLLP discharge links the IPP to
/// the INS; after a restart, an integration publishes canonical weights itself on
/// `PARCOURS_IN` under the IPP's key: they reach the INS's instance (the weight-gain
/// alert); one sent again is recorded once.
#[test]
fn canonical_events_on_nats_under_a_linked_ipp_reach_the_ins() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let backend = Backend::Sqlite(dir.path().join("links.db"));
    let identity = dir.path().join("identity.key");
    let log = dir.path().join("serve.log");
    let url = nats.url();
    let (server, mllp) = serve_args(
        &backend,
        &identity,
        &log,
        &[],
        &["--nats", &url, "--partitions", "4", "--forward-wait", "20"],
    );
    let keys = Pseudonymizer::load(&identity).expect("the identity key");
    let ins_a = keys.subject(TENANT, &PatientIdentifier::ins(OID_INS_NIR, NIR_A));
    let ipp_a = keys.subject(
        TENANT,
        &PatientIdentifier::local(IPP_SYSTEM, IPP_A.to_string()),
    );
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-9001", IPP_A, NIR_A, "VALI", "V-9001"),
    );
    assert!(ack.contains("MSA|AA|GAM-9001"), "{ack}");
    assert_eq!(backend.state().links.len(), 1, "linked");
    // Restarted: the link is the log's alone, no longer among the links the engine met
    // lately (which it would follow at commit, owning every partition).
    assert!(server.terminate().success());
    let (server, _) = serve_args(
        &backend,
        &identity,
        &log,
        &[],
        &["--nats", &url, "--partitions", "4", "--forward-wait", "20"],
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let js = rt.block_on(async {
        async_nats::jetstream::new(async_nats::connect(&url).await.expect("NATS"))
    });
    let weight = |id: &str, kg: f64, days: i64| parcours_core::events::Event {
        id: id.into(),
        tenant: TENANT.into(),
        source: "integration".into(),
        subject: ipp_a.clone(),
        occurred_at: now_minus_days(days),
        recorded_at: None,
        data: parcours_core::events::EventData::from_json(
            parcours_core::events::EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        )
        .expect("payload"),
    };
    let publish = |event: &parcours_core::events::Event, msg_id: &str| {
        let p = parcours_store::partition_of(TENANT, &event.subject, 4);
        let subject = format!("parcours.{TENANT}.in.p{p:02}.observation.recorded");
        rt.block_on(async {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id);
            js.publish_with_headers(
                subject,
                headers,
                serde_json::to_vec(event).expect("json").into(),
            )
            .await
            .expect("published")
            .await
            .expect("stored by JetStream");
        });
    };
    let (first, second) = (weight("nats-w-1", 80.0, 2), weight("nats-w-2", 83.0, 1));
    publish(&first, "nats-w-1");
    publish(&second, "nats-w-2");
    wait_for("the weights committed", Duration::from_secs(60), || {
        let s = backend.state();
        s.inbound
            .iter()
            .filter(|id| id.starts_with("nats-w-"))
            .count()
            == 2
    });
    let s = backend.state();
    // Should it fail: where each weight was recorded, in log order, and what the engine said.
    let recorded: Vec<String> = s
        .inbound_subjects
        .iter()
        .filter(|(id, _)| id.starts_with("nats-w-"))
        .map(|(id, subject)| {
            let key = if *subject == ins_a {
                "the INS's key"
            } else if *subject == ipp_a {
                "the IPP's key"
            } else {
                "another key"
            };
            format!("{id} under {key}")
        })
        .collect();
    assert_eq!(
        s.weight_alerts_of(&ins_a),
        1,
        "the weights under the IPP reached the INS's instance: {recorded:?}; dead letters \
         {:?}; serve's log:\n{}",
        s.dead_letters,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(s.all_instances_of(&ipp_a).is_empty());
    // Sent again by the integration (another message id): recorded once.
    publish(&second, "nats-w-2-again");
    let in_stream = || {
        rt.block_on(async {
            match js.get_stream("PARCOURS_IN").await {
                Ok(mut st) => st.info().await.map_or(u64::MAX, |i| i.state.messages),
                Err(_) => u64::MAX,
            }
        })
    };
    wait_for("the resend acknowledged", Duration::from_secs(60), || {
        in_stream() == 0
    });
    let again = backend.state();
    assert_eq!(again.inbound, s.inbound, "recorded once");
    assert_eq!(again.weight_alerts_of(&ins_a), 1);
    assert!(server.terminate().success());
}

/// The IPP an A40 retires in the PAM-FR sample (`a40_merge.hl7`, MRG-1).
const IPP_OLD: &str = "654321";
/// The qualified identity that absorbs it in the sample (PID-3: IPP and INS, `VALI`).
const IPP_KEPT: &str = "123456";
const NIR_KEPT: &str = "280079912345678";

/// Late messages under an IPP an A40 retired, end to end through `parcours serve`
/// (MLLP): a heart-failure discharge under the old IPP, the A40 merging it into the
/// qualified identity, a restart (what follows is resolved from the log alone), then a
/// town lab's weights and another stay's discharge still naming the old IPP: answered
/// `AA`, decided on the survivor's instance (the weight-gain alert fires there), nothing
/// enrolled under the old IPP's key; the retirement holds keys only; the logs name no
/// identifier; replay agrees. With `earlier_release`, the restart finds the log as a
/// release before the retirement records left it (the A40's record and the backfill's
/// mark deleted, PostgreSQL only: through psql) and writes the record first, saying so
/// in one log line with counts.
fn late_messages_under_a_retired_ipp(backend: &Backend, earlier_release: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let identity = dir.path().join("identity.key");
    let log = dir.path().join("serve.log");
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n  - id: merge-test\n    principal: merge-test\n    sha256: \"{}\"\n    tenants: [{TENANT}]\n    roles: [integration]\n",
            "ab".repeat(32)
        ),
    )
    .expect("auth file");
    let env = [("PARCOURS_AUTH", auth.as_path())];
    let (server, mllp) = serve(backend, &identity, &log, &env);
    let keys = Pseudonymizer::load(&identity).expect("the identity key");
    let ipp = |ipp: &str| {
        keys.subject(
            TENANT,
            &PatientIdentifier::local(IPP_SYSTEM, ipp.to_string()),
        )
    };
    let (old, ins) = (
        ipp(IPP_OLD),
        keys.subject(TENANT, &PatientIdentifier::ins(OID_INS_NIR, NIR_KEPT)),
    );
    let day = |days: i64| now_minus_days(days).strftime("%Y%m%d").to_string();

    // Discharged under the duplicate record (identity not qualified): followed there.
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-7001", IPP_OLD, NIR_KEPT, "PROV", "V-7001"),
    );
    assert!(ack.contains("MSA|AA|GAM-7001"), "{ack}");
    let s = backend.state();
    assert_eq!(s.instances_of(&old).len(), 1, "followed under the old IPP");
    let stream = s.instances_of(&old)[0].stream.clone();

    // The A40 merges it into the qualified identity (the INS's key).
    let a40 = pamfr("a40_merge.hl7", &[("20260312", day(2))]);
    let ack = mllp_send(&mllp, &a40);
    assert!(ack.contains("MSA|AA|GAM-0011"), "{ack}");
    let s = backend.state();
    assert!(s.all_instances_of(&old).is_empty(), "moved");
    assert_eq!(s.instances_of(&ins).len(), 1);
    assert_eq!(s.instances_of(&ins)[0].stream, stream, "the same instance");
    // The old IPP's key leads to the survivor: a record of its identity stream.
    let retirement: Vec<_> = s
        .links
        .iter()
        .filter(|l| l.0 == format!("identity/{TENANT}/{old}"))
        .collect();
    assert_eq!(retirement.len(), 1, "{:?}", s.links);
    assert_eq!(retirement[0].2, ins);
    assert!(server.terminate().success());
    if earlier_release {
        let Backend::Postgres(db) = backend else {
            panic!("an earlier release's log is made through psql");
        };
        support::drop_retirement_records(&db.url);
        let stream = format!("identity/{TENANT}/{old}");
        assert!(
            backend.state().links.iter().all(|l| l.0 != stream),
            "the A40 without its record"
        );
    }

    // Restarted: the merge is the log's alone.
    let (server, mllp) = serve(backend, &identity, &log, &env);
    for (control, kg, days) in [("LAB-7001", 80.0, 1.5), ("LAB-7002", 83.0, 1.0)] {
        let ack = mllp_send(&mllp, &weight(control, IPP_OLD, kg, days));
        assert!(ack.contains(&format!("MSA|AA|{control}")), "{ack}");
    }
    // Answered: the engine opened the log, the backfill ran first.
    if earlier_release {
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            text.lines()
                .any(|l| l.contains("identity retirements backfilled")
                    && l.contains("merges=1")
                    && l.contains("written=1")),
            "the backfill's line"
        );
        let s = backend.state();
        let stream = format!("identity/{TENANT}/{old}");
        let retirement: Vec<_> = s.links.iter().filter(|l| l.0 == stream).collect();
        assert_eq!(retirement.len(), 1, "{:?}", s.links);
        assert_eq!(retirement[0].2, ins);
    }
    let s = backend.state();
    assert_eq!(
        s.weight_alerts_of(&ins),
        1,
        "the weights sent under the old IPP reached the survivor's instance"
    );
    // Another stay, its discharge still under the old IPP: the survivor's instance
    // restarts its cycle, nothing new under the old IPP's key.
    let ack = mllp_send(
        &mllp,
        &discharge("GAM-7002", IPP_OLD, NIR_KEPT, "PROV", "V-7002"),
    );
    assert!(ack.contains("MSA|AA|GAM-7002"), "{ack}");
    let s = backend.state();
    assert!(
        s.all_instances_of(&old).is_empty(),
        "nothing enrolled under the retired IPP's key"
    );
    assert!(s.work.iter().all(|w| w.subject != old));
    assert_eq!(s.instances_of(&ins).len(), 1, "one heart-failure instance");
    assert_eq!(s.instances_of(&ins)[0].stream, stream);
    assert!(s.dead_letters.is_empty(), "{:?}", s.dead_letters);
    for (stream, id, subject, cause, payload) in &s.links {
        let all = format!("{stream} {id} {subject} {cause} {payload}");
        for value in [IPP_OLD, IPP_KEPT, NIR_KEPT, "MARTIN", NAME] {
            assert!(
                !all.contains(value),
                "an identity record holds an identifier: {all}"
            );
        }
    }
    assert!(server.terminate().success());
    assert_log_names_no_identifier(&log, &[IPP_OLD, NIR_KEPT, NAME]);
    backend.assert_replay_agrees();
}

#[test]
fn late_messages_under_a_retired_ipp_reach_the_survivor_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    late_messages_under_a_retired_ipp(&Backend::Sqlite(dir.path().join("merged.db")), false);
}

#[test]
fn late_messages_under_a_retired_ipp_reach_the_survivor_on_postgres() {
    late_messages_under_a_retired_ipp(&Backend::Postgres(Db::create("retired")), false);
}

/// The same on a log an earlier release wrote (its A40 without the retired key's
/// record): the restart backfills it, and the late messages reach the survivor.
#[test]
fn late_messages_under_an_ipp_an_earlier_release_retired_reach_the_survivor_on_postgres() {
    late_messages_under_a_retired_ipp(&Backend::Postgres(Db::create("retired_before")), true);
}

/// The IPP system of the FHIR merge test, as FHIR sends it (`urn:oid:`).
const FHIR_IPP_SYSTEM: &str = "urn:oid:1.2.250.1.211.10.200.2";

/// A FHIR R4 patient merge, end to end through `parcours serve` (HTTP): a
/// heart-failure discharge under Patient A (a transaction), then Patient A sent
/// `active: false` with a `link` `replaced-by` Patient B (the FHIR form of an A40), then
/// weights under A (late, the retired record) and under B: A's instance has moved to
/// B's key and both weights reach it (the weight-gain alert fires there); nothing is
/// left under A's key; the retirement holds keys only.
fn a_fhir_patient_replaced_by_another(backend: &Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let identity = dir.path().join("identity.key");
    let log = dir.path().join("serve.log");
    let auth = support::test_auth_file();
    let (server, _mllp) = serve(backend, &identity, &log, &[("PARCOURS_AUTH", &auth)]);
    support::register_key(&server.addr, support::TEST_KEY);
    let keys = Pseudonymizer::load(&identity).expect("the identity key");
    let ipp = |v: &str| keys.subject(TENANT, &PatientIdentifier::local(IPP_SYSTEM, v));
    let (ipp_a, ipp_b) = ("FH-7001", "FH-7002");
    let (a, b) = (ipp(ipp_a), ipp(ipp_b));
    let at = |days: f64| {
        (now_minus_days(0) - jiff::SignedDuration::from_secs_f64(days * 86_400.0))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let post = |body: &serde_json::Value| {
        let (status, answer) = support::http(
            &server.addr,
            "POST",
            &format!("/fhir/{TENANT}"),
            Some(&body.to_string()),
        )
        .expect("posted");
        assert!((200..300).contains(&status), "{status}: {answer}");
        answer
    };
    let patient = |v: &str| {
        serde_json::json!({"resourceType": "Patient", "id": v,
            "identifier": [{"system": FHIR_IPP_SYSTEM, "value": v,
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]}}],
            "name": [{"family": NAME}]})
    };
    let by_ipp =
        |v: &str| serde_json::json!({"identifier": {"system": FHIR_IPP_SYSTEM, "value": v}});

    // Discharged home under A after a heart-failure stay.
    post(
        &serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:3f1d2c00-0000-4000-8000-000000000001",
             "request": {"method": "POST", "url": "Patient"}, "resource": patient(ipp_a)},
            {"fullUrl": "urn:uuid:3f1d2c00-0000-4000-8000-000000000002",
             "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": "fh-stay-1", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:3f1d2c00-0000-4000-8000-000000000001"},
                "period": {"start": at(10.0), "end": at(3.0)},
                "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}],
                "hospitalization": {"dischargeDisposition": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]}}}}
        ]}),
    );
    let s = backend.state();
    assert_eq!(s.instances_of(&a).len(), 1, "followed under A");
    let stream = s.instances_of(&a)[0].stream.clone();

    // A is retired into B.
    let mut retired = patient(ipp_a);
    retired["active"] = serde_json::json!(false);
    retired["meta"] = serde_json::json!({"versionId": "2", "lastUpdated": at(2.0)});
    retired["link"] = serde_json::json!([{"other": by_ipp(ipp_b), "type": "replaced-by"}]);
    post(&retired);
    let s = backend.state();
    assert!(s.all_instances_of(&a).is_empty(), "moved off A");
    assert_eq!(s.instances_of(&b).len(), 1, "B's now");
    assert_eq!(s.instances_of(&b)[0].stream, stream, "the same instance");
    let retirement: Vec<_> = s
        .links
        .iter()
        .filter(|l| l.0 == format!("identity/{TENANT}/{a}"))
        .collect();
    assert_eq!(retirement.len(), 1, "{:?}", s.links);
    assert_eq!(retirement[0].2, b);

    // Weights: a late one under the retired A, then one under B.
    for (id, who, kg, days) in [("fh-w1", ipp_a, 80.0, 1.5), ("fh-w2", ipp_b, 83.0, 1.0)] {
        post(
            &serde_json::json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": by_ipp(who), "effectiveDateTime": at(days),
            "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
        );
    }
    let s = backend.state();
    assert_eq!(
        s.weight_alerts_of(&b),
        1,
        "both weights reached the survivor's instance"
    );
    assert!(
        s.all_instances_of(&a).is_empty(),
        "nothing enrolled under A"
    );
    assert!(s.work.iter().all(|w| w.subject != a));
    assert!(s.dead_letters.is_empty(), "{:?}", s.dead_letters);
    for (stream, id, subject, cause, payload) in &s.links {
        let all = format!("{stream} {id} {subject} {cause} {payload}");
        for value in [ipp_a, ipp_b, NAME] {
            assert!(
                !all.contains(value),
                "an identity record holds an identifier: {all}"
            );
        }
    }
    assert!(server.terminate().success());
    assert_log_names_no_identifier(&log, &[ipp_a, ipp_b, NAME]);
}

#[test]
fn a_fhir_patient_replaced_by_another_is_merged_into_it_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    a_fhir_patient_replaced_by_another(&Backend::Sqlite(dir.path().join("fhir-merge.db")));
}
