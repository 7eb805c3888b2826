//! The request path, in pingora's phase order:
//!
//! `request_filter` answers everything the gateway decides itself (its own `/.aalgate/` pages,
//! refusals, redirects to sign in) and returns `Ok(true)`; otherwise it leaves the allowed
//! request in the context. `upstream_peer` picks the app's upstream, `upstream_request_filter`
//! forwards the one normalized path, strips spoofable headers and adds the identity headers,
//! `response_filter` protects the gateway's cookie and adds HSTS, and `logging` records the
//! outcome once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_policy::admit::ceremony_would_admit;
use aalgate_policy::{
    admit, Admission, AdmissionFacts, Ceremony, HostPort, PathError, RequestKind, StepUp, Timestamp,
};
use aalgate_session::{Flow, FlowId, FlowKind, Session as UserSession, SessionId, SessionKey};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;

use crate::headers;
use crate::outcome::Outcome;
use crate::pages;
pub(crate) use crate::state::{
    admission_key, session_kind, subject, Lookup, SessionEnd, ADMISSIONS, MAX_FLOW_BYTES,
    MSG_SIGN_IN_BUSY, MSG_SIGN_IN_BUSY_HERE, TOMBSTONES,
};
pub(crate) use crate::state::{BodyCheck, Lives, Reply, Upgraded};
pub use crate::state::{Ctx, Gateway, FLOW_TTL, TOUCH_INTERVAL, WEBSOCKET_SILENCE};

/// At most this many session cookies are tried (duplicates planted by a sibling domain).
const MAX_COOKIES: usize = 4;
/// Largest request head accepted (request line and headers), as nginx's default buffers allow.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Watches a quiet WebSocket connection: once a second it checks the session's absolute end
/// and its existence; when the session is over it shuts the client socket down, so pingora's
/// proxy loop ends and the connection closes at once, frames or not.
fn watch_upgrade(
    clock: Arc<crate::clock::Clock>,
    lives: Lives,
    handle: SessionKey,
    host: String,
    until: Timestamp,
    fd: i32,
    over: Arc<std::sync::Mutex<bool>>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::cache::SESSION_FRESHNESS).await;
            if over.lock().map(|o| *o).unwrap_or(true) {
                return;
            }
            let now = clock.now();
            let ended = now >= until || !matches!(lives.alive(&handle, &host, now).await, Ok(true));
            if ended {
                let Ok(mut o) = over.lock() else { return };
                if !*o {
                    // SAFETY: `fd` is the client socket of a connection that is not over: the
                    // lock is held, and `logging` sets `over` (under this lock) before pingora
                    // drops the stream, so the descriptor cannot have been closed and reused.
                    unsafe {
                        libc::shutdown(fd, libc::SHUT_RDWR);
                    }
                    *o = true;
                }
                return;
            }
        }
    });
}

