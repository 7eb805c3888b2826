//! What the proxy phases and the gateway's own endpoints share, and nothing that uses either:
//! [`State`] (the service's state), the per-request [`Ctx`] and a [`Reply`], the sign-in
//! service's settings and stores, the gateway's cookies, and the anonymous quota's answer.
//! The proxy (`proxy`), the endpoints (`endpoints`), responses (`http`) and kept forms (`kept`)
//! import from here, so none of them imports another's module for these, and nothing imports
//! the proxy. The session helpers (`session_of`, `end_session`) and the host helpers
//! (`is_auth_host`, `canonical_host`, `app_of_host`) have their one definition here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_auth::model::Membership;
use aalgate_auth::{Ceremonies, Directory, DirectoryError, Token};
use aalgate_policy::{HostPort, NormalizedTarget, PolicySet, SessionKind, Subject, Timestamp};
use aalgate_session::{Session as UserSession, SessionId, SessionKey, SessionStore};
use pingora::http::RequestHeader;
use pingora::prelude::Session;

use crate::assertion::Signer;
use crate::headers;
use crate::outcome::Outcome;

/// At most this many session cookies are tried (duplicates planted by a sibling domain).
pub(crate) const MAX_COOKIES: usize = 4;
/// A session cookie's value: 256 bits in base64url without padding.
const SESSION_COOKIE_LEN: usize = 43;

/// The anonymous-state counters count in 2-minute buckets (`kept`'s quota).
pub(crate) const ANON_BUCKET_SECS: u64 = 120;

/// Sign-in settings and stores shared by the endpoints.
pub struct SignInService {
    /// Users, invites, ceremony state.
    pub dir: Directory,
    /// The WebAuthn relying party.
    pub rp: Ceremonies,
    /// `http` or `https`: the scheme of `public_origin`, used for app-host redirects too.
    pub scheme: &'static str,
    /// Break-glass codes, local audit and alert.
    pub breakglass: crate::breakglass::BreakGlassConfig,
    /// Live break-glass sessions of this instance and the failure throttle.
    pub emergencies: crate::breakglass::Emergencies,
    /// Failed sign-ins by client and browser binding: they slow the one who fails, never a
    /// valid assertion.
    pub failures: crate::limits::SignInFailures,
    /// Encrypts forms kept across a sign-in.
    pub sealer: crate::preserve::Sealer,
    /// Largest form body kept.
    pub body_limit: usize,
    /// Kept-form bytes allowed in the whole store, and for one person.
    pub quota: (u64, u64),
    /// Bodies being read to keep them, at most this many at once.
    pub reads: tokio::sync::Semaphore,
    /// New flows per client address.
    pub flow_limiter: crate::limits::FlowLimiter,
    /// Bytes of anonymous flows and ceremonies allowed in the whole store.
    pub anonymous_quota: u64,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// When a sign-in start last loaded the decoy population itself.
    pub decoy_load: tokio::sync::Mutex<Option<Instant>>,
    /// The hospital's identity providers.
    pub federation: crate::federation::Federation,
    /// `public_origin` as configured (the providers' redirect URI is under it).
    pub origin: String,
    /// SCIM provisioning's client credential (`scim:`); `None`: no SCIM endpoint.
    pub scim: Option<crate::provisioning::ScimAccess>,
}

/// How often a sign-in start may load the decoy population itself, while the background
/// refresh has not loaded it yet (an anonymous client must not make the gateway scan the
/// directory on every request).
pub(crate) const DECOY_LOAD_RETRY: Duration = Duration::from_secs(10);

