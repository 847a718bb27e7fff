//! `parcours serve` as a real process: posted over HTTP, killed with SIGKILL mid-stream,
//! restarted, stopped with SIGTERM. Nothing acknowledged is lost, nothing is stored twice,
//! effect ids never change, and the log replays to the stored state.

mod support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn sigkill_mid_stream_loses_nothing_acknowledged_and_changes_no_effect_id() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let events = cohort();
    assert_eq!(events.len(), 10_000);

    // First run: killed with SIGKILL once a third of the events are acknowledged.
    let server = Server::start(&db);
    let first = post_all(&server.addr, &events, Some(3_000));
    assert!(
        first.len() >= 3_000,
        "acknowledged before the kill: {}",
        first.len()
    );
    let before_kill = effects(&server.addr);
    server.kill();

    // Second run: everything is sent again (the acknowledged ones too: duplicates).
    let server = Server::start(&db);
    let after_restart = effects(&server.addr);
    for (pos, id) in &before_kill {
        assert!(
            after_restart.contains(&(*pos, id.clone())),
            "effect {id} at {pos} changed"
        );
    }
    let second = post_all(&server.addr, &events, None);
    assert_eq!(
        second.len(),
        events.len(),
        "every event acknowledged at last"
    );
    let after_all = effects(&server.addr);
    for (pos, id) in &before_kill {
        assert!(
            after_all.contains(&(*pos, id.clone())),
            "effect {id} at {pos} changed"
        );
    }
    let unique: BTreeSet<&String> = after_all.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), after_all.len(), "no effect id twice");
    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // The log: each event exactly once; replay equals the stored state; the relay
    // published up to the end of the log before exiting.
    let (inbound, last) = inbound_ids(&db);
    assert_eq!(inbound.len(), events.len(), "every event is in the log");
    assert!(inbound.values().all(|n| *n == 1), "and only once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use parcours_store::EventStore;
        let store = parcours_store_sqlite::SqliteStore::open(&db)
            .await
            .expect("open");
        assert_eq!(
            store.checkpoint("relay").await.expect("checkpoint"),
            Some(last),
            "every effect was published before exit"
        );
    });
    let o = replay(&db);
    assert!(
        o.status.success(),
        "replay equals the stored state:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_backup_taken_while_serving_restores_to_a_working_log() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let events = cohort();
    let server = Server::start(&db);
    let before = post_all(&server.addr, &events[..2_000], None);
    assert_eq!(before.len(), 2_000);

    // The backup runs while the rest is being posted.
    let dest = dir.path().join("backup.db");
    let backup_args = [
        OsStr::new("backup"),
        OsStr::new("--store"),
        db.as_os_str(),
        dest.as_os_str(),
    ];
    let (rest, (ok, out)) = std::thread::scope(|scope| {
        let poster = scope.spawn(|| post_all(&server.addr, &events[2_000..], None));
        let backup = run_parcours(&backup_args);
        (poster.join().expect("poster"), backup)
    });
    assert!(ok, "{out}");
    assert!(out.contains("checked"), "{out}");
    assert!(
        out.contains("log.db.identity.key"),
        "names the key files: {out}"
    );
    assert_eq!(rest.len(), 8_000);
    assert!(server.terminate().success());

    // A second backup under the same name is refused, the first left as it was.
    let size = std::fs::metadata(&dest).expect("backup").len();
    let (ok, out) = run_parcours(&backup_args);
    assert!(!ok && out.contains("never overwrites"), "{out}");
    assert_eq!(std::fs::metadata(&dest).expect("backup").len(), size);

    // The copy holds everything acknowledged before it began, each event once, and only
    // events the log holds; its projections equal its replay.
    let (copied, _) = inbound_ids(&dest);
    assert!(before.iter().all(|id| copied.contains_key(id)));
    assert!(copied.values().all(|n| *n == 1));
    assert!(
        copied
            .keys()
            .all(|id| before.contains(id) || rest.contains(id))
    );
    let o = replay(&dest);
    assert!(
        o.status.success(),
        "the backup replays to its stored state:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Restored (the copy and the key files under a new log's name), it serves: what it
    // holds is a duplicate, what came after the backup is taken again.
    let restored = dir.path().join("restored.db");
    std::fs::copy(&dest, &restored).expect("restore");
    for key in ["identity.key", "vault.key", "api-key"] {
        std::fs::copy(
            dir.path().join(format!("log.db.{key}")),
            dir.path().join(format!("restored.db.{key}")),
        )
        .expect("key file");
    }
    let server = Server::start(&restored);
    let (status, v) = http(
        &server.addr,
        "POST",
        "/v1/events",
        Some(&events[0].to_string()),
    )
    .expect("post");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "duplicate", "{v}");
    let again = post_all(&server.addr, &events, None);
    assert_eq!(again.len(), events.len());
    assert!(server.terminate().success());
    let (inbound, _) = inbound_ids(&restored);
    assert_eq!(inbound.len(), events.len());
    assert!(inbound.values().all(|n| *n == 1));
    let o = replay(&restored);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn bad_requests_are_refused_with_a_reason_and_the_service_stays_up() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("log.db"));
    let (status, v) = http(&server.addr, "POST", "/v1/events", Some("{not json")).expect("post");
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("line 1")
    );
    let huge = "x".repeat(5 << 20);
    let r = http(&server.addr, "POST", "/v1/events", Some(&huge));
    assert!(
        matches!(r, Ok((413, _))) || r.is_err(),
        "an oversized body is refused: {r:?}"
    );
    let (status, _) = http(&server.addr, "GET", "/readyz", None).expect("ready");
    assert_eq!(status, 200);
    let (status, v) = http(&server.addr, "GET", "/v1/dead-letters", None).expect("dead letters");
    assert_eq!(status, 200);
    assert!(
        !v["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .is_empty()
    );
    assert!(server.terminate().success());
}

