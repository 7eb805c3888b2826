//! Faults with real processes: a Redis crash with and without the append-only file, an
//! upstream that is down, silent or drops a POST, wall-clock steps of five minutes (libfaketime
//! under the real binary), and SIGTERM with requests in flight. Redis kill/pause/restart and a
//! gateway restart with the embedded store are in `redis.rs` and `proxy.rs`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::{EmbeddedStore, RedisStore, SessionStore};
use aalgate_tests::{
    eventually, free_port, get, logout, read_request, sample, send, Gateway, Redis, Upstream,
};

use crate::{make_session, policy, rt};

/// Longer than the gateway's 1 s session-cache freshness.
const CACHE_WINDOW: Duration = Duration::from_millis(1200);

#[test]
fn a_logout_survives_a_redis_crash_and_the_gateway_flags_a_store_without_aof() {
    let mut redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&redis.url()), &[("billing.yaml", &policy(up.port))]);
    // A store per runtime: `make_session` runs each call on a runtime of its own.
    let store = || RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let h = format!("localhost:{}", g.port);
    let olga = make_session(
        &store(),
        &format!("localhost:{}", g.port),
        "olga",
        Aal::Aal2,
        60,
        1,
    );
    let pete = make_session(
        &store(),
        &format!("localhost:{}", g.port),
        "pete",
        Aal::Aal2,
        60,
        1,
    );
    let (co, cp) = (
        format!("Cookie: aalgate={olga}"),
        format!("Cookie: aalgate={pete}"),
    );
    assert_eq!(get(g.port, &h, "/x", &[&co]).status, 200);
    assert_eq!(get(g.port, &h, "/x", &[&cp]).status, 200);
    // An RDB snapshot now holds both sessions.
    assert!(redis.command("SAVE").starts_with("+OK"));
    // Then olga signs out and IT revokes pete.
    assert_eq!(logout(g.port, &h, &olga).status, 200);
    rt().block_on(async { store().revoke_user("pete").await })
        .unwrap();

    // Crash; Redis restarts from its append-only file, which has both removals.
    redis.restart();
    std::thread::sleep(CACHE_WINDOW);
    for c in [&co, &cp] {
        let status = eventually(Duration::from_secs(15), "redis back", || {
            let s = get(g.port, &h, "/x", &[c]).status;
            (s != 503).then_some(s)
        });
        assert_eq!(status, 302, "an ended session came back after a crash");
    }
    assert_eq!(sample(&g.scrape(), "aalgate_store_durable"), Some(1.0));

    // The hazard the AOF closes: the same crash, restarted from the RDB snapshot alone, has the
    // sessions again. The gateway cannot tell a revived session from a live one, so it reports
    // the store (metric, alert rule, log line) instead.
    redis.restart_with(&["--appendonly", "no", "--save", ""]);
    eventually(Duration::from_secs(15), "store_durable 0", || {
        (sample(&g.scrape(), "aalgate_store_durable") == Some(0.0)).then_some(())
    });
    assert!(g.log().contains("not durable"), "{}", g.log());
    let revived = eventually(Duration::from_secs(10), "redis answers", || {
        let s = get(g.port, &h, "/x", &[&co]).status;
        (s != 503).then_some(s)
    });
    assert_eq!(
        revived, 200,
        "control: without the AOF the snapshot's copy of the session is live again"
    );
}

/// What the scripted upstream does with one request.
#[derive(Clone, Copy, PartialEq)]
enum Act {
    /// 200 at once, keep-alive.
    Answer,
    /// 200 after a delay.
    AnswerAfter(Duration),
    /// Read the request, then close without answering.
    Drop,
    /// Read the request, then say nothing for 10 s.
    Hang,
}

/// An upstream that records `METHOD target` of each request and acts as `script` says.
fn scripted_upstream(script: fn(&str, &str) -> Act) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = s2.clone();
            std::thread::spawn(move || serve(conn, seen, script));
        }
    });
    (port, seen)
}

