//! `aalgate`: an MFA gateway for healthcare apps that have no multi-factor login of their own.
//!
//! Subcommands: `run` (the gateway), `demo` (the gateway with everything defaulted and a bundled
//! demo app), `validate` and `explain` (for IT editing policy files), `schema`.

// Over about 80 lines, a function is a deliberate choice: `#[allow]` it with a reason.
#![warn(clippy::too_many_lines)]

// glibc malloc showed up at ~8% of a pingora profile on this machine; mimalloc is faster for
// the many small per-request allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aalgate::{admin, assertion, audit, cache, config, demo, explain, metrics, ops, proxy};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aalgate_policy::Severity;
use aalgate_session::{Deadline, EmbeddedStore, RedisStore, SessionStore, StoreSpec};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use aalgate::config::{Config, Listener, LogFormat};

#[derive(Parser)]
#[command(
    name = "aalgate",
    version,
    about = "MFA gateway enforcing NIST SP 800-63B-4 AALs in front of legacy healthcare apps"
)]
struct Cli {
    /// Log format (overrides the config file).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// Which gateway an admin command works on.
#[derive(clap::Args)]
struct Target {
    /// The gateway config (its store, state and public_origin). Without it: the demo's
    /// (.aalgate-demo, http://localhost:8080).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The demo's state directory, when no --config is given.
    #[arg(long, global = true, default_value = ".aalgate-demo")]
    state_dir: PathBuf,
    /// The demo's public origin, when no --config is given.
    #[arg(long, global = true, default_value = "http://localhost:8080")]
    origin: String,
}

#[derive(clap::Args)]
struct UsersArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: UsersAction,
}

#[derive(clap::Args)]
struct GroupsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: GroupsAction,
}

#[derive(Subcommand)]
enum GroupsAction {
    /// Every group with its members.
    List,
}

#[derive(clap::Args)]
struct StoreArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: StoreAction,
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy people, their credentials and groups to FILE (mode 0600), consistently, while the
    /// gateway runs. Never sessions or one-time tokens. The embedded store only: Redis keeps
    /// its own copies (replicas, AOF).
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Bring back people, credentials and groups from FILE, into a store with nobody yet.
    /// Sessions and one-time tokens are never restored, so nothing logged out or used since
    /// the backup comes back.
    Restore {
        /// A file written by `aalgate store backup`.
        file: PathBuf,
        /// Into a store with people: add only what it lacks. Everyone present stays exactly as
        /// now; a person removed since the backup comes back disabled.
        #[arg(long)]
        merge: bool,
    },
}

#[derive(clap::Args)]
struct BreakglassArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: BreakglassAction,
}

