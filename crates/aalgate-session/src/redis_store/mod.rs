//! The Redis backend. Layout (prefix `aalgate:`):
//! - `s:<key>`: a hash with `data` (the session as JSON) and `seen` (last request), expiring at
//!   the session's absolute expiry;
//! - `u:<user>`: the set of the user's session keys, for revoke-all;
//! - `f:<key>`: a flow as JSON, with a TTL; taken with `GETDEL`;
//! - `l:<handle>`: `<session key> <host>`, a cookie handle linked to a session, with a TTL;
//! - `k:<ns>:<key>`: an opaque value (users, invites, ceremony state), optionally with a TTL.
//!
//! `link`: the connection to the master (a URL, or Sentinel), found again after a failover.
//! `sentinels`: which master the Sentinels name (highest configuration epoch of a majority).
//! `acked`: writes that end access wait for `N` replicas, and are held until they do. Nothing
//! is connected until the first call, so the gateway starts even when Redis is down.

mod acked;
mod link;
mod sentinels;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use aalgate_policy::{Timeouts, Timestamp};
use async_trait::async_trait;
use redis::{AsyncCommands, Cmd, RedisError};

use crate::redis_config::RedisConfig;

use crate::id::SessionKey;
use crate::store::{
    Flow, Resolved, Session, SessionStats, SessionStore, StoreError, StoreHealth, ACCESS_NS,
};
use acked::{Acks, Deny, Pending};
use link::{Conn, Link};

const PREFIX: &str = "aalgate:";

const TOUCH: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
    local old = tonumber(redis.call('HGET', KEYS[1], 'seen') or '0') \
    if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], 'seen', ARGV[1]) end end return 0";

const REVOKE: &str = "local ks = redis.call('SMEMBERS', KEYS[1]) local n = 0 \
    for _, k in ipairs(ks) do n = n + redis.call('DEL', ARGV[1] .. k) end \
    redis.call('DEL', KEYS[1]) return n";

/// Follows a handle to its session in one round trip (see [`SessionStore::resolve`]).
const RESOLVE: &str = "local l = redis.call('GET', KEYS[1]) if not l then return false end \
    local sp = string.find(l, ' ', 1, true) if not sp then return false end \
    if string.sub(l, sp + 1) ~= ARGV[1] then return false end local rk = string.sub(l, 1, sp - 1) \
    local v = redis.call('HMGET', ARGV[2] .. rk, 'data', 'seen') \
    if not v[1] then return false end \
    local a = false if ARGV[3] then local ok, s = pcall(cjson.decode, v[1]) \
    if ok and type(s) == 'table' and type(s.user) == 'string' then \
    a = redis.call('GET', ARGV[3] .. s.user) end end \
    return {rk, v[1], v[2] or '0', a}";

/// Compare and swap: ARGV[1] `1` when a value is expected (ARGV[2]), ARGV[3] `1` when the new
/// value (ARGV[4]) is set, else the key is deleted.
const SWAP: &str = "local v = redis.call('GET', KEYS[1]) \
    if (ARGV[1] == '0' and v == false) or (ARGV[1] == '1' and v == ARGV[2]) then \
    if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[4]) else redis.call('DEL', KEYS[1]) end \
    return 1 end return 0";

const INCR: &str = "local n = redis.call('INCRBY', KEYS[1], ARGV[2]) \
    if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// How often held writes are retried; the Sentinels are asked every fourth time.
const TICK: Duration = Duration::from_millis(250);

/// Sessions and flows in Redis.
pub struct RedisStore {
    link: Arc<Link>,
    acks: Arc<Acks>,
    resolve: redis::Script,
    incr: redis::Script,
    swap: redis::Script,
    monitor: AtomicBool,
}

impl RedisStore {
    /// Prepares a store for `url`; nothing is connected until the first call.
    pub fn new(url: &str, connect_timeout: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::with_config(&RedisConfig::url(url, connect_timeout))
    }

