//! Users, invites, pending ceremonies and handoff codes, kept in the
//! session store's key-value space so every gateway instance and the CLI share them.
//!
//! Namespaces: `user` (id -> [`User`]), `handle` (WebAuthn user handle -> id), `cred`
//! (credential id -> user id: a credential belongs to one account), `invite` (token hash ->
//! [`Invite`]), `pending` (ceremony id -> [`Pending`], 5 minutes, taken once), `code`
//! (handoff code hash -> JSON, 60 s, taken once). There is no per-account failure counter:
//! a WebAuthn signature cannot be guessed, so failures are not guessing, and an account-wide
//! lockout would only let anyone who knows a user name lock that person out (the gateway slows
//! failing clients and browsers instead, `aalgate::limits::SignInFailures`).

use std::sync::Arc;
use std::time::Duration;

use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{FlowKind, SessionStore, StoreError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Deactivation, Invite, Membership, User};
use crate::token::Token;

/// Attempts of one group or e-mail change against concurrent ones.
const MEMBERSHIP_RETRIES: usize = 16;

/// How long a started ceremony can be finished.
pub const PENDING_TTL: Duration = Duration::from_secs(300);
/// How long a handoff code works.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Invites stay listed this long after they expire, for the enrollment report.
const INVITE_KEEP: Duration = Duration::from_secs(30 * 86400);

/// Why a directory call failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The store failed (fail closed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record did not decode.
    #[error("corrupt {0} record: {1}")]
    Corrupt(&'static str, String),
    /// No such user.
    #[error("no user {0:?}")]
    NoUser(String),
    /// Bad input from IT (a user name with spaces, say).
    #[error("{0}")]
    Invalid(String),
    /// A name or address another person has (compared without case).
    #[error("{0}")]
    Taken(String),
}

/// What a ceremony is for. Stored as `enroll`, `login`, `step_up`, `reauth` or `switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Registering a credential from an invite.
    Enroll,
    /// Signing in for a flow of this kind.
    Login,
    /// See [`FlowKind::StepUp`].
    StepUp,
    /// See [`FlowKind::Reauth`].
    Reauth,
    /// See [`FlowKind::Switch`].
    Switch,
}

impl Purpose {
    /// The flow kind a sign-in ceremony serves (`None`: enrollment).
    pub fn flow_kind(self) -> Option<FlowKind> {
        match self {
            Purpose::Enroll => None,
            Purpose::Login => Some(FlowKind::Login),
            Purpose::StepUp => Some(FlowKind::StepUp),
            Purpose::Reauth => Some(FlowKind::Reauth),
            Purpose::Switch => Some(FlowKind::Switch),
        }
    }
}

impl From<FlowKind> for Purpose {
    fn from(k: FlowKind) -> Purpose {
        match k {
            FlowKind::Login => Purpose::Login,
            FlowKind::StepUp => Purpose::StepUp,
            FlowKind::Reauth => Purpose::Reauth,
            FlowKind::Switch => Purpose::Switch,
        }
    }
}

/// A started ceremony, kept server-side until it is finished once or expires.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    /// What the ceremony is for.
    pub purpose: Purpose,
    /// SHA-256 of the browser binding cookie: only the browser that started may finish.
    pub binding: String,
    /// The sign-in flow (a gateway flow key), if any.
    pub flow: Option<String>,
    /// The user, when known before the ceremony (username-first, step-up, re-auth, enroll).
    pub user: Option<String>,
    /// The invite being redeemed (its token hash).
    pub invite: Option<String>,
    /// Credentials that count (step-up to a level only some reach).
    pub allowed: Option<Vec<String>>,
    /// For an enrollment: the WebAuthn user handle the new credential was created for (a new
    /// user gets it when the enrollment finishes).
    #[serde(default)]
    pub handle: Option<Uuid>,
    /// For an enrollment: the person had an account when it started (an enrollment that finds
    /// it gone, removed meanwhile, must not create it again under the old handle).
    #[serde(default)]
    pub account_existed: bool,
    /// For a ceremony bound to one request: the ceremony nonce (base64url) its challenge was
    /// derived from, with the flow's request digest.
    #[serde(default)]
    pub ceremony_nonce: Option<String>,
    /// The webauthn-rs state (a `RegState` or `AuthState`).
    pub state: serde_json::Value,
    /// When it started.
    pub created: Timestamp,
}

/// Store-backed users and ceremony records.
#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn SessionStore>,
}

