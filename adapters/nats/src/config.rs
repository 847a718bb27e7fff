//! Settings: the connection (servers, auth, TLS), the streams, the partition consumers.
//!
//! Every setting has a default fit for production on a single node; [`NatsConfig::validate`]
//! checks the whole set before anything connects. Secrets live in [`Secret`], whose
//! `Debug` never shows them, and URLs are printed without their `user:password@` part.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::NatsError;

/// Highest number of partitions: the subject token is `p00` … `p99`.
pub const MAX_PARTITIONS: u16 = 100;

/// A password, token or NKey seed. Never printed: `Debug` shows `Secret(<redacted>)` and
/// there is no `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the engine authenticates to NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (a local or test server).
    #[default]
    None,
    /// A user and a password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// An NKey seed (`SU…`); the public key is derived from it.
    NKeySeed(Secret),
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes them).
    CredsFile(PathBuf),
}

/// TLS towards the servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// Refuse a connection that is not TLS (also implied by a `tls://` URL).
    pub required: bool,
    /// PEM file of the certificate authorities to trust (else the system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify: true`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the client also learns the
    /// cluster's other members from the server it reaches.
    pub urls: Vec<String>,
    /// Connection name, shown by `nats server report connections` and in server logs.
    pub name: String,
    /// Credentials.
    pub auth: Auth,
    /// TLS.
    pub tls: Tls,
    /// Time allowed to establish one connection.
    pub connect_timeout: Duration,
    /// Time allowed for a JetStream API call, a publish acknowledgement or an ack
    /// confirmation.
    pub request_timeout: Duration,
    /// Interval of the client's pings (a dead server is noticed after two missed pongs).
    pub ping_interval: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        ConnectionConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            name: "parcours".into(),
            auth: Auth::None,
            tls: Tls::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
        }
    }
}

/// A URL without its `user:password@` part, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(host_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("ConnectionConfig")
            .field("urls", &urls)
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("ping_interval", &self.ping_interval)
            .finish()
    }
}

/// The three streams' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Replicas of every stream (1 on a single node, 3 in a cluster of three).
    pub replicas: usize,
    /// `PARCOURS_IN`: window in which a second publish with the same `Nats-Msg-Id` (the
    /// event id) is dropped. Covers publisher retries.
    pub in_duplicate_window: Duration,
    /// `PARCOURS_IN`: most bytes kept waiting (-1: unlimited). When full, publishes are
    /// refused (discard `new`): an inbound event is never dropped to make room.
    pub in_max_bytes: i64,
    /// `PARCOURS_OUT`: how long effects are kept for care-team systems to read.
    pub out_max_age: Duration,
    /// `PARCOURS_OUT`: window in which a re-published effect id is dropped. Covers relay
    /// retries and a restart between publish and checkpoint.
    pub out_duplicate_window: Duration,
    /// `PARCOURS_DLQ`: how long dead letters are kept.
    pub dlq_max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> StreamSettings {
        StreamSettings {
            replicas: 1,
            in_duplicate_window: Duration::from_secs(120),
            in_max_bytes: -1,
            out_max_age: Duration::from_secs(30 * 24 * 3600),
            out_duplicate_window: Duration::from_secs(600),
            dlq_max_age: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// The partition consumers' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Time the server waits for an ack before delivering a message again. While the
    /// engine works on a batch the consumer sends progress acks, so a slow commit does
    /// not cause redeliveries.
    pub ack_wait: Duration,
    /// Deliveries after which the server stops delivering a message (-1: never). The
    /// consumer bounds poison messages itself ([`ConsumerSettings::max_attempts`]) and
    /// dead-letters them visibly; a server-side stop would leave a message parked in the
    /// work queue unseen, so the default is -1.
    pub max_deliver: i64,
    /// Messages delivered and not yet acknowledged, per partition, at most.
    pub max_ack_pending: i64,
    /// Messages per batch handed to the engine (one `Handle::submit`), and fetched ahead
    /// at most while earlier batches are being committed.
    pub batch: usize,
    /// Batches of a partition with the engine at once (each patient's events still go in
    /// order: a patient with a batch in flight waits for its answer).
    pub batches_in_flight: usize,
    /// How long a pull request stays open: a partition loop's request delivers each
    /// message as it arrives, until it delivered its room or this passed, then the next
    /// is sent (the FHIR consumer's returns at once when messages are there). An empty
    /// partition costs a request per this long.
    pub fetch_expiry: Duration,
    /// Delivery count from which a message whose processing still fails for a reason of
    /// its own is dead-lettered.
    pub max_attempts: u32,
    /// Pause of a partition after a message was handed back for a retry (it comes back
    /// first at the next fetch); doubles with each delivery of that message.
    pub retry_base: Duration,
    /// Longest such pause.
    pub retry_max: Duration,
    /// Acks and naks being sent at once (a term after a dead letter awaits the server's
    /// confirmation; the others are sent without waiting for it).
    pub ack_concurrency: usize,
}

impl Default for ConsumerSettings {
    fn default() -> ConsumerSettings {
        ConsumerSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 1024,
            batch: 256,
            batches_in_flight: 4,
            fetch_expiry: Duration::from_secs(1),
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ack_concurrency: 64,
        }
    }
}

impl ConsumerSettings {
    /// The redelivery delay after the `delivered`-th delivery failed.
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).min(16)).unwrap_or(16);
        self.retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_max)
    }
}

