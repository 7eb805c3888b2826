//! Redis over TLS with an ACL user: a real `redis-server` with `tls-port`, `user default off`
//! and a user of its own; certificates made by `openssl` (IP SAN, as Sentinel announces IPs).
//! The right CA and password work; a wrong password or a wrong CA fails closed (503) and says
//! why in the log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::{RedisConfig, RedisStore, RedisTls};
use aalgate_tests::{eventually, free_port, get, redis_server_bin, Gateway, Upstream};

use crate::{make_session, policy};

fn openssl(args: &[&str], dir: &Path) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(ok.success(), "openssl {args:?}");
}

/// A CA, and a server certificate for 127.0.0.1 it signed. Returns (ca, cert, key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}-srv.pem"),
        format!("{name}-srv.key"),
        format!("{name}-srv.csr"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "1", "-subj", "/CN=test redis CA"];
    a.extend(ec);
    a.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(&a, dir);
    let mut a = vec!["req", "-subj", "/CN=127.0.0.1"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(&a, dir);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            &cert,
        ],
        dir,
    );
    (dir.join(ca), dir.join(cert), dir.join(key))
}

struct TlsRedis(Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn redis_over_tls_with_an_acl_user_works_and_a_wrong_password_or_ca_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = certificates(d, "good");
    let (other_ca, _, _) = certificates(d, "other");
    let port = free_port();
    let child = Command::new(redis_server_bin())
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .args(["--user", "default", "off"])
        .args([
            "--user",
            "aalgate",
            "on",
            ">right-horse-battery",
            "~aalgate:*",
            "&*",
            "+@all",
        ])
        .arg("--dir")
        .arg(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server with TLS");
    let _redis = TlsRedis(child);
    eventually(Duration::from_secs(10), "redis listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    std::fs::write(d.join("right.pw"), "right-horse-battery\n").unwrap();
    std::fs::write(d.join("wrong.pw"), "wrong-horse\n").unwrap();
    let section = |pw: &str, ca: &Path| {
        format!(
            "{{url: rediss://127.0.0.1:{port}/0, username: aalgate, password_file: {}, tls: {{ca: {}}}}}",
            d.join(pw).display(),
            ca.display()
        )
    };
    let up = Upstream::start();
    let g = Gateway::start(
        Some(&section("right.pw", &ca)),
        &[("billing.yaml", &policy(up.port))],
    );
    let host = format!("localhost:{}", g.port);
    let mut cfg = RedisConfig::url(
        &format!("rediss://127.0.0.1:{port}/0"),
        Duration::from_secs(2),
    );
    cfg.username = Some("aalgate".into());
    cfg.password = Some("right-horse-battery".into());
    cfg.tls = Some(RedisTls {
        ca: std::fs::read(&ca).unwrap(),
        client: None,
    });
    let cookie = make_session(
        &RedisStore::with_config(&cfg).unwrap(),
        &host,
        "sam",
        Aal::Aal2,
        60,
        1,
    );
    let c = format!("Cookie: aalgate={cookie}");
    assert_eq!(get(g.port, &host, "/x", &[&c]).status, 200);
    assert!(
        !g.log().contains("right-horse-battery"),
        "the password is never logged"
    );

    for (pw, ca, says) in [
        ("wrong.pw", ca.as_path(), "authentication failed"),
        ("right.pw", other_ca.as_path(), "certificate"),
    ] {
        let bad = Gateway::start(
            Some(&section(pw, ca)),
            &[("billing.yaml", &policy(up.port))],
        );
        let r = get(bad.port, &format!("localhost:{}", bad.port), "/x", &[&c]);
        assert_eq!(r.status, 503, "{pw}: fails closed");
        assert_eq!(r.header("retry-after"), Some("5"));
        let t0 = std::time::Instant::now();
        while !(bad.log().contains("could not be reached") && bad.log().contains(says)) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{pw}: the log does not say why ({says}):\n{}",
                bad.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!bad.log().contains("horse"), "no password in the log");
    }
    assert_eq!(
        up.seen().len(),
        1,
        "only the request of the working gateway passed"
    );
}
