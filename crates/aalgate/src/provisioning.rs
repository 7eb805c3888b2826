//! The provisioning client's credential: a bearer token whose SHA-256 (hex) is kept in
//! `scim.token_file` (the token itself is shown once, by `aalgate scim token`). A presented
//! token is hashed and the hashes compared in constant time, so neither the file nor the
//! timing of a refusal tells anything of the token.

use std::path::Path;

use anyhow::{bail, Context, Result};
use subtle::ConstantTimeEq;

/// What the SCIM endpoint checks a request against.
#[derive(Clone, Debug)]
pub struct ScimAccess {
    hash: String,
    /// The client's name for the audit log (`scim:<client>`).
    pub client: String,
    /// The groups the directory may manage (`name` or `prefix-*`); `None`: every group.
    pub groups: Option<Vec<String>>,
}

impl ScimAccess {
    /// Reads the token hash; a missing or malformed file stops the gateway from starting.
    pub fn load(cfg: &crate::config::ScimConfig) -> Result<ScimAccess> {
        let text = std::fs::read_to_string(&cfg.token_file).with_context(|| {
            format!(
                "scim.token_file {}: create it with `aalgate scim token --config <this config>`",
                cfg.token_file.display()
            )
        })?;
        let mut a = ScimAccess::from_hash(text.trim(), &cfg.client)
            .with_context(|| format!("scim.token_file {}", cfg.token_file.display()))?;
        a.groups = cfg.groups.clone();
        Ok(a)
    }

    /// Whether the directory may see and change group `name` (`scim.groups`).
    pub fn may_manage(&self, name: &str) -> bool {
        self.groups.as_ref().is_none_or(|list| {
            list.iter().any(|g| match g.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => g == name,
            })
        })
    }

    /// From a hex SHA-256.
    pub fn from_hash(hash: &str, client: &str) -> Result<ScimAccess> {
        if hash.len() != 64
            || !hash
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            bail!("not a token hash (64 lowercase hex digits): write it with `aalgate scim token`, never the token itself");
        }
        Ok(ScimAccess {
            hash: hash.to_string(),
            client: client.to_string(),
            groups: None,
        })
    }

    /// Whether an `Authorization` header carries the token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(v) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let Some((scheme, token)) = v.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let presented = aalgate_auth::token::hash_str(token.trim());
        bool::from(presented.as_bytes().ct_eq(self.hash.as_bytes()))
    }
}

/// Mints a token: writes its hash to `path` (owner-only, replacing any older one) and returns
/// the token, to be pasted into the directory's provisioning settings.
pub fn mint(path: &Path) -> Result<String> {
    let token = aalgate_auth::Token::generate();
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        writeln!(f, "{}", token.hash())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token.expose().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file holds the hash: the token is accepted, the hash itself (a leaked file) and
    /// anything else are not.
    #[test]
    fn only_the_token_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scim.sha256");
        let token = mint(&path).unwrap();
        let hash = std::fs::read_to_string(&path).unwrap();
        let a = ScimAccess::from_hash(hash.trim(), "entra").unwrap();
        assert!(a.accepts(Some(format!("Bearer {token}").as_bytes())));
        assert!(a.accepts(Some(format!("bearer  {token} ").as_bytes())));
        for bad in [
            format!("Bearer {}", hash.trim()),
            format!("Basic {token}"),
            token.clone(),
            format!("Bearer {token}x"),
            "Bearer ".into(),
        ] {
            assert!(!a.accepts(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!a.accepts(None));
        assert!(ScimAccess::from_hash(&token, "entra").is_err());
        let mut scoped = a.clone();
        assert!(scoped.may_manage("epcs-signers"));
        scoped.groups = Some(vec!["clinical".into(), "entra-*".into()]);
        assert!(scoped.may_manage("clinical") && scoped.may_manage("entra-nurses"));
        assert!(!scoped.may_manage("epcs-signers") && !scoped.may_manage("clinical-x"));
    }
}
