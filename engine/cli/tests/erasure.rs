//! The right to erasure, end to end with real processes: two patients' HL7 messages
//! through `parcours serve` (MLLP), one refused message kept as a dead letter, then
//! `parcours erase`. Afterwards no byte of the erased patient's name, INS, IPP or visit
//! number is in the SQLite files (db, -wal, -shm), the process logs or the report, their
//! data key is gone (their tokens no longer open), and the replay, the other patient's
//! state and every indicator are what they were. The PostgreSQL case runs on a cluster
//! of its own (initdb, from the server binaries under /usr/lib/postgresql), so that the
//! WAL it scans holds only its own writes.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use parcours_store::EventStore;
use support::{
    Db, NatsServer, PrivatePg, Server, announced, mllp_send, now_minus_days, pamfr, psql,
    replace_all, workspace,
};

/// The erased patient.
const NAME_A: &str = "DUPONTELLIER";
const IPP_A: &str = "IPP7001234";
const NIR_A: &str = "180027512345671";
const VISIT_A: &str = "V-2026-7001";
/// The patient who stays.
const NAME_B: &str = "LEFEBVRANTE";
const IPP_B: &str = "IPP7005678";
const NIR_B: &str = "290037512345682";
const VISIT_B: &str = "V-2026-7002";
/// The assigning authority of the IPPs in the samples.
const IPP_SYSTEM: &str = "1.2.250.1.211.10.200.2";

/// The PAM-FR discharge sample for one patient, three days ago.
fn discharge(control: &str, name: &str, ipp: &str, nir: &str, visit: &str) -> Vec<u8> {
    let mut text = pamfr("a03_discharge_home_not_qualified.hl7", &[]);
    let day = |days: i64| now_minus_days(days).strftime("%Y%m%d").to_string();
    for (from, to) in [
        ("GAM-0002", control.to_string()),
        ("MARTIN", name.to_string()),
        ("123456^^^", format!("{ipp}^^^")),
        ("280079912345678", nir.to_string()),
        ("V-2026-0042", visit.to_string()),
        ("20260302", day(11)),
        ("20260310", day(3)),
    ] {
        text = replace_all(&text, from, &to);
    }
    text
}

/// `parcours serve` with MLLP, its logs (info) written to `log`.
fn serve(db: &Path, log: &Path) -> (Server, String) {
    serve_on(db.as_os_str(), &[], &[], log)
}

/// `parcours serve` with MLLP on the log `store`, with `extra` flags.
fn serve_on(
    store: &std::ffi::OsStr,
    extra: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
    log: &Path,
) -> (Server, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(["--mllp-tenant", "cpts-nord", "--store"])
        .arg(store)
        .args(extra)
        .envs(env.iter().copied())
        .args(["--pathways", "pathways"])
        .current_dir(workspace())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (http, mllp) = announced(&mut lines).expect("addresses printed");
    std::thread::spawn(move || for _ in lines {});
    let mllp = mllp.expect("the MLLP address printed");
    (Server { child, addr: http }, mllp)
}

fn parcours(args: &[&str], extra: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(args)
        .args(extra)
        .current_dir(workspace())
        .env("RUST_LOG", "debug")
        .output()
        .expect("parcours runs")
}

/// What a reader of the log sees: each instance's row (subject, pathway, status,
/// states, version) and the open work items.
async fn state(db: &Path) -> (Vec<String>, Vec<String>, usize) {
    let store = parcours_store_sqlite::SqliteStore::open(db)
        .await
        .expect("open");
    let seen = state_of(&store).await;
    store.close().await;
    seen
}

/// Whether no timer of the log is due now (read beside a running engine).
async fn nothing_due(db: &Path) -> bool {
    let store = parcours_store_sqlite::SqliteStore::open(db)
        .await
        .expect("open");
    store
        .due_timers(now_minus_days(0), 1, &parcours_store::TimerScope::All)
        .await
        .expect("due timers")
        .is_empty()
}

async fn state_of<S: EventStore>(store: &S) -> (Vec<String>, Vec<String>, usize) {
    let rows = store
        .list_instances(&parcours_store::InstanceFilter {
            tenant: "cpts-nord".into(),
            limit: 1000,
            ..parcours_store::InstanceFilter::default()
        })
        .await
        .expect("instances");
    let rows: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    let work = store
        .work_items(&parcours_store::WorkFilter {
            tenant: "cpts-nord".into(),
            limit: 1000,
            ..parcours_store::WorkFilter::default()
        })
        .await
        .expect("work");
    let work: Vec<String> = work.iter().map(|w| format!("{w:?}")).collect();
    let letters = store.dead_letters(0, 1000).await.expect("letters").len();
    (rows, work, letters)
}

