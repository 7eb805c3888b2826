//! A request's first phases: is it well formed (one framing, a head within bounds, a known
//! host), and where does it go (the gateway's own endpoint, a refusal, or a rule).

use aalgate_policy::{HostPort, PathError};
use aalgate_session::SessionId;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

use super::Gateway;
use crate::headers;
use crate::outcome::Outcome;
use crate::state::{Ctx, State};
use crate::state::{MAX_COOKIES, TOMBSTONES};

/// Largest request head accepted (request line and headers), as nginx's default buffers allow.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Most header fields in a request: what pingora's HTTP/1 parser reads (more is a 400).
pub const MAX_HEADER_COUNT: usize = 256;

/// The request target exactly as received. pingora drops a `#fragment` before the path is
/// stored, so for HTTP/1 it is read back from the raw request line; `#` must be refused, not
/// silently cut.
pub(crate) fn raw_target(session: &Session) -> Vec<u8> {
    if let ServerSession::H1(h1) = session.as_downstream() {
        let raw = h1.get_headers_raw_bytes();
        if raw.len() > MAX_HEADER_BYTES {
            return Vec::new();
        }
        // The parser skips empty lines before the request line; so must we.
        let start = raw
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(raw.len());
        let raw = &raw[start..];
        let line_end = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
        let line = raw[..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&raw[..line_end]);
        // Exactly `method SP target SP version`: a space inside the target would be read one
        // way here and another way by a lenient parser downstream.
        let mut parts = line.split(|&b| b == b' ');
        return match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v), None)
                if !m.is_empty() && !t.is_empty() && !v.is_empty() =>
            {
                t.to_vec()
            }
            _ => Vec::new(),
        };
    }
    session.req_header().raw_path().to_vec()
}

/// Whether the raw request head has a header line named `name` (lowercase).
pub(crate) fn raw_has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.iter()
            .position(|&b| b == b':')
            .is_some_and(|i| line[..i].trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// One `Transfer-Encoding: chunked` and no Content-Length, or at most one well-formed
/// Content-Length (digits only) and no Transfer-Encoding.
pub(crate) fn framing_is_unambiguous(req: &RequestHeader) -> bool {
    let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let mut cl = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (te.next(), te.next(), cl.next(), cl.next()) {
        (None, _, None, _) => true,
        (None, _, Some(v), None) => {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit)
        }
        // Transfer-Encoding is HTTP/1.1; on 1.0 the framing is faulty (RFC 9112 section 6.1).
        (Some(v), None, None, _) => {
            req.version != http::Version::HTTP_10 && v.as_bytes().eq_ignore_ascii_case(b"chunked")
        }
        _ => false,
    }
}

impl Gateway {
    /// The person whose session this browser's cookie named before a re-auth ended it (a
    /// tombstone, kept for [`FLOW_TTL`]), so that a form sent meanwhile is kept for them.
    pub(crate) async fn tombstone(&self, req: &RequestHeader, ctx: &Ctx) -> Option<String> {
        for value in headers::cookie_values(&req.headers, State::cookie_name(ctx))
            .iter()
            .take(MAX_COOKIES)
        {
            let Some(id) = SessionId::from_cookie(value) else {
                continue;
            };
            if let Ok(Some(u)) = self.store.kv_get(TOMBSTONES, id.key().as_str()).await {
                return String::from_utf8(u).ok();
            }
        }
        None
    }

