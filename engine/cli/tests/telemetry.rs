//! Logs and spans of a real `parcours serve`: JSON lines, one `event` span per processed
//! event with its fields, and no patient data anywhere in what the process prints —
//! while HL7 v2 messages (MLLP) and FHIR resources (HTTP) carrying a name, a NIR, an IPP
//! and a birth date go through it, accepted and refused.

// Deadlines of the waits below are wall-clock time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, mllp_send, now_minus_days, pamfr, wait_for, workspace};

/// What the samples say about the patient, in every form it could leak in.
const PATIENT_DATA: &[&str] = &[
    "MARTIN",
    "Martin",
    "Hélène",
    "H\u{e9}l\u{e8}ne",
    "Helene",
    "280079912345678",
    "19450704",
    "1945-07-04",
    "rue de la Paix",
    "NDA-778899",
    // The FHIR patient below.
    "DURAND",
    "Ginette",
    "269054958815780",
    "IPP-987654",
    "1938-11-23",
];

/// The IPP of the HL7 samples (`123456`), as a whole number (not inside a longer one).
fn contains_ipp(text: &str) -> bool {
    text.match_indices("123456").any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + 6..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A FHIR transaction: a qualified patient (name, NIR, IPP, birth date) discharged home
/// after a heart-failure stay.
fn fhir_discharge(end: &str) -> Value {
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:pat-9", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "id": "pat-9",
                "extension": [{
                    "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                    "extension": [{"url": "identityStatus", "valueCoding": {
                        "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                        "code": "VALI"}}]}],
                "identifier": [
                    {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "269054958815780"},
                    {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]},
                     "system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-987654"}],
                "name": [{"family": "DURAND", "given": ["Ginette"]}],
                "birthDate": "1938-11-23"}},
            {"fullUrl": "urn:uuid:enc-9", "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": "enc-9", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:pat-9"},
                "period": {"start": "2026-02-24T10:00:00+01:00", "end": end},
                "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}],
                "hospitalization": {"dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]}}}}
        ]
    })
}

/// The API key `parcours serve` keeps next to a SQLite log, when it makes one.
fn api_key(db: &std::path::Path) -> Option<String> {
    let path = workspace().join(format!("{}.api-key", db.display()));
    std::fs::read_to_string(path)
        .ok()
        .map(|k| k.trim().to_string())
}

/// One HTTP/1.1 request (with the API key, if any): (status, JSON body).
fn call(
    addr: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let (_, payload) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    let start = payload.find(['{', '[']).unwrap_or(0);
    let end = payload.rfind(['}', ']']).map_or(payload.len(), |i| i + 1);
    Ok((
        status,
        serde_json::from_str(&payload[start..end]).unwrap_or(Value::Null),
    ))
}

/// Lines a pipe gives, kept as they come.
fn collect(
    pipe: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            keep.lock().expect("lock").push(line);
        }
    });
    (lines, reader)
}

/// The `event processed` lines logged so far, parsed.
fn processed(lines: &Mutex<Vec<String>>) -> Vec<Value> {
    lines
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "event processed")
        .collect()
}

