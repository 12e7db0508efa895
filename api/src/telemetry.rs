//! Logs, and OpenTelemetry traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: one
//! order is one trace, from the HTTP request through every saga decision, publish and
//! participant (see `engine::trace_context`).

use std::time::Duration;

use axum::http::{Request, Response};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The default log filter.
const LOG_FILTER: &str = "info,sqlx=warn,rdkafka=warn";
/// The crates whose spans are exported.
const TRACED: [&str; 5] = ["api", "engine", "sagas", "event_store", "tower_http"];

/// The installed exporter; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the log output (`RUST_LOG`, default [`LOG_FILTER`]) and, when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the span exporter (OTLP over HTTP/protobuf;
    /// the standard `OTEL_*` variables configure it). Call it before any async runtime starts.
    pub fn init() -> Self {
        let logs = tracing_subscriber::fmt::layer()
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| LOG_FILTER.into()));
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
        let (provider, failure) = match endpoint.map(|_| exporter()) {
            Some(Ok(provider)) => (Some(provider), None),
            Some(Err(err)) => (None, Some(err)),
            None => (None, None),
        };
        let spans = provider.as_ref().map(|provider| {
            let targets = TRACED.iter().fold(Targets::new(), |t, target| t.with_target(*target, LevelFilter::INFO));
            tracing_opentelemetry::layer().with_tracer(provider.tracer("sagaflow")).with_filter(targets)
        });
        tracing_subscriber::registry().with(logs).with(spans).init();
        match (&provider, failure) {
            (Some(_), _) => {
                engine::trace_context::enable();
                tracing::info!("exporting traces over OTLP");
            }
            (None, Some(err)) => tracing::error!(error = %err, "cannot export traces over OTLP; running without"),
            (None, None) => {}
        }
        Self { provider }
    }

    /// Exports the spans still buffered, and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown() {
                eprintln!("cannot flush the last spans: {err}");
            }
        }
    }
}

fn exporter() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("sagaflow");
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// The span of one HTTP request: a child of the request's `traceparent`, or a new trace.
pub fn http_span<B>(request: &Request<B>) -> Span {
    // Named by method alone: the route is matched inside, and a path holds ids.
    let span = tracing::info_span!("request", otel.name = %request.method(), otel.kind = "server",
        http.request.method = %request.method(), url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty);
    let parent = request.headers().get(engine::envelope::HEADER_TRACEPARENT).and_then(|v| v.to_str().ok());
    engine::trace_context::set_parent(&span, parent);
    span
}

/// Records the status of the response on the request's span.
pub fn record_status<B>(response: &Response<B>, _latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
}
