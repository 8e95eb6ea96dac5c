#![allow(clippy::disallowed_methods)] // real time: deadlines

//! TLS termination end to end: a CA made in the test (rcgen), a real `aegis` with
//! `[server.tls]`, clients over real sockets: HTTP/1.1 and HTTP/2 (ALPN) over TLS, SNI picking
//! the certificate, TLS 1.2 and 1.3, plaintext on the TLS port, the handshake timeout, the
//! https redirect, mTLS, expiry in stats and metrics, certificate reload under load without a
//! failed request (and a bad one refused), and `aegis check` on the files.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aegis_testkit::tls::{TestCa, connect, https_get, peer_leaf, provider};
use aegis_testkit::{
    Gateway, Upstream, aegis_bin, connect_raw, read_response, temp_dir, wait_for, wait_until,
};
use rustls::pki_types::pem::PemObject;

fn tls_config(up: &Upstream, dir: &Path, tls_extra: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[server.tls]
cert = "{default_crt}"
key = "{default_key}"
handshake_timeout = "1s"
certificates = [
  {{ cert = "{wild_crt}", key = "{wild_key}" }},
  {{ cert = "{exact_crt}", key = "{exact_key}", names = ["exact.test"] }},
]
{tls_extra}

[[routes]]
path = "/"
targets = ["{up}"]
"#,
        default_crt = p("default.crt"),
        default_key = p("default.key"),
        wild_crt = p("wild.crt"),
        wild_key = p("wild.key"),
        exact_crt = p("exact.crt"),
        exact_key = p("exact.key"),
        up = up.url(),
    )
}

struct Certs {
    ca: TestCa,
    default: Vec<u8>,
    wild: Vec<u8>,
    exact: Vec<u8>,
}

fn write_certs(dir: &Path) -> Certs {
    let ca = TestCa::new("aegis test CA");
    let d = ca.leaf(&["localhost", "127.0.0.1"]);
    let w = ca.leaf(&["*.api.test"]);
    // Its own names do not matter: `names` in the config says where it is served.
    let e = ca.leaf(&["exact.test", "other-name.test"]);
    d.write(dir, "default");
    w.write(dir, "wild");
    e.write(dir, "exact");
    Certs {
        ca,
        default: d.der,
        wild: w.der,
        exact: e.der,
    }
}

#[test]
fn http1_and_h2_over_tls_sni_redirect_plaintext_and_handshake_timeout() {
    let up = Upstream::start("svc");
    let dir = temp_dir("tls");
    let c = write_certs(dir.path());
    let gw = Gateway::start(
        &tls_config(&up, dir.path(), "redirect_listen = \"127.0.0.1:0\""),
        &[],
    );
    assert!(
        gw.stdout_lines()
            .iter()
            .any(|l| l.starts_with("listening on https://"))
    );
    let h1 = c.ca.client_config(&[b"http/1.1"]);

    // HTTP/1.1 over TLS through the pipeline; the upstream is told the client used https.
    let (r, leaf) = https_get(gw.addr, "localhost", h1.clone(), "/hello", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(leaf, c.default);

    // SNI: a wildcard of one label, an exact name from `names`, the default for the rest.
    let sni = |name: &str| https_get(gw.addr, name, h1.clone(), "/", &[]).unwrap().1;
    assert_eq!(sni("a.api.test"), c.wild);
    assert_eq!(sni("exact.test"), c.exact);
    assert_eq!(sni("localhost"), c.default);
    // Not under the wildcard (two labels): the default, which the client then refuses.
    assert!(https_get(gw.addr, "a.b.api.test", h1.clone(), "/", &[]).is_err());

    // TLS 1.2 as well as 1.3.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.ca.cert_der()).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let s = connect(gw.addr, "localhost", Arc::new(tls12)).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let s = connect(gw.addr, "localhost", h1.clone()).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // HTTP/2 over TLS (ALPN h2), several streams on one connection.
    let h2 = c.ca.client_config(&[b"h2", b"http/1.1"]);
    let statuses = h2_gets(gw.addr, h2, &["/a", "/b", "/c"]);
    assert_eq!(statuses, [200, 200, 200]);

    // Plain HTTP to the TLS port: a 400 that says so, then the close.
    let mut s = connect_raw(gw.addr, Duration::from_secs(5));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("use https://"), "{}", r.text());

    // A client that never sends its ClientHello is closed after handshake_timeout (1 s).
    let mut s = connect_raw(gw.addr, Duration::from_secs(10));
    let t = Instant::now();
    let mut b = [0u8; 16];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The redirect listener.
    let line = wait_for("the redirect line", Duration::from_secs(5), || {
        gw.stdout_lines().into_iter().find_map(|l| {
            l.strip_prefix("redirect listening on http://")
                .map(str::to_owned)
        })
    });
    let r = aegis_testkit::get(line.parse().unwrap(), "/x?y=1", &[("host", "localhost:80")]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{}/x?y=1", gw.addr.port()).as_str())
    );

    // Expiry of each certificate in /gateway/stats and /gateway/metrics.
    let (r, _) = https_get(gw.addr, "localhost", h1.clone(), "/gateway/stats", &[]).unwrap();
    let certs: Vec<serde_json::Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("certificate").is_some())
        .cloned()
        .collect();
    assert_eq!(certs.len(), 3, "{}", r.text());
    assert_eq!(certs[0]["default"], true);
    assert_eq!(certs[1]["names"][0], "*.api.test");
    let left = certs[0]["expiresInSecs"].as_i64().unwrap();
    assert!((360 * 86_400..366 * 86_400).contains(&left), "{left}");
    let (m, _) = https_get(gw.addr, "localhost", h1, "/gateway/metrics", &[]).unwrap();
    assert_eq!(
        m.text()
            .matches("aegis_tls_certificate_not_after_seconds{")
            .count(),
        3
    );
}

