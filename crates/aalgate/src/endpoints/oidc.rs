//! Sign-in through the hospital's identity provider (OpenID Connect, authorization code with
//! PKCE), on the auth origin:
//!
//! - `GET /.aalgate/oidc/start?flow=..&idp=..`: from the sign-in page's button to the
//!   provider, with `state` and `nonce` bound to the flow and this browser;
//! - `GET /.aalgate/oidc/callback`: the provider's answer becomes a session at the level the
//!   provider's login maps to (AAL1 unless the config says more, never AAL3); a route that
//!   needs more makes the flow a step-up with the person's own passkey or key;
//! - `POST /.aalgate/oidc/backchannel-logout?idp=..`: the provider ends a person's sessions
//!   (OpenID Connect Back-Channel Logout 1.0).

use std::time::Duration;

use aalgate_auth::{DirectoryError, User};
use aalgate_oidc::Groups;
use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{Flow, FlowId, FlowKind};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use super::{audit_auth, query_param};
use crate::federation::{FedError, Idp};
use crate::http::{constant_eq, Exchange};
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::{bind_cookie, Reply, State, FLOW_TTL};

/// The pending provider login of a flow, by the flow's store key: one per flow (a new start
/// replaces it), so starting again and again stores nothing more.
pub(crate) const OIDC_NS: &str = "oidc";
/// Which person a provider's `sub` and `sid` belong to, for back-channel logout.
pub(crate) const OIDC_LINK_NS: &str = "oidc_link";
/// Logout token ids already used.
pub(crate) const OIDC_JTI_NS: &str = "oidc_jti";
/// The callback path (the redirect URI registered at the provider is `public_origin` + this).
pub(crate) const CALLBACK: &str = "/.aalgate/oidc/callback";
/// How far before the start of this sign-in a provider login may lie and still count as
/// asked for now (the two clocks differ).
const FRESH_LEEWAY_SECS: u64 = 30;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingLogin {
    idp: String,
    /// The random half of `state` (the other half names the flow).
    secret: String,
    /// Hash of this browser's binding cookie on the auth origin.
    browser: String,
    nonce: String,
    verifier: String,
    sent_at: Timestamp,
    /// `prompt=login` was sent: the login must be new.
    fresh: bool,
    max_age: Option<u64>,
}

fn redirect_uri(st: &State) -> String {
    format!("{}{CALLBACK}", st.signin.origin)
}

/// The sign-in page's provider buttons for a flow (empty without providers). `need`: the
/// level the person must reach here; only providers that can give it are offered.
pub(crate) fn buttons(st: &State, flow: &FlowId, need: Option<Aal>) -> String {
    let mut out = String::new();
    for idp in &st.signin.federation.idps {
        if need.is_some_and(|a| idp.cfg.aal.best() < a) {
            continue;
        }
        out.push_str(&format!(
            "<p><a class=\"button\" data-idp=\"{id}\" href=\"/.aalgate/oidc/start?flow={flow}&amp;idp={id}\">Sign in with {name}</a></p>",
            id = escape(&idp.cfg.id),
            flow = escape(&flow.encode()),
            name = escape(&idp.cfg.display_name),
        ));
    }
    out
}

async fn page(x: &mut Exchange<'_>, outcome: Outcome, title: &str, body: &str) -> Result<bool> {
    x.ctx.outcome = outcome;
    let status = outcome.status().unwrap_or(200);
    let html = x.page_forward(title, body, false);
    x.send(Reply::html(status, html)).await
}

/// A provider sign-in refused: audited (`signin_failure`, with why), then its page.
async fn refused(
    st: &State,
    x: &mut Exchange<'_>,
    user: Option<&str>,
    why: &str,
    outcome: Outcome,
    title: &str,
    body: &str,
) -> Result<bool> {
    audit_auth(st, x.ctx, "signin_failure", user, None, None, Some(why));
    page(x, outcome, title, body).await
}

async fn expired(x: &mut Exchange<'_>) -> Result<bool> {
    page(
        x,
        Outcome::FlowExpired,
        "Sign-in link expired",
        "<p>This sign-in is not valid any more (sign-ins expire after 10 minutes and work once).</p>\
         <p>Go back to the application and open the page again.</p>",
    )
    .await
}

async fn unreachable(x: &mut Exchange<'_>, idp: &Idp, e: &FedError) -> Result<bool> {
    tracing::warn!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, error = %e, "identity provider unavailable");
    let body = format!(
        "<p>{} cannot be reached just now. Wait a moment and try again, or sign in with your passkey or security key.</p>",
        escape(&idp.cfg.display_name)
    );
    page(
        x,
        Outcome::ProviderUnavailable,
        "Sign-in service unavailable",
        &body,
    )
    .await
}

