//! The attack corpus (`tests/attacks/*.yaml`, format in `tests/attacks/README.md`): raw
//! requests against the real binary, each with the status it must get and exactly what the
//! upstream may receive. On top of each case's own expectations, three rules hold for every
//! case: the upstream receives nothing a case does not list; identity headers reaching it are
//! the gateway's own; and no redirect leaves the gateway's origin.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aalgate_policy::Aal;
use aalgate_session::{EmbeddedStore, SessionStore};
use aalgate_tests::{browser_binding, get, send, workspace, Gateway, Seen, Upstream};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

use crate::{link_session, make_session, policy, rt};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// What the file covers (documentation only).
    #[allow(dead_code)]
    about: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Defaults to the target or the request's first line.
    #[serde(default)]
    name: Option<String>,
    /// Whose cookie `{cookie}` (and the short form) carries; `none` sends no cookie.
    #[serde(default = "none")]
    session: String,
    /// Short form: `METHOD target` is sent with Host, the session cookie and `headers`.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    /// Long form: the exact bytes (YAML escapes `\r`, `\n`, `\0`, `\xHH`), with placeholders.
    #[serde(default)]
    request: Option<String>,
    /// The one status the gateway answers (never a list, never 0: a case that accepts several
    /// outcomes, or no answer, cannot fail).
    status: u16,
    /// The request targets the upstream receives, in order; empty: nothing at all.
    #[serde(default)]
    upstream: Vec<String>,
    /// Headers of the forwarded request: a value (exactly once), `!value` (once, anything but
    /// that), or null (absent).
    #[serde(default)]
    forwarded: BTreeMap<String, Option<String>>,
    /// Response headers: a value (exactly once), or null (absent).
    #[serde(default)]
    response: BTreeMap<String, Option<String>>,
    /// Strings that must not appear anywhere in the response (headers or body).
    #[serde(default)]
    never_echoed: Vec<String>,
    /// Strings the response body must contain (which refusal it was).
    #[serde(default)]
    contains: Vec<String>,
    /// Wait this long before sending (e.g. past the 1 s session cache).
    #[serde(default)]
    pause_ms: u64,
}

fn none() -> String {
    "none".into()
}

/// The identity headers only the gateway may set, folded the way servers fold names.
const IDENTITY: &[&str] = &[
    "x-aalgate-user",
    "x-aalgate-aal",
    "x-aalgate-auth-time",
    "x-aalgate-assertion",
    "x-aalgate-breakglass",
    "remote-user",
    "x-remote-user",
    "x-forwarded-user",
    "x-original-url",
    "x-rewrite-url",
];

