//! Kept forms as an attacker and as real apps see them, in raw HTTP: a cross-site POST is
//! never replayed, a silent handoff asks before it sends, a kept form belongs to one person and
//! one app (host *and* port), it carries the app's path-scoped cookies, the ceremony a request
//! caused admits it, and nothing an anonymous client sends is kept or grows without a limit.
//!
//! Sessions are made directly in the store (`make_session`); a "fresh" session stands for a
//! ceremony another tab just completed, so the flows here end in a silent handoff.

use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::{EmbeddedStore, RedisStore, SessionStore};
use aalgate_tests::{browser_binding, get, sample, send, Gateway, Redis, Response, Upstream};

use crate::{make_session, rt};

fn kept_policy(app: &str, host: &str, upstream: u16) -> String {
    [
        format!("app: {app}"),
        format!("host: {host}"),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /confirm".into(),
        "    require: aal2".into(),
        "    step_up: { max_age: 5m }".into(),
        "  - path: /quick".into(),
        "    require: aal2".into(),
        "    step_up: { max_age: 1s }".into(),
        "  - path: /app/**".into(),
        "    require: aal2".into(),
        "    step_up: { max_age: 5m }".into(),
        String::new(),
    ]
    .join("\n")
}

fn host(g: &Gateway) -> String {
    format!("localhost:{}", g.port)
}

fn store(g: &Gateway) -> EmbeddedStore {
    EmbeddedStore::open(&g.state_dir()).expect("open the embedded store beside the gateway")
}

/// A form POST with extra header lines.
fn post(port: u16, host: &str, path: &str, extra: &[&str], body: &str) -> Response {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    send(port, req.as_bytes())
}

