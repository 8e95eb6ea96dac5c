//! criterion benches of the policy hot paths, on a fake clock: route match, path
//! normalisation, JWT verification, the limiter step, breaker + round-robin pick, and the
//! whole pipeline decision with and without a JWT.
//!
//! Run: `cargo bench --bench policy` (figures in README.md).

use std::hint::black_box;

use aegis_policy::http::{HeaderMap, HeaderValue, Method, header};
use aegis_policy::ratelimit::{ClientKey, CounterKey, CounterRequest, CounterStore, Limit, decide};
use aegis_policy::router::Router;
use aegis_policy::{
    Config, Decision, Engine, FixedHasher, MapEnv, MemoryStore, Nanos, Now, Policy, RequestView,
    UnixMillis, UpstreamOutcome, Verifier,
};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const WALL0: UnixMillis = UnixMillis(1_800_000_000_000);
const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn config() -> Config {
    let mut text = String::from("[auth]\nsecret = \"${JWT_SECRET}\"\n");
    for svc in [
        "orders", "billing", "search", "catalog", "carts", "reviews", "media", "admin",
    ] {
        text.push_str(&format!(
            "[[routes]]\npath = \"/{svc}\"\ntargets = [\"http://127.0.0.1:4001\", \"http://127.0.0.1:4002\"]\n"
        ));
    }
    text.push_str(
        r#"
        [[routes]]
        path = "/users"
        targets = ["http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003"]
        auth = true
        rate_limit = { max = 1000000000, window = "60s" }
        [[routes]]
        path = "/product"
        targets = ["http://127.0.0.1:3004", "http://127.0.0.1:3005", "http://127.0.0.1:3006"]
        rate_limit = { max = 1000000000, window = "60s" }
        "#,
    );
    Config::from_toml(&text, &MapEnv::default().with("JWT_SECRET", SECRET)).unwrap()
}

fn at(i: u64) -> Now {
    Now::virtual_at(Nanos(i * 1000), WALL0)
}

fn hs256() -> String {
    let claims = json!({"userId": "test-123", "exp": WALL0.as_secs() + 3600});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn key(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/aegis-policy/tests/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn bench_router(c: &mut Criterion) {
    let cfg = config();
    let router = Router::new(&cfg.routes);
    c.bench_function("route_match", |b| {
        b.iter(|| black_box(router.find(&Method::GET, Some("localhost"), black_box("/product/42"))))
    });
    c.bench_function("path_normalize_clean", |b| {
        b.iter(|| black_box(aegis_policy::path::normalize(black_box("/users/42/orders"))))
    });
    c.bench_function("path_normalize_dirty", |b| {
        b.iter(|| {
            black_box(aegis_policy::path::normalize(black_box(
                "/public/../users//42/%2e/x",
            )))
        })
    });
}

fn bench_jwt(c: &mut Criterion) {
    let cfg = config();
    let v = Verifier::new(cfg.auth.as_ref().unwrap()).unwrap();
    let t = hs256();
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| black_box(v.verify_token(black_box(&t), WALL0)))
    });

    let pem = key("rsa_public.pem").replace('\n', "\\n");
    let text = format!(
        "[auth]\nalgorithms = [\"RS256\"]\npublic_key_pem = \"{pem}\"\n[[routes]]\npath = \"/\"\ntargets = [\"http://u:1\"]\n"
    );
    let rs_cfg = Config::from_toml(&text, &MapEnv::default()).unwrap();
    let rs = Verifier::new(rs_cfg.auth.as_ref().unwrap()).unwrap();
    let claims = json!({"userId": "test-123", "exp": WALL0.as_secs() + 3600});
    let private = EncodingKey::from_rsa_pem(key("rsa_private.pem").as_bytes()).unwrap();
    let rt = encode(&Header::new(Algorithm::RS256), &claims, &private).unwrap();
    c.bench_function("jwt_verify_rs256", |b| {
        b.iter(|| black_box(rs.verify_token(black_box(&rt), WALL0)))
    });
}

fn bench_limiter(c: &mut Criterion) {
    for (name, alg) in [
        (
            "limiter_fixed_window",
            aegis_policy::config::LimitAlgorithm::FixedWindow,
        ),
        ("limiter_gcra", aegis_policy::config::LimitAlgorithm::Gcra),
    ] {
        let limit = Limit {
            algorithm: alg,
            max: 1_000_000_000,
            window_ms: 60_000,
        };
        let mut store = MemoryStore::with_hasher(100_000, FixedHasher);
        // 1000 live keys, visited in turn.
        let reqs: Vec<CounterRequest> = (0..1000u32)
            .map(|i| CounterRequest {
                key: CounterKey {
                    route: "/users".into(),
                    client: ClientKey::Ip(std::net::IpAddr::from(i.to_be_bytes())),
                },
                limit,
                now: WALL0,
            })
            .collect();
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                let r = &reqs[i % reqs.len()];
                i += 1;
                let reply = store.apply(r).unwrap();
                black_box(decide(&limit, &reply, r.now))
            })
        });
    }
}

fn bench_balancer(c: &mut Criterion) {
    let cfg = config();
    let policy = Policy::new(cfg).unwrap();
    let mut balancers = policy.balancers();
    let b0 = balancers.last_mut().unwrap();
    let mut i = 0u64;
    c.bench_function("breaker_round_robin_pick", |b| {
        b.iter(|| {
            i += 1;
            let a = b0.pick(Nanos(i)).unwrap();
            b0.on_result(a, UpstreamOutcome::Status(200), Nanos(i));
        })
    });
}

fn bench_pipeline(c: &mut Criterion) {
    let mut engine = Engine::new(
        Policy::new(config()).unwrap(),
        MemoryStore::with_hasher(100_000, FixedHasher),
    );
    let none = HeaderMap::new();
    let mut auth = HeaderMap::new();
    auth.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", hs256())).unwrap(),
    );
    let peer = "10.0.0.1".parse().unwrap();
    let mut run = |name: &str, path: &'static str, headers: &HeaderMap, c: &mut Criterion| {
        let view = RequestView {
            method: &Method::GET,
            host: Some("localhost:8000"),
            path_and_query: path,
            headers,
            peer,
        };
        let mut i = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                match engine.handle(black_box(&view), at(i)) {
                    Decision::Forward(f) => {
                        engine.on_upstream_result(&f, UpstreamOutcome::Status(200), at(i))
                    }
                    Decision::Respond(r) => panic!("unexpected {}", r.status),
                }
            })
        });
    };
    run("pipeline_no_jwt", "/product/42?full=1", &none, c);
    run("pipeline_hs256", "/users/42", &auth, c);
}

criterion_group!(
    benches,
    bench_router,
    bench_jwt,
    bench_limiter,
    bench_balancer,
    bench_pipeline
);
criterion_main!(benches);
