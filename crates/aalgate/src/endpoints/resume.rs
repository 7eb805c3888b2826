//! `GET` and `POST /.aalgate/resume?token=...`: a kept form sent on after its sign-in, once,
//! to the app it was meant for (or a confirmation page first when nobody touched a key).

use aalgate_auth::Token;
use aalgate_policy::{admit, AdmissionFacts, Ceremony, HostPort, RequestKind};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::http::Exchange;
use crate::kept::{Resumable, KEPT, RESUMABLE};
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::preserve::{KeptRequest, NotKept};
use crate::state::{Reply, State};

pub(crate) const GONE: &str = "This form was already sent, or it waited too long (more than 10 minutes) and was discarded. Nothing was sent twice. Check the application before you submit it again.";

/// A page about the form, with one way back to the app.
pub(crate) async fn resume_page(
    st: &State,
    x: &mut Exchange<'_>,
    title: &str,
    text: &str,
    outcome: Outcome,
) -> Result<bool> {
    x.ctx.outcome = outcome;
    let app = st
        .display_of_host(x.ctx)
        .unwrap_or_else(|| "the application".into());
    let reply = Reply::html(
        outcome.status().unwrap_or(200),
        pages::page(
            title,
            &format!(
                "<p>{}</p><p><a class=\"button\" href=\"/\">Go to {}</a></p>",
                escape(text),
                escape(&app)
            ),
            &x.ctx.request_id,
        ),
    );
    x.send(reply).await
}

/// `GET /.aalgate/resume?kept=...` on the app host: sends the kept form upstream, once,
/// and streams the answer back; or, after a flow without a touch, asks first.
pub(crate) async fn resume(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let q = x.session.req_header().uri.query().unwrap_or("").to_string();
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
        return resume_page(st, x, title, why.explain(), Outcome::ResumeNotKept).await;
    }
    let Some(token) = Token::parse(param) else {
        return resume_page(st, x, "Nothing to send", GONE, Outcome::ResumeGone).await;
    };
    resume_token(st, x, token, false).await
}

/// `POST /.aalgate/resume` (the confirmation page's button): a same-origin form with the
/// page's token.
pub(crate) async fn resume_confirmed(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let Some(fields) = x.form_post().await else {
        return x.error(Outcome::Csrf).await;
    };
    let token = fields
        .iter()
        .find(|(k, _)| k == "kept")
        .and_then(|(_, v)| Token::parse(v));
    let Some(token) = token else {
        return resume_page(st, x, "Nothing to send", GONE, Outcome::ResumeGone).await;
    };
    resume_token(st, x, token, true).await
}

