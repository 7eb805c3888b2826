//! SCIM error responses (RFC 7644 §3.12).

/// The error message schema.
pub const ERROR_URN: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The `scimType` of a 400 or 409 (RFC 7644 Table 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    /// The filter syntax was invalid.
    InvalidFilter,
    /// The request body was not a valid SCIM message.
    InvalidSyntax,
    /// A PATCH path was invalid.
    InvalidPath,
    /// A PATCH path selected nothing.
    NoTarget,
    /// A value is not one aalgate can hold.
    InvalidValue,
    /// An attribute that cannot change was changed.
    Mutability,
    /// A unique value (`userName`, a group name, an e-mail address) is taken.
    Uniqueness,
    /// Too many results or operations.
    TooMany,
}

impl ScimType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::Mutability => "mutability",
            ScimType::Uniqueness => "uniqueness",
            ScimType::TooMany => "tooMany",
        }
    }
}

/// A refusal: an HTTP status, maybe a `scimType`, and a detail for the provisioning log
/// (never a person's data beyond the names the client itself sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {detail}")]
pub struct ScimError {
    /// The HTTP status.
    pub status: u16,
    /// For a 400 or 409.
    pub scim_type: Option<ScimType>,
    /// What was wrong, and the fix.
    pub detail: String,
}

impl ScimError {
    /// 400 with a `scimType`.
    pub fn bad(kind: ScimType, detail: impl Into<String>) -> ScimError {
        ScimError {
            status: 400,
            scim_type: Some(kind),
            detail: detail.into(),
        }
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> ScimError {
        ScimError {
            status: 404,
            scim_type: None,
            detail: detail.into(),
        }
    }

    /// 409 `uniqueness`.
    pub fn taken(detail: impl Into<String>) -> ScimError {
        ScimError {
            status: 409,
            scim_type: Some(ScimType::Uniqueness),
            detail: detail.into(),
        }
    }

    /// Any other status without a `scimType` (401, 405, 413, 503).
    pub fn status(status: u16, detail: impl Into<String>) -> ScimError {
        ScimError {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }

    /// The error JSON.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({
            "schemas": [ERROR_URN],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            v["scimType"] = t.as_str().into();
        }
        v.to_string()
    }
}
