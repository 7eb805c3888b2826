//! Sign-in through a real OpenID Connect provider (npm `oidc-provider`,
//! tests/browser/oidc-provider.mjs): Chromium end to end, and the back-channel logout endpoint
//! against tokens the provider signed.

use aalgate_tests::{free_port, get, oidc_config, send, Gateway, OidcProvider, Redis};

use crate::browser::{root, scenario, DemoApp};

/// The EHR for these tests: `clinical` may use it at aal2; `/orders` needs aal3; `/notes` a
/// confirmation within 2 s; a form POSTed to `/invoices` after 3 s idle is kept; `/sign`
/// takes the person's key signing each request; `/chart/**` opens to break-glass.
fn ehr(upstream: u16) -> String {
    format!(
        "app: ehr\ndisplay_name: Legacy EHR\nallow: {{ groups: [clinical] }}\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\nroutes:\n  - path: /orders\n    require: aal3\n  - path: /notes\n    require: aal2\n    step_up: {{ max_age: 2s }}\n  - path: /invoices\n    methods: [POST]\n    require: aal2\n    idle_timeout: 3s\n  - path: /sign\n    require: aal2\n    step_up: {{ per_request: true }}\n  - path: /chart/**\n    require: aal2\n    breakglass: allow\n"
    )
}

/// A gateway with the provider `mercy` (MFA at the provider maps to aal2), and the provider
/// itself (started second: it needs the gateway's port for its redirect URI; the gateway reads
/// the provider's discovery document only at the first sign-in). The directory holds the
/// client secret.
fn start(upstream: u16, more: &str) -> (Gateway, OidcProvider, tempfile::TempDir) {
    start_on(None, upstream, more)
}

/// As [`start`], on `store` (`None`: the embedded store).
fn start_on(
    store: Option<&str>,
    upstream: u16,
    more: &str,
) -> (Gateway, OidcProvider, tempfile::TempDir) {
    let op_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "rp_id: localhost\n{}",
        oidc_config(
            op_port,
            dir.path(),
            &format!(
                "    aal: {{ default: aal1, rules: [{{ amr_any: [mfa], aal: aal2 }}] }}\n{more}"
            )
        )
    );
    let policies = [("ehr.yaml", ehr(upstream))];
    let policies = [(policies[0].0, policies[0].1.as_str())];
    let gw = match store {
        Some(s) => Gateway::start_with_store_extra(s, &policies, &extra),
        None => Gateway::start_extra(&policies, &extra),
    };
    let op = OidcProvider::start(op_port, gw.port);
    (gw, op, dir)
}

/// SSO sign-in, the AAL mapping with aalgate's passkey on top, replayed and made-up callbacks,
/// an AAL3 route, back-channel logout of an open tab, silent sign-in and switch user on a
/// shared workstation, an unknown person and a just-in-time account
/// (tests/browser/sso.mjs; screenshots in target/browser-screenshots/sso).
#[test]
fn sso_sign_in_with_passkey_step_up_and_back_channel_logout_in_chromium() {
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let (gw, op, _dir) = start(
        upstream,
        "    silent_login: true\n    end_provider_session: true\n    jit: { groups_any: [new-staff] }\n",
    );
    run("sso", &gw, &op);
}

/// Runs `tests/browser/<name>.mjs` against `gw` and `op` (screenshots in
/// `target/browser-screenshots/<name>`), and fails with the gateway's log.
fn run(name: &str, gw: &Gateway, op: &OidcProvider) {
    let out = root().join("target/browser-screenshots").join(name);
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario(&format!("{name}.mjs"), gw, &out)
        .env("OP", format!("http://127.0.0.1:{}", op.port))
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "{name} scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    assert!(!gw.log().contains("panicked"));
}

fn backchannel(gw: &Gateway, idp: &str, body: &str) -> aalgate_tests::Response {
    send(
        gw.port,
        format!(
            "POST /.aalgate/oidc/backchannel-logout?idp={idp} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            gw.port,
            body.len()
        )
        .as_bytes(),
    )
}

