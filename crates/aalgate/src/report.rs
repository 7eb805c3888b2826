//! Compliance reports for IT and security officers: who can reach which level (HIPAA
//! 164.312(d): "every active account has MFA") and what break-glass was used for
//! (164.312(a)(2)(ii): emergency access is reviewed).

use std::time::Duration;

use aalgate_auth::{CredentialKind, Directory, DirectoryError};
use aalgate_policy::{Aal, Timestamp};
use serde::Serialize;

use crate::breakglass::Code;

/// A timestamp as RFC 3339 UTC, to the second.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.0)).to_string()
}

/// One user (or pending invite) in the enrollment report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EnrollmentRow {
    /// The user id.
    pub user: String,
    /// `active`, `disabled`, `provisioned` (an account the directory created, with no
    /// credential and no sign-in yet: like `invited`, not yet counted), `invited` or
    /// `invite expired`.
    pub status: &'static str,
    /// Usable passkeys.
    pub passkeys: usize,
    /// Usable hardware security keys.
    pub security_keys: usize,
    /// The highest AAL a usable credential reaches (`aal2`...), if any.
    pub max_aal: Option<String>,
    /// Last successful sign-in.
    pub last_login: Option<String>,
}

/// The report's summary.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct EnrollmentSummary {
    /// Active users.
    pub active: usize,
    /// Active users who can reach AAL2 or higher.
    pub active_with_mfa: usize,
    /// Active users who cannot (the report exits non-zero when this is not 0).
    pub active_without_mfa: usize,
    /// `active_with_mfa / active`, in percent (100 with no active user).
    pub mfa_percent: f64,
}

/// Every user, then every invite for a person who has no account yet.
pub async fn enrollment(
    dir: &Directory,
    now: Timestamp,
) -> Result<Vec<EnrollmentRow>, DirectoryError> {
    let users = dir.users().await?;
    let mut rows: Vec<EnrollmentRow> = users
        .iter()
        .map(|u| {
            let usable = || u.credentials.iter().filter(|c| c.usable());
            EnrollmentRow {
                user: u.id.clone(),
                status: if u.disabled {
                    "disabled"
                } else if u.credentials.is_empty() && u.last_login.is_none() {
                    "provisioned"
                } else {
                    "active"
                },
                passkeys: usable()
                    .filter(|c| c.kind == CredentialKind::Passkey)
                    .count(),
                security_keys: usable()
                    .filter(|c| c.kind == CredentialKind::SecurityKey)
                    .count(),
                max_aal: u.max_aal().map(|a| a.as_str().to_string()),
                last_login: u.last_login.map(rfc3339),
            }
        })
        .collect();
    let mut invited: Vec<(String, bool)> = Vec::new();
    for (_, i) in dir.invites().await? {
        if users.iter().any(|u| u.id == i.user) {
            continue;
        }
        let open = i.expires > now;
        match invited.iter_mut().find(|(u, _)| *u == i.user) {
            Some(e) => e.1 |= open,
            None => invited.push((i.user.clone(), open)),
        }
    }
    for (user, open) in invited {
        rows.push(EnrollmentRow {
            user,
            status: if open { "invited" } else { "invite expired" },
            passkeys: 0,
            security_keys: 0,
            max_aal: None,
            last_login: None,
        });
    }
    rows.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(rows)
}

/// Counts active users with and without MFA.
pub fn summary(rows: &[EnrollmentRow]) -> EnrollmentSummary {
    let active: Vec<_> = rows.iter().filter(|r| r.status == "active").collect();
    let with = active
        .iter()
        .filter(|r| {
            r.max_aal
                .as_deref()
                .is_some_and(|a| a >= Aal::Aal2.as_str())
        })
        .count();
    EnrollmentSummary {
        active: active.len(),
        active_with_mfa: with,
        active_without_mfa: active.len() - with,
        mfa_percent: if active.is_empty() {
            100.0
        } else {
            100.0 * with as f64 / active.len() as f64
        },
    }
}

