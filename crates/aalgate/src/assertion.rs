//! The identity assertion sent upstream: a short-lived EdDSA JWT, and the JWKS that verifies it.
//!
//! The Ed25519 key is a PKCS#8 PEM file (mode 0600), created on first start when missing.
//! Several instances sharing Redis must share the file too, so that any JWKS verifies any token.

use std::path::Path;
use std::time::Duration;

use aalgate_policy::Timestamp;
use aalgate_session::Session;
use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How long an assertion is valid: long enough for one upstream request, short enough that a
/// leaked header is useless soon.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The claims upstream apps can rely on.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    /// The gateway's public origin.
    pub iss: &'a str,
    /// The user.
    pub sub: &'a str,
    /// The app id.
    pub aud: &'a str,
    /// `aal1`, `aal2` or `aal3`.
    pub acr: &'a str,
    /// Authentication methods (RFC 8176).
    pub amr: &'a [String],
    /// When the session authenticated.
    pub auth_time: u64,
    /// Issued at.
    pub iat: u64,
    /// Present (true) on an emergency (break-glass) session.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub breakglass: bool,
    /// On a request a per-request ceremony signed (`step_up: { per_request: true }`): its
    /// digest, as in `X-Aalgate-Request-Digest`, so the signed identity covers it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<&'a str>,
    /// The person's groups that the app's policy names (never the others): present when the
    /// policy names any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<&'a [String]>,
    /// The person's e-mail address, when IT set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    /// Expires at.
    pub exp: u64,
}

/// What the assertion says of a person besides the session: their groups the app may know
/// of, and their e-mail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity<'a> {
    /// `None`: the app's policy names no group.
    pub groups: Option<&'a [String]>,
    pub email: Option<&'a str>,
}

/// Signs assertions and serves the public key.
pub struct Signer {
    key: SigningKey,
    /// The encoded protected header, `{"alg":"EdDSA","kid":...,"typ":"JWT"}`.
    header: String,
    jwks: String,
    issuer: String,
}

impl Signer {
    /// Loads the key at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<Signer> {
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read signing key {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem)
                .with_context(|| format!("{} is not an Ed25519 PKCS#8 PEM key", path.display()))?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .context("cannot encode the new signing key")?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            write_private(path, pem.as_bytes())
                .with_context(|| format!("cannot write signing key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new assertion signing key");
            key
        };
        let public = signing.verifying_key().to_bytes();
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
        let header = URL_SAFE_NO_PAD
            .encode(serde_json::json!({ "typ": "JWT", "alg": "EdDSA", "kid": kid }).to_string());
        let jwks = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": URL_SAFE_NO_PAD.encode(public) }]
        })
        .to_string();
        Ok(Signer {
            key: signing,
            header,
            jwks,
            issuer: issuer.to_string(),
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Signs an assertion for `session` on `app`.
    pub fn sign(
        &self,
        session: &Session,
        app: &str,
        now: Timestamp,
    ) -> Result<String, serde_json::Error> {
        self.sign_request(session, Identity::default(), app, now, None)
    }

    /// As [`Signer::sign`], for one request a per-request ceremony signed (never cached).
    pub fn sign_request(
        &self,
        session: &Session,
        who: Identity<'_>,
        app: &str,
        now: Timestamp,
        request_digest: Option<&str>,
    ) -> Result<String, serde_json::Error> {
        let claims = Claims {
            iss: &self.issuer,
            sub: &session.user,
            aud: app,
            acr: session.aal.as_str(),
            amr: &session.amr,
            auth_time: session.auth_time.0,
            iat: now.0,
            exp: now.plus(ASSERTION_LIFETIME).0,
            breakglass: session.amr.iter().any(|m| m == "breakglass"),
            request_digest,
            groups: who.groups,
            email: who.email,
        };
        Ok(self.compact_jws(&serde_json::to_vec(&claims)?))
    }

    /// A JWS in compact serialization (RFC 7515 section 7.1) with EdDSA over Ed25519
    /// (RFC 8037): `header.payload.signature`, each part base64url without padding.
    /// Hand-assembled because the JWT crates pull an RSA implementation with an open
    /// advisory (RUSTSEC-2023-0071); Ed25519 signing itself is ed25519-dalek's.
    fn compact_jws(&self, payload: &[u8]) -> String {
        let mut out = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 90);
        out.push_str(&self.header);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut out);
        let signature = self.key.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
        out
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aalgate_policy::Aal;
    use ed25519_dalek::{Signature, VerifyingKey};

    /// RFC 8037 appendix A.4: Ed25519 is deterministic, so the JWS must match byte for byte.
    #[test]
    fn matches_the_rfc_8037_example() {
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let key = SigningKey::from_bytes(&d.try_into().unwrap());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let s = Signer {
            key,
            header: URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#),
            jwks: String::new(),
            issuer: String::new(),
        };
        assert_eq!(
            s.compact_jws(b"Example of Ed25519 signing"),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn signs_and_verifies_against_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let s = Signer::load_or_create(&path, "https://gw.example").unwrap();
        let again = Signer::load_or_create(&path, "https://gw.example").unwrap();
        assert_eq!(s.jwks(), again.jwks(), "the key is reused, not regenerated");
        let now = Timestamp::wall();
        let session = Session {
            user: "alice".into(),
            aal: Aal::Aal2,
            amr: vec!["hwk".into()],
            credential: None,
            // Each time distinct from the signing time, so a claim taken from the wrong one
            // shows.
            auth_time: Timestamp(now.0 - 3000),
            last_auth: Timestamp(now.0 - 200),
            last_seen: Timestamp(now.0 - 10),
            expires_at: now.plus(Duration::from_secs(600)),
        };
        let token = s.sign(&session, "billing", now).unwrap();
        let jwks: serde_json::Value = serde_json::from_str(s.jwks()).unwrap();
        let x = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let public = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        public.verify_strict(signed.as_bytes(), &sig).unwrap();
        let mut tampered = signed.to_string();
        tampered.push('A');
        assert!(public.verify_strict(tampered.as_bytes(), &sig).is_err());
        let (header, claims) = signed.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["acr"], "aal2");
        assert_eq!(claims["aud"], "billing");
        assert_eq!(claims["iss"], "https://gw.example");
        assert_eq!(claims["exp"].as_u64(), Some(now.0 + 60));
        assert_eq!(claims["iat"].as_u64(), Some(now.0));
        assert_eq!(claims["auth_time"].as_u64(), Some(now.0 - 3000));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