#[test]
fn json_logs_have_one_span_per_event_and_no_patient_data() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(["--mllp-tenant", "cpts-nord", "--store"])
        .arg(dir.path().join("log.db"))
        .args(["--pathways", "pathways", "--log-format", "json"])
        .args([
            "--log-filter",
            "info,parcours=debug,parcours_runtime=debug,parcours_http=debug,parcours_hl7v2=debug,parcours_fhir=debug",
        ])
        .current_dir(workspace())
        .env_remove("RUST_LOG")
        .env_remove("PARCOURS_LOG_FILTER")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (stderr, err_reader) = collect(child.stderr.take().expect("stderr"));
    let (stdout, out_reader) = collect(child.stdout.take().expect("stdout"));
    let announced = |prefix: &str| -> Option<String> {
        stdout
            .lock()
            .expect("lock")
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(|a| a.trim().to_string()))
    };
    wait_for("the HTTP address", Duration::from_secs(60), || {
        announced("parcours: serving on http://").is_some()
    });
    let http_addr = announced("parcours: serving on http://").expect("http");
    let mllp_addr = announced("parcours: MLLP on ").expect("the MLLP address is printed");
    let key = api_key(&dir.path().join("log.db"));
    let http = |method: &str, path: &str, body: Option<&str>| {
        call(&http_addr, key.as_deref(), method, path, body)
    };
    let server = Server {
        child,
        addr: http_addr.clone(),
    };

    // HL7 v2: a discharge three days ago, lab results yesterday (same patient), and a
    // broken message that still carries the patient's name and NIR.
    let day = |days: i64| now_minus_days(days).strftime("%Y%m%d").to_string();
    let a03 = pamfr(
        "a03_discharge_home_not_qualified.hl7",
        &[("20260302", day(11)), ("20260310", day(3))],
    );
    assert!(mllp_send(&mllp_addr, &a03).contains("MSA|AA|GAM-0002"));
    let oru = pamfr("oru_r01_latin1.hl7", &[("20260315", day(1))]);
    assert!(mllp_send(&mllp_addr, &oru).contains("MSA|AA|LAB-0001"));
    let bad = b"MSH|^~\\&|GAM|CHU-NORD|PARCOURS|CPTS-NORD|20260310163000||ADT^A03^ADT_A03|BAD-7|P|2.5\rPID|1||123456^^^CHU-NORD^PI~280079912345678^^^INS||MARTIN^H\xc3\xa9l\xc3\xa8ne||19450704|F\rPV1|1|I|";
    let nak = mllp_send(&mllp_addr, bad);
    assert!(nak.contains("|BAD-7"), "{nak}");

    // FHIR over HTTP: a qualified patient's discharge, then the same again (duplicate),
    // and a resource whose patient cannot be resolved (refused).
    let end = now_minus_days(2).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let bundle = fhir_discharge(&end).to_string();
    let (status, body) = http("POST", "/fhir/cpts-nord", Some(&bundle)).expect("fhir");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http("POST", "/fhir/cpts-nord", Some(&bundle)).expect("again");
    assert_eq!(status, 200);
    let mut orphan = fhir_discharge(&end);
    orphan["entry"][1]["resource"]["subject"] = json!({"reference": "urn:uuid:nobody"});
    let (status, _) = http("POST", "/fhir/cpts-nord", Some(&orphan.to_string())).expect("orphan");
    assert!((400..500).contains(&status), "{status}");
    // A CloudEvent over HTTP with a known id.
    let consent = json!({
        "id": "telemetry-consent-1", "tenant": "cpts-nord", "source": "test",
        "subject": "p-telemetry-0001", "occurredat": end, "type": "consent.given",
        "data": {"scope": "*"}});
    let (status, _) = http("POST", "/v1/events", Some(&consent.to_string())).expect("event");
    assert_eq!(status, 200);

    let (_, v) = http("GET", "/v1/instances?tenant=cpts-nord", None).expect("list");
    let instances = v["instances"].as_array().cloned().unwrap_or_default();
    // The HL7 patient in heart failure and type 2 diabetes (DG1 I50.0, E11.9), the
    // FHIR patient in heart failure.
    assert_eq!(instances.len(), 3, "two patients enrolled: {v}");

    // One line per processed event: the discharge (MLLP), 5 results (ORU), the FHIR
    // discharge, its duplicate, the consent.
    wait_for("the event lines", Duration::from_secs(60), || {
        let p = processed(&stderr);
        p.iter()
            .any(|l| l["span"]["event_id"] == "telemetry-consent-1")
            && p.iter()
                .filter(|l| l["span"]["event_type"] == "encounter.discharged")
                .count()
                >= 3
    });
    assert!(server.terminate().success(), "clean exit");
    err_reader.join().expect("stderr read");
    out_reader.join().expect("stdout read");

    let err = stderr.lock().expect("lock").clone();
    let out = stdout.lock().expect("lock").clone();
    assert!(!err.is_empty());
    for line in &err {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    // stdout is not a log: the addresses and hints `serve` prints for a person.
    assert!(
        out.iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err())
    );
    for line in err.iter().chain(&out) {
        for secret in PATIENT_DATA {
            assert!(!line.contains(secret), "{secret:?} leaked: {line}");
        }
        assert!(!contains_ipp(line), "the IPP leaked: {line}");
    }

    let events = processed(&stderr);
    let subjects: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["subject"].as_str())
        .collect();
    let ids: Vec<&str> = instances.iter().filter_map(|i| i["id"].as_str()).collect();
    for e in &events {
        let span = &e["span"];
        assert_eq!(span["name"], "event", "{e}");
        assert_eq!(span["tenant"], "cpts-nord", "{e}");
        assert!(
            span["event_id"].is_string() && span["event_type"].is_string(),
            "{e}"
        );
        let subject = span["subject"].as_str().unwrap_or("");
        assert!(subject.starts_with("p-"), "a pseudonymous key: {e}");
        let outcome = span["outcome"].as_str().unwrap_or("");
        assert!(
            ["committed", "duplicate", "refused"].contains(&outcome),
            "{e}"
        );
        let spans = e["spans"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            spans.first().map(|s| &s["name"]),
            Some(&json!("ingest_batch")),
            "{e}"
        );
        assert_eq!(
            spans.last().map(|s| &s["name"]),
            Some(&json!("event")),
            "{e}"
        );
    }
    let discharged: Vec<&Value> = events
        .iter()
        .filter(|e| e["span"]["event_type"] == "encounter.discharged")
        .collect();
    let committed: Vec<&&Value> = discharged
        .iter()
        .filter(|e| e["span"]["outcome"] == "committed")
        .collect();
    assert_eq!(
        committed.len(),
        2,
        "MLLP and FHIR discharges: {discharged:?}"
    );
    // Both qualified identities came with their IPP: each made an identity link. The MLLP
    // discharge was keyed on the IPP (identity provisional then); the lab's ORU, with the
    // qualified INS and the IPP, linked them and moved that instance to the INS's key.
    let links: Vec<&Value> = events
        .iter()
        .filter(|e| e["span"]["event_type"] == "identity.linked")
        .filter(|e| e["span"]["outcome"] == "committed")
        .collect();
    assert_eq!(links.len(), 2, "the ORU's and the FHIR patient's links");
    for e in &links {
        let subject = e["span"]["subject"].as_str().unwrap_or("");
        assert!(subjects.contains(&subject), "{e}");
    }
    // (A link moving several instances lists them all: the MLLP discharge's DG1 enrolled
    // in heart failure and type 2 diabetes.)
    let moved: Vec<&str> = links
        .iter()
        .filter_map(|e| e["span"]["instance_ids"].as_str())
        .flat_map(|ids| ids.split(','))
        .filter(|i| !i.is_empty())
        .collect();
    for e in &committed {
        assert_eq!(e["span"]["instances"], 1, "{e}");
        let subject = e["span"]["subject"].as_str().unwrap_or("");
        let instance = e["span"]["instance_ids"].as_str().unwrap_or("");
        assert!(
            subjects.contains(&subject) || moved.contains(&instance),
            "an instance's key, or the key its instance left: {e}"
        );
        assert!(ids.contains(&instance), "{e}");
    }
    assert!(
        discharged
            .iter()
            .any(|e| e["span"]["outcome"] == "duplicate"),
        "the FHIR resend is a duplicate: {discharged:?}"
    );
    let results = events
        .iter()
        .filter(|e| e["span"]["event_type"] == "observation.recorded")
        .count();
    assert!(results >= 1, "the ORU's results are processed events");
    let consent = events
        .iter()
        .find(|e| e["span"]["event_id"] == "telemetry-consent-1")
        .expect("the consent's line");
    assert_eq!(consent["span"]["subject"], "p-telemetry-0001");
    assert_eq!(consent["span"]["event_type"], "consent.given");
}

