//! deploy/: alert rules and their unit tests (promtool), the Grafana dashboard and the alerts only
//! use metrics the gateway exports, and the compose, systemd and Redis files say what they must.

use std::collections::BTreeSet;
use std::process::Command;

use aalgate_tests::{get, promtool, workspace, Gateway, Upstream};

use crate::policy;

fn run_promtool(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(workspace().join("deploy/prometheus"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    run_promtool(&["check", "config", "prometheus.yml"]);
    run_promtool(&["check", "rules", "alerts.yml"]);
    run_promtool(&["test", "rules", "alerts_test.yml"]);
    // One unit test per alert.
    let rules = std::fs::read_to_string(workspace().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(workspace().join("deploy/prometheus/alerts_test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no promtool unit test"
        );
    }
}

/// `aalgate_*` metric families named in a text, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("aalgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let up = Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &policy(up.port))]);
    // Labelled families appear with their first event: a forwarded request and a step-up.
    let store = aalgate_session::EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = crate::make_session(
        &store,
        &format!("localhost:{}", g.port),
        "olga",
        aalgate_policy::Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    assert_eq!(get(g.port, &h, "/static/a.css", &[]).status, 200);
    assert_eq!(
        get(
            g.port,
            &h,
            "/pay/x",
            &[&format!("Cookie: aalgate={cookie}")]
        )
        .status,
        302
    );
    let scrape = get(
        g.admin_port,
        &format!("127.0.0.1:{}", g.admin_port),
        "/metrics",
        &[],
    )
    .text();
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();

    let dash_text =
        std::fs::read_to_string(workspace().join("deploy/grafana/aalgate.json")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&dash_text).expect("dashboard is valid JSON");
    assert_eq!(dash["uid"], "aalgate");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel without title: {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some() && p["gridPos"]["h"].as_u64().is_some());
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard uses metrics the gateway does not export: {missing:?}"
    );
    for headline in [
        "aalgate_session_ends_total",
        "aalgate_sessions_active",
        "aalgate_step_ups_total",
        "aalgate_ceremony_duration_seconds",
        "aalgate_store_up",
        "aalgate_policy_reloads_total",
    ] {
        assert!(
            used.contains(headline),
            "dashboard lacks a panel on {headline}"
        );
    }
    let rules = std::fs::read_to_string(workspace().join("deploy/prometheus/alerts.yml")).unwrap();
    let missing: Vec<_> = metric_names(&rules)
        .into_iter()
        .filter(|m| !exported.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "alert rules use metrics the gateway does not export: {missing:?}"
    );
}

#[test]
fn compose_systemd_and_redis_files_are_complete() {
    let compose_text = std::fs::read_to_string(workspace().join("deploy/compose.yaml")).unwrap();
    let compose: serde_json::Value =
        serde_saphyr::from_str(&compose_text).expect("compose.yaml is valid YAML");
    for service in ["gateway", "redis", "prometheus", "grafana", "demo"] {
        assert!(
            compose["services"][service].is_object(),
            "compose.yaml lacks service {service}"
        );
    }
    // Every file the compose stack mounts exists in the repository.
    for v in compose["services"].as_object().unwrap().values() {
        for m in v["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str())
        {
            if let Some(src) = m.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    workspace().join("deploy").join(src).exists(),
                    "compose mounts missing {src}"
                );
            }
        }
    }
    let redis = std::fs::read_to_string(workspace().join("deploy/redis.conf")).unwrap();
    assert!(redis.contains("appendonly yes") && redis.contains("maxmemory-policy noeviction"));
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/aalgate.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=aalgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "systemd unit lacks {directive}"
        );
    }
    // The compose policies pass validation.
    let out = Command::new(aalgate_tests::aalgate_bin())
        .arg("validate")
        .arg(workspace().join("deploy/examples/compose-policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