impl SignInService {
    /// Reloads whose options a made-up user name's decoy looks like (everyone in `dir`, the
    /// directory over a store deadline fit for a scan). A record that cannot be read is
    /// skipped, with a warning, rather than leaving every decoy without a population. Returns
    /// how many people that is.
    pub async fn refresh_decoys(&self, dir: &Directory) -> Result<usize, DirectoryError> {
        let (users, unreadable) = dir.readable_users().await?;
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "user records that cannot be read are left out of the decoy population"
            );
        }
        self.rp.set_decoy_population(&users);
        Ok(self.rp.decoy_population().map_or(0, |p| p.len()))
    }

    /// Loads the decoy population if nothing has yet (the first sign-in after a start can
    /// come before the background refresh): one load at a time, at most every
    /// [`DECOY_LOAD_RETRY`]; the others wait for it.
    pub(crate) async fn ensure_decoys(&self) {
        if self.rp.decoy_population().is_some() {
            return;
        }
        let mut last = self.decoy_load.lock().await;
        if self.rp.decoy_population().is_some()
            || last.is_some_and(|t| t.elapsed() < DECOY_LOAD_RETRY)
        {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh_decoys(&self.dir).await {
            tracing::warn!(error = %e, "cannot load the people decoys look like");
        }
    }
}

/// Reloads the decoy population once a minute: an enrollment on any instance reaches every
/// instance's decoys within that (until then, a made-up name whose decoy would now copy the
/// new person's shape still gets the old one).
pub struct DecoyRefresh {
    /// Whose decoys it keeps current.
    pub service: std::sync::Arc<SignInService>,
    /// The directory over the store with a deadline long enough for a scan of every user.
    pub dir: Directory,
}

