//! Loading and validating policy files: every error names file:line:column and a fix.

use std::path::PathBuf;

use aalgate_policy::{
    load_from_strs, normalize_target, Diagnostic, HostPort, PolicySet, Requirement, Severity,
};

fn load(files: &[(&str, &str)]) -> Result<PolicySet, Vec<Diagnostic>> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    load_from_strs(&sources)
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match load(files) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.to_string())
            .collect(),
    }
}

const BILLING: &str = "\
app: billing
host: billing.clinic.example
upstream: http://127.0.0.1:9000
default: aal2
routes:
  - path: /static/**
    require: public
  - path: /payouts/bank-account
    methods: [POST, PUT]
    require: aal3
    step_up: { max_age: 5m }
  - path: /payouts/bank-account
    require: aal2
  - path: /admin/**
    require: aal3
    idle_timeout: 10m
  - path: /admin/*/audit
    require: deny
";

fn rule_for(set: &PolicySet, host: &str, method: &str, url: &str) -> (String, Requirement) {
    let t = normalize_target(url.as_bytes()).unwrap();
    let m = set
        .lookup(&HostPort::parse(host).unwrap(), method, &t)
        .expect("host known");
    (m.rule.id.clone(), m.rule.access.require)
}

#[test]
fn valid_file_loads_and_matches_most_specific() {
    let set = load(&[("billing.yaml", BILLING)]).unwrap();
    assert_eq!(set.apps().len(), 1);
    assert_eq!(set.apps()[0].route_count, 5);
    let h = "Billing.Clinic.Example:443";
    assert_eq!(
        rule_for(&set, h, "GET", "/static/app.css"),
        ("/static/**".into(), Requirement::Public)
    );
    assert_eq!(
        rule_for(&set, h, "POST", "/payouts/bank-account"),
        ("POST,PUT /payouts/bank-account".into(), Requirement::Aal3)
    );
    assert_eq!(
        rule_for(&set, h, "post", "/payouts/bank-account/"),
        ("POST,PUT /payouts/bank-account".into(), Requirement::Aal3)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/payouts/bank-account"),
        ("/payouts/bank-account".into(), Requirement::Aal2)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/admin/x/audit"),
        ("/admin/*/audit".into(), Requirement::Deny)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/admin;x/y/audit"),
        ("/admin/*/audit".into(), Requirement::Deny)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/admin"),
        ("/admin/**".into(), Requirement::Aal3)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/static/../admin/"),
        ("/admin/**".into(), Requirement::Aal3)
    );
    assert_eq!(
        rule_for(&set, h, "GET", "/elsewhere?path=/static/x"),
        ("default".into(), Requirement::Aal2)
    );
    let t = normalize_target(b"/").unwrap();
    assert!(set
        .lookup(&HostPort::parse("evil.example").unwrap(), "GET", &t)
        .is_none());
}

#[test]
fn path_parameters_take_the_stricter_reading() {
    let y = "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\ndefault: public\nroutes:\n  - path: /admin/**\n    require: aal3\n  - path: /files/*\n    require: public\n  - path: /*\n    require: aal2\n";
    let set = load(&[("a.yaml", y)]).unwrap();
    // Java reading (/admin/users) is stricter than the literal one (default public).
    assert_eq!(
        rule_for(&set, "a.example", "GET", "/admin;x/users").1,
        Requirement::Aal3
    );
    // Literal reading (`/files;x` is one segment: /*, aal2) is stricter than the Java one (/files/*).
    assert_eq!(
        rule_for(&set, "a.example", "GET", "/files;x").1,
        Requirement::Aal2
    );
    assert_eq!(
        rule_for(&set, "a.example", "GET", "/files/a;b").1,
        Requirement::Public
    );
}

