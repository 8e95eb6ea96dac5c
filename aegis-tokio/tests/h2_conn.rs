//! The HTTP/2 connection's timers, on paused time: `downstream::serve` over an in-memory pipe
//! (`tokio::io::duplex`), handed to HTTP/2 by the preface as a socket would be, driven by raw
//! frames (`aegis_testkit::h2raw`) while the test's clock only moves when every task waits.
//! The answers come from the gateway itself (`/gateway/health`, `/gateway/metrics`): these
//! tests are about the connection and its streams (tests/h2.rs at the workspace root attacks
//! a running gateway over real sockets, upstreams included).

use std::sync::Arc;
use std::time::Duration;

use aegis_testkit::h2raw::{
    self, Frame, PREFACE, Reader, code, flag, headers, request_block, setting, ty,
};
use aegis_tokio::downstream::{self, CLOSE_GRACE, Limits};
use aegis_tokio::gateway::Listener;
use aegis_tokio::observe::log::LogFormat;
use aegis_tokio::record::Peer;
use aegis_tokio::state::{ConfigSource, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// A gateway with one route (never reached) and `server` lines added to `[server]`.
fn shared(server: &str) -> Arc<Shared> {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[[routes]]\npath = \"/api\"\ntargets = [\"http://127.0.0.1:9\"]\n"
    );
    Arc::new(Shared::new(ConfigSource::Inline(config), LogFormat::Text).expect("a valid config"))
}

/// An h2c connection to `shared`'s proxy listener through a pipe.
struct H2Pipe {
    io: DuplexStream,
    reader: Reader,
    served: JoinHandle<()>,
    stop: CancellationToken,
    /// Whether the client answers the gateway's PINGs (a graceful GOAWAY comes with one).
    answer_pings: bool,
}

impl H2Pipe {
    /// Connects, sends the preface and SETTINGS with `params`, takes the gateway's SETTINGS
    /// and acknowledges them.
    async fn open(shared: &Arc<Shared>, params: &[(u16, u32)]) -> H2Pipe {
        let (io, theirs) = tokio::io::duplex(64 * 1024);
        let limits = Limits::new(&shared.runtime.load().policy.config().server);
        let stop = CancellationToken::new();
        let served = tokio::task::spawn_local(downstream::serve(
            theirs,
            Peer::new("127.0.0.1:40000".parse().unwrap()),
            shared.clone(),
            Listener::Proxy,
            limits,
            stop.clone(),
        ));
        let mut c = H2Pipe {
            io,
            reader: Reader::default(),
            served,
            stop,
            answer_pings: true,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&h2raw::settings(params));
        c.send(&hello).await;
        let f = c.frame().await.expect("the gateway's SETTINGS");
        assert!(f.is(ty::SETTINGS) && !f.has(flag::ACK), "{f:?}");
        c.send(&h2raw::settings_ack()).await;
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io
            .write_all(bytes)
            .await
            .expect("the gateway takes the bytes");
    }

