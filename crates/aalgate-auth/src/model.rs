//! Users, credentials and invites, as stored (JSON).

use aalgate_policy::{Aal, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webauthn_rs::prelude::Passkey;

/// What kind of authenticator a credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A discoverable credential with user verification (platform or synced): AAL2 at most.
    Passkey,
    /// A hardware security key with user verification, enrolled with attestation: AAL3 when
    /// the attestation verifies and its AAGUID is on the allow-list.
    SecurityKey,
}

impl CredentialKind {
    /// `passkey` or `security_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Passkey => "passkey",
            CredentialKind::SecurityKey => "security_key",
        }
    }
}

/// One registered authenticator of a user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    /// The credential id, base64url.
    pub id: String,
    /// Passkey or security key.
    pub kind: CredentialKind,
    /// The authenticator model, when attestation proved it.
    pub aaguid: Option<Uuid>,
    /// The highest level a sign-in with this credential reaches.
    pub aal: Aal,
    /// Backup eligible (synced) when enrolled: never more than AAL2.
    pub backup_eligible: bool,
    /// When it was enrolled.
    pub created: Timestamp,
    /// Last successful use.
    pub last_used: Option<Timestamp>,
    /// Set when the credential must no longer be accepted (e.g. its signature counter went
    /// backwards: a cloned key). IT sees the reason in `users list`.
    pub flagged: Option<String>,
    /// The public key and counter, as webauthn-rs keeps them.
    pub key: Passkey,
    /// Enrolled on the strength of a sign-in through this identity provider
    /// (`enroll_after_sso`), without an IT invite: it confirms step-ups of a live session, and
    /// never signs in on its own, so removing the person at the provider ends their access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_provider: Option<String>,
}

impl Credential {
    /// A short, non-secret fingerprint of the credential id for the audit log.
    pub fn audit_id(&self) -> String {
        crate::token::hash_str(&self.id)[..16].to_string()
    }

    /// Whether it may answer a ceremony of this kind (`step_up`: a step-up of a live session;
    /// otherwise a sign-in, re-authentication or switch).
    pub fn usable_for(&self, step_up: bool) -> bool {
        self.usable() && (step_up || self.after_provider.is_none())
    }

    /// Whether sign-in with it is accepted.
    pub fn usable(&self) -> bool {
        self.flagged.is_none()
    }
}

/// A person allowed to sign in. One person per account: no shared accounts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// The login name (also what the upstream sees in `X-Aalgate-User`).
    pub id: String,
    /// Shown on the user's own authenticator prompts.
    pub display_name: String,
    /// The WebAuthn user handle: random, so it reveals nothing about the person.
    pub handle: Uuid,
    /// Disabled users cannot sign in; their sessions were revoked when they were disabled.
    pub disabled: bool,
    /// The level IT proofed this person for (the invite's `--aal`).
    pub proofed_aal: Aal,
    /// When the account was created.
    pub created: Timestamp,
    /// Last successful sign-in.
    pub last_login: Option<Timestamp>,
    /// Registered authenticators.
    pub credentials: Vec<Credential>,
    /// Who disabled the person: the hospital's directory (SCIM) may enable only those it
    /// disabled itself. Absent on records older than SCIM: IT's, then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<Deactivation>,
}

/// Who disabled a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deactivation {
    /// IT, with `aalgate users disable` (or a removal).
    Operator,
    /// The hospital's directory, over SCIM (`active: false`).
    Directory,
}

impl User {
    /// The highest AAL any usable credential reaches (`None`: cannot sign in).
    pub fn max_aal(&self) -> Option<Aal> {
        self.credentials
            .iter()
            .filter(|c| c.usable())
            .map(|c| c.aal)
            .max()
    }

    /// The credential with this id.
    pub fn credential(&self, id: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.id == id)
    }
}

/// What a person may use, apart from their credentials: their groups and e-mail address. A
/// record of its own ([`aalgate_session::ACCESS_NS`], by user id), written only by IT's
/// commands, so a sign-in that writes the user record back can never undo a group removal;
/// the store reads it with every session it resolves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// Group names, sorted, without duplicates.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The person's e-mail address, for apps that identify people by it.
    #[serde(default)]
    pub email: Option<String>,
    /// Of `groups`, those the identity provider asserted at the person's last sign-in through
    /// it and IT did not set: the next such sign-in replaces them. A group IT sets becomes
    /// IT's, and stays whatever the provider says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_provider: Vec<String>,
}

/// A one-time enrollment invite, stored under the hash of its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invite {
    /// The user it enrolls (created on first enrollment).
    pub user: String,
    /// The name shown on the authenticator.
    pub display_name: String,
    /// The level the person was proofed for: with AAL3, only an allow-listed hardware key
    /// can be enrolled.
    pub aal: Aal,
    /// When IT created it.
    pub created: Timestamp,
    /// When it stops working.
    pub expires: Timestamp,
    /// Minted after a sign-in through this identity provider (`enroll_after_sso`): the
    /// credential it enrolls confirms step-ups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_provider: Option<String>,
    /// For such an invite: the hash of the browser binding it was minted for (it works only
    /// there, with that person's live session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
}

/// Where an invite stands, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteStatus {
    /// Still usable.
    Open,
    /// Past its expiry, unused.
    Expired,
}
