//! Operations: metrics on the admin listener (checked by promtool), the PHI-safe audit log,
//! policy hot reload, and a graceful upgrade under load.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use aalgate_tests::{aalgate_bin, eventually, get, promtool, sample, try_get, Gateway, Upstream};

use crate::{make_session, policy};

#[test]
fn metrics_count_the_session_lifecycle_and_pass_promtool() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let h = format!("localhost:{}", g.port);
    let ok = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "kim",
        Aal::Aal2,
        60,
        1,
    );
    let idle = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "lee",
        Aal::Aal2,
        3600,
        31 * 60,
    );
    let _aal3 = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "max",
        Aal::Aal3,
        60,
        1,
    );
    assert_eq!(get(g.port, &h, "/static/a.css", &[]).status, 200);
    assert_eq!(get(g.port, &h, "/x", &[]).status, 302);
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={ok}")]).status,
        200
    );
    assert_eq!(
        get(g.port, &h, "/pay/now", &[&format!("Cookie: aalgate={ok}")]).status,
        302
    );
    assert_eq!(
        get(g.port, &h, "/x", &[&format!("Cookie: aalgate={idle}")]).status,
        302
    );
    assert_eq!(get(g.port, &h, "/debug/x", &[]).status, 403);
    // Never on the public listener: there /metrics is just a path of the app.
    assert_eq!(get(g.port, &h, "/metrics", &[]).status, 302);

    // The session gauges come from the store monitor (every 5 s).
    let m = eventually(
        Duration::from_secs(15),
        "sessions_active from the store monitor",
        || {
            let m = g.scrape();
            // Both at once: a count taken between two of the inserts above sees only some.
            (sample(&m, "aalgate_sessions_active{aal=\"2\"}") == Some(1.0)
                && sample(&m, "aalgate_sessions_active{aal=\"3\"}") == Some(1.0))
            .then_some(m)
        },
    );
    let v = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no sample {s} in\n{m}"));
    assert_eq!(v("aalgate_sessions_active{aal=\"3\"}"), 1.0);
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"allow\",route=\"/static/**\"}"),
        1.0
    );
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"allow\",route=\"default\"}"),
        1.0
    );
    // /x without a session, and the public /metrics probe.
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"login\",route=\"default\"}"),
        2.0
    );
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"step_up\",route=\"/pay/**\"}"),
        1.0
    );
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"reauth\",route=\"default\"}"),
        1.0
    );
    assert_eq!(
        v("aalgate_requests_total{app=\"billing\",decision=\"denied\",route=\"/debug/**\"}"),
        1.0
    );
    assert_eq!(
        v("aalgate_step_ups_total{app=\"billing\",route=\"/pay/**\"}"),
        1.0
    );
    assert_eq!(
        v("aalgate_challenges_total{kind=\"reauth\",result=\"issued\"}"),
        1.0
    );
    assert_eq!(v("aalgate_session_ends_total{reason=\"idle\"}"), 1.0);
    assert_eq!(v("aalgate_session_ends_total{reason=\"logout\"}"), 0.0);
    assert_eq!(v("aalgate_session_age_at_end_seconds_count"), 1.0);
    assert_eq!(v("aalgate_store_up"), 1.0);
    assert_eq!(v("aalgate_policy_reloads_total{result=\"success\"}"), 1.0);
    assert!(v("aalgate_policy_last_reload_success_timestamp_seconds") > 1.7e9);
    assert!(v("aalgate_upstream_duration_seconds_count{app=\"billing\"}") >= 2.0);
    assert!(v("aalgate_upstream_responses_total{app=\"billing\",class=\"2xx\"}") >= 2.0);
    assert!(v("aalgate_gateway_duration_seconds_count{outcome=\"forwarded\"}") >= 2.0);
    // kim twice within the cache window (one read), lee once.
    assert!(v("aalgate_store_duration_seconds_count{op=\"get\"}") >= 2.0);
    assert!(m.contains("aalgate_policy_info{hash=\""));

    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_log_answers_who_what_when_without_phi() {
    let up = Upstream::start();
    let g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        "audit:\n  output: file:audit/audit.jsonl\n",
    );
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let h = format!("localhost:{}", g.port);
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "nora",
        Aal::Aal2,
        60,
        1,
    );
    let r = get(
        g.port,
        &h,
        "/patients/12345678/chart?ssn=123-45-6789&name=Jane",
        &[
            &format!("Cookie: aalgate={cookie}; theme=secret-cookie"),
            "User-Agent: ClinicBrowser/1.0",
            "X-Diagnosis: PHI-VALUE",
            "Authorization: Basic c2VjcmV0",
        ],
    );
    assert_eq!(r.status, 200);
    let logout = aalgate_tests::logout(g.port, &h, &cookie);
    assert_eq!(logout.status, 200);
    let path = g.dir.path().join("audit/audit.jsonl");
    let text = eventually(Duration::from_secs(5), "audit lines", || {
        let t = std::fs::read_to_string(&path).unwrap_or_default();
        t.contains("\"event\":\"logout\"").then_some(t)
    });
    for secret in [
        "12345678",
        "123-45-6789",
        "ssn",
        "Jane",
        "secret-cookie",
        &cookie,
        "PHI-VALUE",
        "c2VjcmV0",
    ] {
        assert!(
            !text.contains(secret),
            "audit log contains {secret:?}:\n{text}"
        );
    }
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let req = events
        .iter()
        .find(|e| e["event"] == "request")
        .expect("request event");
    assert_eq!(req["user"], "nora");
    assert_eq!(req["app"], "billing");
    assert_eq!(req["route"], "default");
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/patients/{redacted}/chart");
    assert_eq!(req["decision"], "allow");
    assert_eq!(req["status"], 200);
    assert_eq!(req["aal"], 2);
    assert_eq!(req["credential"], "test-credential");
    assert_eq!(req["client_ip"], "127.0.0.1");
    assert_eq!(req["user_agent"], "ClinicBrowser/1.0");
    assert!(req["time"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC");
    // The same request id reached the upstream, so the two logs join.
    assert_eq!(
        Some(req["request_id"].as_str().unwrap()),
        up.seen()[0].one("x-request-id")
    );
    let out = events
        .iter()
        .find(|e| e["event"] == "logout")
        .expect("logout event");
    assert_eq!(out["user"], "nora");
}

#[test]
fn audit_log_can_go_to_syslog() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        &format!("audit:\n  output: syslog:{}\n", sock_path.display()),
    );
    assert_eq!(
        get(
            g.port,
            &format!("localhost:{}", g.port),
            "/static/a.css",
            &[]
        )
        .status,
        200
    );
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a syslog datagram");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.starts_with("<86>aalgate["), "{msg}");
    assert!(
        msg.contains("\"event\":\"request\"") && msg.contains("\"path\":\"/static/a.css\""),
        "{msg}"
    );
}

