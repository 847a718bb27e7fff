//! The vault on a real SQLite log: tokens, sealed dead letters, erasure down to the bytes
//! of the database files.

use parcours_core::events::Event;
use parcours_store::{DeadLetter, DeadLetterFilter, EventStore, PatientKeys};
use parcours_store_sqlite::SqliteStore;
use parcours_vault::{ErasureRequest, LocalKeyFile, VaultStore, cipher};

fn event(id: &str, subject: &str, ty: &str, data: serde_json::Value) -> Event {
    serde_json::from_value(serde_json::json!({
        "id": id, "tenant": "cpts-a", "source": "chu-nord", "subject": subject,
        "occurredat": "2026-11-02T10:00:00Z", "type": ty, "data": data
    }))
    .expect("event")
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

async fn open(dir: &std::path::Path) -> VaultStore<SqliteStore, LocalKeyFile> {
    let store = SqliteStore::open(&dir.join("log.db")).await.expect("open");
    let provider = LocalKeyFile::from_key(&[5u8; 32]).expect("provider");
    VaultStore::new(store, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifying_fields_become_tokens_of_the_patients_key() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path()).await;
    let vault = store.vault();
    let mut events = vec![
        event(
            "e1",
            "p-1",
            "encounter.discharged",
            serde_json::json!({"encounter_id": "VN-778899", "destination": "home", "diagnoses": ["I50.1"]}),
        ),
        event(
            "e2",
            "p-1",
            "encounter.discharge_cancelled",
            serde_json::json!({"encounter_id": "VN-778899"}),
        ),
        event(
            "e3",
            "p-2",
            "encounter.discharged",
            serde_json::json!({"encounter_id": "VN-778899", "destination": "home"}),
        ),
        event("e4", "p-2", "consent.given", serde_json::json!({})),
    ];
    let before = events[3].clone();
    vault.protect(&mut events).await.expect("protect");
    let field = |e: &Event| serde_json::to_value(e).expect("json")["data"]["encounter_id"].clone();
    let (a, b, c) = (field(&events[0]), field(&events[1]), field(&events[2]));
    let a = a.as_str().expect("token").to_string();
    assert!(cipher::is_token(&a) && !a.contains("778899"), "{a}");
    assert_eq!(
        a,
        b.as_str().expect("token"),
        "one patient's visit: one token"
    );
    assert_ne!(
        a,
        c.as_str().expect("token"),
        "another patient's: another token"
    );
    assert_eq!(events[3], before, "nothing identifying: unchanged");
    let again = events.clone();
    vault.protect(&mut events).await.expect("idempotent");
    assert_eq!(events, again, "a token is not encrypted twice");
    assert_eq!(
        vault
            .reveal("cpts-a", "p-1", &a)
            .await
            .expect("reveal")
            .as_deref(),
        Some("VN-778899")
    );

    // A second process (another vault over the same log and master key) makes the same
    // tokens: a resent event gets the same bytes.
    let other = open(dir.path()).await;
    let mut resent = vec![event(
        "e1",
        "p-1",
        "encounter.discharged",
        serde_json::json!({"encounter_id": "VN-778899", "destination": "home", "diagnoses": ["I50.1"]}),
    )];
    other.vault().protect(&mut resent).await.expect("protect");
    assert_eq!(field(&resent[0]).as_str(), Some(a.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_destroys_the_key_and_the_dead_letters_that_name_the_patient() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path()).await;
    let vault = store.vault().clone();
    let mut events = vec![event(
        "e1",
        "p-1",
        "encounter.discharged",
        serde_json::json!({"encounter_id": "VN-778899", "destination": "home"}),
    )];
    vault.protect(&mut events).await.expect("protect");
    let token = serde_json::to_value(&events[0]).expect("json")["data"]["encounter_id"]
        .as_str()
        .expect("token")
        .to_string();
    let raw = |name: &str, ipp: &str| {
        format!(
            "MSH|^~\\&|HIS|CHU|||20261102||ADT^A03|1|P|2.5\rPID|||{ipp}^^^CHU^PI~180027512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||{name}^JEAN\rPV1|\r"
        )
    };
    let keep = |payload: String| DeadLetter {
        source: "mllp".into(),
        tenant: Some("cpts-a".into()),
        reason: "PV1-19: missing visit number".into(),
        payload: payload.into_bytes(),
    };
    store
        .dead_letter(keep(raw("DUPONTEL", "IPP4242")))
        .await
        .expect("keep");
    let other = raw("MARTINEZ", "IPP5151").replace("180027512345678", "290037512345611");
    store.dead_letter(keep(other.clone())).await.expect("keep");
    // Read back through the store: opened, whichever way they are read.
    let letters = store.dead_letters(0, 10).await.expect("list");
    assert_eq!(
        letters[0].letter.payload,
        raw("DUPONTEL", "IPP4242").into_bytes()
    );
    let newest = store
        .list_dead_letters(&DeadLetterFilter {
            tenant: Some("cpts-a".into()),
            ..DeadLetterFilter::default()
        })
        .await
        .expect("newest first");
    assert_eq!(newest[0].letter.payload, other.clone().into_bytes());
    assert_eq!(newest[1].letter, letters[0].letter);
    let one = store
        .dead_letter_by_id(letters[0].id)
        .await
        .expect("by id")
        .expect("kept");
    assert_eq!(one.letter, letters[0].letter);
    // In the file: sealed.
    store.inner().scrub().await.expect("checkpoint");
    for needle in ["DUPONTEL", "IPP4242", "180027512345678", "VN-778899"] {
        assert!(
            files_contain(dir.path(), needle.as_bytes()).is_empty(),
            "{needle} in clear"
        );
    }

    let report = vault
        .erase(&ErasureRequest {
            tenant: "cpts-a".into(),
            subjects: vec!["p-1".into()],
            needles: vec![
                "180027512345678".into(),
                "IPP4242".into(),
                "Dupontel".into(),
            ],
            at: None,
        })
        .await
        .expect("erase");
    assert_eq!(
        (
            report.recorded,
            report.keys_destroyed,
            report.dead_letters_deleted
        ),
        (1, 1, 1)
    );
    assert_eq!(store.patient_key("cpts-a", "p-1").await.expect("key"), None);
    assert_eq!(
        vault.reveal("cpts-a", "p-1", &token).await.expect("reveal"),
        None
    );
    let left = store.dead_letters(0, 10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].letter.payload,
        other.into_bytes(),
        "the other patient's stays"
    );
    let erased = store
        .read_stream("erasure/cpts-a/p-1", 0)
        .await
        .expect("record");
    assert_eq!(erased.len(), 1);
    assert_eq!(erased[0].record.record_type, "patient.erased");
    assert_eq!(erased[0].record.payload, br#"{"subject":"p-1"}"#);
    // Again: nothing more to do, nothing recorded twice.
    let again = vault
        .erase(&ErasureRequest {
            tenant: "cpts-a".into(),
            subjects: vec!["p-1".into()],
            needles: vec![],
            at: None,
        })
        .await
        .expect("again");
    assert_eq!((again.recorded, again.keys_destroyed), (0, 0));
    assert!(
        vault
            .erase(&ErasureRequest {
                tenant: "cpts-a".into(),
                ..ErasureRequest::default()
            })
            .await
            .is_err()
    );
    assert!(
        vault
            .erase(&ErasureRequest {
                tenant: "cpts-a".into(),
                subjects: vec!["~dead-letters".into()],
                ..ErasureRequest::default()
            })
            .await
            .is_err(),
        "reserved keys are not patients"
    );
}

/// The store of one vault, whose reads of several patients' keys find none (as a read
/// made just before another process stored them would): its writes then meet keys it
/// did not know of.
#[derive(Clone)]
struct StaleReads(SqliteStore);

impl PatientKeys for StaleReads {
    async fn patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<parcours_store::PatientKey>, parcours_store::StoreError> {
        self.0.patient_key(tenant, subject).await
    }

    async fn patient_keys(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Option<parcours_store::PatientKey>>, parcours_store::StoreError> {
        Ok(vec![None; patients.len()])
    }

    async fn create_patient_key(
        &self,
        key: parcours_store::PatientKey,
    ) -> Result<parcours_store::PatientKey, parcours_store::StoreError> {
        self.0.create_patient_key(key).await
    }

    async fn create_patient_keys(
        &self,
        keys: Vec<parcours_store::PatientKey>,
    ) -> Result<Vec<parcours_store::PatientKey>, parcours_store::StoreError> {
        self.0.create_patient_keys(keys).await
    }

    async fn erase_patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<bool, parcours_store::StoreError> {
        self.0.erase_patient_key(tenant, subject).await
    }

    async fn patient_key_ids(&self) -> Result<Vec<(String, u64)>, parcours_store::StoreError> {
        self.0.patient_key_ids().await
    }

    async fn patient_keys_not_wrapped_by(
        &self,
        key_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<parcours_store::PatientKey>, parcours_store::StoreError> {
        self.0
            .patient_keys_not_wrapped_by(key_id, after, limit)
            .await
    }

    async fn rewrap_patient_keys(
        &self,
        keys: &[parcours_store::Rewrapped],
    ) -> Result<u64, parcours_store::StoreError> {
        self.0.rewrap_patient_keys(keys).await
    }

    async fn delete_dead_letters(&self, ids: &[u64]) -> Result<u64, parcours_store::StoreError> {
        self.0.delete_dead_letters(ids).await
    }

    async fn scrub(&self) -> Result<(), parcours_store::StoreError> {
        self.0.scrub().await
    }
}

fn discharges(patients: std::ops::Range<usize>) -> Vec<Event> {
    patients
        .map(|p| {
            event(
                &format!("d{p}"),
                &format!("p-{p}"),
                "encounter.discharged",
                serde_json::json!({"encounter_id": format!("VN-{p}"), "destination": "home"}),
            )
        })
        .collect()
}

fn tokens(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let v = serde_json::to_value(e).expect("json");
            v["data"]["encounter_id"]
                .as_str()
                .expect("token")
                .to_string()
        })
        .collect()
}

/// A batch of new patients gets its keys together, and the same tokens as the same
/// events protected one at a time by another process; a process that did not see keys
/// stored meanwhile by another takes theirs (its own are not kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_new_patients_get_their_keys_together_and_agree_with_other_processes() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path()).await;
    // Patients 0..40 in one batch (each twice: a discharge and its cancellation).
    let mut batch = discharges(0..40);
    batch.extend(discharges(0..40).into_iter().map(|mut e| {
        e.id.push_str("-again");
        e
    }));
    store
        .vault()
        .protect(&mut batch)
        .await
        .expect("protect a batch");
    let batch_tokens = tokens(&batch);
    assert_eq!(
        batch_tokens[..40],
        batch_tokens[40..],
        "one key per patient"
    );
    let mut distinct = batch_tokens[..40].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 40, "a key of their own for each patient");

    // Another process, one event at a time: the same keys, so the same tokens.
    let other = open(dir.path()).await;
    let mut one_by_one = Vec::new();
    for e in discharges(0..40) {
        let mut one = vec![e];
        other.vault().protect(&mut one).await.expect("protect one");
        one_by_one.extend(one);
    }
    assert_eq!(tokens(&one_by_one), batch_tokens[..40]);

    // A process that reads no key (stale) for patients 30..50 makes its own for all of
    // them: those of 30..40 were stored already, and theirs are used.
    let provider = LocalKeyFile::from_key(&[5u8; 32]).expect("provider");
    let inner = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let stale = parcours_vault::Vault::new(provider, StaleReads(inner));
    let mut late = discharges(30..50);
    stale
        .protect(&mut late)
        .await
        .expect("protect with stale reads");
    assert_eq!(
        tokens(&late)[..10],
        batch_tokens[30..40],
        "the stored keys win"
    );
    let mut fresh = discharges(40..50);
    other
        .vault()
        .protect(&mut fresh)
        .await
        .expect("protect 40..50");
    assert_eq!(
        tokens(&fresh),
        tokens(&late)[10..],
        "the keys it made for new patients were kept"
    );
}

