//! Writes that end access (logout, revocation, a disable or group removal, a used one-time
//! token), acknowledged by `N` replicas (`WAIT N ms`) before they count.
//!
//! With asynchronous replication, a replica promoted before it received a logout brings the
//! session back. So such a write runs, with its `WAIT`, on a connection of its own (`WAIT`
//! blocks the connection it runs on; session lookups on the shared one never queue behind
//! it), in a task of its own (a caller's deadline cannot cancel it half-way). When replicas
//! do not confirm in time, the caller gets an error, and the write is *held*: what it removed
//! stays removed for this instance's reads, and it is written again, on whichever master is
//! current, until a `WAIT` confirms it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Cmd, FromRedisValue};

use super::link::{Conn, Link};
use crate::store::StoreError;

/// At most this many held writes; past it, every read fails closed until they are confirmed.
const MAX_HELD: usize = 100_000;
/// Idle dedicated connections kept for the next write.
const POOL: usize = 4;
/// Dedicated connections at once: more writes wait for a free one (within their deadline).
const SLOTS: usize = 16;
/// Written with each retry, so that its `WAIT` covers every earlier write on that master.
const PROBE_KEY: &str = "aalgate:ack-probe";

/// What a held write hides from this instance's reads until it is confirmed.
#[derive(Clone, Debug)]
pub(crate) enum Deny {
    /// The key reads as this value (`None`: absent).
    Key { key: String, value: Option<Vec<u8>> },
    /// Every session of the user first authenticated at or before `at` (seconds).
    User { user: String, at: u64 },
}

/// A write that ends access: what it hides meanwhile, and how to write it again.
pub(crate) struct Pending {
    pub(crate) deny: Deny,
    pub(crate) reissue: Cmd,
}

struct Entry {
    seq: u64,
    generation: u64,
    value: Option<Vec<u8>>,
    at: u64,
    reissue: Cmd,
}

#[derive(Default)]
struct Held {
    keys: HashMap<String, Entry>,
    users: HashMap<String, Entry>,
    seq: u64,
    /// Set when a write could not be held (the limit): the generation it happened on.
    overflow: Option<u64>,
}

pub(crate) struct Acks {
    replicas: u32,
    timeout: Duration,
    pool: Mutex<Vec<Conn>>,
    slots: tokio::sync::Semaphore,
    held: Mutex<Held>,
    count: AtomicUsize,
    missed: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The write may have reached the master even though no reply came.
fn maybe_written(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

impl Acks {
    pub(crate) fn new(replicas: u32, timeout: Duration) -> Acks {
        Acks {
            replicas,
            timeout,
            pool: Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(SLOTS),
            held: Mutex::new(Held::default()),
            count: AtomicUsize::new(0),
            missed: AtomicU64::new(0),
        }
    }

    /// Whether writes wait for replicas at all.
    pub(crate) fn on(&self) -> bool {
        self.replicas > 0
    }

    /// How much longer than other calls such a write may take.
    pub(crate) fn budget(&self) -> Duration {
        if self.on() {
            self.timeout + Duration::from_millis(100)
        } else {
            Duration::ZERO
        }
    }

    pub(crate) fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    pub(crate) fn unconfirmed(&self) -> u64 {
        self.count.load(Ordering::Relaxed) as u64
    }

    /// Runs `cmd` and waits for the replicas. `changed` says whether the reply means the
    /// write changed something (a `GETDEL` of nothing needs no confirmation and is not held).
    pub(crate) async fn write<T: FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        link: &Arc<Link>,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        pending: Pending,
    ) -> Result<T, StoreError> {
        let (me, link) = (Arc::clone(self), Arc::clone(link));
        tokio::spawn(async move { me.run(&link, cmd, changed, pending).await })
            .await
            .map_err(unavailable)?
    }

    async fn run<T: FromRedisValue>(
        &self,
        link: &Arc<Link>,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        pending: Pending,
    ) -> Result<T, StoreError> {
        let _slot = self.slots.acquire().await.map_err(unavailable)?;
        let mut c = self.connection(link).await?;
        let mut p = redis::pipe();
        p.add_command(cmd)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64);
        match p.query_async::<(T, i64)>(&mut c.conn).await {
            Ok((v, acks)) => {
                let generation = c.generation;
                self.give_back(c);
                if !changed(&v) {
                    return Ok(v);
                }
                if acks >= i64::from(self.replicas) {
                    self.confirmed(&pending.deny);
                    return Ok(v);
                }
                self.missed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(acks, wanted = self.replicas, "a write that ends access was not confirmed by enough replicas in time; it is denied here and written again until confirmed");
                self.hold(pending, generation);
                Err(unavailable(format!(
                    "{acks} of {} replicas confirmed the write within {:?}",
                    self.replicas, self.timeout
                )))
            }
            Err(e) => {
                link.failed(c.generation, &e);
                if maybe_written(&e) {
                    self.hold(pending, c.generation);
                }
                Err(unavailable(e))
            }
        }
    }

