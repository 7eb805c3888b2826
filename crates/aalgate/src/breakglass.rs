//! Break-glass: sealed emergency codes for when nobody can sign in normally (a dead key in the
//! ED at 3 a.m., the session store down). Loud, single use, time-limited and reviewed; it never
//! turns MFA off: a break-glass session reaches only routes whose policy says
//! `breakglass: allow`.
//!
//! Codes live in a local file (`breakglass.file`, default `<state_dir>/breakglass.json`, mode
//! 0600) holding only argon2id hashes, so a use works when Redis is unreachable. This is the
//! one deliberate fallback: every use is also appended (and fsynced) to a local audit file
//! before the session starts, and a break-glass session lives in the memory of the instance
//! that granted it, so its requests never need the store. When the store answers, a use is
//! also marked there, so a code used on one instance is refused on the others.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{Session as UserSession, SessionKey};
use anyhow::{bail, Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use quick_cache::sync::Cache;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Where break-glass keeps its codes and its local audit trail, and whom it alerts.
#[derive(Clone, Debug)]
pub struct BreakGlassConfig {
    /// The codes file (hashes and uses).
    pub file: PathBuf,
    /// The local audit file (one JSON line per use or failure, fsynced).
    pub audit: PathBuf,
    /// Posted to on every use (JSON with generic text only).
    pub webhook: Option<String>,
}

impl BreakGlassConfig {
    /// The defaults under a state directory.
    pub fn in_dir(state_dir: &Path) -> BreakGlassConfig {
        BreakGlassConfig {
            file: state_dir.join("breakglass.json"),
            audit: state_dir.join("breakglass-audit.jsonl"),
            webhook: None,
        }
    }
}

/// A review IT recorded after a use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Review {
    /// When.
    pub time: Timestamp,
    /// What was checked and found.
    pub note: String,
}

/// One use of a code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Use {
    /// When.
    pub time: Timestamp,
    /// The person's name, as typed.
    pub person: String,
    /// The reason, as typed.
    pub reason: String,
    /// The app whose host the code was used on.
    pub app: String,
    /// The client address.
    pub client_ip: Option<String>,
    /// Reviews recorded since.
    #[serde(default)]
    pub reviews: Vec<Review>,
}

/// A sealed emergency code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Code {
    /// Short public id (for reviews and reports).
    pub id: String,
    /// IT's label (where the envelope is: `ed-charge-nurse`).
    pub name: String,
    /// When it was created.
    pub created: Timestamp,
    /// How long the session it grants lasts.
    pub ttl_secs: u64,
    /// argon2id PHC string of the code.
    pub hash: String,
    /// Its one use, if any.
    pub used: Option<Use>,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    codes: Vec<Code>,
}

/// A file lock held while the codes file is read and rewritten (the CLI and the gateway).
struct Locked {
    _lock: std::fs::File,
    path: PathBuf,
}

impl Locked {
    fn open(path: &Path) -> Result<Locked> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        Ok(Locked {
            _lock: lock,
            path: path.to_path_buf(),
        })
    }

    fn read(&self) -> Result<Book> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!("{} is not a break-glass codes file", self.path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    fn write(&self, book: &Book) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(book)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        // The rename itself must survive a crash, or a used code could come back.
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(())
    }
}

/// Normalizes a typed code: case, spaces and dashes do not matter.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Creates a code; returns it and the printable secret (shown once).
pub fn create(cfg: &BreakGlassConfig, name: &str, ttl: Duration) -> Result<(Code, String)> {
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("NAME: 1-64 printable characters, e.g. ed-charge-nurse");
    }
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(12 * 3600) {
        bail!("--ttl must be between 1m and 12h (an emergency session, not a shift pattern)");
    }
    // 40 characters from a 32-symbol alphabet: 200 random bits.
    let mut raw = [0u8; 40];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret: String = raw
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string();
    let mut id = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let code = Code {
        id: id.iter().map(|b| format!("{b:02X}")).collect(),
        name: name.trim().to_string(),
        created: Timestamp::wall(),
        ttl_secs: ttl.as_secs(),
        hash,
        used: None,
    };
    let f = Locked::open(&cfg.file)?;
    let mut book = f.read()?;
    book.codes.push(code.clone());
    f.write(&book)?;
    let grouped: Vec<String> = secret
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    // The id goes first, so a check runs one argon2 verification, not one per code.
    let printed = format!("{}-{}", code.id, grouped.join("-"));
    Ok((code, printed))
}

