//! Starting a session after a ceremony, and handing it to the app host: the one-time code of
//! `GET /.aalgate/handoff?code=...` (60 s, bound to that host, browser and kept URL) gives the
//! app host its own cookie handle for the one record.

use aalgate_auth::{CredentialKind, DirectoryError, Token, User};
use aalgate_policy::{Aal, HostPort, Timestamp};
use aalgate_session::{Flow, Session as UserSession, SessionId, SessionKey};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use super::query_param;
use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::cookie;
use crate::state::{Reply, State};

/// What a handoff code carries.
#[derive(Serialize, Deserialize)]
pub(crate) struct Handoff {
    record: String,
    host: String,
    url: String,
    expires_at: Timestamp,
    /// The app-host browser binding of the flow: the code works only in that browser.
    browser: Option<String>,
}

/// A new session record for `user` (ending this browser's previous one), the auth-origin
/// cookie, and the way back to the kept URL, as the JSON a ceremony's script reads.
/// `auth_time`: when the session began (now, unless it continues a live one).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_session(
    st: &State,
    x: &mut Exchange<'_>,
    user: &User,
    (aal, auth_time): (Aal, Timestamp),
    amr: Vec<String>,
    credential: &str,
    kind: CredentialKind,
    flow: &Flow,
) -> Result<bool> {
    let now = st.clock.now();
    let started = begin_session(
        st,
        x,
        user,
        (aal, auth_time, now),
        amr,
        credential,
        kind.as_str(),
    )
    .await?;
    let (record, s, set) = match started {
        Ok(started) => started,
        Err(sent) => return Ok(sent),
    };
    let redirect = match redirect_for(st, &record, &s, flow, true).await {
        Ok(r) => r,
        Err(e) => {
            return x.store_down(&e, "sign-in: store error").await;
        }
    };
    x.ctx.outcome = Outcome::SignedIn;
    let body = serde_json::json!({ "redirect": redirect });
    x.send(Reply::json(200, body.to_string()).header("set-cookie", set))
        .await
}

/// Ends this browser's previous session (replaced, or switched to another person) and
/// stores a new record for `user`, linked to a new auth-origin cookie handle. `level`: the
/// AAL reached, when the session began (for its absolute limit) and when the person last
/// authenticated (now, after a ceremony; a provider's login may be older). Gives the record, the session and the `Set-Cookie`; `Err(sent)` once
/// a store failure was answered.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn begin_session(
    st: &State,
    x: &mut Exchange<'_>,
    user: &User,
    level: (Aal, Timestamp, Timestamp),
    amr: Vec<String>,
    credential: &str,
    kind: &str,
) -> Result<std::result::Result<(SessionKey, UserSession, String), bool>> {
    let (aal, auth_time, last_auth) = level;
    let now = st.clock.now();
    // The previous session of this browser ends: replaced (same person) or switched.
    match st.current(x.session, x.ctx).await {
        Ok(Some((handle, record, old, _))) => {
            let why = if old.user != user.id {
                crate::state::SessionEnd::SwitchUser
            } else {
                crate::state::SessionEnd::Replaced
            };
            let ended = st
                .end_session(x.ctx, &handle, true, &record, &old, why, None, now)
                .await;
            if let Err(e) = ended {
                // The previous person's session must end before a new one starts.
                return Ok(Err(x
                    .store_down(&e, "sign-in: could not end the previous session")
                    .await?));
            }
        }
        Ok(None) => {}
        Err(e) => {
            return Ok(Err(x.store_down(&e, "sign-in: store error").await?));
        }
    }
    // One record serves every app: it lives as long as the loosest app allows at this level
    // (each app's own limit decides admission); a reload applies to it from the next
    // request, but never makes the record itself live longer than it was written for.
    let limits = crate::ops::loosest(&x.ctx.policy).get(aal);
    let s = UserSession {
        user: user.id.clone(),
        aal,
        amr,
        credential: Some(credential.to_string()),
        auth_time: auth_time.min(now),
        last_auth: last_auth.min(now),
        last_seen: now,
        // Kept a flow's lifetime past the absolute limit (which the gateway enforces from
        // `auth_time`), so a form sent right at the limit is still known to be this
        // person's.
        expires_at: now.plus(limits.max_session_age + crate::state::FLOW_TTL),
    };
    let record = SessionId::generate().key();
    if let Err(e) = st.store.insert(&record, &s).await {
        return Ok(Err(x.store_down(&e, "sign-in: store error").await?));
    }
    st.metrics
        .session_starts
        .with_label_values(&[&aal.number().to_string(), kind])
        .inc();
    let handle = SessionId::generate();
    let host = x.ctx.host.clone();
    if let Err(e) = st
        .store
        .link(&handle.key(), &record, &host, s.expires_at)
        .await
    {
        return Ok(Err(x.store_down(&e, "sign-in: store error").await?));
    }
    if let Some(sent) = recheck(st, x, user, credential, (&record, &handle.key())).await? {
        return Ok(Err(sent));
    }
    x.ctx.session = Some(std::sync::Arc::new(s.clone()));
    let set = cookie(
        State::cookie_name(x.ctx),
        &handle.to_cookie(),
        x.ctx.tls,
        false,
    );
    Ok(Ok((record, s, set)))
}

