//! `aalgate store backup` / `restore` with the embedded store: people, credentials and groups
//! come back; sessions and one-time tokens never do, so nothing logged out or used since the
//! backup is revived, and a restore enables nobody.

use std::sync::Arc;

use aalgate_auth::{Directory, User};
use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{EmbeddedStore, SessionStore};
use aalgate_tests::{cli, get, logout, Gateway, Upstream};

use crate::signin::enrolled;
use crate::{make_session, policy, rt};

fn person(id: &str) -> User {
    User {
        id: id.into(),
        display_name: id.to_uppercase(),
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: Aal::Aal2,
        created: Timestamp::wall(),
        last_login: None,
        disabled_by: None,
        credentials: vec![enrolled(32, &["usb"])],
    }
}

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(out.0, 0, "{}{}", out.1, out.2);
    out.1
}

#[test]
fn a_restore_brings_back_people_keys_and_groups_but_no_session_and_enables_nobody() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let store: Arc<dyn SessionStore> = Arc::new(EmbeddedStore::open(&g.state_dir()).unwrap());
    let dir = Directory::new(store.clone());
    let (ivan, judy) = (person("ivan"), person("judy"));
    rt().block_on(async {
        dir.put_user(&ivan).await.unwrap();
        dir.put_user(&judy).await.unwrap();
    });
    ok(cli(&g, &["users", "groups", "ivan", "--add", "clinical"]));
    let cookie = make_session(store.as_ref(), &host, "ivan", Aal::Aal2, 60, 1);
    let c = format!("Cookie: aalgate={cookie}");
    assert_eq!(get(g.port, &host, "/x", &[&c]).status, 200);
    let invite = ok(cli(&g, &["users", "invite", "nora"]));

    let file = g.dir.path().join("directory.backup");
    let said = ok(cli(&g, &["store", "backup", file.to_str().unwrap()]));
    assert!(said.contains("2 person(s)"), "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup names every person: 0600");
    }
    for ns in [
        "\"invite\"",
        "\"code\"",
        "\"pending\"",
        "\"tomb\"",
        "\"admit\"",
    ] {
        assert!(!text.contains(ns), "the backup holds {ns} records");
    }
    // Only directory records: no session, link, flow or quota record, whatever its name.
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("the backup is JSON");
    let directory = [
        "user",
        "handle",
        "cred",
        "access",
        "scim_user",
        "scim_group",
        "oidc_subject",
    ];
    let entries = parsed["entries"].as_array().expect("entries");
    assert!(entries.len() >= 4, "{text}");
    for e in entries {
        let ns = e["ns"].as_str().unwrap_or_default();
        assert!(directory.contains(&ns), "a {ns} record in the backup");
    }
    let handle = aalgate_session::SessionId::from_cookie(&cookie)
        .expect("a session cookie")
        .key();
    assert!(
        !text.contains(handle.as_str()),
        "ivan's session is in the backup"
    );

    // After the backup: ivan logs out and is then removed (say, by the hospital's
    // directory); judy is disabled, and a key of hers revoked.
    assert_eq!(logout(g.port, &host, &cookie).status, 200);
    rt().block_on(dir.remove_user("ivan")).unwrap();
    ok(cli(&g, &["users", "disable", "judy"]));
    let judy_key = judy.credentials[0].id.clone();
    ok(cli(&g, &["users", "revoke-credential", "judy", &judy_key]));

    // Into the same store: refused without --merge (people are there).
    let (code, _, err) = cli(&g, &["store", "restore", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("--merge"), "{err}");
    let said = ok(cli(
        &g,
        &["store", "restore", "--merge", file.to_str().unwrap()],
    ));
    assert!(
        said.contains("restored disabled") && said.contains("ivan"),
        "{said}"
    );
    // The logout stays: the old cookie is no session.
    assert_ne!(get(g.port, &host, "/x", &[&c]).status, 200);
    let users = ok(cli(&g, &["users", "list"]));
    let line = |who: &str| {
        users
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("ivan").contains("disabled"),
        "removed since the backup: back, disabled: {users}"
    );
    assert!(
        line("judy").contains("disabled"),
        "judy stays disabled: {users}"
    );
    assert!(
        !users.contains(&judy_key),
        "judy's revoked key stays revoked: {users}"
    );
    let groups = ok(cli(&g, &["groups", "list"]));
    assert!(
        groups.contains("clinical") && groups.contains("ivan"),
        "{groups}"
    );

    // Into a new, empty store (a lost disk): people, keys and groups are back; the invite
    // made before the backup is not.
    let fresh = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    ok(cli(&fresh, &["store", "restore", file.to_str().unwrap()]));
    let users = ok(cli(&fresh, &["users", "list"]));
    assert!(users.contains("ivan") && users.contains("judy"), "{users}");
    let fresh_store: Arc<dyn SessionStore> =
        Arc::new(EmbeddedStore::open(&fresh.state_dir()).unwrap());
    let (back, invites) = rt().block_on(async {
        (
            Directory::new(fresh_store.clone())
                .user("ivan")
                .await
                .unwrap(),
            fresh_store.kv_list("invite").await.unwrap(),
        )
    });
    let back = back.unwrap();
    assert_eq!(back.credentials.len(), 1, "ivan's key is back");
    assert_eq!(back.handle, ivan.handle);
    assert!(invites.is_empty(), "no invite restored ({invite})");
    // ivan's session was live when the backup was taken: it does not come back.
    assert_eq!(
        rt().block_on(fresh_store.revoke_user("ivan")).unwrap(),
        0,
        "a session was restored"
    );
}
