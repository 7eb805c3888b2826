//! Signed JWTs (JWS compact form) checked against a provider's JSON Web Key Set with `ring`.
//!
//! The algorithm is pinned to the key: an RSA key verifies only RS*/PS*, a P-256 key only
//! ES256, a P-384 key only ES384, an Ed25519 key only EdDSA. `none` and every HMAC algorithm
//! are refused before any key is looked at, so a token cannot pick a weaker check (the
//! classic "HS256 with the public key as the secret" confusion has nothing to land on).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest token accepted (a provider's ID token with many groups is a few KiB).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `none`, HMAC or an algorithm this gateway does not verify.
    #[error("algorithm {0:?} is not accepted (asymmetric signatures only)")]
    Algorithm(String),
    /// A header field this gateway does not understand and must (`crit`).
    #[error("critical header extension not understood")]
    Critical,
    /// No key in the set has this id: the provider may have rotated its keys.
    #[error("no key {0:?} in the provider's key set")]
    UnknownKey(Option<String>),
    /// The key found cannot verify this algorithm (wrong type, curve or use).
    #[error("key {0:?} does not fit algorithm {1}")]
    KeyMismatch(Option<String>, String),
    /// The signature does not verify (with the key id the token named, if any).
    #[error("signature does not verify")]
    Signature(Option<String>),
}

/// The header fields looked at.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// The algorithm.
    pub alg: String,
    /// The key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The media type (`logout+jwt` for logout tokens).
    #[serde(default)]
    pub typ: Option<String>,
    /// Extensions the verifier must understand.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// One key of a JWK Set (RFC 7517); only the members used for verification.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// The key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// `sig` (or absent); `enc` keys never verify.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// The algorithm the key is meant for, if the provider says.
    #[serde(default)]
    pub alg: Option<String>,
    /// RSA modulus.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(default)]
    pub e: Option<String>,
    /// Curve (`P-256`, `P-384`, `Ed25519`).
    #[serde(default)]
    pub crv: Option<String>,
    /// EC x coordinate, or the Ed25519 public key.
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default)]
    pub y: Option<String>,
}

/// A provider's key set (`jwks_uri`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JwkSet {
    /// The keys; unknown key types are kept and never match.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses a key set document.
    pub fn parse(body: &[u8]) -> Result<JwkSet, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a JWK Set: {e}"))
    }

    /// Whether a key with this id is in the set.
    pub fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(k) => self.keys.iter().any(|j| j.kid.as_deref() == Some(k)),
            None => !self.keys.is_empty(),
        }
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    /// The header.
    pub header: Header,
    /// The claims.
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))
}

/// Splits and decodes a compact JWS.
pub fn decode(token: &str) -> Result<Unverified<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "not three parts (encrypted tokens are not accepted)",
        ));
    };
    let header: Header =
        serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed("header is not JSON"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(c)?)
        .map_err(|_| JwtError::Malformed("claims are not a JSON object"))?;
    let signature = b64(s)?;
    Ok(Unverified {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// The verification a JWS algorithm names, and the key family it needs.
enum Family {
    Rsa(&'static signature::RsaParameters),
    Ec(&'static str, &'static signature::EcdsaVerificationAlgorithm),
    Ed25519,
}

fn family(alg: &str) -> Option<Family> {
    Some(match alg {
        "RS256" => Family::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Family::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Family::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Family::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Family::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Family::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "ES256" => Family::Ec("P-256", &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => Family::Ec("P-384", &signature::ECDSA_P384_SHA384_FIXED),
        "EdDSA" | "Ed25519" => Family::Ed25519,
        _ => return None,
    })
}

impl Unverified<'_> {
    /// Verifies the signature with the key the header names, and returns the claims.
    pub fn verify(self, keys: &JwkSet) -> Result<Map<String, Value>, JwtError> {
        let alg = self.header.alg.as_str();
        let Some(fam) = family(alg) else {
            return Err(JwtError::Algorithm(alg.to_string()));
        };
        if self.header.crit.is_some() {
            return Err(JwtError::Critical);
        }
        let kid = self.header.kid.clone();
        let fits = |k: &&Jwk| {
            k.use_.as_deref().is_none_or(|u| u == "sig")
                && k.alg.as_deref().is_none_or(|a| a == alg)
                && match &fam {
                    Family::Rsa(_) => k.kty == "RSA",
                    Family::Ec(crv, _) => k.kty == "EC" && k.crv.as_deref() == Some(crv),
                    Family::Ed25519 => k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"),
                }
        };
        let key = match kid.as_deref() {
            Some(id) => {
                let Some(k) = keys.keys.iter().find(|k| k.kid.as_deref() == Some(id)) else {
                    return Err(JwtError::UnknownKey(kid));
                };
                if !fits(&k) {
                    return Err(JwtError::KeyMismatch(kid, alg.to_string()));
                }
                k
            }
            // No key id: only a set with exactly one fitting key is unambiguous.
            None => {
                let mut fitting = keys.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => k,
                    _ => return Err(JwtError::UnknownKey(None)),
                }
            }
        };
        let part = |v: &Option<String>| -> Result<Vec<u8>, JwtError> {
            let v = v
                .as_deref()
                .ok_or_else(|| JwtError::KeyMismatch(kid.clone(), alg.to_string()))?;
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|_| JwtError::KeyMismatch(kid.clone(), alg.to_string()))
        };
        let msg = self.signing_input.as_bytes();
        let ok = match fam {
            Family::Rsa(params) => {
                let c = signature::RsaPublicKeyComponents {
                    n: part(&key.n)?,
                    e: part(&key.e)?,
                };
                c.verify(params, msg, &self.signature).is_ok()
            }
            Family::Ec(_, algorithm) => {
                let (x, y) = (part(&key.x)?, part(&key.y)?);
                let size = if alg == "ES256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return Err(JwtError::KeyMismatch(kid, alg.to_string()));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                UnparsedPublicKey::new(algorithm, point)
                    .verify(msg, &self.signature)
                    .is_ok()
            }
            Family::Ed25519 => UnparsedPublicKey::new(&signature::ED25519, part(&key.x)?)
                .verify(msg, &self.signature)
                .is_ok(),
        };
        if ok {
            Ok(self.claims)
        } else {
            Err(JwtError::Signature(kid))
        }
    }
}