/// A session just stored is checked against its person's record: a `disable`, removal,
/// `revoke-credential` or `reset` that ran while the sign-in was finishing either revoked the
/// session (it was in the store first) or this read sees it. Fail closed. `Some`: refused
/// (the answer is sent).
async fn recheck(
    st: &State,
    x: &mut Exchange<'_>,
    user: &User,
    credential: &str,
    (record, handle): (&SessionKey, &SessionKey),
) -> Result<Option<bool>> {
    let current = st.service().dir.user(&user.id).await;
    let still = |u: &User| {
        !u.disabled
            && u.handle == user.handle
            && (credential.starts_with("idp:")
                || u.credentials
                    .iter()
                    .any(|c| c.usable() && c.audit_id() == credential))
    };
    // Only this new session goes: whatever ended access ended the person's others itself.
    let drop_new = async {
        let _ = st.store.unlink(handle).await;
        let _ = st.store.remove(record).await;
    };
    match current {
        Ok(Some(u)) if still(&u) => {}
        Ok(_) => {
            drop_new.await;
            super::audit_auth(
                st,
                x.ctx,
                "signin_failure",
                Some(&user.id),
                None,
                Some(credential),
                Some("disabled, removed or credential revoked while signing in; the new session was ended"),
            );
            return Ok(Some(
                x.refuse(Outcome::Disabled, "Sign-in did not work", super::MSG_FAILED)
                    .await?,
            ));
        }
        Err(e) => {
            drop_new.await;
            return Ok(Some(x.store_down(&e, "sign-in: store error").await?));
        }
    }
    Ok(None)
}

/// This browser's session on this host, if it is within the loosest limits of its level (not
/// idle, not past its absolute limit): its person and when it began. What a passkey added
/// after a provider sign-in may continue, never start.
pub(crate) async fn live_session(
    st: &State,
    x: &Exchange<'_>,
) -> std::result::Result<Option<(String, Timestamp)>, aalgate_session::StoreError> {
    let now = st.clock.now();
    Ok(st
        .current(x.session, x.ctx)
        .await?
        .map(|(_, _, s, _)| s)
        .filter(|s| {
            let l = crate::ops::loosest(&x.ctx.policy).get(s.aal);
            now < s.auth_time.plus(l.max_session_age)
                && l.idle_timeout.is_none_or(|i| now < s.last_seen.plus(i))
        })
        .map(|s| (s.user.clone(), s.auth_time)))
}