fn reloads(g: &Gateway, result: &str) -> f64 {
    sample(
        &g.scrape(),
        &format!("aalgate_policy_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[test]
fn policy_edits_reload_atomically_and_bad_edits_keep_the_last_good_set() {
    let up = Upstream::start();
    let base = policy(up.port);
    let mut g = Gateway::start(None, &[("billing.yaml", &base)]);
    let h = format!("localhost:{}", g.port);
    let file = g.policy_dir().join("billing.yaml");
    assert_eq!(get(g.port, &h, "/open", &[]).status, 302);

    // A valid edit is picked up by the directory watch.
    let opened = base.replace(
        "routes:\n",
        "routes:\n  - path: /open\n    require: public\n",
    );
    std::fs::write(&file, &opened).unwrap();
    // The watch looks every 2 s.
    eventually(Duration::from_secs(3), "the edit to take effect", || {
        (get(g.port, &h, "/open", &[]).status == 200).then_some(())
    });
    assert_eq!(reloads(&g, "success"), 2.0);

    // An invalid edit keeps the last good set, says where, and counts a failure.
    std::fs::write(&file, opened.replace("require: public", "require: publik")).unwrap();
    eventually(Duration::from_secs(10), "the failed reload", || {
        (reloads(&g, "failure") == 1.0).then_some(())
    });
    assert_eq!(
        get(g.port, &h, "/open", &[]).status,
        200,
        "the last good set stays in force"
    );
    assert!(g.log().contains("billing.yaml:7:14:"), "{}", g.log());

    // An empty directory never means allow-all (nor deny-all): the last good set stays.
    std::fs::remove_file(&file).unwrap();
    eventually(
        Duration::from_secs(10),
        "the empty-directory reload",
        || (reloads(&g, "failure") == 2.0).then_some(()),
    );
    assert_eq!(get(g.port, &h, "/open", &[]).status, 200);
    assert_eq!(get(g.port, &h, "/x", &[]).status, 302);

    // SIGHUP reloads at once, even with nothing changed (the directory watch would not): the
    // still empty directory fails once more.
    g.signal("-HUP");
    eventually(Duration::from_millis(1500), "the SIGHUP reload", || {
        (reloads(&g, "failure") == 3.0).then_some(())
    });
    std::fs::write(&file, opened.replace("require: public", "require: deny")).unwrap();
    g.signal("-HUP");
    eventually(Duration::from_millis(1500), "the SIGHUP reload", || {
        (get(g.port, &h, "/open", &[]).status == 403).then_some(())
    });
    assert!(g.alive());
    // Upstream saw only the requests the policy in force allowed.
    assert!(up.seen().iter().all(|s| s.target == "/open"));
}

#[test]
fn an_invalid_policy_set_at_start_is_refused_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/a.yaml"), "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    require: aal9\n").unwrap();
    std::fs::write(dir.path().join("aalgate.yaml"), "listen: [{addr: 127.0.0.1:1}]\npublic_origin: http://localhost:1\nstore: embedded:state\npolicies: policies\n").unwrap();
    let out = Command::new(aalgate_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("aalgate.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a.yaml:6:14:") && err.contains("refusing to start"),
        "{err}"
    );
    // An empty policy directory is refused too.
    std::fs::remove_file(dir.path().join("policies/a.yaml")).unwrap();
    let out = Command::new(aalgate_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("aalgate.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy files"));
}

#[test]
fn validate_with_the_config_checks_apps_against_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let app = |name: &str, host: &str, extra: &str| {
        std::fs::write(
            dir.path().join(format!("policies/{name}.yaml")),
            format!(
                "app: {name}\nhost: {host}\nupstream: http://127.0.0.1:1\ndefault: aal2\n{extra}"
            ),
        )
        .unwrap();
    };
    app("ehr", "ehr.localhost", "listeners: [staf]\n");
    app("portal", "portal.localhost", "");
    std::fs::write(dir.path().join("aalgate.yaml"), "listen: [{addr: 127.0.0.1:1, name: staff}, {addr: 127.0.0.1:2, name: kiosk}]\npublic_origin: http://localhost:1\nstore: embedded:state\npolicies: policies\n").unwrap();
    let validate = || {
        let out = Command::new(aalgate_bin())
            .args(["validate", "--config"])
            .arg(dir.path().join("aalgate.yaml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = validate();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("ehr.yaml:1:6: app ehr: listener \"staf\""),
        "{out}"
    );
    assert!(
        out.contains("portal.yaml") && out.contains("warning"),
        "{out}"
    );
    // The gateway refuses the same set at start.
    let run = Command::new(aalgate_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("aalgate.yaml"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("staf"));
    app("ehr", "ehr.localhost", "listeners: [staff]\n");
    let (code, out) = validate();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok: ehr"), "{out}");
}

#[test]
fn graceful_upgrade_under_load_fails_no_request() {
    let up = Upstream::start();
    let mut old = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    let port = old.port;
    let h = format!("localhost:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t0 = std::time::Instant::now();
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, h) = (stop.clone(), ok.clone(), failed.clone(), h.clone());
            let failures = failures.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let sent = t0.elapsed();
                    // A refused connection (a gap in the hand-over) is a failure like any other.
                    let r = match try_get(port, &h, "/static/load.css", &[]) {
                        Ok(r) => r,
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("sent at {sent:?}: connect: {e}"));
                            }
                            continue;
                        }
                    };
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!(
                                "sent at {sent:?}, answered at {:?}: status {} body {:?}",
                                t0.elapsed(),
                                r.status,
                                r.text()
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    // Clients that connect, then take a moment to send (a browser opening a connection ahead,
    // a slow network): a connection the old process accepted just before it stops accepting
    // must still be served, not dropped unanswered.
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failed, h) = (stop.clone(), ok.clone(), failed.clone(), h.clone());
            let failures = failures.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                std::thread::sleep(Duration::from_millis(60 * i));
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let sent = t0.elapsed();
                    let mut c = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                        Ok(c) => c,
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("slow client at {sent:?}: connect: {e}"));
                            }
                            continue;
                        }
                    };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    std::thread::sleep(Duration::from_millis(250));
                    let req = format!(
                        "GET /static/slow.css HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"
                    );
                    let mut answer = Vec::new();
                    let _ = std::io::Write::write_all(&mut c, req.as_bytes());
                    let _ = std::io::Read::read_to_end(&mut c, &mut answer);
                    if answer.starts_with(b"HTTP/1.1 200") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!(
                                "slow client connected at {sent:?}, answered at {:?}: {:?}",
                                t0.elapsed(),
                                String::from_utf8_lossy(&answer[..answer.len().min(40)])
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let upgrade_at = t0.elapsed();
    let mut new = old.spawn_upgrade();
    std::thread::sleep(Duration::from_millis(500));
    let quit_at = t0.elapsed();
    old.signal("-QUIT");
    let exited = old.wait_exit(Duration::from_secs(30));
    let exit_at = t0.elapsed();
    let before = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    for w in workers.into_iter().chain(slow) {
        assert!(w.join().is_ok(), "a load thread panicked");
    }
    let after = ok.load(Ordering::Relaxed);
    let still_serving = get(port, &h, "/static/after.css", &[]).status;
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        exited,
        "the old process did not exit after SIGQUIT:\n{}",
        old.log()
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade ({after} succeeded; new process at {upgrade_at:?}, SIGQUIT at {quit_at:?}, old exited by {exit_at:?}):\n{}\n{}",
        failures.lock().map(|f| f.join("\n")).unwrap_or_default(),
        old.log()
    );
    assert!(
        after > before,
        "the new process served requests after the old one left"
    );
    assert!(
        before > 50,
        "the load ran ({before} requests before the hand-over)"
    );
    assert_eq!(still_serving, 200);
}

