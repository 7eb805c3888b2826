//! `aalgate store backup` / `restore`: a copy of the directory (people, their credentials,
//! their groups), never of sessions or one-time tokens.
//!
//! A restore that brought back sessions, invites, handoff codes or ceremony state would revive
//! what was logged out or used after the backup. So only these namespaces are copied, and a
//! restore never enables anyone: over an existing directory (`--replace`), a person disabled
//! now stays disabled and a person removed since the backup comes back disabled, and every
//! restored person's sessions end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aalgate_auth::Directory;
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

    /// Writes it to `path` (mode 0600: it names every person), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = o
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        serde_json::to_writer(std::io::BufWriter::new(&f), self)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
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
        if let Some(e) = b
            .entries
            .iter()
            .find(|e| !DIRECTORY_NS.contains(&e.ns.as_str()))
        {
            bail!(
                "{}: holds {:?} records; a backup holds only people, credentials and groups",
                path.display(),
                e.ns
            );
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
    /// Of those, kept or made disabled (disabled now, or removed since the backup).
    pub disabled: Vec<String>,
    /// Sessions ended.
    pub sessions: usize,
}

/// Writes a backup into `store`. Without `replace`, only into a store that has nobody yet.
pub async fn restore(store: Arc<dyn SessionStore>, b: &Backup, replace: bool) -> Result<Restored> {
    let dir = Directory::new(store.clone());
    let now: HashMap<String, bool> = {
        let mut m = HashMap::new();
        for (id, _) in store.kv_list("user").await? {
            let disabled = dir.user(&id).await?.is_none_or(|u| u.disabled);
            m.insert(id, disabled);
        }
        m
    };
    if !now.is_empty() && !replace {
        bail!(
            "the store already has {} person(s); a restore is for a new, empty store. To write the backup's people, credentials and groups over the current ones, add --replace: nobody is enabled by it (a person disabled now, or removed since the backup, stays or comes back disabled), and every restored person's sessions end",
            now.len()
        );
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut users = Vec::new();
    for e in &b.entries {
        let v = b64
            .decode(&e.value)
            .with_context(|| format!("backup record {}/{}: bad base64", e.ns, e.key))?;
        store.kv_put(&e.ns, &e.key, &v, None).await?;
        if e.ns == "user" {
            users.push(e.key.clone());
        }
    }
    let (mut disabled, mut sessions) = (Vec::new(), 0);
    for id in &users {
        if replace && now.get(id).is_none_or(|d| *d) {
            sessions += dir.disable(id).await?;
            disabled.push(id.clone());
        } else {
            sessions += store.revoke_user(id).await?;
        }
    }
    Ok(Restored {
        records: b.entries.len(),
        users: users.len(),
        disabled,
        sessions,
    })
}
