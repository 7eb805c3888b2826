//! `GET` and `POST /.aalgate/logout`: ending a session on every host at once.

use aalgate_session::SessionId;
use pingora::prelude::*;

use crate::headers;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::MAX_COOKIES;
use crate::state::{bind_cookie, csrf_of, SessionEnd};
use crate::state::{Ctx, Gateway, Reply};

impl Gateway {
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

    #[allow(
        clippy::too_many_lines,
        reason = "each cookie of the browser ends its own way (break-glass, store, absent)"
    )]
    pub(crate) async fn logout(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Cross-site POSTs carry no Lax cookie, but refuse them explicitly too.
        let site = session
            .req_header()
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if site == "cross-site" {
            return self.error(session, ctx, Outcome::CrossSite).await;
        }
        // Same origin plus the page's token; without it (an app's own sign-out button, say),
        // the confirmation page asks once more, with the token in its form.
        if !self.logout_allowed(session, ctx).await {
            return self.logout_page(session, ctx).await;
        }
        let ids: Vec<SessionId> =
            headers::cookie_values(&session.req_header().headers, Self::cookie_name(ctx))
                .iter()
                .take(MAX_COOKIES)
                .filter_map(|v| SessionId::from_cookie(v))
                .collect();
        let now = self.clock.now();
        for id in ids {
            // Break-glass sessions live here, not in the store: they end even while it is down.
            if self.signin.emergencies.remove(&id.key()) {
                self.sessions.remove(&id.key());
                self.metrics
                    .session_ends
                    .with_label_values(&["logout"])
                    .inc();
                self.audit.emit_for(
                    &ctx.audit,
                    &crate::audit::Event {
                        time: crate::audit::now_rfc3339(),
                        event: "breakglass_end",
                        request_id: Some(&ctx.request_id),
                        decision: Some("logout"),
                        ..Default::default()
                    },
                );
                continue;
            }
            // Read first, so the end is attributed to a user in the audit log.
            let existing = match self.store.resolve(&id.key(), &ctx.host, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "logout could not reach the session store");
                    return self.error(session, ctx, Outcome::StoreUnavailable).await;
                }
            };
            let Some((record, existing)) = existing else {
                self.sessions.remove(&id.key());
                let _ = self.store.unlink(&id.key()).await;
                continue;
            };
            let ended = self
                .end_session(
                    ctx,
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
                tracing::warn!(request_id = %ctx.request_id, error = %e, "logout could not reach the session store");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        }
        let reply = Reply::html(
            200,
            pages::page(
                "Signed out",
                "<p>You are signed out. You can close this window.</p>",
                &ctx.request_id,
            ),
        )
        .header("set-cookie", clear_cookie(Self::cookie_name(ctx), ctx.tls))
        .header("clear-site-data", "\"cookies\"".into());
        ctx.outcome = Outcome::Logout;
        self.send(session, ctx, reply).await
    }
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
