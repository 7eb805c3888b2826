//! The connection to the Redis master: from a URL, or from the master the Sentinels name.
//!
//! It is dropped on an I/O error, a timeout or a `READONLY` reply, and when the Sentinels name
//! another master; the next call finds the master again. A `ConnectionManager` would reconnect
//! to the old address, and a demoted master keeps answering reads (and, for a while, writes).
//! Finding the master runs in a task of its own, so a caller's deadline never cancels it
//! half-way, and at most one attempt runs at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use super::sentinels::{certificates, Named, Sentinels};
use crate::redis_config::{RedisConfig, RedisTarget};
use crate::store::StoreError;

enum Source {
    Url(Client),
    Sentinel(Sentinels),
}

/// A connection and the generation of the master it goes to.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) generation: u64,
    pub(crate) conn: MultiplexedConnection,
}

struct Current {
    generation: u64,
    conn: MultiplexedConnection,
    client: Client,
}

#[derive(Default)]
struct Record {
    master: Option<String>,
    last_master: Option<String>,
    failovers: u64,
    lost_since: Option<Instant>,
    without: Duration,
    last_error: String,
    last_attempt: Option<Instant>,
    /// When a failed attempt was last logged.
    logged: Option<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(30);

/// No new attempt to find the master within this long of a failed one: a flood of requests
/// during a failover does not become a flood of Sentinel queries.
const RETRY_GAP: Duration = Duration::from_millis(200);

/// With Sentinel, how long the connection is trusted without the Sentinels naming its master
/// again: past it, an instance cut off from every Sentinel (perhaps beside a demoted master)
/// fails closed instead of reading stale sessions.
const LEASE: Duration = Duration::from_secs(5);

pub(crate) struct Link {
    source: Source,
    timeout: Duration,
    ack_timeout: Duration,
    current: RwLock<Option<Current>>,
    generation: AtomicU64,
    connecting: AtomicBool,
    attempts: tokio::sync::watch::Sender<u64>,
    record: Mutex<Record>,
    /// With Sentinel: when (ms after `born`) the Sentinels last named the connected master.
    confirmed_ms: AtomicU64,
    born: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn url_client(url: &str, cfg: &RedisConfig) -> Result<Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| unavailable(format!("bad redis url: {e}")))?;
    let mut redis = info.redis_settings().clone();
    if let Some(db) = cfg.db {
        redis = redis.set_db(db);
    }
    if let Some(u) = &cfg.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &cfg.password {
        redis = redis.set_password(p);
    }
    let info = info.set_redis_settings(redis);
    match &cfg.tls {
        Some(tls) => Client::build_with_tls(info, certificates(tls)),
        None => Client::open(info),
    }
    .map_err(|e| unavailable(format!("bad redis settings: {e}")))
}

/// Errors after which the connection cannot be trusted to reach the master.
fn drops_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
        || e.code() == Some("LOADING")
        || e.code() == Some("NOREPLICAS")
}

