//! Answering one request: the [`Exchange`] of a pingora session and its [`Ctx`], the gateway's
//! own responses (pages, JSON errors, refusals) with their security headers, and reading a
//! bounded request body or a same-origin form.

pub(crate) mod upstream;

use aalgate_auth::Token;
use aalgate_policy::Aal;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

use crate::headers;
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::{bind_name, csrf_of};
use crate::state::{Ctx, Reply, State};

pub(crate) fn has_request_body(req: &RequestHeader) -> bool {
    let cl = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    req.headers.contains_key(http::header::TRANSFER_ENCODING) || cl.is_some_and(|v| v != "0")
}

/// Whether the request carries a body. HTTP/1 declares one (Content-Length or
/// Transfer-Encoding); an HTTP/2 request has one unless its headers ended the stream, with or
/// without a Content-Length.
pub(crate) fn has_body(session: &Session) -> bool {
    match session.as_downstream() {
        ServerSession::H2(h2) => !h2.is_body_empty(),
        _ => has_request_body(session.req_header()),
    }
}

/// Bodies up to this size are read whole, within the client timeout, before the app is
/// contacted (as nginx buffers requests): a client that stalls or breaks one off gets 408 or
/// 400 and the app sees nothing. It fits pingora's 64 KiB retry buffer, which then sends it
/// (pingora keeps up to 64 KiB of every forwarded body there for the request's life anyway).
pub(crate) const READ_AHEAD: usize = 48 * 1024;

/// What [`read_ahead`] did with a request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadAhead {
    /// No body, or one left to stream (HTTP/1: larger than [`READ_AHEAD`], unsized,
    /// `Expect: 100-continue`, an upgrade, or every slot taken).
    Stream,
    /// Read whole: its length.
    Whole(usize),
    /// An HTTP/2 body that cannot be read whole: pingora reads HTTP/2 bodies without a
    /// timeout, so it is not streamed; the stream is reset with `HTTP_1_1_REQUIRED` and the
    /// browser sends the request again over HTTP/1.1, where each read has `client_timeout`.
    Http1Required,
}

/// Whether an HTTP/2 request declares a body larger than [`READ_AHEAD`] (see
/// [`ReadAhead::Http1Required`]).
pub(crate) fn h2_too_large(session: &Session) -> bool {
    matches!(session.as_downstream(), ServerSession::H2(_))
        && declared_length(session.req_header()).is_some_and(|n| n > READ_AHEAD)
}

fn declared_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads a small request body ahead (see [`READ_AHEAD`]) within `total`, holding one of
/// `slots` meanwhile.
pub(crate) async fn read_ahead(
    session: &mut Session,
    slots: &tokio::sync::Semaphore,
    total: std::time::Duration,
) -> std::result::Result<ReadAhead, Outcome> {
    if !has_body(session) {
        return Ok(ReadAhead::Stream);
    }
    let req = session.req_header();
    let h2 = matches!(session.as_downstream(), ServerSession::H2(_));
    if h2_too_large(session) {
        return Ok(ReadAhead::Http1Required);
    }
    // HTTP/1: only a declared length within bounds, and no interim answer or upgrade to wait
    // for (the app answers `Expect: 100-continue`).
    if !h2
        && (declared_length(req).is_none_or(|n| n > READ_AHEAD)
            || req.headers.contains_key(http::header::EXPECT)
            || req.headers.contains_key(http::header::UPGRADE))
    {
        return Ok(ReadAhead::Stream);
    }
    let Ok(_slot) = slots.try_acquire() else {
        return Ok(if h2 {
            ReadAhead::Http1Required
        } else {
            ReadAhead::Stream
        });
    };
    session.as_downstream_mut().enable_retry_buffering();
    let read = async {
        let mut read = 0;
        // HTTP/2 reads return one DATA frame (16 KiB at most): below 64 KiB in all. A body of
        // exactly READ_AHEAD is whole once its end is read.
        while read <= READ_AHEAD {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) => return Ok(Some(read)),
                Err(e) => {
                    return Err(match BodyError::from_read(&e) {
                        BodyError::Broken(o) => o,
                        BodyError::TooLarge => Outcome::BadRequest,
                    })
                }
            }
        }
        Ok(None)
    };
    // In total, not per read: a slot is not held by a trickle.
    let whole = match tokio::time::timeout(total, read).await {
        Ok(Ok(whole)) => whole,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Outcome::ClientTimeout),
    };
    let truncated = match session.as_downstream() {
        ServerSession::H1(s) => s.retry_buffer_truncated(),
        ServerSession::H2(s) => s.retry_buffer_truncated(),
        _ => false,
    };
    if truncated {
        // Never forward a body whose start pingora no longer holds (cannot happen: reads
        // stop below its 64 KiB).
        return Err(Outcome::InternalError);
    }
    Ok(match whole {
        Some(n) => ReadAhead::Whole(n),
        None if h2 => ReadAhead::Http1Required,
        None => ReadAhead::Stream,
    })
}