/// A published version never changes; a new version enrols new patients while the old
/// one keeps its instances, even once its file is gone.
#[test]
fn published_versions_are_immutable_and_pinned_instances_survive_their_file() {
    let dir = tempfile::tempdir().expect("dir");
    let pathways = dir.path().join("pathways");
    std::fs::create_dir(&pathways).expect("mkdir");
    let hf = heart_failure_as(1);
    std::fs::write(pathways.join("heart-failure.yaml"), &hf).expect("write v1");
    let db = dir.path().join("log.db");
    let start = |pathways: &Path| -> Result<Server, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args(["serve", "--http", "127.0.0.1:0", "--store"])
            .arg(&db)
            .arg("--pathways")
            .arg(pathways)
            .current_dir(workspace())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut child = out;
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        match announced(&mut lines) {
            Some((addr, _)) => {
                std::thread::spawn(move || for _ in lines {});
                support::register_local_key(&addr, &db);
                Ok(Server { child, addr })
            }
            _ => {
                let o = child.wait_with_output().expect("exit");
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        }
    };
    let discharge = |id: &str, subject: &str| {
        json!({"id": id, "tenant": "cpts-a", "subject": subject, "occurredat": now_minus_days(0).to_string(),
            "type": "encounter.discharged",
            "data": {"encounter_id": id, "destination": "home", "diagnoses": ["I50.1"]}})
        .to_string()
    };

    let server = start(&pathways).expect("v1 serves");
    let (status, v) = http(
        &server.addr,
        "POST",
        "/v1/events",
        Some(&discharge("adt-1", "p-1")),
    )
    .expect("post");
    assert_eq!(status, 200, "{v}");
    assert!(server.terminate().success());

    // The same version with another text: refused, and the message says what to do.
    let edited = hf.replace(
        "title: Heart failure — follow-up after discharge",
        "title: Heart failure (edited)",
    );
    assert_ne!(edited, hf);
    std::fs::write(pathways.join("heart-failure.yaml"), &edited).expect("write");
    let err = start(&pathways).err().expect("refused");
    assert!(
        err.contains("never changes") && err.contains("new version"),
        "{err}"
    );

    // As version 2, in place of the v1 file: v2 enrols, v1 comes back from the log.
    std::fs::write(
        pathways.join("heart-failure.yaml"),
        edited.replacen("version: 1", "version: 2", 1),
    )
    .expect("write v2");
    let server = start(&pathways).expect("v2 serves");
    let (_, v) = http(&server.addr, "GET", "/v1/pathways", None).expect("pathways");
    let versions: Vec<(String, u64, bool)> = v["pathways"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|p| p["id"] == "heart-failure")
        .map(|p| {
            (
                p["id"].as_str().unwrap_or("").into(),
                p["version"].as_u64().unwrap_or(0),
                p["enrols"] == true,
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("heart-failure".into(), 1, false),
            ("heart-failure".into(), 2, true)
        ]
    );
    let (status, v) = http(
        &server.addr,
        "POST",
        "/v1/events",
        Some(&discharge("adt-2", "p-2")),
    )
    .expect("post");
    assert_eq!(status, 200, "{v}");
    let (_, v) = http(&server.addr, "GET", "/v1/instances?tenant=cpts-a", None).expect("list");
    let mut pinned: Vec<(String, u64)> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["subject"].as_str().unwrap_or("").into(),
                i["pathway"]["version"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    pinned.sort();
    assert_eq!(
        pinned,
        [("p-1".into(), 1), ("p-2".into(), 2)],
        "each instance stays on its version"
    );
    // The v1 patient's events are still decided on v1.
    let consent = json!({"id": "consent-1", "tenant": "cpts-a", "subject": "p-1",
        "occurredat": now_minus_days(0).to_string(), "type": "consent.given", "data": {}})
    .to_string();
    let (status, v) = http(&server.addr, "POST", "/v1/events", Some(&consent)).expect("post");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "committed");
    assert!(server.terminate().success());
}

/// HL7 v2 over MLLP into `parcours serve`: AA once committed, the same ACK for a resend,
/// a NAK with the reason (and a dead letter) for a bad message.
#[test]
fn hl7v2_over_mllp_enrols_and_naks_bad_messages() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--mllp",
            "127.0.0.1:0",
            "--mllp-tenant",
            "cpts-nord",
            "--store",
        ])
        .arg(dir.path().join("log.db"))
        .args(["--pathways", "pathways"])
        .current_dir(workspace())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (http_addr, mllp_addr) = announced(&mut lines).expect("addresses printed");
    let mllp_addr = mllp_addr.expect("the MLLP address is printed");
    std::thread::spawn(move || for _ in lines {});
    support::register_local_key(&http_addr, &dir.path().join("log.db"));
    let server = Server {
        child,
        addr: http_addr.clone(),
    };

    let send = |msg: &[u8]| mllp_send(&mllp_addr, msg);
    let a03 = pamfr("a03_discharge_home_not_qualified.hl7", &[]);
    let ack = send(&a03);
    assert!(ack.contains("MSA|AA|GAM-0002"), "{ack}");
    // The same ACK for the resend, but for MSH-7: when each was made.
    let without_msh7 = |a: &str| {
        let mut f: Vec<&str> = a.split('|').collect();
        f[6] = "";
        f.join("|")
    };
    assert_eq!(
        without_msh7(&send(&a03)),
        without_msh7(&ack),
        "a resend gets the same ACK"
    );
    let (_, v) = http(&http_addr, "GET", "/v1/instances?tenant=cpts-nord", None).expect("list");
    let instances = v["instances"].as_array().cloned().unwrap_or_default();
    // The stay's DG1 I50.0 (the discharge) and E11.9 (diagnosis.recorded): each
    // pathway enrolled once, the same patient.
    let mut pathways: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["pathway"]["id"].as_str())
        .collect();
    pathways.sort_unstable();
    assert_eq!(pathways, ["heart-failure", "type2-diabetes"], "{v}");
    let subject = instances[0]["subject"].as_str().unwrap_or("");
    assert_eq!(instances[1]["subject"], subject);
    assert!(
        subject.starts_with("p-") && !subject.contains("123456"),
        "{subject}"
    );

    let bad = b"MSH|^~\\&|GAM|CHU-NORD|PARCOURS|CPTS-NORD|20260310163000||ADT^A03^ADT_A03|BAD-1|P|2.5\rPID|1||";
    let nak = send(bad);
    assert!(
        nak.contains("MSA|AE|BAD-1") || nak.contains("MSA|AR|BAD-1"),
        "{nak}"
    );
    assert!(nak.contains("\rERR|"), "the NAK says why: {nak}");
    let (_, v) = http(&http_addr, "GET", "/v1/dead-letters", None).expect("dead letters");
    let letters = v["dead_letters"].as_array().cloned().unwrap_or_default();
    assert!(letters.iter().any(|l| l["source"] == "mllp"), "{v}");
    assert!(server.terminate().success());
}

