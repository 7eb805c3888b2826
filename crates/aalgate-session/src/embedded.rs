//! The embedded backend: one redb file, opened in multi-writer mode so the gateway and the CLI
//! can use it at the same time. redb is synchronous, so calls run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aalgate_policy::{Timeouts, Timestamp};
use async_trait::async_trait;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::id::SessionKey;
use crate::store::{Flow, Resolved, Session, SessionStats, SessionStore, StoreError, ACCESS_NS};

/// redb's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// `user \0 session-key` -> expiry, so "revoke every session of a user" is one range scan.
const USER_INDEX: TableDefinition<&str, u64> = TableDefinition::new("user_sessions");
const FLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("flows");
/// Cookie handle -> linked session record (JSON [`StoredLink`]).
const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
/// `ns \0 key` -> 8 bytes of expiry (Unix seconds, little endian; 0 = never) and the value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

#[derive(Serialize, Deserialize)]
struct StoredLink {
    record: String,
    host: String,
    expires: Timestamp,
}

/// Where a store reads the time its records expire by.
pub trait StoreClock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock, as is: for a process that keeps no clock of its own (the CLI).
pub struct WallClock;

impl StoreClock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp::wall()
    }
}

fn kv_key(ns: &str, key: &str) -> String {
    format!("{ns}\0{key}")
}

