//! Soak: a bounded mixed load against the real binary with Redis Sentinel (three
//! `redis-server`, three `redis-sentinel`), through two failovers: each time the master is
//! SIGKILLed, a replica is promoted, and the killed node is started again (it rejoins as a
//! replica).
//!
//! `AALGATE_SOAK_SECS` sets the length (default 150 s; tests/run.sh runs it on its own after
//! the rest of the suite). The load mixes public requests, valid sessions, expired sessions,
//! forged and tampered cookies, and no cookie at all; the client names what it sends in the
//! path, and the upstream checks every request it receives against it. Asserted:
//! - 0 requests forwarded without a valid session (and each forwarded one carries its user);
//! - 0 panics, the gateway alive at the end;
//! - gateway memory flat: RSS at the end within 10% of RSS after warm-up;
//! - valid sessions are served again after each failover (no login loop, no new sign-in).
//!
//! The figures go to stderr and to `target/soak-report.txt`.

mod embedded;
mod flood;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::{RedisStore, SessionId};
use aalgate_tests::cluster::Cluster;
use aalgate_tests::{read_request, send, workspace, Gateway};

/// The last, `stepup`, only in the embedded soak.
const KINDS: [&str; 7] = [
    "public", "valid", "expired", "forged", "tampered", "none", "stepup",
];

#[derive(Default)]
struct Seen {
    forwarded: [AtomicU64; 7],
    /// Forwarded without a valid session, or with another user's identity.
    violations: AtomicU64,
}

fn policy(port: u16) -> String {
    format!(
        "app: soak\nhost: localhost\nupstream: http://127.0.0.1:{port}\ndefault: aal2\nroutes:\n  - path: /public/**\n    require: public\n"
    )
}

/// Upstream: checks each request's path (`/{public|app}/{kind}/{user}/{n}`) against the identity
/// the gateway added.
fn upstream(seen: Arc<Seen>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(conn, &seen));
        }
    });
    port
}

fn serve(mut conn: TcpStream, seen: &Seen) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut conn, &mut buf) {
        let path = req.target.clone();
        let user = req.one("x-aalgate-user").map(str::to_string);
        let parts: Vec<&str> = path.split('/').collect();
        let (area, kind, want_user) = (
            parts.get(1).copied().unwrap_or(""),
            parts.get(2).copied().unwrap_or(""),
            parts.get(3).copied().unwrap_or(""),
        );
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            seen.forwarded[i].fetch_add(1, Ordering::Relaxed);
        }
        let ok = match area {
            "public" => true,
            "app" => kind == "valid" && user.as_deref() == Some(want_user),
            _ => false,
        };
        if !ok {
            seen.violations.fetch_add(1, Ordering::Relaxed);
            eprintln!("VIOLATION: {path} reached the upstream as {user:?}");
        }
        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn mint(cluster: &Cluster, host: &str, user: &str, idle: u64) -> String {
    let store = RedisStore::with_config(&cluster.redis_config()).expect("store");
    aalgate_tests::make_session(&store, host, user, Aal::Aal2, 60, idle)
}

#[derive(Default)]
struct Tally {
    /// (kind, status) -> count.
    by: std::collections::BTreeMap<(usize, u16), u64>,
    /// When each 503 for a valid session was answered, from the load's start.
    valid_503: Vec<Duration>,
}

/// The cookies the load sends, by kind.
#[derive(Clone)]
struct Cookies {
    /// (cookie, user) of live sessions.
    valid: Vec<(String, String)>,
    expired: Vec<String>,
    tampered: Vec<String>,
    /// (cookie, user) of live sessions whose step-up is due; empty: no `stepup` requests.
    step_up: Vec<(String, String)>,
}

