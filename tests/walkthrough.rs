//! The seed README's curl walkthrough against real processes: `aegis run` with the seed's
//! routes in front of six `aegis upstream` services, and `aegis demo` as the README's first
//! command.
#![allow(clippy::disallowed_methods)] // real time: deadlines and Unix windows

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aegis_testkit::{
    Gateway, Response, Upstream, bearer, free_port, get, mint_token, wait_for,
    wait_for_window_room, wait_until,
};
use serde_json::json;

const SECRET: &str = "your_secret_key_here";

struct Seed {
    users: Vec<Upstream>,
    products: Vec<Upstream>,
}

impl Seed {
    fn start() -> Seed {
        Seed {
            users: (1..=3)
                .map(|i| Upstream::start(&format!("user-service-{i}")))
                .collect(),
            products: (1..=3)
                .map(|i| Upstream::start(&format!("product-service-{i}")))
                .collect(),
        }
    }

    /// The seed's routes.config.ts as TOML; the secret comes from `JWT_SECRET` as in `.env`.
    fn config(&self, users_limit: u64, open_for: &str) -> String {
        let list = |v: &[Upstream]| {
            v.iter()
                .map(|u| format!("{:?}", u.url()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[auth]
secret = "${{JWT_SECRET}}"

[breaker]
failure_threshold = 3
open_for = "{open_for}"

[[routes]]
path = "/users"
targets = [{users}]
auth = true
rate_limit = {{ max = {users_limit}, window = "60s" }}

[[routes]]
path = "/product"
targets = [{products}]
auth = true
"#,
            users = list(&self.users),
            products = list(&self.products),
        )
    }

    fn name_of(&self, url: &str) -> String {
        self.users
            .iter()
            .chain(&self.products)
            .find(|u| u.url() == url)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| panic!("{url} is no seed upstream"))
    }
}

fn token() -> String {
    mint_token(SECRET, json!({"userId": "test-123"}))
}

fn service(r: &Response) -> String {
    r.json()["service"]
        .as_str()
        .unwrap_or_else(|| panic!("no service in {r:?}"))
        .to_owned()
}

#[test]
fn seed_walkthrough_auth_and_rate_limit() {
    let seed = Seed::start();
    let port = free_port();
    let gw = Gateway::start(
        &seed.config(10, "60s"),
        &[("JWT_SECRET", SECRET), ("PORT", &port.to_string())],
    );
    assert_eq!(gw.addr.port(), port, "PORT overrides server.listen");
    let auth = bearer(&token());

    // no token → 401 with a Bearer challenge.
    let r = gw.get("/users", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(
        r.header("x-request-id").is_some(),
        "x-request-id on every response"
    );

    // A wrong signature is refused the same way.
    let forged = mint_token("not-the-secret", json!({"userId": "test-123"}));
    let r = gw.get("/users", &[("Authorization", &bearer(&forged))]);
    assert_eq!(r.status, 401);

    // another route, with a token → 200 from a product service, identity forwarded.
    let r = gw.get("/product", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert!(service(&r).starts_with("product-service-"), "{body}");
    assert_eq!(body["userId"], "test-123");
    assert_eq!(body["path"], "/product");
    let request_id = r.header("x-request-id").expect("x-request-id");
    assert_eq!(
        body["requestId"], request_id,
        "the upstream saw the same request id"
    );
    assert_eq!(r.header("x-upstream"), body["service"].as_str());

    // 15 fast requests → 10 × 200 then 429 with RateLimit-* and Retry-After.
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(10));
    let mut statuses = Vec::new();
    for i in 0..15u64 {
        let r = gw.get("/users", &[("Authorization", &auth)]);
        statuses.push(r.status);
        if r.status == 200 {
            assert_eq!(r.json()["userId"], "test-123");
            assert_eq!(r.header("ratelimit-limit"), Some("10"), "{r:?}");
            assert_eq!(
                r.header("ratelimit-remaining"),
                Some((9 - i).to_string().as_str())
            );
        } else {
            assert_eq!(r.status, 429, "{r:?}");
            assert_eq!(r.header("ratelimit-limit"), Some("10"));
            assert_eq!(r.header("ratelimit-remaining"), Some("0"));
            let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(
                (1..=60).contains(&reset) && (1..=60).contains(&retry),
                "{r:?}"
            );
            assert_eq!(r.json()["error"], "rate_limited");
        }
    }
    assert_eq!(
        statuses,
        [[200; 10].as_slice(), [429; 5].as_slice()].concat()
    );
    // The unlimited route is not affected.
    assert_eq!(gw.get("/product", &[("Authorization", &auth)]).status, 200);
}

#[test]
fn seed_walkthrough_circuit_breaker() {
    let seed = Seed::start();
    let open_for = Duration::from_secs(2);
    let gw = Gateway::start(&seed.config(1000, "2s"), &[("JWT_SECRET", SECRET)]);
    let auth = bearer(&token());

    // Every /users/fail answers 500; round robin spreads them until one target has 3 in a
    // row and its circuit opens (the seed: "hit /fail 3 times to open the circuit").
    let mut fails = 0;
    // When the request that opened the circuit was sent: the circuit opened after it, so
    // timing from it never sees the half-open come "early" (timing from the stats read after
    // it did, on a loaded machine).
    let mut last_sent = Instant::now();
    let opened = wait_for("one /users target to open", Duration::from_secs(10), || {
        last_sent = Instant::now();
        let r = gw.get("/users/fail", &[("Authorization", &auth)]);
        assert_eq!(r.status, 500, "{r:?}");
        fails += 1;
        assert!(fails <= 12, "no breaker opened after {fails} failures");
        let stats = gw.stats();
        let open: Vec<_> = stats.iter().filter(|s| s["state"] == "OPEN").collect();
        (!open.is_empty()).then(|| {
            assert_eq!(open.len(), 1, "exactly one target opens first: {stats:?}");
            open[0].clone()
        })
    });
    let opened_at = last_sent;
    assert_eq!(opened["path"], "/users");
    assert_eq!(opened["failures"], 3);
    let open_url = opened["targetUrl"].as_str().unwrap().to_owned();
    let open_name = seed.name_of(&open_url);
    let logged = format!("circuit CLOSED → OPEN for {open_url} on route /users [");
    wait_until(
        "the transition to be logged",
        Duration::from_secs(5),
        || gw.stderr().contains(&logged),
    );

    // The seed's stats shape: path, targetUrl, failures, state for all six targets, in order.
    let stats = gw.stats();
    assert_eq!(stats.len(), 6);
    let urls: Vec<String> = seed
        .users
        .iter()
        .chain(&seed.products)
        .map(|u| u.url())
        .collect();
    for (s, url) in stats.iter().zip(&urls) {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        for k in ["path", "targetUrl", "failures", "state"] {
            assert!(keys.iter().any(|x| *x == k), "{k} missing in {s}");
        }
        assert_eq!(s["targetUrl"], url.as_str());
        let want_path = if seed.users.iter().any(|u| u.url() == *url) {
            "/users"
        } else {
            "/product"
        };
        assert_eq!(s["path"], want_path);
    }

    // Traffic skips the open target while it is open.
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let r = gw.get("/users", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{r:?}");
        if opened_at.elapsed() < open_for {
            served.insert(service(&r));
        }
    }
    assert!(
        !served.contains(&open_name),
        "{open_name} served while OPEN: {served:?}"
    );
    assert!(opened_at.elapsed() < open_for, "too slow to check skipping");

    // After open_for it half-opens; a successful probe closes it.
    wait_until("the circuit to half-open", open_for * 5, || {
        gw.stats()
            .iter()
            .any(|s| s["targetUrl"] == open_url.as_str() && s["state"] == "HALF_OPEN")
    });
    assert!(
        opened_at.elapsed() >= open_for,
        "half-opened before open_for"
    );
    let mut probed = false;
    for _ in 0..6 {
        let r = gw.get("/users", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{r:?}");
        probed |= service(&r) == open_name;
        if probed {
            break;
        }
    }
    assert!(probed, "no request reached the half-open target");
    let line = gw
        .stats()
        .into_iter()
        .find(|s| s["targetUrl"] == open_url.as_str())
        .unwrap();
    assert_eq!(line["state"], "CLOSED", "{line}");
    assert_eq!(line["failures"], 0, "{line}");
}

/// The README's first command: `aegis demo` with free ports prints the gateway line, one line
/// per demo upstream and a ready token, and the walkthrough works against it.
#[test]
fn demo_command_serves_the_walkthrough() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(aegis_testkit::aegis_bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--upstream-port",
            "0",
            "--open-for",
            "1s",
        ])
        .env_remove("JWT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn aegis demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut gateway = None;
    let mut upstreams = 0;
    let mut token = None;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gateway.is_none() || upstreams < 6 || token.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!(
                "aegis demo output incomplete after 20s:\n{}",
                seen.join("\n")
            );
        };
        let t = line.trim();
        if let Some(a) = t.strip_prefix("listening on http://") {
            gateway = Some(a.parse::<std::net::SocketAddr>().expect("gateway addr"));
        } else if t.starts_with("upstream ") && t.contains(" listening on http://") {
            upstreams += 1;
        }
        // A JWT: three base64url segments, the first one a JSON header ("eyJ").
        for word in t.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            let parts: Vec<&str> = word.split('.').collect();
            if parts.len() == 3
                && word.starts_with("eyJ")
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
            {
                token = Some(word.to_owned());
            }
        }
        seen.push(line);
    }
    let addr = gateway.unwrap();
    let auth = bearer(&token.unwrap());
    let r = get(addr, "/users", &[]);
    assert_eq!(r.status, 401);
    let r = get(addr, "/users", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["userId"], "test-123");
    assert!(service(&r).starts_with("user-service-"));
    let r = get(addr, "/product", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(service(&r).starts_with("product-service-"));
    let stats = get(addr, "/gateway/stats", &[]).json();
    assert_eq!(stats.as_array().map(Vec::len), Some(6), "{stats}");
    drop(child);
}