/// The value of a cookie the response sets.
fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.all("set-cookie").into_iter().find_map(|c| {
        c.strip_prefix(&format!("{name}="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
    })
}

/// Follows redirects the way a browser does (top-level GETs, with `cookies`, plus any session
/// cookie a handoff sets), at most 6 hops. Returns the last response, the host it came from
/// and the cookies the browser then sends there.
fn follow(
    port: u16,
    mut host: String,
    first: Response,
    cookies: &str,
) -> (Response, String, String) {
    let mut r = first;
    let mut jar = cookies.to_string();
    for _ in 0..6 {
        if !(300..400).contains(&r.status) {
            break;
        }
        let Some(loc) = r.header("location").map(str::to_string) else {
            break;
        };
        let path = if let Some(rest) = loc.strip_prefix("http://") {
            let (h, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            host = h.to_string();
            p.to_string()
        } else {
            loc
        };
        if let Some(s) = set_cookie(&r, "aalgate") {
            jar = replace_cookie(&jar, "aalgate", &s);
        }
        r = get(
            port_of(&host, port),
            &host,
            &path,
            &[&format!("Cookie: {jar}")],
        );
    }
    (r, host, jar)
}

/// The port a browser connects to for `host` (its own, or the gateway's main one).
fn port_of(host: &str, main: u16) -> u16 {
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(main)
}

fn replace_cookie(jar: &str, name: &str, value: &str) -> String {
    let mut out: Vec<String> = jar
        .split("; ")
        .filter(|c| !c.starts_with(&format!("{name}=")) && !c.is_empty())
        .map(str::to_string)
        .collect();
    out.push(format!("{name}={value}"));
    out.join("; ")
}

fn kept_count(g: &Gateway, outcome: &str) -> f64 {
    sample(
        &g.scrape(),
        &format!("aalgate_kept_forms_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

fn form_field(page: &str, name: &str) -> Option<String> {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|t| t.split('"').next())
        .map(str::to_string)
}

/// Confirms a kept form on its confirmation page the way the page's button does.
fn confirm(port: u16, host: &str, page: &Response, cookies: &str, origin: &str) -> Response {
    let text = page.text();
    let kept = form_field(&text, "kept").expect("confirmation form names the kept form");
    let csrf = form_field(&text, "csrf").expect("confirmation form carries a token");
    post(
        port,
        host,
        "/.aalgate/resume",
        &[
            &format!("Origin: {origin}"),
            "Sec-Fetch-Site: same-origin",
            &format!("Cookie: {cookies}"),
        ],
        &format!("kept={kept}&csrf={csrf}"),
    )
}

fn posts(up: &Upstream) -> Vec<aalgate_tests::Seen> {
    up.seen()
        .into_iter()
        .filter(|s| s.method != "GET")
        .collect()
}

#[test]
fn a_cross_site_post_is_never_replayed() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let victim = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
    // The attacker's page auto-submits a form: no Lax cookie goes with a cross-site POST.
    let r = post(
        g.port,
        &h,
        "/orders",
        &["Origin: http://evil.example", "Sec-Fetch-Site: cross-site"],
        "drug=oxycodone&qty=90",
    );
    assert_eq!(r.status, 302, "{}", r.text());
    let bind = set_cookie(&r, "aalgate-bind").expect("binding cookie");
    // Each redirect is a top-level GET, so the victim's Lax cookies go with it.
    let (last, _, _) = follow(
        g.port,
        h.clone(),
        r,
        &format!("aalgate={victim}; aalgate-bind={bind}"),
    );
    assert!(
        posts(&up).is_empty(),
        "the attacker's form reached the app: {:?}",
        posts(&up)
    );
    let t = last.text();
    assert!(
        t.contains("not sent") && t.contains("another site"),
        "the page says the form was not sent, and why: {t}"
    );
    // The same with the attack on a step-up route while the victim's session is fresh, and
    // from a sibling host whose POST does carry the Lax cookies (same-site).
    for (path, hdrs) in [
        (
            "/confirm",
            vec!["Origin: http://evil.example", "Sec-Fetch-Site: cross-site"],
        ),
        (
            "/confirm",
            vec!["Origin: http://evil.localhost", "Sec-Fetch-Site: same-site"],
        ),
    ] {
        let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
        let (b, _) = browser_binding(g.port, &h);
        let cookie = format!("Cookie: aalgate={stale}; aalgate-bind={b}");
        let mut all = hdrs.clone();
        all.push(&cookie);
        let r = post(g.port, &h, path, &all, "drug=x");
        assert_eq!(r.status, 302, "{}", r.text());
        let fresh = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
        follow(
            g.port,
            h.clone(),
            r,
            &format!("aalgate={fresh}; aalgate-bind={b}"),
        );
        assert!(posts(&up).is_empty(), "{hdrs:?}: {:?}", posts(&up));
    }
    assert!(kept_count(&g, "cross_site") >= 3.0, "{}", g.scrape());
    assert!(!g.log().contains("panicked"));
}

#[test]
fn only_same_origin_evidence_keeps_a_form() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let own = format!("http://{h}");
    let cases: Vec<(Vec<String>, bool, &str)> = vec![
        (
            vec![
                format!("Origin: {own}"),
                "Sec-Fetch-Site: same-origin".into(),
            ],
            true,
            "same-origin Origin",
        ),
        (
            vec!["Origin: null".into(), "Sec-Fetch-Site: same-origin".into()],
            true,
            "Origin: null with Sec-Fetch-Site: same-origin",
        ),
        (
            vec![format!("Referer: {own}/confirm-form")],
            true,
            "a same-origin Referer alone",
        ),
        (vec![format!("Origin: {own}")], true, "Origin alone"),
        (
            vec!["Sec-Fetch-Site: same-site".into()],
            false,
            "Sec-Fetch-Site: same-site",
        ),
        (
            vec!["Referer: http://evil.example/x".into()],
            false,
            "a cross-site Referer",
        ),
        (
            vec![format!("Referer: http://evil.example/{h}/")],
            false,
            "a cross-site Referer naming us",
        ),
        (vec![], false, "no evidence"),
        (vec!["Origin: null".into()], false, "Origin: null alone"),
        (
            vec![
                format!("Origin: {own}"),
                "Sec-Fetch-Site: cross-site".into(),
            ],
            false,
            "Origin and Sec-Fetch-Site disagree",
        ),
        (
            vec![format!("Origin: https://{h}")],
            false,
            "another scheme",
        ),
        (
            vec![format!("Origin: http://localhost:1{}", g.port)],
            false,
            "another port",
        ),
        (
            vec!["Origin: null".into(), format!("Referer: {own}/x")],
            false,
            "Origin: null with a Referer",
        ),
    ];
    for (hdrs, keep, what) in cases {
        let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
        let (b, _) = browser_binding(g.port, &h);
        let before = (kept_count(&g, "kept"), kept_count(&g, "cross_site"));
        let mut all: Vec<&str> = hdrs.iter().map(String::as_str).collect();
        let cookie = format!("Cookie: aalgate={stale}; aalgate-bind={b}");
        all.push(&cookie);
        let r = post(g.port, &h, "/confirm", &all, "note=x");
        assert_eq!(r.status, 302, "{what}: {}", r.text());
        let after = (kept_count(&g, "kept"), kept_count(&g, "cross_site"));
        if keep {
            assert_eq!(after.0, before.0 + 1.0, "{what}: kept");
        } else {
            assert_eq!(
                (after.0, after.1),
                (before.0, before.1 + 1.0),
                "{what}: refused"
            );
        }
        // The step-up page says whether the form is kept.
        let auth = follow(
            g.port,
            h.clone(),
            r,
            &format!("aalgate={stale}; aalgate-bind={b}"),
        )
        .0;
        assert_eq!(
            auth.text().contains("is kept"),
            keep,
            "{what}: {}",
            auth.text()
        );
    }
    assert!(up.seen().is_empty(), "nothing reached the app");
}

/// Behind a TLS load balancer the listener speaks plain HTTP, but browsers are on https: the
/// app's own origin, against which a form's `Origin` or `Referer` is judged, is
/// `https://host` (the scheme of `public_origin`), never the socket's `http://`.
#[test]
fn behind_a_tls_load_balancer_the_apps_origin_is_https() {
    let up = Upstream::start();
    let g = Gateway::start_behind_tls_lb(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        "",
    );
    // The browser's https://localhost (port 443) arrives with a Host header without a port.
    let h = "localhost".to_string();
    let cases = [
        ("Origin: https://localhost".to_string(), true),
        ("Referer: https://localhost/confirm-form".to_string(), true),
        ("Origin: http://localhost".to_string(), false),
        (format!("Origin: http://localhost:{}", g.port), false),
        ("Referer: http://localhost/confirm-form".to_string(), false),
        ("Origin: https://localhost:8443".to_string(), false),
    ];
    for (hdr, keep) in cases {
        let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
        let (b, _) = browser_binding(g.port, &h);
        let before = kept_count(&g, "kept");
        // The browser is on https: the cookies are the `__Host-` ones.
        let cookie = format!("Cookie: __Host-aalgate={stale}; __Host-aalgate-bind={b}");
        let r = post(g.port, &h, "/confirm", &[&hdr, &cookie], "note=x");
        assert_eq!(r.status, 302, "{hdr}: {}", r.text());
        // On the auth origin's own host the sign-in link is relative.
        assert!(
            r.header("location")
                .is_some_and(|l| l.starts_with("/.aalgate/auth?flow=")),
            "{hdr}: {:?}",
            r.header("location")
        );
        assert_eq!(
            kept_count(&g, "kept"),
            before + f64::from(u8::from(keep)),
            "{hdr}: kept is {keep}"
        );
    }
    assert!(up.seen().is_empty(), "nothing reached the app");
    assert!(!g.log().contains("panicked"));
}

#[test]
fn a_silent_handoff_asks_before_it_sends() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let own = format!("http://{h}");
    let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
    let (b, _) = browser_binding(g.port, &h);
    let r = post(
        g.port,
        &h,
        "/confirm",
        &[
            &format!("Origin: {own}"),
            &format!("Cookie: aalgate={stale}; aalgate-bind={b}"),
        ],
        "note=chest+pain",
    );
    assert_eq!(r.status, 302);
    // Another tab stepped up meanwhile: the auth page needs no ceremony, so it must not send.
    let fresh = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
    let jar = format!("aalgate={fresh}; aalgate-bind={b}");
    let (page, _, _) = follow(g.port, h.clone(), r, &jar);
    let t = page.text();
    assert_eq!(page.status, 200, "{t}");
    assert!(
        t.contains("Send the form you were filling in to billing?"),
        "{t}"
    );
    assert!(
        up.seen().is_empty(),
        "nothing sent before the person confirms"
    );
    // The button is a same-origin POST with a token; a cross-site one sends nothing.
    let kept = form_field(&t, "kept").unwrap();
    let forged = post(
        g.port,
        &h,
        "/.aalgate/resume",
        &[
            "Origin: http://evil.example",
            "Sec-Fetch-Site: cross-site",
            &format!("Cookie: {jar}"),
        ],
        &format!("kept={kept}&csrf={}", form_field(&t, "csrf").unwrap()),
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    let no_token = post(
        g.port,
        &h,
        "/.aalgate/resume",
        &[&format!("Origin: {own}"), &format!("Cookie: {jar}")],
        &format!("kept={kept}"),
    );
    assert_eq!(no_token.status, 403, "{}", no_token.text());
    assert!(up.seen().is_empty());
    let sent = confirm(g.port, &h, &page, &jar, &own);
    assert_eq!(sent.status, 200, "{}", sent.text());
    let seen = posts(&up);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/confirm")
    );
    assert_eq!(seen[0].one("x-aalgate-user"), Some("nora"));
    assert_eq!(seen[0].body_len, "note=chest+pain".len());
    // One upstream request, timed and counted once, as a forwarded one is (the replay was
    // timed twice: once through the response phase, once more by itself).
    let m = g.scrape();
    let n = Some(up.seen().len() as f64);
    let v = |k: &str| sample(&m, k);
    assert_eq!(
        v("aalgate_upstream_duration_seconds_count{app=\"billing\"}"),
        n,
        "{m}"
    );
    assert_eq!(
        v("aalgate_upstream_responses_total{app=\"billing\",class=\"2xx\"}"),
        n
    );
    // Once.
    let again = confirm(g.port, &h, &page, &jar, &own);
    assert!(again.text().contains("already sent"), "{}", again.text());
    assert_eq!(again.status, 410, "gone, and monitoring can see it");
    assert_eq!(posts(&up).len(), 1);
}

#[test]
fn a_kept_form_is_never_sent_as_another_person() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let own = format!("http://{h}");
    // Alice is idle-expired; one tab's GET ends her session.
    let alice = make_session(&store(&g), &h, "alice", Aal::Aal2, 60, 3600);
    let (b, _) = browser_binding(g.port, &h);
    let alice_jar = format!("aalgate={alice}; aalgate-bind={b}");
    let r = get(g.port, &h, "/chart", &[&format!("Cookie: {alice_jar}")]);
    assert_eq!(r.status, 302);
    // Her second tab submits a form: it is kept for her.
    let r = post(
        g.port,
        &h,
        "/notes",
        &[&format!("Origin: {own}"), &format!("Cookie: {alice_jar}")],
        "note=alice+wrote+this",
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(kept_count(&g, "kept"), 1.0, "alice's form is kept for her");
    // Bob signs in on the shared workstation; the flow is Alice's and stays hers.
    let bob = make_session(&store(&g), &h, "bob", Aal::Aal2, 0, 0);
    let (page, _, _) = follow(
        g.port,
        h.clone(),
        r,
        &format!("aalgate={bob}; aalgate-bind={b}"),
    );
    assert!(
        posts(&up).is_empty(),
        "alice's form reached the app: {:?}",
        posts(&up)
    );
    let t = page.text();
    assert!(
        t.contains("Continue where you were"),
        "the page asks for alice's own key: {t}"
    );
    assert!(!g.log().contains("panicked"));
}

#[test]
fn two_apps_on_one_host_name_keep_their_own_forms() {
    // One host name, two listeners and ports, one app on each (by the port in `host`).
    let (up1, up2) = (Upstream::start(), Upstream::start());
    let second = aalgate_tests::free_port();
    let portal = format!(
        "{}listeners: [main]\n",
        kept_policy("portal", "portal.localhost", up1.port)
    );
    let g = Gateway::start_two_listeners(
        &[
            ("0-portal.yaml", &portal),
            (
                "1-ehr.yaml",
                &kept_policy("ehr", "apps.localhost", up1.port),
            ),
            (
                "2-billing.yaml",
                &kept_policy("billing", &format!("apps.localhost:{second}"), up2.port),
            ),
        ],
        second,
        "",
    );
    let billing = format!("apps.localhost:{second}");
    let auth = host(&g);
    let stale = make_session(&store(&g), &billing, "nora", Aal::Aal2, 600, 0);
    let (b, _) = browser_binding(second, &billing);
    let r = post(
        second,
        &billing,
        "/confirm",
        &[
            &format!("Origin: http://{billing}"),
            &format!("Cookie: aalgate={stale}; aalgate-bind={b}"),
        ],
        "invoice=42",
    );
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with(&format!("http://{auth}/.aalgate/auth?flow=")),
        "{loc}"
    );
    // The auth origin holds a fresh session of nora's (cookie on that host).
    let fresh = make_session(&store(&g), &auth, "nora", Aal::Aal2, 0, 0);
    let (page, on, jar) = follow(
        g.port,
        billing.clone(),
        r,
        &format!("aalgate={fresh}; aalgate-bind={b}"),
    );
    assert_eq!(
        on,
        billing,
        "back on the app that kept the form: {}",
        page.text()
    );
    assert!(page.text().contains("to billing?"), "{}", page.text());
    let sent = confirm(second, &on, &page, &jar, &format!("http://{billing}"));
    assert_eq!(sent.status, 200, "{}", sent.text());
    assert!(
        up1.seen().is_empty(),
        "the other app received the form: {:?}",
        up1.seen()
    );
    assert_eq!(posts(&up2).len(), 1);

    // A Host port that is not the listener's: 421 Misdirected Request, and nothing forwarded.
    let ehr_on_main = format!("apps.localhost:{}", g.port);
    let portal_on_second = format!("portal.localhost:{second}");
    for (port, host) in [
        (g.port, billing.as_str()),
        (second, portal_on_second.as_str()),
        (second, ehr_on_main.as_str()),
        (g.port, "apps.localhost:18447"),
        (g.port, "apps.localhost"),
    ] {
        let r = get(port, host, "/", &[]);
        assert_eq!(r.status, 421, "{host} on port {port}: {}", r.text());
    }
    // The auth origin is served on its own listener only.
    let r = get(
        second,
        &format!("localhost:{second}"),
        "/.aalgate/auth",
        &[],
    );
    assert_eq!(r.status, 421, "{}", r.text());
    assert_eq!(posts(&up2).len(), 1);
    assert!(up1.seen().is_empty());
}

