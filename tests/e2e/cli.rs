//! The CLI that IT uses on policy files.

use std::process::Command;

use aalgate_tests::{aalgate_bin, workspace};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(aalgate_bin())
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run aalgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_accepts_the_shipped_policies() {
    let (code, out) = run(&["validate", "policies/examples", "policies/demo.yaml"]);
    assert_eq!(code, 0, "{out}");
    for app in ["billing", "ehr", "portal-admin", "epcs", "demo-billing"] {
        assert!(out.contains(&format!("ok: {app} (")), "{out}");
    }
}

#[test]
fn validate_reports_every_problem_with_position_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    require: aal2\n    idel_timeout: 5m\n").unwrap();
    std::fs::write(dir.path().join("b.yaml"), "app: b\nhost: b.example\nupstream: http://127.0.0.1:1\ntimeouts:\n  aal2: { idle_timeout: 2h }\n").unwrap();
    let (code, out) = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let a = format!("{}:7:5: ", dir.path().join("a.yaml").display());
    let b = format!("{}:5:25: ", dir.path().join("b.yaml").display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&a) && l.contains("idel_timeout") && l.contains("; ")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&b)
            && l.contains("ceiling")
            && l.contains("exceed_nist_ceilings")),
        "{out}"
    );
}

#[test]
fn explain_names_the_rule_and_the_decision() {
    let (code, out) = run(&[
        "explain",
        "--policies",
        "policies/examples",
        "--method",
        "POST",
        "--url",
        "https://billing.clinic.example/payouts/./bank-account",
        "--aal",
        "3",
        "--auth-age",
        "10m",
        "--idle",
        "1m",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("billing.yaml:18:5"), "{out}");
    assert!(out.contains("decision: step_up"), "{out}");
    assert!(
        out.contains("allow:    app: users [none], groups [billing]: not checked"),
        "{out}"
    );
    // Who may: by group, checked when the person is described.
    let signer = |groups: &str| {
        run(&[
            "explain",
            "--policies",
            "policies/examples",
            "--method",
            "POST",
            "--url",
            "https://rx.clinic.example/prescriptions/9/sign",
            "--aal",
            "3",
            "--user",
            "pat",
            "--groups",
            groups,
        ])
        .1
    };
    let out = signer("prescribers,epcs-signers");
    assert!(
        out.contains("person:   pat, groups: prescribers, epcs-signers")
            && out.contains("route: users [none], groups [epcs-signers]: admits them through group epcs-signers")
            && out.contains("decision: step_up: this request needs its own aal3 ceremony"),
        "{out}"
    );
    let out = signer("prescribers");
    assert!(
        out.contains("does not admit them") && out.contains("decision: forbidden: 403"),
        "{out}"
    );
    let (_, out) = run(&[
        "explain",
        "--policies",
        "policies/examples",
        "--url",
        "https://billing.clinic.example/invoices",
        "--aal",
        "2",
        "--idle",
        "31m",
    ]);
    assert!(
        out.contains("decision: reauth") && out.contains("idle"),
        "{out}"
    );
    // Break-glass is part of the same decision: a chart opens, an export does not.
    for (path, want) in [
        (
            "/patients/7/chart/notes",
            "decision: allow: forwarded upstream under break-glass",
        ),
        ("/patients/7/export", "decision: breakglass_not_allowed"),
    ] {
        let (code, out) = run(&[
            "explain",
            "--policies",
            "policies/examples",
            "--url",
            &format!("https://ehr.clinic.example{path}"),
            "--aal",
            "1",
            "--breakglass",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(want), "{path}: {out}");
    }
    let (_, out) = run(&[
        "explain",
        "--policies",
        "policies/examples",
        "--url",
        "https://unknown.example/",
    ]);
    assert!(out.contains("421"), "{out}");
    let (code, out) = run(&[
        "explain",
        "--policies",
        "policies/examples",
        "--url",
        "https://billing.clinic.example/a%2Fb",
    ]);
    assert!(code != 0 && out.contains("400"), "{out}");
}

/// `aalgate users` from a directory where no demo runs creates nothing: it says where the
/// demo's state is looked for and how to name it, and with `--state-dir` it finds it.
#[test]
fn the_cli_never_creates_a_store_by_accident() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(aalgate_bin())
        .current_dir(elsewhere.path())
        .args(["users", "invite", "nora"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--state-dir") && err.contains("--config"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing created"
    );
    let out = Command::new(aalgate_bin())
        .current_dir(elsewhere.path())
        .args(["breakglass", "create", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // A running demo's state, named from anywhere.
    let up = aalgate_tests::Upstream::start();
    let g = aalgate_tests::Gateway::start(None, &[("billing.yaml", &crate::policy(up.port))]);
    let out = Command::new(aalgate_bin())
        .current_dir(elsewhere.path())
        .args(["users", "--state-dir"])
        .arg(g.state_dir())
        .arg("list")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
