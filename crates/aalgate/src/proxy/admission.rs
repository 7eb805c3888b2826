//! Admission: the facts of a request (its session, its kind, a ceremony it completed) go to
//! `aalgate_policy::admit`, and its answer becomes a forwarded request, a flow (sign-in,
//! step-up, re-auth) or a refusal; and the watcher that ends a WebSocket with its session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_policy::admit::ceremony_would_admit;
use aalgate_policy::{
    admit, Admission, AdmissionFacts, Ceremony, HostPort, Person, Reach, RequestKind, StepUp,
    Timestamp,
};
use aalgate_session::{Flow, FlowId, FlowKind, Session as UserSession, SessionKey};
use pingora::prelude::*;

use super::Gateway;
use crate::headers;
use crate::http::has_body;
use crate::http::{browser_binding, read_limited_within, BodyError, Exchange};
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::{
    admission_key, session_kind, subject, Lookup, SessionEnd, ADMISSIONS, MAX_FLOW_BYTES,
    TOMBSTONES,
};
use crate::state::{
    BodyCheck, Ctx, Known, Lives, Reply, Upgraded, FLOW_TTL, TOUCH_INTERVAL, WEBSOCKET_SILENCE,
};

impl Gateway {
    /// Phase 4: the route's rule, the session the cookie names, and [`admit`]'s answer: the
    /// request goes upstream (`Ok(false)`), or is answered here.
    #[allow(
        clippy::too_many_lines,
        reason = "the admission phase: load, time, admit, answer; its answers are methods of their own"
    )]
    pub(crate) async fn admission(&self, x: &mut Exchange<'_>, host: &HostPort) -> Result<bool> {
        let policy = x.ctx.policy.clone();
        let method = x.session.req_header().method.as_str().to_string();
        let Some(m) = x
            .ctx
            .target
            .as_ref()
            .and_then(|t| policy.lookup(host, &method, t))
        else {
            return x.error(Outcome::UnknownHost).await;
        };
        x.ctx.rule = Some(m.rule_index);
        let access = &m.rule.access;
        match access.require {
            aalgate_policy::Requirement::Deny => return x.error(Outcome::Denied).await,
            // Public routes never touch the store, so they keep working when it is down.
            aalgate_policy::Requirement::Public => {
                x.ctx.outcome = Outcome::Allow;
                return Ok(false);
            }
            _ => {}
        }

        let now = self.clock.now();
        let loaded = match self
            .session_of(x.session.req_header(), x.ctx, now, Lookup::Cached)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error: failing closed");
                return x.error(Outcome::StoreUnavailable).await;
            }
        };
        // A `last_seen` ahead of this clock means the clock was stepped back (or another
        // instance runs ahead): measure limits from the later of the two, never the earlier.
        let now = match &loaded {
            Some((_, _, s, _)) if s.last_seen > now => {
                self.clock.observe(s.last_seen);
                self.clock.now()
            }
            _ => now,
        };
        let upgrade = x
            .session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE);
        let request = if upgrade {
            RequestKind::WebSocket
        } else {
            RequestKind::Http
        };
        let mut facts = AdmissionFacts {
            session: session_kind(loaded.as_ref().map(|(_, _, s, _)| &**s)),
            request,
            ceremony: None,
            person: loaded.as_ref().map(|(_, _, s, a)| Person {
                user: &s.user,
                groups: &a.groups,
                reach: Reach::Unknown,
            }),
        };
        let mut admission = admit(access, &facts, now);
        // A step-up: asked for only if one of the person's keys could pass it (looked up
        // only now, so an admitted request costs no directory read).
        if let (Admission::StepUp { fresh, .. }, Some(p)) = (admission, facts.person.as_mut()) {
            if let Ok(Some(u)) = self.signin.dir.user(p.user).await {
                let keys = u
                    .max_aal()
                    .map(|a| a.min(u.proofed_aal.max(aalgate_policy::Aal::Aal2)));
                // Someone who signed in through an identity provider can log in there again
                // (or add a passkey, with `enroll_after_sso`) up to what it gives; never to
                // sign one request, which takes their own key.
                let provider = loaded
                    .as_ref()
                    .filter(|_| fresh != Some(aalgate_policy::StepUp::PerRequest))
                    .and_then(|(_, _, s, _)| s.credential.as_deref()?.strip_prefix("idp:"))
                    .and_then(|i| self.signin.federation.get(i))
                    .map(|i| i.cfg.aal.best());
                p.reach = Reach::Known(keys.max(provider));
                admission = admit(access, &facts, now);
            }
        }
        // The flow this request caused admits it once, even if `max_age` passed on the way
        // back (no step-up loop on a short `max_age`): looked for only where it would admit.
        if let Some((_, record, s, person)) = loaded
            .as_ref()
            .filter(|_| ceremony_would_admit(access, &facts, now))
        {
            let (bind, fresh) = browser_binding(x.session, x.ctx);
            if !fresh {
                let signed = self
                    .take_admission(x.session, x.ctx, record, &bind, &method)
                    .await;
                if let Some(signed) = signed {
                    facts.ceremony = Some(Ceremony {
                        signed: signed.is_some(),
                    });
                    admission = admit(access, &facts, now);
                    if admission == Admission::AllowAdmitted {
                        x.ctx.access = Some(person.clone());
                        return self.allow_admitted(x.ctx, record, s, signed);
                    }
                    tracing::warn!(request_id = %x.ctx.request_id, "an admission without a signature on a per-request route");
                }
            }
        }
        match admission {
            Admission::Allow => {
                if let Some((handle, key, s, person)) = loaded {
                    x.ctx.access = Some(person);
                    self.keep_alive(x.session, x.ctx, access, handle, key, s, now);
                }
                x.ctx.outcome = Outcome::Allow;
                Ok(false)
            }
            Admission::AllowEmergency => {
                if let Some((handle, _, s, _)) = loaded {
                    // A WebSocket of an emergency session ends with it: at the code's TTL or
                    // on *Sign out*, asked of this instance's memory (the store may be down).
                    let lives = Lives::Emergency(self.signin.clone());
                    self.watch_if_upgrade(x.session, x.ctx, &handle, s.expires_at, lives, now);
                    x.ctx.session = Some(s);
                }
                x.ctx.outcome = Outcome::Allow;
                Ok(false)
            }
            // Reached only with a ceremony, above.
            Admission::AllowAdmitted => x.error(Outcome::Denied).await,
            Admission::BreakglassNotAllowed => {
                x.ctx.session = loaded.map(|(_, _, s, _)| s);
                x.error(Outcome::BreakglassNotAllowed).await
            }
            Admission::Deny => {
                x.ctx.known = loaded.as_ref().map(|(_, _, s, _)| Known::live(s));
                x.error(Outcome::Denied).await
            }
            Admission::Forbidden { session_over } => {
                // A session past its limits: whoever is at the keyboard may be someone else,
                // so the page names nobody (and the audit line says whose session it was).
                x.ctx.known = loaded.as_ref().map(|(_, _, s, _)| {
                    if session_over {
                        Known::Ended {
                            user: s.user.clone(),
                        }
                    } else {
                        Known::live(s)
                    }
                });
                let user = loaded
                    .as_ref()
                    .filter(|_| !session_over)
                    .map(|(_, _, s, _)| s.user.clone());
                self.forbidden(x, &m.app.display_name, user.as_deref())
                    .await
            }
            Admission::NoSuitableKey { aal } => {
                x.ctx.known = loaded.as_ref().map(|(_, _, s, _)| Known::live(s));
                x.no_suitable_key(&m.app.display_name, aal, "/").await
            }
            other => {
                x.ctx.known = loaded
                    .as_ref()
                    .map(|(_, _, s, _)| match other.ends_session() {
                        Some(_) => Known::Ended {
                            user: s.user.clone(),
                        },
                        None => Known::live(s),
                    });
                let app = m.app.name.clone();
                let rule = m.rule.id.clone();
                self.challenge_or_reauth(x, other, loaded, access, (&app, &rule), host, now)
                    .await
            }
        }
    }

    /// A session admitted: its idle clock advances (at most every [`TOUCH_INTERVAL`], off the
    /// request path), and a WebSocket upgrade is held to the session's end here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep_alive(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        access: &aalgate_policy::Access,
        handle: SessionKey,
        key: SessionKey,
        s: Arc<UserSession>,
        now: Timestamp,
    ) {
        let upgrade = session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE);
        // Not on a WebSocket upgrade (the page that opens it is recorded): a task spawned here
        // shifts pingora's timing toward reading the upstream's 101 before the request's empty
        // body, which tears the tunnel down (cloudflare/pingora#946); measured 5 of 40 runs of
        // the WebSocket test with it, 0 of 70 without.
        if !upgrade {
            self.note_use(ctx, &s.user, now);
        }
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
        if upgrade {
            // ...and, where the route has an `allow`, to the person's groups still meeting it.
            let until = aalgate_policy::admit::session_end(access, &subject(&s));
            // (`place` set both; without them nothing can be checked, so the socket ends.)
            let (until, target, host) = match (ctx.target.clone(), HostPort::parse(&ctx.host)) {
                (Some(t), Ok(h)) => (until, t, h),
                _ => (
                    now,
                    aalgate_policy::NormalizedTarget::root(),
                    self.public_host.clone(),
                ),
            };
            let route = crate::state::Route {
                policies: self.policies.clone(),
                host,
                method: session.req_header().method.as_str().to_string(),
                target,
            };
            let lives = Lives::Store(self.store.clone(), Arc::new(route));
            self.watch_if_upgrade(session, ctx, &handle, until, lives, now);
        }
        ctx.session_key = Some(key);
        ctx.session = Some(s);
    }

    /// Not admitted, but the browser can do something about it (sign in, step up, sign in
    /// again): a session that timed out ends first, then the flow starts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn challenge_or_reauth(
        &self,
        x: &mut Exchange<'_>,
        other: Admission,
        loaded: Option<crate::state::Loaded>,
        access: &aalgate_policy::Access,
        (app, rule): (&str, &str),
        host: &HostPort,
        now: Timestamp,
    ) -> Result<bool> {
        let per_request = access.step_up.is_some_and(StepUp::per_request);
        if let (Some(reason), Some((handle, record, s, _))) = (other.ends_session(), &loaded) {
            if matches!(other, Admission::FromTheFuture { .. }) {
                tracing::warn!(request_id = %x.ctx.request_id, user = %s.user, "session stamped in the future: clock stepped back or record corrupt; re-authentication required");
            }
            self.end_timed_out(x.ctx, handle, record, s, reason, app, now)
                .await;
        }
        if let Admission::StepUp { .. } = other {
            self.metrics.step_ups.with_label_values(&[app, rule]).inc();
        }
        let mut user = loaded.as_ref().map(|(_, _, s, _)| s.user.clone());
        if user.is_none() && matches!(other, Admission::Login { .. }) {
            user = self.tombstone(x.session.req_header(), x.ctx).await;
            x.ctx.known = user.clone().map(|user| Known::Ended { user });
        }
        self.challenge(x, other, &host.to_string(), app, user, per_request)
            .await
    }

    /// A signed-in person the app's or route's `allow` does not name: 403, with who they are
    /// signed in as and the way to sign in as someone else; no sign-in or step-up first.
    pub(crate) async fn forbidden(
        &self,
        x: &mut Exchange<'_>,
        app: &str,
        user: Option<&str>,
    ) -> Result<bool> {
        if headers::is_script_request(&x.session.req_header().headers) {
            return x
                .json_error(
                    Outcome::Forbidden,
                    &format!("Your account does not have access to {app}."),
                )
                .await;
        }
        x.ctx.outcome = Outcome::Forbidden;
        let who = match user {
            Some(u) => {
                let name = match self.signin.dir.user(u).await {
                    Ok(Some(p)) if !p.display_name.is_empty() => {
                        format!("{} ({u})", p.display_name)
                    }
                    _ => u.to_string(),
                };
                format!(
                    "<p>You are signed in as <strong>{}</strong>.</p>",
                    crate::pages::escape(&name)
                )
            }
            None => String::new(),
        };
        let whose = if user.is_some() {
            "Your account does"
        } else {
            "The account last signed in here does"
        };
        let body = format!(
            "<p>{whose} not have access to <strong>{}</strong>. If you need it, ask IT.</p>{who}\
             <p><a class=\"button\" href=\"/.aalgate/switch\">Sign in as someone else</a></p>\
             <p><a href=\"/.aalgate/logout\">Sign out</a></p>",
            crate::pages::escape(app)
        );
        let page = crate::pages::page("No access", &body, &x.ctx.request_id);
        x.send(Reply::html(403, page)).await
    }

    /// Takes the one-time admission this request's own flow left (its ceremony just
    /// completed): `None` when there is none; else the request binding the ceremony signed, if
    /// it signed this very request (without a body, checked now; with one, as the body
    /// streams, held back until it matches).
    pub(crate) async fn take_admission(
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
        let has_body = has_body(session);
        Some(signed.filter(|b| {
            b.body == has_body
                && (b.body || aalgate_auth::signing::matches(b, method, &host, &url, None))
        }))
    }

    /// Forwards a request its own flow's ceremony admitted (once).
    pub(crate) fn allow_admitted(
        &self,
        ctx: &mut Ctx,
        record: &SessionKey,
        s: &Arc<UserSession>,
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
        self.note_use(ctx, &s.user, self.clock.now());
        ctx.session = Some(s.clone());
        ctx.outcome = Outcome::AllowAdmitted;
        Ok(false)
    }

    /// Ends a session that timed out, once, so it is counted and audited once. For every app:
    /// the sign-in page must not find it and hand it back silently, and the tap that follows
    /// renews it for all of them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_timed_out(
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

    /// For a WebSocket upgrade: the connection is held to `until` on every frame, and a watcher
    /// closes it once the session is gone (checked once a second where it `lives`).
    pub(crate) fn watch_if_upgrade(
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

    /// Not allowed: keep where the browser was going under a one-time flow id, then send a
    /// navigation to the sign-in page, or a script call a 401 JSON naming what is needed.
    /// `per_request`: the route signs each request, so the flow is bound to this one.
    #[allow(clippy::too_many_arguments)]
    #[allow(
        clippy::too_many_lines,
        reason = "a flow's creation: URL bound, rate, binding, kept form, quota, then the answer"
    )]
    pub(crate) async fn challenge(
        &self,
        x: &mut Exchange<'_>,
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
            | Admission::Forbidden { .. }
            | Admission::NoSuitableKey { .. }
            | Admission::BreakglassNotAllowed => return x.error(Outcome::Denied).await,
        };
        let url = x
            .ctx
            .target
            .as_ref()
            .map(|t| t.path_and_query().into_owned())
            .unwrap_or_else(|| "/".into());
        if url.len() > crate::preserve::MAX_URL {
            self.metrics
                .flow_refusals
                .with_label_values(&["url_too_long"])
                .inc();
            return x.error(Outcome::UrlTooLong).await;
        }
        if let Err(retry) = self.take_flow_token(x.session) {
            return self.too_many_flows(x, retry).await;
        }
        // The flow remembers this browser (its binding cookie on this host) and the app's
        // configured host, never a port the client made up.
        let (bind, set_bind) = browser_binding(x.session, x.ctx);
        let flow = Flow {
            host: self.canonical_host(host),
            browser: Some(bind.hash()),
            kept: None,
            method: x.session.req_header().method.to_string(),
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
            script: headers::is_script_request(&x.session.req_header().headers),
        };
        let mut flow = flow;
        if crate::preserve::keeps(x.session.req_header().method.as_str())
            && !headers::is_script_request(&x.session.req_header().headers)
        {
            use crate::preserve::{evidence, Evidence, NotKept};
            // The app's origin as browsers see it: the scheme of `public_origin` (a TLS load
            // balancer may sit in front of a plain listener), the host and port they used.
            let own = format!("{}://{}", self.signin.scheme, x.ctx.host);
            let kept = match (evidence(&x.session.req_header().headers, &own), &flow.user) {
                (Evidence::Foreign, _) => Err(NotKept::CrossSite),
                (_, None) => Err(NotKept::Anonymous),
                (Evidence::SameOrigin, Some(person)) => {
                    let person = person.clone();
                    match self
                        .keep_request(x.session, x.ctx, &flow, &bind, &person, per_request)
                        .await
                    {
                        Ok(k) => k.map(|(token, binding)| {
                            flow.binding = binding;
                            token
                        }),
                        Err(crate::kept::KeepFailed::Body(o)) => return x.broken_body(o).await,
                        Err(crate::kept::KeepFailed::Store(e)) => {
                            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "could not keep the submitted form");
                            return x.error(Outcome::StoreUnavailable).await;
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
                tracing::info!(request_id = %x.ctx.request_id, reason = n.as_str(), "submitted form not kept across sign-in");
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
            let req = x.session.req_header();
            let own = format!("{}://{}", self.signin.scheme, x.ctx.host);
            let typed = req
                .headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                == Some("none");
            if !typed && evidence(&req.headers, &own) == Evidence::Foreign {
                // A page on another site cannot make a person sign a request.
                return x.refuse(Outcome::PerRequestForeign, "Start this from the application", &format!("This action in {app} needs your signature, and it did not come from {app} itself. Open {app} and start it there."))
                    .await;
            }
            let body = if has_body(x.session) {
                let Ok(_permit) = self.signin.reads.try_acquire() else {
                    return x.error(Outcome::Busy).await;
                };
                match read_limited_within(x.session, self.signin.body_limit, self.client_timeout)
                    .await
                {
                    Ok(b) => Some(b),
                    Err(BodyError::Broken(o)) => return x.broken_body(o).await,
                    Err(BodyError::TooLarge) => {
                        return x.refuse(Outcome::TooLargeToSign, "Too large to sign", "This request is larger than the gateway signs (preserve_body_limit). Ask IT to raise the limit for this application.")
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
            match self.charge_anonymous(size, self.client_ip(x.session)).await {
                Ok(Ok(())) => {}
                Ok(Err(full)) => return self.anonymous_quota_full(x, full).await,
                Err(e) => {
                    tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error while starting sign-in");
                    return x.error(Outcome::StoreUnavailable).await;
                }
            }
        }
        let id = FlowId::generate();
        if let Err(e) = self.store.put_flow(&id.key(), &flow, FLOW_TTL).await {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error while starting sign-in");
            return x.error(Outcome::StoreUnavailable).await;
        }
        x.ctx.outcome = Outcome::flow(need);
        self.metrics.flows.with_label_values(&[need.as_str()]).inc();
        self.metrics
            .challenges
            .with_label_values(&[need.challenge(), "issued"])
            .inc();
        // Ceremonies run on the auth origin; on the same host the link stays relative.
        let login_url = if self.on_auth_origin(x.ctx) {
            format!("/.aalgate/auth?flow={}", id.encode())
        } else {
            format!(
                "{}://{}/.aalgate/auth?flow={}",
                self.signin.scheme,
                self.public_host,
                id.encode()
            )
        };
        let reply = if headers::is_script_request(&x.session.req_header().headers) {
            let mut body = serde_json::json!({
                "error": "authentication_required",
                "need": need,
                "login_url": login_url,
                "request_id": x.ctx.request_id,
            });
            // What the route needs is told only to a person already known (a step-up or a
            // re-auth): before a session, that sign-in is needed is all anyone learns.
            if need != FlowKind::Login && need != FlowKind::Switch {
                body["aal"] = aal.as_str().into();
                body["max_age_seconds"] = max_age.map(|d| d.as_secs()).into();
            }
            Reply::json(401, body.to_string())
        } else {
            Reply::html(
                302,
                pages::page(
                    "Sign in required",
                    "<p>Redirecting to sign in.</p>",
                    &x.ctx.request_id,
                ),
            )
            .header("location", login_url)
        };
        let reply = if set_bind {
            reply.header("set-cookie", crate::state::bind_cookie(&bind, x.ctx.tls))
        } else {
            reply
        };
        x.send(reply).await
    }
}

/// Watches a quiet WebSocket connection: once a second it checks the session's absolute end
/// and its existence; when the session is over it shuts the client socket down, so pingora's
/// proxy loop ends and the connection closes at once, frames or not.
pub(crate) fn watch_upgrade(
    clock: Arc<crate::clock::Clock>,
    lives: Lives,
    handle: SessionKey,
    host: String,
    until: Timestamp,
    fd: i32,
    over: Arc<std::sync::Mutex<bool>>,
) {
    tracing::debug!(fd, "WebSocket watched");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::cache::SESSION_FRESHNESS).await;
            if over.lock().map(|o| *o).unwrap_or(true) {
                return;
            }
            let now = clock.now();
            let ended = if now >= until {
                tracing::info!("WebSocket closed: the session reached its end");
                true
            } else {
                match lives.alive(&handle, &host, now).await {
                    Ok(true) => false,
                    Ok(false) => {
                        tracing::info!(
                            "WebSocket closed: the session ended or no longer may use the route"
                        );
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "WebSocket closed: the session store did not answer");
                        true
                    }
                }
            };
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
