#![allow(clippy::disallowed_methods)] // real time: deadlines

//! JWKS end to end: a JWKS server in this test process (plain HTTP on loopback, which the
//! gateway allows with a warning), keys made here (ES256 and EdDSA with rcgen, RSA by PyJWT in
//! `tests/helpers/pyjwt_tokens.py`), a real `aegis` process. Rotation is accepted at once, a
//! flood of unknown kids costs one fetch per interval, an IdP outage is served from stale keys
//! until `jwks_max_stale`, and routes pick their provider.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_testkit::{Gateway, RawUpstream, Upstream, bearer, mint_token, unix_millis, wait_until};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// What the JWKS server answers: a status, a body, a Cache-Control.
#[derive(Clone)]
struct Answer {
    status: u16,
    keys: Vec<Value>,
}

/// A JWKS endpoint in this process: serves `state`, counts requests.
struct Idp {
    server: RawUpstream,
    state: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    fn start(keys: Vec<Value>) -> Idp {
        let state = Arc::new(Mutex::new(Answer { status: 200, keys }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (state.clone(), fetches.clone());
        let server = RawUpstream::start(move |_head, stream| {
            use std::io::Write;
            f.fetch_add(1, SeqCst);
            let a = s.lock().unwrap().clone();
            let body = if a.status == 200 {
                json!({ "keys": a.keys }).to_string()
            } else {
                "{\"error\":\"down\"}".to_owned()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                a.status,
                body.len()
            );
        });
        Idp {
            server,
            state,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.url())
    }

    fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = keys;
    }

    fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(SeqCst)
    }
}

/// A signing key made here and its public JWK.
struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    SigningKey {
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..])}),
    }
}

fn ed25519(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    SigningKey {
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                    "x": B64.encode(kp.public_key_raw())}),
    }
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "iss": "https://idp.test/", "exp": unix_millis() / 1000 + 600})
}

fn sign(k: &SigningKey, kid: &str, user: &str) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims(user), &k.key).unwrap()
}

/// RS256 and PS256 tokens signed by PyJWT (an independent implementation) and its JWK.
fn pyjwt(kid: &str, user: &str) -> (Value, String, String) {
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/pyjwt_tokens.py");
    let out = Command::new("python3")
        .arg(helper)
        .arg(kid)
        .arg(claims(user).to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "tests/helpers/pyjwt_tokens.py failed (needs `python3 -m pip install pyjwt cryptography`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("helper prints JSON");
    (
        v["jwk"].clone(),
        v["rs256"].as_str().unwrap().to_owned(),
        v["ps256"].as_str().unwrap().to_owned(),
    )
}

fn config(up: &Upstream, idp: &Idp, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[auth]
secret = "internal-secret"

[auth_providers.idp]
algorithms = ["ES256", "EdDSA", "RS256", "PS256"]
jwks_url = "{url}"
issuer = "https://idp.test/"
user_claim = "sub"
{extra}

[[routes]]
path = "/internal"
targets = ["{up}"]
auth = true

[[routes]]
path = "/api"
targets = ["{up}"]
auth = "idp"
"#,
        url = idp.url(),
        up = up.url()
    )
}

fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    gw.get(path, &[("authorization", &bearer(token))]).status
}

