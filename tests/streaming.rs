//! Bodies stream through the gateway both ways without being buffered whole (1 GiB up and
//! down with the gateway's peak memory staying flat), and a client that goes away mid-request
//! still gets its breaker outcome reported (a half-open probe is released at once, not after
//! the probe timeout).
#![allow(clippy::disallowed_methods)] // real time: deadlines

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use aegis_testkit::{Gateway, Upstream, one_route_config, raw_exchange, read_response, wait_until};

const GIB: u64 = 1 << 30;

/// Peak resident memory of a process, in KiB (Linux `VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[test]
fn one_gib_streams_up_and_down_with_flat_memory() {
    let up = Upstream::start("big");
    let gw = Gateway::start(
        &one_route_config(&up.url(), "timeout = \"300s\""),
        &[("RUST_LOG", "warn")],
    );
    let before = peak_rss_kib(gw.pid());

    // Upload: 1 GiB with Content-Length; the upstream counts what arrives.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'u'; 1 << 20];
    for _ in 0..(GIB >> 20) {
        s.write_all(&chunk).unwrap();
    }
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["bodyBytes"], GIB, "{r:?}");

    // Download: 1 GiB from the upstream, Content-Length kept.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "GET /download?bytes={GIB} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The head only: the body stays on the socket and is counted, not kept.
    let r = read_response(&mut s, true).unwrap();
    let len = r
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!((r.status, len), (200, Some(GIB)));
    let got = std::io::copy(
        &mut BufReader::with_capacity(1 << 20, s),
        &mut std::io::sink(),
    )
    .unwrap();
    assert_eq!(got, GIB);

    let after = peak_rss_kib(gw.pid());
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB moving 2 GiB: bodies are buffered"
    );
}

#[test]
fn a_client_gone_mid_request_releases_the_half_open_probe() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"

[breaker]
failure_threshold = 1
open_for = "500ms"
probe_timeout = "60s"

[[routes]]
path = "/"
targets = [{:?}]
timeout = "30s"
"#,
            up.url()
        ),
        &[],
    );
    assert_eq!(gw.get("/fail", &[]).status, 500);
    let state = |gw: &Gateway| gw.stats()[0]["state"].as_str().unwrap().to_owned();
    assert_eq!(state(&gw), "OPEN");
    wait_until("half-open", Duration::from_secs(10), || {
        state(&gw) == "HALF_OPEN"
    });

    // The probe: an upstream that takes 20 s, and a client that leaves after it is sent.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    write!(
        s,
        "GET /slow?sleep_ms=20000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    wait_until("the probe to be in flight", Duration::from_secs(10), || {
        gw.stats()[0]["probeInFlight"] == true
    });
    // While it is in flight no other request is admitted.
    assert_eq!(gw.get("/", &[]).status, 503);
    drop(s);

    // The cancelled probe is reported at once: the slot is free long before the 60 s probe
    // timeout, and the next request probes and closes the circuit.
    wait_until(
        "the probe slot to be released",
        Duration::from_secs(10),
        || gw.stats()[0]["probeInFlight"] == false,
    );
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state(&gw), "CLOSED");
}

#[test]
fn a_chunked_upload_is_forwarded_chunked_and_whole() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&one_route_config(&up.url(), ""), &[]);
    let r = raw_exchange(
        gw.addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["bodyBytes"], 11, "{v}");
    assert_eq!(v["headers"]["transfer-encoding"][0], "chunked", "{v}");
    assert!(v["headers"].get("content-length").is_none(), "{v}");
}

#[test]
fn a_slow_uploader_gets_408_and_cannot_open_a_circuit() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[breaker]\nfailure_threshold = 1\n{}",
            one_route_config(&up.url(), "timeout = \"500ms\"")
                .trim_start_matches("[server]\nlisten = \"127.0.0.1:0\"\n")
        ),
        &[],
    );
    for _ in 0..3 {
        // Promises 100 bytes, sends 10, then stalls past the route's timeout.
        let r = raw_exchange(
            gw.addr,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 408, "{r:?}");
    }
    let line = &gw.stats()[0];
    assert_eq!(line["state"], "CLOSED", "{line}");
    assert_eq!(line["failures"], 0, "{line}");
    assert_eq!(gw.get("/after", &[]).status, 200);
}
