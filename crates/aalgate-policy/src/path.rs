//! Request-target normalization: done exactly once per request, and the result is both matched
//! and forwarded upstream, so the gateway and the app can never disagree about which path was asked.
//!
//! Rules, in order:
//! 1. The target must be origin-form (`/path?query`) or absolute-form (`http://host/path`); the
//!    caller checks an absolute-form authority against `Host`. `*` and authority-form are refused.
//! 2. Refused outright (ambiguous, classic bypass material): `#` anywhere, a raw or encoded
//!    backslash, an encoded slash (`%2F`), NUL and other control characters (raw or encoded),
//!    a malformed escape, bytes that do not decode to valid UTF-8 (overlong forms included),
//!    dot segments carrying path parameters (`..;x`), and double encoding: `%25` before two hex
//!    digits (`%252e%252e%252f`, `..%2500`), which an upstream or framework that decodes once
//!    more reads as `../` or a NUL (ModSecurity CRS rule 920230 flags it too). An app that
//!    really uses such paths opts out ([`DoubleEncoding::Allow`]).
//! 3. One canonical spelling per character, so `%24everything` and `$everything` match the same
//!    rule: escapes of characters that may appear raw in a path segment (unreserved, the
//!    sub-delimiters except `;`, `:` and `@`) are decoded; every other character is
//!    percent-encoded with uppercase hex, whether it arrived raw (`{`, `"`, non-ASCII) or encoded.
//!    `;` stays raw as the parameter separator and `%3B` stays encoded as data. Where double
//!    encoding is allowed, `%252e` stays `%252e` (it is not a dot segment, and the upstream
//!    sees the same bytes).
//! 4. Duplicate slashes are merged, then dot segments removed (RFC 3986 5.2.4; `..` above the
//!    root stays at the root).
//!
//! The query string is kept verbatim and never takes part in matching.

use std::borrow::Cow;

/// Longest path accepted, in bytes (the URI-too-long limit).
pub const MAX_PATH_LEN: usize = 8192;
/// Most path segments accepted.
pub const MAX_SEGMENTS: usize = 256;

/// Why a request target was refused. Each maps to a `400 Bad Request` (or `414`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty request target")]
    Empty,
    #[error("request target is not origin-form or absolute-form (e.g. `*` or host:port)")]
    UnsupportedForm,
    #[error("absolute-form request target has a malformed authority")]
    BadAuthority,
    #[error("request target contains '#' (a fragment is never sent to a server)")]
    Fragment,
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("path contains a backslash (raw or %5C)")]
    Backslash,
    #[error("path contains a NUL, control character or space")]
    ControlChar,
    #[error("path contains a malformed percent-escape")]
    BadEscape,
    #[error("path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("path has a dot segment with parameters (`..;` or `.;`)")]
    DotSegmentParams,
    #[error("path has a segment that is empty apart from parameters (`/;x/`)")]
    EmptyParamSegment,
    /// Windows and IIS backends drop a trailing dot or space from a name, so `/admin./x` and
    /// `/admin%20/x` would reach `/admin/x` without matching its rule.
    #[error("path has a segment ending in a dot or a space (`/admin./`, `/admin%20/`)")]
    TrailingDotOrSpace,
    /// `admin::$INDEX_ALLOCATION` names the directory `admin` on NTFS.
    #[error("path has an NTFS stream name (`::$DATA`, `:$INDEX_ALLOCATION`)")]
    NtfsStream,
    #[error("path is longer than {MAX_PATH_LEN} bytes or has more than {MAX_SEGMENTS} segments")]
    TooLong,
    /// An upstream that decodes once more would read `%252e%252e%252f` as `../`.
    #[error("path is percent-encoded twice (`%25` before two hex digits, as in `%252e`)")]
    DoubleEncoding,
}

/// What the path may hold of `%25` before two hex digits (double encoding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DoubleEncoding {
    /// Refused ([`PathError::DoubleEncoding`]): the default.
    #[default]
    Refuse,
    /// Kept as `%25XX`, for apps whose paths really hold an encoded `%` (`allow_double_encoding`).
    Allow,
}

/// A request target after normalization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedTarget {
    path: String,
    query: Option<String>,
    authority: Option<String>,
}

impl NormalizedTarget {
    /// `/`.
    pub fn root() -> NormalizedTarget {
        NormalizedTarget {
            path: "/".into(),
            query: None,
            authority: None,
        }
    }