/// Every code, for reports.
pub fn codes(cfg: &BreakGlassConfig) -> Result<Vec<Code>> {
    let f = Locked::open(&cfg.file)?;
    Ok(f.read()?.codes)
}

/// Records IT's review of a use.
pub fn review(cfg: &BreakGlassConfig, id: &str, note: &str) -> Result<Code> {
    if note.trim().is_empty() {
        bail!("--note must say what was reviewed");
    }
    let f = Locked::open(&cfg.file)?;
    let mut book = f.read()?;
    let Some(code) = book.codes.iter_mut().find(|c| c.id == id) else {
        bail!("no break-glass code {id}; see `aalgate report breakglass`");
    };
    let Some(u) = code.used.as_mut() else {
        bail!("code {id} has not been used; nothing to review");
    };
    u.reviews.push(Review {
        time: Timestamp::wall(),
        note: note.trim().to_string(),
    });
    let out = code.clone();
    f.write(&book)?;
    Ok(out)
}

/// Checks a typed code (`ID-XXXXX-...`): the unused code with that id whose argon2 hash the
/// rest matches. Slow on purpose; the file lock is not held while hashing. Marks nothing.
pub fn check(cfg: &BreakGlassConfig, typed: &str) -> Result<Option<Code>> {
    Ok(candidate(cfg, typed)?
        .filter(|(code, secret)| verify(code, secret))
        .map(|(c, _)| c))
}

/// The unused code whose id a typed code names, and the typed secret: cheap (no hashing), so
/// a caller can tell "no such code" before it spends an argon2 check on it.
pub fn candidate(cfg: &BreakGlassConfig, typed: &str) -> Result<Option<(Code, String)>> {
    let typed = normalize(typed);
    if typed.len() != 48 {
        return Ok(None);
    }
    let (id, secret) = typed.split_at(8);
    let f = Locked::open(&cfg.file)?;
    let book = f.read()?;
    Ok(book
        .codes
        .into_iter()
        .find(|c| c.used.is_none() && c.id == id)
        .map(|c| (c, secret.to_string())))
}

/// Whether `secret` is `code`'s (argon2id: slow on purpose).
pub fn verify(code: &Code, secret: &str) -> bool {
    PasswordHash::new(&code.hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// Marks a checked code used. `Ok(false)`: it was used meanwhile (a parallel attempt won).
pub fn mark_used(cfg: &BreakGlassConfig, id: &str, mut usage: Use) -> Result<bool> {
    let f = Locked::open(&cfg.file)?;
    let mut book = f.read()?;
    let Some(code) = book.codes.iter_mut().find(|c| c.id == id) else {
        return Ok(false);
    };
    if code.used.is_some() {
        return Ok(false);
    }
    usage.reviews.clear();
    code.used = Some(usage);
    f.write(&book)?;
    Ok(true)
}

/// [`check`], then [`mark_used`]: a whole use, for tests and tools.
pub fn redeem(cfg: &BreakGlassConfig, typed: &str, usage: Use) -> Result<Option<Code>> {
    let Some(code) = check(cfg, typed)? else {
        return Ok(None);
    };
    if !mark_used(cfg, &code.id, usage)? {
        return Ok(None);
    }
    Ok(codes(cfg)?.into_iter().find(|c| c.id == code.id))
}

/// Appends one line to the local audit file and fsyncs it, before anything else happens.
pub fn audit_local(cfg: &BreakGlassConfig, line: &serde_json::Value) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&cfg.audit)
        .with_context(|| format!("cannot open {}", cfg.audit.display()))?;
    let mut bytes = serde_json::to_vec(line)?;
    bytes.push(b'\n');
    f.write_all(&bytes)?;
    f.sync_data()?;
    Ok(())
}