/// How often [`DecoyRefresh`] reloads.
pub const DECOY_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DecoyRefresh {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(DECOY_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match self.service.refresh_decoys(&self.dir).await {
                        Ok(n) => tracing::debug!(people = n, "decoy population reloaded"),
                        Err(e) => tracing::warn!(error = %e, "cannot reload the people decoys look like"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The `Set-Cookie` of a browser-binding cookie.
pub(crate) fn bind_cookie(bind: &Token, tls: bool) -> String {
    cookie(bind_name(tls), bind.expose(), tls, false)
}

pub(crate) fn bind_name(tls: bool) -> &'static str {
    if tls {
        headers::BIND_TLS
    } else {
        headers::BIND_PLAIN
    }
}

pub(crate) fn csrf_of(binding: &str) -> String {
    aalgate_auth::token::hash_str(&format!("csrf\0{binding}"))[..32].to_string()
}

pub(crate) fn cookie(name: &str, value: &str, tls: bool, strict: bool) -> String {
    let mut c = cookie::Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(if strict {
            cookie::SameSite::Strict
        } else {
            cookie::SameSite::Lax
        });
    if tls {
        c = c.secure(true);
    }
    c.build().to_string()
}

/// Why `State::charge_anonymous` stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaFull {
    /// This client holds its whole share of the quota.
    Client,
    /// The store-wide quota is used up (many clients at once).
    Store,
}

impl QuotaFull {
    /// Seconds until the oldest counted bucket ages out and frees what it holds.
    pub(crate) fn retry_after() -> u64 {
        ANON_BUCKET_SECS - Timestamp::wall().0 % ANON_BUCKET_SECS
    }
}

/// Shared state of the gateway service.
pub struct State {
    /// The policy set in force (swapped on reload).
    pub policies: Arc<crate::ops::Policies>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The audit log.
    pub audit: Arc<crate::audit::Audit>,
    /// Sessions read in the last second.
    pub sessions: crate::cache::SessionCache,
    /// Signed assertions, reused for half their lifetime.
    pub assertions: crate::cache::AssertionCache,
    /// When each person's use of each app was last written (for the access report).
    pub last_use: crate::cache::LastUse,
    /// The session store, already wrapped in a deadline.
    pub store: Arc<dyn SessionStore>,
    /// Signs upstream assertions.
    pub signer: Arc<Signer>,
    /// Host of the public origin (serves `/.aalgate/` even if no app uses it).
    pub public_host: HostPort,
    /// Users, ceremonies and the handoff.
    pub signin: Arc<crate::state::SignInService>,
    /// Upstream connect timeout, and how long an upstream may stay silent.
    pub upstream_timeouts: (Duration, Duration),
    /// How long a client may stay silent while sending a request body (then 408).
    pub client_timeout: Duration,
    /// The public listeners, to tell which one a request arrived on.
    pub listeners: Vec<crate::config::Listener>,
    /// Send `Strict-Transport-Security` on https (`hsts`).
    pub hsts: bool,
    /// The time admissions are made at: never runs backwards.
    pub clock: Arc<crate::clock::Clock>,
    /// Slots for reading small request bodies whole before the app is contacted
    /// ([`crate::http::READ_AHEAD`] each, so [`READ_AHEAD_SLOTS`] × 64 KiB at most).
    pub read_ahead: tokio::sync::Semaphore,
}

/// How many request bodies may be read ahead at once; beyond that, bodies stream as they come.
pub const READ_AHEAD_SLOTS: usize = 256;

/// Per-request state, written by the phases and read once in `logging`.
pub struct Ctx {
    pub(crate) start: Instant,
    pub(crate) request_id: String,
    /// The browser is on https: a TLS listener, or a TLS-terminating load balancer in front of
    /// a plain one (`public_origin` is https). Cookies are then `Secure` and `__Host-`, and
    /// the upstream's `X-Forwarded-Proto` is `https`.
    pub(crate) tls: bool,
    pub(crate) target: Option<NormalizedTarget>,
    pub(crate) rule: Option<usize>,
    pub(crate) session: Option<Arc<UserSession>>,
    /// Who sent a request that was not admitted (sent to step up, sign in again, or
    /// refused): only for its audit line, never an identity for the upstream.
    pub(crate) known: Option<Known>,
    pub(crate) outcome: Outcome,
    /// The canonical `Host` (lowercase, no trailing dot) that matching used.
    pub(crate) host: String,
    /// The policy snapshot this request is decided and finished on.
    pub(crate) policy: Arc<PolicySet>,
    /// When the request was handed to the upstream.
    pub(crate) forwarded_at: Option<Instant>,
    /// Store key of the session record, for the assertion cache.
    pub(crate) session_key: Option<aalgate_session::SessionKey>,
    /// The admitted person's groups and e-mail, for the identity sent upstream.
    pub(crate) access: Option<Arc<Membership>>,
    /// A WebSocket upgrade: the session's cookie handle and absolute end, checked on every
    /// frame, and when its store record was last confirmed.
    pub(crate) upgrade: Option<Upgraded>,
    /// The request a per-request ceremony signed: its nonce and digest go upstream with it.
    pub(crate) signed: Option<aalgate_session::RequestBinding>,
    /// A signed request whose body is checked against the digest as it streams.
    pub(crate) verify_body: Option<BodyCheck>,
    /// This request's auth and admin events: on record before its response.
    pub(crate) audit: crate::audit::Pending,
    /// A kept form this request sends on (`/.aalgate/resume`): its audit line has the
    /// method and path the upstream sees, and the kept request's id.
    pub(crate) replay: Option<Replay>,
    /// The length of a request body read whole before forwarding: the app gets it as
    /// `Content-Length` (legacy apps may not read a chunked request body).
    pub(crate) body_length: Option<usize>,
}

/// The person behind a request that was not admitted.
pub(crate) enum Known {
    /// A live session that was not enough (sent to step up) or not allowed here (denied):
    /// its person, level and credential.
    Session {
        user: String,
        aal: aalgate_policy::Aal,
        credential: Option<String>,
    },
    /// A session that ended before this request (idle, absolute limit, a clock from the
    /// future), or its tombstone: whose session this browser held. Not a verified identity:
    /// on a shared workstation someone else may be typing.
    Ended { user: String },
}

impl Known {
    pub(crate) fn live(s: &UserSession) -> Known {
        Known::Session {
            user: s.user.clone(),
            aal: s.aal,
            credential: s.credential.clone(),
        }
    }
}

/// The request a `/.aalgate/resume` sends upstream, as its audit line records it.
pub(crate) struct Replay {
    pub(crate) method: String,
    /// The path (never the query).
    pub(crate) path: String,
    /// The id of the request that was kept.
    pub(crate) of: String,
}

/// The body of an admitted signed request, held back until it hashes to the digest the key
/// signed: the upstream gets the head at once and the body only if it matches (otherwise the
/// request is aborted, and an incomplete request is never processed).
pub(crate) struct BodyCheck {
    pub(crate) binding: aalgate_session::RequestBinding,
    pub(crate) host: String,
    pub(crate) url: String,
    pub(crate) seen: Vec<u8>,
}

/// What a live WebSocket connection is checked against.
pub(crate) struct Upgraded {
    pub(crate) handle: SessionKey,
    pub(crate) until: Timestamp,
    pub(crate) checked: Instant,
    /// Where the session lives, to ask whether it still does.
    pub(crate) lives: Lives,
    /// Set when the connection is over, so the watcher never touches a reused descriptor.
    pub(crate) over: Arc<std::sync::Mutex<bool>>,
}

/// Where a session lives: the store, or (break-glass) this instance's memory, which works
/// while the store is down and ends with *Sign out* or the code's TTL.
#[derive(Clone)]
pub(crate) enum Lives {
    /// In the store; and the person must stay allowed on the route as the policy in force
    /// now has it (a reload counts) and their groups as the store has them now.
    Store(Arc<dyn SessionStore>, Arc<Route>),
    Emergency(Arc<crate::state::SignInService>),
}

/// Where a WebSocket was admitted: looked up again in the current policy on every check.
pub(crate) struct Route {
    pub(crate) policies: Arc<crate::ops::Policies>,
    pub(crate) host: HostPort,
    pub(crate) method: String,
    pub(crate) target: NormalizedTarget,
}

impl Lives {
    /// Whether the session behind cookie `handle` still exists on `host` (and its person is
    /// still allowed on the route).
    pub(crate) async fn alive(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<bool, aalgate_session::StoreError> {
        match self {
            Lives::Store(store, route) => {
                let policy = route.policies.snapshot();
                let Some(m) = policy.lookup(&route.host, &route.method, &route.target) else {
                    return Ok(false);
                };
                let access = &m.rule.access;
                let allow = &access.allow;
                // A route that is closed now, or that no open socket can meet (a per-request
                // signature), ends it.
                if access.require == aalgate_policy::Requirement::Deny
                    || access.step_up == Some(aalgate_policy::StepUp::PerRequest)
                {
                    return Ok(false);
                }
                let Some(r) = store.resolve_with_access(handle, host, now).await? else {
                    return Ok(false);
                };
                // A level raised by a reload above the session's.
                if access
                    .require
                    .aal()
                    .is_some_and(|need| r.session.aal < need)
                {
                    return Ok(false);
                }
                if allow.is_empty() {
                    return Ok(true);
                }
                let access = membership(&r.session.user, r.access.as_deref());
                Ok(aalgate_policy::allowed(
                    allow,
                    &aalgate_policy::Person {
                        user: &r.session.user,
                        groups: &access.groups,
                        reach: aalgate_policy::Reach::Unknown,
                    },
                ))
            }
            Lives::Emergency(svc) => Ok(svc.emergencies.get(handle, host, now).is_some()),
        }
    }
}

/// What a gateway-made response looks like.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }
    pub(crate) fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }
    pub(crate) fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// How often an active session's `last_seen` is written. The idle limit is measured from the
/// stored value, so it can fire up to this much early, never late.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(30);
/// A WebSocket client silent this long is disconnected (pingora's default downstream read
/// timeout), so a session's end reaches every live connection within this bound.
pub const WEBSOCKET_SILENCE: Duration = Duration::from_secs(60);
/// How long a pending sign-in flow lives.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// What a flow is charged when its size is unknown: its URL's limit and the rest.
pub(crate) const MAX_FLOW_BYTES: usize = crate::preserve::MAX_URL + 1024;
/// Shown when the store-wide quota of anonymous sign-in state is used up.
pub(crate) const MSG_SIGN_IN_BUSY: &str = "Too many sign-ins are starting at this moment, so the gateway cannot start yours. Wait two minutes and try again. If you were signed in already, nothing is lost.";
pub(crate) const MSG_SIGN_IN_BUSY_HERE: &str = "Too many sign-ins have started from your network in the last minutes, so the gateway cannot start yours. Wait two minutes and try again, or ask IT: they can see this in the gateway's metrics. If you were signed in already, nothing is lost.";
/// Store namespace of the person a re-auth ended a session of, by cookie handle.
pub(crate) const TOMBSTONES: &str = "tomb";
/// Store namespace of one-time admissions: the request a completed flow was for.
pub(crate) const ADMISSIONS: &str = "admit";
/// How long a completed flow's own request stays admitted (the hop back, a popup's retry).
pub(crate) const ADMISSION_TTL: Duration = Duration::from_secs(30);

/// How [`State::session_of`] finds the session a cookie names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// To admit a request: a break-glass session of this instance, then the session cache
    /// (at most 1 s old), then the store.
    Cached,
    /// To start, end or hand off a session: the store's word only, never a cached copy and
    /// never a break-glass session (which satisfies no flow).
    StoreOnly,
}

/// Why a session record ended: its `aalgate_session_ends_total` label and audit event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Past the idle limit.
    Idle,
    /// Past the absolute limit (or its times cannot be trusted).
    Absolute,
    /// *Sign out*.
    Logout,
    /// Someone else signed in on this browser.
    SwitchUser,
    /// The same person signed in again on this browser: replaced, not counted.
    Replaced,
}

