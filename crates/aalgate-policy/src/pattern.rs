//! Route path patterns and the matcher.
//!
//! A pattern is a normalized path whose segments are literals or `*` (exactly one segment),
//! optionally ending in `/**` (this path and everything below it). Matching ignores the query,
//! path parameters (`;x`) and a trailing slash.
//!
//! **Most specific wins.** When several patterns match, compare them segment by segment from
//! the left: a literal beats `*`, and `*` beats the end of a `/**` pattern; a pattern without
//! `/**` beats the same pattern with it. Among rules with the same pattern, one that lists the
//! request method beats one that lists no methods. This is a total order, so the winner never
//! depends on file order; two rules that would tie are refused by validation.

use std::collections::HashMap;

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this (already normalized) segment.
    Literal(String),
    /// Matches any one non-empty segment.
    Star,
}

/// A validated path pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    segments: Vec<Segment>,
    prefix: bool,
    text: String,
}

/// Why a pattern was refused; the message says how to write it instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern must start with '/'; write it as /{0}")]
    NoLeadingSlash(String),
    #[error(
        "`**` may only be the last segment (as in /admin/**); use * for one segment in the middle"
    )]
    InnerDoubleStar,
    #[error("`{0}` mixes a wildcard with text; a wildcard must be a whole segment (* or **)")]
    PartialWildcard(String),
    #[error("pattern is not normalized ({0}); write it as {1}")]
    NotNormalized(String, String),
    #[error("pattern contains {0:?}, which a path never matches on (query, fragment, parameters); remove it")]
    ForbiddenChar(char),
    #[error("pattern is refused by path normalization: {0}")]
    Path(#[from] crate::path::PathError),
}

impl RoutePattern {
    /// Parses a pattern such as `/admin/**`, `/patients/*/chart` or `/login`.
    pub fn parse(text: &str, case_insensitive: bool) -> Result<RoutePattern, PatternError> {
        if !text.starts_with('/') {
            return Err(PatternError::NoLeadingSlash(
                text.trim_start_matches('/').to_string(),
            ));
        }
        for c in ['?', '#', ';'] {
            if text.contains(c) {
                return Err(PatternError::ForbiddenChar(c));
            }
        }
        let (body, prefix) = match text.strip_suffix("/**") {
            Some(b) => (if b.is_empty() { "/" } else { b }, true),
            None => (text, false),
        };
        // IT's own text: an encoded `%` is its business (a request path holding one is refused
        // unless the app allows it, so such a pattern cannot match on an app that does not).
        let normalized = crate::path::normalize_target_with(
            body.as_bytes(),
            crate::path::DoubleEncoding::Allow,
        )?;
        let mut canonical = normalized.path().to_string();
        if canonical.len() > 1 && canonical.ends_with('/') {
            canonical.pop();
        }
        if canonical != body {
            let fixed = if prefix {
                format!("{}/**", canonical.trim_end_matches('/'))
            } else {
                canonical.clone()
            };
            let why = if body.ends_with('/') && body.len() > 1 {
                "a trailing slash is ignored by matching"
            } else {
                "duplicate slashes, dot segments or escapes of unreserved characters"
            };
            return Err(PatternError::NotNormalized(why.into(), fixed));
        }
        let mut segments = Vec::new();
        for seg in canonical.split('/').skip(1).filter(|s| !s.is_empty()) {
            segments.push(match seg {
                "*" => Segment::Star,
                "**" => return Err(PatternError::InnerDoubleStar),
                s if s.contains('*') => return Err(PatternError::PartialWildcard(s.into())),
                s if case_insensitive => Segment::Literal(s.to_ascii_lowercase()),
                s => Segment::Literal(s.to_string()),
            });
        }
        Ok(RoutePattern {
            segments,
            prefix,
            text: text.to_string(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `/x/**` patterns.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether both patterns match exactly the same paths (same segments, same `/**`).
    pub fn same_paths(&self, other: &RoutePattern) -> bool {
        self.segments == other.segments && self.prefix == other.prefix
    }

    /// Whether some path matches both patterns.
    pub fn overlaps(&self, other: &RoutePattern) -> bool {
        let mut i = 0;
        loop {
            match (self.segments.get(i), other.segments.get(i)) {
                (Some(Segment::Literal(a)), Some(Segment::Literal(b))) if a != b => return false,
                (Some(_), Some(_)) => i += 1,
                (None, None) => return true,
                (None, Some(_)) => return self.prefix,
                (Some(_), None) => return other.prefix,
            }
        }
    }

    /// Whether the (already folded, if the app is case-insensitive) segments match.
    pub fn matches<'a>(&self, path: impl IntoIterator<Item = &'a str>) -> bool {
        let mut it = path.into_iter();
        for seg in &self.segments {
            match (seg, it.next()) {
                (_, None) => return false,
                (Segment::Star, Some(_)) => {}
                (Segment::Literal(l), Some(s)) if l == s => {}
                _ => return false,
            }
        }
        self.prefix || it.next().is_none()
    }
}

/// Which methods a rule applies to. `GET` implies `HEAD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Methods {
    /// No `methods:` key: every method.
    Any,
    /// Only these (uppercase) methods.
    Only(Vec<String>),
}

impl Methods {
    /// Whether the (uppercase) request method is covered.
    pub fn contains(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(list) => list
                .iter()
                .any(|m| m == method || (m == "GET" && method == "HEAD")),
        }
    }

    /// Whether some method is covered by both.
    pub fn overlaps(&self, other: &Methods) -> bool {
        match (self, other) {
            (Methods::Only(a), Methods::Only(_)) => {
                a.iter().any(|m| other.contains(m)) || {
                    // HEAD is implied by GET on either side.
                    self.contains("HEAD") && other.contains("HEAD")
                }
            }
            _ => true,
        }
    }
}

/// A segment trie over the patterns of one host. Lookup cost grows with path depth, not with
/// the number of routes.
#[derive(Debug, Default)]
pub struct Matcher {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Rules whose pattern ends exactly here: (methods, rule index).
    exact: Vec<(Methods, usize)>,
    /// Rules whose pattern is `<this node>/**`.
    prefix: Vec<(Methods, usize)>,
}

impl Matcher {
    /// Adds a pattern for rule `index`.
    pub fn insert(&mut self, pattern: &RoutePattern, methods: Methods, index: usize) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(l) => node.literal.entry(l.as_str().into()).or_default(),
                Segment::Star => node.star.get_or_insert_with(Box::default),
            };
        }
        let list = if pattern.prefix {
            &mut node.prefix
        } else {
            &mut node.exact
        };
        list.push((methods, index));
        // Method-specific rules first, so they beat "any method" on the same pattern.
        list.sort_by_key(|(m, _)| matches!(m, Methods::Any));
    }

    /// The most specific rule for these path segments and this (uppercase) method.
    pub fn find(&self, segments: &[&str], method: &str) -> Option<usize> {
        find(&self.root, segments, method)
    }
}

