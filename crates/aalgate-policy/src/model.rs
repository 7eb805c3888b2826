//! The validated policy set: produced only by [`crate::load_from_strs`], immutable, and the only thing the proxy sees.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::aal::Requirement;
use crate::decide::{Access, Limits, Timeouts};
use crate::file::{LimitsFile, PolicyFile, RouteFile};
use crate::host::HostPort;
use crate::path::NormalizedTarget;
use crate::pattern::{Matcher, Methods, RoutePattern};
use crate::time::format_duration;

/// Where something was written: `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLoc {
    /// The policy file.
    pub file: Arc<Path>,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
}

impl SourceLoc {
    fn at(file: &Arc<Path>, loc: Location) -> SourceLoc {
        SourceLoc {
            file: file.clone(),
            line: loc.line(),
            column: loc.column(),
        }
    }
    fn file_start(file: &Arc<Path>) -> SourceLoc {
        SourceLoc {
            file: file.clone(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Error or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The set is refused.
    Error,
    /// Accepted, but IT should look.
    Warning,
}

/// One problem in a policy file: `file:line:column: what is wrong; how to fix it`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where.
    pub loc: SourceLoc,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}: {}{}; {}", self.loc, sev, self.message, self.fix)
    }
}

/// Where an app's allowed requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `https` upstream.
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
}

impl Upstream {
    fn parse(s: &str) -> Result<Upstream, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err("upstream must start with http:// or https://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(
                "upstream must be scheme://host[:port] with no path, query or userinfo".into(),
            );
        }
        let hp = HostPort::parse(rest).map_err(|e| format!("upstream host: {e}"))?;
        let port = hp.port.unwrap_or(if tls { 443 } else { 80 });
        let host = hp
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Upstream { tls, host, port })
    }

    /// `host:port`, bracketing IPv6, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A validated app.
#[derive(Clone, Debug)]
pub struct App {
    /// App id.
    pub name: String,
    /// What people see on the gateway's pages (`display_name`, else the id).
    pub display_name: String,
    /// The app's `allow` (`None`: anyone signed in).
    pub allow: Option<crate::allow::Allow>,
    /// Every group the app's policy names (its `allow` and its routes'), sorted: the only
    /// groups of a person the app is told about.
    pub groups: Vec<String>,
    /// Header names the app reads the identity from (`identity_headers`).
    pub identity_headers: crate::allow::IdentityHeaders,
    /// Whether the app is told the person's e-mail address (`share_email`, or an
    /// `identity_headers.email`).
    pub share_email: bool,
    /// The host it serves.
    pub host: HostPort,
    /// Where allowed requests go.
    pub upstream: Upstream,
    /// What unmatched paths require.
    pub default: Requirement,
    /// Case-insensitive matching.
    pub case_insensitive: bool,
    /// Whether paths may hold an encoded `%` before two hex digits (`allow_double_encoding`).
    pub double_encoding: crate::path::DoubleEncoding,
    /// Whether the app's `Set-Cookie` keeps its `Domain` (`keep_cookie_domain`).
    pub keep_cookie_domain: bool,
    /// Limits by AAL.
    pub timeouts: Timeouts,
    /// Number of route rules.
    pub route_count: usize,
    /// Where the app is defined.
    pub source: SourceLoc,
    /// Listener names it is served on (`listeners:`); empty means any with the host's port.
    pub listeners: Vec<String>,
}

impl App {
    /// Whether the app is served on the listener called `name`.
    pub fn served_on(&self, name: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| l == name)
    }
}

/// A validated route rule (or an app's default, as a rule without a pattern).
#[derive(Clone, Debug)]
pub struct Rule {
    /// Stable id for logs and metrics (`default` for the app default).
    pub id: String,
    /// Index of the app in [`PolicySet::apps`].
    pub app: usize,
    /// The pattern; `None` for the app default.
    pub pattern: Option<RoutePattern>,
    /// The methods.
    pub methods: Methods,
    /// What the decision needs.
    pub access: Access,
    /// Where the rule is written.
    pub source: SourceLoc,
}

#[derive(Debug)]
struct HostEntry {
    port: Option<u16>,
    case_insensitive: bool,
    matcher: Matcher,
    fallback: usize,
}

