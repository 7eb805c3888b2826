//! Which master the Sentinels name. All are asked at once; a majority must answer, and the
//! answer of the highest configuration epoch wins (after a failover, the Sentinels that have
//! not heard of it yet still name the old master, which, cut off and back, still calls itself
//! master). The named node must then say it is a master with at least as many replicas
//! attached as writes wait for: an old master back from a split has none.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use crate::redis_config::{RedisConfig, RedisTls};
use crate::store::StoreError;

/// Connect and reply timeout of one Sentinel: one that drops packets must not hold up the rest.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// The certificates redis-rs wants, from the configured PEM bytes.
pub(crate) fn certificates(tls: &RedisTls) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: Some(tls.ca.clone()),
    }
}

/// A client for `host:port` with the given credentials and TLS.
fn client(
    host: &str,
    port: u16,
    db: i64,
    user: Option<&str>,
    password: Option<&str>,
    tls: Option<&RedisTls>,
) -> Result<Client, String> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let scheme = if tls.is_some() { "rediss" } else { "redis" };
    let info = format!("{scheme}://{host}:{port}/{db}")
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let mut r = info.redis_settings().clone();
    if let Some(u) = user {
        r = r.set_username(u);
    }
    if let Some(p) = password {
        r = r.set_password(p);
    }
    let info = info.set_redis_settings(r);
    match tls {
        Some(t) => Client::build_with_tls(info, certificates(t)),
        None => Client::open(info),
    }
    .map_err(|e| e.to_string())
}

/// What the Sentinels say.
pub(crate) enum Named {
    /// This node is the master.
    Master(String, u16),
    /// They see the master down, or know no such master: no master for now.
    Down(String),
    /// Too few of them answered to tell.
    Unknown(String),
}

pub(crate) struct Sentinels {
    nodes: Vec<Client>,
    master_name: String,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    tls: Option<RedisTls>,
    replicas: u32,
}

