//! `POST /.aalgate/webauthn/start` and `/finish`: the WebAuthn ceremonies of sign-in, step-up,
//! re-auth, switch and enrollment.

use std::time::Instant;

use aalgate_auth::{
    directory::Pending, AuthState, CeremonyError, DirectoryError, Purpose, RegKind, SignIn, Token,
};
use aalgate_policy::Aal;
use aalgate_session::{FlowId, FlowKind};
use pingora::prelude::*;
use serde::Deserialize;

use super::audit_auth;
use super::enroll::finish_enroll;
use super::enroll::new_user;
use super::handoff::start_session;
use super::signin::signed_path;
use super::{
    MSG_EXPIRED, MSG_FAILED, MSG_FORBIDDEN, MSG_KEY_NOT_APPROVED, MSG_NOT_ENOUGH, MSG_NOT_RECORDED,
    MSG_NO_KEY, MSG_THROTTLED,
};
use crate::http::Exchange;
use crate::http::{constant_eq, MSG_UNAVAILABLE};
use crate::outcome::Outcome;
use crate::state::{Ctx, Reply, State};

/// What a sign-in start for a typed user name is charged against the anonymous quota, at
/// least: more than the stored state of a person with a few keys.
pub(crate) const NAMED_START_CHARGE: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartReq {
    purpose: String,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    invite: Option<String>,
    #[serde(default)]
    kind: Option<RegKind>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    switch: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FinishReq {
    ceremony: String,
    response: serde_json::Value,
}

/// The common front of the ceremony endpoints: the auth origin only, CSRF, a bounded body,
/// JSON. `Err(sent)`: the refusal was sent; return it.
pub(crate) async fn ceremony_input<T: serde::de::DeserializeOwned>(
    st: &State,
    x: &mut Exchange<'_>,
) -> Result<std::result::Result<(Token, T), bool>> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await.map(Err);
    }
    let Some(bind) = x.checked_post() else {
        return x.json_error(Outcome::Csrf, MSG_FORBIDDEN).await.map(Err);
    };
    let body = match x.read_body().await {
        Ok(b) => b,
        Err(crate::http::BodyError::TooLarge) => {
            return x
                .json_error(Outcome::BodyTooLarge, MSG_FAILED)
                .await
                .map(Err)
        }
        Err(crate::http::BodyError::Broken(o)) => return x.broken_body(o).await.map(Err),
    };
    match serde_json::from_slice(&body) {
        Ok(r) => Ok(Ok((bind, r))),
        Err(e) => {
            tracing::info!(request_id = %x.ctx.request_id, error = %e, "malformed ceremony request");
            x.json_error(Outcome::BadRequest, MSG_FAILED).await.map(Err)
        }
    }
}

/// `POST /.aalgate/webauthn/start`.
pub(crate) async fn ceremony_start(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let (bind, req): (Token, StartReq) = match ceremony_input(st, x).await? {
        Ok(x) => x,
        Err(sent) => return Ok(sent),
    };
    if let Err(retry) = st.take_flow_token(x.session) {
        return st.too_many_flows(x, retry).await;
    }
    // This browser failed too often: it starts nothing more for a while. Only its own
    // binding is refused; another browser, even behind the same address, is not.
    if st.service().failures.binding_blocked(&bind.hash()) {
        return x.json_error(Outcome::Throttled, MSG_THROTTLED).await;
    }
    // An enrollment after a provider sign-in continues this browser's live session.
    let live = match super::handoff::live_session(st, x).await {
        Ok(l) => l,
        Err(e) => return x.store_down(&e, "ceremony start: store error").await,
    };
    match start(st, &req, &bind, st.client_ip(x.session), live).await {
        Ok(Ok((id, options, kind))) => {
            st.metrics
                .challenges
                .with_label_values(&[kind, "issued"])
                .inc();
            x.ctx.outcome = Outcome::Challenge;
            let body = serde_json::json!({ "ceremony": id, "options": options });
            x.send(Reply::json(200, body.to_string())).await
        }
        Ok(Err((outcome, msg))) => x.json_error(outcome, msg).await,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "ceremony start failed");
            let outcome = match e {
                DirectoryError::Store(_) => Outcome::StoreUnavailable,
                _ => Outcome::Internal,
            };
            x.json_error(outcome, MSG_UNAVAILABLE).await
        }
    }
}

