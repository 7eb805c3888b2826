//! Reading the session cookie out of `Cookie` headers (RFC 6265 section 5.4 pairs), and the
//! fuzz property that goes with it.

use crate::SessionId;

/// The values of cookie `name` across every `Cookie` header value, in order. Pairs are split
/// on `;`, names compared exactly (case-sensitive) after trimming, and values trimmed of
/// whitespace and of the optional DQUOTEs RFC 6265 allows. Values that are not UTF-8 are
/// skipped with their whole header.
pub fn cookie_values<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers {
        let Ok(v) = std::str::from_utf8(v) else {
            continue;
        };
        for pair in v.split(';') {
            if let Some((n, val)) = pair.trim().split_once('=') {
                if n.trim() == name {
                    out.push(val.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    out
}

/// Fuzz property: any bytes as a `Cookie` header give values that are trimmed, and a value
/// that parses as a session id has exactly one spelling (its own), so no two cookie strings
/// reach the same session.
#[doc(hidden)]
pub fn fuzz_cookie_header(data: &[u8]) {
    for v in cookie_values([data], "aalgate") {
        assert_eq!(v.trim(), v, "untrimmed value");
        assert!(!v.contains(';'), "value spans pairs");
        if let Some(id) = SessionId::from_cookie(&v) {
            assert_eq!(id.to_cookie(), v, "a second spelling of a session id");
            let again = SessionId::from_cookie(&id.to_cookie()).map(|i| i.key());
            assert_eq!(again, Some(id.key()), "the round trip changes the key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_across_headers() {
        let hs: [&[u8]; 3] = [b"a=1; aalgate=x ; b=2", b"aalgate=\"y\"", b"\xff aalgate=z"];
        assert_eq!(cookie_values(hs, "aalgate"), ["x", "y"]);
        assert!(cookie_values([b"AALGATE=x".as_slice()], "aalgate").is_empty());
    }

    #[test]
    fn seed_corpus_holds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/cookie");
        let mut n = 0;
        for e in std::fs::read_dir(&dir)
            .expect("fuzz/corpus/cookie")
            .flatten()
        {
            let data = std::fs::read(e.path()).unwrap_or_default();
            let ok = std::panic::catch_unwind(|| fuzz_cookie_header(&data)).is_ok();
            assert!(ok, "{} fails", e.path().display());
            n += 1;
        }
        assert!(n >= 10, "only {n} corpus files");
    }
}