#[test]
fn a_resumed_form_carries_the_apps_path_scoped_cookies() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let own = format!("http://{h}");
    let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
    let (b, _) = browser_binding(g.port, &h);
    // The browser sends the app's `Path=/app` cookies with the form, and not to /.aalgate/.
    let r = post(
        g.port,
        &h,
        "/app/save",
        &[
            &format!("Origin: {own}"),
            &format!("Cookie: JSESSIONID=abc123; csrftoken=K1; aalgate={stale}; aalgate-bind={b}"),
        ],
        "csrfmiddlewaretoken=K1&note=x",
    );
    assert_eq!(r.status, 302);
    let fresh = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
    let jar = format!("csrftoken=K2; theme=dark; aalgate={fresh}; aalgate-bind={b}");
    let (page, _, _) = follow(g.port, h.clone(), r, &jar);
    let sent = confirm(g.port, &h, &page, &jar, &own);
    assert_eq!(sent.status, 200, "{}", sent.text());
    let seen = posts(&up);
    assert_eq!(seen.len(), 1);
    let cookie = seen[0].all("cookie").join("; ");
    let mut names: Vec<&str> = cookie.split("; ").collect();
    names.sort();
    assert_eq!(
        names,
        vec!["JSESSIONID=abc123", "csrftoken=K1", "theme=dark"],
        "the kept cookies win, current ones are added, the gateway's are never forwarded"
    );
}