#[allow(clippy::type_complexity)]
#[allow(clippy::too_many_lines, reason = "one ceremony start per purpose")]
pub(crate) async fn start(
    st: &State,
    req: &StartReq,
    bind: &Token,
    client: Option<std::net::IpAddr>,
    live: Option<(String, aalgate_policy::Timestamp)>,
) -> std::result::Result<
    std::result::Result<(String, serde_json::Value, &'static str), (Outcome, &'static str)>,
    DirectoryError,
> {
    let svc = st.service();
    let now = st.clock.now();
    let ceremony = Token::generate();
    match req.purpose.as_str() {
        "enroll" => {
            let Some(token) = req.invite.as_deref().and_then(Token::parse) else {
                return Ok(Err((Outcome::BadRequest, MSG_FAILED)));
            };
            let Some(invite) = svc.dir.peek_invite(&token, now).await? else {
                return Ok(Err((
                    Outcome::InviteExpired,
                    "This enrollment link was used already or expired. Ask IT for a new one.",
                )));
            };
            // Minted after a provider sign-in: only in the browser it was minted for, with
            // that person's live session (a leaked link is worth nothing elsewhere).
            if invite.after_provider.is_some()
                && (invite.browser.as_deref() != Some(bind.hash().as_str())
                    || live.as_ref().map(|(u, _)| u.as_str()) != Some(invite.user.as_str()))
            {
                return Ok(Err((
                    Outcome::Forbidden,
                    "This enrollment works only in the browser, and the session, that asked for it. Start it again from the confirmation page.",
                )));
            }
            let kind = req.kind.unwrap_or(RegKind::Passkey);
            if invite.aal == Aal::Aal3 && kind != RegKind::SecurityKey {
                return Ok(Err((Outcome::NeedsHardwareKey, MSG_NO_KEY)));
            }
            let found = svc.dir.user(&invite.user).await?;
            let account_existed = found.is_some();
            let user = match found {
                Some(u) if u.disabled => return Ok(Err((Outcome::Disabled, MSG_FAILED))),
                Some(u) => u,
                None => new_user(&invite.user, &invite.display_name, invite.aal, now),
            };
            let (options, state) = match svc.rp.start_registration(&user, kind) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start enrollment");
                    return Ok(Err((Outcome::NotAvailable, MSG_KEY_NOT_APPROVED)));
                }
            };
            // A flow of this person's that the enrollment continues (after a provider
            // sign-in); any other is ignored.
            let flow = match req.flow.as_deref().and_then(FlowId::parse) {
                Some(id) => st
                    .store
                    .get_flow(&id.key(), now)
                    .await?
                    .filter(|f| f.user.as_deref() == Some(user.id.as_str()) && f.binding.is_none())
                    .map(|_| id.key()),
                None => None,
            };
            let pending = Pending {
                purpose: Purpose::Enroll,
                binding: bind.hash(),
                flow,
                user: Some(user.id.clone()),
                invite: Some(token.hash()),
                allowed: None,
                handle: Some(user.handle),
                account_existed,
                ceremony_nonce: None,
                state: serde_json::to_value(&state)
                    .map_err(|e| DirectoryError::Corrupt("state", e.to_string()))?,
                created: now,
            };
            svc.dir.put_pending(&ceremony.hash(), &pending).await?;
            Ok(Ok((ceremony.expose().to_string(), options, "login")))
        }
        "signin" => {
            let Some(flow_id) = req.flow.as_deref().and_then(FlowId::parse) else {
                return Ok(Err((Outcome::BadRequest, MSG_EXPIRED)));
            };
            let Some(flow) = st.store.get_flow(&flow_id.key(), now).await? else {
                return Ok(Err((Outcome::FlowExpired, MSG_EXPIRED)));
            };
            let kind = flow.need.challenge();
            // Who may answer: the flow's user (step-up always; re-auth unless switching),
            // a typed user name, or anyone with a discoverable credential.
            let named = if flow.need == FlowKind::StepUp
                || (flow.need == FlowKind::Reauth && !req.switch)
            {
                flow.user.clone()
            } else {
                req.username.as_deref().map(|u| u.trim().to_string())
            };
            // On a per-request route the challenge is derived from the request's digest
            // and a fresh ceremony nonce, so the key's signature covers that request.
            let bound = flow.binding.as_ref().map(|b| {
                let n = aalgate_auth::signing::nonce();
                let path = signed_path(st, &flow);
                (
                    aalgate_auth::signing::challenge_of(b, &n, &flow.method, &path),
                    n,
                )
            });
            let start = |name: &str, creds: Option<&[aalgate_auth::Credential]>| match &bound {
                Some((Some(chal), _)) => svc.rp.start_sign_in_bound(name, creds, chal),
                Some((None, _)) => Err(aalgate_auth::CeremonyError::Config(
                    "malformed request binding".into(),
                )),
                None => svc.rp.start_sign_in_for(name, creds),
            };
            let (options, state, user, allowed) = match named {
                Some(name) => {
                    // Decoys look like the people enrolled; the background refresh keeps
                    // that current, and the first start after boot loads it if it has not.
                    svc.ensure_decoys().await;
                    // Throttling is enforced when the answer comes back, so a start never tells
                    // a throttled (existing) account from another.
                    let user = svc.dir.user(&name).await?.filter(|u| !u.disabled);
                    let creds: Vec<_> = user
                        .as_ref()
                        .map(|u| {
                            u.credentials
                                .iter()
                                .filter(|c| {
                                    c.usable_for(flow.need == FlowKind::StepUp)
                                        && (flow.need != FlowKind::StepUp || c.aal >= flow.aal)
                                })
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    if flow.need == FlowKind::StepUp && creds.is_empty() {
                        return Ok(Err((Outcome::NoSuitableKey, MSG_NO_KEY)));
                    }
                    let allowed: Vec<String> = creds.iter().map(|c| c.id.clone()).collect();
                    let (o, s) = start(&name, Some(&creds))
                        .map_err(|e| DirectoryError::Invalid(e.to_string()))?;
                    (o, s, Some(name), Some(allowed))
                }
                None => {
                    let (o, s) =
                        start("", None).map_err(|e| DirectoryError::Invalid(e.to_string()))?;
                    (o, s, None, None)
                }
            };
            let pending = Pending {
                purpose: flow.need.into(),
                binding: bind.hash(),
                flow: Some(flow_id.key()),
                user,
                invite: None,
                allowed,
                handle: None,
                account_existed: false,
                ceremony_nonce: bound.map(|(_, n)| aalgate_auth::signing::b64(&n)),
                state: serde_json::to_value(&state)
                    .map_err(|e| DirectoryError::Corrupt("state", e.to_string()))?,
                created: now,
            };
            // A ceremony for nobody known yet draws on the store-wide anonymous quota.
            if flow.user.is_none() {
                let size =
                    serde_json::to_vec(&pending).map_or(crate::state::MAX_FLOW_BYTES, |v| v.len());
                // A typed name's state holds that person's keys (or a decoy's): charged
                // at least a fixed amount, so how many starts fit does not tell a real
                // name from a made-up one.
                let size = if pending.user.is_some() {
                    size.max(NAMED_START_CHARGE)
                } else {
                    size
                };
                match st.charge_anonymous(size, client).await? {
                    Ok(()) => {}
                    Err(crate::state::QuotaFull::Client) => {
                        return Ok(Err((
                            Outcome::SignInBusy,
                            crate::state::MSG_SIGN_IN_BUSY_HERE,
                        )))
                    }
                    Err(crate::state::QuotaFull::Store) => {
                        return Ok(Err((Outcome::SignInBusy, crate::state::MSG_SIGN_IN_BUSY)))
                    }
                }
            }
            svc.dir.put_pending(&ceremony.hash(), &pending).await?;
            Ok(Ok((ceremony.expose().to_string(), options, kind)))
        }
        _ => Ok(Err((Outcome::BadRequest, MSG_FAILED))),
    }
}