/// A header name as a CGI-style backend reads it: lowercase, `_` and `.` as `-`, and a leading
/// or trailing one dropped.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// The identity a forwarded request carries must be exactly what the gateway sets for the
/// case's session: the four `x-aalgate-*` headers once each (none without a session), the
/// groups and e-mail ones at most once, the legacy app's own identity headers at most once,
/// all consistent with an assertion that verifies against the gateway's JWKS, and no other
/// identity header in any spelling.
fn identity_is_ours(s: &Seen, user: &str, aal: &str, jwks: &VerifyingKey) -> Result<(), String> {
    const OURS: [&str; 6] = [
        "x-aalgate-user",
        "x-aalgate-aal",
        "x-aalgate-auth-time",
        "x-aalgate-assertion",
        "x-aalgate-groups",
        "x-aalgate-email",
    ];
    for (n, v) in &s.headers {
        let f = fold(n);
        // The legacy app's own identity headers, in another spelling than the gateway's.
        if ["x-remote-login", "x-remote-groups", "x-remote-email"].contains(&f.as_str()) && n != &f
        {
            return Err(format!("identity header {n}: {v} reached the upstream"));
        }
        let ours = OURS.contains(&n.as_str()) && s.all(n).len() == 1;
        if (f.starts_with("x-aalgate-") || IDENTITY.contains(&f.as_str())) && !ours {
            return Err(format!("identity header {n}: {v} reached the upstream"));
        }
    }
    let Some(token) = s.one("x-aalgate-assertion") else {
        return match OURS.iter().find(|n| s.one(n).is_some()) {
            Some(n) => Err(format!("{n} without an assertion")),
            None => Ok(()),
        };
    };
    let (signed, sig) = token.rsplit_once('.').ok_or("assertion is not a JWS")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or("bad assertion signature encoding")?;
    jwks.verify_strict(signed.as_bytes(), &sig)
        .map_err(|_| format!("assertion does not verify: {token}"))?;
    let claims: serde_json::Value = signed
        .split('.')
        .nth(1)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("assertion claims unreadable")?;
    let want = [
        (
            "x-aalgate-user",
            Some(user.to_string()),
            claims["sub"].as_str().map(str::to_string),
        ),
        (
            "x-aalgate-aal",
            Some(aal.to_string()),
            claims["acr"]
                .as_str()
                .map(|a| a.trim_start_matches("aal").to_string()),
        ),
        (
            "x-aalgate-auth-time",
            claims["auth_time"].as_u64().map(|t| t.to_string()),
            None,
        ),
    ];
    for (name, expected, from_claims) in want {
        let got = s.one(name).map(str::to_string);
        if got != expected || from_claims.is_some_and(|c| Some(c) != got) {
            return Err(format!(
                "{name}: {got:?}, expected {expected:?} (claims {claims})"
            ));
        }
    }
    // Groups and e-mail as the signed claims say; an app's own header names (the legacy app's
    // `identity_headers`) say the same as the gateway's.
    let groups = claims["groups"].as_array().map(|g| {
        g.iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let email = claims["email"].as_str().map(str::to_string);
    let pairs = [
        ("x-aalgate-groups", groups.clone()),
        ("x-aalgate-email", email.clone()),
    ];
    for (name, expected) in pairs {
        let got = s.one(name).map(str::to_string);
        if got != expected {
            return Err(format!(
                "{name}: {got:?}, expected {expected:?} (claims {claims})"
            ));
        }
    }
    for (name, same_as) in [
        ("x-remote-login", Some(user.to_string())),
        ("x-remote-groups", groups),
        ("x-remote-email", email),
    ] {
        if s.all(name).len() > 1 {
            return Err(format!("{name} twice"));
        }
        if let Some(got) = s.one(name) {
            if Some(got.to_string()) != same_as {
                return Err(format!("{name}: {got:?}, expected {same_as:?}"));
            }
        }
    }
    Ok(())
}

/// The cookies of each case session kind: one per host, as a browser holds them (a session's
/// cookie is a handle linked for one host only).
struct Sessions {
    hosts: Vec<String>,
    /// Kind: (cookie value per host of `hosts`, user, AAL number).
    cookies: BTreeMap<&'static str, (Vec<String>, &'static str, &'static str)>,
}

impl Sessions {
    fn mint(store: &EmbeddedStore, hosts: Vec<String>) -> Sessions {
        let mut cookies = BTreeMap::new();
        let mut add = |kind: &'static str, user: &'static str, aal: Aal, auth_age, idle| {
            let first = make_session(store, &hosts[0], user, aal, auth_age, idle);
            let mut all = vec![first.clone()];
            for h in &hosts[1..] {
                all.push(link_session(store, &first, &hosts[0], h));
            }
            let n = match aal {
                Aal::Aal1 => "1",
                Aal::Aal2 => "2",
                Aal::Aal3 => "3",
            };
            cookies.insert(kind, (all, user, n));
        };
        add("aal1", "ann-aal1", Aal::Aal1, 60, 1);
        add("aal2", "bob-aal2", Aal::Aal2, 60, 1);
        add("aal3", "cat-aal3", Aal::Aal3, 60, 1);
        // Step-up on /confirm needs an authentication within 5 minutes.
        add("aal2-stale", "dan-stale", Aal::Aal2, 600, 1);
        // Past the AAL2 idle limit (30 min) and the absolute limit (12 h).
        add("aal2-idle", "eve-idle", Aal::Aal2, 3600, 31 * 60);
        add("aal2-old", "fay-old", Aal::Aal2, 13 * 3600, 1);
        add("revoked", "gus-revoked", Aal::Aal3, 60, 1);
        // Signed out by the CSRF file's same-origin control case.
        add("victim", "vic-victim", Aal::Aal2, 60, 1);
        rt().block_on(store.revoke_user("gus-revoked"))
            .expect("revoke");
        let good = cookies["aal3"].0[0].clone();
        let mut flipped = good.clone().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let derived: [(&'static str, String); 5] = [
            // A well-formed id that was never issued (a planted or guessed cookie).
            ("forged", aalgate_session::SessionId::generate().to_cookie()),
            ("tampered", String::from_utf8(flipped).unwrap_or_default()),
            ("truncated", good[..good.len() - 4].to_string()),
            ("extended", format!("{good}AAAA")),
            ("oversized", format!("{good}{}", "A".repeat(3000))),
        ];
        for (kind, c) in derived {
            cookies.insert(kind, (vec![c; hosts.len()], "nobody", "-"));
        }
        Sessions { hosts, cookies }
    }

    /// The value of `kind`'s cookie for the host a request names (the first host's when it
    /// names none of them).
    fn for_host(&self, kind: &str, host: Option<&str>) -> Option<&String> {
        let i = host
            .and_then(|h| self.hosts.iter().position(|x| x.eq_ignore_ascii_case(h)))
            .unwrap_or(0);
        self.cookies.get(kind).map(|(all, _, _)| &all[i])
    }
}

/// The value of the first `Host` header of a raw request.
fn host_header(raw: &str) -> Option<&str> {
    raw.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("host").then(|| v.trim())
        })
}

/// Fills in `{name}` placeholders (`{content-length}` is filled in last, by the caller), and `{repeat:N:text}` (text without `}`) N times.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = s.to_string();
    while let Some(start) = out.find("{repeat:") {
        let rest = &out[start + 8..];
        let (Some((n, tail)), Some(end)) = (rest.split_once(':'), rest.find('}')) else {
            panic!("bad repeat placeholder in {s:?}");
        };
        let text = &tail[..end - n.len() - 1];
        let filled = text.repeat(n.parse().expect("repeat count"));
        out.replace_range(start..start + 8 + end + 1, &filled);
    }
    for (k, v) in vars {
        out = out.replace(k.as_str(), v);
    }
    out
}

