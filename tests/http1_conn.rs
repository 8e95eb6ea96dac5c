//! The gateway's HTTP/1.1 connections, end to end over real sockets: the head timeout against a
//! stalled head, a slow body it does not bound, SIGTERM with
//! idle, never-used and busy connections (HTTP/1.1 and h2c), `Expect: 100-continue` refused
//! before the body, an early 401/413 while the client is still uploading, the HTTP/2 (h2c)
//! handoff with a split preface, a large response read slowly under pipelining, and 200
//! concurrent keep-alive connections against the connection gauge.
//!
//! tests/http1.rs covers HTTP/1.1 message by message; this file covers what happens to the
//! connection. The timeouts themselves (slowloris heads, idle keep-alive connections, a client
//! that stops reading) are checked to the millisecond on paused time in
//! aegis-tokio/tests/connection.rs. Every socket read is bounded by [`TIMEOUT`].
#![allow(clippy::disallowed_methods)] // real time: deadlines and the timeouts under test

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use aegis_testkit::{
    Gateway, Response, Upstream, expect_closed, get, lossy, read_head, read_response, wait_for,
    wait_until,
};

/// Read and write timeout of every test socket: a hung gateway fails the test.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The secret of the `[auth]` section.
const SECRET: &str = "conn-secret";

/// A gateway on `up` with `server` lines added to `[server]`: `/private` needs a token,
/// `/small` takes bodies up to 1 MiB, everything else is forwarded as is.
fn gateway(up: &Upstream, server: &str) -> Gateway {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[auth]
secret = "{SECRET}"

[[routes]]
path = "/private"
targets = [{u:?}]
auth = true

[[routes]]
path = "/small"
targets = [{u:?}]
max_body_size = "1MiB"

[[routes]]
path = "/"
targets = [{u:?}]
"#,
        u = up.url()
    );
    Gateway::start(&config, &[("RUST_LOG", "warn")])
}

/// One line of `/gateway/metrics`: `name value`.
fn gauge(gw: &Gateway, name: &str) -> i64 {
    let text = get(gw.addr, "/gateway/metrics", &[]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// The client: one connection, written raw, read response by response.

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = aegis_testkit::connect_raw(addr, TIMEOUT);
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write to the gateway");
    }

    /// `GET path` on this connection (keep-alive).
    fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        self.response()
    }

    /// The next response, which must start right where the previous one ended.
    fn response(&mut self) -> Response {
        let head = read_head(&mut self.r).expect("a response head from the gateway");
        assert!(
            head.starts_with(b"HTTP/1.1 "),
            "the bytes do not start with a status line: {:?}",
            lossy(&head)
        );
        let mut whole = (&head[..]).chain(&mut self.r);
        read_response(&mut whole, false).expect("a response body")
    }

    /// Reads until the gateway closes the connection; panics on bytes, a timeout or a reset
    /// (unless `reset_ok`).
    fn expect_closed(&mut self, reset_ok: bool) {
        expect_closed(&mut self.r, reset_ok);
    }
}

