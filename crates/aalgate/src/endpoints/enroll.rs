//! `GET /.aalgate/enroll?invite=...`: the enrollment page, and what a finished registration
//! ceremony stores (the user, the credential, the invite spent).

use aalgate_auth::{
    directory::Pending, CeremonyError, CredentialKind, DirectoryError, RegState, Token, User,
};
use aalgate_policy::{Aal, HostPort, Timestamp};
use aalgate_session::{Flow, FlowKind};
use pingora::prelude::*;

use super::audit_auth;
use super::handoff::start_session;
use super::{query_param, MSG_ENROLL_FAILED, MSG_KEY_NOT_APPROVED};
use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self, escape};
use crate::state::{bind_cookie, csrf_of};
use crate::state::{Reply, State};

/// `GET /.aalgate/enroll?invite=...`: the enrollment page of an invite.
pub(crate) async fn enroll_page(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let param = query_param(x.session.req_header().uri.query(), "invite");
    let token = param.and_then(Token::parse);
    let invite = match token {
        None => None,
        Some(t) => match st.service().dir.peek_invite(&t, st.clock.now()).await {
            Ok(i) => i.map(|i| (t, i)),
            Err(e) => {
                tracing::warn!(request_id = %x.ctx.request_id, error = %e, "store error on the enrollment page");
                return x.error(Outcome::StoreUnavailable).await;
            }
        },
    };
    let Some((token, invite)) = invite else {
        // A link without an invite is malformed; one whose invite is not valid is gone.
        x.ctx.outcome = if param.is_none() {
            Outcome::BadRequest
        } else {
            Outcome::InviteExpired
        };
        let reply = Reply::html(
            x.ctx.outcome.status().unwrap_or(400),
            x.page_forward(
                "Invitation not valid",
                "<p>This enrollment link is not valid: it was used already, or it expired.</p>\
                 <p>Ask IT for a new one. IT will confirm who you are before sending it.</p>",
                false,
            ),
        );
        return x.send(reply).await;
    };
    // An invite for someone enrolled already adds a key: greet them by the name IT gave
    // them (the invite's is their user id unless `--display-name` was given again).
    let existing = match st.service().dir.user(&invite.user).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "store error on the enrollment page");
            return x.error(Outcome::StoreUnavailable).await;
        }
    };
    let name = existing
        .as_ref()
        .map_or(invite.display_name.as_str(), |u| u.display_name.as_str());
    let (bind, set_bind) = x.binding();
    let hw = st.service().rp.hardware_keys_configured();
    let (title, body) = enroll_text(invite.aal, hw, existing.is_some(), name);
    // An enrollment after a provider sign-in goes on to where the person was going.
    let flow = query_param(x.session.req_header().uri.query(), "flow")
        .and_then(aalgate_session::FlowId::parse)
        .map(|f| format!(" data-flow=\"{}\"", escape(&f.encode())))
        .unwrap_or_default();
    let attrs = format!(
        " data-invite=\"{}\" data-csrf=\"{}\"{flow}",
        escape(token.expose()),
        escape(&csrf_of(bind.expose()))
    );
    let mut reply = Reply::html(
        200,
        pages::page_with(title, &body, &x.ctx.request_id, &attrs),
    );
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.ctx.outcome = Outcome::EnrollPage;
    x.send(reply).await
}

/// The enrollment page's title and text: who is greeted, what each offered button is for.
fn enroll_text(aal: Aal, hw: bool, existing: bool, name: &str) -> (&'static str, String) {
    let mut buttons = String::new();
    if aal <= Aal::Aal2 {
        buttons.push_str("<button type=\"button\" data-action=\"enroll-passkey\">Create a passkey on this device</button>");
    }
    if hw {
        buttons.push_str("<button type=\"button\" class=\"secondary\" data-action=\"enroll-key\">Register a hardware security key</button>");
    }
    // What each button is for, and which to press: only the kinds offered here.
    let explain = match (aal == Aal::Aal3, hw) {
        (true, true) => "<p>Your role needs a <strong>hardware security key</strong>. Insert or hold it near the device, press the button, then touch the key and enter its PIN when asked.</p>",
        (true, false) => "<p>Your role needs a hardware security key, but none is approved on this gateway yet. Contact IT.</p>",
        (false, true) => "<p>A <strong>passkey</strong> lets you sign in with your fingerprint, face or device PIN: choose it, unless IT gave you a <strong>hardware security key</strong> (a small USB or NFC key) for this role; then register that instead.</p>",
        (false, false) => "<p>A <strong>passkey</strong> lets you sign in on this device with your fingerprint, face or device PIN.</p>",
    };
    // "Nora N." ends its own sentence.
    let stop = if name.ends_with('.') { "" } else { "." };
    let (title, greeting) = if existing {
        (
            "Add a sign-in key",
            format!(
                "Welcome back, {}{stop} Register your new key here.",
                escape(name)
            ),
        )
    } else {
        (
            "Set up sign-in",
            format!(
                "Welcome, {}{stop} Set up how you will sign in.",
                escape(name)
            ),
        )
    };
    let body = format!(
        "<p>{greeting}</p>{explain}\
         <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>{buttons}\
         <p>After this, you will be signed in. Next time, one touch is enough.</p>"
    );
    (title, body)
}

