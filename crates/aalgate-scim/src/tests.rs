use serde_json::{json, Value};

use super::*;

fn user() -> Value {
    user_json(
        &UserView {
            id: "3f0c8a7e-2b1d-4c55-9a0e-1d2c3b4a5f60",
            user_name: "ann.lee@clinic.example",
            display_name: "Ann Lee",
            active: true,
            attrs: Some(&UserAttrs {
                display_name: Some("Ann Lee".into()),
                external_id: Some("E-1001".into()),
                name: Name {
                    formatted: None,
                    family_name: Some("Lee".into()),
                    given_name: Some("Ann".into()),
                },
                emails: vec![Email {
                    value: "ann.lee@clinic.example".into(),
                    kind: Some("work".into()),
                    primary: true,
                }],
                created: "2026-12-01T08:00:00Z".into(),
                last_modified: "2026-12-02T08:00:00Z".into(),
            }),
            created: "",
        },
        "https://gw.example/.aalgate/scim/v2",
    )
}

fn filter(f: &str) -> Result<ListQuery, ScimError> {
    ListQuery::from_pairs([("filter", f)].into_iter())
}

fn hits(f: &str) -> bool {
    let q = filter(f).unwrap_or_else(|e| panic!("{f}: {e}"));
    matches(q.filter.as_ref().unwrap(), &user())
}

/// Filters as directories and RFC 7644 §3.4.2.2 write them: names without case, `userName`
/// compared without case and `externalId` with it, value paths, `pr`, `not`, `or`, dates.
#[test]
fn filters_match_as_the_rfc_says() {
    for yes in [
        r#"userName eq "ANN.LEE@clinic.example""#,
        r#"USERNAME Eq "ann.lee@clinic.example""#,
        r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "ann.lee@clinic.example""#,
        r#"externalId eq "E-1001""#,
        r#"emails[type eq "work" and value co "@clinic"]"#,
        r#"emails.value sw "ann""#,
        r#"emails co "clinic.example""#,
        r#"name.givenName pr"#,
        r#"active eq true"#,
        r#"not (active eq false)"#,
        r#"userName eq "x" or name.familyName eq "lee""#,
        r#"meta.lastModified gt "2026-12-01T00:00:00Z""#,
        r#"title eq null"#,
        r#"userName ne "bob""#,
    ] {
        assert!(hits(yes), "{yes} should match");
    }
    for no in [
        r#"externalId eq "e-1001""#,
        r#"emails[type eq "home"]"#,
        r#"title pr"#,
        r#"active eq false"#,
        r#"userName eq "ann" and active eq true"#,
        r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1""#,
        r#"meta.lastModified lt "2026-12-01T00:00:00Z""#,
    ] {
        assert!(!hits(no), "{no} should not match");
    }
    for bad in [
        r#"userName eq"#,
        r#"userName zz "a""#,
        "((userName eq \"a\"",
        "",
    ] {
        let e = filter(bad).expect_err(bad);
        assert_eq!(
            (e.status, e.scim_type),
            (400, Some(ScimType::InvalidFilter)),
            "{bad}"
        );
    }
    let long = format!("userName eq \"{}\"", "a".repeat(MAX_FILTER_LEN));
    assert_eq!(
        filter(&long).unwrap_err().scim_type,
        Some(ScimType::InvalidFilter)
    );
    let deep = format!(
        "{}userName eq \"a\"{}",
        "not (".repeat(100),
        ")".repeat(100)
    );
    assert_eq!(
        filter(&deep).unwrap_err().scim_type,
        Some(ScimType::InvalidFilter)
    );
    // Brackets alone nest nothing: bounded by the length.
    let parens = format!(
        "{}userName eq \"ann.lee@clinic.example\"{}",
        "(".repeat(900),
        ")".repeat(900)
    );
    assert!(hits(&parens));
}

fn patched(res: Value, body: Value) -> Result<Value, ScimError> {
    let mut v = res;
    apply_patch(&mut v, &body)?;
    Ok(v)
}