/// What the receiver got: (request line, body) of each request.
#[cfg(feature = "otel")]
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A tiny OTLP/HTTP receiver: keeps the body of every request, answers 200.
#[cfg(feature = "otel")]
fn otlp_receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock()
                        .expect("lock")
                        .push((request_line.trim().to_string(), body));
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (addr, got)
}

/// With the `otel` feature, spans reach an OTLP/HTTP collector: the `event` span of a
/// processed event, with its fields, and no patient data in what is exported.
#[cfg(feature = "otel")]
#[test]
fn spans_are_exported_over_otlp_without_patient_data() {
    let (otlp, received) = otlp_receiver();
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--http", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("log.db"))
        .args(["--pathways", "pathways", "--log-format", "json"])
        .args(["--otlp-endpoint", &format!("http://{otlp}")])
        .current_dir(workspace())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let (stdout, _reader) = collect(child.stdout.take().expect("stdout"));
    let announced = || -> Option<String> {
        stdout.lock().expect("lock").iter().find_map(|l| {
            l.strip_prefix("parcours: serving on http://")
                .map(|a| a.trim().to_string())
        })
    };
    wait_for("the HTTP address", Duration::from_secs(60), || {
        announced().is_some()
    });
    let http_addr = announced().expect("http");
    let key = api_key(&dir.path().join("log.db"));
    let http = |method: &str, path: &str, body: Option<&str>| {
        call(&http_addr, key.as_deref(), method, path, body)
    };
    let server = Server {
        child,
        addr: http_addr.clone(),
    };
    let end = now_minus_days(2).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (status, body) = http(
        "POST",
        "/fhir/cpts-nord",
        Some(&fhir_discharge(&end).to_string()),
    )
    .expect("fhir");
    assert_eq!(status, 200, "{body}");
    let consent = json!({
        "id": "telemetry-otel-1", "tenant": "cpts-nord", "source": "test",
        "subject": "p-telemetry-0002", "occurredat": end, "type": "consent.given",
        "data": {"scope": "*"}});
    let (status, _) = http("POST", "/v1/events", Some(&consent.to_string())).expect("event");
    assert_eq!(status, 200);
    let has = |needle: &[u8]| {
        received
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
    };
    wait_for(
        "the spans at the collector",
        Duration::from_secs(60),
        || has(b"telemetry-otel-1") && has(b"encounter.discharged"),
    );
    assert!(server.terminate().success());
    let got = received.lock().expect("lock").clone();
    for (line, body) in &got {
        assert_eq!(line, "POST /v1/traces HTTP/1.1");
        let text = String::from_utf8_lossy(body);
        for secret in PATIENT_DATA {
            assert!(!text.contains(secret), "{secret:?} exported");
        }
    }
    for needle in [
        &b"parcours"[..],
        b"ingest_batch",
        b"event_id",
        b"p-telemetry-0002",
        b"committed",
    ] {
        assert!(
            has(needle),
            "{} not exported",
            String::from_utf8_lossy(needle)
        );
    }
}