/// The store is down: constant words for users; the detail goes to the log.
pub(crate) const MSG_UNAVAILABLE: &str =
    "The sign-in service is temporarily unavailable. Try again in a few seconds.";

/// Largest JSON body a ceremony endpoint reads.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// One request being answered: pingora's session and this request's [`Ctx`], with the
/// gateway's responses to it. Its handlers take the shared state beside it:
/// `async fn(&State, &mut Exchange) -> Result<bool>`.
pub(crate) struct Exchange<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) ctx: &'a mut Ctx,
    /// What responses need of the shared state: the audit log they settle first, `hsts`,
    /// the public scheme, the body limit.
    st: &'a State,
}

impl<'a> Exchange<'a> {
    pub(crate) fn new(st: &'a State, session: &'a mut Session, ctx: &'a mut Ctx) -> Self {
        Exchange { session, ctx, st }
    }
}

impl Exchange<'_> {
    pub(crate) async fn send(&mut self, reply: Reply) -> Result<bool> {
        // What this response reports (a sign-in, a sign-out, a break-glass use) is on record
        // before the browser hears of it.
        self.st.audit.settle(&self.ctx.audit).await;
        let req = self.session.req_header();
        let head = req.method == http::Method::HEAD;
        // A body the client is still sending would be read as the next request: close instead.
        if has_body(self.session) {
            self.session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(reply.status, Some(8))?;
        resp.insert_header("content-type", reply.content_type)?;
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-content-type-options", "nosniff")?;
        resp.insert_header("referrer-policy", "no-referrer")?;
        resp.insert_header("x-frame-options", "DENY")?;
        resp.insert_header("content-security-policy", pages::CSP)?;
        resp.insert_header("x-request-id", self.ctx.request_id.as_str())?;
        if self.ctx.tls && self.st.hsts {
            resp.insert_header("strict-transport-security", "max-age=31536000")?;
        }
        for (n, v) in reply.headers {
            resp.append_header(n, v)?;
        }
        self.session
            .write_response_header(Box::new(resp), head)
            .await?;
        if !head {
            self.session
                .write_response_body(Some(Bytes::from(reply.body)), true)
                .await?;
        }
        Ok(true)
    }

    /// Refuses with the outcome's own status and the standard page (or error JSON).
    pub(crate) async fn error(&mut self, outcome: Outcome) -> Result<bool> {
        let status = outcome.status().unwrap_or(500);
        self.error_with_status(status, outcome).await
    }

    /// [`Exchange::error`] with a status the outcome does not fix (a path too long for
    /// `bad_path`, pingora's own status for `error`).
    pub(crate) async fn error_with_status(
        &mut self,
        status: u16,
        outcome: Outcome,
    ) -> Result<bool> {
        let (title, text) = pages::error_text(status);
        self.refuse_as(status, outcome, title, text, 5).await
    }

    /// A refusal with its own words: a page for a navigation, the error JSON for a script.
    pub(crate) async fn refuse(
        &mut self,
        outcome: Outcome,
        title: &str,
        text: &str,
    ) -> Result<bool> {
        self.refuse_for(outcome, title, text, 5).await
    }

    /// [`Exchange::refuse`], where a 503 (or too many flows' 429) says to retry after `retry` seconds.
    pub(crate) async fn refuse_for(
        &mut self,
        outcome: Outcome,
        title: &str,
        text: &str,
        retry: u64,
    ) -> Result<bool> {
        let status = outcome.status().unwrap_or(500);
        self.refuse_as(status, outcome, title, text, retry).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn refuse_as(
        &mut self,
        status: u16,
        outcome: Outcome,
        title: &str,
        text: &str,
        retry: u64,
    ) -> Result<bool> {
        self.ctx.outcome = outcome;
        let code = outcome.json_code();
        let reply = if headers::is_script_request(&self.session.req_header().headers) {
            Reply::json(
                status,
                pages::error_json(status, code, &self.ctx.request_id),
            )
        } else {
            Reply::html(
                status,
                self.page_forward(
                    title,
                    &format!(
                        "<p>{}</p>{}",
                        pages::escape(text),
                        // A form sent into a store outage: it went nowhere, and it is not
                        // resent from here (only the person knows whether to send it again).
                        if status == 503 && self.session.req_header().method == http::Method::POST {
                            "<p>What you submitted was not sent to the application, and not kept. \
                             Go back to it, and submit it again once the application's pages load.</p>"
                        } else {
                            ""
                        },
                    ),
                    status == 503,
                ),
            )
        };
        // Retry-After where a wait is known: a 503, and the 429 of too many flows.
        let reply = if status == 503 || outcome == Outcome::FlowRateLimited {
            reply.header("retry-after", retry.to_string())
        } else {
            reply
        };
        self.send(reply).await
    }

    pub(crate) async fn json_error(&mut self, outcome: Outcome, message: &str) -> Result<bool> {
        self.ctx.outcome = outcome;
        let (status, code) = (outcome.status().unwrap_or(500), outcome.json_code());
        let body = serde_json::json!({ "error": code, "message": message, "request_id": self.ctx.request_id });
        self.send(Reply::json(status, body.to_string())).await
    }

    /// The store failed during a ceremony: 503 with the constant words, the cause in the log.
    pub(crate) async fn store_down(
        &mut self,
        e: &(dyn std::fmt::Display + Sync),
        what: &str,
    ) -> Result<bool> {
        tracing::warn!(request_id = %self.ctx.request_id, error = %e, "{what}");
        self.json_error(Outcome::StoreUnavailable, MSG_UNAVAILABLE)
            .await
    }

    /// A gateway page (`body_html` already escaped) with its one obvious next step: the same
    /// page again where repeating it is safe (`retry`: a GET after a temporary failure), else
    /// the start page of the app this host serves, else (an auth origin with no app of its
    /// own) the way back to the page the person came from.
    pub(crate) fn page_forward(&self, title: &str, body_html: &str, retry: bool) -> String {
        let method = &self.session.req_header().method;
        let rid = &self.ctx.request_id;
        if retry && (method == http::Method::GET || method == http::Method::HEAD) {
            // `href=""` is this very URL: the page never spells it out (no URL, and so no
            // health detail, on a page before sign-in).
            let again = "<p><a class=\"button\" href=\"\">Try again</a></p>";
            return pages::page(title, &format!("{body_html}{again}"), rid);
        }
        match self.to_app() {
            Some(link) => pages::page(title, &format!("{body_html}{link}"), rid),
            // The script runs the button (history.back); the page needs nothing else of it.
            None => pages::page_with(
                title,
                &format!(
                    "{body_html}<p><button type=\"button\" data-action=\"back\">Go back</button></p>"
                ),
                rid,
                " data-back=\"1\"",
            ),
        }
    }

    /// A step-up the person cannot pass: the route needs a key level none of their keys reaches
    /// (an AAL3 route, only a passkey). Said before any tap is asked for, with what to do.
    /// `back`: the app's start page. The proxy answers it too, before any flow, when it knows the
    /// person's keys cannot pass a route's step-up (a script call gets the 409 JSON).
    pub(crate) async fn no_suitable_key(
        &mut self,
        app: &str,
        aal: Aal,
        back: &str,
    ) -> Result<bool> {
        if crate::headers::is_script_request(&self.session.req_header().headers) {
            return self
                .json_error(
                    Outcome::NoSuitableKey,
                    "None of your keys can confirm this action. Ask IT for a key invite.",
                )
                .await;
        }
        self.ctx.outcome = Outcome::NoSuitableKey;
        let app = pages::escape(app);
        let back = pages::escape(back);
        let reply = Reply::html(
            self.ctx.outcome.status().unwrap_or(409),
            pages::page(
                if aal >= Aal::Aal3 {
                    "Hardware key needed"
                } else {
                    "Key needed"
                },
                &format!(
                    "<p>This action in <strong>{app}</strong> needs {} registered to you, and none is.</p>\
                     <p>Ask IT for a key invite: they confirm who you are, then send you a link that registers your key. Until then, this action is not available to you; the rest of {app} is.</p>\
                     <p><a class=\"button\" href=\"{back}\">Back to {app}</a></p>",
                    if aal >= Aal::Aal3 {
                        "a hardware security key"
                    } else {
                        "a passkey or security key"
                    }
                ),
                &self.ctx.request_id,
            ),
        );
        self.send(reply).await
    }

    /// A link to the start page of the app this host serves, if it serves one.
    pub(crate) fn to_app(&self) -> Option<String> {
        self.st.display_of_host(self.ctx).map(|app| {
            format!(
                "<p><a class=\"button\" href=\"/\">Go to {}</a></p>",
                pages::escape(&app)
            )
        })
    }

    /// Whether this request comes from the browser whose binding cookie hashes to `hash`.
    pub(crate) fn is_bound_browser(&self, hash: &str) -> bool {
        headers::cookie_values(&self.session.req_header().headers, bind_name(self.ctx.tls))
            .iter()
            .filter_map(|v| Token::parse(v))
            .any(|t| constant_eq(t.hash().as_bytes(), hash.as_bytes()))
    }

    /// The browser binding: the cookie value, and whether it must be set now.
    pub(crate) fn binding(&self) -> (Token, bool) {
        browser_binding(self.session, self.ctx)
    }

    /// A same-origin request (`Origin`, or `Sec-Fetch-Site` when a form post sends
    /// `Origin: null` under `Referrer-Policy: no-referrer`) from a browser with a binding
    /// cookie: that binding, or `None`.
    pub(crate) fn same_origin_binding(&self) -> Option<Token> {
        let h = &self.session.req_header().headers;
        // The origin browsers see (the scheme of `public_origin`: a TLS load balancer may sit in
        // front of a plain listener), judged as kept forms are, but with no `Referer` fallback:
        // the gateway's own pages always get `Origin` or `Sec-Fetch-Site` from a browser.
        let own = format!("{}://{}", self.st.signin.scheme, self.ctx.host);
        let same = matches!(
            crate::preserve::evidence(h, &own),
            crate::preserve::Evidence::SameOrigin
        ) && (h.contains_key("origin") || h.contains_key("sec-fetch-site"));
        if !same {
            return None;
        }
        headers::cookie_values(h, bind_name(self.ctx.tls))
            .iter()
            .find_map(|v| Token::parse(v))
    }

    /// A same-origin POST with the right token in `X-Aalgate-Csrf`: the binding, or `None`.
    pub(crate) fn checked_post(&self) -> Option<Token> {
        let bind = self.same_origin_binding()?;
        let token = self
            .session
            .req_header()
            .headers
            .get("x-aalgate-csrf")?
            .to_str()
            .ok()?;
        constant_eq(token.as_bytes(), csrf_of(bind.expose()).as_bytes()).then_some(bind)
    }

    /// The body of a request to the gateway's own endpoints (at most `MAX_BODY`), within the
    /// client timeout in all (pingora's HTTP/2 reads have no timeout of their own).
    pub(crate) async fn read_body(&mut self) -> std::result::Result<Vec<u8>, BodyError> {
        read_limited_within(self.session, MAX_BODY, self.st.client_timeout).await
    }

    /// The answer to a body the client broke off: none to a client that is gone, else the
    /// outcome's page (408 for silence, 400 for broken framing).
    pub(crate) async fn broken_body(&mut self, outcome: Outcome) -> Result<bool> {
        tracing::debug!(request_id = %self.ctx.request_id, outcome = outcome.label(), "request body broken off");
        if outcome == Outcome::ClientGone {
            // Nothing to answer, and a connection with an unread body is never reused.
            self.session.set_keepalive(None);
            self.ctx.outcome = outcome;
            return Ok(true);
        }
        self.error(outcome).await
    }

    /// A same-origin form POST with the page's token in its `csrf` field: its fields, or `None`.
    pub(crate) async fn form_post(&mut self) -> Option<Vec<(String, String)>> {
        let bind = self.same_origin_binding()?;
        let body = self.read_body().await.ok()?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let want = csrf_of(bind.expose());
        fields
            .iter()
            .any(|(k, v)| k == "csrf" && constant_eq(v.as_bytes(), want.as_bytes()))
            .then_some(fields)
    }
}

/// The browser binding of a request: the cookie value, and whether it must be set now.
pub(crate) fn browser_binding(session: &Session, ctx: &Ctx) -> (Token, bool) {
    headers::cookie_values(&session.req_header().headers, bind_name(ctx.tls))
        .iter()
        .find_map(|v| Token::parse(v))
        .map(|t| (t, false))
        .unwrap_or_else(|| (Token::generate(), true))
}

pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a request body was not read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit (declared or as it arrived).
    TooLarge,
    /// The client broke it off: silent past `client_timeout` (`ClientTimeout`), framing that
    /// does not parse (`BadRequest`), or gone (`ClientGone`).
    Broken(Outcome),
}

