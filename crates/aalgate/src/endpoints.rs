//! The gateway's own endpoints under `/.aalgate/`, never forwarded: one table of path,
//! method and handler. A new endpoint is a row here and a handler; a path in the table with
//! another method is 405, any other path 404.

use std::future::Future;
use std::pin::Pin;

use pingora::prelude::*;

use crate::outcome::Outcome;
use crate::state::{Ctx, Gateway, Reply};

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

struct Route {
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
const ROUTES: &[Route] = &[
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
    Route { path: "/.aalgate/jwks.json", takes: Takes::Read, handler: to!(|g, s, c| jwks(g, s, c)) },
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

/// `GET /.aalgate/jwks.json`: the key the upstream checks assertions with.
async fn jwks(g: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let reply = Reply::json(200, g.signer.jwks().to_string());
    g.send(session, ctx, reply).await
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