fn decode<T: DeserializeOwned>(what: &'static str, v: &[u8]) -> Result<T, DirectoryError> {
    serde_json::from_slice(v).map_err(|e| DirectoryError::Corrupt(what, e.to_string()))
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, DirectoryError> {
    serde_json::to_vec(v).map_err(|e| DirectoryError::Corrupt(what, e.to_string()))
}

pub use aalgate_policy::{valid_group, valid_user_id};

/// The identity-provider account (`<idp>` NUL `<sub>`) each person is bound to at their first
/// sign-in through a provider, by user id: a later sign-in as another provider account (a
/// reused user name, another provider asserting the same name) is refused. `users reset`
/// clears it.
pub const PROVIDER_SUBJECT_NS: &str = "oidc_subject";

pub use aalgate_policy::valid_email;

impl Directory {
    /// Over a (deadline-wrapped) store.
    pub fn new(store: Arc<dyn SessionStore>) -> Directory {
        Directory { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// A user by id.
    pub async fn user(&self, id: &str) -> Result<Option<User>, DirectoryError> {
        match self.store.kv_get("user", id).await? {
            Some(v) => Ok(Some(decode("user", &v)?)),
            None => Ok(None),
        }
    }

    /// A user by WebAuthn user handle.
    pub async fn user_by_handle(&self, handle: Uuid) -> Result<Option<User>, DirectoryError> {
        match self.store.kv_get("handle", &handle.to_string()).await? {
            // A stale index entry (a removed person's name given to someone new) names
            // nobody.
            Some(id) => Ok(self
                .user(&String::from_utf8_lossy(&id))
                .await?
                .filter(|u| u.handle == handle)),
            None => Ok(None),
        }
    }

    /// Writes a user and its indexes as they are, over whatever is stored: for seeding a
    /// store (tests, imports). The gateway's writers change a record with [`Directory::update_user`]
    /// or create one with [`Directory::insert_new_user`], so no write restores a record read
    /// before a `disable` or `remove_user`.
    pub async fn put_user(&self, user: &User) -> Result<(), DirectoryError> {
        self.index(user).await?;
        self.store
            .kv_put("user", &user.id, &encode("user", user)?, None)
            .await?;
        Ok(())
    }

    /// Records a successful sign-in with `used` (its counter and last use) and when, onto the
    /// person's current record. `false`: the person was disabled or removed, or the credential
    /// revoked or flagged, meanwhile; nothing is written.
    pub async fn record_sign_in(
        &self,
        id: &str,
        used: &crate::model::Credential,
        at: Timestamp,
    ) -> Result<bool, DirectoryError> {
        let done = self
            .update_user(id, |fresh| {
                let Some(slot) = fresh.credentials.iter_mut().find(|c| c.id == used.id) else {
                    return Ok(false);
                };
                if fresh.disabled || !slot.usable() {
                    return Ok(false);
                }
                *slot = used.clone();
                fresh.last_login = Some(at);
                Ok(true)
            })
            .await?;
        Ok(done.is_some_and(|(_, wrote)| wrote))
    }

    /// Flags one credential (a cloned key: its signature counter went backwards): it signs
    /// nothing in again until IT replaces it.
    pub async fn flag_credential(
        &self,
        id: &str,
        cred: &str,
        reason: &str,
    ) -> Result<(), DirectoryError> {
        self.update_user(id, |u| {
            let Some(c) = u.credentials.iter_mut().find(|c| c.id == cred) else {
                return Ok(false);
            };
            c.flagged = Some(reason.to_string());
            Ok(true)
        })
        .await?;
        Ok(())
    }

    /// Changes a person's record by compare-and-swap: `change` runs on the current record
    /// and says whether to write (`Ok(false)`: leave it); of two changes at once neither undoes
    /// the other, and a change read before a `disable` or removal is run again on what they
    /// left (or not at all: `None` when there is no record). Returns the record and whether it
    /// was written. The handle and new credentials are indexed after the write.
    pub async fn update_user(
        &self,
        id: &str,
        mut change: impl FnMut(&mut User) -> Result<bool, DirectoryError>,
    ) -> Result<Option<(User, bool)>, DirectoryError> {
        for _ in 0..MEMBERSHIP_RETRIES {
            let Some(raw) = self.store.kv_get("user", id).await? else {
                return Ok(None);
            };
            let mut u: User = decode("user", &raw)?;
            let (handle, known): (Uuid, Vec<String>) = (
                u.handle,
                u.credentials.iter().map(|c| c.id.clone()).collect(),
            );
            if !change(&mut u)? {
                return Ok(Some((u, false)));
            }
            if self
                .store
                .kv_swap("user", id, Some(&raw), Some(&encode("user", &u)?))
                .await?
            {
                // Only what this change added: rewriting the rest could restore an entry a
                // concurrent revoke or removal just deleted (and costs a write per sign-in).
                if u.handle != handle {
                    self.store
                        .kv_put("handle", &u.handle.to_string(), u.id.as_bytes(), None)
                        .await?;
                }
                for c in u.credentials.iter().filter(|c| !known.contains(&c.id)) {
                    self.store
                        .kv_put("cred", &c.id, u.id.as_bytes(), None)
                        .await?;
                }
                return Ok(Some((u, true)));
            }
        }
        Err(DirectoryError::Invalid(format!(
            "{id}'s record kept changing under this change; try again"
        )))
    }

    /// Creates a person's record if none exists (`false`: one does; nothing is written).
    pub async fn insert_new_user(&self, user: &User) -> Result<bool, DirectoryError> {
        if !self
            .store
            .kv_swap("user", &user.id, None, Some(&encode("user", user)?))
            .await?
        {
            return Ok(false);
        }
        self.index(user).await?;
        Ok(true)
    }

    async fn index(&self, user: &User) -> Result<(), DirectoryError> {
        self.store
            .kv_put("handle", &user.handle.to_string(), user.id.as_bytes(), None)
            .await?;
        for c in &user.credentials {
            self.store
                .kv_put("cred", &c.id, user.id.as_bytes(), None)
                .await?;
        }
        Ok(())
    }

    /// The account a credential id is registered to.
    pub async fn credential_owner(&self, cred_id: &str) -> Result<Option<String>, DirectoryError> {
        let Some(v) = self.store.kv_get("cred", cred_id).await? else {
            return Ok(None);
        };
        // A stale index entry (its credential revoked or its person removed meanwhile) names
        // nobody: the record decides.
        let id = String::from_utf8_lossy(&v).into_owned();
        Ok(self
            .user(&id)
            .await?
            .filter(|u| u.credential(cred_id).is_some())
            .map(|u| u.id))
    }

    /// Every user, sorted by id.
    pub async fn users(&self) -> Result<Vec<User>, DirectoryError> {
        let mut out = Vec::new();
        for (_, v) in self.store.kv_list("user").await? {
            out.push(decode::<User>("user", &v)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every user whose record can be read, and how many records could not be.
    pub async fn readable_users(&self) -> Result<(Vec<User>, usize), DirectoryError> {
        let mut out = Vec::new();
        let mut unreadable = 0;
        for (_, v) in self.store.kv_list("user").await? {
            match decode::<User>("user", &v) {
                Ok(u) => out.push(u),
                Err(_) => unreadable += 1,
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((out, unreadable))
    }

    /// Creates a one-time enrollment invite; returns the token (shown once).
    pub async fn invite(
        &self,
        user: &str,
        display_name: &str,
        aal: Aal,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Token, DirectoryError> {
        self.invite_with(user, display_name, aal, ttl, now, None, None)
            .await
    }

    /// An AAL2 invite for a person who just signed in through identity provider `idp`
    /// (`enroll_after_sso`), for the browser whose binding hashes to `browser` only: its
    /// passkey confirms step-ups only ([`crate::Credential::usable_for`]).
    pub async fn invite_after_provider(
        &self,
        user: &str,
        display_name: &str,
        (ttl, now): (Duration, Timestamp),
        idp: &str,
        browser: &str,
    ) -> Result<Token, DirectoryError> {
        self.invite_with(
            user,
            display_name,
            Aal::Aal2,
            ttl,
            now,
            Some(idp),
            Some(browser),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn invite_with(
        &self,
        user: &str,
        display_name: &str,
        aal: Aal,
        ttl: Duration,
        now: Timestamp,
        after_provider: Option<&str>,
        browser: Option<&str>,
    ) -> Result<Token, DirectoryError> {
        let aal = self.check_invite(user, aal).await?;
        let token = Token::generate();
        let invite = Invite {
            user: user.to_string(),
            display_name: display_name.to_string(),
            aal,
            created: now,
            expires: now.plus(ttl),
            after_provider: after_provider.map(str::to_string),
            browser: browser.map(str::to_string),
        };
        self.store
            .kv_put(
                "invite",
                &token.hash(),
                &encode("invite", &invite)?,
                Some(ttl + INVITE_KEEP),
            )
            .await?;
        Ok(token)
    }

    /// Every check an invite makes, without writing anything (the CLI runs it before it
    /// sets an invite's groups). Returns the level the invite will ask for: never less than
    /// the person was proofed for.
    pub async fn check_invite(&self, user: &str, aal: Aal) -> Result<Aal, DirectoryError> {
        if !valid_user_id(user) {
            return Err(DirectoryError::Invalid(format!(
                "user name {user:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
            )));
        }
        if aal == Aal::Aal1 {
            return Err(DirectoryError::Invalid(
                "--aal 1 is not offered: every enrollment is at least AAL2 (a passkey with user verification)".into(),
            ));
        }
        let Some(u) = self.user(user).await? else {
            self.new_id_is_free(user).await?;
            return Ok(aal);
        };
        if u.disabled {
            return Err(DirectoryError::Invalid(format!(
                "user {user} is disabled; re-enable them before inviting"
            )));
        }
        Ok(aal.max(u.proofed_aal))
    }

    /// A new id must not differ from an existing one only in case: `Nora` and `nora` would be
    /// two accounts to the gateway and one to an app that compares names without case (as many
    /// REMOTE_USER apps do). Checked against users, groups records and pending invites.
    async fn new_id_is_free(&self, user: &str) -> Result<(), DirectoryError> {
        let known: Vec<String> = self
            .readable_users()
            .await?
            .0
            .into_iter()
            .map(|u| u.id)
            .chain(self.memberships().await?.into_keys())
            .chain(self.invites().await?.into_iter().map(|(_, i)| i.user))
            .collect();
        if known.iter().any(|k| k == user) {
            return Ok(());
        }
        match known.into_iter().find(|k| k.eq_ignore_ascii_case(user)) {
            Some(other) => Err(DirectoryError::Taken(format!(
                "user name {user:?} differs from the existing {other:?} only in case: use {other:?}, or another name"
            ))),
            None => Ok(()),
        }
    }

    /// A live invite, without using it.
    pub async fn peek_invite(
        &self,
        token: &Token,
        now: Timestamp,
    ) -> Result<Option<Invite>, DirectoryError> {
        match self.store.kv_get("invite", &token.hash()).await? {
            Some(v) => {
                let i: Invite = decode("invite", &v)?;
                Ok((i.expires > now).then_some(i))
            }
            None => Ok(None),
        }
    }

    /// Uses an invite: of two concurrent redemptions, one succeeds.
    pub async fn take_invite(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<Invite>, DirectoryError> {
        match self.store.kv_take("invite", token_hash).await? {
            Some(v) => {
                let i: Invite = decode("invite", &v)?;
                Ok((i.expires > now).then_some(i))
            }
            None => Ok(None),
        }
    }

    /// Every invite still kept (open or recently expired), with its token hash.
    pub async fn invites(&self) -> Result<Vec<(String, Invite)>, DirectoryError> {
        let mut out = Vec::new();
        for (k, v) in self.store.kv_list("invite").await? {
            out.push((k, decode::<Invite>("invite", &v)?));
        }
        Ok(out)
    }

    /// Blocks sign-in and revokes every session of the user at once. Returns how many
    /// sessions ended.
    pub async fn disable(&self, id: &str) -> Result<usize, DirectoryError> {
        self.disable_as(id, Deactivation::Operator).await
    }

    /// [`Directory::disable`] on the word of the hospital's directory (SCIM `active: false`):
    /// the directory may enable the person again, which it may not after IT's `disable`.
    pub async fn disable_by_directory(&self, id: &str) -> Result<usize, DirectoryError> {
        self.disable_as(id, Deactivation::Directory).await
    }

    async fn disable_as(&self, id: &str, by: Deactivation) -> Result<usize, DirectoryError> {
        let updated = self
            .update_user(id, |u| {
                if u.disabled
                    && (u.disabled_by == Some(Deactivation::Operator)
                        || by == Deactivation::Directory)
                {
                    return Ok(false);
                }
                u.disabled = true;
                u.disabled_by = Some(by);
                Ok(true)
            })
            .await;
        // The sessions end even when the record's change was not confirmed (a replicated
        // store's replicas away): the caller is told of the failure and runs it again.
        let revoked = self.store.revoke_user(id).await;
        updated?.ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        Ok(revoked?)
    }

    /// Creates an account with no credential yet (provisioning: the person enrolls from an
    /// invite, or signs in through an identity provider). A name already used, or one that
    /// differs from a known one only in case, is [`DirectoryError::Taken`]; of two creations at
    /// once, one succeeds.
    pub async fn create_user(
        &self,
        id: &str,
        display_name: &str,
        disabled: bool,
        now: Timestamp,
    ) -> Result<User, DirectoryError> {
        if !valid_user_id(id) {
            return Err(DirectoryError::Invalid(format!(
                "user name {id:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
            )));
        }
        if self.user(id).await?.is_some() {
            return Err(DirectoryError::Taken(format!("user {id} exists already")));
        }
        self.new_id_is_free(id).await?;
        let user = User {
            id: id.to_string(),
            display_name: display_name.to_string(),
            handle: Uuid::new_v4(),
            disabled,
            proofed_aal: Aal::Aal2,
            created: now,
            last_login: None,
            credentials: Vec::new(),
            disabled_by: disabled.then_some(Deactivation::Directory),
        };
        if !self.insert_new_user(&user).await? {
            return Err(DirectoryError::Taken(format!("user {id} exists already")));
        }
        Ok(user)
    }

    /// Sets the name shown on the person's own authenticator prompts.
    pub async fn set_display_name(&self, id: &str, name: &str) -> Result<(), DirectoryError> {
        self.update_user(id, |u| {
            let changed = u.display_name != name;
            u.display_name = name.to_string();
            Ok(changed)
        })
        .await?
        .ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        Ok(())
    }

    /// Lets a disabled person sign in again (`aalgate users enable`): their credentials were
    /// kept; their sessions ended when they were disabled. `false`: they were not disabled.
    pub async fn enable(&self, id: &str) -> Result<bool, DirectoryError> {
        self.enable_as(id, Deactivation::Operator).await
    }

    /// [`Directory::enable`] on the word of the hospital's directory: only a person the
    /// directory disabled; one IT disabled stays disabled (`false`, as for one not disabled)
    /// until IT enables them.
    pub async fn enable_by_directory(&self, id: &str) -> Result<bool, DirectoryError> {
        self.enable_as(id, Deactivation::Directory).await
    }

    /// Whether a person is disabled by IT (not by the directory): what only `users enable`
    /// lifts.
    pub async fn disabled_by_operator(&self, id: &str) -> Result<bool, DirectoryError> {
        Ok(self
            .user(id)
            .await?
            .is_some_and(|u| u.disabled && u.disabled_by != Some(Deactivation::Directory)))
    }

    async fn enable_as(&self, id: &str, by: Deactivation) -> Result<bool, DirectoryError> {
        let (_, written) = self
            .update_user(id, |u| {
                if !u.disabled
                    || (by == Deactivation::Directory
                        && u.disabled_by != Some(Deactivation::Directory))
                {
                    return Ok(false);
                }
                u.disabled = false;
                u.disabled_by = None;
                Ok(true)
            })
            .await?
            .ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        Ok(written)
    }

    /// Removes a person: every session ends, and their account, credentials, invites, groups,
    /// e-mail and provider binding are deleted, so a later person given the same name starts
    /// with nothing of theirs. Returns the sessions ended and the removed credentials' audit
    /// fingerprints (the audit log keeps the trail; the directory keeps no dead keys).
    pub async fn remove_user(&self, id: &str) -> Result<(usize, Vec<String>), DirectoryError> {
        // First, in one write: disabled and without credentials, so whatever fails after
        // this leaves nobody who can sign in, and a sign-in finishing meanwhile writes
        // nothing back.
        let mut removed = Vec::new();
        let (u, _) = self
            .update_user(id, |u| {
                removed = u.credentials.clone();
                u.disabled = true;
                u.disabled_by = Some(Deactivation::Operator);
                u.credentials.clear();
                Ok(true)
            })
            .await?
            .ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        let mut ended = self.store.revoke_user(id).await?;
        self.forget_keys(id, &removed).await?;
        self.store.kv_delete(aalgate_session::ACCESS_NS, id).await?;
        self.store.kv_delete("user", id).await?;
        // The handle last: a removal that failed before the record went is found again by
        // its resource id and finished by the directory's retry.
        self.store
            .kv_delete("handle", &u.handle.to_string())
            .await?;
        ended += self.store.revoke_user(id).await?;
        Ok((ended, removed.iter().map(|c| c.audit_id()).collect()))
    }

    /// After a person's credentials were taken off their record: their index entries, the
    /// person's older enrollment links, and the provider account they signed in with (after a
    /// re-proofing or a removal, the next provider sign-in binds again).
    async fn forget_keys(
        &self,
        id: &str,
        removed: &[crate::model::Credential],
    ) -> Result<(), DirectoryError> {
        for c in removed {
            self.store.kv_delete("cred", &c.id).await?;
        }
        for (hash, i) in self.invites().await? {
            if i.user == id {
                self.store.kv_delete("invite", &hash).await?;
            }
        }
        self.store.kv_delete(PROVIDER_SUBJECT_NS, id).await?;
        Ok(())
    }

    /// Removes one credential, and ends the user's sessions (one of them may have been
    /// opened with it). Returns whether it existed.
    pub async fn revoke_credential(&self, id: &str, cred: &str) -> Result<bool, DirectoryError> {
        let (_, removed) = self
            .update_user(id, |u| {
                let before = u.credentials.len();
                u.credentials.retain(|c| c.id != cred);
                Ok(u.credentials.len() != before)
            })
            .await?
            .ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        if !removed {
            return Ok(false);
        }
        self.store.kv_delete("cred", cred).await?;
        self.store.revoke_user(id).await?;
        Ok(true)
    }

    /// Recovery after a lost key: removes every credential and session of the user and issues
    /// a new invite at the level the person was proofed for, so recovery is never weaker than
    /// the original enrollment. Returns the sessions ended, that level and the new token.
    pub async fn reset(
        &self,
        id: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(usize, Aal, Token), DirectoryError> {
        let mut removed = Vec::new();
        let (u, _) = self
            .update_user(id, |u| {
                if u.disabled {
                    return Err(DirectoryError::Invalid(format!(
                        "user {id} is disabled; a reset would not let them sign in"
                    )));
                }
                removed = u.credentials.clone();
                u.credentials.clear();
                Ok(true)
            })
            .await?
            .ok_or_else(|| DirectoryError::NoUser(id.into()))?;
        self.forget_keys(id, &removed).await?;
        let n = self.store.revoke_user(id).await?;
        let aal = u.proofed_aal.max(Aal::Aal2);
        let token = self.invite(id, &u.display_name, aal, ttl, now).await?;
        Ok((n, aal, token))
    }

    /// A person's groups and e-mail (empty if IT set none).
    pub async fn membership(&self, id: &str) -> Result<Membership, DirectoryError> {
        match self.store.kv_get(aalgate_session::ACCESS_NS, id).await? {
            Some(v) => decode("access", &v),
            None => Ok(Membership::default()),
        }
    }

    /// Adds and removes groups of a person (who need not have enrolled yet: an invite's
    /// groups are set before the first sign-in). Returns the record before and after the
    /// change, which is atomic: of two changes at once, neither undoes the other. Every
    /// instance sees it within 1 s (the session cache's bound).
    pub async fn change_groups(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(Membership, Membership), DirectoryError> {
        if let Some(g) = add.iter().chain(remove).find(|g| !valid_group(g)) {
            return Err(DirectoryError::Invalid(format!(
                "group name {g:?}: use lowercase letters, digits and '-' (at most 63), e.g. epcs-signers"
            )));
        }
        self.update_membership(id, |m| {
            m.groups.retain(|g| !remove.contains(g));
            m.groups.extend(add.iter().cloned());
            m.groups.sort();
            m.groups.dedup();
            m.from_provider
                .retain(|g| !remove.contains(g) && !add.contains(g));
        })
        .await
    }

    /// Replaces the groups an identity provider asserted for a person with `asserted` (at a
    /// sign-in through it); the groups IT set stay. Names that are not valid group names are
    /// lowercased, or left out (returned, for the log).
    pub async fn sync_provider_groups(
        &self,
        id: &str,
        asserted: &[String],
    ) -> Result<((Membership, Membership), Vec<String>), DirectoryError> {
        let mut fresh: Vec<String> = Vec::new();
        let mut skipped = Vec::new();
        for g in asserted {
            let g2 = g.trim().to_ascii_lowercase();
            if valid_group(&g2) {
                fresh.push(g2);
            } else {
                skipped.push(g.clone());
            }
        }
        fresh.sort();
        fresh.dedup();
        let changed = self
            .update_membership(id, |m| {
                let local: Vec<String> = m
                    .groups
                    .iter()
                    .filter(|g| !m.from_provider.contains(g))
                    .cloned()
                    .collect();
                m.from_provider = fresh
                    .iter()
                    .filter(|g| !local.contains(g))
                    .cloned()
                    .collect();
                m.groups = local.into_iter().chain(fresh.iter().cloned()).collect();
                m.groups.sort();
                m.groups.dedup();
            })
            .await?;
        Ok((changed, skipped))
    }

    /// Sets (or clears) a person's e-mail address. An address another person has already
    /// (compared without case) is refused: an app that identifies people by it would take one
    /// for the other.
    pub async fn set_email(
        &self,
        id: &str,
        email: Option<&str>,
    ) -> Result<(Membership, Membership), DirectoryError> {
        if let Some(e) = email {
            if !valid_email(e) {
                return Err(DirectoryError::Invalid(format!(
                    "e-mail address {e:?} is not valid: write it as name@domain.example"
                )));
            }
            self.email_is_free(e, id).await?;
        }
        self.update_membership(id, |m| m.email = email.map(str::to_string))
            .await
    }

    /// [`DirectoryError::Taken`] when a person other than `id` has the address `e` (compared
    /// without case).
    pub async fn email_is_free(&self, e: &str, id: &str) -> Result<(), DirectoryError> {
        if let Some((other, _)) = self.memberships().await?.into_iter().find(|(u, m)| {
            u != id
                && m.email
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(e))
        }) {
            return Err(DirectoryError::Taken(format!(
                "e-mail address {e} belongs to {other} already: one address per person"
            )));
        }
        Ok(())
    }

    /// Read, change, compare-and-swap, until no other change came in between.
    async fn update_membership(
        &self,
        id: &str,
        change: impl Fn(&mut Membership),
    ) -> Result<(Membership, Membership), DirectoryError> {
        if !valid_user_id(id) {
            return Err(DirectoryError::Invalid(format!(
                "user name {id:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
            )));
        }
        for attempt in 0..MEMBERSHIP_RETRIES {
            let raw = self.store.kv_get(aalgate_session::ACCESS_NS, id).await?;
            if attempt == 0 && raw.is_none() && self.user(id).await?.is_none() {
                self.new_id_is_free(id).await?;
            }
            let before: Membership = match &raw {
                Some(v) => decode("access", v)?,
                None => Membership::default(),
            };
            let mut after = before.clone();
            change(&mut after);
            let new = if after == Membership::default() {
                None
            } else {
                Some(encode("access", &after)?)
            };
            if self
                .store
                .kv_swap(
                    aalgate_session::ACCESS_NS,
                    id,
                    raw.as_deref(),
                    new.as_deref(),
                )
                .await?
            {
                return Ok((before, after));
            }
        }
        Err(DirectoryError::Invalid(format!(
            "{id}'s groups kept changing under this command; run it again"
        )))
    }

    /// Every person with a membership record, by user id.
    pub async fn memberships(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Membership>, DirectoryError> {
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in self.store.kv_list(aalgate_session::ACCESS_NS).await? {
            out.insert(k, decode::<Membership>("access", &v)?);
        }
        Ok(out)
    }

    /// Every group with its members, sorted.
    pub async fn groups(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, DirectoryError> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (user, m) in self.memberships().await? {
            for g in m.groups {
                out.entry(g).or_default().push(user.clone());
            }
        }
        Ok(out)
    }

    /// Keeps a started ceremony for [`PENDING_TTL`].
    pub async fn put_pending(&self, id: &str, p: &Pending) -> Result<(), DirectoryError> {
        self.store
            .kv_put("pending", id, &encode("pending", p)?, Some(PENDING_TTL))
            .await?;
        Ok(())
    }

    /// Takes a started ceremony (once).
    pub async fn take_pending(&self, id: &str) -> Result<Option<Pending>, DirectoryError> {
        match self.store.kv_take("pending", id).await? {
            Some(v) => Ok(Some(decode("pending", &v)?)),
            None => Ok(None),
        }
    }

    /// Keeps a handoff record under a fresh code for [`CODE_TTL`]; returns the code.
    pub async fn put_code<T: Serialize>(&self, value: &T) -> Result<Token, DirectoryError> {
        let code = Token::generate();
        self.store
            .kv_put(
                "code",
                &code.hash(),
                &encode("code", value)?,
                Some(CODE_TTL),
            )
            .await?;
        Ok(code)
    }

    /// Takes a handoff record (once).
    pub async fn take_code<T: DeserializeOwned>(
        &self,
        code: &Token,
    ) -> Result<Option<T>, DirectoryError> {
        match self.store.kv_take("code", &code.hash()).await? {
            Some(v) => Ok(Some(decode("code", &v)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> crate::model::Credential {
        let shape = crate::ceremony::CredentialShape {
            id_len: 16,
            transports: None,
        };
        let key =
            crate::ceremony::decoy(&[7u8; 32], &Uuid::new_v4().to_string(), 0, 0, &shape).unwrap();
        crate::model::Credential {
            id: Uuid::new_v4().to_string(),
            kind: crate::model::CredentialKind::Passkey,
            aaguid: None,
            aal: Aal::Aal2,
            backup_eligible: false,
            created: Timestamp(0),
            last_used: None,
            flagged: None,
            key,
            after_provider: None,
        }
    }

    /// A leaver disabled, or removed, while sign-ins of theirs finish stays disabled or
    /// removed: no sign-in writes back a record it read before (it would bring back the
    /// account, enabled, with its passkeys).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaver_is_never_brought_back_by_a_sign_in_finishing_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SessionStore> =
            Arc::new(aalgate_session::EmbeddedStore::open(dir.path()).unwrap());
        let d = Directory::new(store);
        for round in 0..24 {
            let id = format!("leaver{round}");
            let c = credential();
            d.create_user(&id, &id, false, Timestamp(1)).await.unwrap();
            let mut u = d.user(&id).await.unwrap().unwrap();
            u.credentials.push(c.clone());
            d.put_user(&u).await.unwrap();
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (d, id, c) = (d.clone(), id.clone(), c.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..6 {
                        d.record_sign_in(&id, &c, Timestamp::wall()).await.unwrap();
                    }
                }));
            }
            let (d2, id2) = (d.clone(), id.clone());
            let removing = round % 2 == 1;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if removing {
                    d2.remove_user(&id2).await.unwrap();
                } else {
                    d2.disable(&id2).await.unwrap();
                }
            }));
            for t in tasks {
                t.await.unwrap();
            }
            let after = d.user(&id).await.unwrap();
            if removing {
                assert!(
                    after.is_none(),
                    "round {round}: a sign-in brought a removed account back: {after:?}"
                );
                assert_eq!(
                    d.credential_owner(&c.id).await.unwrap(),
                    None,
                    "round {round}"
                );
            } else {
                assert!(
                    after.is_some_and(|u| u.disabled),
                    "round {round}: a sign-in undid the disable"
                );
            }
        }
    }

    /// Two IT commands at once on one person's groups: neither undoes the other, and each
    /// gets the before and after of its own change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_group_changes_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SessionStore> =
            Arc::new(aalgate_session::EmbeddedStore::open(dir.path()).unwrap());
        let d = Directory::new(store);
        d.change_groups("nora", &["clinical".into()], &[])
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                if i == 0 {
                    d.change_groups("nora", &[], &["clinical".into()]).await
                } else {
                    d.change_groups("nora", &[format!("g{i}")], &[]).await
                }
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let m = d.membership("nora").await.unwrap();
        let want: Vec<String> = (1..8).map(|i| format!("g{i}")).collect();
        assert_eq!(
            m.groups, want,
            "the removal stands and every addition is there"
        );
        let (before, after) = d
            .set_email("nora", Some("nora@clinic.example"))
            .await
            .unwrap();
        assert_eq!((before.email, after.groups.len()), (None, 7));
        d.change_groups("omar", &[], &[]).await.unwrap();
        let taken = d.set_email("omar", Some("NORA@clinic.example")).await;
        assert!(matches!(taken, Err(DirectoryError::Taken(_))), "{taken:?}");
        let bad = d.set_email("not a user", Some("x@y.example")).await;
        assert!(matches!(bad, Err(DirectoryError::Invalid(_))), "{bad:?}");
        let clash = d
            .invite(
                "Nora",
                "Nora",
                Aal::Aal2,
                Duration::from_secs(60),
                Timestamp::wall(),
            )
            .await;
        assert!(matches!(clash, Err(DirectoryError::Taken(_))), "{clash:?}");
        // The same id is no clash; a pending invite's id is taken too; a groups record for a
        // new id is held to the same rule.
        assert!(d.check_invite("nora", Aal::Aal2).await.is_ok());
        d.invite(
            "Zed",
            "Zed",
            Aal::Aal2,
            Duration::from_secs(60),
            Timestamp::wall(),
        )
        .await
        .unwrap();
        assert!(d.check_invite("zed", Aal::Aal2).await.is_err());
        assert!(d.check_invite("Zed", Aal::Aal2).await.is_ok());
        assert!(d.change_groups("NORA", &["x".into()], &[]).await.is_err());
    }
}