/// One break-glass use in the report.
#[derive(Clone, Debug, Serialize)]
pub struct BreakGlassRow {
    /// The code's id.
    pub code: String,
    /// The code's label.
    pub name: String,
    /// When (RFC 3339).
    pub time: String,
    /// Who, as typed.
    pub person: String,
    /// Why, as typed.
    pub reason: String,
    /// On which app.
    pub app: String,
    /// Whether IT recorded a review.
    pub reviewed: bool,
    /// Not reviewed and older than 24 h.
    pub overdue: bool,
    /// The review notes.
    pub reviews: Vec<String>,
}

/// Uses within `since` of `now`, and every use not reviewed yet, oldest first.
pub fn breakglass(codes: &[Code], now: Timestamp, since: Duration) -> Vec<BreakGlassRow> {
    let from = now.0.saturating_sub(since.as_secs());
    let mut rows: Vec<(u64, BreakGlassRow)> = codes
        .iter()
        .filter_map(|c| {
            let u = c.used.as_ref()?;
            // An unreviewed use stays listed whatever the window: it is still owed a review.
            (u.time.0 >= from || u.reviews.is_empty()).then(|| {
                (
                    u.time.0,
                    BreakGlassRow {
                        code: c.id.clone(),
                        name: c.name.clone(),
                        time: rfc3339(u.time),
                        person: u.person.clone(),
                        reason: u.reason.clone(),
                        app: u.app.clone(),
                        reviewed: !u.reviews.is_empty(),
                        overdue: u.reviews.is_empty()
                            && now.since(u.time) > Duration::from_secs(86400),
                        reviews: u.reviews.iter().map(|r| r.note.clone()).collect(),
                    },
                )
            })
        })
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    rows.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, status: &'static str, aal: Option<&str>) -> EnrollmentRow {
        EnrollmentRow {
            user: user.into(),
            status,
            passkeys: 0,
            security_keys: 0,
            max_aal: aal.map(str::to_string),
            last_login: None,
        }
    }

    #[test]
    fn summary_counts_only_active_users() {
        let rows = vec![
            row("a", "active", Some("aal2")),
            row("b", "active", Some("aal3")),
            row("c", "active", None),
            row("d", "disabled", None),
            row("e", "invited", None),
        ];
        let s = summary(&rows);
        assert_eq!(
            (s.active, s.active_with_mfa, s.active_without_mfa),
            (3, 2, 1)
        );
        assert!((s.mfa_percent - 66.666).abs() < 0.01);
        assert_eq!(summary(&[]).mfa_percent, 100.0);
    }

    #[test]
    fn breakglass_uses_are_overdue_after_a_day_without_review() {
        let now = Timestamp(10_000_000);
        let code = |id: &str, age: u64, reviewed: bool| Code {
            id: id.into(),
            name: "ed".into(),
            created: Timestamp(0),
            ttl_secs: 3600,
            hash: String::new(),
            used: Some(crate::breakglass::Use {
                time: Timestamp(now.0 - age),
                person: "Dr. A".into(),
                reason: "r".into(),
                app: "ehr".into(),
                client_ip: None,
                reviews: if reviewed {
                    vec![crate::breakglass::Review {
                        time: now,
                        note: "ok".into(),
                    }]
                } else {
                    vec![]
                },
            }),
        };
        let codes = vec![
            code("old", 90_000, false),
            code("new", 100, false),
            code("done", 90_000, true),
            code("ancient", 40 * 86400, false),
        ];
        let rows = breakglass(&codes, now, Duration::from_secs(30 * 86400));
        assert_eq!(
            rows.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(),
            ["ancient", "old", "done", "new"]
        );
        assert!(
            rows[0].overdue
                && rows[1].overdue
                && !rows[2].overdue
                && rows[2].reviewed
                && !rows[3].overdue
        );
    }
}

/// Who can reach one route, and at what level.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RouteAccess {
    /// The app id.
    pub app: String,
    /// The rule's id (`default` for the app's default).
    pub route: String,
    /// What it requires (`aal2`, `aal3`...).
    pub require: String,
    /// `max_age 5m`, `per_request`, or none.
    pub step_up: Option<String>,
    /// Where the rule is written (`file:line:column`).
    pub source: String,
    /// `false`: anyone signed in (no `allow` applies); `true`: only `people`.
    pub restricted: bool,
    /// The people it admits (with `restricted`), each by name or through which group.
    pub people: Vec<Grant>,
    /// Emergency (break-glass) codes open it too, whatever its `allow` (`breakglass: allow`).
    pub breakglass: bool,
}

