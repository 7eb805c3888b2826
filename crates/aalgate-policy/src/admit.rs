//! Admission: the one decision of whether a request reaches its upstream, and if not, what the
//! browser must do first. A pure function of the rule, the facts the edge gathered and the time:
//! the proxy, `/.aalgate/resume` (a kept form sent after sign-in) and `aalgate explain` all call
//! [`admit`], so they cannot disagree, and every edge is a table row in the tests below.

use crate::aal::{Aal, Requirement};
use crate::allow::{allowed, Person, Reach};
use crate::decide::{decide, Access, Decision, ExpiryReason, SessionFacts, StepUp};
use crate::time::Timestamp;

/// What kind of request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A page load, form post or script call (`fetch`, XHR). Admission treats them alike;
    /// only the edge's answer to a refusal differs (the sign-in page, or a 401 JSON naming what
    /// is needed), so the edge looks at which it is only then.
    Http,
    /// A WebSocket upgrade: checked once, then held to the session's end.
    WebSocket,
    /// A form kept across a sign-in, sent by `/.aalgate/resume`.
    Replay,
}

/// The session a request carries, as the edge found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// No session (no cookie, an unknown or ended one).
    None,
    /// A signed-in person.
    Normal(Subject),
    /// A break-glass (emergency) session.
    Emergency(Subject),
}

/// A session's times and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Level and times.
    pub facts: SessionFacts,
    /// When the session is over, whatever the route's limits (the record outlives it by a
    /// kept form's lifetime, so a form sent right at the end is still known to be the person's).
    pub ends_at: Timestamp,
}

/// A ceremony this request's own flow just completed (its one-time admission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceremony {
    /// The ceremony signed this very request (method, URL and body): what a `per_request`
    /// route needs.
    pub signed: bool,
}

/// Everything [`admit`] needs to know about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionFacts<'a> {
    /// The session it carries.
    pub session: SessionKind,
    /// What kind of request it is.
    pub request: RequestKind,
    /// The ceremony its own flow just completed, if any.
    pub ceremony: Option<Ceremony>,
    /// Who the person of a normal session is (their groups, and what they could reach). A
    /// normal session without it is admitted only where no `allow` applies.
    pub person: Option<Person<'a>>,
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Forward it (a public route, or a session that satisfies the rule).
    Allow,
    /// Forward it once: its own flow's ceremony just completed (a step-up whose `max_age`
    /// passed on the way back, or a `per_request` signature over this request).
    AllowAdmitted,
    /// Forward it: a break-glass session on a route that allows break-glass.
    AllowEmergency,
    /// No session: sign in at `aal`.
    Login { aal: Aal },
    /// The session is too weak, or its last ceremony too old, for this route.
    StepUp { aal: Aal, fresh: Option<StepUp> },
    /// The session hit a limit; it is over, and the person signs in again at `aal`.
    Reauth { aal: Aal, reason: ExpiryReason },
    /// The session's times lie further ahead than the clock may have moved (the clock was
    /// stepped back, or the record is corrupt): it cannot be timed, so it is over as if past
    /// its absolute limit.
    FromTheFuture { aal: Aal },
    /// The policy never allows this route.
    Deny,
    /// A break-glass session on a route that does not allow break-glass (or a kept form,
    /// which is never sent under break-glass).
    BreakglassNotAllowed,
    /// A signed-in person whom the route's or app's `allow` does not name: refused outright,
    /// with no sign-in, step-up or re-auth first (no ceremony could change it). `session_over`:
    /// the session is past a limit, so whoever is at the keyboard may be someone else (the
    /// page must not name the person).
    Forbidden { session_over: bool },
    /// A step-up to `aal` that none of the person's usable credentials reaches: they are told
    /// so at once instead of being asked for a tap that cannot succeed.
    NoSuitableKey { aal: Aal },
}

impl Admission {
    /// Whether the request goes upstream.
    pub fn allows(self) -> bool {
        matches!(
            self,
            Admission::Allow | Admission::AllowAdmitted | Admission::AllowEmergency
        )
    }

    /// Why the session ended, when this admission ends it (the metric and audit label:
    /// a session from the future counts as past its absolute limit).
    pub fn ends_session(self) -> Option<ExpiryReason> {
        match self {
            Admission::Reauth { reason, .. } => Some(reason),
            Admission::FromTheFuture { .. } => Some(ExpiryReason::Absolute),
            _ => None,
        }
    }
}

