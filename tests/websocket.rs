//! WebSocket through the gateway, end to end: a real WebSocket echo server (tungstenite) as
//! the upstream and a real WebSocket client on the other side. The upgrade request goes
//! through routing, auth and the rate limit like any request; a `101` turns the connection
//! into a tunnel (frames both ways, the close handshake, half-closes); a non-101 answer is an
//! ordinary response; a tunnel idle for `websocket_idle_timeout` is closed.
#![allow(clippy::disallowed_methods)] // real time: socket timeouts

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use aegis_testkit::{Gateway, bearer, mint_token};
use tungstenite::{Message, client::IntoClientRequest};

const SECRET: &str = "ws-secret";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A WebSocket echo server on a free port: every text or binary message comes back, `close`
/// starts the close handshake, `who` gets its name. Counts the upgrades it accepted.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Echo {
        Echo::start_named("echo")
    }

    fn start_named(name: &'static str) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let count = count.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                    let Ok(mut ws) = tungstenite::accept(s) else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    // Bounded: a test sends a handful of messages.
                    for _ in 0..1000 {
                        match ws.read() {
                            Ok(Message::Text(t)) if t.as_str() == "close" => {
                                let _ = ws.close(None);
                            }
                            Ok(Message::Text(t)) if t.as_str() == "who" => {
                                if ws.send(Message::text(name)).is_err() {
                                    return;
                                }
                            }
                            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                if ws.send(m).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Echo { addr, accepted }
    }
}

fn gateway(echo: &Echo, extra: &str) -> Gateway {
    Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n[auth]\nsecret = \"{SECRET}\"\n\n\
             [[routes]]\npath = \"/ws\"\ntargets = [\"http://{}\"]\nauth = true\n\
             rate_limit = {{ max = 3, window = \"60s\" }}\n",
            echo.addr
        ),
        &[],
    )
}

type Client = tungstenite::WebSocket<TcpStream>;

fn connect(gw: &Gateway, token: Option<&str>) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://{}/ws/chat", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", bearer(t).parse().unwrap());
    }
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    tungstenite::client(req, s)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

#[test]
fn frames_cross_both_ways_and_the_close_handshake_completes() {
    let echo = Echo::start();
    let gw = gateway(&echo, "");
    let token = mint_token(SECRET, serde_json::json!({"userId": "u1"}));
    let mut ws = connect(&gw, Some(&token)).expect("the upgrade through the gateway");
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    // The upstream starts the close handshake; the client completes it.
    ws.send(Message::text("close")).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // Both sides have closed: the tunnel ends.
    drop(ws);
    aegis_testkit::wait_until("the tunnel to be logged", TIMEOUT, || {
        gw.stderr().contains("tunnel closed after")
    });
    let metrics = gw.get("/gateway/metrics", &[]).text();
    assert!(metrics.contains("aegis_tunnels_open 0"), "{metrics}");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("aegis_tunnel_bytes_total{direction=\"up\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

/// The upgrade request is an ordinary request to the pipeline: no token, 401 (no tunnel);
/// past the route's rate limit, 429.
#[test]
fn auth_and_the_rate_limit_apply_to_the_upgrade_request() {
    let echo = Echo::start();
    let gw = gateway(&echo, "");
    match connect(&gw, None) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let token = mint_token(SECRET, serde_json::json!({"userId": "u1"}));
    aegis_testkit::wait_for_window_room(Duration::from_secs(60), Duration::from_secs(5));
    for _ in 0..3 {
        connect(&gw, Some(&token)).expect("within the limit");
    }
    match connect(&gw, Some(&token)) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 3);
}

/// An upstream that answers the upgrade with a plain 200: relayed as an ordinary response.
#[test]
fn a_non_101_answer_is_an_ordinary_response() {
    let up = aegis_testkit::Upstream::start("plain");
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/\"\ntargets = [{:?}]\n",
            up.url()
        ),
        &[("RUST_LOG", "warn")],
    );
    let r = aegis_testkit::get(
        gw.addr,
        "/ws",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The upgrade was offered to the upstream (the fake service echoes what it received).
    let v = r.json();
    assert_eq!(v["headers"]["upgrade"][0], "websocket", "{v}");
}

