//! Logs and traces: the `tracing` subscriber of every command.
//!
//! - `--log-format text|json` (`PARCOURS_LOG_FORMAT`, `log-format` in `--config`): human
//!   lines, or one JSON object per line on stderr (the event's fields flattened, with
//!   its span and the list of spans above it: `ingest_batch` → `event`).
//! - `--log-filter` (`PARCOURS_LOG_FILTER`, else `RUST_LOG`): which targets and levels,
//!   in `RUST_LOG` syntax (`info`, `warn,parcours_runtime=info`).
//! - `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`): spans exported over OTLP/HTTP
//!   (protobuf) to `<endpoint>/v1/traces`, batched on a background thread, flushed at
//!   exit. Built only with the `otel` cargo feature (`cargo build -p parcours
//!   --features otel`); without it the setting is ignored with a warning.
//!
//! Nothing here adds patient data: spans and events carry what the code gives them, and
//! the runtime gives event ids, instance ids and HMAC subject keys only.

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The logging settings every command takes.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct TelemetryArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PARCOURS_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// Which logs and spans to keep, in RUST_LOG syntax (`info`,
    /// `warn,parcours_runtime=info`). Default: RUST_LOG, else `info` for serve and `warn`
    /// for the other commands.
    #[arg(long, env = "PARCOURS_LOG_FILTER")]
    pub(crate) log_filter: Option<String>,
    /// Export spans over OTLP/HTTP to this collector (`http://otel-collector:4318`; the
    /// traces go to `<endpoint>/v1/traces`). Needs a binary built with `--features otel`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Keeps the exporter alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping the guard stops the span export"]
pub(crate) struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("parcours: flushing the span export: {e}");
        }
    }
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// The filter: the flag (or `PARCOURS_LOG_FILTER`), else `RUST_LOG`, else `default`.
fn filter(args: &TelemetryArgs, default: &str) -> anyhow::Result<EnvFilter> {
    let text = match &args.log_filter {
        Some(f) => f.clone(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_string()),
    };
    EnvFilter::builder()
        .parse(&text)
        .map_err(|e| anyhow::anyhow!("--log-filter {text:?}: {e}"))
}

fn fmt_layer(format: LogFormat) -> Boxed {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

/// Install the subscriber: logs on stderr in the chosen format, spans to OTLP when an
/// endpoint is given. `default_filter` applies when neither the flag nor `RUST_LOG` says.
pub(crate) fn init(args: &TelemetryArgs, default_filter: &str) -> anyhow::Result<Guard> {
    let filter = filter(args, default_filter)?;
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut layers: Vec<Boxed> = vec![fmt_layer(args.log_format)];
    #[cfg(feature = "otel")]
    let provider = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let (layer, provider) = otel::layer(endpoint)?;
            layers.push(layer);
            Some(provider)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    // An endpoint set for every container of a platform must not stop a build without
    // the exporter: said once, loudly.
    #[cfg(not(feature = "otel"))]
    if args.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
        tracing::warn!(
            "--otlp-endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) ignored: this parcours was built without the otel feature (cargo build -p parcours --features otel)"
        );
    }
    Ok(Guard {
        #[cfg(feature = "otel")]
        provider,
    })
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer as _;

    use super::Boxed;

    /// The traces URL of an OTLP/HTTP base endpoint (a URL already ending in
    /// `/v1/traces` is kept).
    pub(super) fn traces_url(endpoint: &str) -> String {
        let base = endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    pub(super) fn layer(
        endpoint: &str,
    ) -> anyhow::Result<(Boxed, opentelemetry_sdk::trace::SdkTracerProvider)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build()
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("parcours")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("parcours");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
        Ok((layer, provider))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_traces_path_is_added_once() {
            assert_eq!(
                super::traces_url("http://c:4318"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/"),
                "http://c:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://c:4318/v1/traces"),
                "http://c:4318/v1/traces"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_and_bad_filters_are_refused() {
        let args = TelemetryArgs {
            log_filter: Some("warn,parcours_runtime=debug".into()),
            ..TelemetryArgs::default()
        };
        let f = filter(&args, "info").expect("parses");
        assert!(f.to_string().contains("parcours_runtime=debug"), "{f}");
        let args = TelemetryArgs {
            log_filter: Some("parcours=loud".into()),
            ..TelemetryArgs::default()
        };
        assert!(filter(&args, "info").is_err());
    }
}
