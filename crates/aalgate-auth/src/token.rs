//! One-time secrets (invite tokens, handoff codes, browser bindings): 256 random bits, shown
//! once, stored only as a SHA-256 hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A 256-bit secret in its URL form (43 base64url characters).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh token from the OS random generator.
    pub fn generate() -> Token {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Token(URL_SAFE_NO_PAD.encode(b))
    }

    /// Parses a token from a URL or form; anything but 43 base64url characters is refused.
    pub fn parse(s: &str) -> Option<Token> {
        (s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|v| v.len() == 32))
            .then(|| Token(s.to_string()))
    }

    /// The secret, for a URL or a cookie. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps: a hex SHA-256, useless to whoever reads a dump.
    pub fn hash(&self) -> String {
        hash_str(&self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// Hex SHA-256 of a string.
pub fn hash_str(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Token::generate();
        assert_eq!(Token::parse(t.expose()), Some(t.clone()));
        assert_ne!(t, Token::generate());
        assert_eq!(t.hash().len(), 64);
        assert!(!format!("{t:?}").contains(t.expose()));
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &format!("{}=", &t.expose()[..42]),
            &"*".repeat(43),
        ] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
    }
}