#[test]
fn default_is_deny_and_case_sensitivity_is_per_app() {
    let y = "app: ehr\nhost: ehr.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /Public/**\n    require: public\n";
    let set = load(&[("ehr.yaml", y)]).unwrap();
    assert_eq!(
        rule_for(&set, "ehr.example", "GET", "/Public/x").1,
        Requirement::Public
    );
    assert_eq!(
        rule_for(&set, "ehr.example", "GET", "/public/x").1,
        Requirement::Deny
    );
    let ci = y.replace("routes:", "case_insensitive: true\nroutes:");
    let set = load(&[("ehr.yaml", &ci)]).unwrap();
    assert_eq!(
        rule_for(&set, "ehr.example", "GET", "/PUBLIC/x").1,
        Requirement::Public
    );
}

#[test]
fn unknown_key_is_an_error_with_position() {
    let y = BILLING.replace(
        "    require: public",
        "    require: public\n    requires: aal1",
    );
    let e = errors(&[("billing.yaml", &y)]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("billing.yaml:8:5: "), "{}", e[0]);
    assert!(e[0].contains("requires"), "{}", e[0]);
    assert!(e[0].contains("; remove or correct the key"), "{}", e[0]);
}

#[test]
fn yaml_booleans_are_strict() {
    let y = "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\ncase_insensitive: no\n";
    let e = errors(&[("a.yaml", y)]);
    assert!(e[0].starts_with("a.yaml:4:"), "{}", e[0]);
    let ok = y.replace("no", "false");
    assert!(load(&[("a.yaml", &ok)]).is_ok());
}

#[test]
fn malformed_yaml_and_bad_values_are_reported_not_panicked() {
    for bad in [
        "app: [unclosed\n",
        "\t- x",
        "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    require: aal4\n",
        "app: a\napp: b\nhost: a.example\nupstream: http://127.0.0.1:1\n",
        "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    require: aal2\n    idle_timeout: soon\n",
        "",
        "---\n...\n",
    ] {
        let e = errors(&[("bad.yaml", bad)]);
        assert!(!e.is_empty());
        assert!(e.iter().all(|m| m.starts_with("bad.yaml:")), "{e:?}");
    }
}

#[test]
fn semantic_errors_name_line_and_fix() {
    let y = "\
app: Billing_App
host: 'bad host'
upstream: ftp://x
routes:
  - path: admin/**
    require: aal2
  - path: /a/**/b
    require: aal2
  - path: /x
    require: public
    idle_timeout: 5m
  - path: /.aalgate/auth
    require: public
  - path: /p
    methods: []
    require: aal2
";
    let e = errors(&[("b.yaml", y)]);
    let has = |prefix: &str, needle: &str| {
        e.iter()
            .any(|m| m.starts_with(prefix) && m.contains(needle))
    };
    assert!(has("b.yaml:1:6:", "use lowercase letters"), "{e:#?}");
    assert!(has("b.yaml:2:7:", "write a host name"), "{e:#?}");
    assert!(has("b.yaml:3:11:", "http://"), "{e:#?}");
    assert!(has("b.yaml:5:11:", "write it as /admin/**"), "{e:#?}");
    assert!(has("b.yaml:7:11:", "last segment"), "{e:#?}");
    assert!(
        has("b.yaml:11:19:", "no effect on a `require: public` route"),
        "{e:#?}"
    );
    assert!(has("b.yaml:12:11:", "never forwarded"), "{e:#?}");
    assert!(has("b.yaml:15:14:", "empty list"), "{e:#?}");
}

#[test]
fn nist_ceilings_need_an_explicit_override() {
    let base = "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\ntimeouts:\n  aal2: { max_session_age: 36h, idle_timeout: 2h }\n";
    let e = errors(&[("a.yaml", base)]);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("exceeds the NIST SP 800-63B-4 ceiling of 1day")
            && e[0].contains("exceed_nist_ceilings"),
        "{e:?}"
    );
    // At the ceiling is fine.
    let at = base.replace("36h", "24h").replace("2h", "1h");
    assert!(load(&[("a.yaml", &at)]).unwrap().warnings().is_empty());
    let over = format!("{base}  exceed_nist_ceilings: \"RISK-123 night shift\"\n");
    let set = load(&[("a.yaml", &over)]).unwrap();
    assert_eq!(set.warnings().len(), 2);
    assert!(set.warnings()[0]
        .to_string()
        .contains("warning: aal2 max_session_age 1day 12h exceeds"));
    assert_eq!(
        set.apps()[0].timeouts.aal2.max_session_age.as_secs(),
        36 * 3600
    );
}

