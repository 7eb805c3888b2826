//! The conformance suite every [`SessionStore`] backend must pass. It is public so the
//! end-to-end package can run it against a real `redis-server`; user names are random, so runs
//! against a shared Redis do not collide.

use std::time::Duration;

use aalgate_policy::{Aal, Timeouts, Timestamp};

use crate::{Flow, Session, SessionId, SessionStore};

fn unique(tag: &str) -> String {
    format!("{tag}-{}", &SessionId::generate().to_cookie()[..12])
}

/// A session for `user`, authenticated at `t0`, expiring `ttl` seconds later.
pub fn session(user: &str, t0: Timestamp, ttl: u64) -> Session {
    Session {
        user: user.to_string(),
        aal: Aal::Aal2,
        amr: vec!["hwk".into(), "user".into()],
        credential: Some("c0ffee".into()),
        auth_time: t0,
        last_auth: t0,
        last_seen: t0,
        expires_at: Timestamp(t0.0 + ttl),
    }
}

/// A login flow for `url`.
pub(crate) fn flow(url: &str) -> Flow {
    Flow {
        host: "billing.example".into(),
        method: "GET".into(),
        url: url.into(),
        need: crate::FlowKind::Login,
        aal: Aal::Aal2,
        max_age_secs: None,
        app: "billing".into(),
        created: Timestamp::wall(),
        user: None,
        browser: None,
        kept: None,
        binding: None,
        script: false,
    }
}

/// Runs every check.
pub async fn run_all(store: &dyn SessionStore) {
    store.ping().await.expect("ping");
    round_trip(store).await;
    expiry(store).await;
    touch(store).await;
    remove_and_revoke(store).await;
    flows(store).await;
    flow_taken_once(store).await;
    stats(store).await;
    links(store).await;
    access_with_the_session(store).await;
    kv(store).await;
    swap(store).await;
}

async fn access(
    store: &dyn SessionStore,
    handle: &crate::SessionKey,
    now: Timestamp,
) -> Option<(crate::SessionKey, String, Option<Vec<u8>>)> {
    store
        .resolve_with_access(handle, "ehr.example", now)
        .await
        .unwrap()
        .map(|r| (r.record, r.session.user, r.access))
}

/// A session resolves with its person's access record (and no one else's), as it is now.
async fn access_with_the_session(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let record = SessionId::generate().key();
    let (user, other) = (unique("access"), unique("other"));
    store
        .insert(&record, &session(&user, now, 3600))
        .await
        .unwrap();
    let handle = SessionId::generate().key();
    store
        .link(&handle, &record, "ehr.example", Timestamp(now.0 + 3600))
        .await
        .unwrap();
    assert_eq!(
        access(store, &handle, now).await,
        Some((record.clone(), user.clone(), None))
    );
    store
        .kv_put(crate::ACCESS_NS, &other, b"{\"groups\":[\"x\"]}", None)
        .await
        .unwrap();
    assert_eq!(
        access(store, &handle, now).await.and_then(|a| a.2),
        None,
        "another person's record"
    );
    store
        .kv_put(crate::ACCESS_NS, &user, b"{\"groups\":[\"billing\"]}", None)
        .await
        .unwrap();
    assert_eq!(
        access(store, &handle, now)
            .await
            .and_then(|a| a.2)
            .as_deref(),
        Some(&b"{\"groups\":[\"billing\"]}"[..])
    );
    store
        .kv_put(crate::ACCESS_NS, &user, b"{\"groups\":[]}", None)
        .await
        .unwrap();
    assert_eq!(
        access(store, &handle, now)
            .await
            .and_then(|a| a.2)
            .as_deref(),
        Some(&b"{\"groups\":[]}"[..]),
        "a change is seen at once"
    );
    assert!(store
        .resolve_with_access(&handle, "billing.example", now)
        .await
        .unwrap()
        .is_none());
    store.remove(&record).await.unwrap();
    assert_eq!(access(store, &handle, now).await, None);
}