/// Whether a redirect stays on the gateway: a path on this origin, or the origin itself.
fn location_is_safe(loc: &str, origin: &str) -> bool {
    let on_origin = loc
        .strip_prefix(origin)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
    let relative = loc.starts_with('/') && !loc.starts_with("//") && !loc.starts_with("/\\");
    (on_origin || relative) && !loc.contains(['\r', '\n', '\t', '\\'])
}

/// A request as the upstream saw it, for comparison with a case's `upstream` list.
fn shown(s: &Seen) -> String {
    if s.complete {
        s.target.clone()
    } else {
        format!("{} (incomplete)", s.target)
    }
}

/// A case made ready to send (see [`prepare_case`]).
struct Prepared {
    raw: String,
    id: String,
    user: &'static str,
    aal: &'static str,
    /// The placeholders and their values, for the case's expected upstream requests.
    vars: Vec<(String, String)>,
}

/// A case as sent: its placeholders filled (`base`, `{user}` and every `{cookie:kind}`), its
/// raw request, its id in messages, and the user and AAL its session has.
fn prepare_case(
    case: &Case,
    sessions: &Sessions,
    base: &[(&str, &str)],
    host: &str,
    cookie_name: &str,
    fname: &str,
) -> Prepared {
    let (user, aal) = match case.session.as_str() {
        "none" => ("nobody", "-"),
        k => match sessions.cookies.get(k) {
            Some((_, u, a)) => (*u, *a),
            None => panic!("{fname}: unknown session kind {k:?}"),
        },
    };
    let mut vars: Vec<(String, String)> = base
        .iter()
        .chain(&[("{user}", user)])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (kind, (c, _, _)) in &sessions.cookies {
        vars.push((format!("{{cookie:{kind}}}"), c[0].clone()));
    }
    let raw = raw_request(case, &mut vars, sessions, host, cookie_name, fname);
    let name = case.name.clone().unwrap_or_else(|| {
        case.target
            .clone()
            .unwrap_or_else(|| raw.lines().next().unwrap_or_default().to_string())
    });
    let id = format!("{fname}: {name} [{}]", case.session);
    Prepared {
        raw,
        id,
        user,
        aal,
        vars,
    }
}

