//! The TLS listener and the `demo` command, as a user starts them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use aalgate_tests::{aalgate_bin, free_port, get, Gateway, Upstream};

use crate::{make_session, policy};

fn curl(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--max-time",
        "5",
        "--resolve",
    ])
    .arg(format!("localhost:{port}:127.0.0.1"))
    .arg(format!("https://localhost:{port}{path}"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("run curl (apt-get install -y curl)");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[test]
fn tls_listener_uses_host_prefixed_cookie_and_hsts() {
    let up = Upstream::start();
    let g = Gateway::start_tls(&[("billing.yaml", &policy(up.port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "ivan",
        Aal::Aal2,
        60,
        1,
    );
    let (status, head) = curl(g.port, "/x", &[&format!("Cookie: __Host-aalgate={cookie}")]);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("strict-transport-security: max-age="),
        "{head}"
    );
    let seen = up.seen();
    assert_eq!(seen[0].one("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[0].one("x-aalgate-user"), Some("ivan"));
    // The unprefixed plain-HTTP name is not accepted over TLS.
    let (status, head) = curl(g.port, "/x", &[&format!("Cookie: aalgate={cookie}")]);
    assert_eq!(status, 302, "{head}");
    assert!(
        head.contains("strict-transport-security"),
        "gateway pages carry HSTS too"
    );
    assert_eq!(up.seen().len(), 1);
}

/// Behind a TLS-terminating load balancer (a plain listener, `insecure_http`, an https
/// `public_origin`) the browser is on https: cookies are `Secure` and `__Host-`, HSTS is sent
/// (unless `hsts: false` leaves it to the load balancer), and the upstream hears `https`.
#[test]
fn behind_a_tls_load_balancer_cookies_are_secure_and_host_prefixed() {
    let up = Upstream::start();
    for (extra, hsts) in [("", true), ("hsts: false\n", false)] {
        let g = Gateway::start_behind_tls_lb(&[("billing.yaml", &policy(up.port))], extra);
        // The browser's https://localhost (port 443) arrives with a Host header without a port.
        let page = get(g.port, "localhost", "/.aalgate/logout", &[]);
        assert_eq!(page.status, 200, "{}", page.text());
        let set = page.all("set-cookie").join(" | ");
        assert!(
            set.starts_with("__Host-aalgate-bind=")
                && set.contains("Secure")
                && set.contains("HttpOnly"),
            "{extra}: {set}"
        );
        assert_eq!(
            page.header("strict-transport-security").is_some(),
            hsts,
            "{extra}"
        );
        let store = EmbeddedStore::open(&g.state_dir()).unwrap();
        let cookie = make_session(&store, "localhost", "ivan", Aal::Aal2, 60, 1);
        let r = get(
            g.port,
            "localhost",
            "/x",
            &[&format!("Cookie: __Host-aalgate={cookie}")],
        );
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
        assert_eq!(
            r.header("strict-transport-security").is_some(),
            hsts,
            "{extra}"
        );
        // The plain name, which a browser would also send over http, is not accepted.
        let r = get(
            g.port,
            "localhost",
            "/x",
            &[&format!("Cookie: aalgate={cookie}")],
        );
        assert_eq!(r.status, 302, "{extra}");
        let seen = up.take();
        assert_eq!(seen.len(), 1, "{extra}");
        assert_eq!(seen[0].one("x-forwarded-proto"), Some("https"), "{extra}");
    }
}

#[test]
fn demo_command_serves_the_bundled_app() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, app) = (free_port(), free_port(), free_port());
    let demo = std::fs::read_to_string(aalgate_tests::workspace().join("policies/demo.yaml"))
        .unwrap()
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{app}"));
    let pfile = dir.path().join("demo.yaml");
    std::fs::write(&pfile, demo).unwrap();
    let mut child = Command::new(aalgate_bin())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--upstream-listen",
            &format!("127.0.0.1:{app}"),
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--policies")
        .arg(&pfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aalgate demo");
    let h = format!("localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let css = get(port, &h, "/static/style.css", &[]);
    let home = get(port, &h, "/", &[]);
    let debug = get(port, &h, "/debug/", &[]);
    let ready = get(admin, &format!("127.0.0.1:{admin}"), "/readyz", &[]);
    // A signed-in session through the embedded store the demo uses.
    let store = EmbeddedStore::open(&dir.path().join("state")).unwrap();
    let cookie = make_session(&store, &h, "demo-user", Aal::Aal2, 60, 1);
    let signed_in = get(
        port,
        &h,
        "/invoices",
        &[&format!("Cookie: aalgate={cookie}")],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(css.status, 200);
    assert_eq!(home.status, 302);
    assert_eq!(debug.status, 403);
    assert_eq!(ready.status, 200);
    assert_eq!(signed_in.status, 200);
    assert!(
        signed_in.text().contains("signed in as demo-user"),
        "{}",
        signed_in.text()
    );
}

/// `demo --virtual-authenticators` trusts DevTools' virtual security key with one flag, from
/// any directory: the enrollment page then offers a hardware key. Off loopback it refuses to
/// start (the key's attestation key is public).
#[test]
fn demo_trusts_the_virtual_key_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(aalgate_bin())
        .current_dir(dir.path())
        .args(["demo", "--virtual-authenticators", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("loopback"),
        "{err}"
    );
    let (port, admin, app) = (free_port(), free_port(), free_port());
    let demo = std::fs::read_to_string(aalgate_tests::workspace().join("policies/demo.yaml"))
        .unwrap()
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{app}"));
    let pfile = dir.path().join("demo.yaml");
    std::fs::write(&pfile, demo).unwrap();
    let mut child = Command::new(aalgate_bin())
        .current_dir(dir.path())
        .args([
            "demo",
            "--virtual-authenticators",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--upstream-listen",
            &format!("127.0.0.1:{app}"),
            "--policies",
        ])
        .arg(&pfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aalgate demo");
    let h = format!("localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let invite = Command::new(aalgate_bin())
        .current_dir(dir.path())
        .args(["users", "invite", "nora", "--aal", "3"])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&invite.stdout).trim().to_string();
    let page = url
        .find("/.aalgate")
        .map(|i| get(port, &h, &url[i..], &[]).text());
    let _ = child.kill();
    let _ = child.wait();
    let page = page.unwrap_or_else(|| {
        panic!(
            "no invite link: {}",
            String::from_utf8_lossy(&invite.stderr)
        )
    });
    assert!(
        page.contains("Register a hardware security key") && !page.contains("none is approved"),
        "{page}"
    );
}
