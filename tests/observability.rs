//! What operators see: the JSON access log (the input of `aegis-sim replay`), the seed-shaped
//! text line, X-Request-ID handling, Prometheus metrics, and HTTP/2 cleartext clients.
#![allow(clippy::disallowed_methods)] // real time: deadlines

use std::time::Duration;

use aegis_testkit::{Gateway, Upstream, bearer, get, mint_token, wait_for};
use serde_json::{Value, json};

const SECRET: &str = "obs-secret";

fn config(up: &Upstream) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[auth]
secret = "{SECRET}"

[[routes]]
path = "/users"
targets = [{u:?}]
auth = true
rate_limit = {{ max = 2, window = "60s" }}

[[routes]]
path = "/public"
targets = [{u:?}]
"#,
        u = up.url()
    )
}

#[test]
fn json_access_log_has_one_object_per_request() {
    let up = Upstream::start("svc");
    let gw = Gateway::start_with(&config(&up), &[], &["--log-format", "json"]).unwrap();
    let token = bearer(&mint_token(SECRET, json!({"userId": "u-7"})));
    let ok = gw.get(
        "/users/1?x=1",
        &[("Authorization", &token), ("X-Request-ID", "req-abc")],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(gw.get("/users", &[]).status, 401);
    assert_eq!(gw.get("/nowhere", &[]).status, 404);

    let lines: Vec<Value> = wait_for("three access lines", Duration::from_secs(10), || {
        let v: Vec<Value> = gw
            .stderr()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v| v["message"] == "request")
            .collect();
        (v.len() >= 3).then_some(v)
    });
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-abc");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/users/1?x=1");
    assert_eq!(first["route"], "/users");
    assert_eq!(first["target"], up.url().as_str());
    assert_eq!(first["status"], 200);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["user"], "u-7");
    assert_eq!(first["auth"], "verified");
    assert_eq!(first["reason"], "forwarded");
    assert!(first["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(first["timestamp"].as_str().is_some());

    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[1]["reason"], "unauthorized");
    assert_eq!(lines[1]["auth"], "absent");
    assert_eq!(lines[1]["route"], "/users");
    assert_eq!(lines[2]["status"], 404);
    assert_eq!(lines[2]["reason"], "no_route");
}

#[test]
fn text_access_log_keeps_the_seed_shape() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up), &[]);
    let r = gw.get("/public/a", &[("X-Request-ID", "seed-shape-1")]);
    assert_eq!(r.status, 200);
    let want = format!("[GET] {}/public/a → 200 (", up.url());
    wait_for("the access line", Duration::from_secs(10), || {
        let log = gw.stderr();
        log.lines()
            .find(|l| l.contains(&want) && l.ends_with("[seed-shape-1]"))
            .map(str::to_owned)
    });
}

#[test]
fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up), &[]);
    let r = gw.get("/public", &[("X-Request-ID", "client-id-42")]);
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    assert_eq!(r.json()["requestId"], "client-id-42");

    for bad in ["has space".to_owned(), "x".repeat(129), String::new()] {
        let r = gw.get("/public", &[("X-Request-ID", &bad)]);
        let id = r.header("x-request-id").unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(id.as_bytes()[14], b'4', "UUID v4: {id}");
        assert_eq!(r.json()["requestId"], id.as_str());
    }
}

#[test]
fn metrics_count_requests_rejections_and_breakers() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up), &[]);
    let token = bearer(&mint_token(SECRET, json!({"userId": "m"})));
    for _ in 0..3 {
        gw.get("/users", &[("Authorization", &token)]);
    }
    gw.get("/public/fail", &[]);
    let m = get(gw.addr, "/gateway/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    let has = |line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} not in metrics:\n{text}"
        )
    };
    has(r#"aegis_requests_total{route="/users",status="200"} 2"#);
    has(r#"aegis_requests_total{route="/users",status="429"} 1"#);
    has(r#"aegis_requests_total{route="/public",status="500"} 1"#);
    has(r#"aegis_rate_limited_total{route="/users"} 1"#);
    has(&format!(
        r#"aegis_breaker_failures{{route="/public",target="{}"}} 1"#,
        up.url()
    ));
    has(r#"aegis_upstream_duration_seconds_count{route="/users"} 2"#);
    assert!(text.contains("aegis_store_errors_total{store=\"memory\"} 0"));
}

#[test]
fn http2_cleartext_clients_are_served() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        for path in ["/public/h2?q=1", "/public/again"] {
            let uri: http::Uri = format!("http://{}{path}", gw.addr).parse().unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
                .await
                .expect("h2 response in time")
                .expect("h2 request");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert!(resp.headers().contains_key("x-request-id"));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["path"], path);
            assert_eq!(v["service"], "svc");
        }
    });
}

#[test]
fn in_flight_and_open_connection_gauges_follow_a_held_request() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up), &[]);
    let gauge = |name: &str| -> i64 {
        let text = get(gw.addr, "/gateway/metrics", &[]).text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
    };
    // The metrics request itself is one request in flight on one connection.
    assert_eq!(gauge("aegis_requests_in_flight"), 1);
    // The log writer keeps up with a quiet gateway.
    assert_eq!(gauge("aegis_log_lines_dropped_total"), 0);
    let addr = gw.addr;
    let slow = std::thread::spawn(move || get(addr, "/public/slow?sleep_ms=1500", &[]));
    wait_for("the held request to count", Duration::from_secs(10), || {
        (gauge("aegis_requests_in_flight") == 2).then_some(())
    });
    assert!(gauge("aegis_connections_open") >= 2);
    assert_eq!(slow.join().unwrap().status, 200);
    wait_for("the gauges to come back", Duration::from_secs(10), || {
        (gauge("aegis_requests_in_flight") == 1).then_some(())
    });
}