/// `GET /.aalgate/oidc/start?flow=..&idp=..`.
#[allow(
    clippy::too_many_lines,
    reason = "the start's checks in order, then the request to the provider"
)]
pub(crate) async fn start(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let q = x.session.req_header().uri.query().map(str::to_string);
    let id = query_param(q.as_deref(), "flow").and_then(FlowId::parse);
    let idp = query_param(q.as_deref(), "idp").and_then(|i| st.signin.federation.get(i));
    let (Some(id), Some(idp)) = (id, idp.cloned()) else {
        return x.error(Outcome::BadRequest).await;
    };
    let now = st.clock.now();
    let flow = match st.store.get_flow(&id.key(), now).await {
        Ok(Some(f)) => f,
        Ok(None) => return expired(x).await,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error at a provider sign-in");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    // What the sign-in page offers, enforced: a step-up that signs a request takes the key;
    // for a known person who has a key at the level, their own ceremony wins; and the provider
    // must be able to give the level.
    match offered(st, &flow, &idp).await {
        Ok(true) => {}
        Ok(false) => {
            return page(
                x,
                Outcome::BadRequest,
                "Use your key",
                "<p>This confirmation needs your own passkey or security key. Go back and press the button on the page.</p>",
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "directory error at a provider sign-in");
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    // A shared workstation: the provider's session outlives aalgate's, so unless IT allowed
    // silent sign-ins, and this is a plain first sign-in keeping nothing, the provider must
    // ask the person to log in now (never silently the previous clinician).
    let fresh = !(idp.cfg.silent_login
        && flow.need == FlowKind::Login
        && flow.kept.is_none()
        && flow.binding.is_none());
    let max_age = if fresh { Some(0) } else { flow.max_age_secs };
    let meta = match idp.metadata().await {
        Ok(m) => m,
        Err(e) => return unreachable(x, &idp, &e).await,
    };
    let (bind, set_bind) = x.binding();
    let pending = PendingLogin {
        idp: idp.cfg.id.clone(),
        secret: aalgate_oidc::pkce::random(),
        browser: bind.hash(),
        nonce: aalgate_oidc::pkce::random(),
        verifier: aalgate_oidc::pkce::random(),
        sent_at: now,
        fresh,
        max_age,
    };
    let state = format!("{}.{}", id.encode(), pending.secret);
    let request = crate::federation::AuthRequest {
        redirect_uri: &redirect_uri(st),
        state: &state,
        nonce: &pending.nonce,
        verifier: &pending.verifier,
        fresh,
        max_age,
    };
    let url = match idp.authorize_url(&meta, &request) {
        Ok(u) => u,
        Err(e) => return unreachable(x, &idp, &e).await,
    };
    let left = FLOW_TTL
        .saturating_sub(now.since(flow.created))
        .max(Duration::from_secs(1));
    let value = serde_json::to_vec(&pending).unwrap_or_default();
    if let Err(e) = st
        .store
        .kv_put(OIDC_NS, &id.key(), &value, Some(left))
        .await
    {
        tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error at a provider sign-in");
        return x.error(Outcome::StoreUnavailable).await;
    }
    x.ctx.outcome = Outcome::ProviderRedirect;
    let mut reply = Reply::html(
        302,
        pages::page(
            "Signing in",
            &format!("<p>Taking you to {}.</p>", escape(&idp.cfg.display_name)),
            &x.ctx.request_id,
        ),
    )
    .header("location", url);
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.send(reply).await
}

/// Whether the sign-in page offers `idp` for `flow`: always for a sign-in; for a step-up or
/// re-auth of a known person, only if it can give the level, no request is to be signed, and
/// the person has no key at the level (their own ceremony wins).
async fn offered(st: &State, flow: &Flow, idp: &Idp) -> std::result::Result<bool, DirectoryError> {
    if !flow.need.for_its_person() {
        return Ok(true);
    }
    let own_key = match flow.user.as_deref() {
        Some(u) => st.signin.dir.user(u).await?.is_some_and(|p| {
            p.credentials
                .iter()
                .any(|c| c.usable_for(flow.need == FlowKind::StepUp) && c.aal >= flow.aal)
        }),
        None => false,
    };
    Ok(!own_key && flow.binding.is_none() && idp.cfg.aal.best() >= flow.aal)
}

/// The person a provider vouched for, as the directory knows them: an existing account, a
/// pending invite (the account is created from it, the invite stays for enrolling a key), or
/// with `jit`, a member of a named provider group. `Ok(None)`: unknown.
async fn person(
    st: &State,
    idp: &Idp,
    username: &str,
    groups: &Groups,
    now: Timestamp,
) -> std::result::Result<Option<(User, &'static str)>, DirectoryError> {
    let dir = &st.signin.dir;
    let mut names = vec![username.to_string()];
    let lower = username.to_ascii_lowercase();
    if lower != username {
        names.push(lower);
    }
    for n in &names {
        if let Some(u) = dir.user(n).await? {
            return Ok(Some((u, "account")));
        }
    }
    for (_, inv) in dir.invites().await? {
        if names.contains(&inv.user) && inv.expires > now {
            let u = super::enroll::new_user(&inv.user, &inv.display_name, inv.aal, now);
            if !dir.insert_new_user(&u).await? {
                // Created meanwhile (an enrollment, provisioning): that account it is.
                return Ok(dir.user(&inv.user).await?.map(|u| (u, "account")));
            }
            return Ok(Some((u, "invite")));
        }
    }
    let Groups::Listed(g) = groups else {
        return Ok(None);
    };
    if idp.cfg.jit_groups.iter().any(|j| g.contains(j)) {
        let id = names.last().cloned().unwrap_or_default();
        if dir.check_invite(&id, Aal::Aal2).await.is_err() {
            return Ok(None);
        }
        let u = super::enroll::new_user(&id, &id, Aal::Aal2, now);
        if !dir.insert_new_user(&u).await? {
            return Ok(dir.user(&id).await?.map(|u| (u, "account")));
        }
        return Ok(Some((u, "jit")));
    }
    Ok(None)
}

/// `GET /.aalgate/oidc/callback?state=..&code=..` (or `error=..`).
#[allow(
    clippy::too_many_lines,
    reason = "the provider's answer checked in order, each refusal audited"
)]
pub(crate) async fn callback(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let q = x.session.req_header().uri.query().unwrap_or("").to_string();
    let params: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let Some((id, secret)) = param("state").and_then(|s| {
        let (f, r) = s.split_once('.')?;
        Some((FlowId::parse(f)?, r.to_string()))
    }) else {
        return x.error(Outcome::BadRequest).await;
    };
    let now = st.clock.now();
    let store_err = |x: &Exchange<'_>, e: &dyn std::fmt::Display| {
        tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error at a provider callback");
    };
    // Read, compared, then taken once: a replayed callback, or one for a start this browser
    // replaced, finds nothing; a made-up secret takes nothing from the real sign-in.
    let pending = match st.store.kv_get(OIDC_NS, &id.key()).await {
        Ok(v) => v.and_then(|raw| {
            let p = serde_json::from_slice::<PendingLogin>(&raw).ok()?;
            constant_eq(p.secret.as_bytes(), secret.as_bytes()).then_some((raw, p))
        }),
        Err(e) => {
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    // Taken only if it is still the one read (a new start may have replaced it).
    let pending = match pending {
        Some((raw, p)) => match st.store.kv_swap(OIDC_NS, &id.key(), Some(&raw), None).await {
            Ok(true) => Some(p),
            Ok(false) => None,
            Err(e) => {
                store_err(x, &e);
                return x.error(Outcome::StoreUnavailable).await;
            }
        },
        None => None,
    };
    let Some(pending) = pending else {
        // Slowed like a failed sign-in: made-up callbacks cannot flood the audit log.
        let (bind, _) = x.binding();
        let wait = st
            .service()
            .failures
            .failed(st.client_ip(x.session), &bind.hash());
        tokio::time::sleep(wait).await;
        audit_auth(st, x.ctx, "signin_failure", None, None, None, Some("provider callback without its pending sign-in (replayed, expired, or a state this browser did not start)"));
        return expired(x).await;
    };
    let (bind, fresh_bind) = x.binding();
    if fresh_bind || !constant_eq(bind.hash().as_bytes(), pending.browser.as_bytes()) {
        return refused(
            st,
            x,
            None,
            "provider callback in another browser than the one that started it",
            Outcome::Csrf,
            "Sign-in refused",
            "<p>This sign-in was started in another browser or window. Nothing was changed.</p>\
             <p>Go back to the application and sign in from there.</p>",
        )
        .await;
    }
    let Some(idp) = st.signin.federation.get(&pending.idp).cloned() else {
        return expired(x).await;
    };
    let provider = escape(&idp.cfg.display_name);
    let again = format!(
        "<p><a class=\"button\" href=\"/.aalgate/auth?flow={}\">Back to sign-in</a></p>",
        escape(&id.encode())
    );
    let refuse = |why: &str| format!("identity provider {}: {why}", idp.cfg.id);
    if let Some(err) = param("error") {
        // The provider's words are not shown: only which kind of answer it was.
        let err: String = err
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let body = format!(
            "<p>The sign-in at {provider} did not finish ({}). Nothing was changed.</p>{again}",
            escape(&err)
        );
        return refused(
            st,
            x,
            None,
            &refuse(&format!("answered error={err}")),
            Outcome::ProviderRefused,
            "Sign-in not finished",
            &body,
        )
        .await;
    }
    // RFC 9207: a provider that names itself must be the one this sign-in went to (a
    // mix-up between providers is refused before the code goes anywhere).
    if param("iss").is_some_and(|iss| iss != idp.cfg.issuer) {
        let body =
            format!("<p>The answer did not come from {provider}. Nothing was changed.</p>{again}");
        return refused(
            st,
            x,
            None,
            &refuse("the callback names another issuer (iss)"),
            Outcome::ProviderRefused,
            "Sign-in refused",
            &body,
        )
        .await;
    }
    let Some(code) = param("code") else {
        return x.error(Outcome::BadRequest).await;
    };
    let verified = async {
        let token = idp
            .exchange_code(code, &pending.verifier, &redirect_uri(st))
            .await?;
        idp.verify_id_token(&token, &pending.nonce, now, pending.max_age)
            .await
    }
    .await;
    let claims = match verified {
        Ok(c) => c,
        Err(FedError::Refused(why)) => {
            tracing::info!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, reason = %why, "provider sign-in refused");
            let body = format!("<p>The answer from {provider} could not be verified, so it does not count. Nothing was changed.</p>{again}");
            return refused(
                st,
                x,
                None,
                &refuse(&why),
                Outcome::ProviderRefused,
                "Sign-in refused",
                &body,
            )
            .await;
        }
        Err(e) => return unreachable(x, &idp, &e).await,
    };
    // Asked for a new login: one older than this sign-in's start is the provider's old
    // session (perhaps the previous clinician's) answering silently.
    let logged_in_now = claims
        .auth_time
        .is_some_and(|t| t.saturating_add(FRESH_LEEWAY_SECS) >= pending.sent_at.0);
    if pending.fresh && !logged_in_now {
        let body = format!("<p>{provider} did not ask for your password or key just now, so this sign-in does not count: on a shared computer it could be the previous person's. Nothing was changed.</p>{again}");
        return refused(
            st,
            x,
            None,
            &refuse("asked for a new login, got an older one (auth_time)"),
            Outcome::ProviderRefused,
            "Sign-in refused",
            &body,
        )
        .await;
    }
    let Some(username) = idp.cfg.username(&claims.all).map(str::to_string) else {
        let body = format!(
            "<p>{provider} did not say who you are in a way this gateway can use. Contact IT.</p>"
        );
        return refused(
            st,
            x,
            None,
            &refuse(&format!(
                "the token has no {} claim",
                idp.cfg.username_claim
            )),
            Outcome::UnknownPerson,
            "Not set up for access",
            &body,
        )
        .await;
    };
    let groups = idp.cfg.groups(&claims.all);
    let user = match person(st, &idp, &username, &groups, now).await {
        Ok(Some((u, _))) if !u.disabled => u,
        Ok(found) => {
            let why = if found.is_some() {
                "disabled in the directory"
            } else {
                "not in the directory"
            };
            let body = format!(
                "<p>You signed in at {provider} as <strong>{}</strong>, but you are not set up for access to these applications here.</p>\
                 <p>Contact IT: they can give you access.</p>",
                escape(&username)
            );
            return refused(
                st,
                x,
                Some(&username),
                &refuse(why),
                Outcome::UnknownPerson,
                "Not set up for access",
                &body,
            )
            .await;
        }
        Err(e) => {
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    // The provider account is bound to the person at the first sign-in through a provider:
    // the same user name from another account (reused, or from another provider) is refused.
    match bind_subject(st, &user.id, &idp.cfg.id, &claims.sub).await {
        Ok(true) => {}
        Ok(false) => {
            let body = format!(
                "<p>You signed in at {provider} with an account that is not the one <strong>{}</strong> signed in with before, so it does not count. Nothing was changed.</p>\
                 <p>Contact IT.</p>",
                escape(&user.id)
            );
            return refused(
                st,
                x,
                Some(&user.id),
                &refuse("another provider account than the one this person is bound to (sub)"),
                Outcome::UnknownPerson,
                "Not set up for access",
                &body,
            )
            .await;
        }
        Err(e) => {
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    let flow = match st.store.get_flow(&id.key(), now).await {
        Ok(Some(f)) => f,
        Ok(None) => return expired(x).await,
        Err(e) => {
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    if flow.need == FlowKind::StepUp && flow.user.as_deref() != Some(user.id.as_str()) {
        let body = format!("<p>This confirmation is for another person's session, and you signed in at {provider} as someone else. Nothing was changed.</p>{again}");
        return refused(
            st,
            x,
            Some(&user.id),
            &refuse("a step-up for another person"),
            Outcome::ProviderRefused,
            "Sign-in refused",
            &body,
        )
        .await;
    }
    // The groups the provider asserts replace those it asserted before; IT's stay. A token
    // that could not carry them all changes nothing.
    match &groups {
        Groups::Overage => {
            tracing::warn!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, user = %user.id, "the token signals a groups overage: the person's groups are left as they were");
        }
        g => {
            let listed = match g {
                Groups::Listed(l) => l.as_slice(),
                _ => &[],
            };
            match st.signin.dir.sync_provider_groups(&user.id, listed).await {
                Ok(((before, after), skipped)) => {
                    if !skipped.is_empty() {
                        tracing::warn!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, user = %user.id, ?skipped, "provider groups that are not valid group names were left out");
                    }
                    if before.groups != after.groups {
                        audit_auth(
                            st,
                            x.ctx,
                            "groups_changed",
                            Some(&user.id),
                            None,
                            None,
                            Some(&format!(
                                "by identity provider {}: now {}",
                                idp.cfg.id,
                                after.groups.join(",")
                            )),
                        );
                    }
                }
                Err(e) => {
                    store_err(x, &e);
                    return x.error(Outcome::StoreUnavailable).await;
                }
            }
        }
    }
    if let Some(email) = idp.cfg.email(&claims.all) {
        if aalgate_auth::directory::valid_email(email) {
            match st.signin.dir.membership(&user.id).await {
                Ok(m) if m.email.is_none() => {
                    if let Err(e) = st.signin.dir.set_email(&user.id, Some(email)).await {
                        tracing::warn!(request_id = %x.ctx.request_id, user = %user.id, error = %e, "the provider's e-mail address was not recorded");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(request_id = %x.ctx.request_id, user = %user.id, error = %e, "the provider's e-mail address was not recorded");
                }
            }
        }
    }
    let aal = idp.cfg.aal.level(&claims.amr, claims.acr.as_deref());
    tracing::info!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, user = %user.id, amr = ?claims.amr, acr = claims.acr.as_deref().unwrap_or("-"), %aal, new_login = logged_in_now, "signed in through the identity provider");
    let event = if flow.user.as_deref().is_some_and(|u| u != user.id) {
        "login"
    } else {
        flow.need.challenge()
    };
    let credential = format!("idp:{}", idp.cfg.id);
    audit_auth(
        st,
        x.ctx,
        event,
        Some(&user.id),
        Some(aal),
        Some(&credential),
        Some(&format!(
            "identity provider {}: amr [{}], acr {}, login {}",
            idp.cfg.id,
            claims.amr.join(","),
            claims.acr.as_deref().unwrap_or("-"),
            if logged_in_now { "new" } else { "silent" },
        )),
    );
    // The provider's own method names stay in the audit line above: in the session (and the
    // assertion apps receive) they could claim what aalgate itself verifies ("hwk") or marks
    // ("breakglass").
    let amr = vec!["fed".to_string()];
    // As fresh as the provider's login, not this callback: a silent sign-in on an old
    // provider session (perhaps the previous clinician's) passes no fresh-confirmation route.
    let last_auth = claims
        .auth_time
        .map_or(Timestamp(0), |t| Timestamp(t.min(now.0)));
    let (record, s, set) = match super::handoff::begin_session(
        st,
        x,
        &user,
        (aal, now, last_auth),
        amr,
        &credential,
        "provider",
    )
    .await?
    {
        Ok(started) => started,
        Err(sent) => return Ok(sent),
    };
    // For back-channel logout: the provider names the person (`sub`) or its session (`sid`).
    let ttl = Duration::from_secs(s.expires_at.0.saturating_sub(now.0).max(1));
    for (kind, value) in [("sub", Some(&claims.sub)), ("sid", claims.sid.as_ref())] {
        let Some(v) = value else { continue };
        if let Err(e) = st
            .store
            .kv_put(
                OIDC_LINK_NS,
                &link_key(&idp.cfg.id, kind, v),
                user.id.as_bytes(),
                Some(ttl),
            )
            .await
        {
            // Without it, a logout at the provider could not end this session: none starts.
            let _ = st.store.remove(&record).await;
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    x.ctx.outcome = Outcome::SignedIn;
    // A request the person's key must sign is never admitted by a provider login: the flow
    // goes on as a step-up, whose ceremony signs it.
    let to = if flow.binding.is_none() && super::handoff::satisfies(&s, &flow, now) {
        match st.store.take_flow(&id.key(), now).await {
            // (The flow as taken: it must still be one this login satisfies.)
            Ok(Some(f)) if f.binding.is_none() && super::handoff::satisfies(&s, &f, now) => {
                match super::handoff::redirect_for(st, &record, &s, &f, logged_in_now).await {
                    Ok(r) => r,
                    Err(e) => {
                        store_err(x, &e);
                        return x.error(Outcome::StoreUnavailable).await;
                    }
                }
            }
            Ok(_) => return expired(x).await,
            Err(e) => {
                store_err(x, &e);
                return x.error(Outcome::StoreUnavailable).await;
            }
        }
    } else {
        // Not enough for where the person is going (or a request to sign): their own passkey
        // or key adds the rest, as a step-up of the session just started (no second sign-in).
        let mut flow: Flow = flow;
        flow.need = FlowKind::StepUp;
        flow.user = Some(user.id.clone());
        let left = FLOW_TTL
            .saturating_sub(now.since(flow.created))
            .max(Duration::from_secs(1));
        if let Err(e) = st.store.put_flow(&id.key(), &flow, left).await {
            store_err(x, &e);
            return x.error(Outcome::StoreUnavailable).await;
        }
        format!("/.aalgate/auth?flow={}", id.encode())
    };
    let reply = Reply::html(
        302,
        pages::page("Signed in", "<p>Taking you back.</p>", &x.ctx.request_id),
    )
    .header("location", to)
    .header("set-cookie", set);
    x.send(reply).await
}

/// Binds `user` to the provider account `idp`/`sub` if it is bound to none yet; whether it
/// is (now) bound to that one.
async fn bind_subject(
    st: &State,
    user: &str,
    idp: &str,
    sub: &str,
) -> std::result::Result<bool, aalgate_session::StoreError> {
    let ns = aalgate_auth::directory::PROVIDER_SUBJECT_NS;
    let this = format!("{idp}\0{sub}");
    for _ in 0..3 {
        match st.store.kv_get(ns, user).await? {
            Some(v) => return Ok(v == this.as_bytes()),
            None => {
                if st
                    .store
                    .kv_swap(ns, user, None, Some(this.as_bytes()))
                    .await?
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn link_key(idp: &str, kind: &str, value: &str) -> String {
    aalgate_auth::token::hash_str(&format!("{idp}\0{kind}\0{value}"))
}

/// `POST /.aalgate/oidc/backchannel-logout?idp=..`: the provider's signed logout token ends
/// every session of the person it names (by `sub`, or by the `sid` of a provider session),
/// on every instance within the session cache's second.
pub(crate) async fn backchannel_logout(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let q = x.session.req_header().uri.query().map(str::to_string);
    let Some(idp) = query_param(q.as_deref(), "idp")
        .and_then(|i| st.signin.federation.get(i))
        .cloned()
    else {
        return x
            .json_error(Outcome::BadRequest, "unknown identity provider")
            .await;
    };
    let body = match x.read_body().await {
        Ok(b) => b,
        Err(crate::http::BodyError::TooLarge) => {
            return x.json_error(Outcome::BadRequest, "no body").await
        }
        Err(crate::http::BodyError::Broken(o)) => return x.broken_body(o).await,
    };
    let Some(token) = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
    else {
        return x.json_error(Outcome::BadRequest, "no logout_token").await;
    };
    let now = st.clock.now();
    let claims = match idp.verify_logout_token(&token, now).await {
        Ok(c) => c,
        Err(FedError::Refused(why)) => {
            tracing::info!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, reason = %why, "back-channel logout token refused");
            return x
                .json_error(Outcome::BadLogoutToken, "invalid logout token")
                .await;
        }
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, error = %e, "back-channel logout: provider keys unavailable");
            return x
                .json_error(Outcome::ProviderUnavailable, "keys unavailable")
                .await;
        }
    };
    let ttl = Duration::from_secs(aalgate_oidc::token::LOGOUT_TOKEN_MAX_AGE_SECS * 2);
    match st
        .store
        .kv_incr(OIDC_JTI_NS, &link_key(&idp.cfg.id, "jti", &claims.jti), ttl)
        .await
    {
        Ok(1) => {}
        Ok(_) => {
            tracing::info!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, "back-channel logout token replayed");
            return x
                .json_error(Outcome::BadLogoutToken, "logout token already used")
                .await;
        }
        Err(e) => return x.store_down(&e, "back-channel logout: store error").await,
    }
    let jti = link_key(&idp.cfg.id, "jti", &claims.jti);
    let users = match users_named(st, &idp.cfg.id, &claims).await {
        Ok(u) => u,
        Err(e) => return unspent(st, x, &jti, &e).await,
    };
    let named = match (&claims.sub, &claims.sid) {
        (Some(_), Some(_)) => "sub and sid",
        (Some(_), None) => "sub",
        _ => "sid",
    };
    if let Err(e) = end_sessions(st, x, &idp, &users, named).await {
        return unspent(st, x, &jti, &e).await;
    }
    if users.is_empty() {
        tracing::info!(request_id = %x.ctx.request_id, idp = %idp.cfg.id, "back-channel logout for nobody with a session here");
    }
    x.ctx.outcome = Outcome::ProviderLogout;
    x.send(Reply::json(200, "{}".into()).header("cache-control", "no-store".into()))
        .await
}

/// A back-channel logout that failed on the store after its token was marked used: the mark
/// goes (best effort), so the provider's retry is not refused as a replay.
async fn unspent(
    st: &State,
    x: &mut Exchange<'_>,
    jti: &str,
    e: &aalgate_session::StoreError,
) -> Result<bool> {
    let _ = st.store.kv_delete(OIDC_JTI_NS, jti).await;
    x.store_down(e, "back-channel logout: store error").await
}

/// Ends every session of `users` (a back-channel logout named them), audited one by one.
async fn end_sessions(
    st: &State,
    x: &mut Exchange<'_>,
    idp: &Idp,
    users: &[String],
    named: &str,
) -> std::result::Result<(), aalgate_session::StoreError> {
    for u in users {
        let n = st.store.revoke_user(u).await?;
        st.metrics
            .session_ends
            .with_label_values(&["logout"])
            .inc_by(n as u64);
        audit_auth(
            st,
            x.ctx,
            "provider_logout",
            Some(u),
            None,
            Some(&format!("idp:{}", idp.cfg.id)),
            Some(&format!(
                "back-channel logout by identity provider {} ({named}): {n} session(s) ended",
                idp.cfg.id
            )),
        );
    }
    Ok(())
}

/// The people whose sessions a logout token ends: by its `sub` and by its `sid`, as each
/// sign-in through the provider recorded them.
async fn users_named(
    st: &State,
    idp: &str,
    claims: &aalgate_oidc::LogoutClaims,
) -> std::result::Result<Vec<String>, aalgate_session::StoreError> {
    let mut users: Vec<String> = Vec::new();
    for (kind, value) in [("sub", claims.sub.as_ref()), ("sid", claims.sid.as_ref())] {
        let Some(v) = value else { continue };
        if let Some(u) = st
            .store
            .kv_get(OIDC_LINK_NS, &link_key(idp, kind, v))
            .await?
        {
            let u = String::from_utf8_lossy(&u).into_owned();
            if !users.contains(&u) {
                users.push(u);
            }
        }
    }
    Ok(users)
}

/// How recent a provider sign-in must be for a passkey enrollment it allows: the key is bound
/// to the person on the strength of that login, so it must be the one just made.
pub(crate) const ENROLL_AFTER_SSO_WINDOW: Duration = Duration::from_secs(600);
/// Enrollments a person may start this way in that window.
const ENROLL_AFTER_SSO_PER_WINDOW: u64 = 5;
/// Counters of those enrollments.
const SSO_ENROLL_NS: &str = "sso_enroll";

/// The provider through which `s` signed in, if that sign-in allows a passkey enrollment
/// without an invite now: `enroll_after_sso`, at aal2 or more, within the window.
pub(crate) fn enrolls_after_sso<'a>(
    st: &'a State,
    s: &aalgate_session::Session,
    now: Timestamp,
) -> Option<&'a std::sync::Arc<Idp>> {
    let idp = s
        .credential
        .as_deref()?
        .strip_prefix("idp:")
        .and_then(|i| st.signin.federation.get(i))?;
    (idp.cfg.enroll_after_sso
        && s.aal >= Aal::Aal2
        && now.since(s.last_auth) <= ENROLL_AFTER_SSO_WINDOW)
        .then_some(idp)
}

/// `GET /.aalgate/oidc/enroll?flow=..`: a person just signed in through a provider at aal2 or
/// more, with `enroll_after_sso`, gets a one-time enrollment for a passkey (AAL2 at most: a
/// hardware key for AAL3 still needs IT's invite), which then continues the flow.
#[allow(
    clippy::too_many_lines,
    reason = "each refusal with its own page, in order"
)]
pub(crate) async fn enroll(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    // The step-up page's form: same origin, with its token.
    let Some(fields) = x.form_post().await else {
        return x.error(Outcome::Csrf).await;
    };
    let Some(flow_id) = fields
        .iter()
        .find(|(k, _)| k == "flow")
        .and_then(|(_, v)| FlowId::parse(v))
    else {
        return x.error(Outcome::BadRequest).await;
    };
    let now = st.clock.now();
    let current = match st.current(x.session, x.ctx).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "session store error at an enrollment after SSO");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    let Some((_, _, s, _)) = current else {
        return x.error(Outcome::Forbidden).await;
    };
    // Only for the step-up it was offered on: this person's, at most AAL2, signing no
    // request, and one they have no key for.
    let flow = match st.store.get_flow(&flow_id.key(), now).await {
        Ok(f) => f.filter(|f| {
            f.need == FlowKind::StepUp
                && f.user.as_deref() == Some(s.user.as_str())
                && f.aal <= Aal::Aal2
                && f.binding.is_none()
        }),
        Err(e) => return x.store_down(&e, "enrollment after SSO: store error").await,
    };
    let Some(flow) = flow else {
        return expired(x).await;
    };
    let Some(idp) = enrolls_after_sso(st, &s, now).cloned() else {
        audit_auth(st, x.ctx, "enroll_failure", Some(&s.user), Some(s.aal), s.credential.as_deref(), Some("enrollment after SSO refused: not a recent provider sign-in at aal2 that allows it"));
        return page(
            x,
            Outcome::Forbidden,
            "Enrollment not available",
            "<p>Adding a passkey here needs a recent sign-in through the hospital's sign-in service at a level that allows it.</p>\
             <p>Ask IT for an enrollment invite.</p>",
        )
        .await;
    };
    let dir = &st.signin.dir;
    let counted = st
        .store
        .kv_incr(SSO_ENROLL_NS, &s.user, ENROLL_AFTER_SSO_WINDOW)
        .await;
    match counted {
        Ok(n) if n > ENROLL_AFTER_SSO_PER_WINDOW => {
            return page(
                x,
                Outcome::Throttled,
                "Try again later",
                "<p>Too many enrollments were started for you just now. Wait 10 minutes, or ask IT.</p>",
            )
            .await;
        }
        Ok(_) => {}
        Err(e) => return x.store_down(&e, "enrollment after SSO: store error").await,
    }
    let user = match dir.user(&s.user).await {
        Ok(Some(u)) if !u.disabled => u,
        Ok(_) => return x.error(Outcome::Disabled).await,
        Err(e) => return x.store_down(&e, "enrollment after SSO: store error").await,
    };
    // A person proofed for AAL3 enrolls only a hardware key, and only with IT's invite:
    // binding is never weaker than the level it grants. Someone with a key for this step-up
    // uses it.
    let has_key = user
        .credentials
        .iter()
        .any(|c| c.usable_for(true) && c.aal >= flow.aal);
    if user.proofed_aal > Aal::Aal2 || has_key {
        return page(
            x,
            Outcome::Forbidden,
            "Enrollment not available",
            "<p>Your role needs a hardware security key, which IT registers with you in person. Ask IT for an enrollment invite.</p>",
        )
        .await;
    }
    let token = match dir
        .invite_after_provider(
            &user.id,
            &user.display_name,
            (ENROLL_AFTER_SSO_WINDOW, now),
            &idp.cfg.id,
            &x.binding().0.hash(),
        )
        .await
    {
        Ok(t) => t,
        Err(e) => return x.store_down(&e, "enrollment after SSO: store error").await,
    };
    audit_auth(
        st,
        x.ctx,
        "user_invited",
        Some(&user.id),
        Some(Aal::Aal2),
        s.credential.as_deref(),
        Some(&format!(
            "passkey enrollment after a sign-in through identity provider {} (enroll_after_sso)",
            idp.cfg.id
        )),
    );
    let to = format!(
        "/.aalgate/enroll?invite={}&flow={}",
        token.expose(),
        flow_id.encode()
    );
    x.ctx.outcome = Outcome::Gateway;
    let reply = Reply::html(
        303,
        pages::page(
            "Add a passkey",
            "<p>Taking you to the enrollment.</p>",
            &x.ctx.request_id,
        ),
    )
    .header("location", to);
    x.send(reply).await
}
