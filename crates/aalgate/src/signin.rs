//! The gateway's own sign-in pages and WebAuthn endpoints, and the handoff that gives each app
//! host its own session cookie.
//!
//! Ceremonies run on the auth origin (`public_origin`). After a success a new session record
//! is stored (no fixation) and the browser gets a host-only cookie *handle* linked to it: on
//! the auth origin at once, and on the app host through `/.aalgate/handoff?code=...` with a
//! one-time code (60 s, bound to that host and the kept URL), the way an OIDC authorization
//! code works. Every handle points at the one record, so logout, timeouts and revocation end
//! the session on every host at once. A browser that already holds a good enough session on
//! the auth origin is handed off without a new ceremony: one tap per session, not per app.
//!
//! CSRF: every POST needs a same-origin `Origin` (or `Sec-Fetch-Site: same-origin`) *and* a
//! token derived from the browser-binding cookie (`HttpOnly`, `SameSite=Lax` so a top-level redirect back to an app host carries it), which also
//! binds ceremony state to the browser that started it.

use std::time::{Duration, Instant};

use aalgate_auth::{
    directory::Pending, AuthState, CeremonyError, CredentialKind, DirectoryError, Purpose, RegKind,
    RegState, SignIn, Token, User,
};
use aalgate_policy::{Aal, HostPort, Timestamp};
use aalgate_session::{Flow, FlowId, FlowKind, Session as UserSession, SessionId, SessionKey};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use crate::headers;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::{bind_cookie, bind_name, cookie, csrf_of};
use crate::state::{Ctx, Gateway, Reply};
pub use crate::state::{DecoyRefresh, SignInService, DECOY_REFRESH};

/// Largest JSON body a ceremony endpoint reads.
const MAX_BODY: usize = 64 * 1024;

/// What a sign-in start for a typed user name is charged against the anonymous quota, at
/// least: more than the stored state of a person with a few keys.
const NAMED_START_CHARGE: usize = 8 * 1024;

/// What a handoff code carries.
#[derive(Serialize, Deserialize)]
struct Handoff {
    record: String,
    host: String,
    url: String,
    expires_at: Timestamp,
    /// The app-host browser binding of the flow: the code works only in that browser.
    browser: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartReq {
    purpose: String,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    invite: Option<String>,
    #[serde(default)]
    kind: Option<RegKind>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    switch: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishReq {
    ceremony: String,
    response: serde_json::Value,
}

/// Constant words for users; the detail goes to the log.
const MSG_FAILED: &str = "Sign-in did not work. Nothing was changed. Press the button to try again; if it keeps failing, contact IT.";
const MSG_EXPIRED: &str =
    "This sign-in page has expired. Go back to the application and open the page again.";
const MSG_THROTTLED: &str =
    "Too many failed sign-ins from this browser. Wait 15 minutes, or contact IT.";
const MSG_NO_KEY: &str = "This action needs a hardware security key registered to you, and none is. Contact IT to enroll one.";
const MSG_FORBIDDEN: &str = "This request was refused. Reload the page and try again.";
const MSG_UNAVAILABLE: &str =
    "The sign-in service is temporarily unavailable. Try again in a few seconds.";
const MSG_NOT_ENOUGH: &str =
    "That key does not meet this page's requirement. Use your hardware security key.";
const MSG_ENROLL_FAILED: &str = "Registration did not work. Nothing was saved. Press a button to try again; if it keeps failing, contact IT.";
const MSG_NOT_RECORDED: &str = "Your touch could not be recorded in the audit log, so it does not count and nothing was sent. What you were sending is kept: touch your key again in a moment. If this keeps happening, call IT: the gateway's audit log is unavailable.";
const MSG_KEY_NOT_APPROVED: &str =
    "This security key is not on the hospital's approved list. Use an approved key, or contact IT.";

fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn level_words(aal: Aal) -> &'static str {
    match aal {
        Aal::Aal3 => "your hardware security key",
        _ => "your passkey or security key",
    }
}

impl Gateway {
    fn service(&self) -> &SignInService {
        &self.signin
    }

    /// Whether this request comes from the browser whose binding cookie hashes to `hash`.
    pub(crate) fn is_bound_browser(&self, session: &Session, ctx: &Ctx, hash: &str) -> bool {
        headers::cookie_values(&session.req_header().headers, bind_name(ctx.tls))
            .iter()
            .filter_map(|v| Token::parse(v))
            .any(|t| constant_eq(t.hash().as_bytes(), hash.as_bytes()))
    }

    /// The browser binding: the cookie value, and whether it must be set now.
    pub(crate) fn binding(&self, session: &Session, ctx: &Ctx) -> (Token, bool) {
        headers::cookie_values(&session.req_header().headers, bind_name(ctx.tls))
            .iter()
            .find_map(|v| Token::parse(v))
            .map(|t| (t, false))
            .unwrap_or_else(|| (Token::generate(), true))
    }

    /// A same-origin request (`Origin`, or `Sec-Fetch-Site` when a form post sends
    /// `Origin: null` under `Referrer-Policy: no-referrer`) from a browser with a binding
    /// cookie: that binding, or `None`.
    fn same_origin_binding(&self, session: &Session, ctx: &Ctx) -> Option<Token> {
        let h = &session.req_header().headers;
        // The origin browsers see (the scheme of `public_origin`: a TLS load balancer may sit in
        // front of a plain listener), judged as kept forms are, but with no `Referer` fallback:
        // the gateway's own pages always get `Origin` or `Sec-Fetch-Site` from a browser.
        let own = format!("{}://{}", self.signin.scheme, ctx.host);
        let same = matches!(
            crate::preserve::evidence(h, &own),
            crate::preserve::Evidence::SameOrigin
        ) && (h.contains_key("origin") || h.contains_key("sec-fetch-site"));
        if !same {
            return None;
        }
        headers::cookie_values(h, bind_name(ctx.tls))
            .iter()
            .find_map(|v| Token::parse(v))
    }

    /// A same-origin POST with the right token in `X-Aalgate-Csrf`: the binding, or `None`.
    fn checked_post(&self, session: &Session, ctx: &Ctx) -> Option<Token> {
        let bind = self.same_origin_binding(session, ctx)?;
        let token = session
            .req_header()
            .headers
            .get("x-aalgate-csrf")?
            .to_str()
            .ok()?;
        constant_eq(token.as_bytes(), csrf_of(bind.expose()).as_bytes()).then_some(bind)
    }

    async fn read_body(&self, session: &mut Session) -> Option<Vec<u8>> {
        crate::resume::read_limited(session, MAX_BODY).await
    }

    /// A sign-in that failed (an unreadable response, an unknown or disabled user, a signature
    /// that does not verify): counted for this client and browser binding, and answered after
    /// their backoff, alike on every path, so the time tells nobody whether the name exists.
    async fn failed_finish(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        binding: &str,
    ) -> Result<bool> {
        let wait = self
            .service()
            .failures
            .failed(self.client_ip(session), binding);
        tokio::time::sleep(wait).await;
        self.json_error(session, ctx, Outcome::SigninFailed, MSG_FAILED)
            .await
    }

    /// The store failed during a ceremony: 503 with the constant words, the cause in the log.
    async fn store_down(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        e: &(dyn std::fmt::Display + Sync),
        what: &str,
    ) -> Result<bool> {
        tracing::warn!(request_id = %ctx.request_id, error = %e, "{what}");
        self.json_error(session, ctx, Outcome::StoreUnavailable, MSG_UNAVAILABLE)
            .await
    }

    async fn json_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        outcome: Outcome,
        message: &str,
    ) -> Result<bool> {
        ctx.outcome = outcome;
        let (status, code) = (outcome.status().unwrap_or(500), outcome.json_code());
        let body =
            serde_json::json!({ "error": code, "message": message, "request_id": ctx.request_id });
        self.send(session, ctx, Reply::json(status, body.to_string()))
            .await
    }

    /// The canonical host string of the auth origin.
    fn public_host_str(&self) -> String {
        self.public_host.canonical(self.default_port()).to_string()
    }

    /// The port a host without one means: the default of `public_origin`'s scheme.
    pub(crate) fn default_port(&self) -> u16 {
        if self.signin.scheme == "https" {
            443
        } else {
            80
        }
    }

    /// The host a flow returns to: the app's configured host, with its configured port or else
    /// the request's. The request's port is one a listener serves (`request_filter` answers 421
    /// to any other), so a port the client made up never becomes a redirect target.
    pub(crate) fn canonical_host(&self, host: &str) -> String {
        let Ok(h) = HostPort::parse(host) else {
            return self.public_host_str();
        };
        let policy = self.policies.snapshot();
        match policy.app_for_host(&h) {
            Some(a) => HostPort {
                host: a.host.host.clone(),
                port: a.host.port.or(h.port),
            }
            .canonical(self.default_port())
            .to_string(),
            None => self.public_host_str(),
        }
    }

    /// Whether this host is the auth origin's (host and port, through [`HostPort::same_as`]).
    pub(crate) fn is_auth_host(&self, h: &HostPort) -> bool {
        h.same_as(&self.public_host, self.default_port())
    }