/// Store `events` as the engine does: each in its subject's inbound stream, and an
/// `identity.linked` with its link record in the local key's link stream, one commit.
async fn commit_as_the_engine(store: &SqliteStore, events: &[Event]) {
    use parcours_runtime::codec;
    for e in events {
        let stream = codec::inbound_stream(&e.tenant, &e.subject);
        let version = store.stream_version(&stream).await.expect("version");
        let mut writes = vec![parcours_store::StreamWrite {
            stream,
            expected_version: version,
            records: vec![codec::encode_inbound(e).expect("record")],
        }];
        if let parcours_core::events::EventData::IdentityLinked(l) = &e.data {
            writes.push(parcours_store::StreamWrite {
                stream: codec::identity_stream(&e.tenant, &l.local_subject),
                expected_version: 0,
                records: vec![codec::encode_identity_link(e, &l.local_subject)],
            });
        }
        let appended = store
            .append(parcours_store::Commit {
                writes,
                ..parcours_store::Commit::default()
            })
            .await
            .expect("append");
        assert!(
            matches!(appended, parcours_store::Appended::Committed { .. }),
            "{appended:?}"
        );
    }
}

/// A discharge of `subject` with the visit number `visit`, protected (its token kept).
async fn visit_token(
    vault: &parcours_vault::Vault<LocalKeyFile, SqliteStore>,
    id: &str,
    subject: &str,
    visit: &str,
) -> (Event, String) {
    let mut events = vec![event(
        id,
        subject,
        "encounter.discharged",
        serde_json::json!({"encounter_id": visit, "destination": "home"}),
    )];
    vault.protect(&mut events).await.expect("protect");
    let token = tokens(&events).pop().expect("token");
    (events.pop().expect("event"), token)
}