#[allow(clippy::too_many_lines, reason = "enrollment's checks in order")]
pub(crate) async fn finish_enroll(
    st: &State,
    x: &mut Exchange<'_>,
    pending: Pending,
    response: &[u8],
) -> Result<bool> {
    let svc = st.service();
    let now = st.clock.now();
    let state: RegState = match serde_json::from_value(pending.state) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable enrollment state");
            return x.json_error(Outcome::Internal, MSG_ENROLL_FAILED).await;
        }
    };
    let cred = match svc.rp.finish_registration(response, &state, now) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(request_id = %x.ctx.request_id, error = %e, "enrollment refused");
            audit_auth(
                st,
                x.ctx,
                "enroll_failure",
                pending.user.as_deref(),
                None,
                None,
                Some(&e.to_string()),
            );
            let msg = if matches!(e, CeremonyError::Untrusted(_)) {
                MSG_KEY_NOT_APPROVED
            } else {
                MSG_ENROLL_FAILED
            };
            return x.json_error(Outcome::EnrollFailed, msg).await;
        }
    };
    // An enrollment after a provider sign-in continues this browser's live session of the
    // person (checked again: it may have ended since the start).
    let live = match super::handoff::live_session(st, x).await {
        Ok(l) => l,
        Err(e) => return x.store_down(&e, "enrollment: store error").await,
    };
    let outcome = async {
        if svc.dir.credential_owner(&cred.id).await?.is_some() {
            return Ok(Err("credential already registered"));
        }
        let Some(invite) = svc
            .dir
            .take_invite(pending.invite.as_deref().unwrap_or(""), now)
            .await?
        else {
            return Ok(Err("invite used or expired meanwhile"));
        };
        let proofed = match svc.dir.user(&invite.user).await? {
            Some(u) => u.proofed_aal.max(invite.aal),
            None => invite.aal,
        };
        if proofed == Aal::Aal3 && cred.aal < Aal::Aal3 {
            return Ok(Err("an AAL3 person needs an attested hardware key"));
        }
        let existing = svc.dir.user(&invite.user).await?;
        if pending.account_existed && existing.is_none() {
            return Ok(Err("the account was removed during enrollment"));
        }
        let user = existing.clone().unwrap_or_else(|| {
            let mut u = new_user(&invite.user, &invite.display_name, invite.aal, now);
            // The handle the authenticator stored with the credential.
            u.handle = pending.handle.unwrap_or(u.handle);
            u
        });
        if Some(user.handle) != pending.handle {
            return Ok(Err("user handle changed during enrollment"));
        }
        if user.disabled {
            return Ok(Err("user disabled"));
        }
        let began = match (&invite.after_provider, &live) {
            (None, _) => now,
            (Some(_), Some((u, began))) if *u == user.id => *began,
            (Some(_), _) => {
                return Ok(Err(
                    "enrollment after SSO without the person's live session",
                ))
            }
        };
        // Never above the level IT proofed the person for.
        let add = |u: &mut User| {
            u.proofed_aal = u.proofed_aal.max(invite.aal);
            let mut c = cred.clone();
            c.aal = c.aal.min(u.proofed_aal);
            c.after_provider = invite.after_provider.clone();
            u.credentials.push(c);
            u.last_login = Some(now);
        };
        // Onto the current record by compare-and-swap (a `disable` or removal meanwhile wins),
        // or a new record only if there still is none.
        let user = if existing.is_some() {
            let written = svc
                .dir
                .update_user(&invite.user, |u| {
                    if u.disabled || Some(u.handle) != pending.handle {
                        return Ok(false);
                    }
                    add(u);
                    Ok(true)
                })
                .await?;
            match written {
                Some((u, true)) => u,
                _ => return Ok(Err("user disabled or removed during enrollment")),
            }
        } else {
            let mut u = user;
            add(&mut u);
            if !svc.dir.insert_new_user(&u).await? {
                return Ok(Err("the account was created meanwhile"));
            }
            u
        };
        Ok::<_, DirectoryError>(Ok((user, began)))
    }
    .await;
    let (user, began) = match outcome {
        Ok(Ok(u)) => u,
        Ok(Err(why)) => {
            audit_auth(
                st,
                x.ctx,
                "enroll_failure",
                pending.user.as_deref(),
                None,
                None,
                Some(why),
            );
            return x.json_error(Outcome::EnrollFailed, MSG_ENROLL_FAILED).await;
        }
        Err(e) => {
            return x.store_down(&e, "enrollment: store error").await;
        }
    };
    // The credential as stored: its level capped at what IT proofed the person for.
    let aal = user
        .credential(&cred.id)
        .map_or(Aal::Aal2, |c| c.aal)
        .min(cred.aal);
    audit_auth(
        st,
        x.ctx,
        "enroll",
        Some(&user.id),
        Some(aal),
        Some(&cred.audit_id()),
        Some(cred.kind.as_str()),
    );
    // Land on the first app, signed in at the level the credential reaches.
    let target = x
        .ctx
        .policy
        .apps()
        .first()
        .map(|a| a.host.to_string())
        .unwrap_or_else(|| st.public_host_str());
    // An enrollment that continues a flow of this person's (after a provider sign-in, on a
    // step-up page) goes where that flow was going; otherwise to the first app.
    let continued = match pending.flow.as_deref() {
        Some(k) => match st.store.take_flow(k, now).await {
            // Never a per-request flow: an enrollment signs no request.
            Ok(f) => {
                f.filter(|f| f.user.as_deref() == Some(user.id.as_str()) && f.binding.is_none())
            }
            Err(e) => return x.store_down(&e, "enrollment: store error").await,
        },
        None => None,
    };
    let flow = continued.unwrap_or_else(|| Flow {
        host: landing_host(&target, &st.public_host),
        method: "GET".into(),
        url: "/".into(),
        need: FlowKind::Login,
        aal,
        max_age_secs: None,
        app: String::new(),
        created: now,
        user: None,
        browser: None,
        kept: None,
        binding: None,
        script: false,
    });
    let amr = match cred.kind {
        CredentialKind::SecurityKey => vec!["hwk".into(), "user".into(), "mfa".into()],
        CredentialKind::Passkey => vec!["swk".into(), "user".into(), "mfa".into()],
    };
    start_session(
        st,
        x,
        &user,
        (aal, began),
        amr,
        &cred.audit_id(),
        cred.kind,
        &flow,
    )
    .await
}

