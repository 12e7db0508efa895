//! An OTLP/HTTP trace receiver on a free loopback port, as a collector would be: it decodes
//! every export (`ExportTraceServiceRequest`, protobuf) and keeps its spans.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// A span as the receiver got it, ids in hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    pub name: String,
}

/// Everything received so far.
#[derive(Debug, Default)]
pub struct Exports {
    pub spans: Vec<ReceivedSpan>,
    /// Export requests, and their bytes.
    pub requests: u64,
    pub bytes: usize,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a receiver; returns its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it got.
pub async fn receiver() -> (String, Arc<Mutex<Exports>>) {
    let exports: Arc<Mutex<Exports>> = Arc::default();
    let kept = Arc::clone(&exports);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| async move {
            let bytes = body.len();
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
            let mut kept = kept.lock().expect("receiver lock");
            kept.requests += 1;
            kept.bytes += bytes;
            for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                kept.spans.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name.clone(),
                });
            }
            // An empty ExportTraceServiceResponse.
            Vec::<u8>::new()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the receiver serves") });
    (endpoint, exports)
}