/// `POST /.aalgate/webauthn/finish`.
pub(crate) async fn ceremony_finish(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let (bind, req): (Token, FinishReq) = match ceremony_input(st, x).await? {
        Ok(x) => x,
        Err(sent) => return Ok(sent),
    };
    let Some(ceremony) = Token::parse(&req.ceremony) else {
        return x.json_error(Outcome::BadRequest, MSG_EXPIRED).await;
    };
    let svc = st.service();
    // Taken once: a replayed or parallel duplicate finds nothing.
    let pending = match svc.dir.take_pending(&ceremony.hash()).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            audit_auth(
                st,
                x.ctx,
                "signin_failure",
                None,
                None,
                None,
                Some("ceremony state missing (expired, used or replayed)"),
            );
            return x.json_error(Outcome::CeremonyExpired, MSG_EXPIRED).await;
        }
        Err(e) => {
            return x.store_down(&e, "ceremony finish: store error").await;
        }
    };
    if !constant_eq(pending.binding.as_bytes(), bind.hash().as_bytes()) {
        audit_auth(
            st,
            x.ctx,
            "signin_failure",
            pending.user.as_deref(),
            None,
            None,
            Some("ceremony finished by another browser"),
        );
        return x.json_error(Outcome::Csrf, MSG_FORBIDDEN).await;
    }
    let response = serde_json::to_vec(&req.response).unwrap_or_default();
    let t0 = Instant::now();
    if pending.purpose == Purpose::Enroll {
        return finish_enroll(st, x, pending, &response).await;
    }
    let kind = challenge_kind(pending.purpose);
    let result = finish_sign_in(st, x, pending, &response).await;
    st.metrics
        .ceremony_seconds
        .with_label_values(&[kind])
        .observe(t0.elapsed().as_secs_f64());
    result
}