/// One person a route or app admits, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Grant {
    /// The user id.
    pub user: String,
    /// `user` (named), `group:<g>` (a member), or `anyone signed in`.
    pub via: String,
    /// `active`, `disabled` (cannot sign in) or `not enrolled` (groups set, no account yet).
    pub status: &'static str,
}

/// One person in the access report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PersonAccess {
    /// The user id.
    pub user: String,
    /// `active`, `disabled`, or `not enrolled` (groups set, no account yet).
    pub status: &'static str,
    /// Their groups.
    pub groups: Vec<String>,
    /// The highest level a usable credential reaches.
    pub max_aal: Option<String>,
    /// The apps they can reach, with their last use (RFC 3339; none: never seen).
    pub apps: Vec<AppUse>,
}

/// A person's use of one app.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AppUse {
    /// The app id.
    pub app: String,
    /// Last use (RFC 3339), as the gateway recorded it (at most hourly).
    pub last_use: Option<String>,
    /// Granted by an explicit `allow` (not merely "anyone signed in").
    pub explicit: bool,
}

/// The access review: routes, people, unused grants, and what fails it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccessReport {
    /// Every rule, by app.
    pub routes: Vec<RouteAccess>,
    /// Every person the directory knows.
    pub people: Vec<PersonAccess>,
    /// Explicit app grants (an app `allow` names them) unused for `--unused` (or never).
    pub unused: Vec<Grant>,
    /// Why the report fails (exit 1): a person named by an explicit `allow` on an `aal3`
    /// route with no usable AAL3 credential (they would be stuck at the step-up).
    pub failures: Vec<String>,
    /// `aal3` routes with a step-up (a signing-style action) and no `allow`.
    pub warnings: Vec<String>,
}

/// What the access report reads: the policy, the directory's people and their last uses.
pub struct AccessInput<'a> {
    /// The policy set.
    pub policy: &'a aalgate_policy::PolicySet,
    /// Every enrolled user.
    pub users: &'a [aalgate_auth::User],
    /// Every person's groups (including people not enrolled yet).
    pub memberships: &'a std::collections::BTreeMap<String, aalgate_auth::model::Membership>,
    /// Last use by (user, app).
    pub last_use: &'a std::collections::BTreeMap<(String, String), Timestamp>,
    /// Only this app (`--app`).
    pub app: Option<&'a str>,
    /// `--unused`: list explicit grants not used for this long.
    pub unused: Option<Duration>,
    /// The time.
    pub now: Timestamp,
}

fn status_of(account: Option<&aalgate_auth::User>) -> &'static str {
    match account {
        Some(a) if a.disabled => "disabled",
        Some(_) => "active",
        None => "not enrolled",
    }
}

