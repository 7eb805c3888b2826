//! `GET` and `POST /.aalgate/breakglass`: the emergency-access page and a code's use.

use std::time::Duration;

use aalgate_session::SessionId;
use pingora::prelude::*;

use super::audit_auth;
use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::{bind_cookie, cookie, csrf_of};
use crate::state::{Ctx, Reply, State};

/// `GET /.aalgate/breakglass` (any host): the emergency access form.
pub(crate) async fn breakglass_page(
    st: &State,
    x: &mut Exchange<'_>,
    problem: Option<&str>,
) -> Result<bool> {
    let (bind, set_bind) = x.binding();
    let app = st
        .display_of_host(x.ctx)
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
        pages::page("Emergency access", &body, &x.ctx.request_id),
    );
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.ctx.outcome = Outcome::BreakglassPage;
    x.send(reply).await
}

/// `POST /.aalgate/breakglass`: checks the code (argon2), then a break-glass session on
/// this host, capped at the code's TTL. Every use and failure is audited (a use also to the
/// local file, before the code is marked used) and alerted; failures are throttled per
/// client address (IPv6: per /64), and at most two checks run at once.
#[allow(
    clippy::too_many_lines,
    reason = "a break-glass use: throttle, argon2, audit, alert, session"
)]
pub(crate) async fn breakglass_use(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let svc = st.service();
    let ip = st.client_ip(x.session);
    let app = st.app_of_host(x.ctx).unwrap_or_else(|| "-".into());
    let busy = |this: &State, ctx: &mut Ctx, why: Outcome| {
        ctx.outcome = why;
        audit_auth(
            this,
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
        let reply = busy(st, x.ctx, Outcome::Throttled);
        return x.send(reply).await;
    }
    let Some(fields) = x.form_post().await else {
        return breakglass_page(st, x, Some("This form expired. Fill it in again.")).await;
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
        return breakglass_page(st, x, Some("Enter your full name and the reason.")).await;
    }
    // Counted before the slow check, so parallel guesses are throttled too: one over the
    // limit (sent alongside others before the first failed) is refused here.
    let failures = svc.emergencies.fail(ip);
    if failures > crate::breakglass::MAX_FAILURES {
        let reply = busy(st, x.ctx, Outcome::Throttled);
        return x.send(reply).await;
    }
    let now = st.clock.now();
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
                let reply = busy(st, x.ctx, Outcome::Busy);
                return x.send(reply).await;
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
                let reply = busy(st, x.ctx, Outcome::Busy);
                return x.send(reply).await;
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
            "request_id": x.ctx.request_id });
        tokio::task::spawn_blocking(move || crate::breakglass::audit_local(&cfg, &line))
    };
    let code = match checked {
        Ok(Some(c)) => c,
        Ok(None) => {
            audit_auth(
                st,
                x.ctx,
                "breakglass_failure",
                None,
                None,
                None,
                Some(&format!("wrong or used code; person: {person}")),
            );
            let _ = fail_local("wrong or used code").await;
            return breakglass_page(
                st,
                x,
                Some("That code is not valid (wrong, or already used). Check it and try again."),
            )
            .await;
        }
        Err(e) => {
            tracing::error!(request_id = %x.ctx.request_id, error = %e, "break-glass codes file unusable");
            return x.error(Outcome::BreakglassUnavailable).await;
        }
    };
    // Used on another instance already? Asked of the shared store when it answers; when it
    // does not, this instance's file is the record (the documented fallback).
    let shared = tokio::time::timeout(
        Duration::from_millis(500),
        st.store.kv_incr(
            "breakglass-used",
            &code.id,
            Duration::from_secs(400 * 86400),
        ),
    )
    .await;
    match shared {
        Ok(Ok(n)) if n > 1 => {
            audit_auth(
                st,
                x.ctx,
                "breakglass_failure",
                None,
                None,
                Some(&code.id),
                Some(&format!(
                    "code already used on another instance; person: {person}"
                )),
            );
            let _ = fail_local("code already used on another instance").await;
            return breakglass_page(
                st,
                x,
                Some("That code is not valid (wrong, or already used). Check it and try again."),
            )
            .await;
        }
        Ok(Ok(_)) => {}
        _ => {
            tracing::warn!(request_id = %x.ctx.request_id, "break-glass: session store unreachable; using the local codes file only")
        }
    }
    // No trail, no access: the local audit line is written (and fsynced) first.
    let line = serde_json::json!({
        "time": crate::audit::now_rfc3339(), "event": "breakglass", "code": code.id, "code_name": code.name,
        "person": person, "reason": reason, "app": app, "client_ip": ip.map(|i| i.to_string()),
        "ttl_secs": code.ttl_secs, "request_id": x.ctx.request_id });
    let cfg = svc.breakglass.clone();
    let logged =
        tokio::task::spawn_blocking(move || crate::breakglass::audit_local(&cfg, &line)).await;
    if !matches!(logged, Ok(Ok(()))) {
        tracing::error!(request_id = %x.ctx.request_id, "break-glass local audit failed; refusing (the code stays unused)");
        return x.error(Outcome::BreakglassUnavailable).await;
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
        tokio::task::spawn_blocking(move || crate::breakglass::mark_used(&cfg, &id, usage)).await;
    match marked {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            audit_auth(
                st,
                x.ctx,
                "breakglass_failure",
                None,
                None,
                Some(&code.id),
                Some("code used by a parallel attempt"),
            );
            return breakglass_page(
                st,
                x,
                Some("That code is not valid (wrong, or already used). Check it and try again."),
            )
            .await;
        }
        _ => {
            tracing::error!(request_id = %x.ctx.request_id, "break-glass codes file unusable");
            return x.error(Outcome::BreakglassUnavailable).await;
        }
    }
    svc.emergencies.succeeded(ip);
    let who = format!("breakglass:{}", code.id);
    st.audit.emit_for(
        &x.ctx.audit,
        &crate::audit::Event {
            time: crate::audit::now_rfc3339(),
            event: "breakglass",
            request_id: Some(&x.ctx.request_id),
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
    st.metrics.breakglass_uses.inc();
    if let Some(hook) = svc.breakglass.webhook.clone() {
        alert_in_background(st, hook, app, code.clone(), now, x.ctx.request_id.clone());
    }
    start_emergency(st, x, &code, person, now).await
}

/// The break-glass webhook, told in the background (a few tries: the alert matters more than
/// its latency); a failure is an audit event of its own.
fn alert_in_background(
    st: &State,
    hook: String,
    app: String,
    code: crate::breakglass::Code,
    now: aalgate_policy::Timestamp,
    rid: String,
) {
    let audit = st.audit.clone();
    tokio::spawn(async move {
        // A few tries: the alert matters more than its latency.
        let mut last = String::new();
        for attempt in 0..3u64 {
            match crate::breakglass::alert(&hook, &app, &code, now).await {
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

/// The emergency session: in this instance's memory, for this host, until the code's TTL;
/// its cookie handle goes to the browser with a redirect to the app.
async fn start_emergency(
    st: &State,
    x: &mut Exchange<'_>,
    code: &crate::breakglass::Code,
    person: String,
    now: aalgate_policy::Timestamp,
) -> Result<bool> {
    let svc = st.service();
    let handle = SessionId::generate();
    svc.emergencies.insert(
        handle.key(),
        crate::breakglass::Emergency {
            code: code.id.clone(),
            name: code.name.clone(),
            person,
            host: x.ctx.host.clone(),
            started: now,
            expires: now.plus(Duration::from_secs(code.ttl_secs)),
        },
    );
    st.metrics
        .session_starts
        .with_label_values(&["1", "breakglass"])
        .inc();
    x.ctx.outcome = Outcome::Breakglass;
    let reply = Reply::html(
        302,
        pages::page(
            "Emergency access",
            "<p>Emergency access started.</p>",
            &x.ctx.request_id,
        ),
    )
    .header("location", "/".into())
    .header(
        "set-cookie",
        cookie(
            State::cookie_name(x.ctx),
            &handle.to_cookie(),
            x.ctx.tls,
            false,
        ),
    );
    x.send(reply).await
}