    /// The next frame, or `None` once the gateway closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        let mut b = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.reader.next_frame().expect("frames from the gateway") {
                return Some(f);
            }
            match self.io.read(&mut b).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.reader.push(&b[..n]),
            }
        }
    }

    /// The next frame that is not a SETTINGS ACK, WINDOW_UPDATE or PING ACK; PINGs answered.
    async fn event(&mut self) -> Option<Frame> {
        loop {
            let f = self.frame().await?;
            match f.ty {
                ty::SETTINGS | ty::WINDOW_UPDATE => {}
                ty::PING if f.has(flag::ACK) => {}
                ty::PING if !self.answer_pings => {}
                ty::PING => {
                    let mut d = [0u8; 8];
                    d.copy_from_slice(&f.payload);
                    self.send(&h2raw::frame(ty::PING, flag::ACK, 0, &d)).await;
                }
                _ => return Some(f),
            }
        }
    }

    /// A GET on `stream`, read to its end (DATA taken as it comes, window given back).
    async fn get(&mut self, stream: u32, path: &str) -> u16 {
        self.send(&headers(stream, &request_block("GET", path, &[]), true))
            .await;
        let mut status = 0;
        loop {
            let f = self.event().await.expect("a response");
            assert_eq!(f.stream, stream, "{f:?}");
            match f.ty {
                ty::HEADERS => status = f.status().unwrap(),
                ty::DATA => {
                    let n = f.payload.len() as u32;
                    if n > 0 && !f.has(flag::END_STREAM) {
                        let mut wu = h2raw::window_update(0, n);
                        wu.extend_from_slice(&h2raw::window_update(stream, n));
                        self.send(&wu).await;
                    }
                }
                _ => panic!("{f:?}"),
            }
            if f.has(flag::END_STREAM) {
                return status;
            }
        }
    }

    /// [`H2Pipe::event`], sending a PING of the client's own every `every` meanwhile.
    async fn event_pinging(&mut self, every: Duration) -> Option<Frame> {
        loop {
            tokio::select! {
                f = self.event() => return f,
                () = sleep(every) => {
                    let _ = self.io.write_all(&h2raw::ping(*b"client!!")).await;
                }
            }
        }
    }

    /// Reads to the end of the connection, PINGing every `ping_every` until the GOAWAY;
    /// returns the GOAWAY, when it came and when the connection closed, on the test's clock.
    async fn goaway_then_close(
        &mut self,
        ping_every: Option<Duration>,
    ) -> (Frame, Instant, Instant) {
        let f = match ping_every {
            Some(every) => self.event_pinging(every).await,
            None => self.event().await,
        };
        let f = f.expect("a GOAWAY before the close");
        assert!(f.is(ty::GOAWAY), "{f:?}");
        let at = Instant::now();
        while let Some(more) = self.event().await {
            assert!(more.is(ty::GOAWAY), "a GOAWAY, then the close: {more:?}");
        }
        let closed = Instant::now();
        (&mut self.served).await.expect("the connection task ends");
        (f, at, closed)
    }
}

async fn local<F: std::future::Future<Output = ()>>(f: F) {
    LocalSet::new().run_until(f).await;
}

/// A connection whose client keeps PINGing but opens no stream is idle: GOAWAY exactly
/// `idle_timeout` after its last stream ended; the client acknowledges it (the PING that
/// follows a graceful GOAWAY) and the connection closes at once.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_at_idle_timeout_though_it_pings() {
    local(async {
        let gw = shared("header_read_timeout = \"10s\"\nidle_timeout = \"1500ms\"");
        let mut c = H2Pipe::open(&gw, &[]).await;
        assert_eq!(c.get(1, "/gateway/health").await, 200);
        let idle_from = Instant::now();
        let (g, at, closed) = c.goaway_then_close(Some(Duration::from_millis(400))).await;
        assert_eq!(g.error_code(), Some(code::NO_ERROR));
        assert_eq!(at - idle_from, Duration::from_millis(1500));
        assert_eq!(closed, at);
    })
    .await;
}

/// Streams keep a connection open however long they take; the idle time counts from the
/// end of the last one.
#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_the_last_stream() {
    local(async {
        let gw = shared("idle_timeout = \"1s\"");
        let mut c = H2Pipe::open(&gw, &[]).await;
        for id in [1, 3, 5, 7] {
            // Each request comes 900 ms after the previous one ended: never idle for 1 s.
            sleep(Duration::from_millis(900)).await;
            assert_eq!(c.get(id, "/gateway/health").await, 200);
        }
        let idle_from = Instant::now();
        let (_, at, _) = c.goaway_then_close(None).await;
        assert_eq!(at - idle_from, Duration::from_secs(1));
    })
    .await;
}

