//! The embedded store under the soak's mixed load, at the product's default store deadline
//! (`AALGATE_EMBEDDED_SOAK_SECS`, default 60). Besides the soak's kinds, signed-in people whose
//! step-up is due POST forms, so each of those requests writes a kept form and a flow.
//! Asserted: no store call missed its deadline (a miss turns a step-up into a 503), nothing
//! forwarded without a valid session. The latency of each store operation (p50, p99 and the
//! slowest, as histogram bucket bounds) goes to stderr and `target/embedded-soak-report.txt`:
//! the default deadline (`config::DEFAULT_EMBEDDED_STORE_TIMEOUT`) is set from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use aalgate_tests::{make_session, workspace, Gateway};

use super::{spawn_load, upstream, Cookies, Seen, Tally, KINDS};

/// One operation's latency histogram: (bucket bound in seconds, cumulative count), ascending.
type Buckets = Vec<(f64, f64)>;

/// `aalgate_store_duration_seconds` by operation.
fn histograms(scrape: &str) -> BTreeMap<String, Buckets> {
    let mut out: BTreeMap<String, Buckets> = BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("aalgate_store_duration_seconds_bucket{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap_or(("", ""));
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let (Some(op), Some(le)) = (label("op"), label("le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        out.entry(op)
            .or_default()
            .push((le, value.trim().parse().unwrap_or(0.0)));
    }
    for b in out.values_mut() {
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The bound of the first bucket holding the `q` quantile.
fn quantile(b: &Buckets, q: f64) -> f64 {
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    b.iter()
        .find(|(_, n)| *n >= q * total)
        .map(|x| x.0)
        .unwrap_or(f64::NAN)
}

fn ms(s: f64) -> String {
    if s.is_infinite() {
        "over 60 s".into()
    } else {
        format!("{:.2} ms", s * 1000.0)
    }
}

#[test]
fn the_embedded_store_keeps_its_deadline_under_the_soak_load() {
    let secs: u64 = std::env::var("AALGATE_EMBEDDED_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone());
    let policy = format!(
        "{}  - path: /app/stepup/**\n    require: aal2\n    step_up: {{ max_age: 5m }}\n",
        super::policy(up)
    );
    let mut g = Gateway::start_extra(
        &[("soak.yaml", &policy)],
        "store_timeout: default\ntrusted_proxies: [127.0.0.1/32]\n",
    );
    let host = format!("localhost:{}", g.port);
    let store = EmbeddedStore::open(&g.state_dir()).expect("open the embedded store");
    let mint = |user: &str, auth_age: u64, idle: u64| {
        make_session(&store, &host, user, Aal::Aal2, auth_age, idle)
    };
    let valid: Vec<(String, String)> = (0..40)
        .map(|i| (mint(&format!("user{i}"), 60, 1), format!("user{i}")))
        .collect();
    let step_up: Vec<(String, String)> = (0..40)
        .map(|i| (mint(&format!("due{i}"), 600, 1), format!("due{i}")))
        .collect();
    let expired: Vec<String> = (0..50)
        .map(|i| mint(&format!("idle{i}"), 60, 31 * 60))
        .collect();
    let tampered: Vec<String> = valid
        .iter()
        .map(|(c, _)| {
            let mut b = c.clone().into_bytes();
            b[10] = if b[10] == b'x' { b'y' } else { b'x' };
            String::from_utf8(b).unwrap_or_default()
        })
        .collect();
    drop(store);
    let cookies = Cookies {
        valid,
        expired,
        tampered,
        step_up,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let workers = spawn_load(g.port, &host, &cookies, &stop, &tally, started);
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().is_ok(), "a load thread panicked");
    }
    let elapsed = started.elapsed();
    let scrape = g.scrape();
    let errors: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("aalgate_store_errors_total{") && !l.ends_with(" 0"))
        .collect();
    let t = tally.lock().map(|t| t.by.clone()).unwrap_or_default();
    let total: u64 = t.values().sum();
    let mut report = format!(
        "embedded soak: {:.0} s, {total} requests ({:.0}/s), default store deadline\n",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    report.push_str(&super::by_kind(&t, &seen));
    for (op, b) in histograms(&scrape) {
        let calls = b.last().map(|x| x.1).unwrap_or(0.0);
        if calls > 0.0 {
            report.push_str(&format!(
                "  store {op:9} {calls:8} calls  p50 <= {}  p99 <= {}  slowest <= {}\n",
                ms(quantile(&b, 0.5)),
                ms(quantile(&b, 0.99)),
                ms(quantile(&b, 1.0)),
            ));
        }
    }
    report.push_str(&format!("  store errors: {errors:?}\n"));
    eprint!("{report}");
    let _ = std::fs::write(workspace().join("target/embedded-soak-report.txt"), &report);

    assert_eq!(seen.violations.load(Ordering::Relaxed), 0, "{report}");
    assert!(total >= 20 * secs, "only {total} requests\n{report}");
    // The step-ups really wrote: their forms were kept, and they were sent to sign in.
    let step_ups: u64 = t
        .iter()
        .filter(|((k, s), _)| KINDS[*k] == "stepup" && (300..400).contains(s))
        .map(|(_, n)| n)
        .sum();
    assert!(step_ups > 0, "no step-up was asked for\n{report}");
    assert!(
        errors.is_empty(),
        "store calls failed or timed out\n{report}"
    );
    for kind in ["valid", "stepup"] {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        let unavailable = t.get(&(k, 503)).copied().unwrap_or(0);
        assert_eq!(unavailable, 0, "{kind}: 503s\n{report}");
    }
    assert!(g.alive(), "gateway died\n{report}");
    assert!(!g.log().contains("panicked"), "panic:\n{}", g.log());
    g.stop();
}