/// Decides one request. A limit is reached when the elapsed time equals it.
///
/// Order: a denied route first; a kept form under break-glass (never sent); a public route,
/// which needs no session; then no session; then break-glass, which only routes that allow
/// it admit (`allow` does not apply to it); then a session whose times cannot be trusted;
/// then `allow`; then the session's limits, level and step-up freshness; then a step-up the
/// request's own ceremony satisfies; last, a step-up the person's credentials cannot reach.
pub fn admit(access: &Access, facts: &AdmissionFacts<'_>, now: Timestamp) -> Admission {
    if access.require == Requirement::Deny {
        return Admission::Deny;
    }
    // A kept form is never sent under break-glass, whatever the route.
    if matches!(facts.session, SessionKind::Emergency(_)) && facts.request == RequestKind::Replay {
        return Admission::BreakglassNotAllowed;
    }
    if access.require == Requirement::Public {
        return Admission::Allow;
    }
    let subject = match facts.session {
        SessionKind::None => None,
        SessionKind::Emergency(_) => {
            return if access.breakglass && facts.request != RequestKind::Replay {
                Admission::AllowEmergency
            } else {
                Admission::BreakglassNotAllowed
            };
        }
        SessionKind::Normal(s) => Some(s),
    };
    let mut session = subject.map(|s| s.facts);
    if let Some(s) = subject {
        let ahead = now.plus(Timestamp::MAX_OBSERVED_AHEAD);
        let f = s.facts;
        if f.last_seen > ahead || f.auth_time > ahead || f.last_auth > ahead {
            return Admission::FromTheFuture {
                aal: need(access).max(f.aal),
            };
        }
        if now >= s.ends_at {
            // Past the record's end: timed as past the absolute limit.
            session = Some(SessionFacts {
                auth_time: Timestamp(0),
                ..f
            });
        }
        // Who may use it, before any limit: a person not granted the route is not asked to
        // sign in again or step up for it.
        let granted = match &facts.person {
            Some(p) => allowed(&access.allow, p),
            None => access.allow.is_empty(),
        };
        if !granted {
            return Admission::Forbidden {
                session_over: matches!(
                    decide(access, session.as_ref(), now),
                    Decision::Reauth { .. }
                ),
            };
        }
    }
    match decide(access, session.as_ref(), now) {
        Decision::Allow => Admission::Allow,
        Decision::Deny => Admission::Deny,
        Decision::Login { aal } => Admission::Login { aal },
        Decision::Reauth { aal, reason } => Admission::Reauth { aal, reason },
        Decision::StepUp { aal, fresh } => {
            let strong_enough = session.is_some_and(|s| s.aal >= aal);
            let admitted = match facts.ceremony {
                Some(c) if strong_enough && facts.request != RequestKind::WebSocket => {
                    fresh != Some(StepUp::PerRequest) || c.signed
                }
                _ => false,
            };
            let unreachable = matches!(
                facts.person,
                Some(Person { reach: Reach::Known(r), .. }) if r < Some(aal)
            );
            if admitted {
                Admission::AllowAdmitted
            } else if unreachable {
                Admission::NoSuitableKey { aal }
            } else {
                Admission::StepUp { aal, fresh }
            }
        }
    }
}

/// Whether the request's own ceremony, if it had just completed (and signed it), would
/// admit it: the edge looks for that one-time admission (in the store) only then.
pub fn ceremony_would_admit(access: &Access, facts: &AdmissionFacts<'_>, now: Timestamp) -> bool {
    let with = AdmissionFacts {
        ceremony: Some(Ceremony { signed: true }),
        ..*facts
    };
    admit(access, &with, now) == Admission::AllowAdmitted
}

/// The level a route needs (AAL1 for public and denied routes, which need none).
fn need(access: &Access) -> Aal {
    match access.require {
        Requirement::Aal2 => Aal::Aal2,
        Requirement::Aal3 => Aal::Aal3,
        _ => Aal::Aal1,
    }
}