/// Where the browser goes after a flow: the kept URL on this host, or the app host's
/// handoff with a one-time code. `touched`: a key was touched in this flow, so a kept form
/// is sent at once; otherwise its owner confirms it first. The flow's own request is
/// admitted once, even if a short `max_age` passes on the way back.
pub(crate) async fn redirect_for(
    st: &State,
    record: &SessionKey,
    s: &UserSession,
    flow: &Flow,
    touched: bool,
) -> std::result::Result<String, DirectoryError> {
    let window = flow.max_age_secs.is_some() || flow.binding.is_some();
    if let (true, None, Some(browser)) = (window, &flow.kept, &flow.browser) {
        let key = crate::state::admission_key(record, &flow.host, browser, &flow.method, &flow.url);
        // A per-request grant carries the request it signed, for the upstream.
        let grant = match &flow.binding {
            Some(b) => serde_json::to_vec(b).unwrap_or_default(),
            None => b"1".to_vec(),
        };
        st.store
            .kv_put(
                crate::state::ADMISSIONS,
                &key,
                &grant,
                Some(crate::state::ADMISSION_TTL),
            )
            .await?;
    }
    // A kept form is sent from the app host once the session is there.
    let url = match flow.kept.as_deref() {
        Some(k) => {
            if let Some(token) = Token::parse(k) {
                let mark = crate::kept::Resumable {
                    record: record.as_str().to_string(),
                    touched,
                    at: st.clock.now(),
                    binding: flow.binding.clone(),
                };
                st.store
                    .kv_put(
                        crate::kept::RESUMABLE,
                        &token.hash(),
                        &serde_json::to_vec(&mark).unwrap_or_default(),
                        Some(crate::kept::KEPT_TTL),
                    )
                    .await?;
            }
            format!("/.aalgate/resume?kept={k}")
        }
        // A popup opened by a script call: it closes itself, and the script's retry (not
        // the popup) is the request the flow admits.
        None if flow.script => "/.aalgate/done".to_string(),
        None => safe_path(&flow.url),
    };
    if HostPort::parse(&flow.host).is_ok_and(|h| st.is_auth_host(&h)) {
        return Ok(url);
    }
    // No browser to bind a code to (after enrollment): go to the app, whose own sign-in
    // flow (bound to this browser) then hands the session over without a ceremony.
    if flow.browser.is_none() {
        return Ok(format!(
            "{}://{}{}",
            st.service().scheme,
            flow.host,
            safe_path(&flow.url)
        ));
    }
    let code = st
        .service()
        .dir
        .put_code(&Handoff {
            record: record.as_str().to_string(),
            host: flow.host.clone(),
            url,
            expires_at: s.expires_at,
            browser: flow.browser.clone(),
        })
        .await?;
    Ok(format!(
        "{}://{}/.aalgate/handoff?code={}",
        st.service().scheme,
        flow.host,
        code.expose()
    ))
}

/// Single sign-on without a ceremony: a redirect (302) to the kept URL or the handoff.
pub(crate) async fn hand_off(
    st: &State,
    x: &mut Exchange<'_>,
    record: &SessionKey,
    s: &UserSession,
    flow: &Flow,
    extra: Vec<(&'static str, String)>,
) -> Result<bool> {
    match redirect_for(st, record, s, flow, false).await {
        Ok(to) => {
            x.ctx.outcome = Outcome::Handoff;
            let mut r = Reply::html(
                302,
                pages::page("Signed in", "<p>Taking you back.</p>", &x.ctx.request_id),
            )
            .header("location", to);
            for (n, v) in extra {
                r = r.header(n, v);
            }
            x.send(r).await
        }
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "handoff: store error");
            x.error(Outcome::StoreUnavailable).await
        }
    }
}