#[derive(Subcommand)]
enum BreakglassAction {
    /// Create a sealed emergency code (printed once: put it in the envelope or password manager).
    Create {
        /// Where the envelope is kept, e.g. ed-charge-nurse.
        name: String,
        /// How long the emergency session it grants lasts (1m to 12h).
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Record the required follow-up of a use.
    Review {
        /// The code's id (see `aalgate report breakglass`).
        id: String,
        /// What was checked and found.
        #[arg(long)]
        note: String,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: ReportAction,
}

/// Output format of a report.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum ReportAction {
    /// Every user's MFA status; exits 1 when an active user cannot reach AAL2.
    Enrollment {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Access review: who can reach each app and route (by name or through which group) and
    /// at what AAL, each person's apps with their last use, and, with --unused, grants not used
    /// for that long. Exits 1 when a person an `allow` names on an aal3 route has no usable
    /// AAL3 key.
    Access {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// List explicit grants (an app `allow` names the person) not used for this long.
        #[arg(long)]
        unused: Option<humantime::Duration>,
        /// Policy files or directories (default: the config's `policies`, or the demo's).
        #[arg(long)]
        policies: Vec<PathBuf>,
    },
    /// Break-glass uses, who and why, and uses not reviewed within 24 h.
    Breakglass {
        /// How far back.
        #[arg(long, default_value = "30d")]
        since: humantime::Duration,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Print a one-time enrollment URL for USER (after IT has proofed the person).
    Invite {
        /// The login name (letters, digits, '.', '_', '-', '@').
        user: String,
        /// The name shown on the person's authenticator.
        #[arg(long)]
        display_name: Option<String>,
        /// The level the person was proofed for: 3 allows only an allow-listed hardware key.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
        aal: u8,
        /// How long the link works.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
        /// A group the person belongs to (repeat for several): set now, so it applies from
        /// their first sign-in.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The person's e-mail address (for apps that identify people by it).
        #[arg(long)]
        email: Option<String>,
    },
    /// List users and their credentials.
    List,
    /// Show USER's groups, or change them (`--add`, `--remove`; each may repeat). A change
    /// reaches every gateway instance within 1 s: access ends at once, not with the session.
    Groups {
        /// The user.
        user: String,
        /// Add a group.
        #[arg(long)]
        add: Vec<String>,
        /// Remove a group.
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Set USER's e-mail address (or remove it with --clear).
    Email {
        /// The user.
        user: String,
        /// The address.
        #[arg(required_unless_present = "clear")]
        email: Option<String>,
        /// Remove the address.
        #[arg(long, conflicts_with = "email")]
        clear: bool,
    },
    /// Block sign-in and end every session of USER on every instance at once.
    Disable {
        /// The user.
        user: String,
    },
    /// Let a disabled USER sign in again, with the credentials they had (the only way to
    /// lift IT's own `disable`: the directory's SCIM `active: true` does not).
    Enable {
        /// The user.
        user: String,
    },
    /// Lost key: remove every credential and session of USER and print a new invite at the
    /// level the person was proofed for (after IT re-proofs them).
    Reset {
        /// The user.
        user: String,
        /// How long the new link works.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
    },
    /// Remove one credential of USER (the ID `list` shows).
    RevokeCredential {
        /// The user.
        user: String,
        /// The credential id.
        id: String,
    },
}

#[derive(clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check a `request_signed` event: the person's own key signed this request's digest.
    /// With --nonce, --method, --url (and --body), also check the digest against the
    /// request as the app recorded it. Exits 1 when anything does not verify.
    Verify {
        /// An audit log (JSON lines) or a file with the one event; `-` for standard input.
        log: PathBuf,
        /// Which event: its request digest (the app's `X-Aalgate-Request-Digest`). Needed
        /// when the log holds more than one `request_signed` event.
        #[arg(long)]
        digest: Option<String>,
        /// The request nonce the app received (`X-Aalgate-Request-Nonce`).
        #[arg(long, requires_all = ["method", "url", "host"])]
        nonce: Option<String>,
        /// The app's host (and port, when not the scheme's default) as the gateway serves it.
        #[arg(long, requires = "nonce")]
        host: Option<String>,
        /// The request's method.
        #[arg(long, requires = "nonce")]
        method: Option<String>,
        /// The request's path and query, as the app received them.
        #[arg(long, requires = "nonce")]
        url: Option<String>,
        /// A file with the body exactly as the app received it (omit for a request without
        /// a body).
        #[arg(long, requires = "nonce")]
        body: Option<PathBuf>,
        /// The WebAuthn RP id, when no --config is given (default: --origin's host).
        #[arg(long)]
        rp_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScimAction {
    /// Mint the provisioning token: its hash goes to the config's `scim.token_file` (an older
    /// token stops working once the gateway restarts or upgrades), the token is printed once,
    /// for the directory's provisioning settings (Entra ID: Secret Token; Okta: API token).
    Token {
        /// The gateway config with a `scim:` section.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a config file.
    Run {
        /// The gateway config (aalgate.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listeners of a running instance (then send it SIGQUIT): a graceful
        /// upgrade with no refused connections.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the gateway with the embedded store, the bundled demo app and policies/demo.yaml.
    Demo {
        /// Public listener (plain HTTP; open http://localhost:PORT/).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Where the demo app listens; must match the upstream in the demo policy.
        #[arg(long, default_value = "127.0.0.1:18080")]
        upstream_listen: SocketAddr,
        /// Embedded store and signing key.
        #[arg(long, default_value = ".aalgate-demo")]
        state_dir: PathBuf,
        /// Policy file or directory (default: policies/demo.yaml, or the copy built into the binary).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// PEM attestation root of hardware keys accepted for AAL3 (repeatable; with
        /// --hardware-key-aaguid). E.g. tests/fixtures/chromium-virtual-authenticator-ca.pem
        /// for Chrome DevTools' virtual security key.
        #[arg(long)]
        hardware_key_ca: Vec<PathBuf>,
        /// AAGUID of a hardware key model accepted for AAL3 (repeatable).
        #[arg(long)]
        hardware_key_aaguid: Vec<uuid::Uuid>,
        /// Trust Chrome DevTools' virtual security key as an AAL3 hardware key, for trying
        /// AAL3 without a real key. Its attestation key is public, so anyone can make such a
        /// "key": only with `demo`, and only on a loopback --listen.
        #[arg(long)]
        virtual_authenticators: bool,
    },
    /// Enroll and manage users (works beside a running gateway, with either store).
    Users(UsersArgs),
    /// Groups, with their members (`aalgate users groups USER --add G` changes them).
    Groups(GroupsArgs),
    /// Emergency access codes.
    Breakglass(BreakglassArgs),
    /// SCIM provisioning from the hospital's directory.
    Scim {
        #[command(subcommand)]
        action: ScimAction,
    },
    /// Compliance reports (enrollment, break-glass).
    Report(ReportArgs),
    /// Back up and restore the directory (people, credentials, groups).
    Store(StoreArgs),
    /// Audit evidence: verify a per-request signature offline.
    Audit(AuditArgs),
    /// Check policy files; print every problem as file:line:column: what; how to fix.
    Validate {
        /// Policy files or directories (default with --config: its `policies`).
        #[arg(required_unless_present = "config")]
        paths: Vec<PathBuf>,
        /// Also check the policies against this gateway config (its listeners and ports).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show which rule a request matches and what the gateway would decide.
    Explain(explain::ExplainArgs),
    /// Print the JSON Schema of policy files.
    Schema,
    /// Run only the bundled demo app (the upstream `demo` starts), e.g. as its own container.
    DemoApp {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = match format {
        // JSON strings escape control characters already.
        LogFormat::Json => builder.json().finish().with(QuietHandshakes).try_init(),
        LogFormat::Text => builder
            .fmt_fields(OneLineFields)
            .finish()
            .with(QuietHandshakes)
            .try_init(),
    };
}

/// Drops pingora's ERROR line for each client handshake that fails (a TLS client that hangs up
/// or rejects the certificate, a scanner, a broken HTTP/2 preface) and counts it in
/// `aalgate_client_handshake_failures_total`: anyone who can reach the port could otherwise
/// fill the log. pingora's other errors are kept. Likewise rustls's warnings, mostly about what
/// a peer sent (a client naming an IP address as the server name, as wrk does: one WARN per
/// handshake), are counted in `aalgate_tls_notices_total`, and only the first in a minute is
/// logged: one about an upstream's TLS still shows, a flood does not.
struct QuietHandshakes;

/// When a rustls warning was last let through (Unix seconds).
static TLS_NOTICE_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietHandshakes {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // pingora and rustls log through the `log` crate: their records arrive with the
        // target and the message as fields.
        let level = *event.metadata().level();
        if level == tracing::Level::WARN {
            let mut m = HandshakeMessage::default();
            event.record(&mut m);
            if m.rustls {
                use std::sync::atomic::Ordering;
                aalgate::metrics::TLS_NOTICES.inc();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let last = TLS_NOTICE_LOGGED.load(Ordering::Relaxed);
                return now >= last.saturating_add(60)
                    && TLS_NOTICE_LOGGED
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok();
            }
            return true;
        }
        if level != tracing::Level::ERROR {
            return true;
        }
        let mut m = HandshakeMessage::default();
        event.record(&mut m);
        let failed = m.pingora && m.handshake;
        if failed {
            aalgate::metrics::CLIENT_HANDSHAKE_FAILURES.inc();
        }
        !failed
    }
}

/// Whether an event is one of pingora's client handshake failures.
#[derive(Default)]
struct HandshakeMessage {
    pingora: bool,
    rustls: bool,
    handshake: bool,
}

impl tracing::field::Visit for HandshakeMessage {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.pingora = value.starts_with("pingora_core::");
            self.rustls = value.starts_with("rustls::");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.handshake =
                text.starts_with("Downstream handshake") || text.starts_with("H2 handshake error");
        }
    }
}

/// Text-log fields with every control character escaped (`\n`, `\r`, `\u{1b}`): a value from
/// a request (an error that quotes a JSON key, a header) can never start a log line of its own.
/// The `log.*` fields of records from the `log` crate (pingora's) are left out, as the default
/// formatter does.
struct OneLineFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for OneLineFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = OneLine {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct OneLine<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for OneLine<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let w = &mut self.writer;
        self.result = if field.name() == "message" {
            w.write_str(sep)
        } else {
            write!(w, "{sep}{}=", field.name())
        }
        // Escaped as it is written: no copy of the value is made.
        .and_then(|()| write!(Escaped(w), "{value:?}"));
    }
}

/// Writes through to `W` with every character that could start or disguise a line escaped:
/// controls, line and paragraph separators, bidi overrides and invisible format characters.
struct Escaped<'a, W: std::fmt::Write>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            if c.is_control()
                || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
            {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_lines, reason = "one arm per subcommand")]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, config } => return validate(paths, config.as_deref()),
        Command::Explain(mut args) => {
            if let (Some(user), Some(config), None) = (&args.user, &args.config, &args.groups) {
                let (user, config) = (user.clone(), config.clone());
                let groups = std::cell::RefCell::new(Vec::new());
                let read = block_on(async {
                    let (store, _) = cli_store(&Target {
                        config: Some(config),
                        state_dir: PathBuf::new(),
                        origin: String::new(),
                    })?;
                    let m = aalgate_auth::Directory::new(store).membership(&user).await?;
                    *groups.borrow_mut() = m.groups;
                    Ok(true)
                });
                if read != ExitCode::SUCCESS {
                    return read;
                }
                args.groups = Some(groups.into_inner());
            }
            explain::run(args)
        }
        Command::Schema => {
            print!("{}", aalgate_policy::file::json_schema());
            Ok(())
        }
        Command::Run { config, upgrade } => Config::load(&config).and_then(|mut c| {
            if let Some(f) = cli.log_format {
                c.log_format = f;
            }
            serve(c, None, upgrade)
        }),
        Command::DemoApp { listen } => demo_app(listen),
        Command::Users(args) => return block_on(users_run(args)),
        Command::Groups(args) => return block_on(groups_run(args)),
        Command::Breakglass(args) => return block_on(breakglass_run(args)),
        Command::Scim {
            action: ScimAction::Token { config },
        } => scim_token(&config),
        Command::Report(args) => return block_on(report_run(args)),
        Command::Store(args) => return block_on(store_run(args)),
        Command::Audit(args) => return block_on(audit_run(args)),
        Command::Demo {
            listen,
            admin_listen,
            upstream_listen,
            state_dir,
            policies,
            mut hardware_key_ca,
            mut hardware_key_aaguid,
            virtual_authenticators,
        } => demo_config(listen, admin_listen, state_dir.clone(), policies).and_then(|mut c| {
            if virtual_authenticators {
                let (ca, aaguid) = virtual_key(&state_dir, listen)?;
                hardware_key_ca.push(ca);
                hardware_key_aaguid.push(aaguid);
            }
            // Where the users and breakglass commands find this demo, from any directory.
            let state = std::fs::canonicalize(&state_dir).unwrap_or(state_dir);
            eprintln!(
                "aalgate demo: enroll yourself with\n  aalgate users --state-dir {} invite <user> --display-name \"<your name>\"",
                state.display()
            );
            if let Some(f) = cli.log_format {
                c.log_format = f;
            }
            c.hardware_keys = config::HardwareKeysConfig {
                aaguids: hardware_key_aaguid,
                attestation_ca: hardware_key_ca,
            };
            serve(c, Some(upstream_listen), false)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aalgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(paths: Vec<PathBuf>, config: Option<&Path>) -> ExitCode {
    let cfg = match config.map(Config::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aalgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let paths = match (&cfg, paths.is_empty()) {
        (Some(c), true) => c.policies.clone(),
        _ => paths,
    };
    match aalgate::policy_files::load(&paths) {
        Ok(set) => {
            for w in set.warnings() {
                println!("{w}");
            }
            if let Some(c) = &cfg {
                for w in aalgate::store_config::store_warnings(&c.store) {
                    println!("{w}");
                }
                let problems = config::listener_problems(&set, &c.listen);
                for p in &problems {
                    println!("{p}");
                }
                let n = problems
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                if n > 0 {
                    eprintln!("aalgate: {n} error(s) against the gateway config; the policy set was not accepted");
                    return ExitCode::FAILURE;
                }
                for w in unknown_names(&set, config.unwrap_or(Path::new(""))) {
                    println!("{w}");
                }
            }
            for app in set.apps() {
                println!(
                    "ok: {} ({}): host {} -> {}://{}, {} route(s), default {}",
                    app.name,
                    app.source.file.display(),
                    app.host,
                    if app.upstream.tls { "https" } else { "http" },
                    app.upstream.address(),
                    app.route_count,
                    app.default
                );
            }
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let n = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("aalgate: {n} error(s); the policy set was not accepted");
            ExitCode::FAILURE
        }
    }
}

/// Warnings for `allow` names no directory entry has (a typo, or a person not invited yet):
/// the config's store is read; if it cannot be, one warning says so.
fn unknown_names(set: &aalgate_policy::PolicySet, config: &Path) -> Vec<String> {
    let target = Target {
        config: Some(config.to_path_buf()),
        state_dir: PathBuf::new(),
        origin: String::new(),
    };
    let known = std::cell::RefCell::new(None);
    let read = block_on(async {
        let (store, _) = cli_store(&target)?;
        let dir = aalgate_auth::Directory::new(store);
        let mut users: std::collections::BTreeSet<String> =
            dir.users().await?.into_iter().map(|u| u.id).collect();
        let memberships = dir.memberships().await?;
        users.extend(memberships.keys().cloned());
        let groups: std::collections::BTreeSet<String> =
            memberships.into_values().flat_map(|m| m.groups).collect();
        *known.borrow_mut() = Some((users, groups));
        Ok(true)
    });
    let Some((users, groups)) = known.into_inner().filter(|_| read == ExitCode::SUCCESS) else {
        return vec![format!(
            "{}: warning: the directory could not be read, so the names in allow were not checked; check that the store is up",
            config.display()
        )];
    };
    let mut out = Vec::new();
    let mut said = std::collections::BTreeSet::new();
    for rule in set.rules() {
        for a in &rule.access.allow {
            for u in a.users.iter().filter(|u| !users.contains(*u)) {
                if said.insert(("user", u.clone())) {
                    out.push(format!("{}: warning: allow names user {u}, whom the directory does not know; invite them (aalgate users invite {u}) or correct the name", rule.source));
                }
            }
            for g in a.groups.iter().filter(|g| !groups.contains(*g)) {
                if said.insert(("group", g.clone())) {
                    out.push(format!("{}: warning: allow names group {g}, which nobody is in; add people (aalgate users groups USER --add {g}) or correct the name", rule.source));
                }
            }
        }
    }
    out
}

const DEMO_POLICY: &str = include_str!("../../../policies/demo.yaml");

fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    state_dir: PathBuf,
    policies: Option<PathBuf>,
) -> Result<Config> {
    if !listen.ip().is_loopback() {
        bail!("demo listens on loopback only (plain HTTP); use `aalgate run` with TLS for anything else");
    }
    let policies = match policies {
        Some(p) => p,
        None if Path::new("policies/demo.yaml").is_file() => PathBuf::from("policies/demo.yaml"),
        None => {
            let p = state_dir.join("demo.yaml");
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("cannot create {}", state_dir.display()))?;
            std::fs::write(&p, DEMO_POLICY)
                .with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    Ok(Config {
        scim: None,
        state_dir: state_dir.clone(),
        listen: vec![Listener {
            addr: listen,
            tls: None,
            name: "public".into(),
            external_port: listen.port(),
            default_port: 80,
            http2: false,
        }],
        admin_listen: Some(admin),
        public_origin: format!("http://localhost:{}", listen.port()),
        public_host: aalgate_policy::HostPort {
            host: "localhost".into(),
            port: Some(listen.port()),
        },
        store: StoreSpec::Embedded(state_dir.clone()),
        store_timeout: config::DEFAULT_EMBEDDED_STORE_TIMEOUT,
        policies: vec![policies],
        signing_key: state_dir.join("signing-key.pem"),
        threads: 2,
        log_format: LogFormat::Text,
        audit: config::AuditConfig::default(),
        upgrade_sock: state_dir.join("upgrade.sock"),
        session_count_interval: config::DEFAULT_SESSION_COUNT_INTERVAL,
        rp_id: "localhost".into(),
        hardware_keys: config::HardwareKeysConfig::default(),
        breakglass: aalgate::breakglass::BreakGlassConfig::in_dir(&state_dir),
        preserve_body_limit: aalgate::preserve::DEFAULT_BODY_LIMIT,
        request_key: state_dir.join("request-key"),
        preserve_quota: (
            aalgate::preserve::DEFAULT_QUOTA,
            aalgate::preserve::DEFAULT_PERSON_QUOTA,
        ),
        preserve_concurrent_reads: aalgate::preserve::DEFAULT_CONCURRENT_READS,
        flows_per_client_per_minute: aalgate::limits::DEFAULT_FLOWS_PER_CLIENT_PER_MINUTE,
        anonymous_state_quota: aalgate::limits::DEFAULT_ANONYMOUS_STATE_QUOTA,
        trusted_proxies: Vec::new(),
        upstream_connect_timeout: config::DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        upstream_timeout: config::DEFAULT_UPSTREAM_TIMEOUT,
        client_timeout: config::DEFAULT_CLIENT_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        clock_floor: state_dir.join("clock-floor"),
        hsts: true,
        identity_providers: Vec::new(),
    })
}

/// Deletes expired records of the embedded store once a minute (with the side files of kept
/// forms), and reports its size on disk.
struct Purge(EmbeddedStore, Arc<metrics::Metrics>);

#[async_trait::async_trait]
impl BackgroundService for Purge {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.0.purge_expired(aalgate_policy::Timestamp::wall()).await {
                        tracing::warn!(error = %e, "purging expired sessions failed");
                    }
                    self.1.embedded_store_bytes.set(self.0.disk_bytes() as i64);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How long a stopping gateway still waits for the first request on connections it has
/// accepted (the graceful upgrade's old process, or SIGTERM's grace period) before it drops
/// the idle ones.
const DRAIN_FRESH_CONNECTIONS: Duration = Duration::from_secs(1);

/// The proxy, with one change to how it stops: pingora drops every connection that is waiting
/// for a request as soon as its listeners stop, including one accepted a moment before whose
/// request is still on its way, which the client then sees closed unanswered. Waiting
/// [`DRAIN_FRESH_CONNECTIONS`] first lets those be served (without keep-alive).
struct Draining<A>(Arc<A>);

#[async_trait::async_trait]
impl<A> pingora::apps::HttpServerApp for Draining<A>
where
    A: pingora::apps::HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: pingora::protocols::http::ServerSession,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        self.0.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.0.h2_options()
    }

    fn server_options(&self) -> Option<&pingora::apps::HttpServerOptions> {
        self.0.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(DRAIN_FRESH_CONNECTIONS).await;
        self.0.http_cleanup().await;
    }
}

/// Sessions (and assertions) kept in memory: about 1 KiB each, so 64 MiB at most.
const SESSION_CACHE_CAPACITY: usize = 65_536;

fn demo_app(listen: SocketAddr) -> Result<()> {
    init_logging(LogFormat::Text);
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut app = Service::new("demo billing app".to_string(), demo::DemoBilling);
    app.add_tcp(&listen.to_string());
    server.add_service(app);
    tracing::info!(%listen, "demo app started");
    server.run_forever();
}

#[allow(
    clippy::too_many_lines,
    reason = "the process's assembly, service by service"
)]
fn serve(cfg: Config, demo_upstream: Option<SocketAddr>, upgrade: bool) -> Result<()> {
    init_logging(cfg.log_format);
    let metrics = Arc::new(metrics::Metrics::new().context("cannot register metrics")?);
    let audit = Arc::new(audit::Audit::start(
        cfg.audit.sink.clone(),
        &cfg.audit.redact,
        cfg.audit.requests,
        metrics.clone(),
    )?);
    let policies = Arc::new(ops::Policies::load(
        cfg.policies.clone(),
        cfg.listen.clone(),
        metrics.clone(),
        audit.clone(),
    )?);
    // The gateway's clock, which the embedded store times its records by too.
    let clock = Arc::new(aalgate::clock::Clock::system());
    clock.load_floor(&cfg.clock_floor);
    for w in aalgate::store_config::store_warnings(&cfg.store) {
        tracing::warn!("{}", w.trim_start_matches("warning: "));
    }
    let (raw_store, embedded): (Arc<dyn SessionStore>, Option<EmbeddedStore>) = match &cfg.store {
        StoreSpec::Embedded(dir) => {
            let s = EmbeddedStore::open(dir)
                .with_context(|| format!("embedded store in {}", dir.display()))?
                .with_clock(clock.clone());
            (Arc::new(s.clone()), Some(s))
        }
        StoreSpec::Redis(r) => (Arc::new(RedisStore::with_config(r)?), None),
    };
    let scan_store = raw_store.clone();
    let deadline: Arc<dyn SessionStore> = Arc::new(Deadline::new(raw_store, cfg.store_timeout));
    let store: Arc<dyn SessionStore> = Arc::new(ops::Instrumented {
        inner: deadline,
        metrics: metrics.clone(),
    });
    let sealer = aalgate::preserve::Sealer::load_or_create(&cfg.request_key)?;
    // Decoy credentials come from the request key, which instances sharing the store share.
    let decoy_key = {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(&cfg.request_key)
            .with_context(|| format!("cannot read {}", cfg.request_key.display()))?;
        let d = Sha256::new()
            .chain_update(b"aalgate decoy key\0")
            .chain_update(&bytes)
            .finalize();
        <[u8; 32]>::from(d)
    };
    let rp =
        aalgate_auth::Ceremonies::new(&cfg.rp_id, &cfg.public_origin, &cfg.hardware_keys.load()?)
            .context("WebAuthn settings (public_origin, rp_id, hardware_keys)")?
            .with_decoy_key(decoy_key);
    let signin = Arc::new(aalgate::proxy::SignInService {
        dir: aalgate_auth::Directory::new(store.clone()),
        rp,
        scheme: if cfg.public_origin.starts_with("https://") {
            "https"
        } else {
            "http"
        },
        breakglass: cfg.breakglass.clone(),
        emergencies: Default::default(),
        failures: Default::default(),
        sealer,
        body_limit: cfg.preserve_body_limit,
        quota: cfg.preserve_quota,
        reads: tokio::sync::Semaphore::new(cfg.preserve_concurrent_reads),
        flow_limiter: aalgate::limits::FlowLimiter::new(cfg.flows_per_client_per_minute),
        anonymous_quota: cfg.anonymous_state_quota,
        trusted_proxies: cfg.trusted_proxies.clone(),
        decoy_load: Default::default(),
        federation: aalgate::federation::Federation::load(&cfg.identity_providers)?,
        origin: cfg.public_origin.clone(),
        scim: cfg
            .scim
            .as_ref()
            .map(aalgate::provisioning::ScimAccess::load)
            .transpose()?,
    });
    // A made-up break-glass code waits as long as a real check from the first attempt on.
    signin.emergencies.calibrate();
    let signer = Arc::new(assertion::Signer::load_or_create(
        &cfg.signing_key,
        &cfg.public_origin,
    )?);

    let conf = ServerConf {
        threads: cfg.threads,
        grace_period_seconds: Some(cfg.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: cfg.upgrade_sock.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let gw = proxy::Gateway::new(proxy::State {
        policies: policies.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        sessions: cache::SessionCache::new(SESSION_CACHE_CAPACITY),
        assertions: cache::AssertionCache::new(
            SESSION_CACHE_CAPACITY,
            assertion::ASSERTION_LIFETIME,
        ),
        last_use: cache::LastUse::new(SESSION_CACHE_CAPACITY),
        store: store.clone(),
        signer,
        public_host: cfg.public_host.clone(),
        signin: signin.clone(),
        upstream_timeouts: (cfg.upstream_connect_timeout, cfg.upstream_timeout),
        client_timeout: cfg.client_timeout,
        listeners: cfg.listen.clone(),
        hsts: cfg.hsts,
        clock: clock.clone(),
        read_ahead: tokio::sync::Semaphore::new(aalgate::state::READ_AHEAD_SLOTS),
    });
    let mut inner = pingora::proxy::HttpProxy::new(gw, server.configuration.clone());
    inner.handle_init_modules();
    // An HTTP/2 connection with no stream open is closed after the client timeout, as an idle
    // HTTP/1.1 one is. pingora's h2 defaults already bound a connection: 100 concurrent
    // streams, a 64 KiB header list, 32 malformed streams; h2c stays off.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(cfg.client_timeout);
    inner.server_options = Some(options);
    let mut proxy = Service::new(
        "Pingora HTTP Proxy Service".to_string(),
        Draining(Arc::new(inner)),
    );
    // Writes to browsers are not held in a buffer: pingora buffers a response with a
    // Content-Length until 1460 bytes or its end, so a slow app's first bytes (a report that
    // streams, a page that flushes its head early) would wait for the rest. The request side
    // keeps pingora's read buffer.
    let unbuffered = pingora::listeners::L4BufferSettings::default().write(0);
    for l in &cfg.listen {
        let addr = l.addr.to_string();
        let endpoint = pingora::listeners::ListenerConfig::tcp(addr.as_str()).l4_buffer(unbuffered);
        let endpoint = match &l.tls {
            None => endpoint,
            Some((cert, key)) => {
                let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
                let mut tls = pingora::listeners::tls::TlsSettings::intermediate(&c, &k)
                    .map_err(|e| anyhow::anyhow!("TLS listener {addr}: {e}"))?;
                if l.http2 {
                    // ALPN offers h2 and http/1.1; a client that offers neither gets HTTP/1.1.
                    tls.enable_h2();
                } else {
                    // Named, as nginx does: a client offering both learns it got HTTP/1.1.
                    tls.set_alpn(pingora::protocols::ALPN::H1);
                }
                endpoint.tls(tls)
            }
        };
        proxy.add_listener(endpoint);
    }
    server.add_service(proxy);

    if let Some(addr) = cfg.admin_listen {
        let mut admin = Service::new(
            "aalgate admin".to_string(),
            admin::Admin {
                store: store.clone(),
                metrics: metrics.clone(),
            },
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "aalgate decoy refresh",
        aalgate::proxy::DecoyRefresh {
            service: signin.clone(),
            dir: aalgate_auth::Directory::new(Arc::new(Deadline::new(
                scan_store.clone(),
                Duration::from_secs(30),
            ))),
        },
    ));
    server.add_service(background_service(
        "aalgate policy reload",
        ops::Reloader(policies.clone()),
    ));
    server.add_service(background_service(
        "aalgate store monitor",
        ops::StoreMonitor {
            store: store.clone(),
            policies: policies.clone(),
            metrics: metrics.clone(),
            count_every: cfg.session_count_interval,
            clock_floor: cfg.clock_floor.clone(),
            clock: clock.clone(),
        },
    ));
    if let Some(e) = embedded {
        server.add_service(background_service(
            "aalgate purge",
            Purge(e, metrics.clone()),
        ));
    }
    if let Some(addr) = demo_upstream {
        let mut app = Service::new("demo billing app".to_string(), demo::DemoBilling);
        app.add_tcp(&addr.to_string());
        server.add_service(app);
    }

    let listen: Vec<String> = cfg
        .listen
        .iter()
        .map(|l| {
            format!(
                "{}{}",
                if l.tls.is_some() {
                    "https://"
                } else {
                    "http://"
                },
                l.addr
            )
        })
        .collect();
    tracing::info!(
        listen = ?listen,
        admin = ?cfg.admin_listen.map(|a| a.to_string()),
        store = %match &cfg.store { StoreSpec::Embedded(d) => format!("embedded:{}", d.display()), StoreSpec::Redis(_) => "redis".to_string() },
        apps = policies.snapshot().apps().len(),
        upgrade,
        "aalgate started"
    );
    if demo_upstream.is_some() {
        tracing::info!(
            "demo: open http://localhost:{}/ (the demo app is on {})",
            cfg.listen[0].addr.port(),
            demo_upstream.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    server.run(pingora::server::RunArgs::default());
    // Every request event queued until the last request ended is written before the exit
    // (SIGTERM, SIGQUIT after an upgrade).
    audit.drain();
    std::process::exit(0)
}

/// Opens the store named by a config (or the demo's) for the CLI.
fn cli_store(args: &Target) -> Result<(Arc<dyn SessionStore>, String)> {
    let (spec, origin, timeout) = match &args.config {
        Some(path) => {
            let c = Config::load(path)?;
            (c.store, c.public_origin, c.store_timeout)
        }
        None => (
            StoreSpec::Embedded(demo_state(args)?),
            args.origin.trim_end_matches('/').to_string(),
            config::DEFAULT_EMBEDDED_STORE_TIMEOUT,
        ),
    };
    // The CLI is not on a request path: a generous deadline, still bounded.
    let timeout = timeout.max(Duration::from_secs(5));
    let store: Arc<dyn SessionStore> = match spec {
        StoreSpec::Embedded(dir) => Arc::new(
            EmbeddedStore::open(&dir)
                .with_context(|| format!("embedded store in {}", dir.display()))?,
        ),
        StoreSpec::Redis(mut r) => {
            r.timeout = timeout;
            Arc::new(RedisStore::with_config(&r)?)
        }
    };
    Ok((Arc::new(Deadline::new(store, timeout)), origin))
}

/// Runs an admin command; `Ok(false)` means "finished, but report failure" (exit 1).
/// `aalgate scim token`.
fn scim_token(config: &Path) -> Result<()> {
    let c = Config::load(config)?;
    let Some(scim) = c.scim else {
        bail!(
            "{} has no scim: section; add `scim: {{ token_file: scim-token.sha256, client: entra }}`",
            config.display()
        );
    };
    let token = aalgate::provisioning::mint(&scim.token_file)?;
    eprintln!(
        "wrote the token's hash to {}; restart (or upgrade) the gateway to use it. The token, shown once:",
        scim.token_file.display()
    );
    println!("{token}");
    Ok(())
}

fn block_on(f: impl std::future::Future<Output = Result<bool>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aalgate: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("aalgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn breakglass_config(t: &Target) -> Result<aalgate::breakglass::BreakGlassConfig> {
    Ok(match &t.config {
        Some(path) => Config::load(path)?.breakglass,
        None => aalgate::breakglass::BreakGlassConfig::in_dir(&demo_state(t)?),
    })
}

/// The attestation root and AAGUID of Chromium's DevTools virtual security key, written into
/// the demo's state directory (the demo runs from any directory). Refused off loopback: the
/// root's private key is public, so the "key" proves nothing about hardware.
fn virtual_key(state_dir: &Path, listen: SocketAddr) -> Result<(PathBuf, uuid::Uuid)> {
    if !listen.ip().is_loopback() {
        bail!(
            "--virtual-authenticators trusts a key anyone can make (its attestation key is \
             public): only on a loopback --listen such as 127.0.0.1:8080, not {listen}"
        );
    }
    const CA: &str = include_str!("../../../tests/fixtures/chromium-virtual-authenticator-ca.pem");
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let path = state_dir.join("chromium-virtual-authenticator-ca.pem");
    std::fs::write(&path, CA).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((
        path,
        uuid::Uuid::from_u128(0x0102_0304_0506_0708_0102_0304_0506_0708),
    ))
}

/// The demo's state directory, for a command without `--config`: only one a demo made. A
/// command run elsewhere must not create an empty store whose invites the running demo never
/// sees.
fn demo_state(t: &Target) -> Result<PathBuf> {
    if t.state_dir.join("sessions.redb").is_file() {
        return Ok(t.state_dir.clone());
    }
    let here = std::env::current_dir().unwrap_or_default();
    bail!(
        "no demo gateway state in {}: nothing was created. Run the command in the directory where \
         `aalgate demo` runs (the demo prints the exact command when it starts), or name the \
         demo's state with --state-dir <dir>, or a configured gateway with --config <aalgate.yaml>",
        here.join(&t.state_dir).display()
    )
}

/// A duration as people write it: "1 day", "10 minutes", "1 day 2 hours" (humantime's own
/// display is "1day").
fn in_words(d: std::time::Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (unit, secs) in [
        ("day", 86_400),
        ("hour", 3_600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = left / secs;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
            left %= secs;
        }
    }
    if parts.is_empty() {
        "0 seconds".to_string()
    } else {
        parts.join(" ")
    }
}

async fn breakglass_run(args: BreakglassArgs) -> Result<bool> {
    let cfg = breakglass_config(&args.target)?;
    match args.action {
        BreakglassAction::Create { name, ttl } => {
            // The log first: a code that passes every `allow` must not exist unrecorded.
            let audit = cli_audit(&args.target)?;
            let (code, secret) = aalgate::breakglass::create(&cfg, &name, ttl.into())?;
            // Shown before the record, which may fail: a code nobody holds helps nobody.
            println!("{secret}");
            audit_change(
                &audit,
                "breakglass_code_created",
                &format!("breakglass:{}", code.id),
                format!("code {} ({name}), valid {}", code.id, in_words(ttl.into())),
            )
            .await?;
            eprintln!(
                "Emergency code {} ({}) created; it grants {} of break-glass access, once. It is shown only now: seal it in the envelope or the password manager. Used at /.aalgate/breakglass on any app host.",
                code.id,
                code.name,
                in_words(ttl.into())
            );
        }
        BreakglassAction::Review { id, note } => {
            let audit = cli_audit(&args.target)?;
            let c = aalgate::breakglass::review(&cfg, &id, &note)?;
            audit_change(
                &audit,
                "breakglass_reviewed",
                &format!("breakglass:{}", c.id),
                format!("review of use of code {} ({}) recorded", c.id, c.name),
            )
            .await?;
            println!("review of break-glass use {} ({}) recorded", c.id, c.name);
        }
    }
    Ok(true)
}

fn csv_field(s: &str) -> String {
    // A leading = + - @ would run as a formula in a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The access report in `format`; problems and warnings go to standard error too.
#[allow(clippy::too_many_lines, reason = "one arm per format")]
fn print_access(r: &aalgate::report::AccessReport, format: Format, unused: bool) {
    match format {
        Format::Json => println!("{}", serde_json::json!(r)),
        Format::Csv => {
            println!("kind,app,route,require,user,via,last_use");
            for route in &r.routes {
                if !route.restricted {
                    println!(
                        "route,{},{},{},,{},",
                        csv_field(&route.app),
                        csv_field(&route.route),
                        route.require,
                        if route.require == "public" {
                            "anyone (public)"
                        } else if route.require == "deny" {
                            "nobody (deny)"
                        } else {
                            "anyone signed in"
                        }
                    );
                }
                for g in &route.people {
                    println!(
                        "route,{},{},{},{},{} ({}),",
                        csv_field(&route.app),
                        csv_field(&route.route),
                        route.require,
                        csv_field(&g.user),
                        g.via,
                        g.status
                    );
                }
            }
            for p in &r.people {
                for a in &p.apps {
                    println!(
                        "person,{},,,{},{},{}",
                        csv_field(&a.app),
                        csv_field(&p.user),
                        if a.explicit {
                            "allow"
                        } else {
                            "anyone signed in"
                        },
                        a.last_use.as_deref().unwrap_or("")
                    );
                }
            }
            for u in &r.unused {
                println!("unused,,,,{},{},", csv_field(&u.user), csv_field(&u.via));
            }
        }
        Format::Table => {
            println!("ROUTES");
            for route in &r.routes {
                let who = if route.require == "public" {
                    "anyone, without signing in".to_string()
                } else if route.require == "deny" {
                    "nobody".to_string()
                } else if !route.restricted {
                    "anyone signed in".to_string()
                } else if route.people.is_empty() {
                    "nobody the directory knows".to_string()
                } else {
                    route
                        .people
                        .iter()
                        .map(|g| {
                            let mut why: Vec<&str> = Vec::new();
                            if g.via != "user" {
                                why.push(&g.via);
                            }
                            if g.status != "active" {
                                why.push(g.status);
                            }
                            if why.is_empty() {
                                g.user.clone()
                            } else {
                                format!("{} ({})", g.user, why.join(", "))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "  {} {} [{}{}]: {who}{}  ({})",
                    route.app,
                    route.route,
                    route.require,
                    route
                        .step_up
                        .as_deref()
                        .map(|s| format!(", step-up {s}"))
                        .unwrap_or_default(),
                    if route.breakglass {
                        "; and break-glass codes"
                    } else {
                        ""
                    },
                    route.source
                );
            }
            println!("\nPEOPLE");
            for p in &r.people {
                println!(
                    "  {} ({}, max {}, groups: {})",
                    p.user,
                    p.status,
                    p.max_aal.as_deref().unwrap_or("none"),
                    if p.groups.is_empty() {
                        "none".to_string()
                    } else {
                        p.groups.join(", ")
                    }
                );
                for a in &p.apps {
                    println!(
                        "    {:<20} last use {}",
                        a.app,
                        a.last_use.as_deref().unwrap_or("never")
                    );
                }
            }
            if unused {
                println!("\nUNUSED GRANTS");
                if r.unused.is_empty() {
                    println!("  none");
                }
                for u in &r.unused {
                    println!("  {} on {}", u.user, u.via);
                }
            }
        }
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    for f in &r.failures {
        eprintln!("FAIL: {f}");
    }
}

#[allow(clippy::too_many_lines, reason = "one report per subcommand")]
async fn report_run(args: ReportArgs) -> Result<bool> {
    let now = aalgate_policy::Timestamp::wall();
    match args.action {
        ReportAction::Enrollment { format } => {
            let (store, _) = cli_store(&args.target)?;
            let dir = aalgate_auth::Directory::new(store);
            let rows = aalgate::report::enrollment(&dir, now).await?;
            let summary = aalgate::report::summary(&rows);
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({ "users": rows, "summary": summary })
                ),
                Format::Csv => {
                    println!("user,status,passkeys,security_keys,max_aal,last_login");
                    for r in &rows {
                        println!(
                            "{},{},{},{},{},{}",
                            csv_field(&r.user),
                            r.status,
                            r.passkeys,
                            r.security_keys,
                            r.max_aal.as_deref().unwrap_or(""),
                            r.last_login.as_deref().unwrap_or("")
                        );
                    }
                }
                Format::Table => {
                    println!(
                        "{:<24} {:<15} {:>8} {:>13} {:<8} LAST LOGIN",
                        "USER", "STATUS", "PASSKEYS", "SECURITY KEYS", "MAX AAL"
                    );
                    for r in &rows {
                        println!(
                            "{:<24} {:<15} {:>8} {:>13} {:<8} {}",
                            r.user,
                            r.status,
                            r.passkeys,
                            r.security_keys,
                            r.max_aal.as_deref().unwrap_or("none"),
                            r.last_login.as_deref().unwrap_or("-")
                        );
                    }
                    println!(
                        "\n{} active user(s); {:.1}% with MFA (AAL2 or higher); {} active without.",
                        summary.active, summary.mfa_percent, summary.active_without_mfa
                    );
                }
            }
            Ok(summary.active_without_mfa == 0)
        }
        ReportAction::Access {
            format,
            app,
            unused,
            policies,
        } => {
            let paths = if !policies.is_empty() {
                policies
            } else if let Some(c) = &args.target.config {
                Config::load(c)?.policies
            } else {
                vec![PathBuf::from("policies/demo.yaml")]
            };
            let set = aalgate::policy_files::load(&paths).map_err(|diags| {
                for d in &diags {
                    eprintln!("{d}");
                }
                anyhow::anyhow!("the policy set has errors")
            })?;
            let (store, _) = cli_store(&args.target)?;
            let dir = aalgate_auth::Directory::new(store.clone());
            let users = dir.users().await?;
            let memberships = dir.memberships().await?;
            let mut last_use = std::collections::BTreeMap::new();
            for (k, v) in store.kv_list(aalgate::cache::LAST_USE_NS).await? {
                let (Some((u, a)), Some(t)) = (
                    k.split_once(' '),
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                last_use.insert((u.to_string(), a.to_string()), aalgate_policy::Timestamp(t));
            }
            let report = aalgate::report::access(&aalgate::report::AccessInput {
                policy: &set,
                users: &users,
                memberships: &memberships,
                last_use: &last_use,
                app: app.as_deref(),
                unused: unused.map(Into::into),
                now,
            });
            print_access(&report, format, unused.is_some());
            Ok(report.failures.is_empty())
        }
        ReportAction::Breakglass { since, format } => {
            let cfg = breakglass_config(&args.target)?;
            let rows =
                aalgate::report::breakglass(&aalgate::breakglass::codes(&cfg)?, now, since.into());
            match format {
                Format::Json => println!("{}", serde_json::json!({ "uses": rows })),
                Format::Csv => {
                    println!("code,name,time,person,reason,app,reviewed,overdue");
                    for r in &rows {
                        println!(
                            "{},{},{},{},{},{},{},{}",
                            r.code,
                            csv_field(&r.name),
                            r.time,
                            csv_field(&r.person),
                            csv_field(&r.reason),
                            r.app,
                            r.reviewed,
                            r.overdue
                        );
                    }
                }
                Format::Table => {
                    if rows.is_empty() {
                        println!("no break-glass use in the period");
                    }
                    for r in &rows {
                        let state = if r.reviewed {
                            "reviewed"
                        } else if r.overdue {
                            "NOT REVIEWED AFTER 24 H"
                        } else {
                            "review due"
                        };
                        println!(
                            "{}  code {} ({})  by {}  for {}  reason: {}  {}",
                            r.time, r.code, r.name, r.person, r.app, r.reason, state
                        );
                    }
                }
            }
            Ok(!rows.iter().any(|r| r.overdue))
        }
    }
}

fn fmt_time(t: Option<aalgate_policy::Timestamp>) -> String {
    t.map(aalgate::report::rfc3339)
        .unwrap_or_else(|| "-".into())
}

/// `aalgate audit verify`: finds the event, the person's credential in the directory, and
/// checks the signature, the challenge's derivation, the origin and RP id, and optionally the
/// digest against the app's record of the request.
#[allow(
    clippy::too_many_lines,
    reason = "the audit subcommands: verify and its report"
)]
async fn audit_run(args: AuditArgs) -> Result<bool> {
    use aalgate_auth::signing::{self, Evidence};
    use std::io::BufRead;
    let AuditAction::Verify {
        log,
        digest,
        nonce,
        host,
        method,
        url,
        body,
        rp_id,
    } = args.action;
    // Read line by line: an audit log can be large.
    let reader: Box<dyn BufRead> = if log.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&log).with_context(|| format!("reading {}", log.display()))?,
        ))
    };
    #[derive(serde::Deserialize)]
    struct Line {
        event: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        time: Option<String>,
        #[serde(default)]
        evidence: Option<Evidence>,
    }
    let mut events: Vec<Line> = Vec::new();
    // Bytes, not UTF-8 lines: a line a full disk cut short may end inside a character.
    for (n, raw) in reader.split(b'\n').enumerate() {
        let raw = raw.with_context(|| format!("reading {}", log.display()))?;
        let line = String::from_utf8_lossy(&raw);
        if !line.contains("\"request_signed\"") {
            continue;
        }
        // A request_signed event that does not parse is an error, never skipped, unless it is
        // a line cut short that is not the one asked for.
        let Ok(l) = serde_json::from_str::<Line>(line.trim()) else {
            let other = digest.as_deref().is_some_and(|d| !line.contains(d));
            if line.contains("\"event\":\"request_signed\"") && other {
                eprintln!(
                    "warning: {}:{}: a damaged request_signed line (a write cut short?), not the one asked for: skipped",
                    log.display(),
                    n + 1
                );
                continue;
            }
            if line.contains("\"event\":\"request_signed\"") {
                bail!(
                    "{}:{}: a request_signed event this aalgate cannot read (newer format, or damaged)",
                    log.display(),
                    n + 1
                );
            }
            continue;
        };
        if l.event != "request_signed" {
            continue;
        }
        let Some(e) = &l.evidence else {
            bail!(
                "{}:{}: a request_signed event without evidence",
                log.display(),
                n + 1
            );
        };
        if digest.as_deref().is_none_or(|d| e.digest == d) {
            events.push(l);
        }
    }
    // Several events of one digest: the same request signed again (the first touch was not on
    // record when it happened, and only the last was admitted); each is checked.
    match events.len() {
        0 => bail!(
            "{}: no request_signed event{}",
            log.display(),
            digest
                .as_deref()
                .map(|d| format!(" with digest {d}"))
                .unwrap_or_default()
        ),
        1 => {}
        n if digest.is_none() => bail!(
            "{}: {n} request_signed events; pick one with --digest (the app's X-Aalgate-Request-Digest)",
            log.display()
        ),
        _ => {}
    }
    let (origin, rp_id) = match &args.target.config {
        Some(path) => {
            if rp_id.is_some() {
                bail!("--rp-id is for use without --config: the config's rp_id is used; drop one of them");
            }
            let c = Config::load(path)?;
            (c.public_origin, c.rp_id)
        }
        None => {
            let o = args.target.origin.trim_end_matches('/').to_string();
            let host = url::Url::parse(&o)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .context("--origin is not a URL")?;
            (o, rp_id.unwrap_or(host))
        }
    };
    let (store, _) = cli_store(&args.target)?;
    let dir = aalgate_auth::Directory::new(store);
    let body = match &body {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut all_ok = true;
    for line in &events {
        let Some(e) = &line.evidence else {
            bail!("the event has no evidence");
        };
        let Some(user) = &line.user else {
            bail!("the event names no user");
        };
        let Some(person) = dir.user(user).await? else {
            bail!("user {user} is not in the directory (removed?): the public key is gone");
        };
        let Some(cred) = person.credentials.iter().find(|c| c.id == e.credential_id) else {
            bail!(
                "credential {} is not one of {user}'s (revoked and removed, or never theirs)",
                e.credential_id
            );
        };
        let request = nonce.as_deref().map(|n| signing::Recorded {
            nonce: n,
            method: method.as_deref().unwrap_or(""),
            host: host.as_deref().unwrap_or(""),
            url: url.as_deref().unwrap_or(""),
            body: body.as_deref(),
        });
        match signing::verify(e, &cred.key, &rp_id, &origin, request) {
            Ok(()) => {
                // Method and path come from the signed evidence; the time is the log's.
                println!(
                "ok: {} {} was approved by {user} with credential {} ({}, {}); logged at {}; digest {}{}",
                e.method,
                e.path,
                cred.audit_id(),
                cred.kind.as_str(),
                cred.aal.as_str(),
                line.time.as_deref().unwrap_or("-"),
                e.digest,
                if request.is_some() {
                    "; the request given hashes to it"
                } else {
                    ""
                }
            );
            }
            Err(err) => {
                println!("FAILED: {err}");
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

/// Who runs the CLI, for the audit log: the account of the process's uid (from the system's
/// user database, not from the environment, which the operator could set), and behind `sudo`
/// the `SUDO_UID` it was started from.
fn operator() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = |uid: u32| account_name(uid).unwrap_or_else(|| "?".into());
    // The uid the person logged in with: the kernel keeps it through sudo and su, and the
    // process cannot change it (unset: 4294967295). Else what sudo says.
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|l| *l != u32::MAX);
    let sudo = std::env::var("SUDO_UID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    match login.or(sudo).filter(|by| *by != uid) {
        Some(by) => format!("{} (uid {by}, acting as {} uid {uid})", name(by), name(uid)),
        None => format!("{} (uid {uid})", name(uid)),
    }
}

/// The login name of `uid` in the system's user database.
fn account_name(uid: u32) -> Option<String> {
    // SAFETY: a zeroed passwd is a valid value to pass for filling in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: every pointer is valid for the call; `out` is null or points at `pwd`, whose
        // strings live in `buf`, which outlives the read below.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
        // A large entry: a bigger buffer, up to 1 MiB.
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return None;
        }
        break;
    }
    if out.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// A membership in words, for the CLI.
fn describe(m: &aalgate_auth::model::Membership) -> String {
    format!(
        "groups {}; e-mail {}",
        if m.groups.is_empty() {
            "none".to_string()
        } else {
            m.groups.join(",")
        },
        m.email.as_deref().unwrap_or("none")
    )
}

/// The audit log of the CLI's changes: the gateway's own output when it is a file or syslog;
/// when the gateway writes to its standard output or error (which the CLI cannot reach),
/// `<state_dir>/audit-cli.jsonl`. Returns the log and where it goes.
fn cli_audit(t: &Target) -> Result<(aalgate::audit::Audit, String)> {
    let (sink, redact, state) = match &t.config {
        Some(path) => {
            let c = Config::load(path)?;
            (c.audit.sink, c.audit.redact, c.state_dir)
        }
        None => (aalgate::audit::Sink::Stdout, Vec::new(), demo_state(t)?),
    };
    let sink = match sink {
        s @ (aalgate::audit::Sink::File(_) | aalgate::audit::Sink::Syslog(_)) => s,
        _ => aalgate::audit::Sink::File(state.join("audit-cli.jsonl")),
    };
    let place = match &sink {
        aalgate::audit::Sink::File(p) => p.display().to_string(),
        aalgate::audit::Sink::Syslog(p) => format!("syslog ({})", p.display()),
        _ => String::new(),
    };
    let metrics = Arc::new(metrics::Metrics::new().context("metrics")?);
    Ok((
        aalgate::audit::Audit::start(sink, &redact, false, metrics)?,
        place,
    ))
}

/// Records an admin change made by the CLI: on record (written and synced) or the command
/// fails, saying that the change was made but not recorded.
async fn audit_change(
    audit: &(aalgate::audit::Audit, String),
    event: &str,
    user: &str,
    detail: String,
) -> Result<()> {
    let recorded = audit
        .0
        .record(&aalgate::audit::Event {
            time: aalgate::audit::now_rfc3339(),
            event,
            user: Some(user),
            operator: Some(operator()),
            detail: Some(detail),
            ..Default::default()
        })
        .await;
    if !recorded {
        bail!(
            "the change to {user} was made, but the audit log ({}) did not take its record: check the log's disk and permissions, and record the change by hand",
            audit.1
        );
    }
    Ok(())
}

async fn store_run(args: StoreArgs) -> Result<bool> {
    match args.action {
        StoreAction::Backup { file } => {
            let dir = match &args.target.config {
                Some(path) => match Config::load(path)?.store {
                    StoreSpec::Embedded(d) => d,
                    StoreSpec::Redis(_) => bail!("store backup copies the embedded store; Redis keeps its own copies: back up its append-only file or RDB (redis-cli --rdb FILE), and run replicas (README, High availability)"),
                },
                None => demo_state(&args.target)?,
            };
            if !dir.join("sessions.redb").exists() {
                bail!("no embedded store in {}: nothing to back up", dir.display());
            }
            let store = EmbeddedStore::open(&dir)
                .with_context(|| format!("embedded store in {}", dir.display()))?;
            let rows = store.snapshot(&aalgate::backup::DIRECTORY_NS).await?;
            let b = aalgate::backup::Backup::new(rows);
            b.write(&file)?;
            println!(
                "{}: {} person(s), as of {}; no sessions and no one-time tokens",
                file.display(),
                b.users(),
                b.created
            );
        }
        StoreAction::Restore { file, merge } => {
            let b = aalgate::backup::Backup::read(&file)?;
            let audit = cli_audit(&args.target)?;
            let (store, _) = cli_store(&args.target)?;
            // On record before anything is written: a restore that fails half-way is known.
            audit_change(
                &audit,
                "directory_restore_started",
                "*",
                format!("from a backup of {} ({} person(s))", b.created, b.users()),
            )
            .await?;
            let r = aalgate::backup::restore(store, &b, merge).await?;
            audit_change(
                &audit,
                "directory_restored",
                "*",
                format!(
                    "{} person(s) from a backup of {}; disabled: {}; {} session(s) ended",
                    r.users,
                    b.created,
                    r.disabled.join(","),
                    r.sessions
                ),
            )
            .await?;
            println!(
                "restored {} record(s), {} person(s) as of {}; {} session(s) ended",
                r.records, r.users, b.created, r.sessions
            );
            if !r.disabled.is_empty() {
                println!(
                    "restored disabled (removed since the backup): {}; `aalgate users enable NAME` lets one sign in again",
                    r.disabled.join(", ")
                );
            }
        }
    }
    Ok(true)
}

async fn groups_run(args: GroupsArgs) -> Result<bool> {
    let (store, _) = cli_store(&args.target)?;
    let dir = aalgate_auth::Directory::new(store);
    match args.action {
        GroupsAction::List => {
            let groups = dir.groups().await?;
            if groups.is_empty() {
                println!("no groups yet; add people with `aalgate users groups USER --add GROUP`");
            }
            for (g, members) in groups {
                println!("{g}\t{}", members.join(","));
            }
        }
    }
    Ok(true)
}

#[allow(clippy::too_many_lines, reason = "one arm per users subcommand")]
async fn users_run(args: UsersArgs) -> Result<bool> {
    let (store, origin) = cli_store(&args.target)?;
    let dir = aalgate_auth::Directory::new(store);
    let now = aalgate_policy::Timestamp::wall();
    // Every command that changes something is audited; `list` and `groups` without a change
    // need no log.
    let changes = match &args.action {
        UsersAction::List => false,
        UsersAction::Groups { add, remove, .. } => !add.is_empty() || !remove.is_empty(),
        _ => true,
    };
    let audit = if changes {
        Some(cli_audit(&args.target)?)
    } else {
        None
    };
    let audit = audit.as_ref();
    match args.action {
        UsersAction::Invite {
            user,
            display_name,
            aal,
            ttl,
            groups,
            email,
        } => {
            let aal = aalgate_policy::Aal::from_number(aal).context("--aal must be 2 or 3")?;
            let display = display_name.unwrap_or_else(|| user.clone());
            if dir.user(&user).await?.is_some() {
                eprintln!(
                    "{user} is enrolled already: this link adds a key to that account (the keys it has stay)."
                );
            }
            // Checked before anything is written: a bad group or address makes no invite.
            if let Some(g) = groups
                .iter()
                .find(|g| !aalgate_auth::directory::valid_group(g))
            {
                bail!("group name {g:?}: use lowercase letters, digits and '-' (at most 63), e.g. epcs-signers");
            }
            if let Some(e) = email
                .as_deref()
                .filter(|e| !aalgate_auth::directory::valid_email(e))
            {
                bail!("e-mail address {e:?} is not valid: write it as name@domain.example");
            }
            // Every check the invite makes, before anything is written.
            dir.check_invite(&user, aal).await?;
            let existing = dir.membership(&user).await?;
            if existing != aalgate_auth::model::Membership::default() {
                eprintln!(
                    "{user} has groups or an e-mail set already ({}): they stay.",
                    describe(&existing)
                );
            }
            // The groups and address first, the invite last: whatever is done is recorded,
            // also when a later step fails.
            let mut done: Vec<String> = Vec::new();
            let result = async {
                if !groups.is_empty() {
                    let (_, after) = dir.change_groups(&user, &groups, &[]).await?;
                    done.push(format!("groups now {}", after.groups.join(",")));
                }
                if let Some(e) = &email {
                    dir.set_email(&user, Some(e)).await?;
                    done.push(format!("e-mail set to {e}"));
                }
                let token = dir.invite(&user, &display, aal, ttl.into(), now).await?;
                done.push(format!(
                    "invite at {}, valid {}",
                    aal.as_str(),
                    in_words(ttl.into())
                ));
                Ok::<_, aalgate_auth::DirectoryError>(token)
            }
            .await;
            if let (Some(a), false) = (audit, done.is_empty()) {
                let mut detail = done.join("; ");
                if let Err(e) = &result {
                    detail.push_str(&format!("; then failed: {e}"));
                }
                audit_change(a, "user_invited", &user, detail).await?;
            }
            let token = result?;
            println!("{origin}/.aalgate/enroll?invite={}", token.expose());
            eprintln!(
                "One-time enrollment link for {user} ({}), valid {}. Give it to the person only after checking who they are.",
                aal.as_str().to_ascii_uppercase(),
                in_words(ttl.into())
            );
        }
        UsersAction::List => {
            let users = dir.users().await?;
            if users.is_empty() {
                println!("no users yet; create one with `aalgate users invite USER`");
            }
            for u in users {
                println!(
                    "{}\t{}\tstatus={}\tmax_aal={}\tcreated={}\tlast_login={}",
                    u.id,
                    u.display_name,
                    if u.disabled { "disabled" } else { "active" },
                    u.max_aal().map(|a| a.as_str()).unwrap_or("none"),
                    fmt_time(Some(u.created)),
                    fmt_time(u.last_login)
                );
                for c in &u.credentials {
                    println!(
                        "  credential {}\tkind={}\taal={}\taaguid={}\tcreated={}\tlast_used={}{}",
                        c.id,
                        c.kind.as_str(),
                        c.aal.as_str(),
                        c.aaguid
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                        fmt_time(Some(c.created)),
                        fmt_time(c.last_used),
                        c.flagged
                            .as_deref()
                            .map(|f| format!("\tFLAGGED: {f}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        UsersAction::Groups { user, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                let m = dir.membership(&user).await?;
                if m.groups.is_empty() {
                    println!("{user} is in no group");
                }
                for g in m.groups {
                    println!("{g}");
                }
                return Ok(true);
            }
            // Before and after as of the one atomic change: the record says what it did.
            let (before, m) = dir.change_groups(&user, &add, &remove).await?;
            let before = before.groups;
            let added: Vec<&String> = m.groups.iter().filter(|g| !before.contains(g)).collect();
            let removed: Vec<&String> = before.iter().filter(|g| !m.groups.contains(g)).collect();
            let list = |v: &[&String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
                }
            };
            let now_in = if m.groups.is_empty() {
                "none".to_string()
            } else {
                m.groups.join(",")
            };
            if let Some(a) = audit {
                audit_change(
                    a,
                    "groups_changed",
                    &user,
                    format!(
                        "added {}; removed {}; now {now_in}",
                        list(&added),
                        list(&removed)
                    ),
                )
                .await?;
            }
            println!("{user}: groups now {now_in} (every gateway instance applies it within 1 s)");
        }
        UsersAction::Email { user, email, clear } => {
            let email = if clear { None } else { email };
            let (before, _) = dir.set_email(&user, email.as_deref()).await?;
            if let Some(a) = audit {
                let was = before.email.as_deref().unwrap_or("none");
                let what = match &email {
                    Some(e) => format!("e-mail set to {e} (was {was})"),
                    None => format!("e-mail removed (was {was})"),
                };
                audit_change(a, "email_changed", &user, what).await?;
            }
            match email {
                Some(e) => println!("{user}: e-mail {e}"),
                None => println!("{user}: e-mail removed"),
            }
        }
        UsersAction::Disable { user } => {
            let n = dir.disable(&user).await?;
            if let Some(a) = audit {
                audit_change(a, "user_disabled", &user, format!("{n} session(s) ended")).await?;
            }
            println!("{user} disabled; {n} session(s) ended on every instance");
        }
        UsersAction::Enable { user } => {
            if !dir.enable(&user).await? {
                println!("{user} was not disabled; nothing changed");
                return Ok(true);
            }
            if let Some(a) = audit {
                audit_change(a, "user_enabled", &user, "may sign in again".into()).await?;
            }
            println!("{user} enabled: they may sign in again with their credentials");
        }
        UsersAction::RevokeCredential { user, id } => {
            if !dir.revoke_credential(&user, &id).await? {
                bail!("{user} has no credential {id}; see `aalgate users list`");
            }
            if let Some(a) = audit {
                let short = aalgate_auth::token::hash_str(&id);
                audit_change(
                    a,
                    "credential_revoked",
                    &user,
                    format!("credential {}; sessions ended", &short[..16]),
                )
                .await?;
            }
            println!("credential {id} of {user} removed; the user's sessions ended");
        }
        UsersAction::Reset { user, ttl } => {
            let (n, aal, token) = dir.reset(&user, ttl.into(), now).await?;
            if let Some(a) = audit {
                audit_change(
                    a,
                    "user_reset",
                    &user,
                    format!(
                        "every credential removed, {n} session(s) ended; new invite at {}",
                        aal.as_str()
                    ),
                )
                .await?;
            }
            println!("{origin}/.aalgate/enroll?invite={}", token.expose());
            eprintln!(
                "{user}: every credential removed, {n} session(s) ended. New one-time enrollment link ({}), valid {}; give it only after re-proofing the person.",
                aal.as_str().to_ascii_uppercase(),
                in_words(ttl.into())
            );
        }
    }
    Ok(true)
}
