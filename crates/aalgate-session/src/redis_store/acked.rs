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
/// Written before each `WAIT`, so that it covers every earlier write on that master.
const PROBE_KEY: &str = "aalgate:ack-probe";
/// Held writes written again per retry (after a failover, each must be).
const BATCH: usize = 1000;

/// What a held write hides from this instance's reads until it is confirmed.
#[derive(Clone, Debug)]
pub(crate) enum Deny {
    /// The key reads as absent.
    Gone { key: String },
    /// While the key still holds `expected` (the write did not land, or was lost in a
    /// failover), it reads as `new`; any other value is newer than the write and wins.
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    /// Every session of the user first authenticated at or before `at` (seconds).
    User { user: String, at: u64 },
}

impl Deny {
    /// A pure removal: held on any error, since it can only end access.
    fn removes(&self) -> bool {
        !matches!(self, Deny::Swap { .. })
    }
}

/// A write that ends access: what it hides meanwhile, and how to write it again.
pub(crate) struct Pending {
    pub(crate) deny: Deny,
    pub(crate) reissue: Cmd,
}

/// A held swap: the value it replaced, and its own.
type Swapped = (Option<Vec<u8>>, Option<Vec<u8>>);

struct Entry {
    seq: u64,
    generation: u64,
    /// `None`: a removal.
    held: Option<Swapped>,
    at: u64,
    reissue: Cmd,
}

#[derive(Default)]
struct Held {
    keys: HashMap<String, Entry>,
    users: HashMap<String, Entry>,
    /// Set when a write could not be held (the limit).
    overflow: bool,
}

