//! Keeping a submitted form across sign-in (WCAG 2.2.5: nothing typed is lost).
//!
//! A POST, PUT or PATCH page navigation that has to sign in, step up or re-authenticate is kept:
//! method, URL, a few headers and the body up to `preserve_body_limit` (default 1 MiB),
//! encrypted with AES-256-GCM under a key only the gateway holds (`<state_dir>/request-key`; it
//! may hold patient data), in the store for at most 10 minutes, bound to the flow and the
//! browser. After the ceremony the browser lands on `/.aalgate/resume?kept=...` on the app
//! host, which takes the record once, checks browser, person and policy again, sends the
//! request upstream and streams the upstream's answer back. A refresh, Back or a second tab
//! finds nothing and sends nothing. A body over the limit is not kept at all (the upstream never
//! sees a partial request); the browser gets a page asking to submit again.

use std::path::Path;

use anyhow::{Context, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Default of `preserve_body_limit`.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Request headers kept with the body (the rest are recomputed or come from the resuming
/// request, e.g. the app's own cookies).
pub const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "accept-language",
    "referer",
    "origin",
];

/// A kept request.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeptRequest {
    /// `POST`, `PUT` or `PATCH`.
    pub method: String,
    /// Normalized path and query.
    pub url: String,
    /// The host it was sent to (canonical).
    pub host: String,
    /// Kept headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The person whose session was interrupted; another person's sign-in discards it.
    pub user: Option<String>,
    /// SHA-256 of the browser-binding cookie: only this browser resumes it.
    pub browser: String,
}

/// Encrypts and decrypts kept requests.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// Loads the key file, creating it (0600, 32 random bytes) if missing.
    pub fn load_or_create(path: &Path) -> Result<Sealer> {
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b)
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                use std::io::Write;
                match opts.open(path) {
                    Ok(mut f) => {
                        f.write_all(&b)?;
                        f.sync_all()?;
                        b
                    }
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path)?,
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot create {}", path.display()))
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Sealer::from_bytes(&bytes).with_context(|| format!("request key {}", path.display()))
    }

    /// A sealer with this 256-bit key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sealer> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| anyhow::anyhow!("the request key must be exactly 32 bytes"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Nonce, then ciphertext and tag. `aad` binds it to its store key.
    pub fn seal(&self, plain: &[u8], aad: &str) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The plaintext, or `None` if it was tampered with, belongs elsewhere, or the key changed.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (n, c) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = c.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Whether a method's request is kept across sign-in.
pub fn keeps(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_requests_open_only_with_their_key_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request-key");
        let a = Sealer::load_or_create(&path).unwrap();
        let again = Sealer::load_or_create(&path).unwrap();
        let sealed = a.seal(b"note=MRN 0012345 chest pain", "k1").unwrap();
        assert!(
            !sealed.windows(7).any(|w| w == b"MRN 001"),
            "no plaintext at rest"
        );
        assert_eq!(
            again.open(&sealed, "k1").unwrap(),
            b"note=MRN 0012345 chest pain"
        );
        assert!(a.open(&sealed, "k2").is_none(), "bound to its store key");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(a.open(&bad, "k1").is_none(), "tampering is detected");
        assert!(a.open(&sealed[..5], "k1").is_none());
        let other = Sealer::from_bytes(&[7u8; 32]).unwrap();
        assert!(
            other.open(&sealed, "k1").is_none(),
            "another key opens nothing"
        );
        assert!(Sealer::from_bytes(&[0u8; 16]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(keeps("POST") && keeps("PATCH") && !keeps("GET") && !keeps("DELETE"));
    }
}