    /// The normalized path, as forwarded upstream. Always starts with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string (without `?`), verbatim.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The authority of an absolute-form target (`host[:port]`), for the caller to check.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// Path and query as forwarded upstream (`/a/b?x=1`).
    pub fn path_and_query(&self) -> Cow<'_, str> {
        match &self.query {
            None => Cow::Borrowed(&self.path),
            Some(q) => Cow::Owned(format!("{}?{}", self.path, q)),
        }
    }

    /// The segments as literal text (parameters kept), for upstreams that do not treat `;` as a
    /// parameter separator.
    pub fn literal_segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1).filter(|s| !s.is_empty())
    }

    /// Whether any segment carries `;` parameters.
    pub fn has_params(&self) -> bool {
        self.path.contains(';')
    }

    /// The segments that matching sees: path parameters (`;jsessionid=..`) stripped from each
    /// segment, and a trailing slash ignored, so `/admin/` and `/admin;x` match as `/admin`.
    pub fn match_segments(&self) -> impl Iterator<Item = &str> {
        self.path
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .map(|s| s.split(';').next().unwrap_or(s))
    }
}

/// Characters that stand for themselves in a path segment (RFC 3986 `pchar` less `;`).
fn is_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// Normalizes a raw request target (the bytes after the method on the request line), refusing
/// double encoding.
pub fn normalize_target(raw: &[u8]) -> Result<NormalizedTarget, PathError> {
    normalize_target_with(raw, DoubleEncoding::Refuse)
}

/// [`normalize_target`], with the app's choice about double encoding in the path (the query is
/// the app's business and is never checked for it).
pub fn normalize_target_with(
    raw: &[u8],
    double: DoubleEncoding,
) -> Result<NormalizedTarget, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    let (authority, rest) = split_absolute_form(raw)?;
    if rest.first() != Some(&b'/') {
        return Err(PathError::UnsupportedForm);
    }
    let (raw_path, raw_query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (&rest[..], None),
    };
    if raw_path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let query = match raw_query {
        None => None,
        Some(q) => {
            if q.iter().any(|&b| b < 0x20 || b == 0x7f || b == b' ') {
                return Err(PathError::ControlChar);
            }
            // The query is forwarded verbatim; raw non-ASCII is re-encoded so the result is ASCII.
            let mut s = String::with_capacity(q.len());
            for &b in q {
                if b >= 0x80 {
                    push_escaped(&mut s, b);
                } else {
                    s.push(b as char);
                }
            }
            Some(s)
        }
    };
    let decoded = decode_path(raw_path)?;
    // Checked on the canonical spelling, so `%25%32%65` (which becomes `%252e`) is caught too.
    if double == DoubleEncoding::Refuse && is_double_encoded(&decoded) {
        return Err(PathError::DoubleEncoding);
    }
    let path = remove_dot_segments(&decoded)?;
    Ok(NormalizedTarget {
        path,
        query,
        authority,
    })
}

/// Splits `http://authority/rest` into its authority and the rest (`/` if the path is empty).
fn split_absolute_form(raw: &[u8]) -> Result<(Option<String>, Cow<'_, [u8]>), PathError> {
    let lower: Vec<u8> = raw.iter().take(8).map(|b| b.to_ascii_lowercase()).collect();
    let skip = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else if raw.first() == Some(&b'/') {
        return Ok((None, Cow::Borrowed(raw)));
    } else {
        return Err(PathError::UnsupportedForm);
    };
    let after = &raw[skip..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty()
        || !authority
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(PathError::BadAuthority);
    }
    let rest = &after[end..];
    let rest: Cow<'_, [u8]> = if rest.first() == Some(&b'/') {
        Cow::Borrowed(rest)
    } else {
        let mut v = b"/".to_vec();
        v.extend_from_slice(rest);
        Cow::Owned(v)
    };
    // Only ASCII was accepted above, so this cannot fail.
    Ok((
        Some(String::from_utf8_lossy(authority).to_ascii_lowercase()),
        rest,
    ))
}

