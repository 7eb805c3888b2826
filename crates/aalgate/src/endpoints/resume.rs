//! `GET` and `POST /.aalgate/resume?token=...`: a kept form sent on after its sign-in, once,
//! to the app it was meant for (or a confirmation page first when nobody touched a key).

use std::time::Instant;

use aalgate_auth::Token;
use aalgate_policy::{admit, AdmissionFacts, Ceremony, HostPort, RequestKind};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::kept::{Resumable, KEPT, RESUMABLE};
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::preserve::{KeptRequest, NotKept};
use crate::state::{Ctx, Gateway, Reply};

pub(crate) const GONE: &str = "This form was already sent, or it waited too long (more than 10 minutes) and was discarded. Nothing was sent twice. Check the application before you submit it again.";

impl Gateway {
    /// A page about the form, with one way back to the app.
    pub(crate) async fn resume_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        title: &str,
        text: &str,
        outcome: Outcome,
    ) -> Result<bool> {
        ctx.outcome = outcome;
        let app = self
            .app_of_host(ctx)
            .unwrap_or_else(|| "the application".into());
        let reply = Reply::html(
            200,
            pages::page(
                title,
                &format!(
                    "<p>{}</p><p><a class=\"button\" href=\"/\">Go to {}</a></p>",
                    escape(text),
                    escape(&app)
                ),
                &ctx.request_id,
            ),
        );
        self.send(session, ctx, reply).await
    }

    /// `GET /.aalgate/resume?kept=...` on the app host: sends the kept form upstream, once,
    /// and streams the answer back; or, after a flow without a touch, asks first.
    pub(crate) async fn resume(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let q = session.req_header().uri.query().unwrap_or("").to_string();
        let param = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("kept="))
            .unwrap_or("");
        if let Some(why) = NotKept::parse(param) {
            let title = if why == NotKept::CrossSite {
                "Form not sent"
            } else {
                "Please submit the form again"
            };
            return self
                .resume_page(session, ctx, title, why.explain(), Outcome::ResumeNotKept)
                .await;
        }
        let Some(token) = Token::parse(param) else {
            return self
                .resume_page(session, ctx, "Nothing to send", GONE, Outcome::ResumeGone)
                .await;
        };
        self.resume_token(session, ctx, token, false).await
    }

    /// `POST /.aalgate/resume` (the confirmation page's button): a same-origin form with the
    /// page's token.
    pub(crate) async fn resume_confirmed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let Some(fields) = self.form_post(session, ctx).await else {
            return self.error(session, ctx, Outcome::Csrf).await;
        };
        let token = fields
            .iter()
            .find(|(k, _)| k == "kept")
            .and_then(|(_, v)| Token::parse(v));
        let Some(token) = token else {
            return self
                .resume_page(session, ctx, "Nothing to send", GONE, Outcome::ResumeGone)
                .await;
        };
        self.resume_token(session, ctx, token, true).await
    }

    #[allow(
        clippy::too_many_lines,
        reason = "a kept form's checks in order; moves to endpoints/resume (issue 15 item 3)"
    )]
    pub(crate) async fn resume_token(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        token: Token,
        confirmed: bool,
    ) -> Result<bool> {
        let now = self.clock.now();
        let loaded = match self
            .session_of(session.req_header(), ctx, now, crate::state::Lookup::Cached)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        };
        let Some((_, record, user_session)) = loaded else {
            // Not signed in here (yet): nothing is taken, the form stays for its owner.
            return self
                .resume_page(
                    session,
                    ctx,
                    "Sign in first",
                    "Open the application again and sign in; your form is kept for 10 minutes.",
                    Outcome::ResumeNoSession,
                )
                .await;
        };
        let sealed = match self.store.kv_get(KEPT, &token.hash()).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return self
                    .resume_page(session, ctx, "Nothing to send", GONE, Outcome::ResumeGone)
                    .await
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        };
        let kept = self
            .signin
            .sealer
            .open(&sealed, &token.hash())
            .and_then(|p| KeptRequest::decode(&p));
        let Some(kept) = kept else {
            let _ = self.store.kv_delete(KEPT, &token.hash()).await;
            tracing::warn!(request_id = %ctx.request_id, "resume: kept form does not decrypt (key changed?)");
            return self.resume_page(session, ctx, "Please submit the form again", "The form could not be restored, so it was not sent. Go back to it and submit it again.", Outcome::ResumeGone).await;
        };
        // Another browser or another app (host and port) finds nothing, and takes nothing.
        if !self.is_bound_browser(session, ctx, &kept.browser)
            || kept.host != self.canonical_host(&ctx.host)
        {
            return self
                .resume_page(session, ctx, "Nothing to send", GONE, Outcome::ResumeGone)
                .await;
        }
        if kept.user != user_session.user {
            // Never sent as someone else.
            let _ = self.store.kv_take(KEPT, &token.hash()).await;
            self.audit.emit_for(
                &ctx.audit,
                &crate::audit::Event {
                    time: crate::audit::now_rfc3339(),
                    event: "kept_form_discarded",
                    request_id: Some(&ctx.request_id),
                    user: Some(&user_session.user),
                    detail: Some(format!(
                        "a different person signed in; the form was {}'s",
                        kept.user
                    )),
                    ..Default::default()
                },
            );
            return self
                .resume_page(session, ctx, "Form discarded", "A different person signed in, so the form the previous person started was discarded and not sent.", Outcome::ResumeDiscarded)
                .await;
        }
        // The policy decides again, for this person, now.
        let Ok(host) = HostPort::parse(&ctx.host) else {
            return self.error(session, ctx, Outcome::BadHost).await;
        };
        let policy = ctx.policy.clone();
        let Ok(target) = aalgate_policy::normalize_target_with(
            kept.url.as_bytes(),
            policy.double_encoding(&host),
        ) else {
            return self.error(session, ctx, Outcome::BadPath).await;
        };
        let Some(m) = policy.lookup(&host, &kept.method, &target) else {
            return self.error(session, ctx, Outcome::UnknownHost).await;
        };
        let mark: Option<Resumable> = match self.store.kv_get(RESUMABLE, &token.hash()).await {
            Ok(m) => m.and_then(|m| serde_json::from_slice(&m).ok()),
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        };
        // The flow that kept this form ended in this very session.
        let ours = mark.as_ref().filter(|m| m.record == record.as_str());
        // The flow's own ceremony admits its request, even if a short `max_age` passed on the
        // way back; on a per-request route, only a ceremony that signed this very form does.
        let signed = ours
            .and_then(|m| m.binding.as_ref())
            .and_then(|b| self.opened_binding(b))
            .filter(|b| {
                aalgate_auth::signing::matches(
                    b,
                    &kept.method,
                    &kept.host,
                    &kept.url,
                    Some(&kept.body),
                )
            });
        let facts = AdmissionFacts {
            session: crate::state::session_kind(Some(&user_session)),
            request: RequestKind::Replay,
            ceremony: ours
                .filter(|m| now.since(m.at) <= crate::state::ADMISSION_TTL)
                .map(|_| Ceremony {
                    signed: signed.is_some(),
                }),
        };
        if !admit(&m.rule.access, &facts, now).allows() {
            let _ = self.store.kv_take(KEPT, &token.hash()).await;
            return self
                .resume_page(session, ctx, "Form not sent", "Your sign-in does not allow this form, so it was not sent. Go back and try again.", Outcome::ResumeDenied)
                .await;
        }
        // Sent at once only after a touch of the person's key in this flow; after a silent
        // handoff the person confirms it on a same-origin page first.
        if !confirmed && !ours.is_some_and(|m| m.touched) {
            return self.confirm_page(session, ctx, &token, &m.app.name).await;
        }
        // Taken once: a refresh, Back or a second tab finds nothing.
        match self.store.kv_take(KEPT, &token.hash()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return self
                    .resume_page(session, ctx, "Nothing to send", GONE, Outcome::ResumeGone)
                    .await
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        }
        let _ = self.store.kv_delete(RESUMABLE, &token.hash()).await;
        ctx.rule = Some(m.rule_index);
        ctx.target = Some(target);
        ctx.session = Some(user_session);
        ctx.session_key = Some(record);
        if let (Some(b), Some(s)) = (&signed, &ctx.session) {
            self.audit_admitted(ctx, &s.user, b);
        }
        ctx.signed = signed;
        self.send_kept(session, ctx, kept).await
    }

    /// "Send the form you were filling in to <app>?": a same-origin POST with a CSRF token.
    pub(crate) async fn confirm_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        token: &Token,
        app: &str,
    ) -> Result<bool> {
        let (bind, set_bind) = self.binding(session, ctx);
        let app = escape(app);
        let body = format!(
            "<p>Send the form you were filling in to {app}?</p>\
             <p>You were already signed in, so no key was touched. Send it only if you just submitted it yourself.</p>\
             <form method=\"post\" action=\"/.aalgate/resume\">\
             <input type=\"hidden\" name=\"kept\" value=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Send the form</button></form>\
             <p><a href=\"/\">Do not send it; go to {app}</a></p>",
            escape(token.expose()),
            escape(&crate::state::csrf_of(bind.expose())),
        );
        let mut reply = Reply::html(200, pages::page("Send your form?", &body, &ctx.request_id));
        if set_bind {
            reply = reply.header("set-cookie", crate::state::bind_cookie(&bind, ctx.tls));
        }
        ctx.outcome = Outcome::ResumeConfirm;
        self.send(session, ctx, reply).await
    }

    pub(crate) async fn send_kept(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        kept: KeptRequest,
    ) -> Result<bool> {
        let mut req = RequestHeader::build(kept.method.as_str(), kept.url.as_bytes(), None)?;
        for (n, v) in &kept.headers {
            req.insert_header(n.clone(), v.as_str())?;
        }
        req.insert_header("content-length", kept.body.len().to_string())?;
        // The cookies the browser sent with the form (path-scoped ones too: this request is on
        // `/.aalgate/`), plus today's; never the gateway's own.
        let current = crate::headers::app_cookies(&session.req_header().headers);
        if let Some(c) = crate::headers::merge_cookies(kept.cookies.as_deref(), current.as_deref())
        {
            req.insert_header("cookie", c)?;
        }
        if let Some(ua) = session.req_header().headers.get(http::header::USER_AGENT) {
            req.insert_header("user-agent", ua.clone())?;
        }
        // The same hygiene and identity as any forwarded request.
        self.upstream_request_filter(session, &mut req, ctx).await?;
        let peer = self.upstream_peer(session, ctx).await?;
        let connector = pingora::connectors::http::Connector::new(None);
        let t0 = Instant::now();
        let result = async {
            let (mut up, _) = connector.get_http_session(peer.as_ref()).await?;
            up.write_request_header(Box::new(req)).await?;
            up.write_request_body(Bytes::from(kept.body), true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            Ok::<_, Box<Error>>(up)
        }
        .await;
        let mut up = match result {
            Ok(up) => up,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: upstream failed");
                ctx.outcome = Outcome::ResumeUpstreamError;
                let reply = Reply::html(502, pages::page("The application did not answer", "<p>Your form was sent to the application, but it did not answer. It may or may not have been saved: check in the application before you submit it again.</p>", &ctx.request_id));
                return self.send(session, ctx, reply).await;
            }
        };
        let Some(resp) = up.response_header() else {
            return self.error(session, ctx, Outcome::Upstream).await;
        };
        let mut resp = resp.clone();
        self.response_filter(session, &mut resp, ctx).await?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.outcome = Outcome::Resumed;
        self.metrics
            .upstream_seconds
            .with_label_values(&[self.app_name(ctx)])
            .observe(t0.elapsed().as_secs_f64());
        let head = session.req_header().method == http::Method::HEAD;
        self.audit.settle(&ctx.audit).await;
        session.write_response_header(Box::new(resp), head).await?;
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: upstream body failed");
                    session.set_keepalive(None);
                    break;
                }
            }
        }
        session.write_response_body(None, true).await?;
        up.shutdown().await;
        Ok(true)
    }
}
