//! In-process caches on the hot path.
//!
//! - [`SessionCache`]: a bounded map from session key to the session as last read from the
//!   store. An entry is trusted for at most [`SESSION_FRESHNESS`] (1 s), so a cached session
//!   costs no store round trip, and a logout or revocation made on *any* instance (or by the
//!   CLI) is seen by every instance within 1 s, with no invalidation channel to lose messages.
//! - [`AssertionCache`]: the signed upstream JWT per session and app, with the identity headers
//!   that go with it, reused while it has more than half of its lifetime left, so the gateway
//!   does not sign (or format headers) on every request.

use std::time::{Duration, Instant};

use std::sync::Arc;

use aalgate_auth::model::Membership;
use aalgate_policy::Timestamp;
use aalgate_session::{Session, SessionKey};
use quick_cache::sync::Cache;

/// How long a cached session is trusted without asking the store again.
pub const SESSION_FRESHNESS: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Entry {
    /// The store key of the session record the cookie handle resolved to.
    record: SessionKey,
    /// The host the handle is bound to.
    host: String,
    session: Arc<Session>,
    /// The person's groups and e-mail, read with the session (so a removal is seen as soon
    /// as the session is read again: within [`SESSION_FRESHNESS`]).
    access: Arc<Membership>,
    fetched: Instant,
}

/// Sessions recently read from the store.
pub struct SessionCache {
    inner: Cache<SessionKey, Arc<Entry>>,
    /// Cookie values that resolved to a session, by their keyed 128-bit SipHash-2-4, to their
    /// store key: a cached request skips decoding its cookie and hashing it with SHA-256,
    /// which runs in software on CPUs without SHA extensions (Intel Xeons before Ice Lake, and
    /// under valgrind): about 4,500 instructions, a fifth of an authenticated request's own
    /// cost. Only values that resolved are remembered, so random cookies cannot fill it; a
    /// remembered value of an ended session reaches the store and finds nothing, as before.
    keys: Cache<u128, SessionKey>,
    /// The SipHash key: random per process, so no one outside can compute a tag.
    tag_key: [u8; 16],
    /// Records this instance ended in the last second: every cookie handle of them (each host
    /// has its own) stops at once here, not only the one the request carried.
    ended: Cache<SessionKey, Instant>,
}

impl SessionCache {
    /// A cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            inner: Cache::new(capacity.max(1)),
            keys: Cache::new(capacity.max(1)),
            tag_key: rand::random(),
            ended: Cache::new((capacity / 16).max(16)),
        }
    }

    fn tag(&self, cookie: &str) -> u128 {
        use siphasher::sip128::Hasher128;
        let mut h = siphasher::sip128::SipHasher24::new_with_key(&self.tag_key);
        std::hash::Hasher::write(&mut h, cookie.as_bytes());
        h.finish128().as_u128()
    }

    /// The store key of a cookie value that resolved before (`None`: decode and hash it).
    pub fn known_key(&self, cookie: &str) -> Option<SessionKey> {
        self.keys.get(&self.tag(cookie))
    }

    /// Remembers the store key of a cookie value that resolved to a session.
    pub fn remember_key(&self, cookie: &str, key: &SessionKey) {
        self.keys.insert(self.tag(cookie), key.clone());
    }

    /// The session and its record key, if cached less than [`SESSION_FRESHNESS`] ago, not
    /// expired at `now`, and its handle is bound to `host` (a cookie is a handle for one host;
    /// there is no entry for any host).
    pub fn get_with_record(
        &self,
        key: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Option<(SessionKey, Arc<Session>, Arc<Membership>)> {
        let e = self.inner.get(key)?;
        if e.host != host {
            return None;
        }
        if self.ended.get(&e.record).is_some_and(|t| t >= e.fetched) {
            return None;
        }
        (e.fetched.elapsed() < SESSION_FRESHNESS && e.session.expires_at > now)
            .then(|| (e.record.clone(), e.session.clone(), e.access.clone()))
    }

    /// Remembers a session read through the cookie handle `key` on `host`, stored under
    /// `record`.
    pub fn put_linked(
        &self,
        key: &SessionKey,
        record: &SessionKey,
        host: &str,
        session: &Arc<Session>,
        access: &Arc<Membership>,
    ) {
        self.inner.insert(
            key.clone(),
            Arc::new(Entry {
                record: record.clone(),
                host: host.to_string(),
                session: session.clone(),
                access: access.clone(),
                fetched: Instant::now(),
            }),
        );
    }

    /// Records a touch, so the next cached read does not touch again.
    pub fn set_last_seen(&self, key: &SessionKey, last_seen: Timestamp) {
        if let Some(e) = self.inner.get(key) {
            let mut e = Entry::clone(&e);
            Arc::make_mut(&mut e.session).last_seen = e.session.last_seen.max(last_seen);
            self.inner.insert(key.clone(), Arc::new(e));
        }
    }

    /// A session record ended (logout, switch, re-auth): no cached handle of it is served.
    pub fn end_record(&self, record: &SessionKey) {
        self.ended.insert(record.clone(), Instant::now());
    }

    /// Forgets a session (logout, end).
    pub fn remove(&self, key: &SessionKey) {
        self.inner.remove(key);
    }
}

