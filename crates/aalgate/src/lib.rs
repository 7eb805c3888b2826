//! aalgate's gateway: the pingora service and everything around it. The `aalgate` binary
//! (`main.rs`) is the CLI on top; this library exists so that benchmarks and tests exercise the
//! same code the binary runs.
//!
//! A request passes [`proxy::Gateway`]'s phases in order: own endpoints and refusals,
//! normalization and matching ([`aalgate_policy`]), the session from [`cache::SessionCache`] or the
//! store ([`aalgate_session`]), the decision, then forwarding with [`headers`] hygiene and an
//! [`assertion`]; [`metrics`] and [`audit`] record it once in `logging`.
//!
//! # Layout
//!
//! A request, in reading order: [`proxy`] (`request_filter`'s phases, then admission
//! through `aalgate_policy::admit`, then the upstream request and response), with the
//! gateway's own endpoints in [`endpoints`] (one module each, one route table), responses and
//! bounded bodies in [`http`], and kept forms in [`kept`] and [`preserve`]; what they share
//! (and nothing that uses them) is in [`state`], so none imports another. Around it:
//! [`config`], [`clock`], [`policy_files`] and [`ops`] (reload, store monitor); [`headers`],
//! [`assertion`], [`cache`]; [`breakglass`], [`limits`]; [`metrics`], [`audit`]; [`pages`],
//! [`explain`], [`report`], [`admin`], [`demo`]. `ARCHITECTURE.md` at the repository root traces
//! a request and a sign-in function by function.

// Over about 80 lines, a function is a deliberate choice: `#[allow]` it with a reason.
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod assertion;
pub mod audit;
pub mod backup;
pub mod breakglass;
pub mod cache;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod endpoints;
pub mod explain;
pub mod federation;
pub mod headers;
pub mod http;
pub mod kept;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod outcome;
pub mod pages;
pub mod policy_files;
pub mod preserve;
pub mod provisioning;
pub mod proxy;
pub mod report;
pub mod state;
pub mod store_config;