/// The MLLP flags reach the listener: a sender's ISO-8859-1 without MSH-18 and its
/// training messages (MSH-11 `T`) are accepted when configured so, and a stalled
/// frame is closed after the frame timeout.
#[test]
fn mllp_flags_set_the_charset_processing_ids_and_frame_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(["--mllp-tenant", "cpts-nord", "--store"])
        .arg(dir.path().join("log.db"))
        .args(["--pathways", "pathways"])
        .args(["--mllp-default-charset", "8859/1"])
        .args(["--mllp-processing-ids", "P,T"])
        .env("PARCOURS_MLLP_FRAME_TIMEOUT", "1")
        .current_dir(workspace())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (http_addr, mllp_addr) = announced(&mut lines).expect("addresses printed");
    let mllp_addr = mllp_addr.expect("the MLLP address is printed");
    std::thread::spawn(move || for _ in lines {});
    let server = Server {
        child,
        addr: http_addr,
    };
    // ISO-8859-1 (`Hélène` as one byte per letter), MSH-18 empty, a training message.
    let utf8 = pamfr(
        "a03_discharge_home_not_qualified.hl7",
        &[
            ("|UNICODE UTF-8", String::from("|")),
            ("|P|2.5^FRA", String::from("|T|2.5^FRA")),
        ],
    );
    let latin1: Vec<u8> = String::from_utf8(utf8)
        .expect("utf-8 sample")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("a Latin-1 character"))
        .collect();
    assert!(latin1.contains(&0xE9), "the é is one byte");
    let ack = mllp_send(&mllp_addr, &latin1);
    assert!(ack.contains("MSA|AA|GAM-0002"), "{ack}");
    // A frame begun and never finished: closed, unanswered, after about a second.
    let mut slow = TcpStream::connect(&mllp_addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    slow.write_all(b"\x0bMSH|^~\\&|").expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(
        slow.read(&mut buf).expect("closed before the read timeout"),
        0,
        "closed with no answer"
    );
    assert!(server.terminate().success());
}

