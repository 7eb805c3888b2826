//! The session record, the store trait, and the deadline wrapper.

use std::sync::Arc;
use std::time::Duration;

use aalgate_policy::{Aal, SessionFacts, Timeouts, Timestamp};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::id::SessionKey;

/// An authenticated browser session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user id (one person; never shared accounts).
    pub user: String,
    /// The level reached.
    pub aal: Aal,
    /// Authentication methods (RFC 8176 values, e.g. `hwk`, `swk`, `user`, `pin`).
    pub amr: Vec<String>,
    /// Hash of the credential used, for the audit log.
    pub credential: Option<String>,
    /// First authentication of this session.
    pub auth_time: Timestamp,
    /// Last ceremony (login, step-up or re-auth).
    pub last_auth: Timestamp,
    /// Last request seen (written at most every touch interval).
    pub last_seen: Timestamp,
    /// The store forgets the session at this time.
    pub expires_at: Timestamp,
}

impl Session {
    /// What the decision needs.
    pub fn facts(&self) -> SessionFacts {
        SessionFacts {
            aal: self.aal,
            auth_time: self.auth_time,
            last_auth: self.last_auth,
            last_seen: self.last_seen,
        }
    }
}

/// Live sessions in the whole store (every instance sharing it sees the same numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions neither past their absolute nor their idle limit, by AAL (index 0 = AAL1).
    pub active: [u64; 3],
    /// Of those, how many reach a limit within 5, 15 and 60 minutes.
    pub expiring_within: [u64; 3],
}

/// The windows of [`SessionStats::expiring_within`].
pub const EXPIRY_WINDOWS: [Duration; 3] = [
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(3600),
];

impl SessionStats {
    /// Counts one stored session, judged by `limits` (the gateway's limits by AAL).
    pub fn add(&mut self, s: &Session, now: Timestamp, limits: &Timeouts) {
        let l = limits.get(s.aal);
        let mut end = s.expires_at.min(s.auth_time.plus(l.max_session_age));
        if let Some(idle) = l.idle_timeout {
            end = end.min(s.last_seen.plus(idle));
        }
        if end <= now {
            return;
        }
        self.active[usize::from(s.aal.number() - 1)] += 1;
        for (i, w) in EXPIRY_WINDOWS.iter().enumerate() {
            if end <= now.plus(*w) {
                self.expiring_within[i] += 1;
            }
        }
    }
}

/// What a flow asks of the browser. Stored as `login`, `step_up`, `reauth` or `switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// No session: whoever signs in.
    Login,
    /// The session's person, with a stronger or fresher ceremony.
    StepUp,
    /// The session's person again, after a limit ended the session.
    Reauth,
    /// Someone else on this browser (the current session ends).
    Switch,
}

impl FlowKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::Login => "login",
            FlowKind::StepUp => "step_up",
            FlowKind::Reauth => "reauth",
            FlowKind::Switch => "switch",
        }
    }

    /// The challenge kind metrics count it as (`login`, `step_up` or `reauth`: a switch is a
    /// login).
    pub fn challenge(self) -> &'static str {
        match self {
            FlowKind::Switch => "login",
            k => k.as_str(),
        }
    }

    /// A step-up or re-auth: for the flow's own person.
    pub fn for_its_person(self) -> bool {
        matches!(self, FlowKind::StepUp | FlowKind::Reauth)
    }
}

/// A pending authentication: where the browser was going, kept server-side so the auth page
/// never takes a redirect target from the URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Host (and port) of the original request.
    pub host: String,
    /// Method of the original request.
    pub method: String,
    /// Normalized path and query of the original request.
    pub url: String,
    /// What it asks of the browser.
    pub need: FlowKind,
    /// The level needed.
    pub aal: Aal,
    /// For step-up: the maximum age of the authentication, in seconds.
    pub max_age_secs: Option<u64>,
    /// The app.
    pub app: String,
    /// When the flow was created.
    pub created: Timestamp,
    /// The user whose session needs the step-up or re-authentication (one tap, their keys).
    #[serde(default)]
    pub user: Option<String>,
    /// SHA-256 of the browser-binding cookie on the app host that started the flow: the
    /// session is handed back to that browser only.
    #[serde(default)]
    pub browser: Option<String>,
    /// A submitted form kept across the sign-in: the one-time token of the encrypted record,
    /// or `too_large` when it could not be kept.
    #[serde(default)]
    pub kept: Option<String>,
    /// On a `step_up: { per_request: true }` route: the request this flow's ceremony signs.
    #[serde(default)]
    pub binding: Option<RequestBinding>,
    /// A script call (XHR/fetch) started the flow: its ceremony runs in a popup, which then
    /// closes, and the script retries; the popup must not spend the request's admission.
    #[serde(default)]
    pub script: bool,
}

