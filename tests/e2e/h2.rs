//! HTTP/2 on TLS listeners, as browsers connect: ALPN h2 with an HTTP/1.1 fallback and no h2c;
//! one host per request (`:authority` and any Host header agree, or 400), seen by every check
//! as under HTTP/1; nothing the HTTP/1 head checks refuse gets through as HTTP/2; and request
//! bodies keep the client timeout. Requests are sent with Python's hyper-h2
//! (`tests/h2client.py`), which sends malformed requests as given.

use std::process::Command;
use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use aalgate_tests::{fnv1a, h2_headers, h2_send, send, Gateway, Upstream};
use serde_json::json;

use crate::{make_session, policy};

/// An HTTP/1.1 request over TLS with curl: the status, given a Host header.
fn h1_status(port: u16, host: &str, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn tls_listeners_offer_http2_with_http1_fallback_and_plain_ones_refuse_h2c() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let store = EmbeddedStore::open(&g.state_dir()).expect("open embedded store");
    let cookie = make_session(&store, &host, "hana", Aal::Aal2, 60, 1);
    let cookie = format!("__Host-aalgate={cookie}");
    let port = g.port;
    let r = h2_send(&[
        json!({"port": port, "headers": h2_headers("GET", Some(&host), "/orders?q=1", &[("cookie", &cookie)])}),
        json!({"port": port, "headers": h2_headers("GET", Some(&host), "/orders", &[])}),
        json!({"port": port, "headers": h2_headers("GET", Some(&host), "/static/a.css", &[("cookie", "theme=dark"), ("cookie", &cookie)])}),
        json!({"port": port, "alpn": ["http/1.1"], "headers": []}),
    ]);
    assert_eq!(r[0].alpn.as_deref(), Some("h2"));
    assert_eq!(r[0].status, Some(200), "{r:?}\n{}", g.log());
    // Without a session: to sign-in, on this origin.
    assert_eq!(r[1].status, Some(302), "{:?}", r[1]);
    let loc = r[1]
        .headers
        .iter()
        .find(|(n, _)| n == "location")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        loc.starts_with(&format!("https://{host}/.aalgate/")) || loc.starts_with("/.aalgate/"),
        "{loc}"
    );
    // A client that offers only HTTP/1.1 gets it.
    assert_eq!(r[3].alpn.as_deref(), Some("http/1.1"));
    assert_eq!(h1_status(port, &host, "/static/a.css"), 200);
    let seen = up.take();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/orders?q=1", "/static/a.css", "/static/a.css"]);
    // The upstream gets HTTP/1.1 with the one host, the identity of the session, and the
    // app's cookies (crumbs joined) without the gateway's.
    assert_eq!(seen[0].one("host"), Some(host.as_str()));
    assert_eq!(seen[0].one("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(seen[0].one("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[0].one("x-aalgate-user"), Some("hana"));
    assert_eq!(seen[0].one("cookie"), None);
    assert_eq!(seen[1].one("x-aalgate-user"), None);
    assert_eq!(seen[1].all("cookie"), ["theme=dark"]);

    // A plain listener speaks HTTP/1 only: the HTTP/2 preface (prior knowledge, h2c) is a
    // malformed HTTP/1 request, and an h2c upgrade is refused (also in the attack corpus).
    let mut plain = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = format!("localhost:{}", plain.port);
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let r = send(plain.port, &preface);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = send(
        plain.port,
        format!("GET /static/x HTTP/1.1\r\nHost: {h}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    std::thread::sleep(Duration::from_millis(200));
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert!(g.alive() && plain.alive());
}

/// Each request names one host, and every admission check sees it as under HTTP/1: the same
/// status for the same host, whether it comes as `:authority`, as Host, or as both (which
/// must then agree byte for byte).
#[test]
fn http2_requests_name_one_host_and_it_is_the_one_http1_would_see() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let port = g.port;
    let host = format!("localhost:{port}");
    let other_port = format!("localhost:{}", port + 1);
    let upper = format!("LOCALHOST:{port}");
    // (what, :authority, Host headers, path, status, forwarded, same as HTTP/1 with Host)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Vec<&'a str>,
        &'a str,
        u16,
        bool,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "authority",
            Some(&host),
            vec![],
            "/static/a",
            200,
            true,
            true,
        ),
        (
            "Host alone",
            None,
            vec![&host],
            "/static/a",
            200,
            true,
            true,
        ),
        (
            "both, equal",
            Some(&host),
            vec![&host],
            "/static/a",
            200,
            true,
            true,
        ),
        (
            "both, differing",
            Some(&host),
            vec!["evil.example"],
            "/static/a",
            400,
            false,
            false,
        ),
        (
            "both, differing port",
            Some(&host),
            vec![&other_port],
            "/static/a",
            400,
            false,
            false,
        ),
        (
            "both, differing case",
            Some(&host),
            vec![&upper],
            "/static/a",
            400,
            false,
            false,
        ),
        (
            "Host twice",
            None,
            vec![&host, &host],
            "/static/a",
            400,
            false,
            false,
        ),
        (
            "Host twice beside authority",
            Some(&host),
            vec![&host, "evil.example"],
            "/static/a",
            400,
            false,
            false,
        ),
        ("neither", None, vec![], "/static/a", 400, false, false),
        (
            "authority on another port",
            Some(&other_port),
            vec![],
            "/static/a",
            421,
            false,
            true,
        ),
        (
            "authority in capitals",
            Some(&upper),
            vec![],
            "/static/a",
            200,
            true,
            true,
        ),
        (
            "unknown host",
            Some("evil.example"),
            vec![],
            "/static/a",
            421,
            false,
            true,
        ),
        (
            "userinfo",
            Some("u@localhost"),
            vec![],
            "/static/a",
            400,
            false,
            false,
        ),
        (
            "denied route",
            Some(&host),
            vec![],
            "/debug/x",
            403,
            false,
            true,
        ),
    ];
    let reqs: Vec<_> = cases
        .iter()
        .map(|(_, a, hosts, path, ..)| {
            let extra: Vec<(&str, &str)> = hosts.iter().map(|h| ("host", *h)).collect();
            json!({"port": port, "headers": h2_headers("GET", *a, path, &extra)})
        })
        .collect();
    let mut failures = Vec::new();
    for ((what, a, _, path, status, forwarded, same), req) in cases.iter().zip(reqs) {
        // One at a time, so that what the upstream sees belongs to this case.
        let r = &h2_send(&[req])[0];
        if r.status != Some(*status) {
            failures.push(format!("{what}: {r:?}, expected {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
        let seen = up.take();
        let want: Vec<String> = if *forwarded {
            vec![path.to_string()]
        } else {
            vec![]
        };
        let got: Vec<String> = seen.iter().map(|s| s.target.clone()).collect();
        if got != want {
            failures.push(format!("{what}: upstream saw {got:?}"));
        }
        if let (Some(s), Some(a)) = (seen.first(), a) {
            if s.one("host") != Some(&a.to_ascii_lowercase()) && s.one("host") != Some(a) {
                failures.push(format!("{what}: upstream Host {:?}", s.one("host")));
            }
        }
        if *same {
            let h1 = h1_status(port, a.unwrap_or(&host), path);
            if h1 != *status {
                failures.push(format!("{what}: HTTP/1.1 with that Host got {h1}"));
            }
            up.take();
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), g.log());
    assert!(g.alive());
}

/// What the HTTP/1 head checks refuse (a `#` in the target, Transfer-Encoding with or without
/// Content-Length, respelled framing headers, Upgrade and Connection, oversized heads, tunnels,
/// a lowercase method) is refused as HTTP/2 too, or cannot be carried by it. Each case names
/// the one answer it gets: a status, or the stream (`reset`) or connection (`goaway`) ended
/// with PROTOCOL_ERROR.
#[test]
fn http2_carries_nothing_the_http1_checks_refuse() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let port = g.port;
    let host = format!("localhost:{port}");
    let a = Some(host.as_str());
    let big = "a".repeat(70 * 1024);
    let many: Vec<(&str, &str)> = vec![("x-h", "v"); 257];
    let h = |m: &str, p: &str, extra: &[(&str, &str)]| h2_headers(m, a, p, extra);
    // (what, headers, body, answer, forwarded target)
    let cases: Vec<(&str, serde_json::Value, &str, &str, Option<&str>)> = vec![
        // hyper's URI parser drops a fragment from `:path` before anything sees it: the gateway
        // matches, and the upstream receives, the same path without it, so a fragment cannot
        // make the two read different paths.
        (
            "fragment after a public path",
            h("GET", "/static/a#/../../debug/x", &[]),
            "",
            "200",
            Some("/static/a"),
        ),
        (
            "fragment after a denied path",
            h("GET", "/debug/x#/../../static/a", &[]),
            "",
            "403",
            None,
        ),
        (
            "Transfer-Encoding",
            h("POST", "/static/a", &[("transfer-encoding", "chunked")]),
            "0\r\n\r\n",
            "reset",
            None,
        ),
        (
            "Transfer-Encoding and Content-Length",
            h(
                "POST",
                "/static/a",
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
            ),
            "hello",
            "reset",
            None,
        ),
        (
            "two Content-Length",
            h(
                "POST",
                "/static/a",
                &[("content-length", "5"), ("content-length", "6")],
            ),
            "hello",
            "reset",
            None,
        ),
        (
            "Content-Length shorter than the body",
            h("POST", "/static/a", &[("content-length", "3")]),
            "hello",
            "reset",
            None,
        ),
        (
            "Content-Length not a number",
            h("POST", "/static/a", &[("content-length", "5a")]),
            "hello",
            "reset",
            None,
        ),
        (
            "uppercase header name",
            h("GET", "/static/a", &[("Transfer-Encoding", "chunked")]),
            "",
            "goaway",
            None,
        ),
        (
            "space in a header name",
            h("GET", "/static/a", &[("transfer-encoding ", "chunked")]),
            "",
            "goaway",
            None,
        ),
        (
            "CR LF in a header value",
            h("GET", "/static/a", &[("x-a", "b\r\nx-aalgate-user: admin")]),
            "",
            "goaway",
            None,
        ),
        (
            "Connection",
            h("GET", "/static/a", &[("connection", "close")]),
            "",
            "reset",
            None,
        ),
        (
            "Upgrade",
            h("GET", "/static/a", &[("upgrade", "websocket")]),
            "",
            "reset",
            None,
        ),
        (
            "Upgrade h2c",
            h("GET", "/static/a", &[("upgrade", "h2c")]),
            "",
            "reset",
            None,
        ),
        (
            "keep-alive",
            h("GET", "/static/a", &[("keep-alive", "timeout=5")]),
            "",
            "reset",
            None,
        ),
        (
            "TE other than trailers",
            h("GET", "/static/a", &[("te", "chunked")]),
            "",
            "reset",
            None,
        ),
        (
            "head over 64 KiB",
            h("GET", "/static/a", &[("x-big", &big)]),
            "",
            "431",
            None,
        ),
        (
            "more header fields than HTTP/1 reads (256)",
            h("GET", "/static/a", &many),
            "",
            "431",
            None,
        ),
        (
            "absolute :path",
            h("GET", "http://evil.example/static/a", &[]),
            "",
            "reset",
            None,
        ),
        (
            "space in :path",
            h("GET", "/static/a b", &[]),
            "",
            "reset",
            None,
        ),
        ("empty :path", h("GET", "", &[]), "", "reset", None),
        (
            "lowercase method",
            h("get", "/static/a", &[]),
            "",
            "400",
            None,
        ),
        ("OPTIONS *", h("OPTIONS", "*", &[]), "", "400", None),
        (
            "CONNECT",
            json!([
                [":method", "CONNECT"],
                [":authority", format!("127.0.0.1:{}", up.port)]
            ]),
            "",
            "405",
            None,
        ),
        (
            "WebSocket over HTTP/2 (RFC 8441)",
            h("CONNECT", "/static/ws", &[(":protocol", "websocket")]),
            "",
            "reset",
            None,
        ),
        (
            "pseudo-header after a header",
            json!([
                [":method", "GET"],
                [":scheme", "https"],
                ["x-a", "1"],
                [":authority", host],
                [":path", "/static/a"]
            ]),
            "",
            "reset",
            None,
        ),
        (
            "two :path",
            json!([
                [":method", "GET"],
                [":scheme", "https"],
                [":authority", host],
                [":path", "/static/a"],
                [":path", "/debug/x"]
            ]),
            "",
            "reset",
            None,
        ),
        (
            "identity header",
            h(
                "GET",
                "/static/a",
                &[("x-aalgate-user", "admin"), ("remote-user", "admin")],
            ),
            "",
            "200",
            Some("/static/a"),
        ),
    ];
    let reqs: Vec<_> = cases
        .iter()
        .map(|(_, headers, body, ..)| json!({"port": port, "headers": headers, "body": body}))
        .collect();
    let mut failures = Vec::new();
    for ((what, _, _, want, target), req) in cases.iter().zip(reqs) {
        let r = &h2_send(&[req])[0];
        let got = match (r.status, &r.reset, &r.goaway) {
            (Some(s), _, _) => s.to_string(),
            (None, Some(code), _) if code == "PROTOCOL_ERROR" => "reset".into(),
            (None, None, Some(code)) if code == "PROTOCOL_ERROR" => "goaway".into(),
            _ => format!("{r:?}"),
        };
        if got != *want {
            failures.push(format!("{what}: {got}, expected {want}"));
        }
        std::thread::sleep(Duration::from_millis(50));
        let seen = up.take();
        let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
        let expected: Vec<&str> = target.iter().copied().collect();
        if targets != expected {
            failures.push(format!("{what}: upstream saw {targets:?}"));
        }
        for s in &seen {
            if s.one("x-aalgate-user").is_some() || !s.all("remote-user").is_empty() {
                failures.push(format!("{what}: identity forwarded {:?}", s.headers));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(g.alive());
    assert!(!g.log().contains("panicked"));
}

/// Bodies over HTTP/2, which pingora reads without a timeout: a small one is read whole within
/// `client_timeout` before the app is contacted (so a stalled one gets 408 and the app sees
/// nothing), and one without a length goes to the app with its Content-Length, byte for byte;
/// one too large to read ahead is sent back to HTTP/1.1 (`HTTP_1_1_REQUIRED`), never streamed
/// (the app could answer early and leave the stream open for ever); and a per-request
/// signature covers a body sent without a length.
#[test]
fn http2_request_bodies_keep_the_client_timeout() {
    let up = Upstream::start();
    let sign = format!(
        "app: rx\nhost: rx.localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\nroutes:\n  - path: /sign\n    methods: [POST]\n    require: aal2\n    step_up: {{ per_request: true }}\n",
        up.port
    );
    let mut g = Gateway::start_tls_extra(
        &[("billing.yaml", &policy(up.port)), ("rx.yaml", &sign)],
        "client_timeout: 1s\n",
    );
    let port = g.port;
    let host = format!("localhost:{port}");
    let rx = format!("rx.localhost:{port}");
    let store = EmbeddedStore::open(&g.state_dir()).expect("open embedded store");
    let cookie = format!(
        "__Host-aalgate={}",
        make_session(&store, &rx, "rita", Aal::Aal2, 60, 1)
    );
    let origin = format!("https://{rx}");
    let a = Some(host.as_str());
    // Patterned bodies: the app must get these bytes, in this order.
    let pattern = |n: usize| -> String {
        (0..n)
            .map(|i| char::from(b'a' + u8::try_from((i * 7 + i / 251) % 26).unwrap_or(0)))
            .collect()
    };
    let small = pattern(40_000);
    let large = pattern(200_000);
    let unsized_large = pattern(100_000);
    let r = h2_send(&[
        // Stalled: a length and part of the body; no length and part of it; no body at all yet.
        json!({"port": port, "headers": h2_headers("POST", a, "/static/up", &[("content-length", "100")]), "body": "note=part", "end": false, "wait": 2}),
        json!({"port": port, "headers": h2_headers("POST", a, "/static/up", &[]), "body": "note=part", "end": false, "wait": 2}),
        json!({"port": port, "headers": h2_headers("POST", a, "/static/up", &[]), "body": "", "end": false, "wait": 2}),
        // Whole: without a length, the app gets one.
        json!({"port": port, "headers": h2_headers("POST", a, "/static/small", &[]), "body": small}),
        // Too large to read ahead: sent back to HTTP/1.1 (browsers retry there), never
        // streamed over HTTP/2, where pingora reads without a timeout.
        json!({"port": port, "headers": h2_headers("POST", a, "/static/large", &[("content-length", "200000")]), "body": large}),
        json!({"port": port, "headers": h2_headers("POST", a, "/static/unsized", &[]), "body": unsized_large}),
        json!({"port": port, "headers": h2_headers("GET", a, "/static/answers-early", &[("content-length", "100000")]), "body": "", "end": false}),
        // Sent back before admission: a one-time admission (a step-up's) is not spent on a
        // request that then goes over HTTP/1.1, nor a sign-in flow started for it.
        json!({"port": port, "headers": h2_headers("POST", a, "/orders", &[("content-length", "60000")]), "body": "", "end": false}),
        // A script's POST to a route that signs each request, with its body and no length:
        // the gateway reads the body to sign it, so a stalled one gets 408 (the old check
        // looked for a Content-Length, signed it as "no body" and sent it to the ceremony).
        json!({"port": port, "headers": h2_headers("POST", Some(&rx), "/sign", &[("cookie", &cookie), ("origin", &origin), ("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "cors")]), "body": "dose=1", "end": false, "wait": 2}),
    ]);
    for (i, a) in r[..3].iter().enumerate() {
        assert_eq!(a.status, Some(408), "stalled {i}: {a:?}\n{}", g.log());
        assert!(
            (0.95..1.8).contains(&a.elapsed),
            "stalled {i}: 408 after {} s",
            a.elapsed
        );
    }
    assert_eq!(r[8].status, Some(408), "signed, stalled: {:?}", r[8]);
    assert_eq!(r[3].status, Some(200), "whole: {:?}", r[3]);
    for (i, a) in r[4..8].iter().enumerate() {
        assert_eq!(
            (a.status, a.reset.as_deref()),
            (None, Some("HTTP_1_1_REQUIRED")),
            "too large {i}: {a:?}"
        );
        assert!(a.elapsed < 0.5, "too large {i}: after {} s", a.elapsed);
    }
    // What a browser does then: the same request over HTTP/1.1, which streams.
    let body_file = g.state_dir().join("large-body");
    std::fs::write(&body_file, &large).expect("write body");
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("https://{host}/static/large"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    std::thread::sleep(Duration::from_millis(200));
    let seen = up.take();
    let got: Vec<(&str, usize, u64, bool)> = seen
        .iter()
        .map(|s| (s.target.as_str(), s.body_len, s.body_hash, s.complete))
        .collect();
    assert_eq!(
        got,
        [
            ("/static/small", 40_000, fnv1a(small.as_bytes()), true),
            ("/static/large", 200_000, fnv1a(large.as_bytes()), true),
        ]
    );
    assert_eq!(seen[0].one("content-length"), Some("40000"));
    assert!(seen[0].all("transfer-encoding").is_empty());
    // (The policy's own warning at start, about where signed evidence goes, aside.)
    g.assert_quiet_but("bodies", "aalgate::ops");
    assert!(g.alive());
}

/// A flood of stalled HTTP/2 bodies (300 streams on 3 connections) takes the 256 read-ahead
/// slots (64 KiB each at most), which end in 408 within the client timeout; the other streams
/// are sent back to HTTP/1.1 at once, and none reaches the app. A clinician's form sent
/// meanwhile over HTTP/2 is sent back too, and goes through over HTTP/1.1, as a browser
/// retries it.
#[test]
fn a_flood_of_stalled_http2_bodies_leaves_room_for_real_requests() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls_extra(
        &[("billing.yaml", &policy(up.port))],
        "client_timeout: 1s\n",
    );
    let port = g.port;
    let host = format!("localhost:{port}");
    let flood: Vec<_> = (0..3)
        .map(|_| {
            let headers = h2_headers("POST", Some(&host), "/static/flood", &[("content-length", "1000")]);
            std::thread::spawn(move || {
                h2_send(&[json!({"port": port, "headers": headers, "body": "a", "streams": 100, "wait": 3})])
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let r = h2_send(&[
        json!({"port": port, "headers": h2_headers("POST", Some(&host), "/static/form", &[]), "body": "note=hello"}),
    ]);
    assert_eq!(
        r[0].reset.as_deref(),
        Some("HTTP_1_1_REQUIRED"),
        "{:?}",
        r[0]
    );
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "note=hello",
        ])
        .arg(format!("https://{host}/static/form"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let (mut statuses, mut resets) = (Vec::new(), Vec::new());
    for f in flood {
        let a = f.join().expect("flood thread");
        statuses.extend(a[0].statuses.clone());
        resets.extend(a[0].resets.clone());
    }
    let timed_out = statuses.iter().filter(|s| **s == Some(408)).count();
    let sent_back = resets
        .iter()
        .filter(|r| r.as_deref() == Some("HTTP_1_1_REQUIRED"))
        .count();
    assert_eq!((timed_out, sent_back), (256, 44), "{statuses:?} {resets:?}");
    std::thread::sleep(Duration::from_millis(200));
    let seen: Vec<(String, usize, bool)> = up
        .take()
        .into_iter()
        .map(|s| (s.target, s.body_len, s.complete))
        .collect();
    assert_eq!(seen, [("/static/form".to_string(), 10, true)]);
    assert!(g.alive());
}

/// A client that gives up on a forwarded HTTP/2 request (a cancelled fetch, a closed tab)
/// resets its stream: no failure of the gateway's, so nothing is logged above debug (an
/// anonymous client resetting streams in a loop must not fill the log).
#[test]
fn a_stream_the_client_resets_is_not_a_warning() {
    // An app that accepts and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming() {
            held.push(c);
        }
    });
    let slow = format!("app: slow\nhost: slow.localhost\nupstream: http://127.0.0.1:{hang_port}\ndefault: deny\nroutes:\n  - path: /report\n    require: public\n");
    let mut g = Gateway::start_tls(&[("slow.yaml", &slow)]);
    let port = g.port;
    let host = format!("slow.localhost:{port}");
    let reqs: Vec<_> = (0..5)
        .map(|_| json!({"port": port, "headers": h2_headers("GET", Some(&host), "/report", &[]), "reset_after": 0.3}))
        .collect();
    for a in h2_send(&reqs) {
        assert_eq!(
            (a.status, a.reset.as_deref()),
            (None, Some("sent CANCEL")),
            "{a:?}"
        );
    }
    // Each reset is seen, and counted as the client's doing.
    aalgate_tests::eventually(
        Duration::from_secs(5),
        "5 resets counted as client_gone",
        || {
            let m = aalgate_tests::get(g.admin_port, "localhost", "/metrics", &[]).text();
            let n: f64 = m
                .lines()
                .filter(|l| l.starts_with("aalgate_requests_total{") && l.contains("client_gone"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (n >= 5.0).then_some(())
        },
    );
    g.assert_quiet("the gateway");
    assert!(g.alive());
}

/// The value of an unlabelled counter on the admin listener (0 before it is first scraped).
fn counter(g: &Gateway, name: &str) -> u64 {
    let m = aalgate_tests::get(g.admin_port, "localhost", "/metrics", &[]).text();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Anyone who can reach a TLS port can fail handshakes: hang up at once, send plain HTTP,
/// or negotiate h2 and send no HTTP/2 preface. None of it may write to the log (pingora logs
/// each as an ERROR); each is counted in `aalgate_client_handshake_failures_total`.
#[test]
fn failed_handshakes_are_counted_not_logged() {
    use std::io::Write as _;
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let port = g.port;
    for i in 0..60 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        match i % 3 {
            0 => {}
            1 => {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            }
            _ => {
                let _ = c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
            }
        }
        drop(c);
    }
    // TLS done, h2 chosen, then no preface.
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket, ssl\nfor _ in range(20):\n  c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; c.set_alpn_protocols(['h2'])\n  s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='localhost')\n  assert s.selected_alpn_protocol() == 'h2'\n  s.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n' * 4); s.close()\n"
        ))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metric = |g: &Gateway| counter(g, "aalgate_client_handshake_failures_total");
    aalgate_tests::eventually(Duration::from_secs(5), "the failures counted", || {
        (metric(&g) >= 80).then_some(())
    });
    // And a real request still works.
    let host = format!("localhost:{port}");
    let r = h2_send(&[
        json!({"port": port, "headers": h2_headers("GET", Some(&host), "/static/a", &[])}),
    ]);
    assert_eq!(r[0].status, Some(200));
    g.assert_quiet("the gateway");
    assert!(g.alive());
}

/// The gateway's own endpoints read their bodies themselves (a sign-out form, a ceremony's
/// JSON): over HTTP/2, where pingora has no read timeout, a body that stalls must still end
/// within `client_timeout`, or anyone could hold streams open for ever.
#[test]
fn the_gateways_own_endpoints_end_a_stalled_http2_body() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls_extra(
        &[("billing.yaml", &policy(up.port))],
        "client_timeout: 1s\n",
    );
    let port = g.port;
    let host = format!("localhost:{port}");
    let origin = format!("https://{host}");
    // A browser binding and its token, as any visitor gets them from the sign-out page.
    let page = &h2_send(&[
        json!({"port": port, "headers": h2_headers("GET", Some(&host), "/.aalgate/logout", &[])}),
    ])[0];
    let bind = page
        .headers
        .iter()
        .find_map(|(n, v)| {
            (n == "set-cookie").then(|| v.split(';').next().unwrap_or("").to_string())
        })
        .expect("binding cookie");
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("csrf token")
        .to_string();
    let reqs: Vec<_> = ["/.aalgate/logout", "/.aalgate/webauthn/start"]
        .iter()
        .map(|p| {
            json!({"port": port, "headers": h2_headers("POST", Some(&host), p, &[("origin", &origin), ("cookie", &bind), ("x-aalgate-csrf", &csrf), ("sec-fetch-site", "same-origin"), ("content-type", "application/x-www-form-urlencoded")]), "body": "csrf=", "end": false, "wait": 3})
        })
        .collect();
    for (i, a) in h2_send(&reqs).iter().enumerate() {
        assert!(
            a.status.is_some() || a.reset.is_some(),
            "request {i} still open after {} s: {a:?}",
            a.elapsed
        );
        assert!(
            a.elapsed < 1.8,
            "request {i} ended after {} s: {a:?}",
            a.elapsed
        );
    }
    assert!(up.seen().is_empty());
    assert!(g.alive());
}

/// A TLS listener with `http2: false` still names HTTP/1.1 by ALPN, as nginx does: a client
/// that offers h2 and http/1.1 learns which one it got instead of guessing (found by the
/// page-load benchmark: Chromium reported no protocol for a revalidated page).
#[test]
fn a_tls_listener_without_http2_names_http1_by_alpn() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    g.stop();
    let config = g.dir.path().join("aalgate.yaml");
    let yaml = std::fs::read_to_string(&config).expect("read config");
    let yaml = yaml.replacen(" }\n", " }\n    http2: false\n", 1);
    assert!(yaml.contains("http2: false"), "{yaml}");
    std::fs::write(&config, yaml).expect("write config");
    g.restart();
    let port = g.port;
    let host = format!("localhost:{port}");
    let r = h2_send(&[
        json!({"port": port, "alpn": ["h2", "http/1.1"], "headers": []}),
        json!({"port": port, "alpn": ["http/1.1"], "headers": []}),
    ]);
    assert_eq!(r[0].alpn.as_deref(), Some("http/1.1"), "{r:?}\n{}", g.log());
    assert_eq!(r[1].alpn.as_deref(), Some("http/1.1"), "{r:?}");
    assert_eq!(h1_status(port, &host, "/static/a.css"), 200);
    assert!(g.alive());
}

/// A client that names the server by IP address in SNI (wrk does, and so can anyone) makes
/// rustls log a WARN per handshake ("Illegal SNI extension"): anyone who can reach the port
/// could fill the log with them. They are counted, the first in a minute logged, and the
/// request is served.
#[test]
fn clients_naming_an_ip_by_sni_do_not_fill_the_log() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let port = g.port;
    for _ in 0..20 {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "127.0.0.1", "-alpn", "http/1.1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                if let Some(mut i) = c.stdin.take() {
                    let _ = i.write_all(format!("GET /static/a HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n").as_bytes());
                    std::thread::sleep(Duration::from_millis(100));
                }
                c.wait_with_output()
            })
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("HTTP/1.1 200"), "{text}\n{}", g.log());
    }
    let metric = |g: &Gateway| counter(g, "aalgate_tls_notices_total");
    g.assert_quiet_but("the gateway", "rustls::");
    let logged = g.log().lines().filter(|l| l.contains("rustls::")).count();
    assert_eq!(
        logged,
        1,
        "the first in a minute is logged, no more:\n{}",
        g.log()
    );
    assert!(metric(&g) >= 20, "the notices counted");
    assert!(g.alive());
}