/// An HL7 identity merge end to end: a heart-failure discharge (A03) under a duplicate
/// local record, an A40 merging that record into the patient's qualified identity, then
/// lab results (ORU^R01) under the surviving identity reach the instance the discharge
/// started; the discharge resent after the merge, naming either record, is acknowledged
/// as already recorded. The log replays to the stored state.
#[test]
fn hl7v2_merge_moves_the_instance_to_the_surviving_identity() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(["--mllp-tenant", "cpts-nord", "--store"])
        .arg(&db)
        .args(["--pathways", "pathways"])
        .current_dir(workspace())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (http_addr, mllp_addr) = announced(&mut lines).expect("addresses printed");
    let mllp_addr = mllp_addr.expect("the MLLP address is printed");
    std::thread::spawn(move || for _ in lines {});
    support::register_local_key(&http_addr, &dir.path().join("log.db"));
    let server = Server {
        child,
        addr: http_addr.clone(),
    };
    let send = |msg: &[u8]| mllp_send(&mllp_addr, msg);
    // The PAM-FR samples, moved to the last days (timers run on the wall clock): the
    // discharge three days ago, the merge two days ago, the results yesterday.
    let day = |days: i64| now_minus_days(days).strftime("%Y%m%d").to_string();
    // The discharge of the duplicate record: local IPP 654321, identity not qualified.
    let a03 = pamfr(
        "a03_discharge_home_not_qualified.hl7",
        &[
            ("123456^^^CHU-NORD", "654321^^^CHU-NORD".into()),
            ("20260302", day(11)),
            ("20260310", day(3)),
        ],
    );
    assert!(send(&a03).contains("MSA|AA|GAM-0002"));
    // Heart failure (DG1 I50.0 on the discharge) and type 2 diabetes (DG1 E11.9).
    let instances = |v: &serde_json::Value| {
        let mut all = v["instances"].as_array().cloned().unwrap_or_default();
        all.sort_by_key(|i| i["pathway"]["id"].as_str().unwrap_or("").to_string());
        all
    };
    let (_, v) = http(&http_addr, "GET", "/v1/instances?tenant=cpts-nord", None).expect("list");
    assert_eq!(instances(&v).len(), 2, "enrolled: {v}");
    assert_eq!(instances(&v)[0]["pathway"]["id"], "heart-failure");
    assert_eq!(instances(&v)[1]["pathway"]["id"], "type2-diabetes");
    let id = instances(&v)[0]["id"].as_str().unwrap_or("").to_string();
    let retired = instances(&v)[0]["subject"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(instances(&v)[0]["status"], "active");

    // 654321 is merged into the patient's qualified identity (A40, PID + MRG).
    let a40 = pamfr("a40_merge.hl7", &[("20260312", day(2))]);
    assert!(send(&a40).contains("MSA|AA|GAM-0011"));
    let (_, v) = http(&http_addr, "GET", "/v1/instances?tenant=cpts-nord", None).expect("list");
    assert_eq!(instances(&v).len(), 2, "{v}");
    let survivor = instances(&v)[0]["subject"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(instances(&v)[0]["id"], id.as_str());
    assert_eq!(instances(&v)[1]["subject"], survivor.as_str(), "both moved");
    assert_ne!(survivor, retired, "the instance moved to the surviving key");
    assert!(survivor.starts_with("p-"), "{survivor}");

    // Results under the surviving identity reach it.
    let oru = pamfr("oru_r01_latin1.hl7", &[("20260315", day(1))]);
    assert!(send(&oru).contains("MSA|AA|LAB-0001"));
    let (_, h) = http(
        &http_addr,
        "GET",
        &format!("/v1/instances/{id}/history"),
        None,
    )
    .expect("history");
    let history = h["history"].as_array().cloned().unwrap_or_default();
    assert!(
        history
            .iter()
            .any(|e| e["type"] == "instance.rekeyed" && e["cause"]["type"] == "identity.merged"),
        "{h}"
    );
    assert!(
        history
            .iter()
            .any(|e| e["type"] == "sample.recorded" && e["cause"]["type"] == "observation.recorded"),
        "the results reached the instance: {h}"
    );
    assert!(
        history
            .iter()
            .any(|e| e["cause"]["type"] == "encounter.discharged"),
        "the history keeps the causes from before the merge: {h}"
    );
    let (_, tasks) = http(&http_addr, "GET", "/v1/tasks?tenant=cpts-nord", None).expect("tasks");
    let items = tasks["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "{tasks}");
    assert!(
        items.iter().all(|i| i["subject"] == survivor.as_str()),
        "{tasks}"
    );

    // The discharge's ACK was lost: the hospital sends it again after the merge, naming
    // the surviving record (its IPP, linked to the INS by the A40) or still the retired
    // one. The same events: acknowledged (an interface engine stops its queue on AE),
    // nothing recorded twice.
    let (_, before) = http(
        &http_addr,
        "GET",
        &format!("/v1/instances/{id}/history"),
        None,
    )
    .expect("history");
    let resent = pamfr(
        "a03_discharge_home_not_qualified.hl7",
        &[("20260302", day(11)), ("20260310", day(3))],
    );
    let ack = send(&resent);
    assert!(
        ack.contains("MSA|AA|GAM-0002"),
        "resent under the survivor: {ack}"
    );
    let ack = send(&a03);
    assert!(
        ack.contains("MSA|AA|GAM-0002"),
        "resent under the retired key: {ack}"
    );
    let (_, after) = http(
        &http_addr,
        "GET",
        &format!("/v1/instances/{id}/history"),
        None,
    )
    .expect("history");
    assert_eq!(before, after, "nothing decided again");
    let (_, letters) =
        http(&http_addr, "GET", "/v1/dead-letters?tenant=cpts-nord", None).expect("dead letters");
    assert_eq!(
        letters["dead_letters"].as_array().map(Vec::len),
        Some(0),
        "{letters}"
    );
    assert!(server.terminate().success());
    let o = replay(&db);
    assert!(
        o.status.success(),
        "replay equals the stored state:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A declared migration moves a running instance to a new version with a renamed state:
/// dry run first, then apply; replay agrees and the engine carries on with the new version.
#[test]
fn a_declared_migration_moves_running_instances() {
    let dir = tempfile::tempdir().expect("dir");
    let pathways = dir.path().join("pathways");
    std::fs::create_dir(&pathways).expect("mkdir");
    let v1 = heart_failure_as(1);
    std::fs::write(pathways.join("heart-failure.yaml"), &v1).expect("v1");
    let db = dir.path().join("log.db");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args(args)
            .arg("--store")
            .arg(&db)
            .arg("--pathways")
            .arg(&pathways)
            .current_dir(workspace())
            .output()
            .expect("runs")
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // A patient discharged ten days ago: past D+7, in titration. Without a catch-up
    // grace, the deadlines already due fire at once.
    let server = {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args(["serve", "--http", "127.0.0.1:0", "--store"])
            .arg(&db)
            .arg("--pathways")
            .arg(&pathways)
            .args(["--timer-catch-up", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (addr, _) = announced(&mut lines).expect("address");
        std::thread::spawn(move || for _ in lines {});
        support::register_local_key(&addr, &db);
        Server { child, addr }
    };
    let at = |d: i64| now_minus_days(d).to_string();
    let events = json!([
        {"id": "adt-1", "tenant": "cpts-a", "subject": "p-1", "occurredat": at(10), "type": "encounter.discharged",
         "data": {"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}},
        {"id": "consent-1", "tenant": "cpts-a", "subject": "p-1", "occurredat": at(10), "type": "consent.given", "data": {}}
    ]);
    let (status, v) = http(
        &server.addr,
        "POST",
        "/v1/events",
        Some(&events.to_string()),
    )
    .expect("post");
    assert_eq!(status, 200, "{v}");
    let instance = v["results"][0]["instances"][0]
        .as_str()
        .expect("instance")
        .to_string();
    // The overdue D+7 timer fires at once: wait for titration.
    let mut state = String::new();
    for _ in 0..500 {
        let (_, v) = http(
            &server.addr,
            "GET",
            &format!("/v1/instances/{instance}"),
            None,
        )
        .expect("get");
        state = v["tracks"][0]["state"].as_str().unwrap_or("").to_string();
        if state == "titration" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state, "titration");
    assert!(server.terminate().success());

    // Version 2 renames the state; the v1 file stays for the instances pinned to it.
    std::fs::write(pathways.join("heart-failure.v1.yaml"), &v1).expect("keep v1");
    let v2 = v1
        .replacen("version: 1", "version: 2", 1)
        .replace("goto: titration\n", "goto: up_titration\n")
        .replace("      titration:\n", "      up_titration:\n");
    std::fs::write(pathways.join("heart-failure.yaml"), &v2).expect("v2");
    let plan = dir.path().join("hf-v2.yaml");
    std::fs::write(
        &plan,
        "migration: hf-v1-to-v2\ntenant: cpts-a\npathway: heart-failure\nfrom: 1\nto: 2\nstates:\n  main:\n    titration: up_titration\ninstances: all\n",
    )
    .expect("plan");

    let dry = run(&["migrate", plan.to_str().expect("utf-8")]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("titration → up_titration"),
        "{}",
        text(&dry)
    );
    assert!(
        text(&dry).contains("1 can move, 0 cannot"),
        "{}",
        text(&dry)
    );
    let replay_ok = run(&["replay"]);
    assert!(
        replay_ok.status.success(),
        "a dry run writes nothing: {}",
        text(&replay_ok)
    );

    let applied = run(&["migrate", plan.to_str().expect("utf-8"), "--apply"]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(
        text(&applied).contains("1 moved, 0 could not move"),
        "{}",
        text(&applied)
    );
    let replay_ok = run(&["replay"]);
    assert!(replay_ok.status.success(), "{}", text(&replay_ok));

    // The engine carries on with v2.
    let server = Server::start_with(&db, &pathways);
    let (_, v) = http(
        &server.addr,
        "GET",
        &format!("/v1/instances/{instance}"),
        None,
    )
    .expect("get");
    assert_eq!(v["pathway"]["version"], 2, "{v}");
    assert_eq!(v["tracks"][0]["state"], "up_titration", "{v}");
    let (_, h) = http(
        &server.addr,
        "GET",
        &format!("/v1/instances/{instance}/history"),
        None,
    )
    .expect("history");
    let migrated = h["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["type"] == "instance.migrated")
        .expect("the migration is in the instance's history")
        .clone();
    assert!(
        migrated["cause"]["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("migration:hf-v1-to-v2:")
    );
    // The audit trail says who moved the instance (and who read it just now).
    let (status, trail) =
        http(&server.addr, "GET", "/v1/audit?tenant=cpts-a", None).expect("audit");
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().expect("entries");
    let moved = entries
        .iter()
        .find(|e| e["action"] == "pathway.migrate")
        .unwrap_or_else(|| panic!("the migration is audited: {trail}"));
    assert_eq!(moved["target"], json!(instance));
    assert!(
        moved["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("cli:migrate:")),
        "{moved}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "instance.history" && e["actor"] == "key:local/local"),
        "{trail}"
    );
    let weight = json!({"id": "w-1", "tenant": "cpts-a", "subject": "p-1", "occurredat": at(0),
        "type": "observation.recorded", "data": {"code": "29463-7", "value": 80.0, "unit": "kg"}});
    let (status, v) = http(
        &server.addr,
        "POST",
        "/v1/events",
        Some(&weight.to_string()),
    )
    .expect("post");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "committed");
    assert!(server.terminate().success());
    let replay_ok = run(&["replay"]);
    assert!(replay_ok.status.success(), "{}", text(&replay_ok));
}

/// The embedded mode's credentials and the HTTP listener over TLS: a key is generated
/// next to the log (mode 0600) and only its file is printed; the API answers HTTPS with
/// HSTS, refuses a caller without the key, and plain HTTP gets no answer.
#[test]
fn https_and_the_generated_local_key() {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, RootCertStore};

    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let tls = workspace().join("adapters/hl7v2/tests/data/tls");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--store"])
        .arg(&db)
        .args(["--pathways", "pathways", "--http-tls-cert"])
        .arg(tls.join("server.pem"))
        .arg("--http-tls-key")
        .arg(tls.join("server.key"))
        .current_dir(workspace())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let addr = loop {
        let line = lines.next().and_then(Result::ok).expect("address");
        printed.push(line.clone());
        if let Some(a) = line.strip_prefix("parcours: serving on https://") {
            break a.trim().to_string();
        }
    };
    // The key's line and its curl example follow.
    for _ in 0..2 {
        printed.push(lines.next().and_then(Result::ok).expect("key line"));
    }
    std::thread::spawn(move || for _ in lines {});
    let server = Server { child, addr };
    let key_file = format!("{}.api-key", db.display());
    let key = std::fs::read_to_string(&key_file).expect("the local key file");
    let key = key.trim().to_string();
    assert!(key.starts_with("pck_") && key.len() == 68, "{key}");
    let out = printed.join("\n");
    assert!(out.contains(&key_file), "{out}");
    assert!(out.contains("Authorization: Bearer $(cat "), "{out}");
    assert!(!out.contains(&key[4..]), "the key itself is never printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let get = |path: &str, auth: Option<&str>| {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n",
            auth.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"))
        );
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&server.addr)
                .await
                .expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut s = connector.connect(name, tcp).await.expect("TLS handshake");
            s.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw).await;
            String::from_utf8_lossy(&raw).into_owned()
        })
    };
    let health = get("/healthz", None);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "{health}"
    );
    let anonymous = get("/v1/instances?tenant=cpts-demo", None);
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let listed = get("/v1/instances?tenant=cpts-demo", Some(&key));
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    assert!(listed.contains("\"instances\""), "{listed}");
    // Plain HTTP on the TLS port: no HTTP answer.
    let mut plain = TcpStream::connect(&server.addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let _ = write!(
        plain,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(
        !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
        "plain HTTP is not served"
    );
    assert!(server.terminate().success());
}

/// `parcours api-key` makes a key and its entry; `serve --auth FILE` then takes that key
/// (and no local key is generated), with the entry's tenant and role: an integration
/// key posts events into its tenant, not another's, and reads nothing.
#[test]
fn an_api_key_made_by_the_cli_works_with_its_tenant_and_role() {
    let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["api-key", "--id", "k-2026", "--principal", "chu-nord"])
        .args(["--tenant", "cpts-a", "--role", "integration"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = text
        .lines()
        .find(|l| l.starts_with("pck_"))
        .expect("the key")
        .to_string();
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("  - id:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !entry.contains(&key),
        "the entry holds the hash only: {entry}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args([
            "api-key",
            "--id",
            "x",
            "--principal",
            "p",
            "--tenant",
            "cpts-a",
        ])
        .args(["--role", "admin"])
        .output()
        .expect("runs");
    assert!(!bad.status.success(), "an unknown role is refused");

    let dir = tempfile::tempdir().expect("dir");
    let auth = dir.path().join("auth.yaml");
    std::fs::write(&auth, format!("api_keys:\n{entry}")).expect("auth file");
    let db = dir.path().join("log.db");
    let server = Server::start_args(&[
        "--store".into(),
        db.clone().into(),
        "--pathways".into(),
        "pathways".into(),
        "--auth".into(),
        auth.into(),
    ]);
    assert!(
        !Path::new(&format!("{}.api-key", db.display())).exists(),
        "no local key when --auth is given"
    );
    register_key(&server.addr, &key);
    let event = |tenant: &str| {
        json!({"id": format!("c-{tenant}"), "tenant": tenant, "source": "test", "subject": "p-1",
               "occurredat": "2026-03-02T09:00:00Z", "type": "consent.given", "data": {}})
        .to_string()
    };
    let (status, v) =
        http(&server.addr, "POST", "/v1/events", Some(&event("cpts-a"))).expect("post");
    assert_eq!(status, 200, "{v}");
    let (status, _) =
        http(&server.addr, "POST", "/v1/events", Some(&event("cpts-b"))).expect("post");
    assert_eq!(status, 403, "another tenant's events are refused");
    let (status, _) = http(&server.addr, "GET", "/v1/instances", None).expect("get");
    assert_eq!(status, 403, "an integration reads nothing");
    register_key(&server.addr, "pck_0000");
    let (status, _) = http(&server.addr, "GET", "/v1/instances", None).expect("get");
    assert_eq!(status, 401);
    assert!(server.terminate().success());
}

/// A SIGTERM sent the moment `serve` says it is serving, before anything is asked of it,
/// is a graceful stop (exit 0), not the signal's default action (killed): the handlers
/// are installed before anything listens. (They were installed after the HTTP server
/// started: a test stopping the server right after a `/healthz` answer saw it killed.)
#[test]
fn a_sigterm_right_after_start_is_a_graceful_stop() {
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("dir");
        let server = Server::start(&dir.path().join("log.db"));
        if round % 2 == 1 {
            // Answering already, as an orchestrator's readiness probe would see it.
            let _ = get_text(&server.addr, "/healthz");
        }
        let status = server.terminate();
        assert!(status.success(), "round {round}: {status:?}");
    }
}

/// While `serve` waits for a service (here NATS, on a port nothing listens on), its HTTP
/// port answers: `/healthz` 200 and `/readyz` 503 say what it waits for, every other
/// route is refused with 503 (`starting`), and a SIGTERM stops it (exit 0). Before,
/// nothing listened until every service answered, and an orchestrator's start-up or
/// liveness probe restarted a process that was only waiting.
#[test]
fn while_it_waits_for_its_services_the_probes_answer_and_say_what_for() {
    let dir = tempfile::tempdir().expect("dir");
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let args: Vec<std::ffi::OsString> = vec![
        "--store".into(),
        dir.path().join("log.db").into(),
        "--nats".into(),
        nats.into(),
    ];
    let server = Booting::start_args(&args).server;
    let waiting = json!({"status": "starting", "starting": "waiting for NATS"});
    wait_for(
        "the probes saying it waits for NATS",
        Duration::from_secs(30),
        || matches!(http(&server.addr, "GET", "/healthz", None), Ok((200, ref b)) if *b == waiting),
    );
    let ready = http(&server.addr, "GET", "/readyz", None).expect("readyz");
    assert_eq!(
        ready,
        (503, json!({"ready": false, "starting": "waiting for NATS"}))
    );
    let event = json!({"id": "ev-early", "tenant": "cpts-demo", "source": "test",
        "subject": "p-1", "occurredat": "2026-11-01T10:00:00Z", "type": "consent.given", "data": {}});
    let (status, body) =
        http(&server.addr, "POST", "/v1/events", Some(&event.to_string())).expect("post");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "starting", "{body}");
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

/// `parcours publish` puts a new version into the log of a running `serve`, which
/// enrols new patients in it without a restart (within 10 s); the patients already
/// enrolled stay on theirs. Publishing the same text again changes nothing; another text
/// under a published version is refused.
#[test]
fn a_version_published_while_serving_enrols_new_patients_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let dir_v1 = pathways_with_heart_failure_as(dir.path(), "pathways", 1);
    let server = Server::start_with(&db, &dir_v1);
    let discharge = |n: usize| {
        json!({"id": format!("adt-{n}"), "tenant": "cpts-a", "subject": format!("p-{n}"),
            "occurredat": now_minus_days(0).to_string(), "type": "encounter.discharged",
            "data": {"encounter_id": format!("V{n}"), "destination": "home", "diagnoses": ["I50.1"]}})
        .to_string()
    };
    let version_of = |n: usize| -> Option<u64> {
        let (_, v) = http(
            &server.addr,
            "GET",
            &format!("/v1/patients/p-{n}/instances?tenant=cpts-a"),
            None,
        )
        .ok()?;
        v["instances"][0]["pathway"]["version"].as_u64()
    };
    let (status, body) =
        http(&server.addr, "POST", "/v1/events", Some(&discharge(0))).expect("post");
    assert_eq!(status, 200, "{body}");
    assert_eq!(version_of(0), Some(1));

    let v2 = dir.path().join("heart-failure-v2.yaml");
    std::fs::write(&v2, heart_failure_as(2)).expect("v2");
    let publish = |file: &Path| {
        run_parcours(&[
            OsStr::new("publish"),
            file.as_os_str(),
            OsStr::new("--store"),
            db.as_os_str(),
        ])
    };
    let (ok, out) = publish(&v2);
    assert!(ok && out.contains("published: heart-failure v2"), "{out}");
    let (ok, out) = publish(&v2);
    assert!(ok && out.contains("published already"), "{out}");
    let changed = dir.path().join("heart-failure-v2-changed.yaml");
    std::fs::write(
        &changed,
        heart_failure_as(2).replacen("title: ", "title: Changed ", 1),
    )
    .expect("changed");
    let (ok, out) = publish(&changed);
    assert!(
        !ok && out.contains("a published version never changes"),
        "{out}"
    );

    // The engine, idle meanwhile, looks at the log again: its API lists v2 as the
    // version that enrols, and the next patient is enrolled in it.
    wait_for("v2 listed as enrolling", Duration::from_secs(30), || {
        let Ok((200, v)) = http(&server.addr, "GET", "/v1/pathways", None) else {
            return false;
        };
        v["pathways"].as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["id"] == "heart-failure" && p["version"] == 2 && p["enrols"] == true)
        })
    });
    let (status, body) =
        http(&server.addr, "POST", "/v1/events", Some(&discharge(1))).expect("post");
    assert_eq!(status, 200, "{body}");
    assert_eq!(version_of(1), Some(2), "a new patient enrolled in v2");
    assert_eq!(version_of(0), Some(1), "the first patient stays on v1");
}

/// A key set served over plain HTTP on loopback (a sidecar of the identity provider):
/// the public half of the http crate's RSA test key, as key `k1`. Returns the address.
fn jwks_server() -> String {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let pem = std::fs::read(workspace().join("engine/http/tests/data/test-rsa.key")).expect("key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(&pem).expect("rsa"),
        Algorithm::RS256,
    )
    .expect("jwk");
    jwk.common.key_id = Some("k1".into());
    let body = json!({ "keys": [jwk] }).to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // The request's head, up to its empty line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/certs")
}

/// A token of the test issuer signed with `k1`, for a coordinator of cpts-a.
fn issuer_token() -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(workspace().join("engine/http/tests/data/test-rsa.key")).expect("key");
    #[allow(clippy::disallowed_methods)]
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "iss": "https://idp.test/realms/cpts", "aud": "parcours", "sub": "rpps-810000000001",
        "exp": now + 600, "iat": now,
        "parcours_tenants": ["cpts-a"], "parcours_roles": ["coordinator"],
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa"),
    )
    .expect("sign")
}

