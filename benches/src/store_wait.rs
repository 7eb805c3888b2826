//! What replica confirmations (`store.wait`) cost per logout and per sign-in, against the
//! same store without them, in one run: `benches/store-wait.sh` starts a Redis master with
//! one replica on loopback and runs this with the master's URL.
//!
//! A logout is `unlink` + `remove` of a linked session; a passkey sign-in's writes that end
//! something are `take_flow` + two `kv_take`s (ceremony state, handoff code). Each is timed
//! `ROUNDS` times per mode, the modes interleaved so that machine noise falls on both.

use std::time::{Duration, Instant};

use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{Flow, FlowKind, RedisConfig, RedisStore, Session, SessionId, SessionStore};
use anyhow::{Context, Result};

const ROUNDS: usize = 2000;

fn session(now: Timestamp) -> Session {
    Session {
        user: "bench".into(),
        aal: Aal::Aal2,
        amr: vec!["user".into()],
        credential: None,
        auth_time: now,
        last_auth: now,
        last_seen: now,
        expires_at: now.plus(Duration::from_secs(3600)),
    }
}

fn flow(now: Timestamp) -> Flow {
    Flow {
        host: "ehr.example".into(),
        method: "GET".into(),
        url: "/".into(),
        need: FlowKind::Login,
        aal: Aal::Aal2,
        max_age_secs: None,
        app: "ehr".into(),
        created: now,
        user: None,
        browser: None,
        kept: None,
        binding: None,
        script: false,
    }
}

async fn logout(s: &RedisStore) -> Result<Duration> {
    let now = Timestamp::wall();
    let (record, handle) = (SessionId::generate().key(), SessionId::generate().key());
    s.insert(&record, &session(now)).await?;
    s.link(
        &handle,
        &record,
        "ehr.example",
        now.plus(Duration::from_secs(3600)),
    )
    .await?;
    let t = Instant::now();
    s.unlink(&handle).await?;
    s.remove(&record).await?;
    Ok(t.elapsed())
}

async fn sign_in(s: &RedisStore) -> Result<Duration> {
    let now = Timestamp::wall();
    let id = SessionId::generate().key();
    let key = id.as_str();
    s.put_flow(key, &flow(now), Duration::from_secs(60)).await?;
    s.kv_put("ceremony", key, b"state", Some(Duration::from_secs(60)))
        .await?;
    s.kv_put("code", key, b"code", Some(Duration::from_secs(60)))
        .await?;
    let t = Instant::now();
    s.take_flow(key, now).await?;
    s.kv_take("ceremony", key).await?;
    s.kv_take("code", key).await?;
    Ok(t.elapsed())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .context("usage: store-wait redis://127.0.0.1:PORT/0 (a master with a replica)")?;
    let mut plain = RedisConfig::url(&url, Duration::from_secs(2));
    let mut waiting = plain.clone();
    plain.replicas_ack = 0;
    waiting.replicas_ack = 1;
    let stores = [
        RedisStore::with_config(&plain)?,
        RedisStore::with_config(&waiting)?,
    ];
    let mut out: [[Vec<Duration>; 2]; 2] = Default::default();
    for _ in 0..ROUNDS {
        for (m, s) in stores.iter().enumerate() {
            out[m][0].push(logout(s).await?);
            out[m][1].push(sign_in(s).await?);
        }
    }
    println!("| | without WAIT p50 | with WAIT 1 p50 | ratio | without p99 | with p99 |");
    println!("|---|---|---|---|---|---|");
    for (i, what) in ["logout (2 writes)", "sign-in takes (3 writes)"]
        .iter()
        .enumerate()
    {
        let (a50, b50) = (pct(&mut out[0][i], 0.5), pct(&mut out[1][i], 0.5));
        let (a99, b99) = (pct(&mut out[0][i], 0.99), pct(&mut out[1][i], 0.99));
        println!(
            "| {what} | {a50:.0} µs | {b50:.0} µs | {:.2} | {a99:.0} µs | {b99:.0} µs |",
            b50 / a50
        );
    }
    Ok(())
}
