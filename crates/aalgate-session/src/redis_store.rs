//! The Redis backend. Layout (prefix `aalgate:`):
//! - `s:<key>`: a hash with `data` (the session as JSON) and `seen` (last request), expiring at
//!   the session's absolute expiry;
//! - `u:<user>`: the set of the user's session keys, for revoke-all;
//! - `f:<key>`: a flow as JSON, with a TTL; taken with `GETDEL`.
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
use crate::store::{Flow, Session, SessionStats, SessionStore, StoreError};

const PREFIX: &str = "aalgate:";

const TOUCH: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
    local old = tonumber(redis.call('HGET', KEYS[1], 'seen') or '0') \
    if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], 'seen', ARGV[1]) end end return 0";

const REVOKE: &str = "local ks = redis.call('SMEMBERS', KEYS[1]) local n = 0 \
    for _, k in ipairs(ks) do n = n + redis.call('DEL', ARGV[1] .. k) end \
    redis.call('DEL', KEYS[1]) return n";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Sessions and flows in Redis.
pub struct RedisStore {
    client: redis::Client,
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
