//! The MLLP server over real TCP on 127.0.0.1 (port 0). No fixed sleeps: every wait is
//! on a response, a closed socket or a signal, under a timeout guard.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{MemoryDeadLetters, MemorySink, SINK_REJECT, SINK_UNAVAILABLE, data, intake};
use parcours_core::events::Event;
use parcours_hl7v2::AckCode;
use parcours_hl7v2::mllp::{MllpServer, ServerConfig, Sink, SinkError, bind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(10);

struct Running<S> {
    server: MllpServer<S, MemoryDeadLetters>,
    addr: SocketAddr,
    sink: Arc<S>,
    dead: Arc<MemoryDeadLetters>,
    token: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_with<S: Sink>(sink: Arc<S>, config: ServerConfig) -> Running<S> {
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dead = Arc::new(MemoryDeadLetters::default());
    let token = CancellationToken::new();
    let server = MllpServer::new(intake(), Arc::clone(&sink), Arc::clone(&dead), config);
    let task = tokio::spawn(server.clone().serve(listener, token.clone()));
    Running {
        server,
        addr,
        sink,
        dead,
        token,
        task,
    }
}

async fn start(config: ServerConfig) -> Running<MemorySink> {
    start_with(Arc::new(MemorySink::default()), config).await
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x0B];
    v.extend_from_slice(payload);
    v.extend_from_slice(&[0x1C, 0x0D]);
    v
}

/// Read one MLLP frame; `None` if the server closed the connection first.
async fn read_frame(s: &mut TcpStream) -> Option<String> {
    let fut = async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match s.read(&mut byte).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => buf.push(byte[0]),
            }
            if buf.ends_with(&[0x1C, 0x0D]) {
                let start = buf.iter().position(|&b| b == 0x0B)?;
                return Some(String::from_utf8_lossy(&buf[start + 1..buf.len() - 2]).into_owned());
            }
        }
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .expect("no answer in time")
}

/// Wait until the server closes the connection.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let fut = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(GUARD, fut).await.unwrap_or(false)
}

fn msa(ack: &str) -> (String, String) {
    let seg = ack
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .expect("MSA");
    let f: Vec<&str> = seg.split('|').collect();
    (
        f[1].to_owned(),
        f.get(2).copied().unwrap_or_default().to_owned(),
    )
}

/// MSH-7 of an acknowledgement.
fn msh7(ack: &str) -> String {
    ack.split('|').nth(6).unwrap_or_default().to_owned()
}

/// An acknowledgement with its MSH-7 blanked.
fn without_msh7(ack: &str) -> String {
    let mut f: Vec<&str> = ack.split('|').collect();
    if f.len() > 6 {
        f[6] = "";
    }
    f.join("|")
}

fn admission(control: &str) -> Vec<u8> {
    String::from_utf8(data("pamfr/a01_admission_ins_qualified.hl7"))
        .expect("utf-8")
        .replace("GAM-0001", control)
        .replace('\n', "\r")
        .into_bytes()
}

