//! Users and groups as a directory sends them, parsed into what aalgate keeps, and back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{ScimError, ScimType};

/// The core User schema.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The core Group schema.
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// A list response.
pub const LIST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// A PATCH body.
pub const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// A `POST .search` body.
pub const SEARCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

/// Longest text value kept (a display name, a name part, an `externalId`).
const MAX_TEXT: usize = 256;
/// Most e-mail addresses kept per person.
const MAX_EMAILS: usize = 10;
/// Most members one group request may name.
pub const MAX_MEMBERS: usize = 20_000;

/// A person's name parts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Name {
    /// The full name as displayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted: Option<String>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
}

impl Name {
    fn is_empty(&self) -> bool {
        self == &Name::default()
    }
}

/// One e-mail address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// The address.
    pub value: String,
    /// `work`, `home`, `other` (as sent).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The address to use.
    #[serde(default)]
    pub primary: bool,
}

/// What aalgate keeps of a provisioned person beside its user record: what the directory
/// sent, to give it back, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserAttrs {
    /// `displayName` as sent (the user record holds the one shown on prompts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The directory's own id for the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Name parts.
    #[serde(default, skip_serializing_if = "Name::is_empty")]
    pub name: Name,
    /// E-mail addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Email>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub last_modified: String,
}

/// A group's own record (its members are the people whose groups name it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupAttrs {
    /// The directory's own id for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub last_modified: String,
}

/// A User resource as a client sends it (POST, PUT, or the result of a PATCH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIn {
    /// aalgate's user id.
    pub user_name: String,
    /// `displayName`.
    pub display_name: Option<String>,
    /// `externalId`.
    pub external_id: Option<String>,
    /// `name`.
    pub name: Name,
    /// `emails`.
    pub emails: Vec<Email>,
    /// `active` (required).
    pub active: bool,
}

/// A Group resource as a client sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupIn {
    /// The group name policies use (`displayName`).
    pub name: String,
    /// `externalId`.
    pub external_id: Option<String>,
    /// The members' resource ids (users only).
    pub members: Vec<String>,
}

pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| crate::same_name(k, name) || crate::same_name(strip_urn(k), name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// `urn:ietf:params:scim:schemas:core:2.0:User:userName` -> `userName`.
pub(crate) fn strip_urn(k: &str) -> &str {
    for urn in [USER_URN, GROUP_URN] {
        if let (Some(head), Some(rest)) = (k.get(..urn.len()), k.get(urn.len() + 1..)) {
            if head.eq_ignore_ascii_case(urn) && k.as_bytes()[urn.len()] == b':' && !rest.is_empty()
            {
                return rest;
            }
        }
    }
    k
}

fn text(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ScimError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => checked_text(name, s).map(Some),
        Some(_) => Err(ScimError::bad(
            ScimType::InvalidValue,
            format!("{name} must be a string"),
        )),
    }
}

fn checked_text(name: &str, s: &str) -> Result<String, ScimError> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(ScimError::bad(
            ScimType::InvalidValue,
            format!("{name}: at most {MAX_TEXT} bytes, without control characters"),
        ));
    }
    Ok(s.to_string())
}

/// A boolean, or Entra ID's `"True"`/`"False"` strings.
fn boolean(name: &str, v: &Value) -> Result<bool, ScimError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::bad(
            ScimType::InvalidValue,
            format!("{name} must be true or false"),
        )),
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ScimError> {
    v.as_object().ok_or_else(|| {
        ScimError::bad(
            ScimType::InvalidSyntax,
            format!("{what} must be a JSON object"),
        )
    })
}