/// Cookie handles: one per host, resolved in one call, ended with their record.
async fn links(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let record = SessionId::generate().key();
    let user = unique("links");
    store
        .insert(&record, &session(&user, now, 3600))
        .await
        .unwrap();
    let (a, b) = (SessionId::generate().key(), SessionId::generate().key());
    store
        .link(&a, &record, "ehr.example", Timestamp(now.0 + 3600))
        .await
        .unwrap();
    store
        .link(&b, &record, "billing.example:8443", Timestamp(now.0 + 3600))
        .await
        .unwrap();
    let (k, s) = store
        .resolve(&a, "ehr.example", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((k, s.user.as_str()), (record.clone(), user.as_str()));
    assert!(store
        .resolve(&b, "billing.example:8443", now)
        .await
        .unwrap()
        .is_some());
    // A handle is bound to its host.
    assert!(store
        .resolve(&a, "billing.example:8443", now)
        .await
        .unwrap()
        .is_none());
    // A record's own key is not a cookie: only a handle linked for the host resolves.
    for host in ["x.example", "ehr.example"] {
        assert!(store.resolve(&record, host, now).await.unwrap().is_none());
    }
    // Unknown handles resolve to nothing.
    let unknown = SessionId::generate().key();
    assert!(store
        .resolve(&unknown, "ehr.example", now)
        .await
        .unwrap()
        .is_none());
    // The idle clock is the record's, shared by every host.
    store.touch(&record, Timestamp(now.0 + 10)).await.unwrap();
    let (_, s) = store
        .resolve(&b, "billing.example:8443", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.last_seen, Timestamp(now.0 + 10));
    // Unlinking one host leaves the others.
    store.unlink(&a).await.unwrap();
    assert!(store
        .resolve(&a, "ehr.example", now)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .resolve(&b, "billing.example:8443", now)
        .await
        .unwrap()
        .is_some());
    // Ending the record ends every handle at once.
    assert!(store.remove(&record).await.unwrap());
    assert!(store
        .resolve(&b, "billing.example:8443", now)
        .await
        .unwrap()
        .is_none());
}

/// Opaque values: put, get, take once, delete, list, counters and expiry.
async fn kv(store: &dyn SessionStore) {
    let ns = unique("ns");
    store.kv_put(&ns, "a", b"one", None).await.unwrap();
    store
        .kv_put(&ns, "b", &[0, 255, 7], Some(Duration::from_secs(60)))
        .await
        .unwrap();
    store
        .kv_put(&ns, "gone", b"x", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    assert_eq!(
        store.kv_get(&ns, "a").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        store.kv_get(&ns, "b").await.unwrap().as_deref(),
        Some(&[0, 255, 7][..])
    );
    assert_eq!(store.kv_get(&ns, "none").await.unwrap(), None);
    // A namespace is matched literally (no glob, no prefix of another namespace).
    store
        .kv_put(&format!("{ns}x"), "a", b"other", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.kv_get(&ns, "gone").await.unwrap(), None);
    let listed = store.kv_list(&ns).await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("a".to_string(), b"one".to_vec()),
            ("b".to_string(), vec![0, 255, 7])
        ]
    );
    // Take works once, also under concurrency.
    store.kv_put(&ns, "once", b"state", None).await.unwrap();
    let (x, y) = tokio::join!(store.kv_take(&ns, "once"), store.kv_take(&ns, "once"));
    let got = [x.unwrap(), y.unwrap()];
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 1, "{got:?}");
    assert!(store.kv_delete(&ns, "a").await.unwrap());
    assert!(!store.kv_delete(&ns, "a").await.unwrap());
    // Counters count atomically and expire.
    let ttl = Duration::from_secs(60);
    let (p, q) = tokio::join!(store.kv_incr(&ns, "n", ttl), store.kv_incr(&ns, "n", ttl));
    let mut both = [p.unwrap(), q.unwrap()];
    both.sort();
    assert_eq!(both, [1, 2]);
    assert_eq!(store.kv_incr(&ns, "n", ttl).await.unwrap(), 3);
    assert_eq!(
        store.kv_add(&ns, "n", 1 << 20, ttl).await.unwrap(),
        3 + (1 << 20)
    );
    assert_eq!(
        store.kv_get(&ns, "n").await.unwrap().as_deref(),
        Some((3u64 + (1 << 20)).to_string().as_bytes()),
        "counters read back as decimal digits"
    );
    assert_eq!(store.kv_add(&ns, "fresh", 7, ttl).await.unwrap(), 7);
    store
        .kv_incr(&ns, "short", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.kv_incr(&ns, "short", ttl).await.unwrap(), 1);
}