/// The key-value namespace of last-use records: `<user> <app>` -> Unix seconds.
pub const LAST_USE_NS: &str = "last_use";
/// A person's use of an app is written at most this often per instance: the access report
/// needs days, not seconds, and a request must not cost a store write.
pub const LAST_USE_EVERY: Duration = Duration::from_secs(3600);
/// How long a last-use record lives without a newer use (beyond any `--unused` window IT uses).
pub const LAST_USE_TTL: Duration = Duration::from_secs(400 * 86400);

/// When this instance last wrote each (person, app) use: bounded, and a lookup allocates
/// nothing (the pair is looked up borrowed).
#[derive(Clone)]
pub struct LastUse {
    written: Arc<Cache<(String, String), Instant>>,
}

/// A (person, app) pair, borrowed: hashes as the owned `(String, String)` does.
#[derive(Hash)]
struct UsePair<'a>(&'a str, &'a str);

impl quick_cache::Equivalent<(String, String)> for UsePair<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

impl LastUse {
    /// At most `capacity` pairs (an evicted pair is written once more: harmless).
    pub fn new(capacity: usize) -> LastUse {
        LastUse {
            written: Arc::new(Cache::new(capacity.max(1))),
        }
    }

    /// A write that failed: the use is due again at the next request.
    pub fn forget(&self, user: &str, app: &str) {
        self.written.remove(&UsePair(user, app));
    }

    /// Whether `user`'s use of `app` is due to be written (and, if so, marks it written, so
    /// that concurrent requests do not all write it).
    pub fn due(&self, user: &str, app: &str) -> bool {
        if self
            .written
            .get(&UsePair(user, app))
            .is_some_and(|t| t.elapsed() < LAST_USE_EVERY)
        {
            return false;
        }
        self.written
            .insert((user.to_string(), app.to_string()), Instant::now());
        true
    }
}

/// The key of a last-use record.
pub fn last_use_key(user: &str, app: &str) -> String {
    format!("{user} {app}")
}

/// What an assertion states of a person to one app, and for which session: the key of
/// [`AssertionCache`]. A group removal or a changed address is another key, so a new
/// assertion is signed at once, not when the cached one ages out.
#[derive(Hash, PartialEq, Eq)]
struct IdentityKey {
    session: SessionKey,
    app: String,
    groups: Option<Vec<String>>,
    email: Option<String>,
}

/// [`IdentityKey`], borrowed: a lookup allocates nothing. Hashes as the owned key does (the
/// same fields in the same order; `&str` and `&[String]` hash as `String` and `Vec<String>`).
#[derive(Hash, Clone, Copy)]
pub struct IdentityRef<'a> {
    /// The session's cookie handle.
    pub session: &'a SessionKey,
    /// The app's id.
    pub app: &'a str,
    /// The groups the app's policy names that the person is in (`None`: it names none).
    pub groups: Option<&'a [String]>,
    /// The address, when the app is given it.
    pub email: Option<&'a str>,
}

impl quick_cache::Equivalent<IdentityKey> for IdentityRef<'_> {
    fn equivalent(&self, k: &IdentityKey) -> bool {
        *self.session == k.session
            && self.app == k.app
            && self.groups == k.groups.as_deref()
            && self.email == k.email.as_deref()
    }
}

impl IdentityRef<'_> {
    fn to_owned_key(self) -> IdentityKey {
        IdentityKey {
            session: self.session.clone(),
            app: self.app.to_string(),
            groups: self.groups.map(<[String]>::to_vec),
            email: self.email.map(str::to_string),
        }
    }
}

