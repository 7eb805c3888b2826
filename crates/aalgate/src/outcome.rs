//! What the gateway did with a request, as one type: the label it has in
//! `aalgate_requests_total{outcome}` and in the audit log's `decision`, the JSON `error` of a
//! refusal ([`Outcome::json_code`]), and that refusal's status ([`Outcome::status`]); the page
//! is the status's (`pages::error_text`) unless the caller words its own. The labels are the
//! ones operators' dashboards and alerts already use, so none may change: the Chromium
//! scenario writes every series and audit event kind, to compare two runs.

/// What the gateway did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet decided (a request pingora failed before any phase).
    Unset,
    /// Forwarded: a public route, or a session that satisfies the rule (or break-glass where allowed).
    Allow,
    /// Forwarded once: the request's own ceremony admitted it.
    AllowAdmitted,
    /// One of the gateway's own endpoints answered.
    Gateway,
    /// Sent to sign in (a flow started).
    Login,
    /// Sent to step up (a flow started).
    StepUp,
    /// Sent to sign in again (a flow started).
    Reauth,
    /// The switch-user page started a flow.
    Switch,
    /// A ceremony's options were sent.
    Challenge,
    /// The sign-in page.
    SigninPage,
    /// The enrollment page.
    EnrollPage,
    /// The break-glass page.
    BreakglassPage,
    /// The sign-out confirmation page.
    LogoutPage,
    /// The page shown after a ceremony with nowhere to go.
    Done,
    /// A handoff code was redeemed on an app host.
    Handoff,
    /// A ceremony finished: signed in (or stepped up).
    SignedIn,
    /// Signed out.
    Logout,
    /// A break-glass code opened an emergency session.
    Breakglass,
    /// A kept form was sent.
    Resumed,
    /// A kept form's confirmation page.
    ResumeConfirm,
    /// A kept form was not sent: the sign-in does not allow it.
    ResumeDenied,
    /// A kept form was discarded: another person signed in.
    ResumeDiscarded,
    /// Nothing to send: the kept form was already sent or expired.
    ResumeGone,
    /// The page explaining why a form was not kept.
    ResumeNotKept,
    /// A kept form's page, opened without a session here.
    ResumeNoSession,
    /// A kept form could not reach the app.
    ResumeUpstreamError,
    /// Too many new flows from this client.
    FlowRateLimited,
    /// The client went away while the gateway answered.
    ClientGone,
    /// An HTTP/2 request whose body the gateway cannot read whole: sent back to be retried
    /// over HTTP/1.1 (`RST_STREAM` `HTTP_1_1_REQUIRED`).
    Http1Required,
    /// A method name in lower case.
    BadMethod,
    /// An upgrade other than WebSocket.
    BadUpgrade,
    /// Ambiguous message framing (a smuggling attempt).
    BadFraming,
    /// No Host, several, or a malformed one.
    BadHost,
    /// An ambiguous request target (414 when too long).
    BadPath,
    /// An absolute-form target naming another host.
    ForeignAuthority,
    /// A handoff code that is unknown, used or for another browser.
    BadHandoff,
    /// A malformed request to a gateway endpoint.
    BadRequest,
    /// A ceremony finish without its (taken once) state.
    CeremonyExpired,
    /// An enrollment that could not be verified.
    EnrollFailed,
    /// An invite that needs a hardware key, answered without one.
    NeedsHardwareKey,
    /// An authenticator kind this gateway does not accept.
    NotAvailable,
    /// A sign-in that could not be verified.
    SigninFailed,
    /// Too much header data.
    HeadersTooLarge,
    /// The policy never allows this.
    Denied,
    /// A signed-in person the app's or route's `allow` does not name.
    Forbidden,
    /// A break-glass session on a route that does not allow break-glass.
    BreakglassNotAllowed,
    /// A gateway POST without same-origin evidence and its token.
    Csrf,
    /// A cross-site request to a gateway page.
    CrossSite,
    /// A disabled account.
    Disabled,
    /// A ceremony whose level is below what the flow needs.
    NotEnough,
    /// A signed request that does not match the ceremony's digest.
    PerRequestForeign,
    /// No gateway page here.
    NotFound,
    /// A method the gateway page does not take.
    MethodNotAllowed,
    /// The client did not send its request in time.
    ClientTimeout,
    /// No key of this person reaches the step-up's level.
    NoSuitableKey,
    /// An unknown or expired flow.
    FlowExpired,
    /// An unknown, used or expired invite.
    InviteExpired,
    /// A body over the limit kept or signed.
    BodyTooLarge,
    /// A body too large to be signed per request.
    TooLargeToSign,
    /// A URL too long to keep in a flow.
    UrlTooLong,
    /// No app serves this host.
    UnknownHost,
    /// The request arrived on no configured listener.
    UnknownListener,
    /// A Host port that is not the listener's.
    ForeignPort,
    /// An app not served on this listener.
    ForeignListener,
    /// Too many failures from this client.
    Throttled,
    /// pingora answered with a status of its own.
    Error,
    /// An internal error on a gateway endpoint.
    Internal,
    /// An internal error while proxying.
    InternalError,
    /// The upstream is not configured or unreachable.
    Upstream,
    /// The upstream failed.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The session store could not be reached: fail closed.
    StoreUnavailable,
    /// An event that must be recorded first could not be.
    AuditUnavailable,
    /// Break-glass codes could not be checked.
    BreakglassUnavailable,
    /// Too many break-glass checks at once.
    Busy,
    /// The anonymous quota is used up.
    SignInBusy,
    /// Sent to an identity provider to log in.
    ProviderRedirect,
    /// The identity provider's answer was refused (an error, a token that does not verify, a
    /// login that is not fresh).
    ProviderRefused,
    /// The identity provider could not be reached.
    ProviderUnavailable,
    /// The provider vouched for a person the directory does not know.
    UnknownPerson,
    /// A back-channel logout ended a person's sessions.
    ProviderLogout,
    /// A back-channel logout token that does not verify, or was used before.
    BadLogoutToken,
    /// A provisioning (SCIM) request was answered, its status whatever SCIM says.
    Scim,
    /// A provisioning request without the provisioning token.
    ScimUnauthorized,
}

