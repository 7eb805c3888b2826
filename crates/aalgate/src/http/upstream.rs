//! What a forwarded request and a kept form sent on after its sign-in share on the way to the
//! upstream and back: the peer and its timeouts, the request's hygiene and identity, and the
//! response's cookie protection, metrics and HSTS. The proxy's phases
//! (`upstream_peer`, `upstream_request_filter`, `response_filter`) and `/.aalgate/resume` both
//! call these.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::cache::{Forwarded, IdentityRef};
use crate::headers;
use crate::state::{Ctx, State};

/// The upstream of the request's app, with the configured timeouts (`req` is the client's
/// request: a WebSocket upgrade gets no read or write timeout).
pub(crate) fn peer(st: &State, req: &RequestHeader, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    // A retried request replays its body from the start through the check.
    if let Some(c) = ctx.verify_body.as_mut() {
        c.seen.clear();
    }
    let Some(rule) = ctx.rule.and_then(|i| ctx.policy.rules().get(i)) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no rule in context",
        ));
    };
    let up = &ctx.policy.app_of(rule).upstream;
    let mut peer = HttpPeer::new(up.address(), up.tls, up.host.clone());
    let (connect, silence) = st.upstream_timeouts;
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    // A WebSocket may be quiet for long; its life is bounded by the session instead.
    if !req.headers.contains_key(http::header::UPGRADE) {
        peer.options.read_timeout = Some(silence);
        peer.options.write_timeout = Some(silence);
    }
    Ok(Box::new(peer))
}

/// The request the upstream gets: the one normalized path and host, no spoofable or reserved
/// header and none of the gateway's cookies, then the `X-Forwarded-*` headers and the
/// identity (headers and a signed assertion) of an admitted session.
pub(crate) fn prepare_request(
    st: &State,
    client_ip: Option<IpAddr>,
    upstream: &mut RequestHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let Some(target) = &ctx.target else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no target in context",
        ));
    };
    upstream.set_raw_path(target.path_and_query().as_bytes())?;
    // The upstream sees the host that matching used, not another spelling of it.
    upstream.insert_header(http::header::HOST, ctx.host.as_str())?;
    // A body read whole goes with its length, as nginx sends a buffered one; otherwise pingora
    // sends an HTTP/2 body of unknown length chunked.
    if let Some(n) = ctx.body_length {
        upstream.remove_header(&http::header::TRANSFER_ENCODING);
        upstream.insert_header(http::header::CONTENT_LENGTH, n.to_string())?;
    }

    // pingora has already removed hop-by-hop headers and those named in Connection (and
    // refuses a Connection that names Host or X-Forwarded-*); what is left of Connection
    // is its WebSocket upgrade, which must stay.
    // And the headers this app reads the identity from (`identity_headers`), in any spelling.
    let custom = ctx
        .rule
        .and_then(|i| ctx.policy.rules().get(i))
        .map(|r| &ctx.policy.app_of(r).identity_headers);
    let reserved: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|k| headers::is_reserved(k.as_str()) || custom.is_some_and(|c| c.names(k.as_str())))
        .cloned()
        .collect();
    for name in reserved {
        upstream.remove_header(&name);
    }
    // The browser's logout token, read before its cookie is dropped (see LOGOUT_TOKEN).
    let logout = headers::cookie_value_iter(&upstream.headers, crate::state::bind_name(ctx.tls))
        .find_map(aalgate_auth::Token::parse)
        .map(|b| crate::state::csrf_of(b.expose()));
    if let Some(cookies) = headers::cookies_without_ours(&upstream.headers) {
        upstream.remove_header("cookie");
        if let Some(c) = cookies {
            upstream.insert_header("cookie", c)?;
        }
    }

    if let Some(ip) = client_ip {
        upstream.insert_header("x-forwarded-for", ip.to_string())?;
    }
    upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
    upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
    upstream.insert_header("x-request-id", ctx.request_id.as_str())?;

    set_identity(st, upstream, ctx, logout.as_deref())?;
    ctx.forwarded_at = Some(Instant::now());
    Ok(())
}

/// The identity of an admitted session: `X-Aalgate-*` headers and the signed assertion (with
/// only the groups the app's policy names), and the browser's logout token.
fn set_identity(
    st: &State,
    upstream: &mut RequestHeader,
    ctx: &Ctx,
    logout: Option<&str>,
) -> Result<()> {
    let (Some(s), Some(rule)) = (
        &ctx.session,
        ctx.rule.and_then(|i| ctx.policy.rules().get(i)),
    ) else {
        return Ok(());
    };
    let app_policy = ctx.policy.app_of(rule);
    let f = forwarded(st, ctx, s, app_policy)?;
    let custom = &app_policy.identity_headers;
    if let Some(g) = &f.groups {
        upstream.insert_header(headers::GROUPS, g.clone())?;
        if let Some(name) = &custom.groups {
            upstream.insert_header(name.clone(), g.clone())?;
        }
    }
    if let Some(e) = &f.email {
        upstream.insert_header(headers::EMAIL, e.clone())?;
        if let Some(name) = &custom.email {
            upstream.insert_header(name.clone(), e.clone())?;
        }
    }
    if let Some(name) = &custom.user {
        upstream.insert_header(name.clone(), f.user.clone())?;
    }
    upstream.insert_header(headers::USER, f.user.clone())?;
    upstream.insert_header(headers::AAL, f.aal.clone())?;
    upstream.insert_header(headers::AUTH_TIME, f.auth_time.clone())?;
    upstream.insert_header(headers::ASSERTION, f.assertion.clone())?;
    if let Some(token) = logout {
        upstream.insert_header(headers::LOGOUT_TOKEN, token)?;
    }
    if crate::breakglass::is_emergency(s) {
        upstream.insert_header(
            headers::BREAKGLASS,
            s.credential.clone().unwrap_or_default(),
        )?;
    }
    if let Some(b) = &ctx.signed {
        upstream.insert_header(headers::REQUEST_NONCE, b.nonce.as_str())?;
        upstream.insert_header(headers::REQUEST_DIGEST, b.digest.as_str())?;
    }
    Ok(())
}