#[allow(
    clippy::too_many_lines,
    reason = "a sign-in's checks in order, each failure audited"
)]
pub(crate) async fn finish_sign_in(
    st: &State,
    x: &mut Exchange<'_>,
    pending: Pending,
    response: &[u8],
) -> Result<bool> {
    let svc = st.service();
    let now = st.clock.now();
    let kind = challenge_kind(pending.purpose);
    let fail = |this: &State, ctx: &Ctx, user: Option<&str>, why: &str| {
        tracing::info!(request_id = %ctx.request_id, user = user.unwrap_or("-"), reason = why, "sign-in failed");
        this.metrics
            .challenges
            .with_label_values(&[kind, "failure"])
            .inc();
        audit_auth(this, ctx, "signin_failure", user, None, None, Some(why));
    };
    let ceremony_nonce = pending.ceremony_nonce.clone();
    let state: AuthState = match serde_json::from_value(pending.state) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable sign-in state");
            return x.json_error(Outcome::Internal, MSG_FAILED).await;
        }
    };
    let resp = match SignIn::parse(response) {
        Ok(r) => r,
        Err(e) => {
            fail(st, x.ctx, pending.user.as_deref(), &e.to_string());
            return failed_finish(st, x, &pending.binding).await;
        }
    };
    // Who: the user the ceremony was started for, or the one the credential names.
    let user = match &pending.user {
        Some(name) => svc.dir.user(name).await,
        None => match resp.user_handle() {
            Some(h) => svc.dir.user_by_handle(h).await,
            None => Ok(None),
        },
    };
    let mut user = match user {
        Ok(Some(u)) if !u.disabled => u,
        Ok(_) => {
            fail(
                st,
                x.ctx,
                pending.user.as_deref(),
                "unknown or disabled user",
            );
            return failed_finish(st, x, &pending.binding).await;
        }
        Err(e) => {
            return x.store_down(&e, "sign-in: store error").await;
        }
    };
    // No account-wide lockout: a valid assertion from the person's own key is never refused
    // because of anybody's failures (README "Failed sign-ins", NIST SP 800-63B-4 rate limiting).
    let verified = svc
        .rp
        .finish_sign_in(&resp, state, &mut user, pending.allowed.as_deref(), now);
    let v = match verified {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(request_id = %x.ctx.request_id, user = %user.id, error = %e, "sign-in refused");
            fail(st, x.ctx, Some(&user.id), &e.to_string());
            if let CeremonyError::CounterRegression(cred) = &e {
                st.metrics.counter_regressions.inc();
                audit_auth(
                    st,
                    x.ctx,
                    "sign_count_regression",
                    Some(&user.id),
                    None,
                    Some(cred),
                    Some("credential flagged; sign-in refused"),
                );
                // Onto the current record: a stale write would undo a `disable`.
                if let Some(c) = user
                    .credentials
                    .iter()
                    .find(|c| c.flagged.is_some() && &c.audit_id() == cred)
                {
                    let reason = c.flagged.clone().unwrap_or_default();
                    let _ = svc.dir.flag_credential(&user.id, &c.id, &reason).await;
                }
            }
            return failed_finish(st, x, &pending.binding).await;
        }
    };
    // A passkey added after a provider sign-in only confirms step-ups of a live session of
    // its person, and the session it starts keeps that one's start (its absolute limit).
    let step_up = pending.purpose.flow_kind() == Some(FlowKind::StepUp);
    let mut auth_time = now;
    if user
        .credential(&v.credential_id)
        .is_some_and(|c| c.after_provider.is_some())
    {
        let live = match super::handoff::live_session(st, x).await {
            Ok(l) => l.filter(|(u, _)| *u == user.id),
            Err(e) => return x.store_down(&e, "sign-in: store error").await,
        };
        match live {
            Some((_, began)) if step_up => auth_time = began,
            _ => {
                fail(
                    st,
                    x.ctx,
                    Some(&user.id),
                    "a passkey added after a provider sign-in confirms step-ups of a live session only; sign in through the provider",
                );
                return failed_finish(st, x, &pending.binding).await;
            }
        }
    }
    let flow = match pending.flow.as_deref() {
        Some(k) => st.store.take_flow(k, now).await,
        None => Ok(None),
    };
    let flow = match flow {
        Ok(Some(f)) => f,
        Ok(None) => return x.json_error(Outcome::FlowExpired, MSG_EXPIRED).await,
        Err(e) => {
            return x.store_down(&e, "sign-in: store error").await;
        }
    };
    // As taken: what goes back if the store fails further on.
    let taken = flow.clone();
    // Never above the level IT proofed the person for.
    let mut v = v;
    v.aal = v.aal.min(user.proofed_aal.max(Aal::Aal2));
    if flow.need == FlowKind::StepUp && v.aal < flow.aal {
        fail(
            st,
            x.ctx,
            Some(&user.id),
            "credential below the step-up level",
        );
        return x.json_error(Outcome::NotEnough, MSG_NOT_ENOUGH).await;
    }
    // Write back only what this sign-in changed, by compare-and-swap onto the current record:
    // a `disable`, removal or `revoke-credential` that ran meanwhile wins.
    let merged = match user.credential(&v.credential_id) {
        Some(used) => {
            svc.dir
                .record_sign_in(&user.id, used, user.last_login.unwrap_or(now))
                .await
        }
        None => Ok(false),
    };
    match merged {
        Ok(true) => {}
        Ok(false) => {
            fail(
                st,
                x.ctx,
                Some(&user.id),
                "user disabled or credential revoked during sign-in",
            );
            return x.json_error(Outcome::SigninFailed, MSG_FAILED).await;
        }
        Err(e) => {
            put_back(st, pending.flow.as_deref(), &taken).await;
            return x.store_down(&e, "sign-in: store error").await;
        }
    }
    st.metrics
        .challenges
        .with_label_values(&[kind, "success"])
        .inc();
    // Another person answering a step-up or re-auth ("Sign in as someone else" on a paused
    // page) is that person's login; the session it replaces ends as `switch_user`.
    let event = if flow.user.as_deref().is_some_and(|u| u != user.id) {
        "login"
    } else {
        kind
    };
    audit_auth(
        st,
        x.ctx,
        event,
        Some(&user.id),
        Some(v.aal),
        Some(&v.audit_id),
        Some(v.kind.as_str()),
    );
    let mut flow = flow;
    if let Some(b) = flow.binding.take() {
        // The key signed the challenge derived from this request (webauthn-rs checked it
        // against the state); the audit log keeps the evidence, and only then does the
        // flow admit the request. Below the route's level it signs nothing.
        let expected = ceremony_nonce
            .as_deref()
            .and_then(aalgate_auth::signing::b64_32)
            .and_then(|n| {
                aalgate_auth::signing::challenge_of(&b, &n, &flow.method, &signed_path(st, &flow))
            })
            .map(|c| aalgate_auth::signing::b64(&c));
        if v.aal >= flow.aal && expected.is_some() && resp.challenge() == expected {
            let (ad, cd, sig) = resp.signed_parts();
            let path = signed_path(st, &flow);
            let evidence = aalgate_auth::signing::Evidence {
                v: 1,
                method: flow.method.clone(),
                path: path.clone(),
                digest: b.digest.clone(),
                body: b.body,
                ceremony_nonce: ceremony_nonce.clone().unwrap_or_default(),
                credential_id: v.credential_id.clone(),
                authenticator_data: aalgate_auth::signing::b64(ad),
                client_data_json: aalgate_auth::signing::b64(cd),
                signature: aalgate_auth::signing::b64(sig),
            };
            // No evidence on record, no signature: the request is not admitted, and the
            // flow (with what it keeps) goes back, so one more touch can sign it.
            let recorded = st
                .audit
                .record(&crate::audit::Event {
                    time: crate::audit::now_rfc3339(),
                    event: "request_signed",
                    request_id: Some(&x.ctx.request_id),
                    user: Some(&user.id),
                    app: Some(&flow.app),
                    method: Some(&flow.method),
                    path: Some(path),
                    aal: Some(v.aal.number()),
                    credential: Some(&v.audit_id),
                    evidence: Some(evidence),
                    ..Default::default()
                })
                .await;
            flow.binding = Some(b);
            if recorded {
                st.metrics.signed_requests.inc();
            } else {
                tracing::error!(request_id = %x.ctx.request_id, user = %user.id, "the audit log could not record request_signed (queue full, writer gone or sink failing): the request is not signed, and its flow is kept for another touch");
                let left = crate::state::FLOW_TTL.saturating_sub(now.since(flow.created));
                if let Some(k) = pending.flow.as_deref() {
                    if let Err(e) = st.store.put_flow(k, &flow, left).await {
                        return x.store_down(&e, "sign-in: store error").await;
                    }
                }
                return x
                    .json_error(Outcome::AuditUnavailable, MSG_NOT_RECORDED)
                    .await;
            }
        } else {
            tracing::info!(request_id = %x.ctx.request_id, user = %user.id, "per-request ceremony below the route's level or unbound: the request is not signed");
        }
    }
    let sent = start_session(
        st,
        x,
        &user,
        (v.aal, auth_time),
        v.amr.clone(),
        &v.audit_id,
        v.kind,
        &flow,
    )
    .await;
    if x.ctx.outcome == Outcome::StoreUnavailable {
        put_back(st, pending.flow.as_deref(), &taken).await;
    }
    sent
}

