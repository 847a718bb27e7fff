//! The MLLP listener: frames in, events to the sink, acknowledgements out.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use parcours_core::events::Event;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::codec::{MllpCodec, MllpFrame};
use crate::ack::{Ack, AckDetail};
use crate::error::{AckCode, ErrorCode, Severity};
use crate::header::Header;
use crate::mapping::{Intake, Outcome, Processed};

/// Why the sink did not take the events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The content is refused (validation): answered `AE`, kept as a dead letter; the
    /// sender should not resend it unchanged.
    #[error("events rejected: {reason}")]
    Rejected {
        /// Why (no patient data).
        reason: String,
    },
    /// The store is momentarily unavailable: answered `AE` (see
    /// [`ServerConfig::unavailable_ack`]) with "resend later"; not a dead letter.
    #[error("event store unavailable: {reason}")]
    Unavailable {
        /// Why (no patient data).
        reason: String,
    },
}

/// Where accepted events go: the engine implements it.
pub trait Sink: Send + Sync + 'static {
    /// Commit the events of one message, in order. Return `Ok` only once they are
    /// durably committed: the `AA` goes out after that, with the warnings returned —
    /// what the pathways deliberately did not act on and why (a result without a unit),
    /// value-free — as an `ERR` of severity `W`. The same message may be submitted again
    /// (a resend): the events carry the same ids, and the sink dedupes by id.
    fn submit(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<String>, SinkError>> + Send;
}

/// A refused message, kept with its reason.
#[derive(Clone)]
pub struct DeadLetter {
    /// The bytes as received (the MLLP payload; for a frame over
    /// [`ServerConfig::max_frame_bytes`], its first `max_frame_bytes` bytes, and the
    /// reason says so). Patient data: store it where the message itself may be stored,
    /// never in logs.
    pub raw: Bytes,
    /// Why it was refused (no patient data).
    pub reason: String,
    /// MSH-10, when readable.
    pub control_id: Option<String>,
    /// `ADT^A01`, when readable.
    pub message_type: Option<String>,
    /// The acknowledgement code sent.
    pub ack: AckCode,
}

impl fmt::Debug for DeadLetter {
    /// Shows the size of the message, never its content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("bytes", &self.raw.len())
            .field("reason", &self.reason)
            .field("control_id", &self.control_id)
            .field("message_type", &self.message_type)
            .field("ack", &self.ack)
            .finish()
    }
}

/// The dead letter store could not keep a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dead letter store unavailable: {reason}")]
pub struct DeadLetterError {
    /// Why (no patient data).
    pub reason: String,
}

/// Where refused messages are kept (a `parcours.<tenant>.dlq` subject, a table, a
/// directory). If keeping fails, the message is answered as if the store were
/// unavailable, so the sender resends it: no message is lost silently.
pub trait DeadLetters: Send + Sync + 'static {
    /// Keep one refused message.
    fn keep(&self, letter: DeadLetter) -> impl Future<Output = Result<(), DeadLetterError>> + Send;
}

/// Pause after a failed `accept` (e.g. no file descriptor left).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How connections are accepted.
#[derive(Clone)]
enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(tokio_rustls::TlsAcceptor),
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest MLLP frame; a larger one is read to its end (without keeping more than
    /// this), kept as a dead letter truncated to this size, answered `AR` and the
    /// connection closed (default 1 MiB, the default `max_message_bytes`: raise both
    /// together).
    pub max_frame_bytes: usize,
    /// A connection with no complete frame for this long is closed (default 10
    /// minutes): the time allowed between messages.
    pub idle_timeout: Duration,
    /// A frame whose start block has arrived must end within this (default 30 s), else
    /// the connection is closed without an answer (nothing was received whole, so no
    /// ACK is owed: the sender resends). A slow or stalled sender then holds a
    /// connection for this long, not for the idle timeout.
    pub frame_timeout: Duration,
    /// Connections served at once; more are accepted and closed at once (default 64).
    pub max_connections: usize,
    /// Connections served at once from one peer address (default 16): one interface
    /// engine, or one misbehaving sender, cannot take every connection. More from that
    /// address are accepted and closed at once.
    pub max_connections_per_peer: usize,
    /// MSA-1 when the sink is unavailable (default `AE`; some interface engines resend
    /// only on `AR`).
    pub unavailable_ack: AckCode,
    /// Frames larger than this are guarded, parsed and mapped on the blocking pool
    /// (default 64 KiB).
    pub blocking_threshold: usize,
    /// Longest TLS handshake (default 30 s; used by `serve_tls`).
    pub handshake_timeout: Duration,
    /// Peers allowed to connect (addresses or networks); empty: any. A peer not on
    /// the list is closed at once, before a byte is read.
    pub allowed_peers: Vec<PeerNet>,
}

