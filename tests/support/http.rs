//! Running the real HTTP API on a loopback port, on either backend.

use std::sync::Arc;

use api::server::{self, Engine, EngineOptions, Roles};
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use engine::transport::Transport;
use event_store::sqlite::SqliteEventStore;
use event_store::EventStore;
use reqwest::{Client, Method, Response};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{init_tracing, kafka_transport, pg_store, unique_prefix};

/// A running server and a client for it.
pub struct TestServer {
    pub base: String,
    pub client: Client,
    pub store: Arc<dyn EventStore>,
    pub transport: Arc<dyn Transport>,
    pub topics: Topics,
    pub prefix: String,
    engine: Option<Engine>,
    stop: CancellationToken,
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    async fn start(
        store: Arc<dyn EventStore>,
        transport: Arc<dyn Transport>,
        data: Option<tempfile::TempDir>,
        configure: impl FnOnce(&mut EngineOptions),
    ) -> Self {
        init_tracing();
        let prefix = unique_prefix();
        let topics = Topics::new(prefix.clone());
        let mut options = EngineOptions::new(format!("{prefix}."));
        configure(&mut options);
        let engine = server::start(Arc::clone(&store), Arc::clone(&transport), topics.clone(), Roles::ALL, options)
            .await
            .expect("engine starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let app = api::router(engine.state.clone());
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(err) = serve.await {
                tracing::warn!(error = %err, "test server stopped with an error");
            }
        });
        Self { base, client: Client::new(), store, transport, topics, prefix, engine: Some(engine), stop, _data: data }
    }

    /// The embedded default: SQLite in a temporary directory, in-process transport.
    pub async fn embedded() -> Self {
        Self::embedded_with(|_| {}).await
    }

    /// Embedded, with options of the test's choosing.
    pub async fn embedded_with(configure: impl FnOnce(&mut EngineOptions)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.expect("sqlite store"));
        Self::start(store, Arc::new(InProcessTransport::new()), Some(dir), configure).await
    }

    /// PostgreSQL (a fresh test database) and the Kafka-protocol broker.
    pub async fn postgres_kafka(pool: PgPool) -> Self {
        Self::start(pg_store(pool).await, kafka_transport(), None, |_| {}).await
    }

    /// Sends a request with an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.send_as(method, path, None, body).await
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn send_as(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// Sends a request and returns the status and the JSON body (Null when empty).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let response = self.send(method, path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends raw bytes with a content type.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &'static str,
    ) -> (u16, String, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let ct = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let text = response.text().await.expect("body");
        (status, ct, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(engine) = self.engine.take() {
            engine.runtime.shutdown().await;
        }
    }
}