/// Six client threads sending the mixed load until `stop`; each adds its statuses to `tally`.
fn spawn_load(
    port: u16,
    host: &str,
    cookies: &Cookies,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Mutex<Tally>>,
    started: Instant,
) -> Vec<std::thread::JoinHandle<()>> {
    let kinds = if cookies.step_up.is_empty() {
        6
    } else {
        KINDS.len()
    };
    (0..6)
        .map(|w| {
            let (stop, tally, host) = (stop.clone(), tally.clone(), host.to_string());
            let c = cookies.clone();
            std::thread::spawn(move || {
                let mut local = Tally::default();
                let mut n: usize = w;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let k = n % kinds;
                    let (cookie, user) = match KINDS[k] {
                        "valid" => {
                            let (c, u) = &c.valid[n % c.valid.len()];
                            (Some(c.clone()), u.clone())
                        }
                        "stepup" => {
                            let (c, u) = &c.step_up[n % c.step_up.len()];
                            (Some(c.clone()), u.clone())
                        }
                        "expired" => (Some(c.expired[n % c.expired.len()].clone()), "x".into()),
                        "forged" => (Some(SessionId::generate().to_cookie()), "x".into()),
                        "tampered" => (Some(c.tampered[n % c.tampered.len()].clone()), "x".into()),
                        _ => (None, "x".into()),
                    };
                    let area = if KINDS[k] == "public" { "public" } else { "app" };
                    // A step-up route only takes POSTs in this load: each keeps a form.
                    let method = if n.is_multiple_of(7) || KINDS[k] == "stepup" {
                        "POST"
                    } else {
                        "GET"
                    };
                    let mut req = format!(
                        "{method} /{area}/{}/{user}/{n} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
                        KINDS[k]
                    );
                    if let Some(c) = cookie {
                        req.push_str(&format!("Cookie: aalgate={c}\r\n"));
                    }
                    if KINDS[k] == "stepup" {
                        // Clinicians at their own workstations (through a trusted proxy): the
                        // per-client flow limiter does not pool them.
                        req.push_str(&format!("X-Forwarded-For: 10.1.{}.{}\r\n", n / 250 % 250, n % 250));
                    }
                    if method == "POST" {
                        req.push_str(&format!("Origin: http://{host}\r\nSec-Fetch-Mode: navigate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nnote=soak"));
                    } else {
                        req.push_str("\r\n");
                    }
                    let status = send(port, req.as_bytes()).status;
                    *local.by.entry((k, status)).or_default() += 1;
                    if status == 503 && KINDS[k] == "valid" {
                        local.valid_503.push(started.elapsed());
                    }
                }
                if let Ok(mut t) = tally.lock() {
                    for (key, v) in local.by {
                        *t.by.entry(key).or_default() += v;
                    }
                    t.valid_503.extend(local.valid_503);
                }
            })
        })
        .collect()
}

/// One report line per kind: how many the upstream saw, and the statuses the clients got.
fn by_kind(t: &std::collections::BTreeMap<(usize, u16), u64>, seen: &Seen) -> String {
    let mut out = String::new();
    for (k, kind) in KINDS.iter().enumerate() {
        let line: Vec<String> = t
            .iter()
            .filter(|((i, _), _)| *i == k)
            .map(|((_, s), n)| format!("{s}: {n}"))
            .collect();
        out.push_str(&format!(
            "  {kind:9} forwarded {:7}  statuses {{{}}}\n",
            seen.forwarded[k].load(Ordering::Relaxed),
            line.join(", ")
        ));
    }
    out
}

