#![allow(clippy::disallowed_methods)] // real time: deadlines

//! https upstreams end to end: TLS servers in this test process (tokio-rustls + hyper) with
//! certificates from a CA made in the test, a real `aegis` proxying to them. A target named by
//! host gets SNI and is verified against `[upstream_tls] ca`, one named by IP is verified
//! against the certificate's IP addresses, connections are pooled; a target whose certificate
//! does not verify is a 502 that says why, in the access log too, and opens its circuit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_testkit::tls::{Leaf, TestCa, provider};
use aegis_testkit::{Gateway, temp_dir, wait_until};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An https server on 127.0.0.1 in a thread of its own: answers JSON naming the SNI it saw and
/// the connection number; counts TLS connections.
struct HttpsUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

impl HttpsUpstream {
    fn start(leaf: &Leaf) -> HttpsUpstream {
        HttpsUpstream::serving(leaf, None)
    }

    /// With `body`, every request is answered with it (a JWKS document).
    fn serving(leaf: &Leaf, fixed: Option<String>) -> HttpsUpstream {
        let chain = vec![CertificateDer::from(leaf.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let (conns, names) = (connections.clone(), sni.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, conns, names, fixed) =
                        (acceptor.clone(), conns.clone(), names.clone(), fixed.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let n = conns.fetch_add(1, SeqCst) + 1;
                        let name = tls.get_ref().1.server_name().map(str::to_owned);
                        names.lock().unwrap().push(name.clone());
                        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let body = fixed.clone().unwrap_or_else(|| serde_json::json!({
                                "path": req.uri().path(),
                                "sni": name,
                                "connection": n,
                                "proto": req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
                            })
                            .to_string());
                            async move {
                                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(body),
                                )))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        HttpsUpstream {
            addr,
            connections,
            sni,
        }
    }
}

fn config(targets: &str, ca: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[upstream_tls]
ca = "{ca}"

[breaker]
failure_threshold = 3
open_for = "60s"

[[routes]]
path = "/"
targets = [{targets}]
"#
    )
}

#[test]
fn https_targets_are_verified_with_sni_and_pooled() {
    let ca = TestCa::new("upstream CA");
    let dir = temp_dir("https-up");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let up = HttpsUpstream::start(&ca.leaf(&["localhost", "127.0.0.1"]));

    // By host name: SNI "localhost", verified against upstream_tls.ca.
    let target = format!("\"https://localhost:{}\"", up.addr.port());
    let gw = Gateway::start(&config(&target, &ca_path.display().to_string()), &[]);
    for i in 0..5 {
        let r = gw.get(&format!("/n/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["sni"], "localhost");
        assert_eq!(j["path"], format!("/n/{i}"));
        assert_eq!(
            j["proto"], "http",
            "the client's scheme, not the upstream's"
        );
    }
    // Pooled: one TLS connection per worker at most (the gateway runs two).
    let n = up.connections.load(SeqCst);
    assert!((1..=2).contains(&n), "{n} connections for 5 requests");
    drop(gw);

    // By IP address: no SNI (an IP is not a server name), verified against the IP SAN.
    let target = format!("\"https://127.0.0.1:{}\"", up.addr.port());
    let gw = Gateway::start(&config(&target, &ca_path.display().to_string()), &[]);
    let r = gw.get("/ip", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sni"], serde_json::Value::Null);
    assert!(up.sni.lock().unwrap().contains(&None));
}

#[test]
fn a_certificate_that_does_not_verify_is_a_502_that_says_why_and_opens_the_circuit() {
    let trusted = TestCa::new("trusted CA");
    let rogue = TestCa::new("rogue CA");
    let dir = temp_dir("https-bad");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, trusted.cert_pem()).unwrap();
    // Signed by a CA the gateway does not trust; a second one trusted but for another name.
    let untrusted = HttpsUpstream::start(&rogue.leaf(&["localhost"]));
    let wrong_name = HttpsUpstream::start(&trusted.leaf(&["elsewhere.test"]));
    let targets = format!("\"https://localhost:{}\"", untrusted.addr.port());
    let gw = Gateway::start(&config(&targets, &ca_path.display().to_string()), &[]);
    for _ in 0..3 {
        let r = gw.get("/", &[]);
        assert_eq!(r.status, 502, "{}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("TLS handshake failed") && msg.contains("UnknownIssuer"),
            "{msg}"
        );
    }
    // Counted like a refused connection: three failures opened the circuit.
    let stats = gw.stats();
    assert_eq!(stats[0]["state"], "OPEN", "{stats:?}");
    assert_eq!(gw.get("/", &[]).status, 503);
    wait_until("the access line", Duration::from_secs(5), || {
        gw.stderr().contains(
            "upstream_error: TLS handshake failed: invalid peer certificate: UnknownIssuer",
        )
    });
    assert_eq!(
        untrusted.connections.load(SeqCst),
        0,
        "no exchange over an unverified connection"
    );
    drop(gw);

    let targets = format!("\"https://localhost:{}\"", wrong_name.addr.port());
    let gw = Gateway::start(&config(&targets, &ca_path.display().to_string()), &[]);
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("certificate not valid for name"),
        "{}",
        r.text()
    );
}

#[test]
fn a_jwks_url_over_https_is_trusted_through_upstream_tls() {
    let ca = TestCa::new("idp CA");
    let dir = temp_dir("https-jwks");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let jwks = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"aWRwLXNlY3JldA"}]}"#;
    let idp = HttpsUpstream::serving(&ca.leaf(&["localhost"]), Some(jwks.to_owned()));
    let app = aegis_testkit::Upstream::start("app");
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[upstream_tls]
ca = "{ca}"

[auth]
jwks_url = "https://localhost:{port}/.well-known/jwks.json"

[[routes]]
path = "/"
targets = ["{app}"]
auth = true
"#,
        ca = ca_path.display(),
        port = idp.addr.port(),
        app = app.url()
    );
    let gw = Gateway::start(&cfg, &[]);
    assert_eq!(gw.health().status, 200, "{}", gw.health().text());
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let claims =
        serde_json::json!({"userId": "u1", "exp": aegis_testkit::unix_millis() / 1000 + 60});
    let token = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"idp-secret").unwrap(),
    )
    .unwrap();
    let r = gw.get("/", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.sni.lock().unwrap()[0].as_deref(), Some("localhost"));
}
