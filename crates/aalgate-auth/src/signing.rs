//! Request signing (`step_up: { per_request: true }`): a WebAuthn ceremony whose challenge is
//! derived from the request it approves, and the evidence an auditor checks offline later.
//!
//! - The **request digest** is SHA-256 over a fixed, length-prefixed encoding of a secret
//!   random *request nonce*, the method, the normalized URL and the body (or a marker that the
//!   body was not seen: script calls are not kept, so their ceremony binds method and URL only).
//!   The nonce goes to the app with the request (`X-Aalgate-Request-Nonce`), never to the audit
//!   log, so the log holds a digest nobody can test guesses against (a short prescription form
//!   has little entropy), while the app, from its own record, can recompute it.
//! - The **challenge** is SHA-256 of a domain string, the digest and a public random *ceremony
//!   nonce* (new for every ceremony start, so no two ceremonies share a challenge). The
//!   authenticator signs `authenticatorData || SHA-256(clientDataJSON)`, and `clientDataJSON`
//!   holds the challenge: the signature covers the digest.
//! - The **evidence** in the audit event is what [`verify`] needs beside the credential's public
//!   key: digest, ceremony nonce, credential id, `authenticatorData`, `clientDataJSON` and the
//!   signature.

use aalgate_session::RequestBinding;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{Credential as WaCredential, Passkey};

const DIGEST_DOMAIN: &[u8] = b"aalgate request digest v1\0";
const CHALLENGE_DOMAIN: &[u8] = b"aalgate request challenge v1\0";

/// 32 random bytes.
pub fn nonce() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The inverse of [`b64`] for a 32-byte value.
pub fn b64_32(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

fn lp(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The request digest over the app's canonical `host` (host:port), the method, the normalized
/// path and query, and the body. `body: None`: the request had none (a GET).
pub fn request_digest(
    nonce: &[u8; 32],
    method: &str,
    host: &str,
    url: &str,
    body: Option<&[u8]>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DIGEST_DOMAIN);
    h.update(nonce);
    lp(&mut h, host.as_bytes());
    lp(&mut h, method.as_bytes());
    lp(&mut h, url.as_bytes());
    match body {
        Some(b) => {
            h.update([1u8]);
            lp(&mut h, b);
        }
        None => h.update([0u8]),
    }
    h.finalize().into()
}

/// The WebAuthn challenge of a ceremony for the request with `digest`. The method and the
/// path as the audit log writes them (redacted) are mixed in too, so that what an auditor
/// reads in the event is covered by the signature.
pub fn challenge(
    digest: &[u8; 32],
    ceremony_nonce: &[u8; 32],
    method: &str,
    path: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHALLENGE_DOMAIN);
    h.update(digest);
    h.update(ceremony_nonce);
    lp(&mut h, method.as_bytes());
    lp(&mut h, path.as_bytes());
    h.finalize().into()
}

/// A new binding of the request under a fresh request nonce (plain: the caller seals the
/// nonce before storing it).
pub fn bind(method: &str, host: &str, url: &str, body: Option<&[u8]>) -> RequestBinding {
    let n = nonce();
    RequestBinding {
        nonce: b64(&n),
        digest: b64(&request_digest(&n, method, host, url, body)),
        body: body.is_some(),
    }
}

/// Whether `b` (with its plain nonce) is the binding of this request.
pub fn matches(
    b: &RequestBinding,
    method: &str,
    host: &str,
    url: &str,
    body: Option<&[u8]>,
) -> bool {
    let (Some(n), Some(d)) = (b64_32(&b.nonce), b64_32(&b.digest)) else {
        return false;
    };
    body.is_some() == b.body && request_digest(&n, method, host, url, body) == d
}

/// The challenge of a ceremony for `b`; `None` if `b` is malformed.
pub fn challenge_of(
    b: &RequestBinding,
    ceremony_nonce: &[u8; 32],
    method: &str,
    path: &str,
) -> Option<[u8; 32]> {
    Some(challenge(&b64_32(&b.digest)?, ceremony_nonce, method, path))
}

/// The evidence an audit event keeps: enough, with the credential's public key, to check
/// offline that this key approved the request with this digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Format version (1).
    pub v: u8,
    /// The method, as the challenge covers it.
    pub method: String,
    /// The path as the audit log writes it (redacted, no query), as the challenge covers it.
    pub path: String,
    /// The request digest, base64url.
    pub digest: String,
    /// Whether the request had a body (the digest covers it).
    pub body: bool,
    /// The ceremony nonce, base64url.
    pub ceremony_nonce: String,
    /// The credential id, base64url (as `users list` shows it).
    pub credential_id: String,
    /// `authenticatorData`, base64url.
    pub authenticator_data: String,
    /// `clientDataJSON`, base64url.
    pub client_data_json: String,
    /// The assertion signature, base64url.
    pub signature: String,
}

/// Why evidence does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A field is not valid base64url or has the wrong length.
    #[error("the evidence is malformed: {0}")]
    Malformed(&'static str),
    /// An evidence format this version does not know.
    #[error("evidence version {0} is not known to this aalgate (1)")]
    Version(u8),
    /// `clientDataJSON` names another challenge than the digest and nonce give.
    #[error("clientDataJSON's challenge is not derived from this digest and ceremony nonce")]
    Challenge,
    /// `clientDataJSON` is not a sign-in (`webauthn.get`) at the expected origin.
    #[error("clientDataJSON is not a webauthn.get at {0}")]
    Origin(String),
    /// The authenticator data is for another relying party.
    #[error("authenticatorData is for another RP id than {0}")]
    RpId(String),
    /// The user was not present and verified.
    #[error("the authenticator did not report user presence and verification")]
    Flags,
    /// The signature does not verify with this public key.
    #[error("the signature does not verify with the credential's public key")]
    Signature,
    /// The request given does not hash to the digest.
    #[error("the request given does not hash to the event's digest")]
    Digest,
}

