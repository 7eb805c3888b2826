//! Break-glass end to end, with the session store (Redis) down: the CLI creates a sealed code,
//! a browser uses it, a test webhook receives the alert (generic words only), the upstream sees
//! the flag, the local audit file and the metric record it, and the report and review close it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use aalgate_tests::{aalgate_bin, free_port, get, sample, Gateway, Redis};

use crate::browser::{chromium, root, DemoApp};

/// Accepts one HTTP request and answers 204; sends back the raw request.
fn webhook() -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        }
    });
    (port, rx)
}

fn cli(g: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(aalgate_bin())
        .args(args)
        .arg("--config")
        .arg(g.dir.path().join("aalgate.yaml"))
        .output()
        .expect("run aalgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn breakglass_works_with_redis_down_and_is_loud() {
    let mut redis = Redis::start();
    let upstream = free_port();
    let _app = DemoApp::start(upstream);
    let (hook_port, hook) = webhook();
    let ehr = [
        "app: ehr".to_string(),
        "host: ehr.localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /".into(),
        "    require: aal2".into(),
        "    breakglass: allow".into(),
        "  - path: /echo/**".into(),
        "    require: aal2".into(),
        "    breakglass: allow".into(),
        "  - path: /admin/**".into(),
        "    require: aal3".into(),
        String::new(),
    ]
    .join("\n");
    let extra = format!("breakglass:\n  webhook: http://127.0.0.1:{hook_port}/hooks/aalgate\n");
    let g = Gateway::start_with_store_extra(&redis.url(), &[("ehr.yaml", &ehr)], &extra);

    let (code, secret, err) = cli(
        &g,
        &["breakglass", "create", "ed-charge-nurse", "--ttl", "10m"],
    );
    assert_eq!(code, 0, "{err}");
    let secret = secret.trim().to_string();
    assert_eq!(secret.replace('-', "").len(), 48, "{secret}");
    assert!(err.contains("shown only now"), "{err}");
    let file = std::fs::read_to_string(g.state_dir().join("breakglass.json")).unwrap();
    assert!(!file.contains(&secret.replace('-', "")[8..]) && file.contains("$argon2id$"));

    // Redis goes away: normal sign-in fails closed, break-glass still works.
    redis.stop();
    let out = root().join("target/browser-screenshots/breakglass");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("node")
        .arg(root().join("tests/browser/breakglass.mjs"))
        .env("PORT", g.port.to_string())
        .env("OUT", &out)
        .env("CHROMIUM", chromium())
        .env("CODE", &secret)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "break-glass browser steps failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&run.stderr),
        g.log()
    );

    // The upstream saw the flag, in a header and in the signed assertion.
    let echo = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ECHO "))
        .expect("echo line");
    let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
    let headers = &echo["headers"];
    let id = headers["x-aalgate-breakglass"]
        .as_str()
        .expect("break-glass header")
        .to_string();
    assert_eq!(headers["x-aalgate-user"], format!("breakglass:{id}"));
    let jwt = headers["x-aalgate-assertion"].as_str().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["breakglass"], true);
    assert_eq!(claims["amr"], serde_json::json!(["breakglass"]));

    // The alert: generic words, the app's name, no path or patient detail.
    let alert = hook
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");
    assert!(alert.starts_with("POST /hooks/aalgate HTTP/1.1"), "{alert}");
    let body = &alert[alert.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["event"], "breakglass_used");
    assert_eq!(v["app"], "ehr");
    for secret_word in ["Ada", "Cardiac", "bay 4", "/admin", "/echo", &secret] {
        assert!(
            !body.contains(secret_word),
            "alert leaks {secret_word}: {body}"
        );
    }

    // The local audit trail (written before the session started) and the metric.
    let audit = std::fs::read_to_string(g.state_dir().join("breakglass-audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["event"] == "breakglass"
        && l["person"] == "Dr. Ada Example"
        && l["code"] == id.as_str()));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "breakglass_failure")
            .count(),
        2,
        "{audit}"
    );
    let metrics = get(
        g.admin_port,
        &format!("127.0.0.1:{}", g.admin_port),
        "/metrics",
        &[],
    )
    .text();
    assert_eq!(sample(&metrics, "aalgate_breakglass_uses_total"), Some(1.0));

    // The monthly review: listed, reviewed, listed as reviewed.
    let (code, report, err) = cli(&g, &["report", "breakglass", "--since", "1d"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        report.contains(&id) && report.contains("Dr. Ada Example") && report.contains("review due"),
        "{report}"
    );
    let (code, _, err) = cli(
        &g,
        &[
            "breakglass",
            "review",
            &id,
            "--note",
            "confirmed with ED lead; badge reader fixed",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_, report, _) = cli(&g, &["report", "breakglass", "--format", "json"]);
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(r["uses"][0]["reviewed"], true);
    assert!(!g.log().contains("panicked"));
}