impl BodyError {
    fn from_read(e: &pingora::Error) -> BodyError {
        use pingora::ErrorType;
        BodyError::Broken(match e.etype() {
            ErrorType::ReadTimedout => Outcome::ClientTimeout,
            ErrorType::ReadError | ErrorType::ConnectionClosed => Outcome::ClientGone,
            _ => Outcome::BadRequest,
        })
    }
}

/// [`read_limited`] within `total` as a whole, the only way the gateway reads a body itself:
/// a client trickling a byte per `client_timeout` cannot keep one of the few shared body slots,
/// and over HTTP/2, whose reads pingora does not time, a stalled body still ends.
pub(crate) async fn read_limited_within(
    session: &mut Session,
    limit: usize,
    total: std::time::Duration,
) -> std::result::Result<Vec<u8>, BodyError> {
    tokio::time::timeout(total, read_limited(session, limit))
        .await
        .unwrap_or(Err(BodyError::Broken(Outcome::ClientTimeout)))
}

/// The request body, up to `limit` bytes. Too large: not read at all when its length is
/// declared.
async fn read_limited(
    session: &mut Session,
    limit: usize,
) -> std::result::Result<Vec<u8>, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Not read at all; the connection closes when the answer goes out.
        return Err(BodyError::TooLarge);
    }
    // Sized once from the declared length (already checked against the limit).
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::from_read(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aalgate_auth::Token;

    #[test]
    fn csrf_tokens_depend_on_the_binding() {
        let (a, b) = (Token::generate(), Token::generate());
        assert_ne!(csrf_of(a.expose()), csrf_of(b.expose()));
        assert_eq!(csrf_of(a.expose()), csrf_of(a.expose()));
        assert!(
            constant_eq(b"abc", b"abc")
                && !constant_eq(b"abc", b"abd")
                && !constant_eq(b"ab", b"abc")
        );
    }
}