/// A complete, valid set of policies.
#[derive(Debug)]
pub struct PolicySet {
    apps: Vec<App>,
    rules: Vec<Rule>,
    hosts: HashMap<String, Vec<HostEntry>>,
    warnings: Vec<Diagnostic>,
    files: Vec<PathBuf>,
}

/// What [`PolicySet::lookup`] found.
#[derive(Debug)]
pub struct Match<'a> {
    /// The app.
    pub app: &'a App,
    /// The rule that applies (a route, or the app default).
    pub rule: &'a Rule,
    /// Index of the rule in [`PolicySet::rules`].
    pub rule_index: usize,
}

impl PolicySet {
    /// The apps, in file order.
    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// Every rule, app defaults included.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Warnings to log at every load.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The files loaded.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether some app serves this host (any port, or this port).
    pub fn serves_host(&self, host: &HostPort) -> bool {
        self.hosts
            .get(&host.host)
            .is_some_and(|es| es.iter().any(|e| e.port.is_none() || e.port == host.port))
    }

    /// The app for a rule.
    pub fn app_of(&self, rule: &Rule) -> &App {
        &self.apps[rule.app]
    }

    /// How paths on `host` treat double encoding: its app's choice, or refused.
    pub fn double_encoding(&self, host: &HostPort) -> crate::path::DoubleEncoding {
        self.app_for_host(host)
            .map_or(crate::path::DoubleEncoding::Refuse, |a| a.double_encoding)
    }

    /// The app serving `host`, chosen as [`PolicySet::lookup`] chooses: the one naming this
    /// port, else one naming no port. Every host comparison goes through here or `lookup`.
    pub fn app_for_host(&self, host: &HostPort) -> Option<&App> {
        let entries = self.hosts.get(&host.host)?;
        let entry = entries
            .iter()
            .find(|e| e.port.is_some() && e.port == host.port)
            .or_else(|| entries.iter().find(|e| e.port.is_none()))?;
        self.rules
            .get(entry.fallback)
            .and_then(|r| self.apps.get(r.app))
    }

    /// Finds the rule for a request. `None` means no app serves this host (421).
    pub fn lookup(
        &self,
        host: &HostPort,
        method: &str,
        target: &NormalizedTarget,
    ) -> Option<Match<'_>> {
        let entries = self.hosts.get(&host.host)?;
        let entry = entries
            .iter()
            .find(|e| e.port.is_some() && e.port == host.port)
            .or_else(|| entries.iter().find(|e| e.port.is_none()))?;
        let upper;
        let method = if method.bytes().any(|b| b.is_ascii_lowercase()) {
            upper = method.to_ascii_uppercase();
            upper.as_str()
        } else {
            method
        };
        let find = |segs: &mut dyn Iterator<Item = &str>| -> usize {
            let index = if entry.case_insensitive {
                let folded: Vec<String> = segs.map(|s| s.to_ascii_lowercase()).collect();
                let segs: Vec<&str> = folded.iter().map(String::as_str).collect();
                entry.matcher.find(&segs, method)
            } else {
                let segs: Vec<&str> = segs.collect();
                entry.matcher.find(&segs, method)
            };
            index.unwrap_or(entry.fallback)
        };
        let mut rule_index = find(&mut target.match_segments());
        // `/admin;x` is `/admin` to a Java server but a different segment to most others: match
        // both readings and apply the stricter rule, so neither kind of upstream is bypassed.
        if target.has_params() {
            let literal = find(&mut target.literal_segments());
            if self.rules[literal].access.require.strictness()
                > self.rules[rule_index].access.require.strictness()
            {
                rule_index = literal;
            }
        }
        let rule = &self.rules[rule_index];
        Some(Match {
            app: &self.apps[rule.app],
            rule,
            rule_index,
        })
    }
}

/// Collects diagnostics for one load.
struct Diags {
    list: Vec<Diagnostic>,
}

