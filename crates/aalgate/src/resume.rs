//! Keeping a form across sign-in and sending it once afterwards (see [`crate::preserve`]).

use std::time::{Duration, Instant};

use aalgate_auth::Token;
use aalgate_policy::{admit, AdmissionFacts, Ceremony, HostPort, RequestKind, Timestamp};
use aalgate_session::{Flow, RequestBinding};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::preserve::{KeptRequest, NotKept, KEPT_HEADERS};
pub(crate) use crate::state::QuotaFull;
use crate::state::ANON_BUCKET_SECS;
use crate::state::{Ctx, Gateway, Reply};

/// How long a kept form waits for its sign-in.
pub const KEPT_TTL: Duration = Duration::from_secs(600);
/// Store namespace of kept forms (encrypted).
const KEPT: &str = "kept";
/// Store namespace of the marks a completed flow leaves for its kept form.
pub(crate) const RESUMABLE: &str = "resumable";
/// Store namespace of the kept-byte counters (store-wide and per person).
const QUOTA: &str = "keptq";
/// Quota counters count the bytes kept in 2-minute buckets; the last 6 cover a kept form's
/// whole life (10 minutes), so their sum bounds what the store can hold.
const BUCKET_SECS: u64 = 120;
const BUCKETS: u64 = 6;

/// What a completed flow leaves for its kept form.
#[derive(Serialize, Deserialize)]
pub(crate) struct Resumable {
    /// The session record the flow ended in.
    pub record: String,
    /// Whether the person touched a key in this flow (else the form waits for a confirmation).
    pub touched: bool,
    /// When the flow completed.
    pub at: Timestamp,
    /// The request the flow's per-request ceremony signed (this kept form).
    #[serde(default)]
    pub binding: Option<RequestBinding>,
}

/// The anonymous-state counters: the last 6 buckets of [`ANON_BUCKET_SECS`] cover a flow's or
/// a ceremony's whole life (10 minutes), so charges age out within 12 minutes of a flood's end.
const ANON_BUCKETS: u64 = 6;
/// Each client (an IPv4 address, an IPv6 /48) may hold this share of `anonymous_state_quota`,
/// and at least [`MIN_CLIENT_SHARE`] (never over a quarter): one address alone cannot use the
/// quota up.
const CLIENT_SHARE: u64 = 16;
const MIN_CLIENT_SHARE: u64 = 64 * 1024;

/// The bytes one client may hold of `quota`.
fn client_share(quota: u64) -> u64 {
    (quota / CLIENT_SHARE).max(MIN_CLIENT_SHARE.min(quota / 4))
}

impl Gateway {
    /// Bytes kept in the last [`BUCKETS`] buckets under `prefix`.
    async fn kept_bytes(&self, prefix: &str, now: u64) -> Result<u64, aalgate_session::StoreError> {
        let bucket = now / BUCKET_SECS;
        self.counted(prefix, bucket.saturating_sub(BUCKETS - 1)..=bucket)
            .await
    }

