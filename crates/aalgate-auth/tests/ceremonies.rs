//! Real WebAuthn ceremonies against webauthn-rs with software authenticators
//! (webauthn-authenticator-rs: `SoftPasskey`, and `SoftToken` with its own attestation CA).

use std::sync::Arc;
use std::time::Duration;

use aalgate_auth::{
    AuthState, Ceremonies, CeremonyError, CredentialKind, Directory, HardwareKeys, RegKind,
    RegState, SignIn, User,
};
use aalgate_policy::{Aal, Timestamp};
use aalgate_session::EmbeddedStore;
use base64::Engine;
use der::Encode;
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

const ORIGIN: &str = "http://localhost:8080";

fn pem(der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        display_name: id.to_uppercase(),
        handle: Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal2,
        created: Timestamp::now(),
        last_login: None,
        credentials: vec![],
    }
}

fn origin() -> Url {
    Url::parse(ORIGIN).unwrap()
}

/// A token and the relying party that trusts its attestation CA and model.
fn token_and_rp() -> (SoftToken, Ceremonies) {
    let (token, ca) = SoftToken::new(true).unwrap();
    let keys = HardwareKeys {
        aaguids: vec![AAGUID],
        ca_pems: vec![pem(&ca.to_der().unwrap())],
    };
    (token, Ceremonies::new("localhost", ORIGIN, &keys).unwrap())
}

fn register(
    rp: &Ceremonies,
    auth: &mut dyn WebauthnAuthenticator,
    u: &mut User,
    kind: RegKind,
) -> Result<(), CeremonyError> {
    let (mut opts, state) = rp.start_registration(u, kind)?;
    // The software authenticators cannot store resident keys; the server does not depend on
    // it (usernameless sign-in is covered by the browser tests with Chromium's authenticator).
    if let Some(sel) = opts
        .pointer_mut("/publicKey/authenticatorSelection")
        .and_then(|s| s.as_object_mut())
    {
        assert_eq!(
            sel.get("residentKey").and_then(|v| v.as_str()),
            if kind == RegKind::Passkey {
                Some("required")
            } else {
                sel.get("residentKey").and_then(|v| v.as_str())
            }
        );
        sel.insert("residentKey".into(), "discouraged".into());
        sel.insert("requireResidentKey".into(), false.into());
    }
    let opts: CreationChallengeResponse = serde_json::from_value(opts).unwrap();
    let resp = auth
        .do_registration(origin(), opts)
        .map_err(|e| CeremonyError::Rejected(format!("authenticator: {e:?}")))?;
    let json = serde_json::to_vec(&resp).unwrap();
    let cred = rp.finish_registration(&json, &state, Timestamp::now())?;
    u.credentials.push(cred);
    Ok(())
}

fn sign_in_json(
    rp: &Ceremonies,
    auth: &mut dyn WebauthnAuthenticator,
    creds: Option<&User>,
) -> (Vec<u8>, AuthState) {
    let (opts, state) = rp
        .start_sign_in(creds.map(|u| u.credentials.as_slice()))
        .unwrap();
    let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let resp = auth.do_authentication(origin(), opts).unwrap();
    (serde_json::to_vec(&resp).unwrap(), state)
}

#[test]
fn passkey_enrolls_at_aal2_and_signs_in_usernameless_and_username_first() {
    let (_, rp) = token_and_rp();
    let mut pk = SoftPasskey::new(true);
    let mut u = user("nora");
    register(&rp, &mut pk, &mut u, RegKind::Passkey).unwrap();
    assert_eq!(u.credentials[0].kind, CredentialKind::Passkey);
    assert_eq!(u.credentials[0].aal, Aal::Aal2);
    assert_eq!(u.max_aal(), Some(Aal::Aal2));

    // Username-first.
    let (json, st) = sign_in_json(&rp, &mut pk, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    let v = rp
        .finish_sign_in(&r, st, &mut u, None, Timestamp::now())
        .unwrap();
    assert_eq!(v.aal, Aal::Aal2);
    assert!(v.amr.contains(&"mfa".to_string()));
    assert!(u.last_login.is_some() && u.credentials[0].last_used.is_some());

    // Usernameless options carry no credential list and no conditional mediation; an answer
    // without a user handle (this software authenticator sends none) names nobody: refused.
    let (opts, st) = rp.start_sign_in(None).unwrap();
    assert!(opts.get("mediation").is_none());
    let empty = opts
        .pointer("/publicKey/allowCredentials")
        .and_then(|v| v.as_array())
        .is_none_or(|a| a.is_empty());
    assert!(empty, "{opts}");
    let mut opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let (known, _) = rp.start_sign_in(Some(&u.credentials)).unwrap();
    let known: RequestChallengeResponse = serde_json::from_value(known).unwrap();
    opts.public_key.allow_credentials = known.public_key.allow_credentials;
    let resp = pk.do_authentication(origin(), opts).unwrap();
    let r = SignIn::parse(&serde_json::to_vec(&resp).unwrap()).unwrap();
    assert_eq!(r.user_handle(), None);
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now()),
        Err(CeremonyError::NotAllowed)
    ));
}