    /// Whether this request is on the auth origin.
    pub(crate) fn on_auth_origin(&self, ctx: &Ctx) -> bool {
        HostPort::parse(&ctx.host).is_ok_and(|h| self.is_auth_host(&h))
    }

    /// The session this browser holds on this host, as the store has it (see
    /// [`crate::state::Lookup::StoreOnly`]).
    async fn current(
        &self,
        session: &Session,
        ctx: &Ctx,
    ) -> std::result::Result<
        Option<(SessionKey, SessionKey, UserSession)>,
        aalgate_session::StoreError,
    > {
        let now = self.clock.now();
        self.session_of(
            session.req_header(),
            ctx,
            now,
            crate::state::Lookup::StoreOnly,
        )
        .await
    }

    /// Static files of the pages.
    pub(crate) async fn static_file(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: &str,
    ) -> Result<bool> {
        let (ctype, body) = match path {
            "/.aalgate/static/aalgate.js" => ("text/javascript; charset=utf-8", pages::SCRIPT),
            "/.aalgate/static/aalgate.css" => ("text/css; charset=utf-8", pages::STYLE),
            _ => return self.error(session, ctx, Outcome::NotFound).await,
        };
        let mut r = Reply::html(200, body.to_string());
        r.content_type = ctype;
        self.send(session, ctx, r).await
    }

