//! Properties checked by the cargo-fuzz targets in `fuzz/` and, on the checked-in seed corpora
//! (`fuzz/corpus/<target>/`), by ordinary tests. Each function takes arbitrary bytes and panics
//! when a property fails, so a crash found by the fuzzer is a failing test once its input is
//! added to the corpus.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{load_from_strs, normalize_target, HostPort, NormalizedTarget, PolicySet};

/// A policy with the pattern shapes real files use: prefixes, single-segment wildcards, exact
/// paths, method rules, `$` characters, and a case-insensitive app on a second host.
const POLICY: &str = r#"
app: fuzz
host: fuzz.example
upstream: http://127.0.0.1:9
default: aal2
routes:
  - { path: /static/**, methods: [GET, HEAD], require: public }
  - { path: /api/*/records/*, require: aal2 }
  - { path: /admin/**, require: aal3 }
  - { path: /admin/health, require: public }
  - { path: /debug/**, require: deny }
  - { path: /pay, methods: [POST], require: aal3, step_up: { max_age: 5m } }
  - { path: /fhir/Patient/*/$everything, require: aal3 }
  - { path: "/a%20b/**", require: deny }
"#;

const POLICY_CI: &str = r#"
app: fuzzci
host: ci.example
upstream: http://127.0.0.1:9
case_insensitive: true
default: aal2
routes:
  - { path: /Admin/**, require: deny }
  - { path: /public/**, require: public }
"#;

fn set() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        load_from_strs(&[
            (PathBuf::from("fuzz.yaml"), POLICY.to_string()),
            (PathBuf::from("fuzzci.yaml"), POLICY_CI.to_string()),
        ])
        .unwrap_or_else(|d| panic!("fuzz policy: {d:?}"))
    })
}

fn rules(t: &NormalizedTarget) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    for host in ["fuzz.example", "ci.example"] {
        let Ok(h) = HostPort::parse(host) else {
            unreachable!("constant host")
        };
        for method in ["GET", "POST", "DELETE"] {
            out.push(set().lookup(&h, method, t).map(|m| m.rule_index));
        }
    }
    out
}

/// The normalizer and matcher: a target is refused or becomes one canonical path (absolute,
/// no empty, `.` or `..` segment, no encoded or raw separator), and matching never fails.
pub fn normalize_and_match(data: &[u8]) {
    let Ok(t) = normalize_target(data) else {
        return;
    };
    let p = t.path();
    assert!(p.starts_with('/'), "{p:?} is not absolute");
    assert!(!p.contains("//"), "{p:?} has an empty segment");
    for seg in p.split('/') {
        let name = seg.split(';').next().unwrap_or(seg);
        assert!(name != "." && name != "..", "{p:?} keeps a dot segment");
    }
    let upper = p.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%2E", "%00", "\\", "#", " "] {
        assert!(!upper.contains(bad), "{p:?} contains {bad}");
    }
    assert!(
        p.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "{p:?} has a raw byte"
    );
    let _ = rules(&t);
}

/// Differential: what the gateway forwards, normalized again, is itself, and matches the same
/// rule for every host and method. Otherwise an upstream that normalizes too would serve a
/// different resource than the one the policy judged.
pub fn differential(data: &[u8]) {
    let Ok(t) = normalize_target(data) else {
        return;
    };
    let forwarded = t.path_and_query().into_owned();
    let again = match normalize_target(forwarded.as_bytes()) {
        Ok(a) => a,
        Err(e) => panic!("forwarded {forwarded:?} does not normalize: {e}"),
    };
    assert_eq!(again.path_and_query(), forwarded, "not a fixed point");
    assert_eq!(
        rules(&again),
        rules(&t),
        "{forwarded:?} matches another rule"
    );
}

/// The policy parser and validator: any text is loaded or refused with positioned
/// diagnostics; a loaded set answers lookups.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_from_strs(&[(PathBuf::from("fuzz.yaml"), text.to_string())]) {
        Ok(set) => {
            let Ok(t) = normalize_target(b"/a/b?c") else {
                unreachable!("constant target")
            };
            for app in set.apps() {
                let _ = set.lookup(&app.host, "GET", &t);
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "refused without a diagnostic");
            for d in &diags {
                assert!(!d.message.is_empty() && !d.fix.is_empty(), "{d:?}");
            }
        }
    }
}

/// Runs `check` on every file of `fuzz/corpus/<target>/` (the seeds and what long runs kept).
#[doc(hidden)]
pub fn replay_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for e in entries.flatten() {
        let data = std::fs::read(e.path()).unwrap_or_default();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails {target}", e.path().display());
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpora_hold() {
        for (target, check) in [
            ("normalize", normalize_and_match as fn(&[u8])),
            ("differential", differential),
            ("policy", policy),
        ] {
            let n = replay_corpus(target, check);
            assert!(n >= 10, "{target}: only {n} corpus files");
        }
    }
}