impl Diags {
    fn error(&mut self, loc: SourceLoc, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(Diagnostic {
            severity: Severity::Error,
            loc,
            message: message.into(),
            fix: fix.into(),
        });
    }
    fn warn(&mut self, loc: SourceLoc, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(Diagnostic {
            severity: Severity::Warning,
            loc,
            message: message.into(),
            fix: fix.into(),
        });
    }
    fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Parses and validates policy text already in memory (`(path, text)` pairs).
pub fn load_from_strs(sources: &[(PathBuf, String)]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut diags = Diags { list: Vec::new() };
    let set = load_sources(sources, &mut diags);
    if diags.has_errors() {
        return Err(diags.list);
    }
    match set {
        Some(mut set) => {
            set.warnings = diags.list;
            set.files = sources.iter().map(|(p, _)| p.clone()).collect();
            Ok(set)
        }
        None => Err(diags.list),
    }
}

fn parse_file(file: &Arc<Path>, text: &str, diags: &mut Diags) -> Option<PolicyFile> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    match serde_saphyr::from_str_with_options::<PolicyFile>(text, options) {
        Ok(p) => Some(p),
        Err(e) => {
            let loc = e
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| SourceLoc::at(file, l))
                .unwrap_or_else(|| SourceLoc::file_start(file));
            let message = clean_yaml_message(&e.without_snippet().to_string());
            let fix = yaml_fix(&message);
            diags.error(loc, message, fix);
            None
        }
    }
}

/// Drops the position suffix serde-saphyr appends, since the diagnostic prints its own.
fn clean_yaml_message(m: &str) -> String {
    let m = m.lines().next().unwrap_or(m);
    let m = match m.rfind(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    m.trim().trim_end_matches('.').to_string()
}

fn yaml_fix(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct the key (keys are listed in policies/schema.json)".into()
    } else if message.contains("missing field") {
        "add the key".into()
    } else if message.contains("duplicate") {
        "keep one of the duplicate keys".into()
    } else if message.contains("bool") {
        "write true or false (yes/no/on/off are not booleans here)".into()
    } else if message.contains("unknown variant") {
        "use one of the listed values".into()
    } else {
        "fix the YAML at this position".into()
    }
}

/// An app id (and listener name): lowercase letters, digits and `-`, at most 63.
pub fn valid_app_id(s: &str) -> bool {
    // The same spelling as a group name.
    crate::allow::valid_group(s)
}

fn dur(d: Duration) -> String {
    format_duration(d)
}

/// Applies a `timeouts:` section over the defaults and checks it against the NIST ceilings.
#[allow(
    clippy::too_many_lines,
    reason = "one check per limit and AAL, in the order the file reads"
)]
fn build_timeouts(file: &Arc<Path>, pf: &PolicyFile, diags: &mut Diags) -> Timeouts {
    let mut t = Timeouts::DEFAULT;
    let Some(tf) = &pf.timeouts else { return t };
    let over = tf.exceed_nist_ceilings.as_ref();
    if let Some(o) = over {
        if o.value.trim().is_empty() {
            diags.error(
                SourceLoc::at(file, o.referenced),
                "exceed_nist_ceilings is empty",
                "give the reason (e.g. the risk-acceptance ticket), or remove the key",
            );
        }
    }
    let mut exceeded = false;
    for (aal, lf) in [
        (crate::Aal::Aal1, &tf.aal1),
        (crate::Aal::Aal2, &tf.aal2),
        (crate::Aal::Aal3, &tf.aal3),
    ] {
        let Some(LimitsFile {
            max_session_age,
            idle_timeout,
        }) = lf
        else {
            continue;
        };
        let ceiling = Timeouts::NIST_CEILING.get(aal);
        let slot: &mut Limits = t.get_mut(aal);
        if let Some(m) = max_session_age {
            slot.max_session_age = m.value.0;
            if m.value.0 > ceiling.max_session_age {
                exceeded = true;
                let msg = format!(
                    "{aal} max_session_age {} exceeds the NIST SP 800-63B-4 ceiling of {}",
                    dur(m.value.0),
                    dur(ceiling.max_session_age)
                );
                if over.is_some() {
                    diags.warn(
                        SourceLoc::at(file, m.referenced),
                        msg,
                        "accepted by timeouts.exceed_nist_ceilings; review the risk acceptance",
                    );
                } else {
                    diags.error(SourceLoc::at(file, m.referenced), msg, format!("lower it to {} or less, or set timeouts.exceed_nist_ceilings: <reason>", dur(ceiling.max_session_age)));
                }
            }
        }
        if let Some(i) = idle_timeout {
            slot.idle_timeout = Some(i.value.0);
            if let Some(c) = ceiling.idle_timeout.filter(|c| i.value.0 > *c) {
                exceeded = true;
                let msg = format!(
                    "{aal} idle_timeout {} exceeds the NIST SP 800-63B-4 ceiling of {}",
                    dur(i.value.0),
                    dur(c)
                );
                if over.is_some() {
                    diags.warn(
                        SourceLoc::at(file, i.referenced),
                        msg,
                        "accepted by timeouts.exceed_nist_ceilings; review the risk acceptance",
                    );
                } else {
                    diags.error(SourceLoc::at(file, i.referenced), msg, format!("lower it to {} or less, or set timeouts.exceed_nist_ceilings: <reason>", dur(c)));
                }
            }
            if i.value.0 > slot.max_session_age {
                diags.error(
                    SourceLoc::at(file, i.referenced),
                    format!(
                        "{aal} idle_timeout {} is longer than max_session_age {}",
                        dur(i.value.0),
                        dur(slot.max_session_age)
                    ),
                    "make idle_timeout shorter than max_session_age",
                );
            }
        }
    }
    if let Some(o) = over {
        if !exceeded {
            diags.warn(
                SourceLoc::at(file, o.referenced),
                "exceed_nist_ceilings is set but no limit exceeds a ceiling",
                "remove the key",
            );
        }
    }
    t
}