#[tokio::test]
async fn accepted_after_commit_and_resend_gets_the_same_ack() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    c.write_all(&frame(&admission("C-1"))).await.expect("write");
    let first = read_frame(&mut c).await.expect("ack");
    assert_eq!(msa(&first), ("AA".into(), "C-1".into()));
    c.write_all(&frame(&admission("C-1"))).await.expect("write");
    let second = read_frame(&mut c).await.expect("ack");
    assert_eq!(
        without_msh7(&first),
        without_msh7(&second),
        "a resend gets the same ACK (MSH-7 says when each was made)"
    );
    assert_ne!(msh7(&first), "20260302091500", "not the message's MSH-7");
    let batches = r.sink.batches();
    assert_eq!(batches.len(), 2, "and is passed to the sink again");
    let ids = |b: &Vec<Event>| b.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&batches[0]),
        ids(&batches[1]),
        "with the same event ids"
    );
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn the_ack_is_dated_when_it_is_made() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    #[allow(clippy::disallowed_methods)]
    let before = jiff::Timestamp::now();
    c.write_all(&frame(&admission("T-1"))).await.expect("write");
    let ack = read_frame(&mut c).await.expect("ack");
    #[allow(clippy::disallowed_methods)]
    let after = jiff::Timestamp::now();
    // YYYYMMDDHHMMSS+ZZZZ, Paris time with its offset.
    let made = msh7(&ack);
    assert_eq!(made.len(), 19, "{ack}");
    let at: jiff::Timestamp = jiff::fmt::strtime::parse("%Y%m%d%H%M%S%z", &made)
        .and_then(|t| t.to_timestamp())
        .unwrap_or_else(|e| panic!("{made}: {e}"));
    let second = jiff::SignedDuration::from_secs(1);
    assert!(at >= before - second && at <= after + second, "{made}");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn split_writes_joined_frames_and_garbage() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    // One frame in many writes.
    let f = frame(&admission("S-1"));
    for chunk in f.chunks(7) {
        c.write_all(chunk).await.expect("write");
        c.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    assert_eq!(msa(&read_frame(&mut c).await.expect("ack")).1, "S-1");
    // Three frames in one write, with garbage before and between: answered in order.
    let mut all = b"\r\nnoise".to_vec();
    all.extend(frame(&admission("S-2")));
    all.extend(b"\x00\x01junk");
    all.extend(frame(&admission("S-3")));
    all.extend(frame(b"not hl7"));
    c.write_all(&all).await.expect("write");
    assert_eq!(
        msa(&read_frame(&mut c).await.expect("ack")),
        ("AA".into(), "S-2".into())
    );
    assert_eq!(
        msa(&read_frame(&mut c).await.expect("ack")),
        ("AA".into(), "S-3".into())
    );
    assert_eq!(
        msa(&read_frame(&mut c).await.expect("ack")),
        ("AR".into(), String::new())
    );
    assert_eq!(r.sink.batches().len(), 3);
    let dead = r.dead.letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].raw[..], b"not hl7");
    assert_eq!(dead[0].ack, AckCode::Reject);
    assert_eq!(dead[0].reason, "message does not start with an MSH segment");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn large_messages_are_processed_off_the_async_threads() {
    let r = start(ServerConfig {
        blocking_threshold: 1024,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let mut big = admission("LARGE-1");
    big.extend(b"\rNTE|1||");
    big.extend(std::iter::repeat_n(b'x', 200_000));
    c.write_all(&frame(&big)).await.expect("write");
    assert_eq!(
        msa(&read_frame(&mut c).await.expect("ack")),
        ("AA".into(), "LARGE-1".into())
    );
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn oversized_frame_gets_ar_and_the_connection_closes() {
    let r = start(ServerConfig {
        max_frame_bytes: 2048,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let mut big = admission("BIG-1");
    big.extend(b"\rNTE|1||");
    big.extend(std::iter::repeat_n(b'x', 10_000));
    // The server may close before reading everything: ignore write errors.
    let _ = c.write_all(&frame(&big)).await;
    let nak = read_frame(&mut c).await.expect("nak");
    assert_eq!(
        msa(&nak),
        ("AR".into(), "BIG-1".into()),
        "the control id is read from the head"
    );
    assert!(nak.contains("max_frame_bytes"), "{nak}");
    let size = big.len();
    assert!(
        nak.contains(&format!(
            "MLLP frame of {size} bytes exceeds the limit of 2048 bytes"
        )),
        "the frame's size and the limit: {nak}"
    );
    assert!(closed(&mut c).await);
    let letters = r.dead.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(&letters[0].raw[..], &big[..2048], "kept up to the limit");
    assert_eq!(letters[0].ack, AckCode::Reject);
    assert_eq!(letters[0].control_id.as_deref(), Some("BIG-1"));
    assert!(
        letters[0].reason.contains(&format!("of {size} bytes"))
            && letters[0]
                .reason
                .contains("kept truncated: only its first 2048 bytes"),
        "{}",
        letters[0].reason
    );
    assert!(r.sink.batches().is_empty());
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// A 2 MB message against the default 1 MiB limit: the sender, which has written it
/// whole, reads its AR; the dead letter holds the first MiB and says so.
#[tokio::test]
async fn a_2_mb_frame_is_kept_up_to_the_limit_and_answered() {
    let r = start(ServerConfig::default()).await;
    let limit = ServerConfig::default().max_frame_bytes;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let mut big = admission("BIG-2");
    big.extend(b"\rNTE|1||");
    big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024 - big.len()));
    let size = big.len();
    let (mut rd, mut wr) = c.split();
    let write = async {
        wr.write_all(&frame(&big))
            .await
            .expect("the whole frame is read");
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(&[0x1C, 0x0D]) {
            let n = rd.read(&mut buf).await.expect("read the AR");
            assert!(n > 0, "closed before the AR");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got[1..got.len() - 2]).into_owned()
    };
    let ((), nak) = tokio::time::timeout(GUARD, async { tokio::join!(write, read) })
        .await
        .expect("in time");
    assert_eq!(msa(&nak), ("AR".into(), "BIG-2".into()));
    assert!(
        nak.contains(&format!(
            "of {size} bytes exceeds the limit of {limit} bytes"
        )),
        "{nak}"
    );
    assert!(closed(&mut c).await);
    let letters = r.dead.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].raw.len(), limit);
    assert_eq!(&letters[0].raw[..], &big[..limit]);
    assert!(
        letters[0].reason.contains("truncated"),
        "{}",
        letters[0].reason
    );
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// A frame over the limit whose end never comes: at the frame timeout it is refused
/// with what had arrived, kept up to the limit.
#[tokio::test]
async fn an_oversized_frame_that_stalls_is_refused_at_the_frame_timeout() {
    let r = start(ServerConfig {
        max_frame_bytes: 2048,
        frame_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let mut big = vec![0x0B];
    big.extend(admission("BIG-3"));
    big.extend(b"\rNTE|1||");
    big.extend(std::iter::repeat_n(b'x', 5000));
    c.write_all(&big).await.expect("write");
    let nak = read_frame(&mut c).await.expect("an answer");
    assert_eq!(msa(&nak), ("AR".into(), "BIG-3".into()));
    assert!(nak.contains("its end not received"), "{nak}");
    assert!(closed(&mut c).await);
    let letters = r.dead.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(&letters[0].raw[..], &big[1..2049]);
    assert!(
        letters[0]
            .reason
            .contains(&format!("{} bytes received", big.len() - 1)),
        "{}",
        letters[0].reason
    );
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// One ADT message, several events (the discharge, then each diagnosis): one batch to
/// the sink, one AA; a resend gives the same ids.
#[tokio::test]
async fn a_message_with_several_events_is_one_submission() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let a03 = String::from_utf8(data("pamfr/a03_discharge_home_not_qualified.hl7"))
        .expect("utf-8")
        .replace('\n', "\r")
        .into_bytes();
    for _ in 0..2 {
        c.write_all(&frame(&a03)).await.expect("write");
        assert_eq!(
            msa(&read_frame(&mut c).await.expect("ack")),
            ("AA".into(), "GAM-0002".into())
        );
    }
    let batches = r.sink.batches();
    assert_eq!(batches.len(), 2);
    let types: Vec<&str> = batches[0]
        .iter()
        .map(|e| e.data.event_type().as_str())
        .collect();
    assert_eq!(
        types,
        [
            "encounter.discharged",
            "diagnosis.recorded",
            "diagnosis.recorded"
        ]
    );
    assert_eq!(batches[0], batches[1], "the same events and ids");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let r = start(ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    assert!(closed(&mut c).await, "closed after the idle timeout");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// Read until the server closes the connection: what it sent before, or `None` if it
/// did not close within the guard.
async fn bytes_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let fut = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, fut).await.ok()?;
    Some(got)
}

/// A partial frame, as a stalled sender leaves it.
const PARTIAL: &[u8] = b"\x0bMSH|^~\\&|";

#[tokio::test]
async fn a_frame_not_completed_in_time_is_closed_without_an_answer() {
    let frame_timeout = Duration::from_millis(300);
    let r = start(ServerConfig {
        frame_timeout,
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    })
    .await;
    // Opened first and left idle: it outlives the frame timeout.
    let mut idle = TcpStream::connect(r.addr).await.expect("connect");
    let mut slow = TcpStream::connect(r.addr).await.expect("connect");
    slow.write_all(PARTIAL).await.expect("write");
    let since = tokio::time::Instant::now();
    assert_eq!(
        bytes_until_closed(&mut slow).await,
        Some(Vec::new()),
        "closed after the frame timeout (not the idle timeout), with no answer"
    );
    assert!(since.elapsed() >= frame_timeout, "{:?}", since.elapsed());
    assert!(r.dead.letters().is_empty(), "nothing whole to keep");
    // The idle connection, older than the frame timeout, is still served.
    idle.write_all(&frame(&admission("F-1")))
        .await
        .expect("write");
    assert_eq!(
        msa(&read_frame(&mut idle).await.expect("ack")),
        ("AA".into(), "F-1".into())
    );
    // A frame sent in parts within the timeout is answered.
    let whole = frame(&admission("F-2"));
    let (head, tail) = whole.split_at(40);
    idle.write_all(head).await.expect("write");
    idle.flush().await.expect("flush");
    idle.write_all(tail).await.expect("write");
    assert_eq!(
        msa(&read_frame(&mut idle).await.expect("ack")),
        ("AA".into(), "F-2".into())
    );
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// A connection from a given loopback address (Linux routes all of 127/8 to loopback).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

#[tokio::test]
async fn one_peer_cannot_take_every_connection() {
    let r = start(ServerConfig {
        max_connections_per_peer: 2,
        max_connections: 8,
        ..ServerConfig::default()
    })
    .await;
    // One peer at its limit, both connections stalled in a partial frame (each served
    // once first, so the listener has counted it).
    let mut held = Vec::new();
    for i in 0..2 {
        let mut c = connect_from("127.0.0.1", r.addr).await;
        c.write_all(&frame(&admission(&format!("P-{i}"))))
            .await
            .expect("write");
        assert_eq!(msa(&read_frame(&mut c).await.expect("ack")).0, "AA");
        c.write_all(PARTIAL).await.expect("write");
        held.push(c);
    }
    let mut third = connect_from("127.0.0.1", r.addr).await;
    let _ = third.write_all(&frame(&admission("P-2"))).await;
    assert_eq!(
        bytes_until_closed(&mut third).await,
        Some(Vec::new()),
        "the peer's next connection is closed unanswered"
    );
    // Another peer still gets in.
    let mut other = connect_from("127.0.0.2", r.addr).await;
    other
        .write_all(&frame(&admission("Q-1")))
        .await
        .expect("write");
    assert_eq!(
        msa(&read_frame(&mut other).await.expect("ack")),
        ("AA".into(), "Q-1".into())
    );
    // Once one of its connections is gone, the first peer gets a place again.
    drop(held.pop());
    let served = tokio::time::timeout(GUARD, async {
        loop {
            let mut c = connect_from("127.0.0.1", r.addr).await;
            if c.write_all(&frame(&admission("P-3"))).await.is_ok()
                && let Some(ack) = read_frame(&mut c).await
            {
                return ack;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("served in time");
    assert_eq!(msa(&served), ("AA".into(), "P-3".into()));
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn an_acknowledgement_is_not_acknowledged() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    // An interface engine's ACK of something, then a message, on one connection.
    let ack =
        b"MSH|^~\\&|HIS|HOSP|PARCOURS|CPTS|20240115103000||ACK^A01^ACK|ACK-1|P|2.5\rMSA|AA|X-1";
    c.write_all(&frame(ack)).await.expect("write");
    c.write_all(&frame(&admission("K-1"))).await.expect("write");
    let first = read_frame(&mut c).await.expect("the connection stays open");
    assert_eq!(
        msa(&first),
        ("AA".into(), "K-1".into()),
        "the first answer is the message's: the ACK got none"
    );
    assert_eq!(r.server.acknowledgements_received(), 1);
    assert!(r.dead.letters().is_empty(), "an ACK is not a dead letter");
    assert_eq!(r.sink.batches().len(), 1);
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn extra_connections_are_accepted_then_closed() {
    let r = start(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    })
    .await;
    let mut a = TcpStream::connect(r.addr).await.expect("connect");
    a.write_all(&frame(&admission("L-1"))).await.expect("write");
    assert_eq!(msa(&read_frame(&mut a).await.expect("ack")).0, "AA");
    let mut b = TcpStream::connect(r.addr).await.expect("connect");
    assert!(closed(&mut b).await, "the second connection is closed");
    drop(a);
    // Once the first connection is gone, a new one is served.
    let served = tokio::time::timeout(GUARD, async {
        loop {
            let mut c = TcpStream::connect(r.addr).await.expect("connect");
            if c.write_all(&frame(&admission("L-2"))).await.is_ok()
                && let Some(ack) = read_frame(&mut c).await
            {
                return ack;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("served in time");
    assert_eq!(msa(&served), ("AA".into(), "L-2".into()));
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn sink_errors_give_ae() {
    let r = start(ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");

    r.sink.set_mode(SINK_UNAVAILABLE);
    c.write_all(&frame(&admission("E-1"))).await.expect("write");
    let ack = read_frame(&mut c).await.expect("ack");
    assert_eq!(msa(&ack), ("AE".into(), "E-1".into()));
    assert!(ack.contains("|207^Application internal error^HL70357|E||||parcours is temporarily unavailable; resend later"), "{ack}");
    assert!(
        r.dead.letters().is_empty(),
        "the sender resends: no dead letter"
    );

    r.sink.set_mode(SINK_REJECT);
    c.write_all(&frame(&admission("E-2"))).await.expect("write");
    let ack = read_frame(&mut c).await.expect("ack");
    assert_eq!(msa(&ack), ("AE".into(), "E-2".into()));
    assert!(
        ack.contains("events rejected by parcours: unknown encounter"),
        "{ack}"
    );
    let dead = r.dead.letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].control_id.as_deref(), Some("E-2"));
    assert_eq!(dead[0].message_type.as_deref(), Some("ADT^A01"));

    // Refused by the intake: AE for content, kept with its reason.
    c.write_all(&frame(&data("pamfr/a01_test_ins.hl7")))
        .await
        .expect("write");
    let ack = read_frame(&mut c).await.expect("ack");
    assert_eq!(msa(&ack), ("AE".into(), "GAM-0008".into()));
    assert!(r.dead.letters()[1].reason.contains("test INS"));
    assert!(r.sink.batches().is_empty());
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

/// A sink that waits for a permit before committing, and says when it has a message.
#[derive(Debug)]
struct GatedSink {
    entered: Notify,
    gate: Semaphore,
    inner: MemorySink,
}

impl Default for GatedSink {
    fn default() -> Self {
        GatedSink {
            entered: Notify::new(),
            gate: Semaphore::new(0),
            inner: MemorySink::default(),
        }
    }
}

impl Sink for GatedSink {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<String>, SinkError> {
        self.entered.notify_one();
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| SinkError::Unavailable {
                reason: "closed".into(),
            })?;
        permit.forget();
        self.inner.submit(events).await
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_messages_and_stops_accepting() {
    let r = start_with(Arc::new(GatedSink::default()), ServerConfig::default()).await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    c.write_all(&frame(&admission("G-1"))).await.expect("write");
    tokio::time::timeout(GUARD, r.sink.entered.notified())
        .await
        .expect("the message reached the sink");
    r.token.cancel();
    r.sink.gate.add_permits(1);
    let ack = read_frame(&mut c)
        .await
        .expect("the in-flight message is acknowledged");
    assert_eq!(msa(&ack), ("AA".into(), "G-1".into()));
    assert!(closed(&mut c).await, "then the connection closes");
    tokio::time::timeout(GUARD, r.task)
        .await
        .expect("serve returns")
        .expect("join")
        .expect("serve");
    assert_eq!(r.sink.inner.batches().len(), 1);
    assert!(
        TcpStream::connect(r.addr).await.is_err(),
        "no longer listening"
    );
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use parcours_hl7v2::tls::acceptor_from_files;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{self, RootCertStore};

    fn pem(name: &str) -> Vec<u8> {
        data(&format!("tls/{name}"))
    }

    fn connector(with_client_cert: bool) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem("ca.pem")) {
            roots.add(c.expect("ca")).expect("add");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if with_client_cert {
            let chain = CertificateDer::pem_slice_iter(&pem("client.pem"))
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(&pem("client.key")).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn mllp_over_mutual_tls() {
        let dir = common::data_dir().join("tls");
        let acceptor = acceptor_from_files(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            Some(&dir.join("ca.pem")),
        )
        .expect("acceptor");
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = Arc::new(MemorySink::default());
        let dead = Arc::new(MemoryDeadLetters::default());
        let token = CancellationToken::new();
        let server = MllpServer::new(intake(), Arc::clone(&sink), dead, ServerConfig::default());
        let task = tokio::spawn(server.serve_tls(listener, acceptor, token.clone()));

        let name = ServerName::try_from("localhost").expect("name");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector(true)
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
        tls.write_all(&frame(&admission("TLS-1")))
            .await
            .expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.ends_with(&[0x1C, 0x0D]) {
            let n = tokio::time::timeout(GUARD, tls.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "closed before the ACK");
            buf.extend_from_slice(&chunk[..n]);
        }
        let ack = String::from_utf8_lossy(&buf[1..buf.len() - 2]).into_owned();
        assert_eq!(msa(&ack), ("AA".into(), "TLS-1".into()));
        assert_eq!(sink.batches().len(), 1);

        // Without a client certificate: no service.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let refused = async {
            let mut tls = connector(false).connect(name, tcp).await.ok()?;
            tls.write_all(&frame(&admission("TLS-2"))).await.ok()?;
            let mut b = [0u8; 64];
            match tls.read(&mut b).await {
                Ok(n) if n > 0 => Some(()),
                _ => None,
            }
        };
        assert!(
            tokio::time::timeout(GUARD, refused)
                .await
                .expect("in time")
                .is_none()
        );
        assert_eq!(sink.batches().len(), 1);
        token.cancel();
        task.await.expect("join").expect("serve");
    }
}

#[tokio::test]
async fn a_peer_not_on_the_allow_list_is_refused() {
    use parcours_hl7v2::mllp::PeerNet;
    // Allowed: only a network the test client is not in; the connection is closed
    // before anything is read, and nothing reaches the sink.
    let r = start(ServerConfig {
        allowed_peers: vec!["10.99.0.0/16".parse::<PeerNet>().expect("net")],
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let _ = c.write_all(&frame(&admission("C-9"))).await;
    assert!(closed(&mut c).await, "refused peer is disconnected");
    assert!(r.sink.batches().is_empty(), "nothing accepted from it");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
    // Allowed: loopback; the same message is accepted.
    let r = start(ServerConfig {
        allowed_peers: vec![
            "10.99.0.0/16".parse().expect("net"),
            "127.0.0.1".parse().expect("addr"),
        ],
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    c.write_all(&frame(&admission("C-9"))).await.expect("write");
    let ack = read_frame(&mut c).await.expect("ack");
    assert_eq!(msa(&ack).0, "AA");
    r.token.cancel();
    r.task.await.expect("join").expect("serve");
}

#[test]
fn peer_networks_parse_and_match() {
    use parcours_hl7v2::mllp::PeerNet;
    let net: PeerNet = "192.168.10.0/24".parse().expect("net");
    assert!(net.contains("192.168.10.77".parse().expect("ip")));
    assert!(!net.contains("192.168.11.1".parse().expect("ip")));
    assert!(
        net.contains("::ffff:192.168.10.5".parse().expect("ip")),
        "IPv4-mapped IPv6"
    );
    let v6: PeerNet = "fd00::/8".parse().expect("net");
    assert!(v6.contains("fd12::1".parse().expect("ip")));
    assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
    assert!("10.0.0.0/33".parse::<PeerNet>().is_err());
    assert!("host.example".parse::<PeerNet>().is_err());
    let any: PeerNet = "0.0.0.0/0".parse().expect("net");
    assert!(any.contains("8.8.8.8".parse().expect("ip")));
}