async fn stats(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let limits = Timeouts::DEFAULT;
    let before = store.stats(now, &limits).await.unwrap();
    let put = |aal: Aal, auth_age: u64, idle: u64| {
        let mut s = session(&unique("stats"), Timestamp(now.0 - auth_age), 86400 * 40);
        s.aal = aal;
        s.last_seen = Timestamp(now.0 - idle);
        (SessionId::generate(), s)
    };
    let rows = [
        put(Aal::Aal2, 60, 0),              // active, 30 min idle left
        put(Aal::Aal2, 60, 30 * 60 - 100),  // active, idle in 100 s
        put(Aal::Aal2, 60, 30 * 60),        // idle: not active
        put(Aal::Aal3, 12 * 3600 - 600, 0), // active, absolute in 10 min
        put(Aal::Aal3, 12 * 3600, 0),       // past absolute
        put(Aal::Aal1, 86400, 86400),       // AAL1 has no idle limit
    ];
    for (id, s) in &rows {
        store.insert(&id.key(), s).await.unwrap();
    }
    let after = store.stats(now, &limits).await.unwrap();
    let d = |i: usize| after.active[i] - before.active[i];
    assert_eq!((d(0), d(1), d(2)), (1, 2, 1), "active by AAL");
    let e = |i: usize| after.expiring_within[i] - before.expiring_within[i];
    assert_eq!((e(0), e(1), e(2)), (1, 2, 3), "expiring within 5/15/60 min");
}

async fn round_trip(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let id = SessionId::generate();
    let s = session(&unique("rt"), now, 3600);
    assert_eq!(
        store.get(&id.key(), now).await.unwrap(),
        None,
        "absent before insert"
    );
    store.insert(&id.key(), &s).await.unwrap();
    assert_eq!(
        store.get(&id.key(), now).await.unwrap(),
        Some(s),
        "round trip"
    );
    assert_eq!(
        store.get(&SessionId::generate().key(), now).await.unwrap(),
        None,
        "unknown key"
    );
}

async fn expiry(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let id = SessionId::generate();
    store
        .insert(&id.key(), &session(&unique("exp"), now, 100))
        .await
        .unwrap();
    assert!(
        store
            .get(&id.key(), Timestamp(now.0 + 99))
            .await
            .unwrap()
            .is_some(),
        "live 1 s before expiry"
    );
    assert!(
        store
            .get(&id.key(), Timestamp(now.0 + 100))
            .await
            .unwrap()
            .is_none(),
        "gone at expiry"
    );
}

async fn touch(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let id = SessionId::generate();
    store
        .insert(&id.key(), &session(&unique("touch"), now, 3600))
        .await
        .unwrap();
    store.touch(&id.key(), Timestamp(now.0 + 40)).await.unwrap();
    assert_eq!(
        store.get(&id.key(), now).await.unwrap().unwrap().last_seen,
        Timestamp(now.0 + 40)
    );
    // An older touch (a slow instance) never moves the clock back.
    store.touch(&id.key(), Timestamp(now.0 + 10)).await.unwrap();
    assert_eq!(
        store.get(&id.key(), now).await.unwrap().unwrap().last_seen,
        Timestamp(now.0 + 40)
    );
    // A touch after logout never resurrects the session.
    assert!(store.remove(&id.key()).await.unwrap());
    store.touch(&id.key(), Timestamp(now.0 + 50)).await.unwrap();
    assert_eq!(
        store.get(&id.key(), now).await.unwrap(),
        None,
        "touch resurrected a removed session"
    );
}

async fn remove_and_revoke(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let (alice, bob) = (unique("alice"), unique("bob"));
    let ids: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
    for id in &ids {
        store
            .insert(&id.key(), &session(&alice, now, 3600))
            .await
            .unwrap();
    }
    let bob_id = SessionId::generate();
    store
        .insert(&bob_id.key(), &session(&bob, now, 3600))
        .await
        .unwrap();
    assert!(store.remove(&ids[0].key()).await.unwrap());
    assert!(
        !store.remove(&ids[0].key()).await.unwrap(),
        "second remove reports absent"
    );
    assert_eq!(store.revoke_user(&alice).await.unwrap(), 2);
    for id in &ids {
        assert_eq!(store.get(&id.key(), now).await.unwrap(), None);
    }
    assert!(
        store.get(&bob_id.key(), now).await.unwrap().is_some(),
        "other users untouched"
    );
    assert_eq!(store.revoke_user(&alice).await.unwrap(), 0);
    // A user whose name is a prefix of another's is a different user.
    let prefix = SessionId::generate();
    store
        .insert(&prefix.key(), &session(&bob[..bob.len() - 1], now, 3600))
        .await
        .unwrap();
    assert_eq!(store.revoke_user(&bob[..bob.len() - 1]).await.unwrap(), 1);
    assert!(store.get(&bob_id.key(), now).await.unwrap().is_some());
}