impl SessionEnd {
    /// The metric label (`None`: not counted).
    pub(crate) fn label(self) -> Option<&'static str> {
        match self {
            SessionEnd::Idle => Some("idle"),
            SessionEnd::Absolute => Some("absolute"),
            SessionEnd::Logout => Some("logout"),
            SessionEnd::SwitchUser => Some("switch_user"),
            SessionEnd::Replaced => None,
        }
    }
}

/// A session found through the request's cookie: (cookie handle key, record key, session,
/// the person's groups and e-mail as the directory holds them now).
pub(crate) type Loaded = (SessionKey, SessionKey, Arc<UserSession>, Arc<Membership>);

/// A person's access record as the store returned it. Unreadable: no groups (so no `allow`
/// admits them: fail closed), and an error in the log.
pub(crate) fn membership(user: &str, raw: Option<&[u8]>) -> Arc<Membership> {
    match raw.map(serde_json::from_slice::<Membership>) {
        None => Arc::default(),
        Some(Ok(m)) => Arc::new(m),
        Some(Err(e)) => {
            tracing::error!(user, error = %e, "unreadable access record: the person has no groups until IT sets them again");
            Arc::default()
        }
    }
}

/// What admission knows of a session: its times and level, and when it is over (the record
/// outlives it by a flow's lifetime, so that a form sent right at the end is still known to
/// be the person's).
pub(crate) fn subject(s: &UserSession) -> Subject {
    Subject {
        facts: s.facts(),
        ends_at: Timestamp(s.expires_at.0.saturating_sub(FLOW_TTL.as_secs())),
    }
}

