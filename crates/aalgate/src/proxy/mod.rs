//! The request path, in pingora's phase order:
//!
//! `request_filter` answers everything the gateway decides itself (its own `/.aalgate/` pages,
//! refusals, redirects to sign in) and returns `Ok(true)`; otherwise it leaves the allowed
//! request in the context. `upstream_peer` picks the app's upstream, `upstream_request_filter`
//! forwards the one normalized path, strips spoofable headers and adds the identity headers,
//! `response_filter` protects the gateway's cookie and adds HSTS, and `logging` records the
//! outcome once.

mod admission;
mod request;

use crate::http::Exchange;
pub use crate::state::{Ctx, State, FLOW_TTL, TOUCH_INTERVAL, WEBSOCKET_SILENCE};
pub use crate::state::{DecoyRefresh, SignInService, DECOY_REFRESH};
pub use request::MAX_HEADER_BYTES;

/// The pingora service. Its `ProxyHttp` phases, and the admission and request phases in this
/// module, are methods of `Gateway` alone, so no endpoint can call them; everything they read
/// is the shared [`State`] it dereferences to.
pub struct Gateway(State);

impl Gateway {
    pub fn new(state: State) -> Gateway {
        Gateway(state)
    }
}

impl std::ops::Deref for Gateway {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::outcome::Outcome;

/// A request id: unique, not secret, so a thread-local CSPRNG seeded once from the OS serves
/// (no system call per request). Session and flow ids still come from the OS directly.
fn request_id() -> String {
    let mut b = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Gateway {
    /// A request's audit line: who sent it (the admitted session, else the person known
    /// from the one that was not admitted), what it asked (a replay's own method and path),
    /// and what was decided.
    fn audit_request(&self, session: &Session, ctx: &Ctx, rule: Option<(&str, &str)>, status: u16) {
        let req = session.req_header();
        // Who sent it: the admitted session, else the one that was not admitted.
        let (user, aal, credential, prior_user) = match (&ctx.session, &ctx.known) {
            (Some(s), _) => (
                Some(s.user.as_str()),
                Some(s.aal),
                s.credential.as_deref(),
                None,
            ),
            (
                None,
                Some(crate::state::Known::Session {
                    user,
                    aal,
                    credential,
                }),
            ) => (Some(user.as_str()), Some(*aal), credential.as_deref(), None),
            (None, Some(crate::state::Known::Ended { user })) => {
                (None, None, None, Some(user.as_str()))
            }
            (None, None) => (None, None, None, None),
        };
        self.audit.emit(&crate::audit::Event {
            time: crate::audit::now_rfc3339(),
            event: "request",
            request_id: Some(&ctx.request_id),
            user,
            prior_user,
            app: rule.map(|(a, _)| a),
            route: rule.map(|(_, r)| r),
            method: Some(
                ctx.replay
                    .as_ref()
                    .map_or(req.method.as_str(), |r| r.method.as_str()),
            ),
            path: match &ctx.replay {
                Some(r) => Some(self.audit.redact_path(&r.path)),
                None => ctx
                    .target
                    .as_ref()
                    .map(|t| self.audit.redact_path(t.path())),
            },
            replay_of: ctx
                .replay
                .as_ref()
                .map(|r| r.of.as_str())
                .filter(|o| !o.is_empty()),
            decision: Some(ctx.outcome.label()),
            status: Some(status),
            aal: aal.map(|a| a.number()),
            credential,
            client_ip: self.client_ip(session).map(|a| a.to_string()),
            user_agent: crate::audit::user_agent(req.headers.get(http::header::USER_AGENT)),
            detail: breakglass_past_allow(ctx),
            ..Default::default()
        });
    }
}

/// An emergency session forwarded on a route whose `allow` would not have named it: the
/// audit line says that break-glass, not the grant, let it through.
fn breakglass_past_allow(ctx: &Ctx) -> Option<String> {
    let s = ctx.session.as_ref()?;
    let rule = ctx.rule.and_then(|i| ctx.policy.rules().get(i))?;
    (crate::breakglass::is_emergency(s) && !rule.access.allow.is_empty()).then(|| {
        "break-glass: this route's allow (who may use it) does not apply to emergency access"
            .to_string()
    })
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
            known: None,
            outcome: Outcome::Unset,
            host: String::new(),
            policy: self.policies.snapshot(),
            forwarded_at: None,
            session_key: None,
            access: None,
            upgrade: None,
            signed: None,
            verify_body: None,
            audit: Default::default(),
            replay: None,
            body_length: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.tls = self.browser_https(session);
        // Every body read of this request (the gateway's own and the one forwarded) may wait
        // this long for the client; then 408 (`fail_to_proxy`). An upgrade's connection is a
        // WebSocket's: its own silence limit (shortened to the session's end where one is
        // watched). pingora's HTTP/2 has no read timeout: there, the read ahead (step 5) gives
        // bodies this deadline in total, and a body it cannot read whole goes over HTTP/1.1.
        let upgrade = session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE);
        session.set_read_timeout(Some(if upgrade {
            crate::state::WEBSOCKET_SILENCE
        } else {
            self.client_timeout
        }));
        let mut x = Exchange::new(self, session, ctx);
        // 1. A head the gateway and every upstream read alike, with one Host.
        let host = match self.well_formed(x.session) {
            Ok(h) => h,
            Err(why) => return x.error(why).await,
        };
        // 2. One normalized target, on a listener that serves this host.
        let has_app = match self.place(x.session, x.ctx, &host) {
            Ok(a) => a,
            Err((status, why)) => return x.error_with_status(status, why).await,
        };
        // 3. The gateway's own endpoints, never forwarded.
        let path = x
            .ctx
            .target
            .as_ref()
            .map(|t| t.path().to_string())
            .unwrap_or_default();
        if (path == "/.aalgate" || path.starts_with("/.aalgate/"))
            && (self.is_auth_host(&host) || has_app)
        {
            return crate::endpoints::dispatch(self, &mut x, &path).await;
        }
        // An HTTP/2 body too large to read ahead goes over HTTP/1.1 (step 5), sent back before
        // admission so that a one-time admission (a step-up's) is not spent on it.
        if crate::http::h2_too_large(x.session) {
            return Ok(self.http1_required(&mut x));
        }
        // 4. The rule, the session and [`admit`].
        if self.admission(&mut x, &host).await? {
            return Ok(true);
        }
        // 5. Forwarded: a small body is read whole first, so the app never sees a request
        // whose body stalls or breaks off.
        use crate::http::ReadAhead;
        match crate::http::read_ahead(x.session, &self.read_ahead, self.client_timeout).await {
            Ok(ReadAhead::Stream) => Ok(false),
            Ok(ReadAhead::Whole(n)) => {
                x.ctx.body_length = Some(n);
                Ok(false)
            }
            Ok(ReadAhead::Http1Required) => Ok(self.http1_required(&mut x)),
            Err(o) => x.broken_body(o).await,
        }
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
        crate::http::upstream::peer(self, session.req_header(), ctx)
    }

