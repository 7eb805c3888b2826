//! aalgate's policy model: everything about *what* a request needs, and nothing about I/O.
//!
//! A request passes through this crate in three steps, all pure and synchronous:
//! 1. [`path::normalize_target`] turns the raw request target into the one normalized path that
//!    is both matched and forwarded (or refuses it as ambiguous);
//! 2. [`PolicySet::lookup`] finds the app for the `Host` and the most specific route rule;
//! 3. [`admit()`] combines the rule with the facts the edge gathered (the session, the kind of
//!    request, a ceremony its flow just completed) and the time into an [`Admission`]. It is
//!    the only way to admit a request: the timeout arithmetic it builds on is private.
//!
//! Policy text is parsed into the raw [`file::PolicyFile`] (unknown keys are errors, booleans
//! are strict), then validated by [`load_from_strs`] into an immutable [`PolicySet`];
//! diagnostics carry `file:line:column`, what is wrong and how to fix it. Nothing here reads a
//! file or keeps clock state: the gateway reads policy files (`aalgate::policy_files`), owns
//! the clock (`aalgate::clock`) and passes the time in. ([`Timestamp::wall`] is a plain reading
//! of the system clock, for stores' own expiry times.)
//!
//! # Layout
//!
//! - [`path`]: the raw target → one normalized path, or a refusal.
//! - [`host`]: `Host` values and their ports.
//! - [`pattern`]: route patterns and methods.
//! - [`mod@file`] → [`model`]: policy YAML (strict) → validated [`PolicySet`], with diagnostics.
//! - [`aal`]: levels and requirements; [`time`]: timestamps and durations.
//! - [`mod@admit`]: the admission decision; `decide` (private): the timeout arithmetic under it.
//! - `fuzzing` (hidden): properties the fuzz targets and the corpus replay share.

// Over about 80 lines, a function is a deliberate choice: `#[allow]` it with a reason.
#![warn(clippy::too_many_lines)]

pub mod aal;
pub mod admit;
pub mod allow;
pub mod decide;
pub mod file;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod model;
pub mod path;
pub mod pattern;
pub mod time;

pub use aal::{Aal, Requirement};
pub use admit::{admit, Admission, AdmissionFacts, Ceremony, RequestKind, SessionKind, Subject};
pub use allow::{
    allowed, identity_header_problem, valid_email, valid_group, valid_user_id, Allow,
    IdentityHeaders, Person, Reach,
};
pub use decide::{Access, ExpiryReason, Limits, SessionFacts, StepUp, Timeouts};
pub use host::HostPort;
pub use model::{
    load_from_strs, valid_app_id, App, Diagnostic, Match, PolicySet, Rule, Severity, SourceLoc,
    Upstream,
};
pub use path::{
    normalize_target, normalize_target_with, DoubleEncoding, NormalizedTarget, PathError,
};
pub use time::{format_duration, parse_duration, HumanDuration, Timestamp};