pub(crate) struct Acks {
    replicas: u32,
    timeout: Duration,
    pool: Mutex<Vec<Conn>>,
    slots: Arc<tokio::sync::Semaphore>,
    held: Mutex<Held>,
    count: AtomicUsize,
    seq: AtomicU64,
    missed: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The write may have reached the master even though no reply came.
fn maybe_written(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

/// `cmd`, a probe write, then `WAIT`: the probe makes the `WAIT` cover every earlier write on
/// this master, this one included, even when `cmd` itself changed nothing (a retried logout,
/// say, after the first attempt's write was not confirmed).
fn add_wait(p: &mut redis::Pipeline, replicas: u32, timeout: Duration) {
    p.cmd("SET")
        .arg(PROBE_KEY)
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .ignore()
        .cmd("WAIT")
        .arg(replicas)
        .arg(timeout.as_millis() as u64);
}

impl Acks {
    pub(crate) fn new(replicas: u32, timeout: Duration) -> Acks {
        Acks {
            replicas,
            timeout,
            pool: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(SLOTS)),
            held: Mutex::new(Held::default()),
            count: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
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
    /// write changed something: only such a write is held when unconfirmed (a `GETDEL` of
    /// nothing has nothing to hide), but every write needs the confirmation to succeed.
    pub(crate) async fn write<T: FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        link: &Arc<Link>,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        pending: Pending,
    ) -> Result<T, StoreError> {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        // Taken under the caller's deadline: at most SLOTS such writes (and tasks) at once.
        let slot = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(s) => s,
            Err(e) => return Err(unavailable(e)),
        };
        let (me, link) = (Arc::clone(self), Arc::clone(link));
        // Its own task: the caller's deadline cannot cancel it between the write and the hold.
        tokio::spawn(async move {
            let r = me.run(&link, cmd, changed, pending, seq).await;
            drop(slot);
            r
        })
        .await
        .map_err(unavailable)?
    }

    async fn run<T: FromRedisValue>(
        &self,
        link: &Arc<Link>,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        pending: Pending,
        seq: u64,
    ) -> Result<T, StoreError> {
        let mut c = match self.connection(link).await {
            Ok(c) => c,
            Err(e) => {
                // Not sent: a removal is still held (and sent once a master is known).
                if pending.deny.removes() {
                    self.hold(pending, 0, seq);
                }
                return Err(e);
            }
        };
        let mut p = redis::pipe();
        p.add_command(cmd);
        add_wait(&mut p, self.replicas, self.timeout);
        match p.query_async::<(T, i64)>(&mut c.conn).await {
            Ok((v, acks)) => {
                let generation = c.generation;
                self.give_back(c);
                if acks >= i64::from(self.replicas) {
                    self.confirmed(&pending.deny, seq);
                    return Ok(v);
                }
                self.missed.fetch_add(1, Ordering::Relaxed);
                if changed(&v) {
                    tracing::warn!(acks, wanted = self.replicas, "a write that ends access was not confirmed by enough replicas in time; it is denied here and written again until confirmed");
                    self.hold(pending, generation, seq);
                }
                Err(unavailable(format!(
                    "{acks} of {} replicas confirmed the write within {:?}",
                    self.replicas, self.timeout
                )))
            }
            Err(e) => {
                link.failed(c.generation, &e);
                // Applied or not, nobody knows: held as never sent (written again).
                if pending.deny.removes() || maybe_written(&e) {
                    self.hold(pending, 0, seq);
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

    /// A confirmed write replaces what was held, earlier, for the same key (or an older
    /// revocation).
    fn confirmed(&self, deny: &Deny, seq: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut h) = self.held.lock() {
            match deny {
                Deny::Gone { key } | Deny::Swap { key, .. } => {
                    if h.keys.get(key).is_some_and(|e| e.seq < seq) {
                        h.keys.remove(key);
                    }
                }
                Deny::User { user, at } => {
                    if h.users
                        .get(user)
                        .is_some_and(|e| e.seq < seq && e.at <= *at)
                    {
                        h.users.remove(user);
                    }
                }
            }
            self.recount(&h);
        }
    }

    fn recount(&self, h: &Held) {
        let n = if h.overflow {
            MAX_HELD
        } else {
            h.keys.len() + h.users.len()
        };
        self.count.store(n, Ordering::Release);
    }

    fn hold(&self, pending: Pending, generation: u64, seq: u64) {
        let Ok(mut h) = self.held.lock() else {
            return;
        };
        if h.keys.len() + h.users.len() >= MAX_HELD {
            tracing::error!("too many writes that end access await their replicas; every read fails closed until they are confirmed");
            h.overflow = true;
            self.recount(&h);
            return;
        }
        let entry = |held, at| Entry {
            seq,
            generation,
            held,
            at,
            reissue: pending.reissue,
        };
        match pending.deny {
            Deny::Gone { key } => {
                if h.keys.get(&key).is_none_or(|e| e.seq < seq) {
                    h.keys.insert(key, entry(None, 0));
                }
            }
            Deny::Swap { key, expected, new } => {
                if h.keys.get(&key).is_none_or(|e| e.seq < seq) {
                    h.keys.insert(key, entry(Some((expected, new)), 0));
                }
            }
            Deny::User { user, at } => {
                let at = h.users.get(&user).map_or(at, |e| e.at.max(at));
                h.users.insert(user, entry(None, at));
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
            Ok(h) if !h.overflow => Ok(()),
            _ => Err(unavailable(
                "too many writes that end access await confirmation by the replicas",
            )),
        }
    }

    /// Whether a held removal hides `key` (a poisoned lock hides everything).
    pub(crate) fn gone(&self, key: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.held
            .lock()
            .map(|h| h.keys.get(key).is_some_and(|e| e.held.is_none()))
            .unwrap_or(true)
    }

    /// What `key` reads as on this instance, given what Redis returned: a held removal hides
    /// it; a held swap shows its value while Redis still has the value it replaced.
    pub(crate) fn read(&self, key: &str, current: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return current;
        }
        let Ok(h) = self.held.lock() else {
            return None;
        };
        match h.keys.get(key).map(|e| &e.held) {
            None => current,
            Some(None) => None,
            Some(Some((expected, new))) if *expected == current => new.clone(),
            Some(Some(_)) => current,
        }
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
    /// probe's `WAIT` covers every earlier write there); the others (written before a
    /// failover, or never sent) are written again, since this master may not have them, at
    /// most `BATCH` at a time.
    pub(crate) async fn retry(&self, link: &Arc<Link>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(current) = link.generation() else {
            link.reconnect();
            return;
        };
        let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return;
        };
        let mut p = redis::pipe();
        let (mut keys, mut users, mut reissued) = (Vec::new(), Vec::new(), 0);
        if let Ok(h) = self.held.lock() {
            let all = h
                .keys
                .iter()
                .map(|(k, e)| (true, k, e))
                .chain(h.users.iter().map(|(u, e)| (false, u, e)));
            for (is_key, name, e) in all {
                if e.generation != current {
                    if reissued == BATCH {
                        continue;
                    }
                    reissued += 1;
                    p.add_command(e.reissue.clone()).ignore();
                }
                if is_key {
                    keys.push((name.clone(), e.seq));
                } else {
                    users.push((name.clone(), e.seq));
                }
            }
        }
        let Ok(mut c) = self.connection(link).await else {
            return;
        };
        add_wait(&mut p, self.replicas, self.timeout);
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
            // What could not be held was written on some master before this probe; with no
            // failover since, this `WAIT` covers it too. After one, it may be lost: the log
            // said so when it happened.
            h.overflow = false;
            self.recount(&h);
            tracing::info!(
                left = h.keys.len() + h.users.len(),
                "held writes confirmed by the replicas"
            );
        }
    }
}
