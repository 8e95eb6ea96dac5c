//! The client connection loop's timeouts, on paused time: a connection served by
//! `downstream::serve` over an in-memory pipe (`tokio::io::duplex`) while the test's clock
//! only moves when every task waits, so each timeout is checked to the millisecond and no
//! test sleeps for real. The answers come from the gateway itself (`/gateway/health`, 404):
//! these tests are about the connection, not about upstreams (tests/http1_conn.rs at the
//! workspace root covers those over real sockets).

use std::sync::Arc;
use std::time::Duration;

use aegis_tokio::downstream::{self, Limits};
use aegis_tokio::gateway::Listener;
use aegis_tokio::observe::log::LogFormat;
use aegis_tokio::record::Peer;
use aegis_tokio::state::{ConfigSource, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// A gateway with one route (to a target that is never reached) and `server` lines added to
/// `[server]`.
fn shared(server: &str) -> Arc<Shared> {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[[routes]]\npath = \"/api\"\ntargets = [\"http://127.0.0.1:9\"]\n"
    );
    Arc::new(Shared::new(ConfigSource::Inline(config), LogFormat::Text).expect("a valid config"))
}

/// A connection to `shared`'s proxy listener through a pipe of `capacity` bytes each way.
struct Conn {
    io: DuplexStream,
    served: JoinHandle<()>,
    stop: CancellationToken,
}

impl Conn {
    fn open(shared: &Arc<Shared>, capacity: usize) -> Conn {
        Conn::on(shared, Listener::Proxy, capacity)
    }

    /// A connection to `listener`.
    fn on(shared: &Arc<Shared>, listener: Listener, capacity: usize) -> Conn {
        let (io, theirs) = tokio::io::duplex(capacity);
        let limits = Limits::new(&shared.runtime.load().policy.config().server);
        let stop = CancellationToken::new();
        let peer = Peer::new("127.0.0.1:40000".parse().unwrap());
        let served = tokio::task::spawn_local(downstream::serve(
            theirs,
            peer,
            shared.clone(),
            listener,
            limits,
            stop.clone(),
        ));
        Conn { io, served, stop }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io
            .write_all(bytes)
            .await
            .expect("the gateway takes the bytes");
    }