    /// `GET /.aalgate/auth?flow=...`: the sign-in, step-up or re-auth page, or a handoff at
    /// once when this browser's session on the auth origin already satisfies the flow.
    #[allow(
        clippy::too_many_lines,
        reason = "the sign-in page's cases; moves to endpoints/ (issue 15 item 3)"
    )]
    pub(crate) async fn auth_page(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if !self.on_auth_origin(ctx) {
            return self.error(session, ctx, Outcome::NotFound).await;
        }
        let id = query_param(session.req_header().uri.query(), "flow").and_then(FlowId::parse);
        let now = self.clock.now();
        let flow = match id {
            None => None,
            Some(id) => match self.store.get_flow(&id.key(), now).await {
                Ok(f) => f.map(|f| (id, f)),
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error on the sign-in page");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            },
        };
        let Some((id, flow)) = flow else {
            let reply = Reply::html(
                200,
                pages::page(
                    "Sign-in link expired",
                    "<p>This sign-in link is not valid any more (links expire after 10 minutes and work once).</p>\
                     <p>Go back to the application and open the page again.</p>",
                    &ctx.request_id,
                ),
            );
            return self.send(session, ctx, reply).await;
        };

        // Single sign-on: a good enough session here needs no new ceremony; a session that is
        // not good enough makes this a step-up for its user.
        let mut flow = flow;
        // A step-up or re-auth needs no new ceremony either when this browser's session here
        // is the same person's and already good enough (another tab just confirmed).
        // A per-request ceremony is never silent: it signs this one request.
        let silent = |s: &UserSession, flow: &Flow| match flow.need {
            _ if flow.binding.is_some() => false,
            FlowKind::Login => satisfies(s, flow, now),
            FlowKind::StepUp | FlowKind::Reauth => {
                flow.user.as_deref() == Some(s.user.as_str()) && satisfies(s, flow, now)
            }
            FlowKind::Switch => false,
        };
        if flow.need != FlowKind::Switch {
            match self.current(session, ctx).await {
                Ok(Some((_, record, s))) if silent(&s, &flow) => {
                    if let Ok(Some(f)) = self.store.take_flow(&id.key(), now).await {
                        ctx.session = Some(s.clone());
                        return self
                            .hand_off(session, ctx, &record, &s, &f, Vec::new())
                            .await;
                    }
                }
                Ok(Some((_, _, s))) if flow.need == FlowKind::Login => {
                    flow.need = FlowKind::StepUp;
                    flow.user = Some(s.user.clone());
                    let left = crate::state::FLOW_TTL.saturating_sub(now.since(flow.created));
                    if let Err(e) = self.store.put_flow(&id.key(), &flow, left).await {
                        tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error on the sign-in page");
                        return self.error(session, ctx, Outcome::StoreUnavailable).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "session store error on the sign-in page");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            }
        }

        let (bind, set_bind) = self.binding(session, ctx);
        let app = escape(&flow.app);
        let kept_note = match flow.kept.as_deref() {
            Some(k) if crate::preserve::NotKept::parse(k).is_none() => format!(
                "<p>Your form for <strong>{app}</strong> is kept. Confirm with {} to send it.</p>",
                level_words(flow.aal)
            ),
            _ => String::new(),
        };
        let (title, body) = match flow.need {
            FlowKind::StepUp => (
                "Confirm it's you",
                format!(
                    "<p>This action in <strong>{app}</strong> needs a fresh confirmation with {}.</p>\
                     <p>Press <em>Confirm</em>, then touch the key or use its fingerprint or PIN. You will go straight back to what you were doing.</p>\
                     <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\
                     <button type=\"button\" data-action=\"signin\">Confirm</button>",
                    level_words(flow.aal)
                ),
            ),
            FlowKind::Reauth if flow.user.is_some() => (
                "Continue where you were",
                format!(
                    "<p>Your session in <strong>{app}</strong> paused. Press <em>Continue</em> and touch your key or use your fingerprint. You will land on the same page.</p>\
                     <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\
                     <button type=\"button\" data-action=\"signin\">Continue</button>\
                     <p>Not you? <button type=\"button\" class=\"secondary\" data-action=\"switch\">Sign in as someone else</button> (the previous session ends).</p>"
                ),
            ),
            _ => (
                if flow.need == FlowKind::Switch {
                    "Switch user"
                } else {
                    "Sign in"
                },
                format!(
                    "<p>Sign in to <strong>{app}</strong> with {}.</p>\
                     <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\
                     <button type=\"button\" data-action=\"switch\">Sign in with a passkey or key</button>\
                     <details><summary>Use a security key that asks for your user name</summary>\
                     <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\">\
                     <button type=\"button\" class=\"secondary\" data-action=\"username\">Continue with security key</button></details>",
                    level_words(flow.aal)
                ),
            ),
        };
        // A ceremony bound to one request says which: the person approves exactly this.
        let signing_note = if flow.binding.is_some() {
            format!(
                "<p>You are approving, with your signature: <strong>{} {}</strong> in <strong>{app}</strong>. Your key signs this one request; the next one needs a new confirmation.</p>",
                escape(&flow.method),
                escape(&self.signed_path(&flow))
            )
        } else {
            String::new()
        };
        let body = format!("{kept_note}{signing_note}{body}");
        let attrs = format!(
            " data-flow=\"{}\" data-csrf=\"{}\"",
            escape(&id.encode()),
            escape(&csrf_of(bind.expose()))
        );
        let mut reply = Reply::html(200, pages::page_with(title, &body, &ctx.request_id, &attrs));
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        ctx.outcome = Outcome::SigninPage;
        self.send(session, ctx, reply).await
    }

    /// The path of a signed request as the audit log writes it (redacted, no query); the
    /// challenge covers it, so what an auditor reads is what the key signed.
    fn signed_path(&self, flow: &Flow) -> String {
        self.audit
            .redact_path(flow.url.split('?').next().unwrap_or("/"))
    }

    /// `GET /.aalgate/done` (any host): where the popup of a script call lands after its
    /// ceremony. It closes itself when a script opened it; otherwise it says what to do.
    pub(crate) async fn done_page(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let app = self
            .app_of_host(ctx)
            .unwrap_or_else(|| "the application".into());
        let body = format!(
            "<p>Confirmed. Go back to <strong>{}</strong>: the page you were using carries on by itself. This window closes itself; if it does not, close it.</p>\
             <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>",
            escape(&app)
        );
        let reply = Reply::html(
            200,
            pages::page_with("Confirmed", &body, &ctx.request_id, " data-close=\"1\""),
        );
        ctx.outcome = Outcome::Done;
        self.send(session, ctx, reply).await
    }

    /// `GET /.aalgate/switch` (any host): sign in as someone else on a shared workstation. The
    /// sign-in page is shown even when a session exists; when a different person signs in,
    /// the previous person's session ends on every host.
    pub(crate) async fn switch_user(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err(retry) = self.take_flow_token(session) {
            return self.too_many_flows(session, ctx, retry).await;
        }
        let app = self.app_of_host(ctx);
        let (bind, set_bind) = self.binding(session, ctx);
        let flow = Flow {
            host: self.canonical_host(&ctx.host),
            browser: Some(bind.hash()),
            kept: None,
            binding: None,
            script: false,
            method: "GET".into(),
            url: "/".into(),
            need: FlowKind::Switch,
            aal: Aal::Aal2,
            max_age_secs: None,
            app: app.unwrap_or_else(|| "the applications".into()),
            created: self.clock.now(),
            user: None,
        };
        let size = serde_json::to_vec(&flow).map_or(crate::state::MAX_FLOW_BYTES, |v| v.len());
        match self.charge_anonymous(size, self.client_ip(session)).await {
            Ok(Ok(())) => {}
            Ok(Err(full)) => return self.anonymous_quota_full(session, ctx, full).await,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "switch user: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        }
        let id = FlowId::generate();
        if let Err(e) = self
            .store
            .put_flow(&id.key(), &flow, crate::state::FLOW_TTL)
            .await
        {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "switch user: store error");
            return self.error(session, ctx, Outcome::StoreUnavailable).await;
        }
        ctx.outcome = Outcome::Switch;
        let to = format!(
            "{}://{}/.aalgate/auth?flow={}",
            self.service().scheme,
            self.public_host_str(),
            id.encode()
        );
        let mut reply = Reply::html(
            302,
            pages::page(
                "Switch user",
                "<p>Taking you to sign in.</p>",
                &ctx.request_id,
            ),
        )
        .header("location", to);
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        self.send(session, ctx, reply).await
    }

    /// `GET /.aalgate/enroll?invite=...`: the enrollment page of an invite.
    pub(crate) async fn enroll_page(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if !self.on_auth_origin(ctx) {
            return self.error(session, ctx, Outcome::NotFound).await;
        }
        let token = query_param(session.req_header().uri.query(), "invite").and_then(Token::parse);
        let invite = match token {
            None => None,
            Some(t) => match self.service().dir.peek_invite(&t, self.clock.now()).await {
                Ok(i) => i.map(|i| (t, i)),
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "store error on the enrollment page");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            },
        };
        let Some((token, invite)) = invite else {
            let reply = Reply::html(
                200,
                pages::page(
                    "Invitation not valid",
                    "<p>This enrollment link is not valid: it was used already, or it expired.</p>\
                     <p>Ask IT for a new one. IT will confirm who you are before sending it.</p>",
                    &ctx.request_id,
                ),
            );
            return self.send(session, ctx, reply).await;
        };
        let (bind, set_bind) = self.binding(session, ctx);
        let hw = self.service().rp.hardware_keys_configured();
        let mut buttons = String::new();
        if invite.aal <= Aal::Aal2 {
            buttons.push_str("<button type=\"button\" data-action=\"enroll-passkey\">Create a passkey on this device</button>");
        }
        if hw {
            buttons.push_str("<button type=\"button\" class=\"secondary\" data-action=\"enroll-key\">Register a hardware security key</button>");
        }
        let explain = if invite.aal == Aal::Aal3 {
            if hw {
                "<p>Your role needs a <strong>hardware security key</strong>. Insert or hold it near the device, press the button, then touch the key and enter its PIN when asked.</p>"
            } else {
                "<p>Your role needs a hardware security key, but none is approved on this gateway yet. Contact IT.</p>"
            }
        } else {
            "<p>A <strong>passkey</strong> lets you sign in with your fingerprint, face or device PIN. A <strong>hardware security key</strong> is a small USB or NFC key.</p>"
        };
        let body = format!(
            "<p>Welcome, {}. Set up how you will sign in.</p>{explain}\
             <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>{buttons}\
             <p>After this, you will be signed in. Next time, one touch is enough.</p>",
            escape(&invite.display_name)
        );
        let attrs = format!(
            " data-invite=\"{}\" data-csrf=\"{}\"",
            escape(token.expose()),
            escape(&csrf_of(bind.expose()))
        );
        let mut reply = Reply::html(
            200,
            pages::page_with("Set up sign-in", &body, &ctx.request_id, &attrs),
        );
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        ctx.outcome = Outcome::EnrollPage;
        self.send(session, ctx, reply).await
    }

    /// The common front of the ceremony endpoints: the auth origin only, CSRF, a bounded body,
    /// JSON. `Err(sent)`: the refusal was sent; return it.
    async fn ceremony_input<T: serde::de::DeserializeOwned>(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<std::result::Result<(Token, T), bool>> {
        if !self.on_auth_origin(ctx) {
            return self.error(session, ctx, Outcome::NotFound).await.map(Err);
        }
        let Some(bind) = self.checked_post(session, ctx) else {
            return self
                .json_error(session, ctx, Outcome::Csrf, MSG_FORBIDDEN)
                .await
                .map(Err);
        };
        let Some(body) = self.read_body(session).await else {
            return self
                .json_error(session, ctx, Outcome::BodyTooLarge, MSG_FAILED)
                .await
                .map(Err);
        };
        match serde_json::from_slice(&body) {
            Ok(r) => Ok(Ok((bind, r))),
            Err(e) => {
                tracing::info!(request_id = %ctx.request_id, error = %e, "malformed ceremony request");
                self.json_error(session, ctx, Outcome::BadRequest, MSG_FAILED)
                    .await
                    .map(Err)
            }
        }
    }

    /// `POST /.aalgate/webauthn/start`.
    pub(crate) async fn ceremony_start(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let (bind, req): (Token, StartReq) = match self.ceremony_input(session, ctx).await? {
            Ok(x) => x,
            Err(sent) => return Ok(sent),
        };
        if let Err(retry) = self.take_flow_token(session) {
            return self.too_many_flows(session, ctx, retry).await;
        }
        // This browser failed too often: it starts nothing more for a while. Only its own
        // binding is refused; another browser, even behind the same address, is not.
        if self.service().failures.binding_blocked(&bind.hash()) {
            return self
                .json_error(session, ctx, Outcome::Throttled, MSG_THROTTLED)
                .await;
        }
        match self.start(&req, &bind, self.client_ip(session)).await {
            Ok(Ok((id, options, kind))) => {
                self.metrics
                    .challenges
                    .with_label_values(&[kind, "issued"])
                    .inc();
                ctx.outcome = Outcome::Challenge;
                let body = serde_json::json!({ "ceremony": id, "options": options });
                self.send(session, ctx, Reply::json(200, body.to_string()))
                    .await
            }
            Ok(Err((outcome, msg))) => self.json_error(session, ctx, outcome, msg).await,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "ceremony start failed");
                let outcome = match e {
                    DirectoryError::Store(_) => Outcome::StoreUnavailable,
                    _ => Outcome::Internal,
                };
                self.json_error(session, ctx, outcome, MSG_UNAVAILABLE)
                    .await
            }
        }
    }

    #[allow(clippy::type_complexity)]
    #[allow(
        clippy::too_many_lines,
        reason = "one ceremony start per purpose; moves to endpoints/ceremony (issue 15 item 3)"
    )]
    async fn start(
        &self,
        req: &StartReq,
        bind: &Token,
        client: Option<std::net::IpAddr>,
    ) -> std::result::Result<
        std::result::Result<(String, serde_json::Value, &'static str), (Outcome, &'static str)>,
        DirectoryError,
    > {
        let svc = self.service();
        let now = self.clock.now();
        let ceremony = Token::generate();
        match req.purpose.as_str() {
            "enroll" => {
                let Some(token) = req.invite.as_deref().and_then(Token::parse) else {
                    return Ok(Err((Outcome::BadRequest, MSG_FAILED)));
                };
                let Some(invite) = svc.dir.peek_invite(&token, now).await? else {
                    return Ok(Err((
                        Outcome::InviteExpired,
                        "This enrollment link was used already or expired. Ask IT for a new one.",
                    )));
                };
                let kind = req.kind.unwrap_or(RegKind::Passkey);
                if invite.aal == Aal::Aal3 && kind != RegKind::SecurityKey {
                    return Ok(Err((Outcome::NeedsHardwareKey, MSG_NO_KEY)));
                }
                let user = match svc.dir.user(&invite.user).await? {
                    Some(u) if u.disabled => return Ok(Err((Outcome::Disabled, MSG_FAILED))),
                    Some(u) => u,
                    None => new_user(&invite.user, &invite.display_name, invite.aal, now),
                };
                let (options, state) = match svc.rp.start_registration(&user, kind) {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start enrollment");
                        return Ok(Err((Outcome::NotAvailable, MSG_KEY_NOT_APPROVED)));
                    }
                };
                let pending = Pending {
                    purpose: Purpose::Enroll,
                    binding: bind.hash(),
                    flow: None,
                    user: Some(user.id.clone()),
                    invite: Some(token.hash()),
                    allowed: None,
                    handle: Some(user.handle),
                    ceremony_nonce: None,
                    state: serde_json::to_value(&state)
                        .map_err(|e| DirectoryError::Corrupt("state", e.to_string()))?,
                    created: now,
                };
                svc.dir.put_pending(&ceremony.hash(), &pending).await?;
                Ok(Ok((ceremony.expose().to_string(), options, "login")))
            }
            "signin" => {
                let Some(flow_id) = req.flow.as_deref().and_then(FlowId::parse) else {
                    return Ok(Err((Outcome::BadRequest, MSG_EXPIRED)));
                };
                let Some(flow) = self.store.get_flow(&flow_id.key(), now).await? else {
                    return Ok(Err((Outcome::FlowExpired, MSG_EXPIRED)));
                };
                let kind = flow.need.challenge();
                // Who may answer: the flow's user (step-up always; re-auth unless switching),
                // a typed user name, or anyone with a discoverable credential.
                let named = if flow.need == FlowKind::StepUp
                    || (flow.need == FlowKind::Reauth && !req.switch)
                {
                    flow.user.clone()
                } else {
                    req.username.as_deref().map(|u| u.trim().to_string())
                };
                // On a per-request route the challenge is derived from the request's digest
                // and a fresh ceremony nonce, so the key's signature covers that request.
                let bound = flow.binding.as_ref().map(|b| {
                    let n = aalgate_auth::signing::nonce();
                    let path = self.signed_path(&flow);
                    (
                        aalgate_auth::signing::challenge_of(b, &n, &flow.method, &path),
                        n,
                    )
                });
                let start = |name: &str, creds: Option<&[aalgate_auth::Credential]>| match &bound {
                    Some((Some(chal), _)) => svc.rp.start_sign_in_bound(name, creds, chal),
                    Some((None, _)) => Err(aalgate_auth::CeremonyError::Config(
                        "malformed request binding".into(),
                    )),
                    None => svc.rp.start_sign_in_for(name, creds),
                };
                let (options, state, user, allowed) = match named {
                    Some(name) => {
                        // Decoys look like the people enrolled; the background refresh keeps
                        // that current, and the first start after boot loads it if it has not.
                        svc.ensure_decoys().await;
                        // Throttling is enforced when the answer comes back, so a start never tells
                        // a throttled (existing) account from another.
                        let user = svc.dir.user(&name).await?.filter(|u| !u.disabled);
                        let creds: Vec<_> = user
                            .as_ref()
                            .map(|u| {
                                u.credentials
                                    .iter()
                                    .filter(|c| {
                                        c.usable()
                                            && (flow.need != FlowKind::StepUp || c.aal >= flow.aal)
                                    })
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        if flow.need == FlowKind::StepUp && creds.is_empty() {
                            return Ok(Err((Outcome::NoSuitableKey, MSG_NO_KEY)));
                        }
                        let allowed: Vec<String> = creds.iter().map(|c| c.id.clone()).collect();
                        let (o, s) = start(&name, Some(&creds))
                            .map_err(|e| DirectoryError::Invalid(e.to_string()))?;
                        (o, s, Some(name), Some(allowed))
                    }
                    None => {
                        let (o, s) =
                            start("", None).map_err(|e| DirectoryError::Invalid(e.to_string()))?;
                        (o, s, None, None)
                    }
                };
                let pending = Pending {
                    purpose: flow.need.into(),
                    binding: bind.hash(),
                    flow: Some(flow_id.key()),
                    user,
                    invite: None,
                    allowed,
                    handle: None,
                    ceremony_nonce: bound.map(|(_, n)| aalgate_auth::signing::b64(&n)),
                    state: serde_json::to_value(&state)
                        .map_err(|e| DirectoryError::Corrupt("state", e.to_string()))?,
                    created: now,
                };
                // A ceremony for nobody known yet draws on the store-wide anonymous quota.
                if flow.user.is_none() {
                    let size = serde_json::to_vec(&pending)
                        .map_or(crate::state::MAX_FLOW_BYTES, |v| v.len());
                    // A typed name's state holds that person's keys (or a decoy's): charged
                    // at least a fixed amount, so how many starts fit does not tell a real
                    // name from a made-up one.
                    let size = if pending.user.is_some() {
                        size.max(NAMED_START_CHARGE)
                    } else {
                        size
                    };
                    match self.charge_anonymous(size, client).await? {
                        Ok(()) => {}
                        Err(crate::resume::QuotaFull::Client) => {
                            return Ok(Err((
                                Outcome::SignInBusy,
                                crate::state::MSG_SIGN_IN_BUSY_HERE,
                            )))
                        }
                        Err(crate::resume::QuotaFull::Store) => {
                            return Ok(Err((Outcome::SignInBusy, crate::state::MSG_SIGN_IN_BUSY)))
                        }
                    }
                }
                svc.dir.put_pending(&ceremony.hash(), &pending).await?;
                Ok(Ok((ceremony.expose().to_string(), options, kind)))
            }
            _ => Ok(Err((Outcome::BadRequest, MSG_FAILED))),
        }
    }

    /// `POST /.aalgate/webauthn/finish`.
    pub(crate) async fn ceremony_finish(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let (bind, req): (Token, FinishReq) = match self.ceremony_input(session, ctx).await? {
            Ok(x) => x,
            Err(sent) => return Ok(sent),
        };
        let Some(ceremony) = Token::parse(&req.ceremony) else {
            return self
                .json_error(session, ctx, Outcome::BadRequest, MSG_EXPIRED)
                .await;
        };
        let svc = self.service();
        // Taken once: a replayed or parallel duplicate finds nothing.
        let pending = match svc.dir.take_pending(&ceremony.hash()).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.audit_auth(
                    ctx,
                    "signin_failure",
                    None,
                    None,
                    None,
                    Some("ceremony state missing (expired, used or replayed)"),
                );
                return self
                    .json_error(session, ctx, Outcome::CeremonyExpired, MSG_EXPIRED)
                    .await;
            }
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "ceremony finish: store error")
                    .await;
            }
        };
        if !constant_eq(pending.binding.as_bytes(), bind.hash().as_bytes()) {
            self.audit_auth(
                ctx,
                "signin_failure",
                pending.user.as_deref(),
                None,
                None,
                Some("ceremony finished by another browser"),
            );
            return self
                .json_error(session, ctx, Outcome::Csrf, MSG_FORBIDDEN)
                .await;
        }
        let response = serde_json::to_vec(&req.response).unwrap_or_default();
        let t0 = Instant::now();
        if pending.purpose == Purpose::Enroll {
            return self.finish_enroll(session, ctx, pending, &response).await;
        }
        let kind = challenge_kind(pending.purpose);
        let result = self.finish_sign_in(session, ctx, pending, &response).await;
        self.metrics
            .ceremony_seconds
            .with_label_values(&[kind])
            .observe(t0.elapsed().as_secs_f64());
        result
    }

    #[allow(
        clippy::too_many_lines,
        reason = "enrollment's checks in order; moves to endpoints/enroll (issue 15 item 3)"
    )]
    async fn finish_enroll(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        pending: Pending,
        response: &[u8],
    ) -> Result<bool> {
        let svc = self.service();
        let now = self.clock.now();
        let state: RegState = match serde_json::from_value(pending.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable enrollment state");
                return self
                    .json_error(session, ctx, Outcome::Internal, MSG_ENROLL_FAILED)
                    .await;
            }
        };
        let cred = match svc.rp.finish_registration(response, &state, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(request_id = %ctx.request_id, error = %e, "enrollment refused");
                self.audit_auth(
                    ctx,
                    "enroll_failure",
                    pending.user.as_deref(),
                    None,
                    None,
                    Some(&e.to_string()),
                );
                let msg = if matches!(e, CeremonyError::Untrusted(_)) {
                    MSG_KEY_NOT_APPROVED
                } else {
                    MSG_ENROLL_FAILED
                };
                return self
                    .json_error(session, ctx, Outcome::EnrollFailed, msg)
                    .await;
            }
        };
        let outcome = async {
            if svc.dir.credential_owner(&cred.id).await?.is_some() {
                return Ok(Err("credential already registered"));
            }
            let Some(invite) = svc
                .dir
                .take_invite(pending.invite.as_deref().unwrap_or(""), now)
                .await?
            else {
                return Ok(Err("invite used or expired meanwhile"));
            };
            let proofed = match svc.dir.user(&invite.user).await? {
                Some(u) => u.proofed_aal.max(invite.aal),
                None => invite.aal,
            };
            if proofed == Aal::Aal3 && cred.aal < Aal::Aal3 {
                return Ok(Err("an AAL3 person needs an attested hardware key"));
            }
            let mut user = match svc.dir.user(&invite.user).await? {
                Some(u) => u,
                None => {
                    let mut u = new_user(&invite.user, &invite.display_name, invite.aal, now);
                    // The handle the authenticator stored with the credential.
                    u.handle = pending.handle.unwrap_or(u.handle);
                    u
                }
            };
            if Some(user.handle) != pending.handle {
                return Ok(Err("user handle changed during enrollment"));
            }
            if user.disabled {
                return Ok(Err("user disabled"));
            }
            user.proofed_aal = user.proofed_aal.max(invite.aal);
            // Never above the level IT proofed the person for.
            let mut cred = cred.clone();
            cred.aal = cred.aal.min(user.proofed_aal);
            user.credentials.push(cred);
            user.last_login = Some(now);
            svc.dir.put_user(&user).await?;
            Ok::<_, DirectoryError>(Ok(user))
        }
        .await;
        let user = match outcome {
            Ok(Ok(u)) => u,
            Ok(Err(why)) => {
                self.audit_auth(
                    ctx,
                    "enroll_failure",
                    pending.user.as_deref(),
                    None,
                    None,
                    Some(why),
                );
                return self
                    .json_error(session, ctx, Outcome::EnrollFailed, MSG_ENROLL_FAILED)
                    .await;
            }
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "enrollment: store error")
                    .await;
            }
        };
        self.audit_auth(
            ctx,
            "enroll",
            Some(&user.id),
            Some(cred.aal),
            Some(&cred.audit_id()),
            Some(cred.kind.as_str()),
        );
        // Land on the first app, signed in at the level the credential reaches.
        let target = ctx
            .policy
            .apps()
            .first()
            .map(|a| a.host.to_string())
            .unwrap_or_else(|| self.public_host_str());
        let flow = Flow {
            host: landing_host(&target, &self.public_host),
            method: "GET".into(),
            url: "/".into(),
            need: FlowKind::Login,
            aal: cred.aal,
            max_age_secs: None,
            app: String::new(),
            created: now,
            user: None,
            browser: None,
            kept: None,
            binding: None,
            script: false,
        };
        let amr = match cred.kind {
            CredentialKind::SecurityKey => vec!["hwk".into(), "user".into(), "mfa".into()],
            CredentialKind::Passkey => vec!["swk".into(), "user".into(), "mfa".into()],
        };
        self.start_session(
            session,
            ctx,
            &user,
            cred.aal,
            amr,
            &cred.audit_id(),
            cred.kind,
            &flow,
        )
        .await
    }

    #[allow(
        clippy::too_many_lines,
        reason = "a sign-in's checks in order, each failure audited; moves to endpoints/ceremony (issue 15 item 3)"
    )]
    async fn finish_sign_in(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        pending: Pending,
        response: &[u8],
    ) -> Result<bool> {
        let svc = self.service();
        let now = self.clock.now();
        let kind = challenge_kind(pending.purpose);
        let fail = |this: &Self, ctx: &Ctx, user: Option<&str>, why: &str| {
            tracing::info!(request_id = %ctx.request_id, user = user.unwrap_or("-"), reason = why, "sign-in failed");
            this.metrics
                .challenges
                .with_label_values(&[kind, "failure"])
                .inc();
            this.audit_auth(ctx, "signin_failure", user, None, None, Some(why));
        };
        let ceremony_nonce = pending.ceremony_nonce.clone();
        let state: AuthState = match serde_json::from_value(pending.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable sign-in state");
                return self
                    .json_error(session, ctx, Outcome::Internal, MSG_FAILED)
                    .await;
            }
        };
        let resp = match SignIn::parse(response) {
            Ok(r) => r,
            Err(e) => {
                fail(self, ctx, pending.user.as_deref(), &e.to_string());
                return self.failed_finish(session, ctx, &pending.binding).await;
            }
        };
        // Who: the user the ceremony was started for, or the one the credential names.
        let user = match &pending.user {
            Some(name) => svc.dir.user(name).await,
            None => match resp.user_handle() {
                Some(h) => svc.dir.user_by_handle(h).await,
                None => Ok(None),
            },
        };
        let mut user = match user {
            Ok(Some(u)) if !u.disabled => u,
            Ok(_) => {
                fail(
                    self,
                    ctx,
                    pending.user.as_deref(),
                    "unknown or disabled user",
                );
                return self.failed_finish(session, ctx, &pending.binding).await;
            }
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "sign-in: store error")
                    .await;
            }
        };
        // No account-wide lockout: a valid assertion from the person's own key is never refused
        // because of anybody's failures (README "Failed sign-ins", NIST SP 800-63B-4 rate limiting).
        let verified =
            svc.rp
                .finish_sign_in(&resp, state, &mut user, pending.allowed.as_deref(), now);
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(request_id = %ctx.request_id, user = %user.id, error = %e, "sign-in refused");
                fail(self, ctx, Some(&user.id), &e.to_string());
                if let CeremonyError::CounterRegression(cred) = &e {
                    self.metrics.counter_regressions.inc();
                    self.audit_auth(
                        ctx,
                        "sign_count_regression",
                        Some(&user.id),
                        None,
                        Some(cred),
                        Some("credential flagged; sign-in refused"),
                    );
                    let _ = svc.dir.put_user(&user).await;
                }
                return self.failed_finish(session, ctx, &pending.binding).await;
            }
        };
        let flow = match pending.flow.as_deref() {
            Some(k) => self.store.take_flow(k, now).await,
            None => Ok(None),
        };
        let flow = match flow {
            Ok(Some(f)) => f,
            Ok(None) => {
                return self
                    .json_error(session, ctx, Outcome::FlowExpired, MSG_EXPIRED)
                    .await
            }
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "sign-in: store error")
                    .await;
            }
        };
        // Never above the level IT proofed the person for.
        let mut v = v;
        v.aal = v.aal.min(user.proofed_aal.max(Aal::Aal2));
        if flow.need == FlowKind::StepUp && v.aal < flow.aal {
            fail(
                self,
                ctx,
                Some(&user.id),
                "credential below the step-up level",
            );
            return self
                .json_error(session, ctx, Outcome::NotEnough, MSG_NOT_ENOUGH)
                .await;
        }
        // Write back only what this sign-in changed, onto a fresh read: a `disable` or
        // `revoke-credential` that ran meanwhile wins.
        let merged = async {
            let Some(mut fresh) = svc.dir.user(&user.id).await? else {
                return Ok(false);
            };
            let Some(used) = user.credential(&v.credential_id).cloned() else {
                return Ok(false);
            };
            let Some(slot) = fresh.credentials.iter_mut().find(|c| c.id == used.id) else {
                return Ok(false);
            };
            if fresh.disabled || !slot.usable() {
                return Ok(false);
            }
            *slot = used;
            fresh.last_login = user.last_login;
            svc.dir.put_user(&fresh).await?;
            Ok::<_, DirectoryError>(true)
        }
        .await;
        match merged {
            Ok(true) => {}
            Ok(false) => {
                fail(
                    self,
                    ctx,
                    Some(&user.id),
                    "user disabled or credential revoked during sign-in",
                );
                return self
                    .json_error(session, ctx, Outcome::SigninFailed, MSG_FAILED)
                    .await;
            }
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "sign-in: store error")
                    .await;
            }
        }
        self.metrics
            .challenges
            .with_label_values(&[kind, "success"])
            .inc();
        self.audit_auth(
            ctx,
            kind,
            Some(&user.id),
            Some(v.aal),
            Some(&v.audit_id),
            Some(v.kind.as_str()),
        );
        let mut flow = flow;
        if let Some(b) = flow.binding.take() {
            // The key signed the challenge derived from this request (webauthn-rs checked it
            // against the state); the audit log keeps the evidence, and only then does the
            // flow admit the request. Below the route's level it signs nothing.
            let expected = ceremony_nonce
                .as_deref()
                .and_then(aalgate_auth::signing::b64_32)
                .and_then(|n| {
                    aalgate_auth::signing::challenge_of(
                        &b,
                        &n,
                        &flow.method,
                        &self.signed_path(&flow),
                    )
                })
                .map(|c| aalgate_auth::signing::b64(&c));
            if v.aal >= flow.aal && expected.is_some() && resp.challenge() == expected {
                let (ad, cd, sig) = resp.signed_parts();
                let path = self.signed_path(&flow);
                let evidence = aalgate_auth::signing::Evidence {
                    v: 1,
                    method: flow.method.clone(),
                    path: path.clone(),
                    digest: b.digest.clone(),
                    body: b.body,
                    ceremony_nonce: ceremony_nonce.clone().unwrap_or_default(),
                    credential_id: v.credential_id.clone(),
                    authenticator_data: aalgate_auth::signing::b64(ad),
                    client_data_json: aalgate_auth::signing::b64(cd),
                    signature: aalgate_auth::signing::b64(sig),
                };
                // No evidence on record, no signature: the request is not admitted, and the
                // flow (with what it keeps) goes back, so one more touch can sign it.
                let recorded = self
                    .audit
                    .record(&crate::audit::Event {
                        time: crate::audit::now_rfc3339(),
                        event: "request_signed",
                        request_id: Some(&ctx.request_id),
                        user: Some(&user.id),
                        app: Some(&flow.app),
                        method: Some(&flow.method),
                        path: Some(path),
                        aal: Some(v.aal.number()),
                        credential: Some(&v.audit_id),
                        evidence: Some(evidence),
                        ..Default::default()
                    })
                    .await;
                flow.binding = Some(b);
                if recorded {
                    self.metrics.signed_requests.inc();
                } else {
                    tracing::error!(request_id = %ctx.request_id, user = %user.id, "the audit log could not record request_signed (queue full, writer gone or sink failing): the request is not signed, and its flow is kept for another touch");
                    let left = crate::state::FLOW_TTL.saturating_sub(now.since(flow.created));
                    if let Some(k) = pending.flow.as_deref() {
                        if let Err(e) = self.store.put_flow(k, &flow, left).await {
                            return self
                                .store_down(session, ctx, &e, "sign-in: store error")
                                .await;
                        }
                    }
                    return self
                        .json_error(session, ctx, Outcome::AuditUnavailable, MSG_NOT_RECORDED)
                        .await;
                }
            } else {
                tracing::info!(request_id = %ctx.request_id, user = %user.id, "per-request ceremony below the route's level or unbound: the request is not signed");
            }
        }
        self.start_session(
            session,
            ctx,
            &user,
            v.aal,
            v.amr.clone(),
            &v.audit_id,
            v.kind,
            &flow,
        )
        .await
    }

    /// A new session record for `user` (ending this browser's previous one), the auth-origin
    /// cookie, and the way back to the kept URL.
    #[allow(clippy::too_many_arguments)]
    #[allow(
        clippy::too_many_lines,
        reason = "ends the previous session, then starts one: two halves of one step"
    )]
    async fn start_session(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        user: &User,
        aal: Aal,
        amr: Vec<String>,
        credential: &str,
        kind: CredentialKind,
        flow: &Flow,
    ) -> Result<bool> {
        let now = self.clock.now();
        // The previous session of this browser ends: replaced (same person) or switched.
        match self.current(session, ctx).await {
            Ok(Some((handle, record, old))) => {
                let why = if old.user != user.id {
                    crate::state::SessionEnd::SwitchUser
                } else {
                    crate::state::SessionEnd::Replaced
                };
                let ended = self
                    .end_session(ctx, &handle, true, &record, &old, why, None, now)
                    .await;
                if let Err(e) = ended {
                    // The previous person's session must end before a new one starts.
                    return self
                        .store_down(
                            session,
                            ctx,
                            &e,
                            "sign-in: could not end the previous session",
                        )
                        .await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "sign-in: store error")
                    .await;
            }
        }
        // One record serves every app: it lives as long as the loosest app allows at this level
        // (each app's own limit decides admission); a reload applies to it from the next
        // request, but never makes the record itself live longer than it was written for.
        let limits = crate::ops::loosest(&ctx.policy).get(aal);
        let s = UserSession {
            user: user.id.clone(),
            aal,
            amr,
            credential: Some(credential.to_string()),
            auth_time: now,
            last_auth: now,
            last_seen: now,
            // Kept a flow's lifetime past the absolute limit (which the gateway enforces from
            // `auth_time`), so a form sent right at the limit is still known to be this
            // person's.
            expires_at: now.plus(limits.max_session_age + crate::state::FLOW_TTL),
        };
        let record = SessionId::generate().key();
        if let Err(e) = self.store.insert(&record, &s).await {
            return self
                .store_down(session, ctx, &e, "sign-in: store error")
                .await;
        }
        self.metrics
            .session_starts
            .with_label_values(&[&aal.number().to_string(), kind.as_str()])
            .inc();
        let handle = SessionId::generate();
        let host = ctx.host.clone();
        if let Err(e) = self
            .store
            .link(&handle.key(), &record, &host, s.expires_at)
            .await
        {
            return self
                .store_down(session, ctx, &e, "sign-in: store error")
                .await;
        }
        ctx.session = Some(s.clone());
        let set = cookie(Self::cookie_name(ctx), &handle.to_cookie(), ctx.tls, false);
        let redirect = match self.redirect_for(&record, &s, flow, true).await {
            Ok(r) => r,
            Err(e) => {
                return self
                    .store_down(session, ctx, &e, "sign-in: store error")
                    .await;
            }
        };
        ctx.outcome = Outcome::SignedIn;
        let body = serde_json::json!({ "redirect": redirect });
        self.send(
            session,
            ctx,
            Reply::json(200, body.to_string()).header("set-cookie", set),
        )
        .await
    }

    /// Where the browser goes after a flow: the kept URL on this host, or the app host's
    /// handoff with a one-time code. `touched`: a key was touched in this flow, so a kept form
    /// is sent at once; otherwise its owner confirms it first. The flow's own request is
    /// admitted once, even if a short `max_age` passes on the way back.
    async fn redirect_for(
        &self,
        record: &SessionKey,
        s: &UserSession,
        flow: &Flow,
        touched: bool,
    ) -> std::result::Result<String, DirectoryError> {
        let window = flow.max_age_secs.is_some() || flow.binding.is_some();
        if let (true, None, Some(browser)) = (window, &flow.kept, &flow.browser) {
            let key =
                crate::state::admission_key(record, &flow.host, browser, &flow.method, &flow.url);
            // A per-request grant carries the request it signed, for the upstream.
            let grant = match &flow.binding {
                Some(b) => serde_json::to_vec(b).unwrap_or_default(),
                None => b"1".to_vec(),
            };
            self.store
                .kv_put(
                    crate::state::ADMISSIONS,
                    &key,
                    &grant,
                    Some(crate::state::ADMISSION_TTL),
                )
                .await?;
        }
        // A kept form is sent from the app host once the session is there.
        let url = match flow.kept.as_deref() {
            Some(k) => {
                if let Some(token) = Token::parse(k) {
                    let mark = crate::resume::Resumable {
                        record: record.as_str().to_string(),
                        touched,
                        at: self.clock.now(),
                        binding: flow.binding.clone(),
                    };
                    self.store
                        .kv_put(
                            crate::resume::RESUMABLE,
                            &token.hash(),
                            &serde_json::to_vec(&mark).unwrap_or_default(),
                            Some(crate::resume::KEPT_TTL),
                        )
                        .await?;
                }
                format!("/.aalgate/resume?kept={k}")
            }
            // A popup opened by a script call: it closes itself, and the script's retry (not
            // the popup) is the request the flow admits.
            None if flow.script => "/.aalgate/done".to_string(),
            None => safe_path(&flow.url),
        };
        if HostPort::parse(&flow.host).is_ok_and(|h| self.is_auth_host(&h)) {
            return Ok(url);
        }
        // No browser to bind a code to (after enrollment): go to the app, whose own sign-in
        // flow (bound to this browser) then hands the session over without a ceremony.
        if flow.browser.is_none() {
            return Ok(format!(
                "{}://{}{}",
                self.service().scheme,
                flow.host,
                safe_path(&flow.url)
            ));
        }
        let code = self
            .service()
            .dir
            .put_code(&Handoff {
                record: record.as_str().to_string(),
                host: flow.host.clone(),
                url,
                expires_at: s.expires_at,
                browser: flow.browser.clone(),
            })
            .await?;
        Ok(format!(
            "{}://{}/.aalgate/handoff?code={}",
            self.service().scheme,
            flow.host,
            code.expose()
        ))
    }

    /// Single sign-on without a ceremony: a redirect (302) to the kept URL or the handoff.
    async fn hand_off(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        record: &SessionKey,
        s: &UserSession,
        flow: &Flow,
        extra: Vec<(&'static str, String)>,
    ) -> Result<bool> {
        match self.redirect_for(record, s, flow, false).await {
            Ok(to) => {
                ctx.outcome = Outcome::Handoff;
                let mut r = Reply::html(
                    302,
                    pages::page("Signed in", "<p>Taking you back.</p>", &ctx.request_id),
                )
                .header("location", to);
                for (n, v) in extra {
                    r = r.header(n, v);
                }
                self.send(session, ctx, r).await
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "handoff: store error");
                self.error(session, ctx, Outcome::StoreUnavailable).await
            }
        }
    }

    /// `GET /.aalgate/handoff?code=...` on an app host: the code becomes this host's own
    /// cookie handle, then the browser goes to the kept URL.
    pub(crate) async fn handoff(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let code = query_param(session.req_header().uri.query(), "code").and_then(Token::parse);
        let now = self.clock.now();
        let taken: Option<Handoff> = match code {
            None => None,
            Some(c) => match self.service().dir.take_code(&c).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "handoff: store error");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            },
        };
        // The code works only on its host, in the browser whose request started the flow
        // (its binding cookie): a code sent to someone else cannot swap their session.
        let Some(h) = taken.filter(|h| {
            h.host == ctx.host
                && h.expires_at > now
                && h.browser
                    .as_ref()
                    .is_some_and(|b| self.is_bound_browser(session, ctx, b))
        }) else {
            ctx.outcome = Outcome::BadHandoff;
            let reply = Reply::html(
                400,
                pages::page(
                    "Sign-in link not valid",
                    "<p>This sign-in link was used already, expired, or belongs to another site. Go back to the application and open the page again.</p>",
                    &ctx.request_id,
                ),
            );
            return self.send(session, ctx, reply).await;
        };
        let Some(record) = SessionKey::from_hex(&h.record) else {
            return self.error(session, ctx, Outcome::BadHandoff).await;
        };
        // A previous handle of this browser on this host is replaced.
        if let Ok(Some((old, _, _))) = self.current(session, ctx).await {
            self.sessions.remove(&old);
            let _ = self.store.unlink(&old).await;
        }
        let handle = SessionId::generate();
        if let Err(e) = self
            .store
            .link(&handle.key(), &record, &ctx.host, h.expires_at)
            .await
        {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "handoff: store error");
            return self.error(session, ctx, Outcome::StoreUnavailable).await;
        }
        ctx.outcome = Outcome::Handoff;
        let reply = Reply::html(
            302,
            pages::page("Signed in", "<p>Taking you back.</p>", &ctx.request_id),
        )
        .header("location", safe_path(&h.url))
        .header(
            "set-cookie",
            cookie(Self::cookie_name(ctx), &handle.to_cookie(), ctx.tls, false),
        );
        self.send(session, ctx, reply).await
    }

    /// `GET /.aalgate/logout`, or a POST without a valid token (e.g. the app's own sign-out
    /// button): a confirmation page whose form carries the token.
    pub(crate) async fn logout_page(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (bind, set_bind) = self.binding(session, ctx);
        let body = format!(
            "<p>Sign out of every application behind this gateway on this browser?</p>\
             <form method=\"post\" action=\"/.aalgate/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&csrf_of(bind.expose()))
        );
        let mut reply = Reply::html(200, pages::page("Sign out", &body, &ctx.request_id));
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        ctx.outcome = Outcome::LogoutPage;
        self.send(session, ctx, reply).await
    }

    /// Whether a logout POST is same-origin and carries the token (header or form field).
    pub(crate) async fn logout_allowed(&self, session: &mut Session, ctx: &Ctx) -> bool {
        self.checked_post(session, ctx).is_some() || self.form_post(session, ctx).await.is_some()
    }

    /// `GET /.aalgate/breakglass` (any host): the emergency access form.
    pub(crate) async fn breakglass_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        problem: Option<&str>,
    ) -> Result<bool> {
        let (bind, set_bind) = self.binding(session, ctx);
        let app = self
            .app_of_host(ctx)
            .unwrap_or_else(|| "the applications".into());
        let problem = problem
            .map(|p| {
                format!(
                    "<p id=\"status\" role=\"alert\" class=\"error\">{}</p>",
                    escape(p)
                )
            })
            .unwrap_or_default();
        let body = format!(
            "<p><strong>Emergency access</strong> to {} for when normal sign-in is impossible. It is recorded, \
             IT and security are alerted at once, it ends automatically, and every use is reviewed.</p>{problem}\
             <form method=\"post\" action=\"/.aalgate/breakglass\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"code\">Emergency code (from the sealed envelope)</label><input id=\"code\" name=\"code\" autocomplete=\"off\" spellcheck=\"false\" required>\
             <label for=\"person\">Your full name</label><input id=\"person\" name=\"person\" autocomplete=\"name\" required>\
             <label for=\"reason\">Reason</label><input id=\"reason\" name=\"reason\" required>\
             <p><button type=\"submit\">Start emergency access</button></p></form>",
            escape(&app),
            escape(&csrf_of(bind.expose()))
        );
        let mut reply = Reply::html(
            if problem.is_empty() { 200 } else { 400 },
            pages::page("Emergency access", &body, &ctx.request_id),
        );
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        ctx.outcome = Outcome::BreakglassPage;
        self.send(session, ctx, reply).await
    }

    pub(crate) fn app_of_host(&self, ctx: &Ctx) -> Option<String> {
        HostPort::parse(&ctx.host)
            .ok()
            .and_then(|h| ctx.policy.app_for_host(&h).map(|a| a.name.clone()))
    }

    /// `POST /.aalgate/breakglass`: checks the code (argon2), then a break-glass session on
    /// this host, capped at the code's TTL. Every use and failure is audited (a use also to the
    /// local file, before the code is marked used) and alerted; failures are throttled per
    /// client address (IPv6: per /64), and at most two checks run at once.
    #[allow(
        clippy::too_many_lines,
        reason = "a break-glass use: throttle, argon2, audit, alert, session; moves to endpoints/breakglass (issue 15 item 3)"
    )]
    pub(crate) async fn breakglass_use(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let svc = self.service();
        let ip = self.client_ip(session);
        let app = self.app_of_host(ctx).unwrap_or_else(|| "-".into());
        let busy = |this: &Self, ctx: &mut Ctx, why: Outcome| {
            ctx.outcome = why;
            this.audit_auth(
                ctx,
                "breakglass_failure",
                None,
                None,
                None,
                Some(why.label()),
            );
            Reply::html(
                429,
                pages::page(
                    "Emergency access",
                    "<p>Too many attempts from this device. Wait 15 minutes, or call IT.</p>",
                    &ctx.request_id,
                ),
            )
        };
        if svc.emergencies.throttled(ip) {
            let reply = busy(self, ctx, Outcome::Throttled);
            return self.send(session, ctx, reply).await;
        }
        let Some(fields) = self.form_post(session, ctx).await else {
            return self
                .breakglass_page(session, ctx, Some("This form expired. Fill it in again."))
                .await;
        };
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let (typed, person, reason) = (get("code"), get("person"), get("reason"));
        // Printable text only: no control or bidi/format characters that could disguise a
        // report line.
        let printable = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && !s.chars().any(|c| {
                    c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
                })
        };
        if !printable(&person) || !printable(&reason) {
            return self
                .breakglass_page(session, ctx, Some("Enter your full name and the reason."))
                .await;
        }
        // Counted before the slow check, so parallel guesses are throttled too: one over the
        // limit (sent alongside others before the first failed) is refused here.
        let failures = svc.emergencies.fail(ip);
        if failures > crate::breakglass::MAX_FAILURES {
            let reply = busy(self, ctx, Outcome::Throttled);
            return self.send(session, ctx, reply).await;
        }
        let now = self.clock.now();
        let cfg = svc.breakglass.clone();
        let joined = |e| Error::because(ErrorType::InternalError, "break-glass check", e);
        let found = tokio::task::spawn_blocking(move || crate::breakglass::candidate(&cfg, &typed))
            .await
            .map_err(joined)?;
        // Only a code that exists takes one of the two argon2 slots; any other answer waits as
        // long as a check takes, so the time tells nobody which ids exist, and a spray of made-up
        // codes cannot keep a genuine one from its check.
        let checked = match found {
            Ok(Some((code, secret))) => {
                let Ok(_permit) = svc.emergencies.checks.try_acquire() else {
                    let reply = busy(self, ctx, Outcome::Busy);
                    return self.send(session, ctx, reply).await;
                };
                let started = std::time::Instant::now();
                let ok = tokio::task::spawn_blocking(move || {
                    crate::breakglass::verify(&code, &secret).then_some(code)
                })
                .await
                .map_err(joined)?;
                svc.emergencies.timed_check(started.elapsed());
                Ok(ok)
            }
            Ok(None) => {
                // Two at a time, busy beyond, as real codes are.
                let Ok(_slot) = svc.emergencies.made_up.try_acquire() else {
                    let reply = busy(self, ctx, Outcome::Busy);
                    return self.send(session, ctx, reply).await;
                };
                tokio::time::sleep(svc.emergencies.check_time()).await;
                Ok(None)
            }
            Err(e) => Err(e),
        };
        let fail_local = |reason_text: &str| {
            let cfg = svc.breakglass.clone();
            let line = serde_json::json!({
                "time": crate::audit::now_rfc3339(), "event": "breakglass_failure", "reason": reason_text,
                "person": person, "app": app, "client_ip": ip.map(|i| i.to_string()), "failures": failures,
                "request_id": ctx.request_id });
            tokio::task::spawn_blocking(move || crate::breakglass::audit_local(&cfg, &line))
        };
        let code = match checked {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.audit_auth(
                    ctx,
                    "breakglass_failure",
                    None,
                    None,
                    None,
                    Some(&format!("wrong or used code; person: {person}")),
                );
                let _ = fail_local("wrong or used code").await;
                return self.breakglass_page(session, ctx, Some("That code is not valid (wrong, or already used). Check it and try again.")).await;
            }
            Err(e) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "break-glass codes file unusable");
                return self
                    .error(session, ctx, Outcome::BreakglassUnavailable)
                    .await;
            }
        };
        // Used on another instance already? Asked of the shared store when it answers; when it
        // does not, this instance's file is the record (the documented fallback).
        let shared = tokio::time::timeout(
            Duration::from_millis(500),
            self.store.kv_incr(
                "breakglass-used",
                &code.id,
                Duration::from_secs(400 * 86400),
            ),
        )
        .await;
        match shared {
            Ok(Ok(n)) if n > 1 => {
                self.audit_auth(
                    ctx,
                    "breakglass_failure",
                    None,
                    None,
                    Some(&code.id),
                    Some(&format!(
                        "code already used on another instance; person: {person}"
                    )),
                );
                let _ = fail_local("code already used on another instance").await;
                return self.breakglass_page(session, ctx, Some("That code is not valid (wrong, or already used). Check it and try again.")).await;
            }
            Ok(Ok(_)) => {}
            _ => {
                tracing::warn!(request_id = %ctx.request_id, "break-glass: session store unreachable; using the local codes file only")
            }
        }
        // No trail, no access: the local audit line is written (and fsynced) first.
        let line = serde_json::json!({
            "time": crate::audit::now_rfc3339(), "event": "breakglass", "code": code.id, "code_name": code.name,
            "person": person, "reason": reason, "app": app, "client_ip": ip.map(|i| i.to_string()),
            "ttl_secs": code.ttl_secs, "request_id": ctx.request_id });
        let cfg = svc.breakglass.clone();
        let logged =
            tokio::task::spawn_blocking(move || crate::breakglass::audit_local(&cfg, &line)).await;
        if !matches!(logged, Ok(Ok(()))) {
            tracing::error!(request_id = %ctx.request_id, "break-glass local audit failed; refusing (the code stays unused)");
            return self
                .error(session, ctx, Outcome::BreakglassUnavailable)
                .await;
        }
        let usage = crate::breakglass::Use {
            time: now,
            person: person.clone(),
            reason: reason.clone(),
            app: app.clone(),
            client_ip: ip.map(|i| i.to_string()),
            reviews: Vec::new(),
        };
        let (cfg, id) = (svc.breakglass.clone(), code.id.clone());
        let marked =
            tokio::task::spawn_blocking(move || crate::breakglass::mark_used(&cfg, &id, usage))
                .await;
        match marked {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.audit_auth(
                    ctx,
                    "breakglass_failure",
                    None,
                    None,
                    Some(&code.id),
                    Some("code used by a parallel attempt"),
                );
                return self.breakglass_page(session, ctx, Some("That code is not valid (wrong, or already used). Check it and try again.")).await;
            }
            _ => {
                tracing::error!(request_id = %ctx.request_id, "break-glass codes file unusable");
                return self
                    .error(session, ctx, Outcome::BreakglassUnavailable)
                    .await;
            }
        }
        svc.emergencies.succeeded(ip);
        let who = format!("breakglass:{}", code.id);
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "breakglass",
                request_id: Some(&ctx.request_id),
                user: Some(&who),
                app: Some(&app),
                credential: Some(&code.id),
                client_ip: ip.map(|i| i.to_string()),
                detail: Some(format!(
                    "code {} ({}); person: {}; reason: {}",
                    code.id, code.name, person, reason
                )),
                ..Default::default()
            },
        );
        self.metrics.breakglass_uses.inc();
        if let Some(hook) = svc.breakglass.webhook.clone() {
            let (app, code2, audit, rid) = (
                app.clone(),
                code.clone(),
                self.audit.clone(),
                ctx.request_id.clone(),
            );
            tokio::spawn(async move {
                // A few tries: the alert matters more than its latency.
                let mut last = String::new();
                for attempt in 0..3u64 {
                    match crate::breakglass::alert(&hook, &app, &code2, now).await {
                        Ok(s) if (200..300).contains(&s) => {
                            tracing::info!(status = s, "break-glass alert sent");
                            return;
                        }
                        Ok(s) => last = format!("status {s}"),
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_secs(2 * (attempt + 1))).await;
                }
                tracing::error!(error = %last, "break-glass alert failed");
                audit.emit(&crate::audit::Event {
                    time: crate::audit::now_rfc3339(),
                    event: "breakglass_alert_failed",
                    request_id: Some(&rid),
                    detail: Some(last),
                    ..Default::default()
                });
            });
        }
        let handle = SessionId::generate();
        svc.emergencies.insert(
            handle.key(),
            crate::breakglass::Emergency {
                code: code.id.clone(),
                name: code.name.clone(),
                person,
                host: ctx.host.clone(),
                started: now,
                expires: now.plus(Duration::from_secs(code.ttl_secs)),
            },
        );
        self.metrics
            .session_starts
            .with_label_values(&["1", "breakglass"])
            .inc();
        ctx.outcome = Outcome::Breakglass;
        let reply = Reply::html(
            302,
            pages::page(
                "Emergency access",
                "<p>Emergency access started.</p>",
                &ctx.request_id,
            ),
        )
        .header("location", "/".into())
        .header(
            "set-cookie",
            cookie(Self::cookie_name(ctx), &handle.to_cookie(), ctx.tls, false),
        );
        self.send(session, ctx, reply).await
    }

    /// A same-origin form POST with the page's token in its `csrf` field: its fields, or `None`.
    pub(crate) async fn form_post(
        &self,
        session: &mut Session,
        ctx: &Ctx,
    ) -> Option<Vec<(String, String)>> {
        let bind = self.same_origin_binding(session, ctx)?;
        let body = self.read_body(session).await?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let want = csrf_of(bind.expose());
        fields
            .iter()
            .any(|(k, v)| k == "csrf" && constant_eq(v.as_bytes(), want.as_bytes()))
            .then_some(fields)
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_auth(
        &self,
        ctx: &Ctx,
        event: &str,
        user: Option<&str>,
        aal: Option<Aal>,
        credential: Option<&str>,
        detail: Option<&str>,
    ) {
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event,
                request_id: Some(&ctx.request_id),
                user,
                aal: aal.map(|a| a.number()),
                credential,
                detail: detail.map(str::to_string),
                ..Default::default()
            },
        );
    }
}