/// The session a request carries, as admission sees it.
pub(crate) fn session_kind(s: Option<&UserSession>) -> SessionKind {
    match s {
        None => SessionKind::None,
        Some(s) if crate::breakglass::is_emergency(s) => SessionKind::Emergency(subject(s)),
        Some(s) => SessionKind::Normal(subject(s)),
    }
}

/// The store key of the one-time admission of `method url` for the session `record`.
/// The grant is for one session record, one app host (canonical host and port), one browser
/// (the hash of its binding cookie there), one method and one URL.
pub(crate) fn admission_key(
    record: &SessionKey,
    host: &str,
    browser: &str,
    method: &str,
    url: &str,
) -> String {
    aalgate_auth::token::hash_str(&format!(
        "admit\0{}\0{host}\0{browser}\0{method}\0{url}",
        record.as_str()
    ))
}

impl State {
    pub(crate) fn service(&self) -> &SignInService {
        &self.signin
    }

    /// The canonical host string of the auth origin.
    pub(crate) fn public_host_str(&self) -> String {
        self.public_host.canonical(self.default_port()).to_string()
    }

    /// The port a host without one means: the default of `public_origin`'s scheme.
    pub(crate) fn default_port(&self) -> u16 {
        if self.signin.scheme == "https" {
            443
        } else {
            80
        }
    }

    /// The host a flow returns to: the app's configured host, with its configured port or else
    /// the request's. The request's port is one a listener serves (`request_filter` answers 421
    /// to any other), so a port the client made up never becomes a redirect target.
    pub(crate) fn canonical_host(&self, host: &str) -> String {
        let Ok(h) = HostPort::parse(host) else {
            return self.public_host_str();
        };
        let policy = self.policies.snapshot();
        match policy.app_for_host(&h) {
            Some(a) => HostPort {
                host: a.host.host.clone(),
                port: a.host.port.or(h.port),
            }
            .canonical(self.default_port())
            .to_string(),
            None => self.public_host_str(),
        }
    }

