//! What the proxy phases and the gateway's own endpoints share, and nothing that uses either:
//! the sign-in service's settings and stores, the gateway's cookies, and the anonymous quota's
//! answer. The proxy (`gateway`), the sign-in endpoints (`signin`) and kept forms (`resume`)
//! import from here, so none of them has to import another's module for these.

use std::time::{Duration, Instant};

use aalgate_auth::{Ceremonies, Directory, DirectoryError, Token};
use aalgate_policy::Timestamp;

use crate::headers;

/// The anonymous-state counters count in 2-minute buckets (`resume`'s quota).
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
}

/// How often a sign-in start may load the decoy population itself, while the background
/// refresh has not loaded it yet (an anonymous client must not make the gateway scan the
/// directory on every request).
const DECOY_LOAD_RETRY: Duration = Duration::from_secs(10);

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

/// Why `Gateway::charge_anonymous` stored nothing.
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
