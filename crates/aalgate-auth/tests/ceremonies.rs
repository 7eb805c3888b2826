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
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use der::Encode;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID};
use webauthn_authenticator_rs::{AuthenticatorBackendHashedClientData, WebauthnAuthenticator};
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
        created: Timestamp::wall(),
        last_login: None,
        disabled_by: None,
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
    register_with(rp, auth, u, kind, |_, s| s)
}

/// As [`register`], with the server state changed first (e.g. an enrollment made under a lax
/// user-verification policy, to test that sign-in still demands UV).
fn register_with(
    rp: &Ceremonies,
    auth: &mut dyn WebauthnAuthenticator,
    u: &mut User,
    kind: RegKind,
    hook: impl FnOnce(&mut serde_json::Value, RegState) -> RegState,
) -> Result<(), CeremonyError> {
    let (mut opts, state) = rp.start_registration(u, kind)?;
    let state = hook(&mut opts, state);
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
    // Every refusal a test sees comes from the server: an authenticator that refuses the
    // options is a broken test.
    let resp = auth
        .do_registration(origin(), opts)
        .unwrap_or_else(|e| panic!("the authenticator refused to register: {e:?}"));
    let json = serde_json::to_vec(&resp).unwrap();
    let cred = rp.finish_registration(&json, &state, Timestamp::wall())?;
    u.credentials.push(cred);
    Ok(())
}

/// Turns every "user verification required" under a UV key into "discouraged".
fn relax(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s == "required" => *s = "discouraged".into(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(relax),
        serde_json::Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                // Strings only under a UV key; objects and arrays everywhere.
                let k = k.to_ascii_lowercase();
                let uv_key = k.contains("policy") || k.contains("verification");
                if uv_key || x.is_object() || x.is_array() {
                    relax(x);
                }
            }
        }
        _ => {}
    }
}

/// Relaxes user verification in the options and in the server's state: an enrollment made
/// under a lax policy.
fn relax_uv(opts: &mut serde_json::Value, state: RegState) -> RegState {
    relax(opts);
    let mut v = serde_json::to_value(&state).unwrap();
    relax(&mut v);
    serde_json::from_value(v).unwrap()
}

/// Relaxes user verification in the options only (a tampered page): the state the server
/// kept still requires it.
fn relax_uv_options(opts: &mut serde_json::Value, state: RegState) -> RegState {
    relax(opts);
    state
}

/// A sign-in for `opts` whose client data names `origin`: the soft authenticator refuses to
/// sign for a non-localhost http origin itself, so the client data is written here, as a
/// phishing page's browser would write it, and the key signs its hash.
fn signed_for_origin(pk: &mut SoftPasskey, opts: serde_json::Value, origin: &str) -> Vec<u8> {
    let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let client = serde_json::to_vec(&serde_json::json!({
        "type": "webauthn.get",
        "challenge": URL_SAFE_NO_PAD.encode(&opts.public_key.challenge),
        "origin": origin,
    }))
    .unwrap();
    let mut cred = AuthenticatorBackendHashedClientData::perform_auth(
        pk,
        Sha256::digest(&client).to_vec(),
        opts.public_key,
        60_000,
    )
    .expect("the authenticator signs");
    cred.response.client_data_json = client;
    serde_json::to_vec(&cred).unwrap()
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
        .finish_sign_in(&r, st, &mut u, None, Timestamp::wall())
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
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::wall()),
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
        .finish_sign_in(&r, st, &mut u, Some(&allowed), Timestamp::wall())
        .unwrap();
    assert_eq!(v.aal, Aal::Aal3);
    assert_eq!(v.amr[0], "hwk");

    // The passkey answers a step-up challenge: refused server-side.
    let (json, st) = sign_in_json(&rp, &mut pk, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, Some(&allowed), Timestamp::wall()),
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
    // The page told the authenticator that user verification is not needed, so it answers
    // with UV=0; the server's own state still requires it and refuses.
    let (_, rp) = token_and_rp();
    let mut u = user("uv");
    let e = register_with(
        &rp,
        &mut SoftPasskey::new(false),
        &mut u,
        RegKind::Passkey,
        relax_uv_options,
    )
    .unwrap_err();
    assert!(matches!(e, CeremonyError::Rejected(_)), "{e:?}");
    let (mut token, ca) = SoftToken::new(false).unwrap();
    let keys = HardwareKeys {
        aaguids: vec![AAGUID],
        ca_pems: vec![pem(&ca.to_der().unwrap())],
    };
    let rp2 = Ceremonies::new("localhost", ORIGIN, &keys).unwrap();
    let e = register_with(
        &rp2,
        &mut token,
        &mut u,
        RegKind::SecurityKey,
        relax_uv_options,
    )
    .unwrap_err();
    assert!(matches!(e, CeremonyError::Rejected(_)), "{e:?}");
    assert!(u.credentials.is_empty());
    // The control: the same UV=0 answer against a state that does not require UV passes,
    // so it was the server's requirement that refused it above.
    register_with(
        &rp,
        &mut SoftPasskey::new(false),
        &mut u,
        RegKind::Passkey,
        relax_uv,
    )
    .expect("a lax state accepts UV=0");
}

