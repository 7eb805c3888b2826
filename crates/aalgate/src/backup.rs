//! `aalgate store backup` / `restore`: a copy of the directory (people, their credentials,
//! their groups), never of sessions or one-time tokens.
//!
//! A restore that brought back sessions, invites, handoff codes or ceremony state would revive
//! what was logged out or used after the backup. So only these namespaces are copied. Into a
//! store that has people already (`--merge`), a restore writes only what the store lacks:
//! everyone present stays exactly as they are now (keys revoked, groups removed, a disable
//! since the backup all stay), and a person removed since the backup comes back disabled.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use aalgate_session::SessionStore;
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a backup holds: accounts, their credential and handle indexes, groups and e-mail, the
/// records SCIM and identity providers keep about them.
pub const DIRECTORY_NS: [&str; 7] = [
    "user",
    "handle",
    "cred",
    aalgate_session::ACCESS_NS,
    crate::endpoints::scim::SCIM_USER_NS,
    crate::endpoints::scim::SCIM_GROUP_NS,
    aalgate_auth::directory::PROVIDER_SUBJECT_NS,
];

const FORMAT: &str = "aalgate-directory-backup";

/// The file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    format: String,
    version: u32,
    /// When it was taken (RFC 3339).
    pub created: String,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    ns: String,
    key: String,
    /// base64url.
    value: String,
}

impl Entry {
    fn bytes(&self) -> Result<Vec<u8>> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.value)
            .with_context(|| format!("backup record {}/{}: bad base64", self.ns, self.key))
    }

    fn user(&self) -> Result<aalgate_auth::User> {
        serde_json::from_slice(&self.bytes()?)
            .with_context(|| format!("backup person {:?}: not a person record", self.key))
    }
}

impl Backup {
    /// From a store's snapshot (namespace, key, value).
    pub fn new(rows: Vec<(String, String, Vec<u8>)>) -> Backup {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Backup {
            format: FORMAT.into(),
            version: 1,
            created: crate::audit::now_rfc3339(),
            entries: rows
                .into_iter()
                .map(|(ns, key, v)| Entry {
                    ns,
                    key,
                    value: b64.encode(v),
                })
                .collect(),
        }
    }

    /// How many people it holds.
    pub fn users(&self) -> usize {
        self.entries.iter().filter(|e| e.ns == "user").count()
    }

    /// Writes it to `path` (mode 0600: it names every person), atomically: a new file of its
    /// own beside it, synced, renamed over `path`, and the directory synced.
    pub fn write(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = o
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let written = serde_json::to_writer(std::io::BufWriter::new(&f), self)
            .map_err(anyhow::Error::from)
            .and_then(|()| f.sync_all().map_err(anyhow::Error::from))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", path.display())));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    }

    /// Reads and checks a backup file.
    pub fn read(path: &Path) -> Result<Backup> {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let b: Backup = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not an aalgate backup", path.display()))?;
        if b.format != FORMAT || b.version != 1 {
            bail!(
                "{}: not an aalgate directory backup (version 1)",
                path.display()
            );
        }
        for e in &b.entries {
            if !DIRECTORY_NS.contains(&e.ns.as_str()) {
                bail!(
                    "{}: holds {:?} records; a backup holds only people, credentials and groups",
                    path.display(),
                    e.ns
                );
            }
            e.bytes()?;
            if e.ns == "user"
                && (e.user()?.id != e.key || !aalgate_auth::directory::valid_user_id(&e.key))
            {
                bail!(
                    "{}: the person record {:?} is not well-formed",
                    path.display(),
                    e.key
                );
            }
        }
        Ok(b)
    }
}

/// What a restore did.
pub struct Restored {
    /// Records written.
    pub records: usize,
    /// People restored.
    pub users: usize,
    /// Of those, restored disabled (removed since the backup, in a merge).
    pub disabled: Vec<String>,
    /// Sessions ended.
    pub sessions: usize,
}

/// Writes a backup into `store`: all of it into a store with nobody yet; with `merge`, only
/// the records the store lacks, people among them disabled.
pub async fn restore(store: Arc<dyn SessionStore>, b: &Backup, merge: bool) -> Result<Restored> {
    let people = store.kv_list("user").await?.len();
    if people > 0 && !merge {
        bail!(
            "the store already has {people} person(s); a restore is for a new, empty store. To add only what the store lacks (people removed since the backup come back disabled; everyone present stays exactly as now), add --merge"
        );
    }
    let mut present: HashMap<&str, HashSet<String>> = HashMap::new();
    if people > 0 {
        for ns in DIRECTORY_NS {
            let keys = store.kv_list(ns).await?.into_iter().map(|(k, _)| k);
            present.insert(ns, keys.collect());
        }
    }
    let (mut records, mut users, mut disabled) = (0, Vec::new(), Vec::new());
    for e in &b.entries {
        if present
            .get(e.ns.as_str())
            .is_some_and(|keys| keys.contains(&e.key))
        {
            continue;
        }
        let value = if e.ns == "user" {
            let mut u = e.user()?;
            if people > 0 && !u.disabled {
                u.disabled = true;
                u.disabled_by = Some(aalgate_auth::Deactivation::Operator);
                disabled.push(e.key.clone());
            }
            serde_json::to_vec(&u)?
        } else {
            e.bytes()?
        };
        // Written only if still absent: what was created meanwhile is not overwritten.
        if store.kv_swap(&e.ns, &e.key, None, Some(&value)).await? {
            records += 1;
            if e.ns == "user" {
                users.push(e.key.clone());
            }
        }
    }
    let mut sessions = 0;
    for id in &users {
        sessions += store.revoke_user(id).await?;
    }
    Ok(Restored {
        records,
        users: users.len(),
        disabled,
        sessions,
    })
}
