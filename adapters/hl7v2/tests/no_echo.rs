//! No field value comes back: a sentinel patient name put in each field the intake
//! checks appears in no acknowledgement, no dead letter and no log line of a real MLLP
//! listener on loopback.
//!
//! MSH-3 to MSH-6 (applications, facilities) and MSH-10 (the control id) are echoed in
//! every ACK as HL7 requires: they name the sending system and its message, and are
//! left out here.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{MemoryDeadLetters, MemorySink, intake};
use parcours_hl7v2::mllp::{MllpServer, ServerConfig, bind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(10);
const SENTINEL: &str = "BERNARD Solange 1948";

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x0B];
    v.extend_from_slice(payload);
    v.extend_from_slice(&[0x1C, 0x0D]);
    v
}

async fn read_frame(s: &mut TcpStream) -> String {
    let fut = async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match s.read(&mut byte).await {
                Ok(0) | Err(_) => panic!("closed before the ACK"),
                Ok(_) => buf.push(byte[0]),
            }
            if buf.ends_with(&[0x1C, 0x0D]) {
                return String::from_utf8_lossy(&buf[1..buf.len() - 2]).into_owned();
            }
        }
    };
    tokio::time::timeout(GUARD, fut).await.expect("ACK in time")
}

/// A message from segments (`|`-separated, MSH without its MSH-1).
fn message(segments: &[&str]) -> String {
    segments.join("\r")
}

/// Set field `n` of the first segment named `seg` (MSH-n counted as HL7 does).
fn set(msg: &str, seg: &str, n: usize, value: &str) -> String {
    let mut done = false;
    let segs: Vec<String> = msg
        .split('\r')
        .map(|s| {
            if done || !s.starts_with(&format!("{seg}|")) {
                return s.to_owned();
            }
            done = true;
            let mut fields: Vec<String> = s.split('|').map(str::to_owned).collect();
            // MSH-1 is the separator itself: MSH-n is at index n - 1.
            let i = if seg == "MSH" { n - 1 } else { n };
            if fields.len() <= i {
                fields.resize(i + 1, String::new());
            }
            fields[i] = value.to_owned();
            fields.join("|")
        })
        .collect();
    assert!(done, "{seg} in the message");
    segs.join("\r")
}

const MSH: &str = "MSH|^~\\&|HIS|HOSP|PARCOURS|CPTS|20240115103000||ADT^A01^ADT_A01|X|P|2.5";
const PID: &str = "PID|1||IPP-1^^^HOSP&1.2.3.4.5&ISO^PI||DOE^JANE||19500101|F";
const PV1: &str = "PV1|1|I|||||||||||||||||V-1";

fn adt(trigger: &str) -> String {
    message(&[
        &MSH.replace("ADT^A01^ADT_A01", &format!("ADT^{trigger}")),
        &format!("EVN|{trigger}"),
        PID,
        PV1,
    ])
}

fn oru(obx: &str) -> String {
    message(&[
        &MSH.replace("ADT^A01^ADT_A01", "ORU^R01"),
        PID,
        "OBR|1|ORD-1||1^Panel^L",
        obx,
    ])
}

const OBX: &str = "OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L|3.5-5.0|N|||F|||20240115090000";