/// An allowed peer: an address and a prefix length (`10.1.2.3/32`, `10.1.0.0/16`,
/// `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for PeerNet {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: bad prefix length"))?,
        };
        Ok(PeerNet { addr, prefix })
    }
}

impl PeerNet {
    /// Whether an address is in this network (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_frame_bytes: crate::guard::Caps::default().max_message_bytes,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
            max_connections: 64,
            max_connections_per_peer: 16,
            unavailable_ack: AckCode::Error,
            blocking_threshold: 64 * 1024,
            handshake_timeout: Duration::from_secs(30),
            allowed_peers: Vec::new(),
        }
    }
}

/// An MLLP server: one task per connection, messages of a connection processed in
/// order, `AA` only after the sink committed.
pub struct MllpServer<S, D> {
    intake: Intake,
    sink: Arc<S>,
    dead_letters: Arc<D>,
    config: ServerConfig,
    acks_received: Arc<AtomicU64>,
}

impl<S, D> fmt::Debug for MllpServer<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MllpServer")
            .field("intake", &self.intake)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, D> Clone for MllpServer<S, D> {
    fn clone(&self) -> Self {
        MllpServer {
            intake: self.intake.clone(),
            sink: Arc::clone(&self.sink),
            dead_letters: Arc::clone(&self.dead_letters),
            config: self.config.clone(),
            acks_received: Arc::clone(&self.acks_received),
        }
    }
}

impl<S: Sink, D: DeadLetters> MllpServer<S, D> {
    /// A server over an intake, a sink and a dead letter store.
    pub fn new(intake: Intake, sink: Arc<S>, dead_letters: Arc<D>, config: ServerConfig) -> Self {
        MllpServer {
            intake,
            sink,
            dead_letters,
            config,
            acks_received: Arc::default(),
        }
    }

    /// Acknowledgements (MSH-9 `ACK`) received, by this server and its clones: never
    /// answered, never kept as dead letters.
    pub fn acknowledgements_received(&self) -> u64 {
        self.acks_received.load(Ordering::Relaxed)
    }