#[test]
fn rotation_is_accepted_at_once_and_unknown_kids_cost_one_fetch_per_interval() {
    let up = Upstream::start("api");
    let a = es256("a");
    let idp = Idp::start(vec![a.jwk.clone()]);
    let gw = Gateway::start(&config(&up, &idp, "jwks_refetch_interval = \"3s\""), &[]);
    // Fetched before serving: the first request is already verified.
    gw.wait_logged("is fetched without TLS");
    let health = gw.health();
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["jwks"][0]["keys"], 1);
    assert_eq!(idp.fetches(), 1);
    let r = gw.get(
        "/api/x",
        &[("authorization", &bearer(&sign(&a, "a", "alice")))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"][0], "alice");

    // Providers per route: the internal HS256 secret is not accepted on /api, nor the
    // IdP's keys on /internal.
    let internal = mint_token("internal-secret", json!({"userId": "svc"}));
    assert_eq!(status(&gw, "/internal", &internal), 200);
    assert_eq!(status(&gw, "/api", &internal), 401);
    assert_eq!(status(&gw, "/internal", &sign(&a, "a", "alice")), 401);

    // The IdP rotates in an Ed25519 key and an RSA key (PyJWT's): tokens naming them are
    // accepted on their first request, which waits for one refetch.
    let b = ed25519("b");
    let (rsa_jwk, rs256, ps256) = pyjwt("r", "bob");
    idp.set_keys(vec![a.jwk.clone(), b.jwk.clone(), rsa_jwk]);
    let r = gw.get(
        "/api",
        &[("authorization", &bearer(&sign(&b, "b", "carol")))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.fetches(), 2);
    let r = gw.get("/api", &[("authorization", &bearer(&rs256))]);
    assert_eq!(
        (r.status, r.json()["headers"]["x-user-id"][0].clone()),
        (200, json!("bob"))
    );
    assert_eq!(status(&gw, "/api", &ps256), 200);
    assert_eq!(idp.fetches(), 2, "known kids fetch nothing");

    // A key is only used for its own algorithm: kid "b" (Ed25519) on an ES256 token.
    let r = gw.get(
        "/api",
        &[("authorization", &bearer(&sign(&a, "b", "mallory")))],
    );
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("key_mismatch"))
    );

    // A flood of random kids within the interval: refused without a fetch.
    for i in 0..40 {
        let r = gw.get(
            "/api",
            &[(
                "authorization",
                &bearer(&sign(&a, &format!("rnd-{i}"), "x")),
            )],
        );
        assert_eq!(
            (r.status, r.json()["reason"].clone()),
            (401, json!("unknown_key"))
        );
    }
    assert_eq!(idp.fetches(), 2, "the rotation's refetch was under 3 s ago");
    // Once the interval has passed, one unknown kid fetches again, and only one.
    wait_until(
        "an unknown-kid refetch after the interval",
        Duration::from_secs(10),
        || {
            gw.get(
                "/api",
                &[("authorization", &bearer(&sign(&a, "later", "x")))],
            );
            idp.fetches() == 3
        },
    );
    for i in 0..20 {
        gw.get(
            "/api",
            &[(
                "authorization",
                &bearer(&sign(&a, &format!("again-{i}"), "x")),
            )],
        );
    }
    assert_eq!(idp.fetches(), 3);
    let metrics = gw.get("/gateway/metrics", &[]).text();
    assert!(
        metrics.contains(
            "aegis_jwks_unknown_kid_total{provider=\"auth_providers.idp\",action=\"refetch\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("aegis_jwks_up{provider=\"auth_providers.idp\""),
        "{metrics}"
    );
}

#[test]
fn idp_outage_serves_stale_keys_until_max_stale_then_503_and_recovers() {
    let up = Upstream::start("api");
    let a = es256("a");
    // The IdP is down when the gateway starts: it serves after jwks_ready_timeout, not ready.
    let idp = Idp::start(vec![a.jwk.clone()]);
    idp.set_status(503);
    let timing = "jwks_min_refresh = \"1s\"\njwks_max_refresh = \"1s\"\njwks_max_stale = \"3s\"\njwks_ready_timeout = \"500ms\"";
    let gw = Gateway::start(&config(&up, &idp, timing), &[]);
    let token = sign(&a, "a", "alice");
    let h = gw.health();
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["jwks"][0]["ready"], false);
    let r = gw.get("/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (503, json!("keys_unavailable"))
    );
    assert!(r.header("retry-after").is_some());
    gw.wait_logged("no keys from");

    // The IdP comes up: the retry (1 s backoff) brings the keys.
    idp.set_status(200);
    wait_until("the first keys", Duration::from_secs(10), || {
        gw.health().status == 200
    });
    assert_eq!(status(&gw, "/api", &token), 200);

    // Down again: refreshes (every 1 s) fail, the last good keys keep serving, health says
    // degraded, the failure is logged once.
    idp.set_status(500);
    let down_at = std::time::Instant::now();
    wait_until("a failed refresh", Duration::from_secs(10), || {
        gw.health().json()["status"] == "degraded"
    });
    assert_eq!(status(&gw, "/api", &token), 200, "stale keys serve");
    // Past max_stale (1 s fresh + 3 s stale after the last success): 503, not 401.
    wait_until("keys past jwks_max_stale", Duration::from_secs(15), || {
        gw.get("/api", &[("authorization", &bearer(&token))]).status == 503
    });
    assert!(
        down_at.elapsed() >= Duration::from_secs(2),
        "stale keys served for a while"
    );
    assert_eq!(gw.health().status, 503);
    let log = gw.stderr();
    assert_eq!(
        log.matches("fetch failed").count(),
        2,
        "one line per outage, not per retry:\n{log}"
    );
    let m = gw.get("/gateway/metrics", &[]).text();
    assert!(
        m.contains("aegis_jwks_up{provider=\"auth_providers.idp\""),
        "{m}"
    );
    assert!(
        !m.contains("aegis_jwks_fetches_total{provider=\"auth_providers.idp\",result=\"error\"} 0"),
        "{m}"
    );

    idp.set_status(200);
    wait_until("recovery", Duration::from_secs(10), || {
        gw.get("/api", &[("authorization", &bearer(&token))]).status == 200
    });
    gw.wait_logged("recovered");
}

