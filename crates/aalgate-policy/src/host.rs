//! Host names, as written in policy files and as received in `Host`.

use std::fmt;

/// A host name (lowercase, no trailing dot) and an optional port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Lowercase host name, IPv4 address, or bracketed IPv6 address.
    pub host: String,
    /// The port, if one was given.
    pub port: Option<u16>,
}

/// Why a host was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host contains characters that are not allowed in a host name")]
    BadChars,
    #[error("port is not a number from 1 to 65535")]
    BadPort,
}

impl HostPort {
    /// The one host comparison: the same name and the same port, where a missing port is
    /// `default_port` (the scheme's), so `ehr.example` and `ehr.example:443` are one origin.
    pub fn same_as(&self, other: &HostPort, default_port: u16) -> bool {
        self.host == other.host
            && self.port.unwrap_or(default_port) == other.port.unwrap_or(default_port)
    }

    /// This host with the scheme's default port left out (the form stored and compared).
    pub fn canonical(&self, default_port: u16) -> HostPort {
        HostPort {
            host: self.host.clone(),
            port: self.port.filter(|p| *p != default_port),
        }
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. Only LDH names and IP literals are
    /// accepted: no userinfo, no whitespace, no percent-encoding.
    pub fn parse(value: &str) -> Result<HostPort, HostError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(HostError::Empty);
        }
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let end = rest.find(']').ok_or(HostError::BadChars)?;
            let v6 = &rest[..end];
            if v6.is_empty()
                || !v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(HostError::BadChars);
            }
            let after = &rest[end + 1..];
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(HostError::BadChars)?),
            };
            (format!("[{}]", v6.to_ascii_lowercase()), port)
        } else {
            let (h, p) = match value.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (value, None),
            };
            let h = h.strip_suffix('.').unwrap_or(h);
            if h.is_empty() {
                return Err(HostError::Empty);
            }
            if !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                || h.starts_with('.')
                || h.contains("..")
            {
                return Err(HostError::BadChars);
            }
            (h.to_ascii_lowercase(), p)
        };
        let port = match port {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HostError::BadPort);
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(HostError::BadPort),
                    Ok(n) => Some(n),
                }
            }
        };
        Ok(HostPort { host, port })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{}", self.host, p),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_comparison_with_default_ports() {
        let p = |s| HostPort::parse(s).unwrap();
        assert!(p("ehr.example").same_as(&p("ehr.example:443"), 443));
        assert!(!p("ehr.example").same_as(&p("ehr.example:443"), 80));
        assert!(!p("apps.localhost:18445").same_as(&p("apps.localhost:18446"), 80));
        assert!(!p("a.example").same_as(&p("b.example"), 443));
        assert_eq!(p("ehr.example:443").canonical(443), p("ehr.example"));
        assert_eq!(p("ehr.example:8443").canonical(443), p("ehr.example:8443"));
    }

    #[test]
    fn parses_hosts() {
        let h = HostPort::parse("Billing.Clinic.Example.:8443").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port),
            ("billing.clinic.example", Some(8443))
        );
        let h = HostPort::parse("[::1]:8080").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("[::1]", Some(8080)));
        assert_eq!(HostPort::parse("127.0.0.1").unwrap().port, None);
        for bad in [
            "",
            "a b",
            "user@host",
            "host:",
            "host:0",
            "host:99999",
            "h%2e",
            "[zz]",
            "..",
            ".a",
            "a..b",
            "host:12ab",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }
}
