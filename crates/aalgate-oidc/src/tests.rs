//! Negative token tests: every check refuses what it should, with real signatures made here.

use aalgate_policy::{Aal, Timestamp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

use crate::jwt::{JwkSet, JwtError};
use crate::token::{verify_id_token, verify_logout_token, IdTokenCheck, TokenError};
use crate::{pkce, Groups, Metadata, RawProvider};

const RSA_PK8: &[u8] = include_bytes!("testdata/rsa2048.pk8");
const ISS: &str = "https://sso.example.org/realms/mercy";
const CLIENT: &str = "aalgate";
const NOW: u64 = 1_800_000_000;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    set: JwkSet,
    json: Value,
}

fn keys() -> Keys {
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_pkcs8(RSA_PK8)
        .map_err(|e| e.to_string())
        .unwrap();
    let ec_doc =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_doc.as_ref(),
        &rng,
    )
    .unwrap();
    let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap();
    let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let point = ec.public_key().as_ref();
    let json = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa1", "use": "sig", "n": b64(&c.n), "e": b64(&c.e) },
        { "kty": "EC", "kid": "ec1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) },
        { "kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": b64(ed.public_key().as_ref()) },
    ]});
    let set = JwkSet::parse(json.to_string().as_bytes()).unwrap();
    Keys {
        rsa,
        ec,
        ed,
        set,
        json,
    }
}

fn sign(k: &Keys, header: Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = SystemRandom::new();
    let sig = match header["alg"].as_str().unwrap() {
        "RS256" => {
            let mut s = vec![0; k.rsa.public().modulus_len()];
            k.rsa
                .sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s)
                .unwrap();
            s
        }
        "PS256" => {
            let mut s = vec![0; k.rsa.public().modulus_len()];
            k.rsa
                .sign(&signature::RSA_PSS_SHA256, &rng, input.as_bytes(), &mut s)
                .unwrap();
            s
        }
        "ES256" => k.ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        "EdDSA" => k.ed.sign(input.as_bytes()).as_ref().to_vec(),
        _ => b"whatever".to_vec(),
    };
    format!("{input}.{}", b64(&sig))
}

fn id_claims() -> Value {
    json!({
        "iss": ISS, "aud": CLIENT, "sub": "248289761001", "exp": NOW + 300, "iat": NOW - 5,
        "nonce": "n-0S6_WzA2Mj", "auth_time": NOW - 10, "amr": ["pwd", "mfa"], "acr": "silver",
        "sid": "08a5019c", "preferred_username": "alice",
    })
}

fn check() -> IdTokenCheck<'static> {
    IdTokenCheck {
        issuer: ISS,
        client_id: CLIENT,
        nonce: "n-0S6_WzA2Mj",
        now: Timestamp(NOW),
        max_age: None,
    }
}

fn id(k: &Keys, alg: &str, kid: &str, claims: &Value) -> Result<crate::IdClaims, TokenError> {
    verify_id_token(
        &sign(k, json!({ "alg": alg, "kid": kid }), claims),
        &k.set,
        &check(),
    )
}

fn claim_err(r: Result<impl std::fmt::Debug, TokenError>, words: &str) {
    match r {
        Err(TokenError::Claim(m)) => assert!(m.contains(words), "{m:?} should say {words:?}"),
        other => panic!("expected a claim error with {words:?}, got {other:?}"),
    }
}

#[test]
fn good_tokens_verify_with_each_key_type() {
    let k = keys();
    for (alg, kid) in [
        ("RS256", "rsa1"),
        ("PS256", "rsa1"),
        ("ES256", "ec1"),
        ("EdDSA", "ed1"),
    ] {
        let c = id(&k, alg, kid, &id_claims()).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c.sub, "248289761001");
        assert_eq!(c.amr, ["pwd", "mfa"]);
        assert_eq!(c.sid.as_deref(), Some("08a5019c"));
    }
}

