//! In-process caches on the hot path.
//!
//! - [`SessionCache`]: a bounded map from session key to the session as last read from the
//!   store. An entry is trusted for at most [`SESSION_FRESHNESS`] (1 s), so a cached session
//!   costs no store round trip, and a logout or revocation made on *any* instance (or by the
//!   CLI) is seen by every instance within 1 s, with no invalidation channel to lose messages.
//! - [`AssertionCache`]: the signed upstream JWT per session and app, reused while it has more
//!   than half of its lifetime left, so the gateway does not sign on every request.

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
    session: Session,
    /// The person's groups and e-mail, read with the session (so a removal is seen as soon
    /// as the session is read again: within [`SESSION_FRESHNESS`]).
    access: Arc<Membership>,
    fetched: Instant,
}

/// Sessions recently read from the store.
pub struct SessionCache {
    inner: Cache<SessionKey, Entry>,
    /// Records this instance ended in the last second: every cookie handle of them (each host
    /// has its own) stops at once here, not only the one the request carried.
    ended: Cache<SessionKey, Instant>,
}

impl SessionCache {
    /// A cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            inner: Cache::new(capacity.max(1)),
            ended: Cache::new((capacity / 16).max(16)),
        }
    }

    /// The session and its record key, if cached less than [`SESSION_FRESHNESS`] ago, not
    /// expired at `now`, and its handle is bound to `host` (a cookie is a handle for one host;
    /// there is no entry for any host).
    pub fn get_with_record(
        &self,
        key: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Option<(SessionKey, Session, Arc<Membership>)> {
        let e = self.inner.get(key)?;
        if e.host != host {
            return None;
        }
        if self.ended.get(&e.record).is_some_and(|t| t >= e.fetched) {
            return None;
        }
        (e.fetched.elapsed() < SESSION_FRESHNESS && e.session.expires_at > now)
            .then_some((e.record, e.session, e.access))
    }

    /// Remembers a session read through the cookie handle `key` on `host`, stored under
    /// `record`.
    pub fn put_linked(
        &self,
        key: &SessionKey,
        record: &SessionKey,
        host: &str,
        session: &Session,
        access: &Arc<Membership>,
    ) {
        self.inner.insert(
            key.clone(),
            Entry {
                record: record.clone(),
                host: host.to_string(),
                session: session.clone(),
                access: access.clone(),
                fetched: Instant::now(),
            },
        );
    }

    /// Records a touch, so the next cached read does not touch again.
    pub fn set_last_seen(&self, key: &SessionKey, last_seen: Timestamp) {
        if let Some(mut e) = self.inner.get(key) {
            e.session.last_seen = e.session.last_seen.max(last_seen);
            self.inner.insert(key.clone(), e);
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

/// When this instance last wrote each (person, app) use, by a hash of the pair: bounded, and
/// a lookup allocates nothing.
#[derive(Clone)]
pub struct LastUse {
    written: Arc<Cache<u64, Instant>>,
}

impl LastUse {
    /// At most `capacity` pairs (an evicted pair is written once more: harmless).
    pub fn new(capacity: usize) -> LastUse {
        LastUse {
            written: Arc::new(Cache::new(capacity.max(1))),
        }
    }

    fn key(user: &str, app: &str) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::DefaultHasher::new();
        h.write(user.as_bytes());
        h.write_u8(0);
        h.write(app.as_bytes());
        h.finish()
    }

    /// A write that failed: the use is due again at the next request.
    pub fn forget(&self, user: &str, app: &str) {
        self.written.remove(&Self::key(user, app));
    }

    /// Whether `user`'s use of `app` is due to be written (and, if so, marks it written, so
    /// that concurrent requests do not all write it).
    pub fn due(&self, user: &str, app: &str) -> bool {
        let k = Self::key(user, app);
        if self
            .written
            .get(&k)
            .is_some_and(|t| t.elapsed() < LAST_USE_EVERY)
        {
            return false;
        }
        self.written.insert(k, Instant::now());
        true
    }
}

/// The key of a last-use record.
pub fn last_use_key(user: &str, app: &str) -> String {
    format!("{user} {app}")
}

/// Signed assertions by (session key, app, what they say of the person).
pub struct AssertionCache {
    inner: Cache<(SessionKey, String, String), (String, Timestamp)>,
    lifetime: Duration,
}

impl AssertionCache {
    /// A cache of at most `capacity` tokens that each live `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> AssertionCache {
        AssertionCache {
            inner: Cache::new(capacity.max(1)),
            lifetime,
        }
    }

    /// A cached token for this session, app and `identity` (a fingerprint of the groups and
    /// e-mail it states) with more than half its lifetime left, else one made by `sign` (and
    /// cached).
    pub fn get_or_sign<E>(
        &self,
        key: &SessionKey,
        app: &str,
        identity: &str,
        now: Timestamp,
        sign: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        let k = (key.clone(), app.to_string(), identity.to_string());
        if let Some((token, issued)) = self.inner.get(&k) {
            if now.since(issued) < self.lifetime / 2 {
                return Ok(token);
            }
        }
        let token = sign()?;
        self.inner.insert(k, (token.clone(), now));
        Ok(token)
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
        c.put_linked(&k, &record, h, &session(now), &Arc::default());
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
        c.put_linked(&k, &record, h, &session(now), &Arc::default());
        c.remove(&k);
        assert!(get(now).is_none());
    }

    #[test]
    fn an_ended_record_stops_every_cached_handle() {
        let c = SessionCache::new(10);
        let now = Timestamp::wall();
        let record = SessionId::generate().key();
        let (ehr, billing) = (SessionId::generate().key(), SessionId::generate().key());
        c.put_linked(&ehr, &record, "ehr.example", &session(now), &Arc::default());
        c.put_linked(
            &billing,
            &record,
            "billing.example",
            &session(now),
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
            &session(now),
            &Arc::default(),
        );
        assert!(c.get_with_record(&fresh, "ehr.example", now).is_some());
    }

    #[test]
    fn assertions_are_reused_for_half_their_lifetime() {
        let c = AssertionCache::new(10, Duration::from_secs(60));
        let k = SessionId::generate().key();
        let t0 = Timestamp(1_000);
        let mut n = 0;
        let mut sign = || -> Result<String, ()> {
            n += 1;
            Ok(format!("t{n}"))
        };
        assert_eq!(c.get_or_sign(&k, "a", "", t0, &mut sign), Ok("t1".into()));
        assert_eq!(
            c.get_or_sign(&k, "a", "", Timestamp(1_029), &mut sign),
            Ok("t1".into())
        );
        assert_eq!(
            c.get_or_sign(&k, "b", "", Timestamp(1_029), &mut sign),
            Ok("t2".into()),
            "per app"
        );
        assert_eq!(
            c.get_or_sign(&k, "a", "", Timestamp(1_030), &mut sign),
            Ok("t3".into()),
            "renewed at half-life"
        );
    }
}