/// The identity headers of a session for an app: cached beside their assertion, except for a
/// request a per-request ceremony signed (its assertion names its digest).
fn forwarded(
    st: &State,
    ctx: &Ctx,
    s: &aalgate_session::Session,
    app_policy: &aalgate_policy::App,
) -> Result<Arc<Forwarded>> {
    let app = &app_policy.name;
    let now = st.clock.now();
    // Only the groups this app's policy names: an app never learns the others.
    let visible: Option<Vec<String>> = (!app_policy.groups.is_empty()).then(|| {
        ctx.access
            .as_ref()
            .map(|a| {
                a.groups
                    .iter()
                    .filter(|g| app_policy.groups.binary_search(g).is_ok())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    });
    let who = crate::assertion::Identity {
        groups: visible.as_deref(),
        email: ctx
            .access
            .as_ref()
            .and_then(|a| a.email.as_deref())
            .filter(|_| app_policy.share_email),
    };
    let build = |digest: Option<&str>| -> Result<Forwarded> {
        let token = st
            .signer
            .sign_request(s, who, app, now, digest)
            .map_err(|e| Error::because(ErrorType::InternalError, "cannot sign assertion", e))?;
        let value = |v: String| {
            http::HeaderValue::try_from(v)
                .map_err(|e| Error::because(ErrorType::InternalError, "identity header value", e))
        };
        Ok(Forwarded {
            assertion: value(token)?,
            user: value(s.user.clone())?,
            aal: value(s.aal.number().to_string())?,
            auth_time: value(s.auth_time.0.to_string())?,
            groups: who.groups.map(|g| value(g.join(","))).transpose()?,
            email: who.email.map(|e| value(e.to_string())).transpose()?,
            issued: now,
        })
    };
    Ok(match (&ctx.signed, &ctx.session_key) {
        // A signed request's assertion names its digest: one of its own, never cached.
        (Some(b), _) => Arc::new(build(Some(b.digest.as_str()))?),
        (None, Some(k)) => {
            let key = IdentityRef {
                session: k,
                app,
                groups: who.groups,
                email: who.email,
            };
            st.assertions.get_or_build(key, now, || build(None))?
        }
        (None, None) => Arc::new(build(None)?),
    })
}

/// The response the browser gets: counted, the gateway's cookie names reserved, the app's
/// cookies kept on its host, HSTS on https.
pub(crate) fn prepare_response(st: &State, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let app_of_rule = ctx
        .rule
        .and_then(|i| ctx.policy.rules().get(i))
        .map(|r| ctx.policy.app_of(r));
    let app = app_of_rule.map_or("-", |a| a.name.as_str());
    if let Some(t) = ctx.forwarded_at {
        st.metrics
            .upstream_seconds
            .with_label_values(&[app])
            .observe(t.elapsed().as_secs_f64());
    }
    let class = match resp.status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    st.metrics
        .upstream_responses
        .with_label_values(&[app, class])
        .inc();
    // The gateway's cookie names are reserved: an upstream cannot set or clear them. The
    // app's own stay on its host unless it keeps their Domain (`keep_cookie_domain`).
    let keep_domain = app_of_rule.is_some_and(|a| a.keep_cookie_domain);
    let set_cookies: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    let ours = |v: &http::HeaderValue| headers::set_cookie_is_ours(v.as_bytes());
    let scoped = |v: &http::HeaderValue| {
        (!keep_domain)
            .then(|| headers::set_cookie_without_domain(v.as_bytes()))
            .flatten()
    };
    if set_cookies.iter().any(|v| ours(v) || scoped(v).is_some()) {
        resp.remove_header("set-cookie");
        for v in set_cookies.into_iter().filter(|v| !ours(v)) {
            match scoped(&v) {
                // Bytes that came in a header value are a header value without a part.
                Some(host_only) => {
                    if let Ok(h) = http::HeaderValue::from_bytes(&host_only) {
                        resp.append_header("set-cookie", h)?;
                    }
                }
                None => {
                    resp.append_header("set-cookie", v)?;
                }
            }
        }
    }
    if ctx.tls
        && st.hsts
        && !resp
            .headers
            .contains_key(http::header::STRICT_TRANSPORT_SECURITY)
    {
        resp.insert_header("strict-transport-security", "max-age=31536000")?;
    }
    Ok(())
}
