//! Operations around the request path: store instrumentation, policy (re)loading with an
//! atomic swap, and the store monitor that feeds the session gauges.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_policy::{PolicySet, Timeouts, Timestamp};
use aalgate_session::{Flow, Session, SessionKey, SessionStats, SessionStore, StoreError};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};

use crate::audit::{now_rfc3339, Audit, Event};
use crate::metrics::Metrics;

/// Wraps a store to time every call and count errors, per operation.
pub struct Instrumented {
    /// The (deadline-wrapped) store.
    pub inner: Arc<dyn SessionStore>,
    /// Where to record.
    pub metrics: Arc<Metrics>,
}

impl Instrumented {
    async fn timed<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t0 = Instant::now();
        let r = f.await;
        self.metrics
            .store_seconds
            .with_label_values(&[op])
            .observe(t0.elapsed().as_secs_f64());
        if r.is_err() {
            self.metrics.store_errors.with_label_values(&[op]).inc();
        }
        r
    }
}

#[async_trait]
impl SessionStore for Instrumented {
    async fn insert(&self, key: &SessionKey, session: &Session) -> Result<(), StoreError> {
        self.timed("insert", self.inner.insert(key, session)).await
    }
    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError> {
        self.timed("get", self.inner.get(key, now)).await
    }
    async fn touch(&self, key: &SessionKey, last_seen: Timestamp) -> Result<(), StoreError> {
        self.timed("touch", self.inner.touch(key, last_seen)).await
    }
    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.timed("remove", self.inner.remove(key)).await
    }
    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        self.timed("revoke_user", self.inner.revoke_user(user))
            .await
    }
    async fn put_flow(&self, key: &str, flow: &Flow, ttl: Duration) -> Result<(), StoreError> {
        self.timed("put_flow", self.inner.put_flow(key, flow, ttl))
            .await
    }
    async fn get_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.timed("get_flow", self.inner.get_flow(key, now)).await
    }
    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.timed("take_flow", self.inner.take_flow(key, now))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
    async fn durable(&self) -> Result<bool, StoreError> {
        self.timed("durable", self.inner.durable()).await
    }
    fn health(&self) -> Option<aalgate_session::StoreHealth> {
        self.inner.health()
    }
    fn ack_budget(&self) -> Duration {
        self.inner.ack_budget()
    }
    async fn stats(&self, now: Timestamp, limits: &Timeouts) -> Result<SessionStats, StoreError> {
        self.timed("stats", self.inner.stats(now, limits)).await
    }
    async fn link(
        &self,
        handle: &SessionKey,
        record: &SessionKey,
        host: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.timed("link", self.inner.link(handle, record, host, expires_at))
            .await
    }
    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError> {
        self.timed("unlink", self.inner.unlink(handle)).await
    }
    async fn resolve(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<(SessionKey, Session)>, StoreError> {
        // Labelled `get`: it is the session read of the request path.
        self.timed("get", self.inner.resolve(handle, host, now))
            .await
    }
    async fn resolve_with_access(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<aalgate_session::Resolved>, StoreError> {
        // One call, one round trip: the default would time a resolve and a kv_get.
        self.timed("get", self.inner.resolve_with_access(handle, host, now))
            .await
    }
    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.timed("kv_put", self.inner.kv_put(ns, key, value, ttl))
            .await
    }
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed("kv_get", self.inner.kv_get(ns, key)).await
    }
    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed("kv_take", self.inner.kv_take(ns, key)).await
    }
    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        self.timed("kv_delete", self.inner.kv_delete(ns, key)).await
    }
    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.timed("kv_list", self.inner.kv_list(ns)).await
    }
    async fn kv_add(&self, ns: &str, key: &str, by: u64, ttl: Duration) -> Result<u64, StoreError> {
        self.timed("kv_add", self.inner.kv_add(ns, key, by, ttl))
            .await
    }
    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.timed("kv_swap", self.inner.kv_swap(ns, key, expected, new))
            .await
    }
}