    /// Prepares a store (a URL or Sentinel, TLS, ACL user, replica confirmations).
    pub fn with_config(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            link: Arc::new(Link::new(cfg)?),
            acks: Arc::new(Acks::new(cfg.replicas_ack, cfg.ack_timeout)),
            resolve: redis::Script::new(RESOLVE),
            incr: redis::Script::new(INCR),
            swap: redis::Script::new(SWAP),
            monitor: AtomicBool::new(false),
        })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.start_monitor();
        self.link.shared().await
    }

    fn start_monitor(&self) {
        if !self.monitor.swap(true, Ordering::AcqRel) {
            tokio::spawn(monitor(
                Arc::downgrade(&self.link),
                Arc::downgrade(&self.acks),
            ));
        }
    }

    /// A failed call: the connection is dropped if the error means it may not reach the
    /// master any more.
    fn fail(&self, c: &Conn, e: RedisError) -> StoreError {
        self.link.failed(c.generation, &e);
        unavailable(e)
    }

    /// A write that ends access: with replica confirmations on, it waits for them (see
    /// `acked`); otherwise it runs on the shared connection.
    async fn end<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: Cmd,
        changed: fn(&T) -> bool,
        removal: Option<(Deny, Cmd)>,
    ) -> Result<T, StoreError> {
        if self.acks.on() {
            self.start_monitor();
            let pending = removal.map(|(deny, reissue)| Pending { deny, reissue });
            return self.acks.write(&self.link, cmd, changed, pending).await;
        }
        let mut c = self.conn().await?;
        match cmd.query_async::<T>(&mut c.conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(&c, e)),
        }
    }

    /// Whether a held removal hides `key` (see [`Acks::gone`]).
    fn gone(&self, key: &str) -> bool {
        self.acks.gone(key)
    }
}

