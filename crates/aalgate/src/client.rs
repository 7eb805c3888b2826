//! The gateway's own outgoing HTTP calls (an identity provider's discovery, keys and token
//! endpoint; the break-glass webhook), on pingora's connector: TLS with rustls and the
//! platform's roots, a deadline on the whole call, and a bound on the body read.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// An answer.
#[derive(Debug)]
pub struct Fetched {
    /// The status code.
    pub status: u16,
    /// The body, at most the limit given.
    pub body: Vec<u8>,
}

/// One connector for the process: it loads the platform's roots once and pools connections.
fn connector() -> Result<&'static pingora::connectors::http::Connector> {
    static C: OnceLock<std::result::Result<pingora::connectors::http::Connector, String>> =
        OnceLock::new();
    C.get_or_init(|| {
        // Its constructor panics when the platform's roots cannot be read.
        std::panic::catch_unwind(|| pingora::connectors::http::Connector::new(None))
            .map_err(|_| "the TLS roots of this machine could not be loaded".to_string())
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Sends `method url` with `headers` and `body`, and reads the answer (at most `limit` body
/// bytes; with 0, only its status), all within `deadline`.
pub async fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    limit: usize,
    deadline: Duration,
) -> Result<Fetched> {
    let url = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        s => bail!("{url}: scheme {s} is not http or https"),
    };
    let host = match url.host().context("the URL has no host")? {
        url::Host::Domain(d) => d.to_string(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let call = async {
        // Resolved here: `HttpPeer::new` would resolve by blocking.
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let peer = HttpPeer::new(addr, tls, host.clone());
        let (mut http, _) = connector()?
            .get_http_session(&peer)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {host}:{port}: {e}"))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut req = RequestHeader::build(method, path.as_bytes(), None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bare = match url.host() {
            Some(url::Host::Ipv6(_)) => format!("[{host}]"),
            _ => host.clone(),
        };
        let authority = match url.port() {
            Some(p) => format!("{bare}:{p}"),
            None => bare,
        };
        let mut all = vec![
            ("host".to_string(), authority),
            ("user-agent".to_string(), "aalgate".to_string()),
        ];
        if let Some(b) = &body {
            all.push(("content-length".to_string(), b.len().to_string()));
        }
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.clone())));
        for (n, v) in all {
            req.insert_header(n, v)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let io = async {
            http.write_request_header(Box::new(req)).await?;
            if let Some(b) = body {
                http.write_request_body(bytes::Bytes::from(b), true).await?;
            }
            http.finish_request_body().await?;
            http.read_response_header().await?;
            let status = http.response_header().map_or(0, |r| r.status.as_u16());
            let mut out = Vec::new();
            if limit == 0 {
                return Ok((status, Some(out)));
            }
            while let Some(chunk) = http.read_response_body().await? {
                if out.len() + chunk.len() > limit {
                    return Ok((status, None));
                }
                out.extend_from_slice(&chunk);
            }
            Ok::<_, Box<pingora::Error>>((status, Some(out)))
        };
        let (status, body) = io.await.map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
        let body = body.with_context(|| format!("{host}: the answer is over {limit} bytes"))?;
        Ok(Fetched { status, body })
    };
    tokio::time::timeout(deadline, call)
        .await
        .with_context(|| format!("{host} did not answer within {deadline:?}"))?
}
