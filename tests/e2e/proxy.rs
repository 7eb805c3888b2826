//! Allowed requests: the forwarded path, stripped and added headers, the JWT; and what happens
//! when a request is not allowed (302 for pages, 401 JSON for scripts).

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use std::time::Duration;

use aalgate_tests::{eventually, get, pyjwt_decode, send, Gateway, Upstream};

use crate::{make_session, policy};

fn host(g: &Gateway) -> String {
    format!("localhost:{}", g.port)
}

#[test]
fn allowed_request_is_forwarded_with_identity_and_nothing_spoofed() {
    let up = Upstream::start();
    let g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        "audit:\n  output: file:audit.jsonl\n  requests: true\n",
    );
    // The CLI-style second opener writes the session while the gateway runs.
    let store =
        EmbeddedStore::open(&g.state_dir()).expect("open embedded store beside the gateway");
    // Signed in 20 min ago: the forwarded auth time must be that, not the request's time.
    let minted = aalgate_policy::Timestamp::wall().0 - 1200;
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "alice",
        Aal::Aal2,
        1200,
        1,
    );
    let auth_time = minted..=aalgate_policy::Timestamp::wall().0 - 1200;

    let r = get(
        g.port,
        &host(&g),
        "/app/./x/%2e%2e/y//z?q=1&r=%2F",
        &[
            &format!("Cookie: theme=dark; aalgate={cookie}; other=2"),
            "X-Aalgate-User: mallory",
            "x_aalgate_user: mallory",
            "X.Aalgate.Aal: 3",
            "X-AALGATE-ASSERTION: forged",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Host: evil.example",
            "X-Forwarded-Proto: https",
            "Forwarded: for=6.6.6.6",
            "X-Original-URL: /debug/console",
            "X-Rewrite-URL: /debug/console",
            "X-Request-Id: chosen-by-client",
            "X-Hop: secret",
            "Connection: close, X-Hop, X-Aalgate-User",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.target, "/app/y/z?q=1&r=%2F",
        "the normalized path is what goes upstream"
    );
    assert_eq!(s.all("x-aalgate-user"), ["alice"]);
    assert_eq!(s.one("x-aalgate-aal"), Some("2"));
    let forwarded_auth_time: u64 = s
        .one("x-aalgate-auth-time")
        .and_then(|t| t.parse().ok())
        .expect("x-aalgate-auth-time, in seconds");
    assert!(
        auth_time.contains(&forwarded_auth_time),
        "x-aalgate-auth-time {forwarded_auth_time}, the session's is in {auth_time:?}"
    );
    assert_eq!(s.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.one("x-forwarded-proto"), Some("http"));
    assert_eq!(s.one("x-forwarded-host"), Some(host(&g).as_str()));
    for gone in [
        "x_aalgate_user",
        "x.aalgate.aal",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-hop",
    ] {
        assert!(s.all(gone).is_empty(), "{gone} reached the upstream");
    }
    assert!(s.headers.iter().all(|(n, v)| !v.contains("mallory")
        && !v.contains("6.6.6.6")
        && !v.contains("evil.example")
        && n != "x_aalgate_user"));
    // The app's request id is the gateway's own, the one its audit record of this request
    // carries (not the client's).
    let request_id = s.one("x-request-id").expect("x-request-id");
    assert_ne!(request_id, "chosen-by-client");
    let audit = eventually(Duration::from_secs(5), "the request's audit record", || {
        std::fs::read_to_string(g.dir.path().join("audit.jsonl"))
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "request" && e["user"] == "alice")
    });
    assert_eq!(
        audit["request_id"].as_str(),
        Some(request_id),
        "the audit record names the forwarded request id: {audit}"
    );
    assert_eq!(
        s.one("cookie"),
        Some("theme=dark; other=2"),
        "the session cookie never reaches the upstream"
    );

    // The assertion verifies against the JWKS the gateway publishes.
    let jwks = get(g.port, &host(&g), "/.aalgate/jwks.json", &[]).json();
    let token = s.one("x-aalgate-assertion").expect("assertion");
    let issuer = format!("http://localhost:{}", g.port);
    let claims = pyjwt_decode(token, &jwks.to_string(), "billing", &issuer).expect("valid JWT");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(claims["amr"], serde_json::json!(["hwk", "user"]));
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(exp > iat && exp - iat <= 60, "short-lived");
    assert_eq!(claims["auth_time"].as_u64(), Some(forwarded_auth_time));
    assert!(
        pyjwt_decode(token, &jwks.to_string(), "ehr", &issuer).is_err(),
        "aud binds the app"
    );
}