/// The request as the app recorded it, to check a digest against.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    /// The request nonce (`X-Aalgate-Request-Nonce`).
    pub nonce: &'a str,
    /// The method.
    pub method: &'a str,
    /// The host (and port) the app is served on.
    pub host: &'a str,
    /// The path and query.
    pub url: &'a str,
    /// The body, if the request had one.
    pub body: Option<&'a [u8]>,
}

/// Checks `e` against the credential `key`, for relying party `rp_id` at `origin` (the auth
/// origin): the signature, the challenge's derivation from the digest, the method and path,
/// the ceremony type and origin, the RP id and the user-verified flag. With `request` (as the
/// app recorded it), also that the digest is that request's.
pub fn verify(
    e: &Evidence,
    key: &Passkey,
    rp_id: &str,
    origin: &str,
    request: Option<Recorded<'_>>,
) -> Result<(), VerifyError> {
    if e.v != 1 {
        return Err(VerifyError::Version(e.v));
    }
    let dec = |s: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| VerifyError::Malformed(what))
    };
    let digest = b64_32(&e.digest).ok_or(VerifyError::Malformed("digest"))?;
    let cn = b64_32(&e.ceremony_nonce).ok_or(VerifyError::Malformed("ceremony_nonce"))?;
    let auth_data = dec(&e.authenticator_data, "authenticator_data")?;
    let client_data = dec(&e.client_data_json, "client_data_json")?;
    let sig = dec(&e.signature, "signature")?;
    if let Some(r) = request {
        let n = b64_32(r.nonce).ok_or(VerifyError::Malformed("request nonce"))?;
        if r.method != e.method
            || r.body.is_some() != e.body
            || request_digest(&n, r.method, r.host, r.url, r.body) != digest
        {
            return Err(VerifyError::Digest);
        }
    }
    #[derive(Deserialize)]
    struct ClientData {
        #[serde(rename = "type")]
        type_: String,
        challenge: String,
        origin: String,
    }
    let cd: ClientData = serde_json::from_slice(&client_data)
        .map_err(|_| VerifyError::Malformed("client_data_json"))?;
    if cd.challenge != b64(&challenge(&digest, &cn, &e.method, &e.path)) {
        return Err(VerifyError::Challenge);
    }
    // Browsers write the origin bare; some authenticator libraries add a `/`.
    if cd.type_ != "webauthn.get" || cd.origin.trim_end_matches('/') != origin.trim_end_matches('/')
    {
        return Err(VerifyError::Origin(origin.to_string()));
    }
    // authenticatorData: rpIdHash (32), flags (1), signCount (4), ...
    if auth_data.len() < 37 {
        return Err(VerifyError::Malformed("authenticator_data"));
    }
    if auth_data[..32] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(VerifyError::RpId(rp_id.to_string()));
    }
    const UP: u8 = 0x01;
    const UV: u8 = 0x04;
    if auth_data[32] & (UP | UV) != (UP | UV) {
        return Err(VerifyError::Flags);
    }
    let mut signed = auth_data;
    signed.extend_from_slice(&Sha256::digest(&client_data));
    let cred: WaCredential = key.clone().into();
    match cred.cred.verify_signature(&sig, &signed) {
        Ok(true) => Ok(()),
        _ => Err(VerifyError::Signature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_bind_every_field_and_the_nonce() {
        let n = [7u8; 32];
        let h = "rx.example:443";
        let d = request_digest(&n, "POST", h, "/rx/1/sign", Some(b"dose=5mg"));
        for other in [
            request_digest(&[8u8; 32], "POST", h, "/rx/1/sign", Some(b"dose=5mg")),
            request_digest(&n, "PUT", h, "/rx/1/sign", Some(b"dose=5mg")),
            request_digest(
                &n,
                "POST",
                "ehr.example:443",
                "/rx/1/sign",
                Some(b"dose=5mg"),
            ),
            request_digest(&n, "POST", h, "/rx/2/sign", Some(b"dose=5mg")),
            request_digest(&n, "POST", h, "/rx/1/sign", Some(b"dose=50mg")),
            request_digest(&n, "POST", h, "/rx/1/sign", None),
        ] {
            assert_ne!(d, other);
        }
        // Length prefixes: moving bytes between fields changes the digest.
        assert_ne!(
            request_digest(&n, "POST", h, "/a", Some(b"b")),
            request_digest(&n, "POST", h, "/ab", Some(b""))
        );
        let b = bind("POST", h, "/rx/1/sign", Some(b"dose=5mg"));
        assert!(matches(&b, "POST", h, "/rx/1/sign", Some(b"dose=5mg")));
        assert!(!matches(&b, "POST", h, "/rx/1/sign", Some(b"dose=6mg")));
        assert!(!matches(&b, "POST", h, "/rx/1/sign", None));
        let c = challenge(&d, &[1u8; 32], "POST", "/rx/1/sign");
        assert_ne!(c, challenge(&d, &[2u8; 32], "POST", "/rx/1/sign"));
        assert_ne!(c, challenge(&d, &[1u8; 32], "POST", "/rx/9/sign"));
        assert_ne!(c, challenge(&d, &[1u8; 32], "PUT", "/rx/1/sign"));
    }
}
