//! Secret identifiers (cookie values, flow ids) and the hashes stores are keyed by.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

fn random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn decode_32(s: &str) -> Option<[u8; 32]> {
    // 32 bytes are exactly 43 base64url characters without padding.
    if s.len() != 43 {
        return None;
    }
    let v = URL_SAFE_NO_PAD.decode(s).ok()?;
    v.try_into().ok()
}

fn hash_hex(b: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(b);
    let mut s = String::with_capacity(64);
    for x in d {
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 15)] as char);
    }
    s
}

/// A 256-bit random session id: the cookie value. Never stored, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

impl SessionId {
    /// A fresh id from the OS random generator.
    pub fn generate() -> SessionId {
        SessionId(random_32())
    }

    /// Parses a cookie value; anything but 43 base64url characters is refused.
    pub fn from_cookie(s: &str) -> Option<SessionId> {
        decode_32(s).map(SessionId)
    }

    /// The cookie value.
    pub fn to_cookie(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The store key.
    pub fn key(&self) -> SessionKey {
        SessionKey(hash_hex(&self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<secret>)")
    }
}

/// The SHA-256 (hex) of a [`SessionId`]: what stores and indexes hold. Shared, so that the
/// request path copies it without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(std::sync::Arc<str>);

impl SessionKey {
    /// The hex string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key read back from a store index (64 lowercase hex digits).
    pub fn from_hex(s: &str) -> Option<SessionKey> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| SessionKey(s.into()))
    }
}

/// A 256-bit random id of a pending authentication flow (`/.aalgate/auth?flow=...`).
#[derive(Clone, PartialEq, Eq)]
pub struct FlowId([u8; 32]);

impl FlowId {
    /// A fresh id.
    pub fn generate() -> FlowId {
        FlowId(random_32())
    }

    /// Parses the `flow` query parameter.
    pub fn parse(s: &str) -> Option<FlowId> {
        decode_32(s).map(FlowId)
    }

    /// As it appears in URLs.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The store key.
    pub fn key(&self) -> String {
        hash_hex(&self.0)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowId(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip_and_refusals() {
        let id = SessionId::generate();
        let c = id.to_cookie();
        assert_eq!(c.len(), 43);
        assert_eq!(SessionId::from_cookie(&c), Some(id.clone()));
        assert_ne!(SessionId::generate(), id);
        assert_eq!(id.key().as_str().len(), 64);
        // SHA-256 of 32 zero bytes, as every other tool writes it.
        assert_eq!(
            hash_hex(&[0; 32]),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert!(SessionKey::from_hex(id.key().as_str()).is_some());
        for bad in [
            "",
            "abc",
            &c[..42],
            &format!("{c}A"),
            &c.replace(|_: char| true, "+"),
            "0000000000000000000000000000000000000000000=",
            &"\u{e9}".repeat(22),
        ] {
            assert!(SessionId::from_cookie(bad).is_none(), "{bad:?}");
        }
        assert_eq!(format!("{id:?}"), "SessionId(<secret>)");
        assert!(SessionKey::from_hex("ABCD").is_none());
    }
}