impl UserIn {
    /// Parses and checks a User resource. `userName` must be a name aalgate can hold.
    pub fn parse(v: &Value) -> Result<UserIn, ScimError> {
        let obj = object(v, "a User")?;
        let user_name = text(obj, "userName")?
            .ok_or_else(|| ScimError::bad(ScimType::InvalidValue, "userName is required"))?;
        if !aalgate_policy::valid_user_id(&user_name) {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                format!("userName {user_name:?} cannot be an aalgate user name: use 1-64 letters, digits, '.', '_', '-' or '@' (map userName to the UPN or mailNickname)"),
            ));
        }
        let name = match field(obj, "name") {
            None => Name::default(),
            Some(n) => {
                let n = object(n, "name")?;
                Name {
                    formatted: text(n, "formatted")?,
                    family_name: text(n, "familyName")?,
                    given_name: text(n, "givenName")?,
                }
            }
        };
        let emails = match field(obj, "emails") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() > MAX_EMAILS {
                    return Err(ScimError::bad(
                        ScimType::InvalidValue,
                        format!("at most {MAX_EMAILS} e-mail addresses per person"),
                    ));
                }
                let mut out = Vec::new();
                for e in list {
                    let e = object(e, "an e-mail")?;
                    let value = text(e, "value")?.ok_or_else(|| {
                        ScimError::bad(ScimType::InvalidValue, "an e-mail without a value")
                    })?;
                    if !aalgate_policy::valid_email(&value) {
                        return Err(ScimError::bad(
                            ScimType::InvalidValue,
                            format!("e-mail address {value:?} is not valid"),
                        ));
                    }
                    let primary = match field(e, "primary") {
                        Some(p) => boolean("primary", p)?,
                        None => false,
                    };
                    out.push(Email {
                        value,
                        kind: text(e, "type")?,
                        primary,
                    });
                }
                if out.iter().filter(|e| e.primary).count() > 1 {
                    return Err(ScimError::bad(
                        ScimType::InvalidValue,
                        "more than one primary e-mail address",
                    ));
                }
                out
            }
            Some(_) => {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    "emails must be a list",
                ))
            }
        };
        // Whether the person may sign in is what provisioning is for: never left implicit.
        let active = match field(obj, "active") {
            Some(a) => boolean("active", a)?,
            None => {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    "active is required: true lets the person sign in, false ends their access",
                ))
            }
        };
        Ok(UserIn {
            user_name,
            display_name: text(obj, "displayName")?,
            external_id: text(obj, "externalId")?,
            name,
            emails,
            active,
        })
    }

    /// The address apps see: the primary one, else a work one, else the first.
    pub fn email(&self) -> Option<&str> {
        self.emails
            .iter()
            .find(|e| e.primary)
            .or_else(|| {
                self.emails
                    .iter()
                    .find(|e| e.kind.as_deref() == Some("work"))
            })
            .or(self.emails.first())
            .map(|e| e.value.as_str())
    }

    /// The name shown on the person's own authenticator prompts.
    pub fn shown_name(&self) -> String {
        self.display_name
            .clone()
            .or_else(|| self.name.formatted.clone())
            .or_else(|| match (&self.name.given_name, &self.name.family_name) {
                (Some(g), Some(f)) => Some(format!("{g} {f}")),
                _ => None,
            })
            .unwrap_or_else(|| self.user_name.clone())
    }

    /// What is kept beside the user record.
    pub fn attrs(&self, created: &str, now: &str) -> UserAttrs {
        UserAttrs {
            display_name: self.display_name.clone(),
            external_id: self.external_id.clone(),
            name: self.name.clone(),
            emails: self.emails.clone(),
            created: created.to_string(),
            last_modified: now.to_string(),
        }
    }
}

impl GroupIn {
    /// Parses and checks a Group resource: its `displayName` must be a group name policies can
    /// use, and its members users.
    pub fn parse(v: &Value) -> Result<GroupIn, ScimError> {
        let obj = object(v, "a Group")?;
        let name = text(obj, "displayName")?
            .ok_or_else(|| ScimError::bad(ScimType::InvalidValue, "displayName is required"))?;
        if !aalgate_policy::valid_group(&name) {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                format!("group name {name:?} cannot be an aalgate group: use lowercase letters, digits and '-' (at most 63), e.g. epcs-signers; in Entra ID map displayName through an expression such as Replace(ToLower([displayName]), \" \", \"-\")"),
            ));
        }
        let members = match field(obj, "members") {
            None => Vec::new(),
            Some(Value::Array(list)) => members(list)?,
            Some(_) => {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    "members must be a list",
                ))
            }
        };
        Ok(GroupIn {
            name,
            external_id: text(obj, "externalId")?,
            members,
        })
    }
}