    /// Whether this host is the auth origin's (host and port, through [`HostPort::same_as`]).
    pub(crate) fn is_auth_host(&self, h: &HostPort) -> bool {
        h.same_as(&self.public_host, self.default_port())
    }

    /// Whether this request is on the auth origin.
    pub(crate) fn on_auth_origin(&self, ctx: &Ctx) -> bool {
        HostPort::parse(&ctx.host).is_ok_and(|h| self.is_auth_host(&h))
    }

    /// The session this browser holds on this host, as the store has it (see
    /// [`crate::state::Lookup::StoreOnly`]).
    pub(crate) async fn current(
        &self,
        session: &Session,
        ctx: &Ctx,
    ) -> std::result::Result<Option<Loaded>, aalgate_session::StoreError> {
        let now = self.clock.now();
        self.session_of(
            session.req_header(),
            ctx,
            now,
            crate::state::Lookup::StoreOnly,
        )
        .await
    }

    pub(crate) fn app_of_host(&self, ctx: &Ctx) -> Option<String> {
        HostPort::parse(&ctx.host)
            .ok()
            .and_then(|h| ctx.policy.app_for_host(&h).map(|a| a.name.clone()))
    }

    /// Records that `user` used the request's app (at most once an hour per instance, off
    /// the request path): the access report's last use, for least-privilege review.
    pub(crate) fn note_use(&self, ctx: &Ctx, user: &str, now: Timestamp) {
        let Some(app) = ctx
            .rule
            .and_then(|i| ctx.policy.rules().get(i))
            .map(|r| ctx.policy.app_of(r).name.as_str())
        else {
            return;
        };
        if !self.last_use.due(user, app) {
            return;
        }
        let (store, marks) = (self.store.clone(), self.last_use.clone());
        let (user, app) = (user.to_string(), app.to_string());
        tokio::spawn(async move {
            let (value, key) = (now.0.to_string(), crate::cache::last_use_key(&user, &app));
            let put = store.kv_put(
                crate::cache::LAST_USE_NS,
                &key,
                value.as_bytes(),
                Some(crate::cache::LAST_USE_TTL),
            );
            if let Err(e) = put.await {
                // Due again at the next request.
                marks.forget(&user, &app);
                tracing::debug!(error = %e, "last use not recorded");
            }
        });
    }

    /// What people call the app this host serves (`display_name`, else its id).
    pub(crate) fn display_of_host(&self, ctx: &Ctx) -> Option<String> {
        HostPort::parse(&ctx.host)
            .ok()
            .and_then(|h| ctx.policy.app_for_host(&h).map(|a| a.display_name.clone()))
    }

    /// What people call the app with id `app` (`display_name` in its policy, else the id).
    pub(crate) fn display_name(&self, ctx: &Ctx, app: &str) -> String {
        ctx.policy
            .apps()
            .iter()
            .find(|a| a.name == app)
            .map_or_else(|| app.to_string(), |a| a.display_name.clone())
    }