/// Validates one `allow` (names, emptiness) into its sorted form. `require` is the rule's:
/// `allow` on a public or denied route has no effect, which is worth a warning.
fn build_allow(
    file: &Arc<Path>,
    allow: Option<&Spanned<crate::file::AllowFile>>,
    require: Requirement,
    diags: &mut Diags,
) -> Option<crate::allow::Allow> {
    let a = allow?;
    let loc = SourceLoc::at(file, a.referenced);
    if a.value.users.is_empty() && a.value.groups.is_empty() {
        diags.error(
            loc.clone(),
            "allow names no users and no groups, so it would admit nobody",
            "list users or groups (e.g. `allow: { groups: [billing] }`); remove allow to admit anyone signed in; use `require: deny` to close the route",
        );
    }
    match require {
        Requirement::Public => diags.warn(
            loc.clone(),
            "allow has no effect on a `require: public` route: it is forwarded without a session, so nobody is known to check",
            "remove allow here, or require aal2 or aal3",
        ),
        Requirement::Deny => diags.warn(
            loc.clone(),
            "allow has no effect on a `require: deny` route: nobody may use it",
            "remove allow here",
        ),
        _ => {}
    }
    let mut out = crate::allow::Allow::default();
    for u in &a.value.users {
        if crate::allow::valid_user_id(&u.value) {
            out.users.push(u.value.clone());
        } else {
            diags.error(
                SourceLoc::at(file, u.referenced),
                format!("user name {:?} is not valid", u.value),
                "write a user name as `aalgate users` knows it: 1-64 letters, digits, '.', '_', '-' or '@'",
            );
        }
    }
    for g in &a.value.groups {
        if crate::allow::valid_group(&g.value) {
            out.groups.push(g.value.clone());
        } else {
            diags.error(
                SourceLoc::at(file, g.referenced),
                format!("group name {:?} is not valid", g.value),
                "use lowercase letters, digits and '-' (at most 63), e.g. epcs-signers",
            );
        }
    }
    out.users.sort();
    out.users.dedup();
    out.groups.sort();
    out.groups.dedup();
    Some(out)
}

struct Draft {
    app: App,
    routes: Vec<(RoutePattern, Rule)>,
    default_rule: Rule,
}