/// Member ids from a `members` list; groups in groups are refused (policies name the groups a
/// person is in, and nesting would hide who is).
pub(crate) fn members(list: &[Value]) -> Result<Vec<String>, ScimError> {
    if list.len() > MAX_MEMBERS {
        return Err(ScimError::bad(
            ScimType::TooMany,
            format!("at most {MAX_MEMBERS} members per request"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for m in list {
        let m = object(m, "a member")?;
        if let Some(t) = text(m, "type")? {
            if !t.eq_ignore_ascii_case("User") {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    "only users can be members: aalgate has no groups in groups",
                ));
            }
        }
        let value = text(m, "value")?
            .ok_or_else(|| ScimError::bad(ScimType::InvalidValue, "a member without a value"))?;
        if seen.insert(value.clone()) {
            out.push(value);
        }
    }
    Ok(out)
}

/// A user as this service shows it.
pub struct UserView<'a> {
    /// The resource id.
    pub id: &'a str,
    /// aalgate's user id.
    pub user_name: &'a str,
    /// The display name of a person aalgate knew before provisioning (no `attrs`).
    pub display_name: &'a str,
    /// Not disabled.
    pub active: bool,
    /// What the directory sent, if it did.
    pub attrs: Option<&'a UserAttrs>,
    /// RFC 3339, for a person without `attrs`.
    pub created: &'a str,
}

/// The User resource. `base`: the service's URL, for `meta.location`.
pub fn user_json(u: &UserView<'_>, base: &str) -> Value {
    let mut v = json!({
        "schemas": [USER_URN],
        "id": u.id,
        "userName": u.user_name,
        "active": u.active,
    });
    let (created, modified) = match u.attrs {
        Some(a) => {
            if let Some(d) = &a.display_name {
                v["displayName"] = d.as_str().into();
            }
            if let Some(x) = &a.external_id {
                v["externalId"] = x.as_str().into();
            }
            if !a.name.is_empty() {
                v["name"] = serde_json::to_value(&a.name).unwrap_or(Value::Null);
            }
            if !a.emails.is_empty() {
                v["emails"] = serde_json::to_value(&a.emails).unwrap_or(Value::Null);
            }
            (a.created.as_str(), a.last_modified.as_str())
        }
        None => {
            v["displayName"] = u.display_name.into();
            (u.created, u.created)
        }
    };
    v["meta"] = json!({
        "resourceType": "User",
        "created": created,
        "lastModified": modified,
        "location": format!("{base}/Users/{}", u.id),
    });
    v
}

/// The Group resource (its id is its name: names cannot change, see the README).
pub fn group_json(name: &str, attrs: Option<&GroupAttrs>, members: &[String], base: &str) -> Value {
    let mut v = json!({
        "schemas": [GROUP_URN],
        "id": name,
        "displayName": name,
    });
    if !members.is_empty() {
        v["members"] = members
            .iter()
            .map(|m| json!({ "value": m, "$ref": format!("{base}/Users/{m}"), "type": "User" }))
            .collect();
    }
    let (created, modified) = match attrs {
        Some(a) => {
            if let Some(x) = &a.external_id {
                v["externalId"] = x.as_str().into();
            }
            (Some(a.created.as_str()), Some(a.last_modified.as_str()))
        }
        None => (None, None),
    };
    let mut meta = json!({
        "resourceType": "Group",
        "location": format!("{base}/Groups/{name}"),
    });
    if let (Some(c), Some(m)) = (created, modified) {
        meta["created"] = c.into();
        meta["lastModified"] = m.into();
    }
    v["meta"] = meta;
    v
}

/// A list response: `total` matches, the page from `start_index` (1-based).
pub fn list_json(total: usize, start_index: usize, page: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_URN],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": page.len(),
        "Resources": page,
    })
}