/// Before its first stream a connection has `header_read_timeout` (as an HTTP/1.1 one has
/// for its first head). A client that never acknowledges the GOAWAY is closed `CLOSE_GRACE`
/// after it.
#[tokio::test(start_paused = true)]
async fn a_connection_without_streams_is_closed_at_header_read_timeout_and_the_grace() {
    local(async {
        let gw = shared("header_read_timeout = \"2s\"\nidle_timeout = \"60s\"");
        let start = Instant::now();
        let mut c = H2Pipe::open(&gw, &[]).await;
        c.answer_pings = false;
        let (g, at, closed) = c.goaway_then_close(None).await;
        assert_eq!(g.error_code(), Some(code::NO_ERROR));
        assert_eq!(at - start, Duration::from_secs(2));
        assert_eq!(closed - at, CLOSE_GRACE);
    })
    .await;
}

/// A stream whose client never opens its window (SETTINGS_INITIAL_WINDOW_SIZE 0) gets its
/// response head and no byte more: it is reset (CANCEL) exactly `idle_timeout` after the head,
/// though the client PINGs all along; then the connection, with no stream, is closed
/// `idle_timeout` later.
#[tokio::test(start_paused = true)]
async fn a_stream_whose_window_never_opens_is_reset_at_idle_timeout() {
    local(async {
        let gw = shared("idle_timeout = \"700ms\"");
        let mut c = H2Pipe::open(&gw, &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
        c.send(&headers(
            1,
            &request_block("GET", "/gateway/metrics", &[]),
            true,
        ))
        .await;
        let head = c.event().await.expect("the response head");
        assert_eq!(head.status(), Some(200), "{head:?}");
        let sent = Instant::now();
        let reset = c
            .event_pinging(Duration::from_millis(100))
            .await
            .expect("a reset");
        assert!(reset.is(ty::RST_STREAM), "{reset:?}");
        assert_eq!(reset.error_code(), Some(code::CANCEL));
        assert_eq!(sent.elapsed(), Duration::from_millis(700));
        let idle_from = Instant::now();
        let (_, at, _) = c.goaway_then_close(Some(Duration::from_millis(100))).await;
        assert_eq!(at - idle_from, Duration::from_millis(700));
    })
    .await;
}

/// A client that takes its response slowly, each pause under `idle_timeout`, is not cut off,
/// however long the whole takes (as over HTTP/1.1).
#[tokio::test(start_paused = true)]
async fn a_stream_read_slowly_within_idle_timeout_is_not_reset() {
    local(async {
        let gw = shared("idle_timeout = \"500ms\"");
        let mut c = H2Pipe::open(&gw, &[(setting::INITIAL_WINDOW_SIZE, 64)]).await;
        c.send(&headers(
            1,
            &request_block("GET", "/gateway/metrics", &[]),
            true,
        ))
        .await;
        let start = Instant::now();
        let mut got = 0;
        let mut status = None;
        for _ in 0..10_000 {
            let f = c.event().await.expect("the response");
            assert_eq!(f.stream, 1, "{f:?}");
            match f.ty {
                ty::HEADERS => status = f.status(),
                ty::DATA => got += f.payload.len(),
                _ => panic!("{f:?}"),
            }
            if f.has(flag::END_STREAM) {
                break;
            }
            if f.is(ty::DATA) {
                // 64 more bytes every 400 ms.
                sleep(Duration::from_millis(400)).await;
                let mut wu = h2raw::window_update(0, 64);
                wu.extend_from_slice(&h2raw::window_update(1, 64));
                c.send(&wu).await;
            }
        }
        assert_eq!(status, Some(200));
        assert!(got > 64 * 20, "a response of {got} bytes proves little");
        assert!(start.elapsed() > Duration::from_secs(5));
    })
    .await;
}

/// A stop (SIGTERM) sends the GOAWAY at once; the client acknowledges it and the connection
/// closes.
#[tokio::test(start_paused = true)]
async fn a_stop_closes_an_idle_h2_connection_at_once() {
    local(async {
        let gw = shared("idle_timeout = \"60s\"");
        let mut c = H2Pipe::open(&gw, &[]).await;
        assert_eq!(c.get(1, "/gateway/health").await, 200);
        sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        c.stop.cancel();
        let (g, at, closed) = c.goaway_then_close(None).await;
        assert_eq!(g.error_code(), Some(code::NO_ERROR));
        assert_eq!((at, closed), (start, start));
    })
    .await;
}
