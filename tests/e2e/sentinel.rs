//! Redis with Sentinel (three `redis-server`, three `redis-sentinel`): the gateway follows a
//! failover by itself, fails closed (503) while no master is known, and a logout made just
//! before a failover is never undone, even when the promoted replica never received it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::RedisStore;
use aalgate_tests::cluster::Cluster;
use aalgate_tests::{eventually, get, logout, sample, Gateway, Upstream};

use crate::{make_session, policy};

/// A store in the test, through the same sentinels (no replica confirmations: it only seeds).
fn store(c: &Cluster) -> RedisStore {
    RedisStore::with_config(&c.redis_config()).unwrap()
}

/// Waits until every replica holds as many keys as the master (the seed has replicated).
fn replicated(c: &Cluster) {
    let count = |i: usize| {
        c.node_command(i, "DBSIZE")
            .trim()
            .trim_start_matches(':')
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    };
    eventually(Duration::from_secs(10), "replicas caught up", || {
        let m = count(c.master());
        (m > 0 && c.replica_indexes().iter().all(|r| count(*r) == m)).then_some(())
    });
}

/// `(status, retry-after)` of one GET.
fn hit(port: u16, cookie: Option<&str>) -> (u16, Option<String>) {
    let h = format!("localhost:{port}");
    let c = cookie.map(|c| format!("Cookie: aalgate={c}"));
    let r = get(
        port,
        &h,
        "/x",
        &c.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    (r.status, r.header("retry-after").map(str::to_string))
}

/// When, whether signed in, status, Retry-After.
type Hit = (Instant, bool, u16, Option<String>);

#[test]
fn a_sentinel_failover_under_load_never_opens_and_recovers_without_a_new_sign_in() {
    let mut cl = Cluster::start();
    let up = Upstream::start();
    let g = Gateway::start(Some(&cl.store("")), &[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let cookie = make_session(&store(&cl), &host, "olga", Aal::Aal2, 60, 1);
    replicated(&cl);
    assert_eq!(hit(g.port, Some(&cookie)).0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let mut threads = Vec::new();
    for signed_in in [true, true, false] {
        let (stop, log, port, cookie) = (stop.clone(), log.clone(), g.port, cookie.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let (s, retry) = hit(port, signed_in.then_some(cookie.as_str()));
                log.lock()
                    .unwrap()
                    .push((Instant::now(), signed_in, s, retry));
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let old = cl.master_port();
    let killed = Instant::now();
    cl.kill_master();
    let new = cl.wait_failover(old, Duration::from_secs(30));
    // Sessions are valid again on the promoted master, with no new sign-in.
    eventually(
        Duration::from_secs(20),
        "signed-in requests pass again",
        || {
            let l = log.lock().unwrap();
            l.iter()
                .any(|(t, signed, s, _)| {
                    *signed && *s == 200 && *t > killed + Duration::from_secs(1)
                })
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    let mut gap: Option<(Instant, Instant)> = None;
    for (t, signed, s, retry) in log.iter() {
        if *signed {
            // Never a login loop: the session is there or the store is, for now, unknown.
            assert!(*s == 200 || *s == 503, "signed-in request answered {s}");
        } else {
            assert_ne!(*s, 200, "a request without a session passed");
        }
        if *s == 503 {
            assert_eq!(retry.as_deref(), Some("5"), "503 without Retry-After");
            gap = Some(gap.map_or((*t, *t), |(a, _)| (a, *t)));
        }
    }
    let (first, last) = gap.expect("protected routes answered 503 during the failover");
    let passed = log.iter().filter(|(_, s, st, _)| *s && *st == 200).count();
    assert_eq!(
        up.seen().len(),
        passed + 1,
        "upstream saw exactly the passed requests"
    );
    eprintln!(
        "FIGURE failover: master killed -> first 503 {:?}, 503s for {:?}, master {old} -> {new}",
        first.saturating_duration_since(killed),
        last - first
    );
    eventually(Duration::from_secs(15), "failover counted", || {
        let m = g.scrape();
        (sample(&m, "aalgate_store_failovers_total").unwrap_or(0.0) >= 1.0
            && m.contains(&format!(
                "aalgate_store_master_info{{address=\"127.0.0.1:{new}\"}} 1"
            )))
        .then_some(())
    });
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

/// Logs a session out while the replicas are frozen and their links dropped, kills the
/// master, thaws the replicas: the promoted replica never received the logout. (SIGSTOP alone
/// is not enough: the kernel keeps what the master sent, and a thawed replica reads it.) Returns whether a fresh gateway (nothing
/// held locally) then accepts the logged-out cookie, i.e. whether the logout was undone.
fn logout_then_failover(wait: bool) -> bool {
    let mut cl = Cluster::start();
    let up = Upstream::start();
    let section = if wait {
        cl.store(", wait: {replicas: 1, timeout: 300ms}")
    } else {
        cl.store(", wait: {replicas: 0}")
    };
    let g = Gateway::start(Some(&section), &[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let cookie = make_session(&store(&cl), &host, "pablo", Aal::Aal2, 60, 1);
    replicated(&cl);
    assert_eq!(hit(g.port, Some(&cookie)).0, 200);

    let replicas = cl.replica_indexes();
    for r in &replicas {
        cl.signal_node(*r, "-STOP");
    }
    cl.node_command(cl.master(), "CLIENT KILL TYPE replica");
    // Nothing written from now on reaches a replica.
    eventually(Duration::from_secs(5), "replication links dropped", || {
        cl.node_command(cl.master(), "INFO replication")
            .contains("connected_slaves:0")
            .then_some(())
    });
    let out = logout(g.port, &host, &cookie);
    if wait {
        // Not confirmed by a replica: not reported as done.
        assert_eq!(out.status, 503, "{}", out.text());
    } else {
        assert_eq!(out.status, 200, "{}", out.text());
    }
    // Denied on this instance at once either way.
    assert_ne!(hit(g.port, Some(&cookie)).0, 200);
    let old = cl.master_port();
    cl.kill_master();
    for r in &replicas {
        cl.signal_node(*r, "-CONT");
    }
    cl.wait_failover(old, Duration::from_secs(30));
    // With WAIT, the instance that logged out never lets the cookie through again.
    let mut revived_here = false;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        revived_here |= hit(g.port, Some(&cookie)).0 == 200;
        assert!(!(wait && revived_here), "the logged-out session came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    if wait {
        eventually(Duration::from_secs(20), "held writes confirmed", || {
            let m = g.scrape();
            (sample(&m, "aalgate_store_unconfirmed_writes") == Some(0.0)
                && sample(&m, "aalgate_store_replica_acks_missed_total").unwrap_or(0.0) >= 1.0)
                .then_some(())
        });
    }
    // Another instance, holding nothing: it sees only what the new master has.
    let other = Gateway::start(Some(&section), &[("billing.yaml", &policy(up.port))]);
    let revived = eventually(
        Duration::from_secs(15),
        "the other instance answers",
        || {
            let r = get(
                other.port,
                &host,
                "/x",
                &[&format!("Cookie: aalgate={cookie}")],
            );
            (r.status != 503).then_some(r.status == 200)
        },
    );
    assert!(!g.log().contains("panicked"), "{}", g.log());
    revived || revived_here
}

#[test]
fn a_logout_is_never_undone_by_a_failover_with_replica_confirmations() {
    assert!(
        !logout_then_failover(true),
        "the promoted replica brought the logged-out session back"
    );
}

#[test]
fn without_replica_confirmations_a_failover_brings_a_logged_out_session_back() {
    // The control: the same race without WAIT revives the session, so it is WAIT (and the
    // retry) that protects it in the test above.
    assert!(
        logout_then_failover(false),
        "expected the race to revive the session without WAIT"
    );
}

/// How the master is lost while it stays alive.
#[derive(Clone, Copy, Debug)]
enum Isolation {
    /// SIGSTOP, then SIGCONT.
    Paused,
    /// Cut off by a TCP proxy in front of it, then reconnected.
    Split,
}

fn isolated_master(how: Isolation) {
    let cl = match how {
        Isolation::Paused => Cluster::start(),
        Isolation::Split => Cluster::start_split(),
    };
    let up = Upstream::start();
    let g = Gateway::start(Some(&cl.store("")), &[("billing.yaml", &policy(up.port))]);
    let host = format!("localhost:{}", g.port);
    let leaving = make_session(&store(&cl), &host, "quinn", Aal::Aal2, 60, 1);
    let staying = make_session(&store(&cl), &host, "rosa", Aal::Aal2, 60, 1);
    replicated(&cl);
    assert_eq!(hit(g.port, Some(&leaving)).0, 200);
    assert_eq!(hit(g.port, Some(&staying)).0, 200);

    let old = cl.master_port();
    let old_node = cl.master();
    match how {
        Isolation::Paused => cl.signal_node(old_node, "-STOP"),
        Isolation::Split => cl.proxy.as_ref().unwrap().cut(),
    }
    cl.wait_failover(old, Duration::from_secs(30));
    eventually(Duration::from_secs(20), "the gateway follows", || {
        (hit(g.port, Some(&staying)).0 == 200).then_some(())
    });
    // Signed out as a person does it: "Try again" until the page says so (a 503 may mean the
    // store was not reached and nothing ended yet).
    eventually(Duration::from_secs(10), "signed out", || {
        let out = logout(g.port, &host, &leaving);
        assert!(out.status == 200 || out.status == 503, "{}", out.status);
        (out.status == 200).then_some(())
    });
    match how {
        Isolation::Paused => cl.signal_node(old_node, "-CONT"),
        Isolation::Split => cl.proxy.as_ref().unwrap().heal(),
    }
    // The old master returns; the sentinels make it a replica. Nothing opens meanwhile.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if hit(g.port, Some(&leaving)).0 == 200 {
            for i in 0..3 {
                eprintln!(
                    "node {i} ({}): {:?} {:?}",
                    cl.node_ports()[i],
                    cl.node_command(i, "ROLE"),
                    cl.node_command(i, "KEYS aalgate:*")
                );
            }
            panic!("{how:?}: the logged-out session came back\n{}", g.log());
        }
        assert_ne!(
            hit(g.port, None).0,
            200,
            "{how:?}: a request without a session passed"
        );
        let (s, _) = hit(g.port, Some(&staying));
        assert!(
            s == 200 || s == 503,
            "{how:?}: signed-in request answered {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually(
        Duration::from_secs(20),
        "the old master is a replica",
        || {
            cl.node_command(old_node, "ROLE")
                .contains("slave")
                .then_some(())
        },
    );
    assert_ne!(hit(g.port, Some(&leaving)).0, 200);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn a_paused_master_is_failed_over_and_opens_nothing_when_it_returns() {
    isolated_master(Isolation::Paused);
}

#[test]
fn a_master_cut_off_by_a_split_opens_nothing_when_it_returns_as_a_replica() {
    isolated_master(Isolation::Split);
}

/// On a master whose replicas are frozen and cut off: a write that ends access is never
/// reported done without a replica (asked twice, the second finds nothing to change), and a
/// held compare-and-swap never hides a newer write made elsewhere.
#[test]
fn unconfirmed_writes_are_never_reported_done_and_newer_writes_win_over_held_ones() {
    let cl = Cluster::start();
    let url = format!("redis://127.0.0.1:{}/0", cl.master_port());
    let mut cfg = aalgate_session::RedisConfig::url(&url, Duration::from_secs(2));
    cfg.replicas_ack = 1;
    cfg.ack_timeout = Duration::from_millis(200);
    make_session(
        &RedisStore::new(&url, Duration::from_secs(2)).unwrap(),
        "ehr.example",
        "tina",
        Aal::Aal2,
        60,
        1,
    );
    let replicas = cl.replica_indexes();
    for r in &replicas {
        cl.signal_node(*r, "-STOP");
    }
    cl.node_command(cl.master(), "CLIENT KILL TYPE replica");
    crate::rt().block_on(async {
        use aalgate_session::SessionStore;
        let waiting = RedisStore::with_config(&cfg).unwrap();
        let plain = RedisStore::new(&url, Duration::from_secs(2)).unwrap();
        assert!(
            waiting.revoke_user("tina").await.is_err(),
            "no replica has it"
        );
        assert!(
            waiting.revoke_user("tina").await.is_err(),
            "a retried revocation was reported done while no replica has it"
        );
        let (old, new) = (&b"clinical,epcs-signers"[..], &b"clinical"[..]);
        assert!(waiting
            .kv_swap("access", "tina", None, Some(old))
            .await
            .is_err());
        // Elsewhere, IT removes the group: the master has the held write's value, so it swaps.
        assert!(plain
            .kv_swap("access", "tina", Some(old), Some(new))
            .await
            .unwrap());
        assert_eq!(
            waiting.kv_get("access", "tina").await.unwrap().as_deref(),
            Some(new),
            "a held write hid a newer group removal"
        );
    });
    for r in &replicas {
        cl.signal_node(*r, "-CONT");
    }
}