/// SHA-256 over the policy files' paths and contents: changes whenever any file does.
fn fingerprint(paths: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    if let Ok(files) = crate::policy_files::policy_files(paths) {
        for f in files {
            h.update(f.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(std::fs::read(&f).unwrap_or_default());
            h.update([0]);
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The policy in force, swapped atomically on reload. Requests take a snapshot at their start
/// and finish on it.
pub struct Policies {
    current: ArcSwap<PolicySet>,
    hash: std::sync::Mutex<String>,
    paths: Vec<PathBuf>,
    listen: Vec<crate::config::Listener>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
}

/// [`crate::policy_files::load`], plus the checks against the config's listeners (as errors in the
/// same list, so a set naming a missing listener is refused like any other broken set).
fn load_checked(
    paths: &[PathBuf],
    listen: &[crate::config::Listener],
) -> Result<PolicySet, Vec<String>> {
    let set = crate::policy_files::load(paths)
        .map_err(|diags| diags.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let problems = crate::config::listener_problems(&set, listen);
    let (errors, warnings): (Vec<_>, Vec<_>) = problems
        .iter()
        .partition(|d| d.severity == aalgate_policy::Severity::Error);
    for w in warnings {
        tracing::warn!("policy: {w}");
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

/// Signed requests rest on the `request_signed` line being kept: only a file sink, synced
/// before the request is admitted, keeps it under the gateway's control.
fn warn_on_weak_evidence(set: &PolicySet, audit: &Audit) {
    let signs = set
        .rules()
        .iter()
        .any(|r| r.access.step_up.is_some_and(|s| s.per_request()));
    if signs && !audit.evidence_grade() {
        tracing::warn!("policy: a route signs requests (step_up: per_request), but the audit output is not a file: stdout and syslog pass request_signed evidence to another process that may still drop it (journald rate limits); use audit: output: file:<path>");
    }
}

impl Policies {
    /// Loads the first set; an invalid set is an error (the gateway refuses to start).
    pub fn load(
        paths: Vec<PathBuf>,
        listen: Vec<crate::config::Listener>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> anyhow::Result<Policies> {
        let hash = fingerprint(&paths);
        let set = match load_checked(&paths, &listen) {
            Ok(set) => set,
            Err(diags) => {
                for d in &diags {
                    tracing::error!("policy: {d}");
                }
                metrics.reloads.with_label_values(&["failure"]).inc();
                anyhow::bail!("the policy set has errors (run `aalgate validate` for the list); refusing to start");
            }
        };
        for w in set.warnings() {
            tracing::warn!("policy: {w}");
        }
        warn_on_weak_evidence(&set, &audit);
        let p = Policies {
            current: ArcSwap::from_pointee(set),
            hash: std::sync::Mutex::new(String::new()),
            paths,
            listen,
            metrics,
            audit,
        };
        p.mark_loaded(&hash);
        Ok(p)
    }

    fn mark_loaded(&self, hash: &str) {
        let m = &self.metrics;
        m.reloads.with_label_values(&["success"]).inc();
        m.reload_success_time.set(Timestamp::wall().0 as f64);
        m.policy_info.reset();
        m.policy_info.with_label_values(&[hash]).set(1);
        if let Ok(mut h) = self.hash.lock() {
            *h = hash.to_string();
        }
    }

    /// The set in force.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Reloads if the files changed (or always, when `force`). An invalid new set keeps the
    /// old one in force; the errors go to the log with file:line:column.
    pub fn reload(&self, force: bool) {
        let hash = fingerprint(&self.paths);
        let unchanged = self.hash.lock().map(|h| *h == hash).unwrap_or(false);
        if unchanged && !force {
            return;
        }
        match load_checked(&self.paths, &self.listen) {
            Ok(set) => {
                for w in set.warnings() {
                    tracing::warn!("policy: {w}");
                }
                warn_on_weak_evidence(&set, &self.audit);
                let apps = set.apps().len();
                self.current.store(Arc::new(set));
                self.mark_loaded(&hash);
                tracing::info!(hash = %hash, apps, "policy reloaded");
                self.audit.emit(&Event {
                    time: now_rfc3339(),
                    event: "reload",
                    decision: Some("success"),
                    detail: Some(format!("policy hash {hash}")),
                    ..Default::default()
                });
            }
            Err(diags) => {
                for d in &diags {
                    tracing::error!("policy reload: {d}");
                }
                // Remember the broken files' hash so the same errors are not logged every poll.
                if let Ok(mut h) = self.hash.lock() {
                    *h = hash.clone();
                }
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!("policy reload failed; the previous policy set stays in force");
                self.audit.emit(&Event {
                    time: now_rfc3339(),
                    event: "reload",
                    decision: Some("failure"),
                    detail: Some(format!("{} problem(s); previous policy kept", diags.len())),
                    ..Default::default()
                });
            }
        }
    }
}

/// How often the policy directory is checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// Reloads policies on SIGHUP and when the files change.
pub struct Reloader(pub Arc<Policies>);

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; policy reload works by file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        loop {
            let policies = self.0.clone();
            tokio::select! {
                _ = tick.tick() => {
                    let _ = tokio::task::spawn_blocking(move || policies.reload(false)).await;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading policies");
                    let _ = tokio::task::spawn_blocking(move || policies.reload(true)).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How often the store is probed (`aalgate_store_up`).
pub const MONITOR: Duration = Duration::from_secs(5);

/// Probes the store (`aalgate_store_up`) and counts live sessions from it, so the gauges are the
/// same on every instance sharing the store.
pub struct StoreMonitor {
    /// The instrumented store.
    pub store: Arc<dyn SessionStore>,
    /// The policies (their loosest limits decide whether a session is still live).
    pub policies: Arc<Policies>,
    /// Where to record.
    pub metrics: Arc<Metrics>,
    /// How often live sessions are counted: a scan of every session (about 1 s of Redis and
    /// gateway CPU per 100,000 sessions), so much less often than the probe.
    pub count_every: Duration,
    /// The clock floor file, written at every probe ([`crate::clock::Clock::load_floor`]
    /// reads it at start).
    pub clock_floor: std::path::PathBuf,
    /// The gateway's clock.
    pub clock: Arc<crate::clock::Clock>,
}

/// For each AAL, the loosest limits any app allows: a session is live while some app accepts it.
pub fn loosest(set: &PolicySet) -> Timeouts {
    let mut t = Timeouts::DEFAULT;
    for aal in aalgate_policy::Aal::ALL {
        let mut first = true;
        for app in set.apps() {
            let l = app.timeouts.get(aal);
            let slot = t.get_mut(aal);
            if first {
                *slot = l;
                first = false;
            } else {
                slot.max_session_age = slot.max_session_age.max(l.max_session_age);
                slot.idle_timeout = match (slot.idle_timeout, l.idle_timeout) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
        }
    }
    t
}

/// Moves the Redis connection's figures into the metrics (counters by their increase).
fn record_health(
    m: &Metrics,
    seen: &aalgate_session::StoreHealth,
    h: &aalgate_session::StoreHealth,
) {
    if seen.master != h.master {
        m.store_master.reset();
    }
    if let Some(a) = &h.master {
        m.store_master.with_label_values(&[a]).set(1);
    }
    m.store_failovers
        .inc_by(h.failovers.saturating_sub(seen.failovers));
    m.store_acks_missed
        .inc_by(h.acks_missed.saturating_sub(seen.acks_missed));
    m.store_unconfirmed.set(h.unconfirmed as i64);
    let more = h.without_master.saturating_sub(seen.without_master);
    m.store_without_master.inc_by(more.as_secs_f64());
}

#[async_trait]
impl BackgroundService for StoreMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(MONITOR);
        let mut last_count: Option<Instant> = None;
        let mut last_durable: Option<bool> = None;
        let mut seen = aalgate_session::StoreHealth::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.clock.save_floor(&self.clock_floor);
                    let m = &self.metrics;
                    let up = self.store.ping().await.is_ok();
                    m.store_up.set(i64::from(up));
                    if let Some(h) = self.store.health() {
                        record_health(m, &seen, &h);
                        seen = h;
                    }
                    if up {
                        if let Ok(d) = self.store.durable().await {
                            if !d && last_durable != Some(false) {
                                tracing::warn!("the session store is not durable (Redis: appendonly no): a restart from an older snapshot brings logged-out sessions back; set appendonly yes (deploy/redis.conf)");
                            }
                            m.store_durable.set(i64::from(d));
                            last_durable = Some(d);
                        }
                    }
                    if up && last_count.is_none_or(|t| t.elapsed() >= self.count_every) {
                        last_count = Some(Instant::now());
                        let limits = loosest(&self.policies.snapshot());
                        match self.store.stats(self.clock.now(), &limits).await {
                            Ok(s) => {
                                for (i, aal) in ["1", "2", "3"].iter().enumerate() {
                                    m.sessions_active.with_label_values(&[aal]).set(s.active[i] as i64);
                                }
                                for (i, w) in ["5m", "15m", "60m"].iter().enumerate() {
                                    m.sessions_expiring.with_label_values(&[w]).set(s.expiring_within[i] as i64);
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "counting sessions failed"),
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