#[test]
fn routes_may_only_tighten() {
    let y = "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    require: aal3\n    idle_timeout: 20m\n  - path: /y\n    require: aal2\n    max_session_age: 13h\n";
    let e = errors(&[("a.yaml", y)]);
    assert!(
        e.iter().any(|m| m.starts_with("a.yaml:7:19:")
            && m.contains("may only tighten")
            && m.contains("15m")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("a.yaml:10:22:") && m.contains("12h")),
        "{e:?}"
    );
}

#[test]
fn overlapping_rules_are_errors() {
    let dup = "app: a\nhost: a.example\nupstream: http://127.0.0.1:1\nroutes:\n  - path: /x\n    methods: [GET, POST]\n    require: aal2\n  - path: /x\n    methods: [post]\n    require: aal3\n";
    let e = errors(&[("a.yaml", dup)]);
    assert!(
        e[0].starts_with("a.yaml:8:5:") && e[0].contains("line 5"),
        "{e:?}"
    );

    let a = "app: a\nhost: shared.example\nupstream: http://127.0.0.1:1\ndefault: aal2\nroutes:\n  - path: /a/**\n    require: aal2\n";
    let b = "app: b\nhost: shared.example\nupstream: http://127.0.0.1:2\nroutes:\n  - path: /b/**\n    require: aal2\n  - path: /a/x\n    require: public\n";
    let e = errors(&[("a.yaml", a), ("b.yaml", b)]);
    assert!(
        e.iter()
            .any(|m| m.starts_with("b.yaml:7:5:") && m.contains("overlaps")),
        "{e:?}"
    );
    // Disjoint paths on one host are fine, and unmatched paths use the one non-deny default.
    let b_ok = b.replace("  - path: /a/x\n    require: public\n", "");
    let set = load(&[("a.yaml", a), ("b.yaml", &b_ok)]).unwrap();
    assert_eq!(rule_for(&set, "shared.example", "GET", "/b/1").0, "/b/**");
    let t = normalize_target(b"/zzz").unwrap();
    let m = set
        .lookup(&HostPort::parse("shared.example").unwrap(), "GET", &t)
        .unwrap();
    assert_eq!((m.app.name.as_str(), m.rule.id.as_str()), ("a", "default"));
    // Two non-deny defaults on one host are ambiguous.
    let b_default = b_ok.replace("routes:", "default: aal3\nroutes:");
    let e = errors(&[("a.yaml", a), ("b.yaml", &b_default)]);
    assert!(
        e.iter().any(|m| m.contains("both have a non-deny default")),
        "{e:?}"
    );
    // Same app id twice.
    let e = errors(&[("a.yaml", a), ("c.yaml", a)]);
    assert!(
        e.iter()
            .any(|m| m.starts_with("c.yaml:1:6:") && m.contains("already defined at a.yaml:1:6")),
        "{e:?}"
    );
}

#[test]
fn hosts_with_ports() {
    let a = "app: a\nhost: localhost:8080\nupstream: http://127.0.0.1:1\ndefault: public\n";
    let b = "app: b\nhost: localhost\nupstream: http://127.0.0.1:2\ndefault: aal2\n";
    let set = load(&[("a.yaml", a), ("b.yaml", b)]).unwrap();
    let t = normalize_target(b"/").unwrap();
    let app = |h: &str| {
        set.lookup(&HostPort::parse(h).unwrap(), "GET", &t)
            .map(|m| m.app.name.clone())
    };
    assert_eq!(app("localhost:8080").as_deref(), Some("a"));
    assert_eq!(app("localhost:9999").as_deref(), Some("b"));
    assert_eq!(app("localhost").as_deref(), Some("b"));
}

