//! SCIM provisioning with the real binary: scim2-tester (an independent RFC 7643/7644
//! compliance checker from PyPI) against the endpoint, what it does not check (filters,
//! paging, the error answers, the token), Entra ID's and Okta's payloads replayed as they send
//! them, and a deprovisioning that ends a live session and an open WebSocket on two instances
//! sharing Redis within about a second.

use std::process::Command;
use std::time::{Duration, Instant};

use aalgate_session::{EmbeddedStore, RedisStore, SessionStore};
use aalgate_tests::{cli, get, send, workspace, Gateway, Redis, Response, Upstream};
use serde_json::{json, Value};

use crate::{link_session, make_session};

const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// A provisioning token and the `scim:` config naming its hash.
struct Token {
    token: String,
    _dir: tempfile::TempDir,
    config: String,
}

fn token(client: &str) -> Token {
    token_with(client, "")
}

/// With more `scim:` keys (each line indented two spaces).
fn token_with(client: &str, more: &str) -> Token {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = aalgate_auth::Token::generate();
    let file = dir.path().join("scim.sha256");
    std::fs::write(&file, format!("{}\n", t.hash())).expect("write token hash");
    Token {
        token: t.expose().to_string(),
        config: format!(
            "scim:\n  token_file: {}\n  client: {client}\n{more}audit:\n  output: file:audit.jsonl\n",
            file.display()
        ),
        _dir: dir,
    }
}

fn scim(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "{method} /.aalgate/scim/v2{path} HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Content-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(port, raw.as_bytes())
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// A SCIM error answer: the status, the Error schema, and the `scimType` when one is due.
fn assert_error(r: &Response, status: u16, scim_type: Option<&str>, what: &str) {
    let j = json_of(r);
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        (
            j["schemas"][0].as_str(),
            j["status"].as_str(),
            j["scimType"].as_str()
        ),
        (
            Some("urn:ietf:params:scim:api:messages:2.0:Error"),
            Some(status.to_string().as_str()),
            scim_type
        ),
        "{what}: {j}"
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/scim+json"),
        "{what}"
    );
}

