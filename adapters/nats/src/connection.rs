//! The connection: one NATS client and its JetStream context, shared by the bus, the
//! inbound publisher and the partition consumers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, Event as ClientEvent, ServerAddr};
use tokio::sync::watch;

use crate::config::{Auth, NatsConfig, redact_url};
use crate::consumer::Backoff;
use crate::error::NatsError;

/// Counters, for metrics and tests. Monotonic.
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Inbound messages fetched by the partition consumers.
    pub fetched: AtomicU64,
    /// Pull requests the partition consumers sent (each held open until its room is
    /// delivered or `fetch_expiry` passes).
    pub pulls: AtomicU64,
    /// Inbound events committed by the engine and acknowledged.
    pub committed: AtomicU64,
    /// Inbound events the engine already had (redeliveries, re-sends), acknowledged.
    pub duplicates: AtomicU64,
    /// Messages dead-lettered (published to a DLQ subject, then terminated).
    pub dead_lettered: AtomicU64,
    /// Messages handed back for a later redelivery (nak with a delay).
    pub retried: AtomicU64,
    /// Acks whose confirmation did not arrive (the message comes back; the engine
    /// recognises it as a duplicate).
    pub ack_failures: AtomicU64,
    /// Inbound events under a linked local key published again on their national key's
    /// partition (confirmed copies, duplicates included; the originals acknowledged).
    pub relinked: AtomicU64,
    /// Effects stored in `PARCOURS_OUT` (acknowledged publishes, duplicates included).
    pub effects_published: AtomicU64,
    /// Inbound events stored in `PARCOURS_IN` by [`Nats::publish_inbound`].
    pub inbound_published: AtomicU64,
    /// Messages of the inbound stream a partition's consumer would never deliver,
    /// published again at its end ([`Nats::lost_messages`], [`Nats::publish_lost_again`]).
    pub lost_published_again: AtomicU64,
}

impl NatsStats {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A connection to NATS JetStream. Cheap to clone.
///
/// The client reconnects forever with a capped exponential backoff (up to 4 s between
/// attempts), re-subscribes and flushes what was buffered; [`Nats::connected`] follows the
/// connection for `/readyz`.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    connected: watch::Receiver<bool>,
    stats: Arc<NatsStats>,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("name", &self.config.connection.name)
            .field(
                "urls",
                &self
                    .config
                    .connection
                    .urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// [`Nats::connect`], waiting while no server answers — none listening yet (NATS
    /// started with the engine), a name not resolved yet, a timeout: each failed try is
    /// logged and tried again after 0.1 s, doubling up to 5 s, for as long as it takes
    /// (drop the future to stop waiting). Settings, credentials or TLS refused are
    /// returned at once.
    pub async fn connect_waiting(config: NatsConfig) -> Result<Nats, NatsError> {
        let mut backoff = Backoff::new();
        loop {
            match Nats::connect(config.clone()).await {
                Err(NatsError::Unreachable(e)) => {
                    tracing::warn!(
                        connection = %config.connection.name,
                        error = %e,
                        retry_in = ?backoff.next(),
                        "no NATS server answers yet; trying again"
                    );
                    backoff.sleep().await;
                }
                done => return done,
            }
        }
    }

    /// Connect with these settings (validated first). Fails when no server can be reached
    /// now ([`NatsError::Unreachable`]); once connected, the client reconnects by itself
    /// for ever.
    pub async fn connect(config: NatsConfig) -> Result<Nats, NatsError> {
        config.validate()?;
        let c = &config.connection;
        let mut options =
            match &c.auth {
                Auth::None => ConnectOptions::new(),
                Auth::UserPassword { user, password } => {
                    ConnectOptions::with_user_and_password(user.clone(), password.expose().into())
                }
                Auth::Token(token) => ConnectOptions::with_token(token.expose().into()),
                Auth::NKeySeed(seed) => ConnectOptions::with_nkey(seed.expose().into()),
                Auth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| {
                        NatsError::Connect(format!(
                            "cannot read the credentials file {}: {e}",
                            path.display()
                        ))
                    })?,
            };
        if c.tls.required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &c.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&c.tls.client_cert, &c.tls.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let (tx, connected) = watch::channel(false);
        let tx = Arc::new(tx);
        let name = c.name.clone();
        options = options
            .name(&c.name)
            .connection_timeout(c.connect_timeout)
            .request_timeout(Some(c.request_timeout))
            .ping_interval(c.ping_interval)
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                let name = name.clone();
                async move {
                    match event {
                        ClientEvent::Connected => {
                            tracing::info!(connection = %name, "nats connected");
                            tx.send_replace(true);
                        }
                        ClientEvent::Disconnected => {
                            tracing::warn!(connection = %name, "nats disconnected; reconnecting");
                            tx.send_replace(false);
                        }
                        // Reconnections never give up (`max_reconnects(None)`): the
                        // client closes only when it is closed, at an orderly stop.
                        ClientEvent::Closed => {
                            tracing::info!(connection = %name, "nats connection closed");
                            tx.send_replace(false);
                        }
                        other => {
                            tracing::warn!(connection = %name, event = %other, "nats event");
                        }
                    }
                }
            });
        let mut addrs = Vec::with_capacity(c.urls.len());
        for url in &c.urls {
            let addr: ServerAddr = url.parse().map_err(|e| {
                NatsError::Config(format!("server URL {} is not valid: {e}", redact_url(url)))
            })?;
            addrs.push(addr);
        }
        let client = options.connect(addrs).await.map_err(|e| match e.kind() {
            ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => {
                NatsError::Unreachable(e.to_string())
            }
            _ => NatsError::Connect(e.to_string()),
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(c.request_timeout)
            .build(client.clone());
        let nats = Nats {
            client,
            js,
            config: Arc::new(config),
            connected,
            stats: Arc::default(),
        };
        // The Connected event may have fired before the callback's receiver existed.
        if nats.is_connected() {
            tracing::info!(
                connection = %nats.config.connection.name,
                server = %nats.client.server_info().version,
                "nats ready"
            );
        }
        Ok(nats)
    }

    /// Whether the client is connected now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Follows the connection: `true` while connected. `changed().await` wakes on each
    /// connect and disconnect.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Wait until connected (at once if connected).
    pub async fn wait_connected(&self) {
        let mut rx = self.connected.clone();
        while !self.is_connected() {
            // The sender lives as long as the client; a timeout guards a missed event.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(250), rx.changed()).await;
        }
    }

    /// The server's version (`2.9.10`), as announced when connecting.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// The settings in use.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<NatsStats> {
        &self.stats
    }

    /// The NATS client (for adapters that subscribe to plain subjects).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Flush what is buffered and close the connection.
    pub async fn close(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "nats drain");
        }
    }
}
