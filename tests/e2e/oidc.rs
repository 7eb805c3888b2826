//! Sign-in through a real OpenID Connect provider (npm `oidc-provider`,
//! tests/browser/oidc-provider.mjs): Chromium end to end, and the back-channel logout endpoint
//! against tokens the provider signed.

use aalgate_tests::{free_port, oidc_config, send, Gateway, OidcProvider};

use crate::browser::{root, scenario, DemoApp};

/// The EHR for these tests: `clinical` may use it at aal2; `/orders` needs aal3.
fn ehr(upstream: u16) -> String {
    format!(
        "app: ehr\ndisplay_name: Legacy EHR\nallow: {{ groups: [clinical] }}\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\nroutes:\n  - path: /orders\n    require: aal3\n"
    )
}

/// A gateway with the provider `mercy` (MFA at the provider maps to aal2), and the provider
/// itself (started second: it needs the gateway's port for its redirect URI; the gateway reads
/// the provider's discovery document only at the first sign-in). The directory holds the
/// client secret.
fn start(upstream: u16, more: &str) -> (Gateway, OidcProvider, tempfile::TempDir) {
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
    let gw = Gateway::start_extra(&[("ehr.yaml", &ehr(upstream))], &extra);
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
    let out = root().join("target/browser-screenshots/sso");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("sso.mjs", &gw, &out)
        .env("OP", format!("http://127.0.0.1:{}", op.port))
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "SSO scenario failed ({status}); screenshots in {}; gateway log:\n{}",
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