#[test]
fn signatures_and_algorithms_are_pinned_to_the_key() {
    let k = keys();
    // A wrong signature: the claims changed after signing.
    let good = sign(&k, json!({"alg": "RS256", "kid": "rsa1"}), &id_claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut evil = id_claims();
    evil["preferred_username"] = json!("mallory");
    let forged_claims = b64(evil.to_string().as_bytes());
    parts[1] = &forged_claims;
    assert_eq!(
        verify_id_token(&parts.join("."), &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::Signature(Some("rsa1".into())))
    );
    // alg none, with and without a signature.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(id_claims().to_string().as_bytes())
    );
    assert_eq!(
        verify_id_token(&none, &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::Algorithm("none".into()))
    );
    // HS256 keyed with the RSA public key's bytes (the key confusion attack).
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"rsa1"}"#),
        b64(id_claims().to_string().as_bytes())
    );
    let mac_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        k.json["keys"][0]["n"].as_str().unwrap().as_bytes(),
    );
    let tag = ring::hmac::sign(&mac_key, input.as_bytes());
    let hs = format!("{input}.{}", b64(tag.as_ref()));
    assert_eq!(
        verify_id_token(&hs, &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::Algorithm("HS256".into()))
    );
    // An EC signature presented as RS256 against the RSA key, and ES256 naming the RSA key.
    let es_on_rsa = sign(&k, json!({"alg": "ES256", "kid": "rsa1"}), &id_claims());
    assert!(matches!(
        verify_id_token(&es_on_rsa, &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::KeyMismatch(..))
    ));
    // An unknown key id: the caller refetches the set.
    let unknown = sign(&k, json!({"alg": "RS256", "kid": "rotated"}), &id_claims());
    assert_eq!(
        verify_id_token(&unknown, &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::UnknownKey(Some("rotated".into())))
    );
    // No kid with several RSA-capable keys is fine only when one key fits.
    let no_kid = sign(&k, json!({"alg": "RS256"}), &id_claims());
    assert!(verify_id_token(&no_kid, &k.set, &check()).is_ok());
    // crit extensions are refused.
    let crit = sign(
        &k,
        json!({"alg": "RS256", "kid": "rsa1", "crit": ["exp"]}),
        &id_claims(),
    );
    assert_eq!(
        verify_id_token(&crit, &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::Critical)
    );
    // An encrypted (five-part) token and garbage.
    assert!(matches!(
        verify_id_token("a.b.c.d.e", &k.set, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::Malformed(_))
    ));
    // An `enc` key never verifies.
    let mut enc = k.json.clone();
    enc["keys"][0]["use"] = json!("enc");
    let enc = JwkSet::parse(enc.to_string().as_bytes()).unwrap();
    assert!(matches!(
        verify_id_token(&good, &enc, &check()).unwrap_err(),
        TokenError::Jwt(JwtError::KeyMismatch(..))
    ));
}

#[test]
fn every_id_token_claim_is_checked() {
    let k = keys();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = id_claims();
        f(&mut c);
        id(&k, "ES256", "ec1", &c)
    };
    claim_err(with(&|c| c["iss"] = json!("https://evil.example")), "iss");
    claim_err(
        with(&|c| c["iss"] = json!(format!("{ISS}/"))),
        "configured issuer",
    );
    claim_err(with(&|c| c["aud"] = json!("someone-else")), "aud");
    claim_err(
        with(&|c| c["aud"] = json!([CLIENT, "someone-else"])),
        "other clients",
    );
    claim_err(with(&|c| c["azp"] = json!("someone-else")), "azp");
    assert!(with(&|c| {
        c["aud"] = json!([CLIENT]);
        c["azp"] = json!(CLIENT)
    })
    .is_ok());
    claim_err(with(&|c| c["exp"] = json!(NOW - 31)), "expired");
    assert!(with(&|c| c["exp"] = json!(NOW - 29)).is_ok(), "leeway");
    claim_err(with(&|c| c["iat"] = json!(NOW + 120)), "future");
    claim_err(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        "exp is missing",
    );
    claim_err(with(&|c| c["nonce"] = json!("other")), "nonce");
    claim_err(
        with(&|c| {
            c.as_object_mut().unwrap().remove("nonce");
        }),
        "nonce is missing",
    );
    claim_err(
        with(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        }),
        "sub",
    );
    // max_age: auth_time must be there and recent enough.
    let tok = |c: &Value| sign(&k, json!({"alg": "ES256", "kid": "ec1"}), c);
    let mut ck = check();
    ck.max_age = Some(0);
    assert!(verify_id_token(&tok(&id_claims()), &k.set, &ck).is_ok());
    let mut old = id_claims();
    old["auth_time"] = json!(NOW - 600);
    claim_err(verify_id_token(&tok(&old), &k.set, &ck), "max_age");
    let mut none = id_claims();
    none.as_object_mut().unwrap().remove("auth_time");
    claim_err(verify_id_token(&tok(&none), &k.set, &ck), "auth_time");
}

