//! End-to-end tests: the built `aalgate` binary in front of an echo upstream, with the embedded
//! store and with a real redis-server. One test binary, modules by topic.

mod attacks;
mod breakglass;
mod browser;
mod cli;
mod deploy;
mod faults;
mod kept;
mod listeners;
mod ops;
mod proxy;
mod redis;
mod signin;
mod transparency;

use std::time::Duration;

use aalgate_policy::{Aal, Timestamp};
use aalgate_session::{Session, SessionId, SessionStore};

/// The policy used by most tests, pointing at `upstream_port`.
pub fn policy(upstream_port: u16) -> String {
    [
        "app: billing".to_string(),
        "host: localhost".into(),
        format!("upstream: http://127.0.0.1:{upstream_port}"),
        "default: aal2".into(),
        "routes:".into(),
        "  - path: /static/**".into(),
        "    require: public".into(),
        "  - path: /pay/**".into(),
        "    require: aal3".into(),
        "  - path: /confirm".into(),
        "    require: aal2".into(),
        "    step_up: { max_age: 5m }".into(),
        "  - path: /debug/**".into(),
        "    require: deny".into(),
        String::new(),
    ]
    .join("\n")
}

/// A tokio runtime for store calls from synchronous tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Creates a session directly in a store and returns its cookie value.
pub fn make_session(
    store: &dyn SessionStore,
    user: &str,
    aal: Aal,
    auth_age: u64,
    idle: u64,
) -> String {
    let now = Timestamp::now();
    let id = SessionId::generate();
    let s = Session {
        user: user.to_string(),
        aal,
        amr: vec!["hwk".into(), "user".into()],
        credential: Some("test-credential".into()),
        auth_time: Timestamp(now.0 - auth_age),
        last_auth: Timestamp(now.0 - auth_age),
        last_seen: Timestamp(now.0 - idle),
        expires_at: now.plus(Duration::from_secs(86400)),
    };
    rt().block_on(store.insert(&id.key(), &s))
        .expect("insert session");
    id.to_cookie()
}