#[test]
fn the_ceremony_a_request_caused_admits_it_once() {
    let up = Upstream::start();
    let g = Gateway::start(
        None,
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 5, 0);
    let (b, _) = browser_binding(g.port, &h);
    let r = get(
        g.port,
        &h,
        "/quick",
        &[&format!("Cookie: aalgate={stale}; aalgate-bind={b}")],
    );
    assert_eq!(r.status, 302);
    // Sessions are stamped in whole seconds and `max_age: 1s` is reached at one second: start
    // at the top of a second so the hop to the auth page stays inside it.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_millis() > 200)
        .unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let fresh = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
    let jar = format!("aalgate={fresh}; aalgate-bind={b}");
    let auth = get(
        g.port,
        &h,
        r.header("location").unwrap(),
        &[&format!("Cookie: {jar}")],
    );
    assert_eq!(auth.status, 302, "handed off: {}", auth.text());
    assert_eq!(auth.header("location"), Some("/quick"));
    // The hop took longer than max_age: the flow's own request is still admitted, once.
    std::thread::sleep(Duration::from_millis(2100));
    // The grant is this browser's: the same session with another binding cookie (another
    // tab's script with no binding, or another device) is not admitted by it.
    let (other, _) = browser_binding(g.port, &h);
    for cookie in [
        format!("aalgate={fresh}; aalgate-bind={other}"),
        format!("aalgate={fresh}"),
    ] {
        let r = get(g.port, &h, "/quick", &[&format!("Cookie: {cookie}")]);
        assert_eq!(r.status, 302, "another browser spent the grant");
    }
    let r = get(g.port, &h, "/quick", &[&format!("Cookie: {jar}")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(g.port, &h, "/quick", &[&format!("Cookie: {jar}")]);
    assert_eq!(r.status, 302, "only once");
    assert_eq!(up.seen().len(), 1);
}

/// Writes a request head and a `body`-byte body, then reads the answer's status; the gateway
/// may answer (and close) before the body is through.
fn post_big(port: u16, host: &str, path: &str, extra: &str, body: usize) -> u16 {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {body}\r\n{extra}Connection: close\r\n\r\n"
    );
    aalgate_tests::post_head_and_body(port, &head, body, Duration::from_secs(10))
}

#[test]
fn anonymous_clients_keep_nothing_and_are_rate_limited() {
    let up = Upstream::start();
    let extra = "flows_per_client_per_minute: 20\n";
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        extra,
    );
    let h = host(&g);
    // An anonymous 1 MiB POST is not kept at all.
    let own = format!("Origin: http://{h}\r\n");
    assert_eq!(post_big(g.port, &h, "/orders", &own, 1 << 20), 302);
    assert!(rt().block_on(store(&g).kv_list("kept")).unwrap().is_empty());
    assert_eq!(kept_count(&g, "anonymous"), 1.0);
    // A kept URL is bounded.
    let long = format!("/x?q={}", "a".repeat(9000));
    assert_eq!(get(g.port, &h, &long, &[]).status, 414);
    // Flows per client address: a clear 429 page over the limit.
    let mut limited = None;
    for i in 0..40 {
        let r = get(g.port, &h, &format!("/p{i}"), &[]);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 302);
    }
    let r = limited.expect("the flow rate limit answers 429");
    assert!(
        r.text().contains("Too many sign-in attempts"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some());
    // X-Forwarded-For from an untrusted peer is ignored.
    assert_eq!(
        get(g.port, &h, "/y", &["X-Forwarded-For: 10.9.9.9"]).status,
        429
    );
    // The switch-user flow and the ceremony start store state too: the same budget.
    assert_eq!(get(g.port, &h, "/.aalgate/switch", &[]).status, 429);
    let (b, token) = browser_binding(g.port, &h);
    let start = post(
        g.port,
        &h,
        "/.aalgate/webauthn/start",
        &[
            &format!("Origin: http://{h}"),
            &format!("Cookie: aalgate-bind={b}"),
            &format!("X-Aalgate-Csrf: {token}"),
            "Accept: application/json",
        ],
        r#"{"purpose":"signin","flow":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
    );
    assert_eq!(start.status, 429, "{}", start.text());
    // Quotas: per person (2 MB) and for the whole store (3 MB).
    let extra =
        "flows_per_client_per_minute: 0\npreserve_quota: 3000000\npreserve_person_quota: 2000000\n";
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        extra,
    );
    let h = host(&g);
    let own = format!("Origin: http://{h}\r\n");
    let mut statuses = Vec::new();
    for user in ["u1", "u1", "u1", "u2", "u3", "u4"] {
        let stale = make_session(&store(&g), &h, user, Aal::Aal2, 600, 0);
        let (b, _) = browser_binding(g.port, &h);
        let extra = format!("{own}Cookie: aalgate={stale}; aalgate-bind={b}\r\n");
        statuses.push(post_big(g.port, &h, "/confirm", &extra, 900_000));
    }
    assert!(statuses.iter().all(|s| *s == 302), "{statuses:?}");
    let kept = rt().block_on(store(&g).kv_list("kept")).unwrap();
    let bytes: usize = kept.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(
        kept_count(&g, "kept"),
        3.0,
        "u1 twice (person quota), u2, then the store quota"
    );
    assert!(kept_count(&g, "quota") >= 3.0);
    assert!(bytes <= 3_000_000, "{bytes}");
    assert!(up.seen().is_empty());
}