impl Outcome {
    /// A flow started for `kind` (a switch starts no flow here: it is a login).
    pub fn flow(kind: aalgate_session::FlowKind) -> Outcome {
        match kind {
            aalgate_session::FlowKind::StepUp => Outcome::StepUp,
            aalgate_session::FlowKind::Reauth => Outcome::Reauth,
            aalgate_session::FlowKind::Login | aalgate_session::FlowKind::Switch => Outcome::Login,
        }
    }

    /// The metric label, audit `decision` and JSON `error`.
    #[allow(clippy::too_many_lines, reason = "one arm per outcome")]
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Unset => "none",
            Outcome::Allow => "allow",
            Outcome::AllowAdmitted => "allow_admitted",
            Outcome::Gateway => "gateway",
            Outcome::Login => "login",
            Outcome::StepUp => "step_up",
            Outcome::Reauth => "reauth",
            Outcome::Switch => "switch",
            Outcome::Challenge => "challenge",
            Outcome::SigninPage => "signin_page",
            Outcome::EnrollPage => "enroll_page",
            Outcome::BreakglassPage => "breakglass_page",
            Outcome::LogoutPage => "logout_page",
            Outcome::Done => "done",
            Outcome::Handoff => "handoff",
            Outcome::SignedIn => "signed_in",
            Outcome::Logout => "logout",
            Outcome::Breakglass => "breakglass",
            Outcome::Resumed => "resumed",
            Outcome::ResumeConfirm => "resume_confirm",
            Outcome::ResumeDenied => "resume_denied",
            Outcome::ResumeDiscarded => "resume_discarded",
            Outcome::ResumeGone => "resume_gone",
            Outcome::ResumeNotKept => "resume_not_kept",
            Outcome::ResumeNoSession => "resume_no_session",
            Outcome::ResumeUpstreamError => "resume_upstream_error",
            Outcome::FlowRateLimited => "flow_rate_limited",
            Outcome::ClientGone => "client_gone",
            Outcome::Http1Required => "http1_required",
            Outcome::BadMethod => "bad_method",
            Outcome::BadUpgrade => "bad_upgrade",
            Outcome::BadFraming => "bad_framing",
            Outcome::BadHost => "bad_host",
            Outcome::BadPath => "bad_path",
            Outcome::ForeignAuthority => "foreign_authority",
            Outcome::BadHandoff => "bad_handoff",
            Outcome::BadRequest => "bad_request",
            Outcome::CeremonyExpired => "ceremony_expired",
            Outcome::EnrollFailed => "enroll_failed",
            Outcome::NeedsHardwareKey => "needs_hardware_key",
            Outcome::NotAvailable => "not_available",
            Outcome::SigninFailed => "signin_failed",
            Outcome::HeadersTooLarge => "headers_too_large",
            Outcome::Denied => "denied",
            Outcome::Forbidden => "forbidden",
            Outcome::BreakglassNotAllowed => "breakglass_not_allowed",
            Outcome::Csrf => "csrf",
            Outcome::CrossSite => "cross_site",
            Outcome::Disabled => "disabled",
            Outcome::NotEnough => "not_enough",
            Outcome::PerRequestForeign => "per_request_foreign",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::ClientTimeout => "client_timeout",
            Outcome::NoSuitableKey => "no_suitable_key",
            Outcome::FlowExpired => "flow_expired",
            Outcome::InviteExpired => "invite_expired",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::TooLargeToSign => "too_large_to_sign",
            Outcome::UrlTooLong => "url_too_long",
            Outcome::UnknownHost => "unknown_host",
            Outcome::UnknownListener => "unknown_listener",
            Outcome::ForeignPort => "foreign_port",
            Outcome::ForeignListener => "foreign_listener",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
            Outcome::Internal => "internal",
            Outcome::InternalError => "internal_error",
            Outcome::Upstream => "upstream",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::AuditUnavailable => "audit_unavailable",
            Outcome::BreakglassUnavailable => "breakglass_unavailable",
            Outcome::Busy => "busy",
            Outcome::SignInBusy => "sign_in_busy",
            Outcome::ProviderRedirect => "provider_redirect",
            Outcome::ProviderRefused => "provider_refused",
            Outcome::ProviderUnavailable => "provider_unavailable",
            Outcome::UnknownPerson => "unknown_person",
            Outcome::ProviderLogout => "provider_logout",
            Outcome::BadLogoutToken => "bad_logout_token",
            Outcome::Scim => "scim",
            Outcome::ScimUnauthorized => "scim_unauthorized",
        }
    }

    /// The `error` of a refusal's JSON body: the label, except where scripts already know
    /// another name.
    pub fn json_code(self) -> &'static str {
        match self {
            Outcome::FlowRateLimited => "rate_limited",
            o => o.label(),
        }
    }

    /// The status of a refusal the gateway answers itself (`None`: not a refusal, or one whose
    /// status comes from elsewhere).
    #[allow(clippy::too_many_lines, reason = "one arm per outcome, listed in full")]
    pub fn status(self) -> Option<u16> {
        match self {
            Outcome::BadMethod
            | Outcome::BadUpgrade
            | Outcome::BadFraming
            | Outcome::BadHost
            | Outcome::BadPath
            | Outcome::ForeignAuthority
            | Outcome::BadHandoff
            | Outcome::BadRequest
            | Outcome::CeremonyExpired
            | Outcome::EnrollFailed
            | Outcome::NeedsHardwareKey
            | Outcome::NotAvailable
            | Outcome::SigninFailed
            | Outcome::BadLogoutToken => Some(400),
            Outcome::Denied
            | Outcome::Forbidden
            | Outcome::BreakglassNotAllowed
            | Outcome::Csrf
            | Outcome::CrossSite
            | Outcome::Disabled
            | Outcome::NotEnough
            | Outcome::PerRequestForeign
            | Outcome::ProviderRefused
            | Outcome::UnknownPerson => Some(403),
            Outcome::ScimUnauthorized => Some(401),
            Outcome::NotFound => Some(404),
            Outcome::MethodNotAllowed => Some(405),
            Outcome::ClientTimeout => Some(408),
            Outcome::NoSuitableKey => Some(409),
            // A form sent already, waited too long or dropped for another person: gone.
            Outcome::FlowExpired
            | Outcome::InviteExpired
            | Outcome::ResumeGone
            | Outcome::ResumeDiscarded => Some(410),
            Outcome::BodyTooLarge | Outcome::TooLargeToSign => Some(413),
            Outcome::UrlTooLong => Some(414),
            Outcome::UnknownHost
            | Outcome::UnknownListener
            | Outcome::ForeignPort
            | Outcome::ForeignListener => Some(421),
            Outcome::FlowRateLimited | Outcome::Throttled => Some(429),
            Outcome::HeadersTooLarge => Some(431),
            Outcome::Internal | Outcome::InternalError => Some(500),
            Outcome::Upstream | Outcome::UpstreamError | Outcome::ProviderUnavailable => Some(502),
            Outcome::StoreUnavailable
            | Outcome::AuditUnavailable
            | Outcome::BreakglassUnavailable
            | Outcome::Busy
            | Outcome::SignInBusy => Some(503),
            Outcome::UpstreamTimeout => Some(504),
            Outcome::Unset
            | Outcome::Allow
            | Outcome::AllowAdmitted
            | Outcome::Gateway
            | Outcome::Login
            | Outcome::StepUp
            | Outcome::Reauth
            | Outcome::Switch
            | Outcome::Challenge
            | Outcome::SigninPage
            | Outcome::EnrollPage
            | Outcome::BreakglassPage
            | Outcome::LogoutPage
            | Outcome::Done
            | Outcome::Handoff
            | Outcome::SignedIn
            | Outcome::Logout
            | Outcome::Breakglass
            | Outcome::Resumed
            | Outcome::ResumeConfirm
            | Outcome::ResumeDenied
            | Outcome::ResumeNotKept
            | Outcome::ResumeNoSession
            | Outcome::ResumeUpstreamError
            | Outcome::ClientGone
            | Outcome::Http1Required
            | Outcome::ProviderRedirect
            | Outcome::ProviderLogout
            | Outcome::Scim
            | Outcome::Error => None,
        }
    }

    /// Every outcome, for the tests.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Unset,
        Outcome::Allow,
        Outcome::AllowAdmitted,
        Outcome::Gateway,
        Outcome::Login,
        Outcome::StepUp,
        Outcome::Reauth,
        Outcome::Switch,
        Outcome::Challenge,
        Outcome::SigninPage,
        Outcome::EnrollPage,
        Outcome::BreakglassPage,
        Outcome::LogoutPage,
        Outcome::Done,
        Outcome::Handoff,
        Outcome::SignedIn,
        Outcome::Logout,
        Outcome::Breakglass,
        Outcome::Resumed,
        Outcome::ResumeConfirm,
        Outcome::ResumeDenied,
        Outcome::ResumeDiscarded,
        Outcome::ResumeGone,
        Outcome::ResumeNotKept,
        Outcome::ResumeNoSession,
        Outcome::ResumeUpstreamError,
        Outcome::FlowRateLimited,
        Outcome::ClientGone,
        Outcome::Http1Required,
        Outcome::BadMethod,
        Outcome::BadUpgrade,
        Outcome::BadFraming,
        Outcome::BadHost,
        Outcome::BadPath,
        Outcome::ForeignAuthority,
        Outcome::BadHandoff,
        Outcome::BadRequest,
        Outcome::CeremonyExpired,
        Outcome::EnrollFailed,
        Outcome::NeedsHardwareKey,
        Outcome::NotAvailable,
        Outcome::SigninFailed,
        Outcome::HeadersTooLarge,
        Outcome::Denied,
        Outcome::Forbidden,
        Outcome::BreakglassNotAllowed,
        Outcome::Csrf,
        Outcome::CrossSite,
        Outcome::Disabled,
        Outcome::NotEnough,
        Outcome::PerRequestForeign,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::ClientTimeout,
        Outcome::NoSuitableKey,
        Outcome::FlowExpired,
        Outcome::InviteExpired,
        Outcome::BodyTooLarge,
        Outcome::TooLargeToSign,
        Outcome::UrlTooLong,
        Outcome::UnknownHost,
        Outcome::UnknownListener,
        Outcome::ForeignPort,
        Outcome::ForeignListener,
        Outcome::Throttled,
        Outcome::Error,
        Outcome::Internal,
        Outcome::InternalError,
        Outcome::Upstream,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::StoreUnavailable,
        Outcome::AuditUnavailable,
        Outcome::BreakglassUnavailable,
        Outcome::Busy,
        Outcome::SignInBusy,
        Outcome::ProviderRedirect,
        Outcome::ProviderRefused,
        Outcome::ProviderUnavailable,
        Outcome::UnknownPerson,
        Outcome::ProviderLogout,
        Outcome::BadLogoutToken,
        Outcome::Scim,
        Outcome::ScimUnauthorized,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels are unique, lower snake case, and every refusal status is an error status.
    #[test]
    fn one_label_each() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            let l = o.label();
            assert!(seen.insert(l), "{l} twice");
            assert!(
                l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && l.starts_with(|c: char| c.is_ascii_lowercase()),
                "{l}"
            );
            assert!(o.status().is_none_or(|s| (400..600).contains(&s)), "{l}");
        }
    }
}
