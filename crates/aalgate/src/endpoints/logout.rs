//! `GET` and `POST /.aalgate/logout`: ending a session on every host at once.

use aalgate_session::SessionId;
use pingora::prelude::*;

use crate::headers;
use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::MAX_COOKIES;
use crate::state::{bind_cookie, csrf_of, SessionEnd};
use crate::state::{Reply, State};

/// `GET /.aalgate/logout`, or a POST without a valid token (e.g. the app's own sign-out
/// button): a confirmation page whose form carries the token.
pub(crate) async fn logout_page(_st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let (bind, set_bind) = x.binding();
    let body = format!(
        "<p>Sign out of every application behind this gateway on this browser?</p>\
         <form method=\"post\" action=\"/.aalgate/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out</button></form>",
        escape(&csrf_of(bind.expose()))
    );
    let mut reply = Reply::html(200, pages::page("Sign out", &body, &x.ctx.request_id));
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.ctx.outcome = Outcome::LogoutPage;
    x.send(reply).await
}

/// Whether a logout POST is same-origin and carries the token (header or form field).
pub(crate) async fn logout_allowed(x: &mut Exchange<'_>) -> bool {
    x.checked_post().is_some() || x.form_post().await.is_some()
}

#[allow(
    clippy::too_many_lines,
    reason = "each cookie of the browser ends its own way (break-glass, store, absent)"
)]
pub(crate) async fn logout(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    // Cross-site POSTs carry no Lax cookie, but refuse them explicitly too.
    let site = x
        .session
        .req_header()
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site == "cross-site" {
        return x.error(Outcome::CrossSite).await;
    }
    // Same origin plus the page's token; without it (an app's own sign-out button, say),
    // the confirmation page asks once more, with the token in its form.
    if !logout_allowed(x).await {
        return logout_page(st, x).await;
    }
    let ids: Vec<SessionId> =
        headers::cookie_values(&x.session.req_header().headers, State::cookie_name(x.ctx))
            .iter()
            .take(MAX_COOKIES)
            .filter_map(|v| SessionId::from_cookie(v))
            .collect();
    let now = st.clock.now();
    // A session that came from an identity provider whose own session should end too.
    let mut provider = None;
    for id in ids {
        // Break-glass sessions live here, not in the store: they end even while it is down.
        if st.signin.emergencies.remove(&id.key()) {
            st.sessions.remove(&id.key());
            st.metrics.session_ends.with_label_values(&["logout"]).inc();
            st.audit.emit_for(
                &x.ctx.audit,
                &crate::audit::Event {
                    time: crate::audit::now_rfc3339(),
                    event: "breakglass_end",
                    request_id: Some(&x.ctx.request_id),
                    decision: Some("logout"),
                    ..Default::default()
                },
            );
            continue;
        }
        // Read first, so the end is attributed to a user in the audit log.
        let existing = match st.store.resolve(&id.key(), &x.ctx.host, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "logout could not reach the session store");
                return x.error(Outcome::StoreUnavailable).await;
            }
        };
        let Some((record, existing)) = existing else {
            st.sessions.remove(&id.key());
            let _ = st.store.unlink(&id.key()).await;
            continue;
        };
        if let Some(idp) = existing
            .credential
            .as_deref()
            .and_then(|c| c.strip_prefix("idp:"))
            .and_then(|i| st.signin.federation.get(i))
            .filter(|i| i.cfg.end_provider_session)
        {
            provider = Some(idp.clone());
        }
        let ended = st
            .end_session(
                x.ctx,
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
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "logout could not reach the session store");
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    // RP-initiated logout: the provider's session ends too, on its own page (it may ask the
    // person to confirm), so the next sign-in there asks for a login. The page's script goes
    // there (a redirect of this form post would break the pages' `form-action 'self'`); the
    // link is for a browser without it.
    let mut next = None;
    if let Some(idp) = provider {
        match idp.metadata().await {
            Ok(m) => {
                next = m.end_session_endpoint.as_deref().and_then(|e| {
                    let mut u = url::Url::parse(e).ok()?;
                    u.query_pairs_mut()
                        .append_pair("client_id", &idp.cfg.client_id);
                    Some((u.to_string(), idp.cfg.display_name.clone()))
                });
            }
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, error = %e, "the provider's session could not be ended (its discovery document is unavailable)");
            }
        }
    }
    let (more, attrs) = match &next {
        Some((to, name)) => (
            format!(
                "<p>Signing you out of {name} too.</p><p><a class=\"button\" href=\"{to}\">Sign out of {name}</a></p>",
                name = escape(name),
                to = escape(to)
            ),
            format!(" data-next=\"{}\"", escape(to)),
        ),
        None => (x.to_app().unwrap_or_default(), String::new()),
    };
    let reply = Reply::html(
        200,
        pages::page_with(
            "Signed out",
            &format!("<p>You are signed out. You can close this window.</p>{more}"),
            &x.ctx.request_id,
            &attrs,
        ),
    )
    .header(
        "set-cookie",
        clear_cookie(State::cookie_name(x.ctx), x.ctx.tls),
    )
    .header("clear-site-data", "\"cookies\"".into());
    x.ctx.outcome = Outcome::Logout;
    x.send(reply).await
}

pub(crate) fn clear_cookie(name: &str, tls: bool) -> String {
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
