//! W3C trace context across every hop of a saga: the spans of the process are joined to
//! the `traceparent` a message or request arrived with, and what they send carries theirs.
//! Only while spans are exported (see [`enable`]); otherwise nothing here costs anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::HEADER_TRACEPARENT;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks spans as exported: set once at start-up, with the OpenTelemetry layer installed.
pub fn enable() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` a child of `traceparent`, when it is a valid one.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| enabled()) else { return };
    let carrier = HashMap::from([(HEADER_TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only for a span that is not recorded; it then has no trace to join.
        if let Err(err) = span.set_parent(parent) {
            tracing::debug!(error = %err, "span not joined to its traceparent");
        }
    }
}

/// The `traceparent` of `span`, to send with what it causes.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(HEADER_TRACEPARENT)
}

/// The `traceparent` of the current span.
pub fn current() -> Option<String> {
    traceparent(&Span::current())
}

/// A producer span for publishing a message with `headers`: a child of the message's
/// `traceparent`, which it then replaces, so the consumer's span is a child of the publish.
pub fn publish_span(topic: &str, headers: &mut BTreeMap<String, String>) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!("publish", otel.name = %format!("publish {topic}"), otel.kind = "producer",
        messaging.system = "kafka", messaging.destination.name = %topic);
    set_parent(&span, headers.get(HEADER_TRACEPARENT).map(String::as_str));
    if let Some(traceparent) = traceparent(&span) {
        headers.insert(HEADER_TRACEPARENT.to_owned(), traceparent);
    }
    Some(span)
}
