//! Header hygiene: which client headers never reach the upstream, and the gateway's cookie.

use http::HeaderMap;

/// The session cookie on a plain-HTTP (localhost) listener. Browsers treat `http://localhost`
/// as a secure context but `Secure` cookies and the `__Host-` prefix need HTTPS elsewhere, so
/// plain HTTP gets an unprefixed, non-Secure cookie; the config refuses plain HTTP off loopback.
pub const COOKIE_PLAIN: &str = "aalgate";
/// The session cookie on a TLS listener: `__Host-` pins it to this host, Path=/ and Secure.
pub const COOKIE_TLS: &str = "__Host-aalgate";
/// The browser-binding cookie (ceremonies and CSRF tokens) on plain HTTP.
pub const BIND_PLAIN: &str = "aalgate-bind";
/// The browser-binding cookie on TLS listeners.
pub const BIND_TLS: &str = "__Host-aalgate-bind";

/// Whether a cookie name is one of the gateway's own (never forwarded, never set upstream).
pub fn is_our_cookie(name: &[u8]) -> bool {
    [COOKIE_PLAIN, COOKIE_TLS, BIND_PLAIN, BIND_TLS]
        .iter()
        .any(|n| n.as_bytes() == name)
}

/// The identity headers the gateway sets; clients can never send them.
pub const USER: &str = "x-aalgate-user";
/// Reached AAL (1-3).
pub const AAL: &str = "x-aalgate-aal";
/// The person's groups that the app's policy names, comma-separated (set when it names any).
pub const GROUPS: &str = "x-aalgate-groups";
/// The person's e-mail address, when IT set one.
pub const EMAIL: &str = "x-aalgate-email";
/// Unix time of the session's authentication.
pub const AUTH_TIME: &str = "x-aalgate-auth-time";
/// The signed JWT assertion.
pub const ASSERTION: &str = "x-aalgate-assertion";
/// Set on requests of an emergency (break-glass) session: the code's id.
pub const BREAKGLASS: &str = "x-aalgate-breakglass";
/// On every request of a signed-in browser: its logout token. An app puts it in its sign-out
/// form (a field named `csrf`, posted to `/.aalgate/logout` from its own pages), and one click
/// signs out; without it, the gateway asks for a confirmation first.
pub const LOGOUT_TOKEN: &str = "x-aalgate-logout-token";
/// On a request a per-request ceremony signed: the secret request nonce (base64url), which
/// the app keeps with its record to recompute the digest later.
pub const REQUEST_NONCE: &str = "x-aalgate-request-nonce";
/// On a request a per-request ceremony signed: the request digest the key signed over
/// (base64url), as the audit event `request_signed` has it.
pub const REQUEST_DIGEST: &str = "x-aalgate-request-digest";

/// Lowercases and maps every other non-alphanumeric byte to `-`, the way servers and CGI
/// gateways fold header names, so that `X_Aalgate.User` is caught as `x-aalgate-user`.
/// A name already in that form (every name `http` parsed: they are lowercase) is borrowed.
fn fold(name: &str) -> std::borrow::Cow<'_, str> {
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(aalgate_policy::allow::fold_header(name))
    }
}

/// Whether a client-sent header must be removed before forwarding: the gateway's identity
/// headers in any spelling; the forwarding, client-address and URL-rewrite headers the gateway
/// sets or ignores; identity headers other proxies use; and method overrides, which would let a
/// request matched as one method run as another.
pub fn is_reserved(name: &str) -> bool {
    let folded = fold(name);
    // A leading or trailing `_` or `.` (`_X-Aalgate-User`) is dropped by some CGI gateways.
    let f = folded.trim_matches('-');
    // A framing or routing header spelled with `_`, `.` or another token character where a `-`
    // belongs is one header to pingora and another to a CGI-style backend that folds names
    // (nginx drops such names by default).
    let respelled = name
        .bytes()
        .any(|b| !b.is_ascii_alphanumeric() && b != b'-')
        && matches!(
            f,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "upgrade"
                | "te"
                | "trailer"
                | "expect"
                | "cookie"
                | "authorization"
        );
    respelled
        || f.starts_with("x-aalgate")
        || f.starts_with("x-forwarded-")
        || matches!(
            f,
            "forwarded"
                | "x-real-ip"
                | "x-client-ip"
                | "client-ip"
                | "true-client-ip"
                | "x-cluster-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-original-url"
                | "x-original-uri"
                | "x-rewrite-url"
                | "x-original-host"
                | "x-host"
                | "front-end-https"
                | "x-request-id"
                | "remote-user"
                | "x-remote-user"
                | "x-user"
                | "x-auth-user"
                | "x-authenticated-user"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override"
        )
}

