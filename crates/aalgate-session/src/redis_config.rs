//! How to reach Redis: a URL or Sentinels, the ACL user, TLS, and how many replicas confirm a
//! write that ends access. Plain data: the gateway reads the secrets from files.

use std::time::Duration;

/// Where the Redis master is, and how to reach it. Secrets are values here: the gateway reads
/// them from files, never from its command line.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// A URL, or Sentinels and the name of the master they watch.
    pub target: RedisTarget,
    /// Database number (with Sentinel; a URL carries its own, unless this overrides it).
    pub db: Option<i64>,
    /// ACL user.
    pub username: Option<String>,
    /// Password of the ACL user (or `requirepass`).
    pub password: Option<String>,
    /// Password of the Sentinels (`requirepass` in sentinel.conf).
    pub sentinel_password: Option<String>,
    /// TLS to Redis and to the Sentinels: the CA that signed their certificates, and an
    /// optional client certificate. `None` with a `rediss://` URL: the system's roots.
    pub tls: Option<RedisTls>,
    /// How many replicas must confirm each write that ends access (`WAIT N`); 0: none.
    pub replicas_ack: u32,
    /// How long a write waits for those confirmations.
    pub ack_timeout: Duration,
    /// Connect and reply timeout of a connection.
    pub timeout: Duration,
}

impl RedisConfig {
    /// A plain URL, no replica confirmations: the simple case (`redis://…` in the config).
    pub fn url(url: &str, timeout: Duration) -> RedisConfig {
        RedisConfig {
            target: RedisTarget::Url(url.to_string()),
            db: None,
            username: None,
            password: None,
            sentinel_password: None,
            tls: None,
            replicas_ack: 0,
            ack_timeout: Duration::from_millis(500),
            timeout,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &redacted(&self.target))
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls.is_some())
            .field("replicas_ack", &self.replicas_ack)
            .field("ack_timeout", &self.ack_timeout)
            .finish()
    }
}

/// The target without a password a URL may hold.
fn redacted(t: &RedisTarget) -> RedisTarget {
    match t {
        RedisTarget::Url(u) => match u.split_once('@') {
            Some((scheme_user, host)) => {
                let scheme = scheme_user.split("://").next().unwrap_or("redis");
                RedisTarget::Url(format!("{scheme}://<redacted>@{host}"))
            }
            None => t.clone(),
        },
        t => t.clone(),
    }
}

/// How the master is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://`, `rediss://` or `redis+unix://`.
    Url(String),
    /// The Sentinels (`host`, `port`) and the master name they watch.
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<(String, u16)>,
        /// `sentinel monitor <name> …`.
        master_name: String,
    },
}

/// PEM bytes for TLS to Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA certificate(s) that signed the servers' certificates.
    pub ca: Vec<u8>,
    /// A client certificate and its key, for servers with `tls-auth-clients yes`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}