#[test]
fn trusted_proxies_give_each_client_its_own_limit() {
    let up = Upstream::start();
    let extra = "flows_per_client_per_minute: 5\ntrusted_proxies: [127.0.0.1/32]\n";
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        extra,
    );
    let h = host(&g);
    for i in 0..20 {
        let xff = format!("X-Forwarded-For: 203.0.113.{i}");
        assert_eq!(get(g.port, &h, "/x", &[&xff]).status, 302, "client {i}");
    }
    // One client behind the proxy is still limited; IPv6 by /64.
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            get(
                g.port,
                &h,
                "/x",
                &[&format!("X-Forwarded-For: 2001:db8::{i}")],
            )
            .status
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Anonymous clients from many addresses (each under its own rate limit) cannot fill the store
/// with sign-in flows and ceremony states: a store-wide byte quota (`anonymous_state_quota`)
/// refuses new anonymous ones with a clear 503 page, while a signed-in person's step-up still
/// starts. IPv6 clients also share a budget per /48, however many /64s they spread over.
#[test]
fn anonymous_flows_from_many_addresses_stay_within_a_store_wide_quota() {
    let up = Upstream::start();
    let extra = "flows_per_client_per_minute: 5\ntrusted_proxies: [127.0.0.1/32]\nanonymous_state_quota: 200000\n";
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        extra,
    );
    let h = host(&g);
    // 300 clients, each well within its own rate, each leaving a 4 KiB URL in a flow.
    let long = format!("/reports?q={}", "a".repeat(4096));
    let mut started = 0usize;
    let mut refused = None;
    for i in 0..300u32 {
        let xff = format!("X-Forwarded-For: 198.18.{}.{}", i / 250, i % 250 + 1);
        let r = get(g.port, &h, &long, &[&xff]);
        match r.status {
            302 => started += 1,
            503 => refused = Some(r),
            s => panic!("client {i}: {s} {}", r.text()),
        }
    }
    assert!(
        started * 4096 <= 200_000,
        "{started} flows of 4 KiB were stored under a 200 KB quota"
    );
    assert!(
        started >= 20,
        "the quota admits flows until it is used up ({started})"
    );
    let r = refused.expect("over the quota, new anonymous flows are refused");
    assert!(r.text().contains("Too many sign-ins"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        sample(&g.scrape(), "aalgate_flow_refusals_total{reason=\"quota\"}").unwrap_or(0.0) >= 1.0,
        "{}",
        g.scrape()
    );
    // A signed-in person due for a step-up is not anonymous: the flow still starts.
    let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
    let r = get(
        g.port,
        &h,
        "/confirm",
        &[
            "X-Forwarded-For: 198.19.0.1",
            &format!("Cookie: aalgate={stale}"),
        ],
    );
    assert_eq!(r.status, 302, "{}", r.text());
    // IPv6: 64 different /64s of one /48 share one budget (10 times a client's).
    let statuses: Vec<u16> = (0..64)
        .map(|i| {
            get(
                g.port,
                &h,
                "/confirm",
                &[
                    &format!("X-Forwarded-For: 2001:db8:7:{i:x}::1"),
                    &format!("Cookie: aalgate={stale}"),
                ],
            )
            .status
        })
        .collect();
    let ok = statuses.iter().filter(|s| **s == 302).count();
    assert_eq!(ok, 50, "one /48: 10 x 5 flows, then 429: {statuses:?}");
    assert!(up.seen().is_empty());
    assert!(!g.log().contains("panicked"));
}

