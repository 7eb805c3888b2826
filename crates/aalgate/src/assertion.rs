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
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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
    /// Expires at.
    pub exp: u64,
}

/// Signs assertions and serves the public key.
pub struct Signer {
    key: EncodingKey,
    header: Header,
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
        let der = signing
            .to_pkcs8_der()
            .context("cannot encode signing key")?;
        let public = signing.verifying_key().to_bytes();
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let jwks = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": URL_SAFE_NO_PAD.encode(public) }]
        })
        .to_string();
        Ok(Signer {
            key: EncodingKey::from_ed_der(der.as_bytes()),
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
    ) -> Result<String, jsonwebtoken::errors::Error> {
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
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
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
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn signs_and_verifies_against_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let s = Signer::load_or_create(&path, "https://gw.example").unwrap();
        let again = Signer::load_or_create(&path, "https://gw.example").unwrap();
        assert_eq!(s.jwks(), again.jwks(), "the key is reused, not regenerated");
        let now = Timestamp::now();
        let session = Session {
            user: "alice".into(),
            aal: Aal::Aal2,
            amr: vec!["hwk".into()],
            credential: None,
            auth_time: now,
            last_auth: now,
            last_seen: now,
            expires_at: now.plus(Duration::from_secs(60)),
        };
        let token = s.sign(&session, "billing", now).unwrap();
        let jwks: serde_json::Value = serde_json::from_str(s.jwks()).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let key = DecodingKey::from_ed_components(x).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["billing"]);
        v.set_issuer(&["https://gw.example"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["acr"], "aal2");
        v.set_audience(&["ehr"]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).is_err(),
            "aud binds the app"
        );
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
