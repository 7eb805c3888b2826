//! Prometheus metrics, served on the admin listener only. Names follow the conventions
//! (`aalgate_..._total` counters, `_seconds` histograms in base units). Label values that alerts
//! and dashboards rely on are created up front, so a series exists (at 0) before its first event.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request and store latencies: 50 µs to 1 min.
const LATENCY: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A person tapping a key: 250 ms to 5 min.
const CEREMONY: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// Session age: 1 min to 30 days.
const SESSION_AGE: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0, 604800.0,
    2592000.0,
];

/// Reasons a session ends.
pub const END_REASONS: [&str; 5] = ["idle", "absolute", "logout", "revoked", "switch_user"];
/// Kinds of challenge.
pub const CHALLENGE_KINDS: [&str; 3] = ["login", "step_up", "reauth"];

/// Handshakes (TLS, HTTP/2) that clients broke off or got wrong. pingora logs each as an
/// ERROR; anonymous clients could fill the log with them, so they are counted here instead
/// (see `QuietHandshakes` in the binary). One counter for the process, in every registry.
pub static CLIENT_HANDSHAKE_FAILURES: std::sync::LazyLock<IntCounter> =
    std::sync::LazyLock::new(|| {
        IntCounter::new(
            "aalgate_client_handshake_failures_total",
            "TLS and HTTP/2 handshakes that clients broke off or got wrong (counted, not logged).",
        )
        .unwrap_or_else(|_| unreachable!("a valid metric name"))
    });

/// rustls's warnings, mostly about what a TLS peer sent (a client naming an IP address as
/// the server name, as wrk does): one per handshake, so counted here and logged at most once a
/// minute (see `QuietHandshakes`).
pub static TLS_NOTICES: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
    IntCounter::new(
        "aalgate_tls_notices_total",
        "rustls warnings, e.g. a TLS client naming an IP address as the server name (counted; the first in a minute is logged).",
    )
    .unwrap_or_else(|_| unreachable!("a valid metric name"))
});

/// Every metric aalgate exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by app, route id and decision.
    pub requests: IntCounterVec,
    /// Upstream responses by app and status class, for the 5xx alert.
    pub upstream_responses: IntCounterVec,
    /// Time from handing the request upstream to its response header.
    pub upstream_seconds: HistogramVec,
    /// Time the gateway adds: request start to forwarding (or to its own answer).
    pub gateway_seconds: HistogramVec,
    /// Live sessions by AAL, from the shared store.
    pub sessions_active: IntGaugeVec,
    /// Live sessions that reach a limit within 5m/15m/60m.
    pub sessions_expiring: IntGaugeVec,
    /// Sessions started, by AAL and authenticator kind.
    pub session_starts: IntCounterVec,
    /// Sessions ended, by reason.
    pub session_ends: IntCounterVec,
    /// Age of sessions when they end.
    pub session_age: Histogram,
    /// Challenges by kind and result.
    pub challenges: IntCounterVec,
    /// Ceremony duration, challenge issued to verified.
    pub ceremony_seconds: HistogramVec,
    /// Step-ups demanded, by app and route.
    pub step_ups: IntCounterVec,
    /// Store errors by operation.
    pub store_errors: IntCounterVec,
    /// Store call latency by operation.
    pub store_seconds: HistogramVec,
    /// 1 when the store answered the last probe.
    pub store_up: IntGauge,
    /// 1 when the store keeps every acknowledged write across a restart (Redis AOF on).
    pub store_durable: IntGauge,
    /// Redis: the master's address, as a label (1 on the current one; none while unknown).
    pub store_master: IntGaugeVec,
    /// Redis: changes of master seen.
    pub store_failovers: IntCounter,
    /// Redis: writes that end access whose replicas did not confirm them in time.
    pub store_acks_missed: IntCounter,
    /// Redis: of those, how many are still held (denied here, retried).
    pub store_unconfirmed: IntGauge,
    /// Redis: time without a master to talk to.
    pub store_without_master: prometheus::Counter,
    /// Size of the embedded store's file (0 with Redis).
    pub embedded_store_bytes: IntGauge,
    /// Policy reloads by result.
    pub reloads: IntCounterVec,
    /// Unix time of the last successful policy load.
    pub reload_success_time: Gauge,
    /// The loaded policy set's hash, as a label.
    pub policy_info: IntGaugeVec,
    /// WebAuthn signature counts that went backwards (cloned keys). Exported at 0 so alerts and
    /// dashboards have a series; incremented by the WebAuthn ceremonies.
    #[allow(dead_code)]
    pub counter_regressions: IntCounter,
    /// Break-glass sessions granted. Exported at 0; incremented by break-glass sign-in.
    #[allow(dead_code)]
    pub breakglass_uses: IntCounter,
    /// Audit events lost: the queue was full, or the sink refused them.
    pub audit_dropped: IntCounter,
    /// Submitted forms met by a sign-in: kept, or why not.
    pub kept_forms: IntCounterVec,
    /// Bytes of kept forms written to the store.
    pub kept_bytes: IntCounter,
    /// Sign-in flows started, by kind.
    pub flows: IntCounterVec,
    /// Sign-in flows refused before they were stored, by reason.
    pub flow_refusals: IntCounterVec,
    /// Requests a per-request ceremony signed.
    pub signed_requests: IntCounter,
}