pub(crate) fn new_user(id: &str, display: &str, aal: Aal, now: Timestamp) -> User {
    User {
        id: id.to_string(),
        display_name: if display.is_empty() {
            id.to_string()
        } else {
            display.to_string()
        },
        handle: uuid::Uuid::new_v4(),
        disabled: false,
        proofed_aal: aal,
        created: now,
        last_login: None,
        disabled_by: None,
        credentials: Vec::new(),
    }
}

/// The landing host after enrollment: the app's host on the auth origin's port when the app
/// host has none (the localhost demo serves both on one listener).
pub(crate) fn landing_host(app_host: &str, public: &HostPort) -> String {
    match HostPort::parse(app_host) {
        Ok(h) if h.port.is_none() && h.host == public.host => public.to_string(),
        Ok(h) if h.port.is_none() => match public.port {
            Some(p) => format!("{}:{p}", h.host),
            None => h.host.clone(),
        },
        _ => app_host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_host_keeps_the_demo_port() {
        let public = HostPort {
            host: "localhost".into(),
            port: Some(8080),
        };
        assert_eq!(landing_host("localhost", &public), "localhost:8080");
        assert_eq!(landing_host("ehr.localhost", &public), "ehr.localhost:8080");
        assert_eq!(
            landing_host("ehr.example:9443", &public),
            "ehr.example:9443"
        );
    }
}