#[test]
fn attested_security_key_reaches_aal3_and_step_up_refuses_the_passkey() {
    let (mut token, rp) = token_and_rp();
    let mut pk = SoftPasskey::new(true);
    let mut u = user("sam");
    register(&rp, &mut pk, &mut u, RegKind::Passkey).unwrap();
    register(&rp, &mut token, &mut u, RegKind::SecurityKey).unwrap();
    let key = u.credentials[1].clone();
    assert_eq!(
        (key.kind, key.aal, key.aaguid),
        (CredentialKind::SecurityKey, Aal::Aal3, Some(AAGUID))
    );

    // Step-up to AAL3: only the hardware key counts.
    let allowed = vec![key.id.clone()];
    let (json, st) = sign_in_json(&rp, &mut token, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    let v = rp
        .finish_sign_in(&r, st, &mut u, Some(&allowed), Timestamp::now())
        .unwrap();
    assert_eq!(v.aal, Aal::Aal3);
    assert_eq!(v.amr[0], "hwk");

    // The passkey answers a step-up challenge: refused server-side.
    let (json, st) = sign_in_json(&rp, &mut pk, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, Some(&allowed), Timestamp::now()),
        Err(CeremonyError::NotAllowed)
    ));
}

#[test]
fn security_key_from_an_untrusted_vendor_is_refused() {
    let (_, rp) = token_and_rp();
    let (mut other, _) = SoftToken::new(true).unwrap();
    let mut u = user("tom");
    let e = register(&rp, &mut other, &mut u, RegKind::SecurityKey).unwrap_err();
    assert!(matches!(e, CeremonyError::Untrusted(_)), "{e:?}");
    assert!(u.credentials.is_empty());

    // Same vendor CA, model not on the allow-list.
    let (mut token, ca) = SoftToken::new(true).unwrap();
    let keys = HardwareKeys {
        aaguids: vec![Uuid::new_v4()],
        ca_pems: vec![pem(&ca.to_der().unwrap())],
    };
    let rp = Ceremonies::new("localhost", ORIGIN, &keys).unwrap();
    let e = register(&rp, &mut token, &mut u, RegKind::SecurityKey).unwrap_err();
    assert!(matches!(e, CeremonyError::Untrusted(_)), "{e:?}");

    // Without an allow-list, no AAL3 enrollment is offered at all.
    let rp = Ceremonies::new("localhost", ORIGIN, &HardwareKeys::default()).unwrap();
    assert!(!rp.hardware_keys_configured());
    assert!(matches!(
        rp.start_registration(&u, RegKind::SecurityKey),
        Err(CeremonyError::Config(_))
    ));
}

#[test]
fn authenticator_without_user_verification_is_refused() {
    let (_, rp) = token_and_rp();
    let (mut no_uv, _) = SoftToken::new(false).unwrap();
    let mut u = user("uv");
    let e = register(&rp, &mut no_uv, &mut u, RegKind::Passkey).unwrap_err();
    assert!(matches!(e, CeremonyError::Rejected(_)), "{e:?}");
}

