//! Authenticator Assurance Levels and what a route requires.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Authenticator Assurance Level from NIST SP 800-63B-4, ordered by strength.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aal {
    /// Any single authenticator (user presence only).
    Aal1,
    /// Two factors, e.g. a passkey with user verification.
    Aal2,
    /// A phishing-resistant, attested hardware key with user verification.
    Aal3,
}

impl Aal {
    /// All levels, weakest first.
    pub const ALL: [Aal; 3] = [Aal::Aal1, Aal::Aal2, Aal::Aal3];

    /// The level as a number (1, 2 or 3), as used in headers and the JWT `acr`.
    pub fn number(self) -> u8 {
        match self {
            Aal::Aal1 => 1,
            Aal::Aal2 => 2,
            Aal::Aal3 => 3,
        }
    }

    /// The level from its number.
    pub fn from_number(n: u8) -> Option<Aal> {
        match n {
            1 => Some(Aal::Aal1),
            2 => Some(Aal::Aal2),
            3 => Some(Aal::Aal3),
            _ => None,
        }
    }

    /// Lowercase name as written in policy files (`aal2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Aal::Aal1 => "aal1",
            Aal::Aal2 => "aal2",
            Aal::Aal3 => "aal3",
        }
    }
}

impl fmt::Display for Aal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Aal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "aal1" => Ok(Aal::Aal1),
            "2" | "aal2" => Ok(Aal::Aal2),
            "3" | "aal3" => Ok(Aal::Aal3),
            other => Err(format!("unknown AAL {other:?}; use 1, 2 or 3")),
        }
    }
}

/// What a route demands of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// Forwarded without a session (static assets, a health page).
    Public,
    /// A session at AAL1 or above.
    Aal1,
    /// A session at AAL2 or above.
    Aal2,
    /// A session at AAL3 (attested hardware key with user verification).
    Aal3,
    /// Never forwarded.
    Deny,
}

impl Requirement {
    /// The AAL the requirement needs, if it needs a session at all.
    pub fn aal(self) -> Option<Aal> {
        match self {
            Requirement::Aal1 => Some(Aal::Aal1),
            Requirement::Aal2 => Some(Aal::Aal2),
            Requirement::Aal3 => Some(Aal::Aal3),
            Requirement::Public | Requirement::Deny => None,
        }
    }

    /// Name as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::Public => "public",
            Requirement::Aal1 => "aal1",
            Requirement::Aal2 => "aal2",
            Requirement::Aal3 => "aal3",
            Requirement::Deny => "deny",
        }
    }

    /// Rank for "strictest wins" comparisons: public < aal1 < aal2 < aal3 < deny.
    pub fn strictness(self) -> u8 {
        match self {
            Requirement::Public => 0,
            Requirement::Aal1 => 1,
            Requirement::Aal2 => 2,
            Requirement::Aal3 => 3,
            Requirement::Deny => 4,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_parsing() {
        assert!(Aal::Aal1 < Aal::Aal2 && Aal::Aal2 < Aal::Aal3);
        assert_eq!("AAL3".parse::<Aal>().unwrap(), Aal::Aal3);
        assert_eq!("2".parse::<Aal>().unwrap(), Aal::Aal2);
        assert!("4".parse::<Aal>().is_err());
        assert_eq!(Aal::from_number(0), None);
        assert_eq!(Requirement::Aal2.aal(), Some(Aal::Aal2));
        assert_eq!(Requirement::Deny.aal(), None);
    }
}