/// Retries held writes, and with Sentinel checks the master is still the one connected to.
async fn monitor(link: Weak<Link>, acks: Weak<Acks>) {
    let mut n: u64 = 0;
    loop {
        tokio::time::sleep(TICK).await;
        let (Some(link), Some(acks)) = (link.upgrade(), acks.upgrade()) else {
            return;
        };
        n += 1;
        if link.generation().is_none() {
            link.reconnect();
        } else if n.is_multiple_of(4) {
            link.verify().await;
        }
        acks.retry(&link).await;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn del(key: &str) -> Cmd {
    let mut c = redis::cmd("DEL");
    c.arg(key);
    c
}

fn getdel(key: &str) -> Cmd {
    let mut c = redis::cmd("GETDEL");
    c.arg(key);
    c
}

fn gone(key: String) -> Deny {
    Deny::Gone { key }
}

fn skey(key: &SessionKey) -> String {
    format!("{PREFIX}s:{}", key.as_str())
}

fn fkey(key: &str) -> String {
    format!("{PREFIX}f:{key}")
}

fn ukey(user: &str) -> String {
    format!("{PREFIX}u:{user}")
}

fn lkey(handle: &SessionKey) -> String {
    format!("{PREFIX}l:{}", handle.as_str())
}

fn kkey(ns: &str, key: &str) -> String {
    format!("{PREFIX}k:{ns}:{key}")
}

impl RedisStore {
    /// The RESOLVE script: link, session and (with `access`) the person's access record, in
    /// one round trip.
    async fn resolve_row(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
        with_access: bool,
    ) -> Result<Option<Resolved>, StoreError> {
        self.acks.check()?;
        let link = lkey(handle);
        if self.gone(&link) {
            return Ok(None);
        }
        let mut c = self.conn().await?;
        let mut call = self.resolve.key(link);
        call.arg(host).arg(format!("{PREFIX}s:"));
        if with_access {
            call.arg(kkey(ACCESS_NS, ""));
        }
        let row: Option<(String, String, String, Option<Vec<u8>>)> = call
            .invoke_async(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))?;
        let Some((record, data, seen, access)) = row else {
            return Ok(None);
        };
        let record = SessionKey::from_hex(&record)
            .ok_or_else(|| StoreError::Corrupt("link to a malformed session key".into()))?;
        let mut s: Session =
            serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Ok(seen) = seen.parse::<u64>() {
            s.last_seen = s.last_seen.max(Timestamp(seen));
        }
        if self.acks.unconfirmed() > 0
            && (self.gone(&skey(&record)) || self.acks.revoked(&s.user, s.auth_time.0))
        {
            return Ok(None);
        }
        Ok((s.expires_at > now).then_some(Resolved {
            record,
            session: s,
            access,
        }))
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn insert(&self, key: &SessionKey, session: &Session) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let data =
            serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (k, u) = (skey(key), ukey(&session.user));
        let exp = session.expires_at.0 as i64;
        redis::pipe()
            .atomic()
            .hset_multiple(
                &k,
                &[
                    ("data", data.as_str()),
                    ("seen", &session.last_seen.0.to_string()),
                ],
            )
            .ignore()
            .cmd("EXPIREAT")
            .arg(&k)
            .arg(exp)
            .ignore()
            .sadd(&u, key.as_str())
            .ignore()
            .cmd("EXPIREAT")
            .arg(&u)
            .arg(exp)
            .arg("NX")
            .ignore()
            .cmd("EXPIREAT")
            .arg(&u)
            .arg(exp)
            .arg("GT")
            .ignore()
            .query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError> {
        self.acks.check()?;
        let k = skey(key);
        if self.gone(&k) {
            return Ok(None);
        }
        let mut c = self.conn().await?;
        let (data, seen): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(k)
            .arg("data")
            .arg("seen")
            .query_async(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))?;
        let Some(data) = data else { return Ok(None) };
        let mut s: Session =
            serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(seen) = seen {
            s.last_seen = s.last_seen.max(Timestamp(seen));
        }
        if self.acks.revoked(&s.user, s.auth_time.0) {
            return Ok(None);
        }
        Ok((s.expires_at > now).then_some(s))
    }

    async fn touch(&self, key: &SessionKey, last_seen: Timestamp) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("EVAL")
            .arg(TOUCH)
            .arg(1)
            .arg(skey(key))
            .arg(last_seen.0)
            .query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let k = skey(key);
        let n: u64 = self
            .end(del(&k), |n| *n > 0, Some((gone(k.clone()), del(&k))))
            .await?;
        Ok(n > 0)
    }

    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REVOKE)
            .arg(1)
            .arg(ukey(user))
            .arg(format!("{PREFIX}s:"));
        // Another instance's clock may run ahead of this one: sessions begun up to 5 min
        // "after" the revocation are hidden too while it is held (fail closed).
        let deny = Deny::User {
            user: user.to_string(),
            at: now_secs() + 300,
        };
        let n: u64 = self.end(cmd.clone(), |n| *n > 0, Some((deny, cmd))).await?;
        Ok(n as usize)
    }

    async fn put_flow(&self, key: &str, flow: &Flow, ttl: Duration) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let data = serde_json::to_string(flow).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ms = ttl.as_millis().max(1) as u64;
        redis::cmd("SET")
            .arg(fkey(key))
            .arg(data)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn get_flow(&self, key: &str, _now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.acks.check()?;
        let k = fkey(key);
        if self.gone(&k) {
            return Ok(None);
        }
        let mut c = self.conn().await?;
        let v: Option<String> = c.conn.get(k).await.map_err(|e| self.fail(&c, e))?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn take_flow(&self, key: &str, _now: Timestamp) -> Result<Option<Flow>, StoreError> {
        self.acks.check()?;
        let k = fkey(key);
        if self.gone(&k) {
            return Ok(None);
        }
        let v: Option<String> = self
            .end(
                getdel(&k),
                Option::is_some,
                Some((gone(k.clone()), del(&k))),
            )
            .await?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c.conn)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&c, e))
    }

    async fn durable(&self) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))?;
        Ok(info.lines().any(|l| l.trim() == "aof_enabled:1"))
    }

    async fn link(
        &self,
        handle: &SessionKey,
        record: &SessionKey,
        host: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::pipe()
            .atomic()
            .set(lkey(handle), format!("{} {host}", record.as_str()))
            .ignore()
            .cmd("EXPIREAT")
            .arg(lkey(handle))
            .arg(expires_at.0 as i64)
            .ignore()
            .query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError> {
        let k = lkey(handle);
        self.end::<u64>(del(&k), |n| *n > 0, Some((gone(k.clone()), del(&k))))
            .await
            .map(|_| ())
    }

    async fn resolve(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<(SessionKey, Session)>, StoreError> {
        Ok(self
            .resolve_row(handle, host, now, false)
            .await?
            .map(|r| (r.record, r.session)))
    }

    async fn resolve_with_access(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<Resolved>, StoreError> {
        self.resolve_row(handle, host, now, true).await
    }

    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(kkey(ns, key)).arg(value);
        if let Some(t) = ttl {
            cmd.arg("PX").arg(t.as_millis().max(1) as u64);
        }
        cmd.query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.acks.check()?;
        let k = kkey(ns, key);
        if self.gone(&k) {
            return Ok(None);
        }
        let mut c = self.conn().await?;
        c.conn.get(&k).await.map_err(|e| self.fail(&c, e))
    }

    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.acks.check()?;
        let k = kkey(ns, key);
        if self.gone(&k) {
            return Ok(None);
        }
        self.end(
            getdel(&k),
            Option::is_some,
            Some((gone(k.clone()), del(&k))),
        )
        .await
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let k = kkey(ns, key);
        let n: u64 = self
            .end(del(&k), |n| *n > 0, Some((gone(k.clone()), del(&k))))
            .await?;
        Ok(n > 0)
    }

    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.acks.check()?;
        let mut c = self.conn().await?;
        let prefix = kkey(ns, "");
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(&prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c.conn)
                .await
                .map_err(|e| self.fail(&c, e))?;
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut c.conn)
                    .await
                    .map_err(|e| self.fail(&c, e))?;
                for (k, v) in keys.into_iter().zip(values) {
                    if let Some(v) = v {
                        out.push((k[prefix.len()..].to_string(), v));
                    }
                }
            }
            if next == 0 {
                if self.acks.unconfirmed() > 0 {
                    out.retain(|(k, _)| !self.gone(&kkey(ns, k)));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn kv_add(&self, ns: &str, key: &str, by: u64, ttl: Duration) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        self.incr
            .key(kkey(ns, key))
            .arg(ttl.as_millis().max(1) as u64)
            .arg(by)
            .invoke_async(&mut c.conn)
            .await
            .map_err(|e| self.fail(&c, e))
    }

    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let k = kkey(ns, key);
        if !self.acks.on() {
            let mut c = self.conn().await?;
            let swapped: i64 = self
                .swap
                .key(&k)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.unwrap_or_default())
                .invoke_async(&mut c.conn)
                .await
                .map_err(|e| self.fail(&c, e))?;
            return Ok(swapped == 1);
        }
        // The script's text, not its digest: a new master after a failover may not have it.
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SWAP)
            .arg(1)
            .arg(&k)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or_default());
        // Never held (see `acked`): unconfirmed, the caller is told, and runs it again.
        let swapped: i64 = self.end(cmd, |n| *n == 1, None).await?;
        Ok(swapped == 1)
    }

    fn health(&self) -> Option<StoreHealth> {
        let (master, failovers, without_master) = self.link.health();
        Some(StoreHealth {
            sentinel: self.link.sentinel(),
            master,
            failovers,
            acks_missed: self.acks.missed(),
            unconfirmed: self.acks.unconfirmed(),
            without_master,
        })
    }

    fn ack_budget(&self) -> Duration {
        self.acks.budget()
    }

    async fn stats(&self, now: Timestamp, limits: &Timeouts) -> Result<SessionStats, StoreError> {
        let mut c = self.conn().await?;
        let mut stats = SessionStats::default();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}s:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c.conn)
                .await
                .map_err(|e| self.fail(&c, e))?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg("data").arg("seen");
                }
                let rows: Vec<(Option<String>, Option<u64>)> = pipe
                    .query_async(&mut c.conn)
                    .await
                    .map_err(|e| self.fail(&c, e))?;
                for (data, seen) in rows {
                    let Some(mut s) = data.and_then(|d| serde_json::from_str::<Session>(&d).ok())
                    else {
                        continue;
                    };
                    if let Some(seen) = seen {
                        s.last_seen = s.last_seen.max(Timestamp(seen));
                    }
                    stats.add(&s, now, limits);
                }
            }
            if next == 0 {
                return Ok(stats);
            }
            cursor = next;
        }
    }
}

/// Escapes Redis glob characters, so a namespace is matched literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