/// When a session admitted on this route stops being admitted there, whatever it does: the
/// earlier of its own end and its absolute limit here (a WebSocket is held to it).
pub fn session_end(access: &Access, subject: &Subject) -> Timestamp {
    let limits = access.limits(subject.facts.aal);
    subject
        .ends_at
        .min(subject.facts.auth_time.plus(limits.max_session_age))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decide::Timeouts;

    const T0: u64 = 1_800_000_000;
    const MIN: u64 = 60;

    fn access(require: Requirement, step_up: Option<StepUp>, breakglass: bool) -> Access {
        Access {
            require,
            step_up,
            timeouts: Timeouts::DEFAULT,
            max_session_age: None,
            idle_timeout: None,
            breakglass,
            allow: Vec::new(),
        }
    }

    /// A session at `aal`, signed in `age` seconds before T0, its last ceremony `fresh`
    /// seconds before, last seen `idle` seconds before.
    fn subject(aal: Aal, age: u64, fresh: u64, idle: u64) -> Subject {
        Subject {
            facts: SessionFacts {
                aal,
                auth_time: Timestamp(T0 - age),
                last_auth: Timestamp(T0 - fresh),
                last_seen: Timestamp(T0 - idle),
            },
            ends_at: Timestamp(T0 + 12 * 3600),
        }
    }

    fn facts(
        session: SessionKind,
        request: RequestKind,
        ceremony: Option<bool>,
    ) -> AdmissionFacts<'static> {
        AdmissionFacts {
            session,
            request,
            ceremony: ceremony.map(|signed| Ceremony { signed }),
            person: None,
        }
    }

    use Admission as A;
    use RequestKind::{Http as Nav, Replay, WebSocket as Ws};
    use Requirement as R;

    type Row = (
        &'static str,
        Access,
        SessionKind,
        RequestKind,
        Option<bool>,
        Admission,
    );

    /// Every variant, and the edges between them: (case, route, session, request, ceremony,
    /// expected).
    #[test]
    fn table() {
        let five = Some(StepUp::MaxAge(Duration::from_secs(5 * MIN)));
        let per = Some(StepUp::PerRequest);
        let n2 = SessionKind::Normal(subject(Aal::Aal2, 60, 60, 1));
        let n3 = SessionKind::Normal(subject(Aal::Aal3, 60, 60, 1));
        let stale2 = SessionKind::Normal(subject(Aal::Aal2, 600, 600, 1));
        let idle2 = SessionKind::Normal(subject(Aal::Aal2, 3600, 3600, 30 * MIN));
        let old2 = SessionKind::Normal(subject(Aal::Aal2, 12 * 3600, 60, 1));
        let ended = SessionKind::Normal(Subject {
            ends_at: Timestamp(T0),
            ..subject(Aal::Aal2, 60, 60, 1)
        });
        let ahead = |secs: u64| {
            let mut s = subject(Aal::Aal2, 60, 60, 1);
            s.facts.last_seen = Timestamp(T0 + secs);
            SessionKind::Normal(s)
        };
        let em = SessionKind::Emergency(subject(Aal::Aal1, 60, 60, 1));
        let none = SessionKind::None;
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("public, no session", access(R::Public, None, false), none, Nav, None, A::Allow),
            ("public, emergency", access(R::Public, None, false), em, Nav, None, A::Allow),
            ("deny beats any session", access(R::Deny, None, true), n3, Nav, None, A::Deny),
            ("deny, emergency", access(R::Deny, None, true), em, Nav, None, A::Deny),
            ("no session", access(R::Aal2, None, false), none, Nav, None, A::Login { aal: Aal::Aal2 }),
            ("no session, aal3", access(R::Aal3, None, false), none, Nav, None, A::Login { aal: Aal::Aal3 }),
            ("aal2 on aal2", access(R::Aal2, None, false), n2, Nav, None, A::Allow),
            ("aal2 on aal2, websocket", access(R::Aal2, None, false), n2, Ws, None, A::Allow),
            ("aal2 on aal2, replay", access(R::Aal2, None, false), n2, Replay, None, A::Allow),
            ("aal2 on aal3", access(R::Aal3, None, false), n2, Nav, None, A::StepUp { aal: Aal::Aal3, fresh: None }),
            ("aal2 on aal3, a ceremony cannot lift the level", access(R::Aal3, None, false), n2, Nav, Some(true), A::StepUp { aal: Aal::Aal3, fresh: None }),
            ("fresh enough", access(R::Aal2, five, false), n2, Nav, None, A::Allow),
            ("stale step-up", access(R::Aal2, five, false), stale2, Nav, None, A::StepUp { aal: Aal::Aal2, fresh: five }),
            ("stale step-up, own ceremony", access(R::Aal2, five, false), stale2, Nav, Some(false), A::AllowAdmitted),
            ("stale step-up, own ceremony, websocket", access(R::Aal2, five, false), stale2, Ws, Some(true), A::StepUp { aal: Aal::Aal2, fresh: five }),
            ("stale step-up, own ceremony, replay", access(R::Aal2, five, false), stale2, Replay, Some(false), A::AllowAdmitted),
            ("per-request, no ceremony", access(R::Aal2, per, false), n2, Nav, None, A::StepUp { aal: Aal::Aal2, fresh: per }),
            ("per-request, unsigned ceremony", access(R::Aal2, per, false), n2, Nav, Some(false), A::StepUp { aal: Aal::Aal2, fresh: per }),
            ("per-request, signed ceremony", access(R::Aal2, per, false), n2, Nav, Some(true), A::AllowAdmitted),
            ("per-request, signed, replay", access(R::Aal2, per, false), n2, Replay, Some(true), A::AllowAdmitted),
            ("idle", access(R::Aal2, None, false), idle2, Nav, None, A::Reauth { aal: Aal::Aal2, reason: ExpiryReason::Idle }),
            ("idle, a ceremony does not revive it", access(R::Aal2, five, false), idle2, Nav, Some(true), A::Reauth { aal: Aal::Aal2, reason: ExpiryReason::Idle }),
            ("absolute", access(R::Aal2, None, false), old2, Nav, None, A::Reauth { aal: Aal::Aal2, reason: ExpiryReason::Absolute }),
            ("absolute on aal3 asks aal3", access(R::Aal3, None, false), old2, Nav, None, A::Reauth { aal: Aal::Aal3, reason: ExpiryReason::Absolute }),
            ("past the record's end", access(R::Aal2, None, false), ended, Nav, None, A::Reauth { aal: Aal::Aal2, reason: ExpiryReason::Absolute }),
            ("5 min ahead is the clock's slack", access(R::Aal2, None, false), ahead(300), Nav, None, A::Allow),
            ("further ahead", access(R::Aal2, None, false), ahead(301), Nav, None, A::FromTheFuture { aal: Aal::Aal2 }),
            ("further ahead, replay", access(R::Aal3, None, false), ahead(3600), Replay, Some(true), A::FromTheFuture { aal: Aal::Aal3 }),
            ("emergency where allowed", access(R::Aal3, None, true), em, Nav, None, A::AllowEmergency),
            ("emergency where allowed, websocket", access(R::Aal2, per, true), em, Ws, None, A::AllowEmergency),
            ("emergency elsewhere", access(R::Aal2, None, false), em, Nav, None, A::BreakglassNotAllowed),
            ("emergency never replays a kept form", access(R::Aal2, None, true), em, Replay, Some(true), A::BreakglassNotAllowed),
            ("not even on a public route", access(R::Public, None, false), em, Replay, None, A::BreakglassNotAllowed),
            ("a normal session replays on a public route", access(R::Public, None, false), n2, Replay, None, A::Allow),
        ];
        let mut failed = Vec::new();
        for (case, a, s, r, c, want) in rows {
            let got = admit(&a, &facts(s, r, c), Timestamp(T0));
            if got != want {
                failed.push(format!("{case}: {got:?}, expected {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    /// `allow` and what the person could reach: refused outright when not granted (before any
    /// limit, so no tap is asked for), a step-up only when a credential could pass it.
    #[test]
    fn allow_and_reach() {
        use crate::allow::{Allow, Person, Reach};
        let now = Timestamp(T0);
        let billing = vec!["billing".to_string()];
        let signers = vec!["epcs-signers".to_string(), "prescribers".to_string()];
        let person = |user: &'static str, groups: &'static [String], reach| Person {
            user,
            groups,
            reach,
        };
        let billing: &'static [String] = Box::leak(billing.into_boxed_slice());
        let signers: &'static [String] = Box::leak(signers.into_boxed_slice());
        let clerk = person("bill", billing, Reach::Unknown);
        let signer = person("pat", signers, Reach::Unknown);
        let signer_no_key = person("pat", signers, Reach::Known(Some(Aal::Aal2)));
        let signer_key = person("pat", signers, Reach::Known(Some(Aal::Aal3)));
        let alice = person("it-alice", &[], Reach::Unknown);
        let gated = |require, step_up, app: &[&str], route: Option<(&[&str], &[&str])>| {
            let mut a = access(require, step_up, true);
            a.allow.push(Allow {
                users: Vec::new(),
                groups: app.iter().map(|g| g.to_string()).collect(),
            });
            if let Some((users, groups)) = route {
                a.allow.push(Allow {
                    users: users.iter().map(|u| u.to_string()).collect(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                });
            }
            a
        };
        let n2 = SessionKind::Normal(subject(Aal::Aal2, 60, 60, 1));
        let idle2 = SessionKind::Normal(subject(Aal::Aal2, 3600, 3600, 30 * MIN));
        let em = SessionKind::Emergency(subject(Aal::Aal1, 60, 60, 1));
        let five = Some(StepUp::MaxAge(Duration::from_secs(5 * MIN)));
        let ehr = gated(R::Aal2, None, &["epcs-signers", "nursing"], None);
        let sign = gated(
            R::Aal3,
            Some(StepUp::PerRequest),
            &["epcs-signers", "nursing"],
            Some((&[], &["epcs-signers"])),
        );
        let admin = gated(
            R::Aal2,
            five,
            &["epcs-signers"],
            Some((&["it-alice"], &["ehr-admins"])),
        );
        let with = |s, p: Option<Person<'static>>| AdmissionFacts {
            session: s,
            request: Nav,
            ceremony: None,
            person: p,
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, &Access, AdmissionFacts<'static>, Admission)> = vec![
            ("allowed by the app", &ehr, with(n2, Some(signer)), A::Allow),
            ("not allowed by the app", &ehr, with(n2, Some(clerk)), A::Forbidden { session_over: false }),
            ("not allowed, idle: refused, not asked to sign in again, and not named", &ehr, with(idle2, Some(clerk)), A::Forbidden { session_over: true }),
            ("no person known: no allow can admit", &ehr, with(n2, None), A::Forbidden { session_over: false }),
            ("no session: sign in first (nobody learns who may)", &ehr, with(SessionKind::None, None), A::Login { aal: Aal::Aal2 }),
            ("allowed by the route", &sign, with(n2, Some(signer)), A::StepUp { aal: Aal::Aal3, fresh: Some(StepUp::PerRequest) }),
            ("not allowed by the route", &admin, with(n2, Some(signer)), A::Forbidden { session_over: false }),
            ("a route never widens its app", &admin, with(n2, Some(alice)), A::Forbidden { session_over: false }),
            ("step-up only when a key could pass it", &sign, with(n2, Some(signer_no_key)), A::NoSuitableKey { aal: Aal::Aal3 }),
            ("a hardware key: asked", &sign, with(n2, Some(signer_key)), A::StepUp { aal: Aal::Aal3, fresh: Some(StepUp::PerRequest) }),
            ("break-glass is not subject to allow", &ehr, with(em, None), A::AllowEmergency),
        ];
        let mut failed = Vec::new();
        for (case, a, f, want) in rows {
            let got = admit(a, &f, now);
            if got != want {
                failed.push(format!("{case}: {got:?}, expected {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    /// The edge asks the store for a one-time admission only where one would admit.
    #[test]
    fn a_ceremony_is_looked_for_only_where_it_would_admit() {
        let five = Some(StepUp::MaxAge(Duration::from_secs(5 * MIN)));
        let stale2 = SessionKind::Normal(subject(Aal::Aal2, 600, 600, 1));
        let n2 = SessionKind::Normal(subject(Aal::Aal2, 60, 60, 1));
        let now = Timestamp(T0);
        let would = |a: &Access, s, r| ceremony_would_admit(a, &facts(s, r, None), now);
        assert!(would(&access(R::Aal2, five, false), stale2, Nav));
        assert!(would(
            &access(R::Aal2, Some(StepUp::PerRequest), false),
            n2,
            Nav
        ));
        assert!(!would(&access(R::Aal2, five, false), stale2, Ws));
        assert!(
            !would(&access(R::Aal2, five, false), n2, Nav),
            "already fresh"
        );
        assert!(
            !would(&access(R::Aal3, five, false), stale2, Nav),
            "too weak"
        );
        assert!(!would(
            &access(R::Aal2, five, false),
            SessionKind::None,
            Nav
        ));
    }

    /// A WebSocket is held to the earlier of the session's end and its absolute limit here.
    #[test]
    fn session_end_is_the_earlier_limit() {
        let s = subject(Aal::Aal2, 3600, 60, 1);
        let a = access(R::Aal2, None, false);
        assert_eq!(session_end(&a, &s), Timestamp(T0 - 3600 + 12 * 3600));
        let mut tight = a.clone();
        tight.max_session_age = Some(Duration::from_secs(2 * 3600));
        assert_eq!(session_end(&tight, &s), Timestamp(T0 + 3600));
        let early = Subject {
            ends_at: Timestamp(T0 + 10),
            ..s
        };
        assert_eq!(session_end(&a, &early), Timestamp(T0 + 10));
    }
}