    /// Charges `bytes` of state stored for nobody known yet (a sign-in flow, a ceremony) to
    /// `client`'s share and to the store-wide `anonymous_state_quota`, across every instance.
    /// `Ok(Err(_))`: one of them is used up; store nothing.
    ///
    /// A full store is refused before anything is written, so a flood from many addresses
    /// creates no per-client counters then. Otherwise each counter is added to first and
    /// compared after, so concurrent charges on several instances never overshoot it; a refused
    /// charge stays counted until its bucket ages out (the client's own counter, or a store that
    /// is full anyway). The store-wide charge includes the client counter's own record.
    pub(crate) async fn charge_anonymous(
        &self,
        bytes: usize,
        client: Option<std::net::IpAddr>,
    ) -> Result<Result<(), QuotaFull>, aalgate_session::StoreError> {
        const COUNTER_BYTES: u64 = 128;
        let bytes = bytes as u64;
        let quota = self.signin.anonymous_quota;
        let bucket = Timestamp::wall().0 / ANON_BUCKET_SECS;
        let earlier = bucket.saturating_sub(ANON_BUCKETS - 1)..=bucket.saturating_sub(1);
        let ttl = Duration::from_secs(ANON_BUCKETS * ANON_BUCKET_SECS + 60);
        let refused = |full: QuotaFull| {
            let reason = match full {
                QuotaFull::Client => "client_quota",
                QuotaFull::Store => "quota",
            };
            self.metrics
                .flow_refusals
                .with_label_values(&[reason])
                .inc();
            Ok(Err(full))
        };
        let store_before = self.counted("anon", earlier.clone()).await?;
        let store_now = self.counted("anon", bucket..=bucket).await?;
        let charge = bytes.saturating_add(COUNTER_BYTES);
        if store_before
            .saturating_add(store_now)
            .saturating_add(charge)
            > quota
        {
            return refused(QuotaFull::Store);
        }
        if let Some(ip) = client {
            let share = client_share(quota);
            let prefix = format!("anon@{}", crate::limits::site_key(ip));
            let now_total = self
                .store
                .kv_add(QUOTA, &format!("{prefix}:{bucket}"), bytes, ttl)
                .await?;
            let before = self.counted(&prefix, earlier).await?;
            if before.saturating_add(now_total) > share {
                return refused(QuotaFull::Client);
            }
        }
        let now_total = self
            .store
            .kv_add(QUOTA, &format!("anon:{bucket}"), charge, ttl)
            .await?;
        if store_before.saturating_add(now_total) > quota {
            return refused(QuotaFull::Store);
        }
        Ok(Ok(()))
    }

    /// The sum of the counters `prefix:b` for the buckets `b` in `buckets`.
    async fn counted(
        &self,
        prefix: &str,
        buckets: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, aalgate_session::StoreError> {
        let mut sum = 0u64;
        for b in buckets {
            if let Some(v) = self.store.kv_get(QUOTA, &format!("{prefix}:{b}")).await? {
                sum = sum.saturating_add(
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX),
                );
            }
        }
        Ok(sum)
    }

    /// Reads and seals the request body of a navigation that must sign in first, for
    /// `person`. Returns the one-time token of the kept record (and, when `bound`, the binding
    /// a per-request ceremony signs), or why it was not kept. Errors: the store failed.
    pub(crate) async fn keep_request(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        flow: &Flow,
        bind: &Token,
        person: &str,
        bound: bool,
    ) -> std::result::Result<std::result::Result<(String, Option<RequestBinding>), NotKept>, String>
    {
        // Each read holds up to the body limit in memory: at most this many at once.
        let Ok(_permit) = self.signin.reads.try_acquire() else {
            return Ok(Err(NotKept::Busy));
        };
        let Some(body) = self.read_body_bounded(session).await else {
            return Ok(Err(NotKept::TooLarge));
        };
        let req = session.req_header();
        let binding = bound.then(|| {
            self.sealed_binding(aalgate_auth::signing::bind(
                req.method.as_str(),
                &flow.host,
                &flow.url,
                Some(&body),
            ))
        });
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
            cookies: crate::headers::app_cookies(&req.headers),
            body,
            user: person.to_string(),
            browser: bind.hash(),
        };
        let token = Token::generate();
        let body_len = kept.body.len();
        let plain = kept.encode().map_err(|e| e.to_string())?;
        // Each copy is up to the body limit: free the body before sealing, the plaintext after.
        drop(kept);
        let sealed = self
            .signin
            .sealer
            .seal(&plain, &token.hash())
            .map_err(|e| e.to_string())?;
        drop(plain);
        // Quotas: the whole store, and this person. Checked, then charged before the write, so
        // parallel keeps overshoot by at most `preserve_concurrent_reads` forms.
        let size = sealed.len() as u64;
        // Buckets shared by every instance: by the wall clock, as the anonymous quota's.
        let now = Timestamp::wall().0;
        let (quota, person_quota) = self.signin.quota;
        let mine = format!("p:{}", aalgate_auth::token::hash_str(person));
        let used = self.kept_bytes("g", now).await.map_err(|e| e.to_string())?;
        let used_mine = self
            .kept_bytes(&mine, now)
            .await
            .map_err(|e| e.to_string())?;
        if used.saturating_add(size) > quota || used_mine.saturating_add(size) > person_quota {
            return Ok(Err(NotKept::Quota));
        }
        let ttl = KEPT_TTL + Duration::from_secs(2 * BUCKET_SECS);
        let bucket = now / BUCKET_SECS;
        for prefix in ["g", mine.as_str()] {
            self.store
                .kv_add(QUOTA, &format!("{prefix}:{bucket}"), size, ttl)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.store
            .kv_put(KEPT, &token.hash(), &sealed, Some(KEPT_TTL))
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.kept_bytes.inc_by(size);
        tracing::info!(request_id = %ctx.request_id, bytes = body_len, "kept a submitted form across sign-in");
        Ok(Ok((token.expose().to_string(), binding)))
    }