/// Entra ID's PATCHes, as its provisioning service sends them: capitalised ops, `"False"` as a
/// string, path-less values whose keys are paths, a work address added through a value path
/// on a person without one, the enterprise extension (dropped).
#[test]
fn entra_patches_apply() {
    let body = json!({
        "schemas": [PATCH_URN],
        "Operations": [
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "Add", "value": {"name.givenName": "Annie", "displayName": "Annie Lee"}},
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "annie.lee@clinic.example"},
            {"op": "Add", "path": "emails[type eq \"home\"].value", "value": "annie@home.example"},
            {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Oncology"},
            {"op": "Replace", "value": {"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "7"}}},
            {"op": "Add", "path": "title", "value": "Nurse"}
        ]
    });
    let u = UserIn::parse(&patched(user(), body).unwrap()).unwrap();
    assert!(!u.active);
    assert_eq!(u.display_name.as_deref(), Some("Annie Lee"));
    assert_eq!(u.name.given_name.as_deref(), Some("Annie"));
    assert_eq!(
        u.name.family_name.as_deref(),
        Some("Lee"),
        "other name parts stay"
    );
    assert_eq!(u.email(), Some("annie.lee@clinic.example"));
    assert_eq!(u.emails.len(), 2);
    assert_eq!(u.emails[1].kind.as_deref(), Some("home"));
    // A path-less replace of the person's state, as Okta and Entra both send it.
    let off = json!({"Operations": [{"op": "replace", "value": {"active": false}}]});
    assert!(
        !UserIn::parse(&patched(user(), off).unwrap())
            .unwrap()
            .active
    );
    let on = json!({"Operations": [{"op": "REPLACE", "value": {"active": "True"}}]});
    assert!(UserIn::parse(&patched(user(), on).unwrap()).unwrap().active);
}

/// Group membership PATCHes: Entra ID adds with a path and removes with a value list; Okta
/// replaces the list or removes through a value path.
#[test]
fn member_patches_apply() {
    let g = group_json(
        "epcs-signers",
        None,
        &["u1".into(), "u2".into()],
        "https://gw.example/s",
    );
    let add = json!({"Operations": [{"op": "Add", "path": "members", "value": [{"value": "u3"}, {"value": "u1"}]}]});
    let v = patched(g.clone(), add).unwrap();
    assert_eq!(GroupIn::parse(&v).unwrap().members, ["u1", "u2", "u3"]);
    let remove =
        json!({"Operations": [{"op": "Remove", "path": "members", "value": [{"value": "u2"}]}]});
    assert_eq!(
        GroupIn::parse(&patched(v, remove).unwrap())
            .unwrap()
            .members,
        ["u1", "u3"]
    );
    let okta = json!({"Operations": [{"op": "remove", "path": "members[value eq \"u1\"]"}]});
    assert_eq!(
        GroupIn::parse(&patched(g.clone(), okta).unwrap())
            .unwrap()
            .members,
        ["u2"]
    );
    let replace =
        json!({"Operations": [{"op": "replace", "path": "members", "value": [{"value": "u9"}]}]});
    assert_eq!(
        GroupIn::parse(&patched(g.clone(), replace).unwrap())
            .unwrap()
            .members,
        ["u9"]
    );
    let all = json!({"Operations": [{"op": "remove", "path": "members"}]});
    assert!(GroupIn::parse(&patched(g.clone(), all).unwrap())
        .unwrap()
        .members
        .is_empty());
    // A value path that selects nothing and describes no element.
    let none = json!({"Operations": [{"op": "replace", "path": "members[value co \"x\"].display", "value": "y"}]});
    assert_eq!(
        patched(g.clone(), none).unwrap_err().scim_type,
        Some(ScimType::NoTarget)
    );
    for (bad, kind) in [
        (json!({"Operations": []}), ScimType::InvalidSyntax),
        (json!({"schemas": [PATCH_URN]}), ScimType::InvalidSyntax),
        (
            json!({"Operations": [{"op": "move", "path": "members"}]}),
            ScimType::InvalidSyntax,
        ),
        (
            json!({"Operations": [{"op": "add", "path": "members[", "value": 1}]}),
            ScimType::InvalidPath,
        ),
        (
            json!({"Operations": [{"op": "add", "value": {"members[": 1}}]}),
            ScimType::InvalidPath,
        ),
    ] {
        assert_eq!(
            patched(g.clone(), bad.clone()).unwrap_err().scim_type,
            Some(kind),
            "{bad}"
        );
    }
}

/// What aalgate cannot hold is refused with the reason: user and group names, addresses,
/// `active` left out, groups in groups, oversized values.
#[test]
fn what_cannot_be_held_is_refused() {
    let ok = json!({"userName": "nora", "active": true});
    assert!(UserIn::parse(&ok).is_ok());
    for bad in [
        json!({"userName": "Nora Smith", "active": true}),
        json!({"userName": "", "active": true}),
        json!({"userName": "a".repeat(65), "active": true}),
        json!({"active": true}),
        json!({"userName": "nora"}),
        json!({"userName": "nora", "active": "maybe"}),
        json!({"userName": "nora", "active": true, "emails": [{"value": "not an address"}]}),
        json!({"userName": "nora", "active": true, "emails": [{"value": "a@b.example", "primary": true}, {"value": "c@d.example", "primary": true}]}),
        json!({"userName": "nora", "active": true, "displayName": "x".repeat(300)}),
        json!({"userName": "nora", "active": true, "displayName": "line\nbreak"}),
        json!({"userName": 7, "active": true}),
        json!([1, 2]),
    ] {
        let e = UserIn::parse(&bad).expect_err(&bad.to_string());
        assert_eq!(e.status, 400, "{bad}");
    }
    assert!(GroupIn::parse(&json!({"displayName": "epcs-signers"})).is_ok());
    for bad in [
        json!({"displayName": "EPCS Signers"}),
        json!({"displayName": "epcs-signers", "members": [{"value": "g1", "type": "Group"}]}),
        json!({"displayName": "epcs-signers", "members": [{"display": "no value"}]}),
        json!({"members": []}),
    ] {
        assert_eq!(
            GroupIn::parse(&bad).expect_err(&bad.to_string()).status,
            400,
            "{bad}"
        );
    }
    let many: Vec<Value> = (0..=resource::MAX_MEMBERS)
        .map(|i| json!({"value": i.to_string()}))
        .collect();
    let e = GroupIn::parse(&json!({"displayName": "big", "members": many})).unwrap_err();
    assert_eq!(e.scim_type, Some(ScimType::TooMany));
    let j: Value =
        serde_json::from_str(&ScimError::taken("user nora exists already").to_json()).unwrap();
    assert_eq!(
        (
            j["schemas"][0].as_str(),
            j["status"].as_str(),
            j["scimType"].as_str()
        ),
        (Some(ERROR_URN), Some("409"), Some("uniqueness"))
    );
}

/// Okta's full PUT, with a password it always sends: the password is never kept.
#[test]
fn okta_put_keeps_no_password() {
    let put = json!({
        "schemas": [USER_URN],
        "id": "ignored",
        "userName": "omar.khan@clinic.example",
        "name": {"givenName": "Omar", "familyName": "Khan"},
        "emails": [{"primary": true, "value": "omar.khan@clinic.example", "type": "work"}],
        "displayName": "Omar Khan",
        "locale": "en-US",
        "password": "Sup3rS3cret!",
        "active": false,
        "groups": []
    });
    let u = UserIn::parse(&put).unwrap();
    assert!(!u.active);
    let kept = serde_json::to_string(&u.attrs("t0", "t1")).unwrap();
    assert!(
        !kept.contains("Sup3r") && !kept.contains("locale"),
        "{kept}"
    );
    assert_eq!(u.shown_name(), "Omar Khan");
}

/// `attributes` keeps what it names (and `id`, `schemas`, `meta`); `excludedAttributes` drops
/// what it names; paging counts from 1 and caps the page.
#[test]
fn projection_and_paging() {
    let mut v = user();
    project(&mut v, &["name.givenName".into(), "userName".into()], &[]);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "meta", "name", "schemas", "userName"]);
    assert_eq!(v["name"], json!({"givenName": "Ann"}));
    let mut v = user();
    project(
        &mut v,
        &[],
        &[
            "emails".into(),
            "urn:ietf:params:scim:schemas:core:2.0:User:name".into(),
            "id".into(),
        ],
    );
    assert!(v.get("emails").is_none() && v.get("name").is_none() && v.get("id").is_some());
    let q = ListQuery::from_pairs([("startIndex", "0"), ("count", "5000")].into_iter()).unwrap();
    assert_eq!((q.start_index, q.count), (1, MAX_COUNT));
    let q = ListQuery::from_pairs([("startIndex", "3"), ("count", "2")].into_iter()).unwrap();
    assert_eq!(q.page((1..=10).collect()), (10, vec![3, 4]));
    let q = ListQuery::from_pairs([("count", "-1")].into_iter()).unwrap();
    assert_eq!(q.page(vec![1, 2]), (2, vec![]));
    assert!(ListQuery::from_pairs([("count", "x")].into_iter()).is_err());
    let q = ListQuery::from_search(&json!({"schemas": [SEARCH_URN], "filter": "active eq true", "startIndex": 2, "count": 1, "attributes": ["userName"]})).unwrap();
    assert_eq!(
        (
            q.start_index,
            q.count,
            q.attributes.len(),
            q.filter.is_some()
        ),
        (2, 1, 1, true)
    );
    assert_eq!(discovery::schemas("b").len(), 2);
    assert_eq!(DEFAULT_COUNT, 100);
}