/// Whether an existing session satisfies a flow without a new ceremony.
fn satisfies(s: &UserSession, flow: &Flow, now: Timestamp) -> bool {
    // The same edge as `decide`: at exactly `max_age` the authentication is too old. With
    // `<=` here, a request at exactly the limit was sent to step up and then handed off
    // silently, skipping the ceremony it was sent for (seen in CI on a `max_age: 1s` route).
    let fresh = flow
        .max_age_secs
        .is_none_or(|m| now.since(s.last_auth) < Duration::from_secs(m));
    s.aal >= flow.aal && fresh
}

/// The challenge kind metrics count a ceremony as (enrollment: a login).
fn challenge_kind(purpose: Purpose) -> &'static str {
    purpose.flow_kind().map_or("login", FlowKind::challenge)
}

fn new_user(id: &str, display: &str, aal: Aal, now: Timestamp) -> User {
    User {
        id: id.to_string(),
        display_name: if display.is_empty() {
            id.to_string()
        } else {
            display.to_string()
        },
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: aal,
        created: now,
        last_login: None,
        credentials: Vec::new(),
    }
}

/// The landing host after enrollment: the app's host on the auth origin's port when the app
/// host has none (the localhost demo serves both on one listener).
fn landing_host(app_host: &str, public: &HostPort) -> String {
    match HostPort::parse(app_host) {
        Ok(h) if h.port.is_none() && h.host == public.host => public.to_string(),
        Ok(h) if h.port.is_none() => match public.port {
            Some(p) => format!("{}:{p}", h.host),
            None => h.host.clone(),
        },
        _ => app_host.to_string(),
    }
}

