//! Micro-benchmarks of the request path's pieces: `cargo bench -p aalgate-benches`.
//! A smoke run (each benchmark once) is part of the test suite: `cargo bench -- --test`.

use std::path::PathBuf;
use std::time::Duration;

use aalgate::cache::{AssertionCache, SessionCache};
use aalgate_policy::{
    admit, normalize_target, AdmissionFacts, HostPort, RequestKind, SessionKind, Subject, Timestamp,
};
use aalgate_session::{EmbeddedStore, RedisStore, Session, SessionId, SessionStore};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

fn policy_with(routes: usize) -> aalgate_policy::PolicySet {
    let mut y = String::from(
        "app: bench\nhost: bench.example\nupstream: http://127.0.0.1:1\ndefault: aal2\nroutes:\n",
    );
    for i in 0..routes {
        y.push_str(&format!("  - path: /svc{i}/items/*/detail\n    require: aal2\n  - path: /svc{i}/static/**\n    require: public\n"));
    }
    aalgate_policy::load_from_strs(&[(PathBuf::from("bench.yaml"), y)]).expect("valid policy")
}

fn session(now: Timestamp) -> Session {
    aalgate_session::conformance::session("bench", now, 3600)
}

fn match_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_and_match");
    let host = HostPort::parse("bench.example").unwrap();
    // Rules come in pairs, so 5, 500 and 5,000 pairs are 10, 1,000 and 10,000 routes.
    for routes in [10usize, 1_000, 10_000] {
        let set = policy_with(routes / 2);
        let target = format!("/svc{}/items/4711/./detail?view=full", routes / 2 - 1);
        g.bench_with_input(BenchmarkId::from_parameter(routes), &target, |b, t| {
            b.iter(|| {
                let n = normalize_target(black_box(t.as_bytes())).unwrap();
                black_box(set.lookup(&host, "GET", &n).map(|m| m.rule_index))
            })
        });
    }
    g.finish();
}

fn admit_bench(c: &mut Criterion) {
    let set = policy_with(5);
    let host = HostPort::parse("bench.example").unwrap();
    let n = normalize_target(b"/svc1/items/1/detail").unwrap();
    let rule = set.lookup(&host, "GET", &n).unwrap().rule;
    let now = Timestamp::wall();
    let facts = AdmissionFacts {
        session: SessionKind::Normal(Subject {
            facts: session(now).facts(),
            ends_at: Timestamp(u64::MAX),
        }),
        request: RequestKind::Http,
        ceremony: None,
        person: None,
    };
    c.bench_function("admit", |b| {
        b.iter(|| black_box(admit(&rule.access, black_box(&facts), now)))
    });
}

fn cookie_bench(c: &mut Criterion) {
    let id = SessionId::generate();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        format!(
            "_ga=GA1.2.3; theme=dark; aalgate={}; lang=en",
            id.to_cookie()
        )
        .parse()
        .unwrap(),
    );
    c.bench_function("cookie_parse_and_session_id_hash", |b| {
        b.iter(|| {
            let v = aalgate::headers::cookie_value_iter(
                black_box(&headers),
                aalgate::headers::COOKIE_PLAIN,
            )
            .next();
            black_box(v.and_then(SessionId::from_cookie).map(|id| id.key()))
        })
    });
    // What a cached request does instead: the value's keyed tag, looked up.
    let cache = SessionCache::new(1024);
    cache.remember_key(&id.to_cookie(), &id.key());
    c.bench_function("cookie_parse_and_remembered_key", |b| {
        b.iter(|| {
            let v = aalgate::headers::cookie_value_iter(
                black_box(&headers),
                aalgate::headers::COOKIE_PLAIN,
            )
            .next();
            black_box(v.and_then(|v| cache.known_key(v)))
        })
    });
}

fn jwt_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let signer =
        aalgate::assertion::Signer::load_or_create(&dir.path().join("k.pem"), "https://gw.example")
            .unwrap();
    let now = Timestamp::wall();
    let s = session(now);
    let key = SessionId::generate().key();
    let cache = AssertionCache::new(1024, aalgate::assertion::ASSERTION_LIFETIME);
    let mut g = c.benchmark_group("jwt_assertion");
    g.bench_function("sign", |b| {
        b.iter(|| black_box(signer.sign(&s, "billing", now).unwrap()))
    });
    let who = aalgate::cache::IdentityRef {
        session: &key,
        app: "billing",
        groups: None,
        email: None,
    };
    let value = |v: String| http::HeaderValue::try_from(v).unwrap();
    g.bench_function("cached", |b| {
        b.iter(|| {
            black_box(
                cache
                    .get_or_build(who, now, || {
                        Ok::<_, ()>(aalgate::cache::Forwarded {
                            assertion: value(signer.sign(&s, "billing", now).unwrap()),
                            user: value(s.user.clone()),
                            aal: value("2".into()),
                            auth_time: value(s.auth_time.0.to_string()),
                            groups: None,
                            email: None,
                            issued: now,
                        })
                    })
                    .unwrap(),
            )
        })
    });
    g.finish();
}

fn find_redis() -> Option<&'static str> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn lookup_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let now = Timestamp::wall();
    let id = SessionId::generate();
    let key = id.key();
    let mut g = c.benchmark_group("session_lookup");

    let cache = SessionCache::new(1024);
    cache.put_linked(
        &key,
        &key,
        "ehr.example",
        &std::sync::Arc::new(session(now)),
        &Default::default(),
    );
    g.bench_function("cache_hit", |b| {
        b.iter(|| black_box(cache.get_with_record(&key, "ehr.example", now)))
    });

    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path()).unwrap();
    // The request path's lookup: a cookie handle, linked for one host, to its session record.
    let (record, host) = (SessionId::generate().key(), "ehr.example");
    let s = session(now);
    rt.block_on(async {
        embedded.insert(&record, &s).await.unwrap();
        embedded
            .link(&key, &record, host, s.expires_at)
            .await
            .unwrap();
    });
    g.bench_function("embedded", |b| {
        b.iter(|| black_box(rt.block_on(embedded.resolve(&key, host, now)).unwrap()))
    });

    if let Some(bin) = find_redis() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let redis = RedisStore::new(
            &format!("redis://127.0.0.1:{port}/0"),
            Duration::from_secs(1),
        )
        .unwrap();
        rt.block_on(async {
            redis.insert(&record, &s).await.unwrap();
            redis.link(&key, &record, host, s.expires_at).await.unwrap();
        });
        g.bench_function("redis", |b| {
            b.iter(|| black_box(rt.block_on(redis.resolve(&key, host, now)).unwrap()))
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    g.finish();
}

criterion_group!(
    benches,
    match_bench,
    admit_bench,
    cookie_bench,
    jwt_bench,
    lookup_bench
);
criterion_main!(benches);