/// Auth events are on record before the response that reports them: a sign-out, a wrong and
/// a genuine break-glass code, each followed at once by SIGKILL (no chance to flush later).
#[test]
fn auth_events_are_written_before_their_response() {
    let up = Upstream::start();
    let policy = format!(
        "app: ehr\nhost: localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\nroutes:\n  - path: /\n    require: aal2\n    breakglass: allow\n",
        up.port
    );
    for case in ["logout", "breakglass_failure", "breakglass"] {
        let mut g = Gateway::start_extra(
            &[("ehr.yaml", &policy)],
            "audit:\n  output: file:audit.jsonl\n",
        );
        let h = format!("localhost:{}", g.port);
        let code = || {
            let out = std::process::Command::new(aalgate_tests::aalgate_bin())
                .args(["breakglass", "create", "ed", "--ttl", "10m", "--config"])
                .arg(g.dir.path().join("aalgate.yaml"))
                .output()
                .expect("aalgate breakglass create");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let status = match case {
            "logout" => {
                let store = EmbeddedStore::open(&g.state_dir()).unwrap();
                let cookie = make_session(
                    &store,
                    &format!("localhost:{}", g.port),
                    "nora",
                    Aal::Aal2,
                    60,
                    1,
                );
                drop(store);
                aalgate_tests::logout(g.port, &h, &cookie).status
            }
            _ => {
                let typed = if case == "breakglass" {
                    code()
                } else {
                    "ZZZZZZZZ".to_string() + &"A".repeat(40)
                };
                aalgate_tests::use_breakglass_code(g.port, &h, None, &typed).status
            }
        };
        // Each answered as it should be, so the event on record is the one the case causes.
        let expected = match case {
            "logout" => 200,
            "breakglass_failure" => 400,
            _ => 302,
        };
        assert_eq!(status, expected, "{case}");
        g.signal("-KILL");
        assert!(
            g.wait_exit(Duration::from_secs(10)),
            "{case}: still running"
        );
        let log = std::fs::read_to_string(g.dir.path().join("audit.jsonl")).unwrap_or_default();
        assert!(
            log.contains(&format!("\"event\":\"{case}\"")),
            "{case}: the event was lost with the process:\n{log}"
        );
    }
}

/// SIGTERM under load: every request the gateway answered has its request event on record.
#[test]
fn sigterm_drains_every_request_event() {
    let up = Upstream::start();
    let mut g = Gateway::start_extra(
        &[("billing.yaml", &policy(up.port))],
        "audit:\n  output: file:audit.jsonl\n  requests: true\n",
    );
    let port = g.port;
    let h = format!("localhost:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, h) = (stop.clone(), answered.clone(), h.clone());
            std::thread::spawn(move || {
                // Until the gateway has gone (connections refused) or the test stops.
                while !stop.load(Ordering::Relaxed) {
                    match try_get(port, &h, "/static/x.css", &[]) {
                        Ok(r) if r.status == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    g.signal("-TERM");
    assert!(
        g.wait_exit(Duration::from_secs(30)),
        "did not exit after SIGTERM"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().is_ok(), "a load thread panicked");
    }
    let log = std::fs::read_to_string(g.dir.path().join("audit.jsonl")).unwrap_or_default();
    let events = log
        .lines()
        .filter(|l| l.contains("\"event\":\"request\"") && l.contains("/static/x.css"))
        .count();
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered > 50, "the load ran ({answered})");
    assert!(
        events >= answered,
        "{answered} requests answered, {events} request events on record"
    );
}