/// The identity headers of one session for one app, as header values: forwarding them again
/// copies reference counts, nothing is signed, formatted or validated again.
pub struct Forwarded {
    /// The signed assertion (`X-Aalgate-Assertion`).
    pub assertion: http::HeaderValue,
    /// `X-Aalgate-User`.
    pub user: http::HeaderValue,
    /// `X-Aalgate-Aal`.
    pub aal: http::HeaderValue,
    /// `X-Aalgate-Auth-Time`.
    pub auth_time: http::HeaderValue,
    /// `X-Aalgate-Groups`, when the app's policy names groups.
    pub groups: Option<http::HeaderValue>,
    /// `X-Aalgate-Email`, when the app is given the address.
    pub email: Option<http::HeaderValue>,
    /// When the assertion was signed.
    pub issued: Timestamp,
}

/// Signed assertions and the identity headers that go with them, by session, app and what
/// they say of the person.
pub struct AssertionCache {
    inner: Cache<IdentityKey, Arc<Forwarded>>,
    lifetime: Duration,
}

impl AssertionCache {
    /// A cache of at most `capacity` entries whose assertions each live `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> AssertionCache {
        AssertionCache {
            inner: Cache::new(capacity.max(1)),
            lifetime,
        }
    }

    /// The cached headers for `who` if their assertion has more than half its lifetime left,
    /// else those made by `build` (and cached).
    pub fn get_or_build<E>(
        &self,
        who: IdentityRef<'_>,
        now: Timestamp,
        build: impl FnOnce() -> Result<Forwarded, E>,
    ) -> Result<Arc<Forwarded>, E> {
        if let Some(f) = self.inner.get(&who) {
            if now.since(f.issued) < self.lifetime / 2 {
                return Ok(f);
            }
        }
        let f = Arc::new(build()?);
        self.inner.insert(who.to_owned_key(), f.clone());
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aalgate_policy::Aal;
    use aalgate_session::SessionId;

    fn session(now: Timestamp) -> Session {
        Session {
            user: "u".into(),
            aal: Aal::Aal2,
            amr: vec![],
            credential: None,
            auth_time: now,
            last_auth: now,
            last_seen: now,
            expires_at: now.plus(Duration::from_secs(60)),
        }
    }

    #[test]
    fn only_resolved_cookie_values_are_remembered_and_only_by_this_process() {
        let c = SessionCache::new(10);
        let id = SessionId::generate();
        let cookie = id.to_cookie();
        assert_eq!(c.known_key(&cookie), None, "nothing remembered yet");
        c.remember_key(&cookie, &id.key());
        assert_eq!(c.known_key(&cookie), Some(id.key()));
        // One byte off is another value, and so is the same id spelled otherwise.
        let mut other = cookie.clone().into_bytes();
        other[0] = if other[0] == b'A' { b'B' } else { b'A' };
        assert_eq!(c.known_key(std::str::from_utf8(&other).unwrap()), None);
        assert_eq!(c.known_key(&format!("{cookie} ")), None);
        // Another process (another SipHash key) tags the same value differently.
        let d = SessionCache::new(10);
        assert_ne!(c.tag(&cookie), d.tag(&cookie));
        assert_eq!(d.known_key(&cookie), None);
    }

    #[test]
    fn sessions_are_trusted_for_one_second_only() {
        let c = SessionCache::new(10);
        let now = Timestamp::wall();
        let (k, record, h) = (
            SessionId::generate().key(),
            SessionId::generate().key(),
            "ehr.example",
        );
        let get = |t: Timestamp| c.get_with_record(&k, h, t).map(|(_, s, _)| s);
        assert!(get(now).is_none());
        c.put_linked(&k, &record, h, &Arc::new(session(now)), &Arc::default());
        assert!(get(now).is_some());
        c.set_last_seen(&k, now.plus(Duration::from_secs(5)));
        assert_eq!(
            get(now).unwrap().last_seen,
            now.plus(Duration::from_secs(5))
        );
        assert!(
            get(now.plus(Duration::from_secs(60))).is_none(),
            "expired sessions are not served"
        );
        std::thread::sleep(SESSION_FRESHNESS);
        assert!(get(now).is_none(), "stale after the freshness bound");
        c.put_linked(&k, &record, h, &Arc::new(session(now)), &Arc::default());
        c.remove(&k);
        assert!(get(now).is_none());
    }

    #[test]
    fn an_ended_record_stops_every_cached_handle() {
        let c = SessionCache::new(10);
        let now = Timestamp::wall();
        let record = SessionId::generate().key();
        let (ehr, billing) = (SessionId::generate().key(), SessionId::generate().key());
        c.put_linked(
            &ehr,
            &record,
            "ehr.example",
            &Arc::new(session(now)),
            &Arc::default(),
        );
        c.put_linked(
            &billing,
            &record,
            "billing.example",
            &Arc::new(session(now)),
            &Arc::default(),
        );
        assert_eq!(
            c.get_with_record(&ehr, "ehr.example", now).unwrap().0,
            record
        );
        assert!(
            c.get_with_record(&ehr, "billing.example", now).is_none(),
            "bound to its host"
        );
        c.end_record(&record);
        assert!(c.get_with_record(&ehr, "ehr.example", now).is_none());
        assert!(c
            .get_with_record(&billing, "billing.example", now)
            .is_none());
        // A session read after the end (a new sign-in reusing nothing) is served again.
        std::thread::sleep(Duration::from_millis(2));
        let fresh = SessionId::generate().key();
        c.put_linked(
            &fresh,
            &SessionId::generate().key(),
            "ehr.example",
            &Arc::new(session(now)),
            &Arc::default(),
        );
        assert!(c.get_with_record(&fresh, "ehr.example", now).is_some());
    }

    #[test]
    fn a_borrowed_identity_hashes_and_compares_as_its_owned_key() {
        use quick_cache::Equivalent;
        use std::hash::BuildHasher;
        let h = std::collections::hash_map::RandomState::new();
        let k = SessionId::generate().key();
        let g = ["icu".to_string(), "ward7".to_string()];
        let cases = [
            (None, None),
            (Some(&g[..]), None),
            (Some(&g[..1]), Some("a@b")),
            (Some(&[][..]), None),
            (None, Some("")),
        ];
        for (i, &(groups, email)) in cases.iter().enumerate() {
            let r = IdentityRef {
                session: &k,
                app: "ehr",
                groups,
                email,
            };
            let owned = r.to_owned_key();
            assert_eq!(h.hash_one(r), h.hash_one(&owned), "case {i}");
            assert!(r.equivalent(&owned), "case {i}");
            for (j, &(g2, e2)) in cases.iter().enumerate().filter(|(j, _)| *j != i) {
                let other = IdentityRef {
                    groups: g2,
                    email: e2,
                    ..r
                }
                .to_owned_key();
                assert!(!r.equivalent(&other), "case {i} against {j}");
            }
        }
    }

    #[test]
    fn assertions_are_reused_for_half_their_lifetime() {
        let c = AssertionCache::new(10, Duration::from_secs(60));
        let k = SessionId::generate().key();
        let t0 = Timestamp(1_000);
        let mut n = 0;
        let mut build = |t: Timestamp| -> Result<Forwarded, ()> {
            n += 1;
            let v = |s: String| http::HeaderValue::try_from(s).map_err(|_| ());
            Ok(Forwarded {
                assertion: v(format!("t{n}"))?,
                user: v("u".into())?,
                aal: v("2".into())?,
                auth_time: v("1".into())?,
                groups: None,
                email: None,
                issued: t,
            })
        };
        let who = |app, groups, email| IdentityRef {
            session: &k,
            app,
            groups,
            email,
        };
        let mut get = |w: IdentityRef<'_>, t: Timestamp| {
            c.get_or_build(w, t, || build(t))
                .map(|f| f.assertion.to_str().unwrap_or_default().to_string())
        };
        assert_eq!(get(who("a", None, None), t0), Ok("t1".into()));
        assert_eq!(get(who("a", None, None), Timestamp(1_029)), Ok("t1".into()));
        assert_eq!(
            get(who("b", None, None), Timestamp(1_029)),
            Ok("t2".into()),
            "per app"
        );
        let g = ["ward7".to_string()];
        assert_eq!(
            get(who("a", Some(&g), None), Timestamp(1_029)),
            Ok("t3".into()),
            "per groups"
        );
        assert_eq!(
            get(who("a", Some(&g), None), Timestamp(1_029)),
            Ok("t3".into())
        );
        assert_eq!(
            get(who("a", Some(&[]), None), Timestamp(1_029)),
            Ok("t4".into()),
            "no group is not no groups named"
        );
        assert_eq!(
            get(who("a", None, Some("x@y")), Timestamp(1_029)),
            Ok("t5".into()),
            "per address"
        );
        assert_eq!(
            get(who("a", None, None), Timestamp(1_030)),
            Ok("t6".into()),
            "renewed at half-life"
        );
    }
}
