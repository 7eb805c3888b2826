//! End-to-end tests: the built `aalgate` binary in front of an echo upstream, with the embedded
//! store and with a real redis-server. One test binary, modules by topic.

mod attacks;
mod authz;
mod backup;
mod breakglass;
mod browser;
mod cli;
mod deploy;
mod faults;
mod h2;
mod kept;
mod listeners;
mod oidc;
mod ops;
mod proxy;
mod redis;
mod redis_tls;
mod scim;
mod sentinel;
mod signin;
mod structure;
mod transparency;

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

pub use aalgate_tests::{link_session, make_session, rt};
