//! Real-browser tests: headless Chromium (Debian's) with DevTools WebAuthn virtual
//! authenticators, driven by `tests/browser/scenarios.mjs` (playwright-core), against the built
//! gateway in front of three app hosts (`ehr.`, `billing.`, `lab.localhost`) served by the
//! bundled demo app. Screenshots of every page go to `target/browser-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aalgate_tests::{aalgate_bin, free_port, Gateway};

/// The demo app as a separate process (the upstream of both app hosts).
pub(crate) struct DemoApp(Child, tempfile::NamedTempFile);

impl DemoApp {
    pub(crate) fn start(port: u16) -> DemoApp {
        let log = tempfile::NamedTempFile::new().expect("demo app log");
        let child = Command::new(aalgate_bin())
            .args(["demo-app", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("demo app log"))
            .spawn()
            .expect("start aalgate demo-app");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "demo app did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        DemoApp(child, log)
    }

    /// What the app received, by the gateway's request id: (method, path, user).
    pub(crate) fn received(&self) -> std::collections::BTreeMap<String, (String, String, String)> {
        let text = std::fs::read_to_string(self.1.path()).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(" request "))
            .filter_map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{k}=")))
                        .map(|v| v.trim_matches('"').to_string())
                };
                Some((
                    field("request_id")?,
                    (field("method")?, field("path")?, field("user")?),
                ))
            })
            .collect()
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Debian's Chromium binary (the `/usr/bin/chromium` wrapper prints a shell warning).
pub(crate) fn chromium() -> PathBuf {
    for p in ["/usr/lib/chromium/chromium", "/usr/bin/chromium"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("Chromium is missing: apt-get install -y chromium (tests/run.sh does this as root)");
}

/// `node tests/browser/<script>` against `gw`, with what every scenario reads: the binary and
/// its config, the gateway's port, the screenshot directory `out` and the browser.
pub(crate) fn scenario(script: &str, gw: &Gateway, out: &Path) -> Command {
    let mut c = Command::new("node");
    c.arg(root().join("tests/browser").join(script))
        .env("AALGATE_BIN", aalgate_bin())
        .env("AALGATE_CONFIG", gw.dir.path().join("aalgate.yaml"))
        .env("PORT", gw.port.to_string())
        .env("OUT", out)
        .env("CHROMIUM", chromium());
    c
}

#[test]
fn passkeys_and_security_keys_in_chromium() {
    let modules = root().join("tests/browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is missing: npm ci --prefix tests/browser (tests/run.sh does this)"
    );
    let upstream = free_port();
    let app = DemoApp::start(upstream);
    let ehr = [
        "app: ehr".to_string(),
        "host: ehr.localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /static/**".into(),
        "    require: public".into(),
        // A short idle limit on one page, to test tap-to-resume without waiting 30 minutes.
        "  - path: /invoices".into(),
        "    methods: [GET]".into(),
        "    require: aal2".into(),
        "    idle_timeout: 3s".into(),
        "  - path: /invoices".into(),
        "    methods: [POST]".into(),
        "    require: aal2".into(),
        "    idle_timeout: 3s".into(),
        "  - path: /admin/**".into(),
        "    require: aal3".into(),
        String::new(),
    ]
    .join("\n");
    let billing = [
        "app: billing".to_string(),
        "host: billing.localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /static/**".into(),
        "    require: public".into(),
        String::new(),
    ]
    .join("\n");
    // A third app host the browser never visits before the cross-site attack through the handoff.
    let lab = billing
        .replace("app: billing", "app: lab")
        .replace("host: billing.localhost", "host: lab.localhost");
    let ca = root().join("tests/fixtures/chromium-virtual-authenticator-ca.pem");
    let extra = format!(
        "rp_id: localhost\npreserve_body_limit: 4096\naudit:\n  output: file:audit.jsonl\nhardware_keys:\n  aaguids: [01020304-0506-0708-0102-030405060708]\n  attestation_ca: [{}]\n",
        ca.display()
    );
    let gw = Gateway::start_extra(
        &[
            ("1-ehr.yaml", &ehr),
            ("2-billing.yaml", &billing),
            ("3-lab.yaml", &lab),
        ],
        &extra,
    );
    let out = root().join("target/browser-screenshots/scenarios");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("scenarios.mjs", &gw, &out)
        .status()
        .expect("run node (apt-get install -y nodejs; tests/run.sh checks it)");
    assert!(
        status.success(),
        "browser scenarios failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    let audit = gw.log();
    assert!(!audit.contains("panicked"), "gateway panicked:\n{audit}");
    // What operators' dashboards and audit queries see: every metric series (without its
    // value) and every kind of audit event, kept beside the screenshots, so that two runs (a
    // refactor before and after) can be compared with `diff`.
    // Written by the audit thread: wait until every request the app received is on record.
    let received = app.received();
    let audit_log = aalgate_tests::eventually(
        Duration::from_secs(10),
        "an audit line for every request the app received",
        || {
            let t = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap_or_default();
            received
                .keys()
                .all(|id| t.contains(id.as_str()))
                .then_some(t)
        },
    );
    let events: std::collections::BTreeSet<String> = audit_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e.get("event").is_some())
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            format!(
                "{} decision={} detail={}",
                f("event"),
                f("decision"),
                f("detail")
            )
        })
        .collect();
    let scrape = gw.scrape();
    let series: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .filter(|s| !s.contains("_bucket{") && !s.starts_with("aalgate_policy_info"))
        .collect();
    let join = |set: Vec<&str>| set.join("\n") + "\n";
    std::fs::write(
        out.join("audit-events.txt"),
        join(events.iter().map(String::as_str).collect()),
    )
    .expect("write audit events");
    std::fs::write(
        out.join("metric-series.txt"),
        join(series.into_iter().collect()),
    )
    .expect("write metric series");
    audit_lines_are_true(&audit_log, &received);
    // Step 8: nora signs in on omar's paused page. That is nora's login, not a re-auth: the
    // last sign-in event before the discarded form names her, as a login.
    let lines: Vec<serde_json::Value> = audit_log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let discarded = lines
        .iter()
        .position(|e| e["event"] == "kept_form_discarded")
        .expect("step 8 discards omar's form");
    let signin = lines[..discarded]
        .iter()
        .rev()
        .find(|e| ["login", "reauth", "step_up"].contains(&e["event"].as_str().unwrap_or("")))
        .expect("a sign-in before the discarded form");
    assert_eq!(
        (&signin["event"], &signin["user"]),
        (&serde_json::json!("login"), &serde_json::json!("nora")),
        "{signin}"
    );
    // Step 8 switched users on one browser: the replaced session is counted and audited.
    assert!(
        events.contains("session_end decision=- detail=switch_user"),
        "{events:#?}"
    );
    assert!(
        aalgate_tests::sample(
            &scrape,
            "aalgate_session_ends_total{reason=\"switch_user\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

/// Trac 1.6 (PyPI) served by `tracd` under `/env`, in a temporary environment with anonymous
/// `TICKET_CREATE`. Its cookies are `Path=/env`, so a resumed form that lacks them is refused.
struct Tracd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tracd {
    fn start() -> Tracd {
        let python = String::from_utf8(
            Command::new("python3")
                .args(["-c", "import sys, trac; print(sys.executable)"])
                .output()
                .expect("python3")
                .stdout,
        )
        .expect("utf-8 path");
        let python = python.trim().to_string();
        assert!(
            !python.is_empty(),
            "Trac is missing: python3 -m pip install 'Trac==1.6.*' (tests/run.sh does this)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let env = dir.path().join("env");
        let admin = |args: &[&str]| {
            let out = Command::new(&python)
                .args(["-m", "trac.admin.console"])
                .arg(&env)
                .args(args)
                .output()
                .expect("trac-admin");
            assert!(
                out.status.success(),
                "trac-admin {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        admin(&["initenv", "Test", "sqlite:db/trac.db"]);
        admin(&[
            "permission",
            "add",
            "anonymous",
            "TICKET_CREATE",
            "TICKET_VIEW",
            "REPORT_VIEW",
        ]);
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "trac.web.standalone", "-b", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tracd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tracd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tracd {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Tracd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real app under a path (Trac at `/env`): a new ticket filled in, the idle limit passes,
/// submit, one tap, and exactly one ticket exists, with Trac's ticket page in the browser.
#[test]
fn trac_under_a_path_keeps_its_form_in_chromium() {
    let tracd = Tracd::start();
    let policy = [
        "app: trac".to_string(),
        "host: trac.localhost".into(),
        format!("upstream: http://127.0.0.1:{}", tracd.port),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /env/chrome/**".into(),
        "    require: public".into(),
        "  - path: /env/**".into(),
        "    require: aal2".into(),
        "    idle_timeout: 3s".into(),
        String::new(),
    ]
    .join("\n");
    let gw = Gateway::start_extra(&[("trac.yaml", &policy)], "rp_id: localhost\n");
    let out = root().join("target/browser-screenshots/trac");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("trac.mjs", &gw, &out)
        .env("TRAC", format!("http://trac.localhost:{}", gw.port))
        .env("TRAC_DIRECT", format!("http://127.0.0.1:{}", tracd.port))
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "trac scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    assert!(!gw.log().contains("panicked"));
}

/// `step_up: { per_request: true }` in Chromium (tests/browser/epcs.mjs): one ceremony per kept
/// form, sent once; a script call signed in a popup; `max_age: 1s` without a loop. Then every
/// `request_signed` event in the audit log verifies offline with `aalgate audit verify`
/// against the key's public key, and against the request as the app received it (nonce,
/// method, URL, body); the same event with another body does not.
#[test]
fn per_request_signing_in_chromium() {
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let policy = [
        "app: rx".to_string(),
        "host: rx.localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /static/**".into(),
        "    require: public".into(),
        "  - path: /invoices".into(),
        "    methods: [POST]".into(),
        "    require: aal3".into(),
        "    step_up: { per_request: true }".into(),
        "  - path: /echo/**".into(),
        "    require: aal3".into(),
        "    step_up: { per_request: true }".into(),
        "  - path: /payouts/bank-account".into(),
        "    methods: [POST]".into(),
        "    require: aal2".into(),
        "    step_up: { max_age: 1s }".into(),
        String::new(),
    ]
    .join("\n");
    let ca = root().join("tests/fixtures/chromium-virtual-authenticator-ca.pem");
    // The audit log goes to a syslog socket the scenario can take away and give back: an
    // audit sink that fails while a request is being signed.
    let logs = tempfile::tempdir().expect("tempdir");
    let log_file = logs.path().join("audit.jsonl");
    let syslog = Syslog::start(&logs.path().join("log.sock"), &log_file);
    let extra = format!(
        "rp_id: localhost\naudit:\n  output: syslog:{}\nhardware_keys:\n  aaguids: [01020304-0506-0708-0102-030405060708]\n  attestation_ca: [{}]\n",
        syslog.sock.display(),
        ca.display()
    );
    let gw = Gateway::start_extra(&[("rx.yaml", &policy)], &extra);
    let out = root().join("target/browser-screenshots/epcs");
    let _ = std::fs::remove_dir_all(&out);
    let config = gw.dir.path().join("aalgate.yaml");
    let status = scenario("epcs.mjs", &gw, &out)
        .env("SYSLOG", &syslog.sock)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "epcs scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    drop(syslog);
    // What was lost while the socket was away is counted, never silent.
    let dropped = aalgate_tests::sample(&gw.scrape(), "aalgate_audit_dropped_total").unwrap_or(0.0);
    assert!(
        dropped >= 1.0,
        "events lost in the outage are counted ({dropped})"
    );
    let signed = std::fs::read_to_string(&log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"event\":\"request_signed\""))
        .count();
    assert_eq!(
        signed, 6,
        "one request_signed event per signed request, none for the refused signature"
    );
    let admitted = std::fs::read_to_string(&log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"event\":\"request_admitted\""))
        .count();
    assert_eq!(
        admitted, 5,
        "each signed request admitted once; the tampered retry never was"
    );
    let verify = |args: &[&str]| {
        let o = Command::new(aalgate_bin())
            .args(["audit", "--config"])
            .arg(&config)
            .arg("verify")
            .arg(&log_file)
            .args(args)
            .output()
            .expect("aalgate audit verify");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (ok, text) = verify(&[]);
    assert!(!ok && text.contains("--digest"), "{text}");
    for name in ["signed-form.json", "signed-xhr.json"] {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(name)).expect("scenario output"))
                .expect("json");
        let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
        // `=`: a base64url value may start with `-`.
        let (ok, text) = verify(&[&format!("--digest={}", s("digest"))]);
        assert!(ok && text.starts_with("ok: POST /echo/"), "{name}: {text}");
        // With --config the config's RP id is used: another one is refused, never ignored.
        let (ok, text) = verify(&[
            &format!("--digest={}", s("digest")),
            "--rp-id",
            "evil.example",
        ]);
        assert!(!ok && text.contains("without --config"), "{name}: {text}");
        let body = out.join(format!("{name}.body"));
        let mut args = vec![
            format!("--digest={}", s("digest")),
            format!("--nonce={}", s("nonce")),
            "--host".into(),
            format!("rx.localhost:{}", gw.port),
            "--method".into(),
            s("method"),
            "--url".into(),
            s("url"),
        ];
        if j.get("body").is_some() {
            std::fs::write(&body, s("body")).expect("write body");
            args.extend(["--body".into(), body.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, text) = verify(&args);
        assert!(ok && text.contains("hashes to it"), "{name}: {text}");
        if j.get("body").is_some() {
            // The app's record of another body does not match what the key signed.
            std::fs::write(&body, format!("{} ", s("body"))).expect("write body");
            let (ok, text) = verify(&args);
            assert!(!ok && text.contains("does not hash"), "{name}: {text}");
        }
    }
    assert!(!gw.log().contains("panicked"));
}

/// A syslog socket (`audit: output: syslog:<sock>`) whose lines go to a file, as a log
/// collector would. A scenario takes it away by deleting `sock` (the gateway's sends then
/// fail) and gets it back by creating `<sock>.restore`.
struct Syslog {
    sock: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    fn start(sock: &Path, file: &Path) -> Syslog {
        use std::io::Write;
        use std::os::unix::net::UnixDatagram;
        use std::sync::atomic::Ordering;
        let bind = |p: &Path| {
            let s = UnixDatagram::bind(p).expect("bind the syslog socket");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            s
        };
        let mut s = bind(sock);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sock, file, halt) = (sock.to_path_buf(), file.to_path_buf(), stop.clone());
        let path = sock.clone();
        let thread = std::thread::spawn(move || {
            let mut out = std::fs::File::create(&file).expect("audit file");
            let restore = PathBuf::from(format!("{}.restore", path.display()));
            let mut buf = vec![0u8; 1 << 17];
            while !halt.load(Ordering::Relaxed) {
                if restore.exists() && !path.exists() {
                    s = bind(&path);
                    let _ = std::fs::remove_file(&restore);
                }
                if let Ok(n) = s.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    // `<86>aalgate[pid]: {json}`: the JSON line, as a collector stores it.
                    let json = line.split_once("]: ").map_or(&*line, |(_, j)| j);
                    writeln!(out, "{json}").expect("write audit file");
                }
            }
        });
        Syslog {
            sock,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An attacker who knows a user name cannot lock that person out (tests/browser/lockout.mjs):
/// A person the EHR's `allow` does not name gets the 403 page after signing in (no loop, no
/// ceremony), and a colleague in `clinical` takes over with "Sign in as someone else"
/// (tests/browser/forbidden.mjs; screenshots in target/browser-screenshots/forbidden).
#[test]
fn a_person_without_access_sees_the_403_page_and_can_switch_in_chromium() {
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let ehr = format!(
        "app: ehr\ndisplay_name: Legacy EHR\nallow: {{ groups: [clinical] }}\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\n"
    );
    let gw = Gateway::start_extra(&[("ehr.yaml", &ehr)], "rp_id: localhost\n");
    let out = root().join("target/browser-screenshots/forbidden");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("forbidden.mjs", &gw, &out)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "forbidden scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    assert!(!gw.log().contains("panicked"));
}

/// The session store hangs during the tap that would send a kept form
/// (tests/browser/unavailable.mjs, on a real Redis frozen with SIGSTOP): the page says the form
/// is still kept and offers "Try again", which runs the ceremony again; the form reaches the
/// app exactly once when Redis answers.
#[test]
fn a_store_failure_during_the_tap_keeps_the_form_in_chromium() {
    let upstream = free_port();
    let app = DemoApp::start(upstream);
    let redis = aalgate_tests::Redis::start();
    let ehr = format!(
        "app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\nroutes:\n  - path: /invoices\n    methods: [POST]\n    require: aal2\n    idle_timeout: 3s\n"
    );
    let gw =
        Gateway::start_with_store_extra(&redis.url(), &[("ehr.yaml", &ehr)], "rp_id: localhost\n");
    let out = root().join("target/browser-screenshots/unavailable");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("unavailable.mjs", &gw, &out)
        .env("REDIS_PID", redis.pid().expect("redis runs").to_string())
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "store-failure scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    assert!(!gw.log().contains("panicked"));
    let posts: Vec<_> = app
        .received()
        .into_values()
        .filter(|(m, p, _)| m == "POST" && p == "/invoices")
        .collect();
    assert_eq!(posts.len(), 1, "the app received the form once: {posts:?}");
    assert_eq!(posts[0].2, "nora");
}

/// 120 forged assertions for the person's real credential from twelve browsers on the same
/// address, then the person's genuine passkey in Chromium signs in at once.
#[test]
fn a_known_user_name_cannot_lock_its_person_out_in_chromium() {
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let ehr = format!(
        "app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\n"
    );
    let gw = Gateway::start_extra(&[("ehr.yaml", &ehr)], "rp_id: localhost\n");
    let out = root().join("target/browser-screenshots/lockout");
    let _ = std::fs::remove_dir_all(&out);
    let status = scenario("lockout.mjs", &gw, &out)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "lockout scenario failed ({status}); screenshots in {}; gateway log:\n{}",
        out.display(),
        gw.log()
    );
    assert!(!gw.log().contains("panicked"));
}

/// A session record lives as long as the loosest app allows at its level, and each app's own
/// limit decides admission: a real sign-in in Chromium, then the gateway's clock (libfaketime)
/// moves on in 50-minute steps, each with a request (AAL2 idle limits stay met), to 13 h 20.
/// The app that allows 20 h still admits the session all the way; then the one with the
/// default 12 h does not (and its re-auth, as any, ends the session for every app).
#[test]
fn a_session_lives_as_long_as_the_loosest_app_allows() {
    const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime missing: apt-get install -y faketime (tests/run.sh does)"
    );
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let app = |name: &str, extra: &str| {
        format!("app: {name}\nhost: {name}.localhost\nupstream: http://127.0.0.1:{upstream}\ndefault: aal2\n{extra}")
    };
    let clock = tempfile::NamedTempFile::new().expect("clock file");
    std::fs::write(clock.path(), "+0").expect("clock");
    let clock_path = clock.path().display().to_string();
    let gw = Gateway::start_env(
        &[
            (
                "long.yaml",
                &app(
                    "long",
                    "timeouts:\n  aal2: { max_session_age: 20h, idle_timeout: 1h }\n",
                ),
            ),
            (
                "short.yaml",
                &app("short", "timeouts:\n  aal2: { idle_timeout: 1h }\n"),
            ),
        ],
        "rp_id: localhost\n",
        &[
            ("LD_PRELOAD", FAKETIME_LIB),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let out = root().join("target/browser-screenshots/enroll");
    let run = scenario("enroll.mjs", &gw, &out)
        .env("APPS", "long.localhost,short.localhost")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "enrollment failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&run.stderr),
        gw.log()
    );
    let cookie = |host: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("COOKIE {host} ")))
            .unwrap_or_else(|| panic!("no cookie for {host}:\n{stdout}"))
            .to_string()
    };
    let (long, short) = (cookie("long.localhost"), cookie("short.localhost"));
    let status = |host: &str, c: &str| {
        aalgate_tests::get(
            gw.port,
            &format!("{host}:{}", gw.port),
            "/",
            &[&format!("Cookie: aalgate={c}")],
        )
        .status
    };
    for step in 1..=16u64 {
        let offset = step * 50 * 60;
        std::fs::write(clock.path(), format!("+{offset}")).expect("clock");
        // The gateway trusts a session for 1 s before it reads it again.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            status("long.localhost", &long),
            200,
            "the 20 h app refused the session {}h{:02} after sign-in",
            offset / 3600,
            offset % 3600 / 60
        );
        if step == 14 {
            // 11 h 40: the 12 h app still admits it too.
            assert_eq!(
                status("short.localhost", &short),
                200,
                "the 12 h app at 11h40"
            );
        }
    }
    assert_eq!(
        status("short.localhost", &short),
        302,
        "the 12 h app at 13h20"
    );
    assert!(!gw.log().contains("panicked"));
}

/// Every audit line of a whole scenario, checked the way an auditor reads them (HIPAA
/// 164.312(b): every line must be true):
/// - each has the fields the README promises for its kind;
/// - each request the app received has a line with the app's method, path and person;
/// - a line about a known person's request that was not let through names them;
/// - the run holds a replayed form, a step-up and a switch of user, so an empty or a short
///   log cannot pass.
fn audit_lines_are_true(
    log: &str,
    received: &std::collections::BTreeMap<String, (String, String, String)>,
) {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let s = |e: &serde_json::Value, k: &str| e[k].as_str().map(str::to_string);
    let mut by_id = std::collections::BTreeMap::new();
    for e in &lines {
        let time = s(e, "time").unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(&time).is_ok() && time.ends_with('Z'),
            "time: {e}"
        );
        let event = s(e, "event").unwrap_or_else(|| panic!("no event: {e}"));
        match event.as_str() {
            "request" => {
                for k in ["request_id", "method", "decision", "client_ip"] {
                    assert!(s(e, k).is_some(), "request line without {k}: {e}");
                }
                assert!(e["status"].is_u64(), "request line without status: {e}");
                by_id.insert(s(e, "request_id").unwrap_or_default(), e);
                // Sent to step up: a live session's person, named. Sent to sign in again: the
                // session ended, so whose it was is `prior_user`, never `user`.
                match s(e, "decision").unwrap_or_default().as_str() {
                    "step_up" => assert!(s(e, "user").is_some() && e["aal"].is_u64(), "{e}"),
                    "reauth" => {
                        assert!(
                            s(e, "user").is_none() && s(e, "prior_user").is_some(),
                            "{e}"
                        )
                    }
                    _ => {}
                }
            }
            "login" | "reauth" | "step_up" | "enroll" => {
                for k in ["request_id", "user", "credential"] {
                    assert!(s(e, k).is_some(), "{event} without {k}: {e}");
                }
                assert!(e["aal"].is_u64(), "{event} without aal: {e}");
            }
            "session_end" | "logout" => assert!(s(e, "user").is_some(), "{e}"),
            _ => {}
        }
    }
    assert!(!received.is_empty(), "the app received nothing");
    for (id, (method, path, user)) in received {
        let e = by_id.get(id).unwrap_or_else(|| {
            panic!("the app received {method} {path} ({id}) with no audit line")
        });
        assert_eq!(s(e, "method").as_deref(), Some(method.as_str()), "{e}");
        let logged = s(e, "path").unwrap_or_default();
        assert!(
            logged == *path || logged.contains("{redacted}"),
            "{path} logged as {logged}: {e}"
        );
        let who = if user == "(nobody)" {
            None
        } else {
            Some(user.clone())
        };
        assert_eq!(s(e, "user"), who, "the person the app saw: {e}");
    }
    let has = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().any(f);
    assert!(
        has(&|e| e["decision"] == "resumed"),
        "no replayed form in the run"
    );
    assert!(has(&|e| e["event"] == "step_up"), "no step-up in the run");
    assert!(
        has(&|e| e["event"] == "session_end" && e["detail"] == "switch_user"),
        "no switch of user in the run"
    );
}