impl Link {
    pub(crate) fn new(cfg: &RedisConfig) -> Result<Link, StoreError> {
        // Already installed (by pingora's server, say) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let source = match &cfg.target {
            RedisTarget::Url(url) => Source::Url(url_client(url, cfg)?),
            RedisTarget::Sentinel {
                sentinels,
                master_name,
            } => Source::Sentinel(Sentinels::new(sentinels, master_name, cfg)?),
        };
        Ok(Link {
            source,
            timeout: cfg.timeout,
            ack_timeout: cfg.ack_timeout,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            connecting: AtomicBool::new(false),
            attempts: tokio::sync::watch::Sender::new(0),
            record: Mutex::new(Record {
                lost_since: Some(Instant::now()),
                ..Record::default()
            }),
            confirmed_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    pub(crate) fn sentinel(&self) -> bool {
        matches!(self.source, Source::Sentinel(_))
    }

    fn connected(&self) -> Option<Conn> {
        self.current.read().ok()?.as_ref().map(|c| Conn {
            generation: c.generation,
            conn: c.conn.clone(),
        })
    }

    fn confirm(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.confirmed_ms.store(ms, Ordering::Release);
    }

    /// With Sentinel, whether no Sentinel has named the connected master for [`LEASE`].
    fn lease_expired(&self) -> bool {
        let since = (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.confirmed_ms.load(Ordering::Acquire));
        self.sentinel() && since > LEASE.as_millis() as u64
    }

    /// The shared connection to the master (session lookups and every other call).
    pub(crate) async fn shared(self: &Arc<Self>) -> Result<Conn, StoreError> {
        if let Some(c) = self.connected() {
            if !self.lease_expired() {
                return Ok(c);
            }
            // Cut off from every Sentinel: fail closed rather than read a replaced master.
            self.drop_connection(c.generation, "no sentinel has confirmed the master for 5 s");
        }
        let mut attempts = self.attempts.subscribe();
        if !self.reconnect() {
            return Err(self.last_error());
        }
        loop {
            if let Some(c) = self.connected() {
                return Ok(c);
            }
            if !self.connecting.load(Ordering::Acquire) {
                return Err(self.last_error());
            }
            if attempts.changed().await.is_err() {
                return Err(self.last_error());
            }
        }
    }

    fn last_error(&self) -> StoreError {
        let e = self
            .record
            .lock()
            .map(|r| r.last_error.clone())
            .unwrap_or_default();
        unavailable(if e.is_empty() {
            "no redis master known yet".to_string()
        } else {
            format!("no redis master: {e}")
        })
    }

    /// Starts an attempt to find the master unless one runs or one failed just now. Returns
    /// whether an attempt is running.
    pub(crate) fn reconnect(self: &Arc<Self>) -> bool {
        if self.connecting.load(Ordering::Acquire) {
            return true;
        }
        if let Ok(mut r) = self.record.lock() {
            if r.last_attempt.is_some_and(|t| t.elapsed() < RETRY_GAP) {
                return false;
            }
            r.last_attempt = Some(Instant::now());
        }
        if self
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // Whatever happens to this task (a panic in a dependency included), the next call
            // may start another attempt.
            struct Done(Arc<Link>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.connecting.store(false, Ordering::Release);
                    self.0.attempts.send_modify(|n| *n += 1);
                }
            }
            let done = Done(Arc::clone(&me));
            let result = me.attempt().await;
            if let Ok(mut r) = me.record.lock() {
                match result {
                    Ok(()) => r.last_error.clear(),
                    Err(e) => {
                        // Once per cause, and again every 30 s while it lasts.
                        if r.last_error != e || r.logged.is_none_or(|t| t.elapsed() > LOG_EVERY) {
                            tracing::warn!(error = %e, "the session store's master could not be reached");
                            r.logged = Some(Instant::now());
                        }
                        r.last_error = e;
                    }
                }
            }
            drop(done);
        });
        true
    }

    /// Budget of one attempt: the Sentinels, the master's role check, and the connection.
    fn attempt_budget(&self) -> Duration {
        // Over redis-rs's 1 s connect timeout to a Sentinel: one Sentinel host that drops
        // packets must not make every attempt run out.
        (self.timeout * 10).clamp(Duration::from_secs(3), Duration::from_secs(10))
    }

    async fn master_client(&self) -> Result<Client, String> {
        match &self.source {
            Source::Url(c) => Ok(c.clone()),
            Source::Sentinel(s) => match s.named().await {
                Named::Master(host, port) => s.master(&host, port),
                Named::Down(e) | Named::Unknown(e) => Err(e),
            },
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        let budget = self.attempt_budget();
        let found = tokio::time::timeout(budget, async {
            let client = self.master_client().await?;
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
                .set_response_timeout(Some(self.timeout.max(Duration::from_millis(100))));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| e.to_string())?;
            if let Source::Sentinel(s) = &self.source {
                s.check_master(&mut conn).await?;
            }
            Ok::<_, String>((client, conn))
        })
        .await
        .map_err(|_| format!("no answer within {budget:?}"))??;
        let (client, conn) = found;
        let addr = client.get_connection_info().addr().to_string();
        // The Sentinels' answer may predate a failover that finished while the connection was
        // being made (a master cut off, then back, still says "master" until the Sentinels
        // demote it). Asked again, they must still name this address.
        if self.sentinel() {
            let again = tokio::time::timeout(budget, self.master_client())
                .await
                .map_err(|_| format!("the sentinels did not confirm {addr} within {budget:?}"))??;
            let named = again.get_connection_info().addr().to_string();
            if named != addr {
                return Err(format!(
                    "the sentinels named {addr}, then {named}: a failover is under way"
                ));
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.confirm();
        if let Ok(mut c) = self.current.write() {
            *c = Some(Current {
                generation,
                conn,
                client,
            });
        }
        if let Ok(mut r) = self.record.lock() {
            if let Some(since) = r.lost_since.take() {
                r.without += since.elapsed();
            }
            if r.last_master.as_ref().is_some_and(|m| *m != addr) {
                r.failovers += 1;
                tracing::warn!(master = %addr, previous = ?r.last_master, "the session store's master changed");
            }
            r.last_master = Some(addr.clone());
            r.master = Some(addr);
        }
        Ok(())
    }

    /// After a failed call on generation `generation`: drops the connection when the error
    /// means it may no longer reach the master.
    pub(crate) fn failed(&self, generation: u64, e: &RedisError) {
        if drops_connection(e) {
            self.drop_connection(generation, &e.to_string());
        }
    }

    fn drop_connection(&self, generation: u64, why: &str) {
        let Ok(mut c) = self.current.write() else {
            return;
        };
        if c.as_ref().is_some_and(|c| c.generation == generation) {
            *c = None;
            drop(c);
            tracing::warn!(reason = %why, "dropped the connection to the session store's master");
            if let Ok(mut r) = self.record.lock() {
                r.master = None;
                r.lost_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// A new connection to the current master, for writes that wait for replicas (`WAIT`
    /// blocks its connection, so it never runs on the shared one).
    pub(crate) async fn dedicated(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let shared = self.shared().await?;
        let client = self
            .current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.client.clone()))
            .ok_or_else(|| self.last_error())?;
        let t = self.timeout.max(Duration::from_millis(100));
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t + self.ack_timeout));
        match client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(conn) => Ok(Conn {
                generation: shared.generation,
                conn,
            }),
            Err(e) => {
                self.failed(shared.generation, &e);
                Err(unavailable(e))
            }
        }
    }

    pub(crate) fn generation(&self) -> Option<u64> {
        self.current.read().ok()?.as_ref().map(|c| c.generation)
    }

    /// With Sentinel: asks whether the master is still the one connected to, and still a
    /// master with its replicas, and drops the connection when it is not (a demoted master
    /// still answers reads; one cut off from its replicas may have been replaced).
    pub(crate) async fn verify(self: &Arc<Self>) {
        let Source::Sentinel(s) = &self.source else {
            return;
        };
        let Some(Conn {
            generation,
            mut conn,
        }) = self.connected()
        else {
            self.reconnect();
            return;
        };
        let connected = self.record.lock().ok().and_then(|r| r.master.clone());
        let named = tokio::time::timeout(self.attempt_budget(), s.named()).await;
        match named {
            Ok(Named::Master(host, port)) => {
                let addr = format!("{host}:{port}");
                if connected.as_deref() != Some(addr.as_str()) {
                    self.drop_connection(
                        generation,
                        &format!("the sentinels now name {addr} as the master"),
                    );
                    self.reconnect();
                    return;
                }
                let role = tokio::time::timeout(self.attempt_budget(), s.check_master(&mut conn));
                match role.await {
                    Ok(Ok(())) => self.confirm(),
                    Ok(Err(e)) => self.drop_connection(generation, &e),
                    Err(_) => {}
                }
            }
            Ok(Named::Down(e)) => self.drop_connection(generation, &e),
            // Too few Sentinels answered, or the check timed out: nothing new is known, for a
            // while (the lease).
            Ok(Named::Unknown(_)) | Err(_) => {}
        }
        if self.lease_expired() {
            self.drop_connection(generation, "no sentinel has confirmed the master for 5 s");
        }
    }

    pub(crate) fn health(&self) -> (Option<String>, u64, Duration) {
        self.record
            .lock()
            .map(|r| {
                let now = r.lost_since.map(|s| s.elapsed()).unwrap_or_default();
                (r.master.clone(), r.failovers, r.without + now)
            })
            .unwrap_or_default()
    }
}