/// Every field the intake checks, with the sentinel in it.
fn cases() -> Vec<(&'static str, String)> {
    let s = SENTINEL;
    let zbe = |m: String| format!("{m}\rZBE|MVT-1^HOSP|20240115100000||INSERT|N");
    vec![
        ("MSH-7", set(&adt("A01"), "MSH", 7, s)),
        ("MSH-9.1", set(&adt("A01"), "MSH", 9, &format!("{s}^A01"))),
        (
            "MSH-9.2 ADT",
            set(&adt("A01"), "MSH", 9, &format!("ADT^{s}")),
        ),
        ("MSH-9.2 ORU", set(&oru(OBX), "MSH", 9, &format!("ORU^{s}"))),
        ("MSH-9", set(&adt("A01"), "MSH", 9, s)),
        (
            "EVN-1",
            set(&set(&adt("A01"), "MSH", 9, "ADT"), "EVN", 1, s),
        ),
        ("MSH-11", set(&adt("A01"), "MSH", 11, s)),
        ("MSH-11.2", set(&adt("A01"), "MSH", 11, &format!("P^{s}"))),
        ("MSH-12", set(&adt("A01"), "MSH", 12, s)),
        ("MSH-12.2", set(&adt("A01"), "MSH", 12, &format!("2.5^{s}"))),
        (
            "MSH-12.3",
            set(&adt("A01"), "MSH", 12, &format!("2.5^FRA^{s}")),
        ),
        ("MSH-18", set(&adt("A01"), "MSH", 18, s)),
        (
            "MSH-18 rep",
            set(&adt("A01"), "MSH", 18, &format!("UNICODE UTF-8~{s}")),
        ),
        ("EVN-2", set(&adt("A01"), "EVN", 2, s)),
        ("EVN-6", set(&adt("A01"), "EVN", 6, s)),
        ("PID-3", set(&adt("A01"), "PID", 3, s)),
        (
            "PID-3.4",
            set(&adt("A01"), "PID", 3, &format!("IPP-1^^^{s}^PI")),
        ),
        ("PID-32", set(&adt("A01"), "PID", 32, s)),
        ("PV1-44", set(&adt("A01"), "PV1", 44, s)),
        ("ZBE-2", set(&zbe(adt("A01")), "ZBE", 2, s)),
        ("ZBE-4", set(&zbe(adt("A01")), "ZBE", 4, s)),
        ("PV1-45", set(&adt("A03"), "PV1", 45, s)),
        ("PV1-36", set(&adt("A03"), "PV1", 36, s)),
        (
            "PID-29",
            set(&set(&adt("A03"), "PID", 30, "Y"), "PID", 29, s),
        ),
        ("PV2-9", format!("{}\rPV2|||||||||{s}", adt("A16"))),
        ("MRG-1", format!("{}\rMRG|{s}", adt("A40"))),
        ("OBX-2", oru(&set(OBX, "OBX", 2, s))),
        ("OBX-3", oru(&set(OBX, "OBX", 3, s))),
        ("OBX-5 NM", oru(&set(OBX, "OBX", 5, s))),
        (
            "OBX-5 SN comparator",
            oru(&set(&set(OBX, "OBX", 2, "SN"), "OBX", 5, &format!("{s}^5"))),
        ),
        (
            "OBX-5 SN number",
            oru(&set(&set(OBX, "OBX", 2, "SN"), "OBX", 5, &format!("<^{s}"))),
        ),
        ("OBX-6", oru(&set(OBX, "OBX", 6, s))),
        ("OBX-7", oru(&set(OBX, "OBX", 7, s))),
        ("OBX-8", oru(&set(OBX, "OBX", 8, s))),
        ("OBX-11", oru(&set(OBX, "OBX", 11, s))),
        ("OBX-14", oru(&set(OBX, "OBX", 14, s))),
        (
            "OBR-7",
            oru(&set(OBX, "OBX", 14, "")).replace(
                "OBR|1|ORD-1||1^Panel^L",
                &format!("OBR|1|ORD-1||1^Panel^L|||{s}"),
            ),
        ),
    ]
}

#[tokio::test]
async fn a_sentinel_name_in_any_checked_field_comes_back_nowhere() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread: the listener's tasks log here too.
    let _logging = tracing::subscriber::set_default(subscriber);

    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sink = Arc::new(MemorySink::default());
    let dead = Arc::new(MemoryDeadLetters::default());
    let token = CancellationToken::new();
    let server = MllpServer::new(
        intake(),
        Arc::clone(&sink),
        Arc::clone(&dead),
        ServerConfig::default(),
    );
    let task = tokio::spawn(server.serve(listener, token.clone()));

    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut refused = 0;
    let mut echoed = Vec::new();
    for (i, (field, msg)) in cases().into_iter().enumerate() {
        assert!(
            msg.contains(SENTINEL),
            "{field}: the sentinel is in the message"
        );
        let msg = set(&msg, "MSH", 10, &format!("N-{i}"));
        c.write_all(&frame(msg.as_bytes())).await.expect("write");
        let ack = read_frame(&mut c).await;
        if ack.contains("BERNARD") || ack.contains("Solange") {
            echoed.push(format!("{field}: {ack}"));
        }
        if !ack.contains("MSA|AA|") {
            refused += 1;
        }
    }
    token.cancel();
    task.await.expect("join").expect("serve");
    assert!(
        echoed.is_empty(),
        "ACKs echo the value:\n{}",
        echoed.join("\n")
    );

    let letters = dead.letters();
    assert!(refused >= 20, "most cases are refused: {refused}");
    assert_eq!(letters.len(), refused, "each refusal is a dead letter");
    let mut named = Vec::new();
    for letter in &letters {
        let shown = format!(
            "{} {:?} {:?}",
            letter.reason, letter.message_type, letter.control_id
        );
        if shown.contains("BERNARD") || shown.contains("Solange") {
            named.push(shown);
        }
        assert!(
            String::from_utf8_lossy(&letter.raw).contains(SENTINEL),
            "the message itself is kept (sealed by the store)"
        );
    }
    assert!(
        named.is_empty(),
        "dead letters name the value:\n{}",
        named.join("\n")
    );
    let logged = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert!(logged.contains("hl7 message refused"), "logs captured");
    assert!(
        !logged.contains("BERNARD") && !logged.contains("Solange"),
        "the logs name the value:\n{logged}"
    );
}
