//! `private_key_jwt` client authentication (OpenID Connect Core 1.0, 9; RFC 7523): the gateway
//! proves it is the client with a short JWT signed by its own key, so no shared secret sits in
//! a file on every instance.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};

/// How long an assertion is valid.
pub const ASSERTION_TTL_SECS: u64 = 60;

/// The gateway's client key: its algorithm follows from the key.
pub enum ClientKey {
    /// ECDSA P-256: ES256.
    Es256(EcdsaKeyPair),
    /// RSA: RS256.
    Rs256(RsaKeyPair),
    /// Ed25519: EdDSA.
    EdDsa(Ed25519KeyPair),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.alg())
    }
}

impl ClientKey {
    /// Reads a PKCS#8 private key (DER): P-256, RSA (2048 bits or more) or Ed25519.
    pub fn from_pkcs8(der: &[u8]) -> Result<ClientKey, String> {
        let rng = SystemRandom::new();
        if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            return Ok(ClientKey::Es256(k));
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            return Ok(ClientKey::Rs256(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(ClientKey::EdDsa(k));
        }
        Err("not a PKCS#8 P-256, RSA or Ed25519 private key".into())
    }

    /// The JWS algorithm.
    pub fn alg(&self) -> &'static str {
        match self {
            ClientKey::Es256(_) => "ES256",
            ClientKey::Rs256(_) => "RS256",
            ClientKey::EdDsa(_) => "EdDSA",
        }
    }

    /// A client assertion for `client_id` to present at `audience` (the token endpoint),
    /// issued at `now` (seconds), with the random `jti`. `kid` names the key at the provider.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: u64,
        jti: &str,
        kid: Option<&str>,
    ) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(k) = kid {
            header["kid"] = serde_json::json!(k);
        }
        let claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": audience, "jti": jti,
            "iat": now, "exp": now + ASSERTION_TTL_SECS,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            ClientKey::Es256(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "signing failed")?
                .as_ref()
                .to_vec(),
            ClientKey::Rs256(k) => {
                let mut s = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s)
                    .map_err(|_| "signing failed")?;
                s
            }
            ClientKey::EdDsa(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}