/// The raw HTTP/1.1 request of a case, with its placeholders filled in: `{cookie}` is the
/// case's session as the browser holds it for the request's host, under `cookie_name`.
fn raw_request(
    case: &Case,
    vars: &mut Vec<(String, String)>,
    sessions: &Sessions,
    host: &str,
    cookie_name: &str,
    fname: &str,
) -> String {
    let named = case.request.as_deref().map(|r| expand(r, vars));
    let on = named.as_deref().and_then(host_header);
    let cookie = format!(
        "{cookie_name}={}",
        sessions
            .for_host(&case.session, on)
            .map_or("", String::as_str)
    );
    vars.push(("{cookie}".into(), cookie.clone()));
    match (&case.request, &case.target) {
        (Some(r), None) => {
            // `{content-length}`: the length of the body as sent (after expansion).
            let r = expand(r, vars);
            let body = r.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
            r.replace("{content-length}", &body.to_string())
        }
        (None, Some(t)) => {
            let mut r = format!(
                "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
                case.method.as_deref().unwrap_or("GET"),
                expand(t, vars)
            );
            if case.session != "none" {
                r.push_str(&format!("Cookie: {cookie}\r\n"));
            }
            for h in &case.headers {
                r.push_str(&expand(h, vars));
                r.push_str("\r\n");
            }
            r.push_str("\r\n");
            r
        }
        _ => panic!("{fname}: a case needs exactly one of `target` and `request`"),
    }
}

/// The corpus's apps: billing (the test policy), an EHR on its own host that matches paths
/// case-insensitively, and a legacy app with double encoding, identity headers of its own and
/// a route for one group.
fn corpus_policies(upstream: u16) -> Vec<(String, String)> {
    let ehr = format!(
        "app: ehr\nhost: ehr.localhost\nupstream: http://127.0.0.1:{upstream}\ncase_insensitive: true\n\
default: aal2\nroutes:\n  - path: /admin/**\n    require: deny\n"
    );
    let legacy = format!(
        "app: legacy\nhost: legacy.localhost\nupstream: http://127.0.0.1:{upstream}\n\
allow_double_encoding: true\ndefault: aal2\n\
identity_headers: {{ user: X-Remote-Login, groups: X-Remote-Groups, email: X-Remote-Email }}\n\
routes:\n  - path: /staff/**\n    require: aal2\n    allow: {{ groups: [staff] }}\n"
    );
    vec![
        ("billing.yaml".into(), policy(upstream)),
        ("ehr.yaml".into(), ehr),
        ("legacy.yaml".into(), legacy),
    ]
}

fn as_refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// The gateway's store, with cat (the aal3 session) in `staff` and an address; nobody else is
/// in a group.
fn corpus_store(g: &Gateway) -> EmbeddedStore {
    let store = EmbeddedStore::open(&g.state_dir()).expect("open embedded store");
    rt().block_on(aalgate_session::SessionStore::kv_put(
        &store,
        aalgate_session::ACCESS_NS,
        "cat-aal3",
        br#"{"groups":["other","staff"],"email":"cat@clinic.example"}"#,
        None,
    ))
    .expect("groups");
    store
}