    /// The request body, up to the body limit (see [`read_limited`]). Callers hold a `reads`
    /// permit: each read holds up to the limit in memory.
    pub(crate) async fn read_body_bounded(&self, session: &mut Session) -> Option<Vec<u8>> {
        read_limited(session, self.signin.body_limit).await
    }

    /// `b` with its request nonce sealed (the store never holds it in clear: with the digest
    /// beside it, a store reader could test guesses of a short body).
    pub(crate) fn sealed_binding(&self, mut b: RequestBinding) -> RequestBinding {
        let aad = format!("request-nonce\0{}", b.digest);
        if let Ok(sealed) = self.signin.sealer.seal(b.nonce.as_bytes(), &aad) {
            b.nonce = aalgate_auth::signing::b64(&sealed);
        } else {
            b.nonce = String::new();
        }
        b
    }

    /// The inverse of [`Gateway::sealed_binding`]; `None` if it does not open.
    pub(crate) fn opened_binding(&self, b: &RequestBinding) -> Option<RequestBinding> {
        use base64::Engine;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&b.nonce)
            .ok()?;
        let aad = format!("request-nonce\0{}", b.digest);
        let nonce = String::from_utf8(self.signin.sealer.open(&sealed, &aad)?).ok()?;
        Some(RequestBinding { nonce, ..b.clone() })
    }

    /// Writes `request_admitted`: the signed request is on its way to the app.
    pub(crate) fn audit_admitted(&self, ctx: &Ctx, user: &str, b: &RequestBinding) {
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "request_admitted",
                request_id: Some(&ctx.request_id),
                user: Some(user),
                app: Some(self.app_name(ctx)),
                detail: Some(format!("digest {}", b.digest)),
                ..Default::default()
            },
        );
    }

    /// A page about the form, with one way back to the app.
    async fn resume_page(
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
    async fn resume_token(
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
    async fn confirm_page(
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

    pub(crate) fn app_name<'a>(&self, ctx: &'a Ctx) -> &'a str {
        ctx.rule
            .and_then(|i| ctx.policy.rules().get(i))
            .map(|r| ctx.policy.app_of(r).name.as_str())
            .unwrap_or("-")
    }
}

const GONE: &str = "This form was already sent, or it waited too long (more than 10 minutes) and was discarded. Nothing was sent twice. Check the application before you submit it again.";

/// The request body, up to `limit` bytes; `None` if it is larger (then it is not read at all
/// when its length is declared) or the client stopped sending.
pub(crate) async fn read_limited(session: &mut Session, limit: usize) -> Option<Vec<u8>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Not read at all; the connection closes when the answer goes out.
        return None;
    }
    // Sized once from the declared length (already checked against the limit).
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_never_holds_the_whole_anonymous_quota() {
        // The smallest quota the config takes: one address must leave room for the others.
        assert_eq!(client_share(65_536), 16_384);
        assert_eq!(client_share(1 << 20), 65_536);
        assert_eq!(client_share(64 << 20), 4 << 20);
        for quota in [65_536, 100_000, 200_000, 1 << 20, 64 << 20] {
            assert!(client_share(quota) <= quota / 4, "{quota}");
        }
    }
}
