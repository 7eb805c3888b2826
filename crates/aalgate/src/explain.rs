//! `aalgate explain`: which rule a request matches (file:line) and what the gateway decides,
//! for a session described on the command line.

use std::path::PathBuf;
use std::time::Duration;

use aalgate_policy::{
    admit, format_duration, parse_duration, Aal, Admission, AdmissionFacts, HostPort, RequestKind,
    SessionFacts, SessionKind, StepUp, Subject, Timestamp,
};
use anyhow::{bail, Result};

/// Arguments of `aalgate explain`.
#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Policy files or directories.
    #[arg(long, required = true)]
    policies: Vec<PathBuf>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Full URL, e.g. https://billing.clinic.example/payouts/bank-account
    #[arg(long)]
    url: String,
    /// AAL the session reached (1, 2 or 3); omit for no session.
    #[arg(long)]
    aal: Option<Aal>,
    /// Time since the session's authentication (e.g. 2h).
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    auth_age: Duration,
    /// Time since the session's last request (e.g. 5m).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    idle: Duration,
    /// Time since the last step-up or re-authentication (default: the auth age).
    #[arg(long, value_parser = parse_duration)]
    step_up_age: Option<Duration>,
    /// The session is a break-glass (emergency) one.
    #[arg(long, requires = "aal")]
    breakglass: bool,
    /// The signed-in person's user name, for `allow` (with `--config`: their groups are read
    /// from the directory).
    #[arg(long, requires = "aal")]
    pub user: Option<String>,
    /// The person's groups, comma-separated (instead of reading them with `--config`).
    #[arg(long, requires = "aal", value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// The gateway config whose directory `--user`'s groups are read from.
    #[arg(long, short, requires = "user")]
    pub config: Option<PathBuf>,
}

