//! The Redis backend: the shared conformance suite against a real redis-server, and the gateway
//! failing closed while Redis is down, then recovering by itself.

use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::{conformance, RedisStore};
use aalgate_tests::{get, Gateway, Redis, Upstream};

use crate::{make_session, policy, rt};

/// Longer than the gateway's 1 s session-cache freshness.
const CACHE_WINDOW: Duration = Duration::from_millis(1200);

#[test]
fn redis_store_passes_the_conformance_suite() {
    let redis = Redis::start();
    let a = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let b = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    rt().block_on(async {
        conformance::run_all(&a).await;
        conformance::cross_handle(&a, &b).await;
    });
}

#[test]
fn redis_down_fails_closed_with_503_and_recovers() {
    let mut redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&redis.url()), &[("billing.yaml", &policy(up.port))]);
    let store = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "heidi",
        Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    let c = format!("Cookie: aalgate={cookie}");
    assert_eq!(get(g.port, &h, "/x", &[&c]).status, 200);

    redis.stop();
    // A session read less than 1 s ago is served from the gateway's cache (the same bound as
    // for revocation); past that, the store is asked and the answer is 503.
    std::thread::sleep(CACHE_WINDOW);
    let r = get(g.port, &h, "/x", &[&c]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        r.header("set-cookie").is_none(),
        "the cookie is kept, no login loop"
    );
    assert!(r.text().contains("temporarily unavailable"));
    // The way forward: the same page again (a GET: safe to repeat), its URL never spelled out.
    assert!(
        r.text()
            .contains("<a class=\"button\" href=\"\">Try again</a>"),
        "{}",
        r.text()
    );
    let j = get(g.port, &h, "/x", &[&c, "Accept: application/json"]);
    assert_eq!(
        (j.status, j.json()["error"].as_str()),
        (503, Some("store_unavailable"))
    );
    // No session yet: still 503 (the flow cannot be stored), never a pass-through.
    assert_eq!(get(g.port, &h, "/x", &[]).status, 503);
    // A form sent now: the page says it was neither sent nor kept, and offers no resend
    // (a POST is never repeated for the person), only the way back to the app.
    let posted = aalgate_tests::send(
        g.port,
        format!(
            "POST /x HTTP/1.1\r\nHost: {h}\r\n{c}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1"
        )
        .as_bytes(),
    );
    let t = posted.text();
    assert_eq!(posted.status, 503, "{t}");
    assert!(
        t.contains("was not sent to the application, and not kept") && !t.contains("Try again</a>"),
        "{t}"
    );
    // Public routes do not need the store.
    assert_eq!(get(g.port, &h, "/static/app.css", &[]).status, 200);
    assert_eq!(
        get(
            g.admin_port,
            &format!("127.0.0.1:{}", g.admin_port),
            "/readyz",
            &[]
        )
        .status,
        503
    );

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = get(g.port, &h, "/x", &[&c]).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status, 200,
        "recovers by itself after redis-server restarts"
    );
    // Upstream saw the two allowed requests and the public one, nothing during the outage.
    let seen: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(seen, ["/x", "/static/app.css", "/x"]);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn a_hung_store_hits_the_deadline_and_fails_closed() {
    let redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&redis.url()), &[("billing.yaml", &policy(up.port))]);
    let store = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "judy",
        Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    let c = format!("Cookie: aalgate={cookie}");
    assert_eq!(get(g.port, &h, "/x", &[&c]).status, 200);
    redis.pause();
    std::thread::sleep(CACHE_WINDOW);
    let t0 = std::time::Instant::now();
    let r = get(g.port, &h, "/x", &[&c]);
    let took = t0.elapsed();
    redis.resume();
    assert_eq!(r.status, 503, "{}", r.text());
    // The harness sets store_timeout: 1s; the answer comes at the deadline, not after a hang
    // nor after a second try.
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
        "took {took:?}"
    );
    assert_eq!(up.seen().len(), 1);
    // Once the store answers again, the same cookie works.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while std::time::Instant::now() < deadline && status != 200 {
        status = get(g.port, &h, "/x", &[&c]).status;
    }
    assert_eq!(status, 200);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn cached_sessions_cost_no_redis_round_trip_and_revocation_is_seen_within_a_second() {
    let redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&redis.url()), &[("billing.yaml", &policy(up.port))]);
    let store = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "pat",
        Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    let c = format!("Cookie: aalgate={cookie}");
    assert_eq!(get(g.port, &h, "/x", &[&c]).status, 200);
    // Within the 1 s freshness window, further requests are served from the cache.
    redis.command("CONFIG RESETSTAT");
    let t0 = std::time::Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        assert_eq!(get(g.port, &h, "/x", &[&c]).status, 200);
        n += 1;
    }
    let lookups = redis.calls("hmget");
    assert!(n >= 10, "only {n} requests");
    assert!(
        lookups <= 1,
        "{lookups} session lookups in Redis for {n} cached requests"
    );

    // Revoked on "another instance" (here: straight in the store): seen within about 1 s.
    rt().block_on(async {
        let other = RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
        aalgate_session::SessionStore::revoke_user(&other, "pat").await
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        let s = get(g.port, &h, "/x", &[&c]).status;
        if s != 200 || t0.elapsed() > Duration::from_secs(3) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 302);
    assert!(
        t0.elapsed() <= Duration::from_millis(1300),
        "revocation took {:?}",
        t0.elapsed()
    );
}