#[test]
fn a_reload_that_drops_a_jwks_url_stops_fetching_it() {
    let up = Upstream::start("api");
    let a = es256("a");
    let (old, new) = (
        Idp::start(vec![a.jwk.clone()]),
        Idp::start(vec![a.jwk.clone()]),
    );
    let every_second = "jwks_min_refresh = \"1s\"\njwks_max_refresh = \"1s\"";
    let gw = Gateway::start(&config(&up, &old, every_second), &[]);
    wait_until(
        "refreshes of the first URL",
        Duration::from_secs(10),
        || old.fetches() >= 2,
    );
    gw.write_config(&config(&up, &new, every_second));
    gw.signal("HUP");
    wait_until("the new URL fetched", Duration::from_secs(10), || {
        new.fetches() >= 1
    });
    let after_reload = old.fetches();
    // Three refreshes of the new URL (three seconds) later, the old one saw at most the fetch
    // that was already under way.
    wait_until("refreshes of the new URL", Duration::from_secs(15), || {
        new.fetches() >= 4
    });
    assert!(
        old.fetches() <= after_reload + 1,
        "the old URL is still fetched: {} then {}",
        after_reload,
        old.fetches()
    );
    assert_eq!(status(&gw, "/api", &sign(&a, "a", "alice")), 200);
}

#[test]
fn a_rotation_that_drops_a_key_refuses_its_cached_tokens() {
    let up = Upstream::start("api");
    let (a, c) = (es256("a"), es256("c"));
    let idp = Idp::start(vec![a.jwk.clone()]);
    let gw = Gateway::start(&config(&up, &idp, "jwks_refetch_interval = \"1s\""), &[]);
    let old = sign(&a, "a", "alice");
    for _ in 0..6 {
        assert_eq!(status(&gw, "/api", &old), 200);
    }
    let m = gw.get("/gateway/metrics", &[]).text();
    assert!(
        !m.contains("aegis_token_cache_hits_total{provider=\"auth_providers.idp\"} 0"),
        "the token was served from the cache:\n{m}"
    );
    // The IdP retires "a" for "c". The gateway learns it from the first token naming "c".
    idp.set_keys(vec![c.jwk.clone()]);
    assert_eq!(status(&gw, "/api", &sign(&c, "c", "carol")), 200);
    assert_eq!(idp.fetches(), 2);
    // Tokens signed by the retired key are refused, cached or not.
    for _ in 0..6 {
        let r = gw.get("/api", &[("authorization", &bearer(&old))]);
        assert_eq!(
            (r.status, r.json()["reason"].clone()),
            (401, json!("unknown_key"))
        );
    }
}