/// Builds the access review (pure: the CLI reads the inputs).
#[allow(
    clippy::too_many_lines,
    reason = "the report's three parts (routes, people, unused grants) in the order it prints them"
)]
pub fn access(input: &AccessInput<'_>) -> AccessReport {
    use aalgate_policy::{allowed, Person, Reach};
    let mut names: std::collections::BTreeSet<&str> =
        input.users.iter().map(|u| u.id.as_str()).collect();
    names.extend(input.memberships.keys().map(String::as_str));
    let empty = Vec::new();
    let groups_of = |u: &str| {
        input
            .memberships
            .get(u)
            .map_or(&empty, |m: &aalgate_auth::model::Membership| &m.groups)
    };
    let user_of = |u: &str| input.users.iter().find(|x| x.id == u);
    let why = |allow: &[aalgate_policy::Allow], u: &str| -> String {
        for a in allow.iter().rev() {
            if a.users.iter().any(|x| x == u) {
                return "user".into();
            }
            if let Some(g) = groups_of(u).iter().find(|g| a.groups.contains(g)) {
                return format!("group:{g}");
            }
        }
        "user".into()
    };
    let mut report = AccessReport::default();
    for rule in input.policy.rules() {
        let app = input.policy.app_of(rule);
        if input.app.is_some_and(|a| a != app.name) {
            continue;
        }
        let access = &rule.access;
        let require = access.require;
        if matches!(
            require,
            aalgate_policy::Requirement::Public | aalgate_policy::Requirement::Deny
        ) {
            report.routes.push(RouteAccess {
                app: app.name.clone(),
                route: rule.id.clone(),
                require: require.to_string(),
                step_up: None,
                source: rule.source.to_string(),
                restricted: require == aalgate_policy::Requirement::Deny,
                people: Vec::new(),
                breakglass: false,
            });
            continue;
        }
        let restricted = !access.allow.is_empty();
        let mut people = Vec::new();
        if restricted {
            for u in &names {
                let person = Person {
                    user: u,
                    groups: groups_of(u),
                    reach: Reach::Unknown,
                };
                if allowed(&access.allow, &person) {
                    people.push(Grant {
                        user: u.to_string(),
                        via: why(&access.allow, u),
                        status: status_of(user_of(u)),
                    });
                    // Named for an AAL3 route: can they get there?
                    let active = user_of(u).filter(|x| !x.disabled);
                    if require == aalgate_policy::Requirement::Aal3 {
                        if let Some(x) = active {
                            let reach = x.max_aal().map(|a| a.min(x.proofed_aal.max(Aal::Aal2)));
                            if reach < Some(Aal::Aal3) {
                                report.failures.push(format!(
                                    "{u} may use {} {} (aal3, {}) but has no usable AAL3 hardware key: they would be stuck at the step-up; invite them at --aal 3",
                                    app.name, rule.id, rule.source
                                ));
                            }
                        }
                    }
                }
            }
        } else if require == aalgate_policy::Requirement::Aal3 && access.step_up.is_some() {
            report.warnings.push(format!(
                "{} {} ({}) is an aal3 route with a step-up (a signing-style action) open to anyone signed in: add an allow naming who may do it",
                app.name, rule.id, rule.source
            ));
        }
        report.routes.push(RouteAccess {
            app: app.name.clone(),
            route: rule.id.clone(),
            require: require.to_string(),
            step_up: access.step_up.map(|s| match s {
                aalgate_policy::StepUp::MaxAge(d) => {
                    format!("max_age {}", aalgate_policy::format_duration(d))
                }
                aalgate_policy::StepUp::PerRequest => "per_request".into(),
            }),
            source: rule.source.to_string(),
            restricted,
            people,
            breakglass: access.breakglass,
        });
    }
    for u in &names {
        let account = user_of(u);
        let groups = groups_of(u).clone();
        let person = Person {
            user: u,
            groups: &groups,
            reach: Reach::Unknown,
        };
        let mut apps = Vec::new();
        for app in input.policy.apps() {
            if input.app.is_some_and(|a| a != app.name) {
                continue;
            }
            let app_allow: Vec<aalgate_policy::Allow> = app.allow.iter().cloned().collect();
            if !allowed(&app_allow, &person) {
                continue;
            }
            let last = input
                .last_use
                .get(&(u.to_string(), app.name.clone()))
                .copied();
            let explicit = app.allow.is_some();
            if explicit && account.is_some_and(|a| !a.disabled) {
                if let Some(window) = input.unused {
                    let stale = last.is_none_or(|t| input.now.since(t) >= window);
                    if stale {
                        report.unused.push(Grant {
                            status: "active",
                            user: u.to_string(),
                            via: format!(
                                "{} (last use {})",
                                app.name,
                                last.map(rfc3339).unwrap_or_else(|| "never".into())
                            ),
                        });
                    }
                }
            }
            apps.push(AppUse {
                app: app.name.clone(),
                last_use: last.map(rfc3339),
                explicit,
            });
        }
        report.people.push(PersonAccess {
            user: u.to_string(),
            status: status_of(account),
            groups,
            max_aal: account
                .and_then(|a| a.max_aal())
                .map(|a| a.as_str().to_string()),
            apps,
        });
    }
    report.failures.sort();
    report.failures.dedup();
    report
}
