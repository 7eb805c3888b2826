//! The Redis backend. Layout (prefix `aalgate:`):
//! - `s:<key>`: a hash with `data` (the session as JSON) and `seen` (last request), expiring at
//!   the session's absolute expiry;
//! - `u:<user>`: the set of the user's session keys, for revoke-all;
//! - `f:<key>`: a flow as JSON, with a TTL; taken with `GETDEL`;
//! - `l:<handle>`: `<session key> <host>`, a cookie handle linked to a session, with a TTL;
//! - `k:<ns>:<key>`: an opaque value (users, invites, ceremony state), optionally with a TTL.
//!
//! The connection manager reconnects by itself; until it has, calls fail fast and the gateway
//! fails closed. It is created lazily, so the gateway starts even when Redis is down.

use std::sync::RwLock;
use std::time::Duration;

use aalgate_policy::{Timeouts, Timestamp};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::id::SessionKey;
use crate::store::{Flow, Resolved, Session, SessionStats, SessionStore, StoreError, ACCESS_NS};

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

/// Sessions and flows in Redis.
pub struct RedisStore {
    client: redis::Client,
    resolve: redis::Script,
    incr: redis::Script,
    swap: redis::Script,
    conn: RwLock<Option<ConnectionManager>>,
    init: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
}

impl RedisStore {
    /// Prepares a store for `url`; nothing is connected until the first call.
    pub fn new(url: &str, connect_timeout: Duration) -> Result<RedisStore, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| unavailable(format!("bad redis url: {e}")))?;
        Ok(RedisStore {
            client,
            resolve: redis::Script::new(RESOLVE),
            incr: redis::Script::new(INCR),
            swap: redis::Script::new(SWAP),
            conn: RwLock::new(None),
            init: tokio::sync::Mutex::new(()),
            connect_timeout,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.read().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let _guard = self.init.lock().await;
        if let Some(c) = self.conn.read().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg)
            .await
            .map_err(unavailable)?;
        if let Ok(mut g) = self.conn.write() {
            *g = Some(c.clone());
        }
        Ok(c)
    }
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
        access: bool,
    ) -> Result<Option<Resolved>, StoreError> {
        let mut c = self.conn().await?;
        let mut call = self.resolve.key(lkey(handle));
        call.arg(host).arg(format!("{PREFIX}s:"));
        if access {
            call.arg(kkey(ACCESS_NS, ""));
        }
        let row: Option<(String, String, String, Option<Vec<u8>>)> =
            call.invoke_async(&mut c).await.map_err(unavailable)?;
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
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError> {
        let mut c = self.conn().await?;
        let (data, seen): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(skey(key))
            .arg("data")
            .arg("seen")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let Some(data) = data else { return Ok(None) };
        let mut s: Session =
            serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(seen) = seen {
            s.last_seen = s.last_seen.max(Timestamp(seen));
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
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = c.del(skey(key)).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = redis::cmd("EVAL")
            .arg(REVOKE)
            .arg(1)
            .arg(ukey(user))
            .arg(format!("{PREFIX}s:"))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
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
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn get_flow(&self, key: &str, _now: Timestamp) -> Result<Option<Flow>, StoreError> {
        let mut c = self.conn().await?;
        let v: Option<String> = c.get(fkey(key)).await.map_err(unavailable)?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn take_flow(&self, key: &str, _now: Timestamp) -> Result<Option<Flow>, StoreError> {
        let mut c = self.conn().await?;
        let v: Option<String> = redis::cmd("GETDEL")
            .arg(fkey(key))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn durable(&self) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
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
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        c.del::<_, ()>(lkey(handle)).await.map_err(unavailable)
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
        cmd.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn().await?;
        c.get(kkey(ns, key)).await.map_err(unavailable)
    }

    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("GETDEL")
            .arg(kkey(ns, key))
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = c.del(kkey(ns, key)).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
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
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                for (k, v) in keys.into_iter().zip(values) {
                    if let Some(v) = v {
                        out.push((k[prefix.len()..].to_string(), v));
                    }
                }
            }
            if next == 0 {
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
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let swapped: i64 = self
            .swap
            .key(kkey(ns, key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or_default())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(swapped == 1)
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
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg("data").arg("seen");
                }
                let rows: Vec<(Option<String>, Option<u64>)> =
                    pipe.query_async(&mut c).await.map_err(unavailable)?;
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