    pub(crate) fn app_name<'a>(&self, ctx: &'a Ctx) -> &'a str {
        ctx.rule
            .and_then(|i| ctx.policy.rules().get(i))
            .map(|r| ctx.policy.app_of(r).name.as_str())
            .unwrap_or("-")
    }

    /// The listener this request arrived on: the one bound to the connection's local address
    /// (or to the unspecified address on its port).
    pub(crate) fn arrival_listener(&self, session: &Session) -> Option<&crate::config::Listener> {
        if let [only] = self.listeners.as_slice() {
            return Some(only);
        }
        let local = session.server_addr().and_then(|a| a.as_inet())?;
        self.listeners
            .iter()
            .find(|l| l.addr == *local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.addr.ip().is_unspecified() && l.addr.port() == local.port())
            })
    }

    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    pub(crate) fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        crate::limits::client_ip(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            &session.req_header().headers,
            &self.signin.trusted_proxies,
        )
    }

    /// Whether the browser reached this request over https: the socket's TLS, or the
    /// external origin's scheme behind a TLS-terminating load balancer. The one answer for
    /// cookies, HSTS, `X-Forwarded-Proto` and the kept-forms Origin check.
    pub(crate) fn browser_https(&self, session: &Session) -> bool {
        self.signin.scheme == "https"
            || session
                .as_downstream()
                .digest()
                .is_some_and(|d| d.ssl_digest.is_some())
    }

    pub(crate) fn cookie_name(ctx: &Ctx) -> &'static str {
        if ctx.tls {
            headers::COOKIE_TLS
        } else {
            headers::COOKIE_PLAIN
        }
    }

    /// The session the request's cookie names on this host: (cookie handle key, record key,
    /// session). Malformed values are ignored; of several well-formed values (at most
    /// [`MAX_COOKIES`]) the first live one wins. A store error is returned, never hidden.
    pub(crate) async fn session_of(
        &self,
        req: &RequestHeader,
        ctx: &Ctx,
        now: Timestamp,
        how: Lookup,
    ) -> Result<Option<Loaded>, aalgate_session::StoreError> {
        for value in
            headers::cookie_value_iter(&req.headers, Self::cookie_name(ctx)).take(MAX_COOKIES)
        {
            // Only a value of a session id's length can be one it remembers.
            let known = (value.len() == SESSION_COOKIE_LEN)
                .then(|| self.sessions.known_key(value))
                .flatten();
            let key = match known {
                Some(k) => k,
                None => match SessionId::from_cookie(value) {
                    Some(id) => id.key(),
                    None => continue,
                },
            };
            if how == Lookup::Cached {
                // Break-glass sessions live in this instance only: no store call.
                if let Some(e) = self.signin.emergencies.get(&key, &ctx.host, now) {
                    return Ok(Some((
                        key.clone(),
                        key,
                        Arc::new(e.session()),
                        Arc::default(),
                    )));
                }
                if let Some((record, s, a)) = self.sessions.get_with_record(&key, &ctx.host, now) {
                    return Ok(Some((key, record, s, a)));
                }
            }
            if let Some(r) = self.store.resolve_with_access(&key, &ctx.host, now).await? {
                let access = membership(&r.session.user, r.access.as_deref());
                let session = Arc::new(r.session);
                if how == Lookup::Cached {
                    self.sessions
                        .put_linked(&key, &r.record, &ctx.host, &session, &access);
                    self.sessions.remember_key(value, &key);
                }
                return Ok(Some((key, r.record, session, access)));
            }
        }
        Ok(None)
    }

    /// Ends the session record `record` (reached through cookie `handle`, which is unlinked
    /// too when `unlink`), so that every host's cookie of it stops at once on every instance:
    /// counted in `aalgate_session_ends_total` and audited once, by whichever call removed
    /// it. Returns whether this call removed it; a store error is returned, never hidden.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_session(
        &self,
        ctx: &Ctx,
        handle: &SessionKey,
        unlink: bool,
        record: &SessionKey,
        s: &UserSession,
        why: SessionEnd,
        app: Option<&str>,
        now: Timestamp,
    ) -> Result<bool, aalgate_session::StoreError> {
        self.sessions.remove(handle);
        if unlink {
            let _ = self.store.unlink(handle).await;
        }
        self.sessions.end_record(record);
        let removed = self.store.remove(record).await?;
        let Some(label) = why.label().filter(|_| removed) else {
            return Ok(removed);
        };
        self.metrics.session_ends.with_label_values(&[label]).inc();
        self.metrics
            .session_age
            .observe(now.since(s.auth_time).as_secs_f64());
        let (event, decision, detail) = match why {
            SessionEnd::Idle | SessionEnd::Absolute => ("session_end", Some(label), None),
            SessionEnd::SwitchUser => ("session_end", None, Some(label.to_string())),
            SessionEnd::Logout | SessionEnd::Replaced => ("logout", None, None),
        };
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event,
                request_id: Some(&ctx.request_id),
                user: Some(&s.user),
                app: app.filter(|_| decision.is_some()),
                aal: Some(s.aal.number()),
                credential: s.credential.as_deref(),
                decision,
                detail,
                ..Default::default()
            },
        );
        Ok(true)
    }
}
