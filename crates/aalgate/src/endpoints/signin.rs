//! `GET /.aalgate/auth?flow=...`: the sign-in, step-up and re-auth page, or a handoff at once
//! when this browser's session on the auth origin already satisfies the flow; and
//! `GET /.aalgate/done`.

use aalgate_policy::Aal;
use aalgate_session::{Flow, FlowId, FlowKind, Session as UserSession};
use pingora::prelude::*;

use super::handoff::{hand_off, satisfies};
use super::query_param;
use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::{bind_cookie, csrf_of};
use crate::state::{Reply, State};

pub(crate) fn level_words(aal: Aal) -> &'static str {
    match aal {
        Aal::Aal3 => "your hardware security key",
        _ => "your passkey or security key",
    }
}

/// `GET /.aalgate/auth?flow=...`: the sign-in, step-up or re-auth page, or a handoff at
/// once when this browser's session on the auth origin already satisfies the flow.
#[allow(clippy::too_many_lines, reason = "the sign-in page's cases")]
pub(crate) async fn auth_page(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let param = query_param(x.session.req_header().uri.query(), "flow");
    let id = param.and_then(FlowId::parse);
    let now = st.clock.now();
    let flow = match id {
        None => None,
        Some(id) => match st.store.get_flow(&id.key(), now).await {
            Ok(f) => f.map(|f| (id, f)),
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error on the sign-in page");
                return x.error(Outcome::StoreUnavailable).await;
            }
        },
    };
    let Some((id, flow)) = flow else {
        x.ctx.outcome = if param.is_none() {
            Outcome::BadRequest
        } else {
            Outcome::FlowExpired
        };
        let reply = Reply::html(
            x.ctx.outcome.status().unwrap_or(400),
            x.page_forward(
                "Sign-in link expired",
                "<p>This sign-in link is not valid any more (links expire after 10 minutes and work once).</p>\
                 <p>Go back to the application and open the page again.</p>",
                false,
            ),
        );
        return x.send(reply).await;
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
        match st.current(x.session, x.ctx).await {
            Ok(Some((_, record, s, _))) if silent(&s, &flow) => {
                if let Ok(Some(f)) = st.store.take_flow(&id.key(), now).await {
                    x.ctx.session = Some(s.clone());
                    return hand_off(st, x, &record, &s, &f, Vec::new()).await;
                }
            }
            Ok(Some((_, _, s, _))) if flow.need == FlowKind::Login => {
                flow.need = FlowKind::StepUp;
                flow.user = Some(s.user.clone());
                let left = crate::state::FLOW_TTL.saturating_sub(now.since(flow.created));
                if let Err(e) = st.store.put_flow(&id.key(), &flow, left).await {
                    tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error on the sign-in page");
                    return x.error(Outcome::StoreUnavailable).await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error on the sign-in page");
                return x.error(Outcome::StoreUnavailable).await;
            }
        }
    }

    let app = escape(&st.display_name(x.ctx, &flow.app));
    // What the route needs is said only to a person already known (step-up, re-auth):
    // before a session, a sign-in page tells nobody which routes want a hardware key.
    let known = matches!(flow.need, FlowKind::StepUp | FlowKind::Reauth) && flow.user.is_some();
    let words = level_words(if known { flow.aal } else { Aal::Aal2 });
    // The person a step-up or re-auth is for, as the directory has them: their name for
    // the page, their keys to tell whether the tap asked for can succeed.
    let person = match flow.user.as_deref().filter(|_| known) {
        Some(u) => match st.service().dir.user(u).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "directory error on the sign-in page");
                return x.error(Outcome::StoreUnavailable).await;
            }
        },
        None => None,
    };
    // (A person the directory does not know gets the usual page; the ceremony refuses them.)
    // One binding for the whole page (its forms' tokens and the cookie it may set).
    let (bind, set_bind) = x.binding();
    let no_key = person.as_ref().is_some_and(|p| {
        !p.credentials
            .iter()
            .any(|c| c.usable_for(flow.need == FlowKind::StepUp) && c.aal >= flow.aal)
    });
    // The identity provider is offered where it can give the level and aalgate's own
    // ceremony cannot (the person's own key wins when they have one at that level).
    let providers = match flow.need {
        FlowKind::Login | FlowKind::Switch => super::oidc::buttons(st, &id, None),
        FlowKind::Reauth if flow.user.is_none() => super::oidc::buttons(st, &id, None),
        _ if no_key && flow.binding.is_none() => super::oidc::buttons(st, &id, Some(flow.aal)),
        _ => String::new(),
    };
    // Just signed in through a provider that allows it: a passkey can be added here, once,
    // and then confirms this step-up and the next ones.
    // (Never for a request the key must sign: an enrollment signs nothing.)
    let enroll = if flow.need == FlowKind::StepUp
        && no_key
        && flow.aal <= Aal::Aal2
        && flow.binding.is_none()
    {
        match st.current(x.session, x.ctx).await {
            Ok(Some((_, _, s, _)))
                if Some(s.user.as_str()) == flow.user.as_deref()
                    && super::oidc::enrolls_after_sso(st, &s, now).is_some() =>
            {
                format!(
                    "<form method=\"post\" action=\"/.aalgate/oidc/enroll\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"flow\" value=\"{}\">\
                     <p><button type=\"submit\">Create a passkey on this device</button></p></form>\
                     <p>A passkey lets you confirm with your fingerprint, face or device PIN from now on.</p>",
                    escape(&csrf_of(bind.expose())),
                    escape(&id.encode())
                )
            }
            Ok(_) => String::new(),
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error on the sign-in page");
                return x.error(Outcome::StoreUnavailable).await;
            }
        }
    } else {
        String::new()
    };
    if flow.need == FlowKind::StepUp && no_key && providers.is_empty() && enroll.is_empty() {
        let app = st.display_name(x.ctx, &flow.app);
        let back = format!("{}://{}/", st.signin.scheme, flow.host);
        return x.no_suitable_key(&app, flow.aal, &back).await;
    }
    let name = escape(
        person
            .as_ref()
            .map_or(flow.user.as_deref().unwrap_or_default(), |p| {
                p.display_name.as_str()
            }),
    );
    let kept_note = match flow.kept.as_deref() {
        Some(k) if crate::preserve::NotKept::parse(k).is_none() => format!(
            "<p>Your form for <strong>{app}</strong> is kept. Touch your key to send it.</p>"
        ),
        _ => String::new(),
    };
    let (title, body) = match flow.need {
        FlowKind::StepUp if no_key => (
            "Confirm it's you",
            format!(
                "<p>This action in <strong>{app}</strong> needs a fresh sign-in.</p>\
                 <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>{enroll}{providers}"
            ),
        ),
        FlowKind::Reauth if flow.user.is_some() && no_key && !providers.is_empty() => (
            "Continue where you were",
            format!(
                "<p>Your session in <strong>{app}</strong> paused. Sign in again to land on the same page.</p>\
                 <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>{providers}\
                 <p>Not {name}? Someone else can sign in here instead; {name}'s session then ends.</p>\
                 <p><button type=\"button\" class=\"secondary\" data-action=\"switch\">Sign in as someone else</button></p>"
            ),
        ),
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
                 <p>Not {name}? Someone else can sign in here instead; {name}'s session then ends.</p>\
                 <p><button type=\"button\" class=\"secondary\" data-action=\"switch\">Sign in as someone else</button></p>"
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
                 <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>{providers}\
                 <button type=\"button\" data-action=\"switch\">Sign in with a passkey or key</button>\
                 <details><summary>Use a security key that asks for your user name</summary>\
                 <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\">\
                 <button type=\"button\" class=\"secondary\" data-action=\"username\">Continue with security key</button></details>",
                words
            ),
        ),
    };
    // A ceremony bound to one request says which: the person approves exactly this.
    let signing_note = if flow.binding.is_some() {
        format!(
            "<p>You are approving, with your signature: <strong>{} {}</strong> in <strong>{app}</strong>. Your key signs this one request; the next one needs a new confirmation.</p>",
            escape(&flow.method),
            escape(&signed_path(st, &flow))
        )
    } else {
        String::new()
    };
    let body = format!("{kept_note}{signing_note}{body}");
    // What the script says of the form if the sign-in service fails during the tap (the store
    // it would ask is the one that failed): kept, and for which app, or not kept.
    let form = match flow.kept.as_deref() {
        Some(k) if crate::preserve::NotKept::parse(k).is_none() => {
            format!(" data-kept=\"{app}\"")
        }
        Some(_) => " data-not-kept=\"1\"".to_string(),
        None => String::new(),
    };
    let attrs = format!(
        " data-flow=\"{}\" data-csrf=\"{}\"{form}",
        escape(&id.encode()),
        escape(&csrf_of(bind.expose()))
    );
    let mut reply = Reply::html(
        200,
        pages::page_with(title, &body, &x.ctx.request_id, &attrs),
    );
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.ctx.outcome = Outcome::SigninPage;
    x.send(reply).await
}

/// The path of a signed request as the audit log writes it (redacted, no query); the
/// challenge covers it, so what an auditor reads is what the key signed.
pub(crate) fn signed_path(st: &State, flow: &Flow) -> String {
    st.audit
        .redact_path(flow.url.split('?').next().unwrap_or("/"))
}

/// `GET /.aalgate/done` (any host): where the popup of a script call lands after its
/// ceremony. It closes itself when a script opened it; otherwise it says what to do.
pub(crate) async fn done_page(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let app = st
        .display_of_host(x.ctx)
        .unwrap_or_else(|| "the application".into());
    let body = format!(
        "<p>Confirmed. Go back to <strong>{}</strong>: the page you were using carries on by itself. This window closes itself; if it does not, close it.</p>\
         <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>",
        escape(&app)
    );
    let reply = Reply::html(
        200,
        pages::page_with("Confirmed", &body, &x.ctx.request_id, " data-close=\"1\""),
    );
    x.ctx.outcome = Outcome::Done;
    x.send(reply).await
}