/// A break-glass session, held only by the instance that granted it.
#[derive(Clone, Debug)]
pub struct Emergency {
    /// The code's id.
    pub code: String,
    /// The code's label.
    pub name: String,
    /// Who used it.
    pub person: String,
    /// The host it was granted on.
    pub host: String,
    /// When it started.
    pub started: Timestamp,
    /// When it ends.
    pub expires: Timestamp,
}

impl Emergency {
    /// The session record the request path works with: flagged by `amr: ["breakglass"]`,
    /// honest about its level (AAL1: one secret, no authenticator).
    pub fn session(&self) -> UserSession {
        UserSession {
            user: format!("breakglass:{}", self.code),
            aal: Aal::Aal1,
            amr: vec!["breakglass".into()],
            credential: Some(self.code.clone()),
            auth_time: self.started,
            last_auth: self.started,
            last_seen: Timestamp::wall(),
            expires_at: self.expires,
        }
    }
}

/// Whether a session is a break-glass one.
pub fn is_emergency(s: &UserSession) -> bool {
    s.amr.iter().any(|m| m == "breakglass")
}

/// Live break-glass sessions of this instance, and the failure throttle.
pub struct Emergencies {
    sessions: Cache<SessionKey, Emergency>,
    /// Whether this instance ever started one: until then a request does not look (asking the
    /// cache whether it is empty visits every shard).
    started: std::sync::atomic::AtomicBool,
    /// Failures by client, at most [`THROTTLED_CLIENTS`]: when full, expired entries go first,
    /// then the oldest of those not throttled (the oldest throttled one only when every entry
    /// is throttled), so a spray of fresh addresses cannot reset a throttled one.
    failures: Mutex<std::collections::HashMap<IpAddr, (u32, Instant)>>,
    /// At most two argon2 checks at a time: a flood cannot fill the blocking pool.
    pub checks: tokio::sync::Semaphore,
    /// As many answers about made-up codes at a time as real checks, and no more: a third
    /// guess in parallel is "busy" whether its id exists or not.
    pub made_up: tokio::sync::Semaphore,
    /// How long a real check took lately (µs): an unknown code waits as long, without a check.
    check_micros: std::sync::atomic::AtomicU64,
}

/// Clients whose failures are remembered.
const THROTTLED_CLIENTS: usize = 10_000;
/// What a check is assumed to take before one has been timed.
const FIRST_CHECK_MICROS: u64 = 20_000;

/// The throttle key: the address, or its /64 for IPv6 (one host owns a whole /64).
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Failed attempts per client address within [`FAILURE_WINDOW`] before it is refused.
pub const MAX_FAILURES: u32 = 5;
/// The failure window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(900);

impl Default for Emergencies {
    fn default() -> Self {
        Emergencies {
            sessions: Cache::new(1024),
            started: std::sync::atomic::AtomicBool::new(false),
            failures: Mutex::new(Default::default()),
            checks: tokio::sync::Semaphore::new(2),
            made_up: tokio::sync::Semaphore::new(2),
            check_micros: std::sync::atomic::AtomicU64::new(FIRST_CHECK_MICROS),
        }
    }
}

impl Emergencies {
    /// A live session for this cookie key on this host.
    pub fn get(&self, key: &SessionKey, host: &str, now: Timestamp) -> Option<Emergency> {
        if !self.started.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.sessions
            .get(key)
            .filter(|e| e.expires > now && e.host == host)
    }

