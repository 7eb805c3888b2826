//! The timeout corpus (`tests/attacks/unit-timeouts.yaml`): every idle, absolute and step-up
//! limit probed 1 s before and after, for each AAL, against the pure decision with a fake clock.

use std::path::{Path, PathBuf};

use aalgate_policy::admit::{AdmissionFacts, RequestKind, SessionKind, Subject};
use aalgate_policy::{
    admit, load_from_strs, normalize_target, Aal, Admission, ExpiryReason, HostPort, SessionFacts,
    Timestamp,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    #[allow(dead_code)]
    about: String,
    policy: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    route: String,
    #[serde(default)]
    aal: Option<u8>,
    /// Seconds before the fake now (negative: in the future, as after a clock step).
    #[serde(default)]
    auth_ago: i64,
    #[serde(default)]
    seen_ago: i64,
    /// Defaults to `auth_ago`.
    #[serde(default)]
    last_auth_ago: Option<i64>,
    expect: String,
}

fn corpus_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/attacks/unit-timeouts.yaml")
}

/// The corpus spells levels `aal1`..`aal3`.
fn parse_aal(text: &str) -> String {
    text.replace("aal: aal", "aal: ")
}

#[test]
fn every_limit_holds_one_second_either_side() {
    let text = std::fs::read_to_string(corpus_path()).expect("read the timeout corpus");
    let corpus: Corpus = serde_saphyr::from_str(&parse_aal(&text)).expect("parse the corpus");
    let set = load_from_strs(&[(PathBuf::from("clinic.yaml"), corpus.policy.clone())])
        .unwrap_or_else(|d| panic!("corpus policy: {d:?}"));
    let host = HostPort::parse("clinic.example").unwrap();
    let now = Timestamp(1_900_000_000);
    let at = |ago: i64| Timestamp((now.0 as i64 - ago) as u64);
    let mut failures = Vec::new();
    for c in &corpus.cases {
        let target = normalize_target(c.route.as_bytes()).expect("route");
        let m = set
            .lookup(&host, "GET", &target)
            .unwrap_or_else(|| panic!("{}: no rule", c.name));
        let session = match c.aal {
            None => SessionKind::None,
            Some(n) => SessionKind::Normal(Subject {
                facts: SessionFacts {
                    aal: Aal::from_number(n).expect("aal 1-3"),
                    auth_time: at(c.auth_ago),
                    last_auth: at(c.last_auth_ago.unwrap_or(c.auth_ago)),
                    last_seen: at(c.seen_ago),
                },
                ends_at: Timestamp(u64::MAX),
            }),
        };
        let facts = AdmissionFacts {
            session,
            request: RequestKind::Http,
            ceremony: None,
            person: None,
        };
        let got = match admit(&m.rule.access, &facts, now) {
            Admission::Allow => "allow",
            Admission::Login { .. } => "login",
            Admission::StepUp { .. } => "step_up",
            Admission::Reauth {
                reason: ExpiryReason::Idle,
                ..
            } => "reauth_idle",
            Admission::Reauth { .. } => "reauth_absolute",
            Admission::Deny => "deny",
            Admission::FromTheFuture { .. } => "from_the_future",
            other => panic!("{}: {other:?}", c.name),
        };
        if got != c.expect {
            failures.push(format!("{}: got {got}, expected {}", c.name, c.expect));
        }
    }
    assert!(
        corpus.cases.len() >= 40,
        "only {} cases",
        corpus.cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
