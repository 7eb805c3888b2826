//! Creates N sessions in a store and prints their cookie values, one line per session, for the
//! load harness (`benches/load.sh`) and the scale measurements. A benchmarking tool: it writes
//! to the store through the same calls a finished sign-in makes (a session record, and a cookie
//! handle linked to it for each host), as the end-to-end tests do, because sign-in (WebAuthn)
//! is interactive.
//!
//! Usage: mint-sessions STORE COUNT HOST... > cookies.txt
//! (STORE: embedded:<dir> or redis://...; HOST as the requests' `Host` header names it, e.g.
//! `127.0.0.1:8080`.) Each line holds the session's cookie value for each HOST, space-separated.

use std::io::Write;
use std::time::Duration;

use aalgate_policy::host::HostPort;
use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{EmbeddedStore, RedisStore, Session, SessionId, SessionStore, StoreSpec};
use anyhow::{bail, Context, Result};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(spec), Some(count), Some(_)) = (args.get(1), args.get(2), args.get(3)) else {
        bail!("usage: mint-sessions STORE COUNT HOST...");
    };
    let count: usize = count.parse().context("COUNT must be a number")?;
    let hosts = args[3..]
        .iter()
        .map(|h| {
            HostPort::parse(h)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("HOST {h:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let store: Box<dyn SessionStore> =
        match spec.parse::<StoreSpec>().map_err(anyhow::Error::msg)? {
            StoreSpec::Embedded(dir) => Box::new(EmbeddedStore::open(&dir)?),
            StoreSpec::Redis(mut r) => {
                r.timeout = Duration::from_secs(5);
                Box::new(RedisStore::with_config(&r)?)
            }
        };
    let now = Timestamp::wall();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..count {
        let record = SessionId::generate().key();
        let s = Session {
            user: format!("bench-user-{i:06}"),
            aal: Aal::Aal2,
            amr: vec!["hwk".into(), "user".into()],
            credential: Some("5f1e3c7a9b2d4e6f".into()),
            auth_time: now,
            last_auth: now,
            last_seen: now,
            expires_at: now.plus(Duration::from_secs(12 * 3600)),
        };
        store.insert(&record, &s).await?;
        let mut line = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let handle = SessionId::generate();
            store
                .link(&handle.key(), &record, host, s.expires_at)
                .await?;
            line.push(handle.to_cookie());
        }
        writeln!(out, "{}", line.join(" "))?;
    }
    Ok(())
}