#[test]
fn public_routes_pass_without_identity_and_upstream_cannot_set_our_cookie() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let r = get(
        g.port,
        &host(&g),
        "/static/app.css",
        &["X-Aalgate-User: mallory"],
    );
    assert_eq!(r.status, 200);
    let s = &up.seen()[0];
    assert!(s.all("x-aalgate-user").is_empty() && s.all("x-aalgate-assertion").is_empty());

    // The upstream gets the canonical host, and no method override.
    up.clear();
    let r = get(
        g.port,
        &format!("LocalHost.:{}", g.port),
        "/static/x",
        &[
            "X-HTTP-Method-Override: DELETE",
            "X_Method_Override: DELETE",
        ],
    );
    assert_eq!(r.status, 200);
    let s = &up.seen()[0];
    assert_eq!(s.one("host"), Some(host(&g).as_str()));
    assert_eq!(s.one("x-forwarded-host"), Some(host(&g).as_str()));
    assert!(
        s.headers.iter().all(|(_, v)| v != "DELETE"),
        "{:?}",
        s.headers
    );

    let r = get(g.port, &host(&g), "/static/setcookie", &[]);
    assert_eq!(r.status, 200);
    let cookies = r.all("set-cookie");
    assert_eq!(
        cookies,
        ["app=1; Path=/"],
        "only the app's own cookie survives"
    );
}

#[test]
fn not_allowed_pages_redirect_and_scripts_get_401_json() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let h = host(&g);

    // No session: a navigation is redirected to the sign-in page with an opaque flow id.
    let r = get(
        g.port,
        &h,
        "/invoices?id=7",
        &["Accept: text/html", "Sec-Fetch-Mode: navigate"],
    );
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with("/.aalgate/auth?flow=") && loc.len() == "/.aalgate/auth?flow=".len() + 43,
        "{loc}"
    );
    assert!(
        !loc.contains("invoices"),
        "the original URL stays server-side"
    );
    let page = get(g.port, &h, &loc, &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("<h1>Sign in</h1>")
            && page.text().contains("Sign in to <strong>billing</strong>")
            && !page.text().contains("invoices"),
        "{}",
        page.text()
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("script-src 'self'") && c.contains("frame-ancestors 'none'")));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    let bogus = get(
        g.port,
        &h,
        "/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &[],
    );
    assert!(bogus.text().contains("not valid any more"));

    // A script call gets 401 JSON with what is needed and where to sign in.
    let r = get(
        g.port,
        &h,
        "/api/data",
        &["Accept: application/json", "Sec-Fetch-Mode: cors"],
    );
    assert_eq!(r.status, 401);
    let j = r.json();
    assert_eq!(j["need"], "login");
    assert!(j["login_url"]
        .as_str()
        .unwrap()
        .starts_with("/.aalgate/auth?flow="));
    // Before a session exists, nothing tells what a route needs, only that sign-in is: not
    // the JSON, not the page it leads to (an AAL3 route here).
    let r = get(
        g.port,
        &h,
        "/pay/now",
        &["Accept: application/json", "Sec-Fetch-Mode: cors"],
    );
    let j = r.json();
    assert_eq!((r.status, &j["need"]), (401, &serde_json::json!("login")));
    assert!(
        j.get("aal").is_none() && j.get("max_age_seconds").is_none(),
        "{j}"
    );
    let page = get(g.port, &h, j["login_url"].as_str().unwrap(), &[]);
    assert!(
        page.text().contains("Sign in to <strong>billing</strong>")
            && !page.text().contains("hardware"),
        "{}",
        page.text()
    );

    // An AAL2 session on an AAL3 route must step up.
    let aal2 = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "bob",
        Aal::Aal2,
        60,
        1,
    );
    let r = get(
        g.port,
        &h,
        "/pay/now",
        &[
            &format!("Cookie: aalgate={aal2}"),
            "Accept: application/json",
        ],
    );
    assert_eq!(
        (r.status, r.json()["need"].as_str()),
        (401, Some("step_up"))
    );
    assert_eq!(r.json()["aal"], "aal3");
    // A step-up route with an authentication older than its window.
    let old = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "carol",
        Aal::Aal2,
        600,
        1,
    );
    let r = get(
        g.port,
        &h,
        "/confirm",
        &[
            &format!("Cookie: aalgate={old}"),
            "Accept: application/json",
        ],
    );
    assert_eq!(
        (
            r.status,
            r.json()["need"].as_str(),
            r.json()["max_age_seconds"].as_u64()
        ),
        (401, Some("step_up"), Some(300))
    );
    // Idle past the AAL2 limit (30 min): re-authenticate; 1 s before the limit: allowed.
    let idle = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "dave",
        Aal::Aal2,
        3600,
        30 * 60 + 1,
    );
    let r = get(
        g.port,
        &h,
        "/x",
        &[
            &format!("Cookie: aalgate={idle}"),
            "Accept: application/json",
        ],
    );
    assert_eq!(r.json()["need"], "reauth");
    let fresh = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "erin",
        Aal::Aal2,
        3600,
        30 * 60 - 2,
    );
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={fresh}")]).status,
        200
    );
    // Forged, truncated and oversized cookies are just "no session".
    for bad in [
        "x",
        &aal2[..42],
        &"A".repeat(43),
        &"A".repeat(5000),
        "..%2F",
    ] {
        assert_eq!(
            get(g.port, &h, "/x", &[&format!("Cookie: aalgate={bad}")]).status,
            302,
            "{bad}"
        );
    }
    // Deny.
    assert_eq!(
        get(
            g.port,
            &h,
            "/debug/console",
            &[&format!("Cookie: aalgate={aal2}")]
        )
        .status,
        403
    );
    // Only erin's request went upstream.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].one("x-aalgate-user"), Some("erin"));
}

