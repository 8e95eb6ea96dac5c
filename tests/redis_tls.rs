//! `rediss://`: the gateway reaches a redis-server TLS port (`--tls-port`) whose certificate a
//! CA made in the test signed, trusting that CA through `rate_limit.redis_tls_ca`; without it
//! (the system's roots) the server is not trusted and the store stays down.
#![allow(clippy::disallowed_methods)] // real time: Unix windows

use std::path::Path;
use std::time::Duration;

use aegis_testkit::{
    Gateway, RedisServer, TempDir, Upstream, free_port, temp_dir, wait_for_window_room, wait_until,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA, and a certificate for `localhost` and 127.0.0.1 it signed, as PEM files in a temp dir.
fn certificates() -> TempDir {
    let dir = temp_dir("redis-tls");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "aegis test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "redis");
    let cert = server.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", &ca.pem());
    write("server.pem", &cert.pem());
    write("server.key", &key.serialize_pem());
    dir
}

/// redis-server with a TLS port (and its plain port, for the readiness PING).
fn tls_redis(certs: &Path) -> (RedisServer, u16) {
    let port = free_port();
    let file = |name: &str| certs.join(name).display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        file("server.pem"),
        "--tls-key-file".into(),
        file("server.key"),
        "--tls-ca-cert-file".into(),
        file("ca.pem"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    (redis, port)
}

fn config(upstream: &Upstream, url: &str, ca: Option<&Path>) -> String {
    let ca = ca.map_or(String::new(), |p| {
        format!("redis_tls_ca = {:?}", p.display().to_string())
    });
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[rate_limit]
store = "redis"
redis_url = "{url}"
{ca}
key_prefix = "tls:"
on_store_error = "deny"

[[routes]]
path = "/limited"
targets = [{target:?}]
rate_limit = {{ max = 5, window = "60s" }}
"#,
        target = upstream.url(),
    )
}

fn healthy(gw: &Gateway) -> bool {
    gw.health().json()["store"]["healthy"] == true
}

#[test]
fn rediss_with_a_private_ca_enforces_the_limit() {
    let certs = certificates();
    let (redis, tls_port) = tls_redis(certs.path());
    let up = Upstream::start("svc");
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("rediss://{host}:{tls_port}");
        let gw = Gateway::start(&config(&up, &url, Some(&certs.path().join("ca.pem"))), &[]);
        wait_until(
            "the store to be healthy over TLS",
            Duration::from_secs(20),
            || healthy(&gw),
        );
        wait_for_window_room(Duration::from_secs(60), Duration::from_secs(5));
        let statuses: Vec<u16> = (0..7).map(|_| gw.get("/limited", &[]).status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{host}");
        // The counter is in that Redis (read on its plain port).
        let keys = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "KEYS", "tls:*"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&keys.stdout).contains("tls:{/limited|ip:127.0.0.1}:"));
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "FLUSHALL"])
            .output();
    }
}

#[test]
fn rediss_without_the_ca_does_not_trust_the_server() {
    let certs = certificates();
    let (_redis, tls_port) = tls_redis(certs.path());
    let up = Upstream::start("svc");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let gw = Gateway::start(&config(&up, &url, None), &[]);
    wait_until("the outage to be logged", Duration::from_secs(20), || {
        gw.stderr().contains("redis store unavailable")
    });
    assert!(!healthy(&gw));
    let r = gw.get("/limited", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    let log = gw.stderr();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "the log says why: {log}"
    );
}