#[test]
fn wrong_origin_challenge_and_replay_are_refused() {
    let (_, rp) = token_and_rp();
    let mut pk = SoftPasskey::new(true);
    let mut u = user("ann");
    register(&rp, &mut pk, &mut u, RegKind::Passkey).unwrap();

    // An assertion made for another origin (a phishing site, or a sibling host), refused by
    // the server's origin check...
    for evil in [
        "http://localhost.evil.example:8080",
        "http://phish.localhost:8080",
    ] {
        let (opts, st) = rp.start_sign_in(Some(&u.credentials)).unwrap();
        let r = SignIn::parse(&signed_for_origin(&mut pk, opts, evil)).unwrap();
        let e = rp
            .finish_sign_in(&r, st, &mut u.clone(), None, Timestamp::wall())
            .unwrap_err();
        assert!(matches!(e, CeremonyError::Rejected(_)), "{evil}: {e:?}");
    }
    // ...and by nothing else: a relying party whose origin that is accepts the same kind of
    // assertion from the same key.
    let sibling = Ceremonies::new(
        "localhost",
        "http://phish.localhost:8080",
        &HardwareKeys::default(),
    )
    .unwrap();
    let (opts, st) = sibling.start_sign_in(Some(&u.credentials)).unwrap();
    let r = SignIn::parse(&signed_for_origin(
        &mut pk,
        opts,
        "http://phish.localhost:8080",
    ))
    .unwrap();
    sibling
        .finish_sign_in(&r, st, &mut u.clone(), None, Timestamp::wall())
        .expect("the control: accepted where the origin is right");

    // A valid assertion replayed against a new challenge.
    let (json, st) = sign_in_json(&rp, &mut pk, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    rp.finish_sign_in(&r, st, &mut u, None, Timestamp::wall())
        .unwrap();
    let (_, st2) = rp.start_sign_in(Some(&u.credentials)).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st2, &mut u, None, Timestamp::wall()),
        Err(CeremonyError::Rejected(_))
    ));

    // A credential of another account.
    let mut other = user("eve");
    let mut pk2 = SoftPasskey::new(true);
    register(&rp, &mut pk2, &mut other, RegKind::Passkey).unwrap();
    let (json, st) = sign_in_json(&rp, &mut pk2, Some(&other.clone()));
    let r = SignIn::parse(&json).unwrap();
    assert!(matches!(
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::wall()),
        Err(CeremonyError::NotAllowed)
    ));

    // Garbage.
    assert!(matches!(
        SignIn::parse(b"{\"id\":1}"),
        Err(CeremonyError::Malformed(_))
    ));
    let (_, rs) = rp.start_registration(&u, RegKind::Passkey).unwrap();
    assert!(matches!(
        rp.finish_registration(b"[]", &rs, Timestamp::wall()),
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
    rp.finish_sign_in(&r, st, &mut u, None, Timestamp::wall())
        .unwrap();

    // The server saw a higher counter than the key now sends: as if a clone had been used.
    let mut inner: webauthn_rs::prelude::Credential = u.credentials[0].key.clone().into();
    inner.counter += 1000;
    u.credentials[0].key = inner.into();
    let (json, st) = sign_in_json(&rp, &mut token, Some(&u.clone()));
    let r = SignIn::parse(&json).unwrap();
    let e = rp
        .finish_sign_in(&r, st, &mut u, None, Timestamp::wall())
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
        rp.finish_sign_in(&r, st, &mut u, None, Timestamp::wall()),
        Err(CeremonyError::NotAllowed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_single_use_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let d = Directory::new(store);
    let now = Timestamp::wall();
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
}

/// The WebAuthn part of the attack corpus: `tests/attacks/unit-webauthn.yaml`.
mod corpus {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Corpus {
        #[allow(dead_code)]
        about: String,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        authenticator: String,
        #[serde(default)]
        origin: Option<String>,
        #[serde(default, rename = "type")]
        type_: Option<String>,
        #[serde(default)]
        cross_origin: Option<bool>,
        #[serde(default)]
        top_origin: Option<String>,
        #[serde(default)]
        rp_id: Option<String>,
        #[serde(default)]
        challenge: Option<String>,
        #[serde(default)]
        step_up: bool,
        #[serde(default)]
        mutate: Option<String>,
        expect: String,
    }

    /// Signs a sign-in for `opts` with exactly the client data the case describes.
    fn forge(
        auth: &mut dyn AuthenticatorBackendHashedClientData,
        c: &Case,
        mut opts: webauthn_rs::prelude::RequestChallengeResponse,
        other_challenge: &[u8],
    ) -> Vec<u8> {
        let challenge = match c.challenge.as_deref() {
            None => opts.public_key.challenge.clone(),
            Some("other-flow") => other_challenge.to_vec(),
            Some("garbage") => b"0123456789abcdef0123456789abcdef".to_vec(),
            Some(x) => panic!("{}: unknown challenge {x}", c.name),
        };
        let mut client = serde_json::json!({
            "type": c.type_.as_deref().unwrap_or("webauthn.get"),
            "challenge": URL_SAFE_NO_PAD.encode(challenge),
            "origin": c.origin.as_deref().unwrap_or(ORIGIN),
        });
        if let Some(x) = c.cross_origin {
            client["crossOrigin"] = x.into();
        }
        if let Some(t) = &c.top_origin {
            client["topOrigin"] = t.as_str().into();
        }
        let client = serde_json::to_vec(&client).unwrap();
        if let Some(rp) = &c.rp_id {
            opts.public_key.rp_id = rp.clone();
        }
        if c.authenticator == "passkey-no-uv" {
            // The browser is told UV is not needed (a tampered page); the server must not care.
            opts.public_key.user_verification =
                serde_json::from_value("discouraged".into()).unwrap();
        }
        let mut cred = auth
            .perform_auth(Sha256::digest(&client).to_vec(), opts.public_key, 60_000)
            .unwrap_or_else(|e| panic!("{}: authenticator refused: {e:?}", c.name));
        cred.response.client_data_json = client;
        match c.mutate.as_deref() {
            Some("signature") => {
                let n = cred.response.signature.len();
                cred.response.signature[n / 2] ^= 1;
            }
            Some("auth-data") => cred.response.authenticator_data[0] ^= 1,
            _ => {}
        }
        serde_json::to_vec(&cred).unwrap()
    }

    #[test]
    fn forged_sign_ins_are_refused() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/attacks/unit-webauthn.yaml");
        let corpus: Corpus =
            serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut failures = Vec::new();
        for c in &corpus.cases {
            let (mut token, rp) = token_and_rp();
            let mut passkey = SoftPasskey::new(c.authenticator != "passkey-no-uv");
            let mut u = user("ann");
            // Every account holds a passkey; `key` cases add an attested security key.
            register(&rp, &mut SoftPasskey::new(true), &mut u, RegKind::Passkey).unwrap();
            let auth: &mut dyn AuthenticatorBackendHashedClientData = match c.authenticator.as_str()
            {
                "key" => {
                    register(&rp, &mut token, &mut u, RegKind::SecurityKey).unwrap();
                    &mut token
                }
                "passkey" => {
                    register(&rp, &mut passkey, &mut u, RegKind::Passkey).unwrap();
                    &mut passkey
                }
                "passkey-no-uv" => {
                    // Enrolled under a lax policy (as an older deployment might have), it
                    // never verifies the user: sign-in must still refuse it.
                    register_with(&rp, &mut passkey, &mut u, RegKind::Passkey, relax_uv).unwrap();
                    &mut passkey
                }
                x => panic!("{}: unknown authenticator {x}", c.name),
            };
            if c.mutate.as_deref() == Some("counter") {
                // The server saw a higher counter than the key sends: a clone was used.
                let i = u.credentials.len() - 1;
                let mut inner: webauthn_rs::prelude::Credential =
                    u.credentials[i].key.clone().into();
                inner.counter += 1000;
                u.credentials[i].key = inner.into();
            }
            let owner = if c.mutate.as_deref() == Some("other-user") {
                let mut v = user("victim");
                register(&rp, &mut SoftPasskey::new(true), &mut v, RegKind::Passkey).unwrap();
                v
            } else {
                u.clone()
            };
            let allowed: Option<Vec<String>> = c.step_up.then(|| {
                owner
                    .credentials
                    .iter()
                    .filter(|k| k.aal == Aal::Aal3)
                    .map(|k| k.id.clone())
                    .collect()
            });
            let (other, _) = rp.start_sign_in(Some(&u.credentials)).unwrap();
            let other: RequestChallengeResponse = serde_json::from_value(other).unwrap();
            let (opts, mut state) = rp.start_sign_in(Some(&u.credentials)).unwrap();
            let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
            let json = forge(auth, c, opts, &other.public_key.challenge);
            let mut target = owner;
            match c.mutate.as_deref() {
                Some("replay") => {
                    // Accepted once, then presented again against a new challenge.
                    let r = SignIn::parse(&json).unwrap();
                    rp.finish_sign_in(&r, state, &mut target, None, Timestamp::wall())
                        .unwrap_or_else(|e| panic!("{}: first use refused: {e}", c.name));
                    state = rp.start_sign_in(Some(&target.credentials)).unwrap().1;
                }
                Some("counter") => {
                    let i = target.credentials.len() - 1;
                    let mut inner: webauthn_rs::prelude::Credential =
                        target.credentials[i].key.clone().into();
                    inner.counter += 1000;
                    target.credentials[i].key = inner.into();
                }
                _ => {}
            }
            let got = SignIn::parse(&json).and_then(|r| {
                rp.finish_sign_in(
                    &r,
                    state,
                    &mut target,
                    allowed.as_deref(),
                    Timestamp::wall(),
                )
            });
            let outcome = match &got {
                Ok(v) => format!("{:?}", v.aal).to_lowercase(),
                Err(_) => "refused".to_string(),
            };
            if outcome != c.expect {
                failures.push(format!(
                    "{}: {outcome} ({got:?}), expected {}",
                    c.name, c.expect
                ));
            }
        }
        assert!(corpus.cases.len() >= 20);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// A ceremony bound to one request: the authenticator signs the challenge derived from the
/// request's digest, the finish accepts it like any other, and the evidence verifies offline
/// against the credential's public key, for that request only.
#[test]
fn a_request_bound_ceremony_signs_the_request_digest() {
    use aalgate_auth::signing::{self, Evidence, VerifyError};
    let (mut token, rp) = token_and_rp();
    let mut u = user("rex");
    register(&rp, &mut token, &mut u, RegKind::SecurityKey).unwrap();
    let body = b"patient=1&drug=oxycodone&dose=5mg";
    let host = "rx.localhost:8080";
    let binding = signing::bind("POST", host, "/prescriptions/7/sign", Some(body));
    let digest = signing::b64_32(&binding.digest).unwrap();
    let cn = signing::nonce();
    let chal = signing::challenge(&digest, &cn, "POST", "/prescriptions/7/sign");
    let (opts, st) = rp
        .start_sign_in_bound("rex", Some(&u.credentials), &chal)
        .unwrap();
    assert_eq!(
        opts.pointer("/publicKey/challenge")
            .and_then(|v| v.as_str()),
        Some(signing::b64(&chal).as_str())
    );
    let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let resp = token.do_authentication(origin(), opts).unwrap();
    let r = SignIn::parse(&serde_json::to_vec(&resp).unwrap()).unwrap();
    assert_eq!(r.challenge(), Some(signing::b64(&chal)));
    let v = rp
        .finish_sign_in(&r, st, &mut u, None, Timestamp::wall())
        .unwrap();
    assert_eq!(v.aal, Aal::Aal3);
    let (ad, cd, sig) = r.signed_parts();
    let e = Evidence {
        v: 1,
        method: "POST".into(),
        path: "/prescriptions/7/sign".into(),
        digest: binding.digest.clone(),
        body: true,
        ceremony_nonce: signing::b64(&cn),
        credential_id: r.credential_id(),
        authenticator_data: signing::b64(ad),
        client_data_json: signing::b64(cd),
        signature: signing::b64(sig),
    };
    let key = &u.credentials[0].key;
    let req = Some(signing::Recorded {
        nonce: &binding.nonce,
        method: "POST",
        host,
        url: "/prescriptions/7/sign",
        body: Some(&body[..]),
    });
    assert_eq!(signing::verify(&e, key, "localhost", ORIGIN, req), Ok(()));
    assert_eq!(signing::verify(&e, key, "localhost", ORIGIN, None), Ok(()));
    // Another body, another digest, another key, another relying party: refused.
    let other = req.map(|r| signing::Recorded {
        body: Some(&b"patient=1&drug=oxycodone&dose=50mg"[..]),
        ..r
    });
    assert_eq!(
        signing::verify(&e, key, "localhost", ORIGIN, other),
        Err(VerifyError::Digest)
    );
    let mut forged = e.clone();
    forged.digest = signing::bind("POST", host, "/prescriptions/7/sign", Some(b"x")).digest;
    assert_eq!(
        signing::verify(&forged, key, "localhost", ORIGIN, None),
        Err(VerifyError::Challenge)
    );
    // The method and path an auditor reads are covered too.
    let mut moved = e.clone();
    moved.path = "/prescriptions/9/sign".into();
    assert_eq!(
        signing::verify(&moved, key, "localhost", ORIGIN, None),
        Err(VerifyError::Challenge)
    );
    let mut pk = SoftPasskey::new(true);
    let mut other_user = user("eve");
    register(&rp, &mut pk, &mut other_user, RegKind::Passkey).unwrap();
    assert_eq!(
        signing::verify(
            &e,
            &other_user.credentials[0].key,
            "localhost",
            ORIGIN,
            None
        ),
        Err(VerifyError::Signature)
    );
    assert!(matches!(
        signing::verify(&e, key, "example.org", ORIGIN, None),
        Err(VerifyError::RpId(_))
    ));
    // A state whose challenge is not the one the authenticator signed fails at the finish.
    let (opts, _) = rp
        .start_sign_in_bound("rex", Some(&u.credentials), &chal)
        .unwrap();
    let (_, st_other) = rp
        .start_sign_in_bound("rex", Some(&u.credentials), &[9u8; 32])
        .unwrap();
    let opts: RequestChallengeResponse = serde_json::from_value(opts).unwrap();
    let resp = token.do_authentication(origin(), opts).unwrap();
    let r = SignIn::parse(&serde_json::to_vec(&resp).unwrap()).unwrap();
    assert!(rp
        .finish_sign_in(&r, st_other, &mut u, None, Timestamp::wall())
        .is_err());
}

/// A usernameless (discoverable) ceremony can be bound too: the options and the server state
/// both carry the given challenge.
#[test]
fn a_usernameless_ceremony_is_bound_in_options_and_state() {
    let (_, rp) = token_and_rp();
    let chal = [42u8; 32];
    let (opts, st) = rp.start_sign_in_bound("", None, &chal).unwrap();
    let want = aalgate_auth::signing::b64(&chal);
    assert_eq!(
        opts.pointer("/publicKey/challenge")
            .and_then(|v| v.as_str()),
        Some(want.as_str())
    );
    let st = serde_json::to_value(&st).unwrap();
    assert_eq!(
        st.pointer("/Discoverable/ast/challenge")
            .and_then(|v| v.as_str()),
        Some(want.as_str()),
        "{st}"
    );
}
