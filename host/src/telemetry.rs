//! OpenTelemetry traces of runs, exported over OTLP/HTTP when `[telemetry] otlp_endpoint` is
//! set (docs/operations.md, "Traces").
//!
//! Off — the default — nothing here is set up: no exporter, no tracing layer, and [`enabled`]
//! is false, so [`span!`](crate::telemetry::span) hands out `Span::none()` (no allocation, no
//! subscriber call) and the logs look exactly as without this module.
//!
//! On, `cnp serve` adds a `tracing-opentelemetry` layer beside the log layer
//! ([`Telemetry::layer`]). The layers split the spans between them: the run spans (target
//! [`TARGET`]) go to OpenTelemetry only, never into log lines; `cnp` log events at `info` and
//! above that happen inside a run span are also kept as that span's events. Spans are batched
//! (the SDK's batch processor, on its own thread) and POSTed to `<otlp_endpoint>/v1/traces`
//! with the service's own HTTP client on the tokio runtime. [`Telemetry::shutdown`] sends
//! what is left when the service stops.
//!
//! The engine builds the spans of a run (`engine/trace.rs`), the notification service those of
//! its deliveries (as children of the run that asked for them, see [`Parent`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::Layer;

use crate::config::{OtlpProtocol, TelemetryConfig};

/// The target of every span of a run's trace: the OpenTelemetry layer takes these spans, the
/// log layer leaves them out.
pub const TARGET: &str = "cnp::trace";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last export may take when the service stops.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether run spans are made (an OpenTelemetry layer is installed).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns span making on: call once the subscriber with [`Telemetry::layer`] is installed (or,
/// in tests, a subscriber with some OpenTelemetry layer).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A span of a run's trace at `info` under [`TARGET`] — or `Span::none()` when traces are off.
/// Takes what `tracing::info_span!` takes after its target (`parent: …`, the name, fields).
macro_rules! span {
    ($($rest:tt)+) => {
        if $crate::telemetry::enabled() {
            ::tracing::info_span!(target: $crate::telemetry::TARGET, $($rest)+)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use span;

/// The OpenTelemetry context a piece of work that outlives its caller (a notification
/// delivery) is parented to: the span current where it was asked for. Empty when traces are
/// off or no span of a trace was current.
#[derive(Clone, Default)]
pub struct Parent(Option<opentelemetry::Context>);

impl Parent {
    /// The current span's context, if it belongs to a trace.
    pub fn current() -> Parent {
        if !enabled() {
            return Parent(None);
        }
        let cx = tracing::Span::current().context();
        Parent(cx.span().span_context().is_valid().then_some(cx))
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Makes `span` (not yet entered) a child of this context.
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(cx) = &self.0 {
            let _ = span.set_parent(cx.clone());
        }
    }
}

/// The span context of `span`, for a link from a later span (`None` when traces are off).
pub fn span_context(span: &tracing::Span) -> Option<opentelemetry::trace::SpanContext> {
    if !enabled() || span.is_none() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Marks `span` failed with `message` (the OpenTelemetry status `Error`).
pub fn set_error(span: &tracing::Span, message: impl Into<String>) {
    if enabled() && !span.is_none() {
        span.set_status(opentelemetry::trace::Status::error(message.into()));
    }
}

/// The tracer provider behind the OpenTelemetry layer; [`Telemetry::shutdown`] it when the
/// service stops so the last spans are sent.
pub struct Telemetry {
    provider: SdkTracerProvider,
    url: String,
}

impl Telemetry {
    /// Sets up the OTLP exporter for `config`, or `Ok(None)` when `otlp_endpoint` is not set.
    /// `runtime`: where the export requests are sent from (it must outlive [`shutdown`]).
    ///
    /// [`shutdown`]: Telemetry::shutdown
    pub fn start(
        config: &TelemetryConfig,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Telemetry>> {
        let Some(url) = config
            .traces_url()
            .map_err(|m| anyhow::anyhow!("telemetry.otlp_endpoint: {m}"))?
        else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("cnp/", env!("CARGO_PKG_VERSION")))
            .timeout(EXPORT_TIMEOUT)
            .build()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_protocol(match config.protocol {
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
                OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
            })
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(Sender { client, runtime })
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry: cannot set up the OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Telemetry { provider, url }))
    }

    /// Wraps a provider made elsewhere (tests: an in-memory exporter).
    pub fn with_provider(provider: SdkTracerProvider) -> Telemetry {
        Telemetry {
            provider,
            url: String::new(),
        }
    }

    /// Where spans are sent (`<otlp_endpoint>/v1/traces`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The OpenTelemetry layer: it sees the run spans and, inside them, `cnp` events at `info`
    /// and above (kept as span events); nothing else.
    pub fn layer<S>(&self) -> impl Layer<S> + 'static
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("cnp"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(filter_fn(|m| {
                if m.is_span() {
                    m.target() == TARGET
                } else {
                    m.target().starts_with("cnp") && *m.level() <= tracing::Level::INFO
                }
            }))
    }

    /// Sends the spans not sent yet and stops the exporter (waits at most 5 s).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "telemetry: the last spans may not have been sent");
        }
    }
}

/// The log layer's filter leaves the run spans out (they are only for OpenTelemetry), so log
/// lines look the same with traces on or off.
pub fn not_run_span(m: &tracing::Metadata<'_>) -> bool {
    !(m.is_span() && m.target() == TARGET)
}

/// Sends the exporter's requests with reqwest on the service's runtime. (The batch processor
/// exports from a thread of its own, outside the runtime: the request runs as a task on the
/// runtime and the thread waits for its result.)
#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Sender {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let (status, body) = self
            .runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let status = response.status();
                // The collector's answer (an export response, small): what it rejected.
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        Ok(response)
    }
}
