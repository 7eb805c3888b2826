//! The smallest useful pingora proxy, as the reference for pingora's own cost in
//! `benches/load.sh` and `benches/instructions.sh`: pingora's default settings, one route check
//! (a path prefix, else 403) and one counter, nothing else.
//!
//! Usage: `minimal-proxy LISTEN UPSTREAM [THREADS]`, e.g. `minimal-proxy 127.0.0.1:8081
//! 127.0.0.1:8080 1`.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Minimal {
    upstream: String,
    requests: AtomicU64,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if session.req_header().uri.path().starts_with("/app/")
            || session.req_header().uri.path().starts_with("/static/")
        {
            return Ok(false);
        }
        session.respond_error(403).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: minimal-proxy LISTEN UPSTREAM [THREADS]");
    };
    let threads = args.next().map_or(Ok(1), |t| t.parse())?;
    // pingora's defaults otherwise, but a benchmark's SIGTERM should not drain for minutes.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Minimal {
            upstream,
            requests: AtomicU64::new(0),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
