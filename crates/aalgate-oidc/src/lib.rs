//! aalgate's OpenID Connect relying-party core: pure, synchronous, no I/O (the gateway fetches
//! discovery documents and key sets, and passes `now` in).
//!
//! - [`provider`]: `identity_providers:` entries validated into a [`Provider`], the honest
//!   [`AalMapping`] (AAL1 unless a rule says otherwise, never AAL3), the claims that name a
//!   person, and the discovery [`Metadata`].
//! - [`jwt`]: compact JWS verified with `ring` against a [`JwkSet`], the algorithm pinned to
//!   the key type.
//! - [`token`]: the claim checks of ID tokens and back-channel logout tokens.
//! - [`client_auth`]: `private_key_jwt` client assertions.
//! - [`pkce`]: the PKCE verifier and its S256 challenge (RFC 7636).

pub mod client_auth;
pub mod jwt;
pub mod provider;
pub mod token;

pub use jwt::{JwkSet, JwtError};
pub use provider::{AalMapping, Groups, Metadata, Provider, RawProvider};
pub use token::{
    verify_id_token, verify_logout_token, IdClaims, IdTokenCheck, LogoutClaims, TokenError,
};

/// PKCE (RFC 7636) with the S256 method.
pub mod pkce {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rand::RngCore as _;
    use sha2::Digest as _;

    /// A new random value for `state`, `nonce` or the code verifier: 32 bytes, base64url
    /// (43 characters, within RFC 7636's 43 to 128).
    pub fn random() -> String {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The S256 challenge of a verifier.
    pub fn challenge(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
    }
}

#[cfg(test)]
mod tests;
