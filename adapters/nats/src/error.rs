//! Errors at the adapter's boundary.

/// What went wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The settings are not usable.
    #[error("invalid nats settings: {0}")]
    Config(String),
    /// No connection could be made: credentials, TLS or the server refused it.
    #[error("cannot connect to nats: {0}")]
    Connect(String),
    /// No server answered (none listening, a name not resolved yet, a timeout): it may
    /// come up ([`Nats::connect_waiting`](crate::Nats::connect_waiting) waits for it).
    #[error("no nats server answers: {0}")]
    Unreachable(String),
    /// A stream exists with settings parcours cannot work with; it is never edited.
    #[error(
        "stream {stream} exists with settings parcours cannot use: {}; parcours does not \
         edit them: fix the stream (or remove it once drained) and start again",
        differences.join("; ")
    )]
    IncompatibleStream {
        /// The stream.
        stream: String,
        /// Each difference, as `setting is X, expected Y`.
        differences: Vec<String>,
    },
    /// A partition consumer exists with settings parcours cannot work with.
    #[error(
        "consumer {consumer} on {stream} exists with settings parcours cannot use: {}; \
         parcours does not edit them: remove the consumer and start again",
        differences.join("; ")
    )]
    IncompatibleConsumer {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// Each difference.
        differences: Vec<String>,
    },
    /// A JetStream call failed (server unreachable, timeout, refusal).
    #[error("jetstream: {0}")]
    JetStream(String),
}

impl NatsError {
    /// Whether retrying cannot help (settings to fix by a person).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NatsError::Config(_)
                | NatsError::IncompatibleStream { .. }
                | NatsError::IncompatibleConsumer { .. }
        )
    }
}

/// Why an inbound event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event is not acceptable (envelope, tenant, type): answer the sender 4xx.
    #[error("event refused: {0}")]
    Invalid(String),
    /// NATS did not confirm the event is stored: answer 503, the sender retries (the
    /// same event id is dropped as a duplicate if the first publish did land). Not
    /// "not stored": the client may still send it once NATS is back.
    #[error(
        "event not confirmed stored ({0}): it may still be recorded; send it again with the same id (a duplicate is recognised, never recorded twice)"
    )]
    Unavailable(String),
}