    async fn connection(&self, link: &Arc<Link>) -> Result<Conn, StoreError> {
        let current = link.generation();
        let idle = self.pool.lock().ok().and_then(|mut p| {
            p.retain(|c| Some(c.generation) == current);
            p.pop()
        });
        match idle {
            Some(c) => Ok(c),
            None => link.dedicated().await,
        }
    }

    fn give_back(&self, c: Conn) {
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < POOL {
                p.push(c);
            }
        }
    }

    /// A confirmed write replaces what was held for the same key (or an older revocation).
    fn confirmed(&self, deny: &Deny) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut h) = self.held.lock() {
            match deny {
                Deny::Key { key, .. } => {
                    h.keys.remove(key);
                }
                Deny::User { user, at } => {
                    if h.users.get(user).is_some_and(|e| e.at <= *at) {
                        h.users.remove(user);
                    }
                }
            }
            self.recount(&h);
        }
    }

    fn recount(&self, h: &Held) {
        let n = if h.overflow.is_some() {
            MAX_HELD
        } else {
            h.keys.len() + h.users.len()
        };
        self.count.store(n, Ordering::Release);
    }

    fn hold(&self, pending: Pending, generation: u64) {
        let Ok(mut h) = self.held.lock() else {
            return;
        };
        if h.keys.len() + h.users.len() >= MAX_HELD {
            tracing::error!("too many writes that end access await their replicas; every read fails closed until they are confirmed");
            h.overflow.get_or_insert(generation);
            self.recount(&h);
            return;
        }
        h.seq += 1;
        let seq = h.seq;
        match pending.deny {
            Deny::Key { key, value } => {
                h.keys.insert(
                    key,
                    Entry {
                        seq,
                        generation,
                        value,
                        at: 0,
                        reissue: pending.reissue,
                    },
                );
            }
            Deny::User { user, at } => {
                let at = h.users.get(&user).map_or(at, |e| e.at.max(at));
                h.users.insert(
                    user,
                    Entry {
                        seq,
                        generation,
                        value: None,
                        at,
                        reissue: pending.reissue,
                    },
                );
            }
        }
        self.recount(&h);
    }

    /// Reads fail closed while a write could not even be held.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.count.load(Ordering::Acquire) < MAX_HELD {
            return Ok(());
        }
        match self.held.lock() {
            Ok(h) if h.overflow.is_none() => Ok(()),
            _ => Err(unavailable(
                "too many writes that end access await confirmation by the replicas",
            )),
        }
    }

    /// What a held write says about `key`: `Some(None)` absent, `Some(Some(v))` that value,
    /// `None` nothing held.
    pub(crate) fn shadow(&self, key: &str) -> Option<Option<Vec<u8>>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let h = self.held.lock().ok()?;
        h.keys.get(key).map(|e| e.value.clone())
    }

    /// Whether a held revocation ends a session of `user` first authenticated at `auth_time`.
    pub(crate) fn revoked(&self, user: &str, auth_time: u64) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.held
            .lock()
            .map(|h| h.users.get(user).is_some_and(|e| auth_time <= e.at))
            .unwrap_or(true)
    }

    /// Writes the held writes again, with a probe write, on the current master, and forgets
    /// those a `WAIT` then confirms. Writes held on the same master are only confirmed (the
    /// probe's `WAIT` covers every earlier write there); after a failover each is written
    /// again, since the new master may never have had it.
    pub(crate) async fn retry(&self, link: &Arc<Link>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(current) = link.generation() else {
            link.reconnect();
            return;
        };
        let (mut p, mut keys, mut users, overflow) = (redis::pipe(), Vec::new(), Vec::new(), {
            let Ok(h) = self.held.lock() else { return };
            h.overflow
        });
        if let Ok(h) = self.held.lock() {
            for (k, e) in &h.keys {
                if e.generation != current {
                    p.add_command(e.reissue.clone()).ignore();
                }
                keys.push((k.clone(), e.seq));
            }
            for (u, e) in &h.users {
                if e.generation != current {
                    p.add_command(e.reissue.clone()).ignore();
                }
                users.push((u.clone(), e.seq));
            }
        }
        p.cmd("SET")
            .arg(PROBE_KEY)
            .arg(current)
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64);
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let Ok(mut c) = self.connection(link).await else {
            return;
        };
        let acks = match p.query_async::<(i64,)>(&mut c.conn).await {
            Ok((acks,)) => acks,
            Err(e) => {
                link.failed(c.generation, &e);
                return;
            }
        };
        let generation = c.generation;
        self.give_back(c);
        if acks < i64::from(self.replicas) || generation != current {
            return;
        }
        if let Ok(mut h) = self.held.lock() {
            for (k, seq) in keys {
                if h.keys.get(&k).is_some_and(|e| e.seq == seq) {
                    h.keys.remove(&k);
                }
            }
            for (u, seq) in users {
                if h.users.get(&u).is_some_and(|e| e.seq == seq) {
                    h.users.remove(&u);
                }
            }
            if overflow == Some(current) && h.overflow == Some(current) {
                h.overflow = None;
            }
            self.recount(&h);
            tracing::info!(
                left = h.keys.len() + h.users.len(),
                "held writes confirmed by the replicas"
            );
        }
    }
}