fn kv_encode(value: &[u8], ttl: Option<Duration>, now: Timestamp) -> Vec<u8> {
    let exp = ttl.map(|t| now.plus(t).0.max(1)).unwrap_or(0);
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&exp.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// The value, if the record is well formed and live at `now`.
fn kv_decode(raw: &[u8], now: Timestamp) -> Option<Vec<u8>> {
    let exp = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    (exp == 0 || exp > now.0).then(|| raw[8..].to_vec())
}

#[derive(Serialize, Deserialize)]
struct StoredFlow {
    flow: Flow,
    expires: Timestamp,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn index_key(user: &str, key: &SessionKey) -> String {
    format!("{user}\0{}", key.as_str())
}

/// Sessions and flows in a redb file under a state directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Calls on the blocking pool at once. redb runs one write at a time anyway; without a
    /// cap a flood of flows spreads over dozens of blocking threads, and each thread's
    /// allocator heap stays resident (measured: +120 MiB of RSS for 7,000 anonymous flows).
    calls: Arc<tokio::sync::Semaphore>,
    /// Point reads on the blocking pool at once: apart from the writes' slots.
    reads: Arc<tokio::sync::Semaphore>,
    /// Where large values live (`<dir>/values`).
    side: PathBuf,
    /// The time its expiry times are written and checked at ([`EmbeddedStore::with_clock`]).
    clock: Arc<dyn StoreClock>,
}

/// Embedded-store calls running at once; the rest wait (within the store deadline).
const CONCURRENT_CALLS: usize = 4;
/// Point reads running at once, besides those calls.
const CONCURRENT_READS: usize = 4;

/// Values this large (kept forms) live in their own files under `<dir>/values/`, named from
/// their `kv` record. redb stores a value just over 1 MiB in a 2 MiB page run and reuses freed
/// runs slowly, so under churn its file grew to about 4x the live data and never shrank; a
/// file per value is freed the moment the record goes.
const SIDE_MIN: usize = 64 * 1024;
/// Marks a `kv` value that lives in a side file: the marker, then the file name.
const SIDE_MARK: &[u8] = b"\0aalgate-side-file\0";
/// A side file with no record older than this is an orphan of a crash (a record is written
/// right after its file).
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// The side file a `kv` value names, if it names one.
fn side_name(value: &[u8]) -> Option<&str> {
    value
        .strip_prefix(SIDE_MARK)
        .and_then(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The value of a live `kv` record: inline, or read from its side file (`None` if that is
/// gone).
fn kv_resolve(side: &Path, raw: &[u8], now: Timestamp) -> Option<Vec<u8>> {
    let v = kv_decode(raw, now)?;
    match side_name(&v) {
        Some(name) => std::fs::read(side.join(name)).ok(),
        None => Some(v),
    }
}

/// Removes the side file a removed record named, if any.
fn drop_side(side: &Path, raw: &[u8]) {
    if let Some(name) = raw.get(8..).and_then(side_name) {
        let _ = std::fs::remove_file(side.join(name));
    }
}

/// Writes `value` to a new side file (fsynced, then renamed into place) and returns its name.
fn write_side(side: &Path, value: &[u8]) -> Result<String, StoreError> {
    use rand::RngCore;
    use std::io::Write;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // Made on the first large value, not at open: a CLI run as root (`aalgate users ...`)
    // opens the store too, and a root-owned directory would keep the gateway from writing.
    let mut mk = std::fs::DirBuilder::new();
    mk.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        mk.mode(0o700);
    }
    mk.create(side)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", side.display())))?;
    let tmp = side.join(format!("{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(unavailable)?;
    f.write_all(value).map_err(unavailable)?;
    f.sync_data().map_err(unavailable)?;
    std::fs::rename(&tmp, side.join(&name)).map_err(unavailable)?;
    // The rename itself must survive a power loss before the record that names it commits.
    std::fs::File::open(side)
        .and_then(|d| d.sync_all())
        .map_err(unavailable)?;
    Ok(name)
}

impl EmbeddedStore {
    /// Every live value of `namespaces` (namespace, key, value), read in one transaction: a
    /// consistent copy while the gateway writes (`aalgate store backup`).
    pub async fn snapshot(
        &self,
        namespaces: &[&str],
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let ranges: Vec<(String, String, String)> = namespaces
            .iter()
            .map(|ns| (ns.to_string(), format!("{ns}\0"), format!("{ns}\u{1}")))
            .collect();
        let side = self.side.clone();
        let now = self.clock.now();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KV).map_err(unavailable)?;
            let mut out = Vec::new();
            for (ns, lo, hi) in &ranges {
                for row in t.range(lo.as_str()..hi.as_str()).map_err(unavailable)? {
                    let (k, v) = row.map_err(unavailable)?;
                    if let Some(v) = kv_resolve(&side, v.value(), now) {
                        out.push((ns.clone(), k.value()[lo.len()..].to_string(), v));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Opens (or creates) `<dir>/sessions.redb`, creating `dir` with mode 0700.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join("sessions.redb");
        let side = dir.join("values");
        let mut builder = Database::builder();
        builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        // redb caches up to 1 GiB of pages by default: under a flood of kept forms that is the
        // gateway's memory. Sessions are small and the gateway caches them itself.
        builder.set_cache_size(CACHE_BYTES);
        let db = builder
            .create(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(unavailable)?;
        {
            tx.open_table(SESSIONS).map_err(unavailable)?;
            tx.open_table(USER_INDEX).map_err(unavailable)?;
            tx.open_table(FLOWS).map_err(unavailable)?;
            tx.open_table(LINKS).map_err(unavailable)?;
            tx.open_table(KV).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            side,
            calls: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)),
            reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
            clock: Arc::new(WallClock),
        })
    }

    /// Times records by `clock` rather than the wall clock: the gateway hands in its own
    /// clock (which never runs backwards), so that what it stores lives as long as it meant,
    /// by the time it reads it with, even after the wall clock was stepped back.
    pub fn with_clock(mut self, clock: Arc<dyn StoreClock>) -> EmbeddedStore {
        self.clock = clock;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.on_pool(&self.calls, f).await
    }

    /// Runs `f` on the blocking pool under one of `slots`. The permit is owned and moved into
    /// the task: a caller that gives up (the store deadline) does not free the slot while the
    /// call still runs.
    async fn on_pool<T: Send + 'static>(
        &self,
        slots: &Arc<tokio::sync::Semaphore>,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let permit = slots.clone().acquire_owned().await.map_err(unavailable)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&db)
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs a point read on the blocking pool under its own slots, never behind the writes:
    /// a session lookup that queued behind a flood's writes (each one an fsync) missed its
    /// deadline. Not on the caller's thread, although a read usually takes microseconds: in
    /// multi-process mode `begin_read` waits for the file's header lock, which another process
    /// (the CLI opening or closing the file, an upgrading gateway) holds across fsyncs, and a
    /// read waiting there would stall a runtime thread, every request on it, and the deadline.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.on_pool(&self.reads, f).await
    }

    /// Link, session and (with `access`) the person's access record, in one read transaction:
    /// all as of the same commit.
    async fn resolve_in_one_read(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
        access: bool,
    ) -> Result<Option<Resolved>, StoreError> {
        let clock_now = self.clock.now();
        let (handle, host) = (handle.clone(), host.to_string());
        self.read(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let links = tx.open_table(LINKS).map_err(unavailable)?;
            let Some(v) = links.get(handle.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let l: StoredLink = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if l.host != host || l.expires <= now {
                return Ok(None);
            }
            let record = SessionKey::from_hex(&l.record)
                .ok_or_else(|| corrupt("link to a malformed session key"))?;
            let t = tx.open_table(SESSIONS).map_err(unavailable)?;
            let Some(v) = t.get(record.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let session: Session = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if session.expires_at <= now {
                return Ok(None);
            }
            let access = if access {
                tx.open_table(KV)
                    .map_err(unavailable)?
                    .get(kv_key(ACCESS_NS, &session.user).as_str())
                    .map_err(unavailable)?
                    // Access records are small: never in a side file.
                    .and_then(|v| kv_decode(v.value(), clock_now))
                    .filter(|v| side_name(v).is_none())
            } else {
                None
            };
            Ok(Some(Resolved {
                record,
                session,
                access,
            }))
        })
        .await
    }

    /// Deletes expired sessions, index entries and flows. Returns how many records went.
    pub async fn purge_expired(&self, now: Timestamp) -> Result<usize, StoreError> {
        let side = self.side.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let sessions = purge_table(&tx, SESSIONS, |v: &[u8]| {
                serde_json::from_slice::<Session>(v)
                    .map(|s| s.expires_at <= now)
                    .unwrap_or(true)
            })?;
            purge_table(&tx, USER_INDEX, |v: u64| v <= now.0)?;
            let flows = purge_table(&tx, FLOWS, |v: &[u8]| {
                serde_json::from_slice::<StoredFlow>(v)
                    .map(|f| f.expires <= now)
                    .unwrap_or(true)
            })?;
            let links = purge_table(&tx, LINKS, |v: &[u8]| {
                serde_json::from_slice::<StoredLink>(v)
                    .map(|l| l.expires <= now)
                    .unwrap_or(true)
            })?;
            let (kv, referenced) = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                let mut dead = Vec::new();
                let mut referenced = std::collections::HashSet::new();
                for row in t.iter().map_err(unavailable)? {
                    let (k, v) = row.map_err(unavailable)?;
                    let raw = v.value();
                    if kv_decode(raw, now).is_none() {
                        // Only what dropping the side file needs (the expiry and the marker).
                        let keep = if raw.get(8..).and_then(side_name).is_some() {
                            raw.to_vec()
                        } else {
                            Vec::new()
                        };
                        dead.push((k.value().to_string(), keep));
                    } else if let Some(name) = raw.get(8..).and_then(side_name) {
                        referenced.insert(name.to_string());
                    }
                }
                for (k, _) in &dead {
                    t.remove(k.as_str()).map_err(unavailable)?;
                }
                (dead, referenced)
            };
            let n = sessions + flows + links + kv.len();
            tx.commit().map_err(unavailable)?;
            for (_, raw) in &kv {
                drop_side(&side, raw);
            }
            // Side files no record names (a crash between the file and its record).
            if let Ok(rd) = std::fs::read_dir(&side) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|a| a >= ORPHAN_AGE);
                    if old && !referenced.contains(name.trim_end_matches(".tmp")) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            Ok(n)
        })
        .await
    }

    /// Bytes on disk: the database file and the side files.
    pub fn disk_bytes(&self) -> u64 {
        let file = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let side: u64 = std::fs::read_dir(&self.side)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        file + side
    }
}