#[test]
fn gateway_prefix_is_never_forwarded_and_logout_ends_the_session() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let h = host(&g);
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "frank",
        Aal::Aal3,
        60,
        1,
    );
    for t in [
        "/.aalgate/",
        "/.aalgate/nope",
        "/.aalgate",
        "/x/../.aalgate/admin",
        "/.%61algate/x",
    ] {
        let r = get(g.port, &h, t, &[&format!("Cookie: aalgate={cookie}")]);
        assert_eq!(r.status, 404, "{t}");
    }
    let confirm = get(
        g.port,
        &h,
        "/.aalgate/logout",
        &[&format!("Cookie: aalgate={cookie}")],
    );
    assert!(
        confirm.status == 200 && confirm.text().contains("name=\"csrf\""),
        "GET asks to confirm, with the token in the form"
    );
    let cross = send(g.port, format!("POST /.aalgate/logout HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(cross.status, 403);
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={cookie}")]).status,
        200
    );
    // Same origin but no token (an app's own sign-out button): the confirmation page, and
    // the session stays.
    let no_token = send(g.port, format!("POST /.aalgate/logout HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
    assert!(no_token.status == 200 && no_token.text().contains("Sign out of every application"));
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={cookie}")]).status,
        200
    );
    let out = aalgate_tests::logout(g.port, &h, &cookie);
    assert_eq!(out.status, 200);
    assert!(out.text().contains("You are signed out"), "{}", out.text());
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={cookie}")]).status,
        302,
        "the session is gone"
    );
    assert_eq!(up.seen().len(), 2);
}

#[test]
fn embedded_sessions_survive_a_gateway_restart() {
    let up = Upstream::start();
    let mut g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let cookie = {
        let store = EmbeddedStore::open(&g.state_dir()).unwrap();
        make_session(
            &store,
            &format!("localhost:{}", g.port),
            "grace",
            Aal::Aal2,
            60,
            1,
        )
    };
    assert_eq!(
        get(
            g.port,
            &host(&g),
            "/x",
            &[&format!("Cookie: aalgate={cookie}")]
        )
        .status,
        200
    );
    let jwks = get(g.port, &host(&g), "/.aalgate/jwks.json", &[]).json();
    g.restart();
    assert_eq!(
        get(
            g.port,
            &host(&g),
            "/x",
            &[&format!("Cookie: aalgate={cookie}")]
        )
        .status,
        200
    );
    // The signing key survives too: the same JWKS, and the new process's assertion verifies
    // against the one an upstream fetched before the restart.
    let again = get(g.port, &host(&g), "/.aalgate/jwks.json", &[]).json();
    assert!(jwks["keys"][0]["x"].is_string(), "{jwks}");
    assert_eq!(jwks, again, "the JWKS changed across the restart");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let token = seen[1].one("x-aalgate-assertion").expect("assertion");
    let issuer = format!("http://localhost:{}", g.port);
    let claims = pyjwt_decode(token, &jwks.to_string(), "billing", &issuer)
        .expect("the assertion after the restart verifies against the JWKS before it");
    assert_eq!(claims["sub"], "grace");
}