/// A person followed under an IPP, linked later to the INS (more events under the INS),
/// with an older duplicate key merged into the INS (the link and the merge committed by
/// the engine); another person beside. Erased by one key alone — the INS, the IPP, or
/// the key the merge retired (which leads to its survivor) — every key of the person is
/// erased (each its `patient.erased`, its data key destroyed, its tokens unreadable),
/// the other person's not; an event after the erasure under any of them starts a new
/// key, as after the erasure of one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_by_one_key_reaches_the_keys_linked_and_merged_to_it() {
    for erase_by in ["p-ins", "p-ipp", "p-dup"] {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(dir.path()).await;
        let raw = store.inner().clone();
        let vault = store.vault().clone();
        let (ipp_visit, ipp_token) = visit_token(&vault, "d-ipp", "p-ipp", "VN-IPP-1").await;
        let (dup_visit, dup_token) = visit_token(&vault, "d-dup", "p-dup", "VN-DUP-1").await;
        let (other_visit, other_token) =
            visit_token(&vault, "d-other", "p-other", "VN-OTHER-1").await;
        commit_as_the_engine(&raw, &[ipp_visit, dup_visit, other_visit]).await;
        let link = event(
            "l-1",
            "p-ins",
            "identity.linked",
            serde_json::json!({"local_subject": "p-ipp"}),
        );
        let merge = event(
            "m-1",
            "p-ins",
            "identity.merged",
            serde_json::json!({"merged_subject": "p-dup"}),
        );
        let (ins_visit, ins_token) = visit_token(&vault, "d-ins", "p-ins", "VN-INS-1").await;
        let mut engine = parcours_runtime::Engine::open(
            raw.clone(),
            parcours_runtime::PathwayRegistry::new(),
            parcours_runtime::EngineConfig::default(),
        )
        .await
        .expect("engine");
        for outcome in engine
            .ingest_batch(
                &[link, merge, ins_visit],
                parcours_store::IndexChanges::default(),
            )
            .await
            .expect("ingested")
        {
            assert!(outcome.is_ok(), "{outcome:?}");
        }
        let person = [
            ("p-ipp", &ipp_token),
            ("p-dup", &dup_token),
            ("p-ins", &ins_token),
        ];
        for (subject, token) in person {
            assert!(
                vault
                    .reveal("cpts-a", subject, token)
                    .await
                    .expect("reveal")
                    .is_some(),
                "{subject}'s token opens before"
            );
        }

        let report = vault
            .erase(&ErasureRequest {
                tenant: "cpts-a".into(),
                subjects: vec![erase_by.into()],
                needles: vec![],
                at: None,
            })
            .await
            .expect("erase");
        assert_eq!(
            (
                report.subjects,
                report.subjects_linked,
                report.recorded,
                report.keys_destroyed
            ),
            (3, 2, 3, 3),
            "by {erase_by}: {report:?}"
        );
        for (subject, token) in person {
            assert_eq!(
                vault
                    .reveal("cpts-a", subject, token)
                    .await
                    .expect("reveal"),
                None,
                "by {erase_by}: {subject}'s token no longer opens"
            );
            assert_eq!(raw.patient_key("cpts-a", subject).await.expect("key"), None);
            // Another process's vault (no cache) cannot open it either.
            assert_eq!(
                open(dir.path())
                    .await
                    .vault()
                    .reveal("cpts-a", subject, token)
                    .await
                    .expect("reveal"),
                None
            );
            let erased = raw
                .read_stream(&format!("erasure/cpts-a/{subject}"), 0)
                .await
                .expect("erasure");
            assert_eq!(erased.len(), 1, "by {erase_by}: {subject}");
            assert_eq!(erased[0].record.subject, subject);
        }
        assert_eq!(
            vault
                .reveal("cpts-a", "p-other", &other_token)
                .await
                .expect("reveal")
                .as_deref(),
            Some("VN-OTHER-1"),
            "the other person keeps their key"
        );
        assert!(
            raw.read_stream("erasure/cpts-a/p-other", 0)
                .await
                .expect("erasure")
                .is_empty()
        );

        // After: an event under a key of the person gets a new key, as after any
        // erasure; the old tokens stay unreadable; erasing again erases the new key.
        let (_, new_token) = visit_token(&vault, "d-ipp-2", "p-ipp", "VN-IPP-2").await;
        assert_ne!(new_token, ipp_token);
        assert_eq!(
            vault
                .reveal("cpts-a", "p-ipp", &new_token)
                .await
                .expect("reveal")
                .as_deref(),
            Some("VN-IPP-2")
        );
        assert_eq!(
            vault
                .reveal("cpts-a", "p-ipp", &ipp_token)
                .await
                .expect("reveal"),
            None
        );
        let again = vault
            .erase(&ErasureRequest {
                tenant: "cpts-a".into(),
                subjects: vec![erase_by.into()],
                needles: vec![],
                at: None,
            })
            .await
            .expect("again");
        assert_eq!(
            (again.subjects, again.recorded, again.keys_destroyed),
            (3, 1, 1),
            "only the new key: {again:?}"
        );
    }
}