/// The service's JSON answer for `path` (`aegis upstream` echoes the path and its name).
fn assert_echo(r: &Response, path: &str) {
    assert_eq!(r.status, 200, "{path}: {r:?}");
    let v = r.json();
    assert_eq!(v["path"], path, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn slowloris_head_gets_408_and_the_close() {
    let up = Upstream::start("svc");
    let gw = gateway(&up, "header_read_timeout = \"500ms\"");
    let mut c = Client::connect(gw.addr);
    let sent = Instant::now();
    // A head that never ends.
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let r = c.response();
    let waited = sent.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["error"], "request_timeout", "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    // Not before the timeout (a lower bound only: a loaded machine makes it later).
    assert!(waited >= Duration::from_millis(450), "408 after {waited:?}");
    c.expect_closed(false);
}

/// The head timeout bounds heads, not bodies: a body sent in four parts over ~1.2 s with
/// `header_read_timeout = 500ms` reaches the upstream, and the connection stays open.
#[test]
fn a_slow_body_is_not_bounded_by_the_head_timeout() {
    let up = Upstream::start("svc");
    let gw = gateway(&up, "header_read_timeout = \"500ms\"");
    let mut c = Client::connect(gw.addr);
    c.send(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n");
    for part in [&b"ab"[..], b"cd", b"ef", b"gh"] {
        // The stimulus, not a wait for a condition: each gap under the timeout, the total over.
        thread::sleep(Duration::from_millis(300));
        c.send(part);
    }
    let r = c.response();
    assert_echo(&r, "/body");
    assert_eq!(r.json()["bodyBytes"], 8, "{}", r.text());
    // Still open: one more request is answered.
    assert_echo(&c.get("/last"), "/last");
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_closes_idle_connections() {
    let up = Upstream::start("svc");
    let mut gw = gateway(
        &up,
        "header_read_timeout = \"30s\"\nidle_timeout = \"60s\"\ndrain_timeout = \"20s\"",
    );
    // Three idle keep-alive connections, each after one exchange.
    let mut idle: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = Client::connect(gw.addr);
            let path = format!("/idle/{i}");
            assert_echo(&c.get(&path), &path);
            c
        })
        .collect();
    // And one that never sent a byte.
    idle.push(Client::connect(gw.addr));
    let addr = gw.addr;
    let busy = thread::spawn(move || {
        let mut c = Client::connect(addr);
        // A second request pipelined behind the slow one: not answered once draining began.
        c.send(
            b"GET /busy?sleep_ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /pipelined HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let r = c.response();
        let after = {
            let mut b = [0u8; 64];
            match c.r.read(&mut b) {
                Ok(n) => Ok(n),
                Err(e) => Err(e.kind()),
            }
        };
        (r, after)
    });
    // The metrics request itself is one in flight.
    wait_until(
        "the slow request to be in flight",
        Duration::from_secs(10),
        || gauge(&gw, "aegis_requests_in_flight") == 2,
    );
    // Every connection accepted (not left in the listen backlog): 4 idle, the busy one and
    // the metrics request's own.
    wait_until(
        "the gateway to hold all six connections",
        Duration::from_secs(10),
        || gauge(&gw, "aegis_connections_open") == 6,
    );
    let term = Instant::now();
    gw.signal("TERM");
    for (i, c) in idle.iter_mut().enumerate() {
        let mut b = [0u8; 64];
        match c.r.read(&mut b) {
            Ok(0) => {}
            other => panic!("idle connection {i}: expected the close, got {other:?}"),
        }
    }
    let idle_closed = term.elapsed();
    // Closed promptly: while the request in flight (2 s upstream) is still running.
    assert!(
        !busy.is_finished(),
        "the idle connections were closed only after the request in flight ({idle_closed:?})"
    );
    let (r, after) = busy.join().unwrap();
    assert_echo(&r, "/busy?sleep_ms=2000");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(
        after,
        Ok(0),
        "the busy connection after its response (the pipelined request is not answered)"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway to exit well before drain_timeout");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn expect_continue_refused_before_the_body_gets_no_100_and_the_close() {
    let up = Upstream::start("svc");
    let gw = gateway(&up, "");
    let cases = [
        ("POST /private/upload", 11, 401, "unauthorized"),
        // Declared over the route's 1 MiB.
        ("PUT /small/upload", 2 << 20, 413, "payload_too_large"),
    ];
    for (line, len, status, error) in cases {
        let mut c = Client::connect(gw.addr);
        c.send(
            format!(
                "{line} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        );
        // The very first bytes are the final response: no interim 100 before it.
        let head = read_head(&mut c.r).expect("a response head");
        assert!(
            head.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
            "{line}: expected a {status} first: {:?}",
            lossy(&head)
        );
        let mut whole = (&head[..]).chain(&mut c.r);
        let r = read_response(&mut whole, false).expect("the error body");
        assert_eq!(r.json()["error"], error, "{line}: {}", r.text());
        // The body was never sent nor read, so where a next request would start is unknown:
        // the gateway says it closes, and closes (a FIN, not a reset: nothing unread on its
        // side), without waiting for the body it declined.
        assert_eq!(r.header("connection"), Some("close"), "{line}: {r:?}");
        c.expect_closed(false);
    }
}

/// Sends `head` and a 2 MiB body from a thread while reading the response on this one.
fn early_answer_while_uploading(gw: &Gateway, head: &str) -> (Response, io::Result<()>) {
    const LEN: usize = 2 << 20;
    let mut c = Client::connect(gw.addr);
    let mut w = c.w.try_clone().unwrap();
    let head = head.replace("{LEN}", &LEN.to_string());
    let writer = thread::spawn(move || {
        w.write_all(head.as_bytes())?;
        let chunk = vec![b'u'; 16 * 1024];
        for _ in 0..LEN / chunk.len() {
            w.write_all(&chunk)?;
        }
        Ok(())
    });
    let r = c.response();
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    c.expect_closed(false);
    (r, writer.join().unwrap())
}

#[test]
fn early_401_and_413_reach_a_client_still_sending_its_body() {
    let up = Upstream::start("svc");
    let gw = gateway(&up, "");

    let (r, written) = early_answer_while_uploading(
        &gw,
        "POST /private/up HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["error"], "unauthorized", "{}", r.text());
    // The gateway drains what the client sends while it closes, so the upload is not reset.
    written.expect("the whole body written (the gateway lingers)");

    let (r, written) = early_answer_while_uploading(
        &gw,
        "PUT /small/up HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"], "payload_too_large", "{}", r.text());
    written.expect("the whole body written (the gateway lingers)");

    // The gateway still serves.
    assert_echo(&gw.get("/after", &[]), "/after");
}

/// Writes to a socket as if the first `skip` bytes had already been sent (they were, by
/// hand, in pieces).
struct SkipWrites {
    io: tokio::net::TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for SkipWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SkipWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.skip > 0 {
            let n = this.skip.min(buf.len());
            this.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn h2c_preface_split_over_several_writes_is_handed_to_http2() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("svc");
    let gw = gateway(&up, "");

    // 1. Raw: the preface 5 bytes at a time; the gateway answers with a SETTINGS frame.
    let mut c = Client::connect(gw.addr);
    for piece in H2_PREFACE.chunks(5) {
        c.send(piece);
        thread::sleep(Duration::from_millis(20));
    }
    // An empty SETTINGS frame from the client (length 0, type 4, flags 0, stream 0).
    c.send(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut frame = [0u8; 9];
    c.r.read_exact(&mut frame)
        .expect("the gateway's first HTTP/2 frame header");
    assert_eq!(frame[3], 0x4, "the first frame is SETTINGS: {frame:?}");
    assert_eq!(frame[4] & 0x1, 0, "not an ACK: {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0], "on stream 0: {frame:?}");
    drop(c);

    // The preface only counts as the first bytes of a connection: after an HTTP/1.1 exchange
    // it is a malformed request (400, then the close).
    let mut c = Client::connect(gw.addr);
    assert_echo(&c.get("/h1/first"), "/h1/first");
    c.send(H2_PREFACE);
    let r = c.response();
    assert_eq!(r.status, 400, "{r:?}");
    c.expect_closed(true);

    // 2. The same split preface, then a real HTTP/2 client over that socket.
    let std_sock = TcpStream::connect_timeout(&gw.addr, TIMEOUT).unwrap();
    std_sock.set_nodelay(true).unwrap();
    let mut w = std_sock.try_clone().unwrap();
    for piece in H2_PREFACE.chunks(5) {
        w.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    std_sock.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let io = SkipWrites {
            io: tokio::net::TcpStream::from_std(std_sock).unwrap(),
            skip: H2_PREFACE.len(),
        };
        let (mut send, conn) = tokio::time::timeout(
            TIMEOUT,
            hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
                TokioExecutor::new(),
                TokioIo::new(io),
            ),
        )
        .await
        .expect("the HTTP/2 handshake in time")
        .expect("the HTTP/2 handshake");
        tokio::spawn(conn);
        for path in ["/h2/split?q=1", "/h2/again"] {
            let req = http::Request::get(format!("http://{}{path}", gw.addr))
                .body(Empty::new())
                .unwrap();
            let resp = tokio::time::timeout(TIMEOUT, send.send_request(req))
                .await
                .expect("an h2 response in time")
                .expect("an h2 response");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["path"], path);
            assert_eq!(v["service"], "svc");
        }
    });
}

#[test]
fn sigterm_lets_an_h2c_stream_finish_then_ends_the_connection() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("svc");
    let mut gw = gateway(&up, "idle_timeout = \"60s\"\ndrain_timeout = \"20s\"");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = gw.addr;
    let (ended, status, r_path) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = tokio::time::timeout(
            TIMEOUT,
            hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
                TokioExecutor::new(),
                TokioIo::new(tcp),
            ),
        )
        .await
        .expect("the HTTP/2 handshake in time")
        .expect("the HTTP/2 handshake");
        let conn = tokio::spawn(conn);
        let req = |path: &str| {
            http::Request::get(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap()
        };
        let resp = send.send_request(req("/h2/first")).await.unwrap();
        assert_eq!(resp.status(), 200);
        // A stream in flight when the signal comes.
        let slow = tokio::spawn(send.send_request(req("/h2/slow?sleep_ms=1500")));
        let gw = &gw;
        tokio::task::block_in_place(|| {
            wait_until(
                "the h2 request to be in flight",
                Duration::from_secs(10),
                || gauge(gw, "aegis_requests_in_flight") == 2,
            );
            gw.signal("TERM");
        });
        let resp = tokio::time::timeout(TIMEOUT, slow)
            .await
            .expect("the h2 stream in flight to finish")
            .unwrap()
            .expect("the h2 stream in flight to get its response");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // Then the gateway ends the connection (GOAWAY, close), well before drain_timeout.
        let ended = tokio::time::timeout(TIMEOUT, conn).await;
        (ended, status, v["path"].as_str().unwrap_or("").to_owned())
    });
    assert_eq!(status, 200);
    assert_eq!(r_path, "/h2/slow?sleep_ms=1500");
    let ended = ended.expect("the h2 connection to end after the drain");
    ended
        .unwrap()
        .expect("the h2 connection to end cleanly (GOAWAY, not an error)");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway to exit well before drain_timeout");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn large_response_read_slowly_is_followed_by_the_next_pipelined_one() {
    const BIG: usize = 5_000_000;
    let up = Upstream::start("svc");
    let gw = gateway(&up, "");
    let mut c = Client::connect(gw.addr);
    let pipelined = format!(
        "GET /big?bytes={BIG} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /after?n=2 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /after?n=3 HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    for piece in pipelined.as_bytes().chunks(7) {
        c.send(piece);
    }
    // Let the socket buffers fill (the gateway must wait to write), then read slowly.
    thread::sleep(Duration::from_millis(300));
    let head = read_head(&mut c.r).expect("the big response's head");
    let head = lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("content-length: {BIG}\r\n")),
        "{head}"
    );
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0;
    while got < BIG {
        let want = buf.len().min(BIG - got);
        let n = c.r.read(&mut buf[..want]).expect("a part of the big body");
        assert!(
            n > 0,
            "the connection ended after {got} of {BIG} body bytes"
        );
        if let Some(p) = buf[..n].iter().position(|&b| b != b'x') {
            panic!("body byte {} is {:?}, not 'x'", got + p, buf[p] as char);
        }
        got += n;
        reads += 1;
        // Slow: a pause every fourth read (each read takes at least one byte, so bounded).
        if reads % 4 == 0 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert_echo(&c.response(), "/after?n=2");
    assert_echo(&c.response(), "/after?n=3");
    // Nothing else follows; the connection stays usable.
    assert_echo(&c.get("/fin"), "/fin");
}

#[test]
fn many_concurrent_keep_alive_connections_are_served_and_counted() {
    const THREADS: usize = 20;
    const CONNS: usize = 10;
    const REQUESTS: usize = 5;
    let up = Upstream::start("svc");
    let gw = gateway(&up, "");
    // The metrics request's own connection is counted in the baseline.
    let baseline = gauge(&gw, "aegis_connections_open");
    let addr = gw.addr;
    // Each worker says when all its connections are open, then waits for the go (bounded: a
    // worker that fails, or a main thread that fails, ends the wait).
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut go = Vec::new();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ready = ready_tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            thread::spawn(move || {
                let mut conns: Vec<Client> = (0..CONNS).map(|_| Client::connect(addr)).collect();
                let mut ok = 0;
                for i in 0..REQUESTS {
                    for (k, c) in conns.iter_mut().enumerate() {
                        let path = format!("/c/{t}/{k}/{i}");
                        let r = c.get(&path);
                        assert_echo(&r, &path);
                        assert_eq!(r.json()["service"], "svc");
                        ok += 1;
                    }
                    if i == 0 {
                        ready.send(()).unwrap();
                        go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
                    }
                }
                drop(conns);
                ok
            })
        })
        .collect();
    drop(ready_tx);
    for n in 0..THREADS {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{n} of {THREADS} workers ready, then {e}"));
    }
    // Every connection of every worker is open now.
    let open = gauge(&gw, "aegis_connections_open");
    for g in &go {
        g.send(()).unwrap();
    }
    assert!(
        open >= baseline + (THREADS * CONNS) as i64,
        "{open} connections open, baseline {baseline}"
    );
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, THREADS * CONNS * REQUESTS);
    let last = wait_for(
        "the connection gauge back at its baseline",
        Duration::from_secs(10),
        || {
            let n = gauge(&gw, "aegis_connections_open");
            (n == baseline).then_some(n)
        },
    );
    assert_eq!(last, baseline);
    // The metrics request itself is the only one in flight.
    assert_eq!(gauge(&gw, "aegis_requests_in_flight"), 1);
}

/// An upstream that stops sending in the middle of a body: after the route's timeout with no
/// body bytes the gateway gives up and closes the client connection (the client sees a cut
/// body), instead of holding it for as long as the upstream does.
#[test]
fn an_upstream_stalled_mid_body_is_cut_after_the_route_timeout() {
    let up = aegis_testkit::RawUpstream::start(|_head, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
        let _ = s.flush();
        // The stall: longer than the client's read timeout, so only the gateway can end it.
        thread::sleep(TIMEOUT * 2);
    });
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/\"\ntargets = [{:?}]\ntimeout = \"500ms\"\n",
        up.url()
    );
    let gw = Gateway::start(&config, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = read_head(&mut c.r).expect("the response head");
    assert!(
        lossy(&head).starts_with("HTTP/1.1 200 "),
        "{}",
        lossy(&head)
    );
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: each read takes at least one byte or ends the loop.
    for _ in 0..1000 {
        match c.r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the gateway kept the stalled response open: {e}"),
        }
    }
    assert_eq!(lossy(&body), "0123456789");
}