/// Store calls a request could make: the gateway's own background tasks (the store monitor's
/// `ping` and `durable`, the session count's `stats`, the decoy refresh's `kv_list`) run
/// beside the test and are left out.
fn store_calls(g: &Gateway) -> f64 {
    const BACKGROUND: [&str; 4] = ["ping", "durable", "stats", "kv_list"];
    g.scrape()
        .lines()
        .filter(|l| l.starts_with("aalgate_store_duration_seconds_count"))
        .filter(|l| {
            !BACKGROUND
                .iter()
                .any(|op| l.contains(&format!("op=\"{op}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn policy(up: u16) -> String {
    format!("app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{up}\ndefault: aal2\n")
}

/// scim2-tester passes with no check failed or skipped; then what it does not check: the
/// token (401 with SCIM error JSON, and no store call for a flood of them), `userName eq`
/// filters and paging, and the 400, 404, 409 and 413 answers; a new token from the CLI.
#[test]
fn scim_passes_the_compliance_checker_and_refuses_precisely() {
    let up = Upstream::start();
    let t = token("entra");
    let g = Gateway::start_extra(&[("ehr.yaml", &policy(up.port))], &t.config);
    let p = g.port;
    let tok = Some(t.token.as_str());

    // The token: missing, wrong, the stored hash itself, another scheme.
    let hash = aalgate_auth::token::hash_str(&t.token);
    for (bad, what) in [
        (None, "no token"),
        (Some("x".repeat(43)), "a wrong token"),
        (Some(hash.clone()), "the hash from the token file"),
    ] {
        let r = scim(p, "GET", "/Users", bad.as_deref(), None);
        assert_error(&r, 401, None, what);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"aalgate-scim\""),
            "{what}"
        );
    }
    let basic = send(
        p,
        format!("GET /.aalgate/scim/v2/Users HTTP/1.1\r\nHost: localhost:{p}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n", t.token).as_bytes(),
    );
    assert_error(&basic, 401, None, "basic auth");
    // A flood of anonymous requests with bodies costs the store nothing.
    let before = store_calls(&g);
    let junk = json!({"userName": "x".repeat(60), "active": true});
    for _ in 0..300 {
        assert_eq!(
            scim(p, "POST", "/Users", Some("nope"), Some(&junk)).status,
            401
        );
    }
    assert_eq!(
        store_calls(&g),
        before,
        "an unauthenticated SCIM request reached the store"
    );
    // Not on an app host.
    let r = send(
        p,
        format!("GET /.aalgate/scim/v2/Users HTTP/1.1\r\nHost: ehr.localhost:{p}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", t.token).as_bytes(),
    );
    assert_eq!(r.status, 404, "SCIM answered on an app host");

    // The independent checker: every check passes, none skipped.
    let out = Command::new("python3")
        .arg(workspace().join("tests/scim/compliance.py"))
        .arg(format!("http://localhost:{p}/.aalgate/scim/v2"))
        .arg(&t.token)
        .output()
        .expect("python3 (tests/run.sh installs scim2-tester)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scim2-tester failed:\n{}\n{}\n{}",
        report
            .lines()
            .filter(|l| !l.starts_with("SUCCESS"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    let checks = report.lines().filter(|l| l.starts_with("SUCCESS")).count();
    assert!(checks >= 60, "only {checks} checks ran:\n{report}");

    // Filters and paging.
    for i in 0..5 {
        let r = scim(
            p,
            "POST",
            "/Users",
            tok,
            Some(
                &json!({"schemas": [USER_URN], "userName": format!("page.{i}@clinic.example"), "active": true}),
            ),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert!(r
            .header("location")
            .is_some_and(|l| l.contains("/.aalgate/scim/v2/Users/")));
    }
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName%20eq%20%22PAGE.3@clinic.example%22",
        tok,
        None,
    );
    let j = json_of(&r);
    assert_eq!(
        (r.status, j["totalResults"].as_u64()),
        (200, Some(1)),
        "{j}"
    );
    assert_eq!(j["Resources"][0]["userName"], "page.3@clinic.example");
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName%20eq%20%22nobody%22",
        tok,
        None,
    );
    assert_eq!(json_of(&r)["totalResults"], 0);
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName%20sw%20%22page.%22&startIndex=2&count=2",
        tok,
        None,
    );
    let j = json_of(&r);
    assert_eq!(
        (
            j["totalResults"].as_u64(),
            j["startIndex"].as_u64(),
            j["itemsPerPage"].as_u64()
        ),
        (Some(5), Some(2), Some(2)),
        "{j}"
    );
    let names: Vec<&str> = j["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["userName"].as_str())
        .collect();
    assert_eq!(names.len(), 2);
    let r = scim(
        p,
        "POST",
        "/Users/.search",
        tok,
        Some(&json!({"filter": "userName ew \"@clinic.example\"", "count": 0})),
    );
    assert_eq!(
        (
            json_of(&r)["totalResults"].as_u64(),
            json_of(&r)["itemsPerPage"].as_u64()
        ),
        (Some(5), Some(0))
    );

    // The error answers.
    assert_error(
        &scim(p, "GET", "/Users?filter=userName%20eq", tok, None),
        400,
        Some("invalidFilter"),
        "a bad filter",
    );
    assert_error(
        &scim(
            p,
            "GET",
            "/Users/6b3e1c52-0000-4000-8000-000000000000",
            tok,
            None,
        ),
        404,
        None,
        "an unknown user",
    );
    assert_error(
        &scim(p, "GET", "/Groups/no-such-group", tok, None),
        404,
        None,
        "an unknown group",
    );
    assert_error(
        &scim(p, "GET", "/Nothing", tok, None),
        404,
        None,
        "an unknown endpoint",
    );
    let dup = json!({"schemas": [USER_URN], "userName": "page.1@clinic.example", "active": true});
    assert_error(
        &scim(p, "POST", "/Users", tok, Some(&dup)),
        409,
        Some("uniqueness"),
        "a duplicate userName",
    );
    let case = json!({"schemas": [USER_URN], "userName": "Page.1@clinic.example", "active": true});
    assert_error(
        &scim(p, "POST", "/Users", tok, Some(&case)),
        409,
        Some("uniqueness"),
        "a userName differing only in case",
    );
    let mail = json!({"schemas": [USER_URN], "userName": "other", "active": true, "emails": [{"value": "taken@clinic.example"}]});
    assert_eq!(scim(p, "POST", "/Users", tok, Some(&mail)).status, 201);
    let mail2 = json!({"schemas": [USER_URN], "userName": "other2", "active": true, "emails": [{"value": "TAKEN@clinic.example"}]});
    assert_error(
        &scim(p, "POST", "/Users", tok, Some(&mail2)),
        409,
        Some("uniqueness"),
        "an address another person has",
    );
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName%20eq%20%22other2%22",
        tok,
        None,
    );
    assert_eq!(
        json_of(&r)["totalResults"],
        0,
        "a refused creation left an account behind"
    );
    for (body, what) in [
        (
            json!({"schemas": [USER_URN], "userName": "Ann Lee", "active": true}),
            "a userName with a space",
        ),
        (
            json!({"schemas": [USER_URN], "userName": "ann"}),
            "no active",
        ),
    ] {
        assert_error(
            &scim(p, "POST", "/Users", tok, Some(&body)),
            400,
            Some("invalidValue"),
            what,
        );
    }
    let g1 = json!({"schemas": [GROUP_URN], "displayName": "EPCS Signers"});
    assert_error(
        &scim(p, "POST", "/Groups", tok, Some(&g1)),
        400,
        Some("invalidValue"),
        "a group name policies cannot use",
    );
    let g2 = json!({"schemas": [GROUP_URN], "displayName": "epcs-signers", "members": [{"value": "6b3e1c52-0000-4000-8000-000000000000"}]});
    assert_error(
        &scim(p, "POST", "/Groups", tok, Some(&g2)),
        400,
        Some("invalidValue"),
        "an unknown member",
    );
    assert_eq!(
        scim(p, "GET", "/Groups/epcs-signers", tok, None).status,
        404,
        "a refused group was created"
    );
    let r = send(p, format!("POST /.aalgate/scim/v2/Users HTTP/1.1\r\nHost: localhost:{p}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", t.token, 3 * 1024 * 1024).as_bytes());
    assert_error(&r, 413, None, "a body over the limit");
    assert_error(
        &scim(p, "POST", "/Users", tok, None),
        400,
        Some("invalidSyntax"),
        "no body",
    );

    // A new token from the CLI: after the upgrade, only it works.
    let (code, out, err) = cli(&g, &["scim", "token"]);
    assert_eq!(code, 0, "{err}");
    let fresh = out.trim().to_string();
    assert_eq!(fresh.len(), 43, "{out}");
    let mut g = g;
    g.restart();
    assert_eq!(
        scim(g.port, "GET", "/ServiceProviderConfig", Some(&fresh), None).status,
        200
    );
    assert_eq!(
        scim(g.port, "GET", "/ServiceProviderConfig", tok, None).status,
        401
    );
}

fn id_of(r: &Response) -> String {
    json_of(r)["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {}", String::from_utf8_lossy(&r.body)))
        .to_string()
}

/// Entra ID's and Okta's provisioning payloads, written here as their documentation and
/// traffic show them, replayed through the endpoint; the directory then holds what they say,
/// and the audit log names the client for each change, without names or addresses.
#[test]
fn entra_and_okta_payloads_provision_and_deprovision() {
    let up = Upstream::start();
    let t = token_with("entra", "  groups: [oncology-nurses, pharmacy, entra-*]\n");
    let g = Gateway::start_extra(&[("ehr.yaml", &policy(up.port))], &t.config);
    let (p, tok) = (g.port, Some(t.token.as_str()));
    let dir = aalgate_auth::Directory::new(std::sync::Arc::new(
        EmbeddedStore::open(&g.state_dir()).expect("store"),
    ));
    let rt = crate::rt();
    let member = |user: &str| rt.block_on(dir.membership(user)).expect("membership");
    let account = |user: &str| rt.block_on(dir.user(user)).expect("user");

    // Entra ID: the query before a creation, the creation with the enterprise extension.
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName+eq+%22ann.lee%40clinic.example%22",
        tok,
        None,
    );
    assert_eq!(
        (r.status, json_of(&r)["totalResults"].as_u64()),
        (200, Some(0))
    );
    let create = json!({
        "schemas": [USER_URN, ENTERPRISE_URN],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "ann.lee@clinic.example",
        "active": true,
        "addresses": [{"primary": true, "type": "work", "country": "US"}],
        "displayName": "Ann Lee",
        "emails": [{"primary": true, "type": "work", "value": "ann.lee@clinic.example"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ann Lee", "familyName": "Lee", "givenName": "Ann"},
        "phoneNumbers": [{"type": "work", "value": "+1 555 0100"}],
        "title": "Oncology Nurse",
        ENTERPRISE_URN: {"department": "Oncology", "employeeNumber": "1001"}
    });
    let r = scim(p, "POST", "/Users", tok, Some(&create));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let ann = id_of(&r);
    let stored = json_of(&scim(p, "GET", &format!("/Users/{ann}"), tok, None));
    for dropped in ["title", "phoneNumbers", "addresses", ENTERPRISE_URN] {
        assert!(
            stored.get(dropped).is_none(),
            "{dropped} was kept: {stored}"
        );
    }
    assert_eq!(
        member("ann.lee@clinic.example").email.as_deref(),
        Some("ann.lee@clinic.example")
    );
    let (_, report, _) = cli(&g, &["report", "enrollment", "--format", "json"]);
    assert!(
        report.contains("\"provisioned\""),
        "a provisioned person without a credential is not reported as such:\n{report}"
    );
    let a = account("ann.lee@clinic.example").expect("an account");
    assert!(!a.disabled && a.credentials.is_empty() && a.display_name == "Ann Lee");
    // A group, then its first member.
    let r = scim(
        p,
        "GET",
        "/Groups?filter=displayName+eq+%22oncology-nurses%22&excludedAttributes=members",
        tok,
        None,
    );
    assert_eq!(json_of(&r)["totalResults"], 0);
    let r = scim(
        p,
        "POST",
        "/Groups",
        tok,
        Some(
            &json!({"schemas": [GROUP_URN], "externalId": "8c5d6e7f", "displayName": "oncology-nurses", "members": []}),
        ),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let add = json!({"schemas": [PATCH_URN], "Operations": [{"op": "Add", "path": "members", "value": [{"value": ann}]}]});
    assert_eq!(
        scim(p, "PATCH", "/Groups/oncology-nurses", tok, Some(&add)).status,
        200
    );
    assert_eq!(member("ann.lee@clinic.example").groups, ["oncology-nurses"]);
    // A name change, with Entra ID's value path for the work address.
    let rename = json!({"schemas": [PATCH_URN], "Operations": [
        {"op": "Replace", "path": "displayName", "value": "Ann Lee-Park"},
        {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ann.park@clinic.example"},
        {"op": "Replace", "path": "name.familyName", "value": "Lee-Park"},
        {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Hematology"}
    ]});
    let r = scim(p, "PATCH", &format!("/Users/{ann}"), tok, Some(&rename));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json_of(&r)["name"]["familyName"], "Lee-Park");
    assert_eq!(
        member("ann.lee@clinic.example").email.as_deref(),
        Some("ann.park@clinic.example")
    );
    assert_eq!(
        account("ann.lee@clinic.example").unwrap().display_name,
        "Ann Lee-Park"
    );
    // userName cannot change.
    let moved = json!({"schemas": [PATCH_URN], "Operations": [{"op": "Replace", "path": "userName", "value": "ann.park@clinic.example"}]});
    assert_error(
        &scim(p, "PATCH", &format!("/Users/{ann}"), tok, Some(&moved)),
        400,
        Some("mutability"),
        "a userName change",
    );
    // Entra ID removes a member with a value list, and disables with the string "False".
    let remove = json!({"schemas": [PATCH_URN], "Operations": [{"op": "Remove", "path": "members", "value": [{"value": ann}]}]});
    assert_eq!(
        scim(p, "PATCH", "/Groups/oncology-nurses", tok, Some(&remove)).status,
        200
    );
    assert!(member("ann.lee@clinic.example").groups.is_empty());
    let off = json!({"schemas": [PATCH_URN], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let r = scim(p, "PATCH", &format!("/Users/{ann}"), tok, Some(&off));
    assert_eq!(
        (r.status, json_of(&r)["active"].as_bool()),
        (200, Some(false))
    );
    assert!(account("ann.lee@clinic.example").unwrap().disabled);
    let r = scim(p, "GET", "/Users?filter=active+eq+false", tok, None);
    assert_eq!(json_of(&r)["totalResults"], 1);
    // An invite for a disabled person is refused (the CLI's own check).
    let (code, _, err) = cli(
        &g,
        &[
            "users",
            "invite",
            "ann.lee@clinic.example",
            "--display-name",
            "Ann",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("disabled"),
        "refused for another reason: {err}"
    );
    // Deleted: gone, and the name is free again, for a new account with a new id.
    assert_eq!(
        scim(p, "DELETE", &format!("/Users/{ann}"), tok, None).status,
        204
    );
    assert_error(
        &scim(p, "GET", &format!("/Users/{ann}"), tok, None),
        404,
        None,
        "a deleted user",
    );
    assert!(account("ann.lee@clinic.example").is_none());
    assert_eq!(
        member("ann.lee@clinic.example"),
        aalgate_auth::model::Membership::default()
    );
    let again = scim(
        p,
        "POST",
        "/Users",
        tok,
        Some(&json!({"schemas": [USER_URN], "userName": "ann.lee@clinic.example", "active": true})),
    );
    assert_eq!(again.status, 201);
    assert_ne!(
        id_of(&again),
        ann,
        "a new person under an old name got the old id"
    );

    // Okta: the lookup with paging, a creation with a password (never kept), full PUTs.
    let r = scim(
        p,
        "GET",
        "/Users?filter=userName%20eq%20%22omar.khan%40clinic.example%22&startIndex=1&count=100",
        tok,
        None,
    );
    assert_eq!(json_of(&r)["totalResults"], 0);
    let mut omar_body = json!({
        "schemas": [USER_URN],
        "userName": "omar.khan@clinic.example",
        "name": {"givenName": "Omar", "familyName": "Khan"},
        "emails": [{"primary": true, "value": "omar.khan@clinic.example", "type": "work"}],
        "displayName": "Omar Khan",
        "locale": "en-US",
        "externalId": "00u1ab2cd3EF4gh5i6j7",
        "groups": [],
        "password": "xK9#mQ2$vL7p",
        "active": true
    });
    let r = scim(p, "POST", "/Users", tok, Some(&omar_body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let omar = id_of(&r);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("xK9"),
        "the password came back"
    );
    omar_body["id"] = omar.clone().into();
    omar_body["name"]["familyName"] = "Khan-Ali".into();
    let r = scim(p, "PUT", &format!("/Users/{omar}"), tok, Some(&omar_body));
    assert_eq!(
        (r.status, json_of(&r)["name"]["familyName"].as_str()),
        (200, Some("Khan-Ali"))
    );
    let r = scim(
        p,
        "POST",
        "/Groups",
        tok,
        Some(&json!({"schemas": [GROUP_URN], "displayName": "pharmacy", "members": []})),
    );
    assert_eq!(r.status, 201);
    // Okta's group "rename" with the same name, then members.
    let same = json!({"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {"id": "pharmacy", "displayName": "pharmacy"}}]});
    assert_eq!(
        scim(p, "PATCH", "/Groups/pharmacy", tok, Some(&same)).status,
        200
    );
    let add = json!({"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": omar, "display": "omar.khan@clinic.example"}]}]});
    assert_eq!(
        scim(p, "PATCH", "/Groups/pharmacy", tok, Some(&add)).status,
        200
    );
    assert_eq!(member("omar.khan@clinic.example").groups, ["pharmacy"]);
    let renamed = json!({"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {"displayName": "pharmacy-techs"}}]});
    assert_error(
        &scim(p, "PATCH", "/Groups/pharmacy", tok, Some(&renamed)),
        400,
        Some("mutability"),
        "a group rename",
    );
    // Okta deactivates with a full PUT.
    omar_body["active"] = false.into();
    let r = scim(p, "PUT", &format!("/Users/{omar}"), tok, Some(&omar_body));
    assert_eq!(
        (r.status, json_of(&r)["active"].as_bool()),
        (200, Some(false))
    );
    assert!(account("omar.khan@clinic.example").unwrap().disabled);
    // ... and reactivates with a path-less PATCH: the person may sign in again.
    let on = json!({"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {"active": true}}]});
    assert_eq!(
        scim(p, "PATCH", &format!("/Users/{omar}"), tok, Some(&on)).status,
        200
    );
    assert!(!account("omar.khan@clinic.example").unwrap().disabled);
    // IT's own disable is not the directory's to lift: only `users enable` does.
    let (code, _, err) = cli(&g, &["users", "disable", "omar.khan@clinic.example"]);
    assert_eq!(code, 0, "{err}");
    let r = scim(p, "PATCH", &format!("/Users/{omar}"), tok, Some(&on));
    assert_eq!(
        (r.status, json_of(&r)["active"].as_bool()),
        (200, Some(false)),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(account("omar.khan@clinic.example").unwrap().disabled);
    let (code, _, err) = cli(&g, &["users", "enable", "omar.khan@clinic.example"]);
    assert_eq!(code, 0, "{err}");
    assert!(!account("omar.khan@clinic.example").unwrap().disabled);
    // Groups outside scim.groups are IT's alone: invisible, and not to be created.
    rt.block_on(dir.change_groups("omar.khan@clinic.example", &["epcs-signers".into()], &[]))
        .expect("add");
    assert_eq!(
        scim(p, "GET", "/Groups/epcs-signers", tok, None).status,
        404
    );
    let listed = json_of(&scim(p, "GET", "/Groups", tok, None));
    assert!(!listed.to_string().contains("epcs-signers"), "{listed}");
    let r = scim(
        p,
        "POST",
        "/Groups",
        tok,
        Some(&json!({"schemas": [GROUP_URN], "displayName": "epcs-signers"})),
    );
    assert_error(&r, 403, None, "a group outside scim.groups");
    assert_eq!(
        member("omar.khan@clinic.example").groups,
        ["epcs-signers", "pharmacy"]
    );
    let r = scim(
        p,
        "POST",
        "/Groups",
        tok,
        Some(&json!({"schemas": [GROUP_URN], "displayName": "entra-float-pool"})),
    );
    assert_eq!(r.status, 201, "a prefix in scim.groups");
    let gone = json!({"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": format!("members[value eq \"{omar}\"]")}]});
    assert_eq!(
        scim(p, "PATCH", "/Groups/pharmacy", tok, Some(&gone)).status,
        200
    );
    assert_eq!(
        member("omar.khan@clinic.example").groups,
        ["epcs-signers"],
        "IT's group stays"
    );
    assert_eq!(scim(p, "DELETE", "/Groups/pharmacy", tok, None).status, 204);
    assert_eq!(scim(p, "GET", "/Groups/pharmacy", tok, None).status, 404);

    // The audit log: each change as the provisioning client, without names or addresses.
    let log = std::fs::read_to_string(g.dir.path().join("audit.jsonl")).unwrap_or_default();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let scim_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["operator"] == "scim:entra")
        .collect();
    for kind in [
        "user_provisioned",
        "groups_changed",
        "user_changed",
        "user_disabled",
        "user_enabled",
        "user_enable_refused",
        "user_removed",
        "group_provisioned",
        "group_removed",
    ] {
        assert!(
            scim_events.iter().any(|e| e["event"] == kind),
            "no {kind} event:\n{log}"
        );
    }
    for pii in ["Lee-Park", "ann.park@", "Khan", "Omar", "Oncology", "xK9"] {
        assert!(!log.contains(pii), "the audit log holds {pii:?}:\n{log}");
    }
}

/// Deprovisioning reaches two instances sharing Redis: a membership removal ends access to the
/// group's app, and `active: false` (Entra ID's string) ends the session and its open
/// WebSocket, each within about a second.
#[test]
fn a_leaver_loses_every_session_on_every_instance_within_a_second() {
    use std::io::Read;
    let redis = Redis::start();
    let up = Upstream::start();
    let ws = crate::transparency::ws_echo();
    let policies = [
        ("ehr.yaml", format!("app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\nallow: {{ groups: [clinical] }}\n", up.port)),
        ("ws.yaml", format!("app: monitor\nhost: ws.localhost\nupstream: http://127.0.0.1:{ws}\ndefault: aal2\n")),
    ];
    let policies: Vec<(&str, &str)> = policies.iter().map(|(n, p)| (*n, p.as_str())).collect();
    let t = token("okta");
    let a = Gateway::start_with_store_extra(&redis.url(), &policies, &t.config);
    let b = Gateway::start_with_store_extra(&redis.url(), &policies, &t.config);
    let tok = Some(t.token.as_str());
    let r = scim(
        a.port,
        "POST",
        "/Users",
        tok,
        Some(&json!({"schemas": [USER_URN], "userName": "lena", "active": true})),
    );
    assert_eq!(
        r.status,
        201,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        a.log()
    );
    let lena = id_of(&r);
    let r = scim(
        b.port,
        "POST",
        "/Groups",
        tok,
        Some(
            &json!({"schemas": [GROUP_URN], "displayName": "clinical", "members": [{"value": lena}]}),
        ),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // A store per runtime: each helper call runs its own.
    let store = || RedisStore::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let (ha, hb, hw) = (
        format!("ehr.localhost:{}", a.port),
        format!("ehr.localhost:{}", b.port),
        format!("ws.localhost:{}", a.port),
    );
    let on_a = make_session(&store(), &ha, "lena", aalgate_policy::Aal::Aal2, 60, 0);
    let on_b = link_session(&store(), &on_a, &ha, &hb);
    let on_ws = link_session(&store(), &on_a, &ha, &hw);
    let cookie = |c: &str| format!("Cookie: aalgate={c}");
    assert_eq!(get(a.port, &ha, "/chart", &[&cookie(&on_a)]).status, 200);
    assert_eq!(get(b.port, &hb, "/chart", &[&cookie(&on_b)]).status, 200);
    let mut socket = crate::transparency::ws_open_on(a.port, &hw, &on_ws);
    if let Err(e) = crate::transparency::ws_roundtrip(&mut socket, "vitals") {
        panic!("the first frame: {e}\n{}", a.log());
    }

    // Out of the group (Okta's value-path removal, through instance A): 403 on both.
    let out = json!({"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": format!("members[value eq \"{lena}\"]")}]});
    assert_eq!(
        scim(a.port, "PATCH", "/Groups/clinical", tok, Some(&out)).status,
        200
    );
    let t0 = Instant::now();
    let (mut gone_a, mut gone_b) = (false, false);
    while !(gone_a && gone_b) {
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "still admitted after {:?}: a {gone_a}, b {gone_b}",
            t0.elapsed()
        );
        gone_a = gone_a || get(a.port, &ha, "/chart", &[&cookie(&on_a)]).status == 403;
        gone_b = gone_b || get(b.port, &hb, "/chart", &[&cookie(&on_b)]).status == 403;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        crate::transparency::ws_echoes(&mut socket, "still allowed"),
        "the monitor app needs no group:\n{}",
        a.log()
    );

    // Deactivated through instance B: the WebSocket on A closes, and no session is left.
    let off = json!({"schemas": [PATCH_URN], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    assert_eq!(
        scim(b.port, "PATCH", &format!("/Users/{lena}"), tok, Some(&off)).status,
        200
    );
    let t0 = Instant::now();
    let mut byte = [0u8; 1];
    assert!(
        matches!(socket.read(&mut byte), Ok(0)),
        "the leaver's WebSocket stayed open"
    );
    // Within the once-a-second check, not the one after.
    assert!(
        t0.elapsed() < Duration::from_millis(1600),
        "closed only after {:?}",
        t0.elapsed()
    );
    for (port, host, c) in [
        (a.port, &hw, &on_ws),
        (b.port, &hb, &on_b),
        (a.port, &ha, &on_a),
    ] {
        // Each instance's session cache holds an answer at most a second.
        loop {
            let r = get(port, host, "/chart", &[&cookie(c)]);
            if matches!(r.status, 302 | 303) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_millis(1500),
                "{host}: {} {:?} after deactivation",
                r.status,
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let counted = rt_count(&store(), "lena");
    assert_eq!(counted, 0, "sessions of the leaver are still in the store");
}

fn rt_count(store: &RedisStore, user: &str) -> usize {
    crate::rt()
        .block_on(store.revoke_user(user))
        .expect("revoke")
}

/// The token compare leaks nothing of the stored hash: counted in instructions under
/// callgrind (stable on this machine, unlike time), a token whose hash differs from the stored
/// one in the first digit costs what one differing in the last digit costs, over 2 000 calls;
/// a byte-by-byte compare with an early exit, measured the same way, differs by thousands.
#[test]
fn the_token_compare_costs_the_same_whichever_digit_differs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "aalgate-benches",
            "--bin",
            "token-compare",
        ])
        .current_dir(workspace())
        .status()
        .expect("cargo build");
    assert!(built.success(), "could not build token-compare");
    let exe = aalgate_tests::aalgate_bin().with_file_name("token-compare");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let count = |mode: &str| -> u64 {
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                out_dir.path().join(mode).display()
            ))
            .arg(&exe)
            .arg(mode)
            .output()
            .expect("valgrind (tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no instruction count:\n{err}"))
    };
    let (first, last) = (count("first"), count("last"));
    assert!(
        first.abs_diff(last) < 2000,
        "the compare's cost depends on where the hashes differ: {first} vs {last} instructions"
    );
    let (naive_first, naive_last) = (count("naive-first"), count("naive-last"));
    assert!(
        naive_last.abs_diff(naive_first) > 2000 * 20,
        "the count does not see an early exit: {naive_first} vs {naive_last}"
    );
}