/// One address alone (or one IPv6 /48) cannot use up the store-wide anonymous quota: each
/// client holds at most its share (1/16, at least 64 KiB), so another client's sign-in still
/// starts while it floods. The refusal says honestly when to retry.
#[test]
fn one_address_flooding_cannot_refuse_another_clients_sign_in() {
    let up = Upstream::start();
    let extra = "trusted_proxies: [127.0.0.1/32]\nanonymous_state_quota: 200000\n";
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        extra,
    );
    let h = host(&g);
    let long = format!("/reports?q={}", "a".repeat(4096));
    for (flooder, other) in [
        ("203.0.113.7", "198.51.100.20"),
        ("2001:db8:aa::1", "2001:db8:bb::1"),
    ] {
        let mut statuses = Vec::new();
        for i in 0..30u32 {
            // An IPv6 flooder spreads over the /64s of its /48.
            let from = if flooder.contains(':') {
                format!("2001:db8:aa:{i:x}::1")
            } else {
                flooder.to_string()
            };
            statuses.push(get(g.port, &h, &long, &[&format!("X-Forwarded-For: {from}")]).status);
        }
        let stored = statuses.iter().filter(|s| **s == 302).count();
        assert!(
            stored * 4096 <= 64 * 1024 + 8192,
            "{flooder}: one client stored {stored} flows of 4 KiB: {statuses:?}"
        );
        assert!(statuses.contains(&503), "{flooder}: {statuses:?}");
        let r = get(
            g.port,
            &h,
            "/reports",
            &[&format!("X-Forwarded-For: {other}")],
        );
        assert_eq!(
            r.status,
            302,
            "{other} while {flooder} floods: {}",
            r.text()
        );
    }
    let r = get(g.port, &h, &long, &["X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(r.status, 503);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=120).contains(&retry), "retry-after {retry}");
    assert!(r.text().contains("two minutes"), "{}", r.text());
    assert!(
        sample(
            &g.scrape(),
            "aalgate_flow_refusals_total{reason=\"client_quota\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{}",
        g.scrape()
    );
    assert!(up.seen().is_empty());
    assert!(!g.log().contains("panicked"));
}

#[test]
fn a_kept_record_in_redis_is_about_the_size_of_its_body() {
    let redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(
        Some(&redis.url()),
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
    );
    let h = host(&g);
    // A Redis connection belongs to the runtime that made it: one store per runtime.
    let s = || RedisStore::new(&redis.url(), Duration::from_secs(1)).unwrap();
    let stale = make_session(&s(), &h, "nora", Aal::Aal2, 600, 0);
    let (b, _) = browser_binding(g.port, &h);
    let extra = format!("Origin: http://{h}\r\nCookie: aalgate={stale}; aalgate-bind={b}\r\n");
    // A 1 MB form (Redis's allocator rounds a value just over 1 MiB up to 1.25 MiB).
    assert_eq!(post_big(g.port, &h, "/confirm", &extra, 1_000_000), 302);
    let kept = rt().block_on(s().kv_list("kept")).unwrap();
    assert_eq!(kept.len(), 1, "one kept record");
    let usage: u64 = redis
        .command(&format!("MEMORY USAGE aalgate:k:kept:{}", kept[0].0))
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        usage <= 1_100_000,
        "MEMORY USAGE of a 1 MB kept form: {usage}"
    );
}

/// The audit lines of a kept form say what happened to it: the request that was kept names
/// the person whose session it interrupted (with their level), and the line of its replay
/// has the method and path the upstream saw, linked to the kept request's id.
#[test]
fn a_resumed_form_is_audited_as_what_was_sent_by_whom() {
    let up = Upstream::start();
    let g = Gateway::start_extra(
        &[(
            "billing.yaml",
            &kept_policy("billing", "localhost", up.port),
        )],
        "audit:\n  output: file:audit/audit.jsonl\n",
    );
    let h = host(&g);
    let own = format!("http://{h}");
    let stale = make_session(&store(&g), &h, "nora", Aal::Aal2, 600, 0);
    let (b, _) = browser_binding(g.port, &h);
    let r = post(
        g.port,
        &h,
        "/confirm",
        &[
            &format!("Origin: {own}"),
            &format!("Cookie: aalgate={stale}; aalgate-bind={b}"),
        ],
        "note=chest+pain",
    );
    assert_eq!(r.status, 302);
    let fresh = make_session(&store(&g), &h, "nora", Aal::Aal2, 0, 0);
    let jar = format!("aalgate={fresh}; aalgate-bind={b}");
    let (page, _, _) = follow(g.port, h.clone(), r, &jar);
    let sent = confirm(g.port, &h, &page, &jar, &own);
    assert_eq!(sent.status, 200, "{}", sent.text());
    let seen = posts(&up);
    assert_eq!(seen.len(), 1, "{seen:?}");

    let path = g.dir.path().join("audit/audit.jsonl");
    let lines: Vec<serde_json::Value> =
        aalgate_tests::eventually(Duration::from_secs(5), "the replay's audit line", || {
            let t = std::fs::read_to_string(&path).unwrap_or_default();
            t.contains("\"decision\":\"resumed\"").then(|| {
                t.lines()
                    .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                    .collect()
            })
        });
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "request").collect();
    let kept = requests
        .iter()
        .find(|l| l["method"] == "POST" && l["path"] == "/confirm" && l["decision"] != "resumed")
        .unwrap_or_else(|| panic!("the kept request's line: {requests:#?}"));
    assert_eq!(kept["user"], "nora", "{kept}");
    assert_eq!(kept["aal"], 2, "{kept}");
    let replay = requests
        .iter()
        .find(|l| l["decision"] == "resumed")
        .expect("the replay's line");
    assert_eq!(
        (&replay["method"], &replay["path"]),
        (
            &serde_json::json!(seen[0].method),
            &serde_json::json!(seen[0].target)
        ),
        "{replay}"
    );
    assert_eq!(replay["user"], "nora", "{replay}");
    assert_eq!(replay["replay_of"], kept["request_id"], "{replay}");
}