/// Removes the records of a `&str`-keyed table whose value `dead` says are expired (or
/// undecodable). Returns how many went.
fn purge_table<V: redb::Value + 'static>(
    tx: &redb::WriteTransaction,
    def: TableDefinition<&'static str, V>,
    dead: impl Fn(V::SelfType<'_>) -> bool,
) -> Result<usize, StoreError> {
    let mut table = tx.open_table(def).map_err(unavailable)?;
    let keys: Vec<String> = table
        .iter()
        .map_err(unavailable)?
        .filter_map(|r| r.ok())
        .filter(|(_, v)| dead(v.value()))
        .map(|(k, _)| k.value().to_string())
        .collect();
    for k in &keys {
        table.remove(k.as_str()).map_err(unavailable)?;
    }
    Ok(keys.len())
}

fn read_flow(
    db: &Database,
    key: &str,
    now: Timestamp,
    take: bool,
) -> Result<Option<Flow>, StoreError> {
    let decode = |bytes: &[u8]| -> Result<Option<Flow>, StoreError> {
        let f: StoredFlow = serde_json::from_slice(bytes).map_err(corrupt)?;
        Ok((f.expires > now).then_some(f.flow))
    };
    if take {
        let tx = db.begin_write().map_err(unavailable)?;
        let out = {
            let mut t = tx.open_table(FLOWS).map_err(unavailable)?;
            let removed = t.remove(key).map_err(unavailable)?;
            match removed {
                Some(v) => decode(v.value())?,
                None => None,
            }
        };
        tx.commit().map_err(unavailable)?;
        Ok(out)
    } else {
        let tx = db.begin_read().map_err(unavailable)?;
        let t = tx.open_table(FLOWS).map_err(unavailable)?;
        match t.get(key).map_err(unavailable)? {
            Some(v) => decode(v.value()),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    async fn insert(&self, key: &SessionKey, session: &Session) -> Result<(), StoreError> {
        if session.user.contains('\0') {
            return Err(corrupt("user id contains NUL"));
        }
        let (key, session) = (key.clone(), session.clone());
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&session).map_err(corrupt)?;
            let tx = db.begin_write().map_err(unavailable)?;
            {
                tx.open_table(SESSIONS)
                    .map_err(unavailable)?
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
                tx.open_table(USER_INDEX)
                    .map_err(unavailable)?
                    .insert(
                        index_key(&session.user, &key).as_str(),
                        session.expires_at.0,
                    )
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn get(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Session>, StoreError> {
        let key = key.clone();
        self.read(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(SESSIONS).map_err(unavailable)?;
            let Some(v) = t.get(key.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let s: Session = serde_json::from_slice(v.value()).map_err(corrupt)?;
            Ok((s.expires_at > now).then_some(s))
        })
        .await
    }

    async fn touch(&self, key: &SessionKey, last_seen: Timestamp) -> Result<(), StoreError> {
        let key = key.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut t = tx.open_table(SESSIONS).map_err(unavailable)?;
                let current = t
                    .get(key.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut s: Session = serde_json::from_slice(&bytes).map_err(corrupt)?;
                    if last_seen > s.last_seen {
                        s.last_seen = last_seen;
                        let bytes = serde_json::to_vec(&s).map_err(corrupt)?;
                        t.insert(key.as_str(), bytes.as_slice())
                            .map_err(unavailable)?;
                    }
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn remove(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let existed = {
                let mut t = tx.open_table(SESSIONS).map_err(unavailable)?;
                let removed = t
                    .remove(key.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value().to_vec());
                match removed {
                    Some(bytes) => {
                        if let Ok(s) = serde_json::from_slice::<Session>(&bytes) {
                            tx.open_table(USER_INDEX)
                                .map_err(unavailable)?
                                .remove(index_key(&s.user, &key).as_str())
                                .map_err(unavailable)?;
                        }
                        true
                    }
                    None => false,
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
    }

    async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let mut n = 0;
            {
                let mut index = tx.open_table(USER_INDEX).map_err(unavailable)?;
                let (lo, hi) = (format!("{user}\0"), format!("{user}\u{1}"));
                let keys: Vec<String> = index
                    .range(lo.as_str()..hi.as_str())
                    .map_err(unavailable)?
                    .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                    .collect();
                let mut sessions = tx.open_table(SESSIONS).map_err(unavailable)?;
                for ik in &keys {
                    let skey = &ik[user.len() + 1..];
                    if sessions.remove(skey).map_err(unavailable)?.is_some() {
                        n += 1;
                    }
                    index.remove(ik.as_str()).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(n)
        })
        .await
    }

    async fn put_flow(&self, key: &str, flow: &Flow, ttl: Duration) -> Result<(), StoreError> {
        let key = key.to_string();
        let stored = StoredFlow {
            flow: flow.clone(),
            expires: self.clock.now().plus(ttl),
        };
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&stored).map_err(corrupt)?;
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(FLOWS)
                .map_err(unavailable)?
                .insert(key.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn get_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        let key = key.to_string();
        self.read(move |db| read_flow(db, &key, now, false)).await
    }

    async fn take_flow(&self, key: &str, now: Timestamp) -> Result<Option<Flow>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| read_flow(db, &key, now, true))
            .await
    }

    async fn durable(&self) -> Result<bool, StoreError> {
        // Every write is a redb transaction committed with fsync.
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            tx.open_table(SESSIONS).map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn link(
        &self,
        handle: &SessionKey,
        record: &SessionKey,
        host: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let handle = handle.clone();
        let link = StoredLink {
            record: record.as_str().to_string(),
            host: host.to_string(),
            expires: expires_at,
        };
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&link).map_err(corrupt)?;
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(LINKS)
                .map_err(unavailable)?
                .insert(handle.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn unlink(&self, handle: &SessionKey) -> Result<(), StoreError> {
        let handle = handle.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(LINKS)
                .map_err(unavailable)?
                .remove(handle.as_str())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn resolve(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<(SessionKey, Session)>, StoreError> {
        Ok(self
            .resolve_in_one_read(handle, host, now, false)
            .await?
            .map(|r| (r.record, r.session)))
    }

    async fn resolve_with_access(
        &self,
        handle: &SessionKey,
        host: &str,
        now: Timestamp,
    ) -> Result<Option<Resolved>, StoreError> {
        self.resolve_in_one_read(handle, host, now, true).await
    }

    async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let k = kv_key(ns, key);
        let side = self.side.clone();
        let value = value.to_vec();
        let now = self.clock.now();
        self.blocking(move |db| {
            let v = if value.len() >= SIDE_MIN {
                let name = write_side(&side, &value)?;
                let mut marker = SIDE_MARK.to_vec();
                marker.extend_from_slice(name.as_bytes());
                kv_encode(&marker, ttl, now)
            } else {
                kv_encode(&value, ttl, now)
            };
            let tx = db.begin_write().map_err(unavailable)?;
            let old = tx
                .open_table(KV)
                .map_err(unavailable)?
                .insert(k.as_str(), v.as_slice())
                .map_err(unavailable)?
                .map(|o| o.value().to_vec());
            tx.commit().map_err(unavailable)?;
            if let Some(old) = old {
                drop_side(&side, &old);
            }
            Ok(())
        })
        .await
    }

    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = kv_key(ns, key);
        let now = self.clock.now();
        let raw = self
            .read(move |db| {
                let tx = db.begin_read().map_err(unavailable)?;
                let t = tx.open_table(KV).map_err(unavailable)?;
                let v = t.get(k.as_str()).map_err(unavailable)?;
                Ok(v.and_then(|v| kv_decode(v.value(), now)))
            })
            .await?;
        match raw {
            // A large value (a kept form) is a file read: on the pool.
            Some(v) if side_name(&v).is_some() => {
                let side = self.side.clone();
                self.blocking(move |_| {
                    Ok(side_name(&v).and_then(|n| std::fs::read(side.join(n)).ok()))
                })
                .await
            }
            other => Ok(other),
        }
    }

    async fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = kv_key(ns, key);
        let side = self.side.clone();
        let now = self.clock.now();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let raw = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                let removed = t.remove(k.as_str()).map_err(unavailable)?;
                removed.map(|v| v.value().to_vec())
            };
            tx.commit().map_err(unavailable)?;
            let Some(raw) = raw else { return Ok(None) };
            // Taken once: the record is gone before the file is read.
            let out = kv_resolve(&side, &raw, now);
            drop_side(&side, &raw);
            Ok(out)
        })
        .await
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let k = kv_key(ns, key);
        let side = self.side.clone();
        let now = self.clock.now();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let raw = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                let removed = t.remove(k.as_str()).map_err(unavailable)?;
                removed.map(|v| v.value().to_vec())
            };
            tx.commit().map_err(unavailable)?;
            let Some(raw) = raw else { return Ok(false) };
            drop_side(&side, &raw);
            Ok(kv_decode(&raw, now).is_some())
        })
        .await
    }

    async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (lo, hi) = (format!("{ns}\0"), format!("{ns}\u{1}"));
        let side = self.side.clone();
        let now = self.clock.now();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KV).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.range(lo.as_str()..hi.as_str()).map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                if let Some(v) = kv_resolve(&side, v.value(), now) {
                    out.push((k.value()[lo.len()..].to_string(), v));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn kv_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let k = kv_key(ns, key);
        let now = self.clock.now();
        let (expected, new) = (expected.map(<[u8]>::to_vec), new.map(<[u8]>::to_vec));
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let swapped = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                let current = t
                    .get(k.as_str())
                    .map_err(unavailable)?
                    .and_then(|v| kv_decode(v.value(), now));
                if current != expected {
                    false
                } else {
                    match &new {
                        Some(v) => {
                            t.insert(k.as_str(), kv_encode(v, None, now).as_slice())
                                .map_err(unavailable)?;
                        }
                        None => {
                            t.remove(k.as_str()).map_err(unavailable)?;
                        }
                    }
                    true
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(swapped)
        })
        .await
    }

    async fn kv_add(&self, ns: &str, key: &str, by: u64, ttl: Duration) -> Result<u64, StoreError> {
        let k = kv_key(ns, key);
        let now = self.clock.now();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let n = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                let current = t
                    .get(k.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value().to_vec());
                let (n, exp) = match current.as_deref() {
                    Some(raw) if kv_decode(raw, now).is_some() => {
                        let n = std::str::from_utf8(&raw[8..])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0);
                        (n.saturating_add(by), raw[..8].to_vec())
                    }
                    _ => (by, now.plus(ttl).0.max(1).to_le_bytes().to_vec()),
                };
                let mut v = exp;
                v.extend_from_slice(n.to_string().as_bytes());
                t.insert(k.as_str(), v.as_slice()).map_err(unavailable)?;
                n
            };
            tx.commit().map_err(unavailable)?;
            Ok(n)
        })
        .await
    }

    async fn stats(&self, now: Timestamp, limits: &Timeouts) -> Result<SessionStats, StoreError> {
        let limits = *limits;
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(SESSIONS).map_err(unavailable)?;
            let mut stats = SessionStats::default();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                if let Ok(s) = serde_json::from_slice::<Session>(v.value()) {
                    stats.add(&s, now, &limits);
                }
            }
            Ok(stats)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        crate::conformance::run_all(&store).await;
    }

    /// Point reads have slots of their own: writes that hold every write slot (a flood's
    /// fsyncs) do not hold up a session lookup.
    #[test]
    fn reads_do_not_wait_behind_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let now = Timestamp::wall();
        let (key, handle) = (
            crate::SessionId::generate().key(),
            crate::SessionId::generate().key(),
        );
        let session = Session {
            user: "nora".into(),
            aal: aalgate_policy::Aal::Aal2,
            amr: vec!["hwk".into()],
            credential: None,
            auth_time: now,
            last_auth: now,
            last_seen: now,
            expires_at: now.plus(Duration::from_secs(3600)),
        };
        rt.block_on(async {
            store.insert(&key, &session).await.unwrap();
            store
                .link(&handle, &key, "ehr.example", session.expires_at)
                .await
                .unwrap();
            store.kv_put("ns", "k", b"v", None).await.unwrap();
            let flow = crate::conformance::flow("/x");
            store
                .put_flow("f", &flow, Duration::from_secs(60))
                .await
                .unwrap();
        });
        // Every write slot is taken.
        let slots: Vec<_> = (0..CONCURRENT_CALLS)
            .map(|_| store.calls.clone().try_acquire_owned().unwrap())
            .collect();
        let reads = async {
            let got = store.get(&key, now).await.unwrap().map(|s| s.user);
            let resolved = store.resolve(&handle, "ehr.example", now).await.unwrap();
            let kv = store.kv_get("ns", "k").await.unwrap();
            let flow = store.get_flow("f", now).await.unwrap();
            store.ping().await.unwrap();
            (got, resolved.is_some(), kv, flow.is_some())
        };
        let out = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reads).await });
        drop(slots);
        assert_eq!(
            out.expect("reads waited behind the writes"),
            (Some("nora".to_string()), true, Some(b"v".to_vec()), true)
        );
    }

    /// The gateway and a CLI process open the same file: a second handle (a separate file
    /// description, as another process would have) sees and makes writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_openers_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = EmbeddedStore::open(dir.path()).unwrap();
        let b = EmbeddedStore::open(dir.path()).unwrap();
        crate::conformance::cross_handle(&a, &b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_values_live_in_side_files_that_go_with_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let files = || {
            std::fs::read_dir(dir.path().join("values"))
                .unwrap()
                .count()
        };
        // Opening makes no side directory (a root CLI would own it), and the store works
        // without one until the first large value; purging and sizing too.
        assert!(!dir.path().join("values").exists());
        assert!(s.disk_bytes() > 0);
        s.purge_expired(Timestamp::wall()).await.unwrap();
        let big = vec![7u8; SIDE_MIN + 1];
        s.kv_put("kept", "a", &big, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        s.kv_put("kept", "b", &big, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        s.kv_put("kept", "c", b"small", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(files(), 2);
        assert_eq!(
            s.kv_get("kept", "a").await.unwrap().as_deref(),
            Some(&big[..])
        );
        assert_eq!(s.kv_list("kept").await.unwrap().len(), 3);
        // Overwritten with a small value: the old file goes.
        s.kv_put("kept", "b", b"x", None).await.unwrap();
        assert_eq!(files(), 1);
        // Taken once; the file goes with it.
        assert_eq!(
            s.kv_take("kept", "a").await.unwrap().as_deref(),
            Some(&big[..])
        );
        assert_eq!(s.kv_take("kept", "a").await.unwrap(), None);
        assert_eq!(files(), 0);
        // Expired records lose their files at the purge; an orphan file (a crash between
        // the file and its record) goes once it is old.
        s.kv_put("kept", "d", &big, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        std::fs::write(dir.path().join("values").join("0".repeat(32)), b"orphan").unwrap();
        let later = Timestamp::wall().plus(Duration::from_secs(5));
        s.purge_expired(later).await.unwrap();
        assert_eq!(files(), 1, "the young orphan stays until ORPHAN_AGE");
        assert!(s.kv_get("kept", "d").await.unwrap().is_none());
        assert!(s.disk_bytes() > 0);
    }

    #[tokio::test]
    async fn survives_reopen_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::SessionId::generate();
        let now = Timestamp::wall();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.insert(&id.key(), &crate::conformance::session("reopen", now, 3600))
                .await
                .unwrap();
            s.insert(
                &crate::SessionId::generate().key(),
                &crate::conformance::session("old", Timestamp(now.0 - 7200), 3600),
            )
            .await
            .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&id.key(), now).await.unwrap().unwrap().user, "reopen");
        assert_eq!(s.purge_expired(now).await.unwrap(), 1);
        assert!(s.get(&id.key(), now).await.unwrap().is_some());
    }
}