/// No gateway page is a dead end: a refusal, an expired link and the signed-out page each
/// offer one obvious next step, back to the app this host serves.
#[test]
fn every_page_has_a_way_forward() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = format!("localhost:{}", g.port);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(&store, &h, "nora", Aal::Aal2, 60, 1);
    let forward = "<a class=\"button\" href=\"/\">Go to billing</a>";
    for (path, status) in [
        ("/debug/x", 403),
        ("/.aalgate/nothing-here", 404),
        (
            "/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            410,
        ),
    ] {
        let r = get(g.port, &h, path, &[&format!("Cookie: aalgate={cookie}")]);
        assert_eq!(r.status, status, "{path}");
        assert!(r.text().contains(forward), "{path}: {}", r.text());
    }
    let out = aalgate_tests::logout(g.port, &h, &cookie);
    assert!(
        out.text().contains("signed out") && out.text().contains(forward),
        "{}",
        out.text()
    );
}

/// An app can offer one-click sign-out: each request of a signed-in browser carries the
/// browser's logout token (`X-Aalgate-Logout-Token`, never one the client sent), and the app's
/// sign-out form that posts it as `csrf` ends the session at once, with no confirmation page.
#[test]
fn apps_get_a_logout_token_for_one_click_sign_out() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = format!("localhost:{}", g.port);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(&store, &h, "nora", Aal::Aal2, 60, 1);
    let (bind, token) = aalgate_tests::browser_binding(g.port, &h);
    up.clear();
    let jar = format!("Cookie: aalgate={cookie}; aalgate-bind={bind}");
    let r = get(g.port, &h, "/x", &[&jar, "X-Aalgate-Logout-Token: forged"]);
    assert_eq!(r.status, 200);
    let got = up.take();
    assert_eq!(got[0].one("x-aalgate-logout-token"), Some(token.as_str()));
    // No session (a public page) or no binding cookie: no token, and never the client's.
    for hdrs in [
        vec![format!("Cookie: aalgate-bind={bind}")],
        vec![format!("Cookie: aalgate={cookie}")],
    ] {
        let mut all: Vec<&str> = hdrs.iter().map(String::as_str).collect();
        all.push("X-Aalgate-Logout-Token: forged");
        assert_eq!(get(g.port, &h, "/static/a.css", &all).status, 200);
        let seen = up.take();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].one("x-aalgate-logout-token").is_none(), "{seen:?}");
    }
    // The app's form, posting what it got, signs out at once.
    let body = format!("csrf={}", got[0].one("x-aalgate-logout-token").unwrap());
    let out = send(
        g.port,
        format!(
            "POST /.aalgate/logout HTTP/1.1\r\nHost: {h}\r\nOrigin: http://{h}\r\n{jar}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(out.text().contains("You are signed out"), "{}", out.text());
}

/// On an auth origin that serves no app of its own, a refusal or an expired sign-in link has
/// no app to send the person to: it offers the way back to the page they came from.
#[test]
fn the_auth_origin_alone_offers_the_way_back() {
    let up = Upstream::start();
    let app = policy(up.port).replace("host: localhost", "host: ehr.localhost");
    let g = Gateway::start(None, &[("ehr.yaml", &app)]);
    let h = format!("localhost:{}", g.port);
    for (path, status) in [
        ("/.aalgate/nothing-here", 404),
        (
            "/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            410,
        ),
        (
            "/.aalgate/enroll?invite=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            410,
        ),
    ] {
        let r = get(g.port, &h, path, &[]);
        let t = r.text();
        assert_eq!(r.status, status, "{path}: {t}");
        assert!(
            t.contains("<button type=\"button\" data-action=\"back\">Go back</button>")
                && t.contains("/.aalgate/static/aalgate.js"),
            "{path}: {t}"
        );
    }
}