/// A request id: unique, not secret, so a thread-local CSPRNG seeded once from the OS serves
/// (no system call per request). Session and flow ids still come from the OS directly.
fn request_id() -> String {
    let mut b = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The request target exactly as received. pingora drops a `#fragment` before the path is
/// stored, so for HTTP/1 it is read back from the raw request line; `#` must be refused, not
/// silently cut.
fn raw_target(session: &Session) -> Vec<u8> {
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
fn raw_has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.iter()
            .position(|&b| b == b':')
            .is_some_and(|i| line[..i].trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// One `Transfer-Encoding: chunked` and no Content-Length, or at most one well-formed
/// Content-Length (digits only) and no Transfer-Encoding.
fn framing_is_unambiguous(req: &RequestHeader) -> bool {
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

fn has_request_body(req: &RequestHeader) -> bool {
    let cl = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    req.headers.contains_key(http::header::TRANSFER_ENCODING) || cl.is_some_and(|v| v != "0")
}

impl Gateway {
    pub(crate) async fn send(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reply: Reply,
    ) -> Result<bool> {
        // What this response reports (a sign-in, a sign-out, a break-glass use) is on record
        // before the browser hears of it.
        self.audit.settle(&ctx.audit).await;
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        // A body the client is still sending would be read as the next request: close instead.
        if has_request_body(req) {
            session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(reply.status, Some(8))?;
        resp.insert_header("content-type", reply.content_type)?;
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-content-type-options", "nosniff")?;
        resp.insert_header("referrer-policy", "no-referrer")?;
        resp.insert_header("x-frame-options", "DENY")?;
        resp.insert_header("content-security-policy", pages::CSP)?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if ctx.tls && self.hsts {
            resp.insert_header("strict-transport-security", "max-age=31536000")?;
        }
        for (n, v) in reply.headers {
            resp.append_header(n, v)?;
        }
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(reply.body)), true)
                .await?;
        }
        Ok(true)
    }

    /// Refuses with the outcome's own status and the standard page (or error JSON).
    pub(crate) async fn error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        outcome: Outcome,
    ) -> Result<bool> {
        let status = outcome.status().unwrap_or(500);
        self.error_with_status(session, ctx, status, outcome).await
    }

    /// [`Gateway::error`] with a status the outcome does not fix (a path too long for
    /// `bad_path`, pingora's own status for `error`).
    pub(crate) async fn error_with_status(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        outcome: Outcome,
    ) -> Result<bool> {
        let (title, text) = pages::error_text(status);
        self.refuse_as(session, ctx, status, outcome, title, text, 5)
            .await
    }

    /// A refusal with its own words: a page for a navigation, the error JSON for a script.
    pub(crate) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        outcome: Outcome,
        title: &str,
        text: &str,
    ) -> Result<bool> {
        self.refuse_for(session, ctx, outcome, title, text, 5).await
    }

    /// [`Gateway::refuse`], where a 503 (or too many flows' 429) says to retry after `retry` seconds.
    pub(crate) async fn refuse_for(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        outcome: Outcome,
        title: &str,
        text: &str,
        retry: u64,
    ) -> Result<bool> {
        let status = outcome.status().unwrap_or(500);
        self.refuse_as(session, ctx, status, outcome, title, text, retry)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn refuse_as(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        outcome: Outcome,
        title: &str,
        text: &str,
        retry: u64,
    ) -> Result<bool> {
        ctx.outcome = outcome;
        let code = outcome.json_code();
        let reply = if headers::is_script_request(&session.req_header().headers) {
            Reply::json(status, pages::error_json(status, code, &ctx.request_id))
        } else {
            Reply::html(
                status,
                pages::page(
                    title,
                    &format!("<p>{}</p>", pages::escape(text)),
                    &ctx.request_id,
                ),
            )
        };
        // Retry-After where a wait is known: a 503, and the 429 of too many flows.
        let reply = if status == 503 || outcome == Outcome::FlowRateLimited {
            reply.header("retry-after", retry.to_string())
        } else {
            reply
        };
        self.send(session, ctx, reply).await
    }

    /// The listener this request arrived on: the one bound to the connection's local address
    /// (or to the unspecified address on its port).
    fn arrival_listener(&self, session: &Session) -> Option<&crate::config::Listener> {
        if let [only] = self.listeners.as_slice() {
            return Some(only);
        }
        let local = session.server_addr().and_then(|a| a.as_inet())?;
        self.listeners
            .iter()
            .find(|l| l.addr == *local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.addr.ip().is_unspecified() && l.addr.port() == local.port())
            })
    }

    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    pub(crate) fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        crate::limits::client_ip(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            &session.req_header().headers,
            &self.signin.trusted_proxies,
        )
    }

    /// The person whose session this browser's cookie named before a re-auth ended it (a
    /// tombstone, kept for [`FLOW_TTL`]), so that a form sent meanwhile is kept for them.
    async fn tombstone(&self, req: &RequestHeader, ctx: &Ctx) -> Option<String> {
        for value in headers::cookie_values(&req.headers, Self::cookie_name(ctx))
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
    fn well_formed(&self, session: &Session) -> std::result::Result<HostPort, Outcome> {
        if let ServerSession::H1(h1) = session.as_downstream() {
            if h1.get_headers_raw_bytes().len() > MAX_HEADER_BYTES {
                return Err(Outcome::HeadersTooLarge);
            }
        }
        let req = session.req_header();

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

        // Exactly one Host header.
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let (Some(host_value), None) = (hosts.next(), hosts.next()) else {
            return Err(Outcome::BadHost);
        };
        let Some(host) = host_value
            .to_str()
            .ok()
            .and_then(|h| HostPort::parse(h).ok())
        else {
            return Err(Outcome::BadHost);
        };
        Ok(host)
    }

    /// Phase 2: normalizes the target once (as the host's app says), and checks the listener
    /// the request arrived on serves that host. Sets `ctx.target` and `ctx.host`; returns
    /// whether an app serves the host.
    fn place(
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

    /// Phase 4: the route's rule, the session the cookie names, and [`admit`]'s answer: the
    /// request goes upstream (`Ok(false)`), or is answered here.
    #[allow(
        clippy::too_many_lines,
        reason = "the admission phase: load, time, admit, answer; its answers are methods of their own"
    )]
    async fn admission(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        host: &HostPort,
    ) -> Result<bool> {
        let policy = ctx.policy.clone();
        let method = session.req_header().method.as_str().to_string();
        let Some(m) = ctx
            .target
            .as_ref()
            .and_then(|t| policy.lookup(host, &method, t))
        else {
            return self.error(session, ctx, Outcome::UnknownHost).await;
        };
        ctx.rule = Some(m.rule_index);
        let access = &m.rule.access;
        match access.require {
            aalgate_policy::Requirement::Deny => {
                return self.error(session, ctx, Outcome::Denied).await
            }
            // Public routes never touch the store, so they keep working when it is down.
            aalgate_policy::Requirement::Public => {
                ctx.outcome = Outcome::Allow;
                return Ok(false);
            }
            _ => {}
        }

        let now = self.clock.now();
        let loaded = match self
            .session_of(session.req_header(), ctx, now, Lookup::Cached)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error: failing closed");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        };
        // A `last_seen` ahead of this clock means the clock was stepped back (or another
        // instance runs ahead): measure limits from the later of the two, never the earlier.
        let now = match &loaded {
            Some((_, _, s)) if s.last_seen > now => {
                self.clock.observe(s.last_seen);
                self.clock.now()
            }
            _ => now,
        };
        let upgrade = session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE);
        let request = if upgrade {
            RequestKind::WebSocket
        } else if headers::is_script_request(&session.req_header().headers) {
            RequestKind::Script
        } else {
            RequestKind::Navigation
        };
        let mut facts = AdmissionFacts {
            session: session_kind(loaded.as_ref().map(|(_, _, s)| s)),
            request,
            ceremony: None,
        };
        let mut admission = admit(access, &facts, now);
        // The flow this request caused admits it once, even if `max_age` passed on the way
        // back (no step-up loop on a short `max_age`): looked for only where it would admit.
        if let Some((_, record, s)) = loaded
            .as_ref()
            .filter(|_| ceremony_would_admit(access, &facts, now))
        {
            let (bind, fresh) = self.binding(session, ctx);
            if !fresh {
                let signed = self
                    .take_admission(session, ctx, record, &bind, &method)
                    .await;
                if let Some(signed) = signed {
                    facts.ceremony = Some(Ceremony {
                        signed: signed.is_some(),
                    });
                    admission = admit(access, &facts, now);
                    if admission == Admission::AllowAdmitted {
                        return self.allow_admitted(ctx, record, s, signed);
                    }
                    tracing::warn!(request_id = %ctx.request_id, "an admission without a signature on a per-request route");
                }
            }
        }
        match admission {
            Admission::Allow => {
                if let Some((handle, key, s)) = loaded {
                    self.keep_alive(session, ctx, access, handle, key, s, now);
                }
                ctx.outcome = Outcome::Allow;
                Ok(false)
            }
            Admission::AllowEmergency => {
                if let Some((handle, _, s)) = loaded {
                    // A WebSocket of an emergency session ends with it: at the code's TTL or
                    // on *Sign out*, asked of this instance's memory (the store may be down).
                    let lives = Lives::Emergency(self.signin.clone());
                    self.watch_if_upgrade(session, ctx, &handle, s.expires_at, lives, now);
                    ctx.session = Some(s);
                }
                ctx.outcome = Outcome::Allow;
                Ok(false)
            }
            // Reached only with a ceremony, above.
            Admission::AllowAdmitted => self.error(session, ctx, Outcome::Denied).await,
            Admission::BreakglassNotAllowed => {
                ctx.session = loaded.map(|(_, _, s)| s);
                self.error(session, ctx, Outcome::BreakglassNotAllowed)
                    .await
            }
            Admission::Deny => self.error(session, ctx, Outcome::Denied).await,
            other => {
                let app = m.app.name.clone();
                let rule = m.rule.id.clone();
                self.challenge_or_reauth(
                    session,
                    ctx,
                    other,
                    loaded,
                    access,
                    (&app, &rule),
                    host,
                    now,
                )
                .await
            }
        }
    }

    /// A session admitted: its idle clock advances (at most every [`TOUCH_INTERVAL`], off the
    /// request path), and a WebSocket upgrade is held to the session's end here.
    #[allow(clippy::too_many_arguments)]
    fn keep_alive(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        access: &aalgate_policy::Access,
        handle: SessionKey,
        key: SessionKey,
        s: UserSession,
        now: Timestamp,
    ) {
        if now.since(s.last_seen) >= TOUCH_INTERVAL {
            // Off the request path: a failed touch only makes the idle limit fire earlier.
            self.sessions.set_last_seen(&handle, now);
            let (store, key) = (self.store.clone(), key.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch(&key, now).await {
                    tracing::debug!(error = %e, "session touch failed");
                }
            });
        }
        // The check happens at the upgrade; afterwards every frame is held to the session's
        // absolute end and (once a second) to its existence.
        let until = aalgate_policy::admit::session_end(access, &subject(&s));
        let lives = Lives::Store(self.store.clone());
        self.watch_if_upgrade(session, ctx, &handle, until, lives, now);
        ctx.session_key = Some(key);
        ctx.session = Some(s);
    }

    /// Not admitted, but the browser can do something about it (sign in, step up, sign in
    /// again): a session that timed out ends first, then the flow starts.
    #[allow(clippy::too_many_arguments)]
    async fn challenge_or_reauth(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        other: Admission,
        loaded: Option<(SessionKey, SessionKey, UserSession)>,
        access: &aalgate_policy::Access,
        (app, rule): (&str, &str),
        host: &HostPort,
        now: Timestamp,
    ) -> Result<bool> {
        let per_request = access.step_up.is_some_and(StepUp::per_request);
        if let (Some(reason), Some((handle, record, s))) = (other.ends_session(), &loaded) {
            if matches!(other, Admission::FromTheFuture { .. }) {
                tracing::warn!(request_id = %ctx.request_id, user = %s.user, "session stamped in the future: clock stepped back or record corrupt; re-authentication required");
            }
            self.end_timed_out(ctx, handle, record, s, reason, app, now)
                .await;
        }
        if let Admission::StepUp { .. } = other {
            self.metrics.step_ups.with_label_values(&[app, rule]).inc();
        }
        let mut user = loaded.as_ref().map(|(_, _, s)| s.user.clone());
        if user.is_none() && matches!(other, Admission::Login { .. }) {
            user = self.tombstone(session.req_header(), ctx).await;
        }
        self.challenge(
            session,
            ctx,
            other,
            &host.to_string(),
            app,
            user,
            per_request,
        )
        .await
    }

    /// Takes the one-time admission this request's own flow left (its ceremony just
    /// completed): `None` when there is none; else the request binding the ceremony signed, if
    /// it signed this very request (without a body, checked now; with one, as the body
    /// streams, held back until it matches).
    async fn take_admission(
        &self,
        session: &Session,
        ctx: &Ctx,
        record: &SessionKey,
        bind: &aalgate_auth::Token,
        method: &str,
    ) -> Option<Option<aalgate_session::RequestBinding>> {
        let url = ctx
            .target
            .as_ref()
            .map(|t| t.path_and_query().into_owned())
            .unwrap_or_default();
        let host = self.canonical_host(&ctx.host);
        let key = admission_key(record, &host, &bind.hash(), method, &url);
        let grant = self.store.kv_take(ADMISSIONS, &key).await.ok()??;
        // A per-request ceremony's grant names the request it signed; a `max_age` grant for
        // the same URL signs nothing, so it does not admit a per-request route.
        let signed: Option<aalgate_session::RequestBinding> = serde_json::from_slice(&grant)
            .ok()
            .and_then(|b| self.opened_binding(&b));
        let has_body = has_request_body(session.req_header());
        Some(signed.filter(|b| {
            b.body == has_body
                && (b.body || aalgate_auth::signing::matches(b, method, &host, &url, None))
        }))
    }

    /// Forwards a request its own flow's ceremony admitted (once).
    fn allow_admitted(
        &self,
        ctx: &mut Ctx,
        record: &SessionKey,
        s: &UserSession,
        signed: Option<aalgate_session::RequestBinding>,
    ) -> Result<bool> {
        if let Some(b) = &signed {
            if b.body {
                // Audited once the body matched.
                let url = ctx
                    .target
                    .as_ref()
                    .map(|t| t.path_and_query().into_owned())
                    .unwrap_or_default();
                ctx.verify_body = Some(BodyCheck {
                    binding: b.clone(),
                    host: self.canonical_host(&ctx.host),
                    url,
                    seen: Vec::new(),
                });
            } else {
                self.audit_admitted(ctx, &s.user, b);
            }
        }
        ctx.signed = signed;
        ctx.session_key = Some(record.clone());
        ctx.session = Some(s.clone());
        ctx.outcome = Outcome::AllowAdmitted;
        Ok(false)
    }

    /// Ends a session that timed out, once, so it is counted and audited once. For every app:
    /// the sign-in page must not find it and hand it back silently, and the tap that follows
    /// renews it for all of them.
    #[allow(clippy::too_many_arguments)]
    async fn end_timed_out(
        &self,
        ctx: &Ctx,
        handle: &SessionKey,
        record: &SessionKey,
        s: &UserSession,
        reason: aalgate_policy::ExpiryReason,
        app: &str,
        now: Timestamp,
    ) {
        let why = match reason {
            aalgate_policy::ExpiryReason::Idle => SessionEnd::Idle,
            aalgate_policy::ExpiryReason::Absolute => SessionEnd::Absolute,
        };
        let removed = self
            .end_session(ctx, handle, false, record, s, why, Some(app), now)
            .await;
        // Who this browser was, for a form it sends before signing in again.
        if removed.is_ok() {
            let _ = self
                .store
                .kv_put(
                    TOMBSTONES,
                    handle.as_str(),
                    s.user.as_bytes(),
                    Some(FLOW_TTL),
                )
                .await;
        }
    }

    /// Ends the session record `record` (reached through cookie `handle`, which is unlinked
    /// too when `unlink`), so that every host's cookie of it stops at once on every instance:
    /// counted in `aalgate_session_ends_total` and audited once, by whichever call removed
    /// it. Returns whether this call removed it; a store error is returned, never hidden.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_session(
        &self,
        ctx: &Ctx,
        handle: &SessionKey,
        unlink: bool,
        record: &SessionKey,
        s: &UserSession,
        why: SessionEnd,
        app: Option<&str>,
        now: Timestamp,
    ) -> Result<bool, aalgate_session::StoreError> {
        self.sessions.remove(handle);
        if unlink {
            let _ = self.store.unlink(handle).await;
        }
        self.sessions.end_record(record);
        let removed = self.store.remove(record).await?;
        let Some(label) = why.label().filter(|_| removed) else {
            return Ok(removed);
        };
        self.metrics.session_ends.with_label_values(&[label]).inc();
        self.metrics
            .session_age
            .observe(now.since(s.auth_time).as_secs_f64());
        let (event, decision, detail) = match why {
            SessionEnd::Idle | SessionEnd::Absolute => ("session_end", Some(label), None),
            SessionEnd::SwitchUser => ("session_end", None, Some(label.to_string())),
            SessionEnd::Logout | SessionEnd::Replaced => ("logout", None, None),
        };
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event,
                request_id: Some(&ctx.request_id),
                user: Some(&s.user),
                app: app.filter(|_| decision.is_some()),
                aal: Some(s.aal.number()),
                credential: s.credential.as_deref(),
                decision,
                detail,
                ..Default::default()
            },
        );
        Ok(true)
    }

    /// 429: this client address started too many sign-ins in the last minute.
    /// Takes one of this client's new-flow tokens (flows, switch-user flows and ceremony
    /// starts all store something for an anonymous client): `Err(retry-after seconds)` when
    /// it has none left.
    pub(crate) fn take_flow_token(&self, session: &Session) -> std::result::Result<(), u64> {
        let r = self
            .signin
            .flow_limiter
            .allow(self.client_ip(session), Instant::now());
        if r.is_err() {
            self.metrics
                .flow_refusals
                .with_label_values(&["rate"])
                .inc();
        }
        r
    }

    /// 429: this client address started too many flows; Retry-After says when it may again.
    pub(crate) async fn too_many_flows(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        retry: u64,
    ) -> Result<bool> {
        let (title, text) = pages::error_text(429);
        self.refuse_for(session, ctx, Outcome::FlowRateLimited, title, text, retry)
            .await
    }

    /// 503: this client's share of `anonymous_state_quota`, or all of it, is used up; a
    /// signed-in person's step-up and re-auth are not affected. Retry-After: when the oldest
    /// charges age out.
    pub(crate) async fn anonymous_quota_full(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        full: crate::state::QuotaFull,
    ) -> Result<bool> {
        let text = match full {
            crate::state::QuotaFull::Client => MSG_SIGN_IN_BUSY_HERE,
            crate::state::QuotaFull::Store => MSG_SIGN_IN_BUSY,
        };
        self.refuse_for(
            session,
            ctx,
            Outcome::SignInBusy,
            "Too many sign-ins right now",
            text,
            crate::state::QuotaFull::retry_after(),
        )
        .await
    }

    /// For a WebSocket upgrade: the connection is held to `until` on every frame, and a watcher
    /// closes it once the session is gone (checked once a second where it `lives`).
    fn watch_if_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        handle: &SessionKey,
        until: Timestamp,
        lives: Lives,
        now: Timestamp,
    ) {
        if !session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE)
        {
            return;
        }
        // A silent client is closed by the downstream read timeout: pingora's 60 s, or the
        // session's end if that comes first.
        let left = Duration::from_secs(until.0.saturating_sub(now.0).max(1));
        session.set_read_timeout(Some(left.min(WEBSOCKET_SILENCE)));
        let over = Arc::new(std::sync::Mutex::new(false));
        if let Some(fd) = session.as_downstream().stream().map(|st| st.id()) {
            watch_upgrade(
                self.clock.clone(),
                lives.clone(),
                handle.clone(),
                ctx.host.clone(),
                until,
                fd,
                over.clone(),
            );
        }
        ctx.upgrade = Some(Upgraded {
            handle: handle.clone(),
            until,
            checked: Instant::now(),
            lives,
            over,
        });
    }

    /// Whether the browser reached this request over https: the socket's TLS, or the
    /// external origin's scheme behind a TLS-terminating load balancer. The one answer for
    /// cookies, HSTS, `X-Forwarded-Proto` and the kept-forms Origin check.
    pub(crate) fn browser_https(&self, session: &Session) -> bool {
        self.signin.scheme == "https"
            || session
                .as_downstream()
                .digest()
                .is_some_and(|d| d.ssl_digest.is_some())
    }

    pub(crate) fn cookie_name(ctx: &Ctx) -> &'static str {
        if ctx.tls {
            headers::COOKIE_TLS
        } else {
            headers::COOKIE_PLAIN
        }
    }

    /// The session the request's cookie names on this host: (cookie handle key, record key,
    /// session). Malformed values are ignored; of several well-formed values (at most
    /// [`MAX_COOKIES`]) the first live one wins. A store error is returned, never hidden.
    pub(crate) async fn session_of(
        &self,
        req: &RequestHeader,
        ctx: &Ctx,
        now: Timestamp,
        how: Lookup,
    ) -> Result<Option<(SessionKey, SessionKey, UserSession)>, aalgate_session::StoreError> {
        for value in headers::cookie_values(&req.headers, Self::cookie_name(ctx))
            .iter()
            .take(MAX_COOKIES)
        {
            let Some(id) = SessionId::from_cookie(value) else {
                continue;
            };
            let key = id.key();
            if how == Lookup::Cached {
                // Break-glass sessions live in this instance only: no store call.
                if let Some(e) = self.signin.emergencies.get(&key, &ctx.host, now) {
                    return Ok(Some((key.clone(), key, e.session())));
                }
                if let Some((record, s)) = self.sessions.get_with_record(&key, &ctx.host, now) {
                    return Ok(Some((key, record, s)));
                }
            }
            if let Some((record, s)) = self.store.resolve(&key, &ctx.host, now).await? {
                if how == Lookup::Cached {
                    self.sessions.put_linked(&key, &record, &ctx.host, &s);
                }
                return Ok(Some((key, record, s)));
            }
        }
        Ok(None)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "each cookie of the browser ends its own way (break-glass, store, absent)"
    )]
    pub(crate) async fn logout(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Cross-site POSTs carry no Lax cookie, but refuse them explicitly too.
        let site = session
            .req_header()
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if site == "cross-site" {
            return self.error(session, ctx, Outcome::CrossSite).await;
        }
        // Same origin plus the page's token; without it (an app's own sign-out button, say),
        // the confirmation page asks once more, with the token in its form.
        if !self.logout_allowed(session, ctx).await {
            return self.logout_page(session, ctx).await;
        }
        let ids: Vec<SessionId> =
            headers::cookie_values(&session.req_header().headers, Self::cookie_name(ctx))
                .iter()
                .take(MAX_COOKIES)
                .filter_map(|v| SessionId::from_cookie(v))
                .collect();
        let now = self.clock.now();
        for id in ids {
            // Break-glass sessions live here, not in the store: they end even while it is down.
            if self.signin.emergencies.remove(&id.key()) {
                self.sessions.remove(&id.key());
                self.metrics
                    .session_ends
                    .with_label_values(&["logout"])
                    .inc();
                self.audit.emit_for(
                    &ctx.audit,
                    &crate::audit::Event {
                        time: crate::audit::now_rfc3339(),
                        event: "breakglass_end",
                        request_id: Some(&ctx.request_id),
                        decision: Some("logout"),
                        ..Default::default()
                    },
                );
                continue;
            }
            // Read first, so the end is attributed to a user in the audit log.
            let existing = match self.store.resolve(&id.key(), &ctx.host, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "logout could not reach the session store");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            };
            let Some((record, existing)) = existing else {
                self.sessions.remove(&id.key());
                let _ = self.store.unlink(&id.key()).await;
                continue;
            };
            let ended = self
                .end_session(
                    ctx,
                    &id.key(),
                    true,
                    &record,
                    &existing,
                    SessionEnd::Logout,
                    None,
                    now,
                )
                .await;
            if let Err(e) = ended {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "logout could not reach the session store");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        }
        let reply = Reply::html(
            200,
            pages::page(
                "Signed out",
                "<p>You are signed out. You can close this window.</p>",
                &ctx.request_id,
            ),
        )
        .header("set-cookie", clear_cookie(Self::cookie_name(ctx), ctx.tls))
        .header("clear-site-data", "\"cookies\"".into());
        ctx.outcome = Outcome::Logout;
        self.send(session, ctx, reply).await
    }

    /// Not allowed: keep where the browser was going under a one-time flow id, then send a
    /// navigation to the sign-in page, or a script call a 401 JSON naming what is needed.
    /// `per_request`: the route signs each request, so the flow is bound to this one.
    #[allow(clippy::too_many_arguments)]
    #[allow(
        clippy::too_many_lines,
        reason = "a flow's creation: URL bound, rate, binding, kept form, quota, then the answer"
    )]
    async fn challenge(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        admission: Admission,
        host: &str,
        app: &str,
        user: Option<String>,
        per_request: bool,
    ) -> Result<bool> {
        let (need, aal, max_age) = match admission {
            // A session a re-auth just ended: the same person continues.
            Admission::Login { aal } if user.is_some() => (FlowKind::Reauth, aal, None),
            Admission::Login { aal } => (FlowKind::Login, aal, None),
            Admission::StepUp { aal, fresh } => {
                (FlowKind::StepUp, aal, fresh.and_then(StepUp::max_age))
            }
            Admission::Reauth { aal, .. } | Admission::FromTheFuture { aal } => {
                (FlowKind::Reauth, aal, None)
            }
            Admission::Allow
            | Admission::AllowAdmitted
            | Admission::AllowEmergency
            | Admission::Deny
            | Admission::BreakglassNotAllowed => {
                return self.error(session, ctx, Outcome::Denied).await
            }
        };
        let url = ctx
            .target
            .as_ref()
            .map(|t| t.path_and_query().into_owned())
            .unwrap_or_else(|| "/".into());
        if url.len() > crate::preserve::MAX_URL {
            self.metrics
                .flow_refusals
                .with_label_values(&["url_too_long"])
                .inc();
            return self.error(session, ctx, Outcome::UrlTooLong).await;
        }
        if let Err(retry) = self.take_flow_token(session) {
            return self.too_many_flows(session, ctx, retry).await;
        }
        // The flow remembers this browser (its binding cookie on this host) and the app's
        // configured host, never a port the client made up.
        let (bind, set_bind) = self.binding(session, ctx);
        let flow = Flow {
            host: self.canonical_host(host),
            browser: Some(bind.hash()),
            kept: None,
            method: session.req_header().method.to_string(),
            url,
            need,
            aal,
            max_age_secs: max_age.map(|d| d.as_secs()),
            app: app.to_string(),
            created: self.clock.now(),
            // Step-up and re-auth are for the same person (one tap, their keys); a login is
            // for whoever signs in.
            user: if need == FlowKind::Login { None } else { user },
            binding: None,
            script: headers::is_script_request(&session.req_header().headers),
        };
        let mut flow = flow;
        if crate::preserve::keeps(session.req_header().method.as_str())
            && !headers::is_script_request(&session.req_header().headers)
        {
            use crate::preserve::{evidence, Evidence, NotKept};
            // The app's origin as browsers see it: the scheme of `public_origin` (a TLS load
            // balancer may sit in front of a plain listener), the host and port they used.
            let own = format!("{}://{}", self.signin.scheme, ctx.host);
            let kept = match (evidence(&session.req_header().headers, &own), &flow.user) {
                (Evidence::Foreign, _) => Err(NotKept::CrossSite),
                (_, None) => Err(NotKept::Anonymous),
                (Evidence::SameOrigin, Some(person)) => {
                    let person = person.clone();
                    match self
                        .keep_request(session, ctx, &flow, &bind, &person, per_request)
                        .await
                    {
                        Ok(k) => k.map(|(token, binding)| {
                            flow.binding = binding;
                            token
                        }),
                        Err(e) => {
                            tracing::warn!(request_id = %ctx.request_id, error = %e, "could not keep the submitted form");
                            return self.error(session, ctx, Outcome::StoreUnavailable).await;
                        }
                    }
                }
            };
            let label = match &kept {
                Ok(_) => "kept",
                Err(n) => n.as_str(),
            };
            self.metrics.kept_forms.with_label_values(&[label]).inc();
            if let Err(n) = kept {
                tracing::info!(request_id = %ctx.request_id, reason = n.as_str(), "submitted form not kept across sign-in");
            }
            flow.kept = Some(match kept {
                Ok(token) => token,
                Err(n) => n.as_str().to_string(),
            });
        }
        // Nothing kept, nothing refused (a GET, a script call): the ceremony signs this request
        // (its body too, read now and checked again on the retry) and admits only it.
        if per_request && flow.kept.is_none() {
            use crate::preserve::{evidence, Evidence};
            let req = session.req_header();
            let own = format!("{}://{}", self.signin.scheme, ctx.host);
            let typed = req
                .headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                == Some("none");
            if !typed && evidence(&req.headers, &own) == Evidence::Foreign {
                // A page on another site cannot make a person sign a request.
                return self
                    .refuse(session, ctx, Outcome::PerRequestForeign, "Start this from the application", &format!("This action in {app} needs your signature, and it did not come from {app} itself. Open {app} and start it there."))
                    .await;
            }
            let body = if has_request_body(req) {
                let Ok(_permit) = self.signin.reads.try_acquire() else {
                    return self.error(session, ctx, Outcome::Busy).await;
                };
                match self.read_body_bounded(session).await {
                    Some(b) => Some(b),
                    None => {
                        return self
                            .refuse(session, ctx, Outcome::TooLargeToSign, "Too large to sign", "This request is larger than the gateway signs (preserve_body_limit). Ask IT to raise the limit for this application.")
                            .await
                    }
                }
            } else {
                None
            };
            flow.binding = Some(self.sealed_binding(aalgate_auth::signing::bind(
                &flow.method,
                &flow.host,
                &flow.url,
                body.as_deref(),
            )));
        }
        // Nobody known yet: the flow draws on the store-wide anonymous quota.
        if flow.user.is_none() {
            let size = serde_json::to_vec(&flow).map_or(MAX_FLOW_BYTES, |v| v.len());
            match self.charge_anonymous(size, self.client_ip(session)).await {
                Ok(Ok(())) => {}
                Ok(Err(full)) => return self.anonymous_quota_full(session, ctx, full).await,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error while starting sign-in");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            }
        }
        let id = FlowId::generate();
        if let Err(e) = self.store.put_flow(&id.key(), &flow, FLOW_TTL).await {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error while starting sign-in");
            return self.error(session, ctx, Outcome::StoreUnavailable).await;
        }
        ctx.outcome = Outcome::flow(need);
        self.metrics.flows.with_label_values(&[need.as_str()]).inc();
        self.metrics
            .challenges
            .with_label_values(&[need.challenge(), "issued"])
            .inc();
        // Ceremonies run on the auth origin; on the same host the link stays relative.
        let login_url = if self.on_auth_origin(ctx) {
            format!("/.aalgate/auth?flow={}", id.encode())
        } else {
            format!(
                "{}://{}/.aalgate/auth?flow={}",
                self.signin.scheme,
                self.public_host,
                id.encode()
            )
        };
        let reply = if headers::is_script_request(&session.req_header().headers) {
            let body = serde_json::json!({
                "error": "authentication_required",
                "need": need,
                "aal": aal.as_str(),
                "max_age_seconds": max_age.map(|d| d.as_secs()),
                "login_url": login_url,
                "request_id": ctx.request_id,
            });
            Reply::json(401, body.to_string())
        } else {
            Reply::html(
                302,
                pages::page(
                    "Sign in required",
                    "<p>Redirecting to sign in.</p>",
                    &ctx.request_id,
                ),
            )
            .header("location", login_url)
        };
        let reply = if set_bind {
            reply.header("set-cookie", crate::state::bind_cookie(&bind, ctx.tls))
        } else {
            reply
        };
        self.send(session, ctx, reply).await
    }
}

