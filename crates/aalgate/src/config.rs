//! The gateway config file (`aalgate.yaml`): a raw serde model with unknown keys refused, and
//! the validated [`Config`] the server uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aalgate_session::StoreSpec;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Vec<RawListener>,
    #[serde(default)]
    admin_listen: Option<String>,
    public_origin: String,
    store: crate::store_config::RawStore,
    #[serde(default)]
    store_timeout: Option<String>,
    policies: PathBuf,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    signing_key: Option<PathBuf>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    insecure_http: bool,
    #[serde(default)]
    hsts: Option<bool>,
    #[serde(default)]
    log_format: Option<LogFormat>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    upgrade_sock: Option<PathBuf>,
    #[serde(default)]
    session_count_interval: Option<aalgate_policy::HumanDuration>,
    #[serde(default)]
    rp_id: Option<String>,
    #[serde(default)]
    hardware_keys: Option<RawHardwareKeys>,
    #[serde(default)]
    breakglass: Option<RawBreakGlass>,
    #[serde(default)]
    preserve_body_limit: Option<usize>,
    #[serde(default)]
    request_key: Option<PathBuf>,
    #[serde(default)]
    preserve_quota: Option<u64>,
    #[serde(default)]
    preserve_person_quota: Option<u64>,
    #[serde(default)]
    preserve_concurrent_reads: Option<usize>,
    #[serde(default)]
    flows_per_client_per_minute: Option<u32>,
    #[serde(default)]
    anonymous_state_quota: Option<u64>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    upstream_connect_timeout: Option<aalgate_policy::HumanDuration>,
    #[serde(default)]
    upstream_timeout: Option<aalgate_policy::HumanDuration>,
    #[serde(default)]
    client_timeout: Option<aalgate_policy::HumanDuration>,
    #[serde(default)]
    shutdown_grace: Option<aalgate_policy::HumanDuration>,
    #[serde(default)]
    identity_providers: Vec<aalgate_oidc::RawProvider>,
    #[serde(default)]
    scim: Option<RawScim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScim {
    token_file: PathBuf,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// Provisioning from the hospital's directory (`scim:`).
#[derive(Clone, Debug)]
pub struct ScimConfig {
    /// Holds the SHA-256 (hex) of the provisioning token, never the token.
    pub token_file: PathBuf,
    /// The provisioning client's name in the audit log (`operator: scim:<client>`).
    pub client: String,
    /// The groups the directory may manage (`name`, or `prefix-*`); `None`: every group.
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    audit: Option<PathBuf>,
    #[serde(default)]
    webhook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardwareKeys {
    #[serde(default)]
    aaguids: Vec<String>,
    #[serde(default)]
    attestation_ca: Vec<PathBuf>,
}

/// The AAL3 allow-list: hardware key models and their vendors' attestation roots.
#[derive(Clone, Debug, Default)]
pub struct HardwareKeysConfig {
    /// Accepted AAGUIDs.
    pub aaguids: Vec<uuid::Uuid>,
    /// PEM files of attestation root certificates.
    pub attestation_ca: Vec<PathBuf>,
}

impl HardwareKeysConfig {
    /// Reads the CA files.
    pub fn load(&self) -> Result<aalgate_auth::HardwareKeys> {
        let mut ca_pems = Vec::new();
        for p in &self.attestation_ca {
            ca_pems.push(
                std::fs::read_to_string(p)
                    .with_context(|| format!("hardware_keys.attestation_ca {}", p.display()))?,
            );
        }
        Ok(aalgate_auth::HardwareKeys {
            aaguids: self.aaguids.clone(),
            ca_pems,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    redact_segments: Option<Vec<String>>,
    #[serde(default)]
    requests: Option<bool>,
}

/// Audit log settings.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Where lines go.
    pub sink: crate::audit::Sink,
    /// Regular expressions; a path segment matching one is written as `{redacted}`.
    pub redact: Vec<String>,
    /// Whether every request decision is logged (auth events always are).
    pub requests: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: crate::audit::Sink::Stdout,
            redact: crate::audit::DEFAULT_REDACTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            requests: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    addr: String,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    external_port: Option<u16>,
    /// HTTP/2 by ALPN on a TLS listener (default on). Never on plain HTTP: h2c is refused.
    #[serde(default)]
    http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A listener: plain HTTP, or TLS with a certificate and key file.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Address and port.
    pub addr: SocketAddr,
    /// Certificate chain and key (PEM), for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The name apps use in `listeners:` (default `public`, then `public-2`, …).
    pub name: String,
    /// The port browsers use to reach it (a load balancer on 443 in front of 8080): a request
    /// whose `Host` names another port is answered 421. Default: the listening port.
    pub external_port: u16,
    /// The port a `Host` without one means: 443 when browsers reach it over https.
    pub default_port: u16,
    /// Offers HTTP/2 by ALPN (TLS listeners only; HTTP/1.1 stays the fallback).
    pub http2: bool,
}

impl Listener {
    /// The port a request's `Host` names on this listener (the scheme's default if none).
    pub fn host_port(&self, host: &aalgate_policy::HostPort) -> u16 {
        host.port.unwrap_or(self.default_port)
    }
}

/// What the policy set asks of the listeners that the config does not give: errors (an app
/// named onto a listener that does not exist, or on a port none serves) and warnings (with
/// several listeners, an app that says neither its port nor its listeners is served on all).
pub fn listener_problems(
    set: &aalgate_policy::PolicySet,
    listen: &[Listener],
) -> Vec<aalgate_policy::Diagnostic> {
    use aalgate_policy::{Diagnostic, Severity};
    let names: Vec<&str> = listen.iter().map(|l| l.name.as_str()).collect();
    let mut out = Vec::new();
    for app in set.apps() {
        let d = |severity, message: String, fix: String| Diagnostic {
            severity,
            loc: app.source.clone(),
            message,
            fix,
        };
        for n in &app.listeners {
            if !names.contains(&n.as_str()) {
                out.push(d(
                    Severity::Error,
                    format!(
                        "app {}: listener {n:?} is not in the gateway config",
                        app.name
                    ),
                    format!("use one of {names:?} (the listen: entries' name:)"),
                ));
            }
        }
        if let Some(port) = app.host.port {
            let on = listen.iter().filter(|l| app.served_on(&l.name));
            if !on.into_iter().any(|l| l.external_port == port) {
                out.push(d(
                    Severity::Error,
                    format!("app {}: host {} names port {port}, which none of its listeners serves", app.name, app.host),
                    format!("set external_port: {port} on the listener browsers reach it through, or correct the host"),
                ));
            }
        } else if app.listeners.is_empty() && listen.len() > 1 {
            out.push(d(
                Severity::Warning,
                format!("app {}: host {} names no port and the app no listeners, so every listener serves it", app.name, app.host),
                format!("add listeners: [name] (one of {names:?}), or a port to the host, to keep it off the others"),
            ));
        }
    }
    out
}

/// A validated gateway config.
#[derive(Clone, Debug)]
pub struct Config {
    /// Public listeners.
    pub listen: Vec<Listener>,
    /// Health (and later metrics) listener; never public.
    pub admin_listen: Option<SocketAddr>,
    /// The auth origin (`https://gateway.clinic.example`): WebAuthn origin and JWT issuer.
    pub public_origin: String,
    /// Host of `public_origin`.
    pub public_host: aalgate_policy::HostPort,
    /// Session store.
    pub store: StoreSpec,
    /// Deadline of every store call.
    pub store_timeout: Duration,
    /// Policy files or directories.
    pub policies: Vec<PathBuf>,
    /// Where the gateway keeps its state (`state_dir`).
    pub state_dir: PathBuf,
    /// The Ed25519 signing key of the upstream assertion (PKCS#8 PEM; created if missing).
    pub signing_key: PathBuf,
    /// Worker threads.
    pub threads: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Send `Strict-Transport-Security` on https (false: the load balancer sends it).
    pub hsts: bool,
    /// Audit log.
    pub audit: AuditConfig,
    /// Socket over which a new process takes the listeners in a graceful upgrade.
    pub upgrade_sock: PathBuf,
    /// How often live sessions are counted for the session gauges (a scan of the store).
    pub session_count_interval: Duration,
    /// The WebAuthn RP id: the auth origin's host, or a registrable parent domain of it so one
    /// passkey serves every app host.
    pub rp_id: String,
    /// The AAL3 allow-list.
    pub hardware_keys: HardwareKeysConfig,
    /// Break-glass codes file, local audit file and alert webhook.
    pub breakglass: crate::breakglass::BreakGlassConfig,
    /// Largest form body kept across a sign-in, in bytes.
    pub preserve_body_limit: usize,
    /// The AES-256 key of kept forms (created if missing; instances sharing Redis share it).
    pub request_key: PathBuf,
    /// Kept-form bytes in the whole store (every instance), and of one person.
    pub preserve_quota: (u64, u64),
    /// Bodies read at once to keep them (each up to `preserve_body_limit` in memory).
    pub preserve_concurrent_reads: usize,
    /// New sign-in flows a client address (IPv6: its /64) may start a minute; 0: no limit.
    pub flows_per_client_per_minute: u32,
    /// Bytes of sign-in flows and ceremonies of nobody known yet, in the whole store.
    pub anonymous_state_quota: u64,
    /// Proxies (load balancers) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long connecting to an upstream may take before the answer is 504.
    pub upstream_connect_timeout: Duration,
    /// How long an upstream may stay silent (between reads or writes) before the answer is 504.
    pub upstream_timeout: Duration,
    /// How long a client may stay silent while sending a request's body before the answer is
    /// 408 (what reached the upstream of it is abandoned there).
    pub client_timeout: Duration,
    /// Where the clock floor is saved every few seconds, so that a clock stepped back across a
    /// restart does not make time run backwards (`<state_dir>/clock-floor`).
    pub clock_floor: PathBuf,
    /// On SIGTERM or SIGQUIT: how long in-flight requests get to finish. pingora stops
    /// accepting at once, waits this long in full, then ends whatever is left.
    pub shutdown_grace: Duration,
    /// The hospital's identity providers (`identity_providers:`), in the order of the sign-in
    /// page's buttons.
    pub identity_providers: Vec<aalgate_oidc::Provider>,
    /// SCIM provisioning (`scim:`); `None`: the endpoint answers 404.
    pub scim: Option<ScimConfig>,
}

/// Default of `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default of `upstream_connect_timeout`.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `upstream_timeout`.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `client_timeout` (pingora's, and nginx's `client_body_timeout`).
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `client_timeout`, checked: long enough for a slow network, short enough that a silent
/// client cannot hold a connection (and what reached the upstream) for long. Bodies the
/// gateway reads itself into one of its few shared slots (kept forms, per-request signing)
/// get it as their whole time, so a trickle cannot hold a slot either.
fn client_timeout(raw: Option<aalgate_policy::HumanDuration>) -> Result<Duration> {
    let d = raw.map_or(DEFAULT_CLIENT_TIMEOUT, |d| d.0);
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        bail!(
            "client_timeout {} must be between 1s and 10m (the default, 60s, suits most networks)",
            humantime::format_duration(d)
        );
    }
    Ok(d)
}

/// Default of `session_count_interval`.
pub const DEFAULT_SESSION_COUNT_INTERVAL: Duration = Duration::from_secs(30);

/// Default deadline of a Redis call: tens of milliseconds, well above a loopback round trip.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default deadline of an embedded-store call: its writes wait for an fsync, and for each
/// other (redb commits one at a time). Measured under the soak's mixed load with step-ups on
/// this 2-core machine (`tests/soak/embedded.rs`, 2026-12-06): reads p99 under 0.25 ms, writes
/// p99 under 10 ms, the slowest write of ~80,000 between 100 and 250 ms. 200 ms left no margin
/// over that tail; 1 s is four times the slowest and still fails closed long before a person
/// gives up.
pub const DEFAULT_EMBEDDED_STORE_TIMEOUT: Duration = Duration::from_secs(1);

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .with_context(|| format!("{what} {s:?} is not an address:port such as 127.0.0.1:8080"))
}

impl Config {
    /// Reads and validates a config file; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let options = serde_saphyr::options! {
            strict_booleans: true,
            duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
            with_snippet: false,
        };
        let raw: RawConfig = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
            let (l, c) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let msg = e.without_snippet().to_string();
            let msg = msg
                .lines()
                .next()
                .unwrap_or("")
                .split(" at line ")
                .next()
                .unwrap_or("")
                .to_string();
            anyhow::anyhow!("{}:{l}:{c}: {msg}", path.display())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_raw(raw, base).with_context(|| format!("in config {}", path.display()))
    }

    #[allow(
        clippy::too_many_lines,
        reason = "every config key validated in turn, each with its own error and fix"
    )]
    fn from_raw(raw: RawConfig, base: &Path) -> Result<Config> {
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if raw.listen.is_empty() {
            bail!("listen: needs at least one listener");
        }
        let origin_https = raw.public_origin.starts_with("https://");
        let mut listen: Vec<Listener> = Vec::new();
        for (i, l) in raw.listen.into_iter().enumerate() {
            let addr = parse_addr(&l.addr, "listen addr")?;
            if l.tls.is_none() && !addr.ip().is_loopback() && !raw.insecure_http {
                bail!("listen {addr}: plain HTTP on a non-loopback address sends session cookies in clear; add tls: {{cert, key}}, or set insecure_http: true behind a TLS-terminating load balancer");
            }
            let name = match l.name {
                Some(n) => {
                    if !aalgate_policy::valid_app_id(&n) {
                        bail!("listen {addr}: name {n:?} is not valid; use lowercase letters, digits and '-', e.g. public");
                    }
                    n
                }
                None if i == 0 => "public".to_string(),
                None => format!("public-{}", i + 1),
            };
            if listen.iter().any(|o| o.name == name) {
                bail!(
                    "listen {addr}: name {name:?} is used twice; give each listener its own name"
                );
            }
            if l.tls.is_none() && l.http2 == Some(true) {
                bail!("listen {addr}: http2 needs tls: browsers negotiate HTTP/2 by ALPN, and cleartext HTTP/2 (h2c) is refused; add tls: {{cert, key}} or remove http2");
            }
            if l.external_port == Some(0) {
                bail!("listen {addr}: external_port 0 is not a port");
            }
            let default_port = if l.tls.is_some() || origin_https {
                443
            } else {
                80
            };
            listen.push(Listener {
                addr,
                http2: l.tls.is_some() && l.http2.unwrap_or(true),
                tls: l.tls.map(|t| (rel(t.cert), rel(t.key))),
                name,
                external_port: l.external_port.unwrap_or(addr.port()),
                default_port,
            });
        }
        let admin_listen = raw
            .admin_listen
            .as_deref()
            .map(|a| parse_addr(a, "admin_listen"))
            .transpose()?;
        let origin = raw.public_origin.trim_end_matches('/').to_string();
        let host_part = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .context("public_origin must start with https:// (or http:// for localhost)")?;
        if host_part.contains(['/', '?', '#', '@']) {
            bail!("public_origin must be scheme://host[:port] with no path");
        }
        let public_host = aalgate_policy::HostPort::parse(host_part)
            .map_err(|e| anyhow::anyhow!("public_origin host: {e}"))?;
        if origin.starts_with("http://")
            && public_host.host != "localhost"
            && !public_host.host.starts_with("127.")
            && public_host.host != "[::1]"
        {
            bail!("public_origin {origin} is plain http on a non-local host; WebAuthn needs https");
        }
        let origin_port = public_host
            .port
            .unwrap_or(if origin_https { 443 } else { 80 });
        if !listen.iter().any(|l| l.external_port == origin_port) {
            bail!("public_origin {origin} is on port {origin_port}, which no listener serves; set external_port: {origin_port} on the listener browsers reach through a load balancer, or correct public_origin");
        }
        let mut store = raw.store.build(&rel)?;
        let state_dir = match (raw.state_dir, &store) {
            (Some(d), _) => rel(d),
            (None, StoreSpec::Embedded(d)) => d.clone(),
            (None, StoreSpec::Redis(_)) => {
                bail!("state_dir: required with a redis store (it holds the signing key)")
            }
        };
        let signing_key = raw
            .signing_key
            .map(rel)
            .unwrap_or_else(|| state_dir.join("signing-key.pem"));
        let threads = raw.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        if threads == 0 || threads > 256 {
            bail!("threads must be 1 to 256");
        }
        let client_timeout = client_timeout(raw.client_timeout)?;
        let store_timeout = match raw.store_timeout {
            Some(s) => {
                let d = humantime::parse_duration(s.trim())
                    .with_context(|| format!("store_timeout {s:?}: write e.g. 50ms or 1s"))?;
                if d < Duration::from_millis(1) || d > Duration::from_secs(10) {
                    bail!("store_timeout {s:?} must be between 1ms and 10s (tens of milliseconds is right for Redis on a LAN)");
                }
                d
            }
            None => match store {
                StoreSpec::Embedded(_) => DEFAULT_EMBEDDED_STORE_TIMEOUT,
                StoreSpec::Redis(_) => DEFAULT_STORE_TIMEOUT,
            },
        };
        if let StoreSpec::Redis(r) = &mut store {
            r.timeout = store_timeout;
        }
        let audit = match raw.audit {
            None => AuditConfig::default(),
            Some(a) => {
                let mut c = AuditConfig::default();
                if let Some(o) = a.output {
                    c.sink = match o
                        .parse::<crate::audit::Sink>()
                        .map_err(anyhow::Error::msg)?
                    {
                        crate::audit::Sink::File(p) => crate::audit::Sink::File(rel(p)),
                        s => s,
                    };
                }
                if let Some(r) = a.redact_segments {
                    c.redact = r;
                }
                if let Some(r) = a.requests {
                    c.requests = r;
                }
                c
            }
        };
        let rp_id = raw
            .rp_id
            .map(|r| r.trim().trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_else(|| public_host.host.clone());
        if !(public_host.host == rp_id || public_host.host.ends_with(&format!(".{rp_id}"))) {
            bail!(
                "rp_id {rp_id:?} must be the host of public_origin ({}) or a parent domain of it",
                public_host.host
            );
        }
        let mut hardware_keys = HardwareKeysConfig::default();
        if let Some(h) = raw.hardware_keys {
            for a in h.aaguids {
                hardware_keys.aaguids.push(a.parse().with_context(|| {
                    format!("hardware_keys.aaguids: {a:?} is not an AAGUID like cb69481e-8ff7-4039-93ec-0a2729a154a8")
                })?);
            }
            hardware_keys.attestation_ca = h.attestation_ca.into_iter().map(rel).collect();
            if hardware_keys.aaguids.is_empty() != hardware_keys.attestation_ca.is_empty() {
                bail!("hardware_keys: give both aaguids and attestation_ca (the vendor roots), or neither");
            }
        }
        let mut breakglass = crate::breakglass::BreakGlassConfig::in_dir(&state_dir);
        if let Some(b) = raw.breakglass {
            if let Some(f) = b.file {
                breakglass.file = rel(f);
            }
            if let Some(a) = b.audit {
                breakglass.audit = rel(a);
            }
            if let Some(w) = b.webhook {
                if !(w.starts_with("https://") || w.starts_with("http://")) {
                    bail!("breakglass.webhook {w:?} must be an http(s):// URL");
                }
                breakglass.webhook = Some(w);
            }
        }
        let upgrade_sock = raw
            .upgrade_sock
            .map(rel)
            .unwrap_or_else(|| state_dir.join("upgrade.sock"));
        let preserve_body_limit = raw
            .preserve_body_limit
            .unwrap_or(crate::preserve::DEFAULT_BODY_LIMIT);
        if preserve_body_limit > 16 * 1024 * 1024 {
            bail!("preserve_body_limit {preserve_body_limit} is over 16 MiB; kept forms live in the session store");
        }
        let quota = raw.preserve_quota.unwrap_or(crate::preserve::DEFAULT_QUOTA);
        let person_quota = raw
            .preserve_person_quota
            .unwrap_or(crate::preserve::DEFAULT_PERSON_QUOTA)
            .min(quota);
        let preserve_concurrent_reads = raw
            .preserve_concurrent_reads
            .unwrap_or(crate::preserve::DEFAULT_CONCURRENT_READS);
        if preserve_concurrent_reads == 0 || preserve_concurrent_reads > 1024 {
            bail!("preserve_concurrent_reads must be 1 to 1024 (each read holds up to preserve_body_limit in memory)");
        }
        let anonymous_state_quota = raw
            .anonymous_state_quota
            .unwrap_or(crate::limits::DEFAULT_ANONYMOUS_STATE_QUOTA);
        if anonymous_state_quota < 64 * 1024 {
            bail!("anonymous_state_quota {anonymous_state_quota} is under 64 KiB (65536): too few sign-ins could start at once; the default is 64 MiB");
        }
        let mut trusted_proxies = Vec::new();
        for t in raw.trusted_proxies {
            let net = t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "trusted_proxies: {t:?} is not an address or network such as 10.0.0.0/8 or 2001:db8::/32"
                    )
                })?;
            trusted_proxies.push(net);
        }
        let mut identity_providers: Vec<aalgate_oidc::Provider> = Vec::new();
        for (i, raw) in raw.identity_providers.into_iter().enumerate() {
            let mut p = raw
                .validate()
                .map_err(|e| anyhow::anyhow!("identity_providers[{i}]: {e}"))?;
            if identity_providers.iter().any(|o| o.id == p.id) {
                bail!(
                    "identity_providers[{i}]: id {:?} is used twice; give each provider its own id",
                    p.id
                );
            }
            p.client_auth = match p.client_auth {
                aalgate_oidc::provider::ClientAuth::SecretFile(f) => {
                    aalgate_oidc::provider::ClientAuth::SecretFile(rel(f))
                }
                aalgate_oidc::provider::ClientAuth::PrivateKeyJwt { key_file, kid } => {
                    aalgate_oidc::provider::ClientAuth::PrivateKeyJwt {
                        key_file: rel(key_file),
                        kid,
                    }
                }
            };
            identity_providers.push(p);
        }
        let scim = match raw.scim {
            None => None,
            Some(r) => {
                let client = r.client.unwrap_or_else(|| "directory".to_string());
                if client.is_empty()
                    || client.len() > 32
                    || !client
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    bail!("scim.client {client:?}: use 1-32 lowercase letters, digits or '-', e.g. entra");
                }
                if let Some(g) = r
                    .groups
                    .iter()
                    .flatten()
                    .find(|g| !aalgate_policy::valid_group(g.strip_suffix('*').unwrap_or(g)))
                {
                    bail!("scim.groups: {g:?} is not a group name (lowercase letters, digits and '-') or a prefix of one followed by '*', e.g. clinical or entra-*");
                }
                if let Some(p) = identity_providers.iter().find(|p| !p.jit_groups.is_empty()) {
                    bail!(
                        "identity provider {:?} has jit: with scim:, the directory creates accounts, and a person it removed must not come back through a provider sign-in; remove jit",
                        p.id
                    );
                }
                Some(ScimConfig {
                    token_file: rel(r.token_file),
                    client,
                    groups: r.groups,
                })
            }
        };
        Ok(Config {
            scim,
            identity_providers,
            preserve_quota: (quota, person_quota),
            preserve_concurrent_reads,
            flows_per_client_per_minute: raw
                .flows_per_client_per_minute
                .unwrap_or(crate::limits::DEFAULT_FLOWS_PER_CLIENT_PER_MINUTE),
            anonymous_state_quota,
            trusted_proxies,
            clock_floor: state_dir.join("clock-floor"),
            hsts: raw.hsts.unwrap_or(true),
            shutdown_grace: raw
                .shutdown_grace
                .map(|d| d.0)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            upstream_connect_timeout: raw
                .upstream_connect_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
            upstream_timeout: raw
                .upstream_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            client_timeout,
            preserve_body_limit,
            request_key: raw
                .request_key
                .map(rel)
                .unwrap_or_else(|| state_dir.join("request-key")),
            breakglass,
            rp_id,
            hardware_keys,
            session_count_interval: raw
                .session_count_interval
                .map(|d| d.0)
                .unwrap_or(DEFAULT_SESSION_COUNT_INTERVAL),
            audit,
            upgrade_sock,
            listen,
            admin_listen,
            public_origin: origin,
            public_host,
            store,
            store_timeout,
            policies: vec![rel(raw.policies)],
            signing_key,
            state_dir: state_dir.clone(),
            threads,
            log_format: raw.log_format.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Config> {
        let raw: RawConfig = serde_saphyr::from_str(y).map_err(|e| anyhow::anyhow!("{e}"))?;
        Config::from_raw(raw, Path::new("/etc/aalgate"))
    }

    #[test]
    fn minimal_and_defaults() {
        let c = parse("listen: [{addr: 127.0.0.1:8080}]\npublic_origin: http://localhost:8080\nstore: embedded:state\npolicies: policies\n").unwrap();
        assert_eq!(
            c.signing_key,
            PathBuf::from("/etc/aalgate/state/signing-key.pem")
        );
        assert_eq!(c.store_timeout, DEFAULT_EMBEDDED_STORE_TIMEOUT);
        assert_eq!(c.public_host.port, Some(8080));
    }

    /// `scim:`: the client's name and the group scope are checked; a provider's `jit` beside
    /// it is refused (a person the directory removed could come back through it).
    #[test]
    fn scim_section() {
        let base = "listen: [{addr: 127.0.0.1:8080}]\npublic_origin: http://localhost:8080\nstore: embedded:state\npolicies: policies\n";
        let c = parse(&format!(
            "{base}scim: {{ token_file: scim.sha256, groups: [clinical, entra-*] }}\n"
        ))
        .unwrap();
        let s = c.scim.unwrap();
        assert_eq!(
            (s.client.as_str(), s.token_file),
            ("directory", PathBuf::from("/etc/aalgate/scim.sha256"))
        );
        for bad in [
            "client: Entra",
            "client: ''",
            "groups: [EPCS Signers]",
            "groups: ['*']",
            "token: x",
        ] {
            let e = parse(&format!("{base}scim: {{ token_file: t, {bad} }}\n"));
            assert!(e.is_err(), "{bad}");
        }
        let idp = "identity_providers:\n  - id: sso\n    display_name: SSO\n    issuer: https://sso.example\n    client_id: c\n    client_secret_file: s\n    jit: { groups_any: [staff] }\n";
        assert!(parse(&format!("{base}{idp}")).is_ok());
        let e = parse(&format!("{base}{idp}scim: {{ token_file: t }}\n")).unwrap_err();
        assert!(e.to_string().contains("jit"), "{e}");
    }

    #[test]
    fn client_timeout_is_bounded() {
        let base = "listen: [{addr: 127.0.0.1:8080}]\npublic_origin: http://localhost:8080\nstore: embedded:state\npolicies: policies\n";
        assert_eq!(parse(base).unwrap().client_timeout, DEFAULT_CLIENT_TIMEOUT);
        let c = parse(&format!("{base}client_timeout: 5s\n")).unwrap();
        assert_eq!(c.client_timeout, Duration::from_secs(5));
        for bad in ["0s", "500ms", "11m"] {
            let e = parse(&format!("{base}client_timeout: {bad}\n")).unwrap_err();
            assert!(format!("{e:#}").contains("client_timeout"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/aalgate.example.yaml");
        let c = Config::load(&path).unwrap();
        assert!(c.listen[0].tls.is_some());
        assert!(
            matches!(&c.store, StoreSpec::Redis(r) if r.target == aalgate_session::RedisTarget::Url("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(c.store_timeout, DEFAULT_STORE_TIMEOUT);
    }

    #[test]
    fn kept_form_limits_and_trusted_proxies() {
        let base = "listen: [{addr: 127.0.0.1:8080}]\npublic_origin: http://localhost:8080\nstore: embedded:state\npolicies: policies\n";
        let c = parse(base).unwrap();
        assert_eq!(
            c.preserve_quota,
            (
                crate::preserve::DEFAULT_QUOTA,
                crate::preserve::DEFAULT_PERSON_QUOTA
            )
        );
        assert_eq!(c.flows_per_client_per_minute, 600);
        assert!(c.trusted_proxies.is_empty());
        let c = parse(&format!("{base}trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"]\npreserve_quota: 1000\npreserve_person_quota: 5000\n")).unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(
            c.preserve_quota,
            (1000, 1000),
            "a person's quota never exceeds the store's"
        );
        let e = parse(&format!("{base}trusted_proxies: [lb.example]\n")).unwrap_err();
        assert!(format!("{e:#}").contains("10.0.0.0/8"), "{e:#}");
        assert!(parse(&format!("{base}preserve_concurrent_reads: 0\n")).is_err());
        assert_eq!(c.anonymous_state_quota, 64 * 1024 * 1024);
        let c = parse(&format!("{base}anonymous_state_quota: 200000\n")).unwrap();
        assert_eq!(c.anonymous_state_quota, 200_000);
        let e = parse(&format!("{base}anonymous_state_quota: 1000\n")).unwrap_err();
        assert!(format!("{e:#}").contains("64 KiB"), "{e:#}");
    }

    #[test]
    fn deploy_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert_eq!(n, 4);
        let tls = Config::load(&dir.join("tls-production.yaml")).unwrap();
        assert_eq!(
            tls.audit.sink,
            crate::audit::Sink::File("/var/log/aalgate/audit.jsonl".into())
        );
        assert_eq!(tls.audit.redact.len(), 5);
    }

    #[test]
    fn policies_are_checked_against_the_listeners() {
        let cfg = parse("listen: [{addr: 127.0.0.1:8080, name: staff}, {addr: 127.0.0.1:9090, name: kiosk}]\npublic_origin: http://localhost:8080\nstore: embedded:state\npolicies: policies\n").unwrap();
        let app = |name: &str, host: &str, extra: &str| {
            (
                std::path::PathBuf::from(format!("{name}.yaml")),
                format!("app: {name}\nhost: {host}\nupstream: http://127.0.0.1:1\ndefault: aal2\n{extra}"),
            )
        };
        let set = aalgate_policy::load_from_strs(&[
            app("ehr", "ehr.localhost", "listeners: [staff]\n"),
            app("billing", "billing.localhost:9090", ""),
            app("portal", "portal.localhost", ""),
            app("lab", "lab.localhost:7000", ""),
            app("pharmacy", "rx.localhost", "listeners: [staf]\n"),
        ])
        .unwrap();
        let problems: Vec<String> = listener_problems(&set, &cfg.listen)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("portal") && problems[0].contains("warning"));
        assert!(problems[1].contains("lab") && problems[1].contains("port 7000"));
        assert!(problems[2].contains("\"staf\"") && problems[2].contains("[\"staff\", \"kiosk\"]"));
    }

    #[test]
    fn refusals() {
        let base = "public_origin: https://gw.example\nstore: redis://127.0.0.1/0\nstate_dir: /s\npolicies: p\n";
        assert!(parse(&format!("listen: [{{addr: 0.0.0.0:80}}]\n{base}"))
            .unwrap_err()
            .to_string()
            .contains("insecure_http"));
        // Behind a TLS load balancer the listener says which port browsers use.
        let lb = parse(&format!(
            "listen: [{{addr: 0.0.0.0:80, external_port: 443}}]\ninsecure_http: true\n{base}"
        ))
        .unwrap();
        assert_eq!(
            (
                lb.listen[0].name.as_str(),
                lb.listen[0].external_port,
                lb.listen[0].default_port
            ),
            ("public", 443, 443)
        );
        let e = parse(&format!(
            "listen: [{{addr: 0.0.0.0:80}}]\ninsecure_http: true\n{base}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("external_port: 443"), "{e}");
        assert!(parse(&format!(
            "listen: [{{addr: 0.0.0.0:443, tls: {{cert: c, key: k}}, name: a}}, {{addr: 0.0.0.0:8443, tls: {{cert: c, key: k}}, name: a}}]\n{base}"
        ))
        .unwrap_err()
        .to_string()
        .contains("used twice"));
        assert!(parse(&format!(
            "listen: [{{addr: 0.0.0.0:443, tls: {{cert: c, key: k}}, name: Public}}]\n{base}"
        ))
        .is_err());
        assert!(parse(&format!(
            "listen: [{{addr: 0.0.0.0:443, tls: {{cert: c, key: k}}}}]\n{base}"
        ))
        .is_ok());
        assert!(parse(&format!("listen: []\n{base}")).is_err());
        assert!(parse("listen: [{addr: 127.0.0.1:1}]\npublic_origin: http://gw.example\nstore: embedded:/s\npolicies: p\n").unwrap_err().to_string().contains("https"));
        assert!(parse("listen: [{addr: 127.0.0.1:1, external_port: 443}]\npublic_origin: https://gw.example\nstore: memcached://x\npolicies: p\n").is_err());
        assert!(parse("listen: [{addr: 127.0.0.1:1, external_port: 443}]\npublic_origin: https://gw.example\nstore: redis://x\npolicies: p\n").unwrap_err().to_string().contains("state_dir"));
        assert!(parse("listen: [{addr: 127.0.0.1:1, external_port: 443, tls: {cert: c}}]\npublic_origin: https://gw.example\nstore: embedded:/s\npolicies: p\n").is_err());
        assert!(parse("listen: [{addr: 127.0.0.1:1, external_port: 443}]\npublic_origin: https://gw.example\nstore: embedded:/s\npolicies: p\nlisten_typo: 1\n").is_err());
    }

    #[test]
    fn http2_is_on_for_tls_listeners_and_never_on_plain_ones() {
        let base = "public_origin: https://gw.example\nstore: embedded:/s\npolicies: p\n";
        let c = parse(&format!(
            "listen: [{{addr: 0.0.0.0:443, tls: {{cert: c, key: k}}}}, {{addr: 0.0.0.0:8443, tls: {{cert: c, key: k}}, http2: false}}, {{addr: 127.0.0.1:8080, external_port: 443}}]\n{base}"
        ))
        .unwrap();
        let h2: Vec<bool> = c.listen.iter().map(|l| l.http2).collect();
        assert_eq!(h2, [true, false, false]);
        let e = parse(&format!(
            "listen: [{{addr: 127.0.0.1:8080, external_port: 443, http2: true}}]\n{base}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("h2c") && e.contains("add tls"), "{e}");
    }

    #[test]
    fn rp_id_and_hardware_keys() {
        let base = "listen: [{addr: 127.0.0.1:1, external_port: 443}]\npublic_origin: https://gw.clinic.example\nstore: embedded:/s\npolicies: p\n";
        assert_eq!(parse(base).unwrap().rp_id, "gw.clinic.example");
        assert_eq!(
            parse(&format!("{base}rp_id: Clinic.Example.\n"))
                .unwrap()
                .rp_id,
            "clinic.example"
        );
        for bad in [
            "rp_id: example.org\n",
            "rp_id: nic.example\n",
            "rp_id: clinic.example.evil\n",
        ] {
            assert!(
                parse(&format!("{base}{bad}"))
                    .unwrap_err()
                    .to_string()
                    .contains("parent domain"),
                "{bad}"
            );
        }
        let c = parse(&format!("{base}hardware_keys:\n  aaguids: [cb69481e-8ff7-4039-93ec-0a2729a154a8]\n  attestation_ca: [ca.pem]\n")).unwrap();
        assert_eq!(
            c.hardware_keys.attestation_ca,
            vec![PathBuf::from("/etc/aalgate/ca.pem")]
        );
        assert!(parse(&format!(
            "{base}hardware_keys:\n  aaguids: [not-a-uuid]\n  attestation_ca: [ca.pem]\n"
        ))
        .unwrap_err()
        .to_string()
        .contains("AAGUID"));
        assert!(parse(&format!(
            "{base}hardware_keys:\n  aaguids: [cb69481e-8ff7-4039-93ec-0a2729a154a8]\n"
        ))
        .unwrap_err()
        .to_string()
        .contains("both"));
        assert!(
            parse(&format!("{base}hardware_keys:\n  aaguid: []\n")).is_err(),
            "unknown keys refused"
        );
    }
}
