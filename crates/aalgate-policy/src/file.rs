//! The policy file as written by IT: a raw, serde-level model. Every key is listed here, unknown
//! keys are errors, and `policies/schema.json` is generated from these types.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::aal::Requirement;
use crate::time::HumanDuration;

/// One app behind the gateway: one YAML file per app.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "aalgate policy file")]
pub struct PolicyFile {
    /// App id: lowercase letters, digits and '-'. Used in logs, metrics and the JWT `aud`.
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub app: Spanned<String>,
    /// The name people see on the gateway's pages (e.g. `Legacy Billing`). Default: the app id.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub display_name: Option<Spanned<String>>,
    /// Who may use the app at all: named users, or members of named groups. Default: anyone
    /// signed in. Each route's own `allow` narrows it further.
    #[serde(default)]
    #[schemars(with = "Option<AllowFile>")]
    pub allow: Option<Spanned<AllowFile>>,
    /// Send the person's e-mail address (when IT set one) to this app: `X-Aalgate-Email` and
    /// the assertion's `email` claim. Default: not sent (an app is told only what it needs).
    /// Naming an `identity_headers.email` header sends it too.
    #[serde(default)]
    pub share_email: bool,
    /// Header names this app already reads the identity from (`REMOTE_USER`-style apps), set
    /// besides `X-Aalgate-*`: e.g. `{ user: X-Remote-User, groups: X-Remote-Groups }`. Clients
    /// can never send them, in any spelling.
    #[serde(default)]
    #[schemars(with = "Option<IdentityHeadersFile>")]
    pub identity_headers: Option<Spanned<IdentityHeadersFile>>,
    /// The host the app is reached on (`billing.clinic.example`, or `host:port` to match one port only).
    #[schemars(with = "String")]
    pub host: Spanned<String>,
    /// Where allowed requests go: `http://host:port` or `https://host:port` (no path).
    #[schemars(with = "String", regex(pattern = r"^https?://"))]
    pub upstream: Spanned<String>,
    /// What a path that no route matches requires. Default: `deny`.
    #[serde(default)]
    #[schemars(with = "Option<Requirement>")]
    pub default: Option<Spanned<Requirement>>,
    /// Match paths case-insensitively (ASCII letters), for apps on case-insensitive servers (IIS).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Forward paths holding an encoded `%` before two hex digits (`/files/100%2541`), for apps
    /// that really use them. Default: refused with 400, because an upstream or framework that
    /// decodes once more would read `%252e%252e%252f` as `../`. The query is never checked.
    #[serde(default)]
    pub allow_double_encoding: bool,
    /// Pass the `Domain` attribute of the app's `Set-Cookie` headers on as the app wrote it, so
    /// they also reach sibling hosts. Default: removed, so each such cookie stays on the app's
    /// own host (a `JSESSIONID; Domain=clinic.example` from one app would otherwise fix the
    /// session of every other). Cookies the app's scripts set in the browser are not seen.
    #[serde(default)]
    pub keep_cookie_domain: bool,
    /// Session limits by AAL for this app. Defaults: aal1 30d; aal2 12h and 30m idle; aal3 12h and 15m idle.
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    /// Route rules. When several match, the most specific wins (see README).
    #[serde(default)]
    #[schemars(with = "Vec<RouteFile>")]
    pub routes: Vec<Spanned<RouteFile>>,
    /// The gateway listeners (by `name` in aalgate.yaml) this app is served on. Default: every
    /// listener whose external port is the host's port, or every listener if the host names none.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub listeners: Option<Spanned<Vec<String>>>,
}

