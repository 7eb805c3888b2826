//! Keeping a form across sign-in and sending it once afterwards (see [`crate::preserve`]).

use std::time::{Duration, Instant};

use aalgate_auth::Token;
use aalgate_policy::{decide, Decision, HostPort, Timestamp};
use aalgate_session::Flow;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::gateway::{Ctx, Gateway, Reply};
use crate::pages;
use crate::preserve::{KeptRequest, KEPT_HEADERS};

/// How long a kept form waits for its sign-in.
pub const KEPT_TTL: Duration = Duration::from_secs(600);
/// The marker of a form that was too large to keep.
pub const TOO_LARGE: &str = "too_large";

impl Gateway {
    /// Reads and seals the request body of a navigation that must sign in first. Returns the
    /// one-time token of the kept record, or [`TOO_LARGE`]. Errors: the store failed.
    pub(crate) async fn keep_request(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        flow: &Flow,
        bind: &Token,
    ) -> std::result::Result<String, String> {
        let limit = self.signin.body_limit;
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        // Not kept at all; the connection closes when the answer goes out.
                        return Ok(TOO_LARGE.into());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Ok(TOO_LARGE.into()),
            }
        }
        let req = session.req_header();
        let kept = KeptRequest {
            method: req.method.as_str().to_string(),
            url: flow.url.clone(),
            host: flow.host.clone(),
            headers: KEPT_HEADERS
                .iter()
                .filter_map(|n| {
                    req.headers
                        .get(*n)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| (n.to_string(), v.to_string()))
                })
                .collect(),
            body,
            user: flow.user.clone(),
            browser: bind.hash(),
        };
        let token = Token::generate();
        let plain = serde_json::to_vec(&kept).map_err(|e| e.to_string())?;
        let sealed = self
            .signin
            .sealer
            .seal(&plain, &token.hash())
            .map_err(|e| e.to_string())?;
        self.store
            .kv_put("kept", &token.hash(), &sealed, Some(KEPT_TTL))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(request_id = %ctx.request_id, bytes = kept.body.len(), "kept a submitted form across sign-in");
        Ok(token.expose().to_string())
    }

    async fn resume_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        title: &str,
        text: &str,
        outcome: &'static str,
    ) -> Result<bool> {
        ctx.outcome = outcome;
        let reply = Reply::html(
            200,
            pages::page(
                title,
                &format!("<p>{}</p>", pages::escape(text)),
                &ctx.request_id,
            ),
        );
        self.send(session, ctx, reply).await
    }

    /// `GET /.aalgate/resume?kept=...` on the app host: sends the kept form upstream, once,
    /// and streams the answer back.
    pub(crate) async fn resume(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let q = session.req_header().uri.query().unwrap_or("").to_string();
        let param = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("kept="))
            .unwrap_or("");
        if param == TOO_LARGE {
            return self
                .resume_page(session, ctx, "Please submit the form again", "You are signed in. The form you sent was too large to keep during sign-in, so it was not sent. Go back to the form (your browser's Back button), check it, and submit it again.", "resume_too_large")
                .await;
        }
        let gone = "This form was already sent, or it waited too long (more than 10 minutes) and was discarded. Nothing was sent twice. Check the application before you submit it again.";
        let Some(token) = Token::parse(param) else {
            return self
                .resume_page(session, ctx, "Nothing to send", gone, "resume_gone")
                .await;
        };
        let now = Timestamp::now();
        let loaded = match self.load_session(session.req_header(), ctx, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, 503, "store_unavailable").await;
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
                    "resume_no_session",
                )
                .await;
        };
        // Taken once: a refresh, Back or a second tab finds nothing.
        let sealed = match self.store.kv_take("kept", &token.hash()).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return self
                    .resume_page(session, ctx, "Nothing to send", gone, "resume_gone")
                    .await
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "resume: store error");
                return self.error(session, ctx, 503, "store_unavailable").await;
            }
        };
        let kept: Option<KeptRequest> = self
            .signin
            .sealer
            .open(&sealed, &token.hash())
            .and_then(|p| serde_json::from_slice(&p).ok());
        let Some(kept) = kept else {
            tracing::warn!(request_id = %ctx.request_id, "resume: kept form does not decrypt (key changed?)");
            return self.resume_page(session, ctx, "Please submit the form again", "The form could not be restored, so it was not sent. Go back to it and submit it again.", "resume_gone").await;
        };
        if !self.is_bound_browser(session, ctx, &kept.browser)
            || kept.host != self.canonical_host(&ctx.host)
        {
            return self
                .resume_page(session, ctx, "Nothing to send", gone, "resume_gone")
                .await;
        }
        if kept.user.as_ref().is_some_and(|u| *u != user_session.user) {
            // Never sent as someone else.
            self.audit.emit(&crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "kept_form_discarded",
                request_id: Some(&ctx.request_id),
                user: Some(&user_session.user),
                detail: Some("a different person signed in".into()),
                ..Default::default()
            });
            return self
                .resume_page(session, ctx, "Form discarded", "A different person signed in, so the form the previous person started was discarded and not sent.", "resume_discarded")
                .await;
        }
        // The policy decides again, for this person, now.
        let Ok(target) = aalgate_policy::normalize_target(kept.url.as_bytes()) else {
            return self.error(session, ctx, 400, "bad_path").await;
        };
        let Ok(host) = HostPort::parse(&ctx.host) else {
            return self.error(session, ctx, 400, "bad_host").await;
        };
        let policy = ctx.policy.clone();
        let Some(m) = policy.lookup(&host, &kept.method, &target) else {
            return self.error(session, ctx, 421, "unknown_host").await;
        };
        if crate::breakglass::is_emergency(&user_session)
            || decide(&m.rule.access, Some(&user_session.facts()), now) != Decision::Allow
        {
            return self
                .resume_page(session, ctx, "Form not sent", "Your sign-in does not allow this form, so it was not sent. Go back and try again.", "resume_denied")
                .await;
        }
        ctx.rule = Some(m.rule_index);
        ctx.target = Some(target);
        ctx.session = Some(user_session);
        ctx.session_key = Some(record);
        self.send_kept(session, ctx, kept).await
    }

    async fn send_kept(
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
        // The app's own cookies come from this request (the gateway's are removed below).
        for c in session.req_header().headers.get_all(http::header::COOKIE) {
            req.append_header("cookie", c.clone())?;
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
                ctx.outcome = "resume_upstream_error";
                let reply = Reply::html(502, pages::page("The application did not answer", "<p>Your form was sent to the application, but it did not answer. It may or may not have been saved: check in the application before you submit it again.</p>", &ctx.request_id));
                return self.send(session, ctx, reply).await;
            }
        };
        let Some(resp) = up.response_header() else {
            return self.error(session, ctx, 502, "upstream").await;
        };
        let mut resp = resp.clone();
        self.response_filter(session, &mut resp, ctx).await?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.outcome = "resumed";
        self.metrics
            .upstream_seconds
            .with_label_values(&[self.app_name(ctx)])
            .observe(t0.elapsed().as_secs_f64());
        let head = session.req_header().method == http::Method::HEAD;
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

    fn app_name<'a>(&self, ctx: &'a Ctx) -> &'a str {
        ctx.rule
            .and_then(|i| ctx.policy.rules().get(i))
            .map(|r| ctx.policy.app_of(r).name.as_str())
            .unwrap_or("-")
    }
}