/// Whether a `Set-Cookie` value sets one of the gateway's cookies. Works on bytes (a non-UTF-8
/// attribute must not hide the name) and sees through a nameless `=aalgate=...`, which browsers
/// send back as `aalgate=...`.
pub fn set_cookie_is_ours(value: &[u8]) -> bool {
    let pair = value.split(|&b| b == b';').next().unwrap_or(value);
    let mut it = pair.splitn(2, |&b| b == b'=');
    let mut name = it.next().unwrap_or(b"").trim_ascii();
    if name.is_empty() {
        let rest = it.next().unwrap_or(b"");
        name = rest
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
    }
    is_our_cookie(name)
}

/// A `Set-Cookie` value without its `Domain` attributes, or `None` when it has none. Every
/// other byte is kept as the app wrote it (on bytes: a non-UTF-8 attribute must not hide one).
/// Host-only, the cookie stays on the host that set it: `JSESSIONID=FIXED; Domain=clinic.example`
/// from one app would otherwise be sent to every sibling app host (session fixation).
pub fn set_cookie_without_domain(value: &[u8]) -> Option<Vec<u8>> {
    let mut parts = value.split(|&b| b == b';');
    let pair = parts.next().unwrap_or(value);
    let mut out = pair.to_vec();
    let mut dropped = false;
    for attr in parts {
        let name = attr
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(attr)
            .trim_ascii();
        if name.eq_ignore_ascii_case(b"domain") {
            dropped = true;
            continue;
        }
        out.push(b';');
        out.extend_from_slice(attr);
    }
    dropped.then_some(out)
}

/// The values of cookie `name` across every `Cookie` header, borrowed.
pub fn cookie_value_iter<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    aalgate_session::cookie_value_iter(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
        name,
    )
}

/// The values of cookie `name` across every `Cookie` header.
pub fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    aalgate_session::cookie_values(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
        name,
    )
}

/// The `Cookie` header to forward: every cookie except the gateway's own (both names), bytes
/// otherwise unchanged. `None` when nothing is left.
pub fn cookies_without_ours(headers: &HeaderMap) -> Option<Option<String>> {
    let mut touched = false;
    let mut kept: Vec<&str> = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(v) = v.to_str() else {
            touched = true;
            continue;
        };
        for pair in v.split(';') {
            let p = pair.trim();
            let name = p.split_once('=').map(|(n, _)| n.trim()).unwrap_or(p);
            if is_our_cookie(name.as_bytes()) {
                touched = true;
            } else if !p.is_empty() {
                kept.push(p);
            }
        }
    }
    if headers.get_all(http::header::COOKIE).iter().count() > 1 {
        touched = true;
    }
    touched.then(|| (!kept.is_empty()).then(|| kept.join("; ")))
}

/// The app's cookies of a request (every cookie but the gateway's), as one `Cookie` value.
pub fn app_cookies(headers: &HeaderMap) -> Option<String> {
    match cookies_without_ours(headers) {
        Some(stripped) => stripped,
        None => headers
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|v| !v.trim().is_empty()),
    }
}