/// The request a per-request ceremony is bound to (see `aalgate_auth::signing`): a secret
/// random nonce, which only the app receives, and the digest of the nonce, method, URL and
/// body, from which the WebAuthn challenge is derived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBinding {
    /// The request nonce, base64url.
    pub nonce: String,
    /// The request digest, base64url.
    pub digest: String,
    /// Whether the digest covers the body (a kept form) or not (a script call or a GET).
    pub body: bool,
}

/// The key-value namespace of each person's access record (groups, e-mail), keyed by user
/// id: the directory writes it, and [`SessionStore::resolve_with_access`] reads it with the
/// session.
pub const ACCESS_NS: &str = "access";

/// A session found through its cookie handle, with its person's access record.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The key of the session record.
    pub record: SessionKey,
    /// The session.
    pub session: Session,
    /// The raw [`ACCESS_NS`] record of the session's user, if there is one.
    pub access: Option<Vec<u8>>,
}

/// The state of a replicated store's connection (metrics, logs): see
/// [`SessionStore::health`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// The master is found through Sentinel.
    pub sentinel: bool,
    /// The address of the master connected to; `None` while none is known.
    pub master: Option<String>,
    /// How many times the master changed to another address.
    pub failovers: u64,
    /// Writes that end access whose replicas did not confirm them in time.
    pub acks_missed: u64,
    /// Of those, how many are still denied locally and retried.
    pub unconfirmed: u64,
    /// Total time without a master to talk to.
    pub without_master: Duration,
}

/// Why a store call failed. Every variant means "unknown": callers fail closed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within its deadline.
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend is unreachable or refused the call.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("session store returned corrupt data: {0}")]
    Corrupt(String),
}

/// Where sessions live, as written in the gateway config (`embedded:<dir>` or `redis://...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// A redb file in this directory.
    Embedded(std::path::PathBuf),
    /// Redis: a URL (`redis://`, `rediss://`, `redis+unix://`) or Sentinel, with its settings.
    Redis(Box<crate::redis_config::RedisConfig>),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("embedded:") {
            if dir.is_empty() {
                return Err("embedded: needs a directory, e.g. embedded:/var/lib/aalgate".into());
            }
            Ok(StoreSpec::Embedded(dir.into()))
        } else if s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+unix://")
        {
            Ok(StoreSpec::Redis(Box::new(
                crate::redis_config::RedisConfig::url(s, Duration::from_millis(50)),
            )))
        } else {
            Err(format!(
                "unknown store {s:?}; use embedded:<dir> or redis://host:port/db"
            ))
        }
    }
}

/// Session and flow storage. Implementations must be safe to share between tasks and, for the
/// embedded store, between processes.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session (and adds it to its user's index).
    async fn insert(&self, key: &SessionKey, session: &Session) -> Result<(), StoreError>;
    /// Loads a live session; expired or absent sessions are `None`.
    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError>;
    /// Advances `last_seen` of an existing session; never recreates a removed one.
    async fn touch(&self, key: &SessionKey, last_seen: Timestamp) -> Result<(), StoreError>;
    /// Removes one session (logout). Returns whether it existed.
    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError>;
    /// Removes every session of a user at once. Returns how many were removed.
    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError>;
    /// Stores a flow for `ttl`.
    async fn put_flow(&self, key: &str, flow: &Flow, ttl: Duration) -> Result<(), StoreError>;
    /// Reads a live flow without consuming it.
    async fn get_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError>;
    /// Reads and deletes a flow atomically: of two concurrent takes, one gets it.
    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError>;
    /// Checks the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether every acknowledged write survives a restart of the store (Redis: the
    /// append-only file is on). Without it, a logout written after the last snapshot is lost
    /// when the store restarts from that snapshot, and the session comes back.
    async fn durable(&self) -> Result<bool, StoreError>;
    /// Counts live sessions in the whole store (a scan: call it every few seconds, not per request).
    async fn stats(&self, now: Timestamp, limits: &Timeouts) -> Result<SessionStats, StoreError>;

    /// Links a cookie `handle` (one per app host, host-only) to the session stored under
    /// `record`, for `host` only, until `expires_at`. Ending the record ends every handle.
    async fn link(
        &self,
        handle: &SessionKey,
        record: &SessionKey,
        host: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Removes a handle (the session record stays).
    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError>;
    /// Resolves a cookie in one call: a handle linked for `host` gives its record's key and
    /// session. This is the only way from a cookie to a session: a record's own key, a handle
    /// of another host, a dangling handle or an expired session give `None`.
    async fn resolve(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<(SessionKey, Session)>, StoreError>;
    /// [`SessionStore::resolve`], with the key-value record [`ACCESS_NS`]/`<the session's
    /// user>` (the person's groups, which `allow` checks on every request) read in the same
    /// round trip. No default: a wrapper that composed it from two calls would double the
    /// store's work on every uncached request.
    async fn resolve_with_access(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<Resolved>, StoreError>;

    /// Stores an opaque value under `ns`/`key`, expiring after `ttl` (never, if `None`).
    /// Users, credentials, invites and ceremony state live here.
    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;
    /// Reads a live value.
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads and deletes a value atomically: of two concurrent takes, one gets it.
    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes a value. Returns whether it existed.
    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError>;
    /// Every live value of a namespace (a scan: for the CLI and reports, not the request path).
    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Adds `by` to a counter atomically and returns the new value; a new counter lives `ttl`.
    /// [`SessionStore::kv_get`] reads it as decimal digits.
    async fn kv_add(&self, ns: &str, key: &str, by: u64, ttl: Duration) -> Result<u64, StoreError>;
    /// Compare and swap: sets `ns`/`key` to `new` (removes it with `None`), without expiry,
    /// only if it still holds `expected` (`None`: absent). Returns whether it did. Two IT
    /// commands changing one person's groups at once cannot undo each other's change.
    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Adds 1 to a counter (see [`SessionStore::kv_add`]).
    async fn kv_incr(&self, ns: &str, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        self.kv_add(ns, key, 1, ttl).await
    }

    /// The connection to a replicated store (Redis): its master, failovers, unconfirmed
    /// writes. `None` for a store of one machine.
    fn health(&self) -> Option<StoreHealth> {
        None
    }

    /// How much longer than other calls a write that ends access may take, because it waits
    /// for replicas to confirm it: `remove`, `revoke_user`, `unlink`, `take_flow`, `kv_take`,
    /// `kv_delete` and `kv_swap`.
    fn ack_budget(&self) -> Duration {
        Duration::ZERO
    }
}

/// Wraps a store so that every call has a deadline.
pub struct Deadline<S: ?Sized> {
    inner: Arc<S>,
    limit: Duration,
}

impl<S: ?Sized> Deadline<S> {
    /// Every call on `inner` fails with [`StoreError::Timeout`] after `limit`.
    pub fn new(inner: Arc<S>, limit: Duration) -> Self {
        Deadline { inner, limit }
    }

    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limit, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.limit)),
        }
    }
}