/// Who may call changes without a restart: an issuer's keys come from its `jwks_uri`;
/// the `--auth` file is read again at a SIGHUP and every 10 s. A revoked key is refused
/// from then on and a new one accepted; a file with an error is refused whole, the one
/// before staying in force, and `/metrics` says so until the file is mended.
#[test]
fn the_auth_file_and_the_issuers_keys_change_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let jwks = jwks_server();
    let key = |n: &str| format!("pck_{}", "0123456789abcdef".repeat(4).replace('0', n));
    let sha = parcours_http::auth::keys::sha256_hex;
    let entry = |id: &str, k: &str, revoked: bool| {
        format!(
            "  - id: {id}\n    principal: ops-team\n    sha256: {}\n    tenants: [cpts-a]\n    roles: [coordinator]\n    revoked: {revoked}\n",
            sha(k)
        )
    };
    let issuers = format!(
        "issuers:\n  - issuer: https://idp.test/realms/cpts\n    audiences: [parcours]\n    jwks_uri: {jwks}\n    jwks_min_refetch_secs: 1\n"
    );
    let (a, b, c) = (key("a"), key("b"), key("c"));
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!("api_keys:\n{}{issuers}", entry("a", &a, false)),
    )
    .expect("auth file");
    let server = Server::start_args(&[
        "--store".into(),
        dir.path().join("log.db").into(),
        "--pathways".into(),
        "pathways".into(),
        "--auth".into(),
        auth.clone().into(),
    ]);
    let addr = server.addr.clone();
    let status_with = |credential: &str| {
        register_key(&addr, credential);
        http(&addr, "GET", "/v1/pathways", None).expect("get").0
    };
    let metric = |name: &str| -> f64 {
        get_text(&addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(status_with(&a), 200);
    assert_eq!(status_with(&b), 401, "b is not in the file yet");
    assert_eq!(
        status_with(&issuer_token()),
        200,
        "the issuer's key was fetched from its jwks_uri"
    );
    assert!(metric("parcours_auth_jwks_fetches_total{outcome=\"applied\"}") >= 1.0);

    let hangup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(ok.success());
    };
    // a revoked, b added: in force at the SIGHUP.
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n{}{}{issuers}",
            entry("a", &a, true),
            entry("b", &b, false)
        ),
    )
    .expect("auth file");
    hangup();
    wait_for("a refused and b accepted", Duration::from_secs(10), || {
        status_with(&a) == 401 && status_with(&b) == 200
    });
    assert_eq!(
        metric("parcours_auth_reloads_total{outcome=\"applied\"}"),
        1.0
    );
    assert_eq!(
        status_with(&issuer_token()),
        200,
        "the issuer kept its keys"
    );

    // A file with an error (c added, but a field misspelt): refused whole.
    std::fs::write(
        &auth,
        format!(
            "api_keys:\n{}    revokd: false\n{issuers}",
            entry("c", &c, false)
        ),
    )
    .expect("auth file");
    hangup();
    wait_for("the refused file reported", Duration::from_secs(10), || {
        metric("parcours_auth_reload_failing") == 1.0
    });
    assert_eq!(
        metric("parcours_auth_reloads_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(status_with(&b), 200, "the file before stays in force");
    assert_eq!(status_with(&c), 401);

    // Mended, without a signal: the periodic reading (10 s) puts it in force.
    std::fs::write(&auth, format!("api_keys:\n{}", entry("c", &c, false))).expect("auth file");
    wait_for("the mended file in force", Duration::from_secs(25), || {
        status_with(&c) == 200
    });
    assert_eq!(status_with(&b), 401, "b is no longer in the file");
    assert_eq!(metric("parcours_auth_reload_failing"), 0.0);
    assert_eq!(
        status_with(&issuer_token()),
        401,
        "the issuer is no longer in the file"
    );
    assert!(server.terminate().success());
}

/// A SIGHUP (an operator asking services to read their configuration again) never stops
/// `serve`, with or without an `--auth` file: here the embedded mode's local key, where
/// it is only logged. Its default action would have ended the process.
#[test]
fn a_sighup_does_not_stop_serve() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(&dir.path().join("log.db"));
    let ok = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(ok.success());
    let (status, _) = http(&server.addr, "GET", "/healthz", None).expect("still serving");
    assert_eq!(status, 200);
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert!(server.terminate().success());
}

