//! Keeping a submitted form across sign-in (WCAG 2.2.5: nothing typed is lost), and only
//! where that cannot be turned against the person.
//!
//! A POST, PUT or PATCH page navigation that has to sign in, step up or re-authenticate is
//! kept only when both hold:
//! - the browser says it came from the app's own origin ([`evidence`]): `Origin`, else
//!   `Sec-Fetch-Site: same-origin`, else (neither header sent) a same-origin `Referer`. A
//!   cross-site form would otherwise be replayed by the gateway itself, past SameSite cookies
//!   and the app's CSRF defences;
//! - the browser had a session of a known person (expired, idle, or needing step-up or
//!   re-auth), to whom the kept request is bound. An anonymous POST is never kept, so nobody
//!   without a session can fill the store.
//!
//! What is kept: method, URL, a few headers, the app's own cookies of that request (so that
//! path-scoped session and CSRF cookies still match the form) and the body up to
//! `preserve_body_limit` (default 1 MiB), encrypted with AES-256-GCM under a key only the
//! gateway holds (`<state_dir>/request-key`; it may hold patient data), in the store for at most
//! 10 minutes, bound to the flow, the browser and the person, within a store-wide and a
//! per-person byte quota. After the ceremony the browser lands on `/.aalgate/resume?kept=...`
//! on the app host, which checks browser, person and policy again, and sends the request
//! upstream once, streaming the answer back: at once after a touch of the person's key in this
//! flow, or after a same-origin confirmation when the flow ended silently (a handoff from an
//! existing session). A refresh, Back or a second tab finds nothing and sends nothing. A body
//! over the limit is not kept at all (the upstream never sees a partial request).

use std::path::Path;

use anyhow::{Context, Result};
use http::HeaderMap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Default of `preserve_body_limit`.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default of `preserve_quota`: kept bytes in the whole store.
pub const DEFAULT_QUOTA: u64 = 256 * 1024 * 1024;
/// Default of `preserve_person_quota`: kept bytes of one person.
pub const DEFAULT_PERSON_QUOTA: u64 = 16 * 1024 * 1024;
/// Default of `preserve_concurrent_reads`: bodies read at once to keep them.
pub const DEFAULT_CONCURRENT_READS: usize = 16;
/// Longest kept URL (path and query); a longer one gets 414 before any flow is stored.
pub const MAX_URL: usize = 8 * 1024;

/// Request headers kept with the body (the rest are recomputed or come from the resuming
/// request).
pub const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "accept-language",
    "referer",
    "origin",
];

/// A kept request.
#[derive(Debug, PartialEq, Eq)]
pub struct KeptRequest {
    /// `POST`, `PUT` or `PATCH`.
    pub method: String,
    /// Normalized path and query.
    pub url: String,
    /// The host it was sent to (canonical, with its port).
    pub host: String,
    /// Kept headers.
    pub headers: Vec<(String, String)>,
    /// The app's cookies of the original request (the gateway's removed), sent again on
    /// resume; on a name in both, these win, so a CSRF cookie still matches its form.
    pub cookies: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// The person whose session was interrupted; only that person's sign-in sends it.
    pub user: String,
    /// SHA-256 of the browser-binding cookie: only this browser resumes it.
    pub browser: String,
    /// The id of the request that was kept: its replay's audit line links to it.
    pub request_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    method: String,
    url: String,
    host: String,
    headers: Vec<(String, String)>,
    cookies: Option<String>,
    user: String,
    browser: String,
    /// Absent in forms kept before this field existed (they live 10 minutes).
    #[serde(default)]
    request_id: String,
}

impl KeptRequest {
    /// A length-prefixed JSON head, then the body as raw bytes (never a JSON array of numbers:
    /// a stored record is about the size of its body).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&Meta {
            method: self.method.clone(),
            url: self.url.clone(),
            host: self.host.clone(),
            headers: self.headers.clone(),
            cookies: self.cookies.clone(),
            user: self.user.clone(),
            browser: self.browser.clone(),
            request_id: self.request_id.clone(),
        })?;
        let mut out = Vec::with_capacity(4 + meta.len() + self.body.len());
        out.extend_from_slice(&u32::try_from(meta.len())?.to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// The inverse of [`KeptRequest::encode`]; `None` if malformed.
    pub fn decode(raw: &[u8]) -> Option<KeptRequest> {
        let len = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?) as usize;
        let meta: Meta = serde_json::from_slice(raw.get(4..4usize.checked_add(len)?)?).ok()?;
        Some(KeptRequest {
            method: meta.method,
            url: meta.url,
            host: meta.host,
            headers: meta.headers,
            cookies: meta.cookies,
            body: raw[4 + len..].to_vec(),
            user: meta.user,
            browser: meta.browser,
            request_id: meta.request_id,
        })
    }
}

/// Why a submitted form was not kept. The name is the flow's marker, the metric label and the
/// key of the page that explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotKept {
    /// Not shown to come from the app's own origin.
    CrossSite,
    /// No session of a known person.
    Anonymous,
    /// Over `preserve_body_limit`.
    TooLarge,
    /// The store-wide or the person's quota is used up.
    Quota,
    /// Too many forms being read at once.
    Busy,
}

impl NotKept {
    /// Every reason.
    pub const ALL: [NotKept; 5] = [
        NotKept::CrossSite,
        NotKept::Anonymous,
        NotKept::TooLarge,
        NotKept::Quota,
        NotKept::Busy,
    ];

