//! Keeping a request across a sign-in, and charging what anonymous clients make the store
//! hold: kept forms against the store-wide and per-person quota, flows and ceremonies against
//! the anonymous quota and each client's share, new flows against the per-client limiter.

use std::time::{Duration, Instant};

use aalgate_auth::Token;
use aalgate_policy::Timestamp;
use aalgate_session::{Flow, RequestBinding};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use crate::http::{read_limited_within, BodyError, Exchange};
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::preserve::{KeptRequest, NotKept, KEPT_HEADERS};
use crate::state::{Ctx, State};
use crate::state::{QuotaFull, ANON_BUCKET_SECS, MSG_SIGN_IN_BUSY, MSG_SIGN_IN_BUSY_HERE};

/// How long a kept form waits for its sign-in.
pub const KEPT_TTL: Duration = Duration::from_secs(600);

/// Store namespace of kept forms (encrypted).
pub(crate) const KEPT: &str = "kept";

/// Store namespace of the marks a completed flow leaves for its kept form.
pub(crate) const RESUMABLE: &str = "resumable";

/// Store namespace of the kept-byte counters (store-wide and per person).
pub(crate) const QUOTA: &str = "keptq";

/// Quota counters count the bytes kept in 2-minute buckets; the last 6 cover a kept form's
/// whole life (10 minutes), so their sum bounds what the store can hold.
pub(crate) const BUCKET_SECS: u64 = 120;

pub(crate) const BUCKETS: u64 = 6;

/// What a completed flow leaves for its kept form.
#[derive(Serialize, Deserialize)]
pub(crate) struct Resumable {
    /// The session record the flow ended in.
    pub record: String,
    /// Whether the person touched a key in this flow (else the form waits for a confirmation).
    pub touched: bool,
    /// When the flow completed.
    pub at: Timestamp,
    /// The request the flow's per-request ceremony signed (this kept form).
    #[serde(default)]
    pub binding: Option<RequestBinding>,
}

/// The anonymous-state counters: the last 6 buckets of [`ANON_BUCKET_SECS`] cover a flow's or
/// a ceremony's whole life (10 minutes), so charges age out within 12 minutes of a flood's end.
pub(crate) const ANON_BUCKETS: u64 = 6;

/// Each client (an IPv4 address, an IPv6 /48) may hold this share of `anonymous_state_quota`,
/// and at least [`MIN_CLIENT_SHARE`] (never over a quarter): one address alone cannot use the
/// quota up.
pub(crate) const CLIENT_SHARE: u64 = 16;

pub(crate) const MIN_CLIENT_SHARE: u64 = 64 * 1024;

/// The bytes one client may hold of `quota`.
pub(crate) fn client_share(quota: u64) -> u64 {
    (quota / CLIENT_SHARE).max(MIN_CLIENT_SHARE.min(quota / 4))
}

/// Why a form could not be kept, beyond the reasons the sign-in page explains
/// ([`NotKept`]).
#[derive(Debug)]
pub(crate) enum KeepFailed {
    /// The store failed.
    Store(String),
    /// The client broke its body off: the request ends with this outcome.
    Body(Outcome),
}

impl From<String> for KeepFailed {
    fn from(e: String) -> KeepFailed {
        KeepFailed::Store(e)
    }
}

impl State {
    /// Bytes kept in the last [`BUCKETS`] buckets under `prefix`.
    pub(crate) async fn kept_bytes(
        &self,
        prefix: &str,
        now: u64,
    ) -> Result<u64, aalgate_session::StoreError> {
        let bucket = now / BUCKET_SECS;
        self.counted(prefix, bucket.saturating_sub(BUCKETS - 1)..=bucket)
            .await
    }