async fn flows(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    let key = unique("flow");
    store
        .put_flow(&key, &flow("/a?b=1"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.get_flow(&key, now).await.unwrap().unwrap().url,
        "/a?b=1"
    );
    assert_eq!(
        store.get_flow(&key, now).await.unwrap().unwrap().url,
        "/a?b=1",
        "get does not consume"
    );
    assert_eq!(
        store.take_flow(&key, now).await.unwrap().unwrap().url,
        "/a?b=1"
    );
    assert_eq!(
        store.take_flow(&key, now).await.unwrap(),
        None,
        "a flow is taken once"
    );
    assert_eq!(store.get_flow(&key, now).await.unwrap(), None);
    // Expiry.
    let short = unique("short");
    store
        .put_flow(&short, &flow("/x"), Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        store.get_flow(&short, Timestamp::wall()).await.unwrap(),
        None,
        "expired flow"
    );
}

async fn flow_taken_once(store: &dyn SessionStore) {
    let now = Timestamp::wall();
    for _ in 0..5 {
        let key = unique("race");
        store
            .put_flow(&key, &flow("/race"), Duration::from_secs(60))
            .await
            .unwrap();
        let (a, b) = tokio::join!(store.take_flow(&key, now), store.take_flow(&key, now));
        let got = [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|f| f.is_some())
            .count();
        assert_eq!(got, 1, "exactly one concurrent take wins");
    }
}

/// Two handles on the same backend (two processes on one embedded file, or two gateway
/// instances on one Redis) see each other's writes and revocations.
pub async fn cross_handle(a: &dyn SessionStore, b: &dyn SessionStore) {
    let now = Timestamp::wall();
    let user = unique("shared");
    let id = SessionId::generate();
    a.insert(&id.key(), &session(&user, now, 3600))
        .await
        .unwrap();
    assert!(
        b.get(&id.key(), now).await.unwrap().is_some(),
        "b sees a's insert"
    );
    b.touch(&id.key(), Timestamp(now.0 + 5)).await.unwrap();
    assert_eq!(
        a.get(&id.key(), now).await.unwrap().unwrap().last_seen,
        Timestamp(now.0 + 5)
    );
    assert_eq!(b.revoke_user(&user).await.unwrap(), 1);
    assert!(
        a.get(&id.key(), now).await.unwrap().is_none(),
        "a sees b's revocation"
    );
}

/// Compare and swap: only over the value expected, and concurrent read-modify-write loops
/// lose no update.
async fn swap(store: &dyn SessionStore) {
    let key = unique("swap");
    assert!(
        !store
            .kv_swap("t", &key, Some(b"x"), Some(b"y"))
            .await
            .unwrap(),
        "absent is not x"
    );
    assert!(store.kv_swap("t", &key, None, Some(b"1")).await.unwrap());
    assert!(
        !store.kv_swap("t", &key, None, Some(b"2")).await.unwrap(),
        "present is not absent"
    );
    assert!(!store
        .kv_swap("t", &key, Some(b"0"), Some(b"2"))
        .await
        .unwrap());
    assert_eq!(
        store.kv_get("t", &key).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    // Two writers, each adding 1 twenty times by read, change, swap (retrying on a conflict).
    tokio::join!(add_by_swaps(store, &key), add_by_swaps(store, &key));
    assert_eq!(
        store.kv_get("t", &key).await.unwrap().as_deref(),
        Some(&b"41"[..])
    );
    assert!(store.kv_swap("t", &key, Some(b"41"), None).await.unwrap());
    assert_eq!(store.kv_get("t", &key).await.unwrap(), None);
}

/// Adds 1 to the decimal in `t`/`key` twenty times, by read, change and swap (retrying on a
/// conflict).
async fn add_by_swaps(store: &dyn SessionStore, key: &str) {
    for _ in 0..20 {
        loop {
            let cur = store.kv_get("t", key).await.unwrap();
            let n: u64 = cur
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let next = (n + 1).to_string();
            if store
                .kv_swap("t", key, cur.as_deref(), Some(next.as_bytes()))
                .await
                .unwrap()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