#[allow(
    clippy::too_many_lines,
    reason = "one app's validation, key after key, each with its own diagnostic"
)]
fn build_app(
    file: &Arc<Path>,
    pf: &PolicyFile,
    app_index: usize,
    diags: &mut Diags,
) -> Option<Draft> {
    let errors_before = diags
        .list
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let name = pf.app.value.clone();
    if !valid_app_id(&name) {
        diags.error(
            SourceLoc::at(file, pf.app.referenced),
            format!("app id {name:?} is not valid"),
            "use lowercase letters, digits and '-' (at most 63), e.g. billing",
        );
    }
    let mut listeners = Vec::new();
    if let Some(l) = &pf.listeners {
        if l.value.is_empty() {
            diags.error(
                SourceLoc::at(file, l.referenced),
                "listeners is empty, so the app would be served nowhere",
                "name at least one listener from aalgate.yaml, or remove the key",
            );
        }
        for n in &l.value {
            if !valid_app_id(n) {
                diags.error(
                    SourceLoc::at(file, l.referenced),
                    format!("listener name {n:?} is not valid"),
                    "use the name: of a listener in aalgate.yaml (lowercase letters, digits and '-')",
                );
            } else if !listeners.contains(n) {
                listeners.push(n.clone());
            }
        }
    }
    let host = match HostPort::parse(&pf.host.value) {
        Ok(h) => Some(h),
        Err(e) => {
            diags.error(
                SourceLoc::at(file, pf.host.referenced),
                format!("host {:?}: {e}", pf.host.value),
                "write a host name such as billing.clinic.example, optionally with :port",
            );
            None
        }
    };
    let upstream = match Upstream::parse(&pf.upstream.value) {
        Ok(u) => Some(u),
        Err(e) => {
            diags.error(
                SourceLoc::at(file, pf.upstream.referenced),
                format!("upstream {:?}: {e}", pf.upstream.value),
                "write it like http://127.0.0.1:9000",
            );
            None
        }
    };
    let timeouts = build_timeouts(file, pf, diags);
    let (default, default_loc) = match &pf.default {
        Some(d) => (d.value, SourceLoc::at(file, d.referenced)),
        None => (Requirement::Deny, SourceLoc::at(file, pf.app.referenced)),
    };
    let display_name = match &pf.display_name {
        Some(d) => {
            let v = d.value.trim();
            if v.is_empty() || v.chars().count() > 100 || v.chars().any(char::is_control) {
                diags.error(
                    SourceLoc::at(file, d.referenced),
                    format!("display_name {:?} is not valid", d.value),
                    "write the name people know the app by, 1 to 100 characters on one line (e.g. Legacy Billing)",
                );
            }
            v.to_string()
        }
        None => name.clone(),
    };
    let mut identity_headers = crate::allow::IdentityHeaders::default();
    if let Some(h) = &pf.identity_headers {
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (what, slot, v) in [
            ("user", &mut identity_headers.user, &h.value.user),
            ("groups", &mut identity_headers.groups, &h.value.groups),
            ("email", &mut identity_headers.email, &h.value.email),
        ] {
            let Some(v) = v else { continue };
            let loc = SourceLoc::at(file, v.referenced);
            if let Some(problem) = crate::allow::identity_header_problem(&v.value) {
                diags.error(
                    loc,
                    format!("identity_headers.{what}: {:?} {problem}", v.value),
                    "name a header the app reads, such as X-Remote-User or X-Remote-Groups",
                );
                continue;
            }
            let folded = crate::allow::fold_header(&v.value)
                .trim_matches('-')
                .to_string();
            if let Some((_, other)) = seen.iter().find(|(f, _)| *f == folded) {
                diags.error(
                    loc,
                    format!("identity_headers.{what}: {:?} is the same header as identity_headers.{other}", v.value),
                    "give each a header of its own",
                );
                continue;
            }
            seen.push((folded, what));
            *slot = Some(v.value.to_ascii_lowercase());
        }
    }
    // The app's `allow` applies to its default too: checked against the default's requirement.
    let app_allow = build_allow(file, pf.allow.as_ref(), Requirement::Aal2, diags);
    match default {
        Requirement::Public => diags.warn(
            default_loc.clone(),
            "default: public forwards every unlisted path without a session",
            "prefer default: deny or aal2 and list public paths as routes",
        ),
        Requirement::Aal1 => diags.warn(
            default_loc.clone(),
            "default: aal1 allows single-factor access to every unlisted path",
            "use aal2 or higher for anything that may show patient data",
        ),
        _ => {}
    }

    let mut routes: Vec<(RoutePattern, Rule)> = Vec::new();
    let mut ids: HashMap<String, u64> = HashMap::new();
    for r in &pf.routes {
        let RouteFile {
            path,
            id,
            methods,
            require,
            step_up,
            idle_timeout,
            max_session_age,
            breakglass,
            allow,
        } = &r.value;
        let rloc = SourceLoc::at(file, r.referenced);
        let ploc = SourceLoc::at(file, path.referenced);
        let pattern = match RoutePattern::parse(&path.value, pf.case_insensitive) {
            Ok(p) => p,
            Err(e) => {
                diags.error(
                    ploc,
                    format!("path {:?}: {e}", path.value),
                    "see the pattern syntax in the README (exact, *, /**)",
                );
                continue;
            }
        };
        if path.value == "/.aalgate" || path.value.starts_with("/.aalgate/") {
            diags.error(
                ploc.clone(),
                "paths under /.aalgate/ belong to the gateway and are never forwarded",
                "remove this route",
            );
        }
        let rule_id = match id {
            Some(i) => {
                if i.value.is_empty()
                    || i.value.len() > 100
                    || !i.value.bytes().all(|b| b.is_ascii_graphic())
                {
                    diags.error(
                        SourceLoc::at(file, i.referenced),
                        format!("route id {:?} is not valid", i.value),
                        "use 1 to 100 visible ASCII characters without spaces",
                    );
                }
                i.value.clone()
            }
            None => match methods {
                Some(m) => format!("{} {}", m.value.join(",").to_ascii_uppercase(), path.value),
                None => path.value.clone(),
            },
        };
        if let Some(line) = ids.insert(rule_id.clone(), rloc.line) {
            diags.error(
                rloc.clone(),
                format!("route id {rule_id:?} is already used at line {line}"),
                "give each route a distinct id (or a distinct path)",
            );
        }
        let methods = match methods {
            None => Methods::Any,
            Some(m) => {
                let mloc = SourceLoc::at(file, m.referenced);
                if m.value.is_empty() {
                    diags.error(
                        mloc.clone(),
                        "methods is an empty list, so the rule could never match",
                        "list methods, or remove the key for every method",
                    );
                }
                let mut list = Vec::new();
                for name in &m.value {
                    let up = name.to_ascii_uppercase();
                    if up.is_empty() || up.len() > 20 || !up.bytes().all(|b| b.is_ascii_uppercase())
                    {
                        diags.error(
                            mloc.clone(),
                            format!("{name:?} is not an HTTP method"),
                            "use names such as GET, POST, PUT, PATCH, DELETE",
                        );
                    } else if !list.contains(&up) {
                        list.push(up);
                    }
                }
                Methods::Only(list)
            }
        };
        let req = require.value;
        let route_aal = req.aal();
        let need_aal = |what: &str, loc: SourceLoc, diags: &mut Diags| {
            if route_aal.is_none() {
                diags.error(
                    loc,
                    format!("{what} has no effect on a `require: {req}` route"),
                    "remove it, or require aal1, aal2 or aal3",
                );
            }
        };
        if req == Requirement::Aal1 {
            diags.warn(
                SourceLoc::at(file, require.referenced),
                "route requires aal1 (a single factor)",
                "patient data needs aal2 or higher",
            );
        }
        let step_up = step_up.as_ref().and_then(|s| {
            let loc = SourceLoc::at(file, s.referenced);
            need_aal("step_up", loc.clone(), diags);
            match (s.value.max_age, s.value.per_request) {
                (Some(_), true) => {
                    diags.error(
                        loc,
                        "step_up has both max_age and per_request: true",
                        "keep one: per_request asks for a ceremony bound to each request, so a max_age adds nothing",
                    );
                    None
                }
                (None, false) => {
                    diags.error(
                        loc,
                        "step_up needs max_age or per_request: true",
                        "write `step_up: { max_age: 5m }` (fresh within 5 minutes) or `step_up: { per_request: true }` (a ceremony for every request)",
                    );
                    None
                }
                (None, true) => Some(crate::decide::StepUp::PerRequest),
                (Some(max_age), false) => {
                    if max_age.0 < std::time::Duration::from_secs(30) {
                        diags.warn(
                            loc,
                            format!(
                                "step_up max_age {} is shorter than a ceremony and its way back",
                                dur(max_age.0)
                            ),
                            "use at least 30s, or `step_up: { per_request: true }` if every such request needs its own ceremony (a signature bound to that request, as EPCS signing does)",
                        );
                    }
                    Some(crate::decide::StepUp::MaxAge(max_age.0))
                }
            }
        });
        if let (Some(crate::decide::StepUp::PerRequest), Some(b)) = (step_up, breakglass.as_ref()) {
            if b.value == crate::file::BreakGlass::Allow {
                diags.error(
                    SourceLoc::at(file, b.referenced),
                    "breakglass: allow on a per_request route",
                    "an emergency code cannot sign a request: remove breakglass here, or use `step_up: { max_age: ... }` if emergency access must reach this route",
                );
            }
        }
        let check_tighten = |what: &str,
                             v: &Option<Spanned<crate::time::HumanDuration>>,
                             pick: fn(Limits) -> Option<Duration>,
                             diags: &mut Diags| {
            let v = v.as_ref()?;
            let loc = SourceLoc::at(file, v.referenced);
            need_aal(what, loc.clone(), diags);
            if let Some(aal) = route_aal {
                if let Some(base) = pick(timeouts.get(aal)) {
                    if v.value.0 > base {
                        diags.error(loc, format!("{what} {} is longer than the app's {aal} limit of {}; a route may only tighten", dur(v.value.0), dur(base)), format!("use {} or less, or raise the app's timeouts.{aal}", dur(base)));
                    }
                }
            }
            Some(v.value.0)
        };
        let idle = check_tighten("idle_timeout", idle_timeout, |l| l.idle_timeout, diags);
        let max_age = check_tighten(
            "max_session_age",
            max_session_age,
            |l| Some(l.max_session_age),
            diags,
        );
        let rule = Rule {
            id: rule_id,
            app: app_index,
            pattern: Some(pattern.clone()),
            methods,
            access: Access {
                require: req,
                step_up,
                timeouts,
                max_session_age: max_age,
                idle_timeout: idle,
                breakglass: breakglass
                    .as_ref()
                    .is_some_and(|b| b.value == crate::file::BreakGlass::Allow),
                allow: app_allow
                    .iter()
                    .cloned()
                    .chain(build_allow(file, allow.as_ref(), req, diags))
                    .collect(),
            },
            source: rloc,
        };
        // Same pattern and overlapping methods in one app would tie.
        for (p, other) in &routes {
            if p.same_paths(&pattern) {
                let both_any = matches!(
                    (&other.methods, &rule.methods),
                    (Methods::Any, Methods::Any)
                );
                let both_only = matches!(
                    (&other.methods, &rule.methods),
                    (Methods::Only(_), Methods::Only(_))
                );
                if both_any || (both_only && other.methods.overlaps(&rule.methods)) {
                    diags.error(rule.source.clone(), format!("route {:?} has the same path as the route at line {} and overlapping methods, so neither is more specific", pattern.as_str(), other.source.line), "merge the two rules, or give them disjoint methods");
                }
            }
        }
        routes.push((pattern, rule));
    }
    let errors_after = diags
        .list
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let (host, upstream) = (host?, upstream?);
    if errors_after > errors_before {
        return None;
    }
    let default_rule = Rule {
        id: "default".into(),
        app: app_index,
        pattern: None,
        methods: Methods::Any,
        access: Access {
            require: default,
            step_up: None,
            timeouts,
            max_session_age: None,
            idle_timeout: None,
            breakglass: false,
            allow: app_allow.iter().cloned().collect(),
        },
        source: default_loc,
    };
    Some(Draft {
        app: App {
            display_name,
            share_email: pf.share_email || identity_headers.email.is_some(),
            identity_headers,
            groups: {
                let mut g: Vec<String> = app_allow
                    .iter()
                    .chain(routes.iter().flat_map(|(_, r)| r.access.allow.iter()))
                    .flat_map(|a| a.groups.iter().cloned())
                    .collect();
                g.sort();
                g.dedup();
                g
            },
            allow: app_allow,
            name,
            host,
            upstream,
            default,
            case_insensitive: pf.case_insensitive,
            double_encoding: if pf.allow_double_encoding {
                crate::path::DoubleEncoding::Allow
            } else {
                crate::path::DoubleEncoding::Refuse
            },
            keep_cookie_domain: pf.keep_cookie_domain,
            timeouts,
            route_count: routes.len(),
            source: SourceLoc::at(file, pf.app.referenced),
            listeners,
        },
        routes,
        default_rule,
    })
}