#[test]
fn soak() {
    let secs: u64 = std::env::var("AALGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let run = Duration::from_secs(secs);
    let mut redis = Cluster::start();
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone());
    let mut g = Gateway::start(Some(&redis.store("")), &[("soak.yaml", &policy(up))]);
    let host = format!("localhost:{}", g.port);

    let valid: Vec<(String, String)> = (0..40)
        .map(|i| {
            let u = format!("user{i}");
            (mint(&redis, &host, &u, 1), u)
        })
        .collect();
    let expired: Vec<String> = (0..200)
        .map(|i| mint(&redis, &host, &format!("idle{i}"), 31 * 60))
        .collect();
    let tampered: Vec<String> = valid
        .iter()
        .map(|(c, _)| {
            let mut b = c.clone().into_bytes();
            b[10] = if b[10] == b'x' { b'y' } else { b'x' };
            String::from_utf8(b).unwrap_or_default()
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let cookies = Cookies {
        valid,
        expired,
        tampered,
        step_up: Vec::new(),
    };
    let workers = spawn_load(g.port, &host, &cookies, &stop, &tally, started);
    let valid = cookies.valid;
    // Memory: sampled every second; the baseline is the median of the samples between 20% and
    // 30% of the run (warm), the end the median of the last 10%.
    let pid = g.pid();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut restarts = 0;
    let mut recovered = Vec::new();
    // From each master's kill until a session is served again and the cluster has settled,
    // plus 1 s (a request sent while Redis was gone, answered just after): the only times a
    // valid session may get a 503.
    let mut outages: Vec<(Duration, Duration)> = Vec::new();
    // From each kill until the probe's session was served again.
    let mut back: Vec<Duration> = Vec::new();
    while started.elapsed() < run {
        std::thread::sleep(Duration::from_secs(1));
        let frac = started.elapsed().as_secs_f64() / run.as_secs_f64();
        samples.push((frac, rss_kib(pid)));
        if (restarts == 0 && frac >= 0.4) || (restarts == 1 && frac >= 0.7) {
            restarts += 1;
            let down_at = started.elapsed();
            let old = redis.master_port();
            let killed = redis.kill_master();
            redis.wait_failover(old, Duration::from_secs(30));
            redis.restart_node(killed);
            // A valid session is served again by itself, with the same cookie.
            let (c, u) = &valid[0];
            let t0 = Instant::now();
            let mut ok = false;
            while t0.elapsed() < Duration::from_secs(20) {
                let r = send(
                    g.port,
                    format!("GET /app/valid/{u}/probe HTTP/1.1\r\nHost: {host}\r\nCookie: aalgate={c}\r\nConnection: close\r\n\r\n").as_bytes(),
                );
                if r.status == 200 {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            recovered.push((ok, t0.elapsed()));
            back.push(started.elapsed() - down_at);
            // The outage lasts until the cluster has settled too (both replicas online again:
            // until then a master without the replicas writes wait for may be refused).
            redis.wait_settled(Duration::from_secs(20));
            outages.push((down_at, started.elapsed() + Duration::from_secs(1)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().is_ok(), "a load thread panicked");
    }

    let mut warm: Vec<u64> = samples
        .iter()
        .filter(|(f, _)| (0.2..0.3).contains(f))
        .map(|s| s.1)
        .collect();
    let mut end: Vec<u64> = samples
        .iter()
        .filter(|(f, _)| *f >= 0.9)
        .map(|s| s.1)
        .collect();
    let (warm, end) = (median(&mut warm), median(&mut end));
    let growth = end as f64 / warm.max(1) as f64 - 1.0;

    let (t, valid_503) = tally
        .lock()
        .map(|t| (t.by.clone(), t.valid_503.clone()))
        .unwrap_or_default();
    let total: u64 = t.values().sum();
    let stray_503: Vec<&Duration> = valid_503
        .iter()
        .filter(|at| !outages.iter().any(|(from, to)| (from..=to).contains(at)))
        .collect();
    let mut report = format!(
        "soak: {secs} s, {total} requests ({:.0}/s), {restarts} Sentinel failovers\n",
        total as f64 / secs as f64
    );
    report.push_str(&by_kind(&t, &seen));
    report.push_str(&format!(
        "  forwarded without a valid session: {}\n  recovery after failovers: {:?}\n  valid sessions answered 503: {} (outages {outages:?}, back after {back:?}), {} outside them\n  gateway RSS: {warm} KiB after warm-up, {end} KiB at the end ({:+.1}%)\n",
        seen.violations.load(Ordering::Relaxed),
        recovered,
        valid_503.len(),
        stray_503.len(),
        growth * 100.0
    ));
    eprint!("{report}");
    let _ = std::fs::write(workspace().join("target/soak-report.txt"), &report);

    assert_eq!(seen.violations.load(Ordering::Relaxed), 0, "{report}");
    for k in [2, 3, 4, 5] {
        assert_eq!(
            seen.forwarded[k].load(Ordering::Relaxed),
            0,
            "{} forwarded\n{report}",
            KINDS[k]
        );
    }
    // The load really ran: public and valid requests were served, and a valid session got a
    // 200 whenever the store answered (503 is the fail-closed answer while Redis restarts).
    assert!(total >= 50 * secs, "only {total} requests\n{report}");
    assert!(
        seen.forwarded[0].load(Ordering::Relaxed) > 0,
        "no public request served\n{report}"
    );
    let valid_ok = t.get(&(1, 200)).copied().unwrap_or(0);
    let valid_all: u64 = t.iter().filter(|((k, _), _)| *k == 1).map(|(_, n)| n).sum();
    // 503 only while a master was gone. Every valid request then gets one once its cached
    // second runs out (fail closed), so their share is about the outages' share of the run
    // (2 x 4 s of 150 s, 5%): the windows are held short, and the share to the windows'.
    if !stray_503.is_empty() {
        let (first, last) = (
            stray_503.iter().min().copied().copied().unwrap_or_default(),
            stray_503.iter().max().copied().copied().unwrap_or_default(),
        );
        let log = g.log();
        let loud: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("master"))
            .collect();
        panic!(
            "valid sessions got {} 503s outside the failovers, from {first:?} to {last:?}\n{report}\ngateway log:\n{}",
            stray_503.len(),
            loud.join("\n")
        );
    }
    // The gateway is back within a few seconds of each kill (failover about 2.5 s, then the
    // restart of the killed node); the cluster may take longer to settle (the windows).
    for b in &back {
        assert!(
            *b < Duration::from_secs(8),
            "a session was served again only {b:?} after the kill\n{report}"
        );
    }
    let unavailable = valid_503.len() as u64;
    let outage_share: f64 = outages
        .iter()
        .map(|(from, to)| (*to - *from).as_secs_f64())
        .sum::<f64>()
        / run.as_secs_f64();
    assert!(
        (unavailable as f64) <= valid_all as f64 * outage_share * 1.2,
        "valid sessions: {unavailable} of {valid_all} answered 503, outages {:.1}% of the run\n{report}",
        outage_share * 100.0
    );
    assert!(
        valid_all > 0 && valid_ok * 100 >= (valid_all - unavailable) * 99,
        "valid sessions: {valid_ok} of {valid_all} answered 200\n{report}"
    );
    assert!(warm > 0 && end > 0, "RSS not measured\n{report}");
    assert_eq!(restarts, 2, "{report}");
    assert!(
        recovered.iter().all(|(ok, _)| *ok),
        "a valid session did not come back\n{report}"
    );
    assert!(g.alive(), "gateway died\n{report}");
    assert!(
        !g.log().contains("panicked"),
        "panic in the gateway log:\n{}",
        g.log()
    );
    assert!(
        growth < 0.10,
        "gateway RSS grew {:.1}%\n{report}",
        growth * 100.0
    );
    g.stop();
}