    /// Charges `bytes` of state stored for nobody known yet (a sign-in flow, a ceremony) to
    /// `client`'s share and to the store-wide `anonymous_state_quota`, across every instance.
    /// `Ok(Err(_))`: one of them is used up; store nothing.
    ///
    /// A full store is refused before anything is written, so a flood from many addresses
    /// creates no per-client counters then. Otherwise each counter is added to first and
    /// compared after, so concurrent charges on several instances never overshoot it; a refused
    /// charge stays counted until its bucket ages out (the client's own counter, or a store that
    /// is full anyway). The store-wide charge includes the client counter's own record.
    pub(crate) async fn charge_anonymous(
        &self,
        bytes: usize,
        client: Option<std::net::IpAddr>,
    ) -> Result<Result<(), QuotaFull>, aalgate_session::StoreError> {
        const COUNTER_BYTES: u64 = 128;
        let bytes = bytes as u64;
        let quota = self.signin.anonymous_quota;
        let bucket = Timestamp::wall().0 / ANON_BUCKET_SECS;
        let earlier = bucket.saturating_sub(ANON_BUCKETS - 1)..=bucket.saturating_sub(1);
        let ttl = Duration::from_secs(ANON_BUCKETS * ANON_BUCKET_SECS + 60);
        let refused = |full: QuotaFull| {
            let reason = match full {
                QuotaFull::Client => "client_quota",
                QuotaFull::Store => "quota",
            };
            self.metrics
                .flow_refusals
                .with_label_values(&[reason])
                .inc();
            Ok(Err(full))
        };
        let store_before = self.counted("anon", earlier.clone()).await?;
        let store_now = self.counted("anon", bucket..=bucket).await?;
        let charge = bytes.saturating_add(COUNTER_BYTES);
        if store_before
            .saturating_add(store_now)
            .saturating_add(charge)
            > quota
        {
            return refused(QuotaFull::Store);
        }
        if let Some(ip) = client {
            let share = client_share(quota);
            let prefix = format!("anon@{}", crate::limits::site_key(ip));
            let now_total = self
                .store
                .kv_add(QUOTA, &format!("{prefix}:{bucket}"), bytes, ttl)
                .await?;
            let before = self.counted(&prefix, earlier).await?;
            if before.saturating_add(now_total) > share {
                return refused(QuotaFull::Client);
            }
        }
        let now_total = self
            .store
            .kv_add(QUOTA, &format!("anon:{bucket}"), charge, ttl)
            .await?;
        if store_before.saturating_add(now_total) > quota {
            return refused(QuotaFull::Store);
        }
        Ok(Ok(()))
    }

    /// The sum of the counters `prefix:b` for the buckets `b` in `buckets`.
    pub(crate) async fn counted(
        &self,
        prefix: &str,
        buckets: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, aalgate_session::StoreError> {
        let mut sum = 0u64;
        for b in buckets {
            if let Some(v) = self.store.kv_get(QUOTA, &format!("{prefix}:{b}")).await? {
                sum = sum.saturating_add(
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX),
                );
            }
        }
        Ok(sum)
    }