/// GETs over one HTTP/2 connection; the statuses.
fn h2_gets(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>, paths: &[&str]) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for p in paths {
            let req = http::Request::get(format!("https://localhost{p}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                .await
                .unwrap()
                .unwrap();
            out.push(resp.status().as_u16());
        }
        out
    })
}

#[test]
fn sighup_reloads_certificates_without_a_failed_request_and_refuses_a_bad_one() {
    let up = Upstream::start("svc");
    let dir = temp_dir("tls-reload");
    let c = write_certs(dir.path());
    // The access log off: the reload's lines are what this test reads.
    let gw = Gateway::start(
        &tls_config(&up, dir.path(), ""),
        &[("RUST_LOG", "info,aegis::access=warn")],
    );
    let client = c.ca.client_config(&[b"http/1.1"]);

    // A client keeps making new connections while the certificate changes under it.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, client, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            client.clone(),
            gw.addr,
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(SeqCst) && Instant::now() < deadline {
                match https_get(addr, "localhost", client.clone(), "/", &[]) {
                    Ok((r, _)) if r.status == 200 => ok.fetch_add(1, SeqCst),
                    _ => failed.fetch_add(1, SeqCst),
                };
            }
        })
    };
    wait_until(
        "requests before the reload",
        Duration::from_secs(10),
        || ok.load(SeqCst) >= 5,
    );
    let renewed = c.ca.leaf(&["localhost"]);
    renewed.write(dir.path(), "default");
    gw.signal("HUP");
    // A fresh client each time: a resumed TLS session would show the old certificate.
    let fresh = || c.ca.client_config(&[b"http/1.1"]);
    wait_until("the renewed certificate", Duration::from_secs(10), || {
        https_get(gw.addr, "localhost", fresh(), "/", &[])
            .unwrap()
            .1
            == renewed.der
    });
    let seen = ok.load(SeqCst);
    wait_until("requests after the reload", Duration::from_secs(10), || {
        ok.load(SeqCst) >= seen + 5
    });

    // A key that does not match the certificate: refused, naming the file; the renewed
    // certificate keeps serving.
    let other = c.ca.leaf(&["localhost"]);
    std::fs::write(dir.path().join("default.key"), &other.key_pem).unwrap();
    gw.signal("HUP");
    let key_path = dir.path().join("default.key").display().to_string();
    wait_until("the refusal", Duration::from_secs(10), || {
        gw.stderr().contains("config reload refused")
    });
    let log = gw.stderr();
    assert!(
        log.contains(&format!("{key_path}: the private key does not match")),
        "{log}"
    );
    let seen = ok.load(SeqCst);
    wait_until(
        "requests after the refusal",
        Duration::from_secs(10),
        || ok.load(SeqCst) >= seen + 5,
    );
    assert_eq!(
        https_get(gw.addr, "localhost", fresh(), "/", &[])
            .unwrap()
            .1,
        renewed.der
    );
    drop(client);
    stop.store(true, SeqCst);
    load.join().unwrap();
    assert_eq!(failed.load(SeqCst), 0, "{} requests ok", ok.load(SeqCst));
}