#[test]
fn wrong_origin_challenge_and_replay_are_refused() {
    let (_, rp) = token_and_rp();
    let mut pk = SoftPasskey::new(true);
    let mut u = user("ann");
    register(&rp, &mut pk, &mut u, RegKind::Passkey).unwrap();

    // An assertion made for another origin (a phishing site).
    let (opts, st) = rp.start_sign_in(Some(&u.credentials)).unwrap();
    let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let evil = Url::parse("http://localhost.evil.example:8080").unwrap();
    if let Ok(resp) = pk.do_authentication(evil, opts) {
        let r = SignIn::parse(&serde_json::to_vec(&resp).unwrap()).unwrap();
        assert!(matches!(
            rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now()),
            Err(CeremonyError::Rejected(_))
        ));
    }

    // A valid assertion replayed against a new challenge.
    let (json, st) = sign_in_json(&rp, &mut pk, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now())
        .unwrap();
    let (_, st2) = rp.start_sign_in(Some(&u.credentials)).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st2, &mut u, None, Timestamp::now()),
        Err(CeremonyError::Rejected(_))
    ));

    // A credential of another account.
    let mut other = user("eve");
    let mut pk2 = SoftPasskey::new(true);
    register(&rp, &mut pk2, &mut other, RegKind::Passkey).unwrap();
    let (json, st) = sign_in_json(&rp, &mut pk2, Some(&other.clone()));
    let r = SignIn::parse(&json).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now()),
        Err(CeremonyError::NotAllowed)
    ));

    // Garbage.
    assert!(matches!(
        SignIn::parse(b"{\"id\":1}"),
        Err(CeremonyError::Malformed(_))
    ));
    let (_, rs) = rp.start_registration(&u, RegKind::Passkey).unwrap();
    assert!(matches!(
        rp.finish_registration(b"[]", &rs, Timestamp::now()),
        Err(CeremonyError::Malformed(_))
    ));
    let _: &RegState = &rs;
}

#[test]
fn counter_regression_flags_the_credential() {
    let (mut token, rp) = token_and_rp();
    let mut u = user("clone");
    register(&rp, &mut token, &mut u, RegKind::SecurityKey).unwrap();
    let (json, st) = sign_in_json(&rp, &mut token, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now())
        .unwrap();

    // The server saw a higher counter than the key now sends: as if a clone had been used.
    let mut inner: webauthn_rs::prelude::Credential = u.credentials[0].key.clone().into();
    inner.counter += 1000;
    u.credentials[0].key = inner.into();
    let (json, st) = sign_in_json(&rp, &mut token, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    let e = rp
        .finish_sign_in(&r, st, &mut u, None, Timestamp::now())
        .unwrap_err();
    assert!(matches!(e, CeremonyError::CounterRegression(_)), "{e:?}");
    assert!(u.credentials[0].flagged.is_some());
    assert_eq!(u.max_aal(), None);

    // Flagged credentials are refused from then on, even with a good counter.
    let mut unflagged = u.clone();
    unflagged.credentials[0].flagged = None;
    let (json, st) = sign_in_json(&rp, &mut token, Some(&unflagged));
    let r = SignIn::parse(&json).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::now()),
        Err(CeremonyError::NotAllowed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_single_use_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let d = Directory::new(store);
    let now = Timestamp::now();
    assert!(d
        .invite("bad name", "x", Aal::Aal2, Duration::from_secs(60), now)
        .await
        .is_err());
    assert!(d
        .invite("x", "x", Aal::Aal1, Duration::from_secs(60), now)
        .await
        .is_err());
    let t = d
        .invite("nora", "Nora N.", Aal::Aal3, Duration::from_secs(3600), now)
        .await
        .unwrap();
    let i = d.peek_invite(&t, now).await.unwrap().unwrap();
    assert_eq!((i.user.as_str(), i.aal), ("nora", Aal::Aal3));
    // Expired at its expiry.
    assert!(d
        .peek_invite(&t, now.plus(Duration::from_secs(3600)))
        .await
        .unwrap()
        .is_none());
    // Two concurrent redemptions: one wins.
    let h = t.hash();
    let (a, b) = tokio::join!(d.take_invite(&h, now), d.take_invite(&h, now));
    assert_eq!(
        [a.unwrap().is_some(), b.unwrap().is_some()]
            .iter()
            .filter(|x| **x)
            .count(),
        1
    );
    assert!(d.peek_invite(&t, now).await.unwrap().is_none());

    // Throttling counts consecutive failures and a success clears them.
    for _ in 0..aalgate_auth::directory::MAX_FAILURES - 1 {
        d.record_failure("nora").await.unwrap();
    }
    assert!(!d.throttled("nora").await.unwrap());
    d.record_failure("nora").await.unwrap();
    assert!(d.throttled("nora").await.unwrap());
    d.clear_failures("nora").await.unwrap();
    assert!(!d.throttled("nora").await.unwrap());
}
