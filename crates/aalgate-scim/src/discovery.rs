//! What the service says of itself (RFC 7643 §5-§7): exactly the attributes aalgate keeps,
//! `userName` and the group name immutable (policies and the audit trail name them).

use serde_json::{json, Value};

use crate::query::MAX_COUNT;
use crate::resource::{GROUP_URN, USER_URN};

const SPC_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const SCHEMA_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
const RESOURCE_TYPE_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";

/// `GET /ServiceProviderConfig`.
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": [SPC_URN],
        "patch": { "supported": true },
        "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
        "filter": { "supported": true, "maxResults": MAX_COUNT },
        "changePassword": { "supported": false },
        "sort": { "supported": false },
        "etag": { "supported": false },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The provisioning token `aalgate scim token` printed; aalgate keeps only its hash.",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

#[derive(Clone, Copy)]
struct A {
    name: &'static str,
    kind: &'static str,
    multi: bool,
    required: bool,
    mutability: &'static str,
    unique: bool,
    exact: bool,
    description: &'static str,
}

const fn a(name: &'static str, kind: &'static str, description: &'static str) -> A {
    A {
        name,
        kind,
        multi: false,
        required: false,
        mutability: "readWrite",
        unique: false,
        exact: false,
        description,
    }
}

fn attr(x: A, subs: &[Value], extra: Value) -> Value {
    let mut v = json!({
        "name": x.name,
        "type": x.kind,
        "multiValued": x.multi,
        "description": x.description,
        "required": x.required,
        "caseExact": x.exact,
        "mutability": x.mutability,
        "returned": "default",
        "uniqueness": if x.unique { "server" } else { "none" },
    });
    if !subs.is_empty() {
        v["subAttributes"] = subs.to_vec().into();
    }
    if let (Some(v), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(e.clone());
    }
    v
}

fn user_attributes() -> Vec<Value> {
    let text = |name, d| attr(a(name, "string", d), &[], json!({}));
    vec![
        attr(
            A {
                required: true,
                mutability: "immutable",
                unique: true,
                ..a("userName", "string", "aalgate's user id: the name apps receive and the audit log records. 1-64 letters, digits, '.', '_', '-' or '@'; unique without case; it cannot change.")
            },
            &[],
            json!({}),
        ),
        attr(
            a("name", "complex", "The person's name."),
            &[
                text("formatted", "The full name."),
                text("familyName", "The family name."),
                text("givenName", "The given name."),
            ],
            json!({}),
        ),
        text("displayName", "The name shown on the person's own authenticator prompts."),
        attr(
            A { multi: true, ..a("emails", "complex", "E-mail addresses; the primary one (else a work one) is the address apps receive. Unique per person.") },
            &[
                text("value", "The address."),
                attr(a("type", "string", "work, home or other."), &[], json!({ "canonicalValues": ["work", "home", "other"] })),
                attr(a("primary", "boolean", "The address to use."), &[], json!({})),
            ],
            json!({}),
        ),
        attr(
            A { required: true, ..a("active", "boolean", "Required. false disables the person and ends every session at once; true enables them again.") },
            &[],
            json!({}),
        ),
    ]
}

fn group_attributes() -> Vec<Value> {
    vec![
        attr(
            A {
                required: true,
                mutability: "immutable",
                unique: true,
                exact: true,
                ..a("displayName", "string", "The group name policies use: lowercase letters, digits and '-' (at most 63). It cannot change: a policy names it.")
            },
            &[],
            json!({}),
        ),
        attr(
            A { multi: true, ..a("members", "complex", "The users in the group (no groups in groups).") },
            &[
                attr(
                    A { mutability: "immutable", exact: true, ..a("value", "string", "The member's id.") },
                    &[],
                    json!({}),
                ),
                attr(
                    A { mutability: "immutable", exact: true, ..a("$ref", "reference", "The member's URI.") },
                    &[],
                    json!({ "referenceTypes": ["User"] }),
                ),
                attr(
                    A { mutability: "immutable", ..a("type", "string", "User.") },
                    &[],
                    json!({ "canonicalValues": ["User"] }),
                ),
            ],
            json!({}),
        ),
    ]
}

/// Every schema, with its `meta`.
pub fn schemas(base: &str) -> Vec<Value> {
    [
        (
            USER_URN,
            "User",
            "A person who may sign in to aalgate.",
            user_attributes(),
        ),
        (
            GROUP_URN,
            "Group",
            "A group policies grant routes to.",
            group_attributes(),
        ),
    ]
    .into_iter()
    .map(|(id, name, d, attrs)| {
        json!({
            "schemas": [SCHEMA_URN],
            "id": id,
            "name": name,
            "description": d,
            "attributes": attrs,
            "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{id}") },
        })
    })
    .collect()
}

/// Every resource type, with its `meta`.
pub fn resource_types(base: &str) -> Vec<Value> {
    [("User", "/Users", USER_URN), ("Group", "/Groups", GROUP_URN)]
        .into_iter()
        .map(|(id, endpoint, schema)| {
            json!({
                "schemas": [RESOURCE_TYPE_URN],
                "id": id,
                "name": id,
                "endpoint": endpoint,
                "schema": schema,
                "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{id}") },
            })
        })
        .collect()
}