/// The gateway's assertion key, from its JWKS.
fn jwks_key(jwks: &serde_json::Value) -> VerifyingKey {
    let x = jwks["keys"][0]["x"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(x)
        .ok()
        .and_then(|b| b.try_into().ok())
        .expect("JWKS key");
    VerifyingKey::from_bytes(&bytes).expect("Ed25519 key")
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = workspace().join("tests/attacks");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        // Cases that need another runner (pure functions, WebAuthn) carry their own suffix.
        .filter(|p| {
            !p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.starts_with("unit-"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn attack_corpus() {
    let up = Upstream::start();
    let mut g = Gateway::start(None, &as_refs(&corpus_policies(up.port)));
    let store = corpus_store(&g);
    let host = format!("localhost:{}", g.port);
    let sessions = Sessions::mint(
        &store,
        ["localhost", "ehr.localhost", "legacy.localhost"]
            .map(|h| format!("{h}:{}", g.port))
            .to_vec(),
    );
    let origin = format!("http://{host}");
    let port = g.port.to_string();
    let jwks = jwks_key(&get(g.port, &host, "/.aalgate/jwks.json", &[]).json());
    // A real browser binding and its CSRF token, so the CSRF cases vary only the origin.
    let (bind, csrf) = browser_binding(g.port, &host);

    let mut failures = Vec::new();
    let mut previous = String::new();
    let mut total = 0usize;
    let mut forwarded_total = 0usize;
    for file in corpus_files() {
        let fname = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("read corpus file");
        let cf: CaseFile = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{fname}: {e}"));
        for case in cf.cases {
            total += 1;
            let base = [
                ("{host}", host.as_str()),
                ("{origin}", origin.as_str()),
                ("{port}", port.as_str()),
                ("{bind}", bind.as_str()),
                ("{csrf}", csrf.as_str()),
            ];
            let Prepared {
                raw,
                id,
                user,
                aal,
                vars,
            } = prepare_case(&case, &sessions, &base, &host, "aalgate", &fname);
            // Whatever reached the upstream after the previous case was checked (a smuggled
            // request, a late retry) belongs to that case.
            let late = up.take();
            if !late.is_empty() {
                let t: Vec<String> = late.iter().map(shown).collect();
                failures.push(format!("{previous}: late upstream requests {t:?}"));
            }
            previous = id.clone();
            std::thread::sleep(Duration::from_millis(case.pause_ms));
            let t0 = std::time::Instant::now();
            let r = send(g.port, raw.as_bytes());
            if t0.elapsed() > Duration::from_millis(1000) {
                eprintln!("slow case ({:?}): {id}", t0.elapsed());
            }
            if r.status == 0 {
                // No answer: give anything the gateway still forwards time to arrive.
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut fail = |what: String| failures.push(format!("{id}: {what}"));

            assert!(
                (100..600).contains(&case.status),
                "{id}: status {} is not an HTTP status",
                case.status
            );
            if case.status != r.status {
                fail(format!("status {} (body {:.120})", r.status, r.text()));
            }
            // A head the gateway forwarded before it found the body broken reaches the
            // upstream a few milliseconds after the client's answer: wait for as many
            // requests as the case lists (a request it does not list is caught here or, late,
            // charged to this case by the next one).
            let want_n = case.upstream.len();
            let waited = std::time::Instant::now();
            while up.seen().len() < want_n && waited.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let seen = up.take();
            forwarded_total += seen.len();
            // A head whose body never arrived whole still reached the app: a case lists it
            // as `target (incomplete)`, or it fails.
            let targets: Vec<String> = seen.iter().map(shown).collect();
            let want: Vec<String> = case.upstream.iter().map(|t| expand(t, &vars)).collect();
            if targets != want {
                fail(format!("upstream received {targets:?}, expected {want:?}"));
            }
            for s in &seen {
                if let Err(e) = identity_is_ours(s, user, aal, &jwks) {
                    fail(e);
                }
                for (n, want) in &case.forwarded {
                    let got = s.all(n);
                    let want = want.as_ref().map(|w| expand(w, &vars));
                    let ok = match &want {
                        None => got.is_empty(),
                        Some(w) => match w.strip_prefix('!') {
                            Some(not) => got.len() == 1 && got[0] != not,
                            None => got == [w.as_str()],
                        },
                    };
                    if !ok {
                        fail(format!("forwarded {n}: {got:?}, expected {want:?}"));
                    }
                }
            }
            for (n, want) in &case.response {
                let got = r.all(n);
                let ok = match want {
                    None => got.is_empty(),
                    Some(w) => got == [expand(w, &vars).as_str()],
                };
                if !ok {
                    fail(format!("response {n}: {got:?}, expected {want:?}"));
                }
            }
            for loc in r.all("location") {
                if !location_is_safe(loc, &origin) {
                    fail(format!("redirect off the gateway: {loc}"));
                }
            }
            for c in &case.contains {
                let c = expand(c, &vars);
                if !r.text().contains(&c) {
                    fail(format!("response lacks {c:?}"));
                }
            }
            let whole = format!("{:?}{}", r.headers, r.text());
            for s in &case.never_echoed {
                let s = expand(s, &vars);
                if whole.contains(&s) {
                    fail(format!("response echoes {s:?}"));
                }
            }
        }
    }
    // A smuggled request would arrive after its case finished: nothing may come late.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        up.seen().is_empty(),
        "late upstream requests: {:?}",
        up.seen()
    );
    assert!(total >= 300, "the corpus has only {total} cases");
    assert!(g.alive(), "gateway died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "attack corpus: {total} cases, {forwarded_total} forwarded requests, all as expected"
    );
}

/// The classes of the corpus HTTP/2 must not open: paths, hosts, identity headers and
/// smuggling.
const H2_CLASSES: [&str; 4] = [
    "paths.yaml",
    "hosts.yaml",
    "identity.yaml",
    "smuggling.yaml",
];

/// An HTTP/1.1 request as HTTP/2 headers and body: the method and target as `:method` and
/// `:path` (as sent: an absolute form stays one), the first Host as `:authority` and every
/// Host line also as `host` (so two Host lines stay two), other header names lowercased as
/// HTTP/2 requires and values as sent. The short form's own `Connection: close` is left out.
/// `None`: the request has no HTTP/2 form (a request line or header section not delimited by
/// CRLF, obsolete line folding, or a `#` in the target, which HTTP/2's URI parser cuts before
/// the gateway sees the request: `h2::http2_carries_nothing_the_http1_checks_refuse` shows
/// that the checks and the app then see the same path without it).
fn as_h2(raw: &str) -> Option<(serde_json::Value, String)> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !["HTTP/1.1", "HTTP/1.0"].contains(&version)
        || method.is_empty()
        || target.is_empty()
        || target.contains('#')
    {
        return None;
    }
    let mut authority: Option<&str> = None;
    let mut rest = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) || line.contains(['\r', '\n']) {
            return None;
        }
        let (name, value) = line.split_once(':')?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("host") && authority.is_none() {
            authority = Some(value);
        }
        if !(name.eq_ignore_ascii_case("connection") && value == "close") {
            rest.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    let extra: Vec<(&str, &str)> = rest.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    Some((
        aalgate_tests::h2_headers(method, authority, target, &extra),
        body.to_string(),
    ))
}

/// The path, host, identity-header and smuggling classes of the corpus, sent as HTTP/2 to a
/// TLS listener: nothing reaches the upstream that the case's HTTP/1 form does not let
/// through, what does reach it carries only the gateway's identity, what HTTP/1 refuses is
/// refused, and no redirect leaves the origin. (Statuses may differ: HTTP/2 refuses some
/// requests at the framing layer, with a reset stream.)
#[test]
fn attack_corpus_over_http2() {
    let up = Upstream::start();
    let mut g = Gateway::start_tls(&as_refs(&corpus_policies(up.port)));
    let store = corpus_store(&g);
    let host = format!("localhost:{}", g.port);
    let sessions = Sessions::mint(
        &store,
        ["localhost", "ehr.localhost", "legacy.localhost"]
            .map(|h| format!("{h}:{}", g.port))
            .to_vec(),
    );
    let origin = format!("https://{host}");
    let port = g.port.to_string();
    let mut client = aalgate_tests::H2Client::start();
    let jwks = client.send(&serde_json::json!({
        "port": g.port,
        "headers": aalgate_tests::h2_headers("GET", Some(&host), "/.aalgate/jwks.json", &[]),
    }));
    let jwks = jwks_key(&serde_json::from_str(&jwks.body).expect("JWKS"));

    let mut failures = Vec::new();
    let mut previous = String::new();
    let (mut total, mut same, mut refused_only_h2, mut no_h2_form) = (0, 0, 0, 0);
    for file in corpus_files() {
        let fname = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !H2_CLASSES.contains(&fname.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read corpus file");
        let cf: CaseFile = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{fname}: {e}"));
        for case in cf.cases {
            total += 1;
            let base = [
                ("{host}", host.as_str()),
                ("{origin}", origin.as_str()),
                ("{port}", port.as_str()),
            ];
            let Prepared {
                raw,
                id,
                user,
                aal,
                vars,
            } = prepare_case(&case, &sessions, &base, &host, "__Host-aalgate", &fname);
            let raw = raw.replace("Cookie: aalgate=", "Cookie: __Host-aalgate=");
            let Some((headers, body)) = as_h2(&raw) else {
                no_h2_form += 1;
                continue;
            };
            // What reached the upstream after the previous case was checked is that case's.
            let late = up.take();
            if !late.is_empty() {
                let t: Vec<String> = late.iter().map(shown).collect();
                failures.push(format!(
                    "{previous}: late upstream requests over HTTP/2 {t:?}"
                ));
            }
            previous = id.clone();
            std::thread::sleep(Duration::from_millis(case.pause_ms));
            let r = client.send(&serde_json::json!({
                "port": g.port, "headers": headers, "body": body,
            }));
            if r.elapsed > 1.0 {
                eprintln!("slow case over HTTP/2 ({} s): {id}", r.elapsed);
            }
            // A client that failed, or a connection without HTTP/2, would prove nothing.
            assert!(
                r.error.is_none() && r.alpn.as_deref() == Some("h2"),
                "{id}: {r:?}"
            );
            // What HTTP/1 lets through may arrive a moment after the answer.
            let allowed: Vec<String> = case
                .upstream
                .iter()
                .map(|t| {
                    expand(t, &vars)
                        .trim_end_matches(" (incomplete)")
                        .to_string()
                })
                .collect();
            let waited = std::time::Instant::now();
            while up.seen().len() < allowed.len() && waited.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let seen = up.take();
            let mut fail = |what: String| {
                failures.push(format!(
                    "{id}: {what} (over HTTP/2: {:?} {:?})",
                    r.status,
                    r.reset.as_ref().or(r.goaway.as_ref())
                ))
            };
            for s in &seen {
                if !allowed.contains(&s.target) {
                    fail(format!(
                        "the upstream received {} (HTTP/1 lets through {allowed:?})",
                        shown(s)
                    ));
                }
                if let Err(e) = identity_is_ours(s, user, aal, &jwks) {
                    fail(e);
                }
            }
            let complete = case.upstream.iter().all(|t| !t.ends_with("(incomplete)"));
            if r.status == Some(case.status) && !allowed.is_empty() && complete && seen.is_empty() {
                fail(format!(
                    "answered {} as over HTTP/1, but nothing reached the app",
                    case.status
                ));
            }
            if case.status >= 400 && !r.refused() {
                fail(format!(
                    "HTTP/1 is refused ({}), HTTP/2 is not",
                    case.status
                ));
            }
            for (n, v) in &r.headers {
                if n == "location" && !location_is_safe(v, &origin) {
                    fail(format!("redirect off the gateway: {v}"));
                }
            }
            for s in &case.never_echoed {
                let s = expand(s, &vars);
                if format!("{:?}{}", r.headers, r.body).contains(&s) {
                    fail(format!("response echoes {s:?}"));
                }
            }
            if r.status == Some(case.status) {
                same += 1;
            } else if r.refused() {
                refused_only_h2 += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        up.seen().is_empty(),
        "late upstream requests: {:?}",
        up.seen()
    );
    assert!(g.alive(), "gateway died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
    assert!(total >= 300, "only {total} cases");
    // Most cases must be answered as over HTTP/1: a gateway that refused every HTTP/2 request
    // would otherwise pass.
    assert!(
        same * 10 >= total * 6 && no_h2_form <= 25,
        "{same} the same, {no_h2_form} without an HTTP/2 form, of {total}"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed over HTTP/2:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "attack corpus over HTTP/2: {total} cases; {same} answered as over HTTP/1, \
{refused_only_h2} refused where HTTP/1 answers otherwise, {no_h2_form} without an HTTP/2 form"
    );
}