fn logout_claims() -> Value {
    json!({
        "iss": ISS, "aud": CLIENT, "iat": NOW - 2, "jti": "bWJq", "sid": "08a5019c",
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    })
}

#[test]
fn every_logout_token_claim_is_checked() {
    let k = keys();
    let run = |c: &Value, typ: Option<&str>| {
        let mut h = json!({"alg": "RS256", "kid": "rsa1"});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        verify_logout_token(&sign(&k, h, c), &k.set, ISS, CLIENT, Timestamp(NOW))
    };
    let ok = run(&logout_claims(), Some("logout+jwt")).unwrap();
    assert_eq!(ok.sid.as_deref(), Some("08a5019c"));
    assert_eq!(ok.jti, "bWJq");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = logout_claims();
        f(&mut c);
        run(&c, None)
    };
    claim_err(with(&|c| c["iss"] = json!("https://evil.example")), "iss");
    claim_err(with(&|c| c["aud"] = json!("x")), "aud");
    claim_err(with(&|c| c["iat"] = json!(NOW - 600)), "too old");
    claim_err(with(&|c| c["iat"] = json!(NOW + 600)), "future");
    claim_err(
        with(&|c| {
            c.as_object_mut().unwrap().remove("jti");
        }),
        "jti",
    );
    claim_err(with(&|c| c["events"] = json!({})), "events");
    claim_err(
        with(&|c| c["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": "x"})),
        "events",
    );
    claim_err(with(&|c| c["nonce"] = json!("n")), "nonce");
    claim_err(
        with(&|c| {
            c.as_object_mut().unwrap().remove("sid");
        }),
        "neither",
    );
    assert!(with(&|c| {
        c.as_object_mut().unwrap().remove("sid");
        c["sub"] = json!("248289761001");
    })
    .is_ok());
    claim_err(run(&logout_claims(), Some("at+jwt")), "typ");
    // An ID token is never a logout token.
    let idt = sign(&k, json!({"alg": "RS256", "kid": "rsa1"}), &id_claims());
    assert!(verify_logout_token(&idt, &k.set, ISS, CLIENT, Timestamp(NOW)).is_err());
}

fn provider(yaml: &str) -> Result<crate::Provider, String> {
    let raw: RawProvider = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    raw.validate()
}

const BASE: &str = "id: mercy-sso\ndisplay_name: Mercy Health SSO\nissuer: https://sso.example.org/realms/mercy\nclient_id: aalgate\nclient_secret_file: s\n";

#[test]
fn the_aal_mapping_is_honest_by_default_and_never_aal3() {
    let p = provider(BASE).unwrap();
    assert_eq!(
        p.aal.level(&["mfa".into(), "hwk".into()], Some("gold")),
        Aal::Aal1
    );
    assert_eq!(p.scopes, ["openid", "profile", "email"]);
    let p = provider(&format!(
        "{BASE}aal: {{ default: aal1, rules: [{{ amr_any: [mfa, hwk], aal: aal2 }}] }}\n"
    ))
    .unwrap();
    assert_eq!(p.aal.level(&["pwd".into(), "mfa".into()], None), Aal::Aal2);
    assert_eq!(p.aal.level(&["pwd".into()], None), Aal::Aal1);
    let p = provider(&format!(
        "{BASE}aal: {{ rules: [{{ amr_any: [hwk], acr_any: [gold], aal: aal2 }}] }}\n"
    ))
    .unwrap();
    assert_eq!(p.aal.level(&["hwk".into()], Some("silver")), Aal::Aal1);
    assert_eq!(p.aal.level(&["hwk".into()], Some("gold")), Aal::Aal2);
    let e = provider(&format!(
        "{BASE}aal: {{ rules: [{{ amr_any: [hwk], aal: aal3 }}] }}\n"
    ))
    .unwrap_err();
    assert!(e.contains("never counts as aal3"), "{e}");
    let e = provider(&format!("{BASE}aal: {{ default: aal3 }}\n")).unwrap_err();
    assert!(e.contains("never counts as aal3"), "{e}");
    let e = provider(&format!("{BASE}aal: {{ rules: [{{ aal: aal2 }}] }}\n")).unwrap_err();
    assert!(e.contains("no condition"), "{e}");
    assert!(provider(&format!("{BASE}colour: blue\n")).is_err());
    let e =
        provider(&BASE.replace("https://sso.example.org", "http://sso.example.org")).unwrap_err();
    assert!(e.contains("https"), "{e}");
    assert!(provider(&BASE.replace("https://sso.example.org", "http://127.0.0.1:9")).is_ok());
    let e = provider(&BASE.replace("client_secret_file: s\n", "")).unwrap_err();
    assert!(e.contains("exactly one"), "{e}");
    let e = provider(&format!("{BASE}private_key_jwt: {{ key_file: k.pem }}\n")).unwrap_err();
    assert!(e.contains("exactly one"), "{e}");
    let p = provider(&BASE.replace(
        "client_secret_file: s",
        "private_key_jwt: { key_file: k.pem, kid: k1 }",
    ))
    .unwrap();
    assert_eq!(
        p.client_auth,
        crate::provider::ClientAuth::PrivateKeyJwt {
            key_file: "k.pem".into(),
            kid: Some("k1".into())
        }
    );
    let e = provider(&BASE.replace("mercy-sso", "Mercy SSO")).unwrap_err();
    assert!(e.contains("lowercase"), "{e}");
}