    /// Accept connections until `shutdown` is cancelled, then stop accepting, let every
    /// connection finish the message it is processing (its ACK is sent), and return.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.run(listener, Transport::Plain, shutdown).await
    }

    /// [`serve`](Self::serve), with TLS on every connection (see [`crate::tls`]).
    #[cfg(feature = "tls")]
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.run(listener, Transport::Tls(acceptor), shutdown).await
    }

    async fn run(
        self,
        listener: TcpListener,
        transport: Transport,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let per_peer = PeerCounts::default();
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection errors (reset before accept) or resource exhaustion
                    // (too many open files): keep listening, without spinning.
                    warn!(error = %e, "mllp accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            };
            if !self.config.allowed_peers.is_empty()
                && !self
                    .config
                    .allowed_peers
                    .iter()
                    .any(|n| n.contains(peer.ip()))
            {
                warn!(%peer, "mllp connection refused: peer not on the allow list");
                drop(stream);
                continue;
            }
            let Some(slot) = per_peer.take(peer.ip(), self.config.max_connections_per_peer) else {
                warn!(%peer, limit = self.config.max_connections_per_peer, "mllp connection refused: too many connections from this peer");
                tracker.spawn(async move {
                    let mut stream = stream;
                    let _ = stream.shutdown().await;
                });
                continue;
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                warn!(%peer, limit = self.config.max_connections, "mllp connection refused: too many connections");
                tracker.spawn(async move {
                    let mut stream = stream;
                    let _ = stream.shutdown().await;
                });
                continue;
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let token = shutdown.clone();
            let transport = transport.clone();
            tracker.spawn(
                async move {
                    match transport {
                        Transport::Plain => server.serve_connection(stream, token).await,
                        #[cfg(feature = "tls")]
                        Transport::Tls(acceptor) => {
                            let handshake = tokio::select! {
                                () = token.cancelled() => None,
                                r = tokio::time::timeout(server.config.handshake_timeout, acceptor.accept(stream)) => Some(r),
                            };
                            match handshake {
                                Some(Ok(Ok(tls))) => server.serve_connection(tls, token).await,
                                Some(Ok(Err(e))) => warn!(error = %e, "mllp tls handshake failed"),
                                Some(Err(_)) => warn!("mllp tls handshake timed out"),
                                None => {}
                            }
                        }
                    }
                    drop(permit);
                    drop(slot);
                }
                .instrument(info_span!("mllp", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// Serve one established connection (a TCP stream, a TLS stream, any byte stream)
    /// until the peer closes, the idle timeout, the frame timeout, an oversized frame, or
    /// `shutdown`.
    pub async fn serve_connection<IO>(&self, io: IO, shutdown: CancellationToken)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut framed = Framed::new(io, MllpCodec::new(self.config.max_frame_bytes));
        let mut skipped = 0u64;
        // Between messages: the idle timeout; once a frame has started: its own.
        let mut idle_deadline = Instant::now() + self.config.idle_timeout;
        let mut frame_deadline: Option<Instant> = None;
        let mut timed_out = false;
        debug!("mllp connection open");
        loop {
            let deadline = frame_deadline.map_or(idle_deadline, |f| f.min(idle_deadline));
            // `Framed::next` is cancel safe: bytes read stay in its buffer.
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = framed.next() => Some(n),
                () = tokio::time::sleep_until(deadline) => None,
            };
            let frame = match next {
                None if frame_deadline.is_some_and(|f| f <= Instant::now()) => {
                    warn!(
                        timeout_ms = self.config.frame_timeout.as_millis() as u64,
                        "mllp frame not completed within the frame timeout: closing"
                    );
                    timed_out = true;
                    break;
                }
                None => {
                    info!("mllp connection idle: closing");
                    break;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    debug!(error = %e, "mllp read failed");
                    break;
                }
                Some(Some(Ok(frame))) => frame,
            };
            let now_skipped = framed.codec().skipped_bytes();
            if now_skipped > skipped {
                warn!(
                    bytes = now_skipped - skipped,
                    "mllp bytes outside frames skipped"
                );
                skipped = now_skipped;
            }
            match frame {
                MllpFrame::Started => {
                    frame_deadline
                        .get_or_insert_with(|| Instant::now() + self.config.frame_timeout);
                }
                MllpFrame::Message(payload) => {
                    frame_deadline = None;
                    if let Some(reply) = self.handle(payload.freeze()).await
                        && let Err(e) = framed.send(reply).await
                    {
                        debug!(error = %e, "mllp write failed");
                        break;
                    }
                    idle_deadline = Instant::now() + self.config.idle_timeout;
                }
                frame @ MllpFrame::Oversized { .. } => {
                    self.refuse_oversized(&mut framed, frame).await;
                    break;
                }
            }
        }
        // A frame over the limit still being read when the connection stops (frame
        // timeout, shutdown, a failed read) is refused with what had arrived.
        if let Some(frame) = framed.codec_mut().take_oversized() {
            self.refuse_oversized(&mut framed, frame).await;
        }
        // What the connection left unread when it ended — a frame begun but never ended
        // (the sender closed mid-message), bytes outside any frame: said, as the frame
        // timeout is, so that a message a sender believes sent leaves a trace. Not kept:
        // nothing of it was received whole, and no answer was owed.
        let unread = framed.read_buffer().len() as u64;
        let left = framed.codec().skipped_bytes().saturating_sub(skipped) + unread;
        if left > 0 && !timed_out {
            warn!(
                bytes = left,
                frame_started = frame_deadline.is_some(),
                "mllp connection ended with bytes not received as a whole message: nothing recorded, no answer"
            );
        }
        let _ = framed.get_mut().shutdown().await;
        debug!("mllp connection closed");
    }

    /// A frame over the limit: kept as a dead letter (its first `max_frame_bytes` bytes,
    /// the reason saying it is truncated, the frame's size and the limit) and answered
    /// `AR` (with its control id when the head has a readable MSH).
    async fn refuse_oversized<IO>(&self, framed: &mut Framed<IO, MllpCodec>, frame: MllpFrame)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let MllpFrame::Oversized {
            head,
            received,
            complete,
        } = frame
        else {
            return;
        };
        let limit = self.config.max_frame_bytes;
        let header = Header::sniff(&head);
        let refused = if complete {
            format!(
                "MLLP frame of {received} bytes exceeds the limit of {limit} bytes (max_frame_bytes)"
            )
        } else {
            format!(
                "MLLP frame exceeds the limit of {limit} bytes (max_frame_bytes): {received} bytes received before it was given up, its end not received"
            )
        };
        warn!(
            received,
            complete,
            limit,
            control_id = header.as_ref().map(|h| h.control_id.as_str()),
            "mllp frame too large"
        );
        let reason = format!(
            "{refused}; kept truncated: only its first {} bytes are in this dead letter; connection closed",
            head.len()
        );
        let ack = Ack {
            code: AckCode::Reject,
            detail: Some(AckDetail {
                code: ErrorCode::ApplicationError,
                severity: Severity::Error,
                location: None,
                message: format!("{refused}; connection closed"),
            }),
        };
        let ack = if self
            .keep_dead(head, header.as_ref(), reason, AckCode::Reject)
            .await
        {
            ack
        } else {
            self.unavailable("message refused but not recorded; resend later".into())
        };
        let reply = self.intake.ack_bytes_at(header.as_ref(), &ack, now());
        let _ = framed.send(reply).await;
    }

    async fn keep_dead(
        &self,
        raw: Bytes,
        header: Option<&Header>,
        reason: String,
        ack: AckCode,
    ) -> bool {
        let letter = DeadLetter {
            raw,
            reason,
            control_id: header.map(|h| h.control_id.clone()),
            message_type: header.and_then(Header::message_type_name),
            ack,
        };
        match self.dead_letters.keep(letter).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "dead letter not kept: asking the sender to resend");
                false
            }
        }
    }

    fn unavailable(&self, message: String) -> Ack {
        Ack {
            code: self.config.unavailable_ack,
            detail: Some(AckDetail {
                code: ErrorCode::ApplicationError,
                severity: Severity::Error,
                location: None,
                message,
            }),
        }
    }

    /// Process one frame and build its acknowledgement; `None` for an acknowledgement
    /// (MSH-9 `ACK`), which is never acknowledged: answering one invites an ACK
    /// ping-pong with the sender's interface engine.
    async fn handle(&self, raw: Bytes) -> Option<Vec<u8>> {
        if let Some(h) = Header::sniff(&raw).filter(|h| h.message_code.eq_ignore_ascii_case("ACK"))
        {
            debug!(
                control_id = h.control_id.as_str(),
                "hl7 acknowledgement received: not answered"
            );
            self.acks_received.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.process(raw).await)
    }

    /// Process one message and build its acknowledgement.
    async fn process(&self, raw: Bytes) -> Vec<u8> {
        let processed: Processed = if raw.len() > self.config.blocking_threshold {
            let intake = self.intake.clone();
            let bytes = raw.clone();
            match tokio::task::spawn_blocking(move || intake.process(&bytes)).await {
                Ok(p) => p,
                Err(_) => {
                    let ack = self.unavailable(
                        "internal error while reading the message; resend later".into(),
                    );
                    return self
                        .intake
                        .ack_bytes_at(Header::sniff(&raw).as_ref(), &ack, now());
                }
            }
        } else {
            self.intake.process(&raw)
        };
        let message_type = processed.message_type();
        let header = processed.header.as_ref();
        let control_id = header.map_or("", |h| h.control_id.as_str());
        let ack = match &processed.outcome {
            Outcome::Accepted(events) if events.is_empty() => {
                info!(message_type, control_id, events = 0, "hl7 message accepted");
                Ack::accept()
            }
            Outcome::Accepted(events) => {
                let count = events.len();
                match self.sink.submit(events.clone()).await {
                    Ok(warnings) => {
                        info!(
                            message_type,
                            control_id,
                            events = count,
                            warnings = warnings.len(),
                            "hl7 message accepted"
                        );
                        Ack::accept_with_warnings(&warnings)
                    }
                    Err(SinkError::Rejected { reason }) => {
                        let reason = format!("events rejected by parcours: {reason}");
                        warn!(
                            message_type,
                            control_id, reason, "hl7 message rejected by the sink"
                        );
                        if self
                            .keep_dead(raw.clone(), header, reason.clone(), AckCode::Error)
                            .await
                        {
                            Ack {
                                code: AckCode::Error,
                                detail: Some(AckDetail {
                                    code: ErrorCode::ApplicationError,
                                    severity: Severity::Error,
                                    location: None,
                                    message: reason,
                                }),
                            }
                        } else {
                            self.unavailable(
                                "message refused but not recorded; resend later".into(),
                            )
                        }
                    }
                    Err(SinkError::Unavailable { reason }) => {
                        warn!(message_type, control_id, reason, "event store unavailable");
                        self.unavailable("parcours is temporarily unavailable; resend later".into())
                    }
                }
            }
            Outcome::Ignored(reason) => {
                info!(message_type, control_id, reason, "hl7 message ignored");
                processed.ack()
            }
            Outcome::Refused(e) => {
                let ack = processed.ack();
                warn!(message_type, control_id, error = %e, "hl7 message refused");
                if self
                    .keep_dead(raw.clone(), header, e.to_string(), ack.code)
                    .await
                {
                    ack
                } else {
                    self.unavailable("message refused but not recorded; resend later".into())
                }
            }
        };
        self.intake.ack_bytes_at(header, &ack, now())
    }
}

/// When an acknowledgement is made (its MSH-7). The listener is IO, not the pure
/// intake: the one place here that reads the wall clock.
#[allow(clippy::disallowed_methods)]
fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Connections open per peer address.
#[derive(Clone, Default)]
struct PeerCounts(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

impl PeerCounts {
    /// A slot for one more connection from `ip`, if it has fewer than `limit` open (an
    /// IPv4-mapped IPv6 address counts as its IPv4 address).
    fn take(&self, ip: std::net::IpAddr, limit: usize) -> Option<PeerSlot> {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its peer's count, given back when dropped.
struct PeerSlot {
    counts: PeerCounts,
    ip: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Bind a TCP listener (use port 0 in tests and read [`TcpListener::local_addr`]).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