impl<S: SessionStore + ?Sized> Deadline<S> {
    /// A write that ends access: its replicas' confirmation gets its own budget.
    async fn run_acked<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.limit + self.inner.ack_budget();
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Deadline<S> {
    async fn insert(&self, key: &SessionKey, session: &Session) -> Result<(), StoreError> {
        self.run(self.inner.insert(key, session)).await
    }
    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError> {
        self.run(self.inner.get(key, now)).await
    }
    async fn touch(&self, key: &SessionKey, last_seen: Timestamp) -> Result<(), StoreError> {
        self.run(self.inner.touch(key, last_seen)).await
    }
    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.run_acked(self.inner.remove(key)).await
    }
    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        self.run_acked(self.inner.revoke_user(user)).await
    }
    async fn put_flow(&self, key: &str, flow: &Flow, ttl: Duration) -> Result<(), StoreError> {
        self.run(self.inner.put_flow(key, flow, ttl)).await
    }
    async fn get_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.run(self.inner.get_flow(key, now)).await
    }
    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.run_acked(self.inner.take_flow(key, now)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(self.inner.ping()).await
    }
    async fn durable(&self) -> Result<bool, StoreError> {
        self.run(self.inner.durable()).await
    }
    async fn link(
        &self,
        handle: &SessionKey,
        record: &SessionKey,
        host: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.run(self.inner.link(handle, record, host, expires_at))
            .await
    }
    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError> {
        self.run_acked(self.inner.unlink(handle)).await
    }
    async fn resolve(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<(SessionKey, Session)>, StoreError> {
        self.run(self.inner.resolve(handle, host, now)).await
    }
    async fn resolve_with_access(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<Resolved>, StoreError> {
        self.run(self.inner.resolve_with_access(handle, host, now))
            .await
    }
    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.run(self.inner.kv_put(ns, key, value, ttl)).await
    }
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(self.inner.kv_get(ns, key)).await
    }
    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run_acked(self.inner.kv_take(ns, key)).await
    }
    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        self.run_acked(self.inner.kv_delete(ns, key)).await
    }
    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // A scan, like stats.
        let limit = self.limit.max(Duration::from_secs(5));
        match tokio::time::timeout(limit, self.inner.kv_list(ns)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
    async fn kv_add(&self, ns: &str, key: &str, by: u64, ttl: Duration) -> Result<u64, StoreError> {
        self.run(self.inner.kv_add(ns, key, by, ttl)).await
    }
    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.run_acked(self.inner.kv_swap(ns, key, expected, new))
            .await
    }
    fn health(&self) -> Option<StoreHealth> {
        self.inner.health()
    }
    fn ack_budget(&self) -> Duration {
        self.inner.ack_budget()
    }
    async fn stats(&self, now: Timestamp, limits: &Timeouts) -> Result<SessionStats, StoreError> {
        // A scan, not a request-path call: it gets a longer deadline of its own.
        let limit = self.limit.max(Duration::from_secs(5));
        match tokio::time::timeout(limit, self.inner.stats(now, limits)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}
