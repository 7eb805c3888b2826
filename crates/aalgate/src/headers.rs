//! Header hygiene: which client headers never reach the upstream, and the gateway's cookie.

use http::HeaderMap;

/// The session cookie on a plain-HTTP (localhost) listener. Browsers treat `http://localhost`
/// as a secure context but `Secure` cookies and the `__Host-` prefix need HTTPS elsewhere, so
/// plain HTTP gets an unprefixed, non-Secure cookie; the config refuses plain HTTP off loopback.
pub const COOKIE_PLAIN: &str = "aalgate";
/// The session cookie on a TLS listener: `__Host-` pins it to this host, Path=/ and Secure.
pub const COOKIE_TLS: &str = "__Host-aalgate";

/// The identity headers the gateway sets; clients can never send them.
pub const USER: &str = "x-aalgate-user";
/// Reached AAL (1-3).
pub const AAL: &str = "x-aalgate-aal";
/// Unix time of the session's authentication.
pub const AUTH_TIME: &str = "x-aalgate-auth-time";
/// The signed JWT assertion.
pub const ASSERTION: &str = "x-aalgate-assertion";

/// Lowercases and maps `_` and `.` to `-`, the way some servers fold header names, so that
/// `X_Aalgate.User` is caught as `x-aalgate-user`.
fn fold(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// Whether a client-sent header must be removed before forwarding: the gateway's identity
/// headers in any spelling, and the forwarding/rewrite headers the gateway sets or ignores.
pub fn is_reserved(name: &str) -> bool {
    let f = fold(name);
    f.starts_with("x-aalgate")
        || f.starts_with("x-forwarded-")
        || matches!(
            f.as_str(),
            "forwarded"
                | "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "x-original-url"
                | "x-original-uri"
                | "x-rewrite-url"
                | "x-request-id"
        )
}

/// Tokens of `Connection` that name other headers (hop-by-hop), lowercased. `close`,
/// `keep-alive` and `upgrade` are connection options, not header names.
pub fn connection_header_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !matches!(t.as_str(), "close" | "keep-alive" | "upgrade"))
        .collect()
}

/// The values of cookie `name` across every `Cookie` header.
pub fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((n, val)) = pair.trim().split_once('=') {
                if n.trim() == name {
                    out.push(val.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    out
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
            if name == COOKIE_PLAIN || name == COOKIE_TLS {
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
    fn connection_tokens() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("keep-alive, X-Aalgate-User"),
        );
        h.append("connection", HeaderValue::from_static("Upgrade,x-foo"));
        assert_eq!(connection_header_names(&h), ["x-aalgate-user", "x-foo"]);
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