/// Outcomes of `aalgate_kept_forms_total`.
pub const KEPT_OUTCOMES: [&str; 6] = [
    "kept",
    "cross_site",
    "anonymous",
    "too_large",
    "quota",
    "busy",
];

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Creates and registers every metric.
    #[allow(
        clippy::too_many_lines,
        reason = "one registration per metric family: a table"
    )]
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let m = Metrics {
            requests: counter_vec(&r, "aalgate_requests_total", "Requests by app, route id and decision.", &["app", "route", "decision"])?,
            upstream_responses: counter_vec(&r, "aalgate_upstream_responses_total", "Upstream responses by app and status class.", &["app", "class"])?,
            upstream_seconds: histogram_vec(&r, "aalgate_upstream_duration_seconds", "Time from forwarding a request to the upstream's response header.", &["app"], LATENCY)?,
            gateway_seconds: histogram_vec(
                &r,
                "aalgate_gateway_duration_seconds",
                "Latency the gateway adds: request start to forwarding (outcome=forwarded) or to its own answer (outcome=answered).",
                &["outcome"],
                LATENCY,
            )?,
            sessions_active: {
                let g = IntGaugeVec::new(Opts::new("aalgate_sessions_active", "Live sessions by AAL, counted in the shared store (same value on every instance: aggregate with max, not sum)."), &["aal"])?;
                r.register(Box::new(g.clone()))?;
                g
            },
            sessions_expiring: {
                let g = IntGaugeVec::new(Opts::new("aalgate_sessions_expiring", "Live sessions that reach their idle or absolute limit within the window."), &["within"])?;
                r.register(Box::new(g.clone()))?;
                g
            },
            session_starts: counter_vec(&r, "aalgate_session_starts_total", "Sessions started, by AAL and authenticator kind.", &["aal", "authenticator"])?,
            session_ends: counter_vec(&r, "aalgate_session_ends_total", "Sessions ended, by reason.", &["reason"])?,
            session_age: {
                let h = Histogram::with_opts(HistogramOpts::new("aalgate_session_age_at_end_seconds", "Age of sessions when they end.").buckets(SESSION_AGE.to_vec()))?;
                r.register(Box::new(h.clone()))?;
                h
            },
            challenges: counter_vec(&r, "aalgate_challenges_total", "Authentication challenges by kind and result.", &["kind", "result"])?,
            ceremony_seconds: histogram_vec(&r, "aalgate_ceremony_duration_seconds", "Ceremony duration from challenge issued to verified, server-side.", &["kind"], CEREMONY)?,
            step_ups: counter_vec(&r, "aalgate_step_ups_total", "Step-ups demanded, by app and route.", &["app", "route"])?,
            store_errors: counter_vec(&r, "aalgate_store_errors_total", "Session store errors and timeouts, by operation.", &["op"])?,
            store_seconds: histogram_vec(&r, "aalgate_store_duration_seconds", "Session store call latency, by operation.", &["op"], LATENCY)?,
            store_up: {
                let g = IntGauge::new("aalgate_store_up", "1 if the session store answered the last probe, else 0.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            embedded_store_bytes: {
                let g = IntGauge::new("aalgate_embedded_store_bytes", "Bytes on disk of the embedded store (its database file and the side files of kept forms), measured once a minute after expired records are purged (0 with Redis).")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            store_durable: {
                let g = IntGauge::new("aalgate_store_durable", "1 if the session store keeps every acknowledged write across a restart (Redis: appendonly yes), else 0. At 0, a restart from an older snapshot revives logged-out sessions.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            store_master: {
                let g = IntGaugeVec::new(prometheus::Opts::new("aalgate_store_master_info", "Redis: 1 on the address of the master the gateway talks to; no series while none is known."), &["address"])?;
                r.register(Box::new(g.clone()))?;
                g
            },
            store_failovers: {
                let c = IntCounter::new("aalgate_store_failovers_total", "Redis: times the master changed to another address (a Sentinel failover).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            store_acks_missed: {
                let c = IntCounter::new("aalgate_store_replica_acks_missed_total", "Redis: writes that end access (logout, revocation, a used one-time token) that the replicas did not confirm in time. Each is denied on this instance and written again until confirmed.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            store_unconfirmed: {
                let g = IntGauge::new("aalgate_store_unconfirmed_writes", "Redis: writes that end access not yet confirmed by the replicas (denied here, retried).")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            store_without_master: {
                let c = prometheus::Counter::new("aalgate_store_without_master_seconds_total", "Redis: time the gateway had no master to talk to (protected routes answer 503 meanwhile).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            reloads: counter_vec(&r, "aalgate_policy_reloads_total", "Policy loads and reloads, by result.", &["result"])?,
            reload_success_time: {
                let g = Gauge::new("aalgate_policy_last_reload_success_timestamp_seconds", "Unix time of the last successful policy load.")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            policy_info: {
                let g = IntGaugeVec::new(Opts::new("aalgate_policy_info", "The policy set in force (value 1), identified by its hash."), &["hash"])?;
                r.register(Box::new(g.clone()))?;
                g
            },
            counter_regressions: {
                let c = IntCounter::new("aalgate_sign_count_regressions_total", "WebAuthn signature counts that went backwards (a cloned authenticator).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            breakglass_uses: {
                let c = IntCounter::new("aalgate_breakglass_uses_total", "Break-glass emergency sessions granted.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            audit_dropped: {
                let c = IntCounter::new("aalgate_audit_dropped_total", "Audit events lost: the queue was full, or the sink refused them (full disk, syslog socket gone).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            kept_forms: counter_vec(&r, "aalgate_kept_forms_total", "Submitted forms met by a sign-in: kept (outcome=kept) or not kept, by reason.", &["outcome"])?,
            kept_bytes: {
                let c = IntCounter::new("aalgate_kept_bytes_total", "Bytes of kept forms written to the session store (encrypted records).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            flows: counter_vec(&r, "aalgate_flows_total", "Sign-in flows stored, by kind.", &["kind"])?,
            flow_refusals: counter_vec(&r, "aalgate_flow_refusals_total", "Sign-in flows refused before they were stored, by reason (rate: per-client limit; url_too_long; client_quota: a client's share of anonymous_state_quota; quota: all of it).", &["reason"])?,
            signed_requests: {
                let c = IntCounter::new("aalgate_signed_requests_total", "Requests signed by a per-request ceremony (step_up: per_request), each with a request_signed audit event.")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            registry: {
                r.register(Box::new(CLIENT_HANDSHAKE_FAILURES.clone()))?;
                r.register(Box::new(TLS_NOTICES.clone()))?;
                r
            },
        };
        for o in KEPT_OUTCOMES {
            m.kept_forms.with_label_values(&[o]);
        }
        for k in CHALLENGE_KINDS {
            m.flows.with_label_values(&[k]);
        }
        for r in ["rate", "url_too_long", "quota"] {
            m.flow_refusals.with_label_values(&[r]);
        }
        for reason in END_REASONS {
            m.session_ends.with_label_values(&[reason]);
        }
        for kind in CHALLENGE_KINDS {
            for result in ["issued", "success", "failure"] {
                m.challenges.with_label_values(&[kind, result]);
            }
            m.ceremony_seconds.with_label_values(&[kind]);
        }
        for aal in ["1", "2", "3"] {
            m.sessions_active.with_label_values(&[aal]);
            for kind in ["passkey", "security_key", "provider"] {
                m.session_starts.with_label_values(&[aal, kind]);
            }
        }
        for w in ["5m", "15m", "60m"] {
            m.sessions_expiring.with_label_values(&[w]);
        }
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        for op in OPS {
            m.store_errors.with_label_values(&[op]);
        }
        Ok(m)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Store operations, as labelled.
pub const OPS: [&str; 19] = [
    "insert",
    "get",
    "touch",
    "remove",
    "revoke_user",
    "put_flow",
    "get_flow",
    "take_flow",
    "ping",
    "durable",
    "stats",
    "link",
    "unlink",
    "kv_put",
    "kv_get",
    "kv_take",
    "kv_delete",
    "kv_list",
    "kv_add",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders_every_family() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["billing", "/x", "allow"])
            .inc();
        let text = m.render();
        for name in [
            "aalgate_requests_total",
            "aalgate_session_ends_total",
            "aalgate_sessions_active",
            "aalgate_store_up",
            "aalgate_store_durable",
            "aalgate_store_failovers_total",
            "aalgate_store_replica_acks_missed_total",
            "aalgate_store_unconfirmed_writes",
            "aalgate_store_without_master_seconds_total",
            "aalgate_policy_reloads_total",
            "aalgate_breakglass_uses_total",
            "aalgate_sign_count_regressions_total",
            "aalgate_ceremony_duration_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