/// Keys and attribute names with multi-byte characters where the schema URN would end are
/// refused or ignored, never a panic (a byte slice through a character).
#[test]
fn multibyte_names_never_panic() {
    let urn = USER_URN;
    for cut in [urn.len() - 2, urn.len() - 1, urn.len()] {
        let key = format!("{}é:userName", &urn[..cut]);
        let body = json!({ key.clone(): "x", "userName": "nora", "active": true });
        assert!(UserIn::parse(&body).is_ok(), "{key}");
        let mut v = user();
        project(
            &mut v,
            std::slice::from_ref(&key),
            std::slice::from_ref(&key),
        );
        let patch = json!({"Operations": [{"op": "add", "value": { key.clone(): "y" }}]});
        let _ = apply_patch(&mut user(), &patch);
    }
}

/// One PATCH cannot make a resource grow without bound: a large value copied into every
/// element of a long list is refused, not built.
#[test]
fn a_patch_cannot_multiply_its_body() {
    let members: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let g = group_json("big", None, &members, "https://gw.example/s");
    let big = "x".repeat(100 * 1024);
    for path in ["members.display", "members[value sw \"u\"].display"] {
        let body = json!({"Operations": [{"op": "add", "path": path, "value": big}]});
        let e = patched(g.clone(), body).expect_err(path);
        assert_eq!(e.scim_type, Some(ScimType::TooMany), "{path}");
    }
    // Small values on a long list are fine.
    let body = json!({"Operations": [{"op": "add", "path": "members.display", "value": "x"}]});
    assert!(patched(g, body).is_ok());
}

/// The bound is on everything one PATCH inserts, not on each operation: values added and
/// removed again, or spread over many operations or path-less keys, cannot build gigabytes
/// before the result is measured.
#[test]
fn a_patch_has_one_budget() {
    let members: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    let g = group_json("big", None, &members, "https://gw.example/s");
    let chunk = "x".repeat(400 * 1024);
    let mut ops = Vec::new();
    for _ in 0..4 {
        ops.push(json!({"op": "add", "path": "members.x", "value": chunk}));
        ops.push(json!({"op": "remove", "path": "members.x"}));
    }
    let e = patched(g.clone(), json!({ "Operations": ops })).unwrap_err();
    assert_eq!(e.scim_type, Some(ScimType::TooMany));
    let mut keys = serde_json::Map::new();
    for k in 0..30 {
        keys.insert(format!("members.k{k}"), json!(chunk.clone()));
    }
    let e = patched(g, json!({"Operations": [{"op": "add", "value": keys}]})).unwrap_err();
    assert_eq!(e.scim_type, Some(ScimType::TooMany));
}