/// One route rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Path pattern: exact (`/login`), `*` for one segment (`/patients/*/chart`), `/**` for a prefix (`/admin/**`).
    #[schemars(with = "String", regex(pattern = r"^/"))]
    pub path: Spanned<String>,
    /// Stable id for logs and metrics. Default: the path pattern.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub id: Option<Spanned<String>>,
    /// HTTP methods this rule applies to (GET implies HEAD). Default: every method.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Spanned<Vec<String>>>,
    /// What the route requires.
    #[schemars(with = "Requirement")]
    pub require: Spanned<Requirement>,
    /// Demand a fresh authentication at the route's AAL, even inside a valid session.
    #[serde(default)]
    #[schemars(with = "Option<StepUpFile>")]
    pub step_up: Option<Spanned<StepUpFile>>,
    /// Tighter idle limit for this route (may only be shorter than the app's).
    #[serde(default)]
    #[schemars(with = "Option<HumanDuration>")]
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// Tighter absolute session limit for this route (may only be shorter than the app's).
    #[serde(default)]
    #[schemars(with = "Option<HumanDuration>")]
    pub max_session_age: Option<Spanned<HumanDuration>>,
    /// Whether an emergency (break-glass) session may reach this route. Default: `deny`.
    #[serde(default)]
    #[schemars(with = "Option<BreakGlass>")]
    pub breakglass: Option<Spanned<BreakGlass>>,
    /// Who may use this route, in addition to the app's `allow` (both must admit the person:
    /// a route narrows its app, never widens it). Break-glass sessions are not subject to it.
    #[serde(default)]
    #[schemars(with = "Option<AllowFile>")]
    pub allow: Option<Spanned<AllowFile>>,
}

/// Header names for the identity the app is given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersFile {
    /// The user name (as `X-Aalgate-User`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub user: Option<Spanned<String>>,
    /// The person's groups that the app's policy names, comma-separated (as `X-Aalgate-Groups`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub groups: Option<Spanned<String>>,
    /// The person's e-mail address, when IT set one (as `X-Aalgate-Email`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub email: Option<Spanned<String>>,
}

/// Who may use an app or route. Users and groups are alternatives: a person named in
/// `users`, or a member of any group in `groups`, is allowed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowFile {
    /// User names, as `aalgate users` knows them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub users: Vec<Spanned<String>>,
    /// Group names (lowercase letters, digits and `-`), as `aalgate users groups` sets them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub groups: Vec<Spanned<String>>,
}

/// Break-glass (emergency access) on a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BreakGlass {
    /// Emergency sessions may use this route (audited, alerted, time-limited).
    Allow,
    /// Emergency sessions are refused here (the default).
    #[default]
    Deny,
}

/// Step-up settings of a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpFile {
    /// The last authentication must be at most this old (e.g. `5m`).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Every request needs its own ceremony, bound to that request (EPCS-style signing): the
    /// WebAuthn challenge is derived from a digest of the method, URL and body, and the audit
    /// log keeps the key's signature over it. Exclusive with `max_age`.
    #[serde(default)]
    pub per_request: bool,
}

/// Session limits by AAL.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// AAL1 limits (NIST ceiling: 30d).
    #[serde(default)]
    pub aal1: Option<LimitsFile>,
    /// AAL2 limits (NIST ceiling: 24h overall, 1h idle).
    #[serde(default)]
    pub aal2: Option<LimitsFile>,
    /// AAL3 limits (NIST ceiling: 12h overall, 15m idle).
    #[serde(default)]
    pub aal3: Option<LimitsFile>,
    /// Set to the reason (e.g. a risk-acceptance ticket) to allow limits above the NIST SP 800-63B-4 ceilings.
    /// Logged as a warning at every start and reload.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub exceed_nist_ceilings: Option<Spanned<String>>,
}

/// Limits at one AAL.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Re-authenticate this long after login, whatever the activity.
    #[serde(default)]
    #[schemars(with = "Option<HumanDuration>")]
    pub max_session_age: Option<Spanned<HumanDuration>>,
    /// Re-authenticate after this long without a request.
    #[serde(default)]
    #[schemars(with = "Option<HumanDuration>")]
    pub idle_timeout: Option<Spanned<HumanDuration>>,
}

/// The JSON Schema of a policy file, pretty-printed, as checked in at `policies/schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PolicyFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