/// Links and merges joining more keys than a person has are refused before anything is
/// erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_refuses_identities_joined_beyond_the_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path()).await;
    let raw = store.inner().clone();
    let vault = store.vault().clone();
    let (visit, token) = visit_token(&vault, "d-ins", "p-ins", "VN-INS-1").await;
    let mut events = vec![visit];
    for i in 0..parcours_runtime::links::PERSON_KEYS_MAX {
        events.push(event(
            &format!("m-{i}"),
            "p-ins",
            "identity.merged",
            serde_json::json!({"merged_subject": format!("p-dup-{i}")}),
        ));
    }
    commit_as_the_engine(&raw, &events).await;
    let err = vault
        .erase(&ErasureRequest {
            tenant: "cpts-a".into(),
            subjects: vec!["p-ins".into()],
            needles: vec![],
            at: None,
        })
        .await
        .expect_err("too many keys");
    assert!(err.to_string().contains("nothing was erased"), "{err}");
    assert_eq!(
        vault
            .reveal("cpts-a", "p-ins", &token)
            .await
            .expect("reveal")
            .as_deref(),
        Some("VN-INS-1")
    );
    assert!(
        raw.read_stream("erasure/cpts-a/p-ins", 0)
            .await
            .expect("erasure")
            .is_empty()
    );
}