fn clear_cookie(name: &str, tls: bool) -> String {
    let mut c = cookie::Cookie::build((name, ""))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::ZERO);
    if tls {
        c = c.secure(true);
    }
    c.build().to_string()
}

/// An outcome with the status its table gives it.
fn own_status(o: Outcome) -> (u16, Outcome) {
    (o.status().unwrap_or(500), o)
}

fn path_error_status(e: &PathError) -> u16 {
    match e {
        PathError::TooLong => 414,
        _ => 400,
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: request_id(),
            tls: false,
            target: None,
            rule: None,
            session: None,
            outcome: Outcome::Unset,
            host: String::new(),
            policy: self.policies.snapshot(),
            forwarded_at: None,
            session_key: None,
            upgrade: None,
            signed: None,
            verify_body: None,
            audit: Default::default(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.tls = self.browser_https(session);
        // 1. A head the gateway and every upstream read alike, with one Host.
        let host = match self.well_formed(session) {
            Ok(h) => h,
            Err(why) => return self.error(session, ctx, why).await,
        };
        // 2. One normalized target, on a listener that serves this host.
        let has_app = match self.place(session, ctx, &host) {
            Ok(a) => a,
            Err((status, why)) => return self.error_with_status(session, ctx, status, why).await,
        };
        // 3. The gateway's own endpoints, never forwarded.
        let path = ctx
            .target
            .as_ref()
            .map(|t| t.path().to_string())
            .unwrap_or_default();
        if (path == "/.aalgate" || path.starts_with("/.aalgate/"))
            && (self.is_auth_host(&host) || has_app)
        {
            return crate::endpoints::dispatch(self, session, ctx, &path).await;
        }
        // 4. The rule, the session and [`admit`].
        self.admission(session, ctx, &host).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(check) = ctx.verify_body.as_mut() {
            if let Some(chunk) = _body.take() {
                if check.seen.len() + chunk.len() > self.signin.body_limit {
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(413),
                        "signed request body over the limit",
                    ));
                }
                check.seen.extend_from_slice(&chunk);
            }
            if !_end_of_stream {
                // Held back: an empty chunk is not written upstream.
                *_body = Some(Bytes::new());
                return Ok(());
            }
            let method = _session.req_header().method.as_str().to_string();
            let ok = aalgate_auth::signing::matches(
                &check.binding,
                &method,
                &check.host,
                &check.url,
                Some(&check.seen),
            );
            if !ok {
                tracing::warn!(request_id = %ctx.request_id, "a signed request's body differs from the one the key signed: aborted");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(403),
                    "the body is not the one that was signed",
                ));
            }
            *_body = Some(Bytes::from(std::mem::take(&mut check.seen)));
            if let (Some(check), Some(s)) = (ctx.verify_body.take(), &ctx.session) {
                self.audit_admitted(ctx, &s.user, &check.binding);
            }
            return Ok(());
        }
        let Some(up) = ctx.upgrade.as_mut() else {
            return Ok(());
        };
        let now = self.clock.now();
        if now >= up.until {
            return Err(Error::explain(
                ErrorType::Custom("session_ended"),
                "WebSocket closed: the session reached its absolute limit",
            ));
        }
        if up.checked.elapsed() >= crate::cache::SESSION_FRESHNESS {
            up.checked = Instant::now();
            // Logout, revocation or a store that cannot confirm: the connection ends.
            match up.lives.alive(&up.handle, &ctx.host, now).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::explain(
                        ErrorType::Custom("session_ended"),
                        "WebSocket closed: the session ended",
                    ));
                }
                Err(e) => {
                    return Err(Error::because(
                        ErrorType::Custom("session_ended"),
                        "WebSocket closed: the session store did not answer",
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx
            .upgrade
            .as_ref()
            .is_some_and(|u| self.clock.now() >= u.until)
        {
            return Err(Error::explain(
                ErrorType::Custom("session_ended"),
                "WebSocket closed: the session reached its absolute limit",
            ));
        }
        Ok(None)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // A retried request replays its body from the start through the check.
        if let Some(c) = ctx.verify_body.as_mut() {
            c.seen.clear();
        }
        let Some(rule) = ctx.rule.and_then(|i| ctx.policy.rules().get(i)) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no rule in context",
            ));
        };
        let up = &ctx.policy.app_of(rule).upstream;
        let mut peer = HttpPeer::new(up.address(), up.tls, up.host.clone());
        let (connect, silence) = self.upstream_timeouts;
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        // A WebSocket may be quiet for long; its life is bounded by the session instead.
        if !session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE)
        {
            peer.options.read_timeout = Some(silence);
            peer.options.write_timeout = Some(silence);
        }
        Ok(Box::new(peer))
    }

    /// Upstream failures get the gateway's own page: 504 when the upstream did not answer in
    /// time, 502 otherwise. pingora retries only idempotent requests on a reused connection
    /// (`error_while_proxy`), so a POST that reached the upstream is never sent twice.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use pingora::ErrorSource;
        let (code, outcome) = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(c)) => (*c, Outcome::Error),
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => (504, Outcome::UpstreamTimeout),
            (ErrorSource::Upstream, _) => (502, Outcome::UpstreamError),
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => (0, Outcome::ClientGone),
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => (408, Outcome::ClientTimeout),
            (ErrorSource::Downstream, _) => (400, Outcome::BadRequest),
            _ => (500, Outcome::InternalError),
        };
        tracing::warn!(request_id = %ctx.request_id, status = code, error = %e, "proxying failed");
        if code > 0 && session.response_written().is_none() {
            let _ = self.error_with_status(session, ctx, code, outcome).await;
        }
        ctx.outcome = outcome;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(target) = &ctx.target else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no target in context",
            ));
        };
        upstream.set_raw_path(target.path_and_query().as_bytes())?;
        // The upstream sees the host that matching used, not another spelling of it.
        upstream.insert_header(http::header::HOST, ctx.host.as_str())?;

        // pingora has already removed hop-by-hop headers and those named in Connection (and
        // refuses a Connection that names Host or X-Forwarded-*); what is left of Connection
        // is its WebSocket upgrade, which must stay.
        let reserved: Vec<String> = upstream
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| headers::is_reserved(k))
            .collect();
        for name in reserved {
            upstream.remove_header(&name);
        }
        if let Some(cookies) = headers::cookies_without_ours(&upstream.headers) {
            upstream.remove_header("cookie");
            if let Some(c) = cookies {
                upstream.insert_header("cookie", c)?;
            }
        }

        if let Some(ip) = self.client_ip(session) {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;

        if let (Some(s), Some(rule)) = (
            &ctx.session,
            ctx.rule.and_then(|i| ctx.policy.rules().get(i)),
        ) {
            let app = &ctx.policy.app_of(rule).name;
            let now = self.clock.now();
            let sign = || self.signer.sign(s, app, now);
            let token = match (&ctx.signed, &ctx.session_key) {
                // A signed request's assertion names its digest: one of its own, never cached.
                (Some(b), _) => self
                    .signer
                    .sign_request(s, app, now, Some(b.digest.as_str())),
                (None, Some(k)) => self.assertions.get_or_sign(k, app, now, sign),
                (None, None) => sign(),
            }
            .map_err(|e| Error::because(ErrorType::InternalError, "cannot sign assertion", e))?;
            upstream.insert_header(headers::USER, s.user.as_str())?;
            upstream.insert_header(headers::AAL, s.aal.number().to_string())?;
            upstream.insert_header(headers::AUTH_TIME, s.auth_time.0.to_string())?;
            upstream.insert_header(headers::ASSERTION, token)?;
            if crate::breakglass::is_emergency(s) {
                upstream.insert_header(
                    headers::BREAKGLASS,
                    s.credential.clone().unwrap_or_default(),
                )?;
            }
            if let Some(b) = &ctx.signed {
                upstream.insert_header(headers::REQUEST_NONCE, b.nonce.as_str())?;
                upstream.insert_header(headers::REQUEST_DIGEST, b.digest.as_str())?;
            }
        }
        ctx.forwarded_at = Some(Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let app_of_rule = ctx
            .rule
            .and_then(|i| ctx.policy.rules().get(i))
            .map(|r| ctx.policy.app_of(r));
        let app = app_of_rule.map_or("-", |a| a.name.as_str());
        if let Some(t) = ctx.forwarded_at {
            self.metrics
                .upstream_seconds
                .with_label_values(&[app])
                .observe(t.elapsed().as_secs_f64());
        }
        let class = match resp.status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .upstream_responses
            .with_label_values(&[app, class])
            .inc();
        // The gateway's cookie names are reserved: an upstream cannot set or clear them. The
        // app's own stay on its host unless it keeps their Domain (`keep_cookie_domain`).
        let keep_domain = app_of_rule.is_some_and(|a| a.keep_cookie_domain);
        let set_cookies: Vec<http::HeaderValue> = resp
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let ours = |v: &http::HeaderValue| headers::set_cookie_is_ours(v.as_bytes());
        let scoped = |v: &http::HeaderValue| {
            (!keep_domain)
                .then(|| headers::set_cookie_without_domain(v.as_bytes()))
                .flatten()
        };
        if set_cookies.iter().any(|v| ours(v) || scoped(v).is_some()) {
            resp.remove_header("set-cookie");
            for v in set_cookies.into_iter().filter(|v| !ours(v)) {
                match scoped(&v) {
                    // Bytes that came in a header value are a header value without a part.
                    Some(host_only) => {
                        if let Ok(h) = http::HeaderValue::from_bytes(&host_only) {
                            resp.append_header("set-cookie", h)?;
                        }
                    }
                    None => {
                        resp.append_header("set-cookie", v)?;
                    }
                }
            }
        }
        if ctx.tls
            && self.hsts
            && !resp
                .headers
                .contains_key(http::header::STRICT_TRANSPORT_SECURITY)
        {
            resp.insert_header("strict-transport-security", "max-age=31536000")?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // Events of a request that went upstream (`request_admitted`) or ended without a page.
        self.audit.settle(&ctx.audit).await;
        if let Some(up) = &ctx.upgrade {
            if let Ok(mut o) = up.over.lock() {
                *o = true;
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let rule = ctx.rule.and_then(|i| ctx.policy.rules().get(i));
        let route = rule.map(|r| r.id.as_str()).unwrap_or("-");
        let app = rule
            .map(|r| ctx.policy.app_of(r).name.as_str())
            .unwrap_or("-");
        self.metrics
            .requests
            .with_label_values(&[app, route, ctx.outcome.label()])
            .inc();
        let (outcome, added) = match ctx.forwarded_at {
            Some(t) => ("forwarded", t.duration_since(ctx.start)),
            None => ("answered", ctx.start.elapsed()),
        };
        self.metrics
            .gateway_seconds
            .with_label_values(&[outcome])
            .observe(added.as_secs_f64());
        if self.audit.logs_requests() {
            let req = session.req_header();
            self.audit.emit(&crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "request",
                request_id: Some(&ctx.request_id),
                user: ctx.session.as_ref().map(|s| s.user.as_str()),
                app: rule.map(|_| app),
                route: rule.map(|_| route),
                method: Some(req.method.as_str()),
                path: ctx
                    .target
                    .as_ref()
                    .map(|t| self.audit.redact_path(t.path())),
                decision: Some(ctx.outcome.label()),
                status: Some(status),
                aal: ctx.session.as_ref().map(|s| s.aal.number()),
                credential: ctx.session.as_ref().and_then(|s| s.credential.as_deref()),
                client_ip: self.client_ip(session).map(|a| a.to_string()),
                user_agent: crate::audit::user_agent(req.headers.get(http::header::USER_AGENT)),
                ..Default::default()
            });
        }
        tracing::debug!(
            request_id = %ctx.request_id,
            status,
            outcome = ctx.outcome.label(),
            route,
            micros = ctx.start.elapsed().as_micros() as u64,
            error = e.map(|e| e.to_string()).unwrap_or_default(),
            "request"
        );
    }
}
