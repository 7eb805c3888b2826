//! The gateway's own endpoints under `/.aalgate/`, never forwarded: one table of path,
//! method and handler. A new endpoint is a row here and a handler; a path in the table with
//! another method is 405, any other path 404.

mod assets;
mod breakglass;
mod ceremony;
mod enroll;
mod handoff;
mod jwks;
mod logout;
mod resume;
mod signin;
mod switch;

use std::future::Future;
use std::pin::Pin;

use pingora::prelude::*;

use aalgate_policy::Aal;

use crate::outcome::Outcome;
use crate::state::{Ctx, Gateway};

/// Constant words for users; the detail goes to the log.
pub(crate) const MSG_FAILED: &str = "Sign-in did not work. Nothing was changed. Press the button to try again; if it keeps failing, contact IT.";
pub(crate) const MSG_EXPIRED: &str =
    "This sign-in page has expired. Go back to the application and open the page again.";
pub(crate) const MSG_THROTTLED: &str =
    "Too many failed sign-ins from this browser. Wait 15 minutes, or contact IT.";
pub(crate) const MSG_NO_KEY: &str = "This action needs a hardware security key registered to you, and none is. Contact IT to enroll one.";
pub(crate) const MSG_FORBIDDEN: &str = "This request was refused. Reload the page and try again.";
pub(crate) const MSG_NOT_ENOUGH: &str =
    "That key does not meet this page's requirement. Use your hardware security key.";
pub(crate) const MSG_ENROLL_FAILED: &str = "Registration did not work. Nothing was saved. Press a button to try again; if it keeps failing, contact IT.";
pub(crate) const MSG_NOT_RECORDED: &str = "Your touch could not be recorded in the audit log, so it does not count and nothing was sent. What you were sending is kept: touch your key again in a moment. If this keeps happening, call IT: the gateway's audit log is unavailable.";
pub(crate) const MSG_KEY_NOT_APPROVED: &str =
    "This security key is not on the hospital's approved list. Use an approved key, or contact IT.";

/// An endpoint's handler: answers the request itself (`Ok(true)`).
type Handler = for<'a> fn(
    &'a Gateway,
    &'a mut Session,
    &'a mut Ctx,
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>>;

/// The methods a route takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// `GET` and `HEAD`: pages, files, keys.
    Read,
    /// `POST`: what changes something (always CSRF-checked by its handler).
    Post,
}

pub(crate) struct Route {
    path: &'static str,
    takes: Takes,
    handler: Handler,
}

/// A handler that calls `Gateway::$method(session, ctx)`, or an expression of `g`, `s`, `c`.
macro_rules! to {
    ($method:ident) => {
        to!(|g, s, c| g.$method(s, c))
    };
    (|$g:ident, $s:ident, $c:ident| $call:expr) => {{
        fn handler<'a>(
            $g: &'a Gateway,
            $s: &'a mut Session,
            $c: &'a mut Ctx,
        ) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
            Box::pin($call)
        }
        handler as Handler
    }};
}

#[rustfmt::skip]
pub(crate) const ROUTES: &[Route] = &[
    Route { path: "/.aalgate/auth", takes: Takes::Read, handler: to!(auth_page) },
    Route { path: "/.aalgate/enroll", takes: Takes::Read, handler: to!(enroll_page) },
    Route { path: "/.aalgate/handoff", takes: Takes::Read, handler: to!(handoff) },
    Route { path: "/.aalgate/switch", takes: Takes::Read, handler: to!(switch_user) },
    Route { path: "/.aalgate/webauthn/start", takes: Takes::Post, handler: to!(ceremony_start) },
    Route { path: "/.aalgate/webauthn/finish", takes: Takes::Post, handler: to!(ceremony_finish) },
    Route { path: "/.aalgate/resume", takes: Takes::Read, handler: to!(resume) },
    Route { path: "/.aalgate/resume", takes: Takes::Post, handler: to!(resume_confirmed) },
    Route { path: "/.aalgate/breakglass", takes: Takes::Read, handler: to!(|g, s, c| g.breakglass_page(s, c, None)) },
    Route { path: "/.aalgate/breakglass", takes: Takes::Post, handler: to!(breakglass_use) },
    Route { path: "/.aalgate/done", takes: Takes::Read, handler: to!(done_page) },
    Route { path: "/.aalgate/logout", takes: Takes::Read, handler: to!(logout_page) },
    Route { path: "/.aalgate/logout", takes: Takes::Post, handler: to!(logout) },
    Route { path: "/.aalgate/jwks.json", takes: Takes::Read, handler: to!(|g, s, c| jwks::jwks(g, s, c)) },
    Route { path: "/.aalgate/static/aalgate.js", takes: Takes::Read, handler: to!(|g, s, c| g.static_file(s, c, "/.aalgate/static/aalgate.js")) },
    Route { path: "/.aalgate/static/aalgate.css", takes: Takes::Read, handler: to!(|g, s, c| g.static_file(s, c, "/.aalgate/static/aalgate.css")) },
];

/// Answers a request for `path` under `/.aalgate/`.
pub(crate) async fn dispatch(
    g: &Gateway,
    session: &mut Session,
    ctx: &mut Ctx,
    path: &str,
) -> Result<bool> {
    ctx.outcome = Outcome::Gateway;
    let method = &session.req_header().method;
    let takes = if method == http::Method::GET || method == http::Method::HEAD {
        Some(Takes::Read)
    } else if method == http::Method::POST {
        Some(Takes::Post)
    } else {
        None
    };
    let mut known = false;
    for r in ROUTES.iter().filter(|r| r.path == path) {
        known = true;
        if Some(r.takes) == takes {
            return (r.handler)(g, session, ctx).await;
        }
    }
    let outcome = if known {
        Outcome::MethodNotAllowed
    } else {
        Outcome::NotFound
    };
    g.error(session, ctx, outcome).await
}

pub(crate) fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn audit_auth(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each path and method has one handler.
    #[test]
    pub(crate) fn one_route_per_path_and_method() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(r.path.starts_with("/.aalgate/"), "{}", r.path);
            assert!(
                seen.insert((r.path, r.takes == Takes::Post)),
                "{} twice",
                r.path
            );
        }
    }
}