#[test]
fn schema_json_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/schema.json");
    let want = aalgate_policy::file::json_schema();
    if std::env::var_os("AALGATE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "policies/schema.json is stale; regenerate it with `AALGATE_BLESS=1 cargo test -p aalgate-policy --test load schema`");
}

/// `step_up` takes exactly one of `max_age` and `per_request: true`; a `max_age` too short for
/// a ceremony warns and points at `per_request`.
#[test]
fn step_up_is_a_window_or_per_request() {
    let with = |step_up: &str| {
        format!(
            "app: rx\nhost: rx.example\nupstream: http://127.0.0.1:9\ndefault: aal2\nroutes:\n  - path: /sign\n    require: aal3\n    step_up: {step_up}\n"
        )
    };
    let set = load(&[("rx.yaml", &with("{ per_request: true }"))]).unwrap();
    assert!(set.warnings().is_empty(), "{:#?}", set.warnings());
    let t = normalize_target(b"/sign").unwrap();
    let m = set
        .lookup(&HostPort::parse("rx.example").unwrap(), "POST", &t)
        .unwrap();
    assert_eq!(
        m.rule.access.step_up,
        Some(aalgate_policy::StepUp::PerRequest)
    );

    let both = errors(&[("rx.yaml", &with("{ max_age: 1m, per_request: true }"))]);
    assert!(
        both.len() == 1 && both[0].starts_with("rx.yaml:8:") && both[0].contains("both"),
        "{both:?}"
    );
    let neither = errors(&[("rx.yaml", &with("{ per_request: false }"))]);
    assert!(
        neither.len() == 1 && neither[0].contains("per_request: true"),
        "{neither:?}"
    );
    let glass = errors(&[(
        "rx.yaml",
        &format!("{}    breakglass: allow\n", with("{ per_request: true }")),
    )]);
    assert!(
        glass.len() == 1 && glass[0].starts_with("rx.yaml:9:") && glass[0].contains("sign"),
        "{glass:?}"
    );
    let short = load(&[("rx.yaml", &with("{ max_age: 1s }"))]).unwrap();
    let w: Vec<String> = short.warnings().iter().map(|d| d.to_string()).collect();
    assert!(
        w.len() == 1 && w[0].contains("1s") && w[0].contains("per_request: true"),
        "{w:?}"
    );
}