#[test]
fn an_erased_patient_leaves_no_identifying_byte_and_no_other_change() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let db = data.join("log.db");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    let server_log = logs.join("serve.log");

    let (server, mllp) = serve(&db, &server_log);
    let a = discharge("GAM-7001", NAME_A, IPP_A, NIR_A, VISIT_A);
    let b = discharge("GAM-7002", NAME_B, IPP_B, NIR_B, VISIT_B);
    assert!(mllp_send(&mllp, &a).contains("MSA|AA|GAM-7001"));
    assert!(mllp_send(&mllp, &b).contains("MSA|AA|GAM-7002"));
    // A message for patient A that cannot be processed (no visit): a dead letter.
    let bad = format!(
        "MSH|^~\\&|GAM|CHU-NORD|PARCOURS|CPTS-NORD|20260310163000||ADT^A03^ADT_A03|BAD-7001|P|2.5\rPID|1||{IPP_A}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI~{NIR_A}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||{NAME_A}^Jean||19450704|M\r"
    );
    let nak = mllp_send(&mllp, bad.as_bytes());
    assert!(
        nak.contains("|BAD-7001") && !nak.contains("MSA|AA"),
        "{nak}"
    );
    // The discharges are three days old: some of their timers are due at once. The
    // engine fires them between new events; stopped before it has, it leaves them due,
    // and the restart after the erasure fires them — a change the erasure did not make.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    support::wait_for("the timers due now fired", Duration::from_secs(30), || {
        rt.block_on(nothing_due(&db))
    });
    assert!(server.terminate().success());

    // Before: both patients enrolled; the dead letter kept (sealed: it opens with the
    // tenant's key and names patient A); A's visit number a token of A's key.
    // Each discharge (DG1 I50.0 and E11.9) enrols its patient in heart failure and in
    // type 2 diabetes.
    let (rows, work, letters) = rt.block_on(state(&db));
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(letters, 1);
    let provider = parcours_vault::LocalKeyFile::load(&data.join("log.db.vault.key")).expect("key");
    let pseudonymizer =
        parcours_identity::Pseudonymizer::load(&data.join("log.db.identity.key")).expect("key");
    let subject_a = pseudonymizer.subject(
        "cpts-nord",
        &parcours_identity::PatientIdentifier::local(IPP_SYSTEM, IPP_A),
    );
    let subject_b = pseudonymizer.subject(
        "cpts-nord",
        &parcours_identity::PatientIdentifier::local(IPP_SYSTEM, IPP_B),
    );
    let (token_a, opened_letter) = rt.block_on(async {
        let store = parcours_store_sqlite::SqliteStore::open(&db)
            .await
            .expect("open");
        let sealed = parcours_vault::VaultStore::new(store.clone(), provider.clone());
        let letter = sealed.dead_letters(0, 10).await.expect("letters")[0]
            .letter
            .payload
            .clone();
        let inbound = store
            .read_stream(&format!("inbound/cpts-nord/{subject_a}"), 0)
            .await
            .expect("inbound");
        let event: serde_json::Value =
            serde_json::from_slice(&inbound[0].record.payload).expect("json");
        let token = event["data"]["encounter_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let revealed = sealed
            .vault()
            .reveal("cpts-nord", &subject_a, &token)
            .await
            .expect("reveal");
        assert_eq!(
            revealed.as_deref(),
            Some(VISIT_A),
            "the token opens before erasure"
        );
        store.close().await;
        (token, letter)
    });
    assert!(token_a.starts_with("enc1:"), "{token_a}");
    assert!(String::from_utf8_lossy(&opened_letter).contains(NAME_A));
    let replay_before = support::replay(&db);
    assert!(replay_before.status.success(), "{replay_before:?}");
    let report_before = dir.path().join("before.html");
    let out = parcours(
        &["report", "--store"],
        &[db.as_os_str(), "--out".as_ref(), report_before.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");

    // Erase patient A (both identifiers, and the name for dead letters).
    let out = parcours(
        &[
            "erase",
            "--tenant",
            "cpts-nord",
            "--identifier",
            &format!("{IPP_SYSTEM}|{IPP_A}"),
            "--identifier",
            &format!("1.2.250.1.213.1.4.8|{NIR_A}"),
            "--name",
            NAME_A,
            "--store",
        ],
        &[db.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("1 data key(s) destroyed"), "{said}");
    assert!(said.contains("1 dead letter(s) deleted"), "{said}");
    std::fs::write(logs.join("erase.out"), [out.stdout, out.stderr].concat()).expect("log");

    // The engine runs again on the log: nothing to repair, nothing changed.
    let (server, _) = serve(&db, &server_log);
    let _alive = support::get_text(&server.addr, "/healthz");
    let stopped = server.terminate();
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
    assert!(stopped.success(), "{stopped:?}: {tail}");
    let replay_after = support::replay(&db);
    assert!(replay_after.status.success(), "{replay_after:?}");
    std::fs::write(
        logs.join("replay.out"),
        [replay_after.stdout.clone(), replay_after.stderr.clone()].concat(),
    )
    .expect("log");
    assert_eq!(
        String::from_utf8_lossy(&replay_before.stdout)
            .lines()
            .last(),
        String::from_utf8_lossy(&replay_after.stdout).lines().last()
    );
    let (rows_after, work_after, letters_after) = rt.block_on(state(&db));
    assert_eq!(
        rows_after, rows,
        "every instance as it was, the erased patient's too"
    );
    assert_eq!(work_after, work, "every open task as it was");
    assert_eq!(letters_after, 0, "the dead letter naming patient A is gone");
    let report_after = dir.path().join("after.html");
    let out = parcours(
        &["report", "--store"],
        &[db.as_os_str(), "--out".as_ref(), report_after.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    // The same report but for the log position in its header (the erasure record).
    let figures = |p: &Path| {
        let html = std::fs::read_to_string(p).expect("report");
        let at = html.find("log position").expect("position");
        let end = at + html[at..].find(' ').map_or(0, |_| "log position ".len());
        let rest = html[end..].trim_start_matches(|c: char| c.is_ascii_digit());
        format!("{}{}", &html[..at], rest)
    };
    let (before, after) = (figures(&report_before), figures(&report_after));
    assert!(before == after, "the indicators are unchanged");
    assert!(
        after.contains("data-count=\"2\""),
        "both patients are counted"
    );
    std::fs::copy(&report_after, logs.join("report.html")).expect("copy");

    // The key is gone: the token no longer opens; the erasure is in the log.
    rt.block_on(async {
        let store = parcours_store_sqlite::SqliteStore::open(&db)
            .await
            .expect("open");
        let sealed = parcours_vault::VaultStore::new(store.clone(), provider.clone());
        assert_eq!(
            sealed
                .vault()
                .reveal("cpts-nord", &subject_a, &token_a)
                .await
                .expect("reveal"),
            None
        );
        let erased = store
            .read_stream(&format!("erasure/cpts-nord/{subject_a}"), 0)
            .await
            .expect("erasure");
        assert_eq!(erased.len(), 1);
        assert_eq!(erased[0].record.record_type, "patient.erased");
        store.close().await;
    });

    // No byte of patient A's identifiers anywhere: database files, logs, report.
    for needle in [NAME_A, IPP_A, NIR_A, VISIT_A] {
        for place in [&data, &logs] {
            let found = holders_under(place, needle);
            assert!(found.is_empty(), "{needle} found in {found:?}");
        }
    }
    // The scan does find what is there: the subject keys are in the log, in clear.
    assert!(
        !holders_under(&data, &subject_b).is_empty(),
        "the scan reads the files"
    );
    assert!(
        !holders_under(&data, &subject_a).is_empty(),
        "A's events stay in the log"
    );
}

/// Files under `dir` (recursively) holding `needle`.
fn holders_under(dir: &Path, needle: &str) -> Vec<PathBuf> {
    holders_since(dir, needle, std::time::SystemTime::UNIX_EPOCH)
}

/// Files under `dir` (recursively) written since `since` and holding `needle`.
fn holders_since(dir: &Path, needle: &str, since: std::time::SystemTime) -> Vec<PathBuf> {
    let mut found = Vec::new();
    // The directory itself must be there (an empty scan proves nothing); what vanishes
    // under it meanwhile (a database's temporary files) is skipped.
    assert!(dir.is_dir(), "{} is not a directory", dir.display());
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if path.is_dir() {
                todo.push(path);
            } else if !recent {
                continue;
            } else if let Ok(bytes) = std::fs::read(&path) {
                let n = needle.as_bytes();
                if bytes.windows(n.len()).any(|w| w == n) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The same on PostgreSQL: after the erasure, the database's files (its directory under
/// `base/`, after a CHECKPOINT), the WAL, a `pg_dump` of it and the process logs hold
/// none of the erased patient's identifiers; instances, tasks and the report's figures
/// are unchanged.
#[test]
fn an_erased_patient_leaves_no_identifying_byte_in_postgresql() {
    // A cluster of its own: the WAL scanned below holds this test's writes only (on the
    // shared server, other tests' writes recycle and overwrite its WAL segments, and
    // once made the check that the scan reads the WAL fail).
    let pg = PrivatePg::start();
    let admin = pg.url();
    #[allow(clippy::disallowed_methods)] // WAL segments written during the test
    let started = std::time::SystemTime::now() - Duration::from_secs(5);
    let db = Db::create_on(&admin, "erasure");
    let (name, url) = (db.name.clone(), db.url.clone());
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs");
    let identity = dir.path().join("identity.key");
    let server_log = logs.join("serve.log");
    let key_args: Vec<&std::ffi::OsStr> = vec!["--identity-key".as_ref(), identity.as_os_str()];

    // Credentials of the API (required with PostgreSQL once authentication is on; the
    // test itself calls no route).
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n  - id: erasure-test\n    principal: erasure-test\n    sha256: \"{}\"\n    tenants: [cpts-nord]\n    roles: [integration]\n",
            "ab".repeat(32)
        ),
    )
    .expect("auth file");
    let env = [("PARCOURS_AUTH", auth.as_os_str())];
    let (server, mllp) = serve_on(url.as_ref(), &key_args, &env, &server_log);
    assert!(
        mllp_send(&mllp, &discharge("GAM-7101", NAME_A, IPP_A, NIR_A, VISIT_A)).contains("MSA|AA")
    );
    assert!(
        mllp_send(&mllp, &discharge("GAM-7102", NAME_B, IPP_B, NIR_B, VISIT_B)).contains("MSA|AA")
    );
    let bad = format!(
        "MSH|^~\\&|GAM|CHU-NORD|PARCOURS|CPTS-NORD|20260310163000||ADT^A03^ADT_A03|BAD-7101|P|2.5\rPID|1||{IPP_A}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI||{NAME_A}^Jean||19450704|M\r"
    );
    assert!(!mllp_send(&mllp, bad.as_bytes()).contains("MSA|AA"));
    assert!(server.terminate().success());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = rt.block_on(async {
        let store = parcours_store_postgres::PgStore::connect(&url)
            .await
            .expect("connect");
        state_of(&store).await
    });
    assert_eq!((before.0.len(), before.2), (4, 1), "{before:?}");
    let report = |out: &Path| {
        let o = parcours(&["report", "--store", &url, "--out"], &[out.as_os_str()]);
        assert!(o.status.success(), "{o:?}");
        let html = std::fs::read_to_string(out).expect("report");
        let at = html.find("log position").expect("position");
        let rest =
            html[at + "log position ".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        format!("{}{}", &html[..at], rest)
    };
    let report_before = report(&dir.path().join("before.html"));

    let out = parcours(
        &[
            "erase",
            "--tenant",
            "cpts-nord",
            "--identifier",
            &format!("{IPP_SYSTEM}|{IPP_A}"),
            "--identifier",
            &format!("1.2.250.1.213.1.4.8|{NIR_A}"),
            "--name",
            NAME_A,
            "--store",
            &url,
            "--identity-key",
        ],
        &[identity.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("1 data key(s) destroyed") && said.contains("1 dead letter(s) deleted"),
        "{said}"
    );
    std::fs::write(logs.join("erase.out"), [out.stdout, out.stderr].concat()).expect("log");

    let after = rt.block_on(async {
        let store = parcours_store_postgres::PgStore::connect(&url)
            .await
            .expect("connect");
        state_of(&store).await
    });
    assert_eq!(after.0, before.0, "every instance as it was");
    assert_eq!(after.1, before.1, "every open task as it was");
    assert_eq!(after.2, 0, "the dead letter naming patient A is gone");
    let report_after = report(&logs.join("report.html"));
    assert!(
        report_before == report_after,
        "the indicators are unchanged"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM records WHERE record_type = 'patient.erased'"
        ),
        "2",
        "one erasure record per subject key (the IPP's and the INS's)"
    );
    let audited = psql(
        &url,
        "SELECT count(*) FROM audit WHERE action = 'patient.erase'",
    );
    assert_eq!(
        audited, "2",
        "the erasure is in the audit trail, per subject key"
    );

    // The raw files: the database's directory and the WAL, flushed; a dump of it.
    psql(&admin, "CHECKPOINT");
    let data = PathBuf::from(psql(&admin, "SHOW data_directory"));
    let oid = psql(
        &admin,
        &format!("SELECT oid FROM pg_database WHERE datname = '{name}'"),
    );
    let db_dir = data.join("base").join(&oid);
    let dump = Command::new("pg_dump")
        .arg(&url)
        .output()
        .expect("pg_dump runs");
    assert!(dump.status.success(), "{dump:?}");
    std::fs::write(logs.join("dump.sql"), &dump.stdout).expect("dump");
    for needle in [NAME_A, IPP_A, NIR_A, VISIT_A] {
        for place in [&db_dir, &logs] {
            let found = holders_under(place, needle);
            assert!(found.is_empty(), "{needle} found in {found:?}");
        }
        let wal = holders_since(&data.join("pg_wal"), needle, started);
        assert!(wal.is_empty(), "{needle} found in {wal:?}");
    }
    let subject_b = {
        let p = parcours_identity::Pseudonymizer::load(&identity).expect("identity key");
        p.subject(
            "cpts-nord",
            &parcours_identity::PatientIdentifier::local(IPP_SYSTEM, IPP_B),
        )
    };
    assert!(
        !holders_under(&db_dir, &subject_b).is_empty(),
        "the scan reads the files"
    );
    assert!(
        !holders_since(&data.join("pg_wal"), &subject_b, started).is_empty(),
        "the scan reads the WAL written during the test"
    );
}

/// With JetStream (`serve --nats` on SQLite: the MLLP front forwards through
/// `PARCOURS_IN`, effects go out on `PARCOURS_OUT`): after the erasure, the JetStream
/// store directory holds none of the erased patient's identifiers either (the visit
/// number was a token before it was published), while the effects are there.
#[test]
fn an_erased_patient_leaves_no_identifying_byte_in_jetstream() {
    let dir = tempfile::tempdir().expect("dir");
    let (data, logs) = (dir.path().join("data"), dir.path().join("logs"));
    for d in [&data, &logs] {
        std::fs::create_dir(d).expect("dir");
    }
    let mut nats = NatsServer::start();
    let js = nats.store().to_path_buf();
    let db = data.join("log.db");
    let url = nats.url();
    let (server, mllp) = serve_on(
        db.as_os_str(),
        &["--nats".as_ref(), url.as_ref()],
        &[],
        &logs.join("serve.log"),
    );
    assert!(
        mllp_send(&mllp, &discharge("GAM-7201", NAME_A, IPP_A, NIR_A, VISIT_A)).contains("MSA|AA")
    );
    assert!(
        mllp_send(&mllp, &discharge("GAM-7202", NAME_B, IPP_B, NIR_B, VISIT_B)).contains("MSA|AA")
    );
    let bad = format!(
        "MSH|^~\\&|GAM|CHU-NORD|PARCOURS|CPTS-NORD|20260310163000||ADT^A03^ADT_A03|BAD-7201|P|2.5\rPID|1||{IPP_A}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI||{NAME_A}^Jean||19450704|M\r"
    );
    assert!(!mllp_send(&mllp, bad.as_bytes()).contains("MSA|AA"));
    assert!(server.terminate().success());

    let out = parcours(
        &[
            "erase",
            "--tenant",
            "cpts-nord",
            "--identifier",
            &format!("{IPP_SYSTEM}|{IPP_A}"),
            "--name",
            NAME_A,
            "--store",
        ],
        &[db.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("1 data key(s) destroyed") && said.contains("1 dead letter(s) deleted"),
        "{said}"
    );
    nats.kill(); // its store stays, to be scanned

    for needle in [NAME_A, IPP_A, NIR_A, VISIT_A] {
        for place in [&js, &data, &logs] {
            let found = holders_under(place, needle);
            assert!(found.is_empty(), "{needle} found in {found:?}");
        }
    }
    let subject_b = parcours_identity::Pseudonymizer::load(&data.join("log.db.identity.key"))
        .expect("identity key")
        .subject(
            "cpts-nord",
            &parcours_identity::PatientIdentifier::local(IPP_SYSTEM, IPP_B),
        );
    assert!(
        !holders_under(&js, &subject_b).is_empty(),
        "the scan reads the JetStream store"
    );
}

/// A person of the linked cases: an older IPP (merged later by an A40), the IPP, the INS.
const NAME_L: &str = "BOURGEOLLET";
const IPP_L_OLD: &str = "IPP7309876";
const IPP_L: &str = "IPP7301234";
const NIR_L: &str = "180027512345617";
const VISITS_L: [&str; 2] = ["V-2026-7301", "V-2026-7302"];
/// The person beside them, who keeps everything.
const IPP_M: &str = "IPP7305678";
const NIR_M: &str = "290037512345628";
const VISIT_M: &str = "V-2026-7303";

/// An HL7 timestamp `days` days ago.
fn hl7_ago(days: f64) -> String {
    let at = now_minus_days(0) - jiff::SignedDuration::from_secs_f64(days * 86_400.0);
    at.strftime("%Y%m%d%H%M%S").to_string()
}

/// ADT^A31 bringing the qualified identity (PID-32 `VALI`): the IPP's link to the INS.
fn qualification(control: &str, ipp: &str, nir: &str, days: f64) -> Vec<u8> {
    let at = hl7_ago(days);
    let to_32 = "|".repeat(24);
    format!(
        "MSH|^~\\&|GAM|CHU-NORD^1.2.250.1.211.10.200.1^ISO|PARCOURS|CPTS-NORD|{at}||ADT^A31^ADT_A05|{control}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8\r\
         EVN||{at}\r\
         PID|1||{ipp}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI~{nir}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||{NAME_L}^Jeanne||19450704|F{to_32}VALI\r\
         PV1|1|N\r"
    )
    .into_bytes()
}

/// A lab's weight result naming the patient by the IPP alone, `days` days ago (its
/// result id becomes a token of the key it is stored under).
fn lab_weight(control: &str, ipp: &str, kg: f64, days: f64) -> Vec<u8> {
    let at = hl7_ago(days);
    format!(
        "MSH|^~\\&|SIL|LABO-VILLE|PARCOURS|CPTS-NORD|{at}||ORU^R01^ORU_R01|{control}|P|2.5|||||FRA|UNICODE UTF-8\r\
         PID|1||{ipp}^^^CHU-NORD&{IPP_SYSTEM}&ISO^PI||{NAME_L}^Jeanne||19450704|F\r\
         OBR|1|CMD-{control}^GAM|RES-{control}^SIL|POIDS^Poids^L|||{at}\r\
         OBX|1|NM|29463-7^Poids^LN||{kg}|kg^^UCUM|||||F|||{at}\r"
    )
    .into_bytes()
}

/// ADT^A40 (PAM-FR sample): the qualified patient (IPP, INS `VALI`) absorbs the record
/// of `old` (MRG).
fn merge(control: &str, ipp: &str, nir: &str, old: &str, days: f64) -> Vec<u8> {
    pamfr(
        "a40_merge.hl7",
        &[
            ("GAM-0011", control.to_string()),
            ("20260312083000", hl7_ago(days)),
            ("MARTIN", NAME_L.to_string()),
            ("123456^^^", format!("{ipp}^^^")),
            ("654321^^^", format!("{old}^^^")),
            ("280079912345678", nir.to_string()),
        ],
    )
}

/// Where the log of a linked case is.
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

    /// The vault's master key file `parcours serve` uses by default.
    fn vault_key(&self, identity: &Path) -> PathBuf {
        match self {
            Backend::Sqlite(p) => PathBuf::from(format!("{}.vault.key", p.display())),
            Backend::Postgres(_) => identity.to_path_buf(),
        }
    }
}

/// What the log says of some keys: the tokens (`enc1:…`) stored in their inbound
/// streams with whether each opens, the erasure records of each key, and whether each
/// has a data key.
#[derive(Debug, Default)]
struct Keys {
    tokens: Vec<(String, bool)>,
    erased: Vec<usize>,
    with_key: Vec<bool>,
}

async fn keys_of<S>(store: S, provider: parcours_vault::LocalKeyFile, subjects: &[&str]) -> Keys
where
    S: EventStore + parcours_store::PatientKeys + Clone,
{
    let vault = parcours_vault::Vault::new(provider, store.clone());
    let mut out = Keys::default();
    for subject in subjects {
        let records = store
            .read_stream(&format!("inbound/cpts-nord/{subject}"), 0)
            .await
            .expect("inbound");
        for r in records {
            let event: serde_json::Value = serde_json::from_slice(&r.record.payload).expect("json");
            let Some(data) = event["data"].as_object() else {
                continue;
            };
            for token in data.values().filter_map(|v| v.as_str()) {
                if token.starts_with("enc1:") {
                    let opens = vault
                        .reveal("cpts-nord", subject, token)
                        .await
                        .expect("reveal")
                        .is_some();
                    out.tokens.push((token.to_string(), opens));
                }
            }
        }
        out.erased.push(
            store
                .read_stream(&format!("erasure/cpts-nord/{subject}"), 0)
                .await
                .expect("erasure")
                .len(),
        );
        out.with_key.push(
            store
                .patient_key("cpts-nord", subject)
                .await
                .expect("key")
                .is_some(),
        );
    }
    out
}

/// [`keys_of`] on the backend's log, with its vault key.
fn read_keys(backend: &Backend, identity: &Path, subjects: &[&str]) -> Keys {
    let provider =
        parcours_vault::LocalKeyFile::load(&backend.vault_key(identity)).expect("vault key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match backend {
            Backend::Sqlite(p) => {
                let store = parcours_store_sqlite::SqliteStore::open(p)
                    .await
                    .expect("open");
                let keys = keys_of(store.clone(), provider, subjects).await;
                store.close().await;
                keys
            }
            Backend::Postgres(db) => {
                let store = parcours_store_postgres::PgStore::connect(&db.url)
                    .await
                    .expect("connect");
                keys_of(store, provider, subjects).await
            }
        }
    })
}

/// [`a_linked_person_is_erased_whole`] by the older IPP on a log an earlier release
/// wrote: its A40 without the older IPP's record, which `parcours erase` writes first.
const EARLIER_A40: &str = "old ipp, an earlier release's A40";

/// A person followed under an older IPP, then under the IPP; a lab's results under the
/// IPP; an A31 links the IPP to the INS, then more results (now under the INS's key)
/// and an A40 merges the older IPP into the INS. `parcours erase` names them by the one
/// identifier `by` (the INS, the IPP, or the older IPP the A40 retired, which leads to
/// the INS's key): every key of the person is erased — none of
/// their tokens opens, each key has its erasure record — and no byte of their
/// identifiers is left in the log's files (or a dump of it) or the logs; the other
/// patient keeps theirs. Afterwards a result under the IPP is recorded under the INS's
/// key with a new data key, as after any erasure.
fn a_linked_person_is_erased_whole(backend: &Backend, by: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs");
    let identity = dir.path().join("identity.key");
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n  - id: erasure-test\n    principal: erasure-test\n    sha256: \"{}\"\n    tenants: [cpts-nord]\n    roles: [integration]\n",
            "ab".repeat(32)
        ),
    )
    .expect("auth file");
    let store = backend.store_arg();
    let key_args: Vec<&std::ffi::OsStr> = vec!["--identity-key".as_ref(), identity.as_os_str()];
    let env = [("PARCOURS_AUTH", auth.as_os_str())];
    let (server, mllp) = serve_on(store.as_ref(), &key_args, &env, &logs.join("serve.log"));
    let sent = |msg: &[u8], control: &str| {
        let ack = mllp_send(&mllp, msg);
        assert!(ack.contains(&format!("MSA|AA|{control}")), "{ack}");
    };
    sent(
        &discharge("GAM-7300", NAME_L, IPP_L_OLD, NIR_L, VISITS_L[0]),
        "GAM-7300",
    );
    sent(
        &discharge("GAM-7301", NAME_L, IPP_L, NIR_L, VISITS_L[1]),
        "GAM-7301",
    );
    sent(&lab_weight("LAB-7301", IPP_L, 80.0, 2.5), "LAB-7301");
    sent(
        &discharge("GAM-7303", "MARTEAUX", IPP_M, NIR_M, VISIT_M),
        "GAM-7303",
    );
    sent(&qualification("GAM-7304", IPP_L, NIR_L, 2.0), "GAM-7304");
    sent(&lab_weight("LAB-7302", IPP_L, 81.0, 1.5), "LAB-7302");
    sent(&merge("GAM-7305", IPP_L, NIR_L, IPP_L_OLD, 1.0), "GAM-7305");
    assert!(server.terminate().success());
    if by == EARLIER_A40 {
        let Backend::Postgres(db) = backend else {
            panic!("an earlier release's log is made through psql");
        };
        support::drop_retirement_records(&db.url);
    }

    let p = parcours_identity::Pseudonymizer::load(&identity).expect("identity key");
    let ipp = |v: &str| {
        p.subject(
            "cpts-nord",
            &parcours_identity::PatientIdentifier::local(IPP_SYSTEM, v),
        )
    };
    let ins = p.subject(
        "cpts-nord",
        &parcours_identity::PatientIdentifier::ins(parcours_identity::OID_INS_NIR, NIR_L),
    );
    let (old, local, other) = (ipp(IPP_L_OLD), ipp(IPP_L), ipp(IPP_M));
    let person = [old.as_str(), local.as_str(), ins.as_str()];
    let before = read_keys(backend, &identity, &person);
    // The older IPP's visit, the IPP's visit and first result, the later result: each
    // a token of the key it was stored under, all readable.
    assert_eq!(before.tokens.len(), 4, "{before:?}");
    assert!(before.tokens.iter().all(|(_, opens)| *opens), "{before:?}");
    assert_eq!(before.with_key, [true, true, true]);

    let identifier = match by {
        "ins" => format!("1.2.250.1.213.1.4.8|{NIR_L}"),
        "old ipp" | EARLIER_A40 => format!("{IPP_SYSTEM}|{IPP_L_OLD}"),
        _ => format!("{IPP_SYSTEM}|{IPP_L}"),
    };
    let out = parcours(
        &[
            "erase",
            "--tenant",
            "cpts-nord",
            "--identifier",
            &identifier,
            "--name",
            NAME_L,
            "--store",
            &store,
            "--identity-key",
        ],
        &[identity.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("3 subject key(s) (1 named, 2 through identity links and merges)")
            && said.contains("3 data key(s) destroyed"),
        "by the {by}: {said}"
    );
    std::fs::write(logs.join("erase.out"), [out.stdout, out.stderr].concat()).expect("log");

    let after = read_keys(backend, &identity, &person);
    assert_eq!(
        after.tokens.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        before.tokens.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        "the records stay"
    );
    assert!(
        after.tokens.iter().all(|(_, opens)| !opens),
        "by the {by}: a token still opens: {after:?}"
    );
    assert_eq!(after.erased, [1, 1, 1], "one erasure record per key");
    assert_eq!(after.with_key, [false, false, false]);
    let beside = read_keys(backend, &identity, &[other.as_str()]);
    assert!(
        beside.tokens.len() == 1 && beside.tokens[0].1 && beside.erased == [0],
        "the other patient keeps theirs: {beside:?}"
    );

    // After the erasure: a result under the IPP goes to the INS's key, with a new data
    // key (its token opens), the erased tokens staying unreadable.
    let (server, mllp) = serve_on(store.as_ref(), &key_args, &env, &logs.join("serve.log"));
    let ack = mllp_send(&mllp, &lab_weight("LAB-7306", IPP_L, 82.0, 0.5));
    assert!(ack.contains("MSA|AA|LAB-7306"), "{ack}");
    assert!(server.terminate().success());
    let later = read_keys(backend, &identity, &person);
    let fresh: Vec<&(String, bool)> = later
        .tokens
        .iter()
        .filter(|(t, _)| !before.tokens.iter().any(|(b, _)| b == t))
        .collect();
    assert!(
        fresh.len() == 1 && fresh[0].1,
        "the new result's token opens: {later:?}"
    );
    assert_eq!(later.tokens.iter().filter(|(_, opens)| *opens).count(), 1);
    assert_eq!(
        later.with_key,
        [false, false, true],
        "a new key for the INS"
    );

    // No byte of the person's identifiers: the log's files or a dump, the logs.
    let data = match backend {
        Backend::Sqlite(p) => p.parent().expect("data dir").to_path_buf(),
        Backend::Postgres(db) => {
            let dump = Command::new("pg_dump")
                .arg(&db.url)
                .output()
                .expect("pg_dump runs");
            assert!(dump.status.success(), "{dump:?}");
            std::fs::write(logs.join("dump.sql"), &dump.stdout).expect("dump");
            logs.clone()
        }
    };
    for needle in [NAME_L, IPP_L_OLD, IPP_L, NIR_L, VISITS_L[0], VISITS_L[1]] {
        for place in [&data, &logs] {
            let found = holders_under(place, needle);
            assert!(found.is_empty(), "{needle} found in {found:?}");
        }
    }
    assert!(
        !holders_under(&data, &other).is_empty(),
        "the scan reads the log"
    );
}

#[test]
fn a_linked_person_erased_by_the_ins_alone_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    a_linked_person_is_erased_whole(&Backend::Sqlite(data.join("log.db")), "ins");
}

#[test]
fn a_linked_person_erased_by_the_ipp_alone_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    a_linked_person_is_erased_whole(&Backend::Sqlite(data.join("log.db")), "ipp");
}

#[test]
fn a_linked_person_erased_by_the_ins_alone_on_postgres() {
    a_linked_person_is_erased_whole(&Backend::Postgres(Db::create("erasure_ins")), "ins");
}

#[test]
fn a_linked_person_erased_by_the_ipp_alone_on_postgres() {
    a_linked_person_is_erased_whole(&Backend::Postgres(Db::create("erasure_ipp")), "ipp");
}

#[test]
fn a_linked_person_erased_by_the_ipp_an_a40_retired_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    a_linked_person_is_erased_whole(&Backend::Sqlite(data.join("log.db")), "old ipp");
}

#[test]
fn a_linked_person_erased_by_the_ipp_an_a40_retired_on_postgres() {
    a_linked_person_is_erased_whole(&Backend::Postgres(Db::create("erasure_old")), "old ipp");
}

#[test]
fn a_linked_person_erased_by_the_ipp_an_earlier_release_retired_on_postgres() {
    a_linked_person_is_erased_whole(
        &Backend::Postgres(Db::create("erasure_earlier")),
        EARLIER_A40,
    );
}
