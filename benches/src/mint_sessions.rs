//! Creates N sessions in a store and prints their cookie values, one per line, for the load
//! harness (`benches/load.sh`) and the scale measurements. A benchmarking tool: it writes
//! straight to the store, as the end-to-end tests do, because sign-in (WebAuthn) is interactive.
//!
//! Usage: mint-sessions STORE COUNT > cookies.txt   (STORE: embedded:<dir> or redis://...)

use std::io::Write;
use std::time::Duration;

use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{EmbeddedStore, RedisStore, Session, SessionId, SessionStore, StoreSpec};
use anyhow::{bail, Context, Result};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(spec), Some(count)) = (args.get(1), args.get(2)) else {
        bail!("usage: mint-sessions STORE COUNT");
    };
    let count: usize = count.parse().context("COUNT must be a number")?;
    let store: Box<dyn SessionStore> =
        match spec.parse::<StoreSpec>().map_err(anyhow::Error::msg)? {
            StoreSpec::Embedded(dir) => Box::new(EmbeddedStore::open(&dir)?),
            StoreSpec::Redis(url) => Box::new(RedisStore::new(&url, Duration::from_secs(5))?),
        };
    let now = Timestamp::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..count {
        let id = SessionId::generate();
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
        store.insert(&id.key(), &s).await?;
        writeln!(out, "{}", id.to_cookie())?;
    }
    Ok(())
}