/// The `Cookie` value of a resumed request: the kept cookies (those the browser sent with the
/// form, path-scoped ones included), then every current cookie whose name is not among them.
/// On a name in both the kept one wins, so a CSRF cookie still matches the token in its form.
/// The gateway's own cookies are never part of it.
pub fn merge_cookies(kept: Option<&str>, current: Option<&str>) -> Option<String> {
    let pairs = |v: Option<&str>| -> Vec<(String, String)> {
        v.unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let name = p.split_once('=').map(|(n, _)| n.trim()).unwrap_or(p);
                (name.to_string(), p.to_string())
            })
            .filter(|(n, _)| !is_our_cookie(n.as_bytes()))
            .collect()
    };
    let mut out = pairs(kept);
    for (n, p) in pairs(current) {
        if !out.iter().any(|(k, _)| *k == n) {
            out.push((n, p));
        }
    }
    (!out.is_empty()).then(|| {
        out.into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Whether a request is a script call (XHR/fetch) rather than a page navigation.
pub fn is_script_request(headers: &HeaderMap) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mode = get("sec-fetch-mode");
    if !mode.is_empty() {
        return !mode.eq_ignore_ascii_case("navigate");
    }
    if get("x-requested-with").eq_ignore_ascii_case("xmlhttprequest") {
        return true;
    }
    let accept = get("accept");
    accept.contains("application/json") && !accept.contains("text/html")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn upstream_cookies_lose_their_domain_and_nothing_else() {
        let strip = |v: &str| {
            set_cookie_without_domain(v.as_bytes()).map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(
            strip("JSESSIONID=FIXED; Domain=localhost; Path=/").as_deref(),
            Some("JSESSIONID=FIXED; Path=/")
        );
        assert_eq!(
            strip("a=1; path=/app; DOMAIN=.clinic.example; Secure; HttpOnly; SameSite=Lax; domain = x").as_deref(),
            Some("a=1; path=/app; Secure; HttpOnly; SameSite=Lax")
        );
        // A value holding `domain=` is data, not an attribute.
        assert_eq!(strip("q=domain=evil; Path=/"), None);
        assert_eq!(strip("theme=dark; Max-Age=60"), None);
    }

    #[test]
    fn resumed_cookies_keep_the_forms_own_and_add_the_rest() {
        assert_eq!(
            merge_cookies(
                Some("JSESSIONID=a; csrftoken=K1"),
                Some("csrftoken=K2; theme=dark; aalgate=s; __Host-aalgate-bind=b")
            )
            .as_deref(),
            Some("JSESSIONID=a; csrftoken=K1; theme=dark")
        );
        assert_eq!(merge_cookies(None, Some("aalgate=s")), None);
        assert_eq!(
            merge_cookies(Some("aalgate=x; a=1"), None).as_deref(),
            Some("a=1")
        );
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; aalgate-bind=x"));
        assert_eq!(app_cookies(&h).as_deref(), Some("a=1"));
        h.insert("cookie", HeaderValue::from_static("a=1; b=2"));
        assert_eq!(app_cookies(&h).as_deref(), Some("a=1; b=2"));
        h.insert("cookie", HeaderValue::from_static("aalgate=1"));
        assert_eq!(app_cookies(&h), None);
    }

    #[test]
    fn reserved_in_every_spelling() {
        for n in [
            "X-Aalgate-User",
            "x_aalgate_user",
            "X.AALGATE.aal",
            "x-aalgate-assertion",
            "X-AALGATE_AUTH.TIME",
            "X-Forwarded-For",
            "x_forwarded_host",
            "Forwarded",
            "X-Real-IP",
            "X-Original-URL",
            "x-rewrite-url",
            "X-Request-Id",
        ] {
            assert!(is_reserved(n), "{n}");
        }
        for n in [
            "x-aal",
            "content-type",
            "x-forwarded",
            "authorization",
            "cookie",
        ] {
            assert!(!is_reserved(n), "{n}");
        }
    }

    #[test]
    fn set_cookie_names() {
        let ours: [&[u8]; 6] = [
            b"aalgate=x; Path=/",
            b"__Host-aalgate=x",
            b" aalgate =x",
            b"=aalgate=x",
            b"aalgate=x; a=\xe9",
            b"aalgate",
        ];
        for v in ours {
            assert!(set_cookie_is_ours(v), "{}", String::from_utf8_lossy(v));
        }
        let theirs: [&[u8]; 5] = [b"app=1", b"aalgate2=x", b"x=aalgate", b"", b"=x"];
        for v in theirs {
            assert!(!set_cookie_is_ours(v), "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; aalgate=SID; __Host-aalgate=T; b=\"2\""),
        );
        h.append("cookie", HeaderValue::from_static("aalgate=SECOND"));
        assert_eq!(cookie_values(&h, COOKIE_PLAIN), ["SID", "SECOND"]);
        assert_eq!(cookie_values(&h, COOKIE_TLS), ["T"]);
        assert_eq!(
            cookies_without_ours(&h),
            Some(Some("a=1; b=\"2\"".to_string()))
        );
        let mut only = HeaderMap::new();
        only.append("cookie", HeaderValue::from_static("aalgate=x"));
        assert_eq!(cookies_without_ours(&only), Some(None));
        let mut none = HeaderMap::new();
        none.append("cookie", HeaderValue::from_static("a=1"));
        assert_eq!(cookies_without_ours(&none), None);
    }

    #[test]
    fn script_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_script_request(&h));
        h.insert("accept", HeaderValue::from_static("application/json"));
        assert!(is_script_request(&h));
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(!is_script_request(&h));
        h.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        assert!(is_script_request(&h));
    }
}
