//! Session limits by AAL and the timeout arithmetic [`crate::admit()`] builds on: a pure function
//! of the rule, the session's facts and the time, so every timeout edge is testable with a fake
//! clock. Private to the crate: nothing but `admit` admits a request.

use std::time::Duration;

use crate::aal::{Aal, Requirement};
use crate::time::Timestamp;

const MIN: u64 = 60;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

/// The limits on a session at one AAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Re-authentication is required this long after the login, whatever the activity.
    pub max_session_age: Duration,
    /// Re-authentication is required after this long without a request (`None`: no idle limit).
    pub idle_timeout: Option<Duration>,
}

/// Limits for each AAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// AAL1 limits.
    pub aal1: Limits,
    /// AAL2 limits.
    pub aal2: Limits,
    /// AAL3 limits.
    pub aal3: Limits,
}

impl Timeouts {
    /// aalgate's defaults: stricter than the NIST SP 800-63B-4 ceilings, so they satisfy Rev. 3 too.
    pub const DEFAULT: Timeouts = Timeouts {
        aal1: Limits {
            max_session_age: Duration::from_secs(30 * DAY),
            idle_timeout: None,
        },
        aal2: Limits {
            max_session_age: Duration::from_secs(12 * HOUR),
            idle_timeout: Some(Duration::from_secs(30 * MIN)),
        },
        aal3: Limits {
            max_session_age: Duration::from_secs(12 * HOUR),
            idle_timeout: Some(Duration::from_secs(15 * MIN)),
        },
    };

    /// The NIST SP 800-63B-4 ceilings (section 2.x.3 of each AAL): exceeding them needs an
    /// explicit, logged override in the policy file.
    pub const NIST_CEILING: Timeouts = Timeouts {
        aal1: Limits {
            max_session_age: Duration::from_secs(30 * DAY),
            idle_timeout: None,
        },
        aal2: Limits {
            max_session_age: Duration::from_secs(24 * HOUR),
            idle_timeout: Some(Duration::from_secs(HOUR)),
        },
        aal3: Limits {
            max_session_age: Duration::from_secs(12 * HOUR),
            idle_timeout: Some(Duration::from_secs(15 * MIN)),
        },
    };

    /// The limits at `aal`.
    pub fn get(&self, aal: Aal) -> Limits {
        match aal {
            Aal::Aal1 => self.aal1,
            Aal::Aal2 => self.aal2,
            Aal::Aal3 => self.aal3,
        }
    }

    /// Mutable limits at `aal`.
    pub fn get_mut(&mut self, aal: Aal) -> &mut Limits {
        match aal {
            Aal::Aal1 => &mut self.aal1,
            Aal::Aal2 => &mut self.aal2,
            Aal::Aal3 => &mut self.aal3,
        }
    }
}

/// What the decision needs to know about a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// What the route requires.
    pub require: Requirement,
    /// A fresh authentication is required (step-up).
    pub step_up: Option<StepUp>,
    /// The app's limits by AAL.
    pub timeouts: Timeouts,
    /// Route tightening of the absolute limit.
    pub max_session_age: Option<Duration>,
    /// Route tightening of the idle limit.
    pub idle_timeout: Option<Duration>,
    /// Emergency (break-glass) sessions may use this route.
    pub breakglass: bool,
    /// Who may use it: the app's `allow`, then the route's; each must admit the person
    /// (empty: anyone signed in). Break-glass sessions are not subject to it.
    pub allow: Vec<crate::allow::Allow>,
}

impl Access {
    /// The effective limits for a session that reached `aal`, on this route.
    pub fn limits(&self, aal: Aal) -> Limits {
        let base = self.timeouts.get(aal);
        Limits {
            max_session_age: match self.max_session_age {
                Some(r) => r.min(base.max_session_age),
                None => base.max_session_age,
            },
            idle_timeout: match (self.idle_timeout, base.idle_timeout) {
                (Some(r), Some(b)) => Some(r.min(b)),
                (r, b) => r.or(b),
            },
        }
    }
}

