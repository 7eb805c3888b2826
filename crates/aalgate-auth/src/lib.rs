//! aalgate users, credentials and WebAuthn ceremonies.
//!
//! - [`model`]: a [`User`] with its [`Credential`]s, each with the [`Aal`](aalgate_policy::Aal)
//!   it can reach (passkey with user verification: AAL2; attested hardware key on the
//!   allow-list: AAL3), and the one-time [`Invite`] IT issues after proofing a person.
//! - [`Directory`]: users, invites, ceremony state, handoff codes and failure counters, kept in
//!   the same [`SessionStore`](aalgate_session::SessionStore) as sessions (embedded or Redis),
//!   so the CLI and every gateway instance see the same data.
//! - [`Ceremonies`]: enrollment and sign-in with webauthn-rs. State is serialised server-side
//!   and taken once, so a replayed or duplicated response gives at most one success.
//!
//! - [`signing`]: ceremonies bound to one request (`step_up: { per_request: true }`) and the
//!   evidence an auditor verifies offline.
//!
//! Nothing here does network I/O of its own or knows about HTTP; the gateway calls it.
//!
//! # Layout
//!
//! - [`ceremony`]: WebAuthn with webauthn-rs: enrollment, sign-in, attestation, the level a
//!   credential reaches, decoys for unknown names.
//! - [`directory`]: users, invites and ceremony state in the session store; [`model`]: their types.
//! - [`signing`]: challenges bound to one request; [`token`]: one-time secrets.

// Over about 80 lines, a function is a deliberate choice: `#[allow]` it with a reason.
#![warn(clippy::too_many_lines)]

pub mod ceremony;
pub mod directory;
pub mod model;
pub mod signing;
pub mod token;

pub use ceremony::{
    shape_of, AuthState, Ceremonies, CeremonyError, CredentialShape, DecoyPopulation, HardwareKeys,
    RegKind, RegState, SignIn, Verified,
};
pub use directory::{Directory, DirectoryError, Pending, Purpose};
pub use model::{Credential, CredentialKind, Deactivation, Invite, InviteStatus, User};
pub use token::Token;