/// `GET /.aalgate/handoff?code=...` on an app host: the code becomes this host's own
/// cookie handle, then the browser goes to the kept URL.
pub(crate) async fn handoff(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let code = query_param(x.session.req_header().uri.query(), "code").and_then(Token::parse);
    let now = st.clock.now();
    let taken: Option<Handoff> = match code {
        None => None,
        Some(c) => match st.service().dir.take_code(&c).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "handoff: store error");
                return x.error(Outcome::StoreUnavailable).await;
            }
        },
    };
    // The code works only on its host, in the browser whose request started the flow
    // (its binding cookie): a code sent to someone else cannot swap their session.
    let Some(h) = taken.filter(|h| {
        h.host == x.ctx.host
            && h.expires_at > now
            && h.browser.as_ref().is_some_and(|b| x.is_bound_browser(b))
    }) else {
        x.ctx.outcome = Outcome::BadHandoff;
        let reply = Reply::html(
            400,
            pages::page(
                "Sign-in link not valid",
                "<p>This sign-in link was used already, expired, or belongs to another site. Go back to the application and open the page again.</p>",
                &x.ctx.request_id,
            ),
        );
        return x.send(reply).await;
    };
    let Some(record) = SessionKey::from_hex(&h.record) else {
        return x.error(Outcome::BadHandoff).await;
    };
    // A previous handle of this browser on this host is replaced.
    if let Ok(Some((old, _, _, _))) = st.current(x.session, x.ctx).await {
        st.sessions.remove(&old);
        let _ = st.store.unlink(&old).await;
    }
    let handle = SessionId::generate();
    if let Err(e) = st
        .store
        .link(&handle.key(), &record, &x.ctx.host, h.expires_at)
        .await
    {
        tracing::warn!(request_id = %x.ctx.request_id, error = %e, "handoff: store error");
        return x.error(Outcome::StoreUnavailable).await;
    }
    x.ctx.outcome = Outcome::Handoff;
    let reply = Reply::html(
        302,
        pages::page("Signed in", "<p>Taking you back.</p>", &x.ctx.request_id),
    )
    .header("location", safe_path(&h.url))
    .header(
        "set-cookie",
        cookie(
            State::cookie_name(x.ctx),
            &handle.to_cookie(),
            x.ctx.tls,
            false,
        ),
    );
    x.send(reply).await
}

/// A redirect target that stays on the host: a path starting with one `/` (never `//` or
/// `/\`, which browsers read as another host).
pub(crate) fn safe_path(url: &str) -> String {
    let ok = url.starts_with('/')
        && !url.starts_with("//")
        && !url.starts_with("/\\")
        && !url.bytes().any(|b| b.is_ascii_control() || b == b'\\');
    if ok {
        url.to_string()
    } else {
        "/".to_string()
    }
}

/// Whether an existing session satisfies a flow without a new ceremony.
pub(crate) fn satisfies(s: &UserSession, flow: &Flow, now: Timestamp) -> bool {
    // The same edge as `decide`: at exactly `max_age` the authentication is too old. With
    // `<=` here, a request at exactly the limit was sent to step up and then handed off
    // silently, skipping the ceremony it was sent for (seen in CI on a `max_age: 1s` route).
    let fresh = flow
        .max_age_secs
        .is_none_or(|m| now.since(s.last_auth) < std::time::Duration::from_secs(m));
    s.aal >= flow.aal && fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_stay_on_the_host() {
        assert_eq!(safe_path("/invoices?x=1"), "/invoices?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil",
            "https://evil",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert_eq!(safe_path(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn sessions_satisfy_flows_by_level_and_freshness() {
        let now = Timestamp(10_000);
        let s = UserSession {
            user: "u".into(),
            aal: Aal::Aal2,
            amr: vec![],
            credential: None,
            auth_time: Timestamp(9_000),
            last_auth: Timestamp(9_000),
            last_seen: now,
            expires_at: Timestamp(50_000),
        };
        let mut f = Flow {
            host: "h".into(),
            method: "GET".into(),
            url: "/".into(),
            need: aalgate_session::FlowKind::Login,
            aal: Aal::Aal2,
            max_age_secs: None,
            app: "a".into(),
            created: now,
            user: None,
            browser: None,
            kept: None,
            binding: None,
            script: false,
        };
        assert!(satisfies(&s, &f, now));
        f.max_age_secs = Some(999);
        assert!(!satisfies(&s, &f, now));
        // Exactly at the limit is too old, as `decide` has it.
        f.max_age_secs = Some(1000);
        assert!(!satisfies(&s, &f, now));
        f.max_age_secs = Some(1001);
        assert!(satisfies(&s, &f, now));
        f.aal = Aal::Aal3;
        assert!(!satisfies(&s, &f, now));
    }
}