/// `allow` at app and route level: the rule carries both (each must admit), the default the
/// app's; bad names and an empty `allow` are errors at their line and column; `allow` on a
/// public route is a warning.
#[test]
fn allow_at_app_and_route_level() {
    let ehr = "\
app: ehr
display_name: Legacy EHR
allow: { groups: [clinical, billing, clinical] }
host: ehr.example
upstream: http://127.0.0.1:9
default: aal2
routes:
  - path: /prescriptions/controlled/*/sign
    methods: [POST]
    require: aal3
    step_up: { per_request: true }
    allow: { groups: [epcs-signers] }
  - path: /admin/**
    require: aal3
    allow: { users: [it-alice], groups: [ehr-admins] }
";
    let set = load(&[("ehr.yaml", ehr)]).unwrap();
    assert!(set.warnings().is_empty(), "{:#?}", set.warnings());
    assert_eq!(set.apps()[0].display_name, "Legacy EHR");
    let host = HostPort::parse("ehr.example").unwrap();
    let rule = |method: &str, path: &[u8]| {
        set.lookup(&host, method, &normalize_target(path).unwrap())
            .unwrap()
            .rule
            .access
            .allow
            .clone()
    };
    let app = aalgate_policy::Allow {
        users: vec![],
        groups: vec!["billing".into(), "clinical".into()],
    };
    assert_eq!(
        rule("GET", b"/chart"),
        vec![app.clone()],
        "the default has the app's"
    );
    assert_eq!(
        rule("POST", b"/prescriptions/controlled/7/sign"),
        vec![
            app.clone(),
            aalgate_policy::Allow {
                users: vec![],
                groups: vec!["epcs-signers".into()]
            }
        ]
    );
    assert_eq!(rule("GET", b"/admin/users")[1].users, vec!["it-alice"]);

    let bad = ehr
        .replace("groups: [epcs-signers]", "groups: [EPCS Signers]")
        .replace("users: [it-alice]", "users: [\"it alice\"]");
    let e = errors(&[("ehr.yaml", &bad)]);
    assert!(
        e.iter()
            .any(|d| d.starts_with("ehr.yaml:12:23:") && d.contains("\"EPCS Signers\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|d| d.starts_with("ehr.yaml:15:22:") && d.contains("it alice")),
        "{e:?}"
    );
    let empty = errors(&[("ehr.yaml", &ehr.replace("{ groups: [epcs-signers] }", "{}"))]);
    assert!(
        empty.len() == 1 && empty[0].starts_with("ehr.yaml:12:") && empty[0].contains("nobody"),
        "{empty:?}"
    );
    let unknown = errors(&[("ehr.yaml", &ehr.replace("users: [it-alice]", "roles: [it]"))]);
    assert!(unknown.iter().any(|d| d.contains("roles")), "{unknown:?}");
    let public = load(&[(
        "ehr.yaml",
        &format!(
            "{ehr}  - path: /help\n    require: public\n    allow: {{ groups: [clinical] }}\n"
        ),
    )])
    .unwrap();
    let w: Vec<String> = public.warnings().iter().map(|d| d.to_string()).collect();
    assert!(
        w.len() == 1 && w[0].starts_with("ehr.yaml:18:") && w[0].contains("public"),
        "{w:?}"
    );
}

/// `identity_headers` names the headers a legacy app reads; names that would break the request
/// or the gateway are refused where they are written, and two names for one header too.
#[test]
fn identity_headers_refuse_what_would_break_the_request() {
    let with = |h: &str| {
        format!(
            "app: legacy\nhost: legacy.example\nupstream: http://127.0.0.1:9\ndefault: aal2\nidentity_headers: {h}\n"
        )
    };
    let set = load(&[(
        "legacy.yaml",
        &with("{ user: X-Remote-User, groups: X-Remote-Groups, email: X-Remote-Email }"),
    )])
    .unwrap();
    let h = &set.apps()[0].identity_headers;
    assert_eq!(h.user.as_deref(), Some("x-remote-user"));
    assert!(h.names("X_Remote.Groups") && h.names("x-remote-email") && !h.names("x-other"));
    for bad in [
        "Cookie",
        "Host",
        "Authorization",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "X-Aalgate-User",
        "X_Aalgate_Groups",
        "X-Forwarded-User",
        "X-HTTP-Method-Override",
        "Proxy-Connection",
        "Range",
        "Via",
        "\"Remote User\"",
    ] {
        let e = errors(&[("legacy.yaml", &with(&format!("{{ user: {bad} }}")))]);
        assert!(
            e.len() == 1
                && e[0].starts_with("legacy.yaml:5:27:")
                && e[0].contains("identity_headers.user"),
            "{bad}: {e:?}"
        );
    }
    let twice = errors(&[(
        "legacy.yaml",
        &with("{ user: X-Remote-User, groups: x_remote_user }"),
    )]);
    assert!(
        twice.len() == 1 && twice[0].contains("same header"),
        "{twice:?}"
    );
    let trailing = errors(&[(
        "legacy.yaml",
        &with("{ user: X-Remote-User, groups: X-Remote-User_ }"),
    )]);
    assert!(
        trailing.len() == 1 && trailing[0].contains("same header"),
        "{trailing:?}"
    );
    let unknown = errors(&[("legacy.yaml", &with("{ login: X-Remote-User }"))]);
    assert!(unknown.iter().any(|d| d.contains("login")), "{unknown:?}");
}