/// A rotation of the master key: tokens and a dead letter made under the old key; an
/// engine with the new key and the old one as previous reads them and makes new keys
/// under the new one; `rewrap` wraps every stored key again; then the new key alone
/// reads everything, the old one alone nothing made before. A key wrapped by a master
/// key not given is left and reported, and a second run finds nothing more to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_master_key_reads_what_the_old_one_protected() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("log.db");
    let old = LocalKeyFile::from_key(&[5u8; 32]).expect("old");
    let new = LocalKeyFile::from_key(&[6u8; 32]).expect("new");
    let stray = LocalKeyFile::from_key(&[7u8; 32]).expect("stray");
    let with = |p: LocalKeyFile| {
        let log = log.clone();
        async move { VaultStore::new(SqliteStore::open(&log).await.expect("open"), p) }
    };
    let letter = || DeadLetter {
        source: "mllp".into(),
        tenant: Some("cpts-a".into()),
        reason: "refused".into(),
        payload: b"PID|||IPP4242||DUPONTEL^JEAN".to_vec(),
    };

    let before = with(old.clone()).await;
    let (_, first) = visit_token(before.vault(), "e1", "p-1", "VN-1").await;
    before.dead_letter(letter()).await.expect("keep");
    let elsewhere = with(stray.clone()).await;
    let (_, lost) = visit_token(elsewhere.vault(), "e9", "p-9", "VN-9").await;

    let during = with(new.clone().with_previous(old.clone()).expect("previous")).await;
    let (_, second) = visit_token(during.vault(), "e2", "p-2", "VN-2").await;
    assert_eq!(
        during
            .vault()
            .reveal("cpts-a", "p-1", &first)
            .await
            .expect("old token")
            .as_deref(),
        Some("VN-1")
    );
    let ids = during.patient_key_ids().await.expect("ids");
    assert_eq!(ids.iter().map(|(_, n)| n).sum::<u64>(), 4, "{ids:?}");

    let wrapped_by_old = during
        .patient_key("cpts-a", "p-1")
        .await
        .expect("read")
        .expect("p-1's key")
        .wrapped;
    let provider = new.clone().with_previous(old.clone()).expect("previous");
    let report = parcours_vault::rewrap(&provider, new.key_id(), &during)
        .await
        .expect("rewrap");
    assert_eq!(
        report.rewrapped, 2,
        "p-1 and the tenant's dead-letter key: {report:?}"
    );
    assert_eq!(report.changed_meanwhile, 0);
    assert_eq!(
        report.unreadable.into_iter().collect::<Vec<_>>(),
        vec![(stray.key_id().to_string(), 1)],
        "p-9's key, wrapped by a master key not given, is left"
    );
    assert_eq!(during.patient_key_ids().await.expect("ids"), {
        let mut want = vec![
            (new.key_id().to_string(), 3),
            (stray.key_id().to_string(), 1),
        ];
        want.sort();
        want
    });
    let again = parcours_vault::rewrap(&provider, new.key_id(), &during)
        .await
        .expect("again");
    assert_eq!((again.rewrapped, again.changed_meanwhile), (0, 0));

    let after = with(new.clone()).await;
    for (subject, token, visit) in [("p-1", &first, "VN-1"), ("p-2", &second, "VN-2")] {
        assert_eq!(
            after
                .vault()
                .reveal("cpts-a", subject, token)
                .await
                .expect("reveal")
                .as_deref(),
            Some(visit)
        );
    }
    let letters = after.dead_letters(0, 10).await.expect("letters");
    assert_eq!(
        letters[0].letter.payload,
        letter().payload,
        "opened by the new key"
    );
    assert!(after.vault().reveal("cpts-a", "p-9", &lost).await.is_err());
    let only_old = with(old).await;
    assert!(
        only_old
            .vault()
            .reveal("cpts-a", "p-1", &first)
            .await
            .is_err()
    );
    assert_eq!(
        files_contain(dir.path(), &wrapped_by_old),
        Vec::<String>::new(),
        "the old wrapping's bytes are scrubbed from the files"
    );
}
