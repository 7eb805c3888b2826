//! Writes that end access (logout, revocation, a disable or group removal, a used one-time
//! token), acknowledged by `N` replicas (`WAIT N ms`) before they count.
//!
//! With asynchronous replication, a replica promoted before it received a logout brings the
//! session back. So such a write runs, with a probe write and its `WAIT`, on a connection of
//! its own (`WAIT` blocks the connection it runs on; session lookups on the shared one never
//! queue behind it), in a task of its own (a caller's deadline cannot cancel it half-way).
//! When replicas do not confirm in time, the caller gets an error.
//!
//! A *removal* (a key deleted or taken, a person's sessions revoked) is also *held* from
//! before it is sent: what it removes stays removed for this instance's reads, and it is
//! written again, on whichever master is current, until a `WAIT` confirms it. A
//! compare-and-swap is never held: resent later it could undo a newer change (an old grant
//! over a newer removal), and shown locally it could hide one; its caller gets the error and
//! runs it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Cmd, FromRedisValue};

use super::link::{Conn, Link};
use crate::store::StoreError;

/// At most this many held removals; past it, every read fails closed until a restart.
const MAX_HELD: usize = 100_000;
/// Idle dedicated connections kept for the next write.
const POOL: usize = 4;
/// Dedicated connections at once: more writes wait for a free one (within their deadline).
const SLOTS: usize = 16;
/// Written before each `WAIT`, so that it covers every earlier write on that master.
const PROBE_KEY: &str = "aalgate:ack-probe";
/// Held writes written again per retry (after a failover, each must be).
const BATCH: usize = 1000;
/// How long a retry waits for a free slot.
const TICK_WAIT: Duration = Duration::from_millis(200);

/// What a held removal hides from this instance's reads until it is confirmed.
#[derive(Clone, Debug)]
pub(crate) enum Deny {
    /// The key reads as absent.
    Gone { key: String },
    /// Every session of the user first authenticated at or before `at` (seconds).
    User { user: String, at: u64 },
}

/// A removal: what it hides meanwhile, and how to write it again.
#[derive(Clone)]
pub(crate) struct Pending {
    pub(crate) deny: Deny,
    pub(crate) reissue: Cmd,
}

struct Entry {
    seq: u64,
    at: u64,
    reissue: Cmd,
}

#[derive(Default)]
struct Held {
    keys: HashMap<String, Entry>,
    users: HashMap<String, Entry>,
    /// Set when a removal could not be held (the limit): from then on every read fails
    /// closed until a restart, since that removal may never reach a replica.
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

/// A probe write, then `WAIT`: the probe makes the `WAIT` cover every earlier write on this
/// master, the one before it included, even when that one changed nothing (a retried logout,
/// say, after the first attempt was not confirmed).
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