fn pick(list: &[(Methods, usize)], method: &str) -> Option<usize> {
    list.iter()
        .find(|(m, _)| m.contains(method))
        .map(|(_, i)| *i)
}

fn find(node: &Node, segs: &[&str], method: &str) -> Option<usize> {
    match segs.split_first() {
        None => {
            if let Some(i) = pick(&node.exact, method) {
                return Some(i);
            }
        }
        Some((first, rest)) => {
            if let Some(child) = node.literal.get(*first) {
                if let Some(i) = find(child, rest, method) {
                    return Some(i);
                }
            }
            if let Some(child) = &node.star {
                if let Some(i) = find(child, rest, method) {
                    return Some(i);
                }
            }
        }
    }
    pick(&node.prefix, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s, false).unwrap()
    }

    #[test]
    fn parse_errors_name_the_fix() {
        let e = RoutePattern::parse("admin/**", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "path pattern must start with '/'; write it as /admin/**"
        );
        let e = RoutePattern::parse("/admin/", false).unwrap_err();
        assert!(e.to_string().contains("write it as /admin"), "{e}");
        let e = RoutePattern::parse("/a//b/../c/**", false).unwrap_err();
        assert!(e.to_string().ends_with("write it as /a/c/**"), "{e}");
        assert!(matches!(
            RoutePattern::parse("/a/**/b", false),
            Err(PatternError::InnerDoubleStar)
        ));
        assert!(matches!(
            RoutePattern::parse("/a*", false),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            RoutePattern::parse("/a?x", false),
            Err(PatternError::ForbiddenChar('?'))
        ));
        assert!(matches!(
            RoutePattern::parse("/a%2Fb", false),
            Err(PatternError::Path(_))
        ));
        assert!(RoutePattern::parse("/**", false).unwrap().is_prefix());
    }

    #[test]
    fn most_specific_wins() {
        let pats = [
            "/**",
            "/admin/**",
            "/admin/users",
            "/admin/*/edit",
            "/admin/users/**",
            "/*/users",
        ];
        let mut m = Matcher::default();
        for (i, s) in pats.iter().enumerate() {
            m.insert(&p(s), Methods::Any, i);
        }
        let cases = [
            ("/", 0),
            ("/x/y", 0),
            ("/admin", 1),
            ("/admin/x", 1),
            ("/admin/users", 2),
            ("/admin/users/edit", 4),
            ("/admin/bob/edit", 3),
            ("/admin/bob/edit/more", 1),
            ("/staff/users", 5),
            ("/staff/users/x", 0),
        ];
        for (path, want) in cases {
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            assert_eq!(m.find(&segs, "GET"), Some(want), "{path}");
        }
    }

    #[test]
    fn methods_and_head() {
        let mut m = Matcher::default();
        m.insert(&p("/pay"), Methods::Any, 0);
        m.insert(&p("/pay"), Methods::Only(vec!["POST".into()]), 1);
        m.insert(&p("/doc"), Methods::Only(vec!["GET".into()]), 2);
        assert_eq!(m.find(&["pay"], "GET"), Some(0));
        assert_eq!(m.find(&["pay"], "POST"), Some(1));
        assert_eq!(m.find(&["doc"], "HEAD"), Some(2));
        assert_eq!(m.find(&["doc"], "DELETE"), None);
    }

    #[test]
    fn overlap() {
        assert!(p("/a/**").overlaps(&p("/a")));
        assert!(p("/a/*").overlaps(&p("/*/b")));
        assert!(!p("/a/*").overlaps(&p("/b/**")));
        assert!(!p("/a").overlaps(&p("/a/b")));
        assert!(p("/**").overlaps(&p("/x/y")));
        let get = Methods::Only(vec!["GET".into()]);
        let head = Methods::Only(vec!["HEAD".into()]);
        let post = Methods::Only(vec!["POST".into()]);
        assert!(get.overlaps(&head) && head.overlaps(&get));
        assert!(!get.overlaps(&post));
        assert!(Methods::Any.overlaps(&post));
    }

    #[test]
    fn case_insensitive_patterns_fold() {
        let pat = RoutePattern::parse("/Admin/**", true).unwrap();
        assert!(pat.matches(["admin", "x"]));
        assert!(!p("/Admin").matches(["admin"]));
    }
}