    /// A success: the address's failures are forgotten.
    pub fn succeeded(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(&throttle_key(ip));
        }
    }

    /// Records how long a real argon2 check took.
    pub fn timed_check(&self, took: Duration) {
        use std::sync::atomic::Ordering;
        let new = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.check_micros.load(Ordering::Relaxed);
        // A moving average: one slow check on a busy machine does not set it alone.
        self.check_micros
            .store((old * 3 + new) / 4, Ordering::Relaxed);
    }

    /// Times one argon2 check of a made-up code, so that answers about codes that do not exist
    /// wait as long as a real check from the start (call once, off the request path).
    pub fn calibrate(&self) {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let Ok(hash) = Argon2::default().hash_password(b"calibration", &salt) else {
            return;
        };
        let code = Code {
            id: "CALIBRAT".into(),
            name: String::new(),
            hash: hash.to_string(),
            created: Timestamp::wall(),
            ttl_secs: 60,
            used: None,
        };
        // The median of three: one slow start (a cold cache, a busy host) does not set it.
        let mut took: Vec<u64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let _ = verify(&code, "not the secret");
                started.elapsed().as_micros().min(u128::from(u32::MAX)) as u64
            })
            .collect();
        took.sort_unstable();
        self.check_micros
            .store(took[1], std::sync::atomic::Ordering::Relaxed);
    }

    /// How long an answer about a code that does not exist waits, so that it takes as long as
    /// a real check (no telling which ids exist) without taking one of the two check slots.
    pub fn check_time(&self) -> Duration {
        Duration::from_micros(self.check_micros.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Starts a session.
    pub fn insert(&self, key: SessionKey, e: Emergency) {
        self.sessions.insert(key, e);
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ends a session (logout).
    pub fn remove(&self, key: &SessionKey) -> bool {
        self.sessions.remove(key).is_some()
    }

    /// Whether this address is throttled.
    pub fn throttled(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&throttle_key(ip))
            .is_some_and(|(n, t)| *n >= MAX_FAILURES && t.elapsed() < FAILURE_WINDOW)
    }

    /// Counts a failure; returns the count in the window.
    pub fn fail(&self, ip: Option<IpAddr>) -> u32 {
        let Some(ip) = ip else { return 0 };
        let key = throttle_key(ip);
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= THROTTLED_CLIENTS && !map.contains_key(&key) {
            map.retain(|_, (_, t)| t.elapsed() < FAILURE_WINDOW);
            if map.len() >= THROTTLED_CLIENTS {
                let oldest = map
                    .iter()
                    .filter(|(_, (n, _))| *n < MAX_FAILURES)
                    .min_by_key(|(_, (_, t))| *t)
                    .or_else(|| map.iter().min_by_key(|(_, (_, t))| *t))
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        let e = map.entry(key).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0
    }
}

/// Posts the alert: generic words only (the app's name, the code's id and label, the time).
pub async fn alert(webhook: &str, app: &str, code: &Code, when: Timestamp) -> Result<u16> {
    let body = serde_json::json!({
        "text": format!("aalgate: emergency access (break-glass) was used for {app}. Review it within 24 hours: aalgate report breakglass."),
        "event": "breakglass_used",
        "app": app,
        "code": code.id,
        "code_name": code.name,
        "time": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(when.0)).to_string(),
    })
    .to_string();
    let got = crate::client::fetch(
        "POST",
        webhook,
        &[("content-type", "application/json".to_string())],
        Some(body.into_bytes()),
        0,
        Duration::from_secs(10),
    )
    .await
    .context("breakglass.webhook")?;
    Ok(got.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> BreakGlassConfig {
        BreakGlassConfig::in_dir(dir)
    }

    fn usage() -> Use {
        Use {
            time: Timestamp::wall(),
            person: "Dr. A".into(),
            reason: "key lost".into(),
            app: "ehr".into(),
            client_ip: None,
            reviews: vec![],
        }
    }

    #[test]
    fn codes_are_single_use_hashed_and_reviewed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (code, secret) = create(&c, "ed-charge-nurse", Duration::from_secs(3600)).unwrap();
        assert_eq!(normalize(&secret).len(), 48);
        assert!(secret.starts_with(&code.id));
        let file = std::fs::read_to_string(&c.file).unwrap();
        assert!(!file.contains(&normalize(&secret)[8..]) && file.contains("$argon2id$"));
        let wrong_secret = format!("{}-{}", code.id, "A".repeat(40));
        assert!(redeem(&c, &wrong_secret, usage()).unwrap().is_none());
        // Wrong codes, then the right one typed sloppily.
        assert!(redeem(&c, "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE", usage())
            .unwrap()
            .is_none());
        assert!(redeem(&c, "short", usage()).unwrap().is_none());
        let sloppy = secret.to_lowercase().replace('-', " ");
        let used = redeem(&c, &sloppy, usage()).unwrap().unwrap();
        assert_eq!(used.id, code.id);
        assert!(
            redeem(&c, &secret, usage()).unwrap().is_none(),
            "single use"
        );
        assert!(review(&c, "nope", "x").is_err());
        assert!(review(&c, &code.id, " ").is_err());
        let r = review(&c, &code.id, "checked with the ED charge nurse").unwrap();
        assert_eq!(r.used.unwrap().reviews.len(), 1);
        // Unused codes cannot be reviewed; bad names and TTLs are refused.
        let (other, _) = create(&c, "pharmacy", Duration::from_secs(600)).unwrap();
        assert!(review(&c, &other.id, "x").is_err());
        assert!(create(&c, "", Duration::from_secs(600)).is_err());
        assert!(create(&c, "x", Duration::from_secs(86400)).is_err());
        assert_eq!(codes(&c).unwrap().len(), 2);
    }

    #[test]
    fn sessions_are_per_host_and_expire_and_failures_throttle() {
        let e = Emergencies::default();
        let key = aalgate_session::SessionId::generate().key();
        let now = Timestamp::wall();
        e.insert(
            key.clone(),
            Emergency {
                code: "ab12".into(),
                name: "ed".into(),
                person: "Dr. A".into(),
                host: "ehr.example".into(),
                started: now,
                expires: now.plus(Duration::from_secs(60)),
            },
        );
        assert!(e.get(&key, "ehr.example", now).is_some());
        assert!(e.get(&key, "billing.example", now).is_none());
        assert!(e
            .get(&key, "ehr.example", now.plus(Duration::from_secs(60)))
            .is_none());
        let s = e.get(&key, "ehr.example", now).unwrap().session();
        assert!(is_emergency(&s) && s.user == "breakglass:ab12" && s.aal == Aal::Aal1);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!e.throttled(Some(ip)));
            e.fail(Some(ip));
        }
        assert!(e.throttled(Some(ip)));
        assert!(!e.throttled(Some("10.0.0.10".parse().unwrap())));
        e.succeeded(Some(ip));
        assert!(!e.throttled(Some(ip)));
        // IPv6: one /64 is one client.
        for i in 0..MAX_FAILURES {
            e.fail(Some(format!("2001:db8:1:2::{i:x}").parse().unwrap()));
        }
        assert!(e.throttled(Some("2001:db8:1:2:ffff::1".parse().unwrap())));
        assert!(!e.throttled(Some("2001:db8:1:3::1".parse().unwrap())));
    }

    #[test]
    fn a_spray_of_fresh_addresses_does_not_reset_a_throttled_one() {
        let e = Emergencies::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            e.fail(Some(ip));
        }
        assert!(e.throttled(Some(ip)));
        // Then it sprays from many other addresses, and comes back.
        for i in 0..(THROTTLED_CLIENTS as u32 + 2_000) {
            e.fail(Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i))));
        }
        assert!(e.throttled(Some(ip)), "a spray reset the throttle");
        assert!(
            e.failures.lock().unwrap().len() <= THROTTLED_CLIENTS,
            "bounded"
        );
    }
}