    /// The next response: its status, headers (lower-case names) and `Content-Length` body.
    async fn response(&mut self) -> Response {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.io.read(&mut b).await.expect("read a response head");
            assert_eq!(n, 1, "the connection closed after {:?}", lossy(&head));
            head.push(b[0]);
        }
        let text = lossy(&head);
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await.expect("the body");
        Response {
            status,
            headers,
            body: lossy(&body),
        }
    }

    async fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        self.response().await
    }

    /// Waits for the gateway to close the connection (no more bytes, then the end); returns
    /// when it did, on the test's clock.
    async fn closed(&mut self) -> Instant {
        let mut rest = Vec::new();
        self.io.read_to_end(&mut rest).await.expect("a clean close");
        assert!(
            rest.is_empty(),
            "bytes before the close: {:?}",
            lossy(&rest)
        );
        let at = Instant::now();
        (&mut self.served).await.expect("the connection task ends");
        at
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `f` on a `LocalSet` (connections are local tasks, as on a worker thread).
async fn local<F: std::future::Future<Output = ()>>(f: F) {
    LocalSet::new().run_until(f).await;
}

#[tokio::test(start_paused = true)]
async fn a_head_that_never_ends_gets_408_at_header_read_timeout_then_the_close() {
    local(async {
        let gw = shared("header_read_timeout = \"500ms\"");
        let mut c = Conn::open(&gw, 4096);
        let start = Instant::now();
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        let r = c.response().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(r.status, 408, "{r:?}");
        assert!(r.body.contains("\"request_timeout\""), "{}", r.body);
        assert_eq!(r.header("connection"), Some("close"));
        c.closed().await;
    })
    .await;
}

/// The classic slowloris: a byte every 150 ms, each well within the timeout, never a whole
/// head. The timeout bounds the whole head from its first byte, not the gap between reads.
#[tokio::test(start_paused = true)]
async fn a_trickled_head_is_bounded_as_a_whole() {
    local(async {
        let gw = shared("header_read_timeout = \"500ms\"");
        let c = Conn::open(&gw, 4096);
        // Nothing for 300 ms first (within the timeout of the connection's start).
        sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let line = b"GET /trickle HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa";
        let (mut rd, mut wr) = tokio::io::split(c.io);
        let trickle = tokio::task::spawn_local(async move {
            for b in line {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                sleep(Duration::from_millis(150)).await;
            }
        });
        let mut got = [0u8; 13];
        rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 408 ");
        // 500 ms from the head's first byte (the silent 300 ms before it do not count).
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        trickle.abort();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn on_a_kept_connection_a_head_has_header_read_timeout_from_its_first_byte() {
    local(async {
        let gw = shared("header_read_timeout = \"500ms\"\nidle_timeout = \"60s\"");
        let mut c = Conn::open(&gw, 4096);
        assert_eq!(c.get("/gateway/health").await.status, 200);
        // Idle for 10 s (within idle_timeout), then half a head.
        sleep(Duration::from_secs(10)).await;
        c.send(b"GET /second HTTP/1.1\r\n").await;
        let start = Instant::now();
        let r = c.response().await;
        assert_eq!(r.status, 408, "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        c.closed().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_outlives_the_head_timeout_until_idle_timeout() {
    local(async {
        let gw = shared("header_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"");
        let mut c = Conn::open(&gw, 4096);
        assert_eq!(c.get("/gateway/health").await.status, 200);
        // Idle past header_read_timeout (which bounds a head only once it has begun).
        sleep(Duration::from_millis(800)).await;
        assert_eq!(c.get("/gateway/health").await.status, 200);
        let idle_from = Instant::now();
        // Nothing more is sent: closed without a response (no request began) at idle_timeout.
        let closed = c.closed().await;
        assert_eq!(closed - idle_from, Duration::from_millis(1500));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_that_sends_nothing_is_closed_silently_at_header_read_timeout() {
    local(async {
        let gw = shared("header_read_timeout = \"2s\"\nidle_timeout = \"60s\"");
        let mut c = Conn::open(&gw, 4096);
        let start = Instant::now();
        let closed = c.closed().await;
        assert_eq!(closed - start, Duration::from_secs(2));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn requests_each_within_the_head_timeout_are_not_cut_off() {
    local(async {
        let gw = shared("header_read_timeout = \"500ms\"");
        let mut c = Conn::open(&gw, 4096);
        let start = Instant::now();
        for i in 0..4 {
            if i > 0 {
                // Each gap is under the timeout; the total is well over it.
                sleep(Duration::from_millis(300)).await;
            }
            // Each head also arrives in two parts, 400 ms apart (within 500 ms of its start).
            c.send(b"GET /gateway/health HTTP/1.1\r\n").await;
            sleep(Duration::from_millis(400)).await;
            c.send(b"Host: x\r\n\r\n").await;
            let r = c.response().await;
            assert_eq!(r.status, 200, "request {i}: {r:?}");
        }
        assert_eq!(start.elapsed(), Duration::from_millis(4 * 400 + 3 * 300));
    })
    .await;
}

/// A client that takes no bytes of a response for `idle_timeout` is disconnected (nginx's
/// `send_timeout`); one that keeps taking them, however slowly in total, is not.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_disconnected_after_idle_timeout() {
    local(async {
        let gw = shared("idle_timeout = \"500ms\"");
        // A 64-byte pipe: any response of the gateway's fills it.
        let mut c = Conn::open(&gw, 64);
        c.send(b"GET /gateway/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let start = Instant::now();
        // The client reads nothing; the gateway gives up idle_timeout after its last progress.
        (&mut c.served).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));

        // Reading 64 bytes every 400 ms: each pause is under idle_timeout, the whole response
        // takes many times it, and all of it arrives.
        let start = Instant::now();
        let mut c = Conn::open(&gw, 64);
        c.send(b"GET /gateway/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            assert!(Instant::now() < deadline, "the response never ended");
            sleep(Duration::from_millis(400)).await;
            let n = c.io.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = lossy(&got[..i]);
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a length")
                    .parse()
                    .unwrap();
                if got.len() >= i + 4 + len {
                    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                    assert!(len > 64 * 20, "a response of {len} bytes proves little");
                    break;
                }
            }
        }
        assert!(start.elapsed() > Duration::from_secs(5));
    })
    .await;
}

/// A stop (SIGTERM) closes a connection waiting between requests at once, and lets a request
/// whose head has begun be answered, with `connection: close`.
#[tokio::test(start_paused = true)]
async fn a_stop_closes_idle_connections_and_answers_begun_requests_with_close() {
    local(async {
        let gw = shared("idle_timeout = \"60s\"");
        let mut idle = Conn::open(&gw, 4096);
        assert_eq!(idle.get("/gateway/health").await.status, 200);
        let mut busy = Conn::open(&gw, 4096);
        busy.send(b"GET /gateway/health HTTP/1.1\r\n").await;
        sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        idle.stop.cancel();
        busy.stop.cancel();
        assert_eq!(idle.closed().await, start);
        busy.send(b"Host: x\r\n\r\n").await;
        let r = busy.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
        busy.closed().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unrouted_path_and_a_malformed_head_are_answered_on_the_pipe() {
    local(async {
        let gw = shared("");
        let mut c = Conn::open(&gw, 4096);
        let r = c.get("/nowhere").await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.header("x-request-id").is_some(), "{r:?}");
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
        c.closed().await;
    })
    .await;
}

/// The admin listener runs the same loop in admin-only mode: `/gateway/*` is served, any
/// other path is 404 (the routes are not reachable from it), with the same head timeout.
#[tokio::test(start_paused = true)]
async fn the_admin_listener_serves_only_gateway_endpoints_with_the_same_limits() {
    local(async {
        let gw = shared("admin_listen = \"127.0.0.1:1\"\nheader_read_timeout = \"700ms\"");
        let mut c = Conn::on(&gw, Listener::Admin, 4096);
        let r = c.get("/gateway/health").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("\"status\":\"ok\""), "{}", r.body);
        let r = c.get("/api/users").await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.body.contains("admin listener"), "{}", r.body);
        c.send(b"GET /gateway/stats HTTP/1.1\r\n").await;
        let start = Instant::now();
        assert_eq!(c.response().await.status, 408);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
        c.closed().await;
    })
    .await;
}