/// How fresh the authentication for a step-up route must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUp {
    /// The last ceremony is at most this old.
    MaxAge(Duration),
    /// Every request needs its own ceremony, bound to it: no session is ever fresh enough, and
    /// only the one-time admission that ceremony leaves lets the request through.
    PerRequest,
}

impl StepUp {
    /// The window, for `MaxAge`.
    pub fn max_age(self) -> Option<Duration> {
        match self {
            StepUp::MaxAge(d) => Some(d),
            StepUp::PerRequest => None,
        }
    }

    /// `per_request`.
    pub fn per_request(self) -> bool {
        self == StepUp::PerRequest
    }
}

/// What the decision needs to know about a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionFacts {
    /// The level the session reached.
    pub aal: Aal,
    /// When the session's first authentication happened (the absolute clock starts here).
    pub auth_time: Timestamp,
    /// The most recent successful ceremony (login, step-up or re-auth).
    pub last_auth: Timestamp,
    /// The last request seen (may lag by the documented touch interval; never leads).
    pub last_seen: Timestamp,
}

/// Why a session has to re-authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryReason {
    /// The idle limit passed.
    Idle,
    /// The absolute limit passed.
    Absolute,
}

impl ExpiryReason {
    /// `idle` or `absolute`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::Idle => "idle",
            ExpiryReason::Absolute => "absolute",
        }
    }
}

/// The outcome for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Forward it.
    Allow,
    /// No session: authenticate at `aal`.
    Login { aal: Aal },
    /// The session is too weak or its last authentication too old for this route.
    StepUp { aal: Aal, fresh: Option<StepUp> },
    /// The session timed out; authenticate again at `aal`.
    Reauth { aal: Aal, reason: ExpiryReason },
    /// The policy never allows this.
    Deny,
}

