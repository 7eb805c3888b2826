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
    /// `active`, `disabled`, `invited` or `invite expired`.
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
                status: if u.disabled { "disabled" } else { "active" },
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