/// A redirect target that stays on the host: a path starting with one `/` (never `//` or
/// `/\`, which browsers read as another host).
fn safe_path(url: &str) -> String {
    let ok = url.starts_with('/')
        && !url.starts_with("//")
        && !url.starts_with("/\\")
        && !url.bytes().any(|b| b.is_ascii_control() || b == b'\\');
    if ok {
        url.to_string()
    } else {
        "/".to_string()
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_stay_on_the_host() {
        assert_eq!(safe_path("/invoices?x=1"), "/invoices?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil",
            "https://evil",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert_eq!(safe_path(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn csrf_tokens_depend_on_the_binding() {
        let (a, b) = (Token::generate(), Token::generate());
        assert_ne!(csrf_of(a.expose()), csrf_of(b.expose()));
        assert_eq!(csrf_of(a.expose()), csrf_of(a.expose()));
        assert!(
            constant_eq(b"abc", b"abc")
                && !constant_eq(b"abc", b"abd")
                && !constant_eq(b"ab", b"abc")
        );
    }

    #[test]
    fn sessions_satisfy_flows_by_level_and_freshness() {
        let now = Timestamp(10_000);
        let s = UserSession {
            user: "u".into(),
            aal: Aal::Aal2,
            amr: vec![],
            credential: None,
            auth_time: Timestamp(9_000),
            last_auth: Timestamp(9_000),
            last_seen: now,
            expires_at: Timestamp(50_000),
        };
        let mut f = Flow {
            host: "h".into(),
            method: "GET".into(),
            url: "/".into(),
            need: FlowKind::Login,
            aal: Aal::Aal2,
            max_age_secs: None,
            app: "a".into(),
            created: now,
            user: None,
            browser: None,
            kept: None,
            binding: None,
            script: false,
        };
        assert!(satisfies(&s, &f, now));
        f.max_age_secs = Some(999);
        assert!(!satisfies(&s, &f, now));
        // Exactly at the limit is too old, as `decide` has it.
        f.max_age_secs = Some(1000);
        assert!(!satisfies(&s, &f, now));
        f.max_age_secs = Some(1001);
        assert!(satisfies(&s, &f, now));
        f.aal = Aal::Aal3;
        assert!(!satisfies(&s, &f, now));
    }

    #[test]
    fn landing_host_keeps_the_demo_port() {
        let public = HostPort {
            host: "localhost".into(),
            port: Some(8080),
        };
        assert_eq!(landing_host("localhost", &public), "localhost:8080");
        assert_eq!(landing_host("ehr.localhost", &public), "ehr.localhost:8080");
        assert_eq!(
            landing_host("ehr.example:9443", &public),
            "ehr.example:9443"
        );
    }
}