#[test]
fn groups_overage_is_told_apart_from_no_groups() {
    let p = provider(BASE).unwrap();
    let m = |v: Value| v.as_object().unwrap().clone();
    assert_eq!(p.groups(&m(json!({}))), Groups::Absent);
    assert_eq!(
        p.groups(&m(json!({"groups": ["a", "b"]}))),
        Groups::Listed(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        p.groups(&m(json!({"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph"}}}))),
        Groups::Overage
    );
    assert_eq!(
        p.email(&m(json!({"email": "a@x.org", "email_verified": false}))),
        None
    );
    assert_eq!(p.email(&m(json!({"email": "a@x.org"}))), None, "unverified");
    assert_eq!(
        p.email(&m(json!({"email": "a@x.org", "email_verified": true}))),
        Some("a@x.org")
    );
}

#[test]
fn discovery_must_name_the_configured_issuer() {
    let doc = |iss: &str| {
        json!({"issuer": iss, "authorization_endpoint": format!("{ISS}/auth"), "token_endpoint": format!("{ISS}/token"), "jwks_uri": format!("{ISS}/certs"), "code_challenge_methods_supported": ["S256"]}).to_string()
    };
    assert!(Metadata::parse(doc(ISS).as_bytes(), ISS).is_ok());
    assert!(Metadata::parse(doc("https://evil.example").as_bytes(), ISS).is_err());
    let plain = doc(ISS).replace(
        "https://sso.example.org/realms/mercy/token",
        "http://sso.example.org/token",
    );
    assert!(Metadata::parse(plain.as_bytes(), ISS).is_err());
    let no_s256 = doc(ISS).replace("\"S256\"", "\"plain\"");
    assert!(Metadata::parse(no_s256.as_bytes(), ISS).is_err());
}

#[test]
fn pkce_challenges_follow_rfc_7636() {
    // RFC 7636 appendix B.
    assert_eq!(
        pkce::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let a = pkce::random();
    assert_eq!(a.len(), 43);
    assert_ne!(a, pkce::random());
}

#[test]
fn client_assertions_verify_with_the_clients_public_key() {
    let rng = SystemRandom::new();
    let doc =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = crate::client_auth::ClientKey::from_pkcs8(doc.as_ref()).unwrap();
    assert_eq!(key.alg(), "ES256");
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        doc.as_ref(),
        &rng,
    )
    .unwrap();
    let point = pair.public_key().as_ref();
    let set = JwkSet::parse(
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "c1", "x": b64(&point[1..33]), "y": b64(&point[33..])}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let a = key
        .assertion(
            CLIENT,
            "https://sso.example.org/token",
            NOW,
            "j1",
            Some("c1"),
        )
        .unwrap();
    let claims = crate::jwt::decode(&a).unwrap().verify(&set).unwrap();
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["aud"], "https://sso.example.org/token");
    assert_eq!(claims["exp"], NOW + 60);
    assert_eq!(
        crate::client_auth::ClientKey::from_pkcs8(RSA_PK8)
            .unwrap()
            .alg(),
        "RS256"
    );
    assert!(crate::client_auth::ClientKey::from_pkcs8(b"junk").is_err());
}