/// A tunnel with no bytes either way for `websocket_idle_timeout` is closed.
#[test]
fn an_idle_tunnel_is_closed() {
    let echo = Echo::start();
    let gw = gateway(&echo, "websocket_idle_timeout = \"500ms\"");
    let token = mint_token(SECRET, serde_json::json!({"userId": "u1"}));
    let mut ws = connect(&gw, Some(&token)).unwrap();
    ws.send(Message::text("one")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("one"));
    // Silence: the gateway closes the tunnel (the client sees the connection end).
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::Protocol(_))
        | Err(tungstenite::Error::Io(_)) => {}
        other => panic!("expected the tunnel closed, got {other:?}"),
    }
    aegis_testkit::wait_until("the idle tunnel to be logged", TIMEOUT, || {
        gw.stderr().contains("(idle)")
    });
}

/// SIGTERM: an open tunnel keeps working through the drain, and is closed when the drain
/// timeout ends; the gateway then exits 0.
#[test]
fn sigterm_lets_a_tunnel_run_until_the_drain_timeout() {
    let echo = Echo::start();
    let mut gw = gateway(&echo, "drain_timeout = \"1s\"");
    let token = mint_token(SECRET, serde_json::json!({"userId": "u1"}));
    let mut ws = connect(&gw, Some(&token)).unwrap();
    gw.signal("TERM");
    aegis_testkit::wait_until("the drain to begin", TIMEOUT, || {
        gw.stderr().contains("draining")
    });
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    assert!(ws.read().is_err(), "the tunnel is closed with the process");
}

/// An open tunnel counts among its target's requests in flight until it closes: with
/// `balance = "p2c"` (least-request) over two targets, new WebSockets go to the target that
/// holds fewer, `/gateway/stats` shows them in `inFlight`, and closing them gives the count
/// back (so the next ones go where the closed ones were).
#[test]
fn p2c_spreads_open_tunnels_and_counts_them_in_flight() {
    let (a, b) = (Echo::start_named("a"), Echo::start_named("b"));
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [[routes]]\npath = \"/ws\"\nbalance = \"p2c\"\ntargets = [\"http://{}\", \"http://{}\"]\n",
            a.addr, b.addr
        ),
        &[],
    );
    let in_flight = |gw: &Gateway| -> Vec<u64> {
        gw.stats()
            .iter()
            .map(|s| s["inFlight"].as_u64().unwrap())
            .collect()
    };
    // Opens a tunnel and asks the upstream its name: the tunnel is open on both sides.
    let open = || -> (Client, String) {
        let mut ws = connect(&gw, None).expect("the upgrade through the gateway");
        ws.send(Message::text("who")).unwrap();
        let who = ws.read().unwrap().into_text().unwrap().as_str().to_owned();
        (ws, who)
    };
    let first: Vec<(Client, String)> = (0..6).map(|_| open()).collect();
    assert_eq!(in_flight(&gw), [3, 3]);
    let on_a = first.iter().filter(|(_, w)| w == "a").count();
    assert_eq!(on_a, 3, "P2C over two compares both: the tunnels alternate");
    // The first target's tunnels close: its count goes back to 0, and the next three
    // tunnels all go to it.
    let (closing, kept): (Vec<_>, Vec<_>) = first.into_iter().partition(|(_, w)| w == "a");
    drop(closing);
    aegis_testkit::wait_until("a's tunnels closed", TIMEOUT, || in_flight(&gw) == [0, 3]);
    let again: Vec<(Client, String)> = (0..3).map(|_| open()).collect();
    assert!(
        again.iter().all(|(_, w)| w == "a"),
        "{:?}",
        again.iter().map(|x| &x.1).collect::<Vec<_>>()
    );
    assert_eq!(in_flight(&gw), [3, 3]);
    assert_eq!(
        (
            a.accepted.load(Ordering::SeqCst),
            b.accepted.load(Ordering::SeqCst)
        ),
        (6, 3)
    );
    drop((kept, again));
    aegis_testkit::wait_until("every tunnel closed", TIMEOUT, || in_flight(&gw) == [0, 0]);
}