fn serve(mut conn: TcpStream, seen: Arc<Mutex<Vec<String>>>, script: fn(&str, &str) -> Act) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut conn, &mut buf) {
        let (method, target) = (req.method, req.target);
        if let Ok(mut v) = seen.lock() {
            v.push(format!("{method} {target}"));
        }
        match script(&method, &target) {
            Act::Drop => return,
            Act::Hang => {
                std::thread::sleep(Duration::from_secs(10));
                return;
            }
            Act::AnswerAfter(d) => std::thread::sleep(d),
            Act::Answer => {}
        }
        let body = "ok";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn count(seen: &Arc<Mutex<Vec<String>>>, what: &str) -> usize {
    seen.lock()
        .map(|v| v.iter().filter(|s| *s == what).count())
        .unwrap_or(0)
}

#[test]
fn upstream_down_is_a_502_after_the_auth_check() {
    // Nothing listens on this port.
    let dead = free_port();
    let g = Gateway::start(None, &[("billing.yaml", &policy(dead))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let c = format!(
        "Cookie: aalgate={}",
        make_session(
            &store,
            &format!("localhost:{}", g.port),
            "quinn",
            Aal::Aal2,
            60,
            1
        )
    );
    let h = format!("localhost:{}", g.port);

    let r = get(g.port, &h, "/x", &[&c]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("Application unavailable"), "{}", r.text());
    assert!(
        !r.text().contains(&dead.to_string()),
        "no upstream address on the page"
    );
    let j = get(g.port, &h, "/x", &[&c, "Accept: application/json"]);
    assert_eq!(
        (j.status, j.json()["error"].as_str()),
        (502, Some("upstream_error"))
    );
    // The policy comes first: no session is still a sign-in, a denied route still 403.
    assert_eq!(get(g.port, &h, "/x", &[]).status, 302);
    assert_eq!(get(g.port, &h, "/debug/x", &[&c]).status, 403);
    assert_eq!(get(g.port, &h, "/static/a.css", &[]).status, 502);
}

#[test]
fn a_silent_upstream_is_a_504_and_a_post_is_never_sent_twice() {
    let (port, seen) = scripted_upstream(|method, target| match (method, target) {
        (_, "/hang") => Act::Hang,
        ("POST", "/drop") => Act::Drop,
        _ => Act::Answer,
    });
    let g = Gateway::start_extra(
        &[("billing.yaml", &policy(port))],
        "upstream_timeout: 1s\nupstream_connect_timeout: 1s\n",
    );
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "rita",
        Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    let post = |target: &str| {
        let body = "dose=5mg&x=1";
        send(
            g.port,
            format!(
                "POST {target} HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    // A pooled connection first, so the POST below goes out on a reused one: the case where a
    // proxy is tempted to retry.
    assert_eq!(
        get(g.port, &h, "/warm", &[&format!("Cookie: aalgate={cookie}")]).status,
        200
    );
    let r = post("/drop");
    assert_eq!(r.status, 502, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&seen, "POST /drop"),
        1,
        "{:?}",
        seen.lock().map(|v| v.clone())
    );

    let t0 = Instant::now();
    let r = post("/hang");
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("did not answer in time"), "{}", r.text());
    // upstream_timeout is 1 s: the 504 comes at that silence, not before and not after a
    // second wait (a retry).
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
        "took {took:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&seen, "POST /hang"), 1, "a POST is never retried");

    let r = get(g.port, &h, "/hang", &[&format!("Cookie: aalgate={cookie}")]);
    assert_eq!(r.status, 504);
}

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A wall clock stepped back while the gateway runs (NTP correcting a fast clock) leaves the
/// gateway's own clock ahead of it, since that never runs backwards. What the gateway keeps
/// in its store must still live as long as meant by that clock: a sign-in flow written and
/// read across the step is usable, so people can still sign in.
#[test]
fn sign_in_works_after_the_wall_clock_steps_back_fifteen_minutes() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime missing: apt-get install -y faketime (tests/run.sh does)"
    );
    let up = Upstream::start();
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "+0").unwrap();
    let clock_path = clock.path().display().to_string();
    let g = Gateway::start_env(
        &[("billing.yaml", &policy(up.port))],
        "",
        &[
            ("LD_PRELOAD", FAKETIME_LIB),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let h = format!("localhost:{}", g.port);
    // The gateway reads its clock once before the step.
    assert_eq!(get(g.port, &h, "/x", &[]).status, 302);
    std::fs::write(clock.path(), "-900").unwrap();
    let r = get(g.port, &h, "/x", &["Sec-Fetch-Mode: navigate"]);
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = r.header("location").expect("location").to_string();
    assert!(loc.contains("/.aalgate/auth?flow="), "{loc}");
    let page = get(g.port, &h, &loc, &[]);
    assert_eq!(
        page.status,
        200,
        "the flow just made is already gone: {}",
        page.text()
    );
    assert!(page.text().contains("Sign in"), "{}", page.text());
}

#[test]
fn wall_clock_steps_of_five_minutes_never_reopen_a_session() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime missing: apt-get install -y faketime (tests/run.sh does)"
    );
    let up = Upstream::start();
    let clock = tempfile::NamedTempFile::new().unwrap();
    let set_clock = |offset: &str| {
        std::fs::write(clock.path(), offset).unwrap();
        // libfaketime rereads the file on every call (FAKETIME_NO_CACHE); the gateway caches a
        // session for 1 s.
        std::thread::sleep(CACHE_WINDOW);
    };
    set_clock("+0");
    let clock_path = clock.path().display().to_string();
    let mut g = Gateway::start_env(
        &[("billing.yaml", &policy(up.port))],
        "",
        &[
            ("LD_PRELOAD", FAKETIME_LIB),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            // tokio's timers and pingora's timeouts stay on real monotonic time.
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let h = format!("localhost:{}", g.port);
    let mk = |user: &str, auth_age: u64, idle: u64| {
        format!(
            "Cookie: aalgate={}",
            make_session(&store, &h, user, Aal::Aal2, auth_age, idle)
        )
    };
    // AAL2: 30 min idle, 12 h absolute.
    let idle_expired = mk("ida", 3600, 31 * 60);
    let too_old = mk("olaf", 12 * 3600 + 30, 1);
    let near_idle = mk("nils", 3600, 27 * 60);
    let fresh = mk("fred", 60, 1);
    let port = g.port;
    let status = |c: &str| get(port, &h, "/x", &[c]).status;

    // The clock steps back five minutes: the expired sessions would look 26 min idle and
    // 11 h 55 min old, yet stay closed.
    set_clock("-300");
    assert_eq!(status(&idle_expired), 302, "idle-expired session reopened");
    assert_eq!(status(&too_old), 302, "absolute-expired session reopened");
    assert_eq!(status(&fresh), 200);

    // Five minutes ahead: limits arrive early, which fails closed. This also proves the
    // gateway runs on the fake clock: 27 min idle becomes 32.
    set_clock("+300");
    assert_eq!(
        status(&near_idle),
        302,
        "the gateway does not see the fake clock"
    );
    assert_eq!(status(&fresh), 200);

    // Back to the right time: what closed stays closed, the rest works.
    set_clock("+0");
    assert_eq!(status(&near_idle), 302);
    assert_eq!(status(&idle_expired), 302);
    assert_eq!(status(&fresh), 200);
    let seen: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.one("x-aalgate-user").unwrap_or("").to_string())
        .collect();
    assert_eq!(seen, ["fred", "fred", "fred"]);

    // Stepped back four minutes across a restart: the floor saved by the previous run holds
    // time where it was, so a session that went idle meanwhile stays closed.
    let idle_late = mk("ivy", 3600, 31 * 60);
    g.stop();
    std::fs::write(clock.path(), "-240").unwrap();
    g.restart();
    assert_eq!(
        status(&idle_late),
        302,
        "a restart with the clock stepped back reopened a session"
    );
    // A session stamped an hour ahead (the clock stepped back further, or a corrupt record)
    // cannot be timed: it is ended, not trusted.
    let now = aalgate_policy::Timestamp::wall();
    let id = aalgate_session::SessionId::generate();
    let ahead = now.plus(Duration::from_secs(3600));
    let future = aalgate_session::Session {
        user: "fay".into(),
        aal: Aal::Aal2,
        amr: vec!["swk".into()],
        credential: None,
        auth_time: ahead,
        last_auth: ahead,
        last_seen: ahead,
        expires_at: now.plus(Duration::from_secs(86400)),
    };
    let handle = aalgate_session::SessionId::generate();
    rt().block_on(async {
        store.insert(&id.key(), &future).await.unwrap();
        store
            .link(&handle.key(), &id.key(), &h, future.expires_at)
            .await
            .unwrap();
    });
    assert_eq!(
        status(&format!("Cookie: aalgate={}", handle.to_cookie())),
        302
    );
    // Found and ended (a cookie that merely did not resolve would also get a 302).
    assert!(
        rt().block_on(store.get(&id.key(), now)).unwrap().is_none(),
        "the session from the future was not ended"
    );
    // (fred, last seen during the +5 min step, is now 9 min "ahead" and was ended the same way:
    // fail closed.) A session of the right time works.
    assert_eq!(status(&mk("gil", 60, 1)), 200);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let (port, seen) = scripted_upstream(|_, _| Act::AnswerAfter(Duration::from_millis(1500)));
    let mut g = Gateway::start(None, &[("billing.yaml", &policy(port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "sam",
        Aal::Aal2,
        60,
        1,
    );
    let gport = g.port;
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let c = format!("Cookie: aalgate={cookie}");
            std::thread::spawn(move || {
                let target = if i % 2 == 0 {
                    format!("/static/{i}")
                } else {
                    format!("/work/{i}")
                };
                let r = get(gport, &format!("localhost:{gport}"), &target, &[&c]);
                (r.status, r.text())
            })
        })
        .collect();
    // All eight are in flight (the upstream takes 1.5 s); then the service manager stops us.
    eventually(Duration::from_secs(5), "requests in flight", || {
        (seen.lock().map(|v| v.len()).unwrap_or(0) == 8).then_some(())
    });
    g.signal("-TERM");
    let statuses: Vec<u16> = workers
        .into_iter()
        .map(|w| w.join().unwrap_or((0, String::new())))
        .map(|(status, body)| if body == "ok" { status } else { 0 })
        .collect();
    assert_eq!(
        statuses,
        [200; 8],
        "in-flight requests were cut:\n{}",
        g.log()
    );
    assert!(
        g.wait_exit(Duration::from_secs(15)),
        "no exit after SIGTERM"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", gport)).is_err(),
        "still listening"
    );
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

/// Sends `head` (a request with `Content-Length: 100`), then a byte every 300 ms, never silent
/// for the 1 s client timeout: the body as a whole gets that second, then 408.
fn trickle_gets_408(port: u16, head: &str) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let t0 = Instant::now();
    let mut w = c.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            if w.write_all(b"n").is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c, &mut answer);
    let took = t0.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "trickle: {answer:.300}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
        "trickle: 408 after {took:?}"
    );
    drop(c);
    let _ = trickle.join();
}

/// A client that sends a request's head and part of its body, then nothing, gets 408 once
/// `client_timeout` passes: on a forwarded route (a small body is read whole first, so the
/// upstream sees nothing; a large one streams, so the upstream saw the head and sees the
/// request end unfinished) and on a step-up route whose body the gateway reads itself to keep
/// it (nothing is kept, nothing forwarded).
#[test]
fn a_client_that_stops_mid_request_gets_408() {
    let up = Upstream::start();
    let mut g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        "client_timeout: 1s\n",
    );
    let h = format!("localhost:{}", g.port);
    let store = EmbeddedStore::open(&g.state_dir()).expect("open embedded store");
    // Signed in 10 min ago: /confirm asks for a step-up, and keeps the form.
    let stale = make_session(&store, &h, "sid", Aal::Aal2, 600, 1);
    let fresh = make_session(&store, &h, "sal", Aal::Aal2, 60, 1);
    for (target, cookie, length, forwarded) in [
        ("/static/upload", None, 100, false),
        ("/orders", Some(&fresh), 100, false),
        ("/static/upload", None, 100_000, true),
        ("/orders", Some(&fresh), 100_000, true),
        ("/confirm", Some(&stale), 100, false),
    ] {
        up.clear();
        let mut c = TcpStream::connect(("127.0.0.1", g.port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: aalgate={c}\r\n"));
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {h}\r\n{cookie}Origin: http://{h}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\nnote=part"
        );
        c.write_all(head.as_bytes()).unwrap();
        let t0 = Instant::now();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut answer);
        let took = t0.elapsed();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{target}: {answer:.300}\n{}",
            g.log()
        );
        assert!(answer.contains("Request timed out"), "{target}: {answer}");
        // The 1 s of silence, not pingora's default 60 s, nor a second wait.
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
            "{target}: 408 after {took:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let seen: Vec<(String, bool)> = up
            .seen()
            .into_iter()
            .map(|s| (s.target, s.complete))
            .collect();
        let expected = if forwarded {
            vec![(target.to_string(), false)]
        } else {
            Vec::new()
        };
        assert_eq!(seen, expected, "{target} ({length}): what the upstream saw");
    }
    // Nor can a trickle hold a small body's read on a public route: it gets the same bound.
    trickle_gets_408(
        g.port,
        &format!("POST /static/upload HTTP/1.1\r\nHost: {h}\r\nContent-Length: 100\r\n\r\n"),
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // A trickle (a byte every 300 ms, never silent for the 1 s) cannot hold one of the few
    // slots the gateway reads kept forms into: the whole body gets client_timeout.
    trickle_gets_408(
        g.port,
        &format!(
            "POST /confirm HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={stale}\r\nOrigin: http://{h}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        ),
    );
    let kept = rt()
        .block_on(store.kv_list("kept"))
        .expect("list kept forms");
    assert!(kept.is_empty(), "a form cut short was kept: {kept:?}");
    // A body that does not parse gets 400. Neither it nor the silence above is a failure of
    // the gateway: anonymous clients must not be able to fill its log with warnings.
    let r = send(
        g.port,
        format!("POST /static/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    std::thread::sleep(Duration::from_millis(200));
    g.assert_quiet("client-caused failures");
    assert!(g.alive(), "gateway died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
}
