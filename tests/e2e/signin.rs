//! The sign-in endpoints without a browser: CSRF refusals, one-time handoff codes, invites,
//! and the `aalgate users` CLI beside a running gateway, with both stores.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aalgate_auth::{Directory, User};
use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{EmbeddedStore, RedisStore, SessionStore};
use aalgate_tests::{aalgate_bin, eventually, get, send, Gateway, Redis, Upstream};

use crate::{make_session, policy, rt};

fn host(g: &Gateway) -> String {
    format!("localhost:{}", g.port)
}

/// The CLI's revocations reach the gateway through its 1 s session cache: every cookie is
/// signed out within that (plus a margin), measured from the CLI's return.
fn signed_out_within_a_second(g: &Gateway, h: &str, cookies: &[&String]) {
    let t0 = std::time::Instant::now();
    for c in cookies {
        loop {
            let s = get(g.port, h, "/x", &[&format!("Cookie: aalgate={c}")]).status;
            if s == 302 {
                break;
            }
            assert_eq!(s, 200, "a revoked session's request");
            assert!(
                t0.elapsed() < Duration::from_millis(1500),
                "still signed in {:?} after the CLI revoked it",
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn users(g: &Gateway, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(aalgate_bin())
        .arg("users")
        .arg("--config")
        .arg(g.dir.path().join("aalgate.yaml"))
        .args(args)
        .output()
        .expect("run aalgate users");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn post(port: u16, host: &str, path: &str, headers: &str, body: &str) -> aalgate_tests::Response {
    send(
        port,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn ceremony_endpoints_refuse_cross_site_and_tokenless_posts() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = host(&g);
    // A real page gives the binding cookie and its token.
    let page = get(g.port, &h, "/.aalgate/logout", &[]);
    let bind = page
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("aalgate-bind="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    assert!(page
        .all("set-cookie")
        .iter()
        .any(|c| c.contains("SameSite=Lax") && c.contains("HttpOnly")));
    let text = page.text();
    let token = text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let body = r#"{"purpose":"signin","flow":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
    for path in ["/.aalgate/webauthn/start", "/.aalgate/webauthn/finish"] {
        for (what, headers) in [
            ("foreign origin", format!("Origin: http://evil.example\r\nCookie: {bind}\r\nX-Aalgate-Csrf: {token}\r\n")),
            ("cross-site fetch", format!("Origin: http://{h}\r\nSec-Fetch-Site: cross-site\r\nCookie: {bind}\r\nX-Aalgate-Csrf: {token}\r\n")),
            ("no token", format!("Origin: http://{h}\r\nCookie: {bind}\r\n")),
            ("wrong token", format!("Origin: http://{h}\r\nCookie: {bind}\r\nX-Aalgate-Csrf: 0123456789abcdef0123456789abcdef\r\n")),
            ("no binding cookie", format!("Origin: http://{h}\r\nX-Aalgate-Csrf: {token}\r\n")),
            ("no origin at all", format!("Cookie: {bind}\r\nX-Aalgate-Csrf: {token}\r\n")),
        ] {
            let r = post(g.port, &h, path, &headers, body);
            assert_eq!(r.status, 403, "{path} {what}: {}", r.text());
            assert_eq!(r.json()["error"], "csrf", "{path} {what}");
        }
    }
    // With both, the request reaches the ceremony logic (here: an unknown flow).
    let ok = format!("Origin: http://{h}\r\nCookie: {bind}\r\nX-Aalgate-Csrf: {token}\r\n");
    let r = post(g.port, &h, "/.aalgate/webauthn/start", &ok, body);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (410, Some("flow_expired")),
        "{}",
        r.text()
    );
    // Malformed and oversized bodies: precise refusals, never a panic.
    let r = post(
        g.port,
        &h,
        "/.aalgate/webauthn/start",
        &ok,
        "{\"purpose\":1}",
    );
    assert_eq!(r.status, 400);
    let r = post(
        g.port,
        &h,
        "/.aalgate/webauthn/finish",
        &ok,
        r#"{"ceremony":"nope","response":{}}"#,
    );
    assert_eq!(r.status, 400);
    let unknown = r#"{"ceremony":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","response":{}}"#;
    let r = post(g.port, &h, "/.aalgate/webauthn/finish", &ok, unknown);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("ceremony_expired"))
    );
    let big = format!("{{\"purpose\":\"{}\"}}", "x".repeat(70_000));
    let r = post(g.port, &h, "/.aalgate/webauthn/start", &ok, &big);
    assert_eq!(r.status, 413);
    // GET is not a ceremony.
    assert_eq!(get(g.port, &h, "/.aalgate/webauthn/start", &[]).status, 405);
    assert!(!g.log().contains("panicked"));
}

#[test]
fn handoff_codes_and_invites_work_once_and_reveal_nothing() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = host(&g);
    for target in [
        "/.aalgate/handoff?code=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/.aalgate/handoff?code=x",
        "/.aalgate/handoff",
    ] {
        let r = get(g.port, &h, target, &[]);
        assert_eq!(r.status, 400, "{target}");
        assert!(r.header("set-cookie").is_none(), "{target}");
    }
    // An invite: the page names the person and nothing else; used once it is gone.
    let (ok, url, err) = users(
        &g,
        &[
            "invite",
            "dana",
            "--display-name",
            "Dana D.",
            "--ttl",
            "10m",
        ],
    );
    assert!(ok, "{err}");
    let url = url.trim();
    assert!(
        url.starts_with(&format!(
            "http://localhost:{}/.aalgate/enroll?invite=",
            g.port
        )),
        "{url}"
    );
    assert!(
        err.contains("dana") && err.contains("AAL2") && err.contains("valid 10 minutes."),
        "{err}"
    );
    let path = &url[url.find("/.aalgate").unwrap()..];
    let page = get(g.port, &h, path, &[]);
    assert!(
        page.text().contains("Welcome, Dana D. Set up") && page.text().contains("Create a passkey"),
        "{}",
        page.text()
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    // No hardware key is approved on this gateway: the page speaks of passkeys only.
    assert!(!page.text().contains("hardware"), "{}", page.text());
    let bogus = get(
        g.port,
        &h,
        "/.aalgate/enroll?invite=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &[],
    );
    assert!(bogus.text().contains("not valid"));
    // Error pages answer their real status, so monitoring and tests see them: an invite or a
    // sign-in link that is not valid (any more) is gone, one that is missing a bad request,
    // and so is a kept form that was sent already or never existed.
    assert_eq!(bogus.status, 410, "{}", bogus.text());
    let statuses: Vec<(&str, u16)> = [
        "/.aalgate/enroll",
        "/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/.aalgate/auth",
        "/.aalgate/resume?kept=x",
    ]
    .into_iter()
    .map(|p| (p, get(g.port, &h, p, &[]).status))
    .collect();
    assert_eq!(
        statuses,
        [
            ("/.aalgate/enroll", 400),
            (
                "/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                410
            ),
            ("/.aalgate/auth", 400),
            ("/.aalgate/resume?kept=x", 410),
        ]
    );
    // The store holds only the token's hash.
    let token = &url[url.find("invite=").unwrap() + 7..];
    drop(page);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let invites = rt().block_on(store.kv_list("invite")).unwrap();
    assert_eq!(invites.len(), 1);
    assert!(
        !invites[0].0.contains(token) && !String::from_utf8_lossy(&invites[0].1).contains(token)
    );
    // AAL1 and bad names are refused by the CLI.
    assert!(!users(&g, &["invite", "x", "--aal", "1"]).0);
    assert!(!users(&g, &["invite", "bad name"]).0);
}

/// `store` opens a fresh handle (a Redis connection belongs to the runtime that made it).
fn disable_beside_a_running_gateway(
    store: impl Fn() -> Arc<dyn SessionStore>,
    g: &Gateway,
    up: &Upstream,
) {
    let h = host(g);
    let dir = Directory::new(store());
    let now = Timestamp::wall();
    let user = User {
        id: "ivan".into(),
        display_name: "Ivan".into(),
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal2,
        created: now,
        last_login: None,
        disabled_by: None,
        credentials: vec![],
    };
    rt().block_on(dir.put_user(&user)).unwrap();
    let a = make_session(
        store().as_ref(),
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    let b = make_session(
        store().as_ref(),
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    for c in [&a, &b] {
        assert_eq!(
            get(g.port, &h, "/x", &[&format!("Cookie: aalgate={c}")]).status,
            200
        );
    }
    let (ok, out, err) = users(g, &["list"]);
    assert!(
        ok && out.contains("ivan\tIvan\tstatus=active\tmax_aal=none"),
        "{out}{err}"
    );
    // Recovery: `reset` ends every session and prints a new invite at the proofed level.
    let c = make_session(
        store().as_ref(),
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    let (ok, out, err) = users(g, &["reset", "ivan", "--ttl", "1h"]);
    assert!(
        ok && out.contains("/.aalgate/enroll?invite=")
            && err.contains("3 session(s) ended")
            && err.contains("AAL2"),
        "{out}{err}"
    );
    signed_out_within_a_second(g, &h, &[&a, &b, &c]);
    let a = make_session(
        store().as_ref(),
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    let b = make_session(
        store().as_ref(),
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    let (ok, out, err) = users(g, &["disable", "ivan"]);
    assert!(ok && out.contains("2 session(s) ended"), "{out}{err}");
    signed_out_within_a_second(g, &h, &[&a, &b]);
    let (_, out, _) = users(g, &["list"]);
    assert!(out.contains("status=disabled"), "{out}");
    // Refused for the reason each names, not for any failure.
    for (args, why) in [
        (&["disable", "nobody"][..], "nobody"),
        (&["revoke-credential", "ivan", "nope"][..], "nope"),
        // A disabled user cannot be invited.
        (&["invite", "ivan"][..], "disabled"),
    ] {
        let (ok, out, err) = users(g, args);
        assert!(!ok && err.contains(why), "{args:?}: {out}{err}");
    }
    let seen = up.seen().len();
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={a}")]).status,
        302
    );
    assert_eq!(
        up.seen().len(),
        seen,
        "nothing forwarded after the revocation"
    );
}

#[test]
fn users_cli_beside_a_running_gateway_embedded() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let dir = g.state_dir();
    disable_beside_a_running_gateway(|| Arc::new(EmbeddedStore::open(&dir).unwrap()), &g, &up);
}

#[test]
fn users_cli_beside_a_running_gateway_redis() {
    let redis = Redis::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&redis.url()), &[("billing.yaml", &policy(up.port))]);
    let url = redis.url();
    disable_beside_a_running_gateway(
        || Arc::new(RedisStore::new(&url, Duration::from_secs(1)).unwrap()),
        &g,
        &up,
    );
}

/// Request data cannot write a line of its own into the gateway's log: a ceremony body whose
/// unknown field name (echoed in the parser's error) holds a newline and a fake log line stays
/// on the line that logs it, escaped, in both log formats.
#[test]
fn request_data_cannot_forge_log_lines() {
    let up = Upstream::start();
    for format in ["text", "json"] {
        let g = Gateway::start_extra(
            &[("billing.yaml", &policy(up.port))],
            &format!("log_format: {format}\n"),
        );
        let h = host(&g);
        let (bind, token) = aalgate_tests::browser_binding(g.port, &h);
        let forged = "2026-01-01T00:00:00.000000Z  WARN aalgate: FORGED session store error";
        for body in [
            format!(r#"{{"purpose":"signin","x\n{forged}":1}}"#).replace('\n', "\\n"),
            format!(r#"{{"purpose":"signin","x\r{forged}\u001b[2K":1}}"#)
                .replace('\r', "\\r")
                .replace('\u{1b}', "\\u001b"),
        ] {
            let r = post(
                g.port,
                &h,
                "/.aalgate/webauthn/start",
                &format!("Origin: http://{h}\r\nCookie: aalgate-bind={bind}\r\nX-Aalgate-Csrf: {token}\r\n"),
                &body,
            );
            assert_eq!(r.status, 400, "{format}: {}", r.text());
        }
        let log = eventually(Duration::from_secs(5), "the refusal is logged", || {
            let log = g.log();
            (log.matches("FORGED").count() >= 2).then_some(log)
        });
        for line in log.lines() {
            if line.contains("FORGED") {
                assert!(
                    line.contains("malformed ceremony request"),
                    "{format}: request data began a log line of its own: {line:?}"
                );
            }
            assert!(
                !line.contains('\r') && !line.contains('\u{1b}'),
                "{format}: {line:?}"
            );
        }
    }
}

/// What username-first options show of one credential: its id and its transports.
type Allowed = (String, Option<Vec<String>>);

/// Username-first options for `name`: a flow, the page's binding and token, then `start` with
/// the name. The credentials the options allow.
fn allowed(g: &Gateway, name: &str) -> Vec<Allowed> {
    let mut start = starter(g, "");
    let r = start(name);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .expect("allowCredentials")
        .iter()
        .map(|c| {
            let t = c["transports"].as_array().map(|t| {
                t.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            });
            (c["id"].as_str().unwrap_or_default().to_string(), t)
        })
        .collect()
}

/// A browser on the sign-in page (one flow, its binding and token; `extra` header lines sent
/// with every request): each call starts a username-first sign-in for a name.
fn starter<'a>(g: &'a Gateway, extra: &'a str) -> impl FnMut(&str) -> aalgate_tests::Response + 'a {
    let h = host(g);
    let with: Vec<&str> = extra.lines().filter(|l| !l.is_empty()).collect();
    let mut first = vec!["Sec-Fetch-Mode: navigate"];
    first.extend(&with);
    let r = get(g.port, &h, "/x", &first);
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = r.header("location").expect("location").to_string();
    let page = get(g.port, &h, &loc, &with);
    let bind = page
        .all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("aalgate-bind="))
        .and_then(|c| c.split(';').next())
        .expect("binding")
        .to_string();
    let attr = |name: &str| {
        page.text()
            .split(&format!("data-{name}=\""))
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap_or_else(|| panic!("data-{name}"))
            .to_string()
    };
    let (flow, csrf) = (attr("flow"), attr("csrf"));
    let headers = format!(
        "Origin: http://{h}\r\nCookie: aalgate-bind={bind}\r\nX-Aalgate-Csrf: {csrf}\r\n{}",
        with.iter().map(|l| format!("{l}\r\n")).collect::<String>()
    );
    move |name: &str| {
        let body =
            format!(r#"{{"purpose":"signin","flow":"{flow}","username":"{name}","switch":true}}"#);
        post(g.port, &h, "/.aalgate/webauthn/start", &headers, &body)
    }
}

/// The shape of allowed credentials: each id's length in bytes, and its transports.
fn shape(a: &[Allowed]) -> Vec<(usize, Option<Vec<String>>)> {
    use base64::Engine;
    a.iter()
        .map(|(id, t)| {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(id)
                .expect("base64url id")
                .len();
            (n, t.clone())
        })
        .collect()
}

/// A stored credential of an enrolled person, as webauthn-rs keeps it: an id of `id_len`
/// bytes, and the transports the browser reported at enrollment.
pub(crate) fn enrolled(id_len: usize, transports: &[&str]) -> aalgate_auth::Credential {
    use webauthn_rs::prelude::*;
    let id: Vec<u8> = (0..id_len).map(|_| rand_byte()).collect();
    let key = Credential {
        cred_id: id.clone(),
        cred: COSEKey {
            type_: COSEAlgorithm::ES256,
            key: COSEKeyType::EC_EC2(COSEEC2Key {
                curve: ECDSACurve::SECP256R1,
                x: vec![1u8; 32],
                y: vec![2u8; 32],
            }),
        },
        counter: 0,
        transports: Some(
            transports
                .iter()
                .map(|t| t.parse().expect("transport"))
                .collect(),
        ),
        user_verified: true,
        backup_eligible: false,
        backup_state: false,
        registration_policy: serde_json::from_value(serde_json::json!("required")).unwrap(),
        extensions: Default::default(),
        attestation: Default::default(),
        attestation_format: AttestationFormat::None,
    };
    use base64::Engine;
    aalgate_auth::Credential {
        id: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&id),
        kind: aalgate_auth::CredentialKind::Passkey,
        aaguid: None,
        aal: Aal::Aal2,
        backup_eligible: false,
        created: Timestamp::wall(),
        last_used: None,
        flagged: None,
        key: Passkey::from(key),
        after_provider: None,
    }
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

/// A made-up user name gets options of the same shape as a real person's (as many credentials,
/// ids as long, the same transports), the same from every instance sharing the store (and its
/// request key), as a real name gets the same credentials: neither a look at one answer nor two
/// instances tell them apart.
#[test]
fn decoys_look_like_real_peoples_options_on_every_instance() {
    let redis = Redis::start();
    let up = Upstream::start();
    // The one person enrolled: a platform passkey (16-byte id) and a security key (64-byte).
    let dir = Directory::new(Arc::new(
        RedisStore::new(&redis.url(), Duration::from_secs(2)).unwrap(),
    ));
    let user = User {
        id: "rhea".into(),
        display_name: "Rhea".into(),
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal2,
        created: Timestamp::wall(),
        last_login: None,
        disabled_by: None,
        credentials: vec![
            enrolled(16, &["internal", "hybrid"]),
            enrolled(64, &["usb", "nfc"]),
        ],
    };
    rt().block_on(dir.put_user(&user)).unwrap();
    // A record that cannot be read (a hand edit, a newer version's field) leaves the others.
    rt().block_on(
        RedisStore::new(&redis.url(), Duration::from_secs(2))
            .unwrap()
            .kv_put("user", "broken", b"{not json", None),
    )
    .unwrap();
    let shared = tempfile::tempdir().unwrap();
    let extra = format!(
        "request_key: {}\n",
        shared.path().join("request-key").display()
    );
    let a = Gateway::start_with_store_extra(
        &redis.url(),
        &[("billing.yaml", &policy(up.port))],
        &extra,
    );
    let b = Gateway::start_with_store_extra(
        &redis.url(),
        &[("billing.yaml", &policy(up.port))],
        &extra,
    );
    let real = allowed(&a, "rhea");
    assert_eq!(
        shape(&real),
        vec![
            (16, Some(vec!["internal".into(), "hybrid".into()])),
            (64, Some(vec!["usb".into(), "nfc".into()])),
        ]
    );
    for name in ["nobody-here", "somebody-else", "dr.who"] {
        let (on_a, on_b) = (allowed(&a, name), allowed(&b, name));
        assert_eq!(shape(&on_a), shape(&real), "{name}: the decoy's shape");
        assert_eq!(on_a, on_b, "{name}: the decoy differs between instances");
        assert_eq!(on_a, allowed(&a, name), "{name}: and over time");
        assert!(
            on_a.iter().all(|c| !real.contains(c)),
            "{name}: a real person's credential"
        );
    }
    assert_ne!(
        allowed(&a, "nobody-here"),
        allowed(&a, "somebody-else"),
        "each name its own"
    );
}

/// How many username-first starts fit in one address's share of the anonymous quota does not
/// tell a real name (whose stored ceremony holds the person's keys) from a made-up one.
#[test]
fn the_anonymous_quota_does_not_tell_real_names_from_made_up_ones() {
    let up = Upstream::start();
    let g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        "trusted_proxies: [127.0.0.1/32]\nanonymous_state_quota: 262144\n",
    );
    let dir = Directory::new(Arc::new(EmbeddedStore::open(&g.state_dir()).unwrap()));
    let user = User {
        id: "rhea".into(),
        display_name: "Rhea".into(),
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal2,
        created: Timestamp::wall(),
        last_login: None,
        disabled_by: None,
        credentials: (0..4).map(|_| enrolled(64, &["usb", "nfc"])).collect(),
    };
    rt().block_on(dir.put_user(&user)).unwrap();
    let mut counts = Vec::new();
    for (name, addr) in [("rhea", "10.9.0.1"), ("made-up-name", "10.9.0.2")] {
        let extra = format!("X-Forwarded-For: {addr}");
        let mut start = starter(&g, &extra);
        let mut n = 0;
        loop {
            let r = start(name);
            if r.status != 200 {
                assert_eq!(r.status, 503, "{}", r.text());
                assert!(r.text().contains("sign_in_busy"), "{}", r.text());
                break;
            }
            n += 1;
            assert!(n < 500, "{name}: the quota never filled");
        }
        counts.push(n);
    }
    assert!(counts[0] > 0, "{counts:?}");
    assert_eq!(counts[0], counts[1], "starts that fit: real, made-up");
}

/// The sign-in page knows its person. A step-up to a hardware-key route, for someone with no
/// hardware key registered, says so at once with what to do, and offers no tap that cannot
/// succeed. A paused session's page names its person ("Not Rhea R.?"), and a kept form's page
/// says the form is kept and sent after the touch.
#[test]
fn the_sign_in_page_knows_its_person() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let h = host(&g);
    let store = Arc::new(EmbeddedStore::open(&g.state_dir()).unwrap());
    let user = User {
        id: "rhea".into(),
        display_name: "Rhea R.".into(),
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal3,
        created: Timestamp::wall(),
        last_login: None,
        disabled_by: None,
        credentials: vec![enrolled(16, &["internal"])],
    };
    rt().block_on(Directory::new(store.clone()).put_user(&user))
        .unwrap();
    let page_for = |path: &str, cookie: &str, method: &str| {
        let r = if method == "GET" {
            get(
                g.port,
                &h,
                path,
                &[
                    &format!("Cookie: aalgate={cookie}"),
                    "Sec-Fetch-Mode: navigate",
                ],
            )
        } else {
            send(
                g.port,
                format!(
                    "POST {path} HTTP/1.1\r\nHost: {h}\r\nOrigin: http://{h}\r\nSec-Fetch-Mode: navigate\r\nCookie: aalgate={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\nConnection: close\r\n\r\namount=1"
                )
                .as_bytes(),
            )
        };
        assert_eq!(r.status, 302, "{}", r.text());
        get(g.port, &h, r.header("location").unwrap(), &[])
    };
    // An AAL3 route, and rhea has only a passkey: the proxy says so at once, with no flow and
    // no sign-in page in between (the admission knows what her keys reach).
    let fresh = make_session(store.as_ref(), &h, "rhea", Aal::Aal2, 0, 0);
    let page = get(
        g.port,
        &h,
        "/pay/now",
        &[
            &format!("Cookie: aalgate={fresh}"),
            "Sec-Fetch-Mode: navigate",
        ],
    );
    let t = page.text();
    assert_eq!(page.status, 409, "{t}");
    assert!(page.header("location").is_none());
    assert!(
        t.contains("none is") && t.contains("Ask IT") && !t.contains("data-action=\"signin\""),
        "{t}"
    );
    // A paused session (idle past its limit) with a form kept: the page names rhea.
    let idle = make_session(store.as_ref(), &h, "rhea", Aal::Aal2, 3600, 3600);
    let page = page_for("/confirm", &idle, "POST");
    let t = page.text();
    assert_eq!(page.status, 200, "{t}");
    assert!(t.contains("Not Rhea R.?"), "{t}");
    assert!(t.contains("is kept. Touch your key to send it."), "{t}");
    // An invite for someone enrolled already adds a key: it greets them by their name.
    let (ok, url, err) = users(&g, &["invite", "rhea"]);
    assert!(ok && err.contains("rhea is enrolled already"), "{err}");
    let url = url.trim();
    let page = get(g.port, &h, &url[url.find("/.aalgate").unwrap()..], &[]);
    let t = page.text();
    assert!(
        t.contains("<h1>Add a sign-in key</h1>") && t.contains("Welcome back, Rhea R. Register"),
        "{t}"
    );
}