/// The store failed after the flow was taken: the flow (and the kept form it names) goes
/// back for the rest of its life, so that "Try again" can finish the sign-in once the store
/// answers. Best effort: a store that is still down loses it, and the person starts over.
async fn put_back(st: &State, key: Option<&str>, flow: &aalgate_session::Flow) {
    let Some(key) = key else { return };
    let left = crate::state::FLOW_TTL.saturating_sub(st.clock.now().since(flow.created));
    if let Err(e) = st.store.put_flow(key, flow, left).await {
        tracing::warn!(error = %e, "sign-in: the flow taken before a store failure could not be put back");
    }
}

/// A sign-in that failed (an unreadable response, an unknown or disabled user, a signature
/// that does not verify): counted for this client and browser binding, and answered after
/// their backoff, alike on every path, so the time tells nobody whether the name exists.
pub(crate) async fn failed_finish(st: &State, x: &mut Exchange<'_>, binding: &str) -> Result<bool> {
    let wait = st
        .service()
        .failures
        .failed(st.client_ip(x.session), binding);
    tokio::time::sleep(wait).await;
    x.json_error(Outcome::SigninFailed, MSG_FAILED).await
}

/// The challenge kind metrics count a ceremony as (enrollment: a login).
pub(crate) fn challenge_kind(purpose: Purpose) -> &'static str {
    purpose.flow_kind().map_or("login", FlowKind::challenge)
}
