//! The whole pipeline driven by hand, as the gateway and the simulator drive it: the seed's
//! walkthrough, header hygiene, client-IP trust, path rewriting and the store-failure policies.

use std::net::IpAddr;
use std::time::Duration;

use aegis_policy::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use aegis_policy::ratelimit::{CounterReply, StoreError};
use aegis_policy::{
    BreakerState, Config, CounterRequest, CounterStore, Decision, Engine, FixedHasher, MapEnv,
    MemoryStore, Nanos, Now, Policy, Reason, RequestView, Step, UnixMillis, UpstreamOutcome,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const WALL0: UnixMillis = UnixMillis(1_800_000_000_000);
const SECRET: &str = "your_secret_key_here";

const SEED: &str = r#"
    [auth]
    secret = "${JWT_SECRET}"
    [breaker]
    failure_threshold = 3
    open_for = "60s"
    [[routes]]
    path = "/users"
    targets = ["http://user-service-1:3001", "http://user-service-2:3001", "http://user-service-3:3001"]
    auth = true
    rate_limit = { max = 10, window = "60s" }
    [[routes]]
    path = "/product"
    targets = ["http://product-service-1:3004", "http://product-service-2:3004", "http://product-service-3:3004"]
    auth = true
"#;

fn at(ms: u64) -> Now {
    Now::virtual_at(Nanos::from_millis(ms), WALL0)
}

fn engine(text: &str) -> Engine<MemoryStore<FixedHasher>> {
    let env = MapEnv::default().with("JWT_SECRET", SECRET);
    let config = Config::from_toml(text, &env).unwrap();
    Engine::new(
        Policy::new(config).unwrap(),
        MemoryStore::with_hasher(1000, FixedHasher),
    )
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn user_token() -> String {
    token(json!({"userId": "test-123", "exp": WALL0.as_secs() + 3600}))
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    h
}

fn get<'a>(path: &'a str, headers: &'a HeaderMap, peer: &str) -> RequestView<'a> {
    RequestView {
        method: &Method::GET,
        host: Some("localhost:8000"),
        path_and_query: path,
        headers,
        peer: peer.parse().unwrap(),
    }
}

fn status(d: &Decision) -> u16 {
    match d {
        Decision::Respond(r) => r.status.as_u16(),
        Decision::Forward(_) => 200,
    }
}

#[test]
fn seed_walkthrough() {
    let mut e = engine(SEED);
    let none = HeaderMap::new();
    let auth = bearer(&user_token());

    // No token → 401 naming the class, with a Bearer challenge.
    let Decision::Respond(r) = e.handle(&get("/users", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenge = r
        .headers
        .iter()
        .find(|(k, _)| k == header::WWW_AUTHENTICATE)
        .unwrap();
    assert!(
        challenge
            .1
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["reason"],
        "missing"
    );

    // With a token → forwarded, identity attached, client-sent x-user-id never passes.
    let Decision::Forward(f) = e.handle(&get("/product", &auth, "10.0.0.1"), at(1)) else {
        panic!()
    };
    let mut upstream = HeaderMap::new();
    upstream.insert("x-user-id", HeaderValue::from_static("admin"));
    f.apply_request_headers(&mut upstream);
    assert_eq!(
        upstream.get_all("x-user-id").iter().collect::<Vec<_>>(),
        vec!["test-123"]
    );
    e.on_upstream_result(&f, UpstreamOutcome::Status(200), at(1));

    // 15 fast requests: 10 forwarded, then 429 with the RateLimit fields and Retry-After.
    let mut statuses = Vec::new();
    for i in 0..15 {
        let d = e.handle(&get("/users", &auth, "10.0.0.1"), at(10 + i));
        if let Decision::Forward(f) = &d {
            let mut h = HeaderMap::new();
            f.apply_response_headers(&mut h);
            assert_eq!(h["ratelimit-limit"], "10");
            assert_eq!(h["ratelimit-remaining"], (9 - i).to_string().as_str());
            e.on_upstream_result(f, UpstreamOutcome::Status(200), at(10 + i));
        }
        if let Decision::Respond(r) = &d {
            let names: Vec<_> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
            for n in [
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "retry-after",
            ] {
                assert!(names.contains(&n), "{n} missing from {names:?}");
            }
            assert_eq!(r.reason, Reason::RateLimited);
        }
        statuses.push(status(&d));
    }
    assert_eq!(
        statuses,
        [[200; 10].as_slice(), [429; 5].as_slice()].concat()
    );

    // /users/fail three times on one target opens its circuit (another client IP, own budget).
    let mut failed_target = None;
    let mut failures = 0;
    for i in 0..20 {
        if failures == 3 {
            break;
        }
        let Decision::Forward(f) = e.handle(&get("/users/fail", &auth, "10.0.0.2"), at(100 + i))
        else {
            panic!()
        };
        // Only user-service-1 fails; the others answer.
        let outcome = if f.target() == 0 {
            UpstreamOutcome::Status(500)
        } else {
            UpstreamOutcome::Status(200)
        };
        if f.target() == 0 {
            failures += 1;
            failed_target = Some(0);
        }
        e.on_upstream_result(&f, outcome, at(100 + i));
    }
    assert_eq!(failed_target, Some(0));
    let stats = serde_json::to_value(e.stats(at(200))).unwrap();
    assert_eq!(stats[0]["state"], "OPEN");
    assert_eq!(stats[0]["failures"], 3);
    assert_eq!(stats[0]["targetUrl"], "http://user-service-1:3001");
    assert_eq!(stats[1]["state"], "CLOSED");
    assert_eq!(stats[3]["path"], "/product");

    // Traffic skips the open target; after 60 s one probe goes to it and recovery closes it.
    for i in 0..4 {
        let Decision::Forward(f) = e.handle(&get("/users", &auth, "10.0.0.3"), at(300 + i)) else {
            panic!()
        };
        assert_ne!(f.target(), 0);
        e.on_upstream_result(&f, UpstreamOutcome::Status(200), at(300 + i));
    }
    let opened_at = 100 + 8; // the third failure on target 0 (picks rotate 0,1,2,...)
    let mut probe = None;
    for i in 0..3 {
        let Decision::Forward(f) = e.handle(
            &get("/users", &auth, "10.0.0.4"),
            at(opened_at + 60_000 + i),
        ) else {
            panic!()
        };
        if f.target() == 0 {
            assert!(f.attempt.permit.is_probe());
            probe = Some(f);
            break;
        }
        e.on_upstream_result(&f, UpstreamOutcome::Status(200), at(opened_at + 60_000 + i));
    }
    let probe = probe.expect("a probe reaches the half-open target");
    assert_eq!(
        e.stats(at(opened_at + 60_010))[0].state,
        BreakerState::HalfOpen
    );
    e.on_upstream_result(&probe, UpstreamOutcome::Status(200), at(opened_at + 60_020));
    assert_eq!(
        e.stats(at(opened_at + 60_020))[0].state,
        BreakerState::Closed
    );
    assert_eq!(e.stats(at(opened_at + 60_020))[0].failures, 0);
}

#[test]
fn all_targets_down_is_503_with_retry_after() {
    let mut e = engine(SEED);
    let auth = bearer(&user_token());
    for i in 0..9 {
        let Decision::Forward(f) = e.handle(&get("/product", &auth, "10.0.0.1"), at(i)) else {
            panic!()
        };
        e.on_upstream_result(&f, UpstreamOutcome::ConnectError, at(i));
    }
    let Decision::Respond(r) = e.handle(&get("/product", &auth, "10.0.0.1"), at(10_000)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["route"], "/product");
    // The first target opened at 6 ms → probes at 60.006 s → 50.006 s from now → 51.
    let retry = r
        .headers
        .iter()
        .find(|(k, _)| k == header::RETRY_AFTER)
        .unwrap();
    assert_eq!(retry.1, "51");
    assert_eq!(body["retryAfter"], 51);
}

#[test]
fn paths_are_normalised_before_routing_and_auth() {
    let text = format!(
        "{SEED}\n[[routes]]\npath = \"/public\"\ntargets = [\"http://p:1\"]\n\
         [[routes]]\npath = \"/api\"\nstrip_prefix = true\ntargets = [\"http://a:1/v2\"]\n"
    );
    let mut e = engine(&text);
    let none = HeaderMap::new();
    // /public/../users is /users: it needs a token.
    let d = e.handle(&get("/public/../users", &none, "10.0.0.1"), at(0));
    assert_eq!(status(&d), 401);
    let d = e.handle(&get("/public/%2e%2e/users", &none, "10.0.0.1"), at(0));
    assert_eq!(status(&d), 401);
    // /usersX is not /users.
    let Decision::Respond(r) = e.handle(&get("/usersX", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["error"],
        "not_found"
    );
    // Bad escapes are a 400 naming the problem.
    let Decision::Respond(r) = e.handle(&get("/users/%zz", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("hex digits"));
    // Unchanged paths are forwarded as sent; changed ones rewritten; strip_prefix and a target
    // base path compose.
    let Decision::Forward(f) = e.handle(&get("/public/a?x=1", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(f.path_and_query("/public/a?x=1"), "/public/a?x=1");
    let Decision::Forward(f) = e.handle(&get("/public//b/./c?x=1", &none, "10.0.0.1"), at(0))
    else {
        panic!()
    };
    assert_eq!(f.path_and_query("/public//b/./c?x=1"), "/public/b/c?x=1");
    let Decision::Forward(f) = e.handle(&get("/api/items/7?q", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(f.path_and_query("/api/items/7?q"), "/v2/items/7?q");
    let Decision::Forward(f) = e.handle(&get("/api", &none, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(f.path_and_query("/api"), "/v2/");
}

#[test]
fn forwarded_for_is_only_believed_from_trusted_proxies() {
    let text = r#"
        [server]
        trusted_proxies = ["10.1.0.0/16"]
        [[routes]]
        path = "/"
        targets = ["http://u:1"]
        rate_limit = { max = 1, window = "60s" }
    "#;
    let e = engine(text);
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
    );
    h.append("x-forwarded-for", HeaderValue::from_static("10.1.0.7"));
    let ip = |peer: &str| e.policy.client_ip(peer.parse().unwrap(), &h);
    // An untrusted peer cannot pick its key.
    assert_eq!(ip("9.9.9.9"), "9.9.9.9".parse::<IpAddr>().unwrap());
    // Through trusted proxies: the right-most untrusted entry.
    assert_eq!(ip("10.1.2.3"), "2.2.2.2".parse::<IpAddr>().unwrap());

    // So a client spoofing the header still shares one budget.
    let mut e = engine(text);
    let mut statuses = Vec::new();
    for i in 0..3 {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(&format!("7.7.7.{i}")).unwrap(),
        );
        let d = e.handle(&get("/x", &h, "9.9.9.9"), at(i));
        statuses.push(status(&d));
    }
    assert_eq!(statuses, vec![200, 429, 429]);
}

#[test]
fn methods_hosts_and_key_kinds() {
    let text = r#"
        [auth]
        secret = "${JWT_SECRET}"
        [[routes]]
        path = "/admin"
        methods = ["GET", "delete"]
        targets = ["http://a:1"]
        [[routes]]
        path = "/me"
        auth = true
        targets = ["http://a:1"]
        rate_limit = { max = 1, window = "1s", key = "user", algorithm = "gcra" }
        [[routes]]
        path = "/keyed"
        targets = ["http://a:1"]
        rate_limit = { max = 1, window = "1s", key = "header:x-api-key" }
    "#;
    let mut e = engine(text);
    let none = HeaderMap::new();
    let post = RequestView {
        method: &Method::POST,
        ..get("/admin", &none, "1.2.3.4")
    };
    let Decision::Respond(r) = e.handle(&post, at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers[0].1, "GET, DELETE");

    // key = "user": two IPs, one user → one budget; another user has their own.
    let alice = bearer(&token(json!({"sub": "alice", "exp": WALL0.as_secs() + 60})));
    let bob = bearer(&token(json!({"sub": "bob", "exp": WALL0.as_secs() + 60})));
    assert_eq!(
        status(&e.handle(&get("/me", &alice, "1.1.1.1"), at(0))),
        200
    );
    assert_eq!(
        status(&e.handle(&get("/me", &alice, "2.2.2.2"), at(1))),
        429
    );
    assert_eq!(status(&e.handle(&get("/me", &bob, "1.1.1.1"), at(2))), 200);

    // key = "header:x-api-key": keyed by the header, by IP without it.
    let key = |k: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(k).unwrap());
        h
    };
    let (k1, k2) = (key("k1"), key("k2"));
    assert_eq!(
        status(&e.handle(&get("/keyed", &k1, "1.1.1.1"), at(0))),
        200
    );
    assert_eq!(
        status(&e.handle(&get("/keyed", &k1, "2.2.2.2"), at(1))),
        429
    );
    assert_eq!(
        status(&e.handle(&get("/keyed", &k2, "1.1.1.1"), at(2))),
        200
    );
    assert_eq!(
        status(&e.handle(&get("/keyed", &none, "1.1.1.1"), at(3))),
        200
    );
    assert_eq!(
        status(&e.handle(&get("/keyed", &none, "1.1.1.1"), at(4))),
        429
    );
}

/// A store that is down: the driver feeds its error to `on_counter`.
struct DownStore;

impl CounterStore for DownStore {
    fn apply(&mut self, _: &CounterRequest) -> Result<CounterReply, StoreError> {
        Err(StoreError("connection refused".into()))
    }
}

#[test]
fn store_errors_follow_on_store_error() {
    let base = r#"
        [rate_limit]
        on_store_error = "POLICY"
        [[routes]]
        path = "/"
        targets = ["http://u:1"]
        rate_limit = { max = 5, window = "1s" }
    "#;
    let cfg = |p: &str| Config::from_toml(&base.replace("POLICY", p), &MapEnv::default()).unwrap();
    let none = HeaderMap::new();

    let mut open = Engine::new(Policy::new(cfg("allow")).unwrap(), DownStore);
    let Decision::Forward(f) = open.handle(&get("/", &none, "1.1.1.1"), at(0)) else {
        panic!()
    };
    let mut h = HeaderMap::new();
    f.apply_response_headers(&mut h);
    assert_eq!(h["x-aegis-ratelimit"], "unavailable");

    let mut closed = Engine::new(Policy::new(cfg("deny")).unwrap(), DownStore);
    let Decision::Respond(r) = closed.handle(&get("/", &none, "1.1.1.1"), at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason, Reason::StoreUnavailable);
}

#[test]
fn async_store_drive_by_steps() {
    // How an async driver uses the pipeline: the Count step names the counter; the driver
    // fetches it (here from a memory store standing in for the awaited round trip) and feeds
    // the reply back. No decision is made outside the policy.
    let e = engine(SEED);
    let auth = bearer(&user_token());
    let mut store = MemoryStore::with_hasher(10, FixedHasher);
    let mut balancers = e.policy.balancers();
    let step = e
        .policy
        .on_request(&get("/users/1", &auth, "10.9.9.9"), at(0));
    let Step::Count(pending) = step else {
        panic!("a limited route asks for a counter")
    };
    assert_eq!(pending.request().key.to_string(), "/users|ip:10.9.9.9");
    let reply = store.apply(pending.request());
    let ticket = e.policy.on_counter(pending, reply, at(0)).unwrap();
    let fwd = e.policy.forward(ticket, &mut balancers[0], at(0)).unwrap();
    assert_eq!(fwd.user().unwrap(), "test-123");
    assert_eq!(fwd.timeout, Duration::from_secs(30));
    e.policy.on_upstream_result(
        &mut balancers[0],
        fwd.attempt,
        UpstreamOutcome::Status(200),
        at(1),
    );
    assert_eq!(e.policy.stats(&balancers, at(1))[0].requests, 1);
}

fn key(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn asymmetric_algorithms_and_key_confusion() {
    let cases = [
        (
            "RS256",
            Algorithm::RS256,
            "rsa_public.pem",
            EncodingKey::from_rsa_pem(key("rsa_private.pem").as_bytes()),
        ),
        (
            "ES256",
            Algorithm::ES256,
            "ec_public.pem",
            EncodingKey::from_ec_pem(key("ec_private_pk8.pem").as_bytes()),
        ),
        (
            "EdDSA",
            Algorithm::EdDSA,
            "ed_public.pem",
            EncodingKey::from_ed_pem(key("ed_private.pem").as_bytes()),
        ),
    ];
    for (name, alg, public, private) in cases {
        let pem = key(public).replace('\n', "\\n");
        let text = format!(
            "[auth]\nalgorithms = [\"{name}\"]\npublic_key_pem = \"{pem}\"\n\
             [[routes]]\npath = \"/\"\nauth = true\ntargets = [\"http://u:1\"]\n"
        );
        let mut e = engine(&text);
        let claims = json!({"sub": "u1", "exp": WALL0.as_secs() + 60});
        let good = encode(&Header::new(alg), &claims, &private.unwrap()).unwrap();
        let h = bearer(&good);
        let Decision::Forward(f) = e.handle(&get("/", &h, "1.1.1.1"), at(0)) else {
            panic!("{name}")
        };
        assert_eq!(f.user().unwrap(), "u1");
        // HS256 signed with the public key's bytes: the classic confusion attack.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key(public).as_bytes()).unwrap(),
        )
        .unwrap();
        let h = bearer(&forged);
        let Decision::Respond(r) = e.handle(&get("/", &h, "1.1.1.1"), at(0)) else {
            panic!("{name} accepted HS256")
        };
        assert_eq!(
            r.reason,
            Reason::Unauthorized(aegis_policy::AuthFailure::AlgorithmNotAllowed)
        );
    }
    // A wrong PEM is a config error naming the key.
    let text = "[auth]\nalgorithms = [\"RS256\"]\npublic_key_pem = \"nope\"\n[[routes]]\npath = \"/\"\ntargets = [\"http://u:1\"]\n";
    let err = Config::from_toml(text, &MapEnv::default()).unwrap_err();
    assert_eq!(err.path, "auth.public_key_pem");
}

#[test]
fn size_limits_and_upstream_failures_are_policy_answers() {
    let mut e = engine(
        r#"
        [server]
        max_uri_length = 64
        max_header_size = "1KiB"
        [[routes]]
        path = "/upload"
        targets = ["http://a:1"]
        max_body_size = "100B"
        timeout = "2s"
        "#,
    );
    let none = HeaderMap::new();
    let long = format!("/upload/{}", "x".repeat(64));
    let d = e.handle(&get(&long, &none, "10.0.0.1"), at(0));
    assert_eq!(status(&d), 414);

    let mut big = HeaderMap::new();
    big.insert("x-big", HeaderValue::from_str(&"b".repeat(1100)).unwrap());
    let d = e.handle(&get("/upload", &big, "10.0.0.1"), at(0));
    assert_eq!(status(&d), 431);

    let mut declared = HeaderMap::new();
    declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("101"));
    let d = e.handle(&get("/upload", &declared, "10.0.0.1"), at(0));
    assert_eq!(status(&d), 413);
    declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
    let Decision::Forward(fwd) = e.handle(&get("/upload", &declared, "10.0.0.1"), at(0)) else {
        panic!("a body at the limit is forwarded");
    };
    assert_eq!(e.policy.max_body(fwd.route), Some(100));

    let p = &e.policy;
    let r = p
        .upstream_failure(
            fwd.route,
            fwd.target(),
            UpstreamOutcome::ConnectError,
            "refused",
        )
        .unwrap();
    assert_eq!(
        (r.status, &r.reason),
        (StatusCode::BAD_GATEWAY, &Reason::UpstreamError)
    );
    assert!(
        r.body.contains("http://a:1") && r.body.contains("refused"),
        "{}",
        r.body
    );
    let r = p
        .upstream_failure(fwd.route, fwd.target(), UpstreamOutcome::Timeout, "")
        .unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.body.contains("within 2s"), "{}", r.body);
    for passes in [UpstreamOutcome::Status(500), UpstreamOutcome::Cancelled] {
        assert_eq!(
            p.upstream_failure(fwd.route, fwd.target(), passes, ""),
            None
        );
    }
    assert_eq!(
        p.body_too_large(fwd.route, None).status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    e.on_upstream_result(&fwd, UpstreamOutcome::Status(200), at(1));
}

/// The attacker's paths against a public `/` and a protected `/secure` (issue "Hardening
/// II"): none reaches the public route in a form a lenient backend resolves to /secure.
#[test]
fn ambiguous_paths_to_a_protected_route_are_refused_on_a_public_one() {
    let text = r#"
        [auth]
        secret = "${JWT_SECRET}"
        [[routes]]
        path = "/secure"
        targets = ["http://s:1"]
        auth = true
        [[routes]]
        path = "/limited"
        targets = ["http://l:1"]
        rate_limit = { max = 10, window = "60s" }
        [[routes]]
        path = "/"
        targets = ["http://p:1"]
    "#;
    let mut e = engine(text);
    let none = HeaderMap::new();
    for path in [
        "/secure;x=1/y",
        "/SECURE/x",
        "/Secure",
        "/secure%2fx",
        "/a/..%2fsecure/x",
        "/secure\\x",
        "/secure%00/x",
        "/secure%20/x",
        "/secure./x",
        "/a/..;/secure/x",
        "/a/%252e%252e/secure",
        "/a/%c0%ae%c0%ae/secure",
        "/LIMITED/x",
        "/limited;a/x",
    ] {
        let Decision::Respond(r) = e.handle(&get(path, &none, "10.0.0.1"), at(0)) else {
            panic!("{path} was forwarded");
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert_eq!(r.reason, Reason::BadRequest, "{path}");
    }
    // What resolves to /secure on its own is routed there, and auth applies.
    for path in ["/secure/x", "/a/../secure", "/a/%2e%2e/secure"] {
        let Decision::Respond(r) = e.handle(&get(path, &none, "10.0.0.1"), at(0)) else {
            panic!("{path} was forwarded");
        };
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Public paths with case, parameters or dots that no stricter route claims go through.
    for path in [
        "/Public/Index.HTML",
        "/docs;v=2/a",
        "/files/v1.2/",
        "/100%25",
    ] {
        assert!(
            matches!(
                e.handle(&get(path, &none, "10.0.0.1"), at(0)),
                Decision::Forward(_)
            ),
            "{path}"
        );
    }
}

#[test]
fn header_names_with_underscores_are_dropped_by_default_or_refused() {
    let text = "[[routes]]\npath = \"/\"\ntargets = [\"http://p:1\"]\n";
    let mut h = HeaderMap::new();
    h.insert("x_user_id", HeaderValue::from_static("admin"));
    h.insert("x-fine", HeaderValue::from_static("1"));
    let mut e = engine(text);
    let Decision::Forward(f) = e.handle(&get("/", &h, "10.0.0.1"), at(0)) else {
        panic!()
    };
    let mut sent = h.clone();
    f.apply_request_headers(&mut sent);
    assert!(sent.get("x_user_id").is_none(), "{sent:?}");
    assert_eq!(sent.get("x-fine").unwrap(), "1");

    let mut e = engine(&format!(
        "[server]\nheaders_with_underscores = \"reject\"\n{text}"
    ));
    let Decision::Respond(r) = e.handle(&get("/", &h, "10.0.0.1"), at(0)) else {
        panic!()
    };
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let mut e = engine(&format!(
        "[server]\nheaders_with_underscores = \"allow\"\n{text}"
    ));
    let Decision::Forward(f) = e.handle(&get("/", &h, "10.0.0.1"), at(0)) else {
        panic!()
    };
    let mut sent = h.clone();
    f.apply_request_headers(&mut sent);
    assert_eq!(sent.get("x_user_id").unwrap(), "admin");
}

/// The retry rule (issue "Upstream traffic management"): what could not be sent goes to
/// another target whatever its method; what was sent goes again only if idempotent, its body
/// replayable, the failure in `retry_on` (or a reset or timeout) and `retries` not spent;
/// every retry takes from the budget.
#[test]
fn retries_follow_the_rule_and_the_budget() {
    use aegis_policy::{FailedTry, Forward};
    let route = r#"
        [[routes]]
        path = "/"
        targets = ["http://a:1", "http://b:1", "http://c:1"]
        retries = 1
        retry_idempotency_key = true
    "#;
    let none = HeaderMap::new();
    let failed = |outcome, sent, method: &'static Method, key, replay| FailedTry {
        outcome,
        sent,
        method,
        idempotency_key: key,
        body_replayable: replay,
    };
    let first = |e: &mut Engine<_>| {
        let Decision::Forward(f) = e.handle(&get("/x", &none, "10.0.0.1"), at(0)) else {
            panic!()
        };
        f
    };

    // The rule, with a budget that never runs out.
    let mut e = engine(&format!("[retry_budget]\nratio = 10.0\n{route}"));
    let f = first(&mut e);
    let (p, b) = (&e.policy, &mut e.balancers[0]);
    // Not sent at all: any method goes elsewhere, once to each other target.
    let unsent = failed(
        UpstreamOutcome::ConnectError,
        false,
        &Method::POST,
        false,
        false,
    );
    let g = p
        .retry(&f, unsent, b, at(1))
        .expect("an unsent POST goes to another target");
    assert_ne!(g.target(), f.target());
    assert_eq!(g.try_number(), 2);
    let h = p.retry(&g, unsent, b, at(1)).expect("and to the third");
    assert!(![f.target(), g.target()].contains(&h.target()));
    assert!(
        p.retry(&h, unsent, b, at(1)).is_none(),
        "every target tried"
    );
    // Sent: a POST is never retried, unless it has an Idempotency-Key (configured); a GET is,
    // on a status in retry_on, a reset after sending or a try timeout, once (retries = 1).
    let post = failed(
        UpstreamOutcome::Status(503),
        true,
        &Method::POST,
        false,
        true,
    );
    assert!(p.retry(&f, post, b, at(1)).is_none());
    let keyed = failed(
        UpstreamOutcome::Status(503),
        true,
        &Method::POST,
        true,
        true,
    );
    let k = p
        .retry(&f, keyed, b, at(1))
        .expect("a POST with an Idempotency-Key is");
    let get503 = failed(
        UpstreamOutcome::Status(503),
        true,
        &Method::GET,
        false,
        true,
    );
    assert!(
        p.retry(&k, get503, b, at(1)).is_none(),
        "retries = 1: spent"
    );
    for outcome in [
        UpstreamOutcome::Status(502),
        UpstreamOutcome::ConnectError,
        UpstreamOutcome::Timeout,
    ] {
        assert!(
            p.retry(
                &f,
                failed(outcome, true, &Method::GET, false, true),
                b,
                at(1)
            )
            .is_some(),
            "{outcome:?}"
        );
    }
    // Not in retry_on, a body that cannot be sent again, or cancelled: no.
    for (outcome, replay) in [
        (UpstreamOutcome::Status(500), true),
        (UpstreamOutcome::Status(503), false),
        (UpstreamOutcome::Cancelled, true),
    ] {
        assert!(
            p.retry(
                &f,
                failed(outcome, true, &Method::GET, false, replay),
                b,
                at(1)
            )
            .is_none()
        );
    }

    // The budget: 20 % of the requests, no floor.
    let mut e = engine(&format!(
        "[retry_budget]\nratio = 0.2\nmin_per_second = 0\n{route}"
    ));
    let fs: Vec<Forward> = (0..10).map(|_| first(&mut e)).collect();
    let (p, b) = (&e.policy, &mut e.balancers[0]);
    let granted = fs
        .iter()
        .filter(|f| p.retry(f, get503, b, at(1)).is_some())
        .count();
    assert_eq!(granted, 2, "10 requests buy 2 retries");
}
