//! Reading the session cookie out of `Cookie` headers (RFC 6265 section 5.4 pairs), and the
//! fuzz property that goes with it.

use crate::SessionId;

/// The values of cookie `name` across every `Cookie` header value, in order. Pairs are split
/// on `;`, names compared exactly (case-sensitive) after trimming, values trimmed of
/// whitespace and of one pair of surrounding DQUOTEs (RFC 6265 allows them). A value with a
/// byte outside RFC 6265's cookie-octet (a space or quote inside, a comma, a backslash, a
/// control) is skipped, as is a header that is not UTF-8.
pub fn cookie_values<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Vec<String> {
    cookie_value_iter(headers, name)
        .map(str::to_string)
        .collect()
}

/// [`cookie_values`] without copying them: the request path reads its cookies with no
/// allocation.
pub fn cookie_value_iter<'a, 'n, H: IntoIterator<Item = &'a [u8]>>(
    headers: H,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n, H> {
    headers
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, val) = pair.trim().split_once('=')?;
            if n.trim() != name {
                return None;
            }
            let v = val.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(v);
            v.bytes().all(is_cookie_octet).then_some(v)
        })
}

/// RFC 6265 section 4.1.1 `cookie-octet`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
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
        let hs: [&[u8]; 4] = [
            b"a=1; aalgate=x ; b=2",
            b"aalgate=\"y\"; aalgate=\" q\"; aalgate=\"r; aalgate=s t",
            b"\xff aalgate=z",
            b"aalgate=\"\"",
        ];
        assert_eq!(cookie_values(hs, "aalgate"), ["x", "y", ""]);
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