/// Runs the command.
#[allow(
    clippy::too_many_lines,
    reason = "the report's lines in the order it prints them"
)]
pub fn run(a: ExplainArgs) -> Result<()> {
    let set = match crate::policy_files::load(&a.policies) {
        Ok(s) => s,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            bail!("the policy set has errors");
        }
    };
    let refused = |e| anyhow::anyhow!("the gateway would refuse this URL with 400: {e}");
    // The host first (its app says whether double encoding is allowed), then the path.
    let loose = aalgate_policy::normalize_target_with(
        a.url.as_bytes(),
        aalgate_policy::DoubleEncoding::Allow,
    )
    .map_err(refused)?;
    let Some(authority) = loose.authority() else {
        bail!("give a full URL with scheme and host, e.g. https://billing.clinic.example/path");
    };
    let host = HostPort::parse(authority).map_err(|e| anyhow::anyhow!("host: {e}"))?;
    let target =
        aalgate_policy::normalize_target_with(a.url.as_bytes(), set.double_encoding(&host))
            .map_err(refused)?;
    let Some(m) = set.lookup(&host, &a.method, &target) else {
        println!("host:     {host}: no app serves it");
        println!("decision: 421 Misdirected Request (never forwarded)");
        return Ok(());
    };
    let now = Timestamp::wall();
    let back = |d: Duration| Timestamp(now.0.saturating_sub(d.as_secs()));
    let facts = a.aal.map(|aal| SessionFacts {
        aal,
        auth_time: back(a.auth_age),
        last_auth: back(a.step_up_age.unwrap_or(a.auth_age)),
        last_seen: back(a.idle),
    });
    let rule = m.rule;
    println!("app:      {} ({})", m.app.name, m.app.source);
    match &rule.pattern {
        Some(p) => println!(
            "rule:     {} {} ({})",
            rule.id,
            if p.as_str() == rule.id {
                String::new()
            } else {
                format!("[{}]", p.as_str())
            },
            rule.source
        ),
        None => println!(
            "rule:     no route matches; the app default applies ({})",
            rule.source
        ),
    }
    println!(
        "path:     {} (normalized; this is what the upstream receives)",
        target.path()
    );
    let mut req = format!("require:  {}", rule.access.require);
    match rule.access.step_up {
        Some(StepUp::MaxAge(s)) => {
            req.push_str(&format!(", step-up within {}", format_duration(s)))
        }
        Some(StepUp::PerRequest) => {
            req.push_str(", a ceremony bound to each request (step_up: per_request)")
        }
        None => {}
    }
    println!("{req}");
    match facts {
        None => println!("session:  none"),
        Some(f) => {
            let l = rule.access.limits(f.aal);
            println!(
                "session:  {} authenticated {} ago, idle {}; limits here: {} overall, {} idle",
                f.aal,
                format_duration(a.auth_age),
                format_duration(a.idle),
                format_duration(l.max_session_age),
                l.idle_timeout
                    .map(format_duration)
                    .unwrap_or_else(|| "no".into())
            );
        }
    }
    let session = match facts {
        None => SessionKind::None,
        Some(facts) => {
            // As long as the loosest limit allows: the route's own limits decide here.
            let subject = Subject {
                facts,
                ends_at: Timestamp(u64::MAX),
            };
            if a.breakglass {
                SessionKind::Emergency(subject)
            } else {
                SessionKind::Normal(subject)
            }
        }
    };
    let groups = a.groups.clone().unwrap_or_default();
    let user = a.user.clone().unwrap_or_default();
    let person = aalgate_policy::Person {
        user: &user,
        groups: &groups,
        reach: aalgate_policy::Reach::Unknown,
    };
    if a.aal.is_some() && !a.breakglass {
        if a.user.is_some() || a.groups.is_some() {
            println!(
                "person:   {}, groups: {}",
                if user.is_empty() { "(unnamed)" } else { &user },
                if groups.is_empty() {
                    "none".to_string()
                } else {
                    groups.join(", ")
                }
            );
        }
        for (i, allow) in rule.access.allow.iter().enumerate() {
            let whose = if i == 0 && m.app.allow.is_some() {
                "app"
            } else {
                "route"
            };
            let named = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            let verdict = if a.user.is_none() && a.groups.is_none() {
                "not checked (assumed to admit): give --user with --config, or --groups".to_string()
            } else if allow.users.contains(&user) {
                format!("admits {user} by name")
            } else if let Some(g) = groups.iter().find(|g| allow.groups.contains(g)) {
                format!("admits them through group {g}")
            } else {
                "does not admit them".to_string()
            };
            println!(
                "allow:    {whose}: users [{}], groups [{}]: {verdict}",
                named(&allow.users),
                named(&allow.groups)
            );
        }
        if rule.access.allow.is_empty() {
            println!("allow:    anyone signed in (no allow on the app or the route)");
        }
    }
    let facts = AdmissionFacts {
        session,
        request: RequestKind::Http,
        ceremony: None,
        person: (a.user.is_some() || a.groups.is_some()).then_some(person),
    };
    // No person described: the decision as for someone `allow` admits.
    let unchecked;
    let access = if facts.person.is_none() && !rule.access.allow.is_empty() {
        unchecked = aalgate_policy::Access {
            allow: Vec::new(),
            ..rule.access.clone()
        };
        &unchecked
    } else {
        &rule.access
    };
    let text = match admit(access, &facts, now) {
        Admission::Forbidden { .. } => format!(
            "forbidden: 403, {} does not name this person (no sign-in or step-up is asked)",
            if rule.access.allow.len() > 1 { "the app's or the route's allow" } else { "allow" }
        ),
        Admission::NoSuitableKey { aal } => {
            format!("no_suitable_key: 409, none of the person's keys reaches {aal}")
        }
        Admission::Allow => "allow: forwarded upstream".to_string(),
        Admission::AllowEmergency => {
            "allow: forwarded upstream under break-glass (audited, alerted)".to_string()
        }
        Admission::AllowAdmitted => {
            "allow: admitted once by the request's own ceremony".to_string()
        }
        Admission::BreakglassNotAllowed => {
            "breakglass_not_allowed: 403, this route does not allow break-glass sessions"
                .to_string()
        }
        Admission::FromTheFuture { aal } => format!(
            "reauth: the session's times lie ahead of the clock; sign in again at {aal}"
        ),
        Admission::Deny => "deny: 403, never forwarded".to_string(),
        Admission::Login { aal } => {
            format!("login: sign in at {aal} (302 to /.aalgate/auth, or 401 JSON for scripts)")
        }
        Admission::StepUp {
            aal,
            fresh: Some(StepUp::PerRequest),
        } => format!(
            "step_up: this request needs its own {aal} ceremony, signed over its method, URL and body (per_request); nothing else is admitted by it"
        ),
        Admission::StepUp { aal, fresh } => format!(
            "step_up: a fresh {aal} authentication{} is needed",
            fresh
                .and_then(StepUp::max_age)
                .map(|m| format!(" within {}", format_duration(m)))
                .unwrap_or_default()
        ),
        Admission::Reauth { aal, reason } => format!(
            "reauth: the session hit its {} limit; sign in again at {aal}",
            reason.as_str()
        ),
    };
    println!("decision: {text}");
    Ok(())
}