    /// pingora's own "Fail to proxy" line, silenced for what a client caused (logged at
    /// debug in `fail_to_proxy`, which runs first and sets the outcome).
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, error: &Error) -> bool {
        client_caused(ctx.outcome, error)
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
            // An HTTP/2 stream the client itself ended (a cancelled fetch, a closed tab).
            (ErrorSource::Downstream, ErrorType::H2Error) if client_reset(e) => {
                (0, Outcome::ClientGone)
            }
            (ErrorSource::Downstream, _) => (400, Outcome::BadRequest),
            _ => (500, Outcome::InternalError),
        };
        // A browser that went away (an aborted image, a closed tab), fell silent or sent a
        // body that does not parse is no failure of ours; metrics and the audit count them,
        // and an anonymous client cannot fill the log with them.
        if client_caused(outcome, e) {
            tracing::debug!(request_id = %ctx.request_id, status = code, error = %e, "the client broke the request off");
        } else {
            tracing::warn!(request_id = %ctx.request_id, status = code, error = %e, "proxying failed");
        }
        if code > 0 && session.response_written().is_none() {
            let _ = Exchange::new(self, session, ctx)
                .error_with_status(code, outcome)
                .await;
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
        crate::http::upstream::prepare_request(self, self.client_ip(session), upstream, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        crate::http::upstream::prepare_response(self, resp, ctx)
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
            self.audit_request(session, ctx, rule.map(|_| (app, route)), status);
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

impl Gateway {
    /// Resets an HTTP/2 stream with `HTTP_1_1_REQUIRED`: the browser sends the request again
    /// over HTTP/1.1. Returns that the request was answered.
    fn http1_required(&self, x: &mut Exchange<'_>) -> bool {
        x.session
            .as_downstream_mut()
            .shutdown_with_reason(h2::Reason::HTTP_1_1_REQUIRED);
        x.ctx.outcome = Outcome::Http1Required;
        true
    }
}

/// An HTTP/2 stream the client reset with CANCEL or NO_ERROR (pingora's "Client closed H2");
/// other HTTP/2 errors (a reset of ours, a protocol error) stay warnings.
fn client_reset(e: &Error) -> bool {
    let text = e.to_string();
    [h2::Reason::CANCEL, h2::Reason::NO_ERROR]
        .iter()
        .any(|r| text.contains(&format!("Client closed H2, reason: {r}")))
}

/// Failures of the client's half of a request: a client gone, silent, or sending a chunked
/// body that does not parse. Other refusals of a client's request (pingora's own checks on
/// an admitted one) stay warnings: they may be probes worth seeing.
fn client_caused(outcome: Outcome, e: &Error) -> bool {
    match outcome {
        Outcome::ClientGone | Outcome::ClientTimeout => true,
        // pingora's own (crate-private) error type for a broken chunked body.
        Outcome::BadRequest => e.etype().as_str() == "InvalidChunk",
        _ => false,
    }
}