#[allow(clippy::too_many_lines, reason = "a kept form's checks in order")]
pub(crate) async fn resume_token(
    st: &State,
    x: &mut Exchange<'_>,
    token: Token,
    confirmed: bool,
) -> Result<bool> {
    let now = st.clock.now();
    let loaded = match st
        .session_of(
            x.session.req_header(),
            x.ctx,
            now,
            crate::state::Lookup::Cached,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: store error");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    let Some((_, record, user_session, access)) = loaded else {
        // Not signed in here (yet): nothing is taken, the form stays for its owner.
        return resume_page(
            st,
            x,
            "Sign in first",
            "Open the application again and sign in; your form is kept for 10 minutes.",
            Outcome::ResumeNoSession,
        )
        .await;
    };
    let sealed = match st.store.kv_get(KEPT, &token.hash()).await {
        Ok(Some(s)) => s,
        Ok(None) => return resume_page(st, x, "Nothing to send", GONE, Outcome::ResumeGone).await,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: store error");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    let kept = st
        .signin
        .sealer
        .open(&sealed, &token.hash())
        .and_then(|p| KeptRequest::decode(&p));
    let Some(kept) = kept else {
        let _ = st.store.kv_delete(KEPT, &token.hash()).await;
        tracing::warn!(request_id = %x.ctx.request_id, "resume: kept form does not decrypt (key changed?)");
        return resume_page(st, x, "Please submit the form again", "The form could not be restored, so it was not sent. Go back to it and submit it again.", Outcome::ResumeGone).await;
    };
    // Another browser or another app (host and port) finds nothing, and takes nothing.
    if !x.is_bound_browser(&kept.browser) || kept.host != st.canonical_host(&x.ctx.host) {
        return resume_page(st, x, "Nothing to send", GONE, Outcome::ResumeGone).await;
    }
    if kept.user != user_session.user {
        // Never sent as someone else.
        let _ = st.store.kv_take(KEPT, &token.hash()).await;
        st.audit.emit_for(
            &x.ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "kept_form_discarded",
                request_id: Some(&x.ctx.request_id),
                user: Some(&user_session.user),
                detail: Some(format!(
                    "a different person signed in; the form was {}'s",
                    kept.user
                )),
                ..Default::default()
            },
        );
        return resume_page(st, x, "Form discarded", "A different person signed in, so the form the previous person started was discarded and not sent.", Outcome::ResumeDiscarded)
            .await;
    }
    // The policy decides again, for this person, now.
    let Ok(host) = HostPort::parse(&x.ctx.host) else {
        return x.error(Outcome::BadHost).await;
    };
    let policy = x.ctx.policy.clone();
    let Ok(target) =
        aalgate_policy::normalize_target_with(kept.url.as_bytes(), policy.double_encoding(&host))
    else {
        return x.error(Outcome::BadPath).await;
    };
    let Some(m) = policy.lookup(&host, &kept.method, &target) else {
        return x.error(Outcome::UnknownHost).await;
    };
    let mark: Option<Resumable> = match st.store.kv_get(RESUMABLE, &token.hash()).await {
        Ok(m) => m.and_then(|m| serde_json::from_slice(&m).ok()),
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: store error");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    // The flow that kept this form ended in this very session.
    let ours = mark.as_ref().filter(|m| m.record == record.as_str());
    // The flow's own ceremony admits its request, even if a short `max_age` passed on the
    // way back; on a per-request route, only a ceremony that signed this very form does.
    let signed = ours
        .and_then(|m| m.binding.as_ref())
        .and_then(|b| st.opened_binding(b))
        .filter(|b| {
            aalgate_auth::signing::matches(b, &kept.method, &kept.host, &kept.url, Some(&kept.body))
        });
    let facts = AdmissionFacts {
        session: crate::state::session_kind(Some(&user_session)),
        request: RequestKind::Replay,
        ceremony: ours
            .filter(|m| now.since(m.at) <= crate::state::ADMISSION_TTL)
            .map(|_| Ceremony {
                signed: signed.is_some(),
            }),
        person: Some(aalgate_policy::Person {
            user: &user_session.user,
            groups: &access.groups,
            reach: aalgate_policy::Reach::Unknown,
        }),
    };
    if !admit(&m.rule.access, &facts, now).allows() {
        let _ = st.store.kv_take(KEPT, &token.hash()).await;
        return resume_page(
            st,
            x,
            "Form not sent",
            "Your sign-in does not allow this form, so it was not sent. Go back and try again.",
            Outcome::ResumeDenied,
        )
        .await;
    }
    // Sent at once only after a touch of the person's key in this flow; after a silent
    // handoff the person confirms it on a same-origin page first.
    if !confirmed && !ours.is_some_and(|m| m.touched) {
        return confirm_page(x, &token, &m.app.name).await;
    }
    // Taken once: a refresh, Back or a second tab finds nothing.
    match st.store.kv_take(KEPT, &token.hash()).await {
        Ok(Some(_)) => {}
        Ok(None) => return resume_page(st, x, "Nothing to send", GONE, Outcome::ResumeGone).await,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: store error");
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    let _ = st.store.kv_delete(RESUMABLE, &token.hash()).await;
    x.ctx.rule = Some(m.rule_index);
    x.ctx.target = Some(target);
    st.note_use(x.ctx, &user_session.user, now);
    x.ctx.session = Some(user_session);
    x.ctx.access = Some(access);
    x.ctx.session_key = Some(record);
    if let (Some(b), Some(s)) = (&signed, &x.ctx.session) {
        st.audit_admitted(x.ctx, &s.user, b);
    }
    x.ctx.signed = signed;
    send_kept(st, x, kept).await
}

/// "Send the form you were filling in to <app>?": a same-origin POST with a CSRF token.
pub(crate) async fn confirm_page(x: &mut Exchange<'_>, token: &Token, app: &str) -> Result<bool> {
    let (bind, set_bind) = x.binding();
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
    let mut reply = Reply::html(
        200,
        pages::page("Send your form?", &body, &x.ctx.request_id),
    );
    if set_bind {
        reply = reply.header("set-cookie", crate::state::bind_cookie(&bind, x.ctx.tls));
    }
    x.ctx.outcome = Outcome::ResumeConfirm;
    x.send(reply).await
}

pub(crate) async fn send_kept(st: &State, x: &mut Exchange<'_>, kept: KeptRequest) -> Result<bool> {
    x.ctx.replay = Some(crate::state::Replay {
        method: kept.method.clone(),
        path: kept.url.split('?').next().unwrap_or_default().to_string(),
        of: kept.request_id.clone(),
    });
    let mut req = RequestHeader::build(kept.method.as_str(), kept.url.as_bytes(), None)?;
    for (n, v) in &kept.headers {
        req.insert_header(n.clone(), v.as_str())?;
    }
    req.insert_header("content-length", kept.body.len().to_string())?;
    // The cookies the browser sent with the form (path-scoped ones too: this request is on
    // `/.aalgate/`), plus today's; never the gateway's own.
    let current = crate::headers::app_cookies(&x.session.req_header().headers);
    if let Some(c) = crate::headers::merge_cookies(kept.cookies.as_deref(), current.as_deref()) {
        req.insert_header("cookie", c)?;
    }
    if let Some(ua) = x.session.req_header().headers.get(http::header::USER_AGENT) {
        req.insert_header("user-agent", ua.clone())?;
    }
    // The same hygiene and identity as any forwarded request.
    crate::http::upstream::prepare_request(st, st.client_ip(x.session), &mut req, x.ctx)?;
    let peer = crate::http::upstream::peer(st, x.session.req_header(), x.ctx)?;
    let connector = pingora::connectors::http::Connector::new(None);
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
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: upstream failed");
            x.ctx.outcome = Outcome::ResumeUpstreamError;
            let reply = Reply::html(502, pages::page("The application did not answer", "<p>Your form was sent to the application, but it did not answer. It may or may not have been saved: check in the application before you submit it again.</p>", &x.ctx.request_id));
            return x.send(reply).await;
        }
    };
    let Some(resp) = up.response_header() else {
        return x.error(Outcome::Upstream).await;
    };
    let mut resp = resp.clone();
    crate::http::upstream::prepare_response(st, &mut resp, x.ctx)?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-request-id", x.ctx.request_id.as_str())?;
    x.ctx.outcome = Outcome::Resumed;
    let head = x.session.req_header().method == http::Method::HEAD;
    st.audit.settle(&x.ctx.audit).await;
    x.session
        .write_response_header(Box::new(resp), head)
        .await?;
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => x.session.write_response_body(Some(chunk), false).await?,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "resume: upstream body failed");
                x.session.set_keepalive(None);
                break;
            }
        }
    }
    x.session.write_response_body(None, true).await?;
    up.shutdown().await;
    Ok(true)
}