impl Sentinels {
    pub(crate) fn new(
        sentinels: &[(String, u16)],
        master_name: &str,
        cfg: &RedisConfig,
    ) -> Result<Sentinels, StoreError> {
        let nodes = sentinels
            .iter()
            .map(|(h, p)| {
                client(
                    h,
                    *p,
                    0,
                    None,
                    cfg.sentinel_password.as_deref(),
                    cfg.tls.as_ref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Unavailable(format!("bad sentinel settings: {e}")))?;
        Ok(Sentinels {
            nodes,
            master_name: master_name.to_string(),
            db: cfg.db.unwrap_or(0),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            tls: cfg.tls.clone(),
            replicas: cfg.replicas_ack,
        })
    }

    /// A client for the master at `host:port`, with the store's user, password, TLS and db.
    pub(crate) fn master(&self, host: &str, port: u16) -> Result<Client, String> {
        client(
            host,
            port,
            self.db,
            self.username.as_deref(),
            self.password.as_deref(),
            self.tls.as_ref(),
        )
    }

    /// Asks every Sentinel at once (`SENTINEL MASTER <name>`).
    pub(crate) async fn named(&self) -> Named {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SENTINEL_TIMEOUT))
            .set_response_timeout(Some(SENTINEL_TIMEOUT));
        let mut asks = tokio::task::JoinSet::new();
        for c in &self.nodes {
            let (c, name, cfg) = (c.clone(), self.master_name.clone(), cfg.clone());
            asks.spawn(async move {
                let mut conn = c
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&name)
                    .query_async::<HashMap<String, String>>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        let (mut answers, mut errors) = (Vec::new(), Vec::new());
        while let Some(r) = asks.join_next().await {
            match r {
                Ok(Ok(m)) => answers.push(m),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if answers.len() * 2 <= self.nodes.len() {
            return Named::Unknown(format!(
                "{} of {} sentinels answered ({})",
                answers.len(),
                self.nodes.len(),
                errors.join("; ")
            ));
        }
        choose(&answers)
    }

    /// Whether the node behind `conn` is a master with enough replicas attached.
    pub(crate) async fn check_master(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), String> {
        let role: redis::Role = redis::cmd("ROLE")
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        match role {
            redis::Role::Primary { replicas, .. } if replicas.len() >= self.replicas as usize => {
                Ok(())
            }
            redis::Role::Primary { replicas, .. } => Err(format!(
                "the master has {} replica(s) attached, and writes wait for {}",
                replicas.len(),
                self.replicas
            )),
            _ => Err("the node named as master is not one".into()),
        }
    }
}

/// The master a majority's answers name, or `Down` when they cannot tell.
///
/// - The highest `config-epoch` among settled answers wins, and all of its answers must name
///   the same master.
/// - A Sentinel that is leading a failover reports the new epoch with the old master's
///   address until every replica is reconfigured (about 1-4 s). Its answer does not pick the
///   master: reply order used to break epoch ties, so a connection that had just found the
///   new master was dropped again at random (seen in the soak as 1.6 s of 503s after the
///   recovery).
/// - But it vetoes: a failover answer of a higher epoch than every settled one (the others
///   have not heard of the promotion yet, or a stale minority still sees the old master), or
///   one that names the master the others name (the failover is moving away from it), means
///   no master for now.
fn choose(answers: &[HashMap<String, String>]) -> Named {
    let flags = |m: &HashMap<String, String>| m.get("flags").cloned().unwrap_or_default();
    let has = |m: &HashMap<String, String>, f: &str| flags(m).split(',').any(|x| x == f);
    let epoch = |m: &HashMap<String, String>| {
        m.get("config-epoch")
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let address = |m: &HashMap<String, String>| {
        (
            m.get("ip").cloned(),
            m.get("port").and_then(|p| p.parse::<u16>().ok()),
        )
    };
    let (failing_over, settled): (Vec<_>, Vec<_>) =
        answers.iter().partition(|m| has(m, "failover_in_progress"));
    let Some(top) = settled.iter().map(|m| epoch(m)).max() else {
        return Named::Down("a failover is in progress".into());
    };
    let tops: Vec<&HashMap<String, String>> =
        settled.into_iter().filter(|m| epoch(m) == top).collect();
    if let Some(down) = tops.iter().find(|m| has(m, "s_down") || has(m, "o_down")) {
        return Named::Down(format!(
            "the sentinels see the master down ({})",
            flags(down)
        ));
    }
    let first = address(tops[0]);
    if tops.iter().any(|m| address(m) != first) {
        return Named::Down(format!(
            "the sentinels of epoch {top} name different masters"
        ));
    }
    if failing_over
        .iter()
        .any(|m| epoch(m) > top || address(m) == first)
    {
        return Named::Down("a failover away from this master is in progress".into());
    }
    match first {
        (Some(ip), Some(port)) => Named::Master(ip, port),
        _ => Named::Down("the sentinels name no master".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(epoch: u64, port: u16, flags: &str) -> HashMap<String, String> {
        [
            ("config-epoch", epoch.to_string()),
            ("ip", "127.0.0.1".to_string()),
            ("port", port.to_string()),
            ("flags", flags.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn name(answers: &[HashMap<String, String>]) -> String {
        match choose(answers) {
            Named::Master(_, port) => format!("master {port}"),
            Named::Down(_) => "down".into(),
            Named::Unknown(_) => "unknown".into(),
        }
    }

    /// The leader of a failover reports the new epoch with the old address until it is
    /// done: in whatever order the answers come, the new master is the one named.
    #[test]
    fn a_failover_leader_does_not_name_the_old_master() {
        let leader = answer(2, 6379, "master,failover_in_progress");
        let leader_down = answer(2, 6379, "master,s_down,o_down,failover_in_progress");
        let follower = answer(2, 6380, "master");
        for l in [&leader, &leader_down] {
            let mut all = vec![l.clone(), follower.clone(), follower.clone()];
            for _ in 0..3 {
                assert_eq!(name(&all), "master 6380", "{all:?}");
                all.rotate_left(1);
            }
        }
        // Only the leader knows the new epoch yet: no master until the others hear of it,
        // even from a stale minority that still sees the old master up (a partition).
        let old = answer(1, 6379, "master,s_down,o_down");
        assert_eq!(name(&[leader.clone(), old.clone(), old]), "down");
        assert_eq!(name(&[leader.clone(), answer(1, 6379, "master")]), "down");
        assert_eq!(name(&[leader.clone(), leader]), "down");
        // Before the promotion the leader still names the old master: it is being left.
        let electing = answer(1, 6379, "master,failover_in_progress");
        assert_eq!(name(&[electing, answer(1, 6379, "master")]), "down");
    }

    #[test]
    fn the_highest_epoch_wins_and_must_agree() {
        let (old, new) = (answer(1, 6379, "master"), answer(2, 6380, "master"));
        assert_eq!(
            name(&[old.clone(), new.clone(), old.clone()]),
            "master 6380"
        );
        assert_eq!(name(&[new.clone(), answer(2, 6381, "master")]), "down");
        assert_eq!(name(&[new, answer(2, 6380, "master,s_down")]), "down");
        assert_eq!(name(&[old]), "master 6379");
    }
}
