//! aalgate's SCIM 2.0 service-provider core (RFC 7643, RFC 7644), pure and I/O-free: what a
//! hospital directory (Entra ID, Okta) sends is parsed into users and groups aalgate's
//! directory can hold, or refused with SCIM error JSON; filters, PATCH operations, paging and
//! attribute projection work on the JSON form of a resource; the discovery documents say
//! exactly what is kept. The gateway's `endpoints::scim` does the store and the effects.
//!
//! What is kept of a person is deliberately small: `userName` (aalgate's user id), display
//! name, name parts, e-mail addresses, `active` and `externalId`. Anything else a directory
//! sends (titles, departments, phone numbers, addresses, the enterprise extension, passwords)
//! is dropped on arrival: aalgate has no use for it, and keeps no health detail at all.

mod error;
mod json;
mod query;
pub(crate) mod resource;

pub mod discovery;

pub use error::{ScimError, ScimType, ERROR_URN};
pub use json::{apply_patch, matches, project};
pub use query::{ListQuery, DEFAULT_COUNT, MAX_COUNT, MAX_FILTER_LEN};
pub use resource::{
    group_json, list_json, user_json, Email, GroupAttrs, GroupIn, Name, UserAttrs, UserIn,
    UserView, GROUP_URN, LIST_URN, PATCH_URN, SEARCH_URN, USER_URN,
};

/// Attribute names in SCIM are case-insensitive (RFC 7643 §2.1).
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests;
