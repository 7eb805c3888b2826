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
mod oidc;
mod resume;
pub(crate) mod scim;
mod signin;
mod switch;

use std::future::Future;
use std::pin::Pin;

use pingora::prelude::*;

use aalgate_policy::Aal;

use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::state::{Ctx, State};

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
type Handler = for<'a, 'b> fn(
    &'a State,
    &'a mut Exchange<'b>,
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>>;

/// The methods a route takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// `GET` and `HEAD`: pages, files, keys.
    Read,
    /// `POST`: what changes something (always CSRF-checked by its handler).
    Post,
}

struct Route {
    path: &'static str,
    takes: Takes,
    handler: Handler,
}

/// A handler that calls the endpoint function `$f(state, exchange)`, or an expression of `g`
/// and `x`.
macro_rules! to {
    ($f:path) => {
        to!(|g, x| $f(g, x))
    };
    (|$g:ident, $x:ident| $call:expr) => {{
        fn handler<'a, 'b>(
            $g: &'a State,
            $x: &'a mut Exchange<'b>,
        ) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
            Box::pin($call)
        }
        handler as Handler
    }};
}

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { path: "/.aalgate/auth", takes: Takes::Read, handler: to!(signin::auth_page) },
    Route { path: "/.aalgate/enroll", takes: Takes::Read, handler: to!(enroll::enroll_page) },
    Route { path: "/.aalgate/handoff", takes: Takes::Read, handler: to!(handoff::handoff) },
    Route { path: "/.aalgate/switch", takes: Takes::Read, handler: to!(switch::switch_user) },
    Route { path: "/.aalgate/webauthn/start", takes: Takes::Post, handler: to!(ceremony::ceremony_start) },
    Route { path: "/.aalgate/webauthn/finish", takes: Takes::Post, handler: to!(ceremony::ceremony_finish) },
    Route { path: "/.aalgate/resume", takes: Takes::Read, handler: to!(resume::resume) },
    Route { path: "/.aalgate/resume", takes: Takes::Post, handler: to!(resume::resume_confirmed) },
    Route { path: "/.aalgate/breakglass", takes: Takes::Read, handler: to!(|g, x| breakglass::breakglass_page(g, x, None)) },
    Route { path: "/.aalgate/breakglass", takes: Takes::Post, handler: to!(breakglass::breakglass_use) },
    Route { path: "/.aalgate/done", takes: Takes::Read, handler: to!(signin::done_page) },
    Route { path: "/.aalgate/logout", takes: Takes::Read, handler: to!(logout::logout_page) },
    Route { path: "/.aalgate/logout", takes: Takes::Post, handler: to!(logout::logout) },
    Route { path: "/.aalgate/jwks.json", takes: Takes::Read, handler: to!(jwks::jwks) },
    Route { path: "/.aalgate/oidc/start", takes: Takes::Read, handler: to!(oidc::start) },
    Route { path: "/.aalgate/oidc/callback", takes: Takes::Read, handler: to!(oidc::callback) },
    Route { path: "/.aalgate/oidc/enroll", takes: Takes::Post, handler: to!(oidc::enroll) },
    Route { path: "/.aalgate/oidc/backchannel-logout", takes: Takes::Post, handler: to!(oidc::backchannel_logout) },
    Route { path: "/.aalgate/static/aalgate.js", takes: Takes::Read, handler: to!(|g, x| assets::static_file(g, x, "/.aalgate/static/aalgate.js")) },
    Route { path: "/.aalgate/static/aalgate.css", takes: Takes::Read, handler: to!(|g, x| assets::static_file(g, x, "/.aalgate/static/aalgate.css")) },
];

/// Answers a request for `path` under `/.aalgate/`.
pub(crate) async fn dispatch(g: &State, x: &mut Exchange<'_>, path: &str) -> Result<bool> {
    x.ctx.outcome = Outcome::Gateway;
    if path == scim::PREFIX || path.starts_with("/.aalgate/scim/v2/") {
        return scim::handle(g, x, path).await;
    }
    let method = &x.session.req_header().method;
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
            return (r.handler)(g, x).await;
        }
    }
    let outcome = if known {
        Outcome::MethodNotAllowed
    } else {
        Outcome::NotFound
    };
    x.error(outcome).await
}

pub(crate) fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn audit_auth(
    st: &State,
    ctx: &Ctx,
    event: &str,
    user: Option<&str>,
    aal: Option<Aal>,
    credential: Option<&str>,
    detail: Option<&str>,
) {
    st.audit.emit_for(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each path and method has one handler.
    #[test]
    fn one_route_per_path_and_method() {
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