/// Decodes unreserved escapes, keeps the others (uppercase), refuses the ambiguous ones, and
/// checks that the fully decoded bytes are UTF-8.
fn decode_path(raw: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut fully_decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(&h), Some(&l)) = (raw.get(i + 1), raw.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(h), Some(l)) = (hex_val(h), hex_val(l)) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0..=0x1f | 0x7f => return Err(PathError::ControlChar),
                    _ if is_literal(v) => out.push(v as char),
                    _ => push_escaped(&mut out, v),
                }
                fully_decoded.push(v);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x20 | 0x7f => return Err(PathError::ControlChar),
            0x80..=0xff => {
                push_escaped(&mut out, b);
                fully_decoded.push(b);
                i += 1;
            }
            _ if !(is_literal(b) || b == b'/' || b == b';') => {
                push_escaped(&mut out, b);
                fully_decoded.push(b);
                i += 1;
            }
            _ => {
                out.push(b as char);
                fully_decoded.push(b);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(&fully_decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Whether a canonical path (every `%` starts an uppercase escape) holds an encoded `%`
/// before two hex digits.
fn is_double_encoded(path: &str) -> bool {
    path.as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_val(w[3]).is_some() && hex_val(w[4]).is_some())
}

/// Merges duplicate slashes, then removes `.` and `..` segments. Input starts with `/`.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = path.ends_with('/');
    let mut count = 0usize;
    for seg in path.split('/').skip(1) {
        count += 1;
        if count > MAX_SEGMENTS {
            return Err(PathError::TooLong);
        }
        let name = seg.split(';').next().unwrap_or(seg);
        if seg.contains(';') {
            if name == "." || name == ".." {
                return Err(PathError::DotSegmentParams);
            }
            if name.is_empty() {
                return Err(PathError::EmptyParamSegment);
            }
        }
        if name != "." && name != ".." && (name.ends_with('.') || name.ends_with("%20")) {
            return Err(PathError::TrailingDotOrSpace);
        }
        if name.contains(":$") {
            return Err(PathError::NtfsStream);
        }
        match seg {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                stack.pop();
                trailing_slash = true;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    if path.ends_with('/') {
        trailing_slash = true;
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, PathError> {
        normalize_target(s.as_bytes()).map(|t| t.path().to_string())
    }

    #[test]
    fn benign_paths() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a//../b", "/b"),
            ("/%61%62c", "/abc"),
            ("/%7e%2D%5f%2Ex", "/~-_.x"),
            ("/a%20b", "/a%20b"),
            ("/a%2eb", "/a.b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a;jsessionid=1/b", "/a;jsessionid=1/b"),
            ("/a.b/.c", "/a.b/.c"),
            ("/A/B", "/A/B"),
            ("/a?x=../../b", "/a"),
            (
                "/fhir/Patient/1/%24everything",
                "/fhir/Patient/1/$everything",
            ),
            ("/v1/items%3Abatch", "/v1/items:batch"),
            ("/a%21%27%28%29%2A%2B%2C%3D%40%26", "/a!'()*+,=@&"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/a%7bb%7d", "/a%7Bb%7D"),
            ("/a\"b", "/a%22b"),
            ("/a%3Bb;c", "/a%3Bb;c"),
            ("/a%25", "/a%25"),
            ("/a%25z", "/a%25z"),
            ("/a%25%41", "/a%25A"),
            ("/a?q=%252e%252e%252f", "/a"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn renormalization_is_identity() {
        for raw in [
            "/a/%2e%2e/b/",
            "//x/./y/../z",
            "/caf%c3%a9/%20x",
            "/a;p=1/./b",
        ] {
            let once = norm(raw).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        use PathError::*;
        let cases: &[(&[u8], PathError)] = &[
            (b"", Empty),
            (b"*", UnsupportedForm),
            (b"example.com:443", UnsupportedForm),
            (b"admin", UnsupportedForm),
            (b"/public#/../admin", Fragment),
            (b"/a?b#c", Fragment),
            (b"/pub/..%2Fadmin", EncodedSlash),
            (b"/pub/..%2fadmin", EncodedSlash),
            (b"/pub%2F..%2F..%2Fadmin", EncodedSlash),
            (b"/pub\\..\\admin", Backslash),
            (b"/pub/..%5Cadmin", Backslash),
            (b"/pub/..%5cadmin", Backslash),
            (b"/admin%00.css", ControlChar),
            (b"/admin./x", TrailingDotOrSpace),
            (b"/admin../x", TrailingDotOrSpace),
            (b"/admin%2e/x", TrailingDotOrSpace),
            (b"/admin%20/x", TrailingDotOrSpace),
            (b"/a.", TrailingDotOrSpace),
            // Only-dot names other than `.` and `..`: Windows strips them to nothing.
            (b"/public/...", TrailingDotOrSpace),
            (b"/public/..../admin", TrailingDotOrSpace),
            (b"/x/admin.;p/y", TrailingDotOrSpace),
            (b"/admin::$INDEX_ALLOCATION/x", NtfsStream),
            (b"/web.config::%24DATA", NtfsStream),
            (b"/admin\x00", ControlChar),
            (b"/admin%0d%0aX-Aalgate-User:%20root", ControlChar),
            (b"/admin%09", ControlChar),
            (b"/admin%7f", ControlChar),
            (b"/ad min", ControlChar),
            (b"/admin\t", ControlChar),
            (b"/a%", BadEscape),
            (b"/a%2", BadEscape),
            (b"/a%zz", BadEscape),
            (b"/a%%32e", BadEscape),
            (b"/%c0%ae%c0%ae/admin", InvalidUtf8),
            (b"/%e0%80%ae", InvalidUtf8),
            (b"/%ff", InvalidUtf8),
            (b"/\xc0\xae", InvalidUtf8),
            (b"/%c3", InvalidUtf8),
            (b"/%ed%a0%80", InvalidUtf8),
            (b"/public/..;/admin", DotSegmentParams),
            (b"/public/.;/admin", DotSegmentParams),
            (b"/public/%2e%2e;x/admin", DotSegmentParams),
            (b"/;x/admin", EmptyParamSegment),
            (b"http://[bad authority/x", BadAuthority),
            (b"http://user@host/x", BadAuthority),
            (b"http:///x", BadAuthority),
            (b"ftp://host/x", UnsupportedForm),
            (b"/a?x=\x01", ControlChar),
            (b"/..%c0%af../admin", InvalidUtf8),
            (b"/%c0%afadmin", InvalidUtf8),
            (b"/%e0%80%af", InvalidUtf8),
            (b"/%u002e%u002e/admin", BadEscape),
            (b"/admin%2F", EncodedSlash),
            (b"/a\x7f", ControlChar),
            (b"/a\r\nHost: evil", ControlChar),
            (b"HTTP://host/..%2F", EncodedSlash),
            (b"/%252e%252e%252fadmin", DoubleEncoding),
            (b"/static%252F..%252Fdebug", DoubleEncoding),
            (b"/..%2500", DoubleEncoding),
            (b"/a%2541", DoubleEncoding),
            (b"/a%25aF", DoubleEncoding),
            (b"/%25%32%65%25%32%65/admin", DoubleEncoding),
            (b"/a%25%34%31", DoubleEncoding),
        ];
        assert!(cases.len() >= 45);
        for (raw, want) in cases {
            assert_eq!(
                normalize_target(raw).map(|t| t.path().to_string()),
                Err(want.clone()),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(norm(&long), Err(TooLong));
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(norm(&deep), Err(TooLong));
    }

    #[test]
    fn dot_segments_in_disguise_are_resolved() {
        let cases = [
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2e./admin", "/admin"),
            ("/public/%2e/admin", "/public/admin"),
            ("/public//..//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/public/..", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn absolute_form_and_query() {
        let t = normalize_target(b"HTTP://Billing.Example:8080/a/../b?q=%2F..").unwrap();
        assert_eq!(t.authority(), Some("billing.example:8080"));
        assert_eq!(t.path(), "/b");
        assert_eq!(t.query(), Some("q=%2F.."));
        assert_eq!(t.path_and_query(), "/b?q=%2F..");
        let t = normalize_target(b"http://h?x").unwrap();
        assert_eq!((t.path(), t.query()), ("/", Some("x")));
    }

    #[test]
    fn match_segments_strip_params_and_trailing_slash() {
        let t = normalize_target(b"/admin;jsessionid=9/users/").unwrap();
        assert_eq!(t.match_segments().collect::<Vec<_>>(), ["admin", "users"]);
        let t = normalize_target(b"/").unwrap();
        assert_eq!(t.match_segments().count(), 0);
    }
}

#[cfg(test)]
mod double_encoding {
    use super::*;

    #[test]
    fn an_app_that_opts_in_keeps_its_encoded_percent() {
        for (raw, want) in [
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/files/100%2541", "/files/100%2541"),
            ("/a%25", "/a%25"),
        ] {
            let t = normalize_target_with(raw.as_bytes(), DoubleEncoding::Allow).unwrap();
            assert_eq!(t.path(), want, "{raw}");
            // Forwarded, then normalized again the same way: nothing changes.
            let again = normalize_target_with(t.path().as_bytes(), DoubleEncoding::Allow).unwrap();
            assert_eq!(again.path(), want);
        }
        // Everything else stays refused for it too.
        assert_eq!(
            normalize_target_with(b"/a%2F", DoubleEncoding::Allow),
            Err(PathError::EncodedSlash)
        );
    }
}
