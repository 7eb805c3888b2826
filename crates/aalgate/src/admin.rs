//! The admin listener: `/healthz` (the process runs), `/readyz` (the session store answers)
//! and `/metrics` (Prometheus). Bind it to loopback or a management network, never the public one.

use std::sync::Arc;

use aalgate_session::SessionStore;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// The admin app.
pub struct Admin {
    /// The (deadline-wrapped) store to probe.
    pub store: Arc<dyn SessionStore>,
    /// The metrics to expose.
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn text(status: u16, body: &str) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .header("content-length", body.len())
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => text(200, "ok\n"),
            "/metrics" => {
                let body = self.metrics.render();
                http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("content-length", body.len())
                    .body(body.into_bytes())
                    .unwrap_or_default()
            }
            "/readyz" => match self.store.ping().await {
                Ok(()) => text(200, "ready\n"),
                Err(e) => text(503, &format!("not ready: {e}\n")),
            },
            _ => text(404, "not found\n"),
        }
    }
}