    /// Phase 1 of a request: refuses a head that the gateway and an upstream could read
    /// differently (framing, method case, tunnels, oversized headers) and returns its one Host.
    pub(crate) fn well_formed(&self, session: &Session) -> std::result::Result<HostPort, Outcome> {
        let req = session.req_header();
        match session.as_downstream() {
            ServerSession::H1(h1) => {
                if h1.get_headers_raw_bytes().len() > MAX_HEADER_BYTES {
                    return Err(Outcome::HeadersTooLarge);
                }
            }
            // HTTP/2 bounds the size of a head (64 KiB, pingora's setting), not the number of
            // fields: as many as HTTP/1 parses, so an app never gets more than over HTTP/1.
            _ => {
                if req.headers.len() > MAX_HEADER_COUNT {
                    return Err(Outcome::HeadersTooLarge);
                }
            }
        }

        // Method names are case-sensitive; a lowercase one could be matched as one method and
        // run as another upstream.
        if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Outcome::BadMethod);
        }
        // Only WebSocket may upgrade; `h2c` and others would open a tunnel past the gateway.
        if let Some(up) = req.headers.get(http::header::UPGRADE) {
            if !up.as_bytes().eq_ignore_ascii_case(b"websocket") {
                return Err(Outcome::BadUpgrade);
            }
        }

        // Message framing the upstream cannot read differently: chunked alone, or one
        // Content-Length. Both at once, or any other transfer coding, is a smuggling attempt.
        // pingora drops Content-Length when Transfer-Encoding is present, so look at the raw
        // header for the pair.
        let te_and_cl = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && match session.as_downstream() {
                ServerSession::H1(h1) => {
                    raw_has_header(&h1.get_headers_raw_bytes(), b"content-length")
                }
                _ => false,
            };
        if te_and_cl || !framing_is_unambiguous(req) {
            return Err(Outcome::BadFraming);
        }

        request_host(session)
    }

    /// Phase 2: normalizes the target once (as the host's app says), and checks the listener
    /// the request arrived on serves that host. Sets `ctx.target` and `ctx.host`; returns
    /// whether an app serves the host.
    pub(crate) fn place(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        host: &HostPort,
    ) -> std::result::Result<bool, (u16, Outcome)> {
        // The app serving this host, looked up once: it says how the path is normalized and
        // where it is served.
        let app = ctx.policy.app_for_host(host);
        // Normalize once; anything ambiguous is refused (double encoding unless the host's app
        // allows it).
        let double = app.map_or(aalgate_policy::DoubleEncoding::Refuse, |a| {
            a.double_encoding
        });
        let target = match aalgate_policy::normalize_target_with(&raw_target(session), double) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(request_id = %ctx.request_id, error = %e, "refused request target");
                return Err((path_error_status(&e), Outcome::BadPath));
            }
        };
        if let Some(authority) = target.authority() {
            if HostPort::parse(authority).ok().as_ref() != Some(host) {
                return Err(own_status(Outcome::ForeignAuthority));
            }
        }
        ctx.target = Some(target);
        ctx.host = host.to_string();

        // The Host port must be the one browsers use for the listener the request arrived on,
        // and an app bound to listeners is served only on those: anything else is another
        // listener's (or nobody's) traffic, answered 421 Misdirected Request.
        let Some(listener) = self.arrival_listener(session) else {
            return Err(own_status(Outcome::UnknownListener));
        };
        if listener.host_port(host) != listener.external_port {
            return Err(own_status(Outcome::ForeignPort));
        }
        if app.is_some_and(|a| !a.served_on(&listener.name)) {
            return Err(own_status(Outcome::ForeignListener));
        }
        Ok(app.is_some())
    }
}

/// The one host a request names. HTTP/1: exactly one Host header (an absolute-form target's
/// authority is checked against it later). HTTP/2: the `:authority`, which every Host header
/// sent beside it must name too; without one, exactly one Host header. So each admission check
/// sees the same host whichever version carried the request.
pub(crate) fn request_host(session: &Session) -> std::result::Result<HostPort, Outcome> {
    let req = session.req_header();
    let parse = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|h| HostPort::parse(h).ok())
            .ok_or(Outcome::BadHost)
    };
    let authority = match session.as_downstream() {
        ServerSession::H1(_) => None,
        _ => req.uri.authority(),
    };
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match authority {
        Some(a) => {
            let host = parse(a.as_str().as_bytes())?;
            if hosts.any(|h| h.as_bytes() != a.as_str().as_bytes()) {
                return Err(Outcome::BadHost);
            }
            Ok(host)
        }
        None => match (hosts.next(), hosts.next()) {
            (Some(h), None) => parse(h.as_bytes()),
            _ => Err(Outcome::BadHost),
        },
    }
}

/// An outcome with the status its table gives it.
pub(crate) fn own_status(o: Outcome) -> (u16, Outcome) {
    (o.status().unwrap_or(500), o)
}

pub(crate) fn path_error_status(e: &PathError) -> u16 {
    match e {
        PathError::TooLong => 414,
        _ => 400,
    }
}