    /// Marker, metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NotKept::CrossSite => "cross_site",
            NotKept::Anonymous => "anonymous",
            NotKept::TooLarge => "too_large",
            NotKept::Quota => "quota",
            NotKept::Busy => "busy",
        }
    }

    /// The reason of a marker.
    pub fn parse(s: &str) -> Option<NotKept> {
        NotKept::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// What the person is told after signing in (the form was not sent).
    pub fn explain(self) -> &'static str {
        match self {
            NotKept::CrossSite => "The form was sent to this application from another site, not from the application's own pages, so the gateway did not send it. If you did not mean to submit anything, you need do nothing. If you did, open the form in the application and submit it again.",
            NotKept::Anonymous => "You were not signed in when the form was submitted, so it was not kept. Open the form in the application and submit it again.",
            NotKept::TooLarge => "The form you sent was too large to keep during sign-in, so it was not sent. Go back to the form (your browser's Back button), check it, and submit it again.",
            NotKept::Quota => "Too many forms are waiting for a sign-in right now, so yours could not be kept and was not sent. Go back to the form (your browser's Back button), check it, and submit it again.",
            NotKept::Busy => "The gateway was busy keeping other forms, so yours was not kept and was not sent. Go back to the form (your browser's Back button), check it, and submit it again.",
        }
    }
}

/// What the browser says about where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// From the app's own origin.
    SameOrigin,
    /// From another origin, or no evidence at all.
    Foreign,
}

/// The origin of an `http(s)` URL (scheme, host, port with the scheme's default filled in),
/// as the URL standard defines it.
fn origin_of(url: &str) -> Option<url::Origin> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some(u.origin())
}

/// Whether a request comes from `own` (`scheme://host[:port]` of the app as browsers see it):
/// `Origin` when it names an origin; else `Sec-Fetch-Site`; else, only when the browser sent
/// neither header, a same-origin `Referer`. A `Sec-Fetch-Site` other than `same-origin` always
/// refuses, whatever `Origin` says.
pub fn evidence(headers: &HeaderMap, own: &str) -> Evidence {
    let get = |n: &str| {
        let mut all = headers.get_all(n).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.to_str().unwrap_or("\0")),
            (None, _) => None,
            // Two values: no evidence.
            _ => Some("\0"),
        }
    };
    let Some(own) = origin_of(own) else {
        return Evidence::Foreign;
    };
    let same = |v: &str| origin_of(v).is_some_and(|o| o == own);
    let site = get("sec-fetch-site");
    if site.is_some_and(|s| s != "same-origin") {
        return Evidence::Foreign;
    }
    let ok = match (get("origin"), site) {
        (Some(o), _) if o != "null" => same(o),
        (Some(_), s) => s == Some("same-origin"),
        (None, Some(_)) => true,
        (None, None) => get("referer").is_some_and(same),
    };
    if ok {
        Evidence::SameOrigin
    } else {
        Evidence::Foreign
    }
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
        // One buffer, sized once: a kept form is up to the body limit, and up to
        // `preserve_concurrent_reads` of them are sealed at once.
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
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

    #[test]
    fn kept_requests_round_trip_as_bytes() {
        let k = KeptRequest {
            method: "POST".into(),
            url: "/a?b=1".into(),
            host: "ehr.example:8443".into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            cookies: Some("JSESSIONID=1".into()),
            body: vec![0, 255, 10, 13],
            user: "nora".into(),
            browser: "h".into(),
            request_id: "r".into(),
        };
        let raw = k.encode().unwrap();
        assert!(raw.len() < 200 + k.body.len());
        assert_eq!(KeptRequest::decode(&raw).unwrap(), k);
        let big = KeptRequest {
            body: vec![b'x'; 1 << 20],
            ..k
        };
        assert!(
            big.encode().unwrap().len() < (1 << 20) + 300,
            "no JSON array of numbers"
        );
        for bad in [&b""[..], b"\x05\0\0\0{}", b"\xff\xff\xff\xff"] {
            assert!(KeptRequest::decode(bad).is_none());
        }
    }

    #[test]
    fn only_same_origin_evidence_counts() {
        let own = "http://ehr.localhost:8080";
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(
                    http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            evidence(&m, own)
        };
        use Evidence::*;
        assert_eq!(h(&[("origin", own)]), SameOrigin);
        assert_eq!(h(&[("origin", "HTTP://EHR.localhost:8080")]), SameOrigin);
        assert_eq!(
            h(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
            SameOrigin
        );
        assert_eq!(h(&[("sec-fetch-site", "same-origin")]), SameOrigin);
        assert_eq!(
            h(&[("referer", "http://ehr.localhost:8080/form?x")]),
            SameOrigin
        );
        assert_eq!(h(&[("sec-fetch-site", "same-site")]), Foreign);
        assert_eq!(
            h(&[("origin", own), ("sec-fetch-site", "cross-site")]),
            Foreign
        );
        assert_eq!(h(&[("origin", "null")]), Foreign);
        assert_eq!(
            h(&[
                ("origin", "null"),
                ("referer", "http://ehr.localhost:8080/")
            ]),
            Foreign
        );
        assert_eq!(
            h(&[("referer", "http://evil.example/http://ehr.localhost:8080/")]),
            Foreign
        );
        assert_eq!(
            h(&[("referer", "http://ehr.localhost:8080@evil.example/")]),
            Foreign
        );
        assert_eq!(h(&[("origin", "https://ehr.localhost:8080")]), Foreign);
        assert_eq!(h(&[("origin", "http://ehr.localhost:8081")]), Foreign);
        assert_eq!(h(&[("origin", "http://ehr.localhost")]), Foreign);
        assert_eq!(h(&[("origin", own), ("origin", own)]), Foreign);
        assert_eq!(h(&[]), Foreign);
        // Default ports are the same origin written two ways.
        let m = {
            let mut m = HeaderMap::new();
            m.insert("origin", "https://ehr.example".parse().unwrap());
            m
        };
        assert_eq!(evidence(&m, "https://ehr.example:443"), SameOrigin);
    }
}
