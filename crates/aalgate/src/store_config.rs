//! The `store:` setting: a string for the simple cases (`embedded:<dir>`, `redis://…`), or a
//! section for Redis with Sentinel, TLS, an ACL user and replica confirmations:
//!
//! ```yaml
//! store:
//!   sentinels: [10.0.0.11:26379, 10.0.0.12:26379, 10.0.0.13:26379]
//!   master_name: aalgate
//!   username: aalgate
//!   password_file: /etc/aalgate/redis.password
//!   tls: { ca: /etc/aalgate/redis-ca.pem }
//!   wait: { replicas: 1, timeout: 500ms }
//! ```
//!
//! Secrets come from files (never the command line, never the logs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aalgate_session::{RedisConfig, RedisTarget, RedisTls, StoreSpec};
use anyhow::{bail, Context, Result};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `store:` as written.
#[derive(Debug)]
pub(crate) enum RawStore {
    Simple(String),
    Section(Box<RawStoreSection>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStoreSection {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    sentinels: Vec<String>,
    #[serde(default)]
    master_name: Option<String>,
    #[serde(default)]
    db: Option<i64>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    sentinel_password_file: Option<PathBuf>,
    #[serde(default)]
    tls: Option<RawRedisTls>,
    #[serde(default)]
    wait: Option<RawWait>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisTls {
    ca: PathBuf,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWait {
    replicas: u32,
    #[serde(default)]
    timeout: Option<String>,
}

impl<'de> Deserialize<'de> for RawStore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStore;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "embedded:<dir>, redis://host:port/db, or a section with url: or sentinels:",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawStore, E> {
                Ok(RawStore::Simple(s.to_string()))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<RawStore, M::Error> {
                RawStoreSection::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(|s| RawStore::Section(Box::new(s)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Default wait for replica confirmations.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

/// Reads a secret file: the first line, which must not be empty.
fn secret(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("store.{what}: cannot read {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        bail!(
            "store.{what}: {} is empty; write the password on its first line",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o004 != 0 {
                tracing::warn!(file = %path.display(), "store.{what} is readable by every local user; chmod 600 it");
            }
        }
    }
    Ok(line.to_string())
}

fn host_port(s: &str) -> Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').with_context(|| {
        format!("store.sentinels: {s:?} has no port; write host:port, e.g. 10.0.0.11:26379")
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("store.sentinels: {s:?}: the port must be 1-65535"))?;
    if host.is_empty() {
        bail!("store.sentinels: {s:?} has no host");
    }
    Ok((host.to_string(), port))
}

impl RawStore {
    /// The validated store; relative paths are resolved by `rel`.
    pub(crate) fn build(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<StoreSpec> {
        match self {
            RawStore::Simple(s) => {
                let spec = s.parse::<StoreSpec>().map_err(anyhow::Error::msg)?;
                Ok(match spec {
                    StoreSpec::Embedded(d) => StoreSpec::Embedded(rel(d)),
                    s => s,
                })
            }
            RawStore::Section(s) => Ok(StoreSpec::Redis(Box::new(s.build(rel)?))),
        }
    }
}

impl RawStoreSection {
    fn build(self, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<RedisConfig> {
        let target = match (self.url, self.sentinels.is_empty(), self.master_name) {
            (Some(_), false, _) => {
                bail!("store: url and sentinels are exclusive; with Sentinel, the sentinels name the master")
            }
            (Some(url), true, None) => {
                if !url.starts_with("redis://")
                    && !url.starts_with("rediss://")
                    && !url.starts_with("redis+unix://")
                {
                    bail!("store.url {url:?}: write redis://host:port/db or rediss://host:port/db");
                }
                if url.starts_with("redis://") && self.tls.is_some() {
                    bail!("store.url {url:?}: with tls:, write rediss://");
                }
                if url::Url::parse(&url).is_ok_and(|u| u.password().is_some()) {
                    bail!("store.url: holds a password; put it in password_file, so that it is in no URL and no log");
                }
                RedisTarget::Url(url)
            }
            (Some(_), true, Some(_)) => bail!("store.master_name: only with sentinels"),
            (None, true, _) => bail!("store: needs url: or sentinels:"),
            (None, false, None) => {
                bail!("store.master_name: required with sentinels (the name in `sentinel monitor <name> …`)")
            }
            (None, false, Some(master_name)) => RedisTarget::Sentinel {
                sentinels: self
                    .sentinels
                    .iter()
                    .map(|s| host_port(s))
                    .collect::<Result<_>>()?,
                master_name,
            },
        };
        if self.db.is_some_and(|d| !(0..=1_000_000).contains(&d)) {
            bail!("store.db: must be 0 or more");
        }
        if self.username.is_some() && self.password_file.is_none() {
            bail!("store.username: needs password_file (the ACL user's password)");
        }
        let password = self
            .password_file
            .map(|p| secret(&rel(p), "password_file"))
            .transpose()?;
        let sentinel_password = self
            .sentinel_password_file
            .map(|p| secret(&rel(p), "sentinel_password_file"))
            .transpose()?;
        let tls = self.tls.map(|t| tls_files(t, rel)).transpose()?;
        let sentinel = matches!(target, RedisTarget::Sentinel { .. });
        let (replicas_ack, ack_timeout) = match self.wait {
            None => (u32::from(sentinel), DEFAULT_WAIT_TIMEOUT),
            Some(w) => w.build()?,
        };
        Ok(RedisConfig {
            target,
            db: self.db,
            username: self.username,
            password,
            sentinel_password,
            tls,
            replicas_ack,
            ack_timeout,
            timeout: Duration::from_millis(50),
        })
    }
}

impl RawWait {
    fn build(self) -> Result<(u32, Duration)> {
        if self.replicas > 16 {
            bail!("store.wait.replicas: {} is more than 16", self.replicas);
        }
        let t = match self.timeout {
            None => DEFAULT_WAIT_TIMEOUT,
            Some(s) => {
                let d = humantime::parse_duration(s.trim())
                    .with_context(|| format!("store.wait.timeout {s:?}: write e.g. 500ms"))?;
                if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
                    bail!("store.wait.timeout {s:?}: must be between 10ms and 10s");
                }
                d
            }
        };
        Ok((self.replicas, t))
    }
}

fn tls_files(t: RawRedisTls, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<RedisTls> {
    let read = |p: PathBuf, what: &str| {
        let p = rel(p);
        std::fs::read(&p).with_context(|| format!("store.tls.{what}: cannot read {}", p.display()))
    };
    let ca = read(t.ca, "ca")?;
    if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
        bail!("store.tls.ca: not a PEM certificate");
    }
    let client = match (t.cert, t.key) {
        (Some(c), Some(k)) => Some((read(c, "cert")?, read(k, "key")?)),
        (None, None) => None,
        _ => bail!("store.tls: cert and key go together (a client certificate and its key)"),
    };
    Ok(RedisTls { ca, client })
}

fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What is unsafe about how Redis is reached: shown loudly by `run` and `validate --config`.
pub fn store_warnings(spec: &StoreSpec) -> Vec<String> {
    let StoreSpec::Redis(cfg) = spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (hosts, tls): (Vec<String>, bool) = match &cfg.target {
        RedisTarget::Url(u) => match url::Url::parse(u) {
            Ok(p) if p.scheme() == "redis+unix" => (Vec::new(), false),
            Ok(p) => {
                if p.password().is_some() {
                    out.push("warning: store: the Redis URL holds a password; use the store section's password_file, so that it is in no URL and no log".to_string());
                }
                let auth = p.password().is_some() || cfg.password.is_some();
                let remote = p.host_str().is_some_and(|h| !loopback(h));
                if remote && !auth {
                    out.push(format!("warning: store: Redis at {} is not on this machine and aalgate does not authenticate to it: anyone who reaches it can read and forge every session (set username and password_file)", p.host_str().unwrap_or("")));
                }
                (
                    p.host_str().map(str::to_string).into_iter().collect(),
                    p.scheme() == "rediss",
                )
            }
            Err(_) => (Vec::new(), false),
        },
        RedisTarget::Sentinel { sentinels, .. } => {
            let remote = sentinels.iter().any(|(h, _)| !loopback(h));
            if remote && cfg.password.is_none() {
                out.push("warning: store: the Redis servers behind the sentinels are not on this machine and aalgate does not authenticate to them: anyone who reaches them can read and forge every session (set username and password_file)".to_string());
            }
            (
                sentinels.iter().map(|(h, _)| h.clone()).collect(),
                cfg.tls.is_some(),
            )
        }
    };
    if !tls && hosts.iter().any(|h| !loopback(h)) {
        out.push(format!("warning: store: Redis at {} is reached without TLS: session records cross the network in clear (use rediss:// or tls: {{ ca: … }})", hosts.join(", ")));
    }
    if matches!(cfg.target, RedisTarget::Sentinel { .. }) && cfg.replicas_ack == 0 {
        out.push("warning: store.wait.replicas is 0: a failover can bring back a session that was logged out or revoked just before it".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<StoreSpec> {
        let raw: RawStore = serde_saphyr::from_str(yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
        raw.build(&|p| p)
    }

    #[test]
    fn a_sentinel_section_reads_its_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let spec = build(&format!(
            "{{sentinels: [10.0.0.11:26379, '[::1]:26380'], master_name: aalgate, username: gw, password_file: {}}}",
            pw.display()
        ))
        .unwrap();
        let StoreSpec::Redis(r) = &spec else {
            panic!("not redis")
        };
        assert_eq!(
            r.target,
            RedisTarget::Sentinel {
                sentinels: vec![("10.0.0.11".into(), 26379), ("::1".into(), 26380)],
                master_name: "aalgate".into()
            }
        );
        assert_eq!(r.password.as_deref(), Some("s3cret"));
        assert_eq!(
            r.replicas_ack, 1,
            "one replica confirms by default with sentinels"
        );
        assert!(
            !format!("{r:?}").contains("s3cret"),
            "the password is never printed"
        );
        // Remote, authenticated, no TLS: one warning, about TLS.
        let w = store_warnings(&spec);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("without TLS"), "{w:?}");
    }

    #[test]
    fn ambiguous_or_unsafe_sections_are_refused_with_the_fix() {
        for (yaml, says) in [
            (
                "{url: redis://a/0, sentinels: [a:1], master_name: m}",
                "exclusive",
            ),
            ("{sentinels: [a:1]}", "master_name: required"),
            ("{sentinels: [a], master_name: m}", "no port"),
            ("{url: redis://a/0, master_name: m}", "only with sentinels"),
            ("{url: 'redis://u:pw@a/0'}", "password_file"),
            ("{url: redis://a/0, tls: {ca: /nonexistent}}", "rediss://"),
            (
                "{url: rediss://a/0, tls: {ca: /nonexistent}}",
                "cannot read",
            ),
            ("{url: redis://a/0, username: u}", "needs password_file"),
            (
                "{url: redis://a/0, wait: {replicas: 1, timeout: 1h}}",
                "between",
            ),
            ("{url: redis://a/0, typo: 1}", "typo"),
            ("{}", "needs url: or sentinels:"),
        ] {
            let e = format!("{:#}", build(yaml).unwrap_err());
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn a_remote_redis_without_auth_or_tls_is_warned_about_and_loopback_is_not() {
        let w = store_warnings(&build("redis://10.1.2.3:6379/0").unwrap());
        assert!(
            w.iter().any(|w| w.contains("does not authenticate")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("without TLS")), "{w:?}");
        assert!(store_warnings(&build("redis://127.0.0.1:6379/0").unwrap()).is_empty());
        let w = store_warnings(
            &build("{sentinels: [127.0.0.1:1], master_name: m, wait: {replicas: 0}}").unwrap(),
        );
        assert!(w.iter().any(|w| w.contains("bring back")), "{w:?}");
        assert!(store_warnings(&build("embedded:/x").unwrap()).is_empty());
    }
}