fn load_sources(sources: &[(PathBuf, String)], diags: &mut Diags) -> Option<PolicySet> {
    let mut drafts: Vec<Draft> = Vec::new();
    let mut names: HashMap<String, SourceLoc> = HashMap::new();
    for (path, text) in sources {
        let file: Arc<Path> = Arc::from(path.as_path());
        let Some(pf) = parse_file(&file, text, diags) else {
            continue;
        };
        if let Some(first) = names.get(&pf.app.value) {
            diags.error(
                SourceLoc::at(&file, pf.app.referenced),
                format!("app {:?} is already defined at {first}", pf.app.value),
                "give each app a distinct id",
            );
            continue;
        }
        names.insert(
            pf.app.value.clone(),
            SourceLoc::at(&file, pf.app.referenced),
        );
        if let Some(d) = build_app(&file, &pf, drafts.len(), diags) {
            drafts.push(d);
        }
    }
    if diags.has_errors() {
        return None;
    }
    // Group apps by (host, port) and check the ones that share a host.
    let mut groups: Vec<(HostPort, Vec<usize>)> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        match groups.iter_mut().find(|(h, _)| *h == d.app.host) {
            Some((_, v)) => v.push(i),
            None => groups.push((d.app.host.clone(), vec![i])),
        }
    }
    let mut apps = Vec::new();
    let mut rules = Vec::new();
    let mut hosts: HashMap<String, Vec<HostEntry>> = HashMap::new();
    for (host, members) in &groups {
        if members.len() > 1 {
            check_shared_host(host, members, &drafts, diags);
        }
    }
    if diags.has_errors() {
        return None;
    }
    for d in &drafts {
        apps.push(d.app.clone());
    }
    for (host, members) in groups {
        let mut matcher = Matcher::default();
        let mut fallback = None;
        for &m in &members {
            let d = &drafts[m];
            for (pattern, rule) in &d.routes {
                matcher.insert(pattern, rule.methods.clone(), rules.len());
                rules.push(rule.clone());
            }
            let default_index = rules.len();
            rules.push(d.default_rule.clone());
            if d.app.default != Requirement::Deny || fallback.is_none() {
                fallback = Some(default_index);
            }
        }
        let case_insensitive = drafts[members[0]].app.case_insensitive;
        let Some(fallback) = fallback else { continue };
        hosts.entry(host.host.clone()).or_default().push(HostEntry {
            port: host.port,
            case_insensitive,
            matcher,
            fallback,
        });
    }
    Some(PolicySet {
        apps,
        rules,
        hosts,
        warnings: Vec::new(),
        files: Vec::new(),
    })
}