    /// Reads and seals the request body of a navigation that must sign in first, for
    /// `person`. Returns the one-time token of the kept record (and, when `bound`, the binding
    /// a per-request ceremony signs), or why it was not kept. Errors: the store failed.
    pub(crate) async fn keep_request(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        flow: &Flow,
        bind: &Token,
        person: &str,
        bound: bool,
    ) -> std::result::Result<
        std::result::Result<(String, Option<RequestBinding>), NotKept>,
        KeepFailed,
    > {
        // Each read holds up to the body limit in memory: at most this many at once.
        let Ok(_permit) = self.signin.reads.try_acquire() else {
            return Ok(Err(NotKept::Busy));
        };
        let body =
            match read_limited_within(session, self.signin.body_limit, self.client_timeout).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => return Ok(Err(NotKept::TooLarge)),
                Err(BodyError::Broken(o)) => return Err(KeepFailed::Body(o)),
            };
        let req = session.req_header();
        let binding = bound.then(|| {
            self.sealed_binding(aalgate_auth::signing::bind(
                req.method.as_str(),
                &flow.host,
                &flow.url,
                Some(&body),
            ))
        });
        let kept = KeptRequest {
            method: req.method.as_str().to_string(),
            url: flow.url.clone(),
            host: flow.host.clone(),
            headers: KEPT_HEADERS
                .iter()
                .filter_map(|n| {
                    req.headers
                        .get(*n)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| (n.to_string(), v.to_string()))
                })
                .collect(),
            cookies: crate::headers::app_cookies(&req.headers),
            body,
            user: person.to_string(),
            browser: bind.hash(),
            request_id: ctx.request_id.clone(),
        };
        let token = Token::generate();
        let body_len = kept.body.len();
        let plain = kept.encode().map_err(|e| e.to_string())?;
        // Each copy is up to the body limit: free the body before sealing, the plaintext after.
        drop(kept);
        let sealed = self
            .signin
            .sealer
            .seal(&plain, &token.hash())
            .map_err(|e| e.to_string())?;
        drop(plain);
        // Quotas: the whole store, and this person. Checked, then charged before the write, so
        // parallel keeps overshoot by at most `preserve_concurrent_reads` forms.
        let size = sealed.len() as u64;
        // Buckets shared by every instance: by the wall clock, as the anonymous quota's.
        let now = Timestamp::wall().0;
        let (quota, person_quota) = self.signin.quota;
        let mine = format!("p:{}", aalgate_auth::token::hash_str(person));
        let used = self.kept_bytes("g", now).await.map_err(|e| e.to_string())?;
        let used_mine = self
            .kept_bytes(&mine, now)
            .await
            .map_err(|e| e.to_string())?;
        if used.saturating_add(size) > quota || used_mine.saturating_add(size) > person_quota {
            return Ok(Err(NotKept::Quota));
        }
        let ttl = KEPT_TTL + Duration::from_secs(2 * BUCKET_SECS);
        let bucket = now / BUCKET_SECS;
        for prefix in ["g", mine.as_str()] {
            self.store
                .kv_add(QUOTA, &format!("{prefix}:{bucket}"), size, ttl)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.store
            .kv_put(KEPT, &token.hash(), &sealed, Some(KEPT_TTL))
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.kept_bytes.inc_by(size);
        tracing::info!(request_id = %ctx.request_id, bytes = body_len, "kept a submitted form across sign-in");
        Ok(Ok((token.expose().to_string(), binding)))
    }

    /// `b` with its request nonce sealed (the store never holds it in clear: with the digest
    /// beside it, a store reader could test guesses of a short body).
    pub(crate) fn sealed_binding(&self, mut b: RequestBinding) -> RequestBinding {
        let aad = format!("request-nonce\0{}", b.digest);
        if let Ok(sealed) = self.signin.sealer.seal(b.nonce.as_bytes(), &aad) {
            b.nonce = aalgate_auth::signing::b64(&sealed);
        } else {
            b.nonce = String::new();
        }
        b
    }

    /// The inverse of [`State::sealed_binding`]; `None` if it does not open.
    pub(crate) fn opened_binding(&self, b: &RequestBinding) -> Option<RequestBinding> {
        use base64::Engine;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&b.nonce)
            .ok()?;
        let aad = format!("request-nonce\0{}", b.digest);
        let nonce = String::from_utf8(self.signin.sealer.open(&sealed, &aad)?).ok()?;
        Some(RequestBinding { nonce, ..b.clone() })
    }

    /// Writes `request_admitted`: the signed request is on its way to the app.
    pub(crate) fn audit_admitted(&self, ctx: &Ctx, user: &str, b: &RequestBinding) {
        self.audit.emit_for(
            &ctx.audit,
            &crate::audit::Event {
                time: crate::audit::now_rfc3339(),
                event: "request_admitted",
                request_id: Some(&ctx.request_id),
                user: Some(user),
                app: Some(self.app_name(ctx)),
                detail: Some(format!("digest {}", b.digest)),
                ..Default::default()
            },
        );
    }

    /// 429: this client address started too many sign-ins in the last minute.
    /// Takes one of this client's new-flow tokens (flows, switch-user flows and ceremony
    /// starts all store something for an anonymous client): `Err(retry-after seconds)` when
    /// it has none left.
    pub(crate) fn take_flow_token(&self, session: &Session) -> std::result::Result<(), u64> {
        let r = self
            .signin
            .flow_limiter
            .allow(self.client_ip(session), Instant::now());
        if r.is_err() {
            self.metrics
                .flow_refusals
                .with_label_values(&["rate"])
                .inc();
        }
        r
    }

    /// 429: this client address started too many flows; Retry-After says when it may again.
    pub(crate) async fn too_many_flows(&self, x: &mut Exchange<'_>, retry: u64) -> Result<bool> {
        let (title, text) = pages::error_text(429);
        x.refuse_for(Outcome::FlowRateLimited, title, text, retry)
            .await
    }

    /// 503: this client's share of `anonymous_state_quota`, or all of it, is used up; a
    /// signed-in person's step-up and re-auth are not affected. Retry-After: when the oldest
    /// charges age out.
    pub(crate) async fn anonymous_quota_full(
        &self,
        x: &mut Exchange<'_>,
        full: crate::state::QuotaFull,
    ) -> Result<bool> {
        let text = match full {
            crate::state::QuotaFull::Client => MSG_SIGN_IN_BUSY_HERE,
            crate::state::QuotaFull::Store => MSG_SIGN_IN_BUSY,
        };
        x.refuse_for(
            Outcome::SignInBusy,
            "Too many sign-ins right now",
            text,
            crate::state::QuotaFull::retry_after(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_never_holds_the_whole_anonymous_quota() {
        // The smallest quota the config takes: one address must leave room for the others.
        assert_eq!(client_share(65_536), 16_384);
        assert_eq!(client_share(1 << 20), 65_536);
        assert_eq!(client_share(64 << 20), 4 << 20);
        for quota in [65_536, 100_000, 200_000, 1 << 20, 64 << 20] {
            assert!(client_share(quota) <= quota / 4, "{quota}");
        }
    }
}
