//! A flood beside a signed-in clinician (bounded, loopback, `AALGATE_FLOOD_SECS`, default 20):
//! anonymous clients from many addresses on 48 connections send 1 MiB POSTs to protected routes
//! and GETs with 60 KB and 7 KB query strings, while 16 connections of signed-in people who need a
//! step-up POST 1 MiB forms, so kept forms really are stored until the store-wide and
//! per-person quotas refuse them; the anonymous flows stop at `anonymous_state_quota`. The
//! gateway's memory, the store and the embedded file stay within their limits, and the clinician's requests keep succeeding. It runs in the soak
//! binary, alone (it saturates both cores for its whole length).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::{EmbeddedStore, SessionStore};
use aalgate_tests::{get, make_session, post_head_and_body, rt, sample, Gateway, Upstream};

/// After the flood, every thread's last request ends within this.
const LAST: Duration = Duration::from_secs(3);

fn post(port: u16, head: &str, body: usize) -> u16 {
    post_head_and_body(port, head, body, LAST)
}

const MIB: u64 = 1024 * 1024;
const QUOTA: u64 = 32 * MIB;
const PERSON_QUOTA: u64 = 8 * MIB;
const READS: u64 = 16;
/// `anonymous_state_quota` of the test: flows of nobody known yet, in the whole store.
const ANON: u64 = 4 * MIB;

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Bytes of the files in `dir` and its subdirectories (the embedded store's side files).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_flood_stays_within_its_limits_beside_a_clinician() {
    let secs: u64 = std::env::var("AALGATE_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let up = Upstream::start();
    let policy = format!(
        "app: billing\nhost: localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\nroutes:\n  - path: /confirm\n    require: aal2\n    step_up: {{ max_age: 5m }}\n",
        up.port
    );
    let extra = format!(
        "preserve_quota: {QUOTA}\npreserve_person_quota: {PERSON_QUOTA}\npreserve_concurrent_reads: {READS}\nanonymous_state_quota: {ANON}\ntrusted_proxies: [127.0.0.1/32]\n"
    );
    let g = Gateway::start_extra(&[("billing.yaml", &policy)], &extra);
    let port = g.port;
    let host = format!("localhost:{port}");
    let store = EmbeddedStore::open(&g.state_dir()).expect("open the embedded store");
    let clinician = make_session(&store, &host, "carla", Aal::Aal2, 0, 0);
    // Signed-in people whose step-up is due: their forms are kept.
    let posters: Vec<String> = (0..8)
        .map(|i| make_session(&store, &host, &format!("p{i}"), Aal::Aal2, 600, 0))
        .collect();
    // Warm up, then the baselines.
    for _ in 0..20 {
        let r = get(
            port,
            &host,
            "/orders",
            &[&format!("Cookie: aalgate={clinician}")],
        );
        assert_eq!(r.status, 200);
    }
    up.clear();
    let state = g.state_dir();
    let file_before = dir_bytes(&state);
    let warm_rss = rss_bytes(g.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(warm_rss));
    // The peak of each half of the flood: memory that grows without a limit grows in the
    // second half too; a bounded one has reached its plateau by then.
    let halves = Arc::new([AtomicU64::new(warm_rss), AtomicU64::new(warm_rss)]);
    let mut threads = Vec::new();
    {
        let (stop, peak, pid) = (stop.clone(), peak_rss.clone(), g.pid());
        let halves = halves.clone();
        let start = std::time::Instant::now();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let rss = rss_bytes(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                let half = usize::from(start.elapsed() >= Duration::from_secs(secs) / 2);
                halves[half].fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    let anonymous_sent = Arc::new(AtomicU64::new(0));
    for t in 0..48u32 {
        let (stop, sent, host) = (stop.clone(), anonymous_sent.clone(), host.clone());
        threads.push(std::thread::spawn(move || {
            // Over the kept URL limit (refused before anything is stored), and just under it
            // (a 7 KB flow each, until the anonymous quota refuses them).
            let (long, near) = ("q".repeat(60 * 1024), "n".repeat(7 * 1024));
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Many addresses, believed through the trusted proxy.
                let xff = format!("10.{}.{}.{}", t, i / 250 % 250, i % 250);
                if i.is_multiple_of(2) {
                    let head = format!(
                        "POST /orders HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Mode: navigate\r\nX-Forwarded-For: {xff}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {MIB}\r\nConnection: close\r\n\r\n"
                    );
                    post(port, &head, MIB as usize);
                } else {
                    let q = if i % 4 == 1 { &long } else { &near };
                    let head = format!(
                        "GET /orders?q={q} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
                    );
                    post(port, &head, 0);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let kept_sent = Arc::new(AtomicU64::new(0));
    for t in 0..16usize {
        let (stop, sent, host) = (stop.clone(), kept_sent.clone(), host.clone());
        let cookie = posters[t % posters.len()].clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let head = format!(
                    "POST /confirm HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Mode: navigate\r\nX-Forwarded-For: 192.0.2.{t}\r\nCookie: aalgate={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {MIB}\r\nConnection: close\r\n\r\n"
                );
                post(port, &head, MIB as usize);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The clinician: steady requests for the whole flood.
    let started = Instant::now();
    let (mut ok, mut total, mut unavailable) = (0u64, 0u64, 0u64);
    let mut other = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        let r = get(
            port,
            &host,
            "/orders",
            &[&format!("Cookie: aalgate={clinician}")],
        );
        total += 1;
        match r.status {
            200 => ok += 1,
            503 => unavailable += 1,
            s => other.push(s),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    for t in threads {
        assert!(t.join().is_ok(), "a flood thread panicked");
    }
    let joined = t0.elapsed();
    eprintln!("threads joined in {joined:?}");
    // Each thread's last request ends within its client timeout.
    assert!(
        joined < LAST + Duration::from_secs(1),
        "threads joined only after {joined:?}"
    );
    let kept: u64 = rt()
        .block_on(store.kv_list("kept"))
        .expect("list kept forms")
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum();
    let scrape = g.scrape();
    let count = |o: &str| {
        sample(
            &scrape,
            &format!("aalgate_kept_forms_total{{outcome=\"{o}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let flows_refused =
        sample(&scrape, "aalgate_flow_refusals_total{reason=\"quota\"}").unwrap_or(0.0);
    let peak = peak_rss.load(Ordering::Relaxed);
    // Purged once expired; measured now, while the kept forms still live.
    let file_after = dir_bytes(&state);
    eprintln!(
        "flood {secs}s: anonymous {} requests, step-up posts {}; kept {} (quota refusals {}, busy {}, anonymous {}); kept bytes in the store {:.1} MiB; RSS warm {:.0} MiB, peak {:.0} MiB (halves {} and {} MiB); embedded files {:.1} -> {:.1} MiB; anonymous flows refused over their quota {flows_refused}; clinician {ok}/{total} ok, {unavailable} x 503, other {other:?}",
        anonymous_sent.load(Ordering::Relaxed),
        kept_sent.load(Ordering::Relaxed),
        count("kept"),
        count("quota"),
        count("busy"),
        count("anonymous"),
        kept as f64 / MIB as f64,
        warm_rss as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        halves[0].load(Ordering::Relaxed) / MIB,
        halves[1].load(Ordering::Relaxed) / MIB,
        file_before as f64 / MIB as f64,
        file_after as f64 / MIB as f64,
    );
    assert!(count("kept") >= 1.0, "kept forms were stored");
    assert!(count("quota") >= 1.0, "the quota refused forms");
    // Parallel keeps overshoot the checked quota by at most one form per concurrent reader.
    let bound = QUOTA + READS * (MIB + MIB / 8);
    assert!(kept <= bound, "kept bytes {kept} over {bound}");
    // The readers' bodies, redb's page cache (16 MiB: the anonymous flows are stored in it),
    // the audit queues (64 Ki request events of a few hundred bytes when the writer falls
    // behind a flood: up to 24 MiB; 8 Ki auth events) and headroom for the per-client limiter
    // (100k addresses), buffers and allocator arenas. The headroom is measured: on this 2-core
    // machine the peak varies run to run with the flood's opening burst (2026-12-06, debug
    // builds, warm 59 MiB: affe3c1 peaked at 184 and 225 MiB, stop 32 at 165 to 205 MiB over
    // 10, 20 and 40 s floods); it does not grow with the flood's length, which the next check
    // holds the gateway to.
    let rss_bound = warm_rss + READS * MIB + 16 * MIB + 24 * MIB + 120 * MIB;
    assert!(peak <= rss_bound, "peak RSS {peak} over {rss_bound}");
    // A plateau, not a slope: the second half of the flood peaks no higher than the first,
    // beyond what bounded structures can still fill then: redb's page cache (16 MiB), the
    // audit queue (24 MiB) and the per-client limiter, which takes new addresses up to its
    // cap of 100k (16 MiB). A leak of a few KB per anonymous request (thousands of them in
    // the second half alone) does not fit.
    let (first, second) = (
        halves[0].load(Ordering::Relaxed),
        halves[1].load(Ordering::Relaxed),
    );
    assert!(
        second <= first + (16 + 24 + 16) * MIB,
        "RSS still growing: first half peaked at {} MiB, second at {} MiB",
        first / MIB,
        second / MIB
    );
    // The anonymous flows of the flood stop at their quota, from however many addresses.
    assert!(
        flows_refused >= 1.0,
        "the anonymous state quota refused flows"
    );
    // The kept forms, the anonymous flows (their quota, twice for the file's own overhead) and
    // the step-up flows of the 8 people.
    let file_bound = file_before + bound + 2 * ANON + 4 * MIB;
    assert!(
        file_after <= file_bound,
        "embedded store on disk {file_after} over {file_bound}"
    );
    assert_eq!(unavailable, 0, "no 503 for the clinician");
    assert!(
        ok * 100 >= total * 99,
        "the clinician's requests: {ok}/{total} ok, other {other:?}"
    );
    // Nobody completed a ceremony: the upstream saw only the clinician, once per 200.
    let seen = up.seen();
    for s in &seen {
        assert_eq!(
            (
                s.method.as_str(),
                s.target.as_str(),
                s.one("x-aalgate-user")
            ),
            ("GET", "/orders", Some("carla")),
            "forwarded during the flood"
        );
    }
    assert_eq!(
        seen.len() as u64,
        ok,
        "forwarded requests vs the clinician's 200s"
    );
}