    /// Runs `cmd` and waits for the replicas; every write needs the confirmation to succeed.
    /// A removal (`pending`) is held from before anything can fail (no master, no free slot,
    /// the caller's deadline), and stays held unless the reply says it is confirmed or it
    /// changed nothing (a `GETDEL` of nothing has nothing to hide).
    pub(crate) async fn write<T: FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        link: &Arc<Link>,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        pending: Option<Pending>,
    ) -> Result<T, StoreError> {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(p) = &pending {
            self.hold(p.clone(), seq);
        }
        // Taken under the caller's deadline: at most SLOTS such writes (and tasks) at once.
        let slot = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(s) => s,
            Err(e) => return Err(unavailable(e)),
        };
        let (me, link) = (Arc::clone(self), Arc::clone(link));
        tokio::spawn(async move {
            let r = me.run(&link, cmd, changed, pending.as_ref(), seq).await;
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
        pending: Option<&Pending>,
        seq: u64,
    ) -> Result<T, StoreError> {
        let mut c = self.connection(link).await?;
        let mut p = redis::pipe();
        p.add_command(cmd);
        add_wait(&mut p, self.replicas, self.timeout);
        match p.query_async::<(T, i64)>(&mut c.conn).await {
            Ok((v, acks)) => {
                self.give_back(c);
                if acks >= i64::from(self.replicas) {
                    if let Some(p) = pending {
                        self.forget(&p.deny, |e| e.seq <= seq);
                    }
                    return Ok(v);
                }
                self.missed.fetch_add(1, Ordering::Relaxed);
                match pending {
                    // Nothing removed: nothing to hide (its own hold goes, no earlier one).
                    Some(p) if !changed(&v) => self.forget(&p.deny, |e| e.seq == seq),
                    Some(_) => tracing::warn!(acks, wanted = self.replicas, "a removal was not confirmed by enough replicas in time; it is denied here and written again until confirmed"),
                    None => tracing::warn!(acks, wanted = self.replicas, "a change was not confirmed by enough replicas in time; its caller was told it failed"),
                }
                Err(unavailable(format!(
                    "{acks} of {} replicas confirmed the write within {:?}",
                    self.replicas, self.timeout
                )))
            }
            Err(e) => {
                // A slow `WAIT` on this connection says nothing about the shared one.
                if !e.is_timeout() {
                    link.failed(c.generation, &e);
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

    /// Drops the hold of `deny`'s key (or person) if `which` says so. A confirmed removal
    /// settles every earlier one of the same key: the key is gone on the master and a replica.
    fn forget(&self, deny: &Deny, which: impl Fn(&Entry) -> bool) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut h) = self.held.lock() {
            match deny {
                Deny::Gone { key } => {
                    if h.keys.get(key).is_some_and(&which) {
                        h.keys.remove(key);
                    }
                }
                Deny::User { user, at } => {
                    if h.users.get(user).is_some_and(|e| which(e) && e.at <= *at) {
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

    fn hold(&self, pending: Pending, seq: u64) {
        let Ok(mut h) = self.held.lock() else {
            // Nothing can be held any more: every read fails closed.
            self.count.store(MAX_HELD, Ordering::Release);
            return;
        };
        if h.keys.len() + h.users.len() >= MAX_HELD {
            tracing::error!("too many removals await their replicas: one could not be held, so every read fails closed from now on; restart the gateway once the replicas are back");
            h.overflow = true;
            self.recount(&h);
            return;
        }
        let entry = |at| Entry {
            seq,
            at,
            reissue: pending.reissue,
        };
        match pending.deny {
            Deny::Gone { key } => {
                if h.keys.get(&key).is_none_or(|e| e.seq < seq) {
                    h.keys.insert(key, entry(0));
                }
            }
            Deny::User { user, at } => {
                let at = h.users.get(&user).map_or(at, |e| e.at.max(at));
                h.users.insert(user, entry(at));
            }
        }
        self.recount(&h);
    }

    /// Reads fail closed once a removal could not be held.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.count.load(Ordering::Acquire) < MAX_HELD {
            return Ok(());
        }
        match self.held.lock() {
            Ok(h) if !h.overflow => Ok(()),
            _ => Err(unavailable(
                "a removal could not be held while its replicas were away; restart the gateway",
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
            .map(|h| h.keys.contains_key(key))
            .unwrap_or(true)
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

    /// Writes the held removals again (at most `BATCH` at a time), with a probe write, on the
    /// current master, and forgets those a `WAIT` then confirms.
    pub(crate) async fn retry(&self, link: &Arc<Link>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(current) = link.generation() else {
            link.reconnect();
            return;
        };
        // Waits a little for a slot (a busy instance must still retry), never for long.
        let slot = tokio::time::timeout(TICK_WAIT, Arc::clone(&self.slots).acquire_owned()).await;
        let Ok(Ok(_slot)) = slot else {
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
            // Every held removal is written again: this master may never have had it (a
            // failover, or it was never sent), and a DEL or revocation twice is harmless.
            for (is_key, name, e) in all {
                if reissued == BATCH {
                    break;
                }
                reissued += 1;
                p.add_command(e.reissue.clone()).ignore();
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
                if !e.is_timeout() {
                    link.failed(c.generation, &e);
                }
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
            self.recount(&h);
            tracing::info!(
                left = h.keys.len() + h.users.len(),
                "held writes confirmed by the replicas"
            );
        }
    }
}