/// `parcours serve` that must refuse to start: its stderr, once it exited unsuccessfully
/// (the test fails, and the process is killed, if it still runs after a minute).
fn refused_at_start(args: &[&OsStr]) -> String {
    let pathways: &[&str] = if args.iter().any(|a| *a == "--pathways") {
        &[]
    } else {
        &["--pathways", "pathways"]
    };
    let child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .args(pathways)
        .args(args)
        .current_dir(workspace())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("parcours serve runs");
    // Killed when dropped, should the wait time out.
    let mut server = Server {
        child,
        addr: String::new(),
    };
    wait_for("serve to refuse to start", Duration::from_secs(60), || {
        matches!(server.child.try_wait(), Ok(Some(_)))
    });
    let status = server.child.wait().expect("reaped");
    let mut err = String::new();
    server
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr read");
    assert!(
        !status.success(),
        "serve was expected to refuse to start: {status:?} {err}"
    );
    err
}

/// A rotation of the vault's master key, with real processes: data keys made under the
/// old key (a patient's visit number tokenized, a refused post's sealed dead letter);
/// the engine restarted without the old key refuses to start, naming it; with the new
/// key and the old one as previous, it meets the patient's tokens again (a cancellation
/// closes the stay it names) and opens the dead letter; `parcours rewrap-keys` wraps the
/// stored keys again; then the new key alone serves everything, and the old one alone is
/// refused.
#[test]
fn the_vault_key_rotates_with_nothing_made_unreadable() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let key = dir.path().join("log.db.vault.key");
    let old = dir.path().join("vault-old.key");
    let at = now_minus_days(1).to_string();
    let event = |id: &str, subject: &str, ty: &str, data: serde_json::Value| {
        json!({"id": id, "tenant": "cpts-demo", "source": "chu-nord", "subject": subject,
               "occurredat": at, "type": ty, "data": data})
        .to_string()
    };
    let post = |addr: &str, body: &str| {
        let (status, v) = http(addr, "POST", "/v1/events", Some(body)).expect("post");
        assert_eq!((status, v["committed"].as_u64()), (200, Some(1)), "{v}");
    };
    let discharge = |id: &str, subject: &str, visit: &str| {
        event(
            id,
            subject,
            "encounter.discharged",
            json!({"encounter_id": visit, "destination": "home", "diagnoses": ["I50.1"]}),
        )
    };
    let main_state = |addr: &str, subject: &str| {
        let path = format!("/v1/patients/{subject}/instances?tenant=cpts-demo");
        let (_, v) = http(addr, "GET", &path, None).expect("instances");
        v["instances"][0]["states"]["main"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let letter_opens = |addr: &str| {
        let (_, v) = http(addr, "GET", "/v1/dead-letters", None).expect("dead letters");
        let id = v["dead_letters"][0]["id"].as_u64().expect("a dead letter");
        let (status, v) =
            http(addr, "GET", &format!("/v1/dead-letters/{id}/content"), None).expect("content");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["content"].as_str(), Some("{not json"), "{v}");
    };

    let server = Server::start(&db);
    post(&server.addr, &discharge("d-1", "p-rot-1", "VN-1"));
    let (status, _) = http(&server.addr, "POST", "/v1/events", Some("{not json")).expect("post");
    assert_eq!(status, 400);
    assert_ne!(main_state(&server.addr, "p-rot-1"), "awaiting_discharge");
    assert!(server.terminate().success());

    // The old key moved aside: serve makes a new one where the old was, and refuses
    // before it writes anything (a new pathway version beside it is not published).
    std::fs::rename(&key, &old).expect("move the old key");
    let (_, last) = inbound_ids(&db);
    let newer = pathways_with_heart_failure_as(dir.path(), "newer", 9);
    let err = refused_at_start(&[
        OsStr::new("--store"),
        db.as_os_str(),
        OsStr::new("--pathways"),
        newer.as_os_str(),
    ]);
    assert!(
        err.contains("does not unwrap") && err.contains("--previous-vault-key"),
        "{err}"
    );
    assert!(key.exists(), "the new key is made");
    assert_eq!(inbound_ids(&db).1, last, "nothing written to the log");

    // The new key and the old one as previous: old tokens met, old dead letters opened.
    let rotating: Vec<std::ffi::OsString> = vec![
        "--store".into(),
        db.clone().into(),
        "--previous-vault-key".into(),
        old.clone().into(),
    ];
    let server = Server::start_args(&rotating);
    post(
        &server.addr,
        &event(
            "c-1",
            "p-rot-1",
            "encounter.discharge_cancelled",
            json!({"encounter_id": "VN-1"}),
        ),
    );
    assert_eq!(
        main_state(&server.addr, "p-rot-1"),
        "awaiting_discharge",
        "the cancellation's token is the discharge's"
    );
    post(&server.addr, &discharge("d-2", "p-rot-2", "VN-2"));
    letter_opens(&server.addr);
    assert!(server.terminate().success());

    let rewrap = [
        OsStr::new("rewrap-keys"),
        OsStr::new("--store"),
        db.as_os_str(),
        OsStr::new("--previous-vault-key"),
        old.as_os_str(),
    ];
    let (ok, out) = run_parcours(&rewrap);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 data key(s) wrapped again"),
        "p-rot-1 and the dead letters': {out}"
    );
    assert!(out.contains("no longer needed"), "{out}");
    let (ok, out) = run_parcours(&rewrap);
    assert!(ok && out.contains("0 data key(s) wrapped again"), "{out}");

    // The new key alone: everything reads; the old key alone is refused.
    let server = Server::start(&db);
    letter_opens(&server.addr);
    let (status, v) = http(&server.addr, "GET", "/v1/audit?tenant=*", None).expect("audit");
    let rewraps: Vec<&serde_json::Value> = v["entries"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["action"] == "vault.rewrap").collect())
        .unwrap_or_default();
    assert_eq!(
        (status, rewraps.len()),
        (200, 2),
        "each run is audited: {v}"
    );
    assert!(
        rewraps[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("cli:rewrap-keys:")),
        "{v}"
    );
    post(&server.addr, &discharge("d-3", "p-rot-1", "VN-3"));
    assert_ne!(main_state(&server.addr, "p-rot-1"), "awaiting_discharge");
    post(
        &server.addr,
        &event(
            "c-3",
            "p-rot-1",
            "encounter.discharge_cancelled",
            json!({"encounter_id": "VN-3"}),
        ),
    );
    assert_eq!(main_state(&server.addr, "p-rot-1"), "awaiting_discharge");
    assert!(server.terminate().success());
    let err = refused_at_start(&[
        OsStr::new("--store"),
        db.as_os_str(),
        OsStr::new("--vault-key"),
        old.as_os_str(),
    ]);
    assert!(err.contains("does not unwrap"), "{err}");
    assert!(replay(&db).status.success());
}