/// A logout token the provider signed is taken once; a replay, a tampered copy, a token for
/// another provider id, an ID-token-shaped or unsigned one are refused, and the endpoint is
/// only on the auth origin.
#[test]
fn back_channel_logout_tokens_are_verified_and_used_once() {
    let upstream = free_port();
    let (gw, op, _dir) = start(upstream, "");
    let token = op.logout_token("alice");
    let ok = backchannel(&gw, "mercy", &format!("logout_token={token}"));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let replay = backchannel(&gw, "mercy", &format!("logout_token={token}"));
    assert_eq!(
        replay.status,
        400,
        "a replayed logout token: {}",
        replay.text()
    );
    // The claims of a fresh token swapped for others: the signature no longer verifies.
    let fresh = op.logout_token("alice");
    let parts: Vec<&str> = fresh.split('.').collect();
    let other = op.logout_token("bob");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(
        backchannel(&gw, "mercy", &format!("logout_token={tampered}")).status,
        400
    );
    // alg none with the provider's claims.
    let none = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
    assert_eq!(
        backchannel(&gw, "mercy", &format!("logout_token={none}")).status,
        400
    );
    assert_eq!(
        backchannel(&gw, "mercy", "logout_token=garbage").status,
        400
    );
    assert_eq!(backchannel(&gw, "mercy", "nothing=here").status, 400);
    assert_eq!(
        backchannel(&gw, "other", &format!("logout_token={fresh}")).status,
        400
    );
    // The untouched fresh token still works: refusals spent nothing.
    assert_eq!(
        backchannel(&gw, "mercy", &format!("logout_token={fresh}")).status,
        200
    );
    // Only on the auth origin.
    let on_app = send(
        gw.port,
        format!(
            "POST /.aalgate/oidc/backchannel-logout?idp=mercy HTTP/1.1\r\nHost: ehr.localhost:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            gw.port
        )
        .as_bytes(),
    );
    assert_eq!(on_app.status, 404);
    assert!(!gw.log().contains("panicked"));
}

fn redis_int(redis: &Redis, cmd: &str) -> u64 {
    let r = redis.command(cmd);
    r.trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{cmd}: {r}"))
}

/// Anonymous clients cannot grow the store through provider sign-ins: a flow holds one
/// pending provider login however often it is started (a real Redis, counted by key), and
/// callbacks with made-up states store nothing and take nothing from the real sign-in.
#[test]
fn provider_sign_ins_store_one_record_per_flow_under_a_flood() {
    let redis = Redis::start();
    let upstream = free_port();
    let (gw, op, _dir) = start_on(Some(&redis.url()), upstream, "");
    let app = format!("ehr.localhost:{}", gw.port);
    let auth = format!("localhost:{}", gw.port);
    let r = get(gw.port, &app, "/", &[]);
    assert_eq!(r.status, 302, "{}", r.text());
    let to = r.header("location").expect("location").to_string();
    let flow = to.split("flow=").nth(1).expect("flow").to_string();
    let pending = "EVAL \"return #redis.call('KEYS', ARGV[1])\" 0 aalgate:k:oidc:*";
    for i in 0..200 {
        let r = get(
            gw.port,
            &auth,
            &format!("/.aalgate/oidc/start?flow={flow}&idp=mercy"),
            &[],
        );
        assert_eq!(r.status, 302, "start {i}: {}", r.text());
        assert!(
            r.header("location")
                .is_some_and(|l| l.starts_with(&format!("http://127.0.0.1:{}/auth?", op.port))),
            "start {i} goes to the provider"
        );
    }
    assert_eq!(
        redis_int(&redis, pending),
        1,
        "one pending provider login for the flow"
    );
    let keys = redis_int(&redis, "DBSIZE");
    // (Past 20 of them, each answer is slowed like a failed sign-in, up to 2 s.)
    for i in 0..25 {
        let r = get(
            gw.port,
            &auth,
            &format!("/.aalgate/oidc/callback?state={flow}.made-up-{i}&code=x"),
            &[],
        );
        assert!(matches!(r.status, 400 | 410), "callback {i}: {}", r.status);
    }
    assert!(
        redis_int(&redis, "DBSIZE") <= keys,
        "made-up callbacks stored nothing"
    );
    assert_eq!(
        redis_int(&redis, pending),
        1,
        "made-up callbacks took nothing from the pending sign-in"
    );
    assert!(!gw.log().contains("panicked"));
}

/// `private_key_jwt`: the gateway authenticates at the token endpoint with its own P-256 key
/// (no shared secret), and a person signs in through the provider in Chromium; with
/// `enroll_after_sso`, her first step-up offers a passkey, which then confirms the next one
/// (tests/browser/sso-key.mjs).
#[test]
fn sso_with_a_private_key_jwt_client_in_chromium() {
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("client-key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl");
    assert!(ok.success());
    let op_port = free_port();
    let extra = format!(
        "rp_id: localhost\nidentity_providers:\n  - id: mercy\n    display_name: Mercy Health SSO\n    issuer: http://127.0.0.1:{op_port}\n    client_id: aalgate\n    private_key_jwt: {{ key_file: {}, kid: aalgate-1 }}\n    aal: {{ rules: [{{ amr_any: [mfa], aal: aal2 }}] }}\n    enroll_after_sso: true\n",
        key.display()
    );
    // Sessions end 40 s after they begin: a passkey added after SSO continues the provider
    // session, and never starts the clock again.
    let policies = [(
        "ehr.yaml",
        format!(
            "{}timeouts:\n  aal2: {{ max_session_age: 40s, idle_timeout: 40s }}\n",
            ehr(upstream)
        ),
    )];
    let gw = Gateway::start_extra(&[(policies[0].0, policies[0].1.as_str())], &extra);
    let op = OidcProvider::start_with(op_port, gw.port, Some(&key));
    run("sso-key", &gw, &op);
}
