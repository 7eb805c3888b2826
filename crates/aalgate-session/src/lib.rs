//! aalgate sessions: the [`Session`] record, the [`SessionStore`] trait, and its two backends.
//!
//! - [`EmbeddedStore`] (redb, one file): the default. It survives a restart, and several processes
//!   (the gateway and the `aalgate` CLI) may read and write it at once.
//! - [`RedisStore`]: many gateway instances share sessions through Redis.
//!
//! Both pass the same [`conformance`] suite. Stores are keyed by [`SessionKey`], the SHA-256 of
//! the secret [`SessionId`], so a store dump holds no usable cookie. [`Deadline`] bounds every
//! call, so a slow store turns into an error (and the gateway fails closed) instead of a hang.
//!
//! # Layout
//!
//! - `store`: [`Session`], [`Flow`], the [`SessionStore`] trait and [`Deadline`].
//! - `id`: cookie ids and the store keys derived from them; `cookie`: reading cookie headers.
//! - `embedded`, `redis_store`: the two backends (`redis_config`: how to reach Redis); [`conformance`]: what both must do.

// Over about 80 lines, a function is a deliberate choice: `#[allow]` it with a reason.
#![warn(clippy::too_many_lines)]

pub mod cookie;
mod embedded;
mod id;
mod redis_config;
mod redis_store;
mod store;

pub mod conformance;

pub use cookie::{cookie_value_iter, cookie_values};
pub use embedded::{EmbeddedStore, StoreClock, WallClock};
pub use id::{FlowId, SessionId, SessionKey};
pub use redis_config::{RedisConfig, RedisTarget, RedisTls};
pub use redis_store::RedisStore;
pub use store::{
    Deadline, Flow, FlowKind, RequestBinding, Resolved, Session, SessionStats, SessionStore,
    StoreError, StoreHealth, StoreSpec, ACCESS_NS, EXPIRY_WINDOWS,
};