/// Everything the adapter needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// The connection.
    pub connection: ConnectionConfig,
    /// Number of partitions (1 to 100). Publishers and engines must agree on it: it is
    /// part of every inbound subject. Change it only with `PARCOURS_IN` drained.
    pub partitions: u16,
    /// The streams.
    pub streams: StreamSettings,
    /// The partition consumers.
    pub consumer: ConsumerSettings,
    /// Publishes awaiting their acknowledgement at once (effects, inbound batches).
    pub publish_in_flight: usize,
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            connection: ConnectionConfig::default(),
            partitions: 16,
            streams: StreamSettings::default(),
            consumer: ConsumerSettings::default(),
            publish_in_flight: 512,
        }
    }
}

impl NatsConfig {
    /// Check the settings; every problem is reported at once.
    pub fn validate(&self) -> Result<(), NatsError> {
        let mut problems = Vec::new();
        let c = &self.connection;
        if c.urls.is_empty() {
            problems.push("at least one server URL is needed".to_string());
        }
        if c.name.is_empty() || c.name.chars().any(char::is_control) {
            problems.push("the connection name must be printable and not empty".into());
        }
        if let Auth::UserPassword { user, .. } = &c.auth
            && user.is_empty()
        {
            problems.push("the user name is empty".into());
        }
        if c.tls.client_cert.is_some() != c.tls.client_key.is_some() {
            problems.push("a client certificate needs its key and the other way round".into());
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            problems.push(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, not {}",
                self.partitions
            ));
        }
        let s = &self.streams;
        if s.replicas == 0 || s.replicas > 5 {
            problems.push(format!("replicas must be 1 to 5, not {}", s.replicas));
        }
        if s.in_duplicate_window < Duration::from_secs(120) {
            problems.push("the inbound duplicate window must be at least 2 minutes".into());
        }
        if s.out_duplicate_window.is_zero() {
            problems.push("the effect duplicate window must not be zero".into());
        }
        if s.out_max_age < s.out_duplicate_window || s.dlq_max_age < Duration::from_secs(3600) {
            problems.push(
                "effects must be kept longer than their duplicate window, dead letters at \
                 least an hour"
                    .into(),
            );
        }
        let k = &self.consumer;
        if k.ack_wait < Duration::from_secs(1) {
            problems.push("ack_wait must be at least 1 s".into());
        }
        if k.max_deliver == 0 || k.max_deliver < -1 {
            problems.push("max_deliver must be -1 (unlimited) or positive".into());
        }
        if k.max_deliver > 0 && k.max_deliver <= i64::from(k.max_attempts) {
            problems.push(
                "max_deliver must exceed max_attempts, else the server parks a message before \
                 the consumer dead-letters it"
                    .into(),
            );
        }
        if k.batch == 0 || k.max_ack_pending < 1 || k.max_ack_pending < k.batch as i64 {
            problems.push("batch must be at least 1 and at most max_ack_pending".into());
        }
        if k.fetch_expiry < Duration::from_millis(10) || k.fetch_expiry >= k.ack_wait {
            problems.push("fetch_expiry must be at least 10 ms and shorter than ack_wait".into());
        }
        if k.max_attempts == 0 {
            problems.push("max_attempts must be at least 1".into());
        }
        if k.retry_base.is_zero() || k.retry_max < k.retry_base {
            problems.push("retry delays must be positive and retry_max >= retry_base".into());
        }
        if k.ack_concurrency == 0 || self.publish_in_flight == 0 || k.batches_in_flight == 0 {
            problems.push(
                "ack_concurrency, publish_in_flight and batches_in_flight must be at least 1"
                    .into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NatsError::Config(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_credentials_never_print() {
        let c = ConnectionConfig {
            urls: vec![
                "nats://engine:hunter2@nats-1:4222".into(),
                "tls://tok3n@nats-2:4222/x".into(),
                "nats-3:4222".into(),
            ],
            auth: Auth::UserPassword {
                user: "engine".into(),
                password: Secret::new("hunter2"),
            },
            ..ConnectionConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("tok3n"), "{shown}");
        assert!(shown.contains("nats://<redacted>@nats-1:4222"), "{shown}");
        assert!(shown.contains("tls://<redacted>@nats-2:4222/x"), "{shown}");
        assert!(shown.contains("\"nats-3:4222\""), "{shown}");
        let token = format!("{:?}", Auth::Token(Secret::new("s3cr3t")));
        assert_eq!(token, "Token(Secret(<redacted>))");
        let seed = format!("{:?}", Auth::NKeySeed(Secret::new("SUAB")));
        assert!(!seed.contains("SUAB"));
    }

    #[test]
    fn defaults_are_valid_and_problems_are_all_reported() {
        NatsConfig::default()
            .validate()
            .expect("defaults are valid");
        let bad = NatsConfig {
            partitions: 101,
            consumer: ConsumerSettings {
                batch: 0,
                max_attempts: 0,
                ..ConsumerSettings::default()
            },
            ..NatsConfig::default()
        };
        let Err(NatsError::Config(m)) = bad.validate() else {
            panic!("refused")
        };
        assert!(m.contains("partitions") && m.contains("batch") && m.contains("max_attempts"));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let k = ConsumerSettings::default();
        assert_eq!(k.retry_delay(1), Duration::from_secs(1));
        assert_eq!(k.retry_delay(2), Duration::from_secs(2));
        assert_eq!(k.retry_delay(4), Duration::from_secs(8));
        assert_eq!(k.retry_delay(50), Duration::from_secs(60));
        assert_eq!(k.retry_delay(0), Duration::from_secs(1));
    }
}
