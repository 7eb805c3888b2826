//! Hostile inputs: each gets a precise refusal, none reaches the upstream, and the gateway
//! neither panics nor dies.

use aalgate_tests::{send, Gateway, Upstream};

use crate::policy;

/// (raw request target, expected status). Targets aim at the public `/static/**` route or the
/// denied `/debug/**` route, so a wrong guess would be visible as an upstream request.
const TARGETS: &[(&str, u16)] = &[
    ("/static/..%2Fdebug/x", 400),
    ("/static/..%2fdebug/x", 400),
    ("/static%2F..%2F..%2Fdebug", 400),
    ("/static/..%5Cdebug", 400),
    ("/static/..%5cdebug", 400),
    ("/static/..\\debug", 400),
    ("/static\\..\\debug", 400),
    ("/static/x%00.css", 400),
    ("/static/x%0d%0aX-Aalgate-User:%20root", 400),
    ("/static/x%09", 400),
    ("/static/x%7f", 400),
    ("/static/%", 400),
    ("/static/%zz", 400),
    ("/static/%2", 400),
    ("/static/%c0%ae%c0%ae/debug", 400),
    ("/static/%e0%80%ae%e0%80%ae/debug", 400),
    ("/static/%ff", 400),
    ("/static/%c3", 400),
    ("/static/..;/debug/x", 400),
    ("/static/.;/x", 400),
    ("/static/%2e%2e;x/debug", 400),
    ("/;x/debug", 400),
    ("*", 400),
    ("localhost:1", 400),
    ("debug", 400),
    ("ftp://localhost/static/x", 400),
    ("http://user@localhost/static/x", 400),
    ("http://evil.example/static/x", 400),
    ("https://evil.example:443/static/x", 400),
    // Resolved dot segments land on the denied route.
    ("/static/../debug/x", 403),
    ("/static/%2e%2e/debug/x", 403),
    ("/static/%2E%2E/debug/x", 403),
    ("/static/.%2e/debug/x", 403),
    ("/static//..//debug/x", 403),
    ("//debug/x", 403),
    ("/./debug/x", 403),
    ("/debug;jsessionid=1/x", 403),
    ("/debug/", 403),
    ("/debug", 403),
    ("/%64ebug/x", 403),
    ("/static/../../../../debug", 403),
    // Double encoding is not decoded twice: not public, so sign-in.
    ("/static%252F..%252Fdebug", 302),
    ("/%252e%252e/debug", 302),
    ("/DEBUG/x", 302),
    ("/static../debug", 302),
    ("/.aalgate/../debug/x", 403),
];

#[test]
fn hostile_targets_are_refused_and_never_forwarded() {
    let up = Upstream::start();
    let mut g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let mut failures = Vec::new();
    for (target, want) in TARGETS {
        let r = send(
            g.port,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        if r.status != *want {
            failures.push(format!("{target}: got {} want {want}", r.status));
        }
    }
    // A fragment is refused, not cut off: pingora would drop it, the gateway reads the raw line.
    for t in ["/static/x#/../../debug", "/debug#x", "/static/a?b#c"] {
        let r = send(
            g.port,
            format!("GET {t} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        if r.status != 400 {
            failures.push(format!("{t}: got {} want 400", r.status));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(up.seen().is_empty(), "upstream received: {:?}", up.seen());
    assert!(g.alive(), "gateway died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn hostile_hosts_and_framing_are_refused() {
    let up = Upstream::start();
    let mut g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let p = g.port;
    let cases: Vec<(String, Vec<u16>)> = vec![
        ("GET /static/x HTTP/1.1\r\nConnection: close\r\n\r\n".into(), vec![400]),
        (format!("GET /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"), vec![400]),
        ("GET /static/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".into(), vec![421]),
        ("GET /static/x HTTP/1.1\r\nHost: localhost.evil.example\r\nConnection: close\r\n\r\n".into(), vec![421]),
        (format!("GET /static/x HTTP/1.1\r\nHost: localhost:{p}@evil.example\r\nConnection: close\r\n\r\n"), vec![400]),
        ("GET /static/x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n".into(), vec![400]),
        ("GET /static/x HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n".into(), vec![400]),
        ("GET /static/x HTTP/1.1\r\nHost: localhost:99999\r\nConnection: close\r\n\r\n".into(), vec![400]),
        (format!("GET http://evil.example/static/x HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n"), vec![400]),
        // Smuggling shapes aimed at the denied route: refused or answered by the gateway, never forwarded.
        (format!("POST /debug/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /debug/y HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n"), vec![400, 403]),
        (format!("POST /debug/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), vec![400, 403]),
        (format!("POST /debug/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: -1\r\n\r\n"), vec![400, 403]),
        (format!("POST /debug/x HTTP/1.1\r\nHost: localhost:{p}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), vec![400, 403]),
        (format!("GET /debug/x HTTP/1.1\nHost: localhost:{p}\n\n"), vec![400, 403]),
        (format!("GET /debug/x HTTP/1.1\r\nHost: localhost:{p}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /debug/y HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n"), vec![400, 403]),
        (format!("POST /x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 44\r\n\r\nGET /debug/y HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n"), vec![302]),
        (format!("GET /{} HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n", "a".repeat(9000)), vec![414, 400, 431]),
        (format!("GET /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nCookie: {}\r\nConnection: close\r\n\r\n", "a=b; ".repeat(20000)), vec![431]),
        ("\x00\x01\x02garbage\r\n\r\n".into(), vec![400, 0]),
        // h2c (or any non-WebSocket upgrade) on a public route would open a tunnel past the gateway.
        (format!("GET /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"), vec![400]),
        (format!("GET /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nUpgrade: TLS/1.2\r\nConnection: Upgrade\r\n\r\n"), vec![400]),
        // A lowercase method could be matched as one method and run as another.
        (format!("get /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n"), vec![400]),
        (format!("Post /static/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), vec![400]),
        // Empty lines before the request line do not hide a fragment.
        (format!("\r\n\r\nGET /static/x#/../../debug HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n"), vec![400]),
    ];
    let mut failures = Vec::new();
    for (raw, want) in &cases {
        let r = send(p, raw.as_bytes());
        if !want.contains(&r.status) {
            failures.push(format!(
                "{:?}: got {} want {want:?}",
                &raw[..raw.len().min(80)],
                r.status
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(up.seen().is_empty(), "upstream received: {:?}", up.seen());
    assert!(g.alive(), "gateway died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
}
