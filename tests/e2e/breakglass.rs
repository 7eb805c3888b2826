//! Break-glass end to end, with the session store (Redis) down: the CLI creates a sealed code,
//! a browser uses it, a test webhook receives the alert (generic words only), the upstream sees
//! the flag, the local audit file and the metric record it, and the report and review close it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use aalgate_tests::{cli, free_port, get, pyjwt_decode, sample, Gateway, Redis};

use crate::browser::{chromium, root, DemoApp};

/// Accepts one HTTP request and answers 204; sends back the raw request.
fn webhook() -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        }
    });
    (port, rx)
}

#[test]
fn breakglass_works_with_redis_down_and_is_loud() {
    let mut redis = Redis::start();
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let (hook_port, hook) = webhook();
    let ehr = [
        "app: ehr".to_string(),
        "host: ehr.localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /".into(),
        "    require: aal2".into(),
        "    breakglass: allow".into(),
        "  - path: /echo/**".into(),
        "    require: aal2".into(),
        "    breakglass: allow".into(),
        "  - path: /admin/**".into(),
        "    require: aal3".into(),
        String::new(),
    ]
    .join("\n");
    let extra = format!("breakglass:\n  webhook: http://127.0.0.1:{hook_port}/hooks/aalgate\n");
    let g = Gateway::start_with_store_extra(&redis.url(), &[("ehr.yaml", &ehr)], &extra);

    let (code, secret, err) = cli(
        &g,
        &["breakglass", "create", "ed-charge-nurse", "--ttl", "10m"],
    );
    assert_eq!(code, 0, "{err}");
    let secret = secret.trim().to_string();
    assert_eq!(secret.replace('-', "").len(), 48, "{secret}");
    assert!(err.contains("shown only now"), "{err}");
    let file = std::fs::read_to_string(g.state_dir().join("breakglass.json")).unwrap();
    assert!(!file.contains(&secret.replace('-', "")[8..]) && file.contains("$argon2id$"));

    // Redis goes away: normal sign-in fails closed, break-glass still works.
    redis.stop();
    let out = root().join("target/browser-screenshots/breakglass");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("node")
        .arg(root().join("tests/browser/breakglass.mjs"))
        .env("PORT", g.port.to_string())
        .env("OUT", &out)
        .env("CHROMIUM", chromium())
        .env("CODE", &secret)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "break-glass browser steps failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&run.stderr),
        g.log()
    );

    // The upstream saw the flag, in a header and in the signed assertion.
    let echo = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ECHO "))
        .expect("echo line");
    let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
    let headers = &echo["headers"];
    let id = headers["x-aalgate-breakglass"]
        .as_str()
        .expect("break-glass header")
        .to_string();
    assert_eq!(headers["x-aalgate-user"], format!("breakglass:{id}"));
    let jwt = headers["x-aalgate-assertion"].as_str().unwrap();
    // Verified the way an app verifies it (PyJWT against the published JWKS), so a forged or
    // unsigned token cannot pass for the gateway's.
    let jwks = get(
        g.port,
        &format!("ehr.localhost:{}", g.port),
        "/.aalgate/jwks.json",
        &[],
    )
    .json();
    let claims = pyjwt_decode(
        jwt,
        &jwks.to_string(),
        "ehr",
        &format!("http://localhost:{}", g.port),
    )
    .expect("the break-glass assertion verifies");
    assert_eq!(claims["sub"], format!("breakglass:{id}"));
    assert_eq!(claims["breakglass"], true);
    assert_eq!(claims["amr"], serde_json::json!(["breakglass"]));

    // The alert: generic words, the app's name, no path or patient detail.
    let alert = hook
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");
    assert!(alert.starts_with("POST /hooks/aalgate HTTP/1.1"), "{alert}");
    let body = &alert[alert.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["event"], "breakglass_used");
    assert_eq!(v["app"], "ehr");
    for secret_word in ["Ada", "Cardiac", "bay 4", "/admin", "/echo", &secret] {
        assert!(
            !body.contains(secret_word),
            "alert leaks {secret_word}: {body}"
        );
    }

    // The local audit trail (written before the session started) and the metric.
    let audit = std::fs::read_to_string(g.state_dir().join("breakglass-audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["event"] == "breakglass"
        && l["person"] == "Dr. Ada Example"
        && l["code"] == id.as_str()));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "breakglass_failure")
            .count(),
        2,
        "{audit}"
    );
    let metrics = get(
        g.admin_port,
        &format!("127.0.0.1:{}", g.admin_port),
        "/metrics",
        &[],
    )
    .text();
    assert_eq!(sample(&metrics, "aalgate_breakglass_uses_total"), Some(1.0));

    // The monthly review: listed, reviewed, listed as reviewed.
    let (code, report, err) = cli(&g, &["report", "breakglass", "--since", "1d"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        report.contains(&id) && report.contains("Dr. Ada Example") && report.contains("review due"),
        "{report}"
    );
    let (code, _, err) = cli(
        &g,
        &[
            "breakglass",
            "review",
            &id,
            "--note",
            "confirmed with ED lead; badge reader fixed",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_, report, _) = cli(&g, &["report", "breakglass", "--format", "json"]);
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(r["uses"][0]["reviewed"], true);
    assert!(!g.log().contains("panicked"));
}

/// Posts a break-glass form from client `ip` (through a trusted proxy's X-Forwarded-For):
/// the status and how long the answer took.
fn try_code(port: u16, host: &str, ip: &str, code: &str) -> (u16, Duration) {
    let t = std::time::Instant::now();
    let r = aalgate_tests::use_breakglass_code(port, host, Some(ip), code);
    (r.status, t.elapsed())
}

/// Which code ids exist cannot be told by time (an unknown id waits as long as a real check,
/// without taking one of the two check slots), and a spray of made-up codes from many addresses
/// leaves a genuine code working.
#[test]
fn breakglass_codes_tell_nothing_by_time_and_survive_a_spray() {
    let up = aalgate_tests::Upstream::start();
    let ehr = format!(
        "app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\nroutes:\n  - path: /\n    require: aal2\n    breakglass: allow\n",
        up.port
    );
    let g = Gateway::start_extra(&[("ehr.yaml", &ehr)], "trusted_proxies: [127.0.0.1]\n");
    let host = format!("ehr.localhost:{}", g.port);
    let (code, known, err) = cli(&g, &["breakglass", "create", "known", "--ttl", "10m"]);
    assert_eq!(code, 0, "{err}");
    let (code, genuine, err) = cli(&g, &["breakglass", "create", "genuine", "--ttl", "10m"]);
    assert_eq!(code, 0, "{err}");
    let (known, genuine) = (
        known.trim().replace('-', ""),
        genuine.trim().replace('-', ""),
    );
    let wrong_secret = |id: &str| format!("{id}{}", "A".repeat(40));
    let mut times = (Vec::new(), Vec::new());
    for i in 0..7 {
        let (s, t) = try_code(
            g.port,
            &host,
            &format!("10.1.0.{i}"),
            &wrong_secret(&known[..8]),
        );
        assert_eq!(
            s, 400,
            "a wrong secret for a real id is refused on the page"
        );
        times.0.push(t);
        let (s, t) = try_code(
            g.port,
            &host,
            &format!("10.2.0.{i}"),
            &wrong_secret("ZZZZZZZZ"),
        );
        assert_eq!(s, 400, "an unknown id is refused on the page");
        times.1.push(t);
    }
    times.0.sort();
    times.1.sort();
    let (real, unknown) = (times.0[3], times.1[3]);
    // The unknown id waits as long as the measured check (within noise): half the time
    // would tell the ids apart at a glance.
    assert!(
        unknown * 10 >= real * 7,
        "an unknown id answers in {unknown:?}, a real one in {real:?}: the time tells which ids exist"
    );
    // A spray of made-up codes from many addresses, and the genuine code in the middle of it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sprayers: Vec<_> = (0..8)
        .map(|t| {
            let (stop, host) = (stop.clone(), host.clone());
            let port = g.port;
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ip = format!("10.3.{t}.{}", n % 250);
                    let _ = try_code(port, &host, &ip, &format!("{:08}{}", n, "B".repeat(40)));
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = try_code(g.port, &host, "10.9.9.9", &genuine);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sprayed: u32 = sprayers.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        status, 302,
        "the genuine code during a spray of {sprayed} made-up codes"
    );
    assert!(sprayed > 20, "the spray ran ({sprayed})");
    assert!(!g.log().contains("panicked"));
}

/// Uses a break-glass code from a browser on `host`: the emergency session's cookie value.
fn emergency_cookie(port: u16, host: &str, code: &str) -> String {
    let r = aalgate_tests::use_breakglass_code(port, host, None, code);
    assert_eq!(r.status, 302, "{}", r.text());
    r.all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("aalgate="))
        .and_then(|c| c.split(';').next())
        .expect("emergency session cookie")
        .to_string()
}

/// A break-glass session's WebSocket lives exactly as long as the session: with the store
/// down, it still echoes well inside the TTL, closes within a second of *Sign out*, and closes
/// at the TTL without a frame being sent.
#[test]
fn a_breakglass_websocket_ends_with_the_emergency_session() {
    let mut redis = Redis::start();
    let up = crate::transparency::ws_echo();
    let ehr = format!(
        "app: ehr\nhost: localhost\nupstream: http://127.0.0.1:{up}\ndefault: deny\nroutes:\n  - path: /socket\n    require: aal2\n    breakglass: allow\n"
    );
    let g = Gateway::start_with_store_extra(&redis.url(), &[("ehr.yaml", &ehr)], "");
    let host = format!("localhost:{}", g.port);
    let mut codes = Vec::new();
    for name in ["ttl", "signout"] {
        let (code, secret, err) = cli(&g, &["breakglass", "create", name, "--ttl", "1m"]);
        assert_eq!(code, 0, "{err}");
        codes.push(secret.trim().to_string());
    }
    redis.stop();
    let started = std::time::Instant::now();
    let ttl_cookie = emergency_cookie(g.port, &host, &codes[0]);
    let out_cookie = emergency_cookie(g.port, &host, &codes[1]);
    let mut ttl_ws = crate::transparency::ws_open_on(g.port, &host, &ttl_cookie);
    let mut out_ws = crate::transparency::ws_open_on(g.port, &host, &out_cookie);
    assert!(crate::transparency::ws_echoes(&mut ttl_ws, "vitals"));
    assert!(crate::transparency::ws_echoes(&mut out_ws, "vitals"));

    // *Sign out* ends the other session's socket at once, the store being down or not.
    let r = aalgate_tests::logout(g.port, &host, &out_cookie);
    assert!(r.status < 400, "sign out: {}", r.text());
    let t = std::time::Instant::now();
    let mut b = [0u8; 1];
    use std::io::Read;
    out_ws
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Ok(0) is the close; a timeout (Err) means the socket stayed open.
    assert!(matches!(out_ws.read(&mut b), Ok(0)), "open after sign-out");
    // Within the once-a-second check, not the one after.
    assert!(
        t.elapsed() < Duration::from_millis(1600),
        "closed only after {:?}",
        t.elapsed()
    );

    // The emergency is not over yet: half-way, frames still pass with the store down.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(started.elapsed()));
    assert!(
        crate::transparency::ws_echoes(&mut ttl_ws, "still in the emergency"),
        "a live emergency session's socket was closed"
    );
    // At the TTL it closes by itself, quiet or not.
    ttl_ws
        .set_read_timeout(Some(Duration::from_secs(45)))
        .unwrap();
    let closed = matches!(ttl_ws.read(&mut b), Ok(0));
    let at = started.elapsed();
    assert!(closed, "still open at {at:?}, past the 60 s TTL");
    assert!(
        at < Duration::from_secs(62),
        "the socket closed at {at:?}, past the 60 s TTL (+1 s)"
    );
    assert!(at >= Duration::from_secs(58), "closed early, at {at:?}");
    assert!(!crate::transparency::ws_echoes(
        &mut ttl_ws,
        "after the TTL"
    ));
    assert!(!g.log().contains("panicked"));
}