#[test]
fn mtls_verifies_client_certificates_and_forwards_the_subject() {
    let up = Upstream::start("svc");
    let dir = temp_dir("mtls");
    let c = write_certs(dir.path());
    let clients = TestCa::new("client CA");
    std::fs::write(dir.path().join("clients.pem"), clients.cert_pem()).unwrap();
    let extra = format!(
        "client_ca = \"{}\"",
        dir.path().join("clients.pem").display()
    );
    let gw = Gateway::start(&tls_config(&up, dir.path(), &extra), &[]);

    // No client certificate: the handshake (or the first read) fails.
    let anon = c.ca.client_config(&[b"http/1.1"]);
    assert!(https_get(gw.addr, "localhost", anon, "/", &[]).is_err());

    let leaf = clients.leaf_with(&["svc-a.internal"], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.ca.cert_der()).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from(leaf.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let (r, _) = https_get(
        gw.addr,
        "localhost",
        Arc::new(cfg),
        "/",
        &[("x-client-cert-subject", "CN=forged")],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-client-cert-subject"],
        serde_json::json!(["CN=svc-a.internal"])
    );
    let _ = peer_leaf;
}

#[test]
fn a_handshake_counts_in_the_connection_caps() {
    let up = Upstream::start("svc");
    let dir = temp_dir("tls-caps");
    let c = write_certs(dir.path());
    // A handshake timeout far longer than the test: the silent connection must hold its slot
    // for as long as a loaded machine takes to try the second one (with the shared config's
    // 1 s, the gateway could cut it first and the second connection got the slot).
    let cfg = tls_config(&up, dir.path(), "")
        .replace(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 1\n",
        )
        .replace("handshake_timeout = \"1s\"", "handshake_timeout = \"60s\"");
    assert!(cfg.contains("handshake_timeout = \"60s\""), "{cfg}");
    // One worker: its listener accepts in the order the client connected. With two, the
    // second connection could be accepted first (by the other worker), take the slot, and
    // the silent one was the one closed at the cap.
    let gw = Gateway::start_with(&cfg, &[], &["--workers", "1"]).unwrap_or_else(|e| panic!("{e}"));
    // One connection that has not finished its handshake holds the client's only slot.
    let _first = connect_raw(gw.addr, Duration::from_secs(5));
    wait_until(
        "the first connection counted",
        Duration::from_secs(5),
        || {
            let client = c.ca.client_config(&[b"http/1.1"]);
            https_get(gw.addr, "localhost", client, "/", &[]).is_err()
        },
    );
    drop(_first);
    wait_until("the slot back", Duration::from_secs(5), || {
        let client = c.ca.client_config(&[b"http/1.1"]);
        https_get(gw.addr, "localhost", client, "/", &[]).is_ok_and(|(r, _)| r.status == 200)
    });
}

#[test]
fn aegis_check_validates_the_certificate_files() {
    let up = Upstream::start("svc");
    let dir = temp_dir("tls-check");
    let c = write_certs(dir.path());
    let cfg = dir.path().join("aegis.toml");
    std::fs::write(&cfg, tls_config(&up, dir.path(), "")).unwrap();
    let check = || {
        let out = Command::new(aegis_bin())
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    assert_eq!(check(), (Some(0), "ok: 1 route\n".to_owned()));

    let wild = dir.path().join("wild.crt").display().to_string();
    c.ca.expired_leaf(&["*.api.test"]).write(dir.path(), "wild");
    let (code, text) = check();
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("server.tls: {wild}: the certificate expired")),
        "{text}"
    );

    c.ca.leaf(&["*.api.test"]).write(dir.path(), "wild");
    let other = c.ca.leaf(&["x"]);
    std::fs::write(dir.path().join("exact.key"), other.key_pem).unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1));
    assert!(
        text.contains("exact.key: the private key does not match the certificate"),
        "{text}"
    );

    std::fs::remove_file(dir.path().join("exact.key")).unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1));
    assert!(
        text.contains("cannot read") && text.contains("exact.key"),
        "{text}"
    );
    let _ = c.exact;
}