/// Decides one request. A limit is reached when the elapsed time equals it: at exactly
/// `idle_timeout` after the last request, the session is idle.
pub(crate) fn decide(access: &Access, session: Option<&SessionFacts>, now: Timestamp) -> Decision {
    let need = match access.require {
        Requirement::Deny => return Decision::Deny,
        Requirement::Public => return Decision::Allow,
        Requirement::Aal1 => Aal::Aal1,
        Requirement::Aal2 => Aal::Aal2,
        Requirement::Aal3 => Aal::Aal3,
    };
    let Some(s) = session else {
        return Decision::Login { aal: need };
    };
    let limits = access.limits(s.aal);
    if now.since(s.auth_time) >= limits.max_session_age {
        return Decision::Reauth {
            aal: need.max(s.aal),
            reason: ExpiryReason::Absolute,
        };
    }
    if let Some(idle) = limits.idle_timeout {
        if now.since(s.last_seen) >= idle {
            return Decision::Reauth {
                aal: need.max(s.aal),
                reason: ExpiryReason::Idle,
            };
        }
    }
    if s.aal < need {
        return Decision::StepUp {
            aal: need,
            fresh: access.step_up,
        };
    }
    match access.step_up {
        Some(StepUp::PerRequest) => Decision::StepUp {
            aal: need,
            fresh: access.step_up,
        },
        Some(StepUp::MaxAge(max_age)) if now.since(s.last_auth) >= max_age => Decision::StepUp {
            aal: need,
            fresh: access.step_up,
        },
        _ => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(require: Requirement) -> Access {
        Access {
            require,
            step_up: None,
            timeouts: Timeouts::DEFAULT,
            max_session_age: None,
            idle_timeout: None,
            breakglass: false,
            allow: Vec::new(),
        }
    }

    fn session(aal: Aal, t0: u64) -> SessionFacts {
        SessionFacts {
            aal,
            auth_time: Timestamp(t0),
            last_auth: Timestamp(t0),
            last_seen: Timestamp(t0),
        }
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn public_deny_and_login() {
        let s = session(Aal::Aal3, T0);
        assert_eq!(
            decide(&access(Requirement::Public), None, Timestamp(T0)),
            Decision::Allow
        );
        assert_eq!(
            decide(&access(Requirement::Deny), Some(&s), Timestamp(T0)),
            Decision::Deny
        );
        for (r, a) in [
            (Requirement::Aal1, Aal::Aal1),
            (Requirement::Aal2, Aal::Aal2),
            (Requirement::Aal3, Aal::Aal3),
        ] {
            assert_eq!(
                decide(&access(r), None, Timestamp(T0)),
                Decision::Login { aal: a }
            );
        }
    }

    #[test]
    fn weaker_session_steps_up() {
        let s = session(Aal::Aal2, T0);
        assert_eq!(
            decide(&access(Requirement::Aal2), Some(&s), Timestamp(T0 + 1)),
            Decision::Allow
        );
        assert_eq!(
            decide(&access(Requirement::Aal3), Some(&s), Timestamp(T0 + 1)),
            Decision::StepUp {
                aal: Aal::Aal3,
                fresh: None
            }
        );
        let s1 = session(Aal::Aal1, T0);
        assert_eq!(
            decide(&access(Requirement::Aal2), Some(&s1), Timestamp(T0 + 1)),
            Decision::StepUp {
                aal: Aal::Aal2,
                fresh: None
            }
        );
    }

    /// Every default limit, one second before and at/after the edge, for each AAL.
    #[test]
    fn timeout_edges_for_every_aal() {
        for aal in Aal::ALL {
            let req = match aal {
                Aal::Aal1 => Requirement::Aal1,
                Aal::Aal2 => Requirement::Aal2,
                Aal::Aal3 => Requirement::Aal3,
            };
            let a = access(req);
            let lim = Timeouts::DEFAULT.get(aal);
            // Absolute: keep the session active so only the absolute limit can fire.
            let abs = lim.max_session_age.as_secs();
            let mut s = session(aal, T0);
            s.last_seen = Timestamp(T0 + abs - 1);
            assert_eq!(
                decide(&a, Some(&s), Timestamp(T0 + abs - 1)),
                Decision::Allow,
                "{aal} abs-1"
            );
            s.last_seen = Timestamp(T0 + abs);
            assert_eq!(
                decide(&a, Some(&s), Timestamp(T0 + abs)),
                Decision::Reauth {
                    aal,
                    reason: ExpiryReason::Absolute
                },
                "{aal} abs"
            );
            assert_eq!(
                decide(&a, Some(&s), Timestamp(T0 + abs + 1)),
                Decision::Reauth {
                    aal,
                    reason: ExpiryReason::Absolute
                },
                "{aal} abs+1"
            );
            // Idle.
            let s = session(aal, T0);
            match lim.idle_timeout {
                None => assert_eq!(
                    decide(&a, Some(&s), Timestamp(T0 + abs - 1)),
                    Decision::Allow
                ),
                Some(idle) => {
                    let idle = idle.as_secs();
                    assert_eq!(
                        decide(&a, Some(&s), Timestamp(T0 + idle - 1)),
                        Decision::Allow,
                        "{aal} idle-1"
                    );
                    for t in [T0 + idle, T0 + idle + 1] {
                        assert_eq!(
                            decide(&a, Some(&s), Timestamp(t)),
                            Decision::Reauth {
                                aal,
                                reason: ExpiryReason::Idle
                            },
                            "{aal} idle"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn route_tightening_and_step_up_window() {
        let mut a = access(Requirement::Aal2);
        a.idle_timeout = Some(Duration::from_secs(600));
        a.max_session_age = Some(Duration::from_secs(3600));
        let s = session(Aal::Aal3, T0);
        // AAL3 idle is 15 min but the route says 10 min.
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 + 599)), Decision::Allow);
        assert!(matches!(
            decide(&a, Some(&s), Timestamp(T0 + 600)),
            Decision::Reauth { .. }
        ));
        let mut s2 = s;
        s2.last_seen = Timestamp(T0 + 3599);
        assert_eq!(decide(&a, Some(&s2), Timestamp(T0 + 3599)), Decision::Allow);
        s2.last_seen = Timestamp(T0 + 3600);
        assert_eq!(
            decide(&a, Some(&s2), Timestamp(T0 + 3600)),
            Decision::Reauth {
                aal: Aal::Aal3,
                reason: ExpiryReason::Absolute
            }
        );

        let mut a = access(Requirement::Aal3);
        a.step_up = Some(StepUp::MaxAge(Duration::from_secs(300)));
        let mut s = session(Aal::Aal3, T0);
        s.last_seen = Timestamp(T0 + 299);
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 + 299)), Decision::Allow);
        s.last_seen = Timestamp(T0 + 300);
        assert_eq!(
            decide(&a, Some(&s), Timestamp(T0 + 300)),
            Decision::StepUp {
                aal: Aal::Aal3,
                fresh: Some(StepUp::MaxAge(Duration::from_secs(300)))
            }
        );
        // A fresh step-up satisfies it again.
        s.last_auth = Timestamp(T0 + 300);
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 + 301)), Decision::Allow);
    }

    /// No session is ever fresh enough for a per-request route, not even one a second old;
    /// the expiry rules still come first.
    #[test]
    fn per_request_routes_always_step_up() {
        let mut a = access(Requirement::Aal3);
        a.step_up = Some(StepUp::PerRequest);
        let s = session(Aal::Aal3, T0);
        for now in [T0, T0 + 1, T0 + 60] {
            assert_eq!(
                decide(&a, Some(&s), Timestamp(now)),
                Decision::StepUp {
                    aal: Aal::Aal3,
                    fresh: Some(StepUp::PerRequest)
                }
            );
        }
        assert!(matches!(
            decide(&a, Some(&s), Timestamp(T0 + 3600)),
            Decision::Reauth { .. }
        ));
        assert_eq!(
            decide(&a, None, Timestamp(T0)),
            Decision::Login { aal: Aal::Aal3 }
        );
    }

    #[test]
    fn clock_going_backwards_does_not_extend_anything() {
        // A session stamped at T0 read by a clock 100 s behind it: allowed, and every limit
        // still falls where the stamps put it, not 100 s later.
        let a = access(Requirement::Aal2);
        let s = session(Aal::Aal2, T0);
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 - 100)), Decision::Allow);
        let idle = Decision::Reauth {
            aal: Aal::Aal2,
            reason: ExpiryReason::Idle,
        };
        assert_eq!(
            decide(&a, Some(&s), Timestamp(T0 + 30 * MIN - 1)),
            Decision::Allow
        );
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 + 30 * MIN)), idle);
        let mut busy = s;
        busy.last_seen = Timestamp(T0 + 12 * HOUR - 1);
        assert_eq!(
            decide(&a, Some(&busy), Timestamp(T0 + 12 * HOUR - 1)),
            Decision::Allow
        );
        assert_eq!(
            decide(&a, Some(&busy), Timestamp(T0 + 12 * HOUR)),
            Decision::Reauth {
                aal: Aal::Aal2,
                reason: ExpiryReason::Absolute
            }
        );
        // A step-up window counts from the ceremony too.
        let mut a = access(Requirement::Aal2);
        a.step_up = Some(StepUp::MaxAge(Duration::from_secs(300)));
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 - 100)), Decision::Allow);
        assert_eq!(decide(&a, Some(&s), Timestamp(T0 + 299)), Decision::Allow);
        assert_eq!(
            decide(&a, Some(&s), Timestamp(T0 + 300)),
            Decision::StepUp {
                aal: Aal::Aal2,
                fresh: a.step_up
            }
        );
    }
}
