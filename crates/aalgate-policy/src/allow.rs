//! Who may use an app or a route: `allow: { users: [...], groups: [...] }`. Within one `allow`,
//! users and groups are alternatives; an app's `allow` and a route's both apply (a route narrows
//! the app, never widens it). No `allow` anywhere: anyone signed in.

use crate::aal::Aal;

/// One validated `allow`: sorted, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// User names.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

impl Allow {
    /// Whether `person` is named, directly or through one of their groups.
    pub fn admits(&self, person: &Person<'_>) -> bool {
        self.users.iter().any(|u| u == person.user)
            || person
                .groups
                .iter()
                .any(|g| self.groups.binary_search(g).is_ok())
    }
}

/// Whether every `allow` of a rule (the app's, then the route's) admits `person`.
pub fn allowed(allow: &[Allow], person: &Person<'_>) -> bool {
    allow.iter().all(|a| a.admits(person))
}

/// The signed-in person a request comes from, as `allow` and step-up see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Person<'a> {
    /// The user name.
    pub user: &'a str,
    /// Their groups, as the directory holds them now (not as they were at sign-in).
    pub groups: &'a [String],
    /// The highest level the person's usable credentials reach, when the edge looked.
    pub reach: Reach,
}

/// What the edge knows of the level a person could reach with a new ceremony.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Not looked up (it is, only when a step-up would be asked).
    Unknown,
    /// The highest level of a usable credential (`None`: no usable credential at all).
    Known(Option<Aal>),
}

/// The header names an app reads the identity from, besides `X-Aalgate-*` (lowercase).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The user name.
    pub user: Option<String>,
    /// The groups the app's policy names, comma-separated.
    pub groups: Option<String>,
    /// The e-mail address.
    pub email: Option<String>,
}

impl IdentityHeaders {
    /// Whether a client-sent header `name` is one of these in any spelling (case, `_`, `.`),
    /// and so must not reach the upstream.
    pub fn names(&self, name: &str) -> bool {
        [&self.user, &self.groups, &self.email]
            .into_iter()
            .flatten()
            .any(|n| same_header(name, n))
    }
}

/// Whether a client's header name is `configured` (a validated token) once both are folded,
/// ignoring a leading or trailing `_`, `.` or `-` on the client's (some CGI gateways drop
/// them). Compares byte by byte: nothing is allocated per header.
pub fn same_header(client: &str, configured: &str) -> bool {
    let fold = |b: u8| {
        if b.is_ascii_alphanumeric() {
            b.to_ascii_lowercase()
        } else {
            b'-'
        }
    };
    fn trim(s: &str) -> &[u8] {
        let b = s.as_bytes();
        let start = b
            .iter()
            .position(|c| c.is_ascii_alphanumeric())
            .unwrap_or(b.len());
        let end = b
            .iter()
            .rposition(|c| c.is_ascii_alphanumeric())
            .map_or(start, |e| e + 1);
        &b[start..end]
    }
    let (a, b) = (trim(client), trim(configured));
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// A header name as servers and CGI gateways fold it: lowercase, every other non-alphanumeric
/// byte a `-` (`X_Remote.User` is `x-remote-user`).
pub fn fold_header(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase() as char
            } else {
                '-'
            }
        })
        .collect()
}

/// Why a header name cannot carry an identity (`None`: it can).
pub fn identity_header_problem(name: &str) -> Option<&'static str> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Some("is not a header name (letters, digits and - only, at most 64)");
    }
    let f = fold_header(name);
    let f = f.trim_matches('-');
    if f.starts_with("x-aalgate") {
        return Some("is the gateway's own (X-Aalgate-*), which it sets already");
    }
    if f.starts_with("x-forwarded-") || matches!(f, "forwarded" | "x-request-id" | "x-real-ip") {
        return Some("is a forwarding header the gateway sets itself");
    }
    if matches!(
        f,
        "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-url"
            | "x-original-uri"
            | "x-rewrite-url"
            | "x-original-host"
            | "x-host"
            | "via"
            | "max-forwards"
            | "range"
            | "if-range"
            | "content-encoding"
            | "content-range"
            | "accept-encoding"
    ) {
        return Some(
            "changes what the request does or how it is read (method, URL, range, encoding)",
        );
    }
    if matches!(
        f,
        "host"
            | "cookie"
            | "authorization"
            | "proxy-authorization"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "http2-settings"
            | "upgrade"
            | "te"
            | "trailer"
            | "expect"
    ) {
        return Some("would break the request (framing, routing or credentials)");
    }
    None
}

/// A group name: lowercase letters, digits and `-`, at most 63, not starting with `-` (the
/// spelling of an app id).
pub fn valid_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// An e-mail address as IT may set it: one `@`, something on each side, no spaces or control
/// characters, at most 254 bytes (RFC 5321). Not proof that the mailbox exists.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '"')
}

/// A user name: 1-64 letters, digits and `.`, `_`, `-`, `@`.
pub fn valid_user_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(users: &[&str], groups: &[&str]) -> Allow {
        let mut a = Allow {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        };
        a.users.sort();
        a.groups.sort();
        a
    }

    #[test]
    fn users_and_groups_are_alternatives_and_levels_intersect() {
        let groups = vec!["billing".to_string(), "nursing".to_string()];
        let nora = Person {
            user: "nora",
            groups: &groups,
            reach: Reach::Unknown,
        };
        let app = allow(&[], &["clinical", "nursing"]);
        assert!(app.admits(&nora), "through a group");
        assert!(allow(&["nora"], &[]).admits(&nora), "by name");
        assert!(!allow(&["omar"], &["epcs-signers"]).admits(&nora));
        assert!(allowed(&[], &nora), "no allow: anyone signed in");
        assert!(allowed(std::slice::from_ref(&app), &nora));
        assert!(
            !allowed(&[app, allow(&[], &["epcs-signers"])], &nora),
            "a route narrows its app"
        );
        let none = Person {
            user: "omar",
            groups: &[],
            reach: Reach::Unknown,
        };
        assert!(!allow(&[], &["nursing"]).admits(&none));
    }

    #[test]
    fn names() {
        assert!(valid_group("epcs-signers") && valid_group("ward7"));
        assert!(!valid_group("Billing") && !valid_group("-x") && !valid_group("a b"));
        assert!(valid_user_id("it-alice") && valid_user_id("n.nurse@clinic"));
        assert!(!valid_user_id("") && !valid_user_id("a b") && !valid_user_id(&"x".repeat(65)));
    }
}