fn check_shared_host(host: &HostPort, members: &[usize], drafts: &[Draft], diags: &mut Diags) {
    let non_deny: Vec<&Draft> = members
        .iter()
        .map(|&i| &drafts[i])
        .filter(|d| d.app.default != Requirement::Deny)
        .collect();
    if non_deny.len() > 1 {
        let d = non_deny[1];
        diags.error(d.default_rule.source.clone(), format!("apps {:?} and {:?} share host {host} and both have a non-deny default, so an unmatched path would be ambiguous", non_deny[0].app.name, d.app.name), "set default: deny in all but one of them");
    }
    for (n, &a) in members.iter().enumerate() {
        for &b in &members[n + 1..] {
            let (da, db) = (&drafts[a], &drafts[b]);
            if da.app.case_insensitive != db.app.case_insensitive {
                diags.error(
                    db.app.source.clone(),
                    format!(
                        "app {:?} shares host {host} with {:?} but differs in case_insensitive",
                        db.app.name, da.app.name
                    ),
                    "use the same case_insensitive setting for apps on one host",
                );
            }
            // The path is normalized before the app is known from it.
            if da.app.double_encoding != db.app.double_encoding {
                diags.error(
                    db.app.source.clone(),
                    format!(
                        "app {:?} shares host {host} with {:?} but differs in allow_double_encoding",
                        db.app.name, da.app.name
                    ),
                    "use the same allow_double_encoding setting for apps on one host",
                );
            }
            for (pa, ra) in &da.routes {
                for (pb, rb) in &db.routes {
                    if pa.overlaps(pb) && ra.methods.overlaps(&rb.methods) {
                        diags.error(rb.source.clone(), format!("route {:?} of app {:?} overlaps route {:?} of app {:?} ({}) on the shared host {host}", pb.as_str(), db.app.name, pa.as_str(), da.app.name, ra.source), "give the apps different hosts, or disjoint paths or methods");
                    }
                }
            }
        }
    }
}
