//! The upstream connection pool: HTTP/1.1 keep-alive connections per target authority, one
//! pool per worker thread (no locks; a connection is always driven by the thread using it).
//!
//! A pooled connection stays in its list while in use: hyper reports it ready again only once
//! the previous exchange, body included, is over, so a checkout takes the first ready one.
//! Connections the upstream closed are dropped when seen; connections idle for [`IDLE`] are
//! closed, and so are idle ones beyond [`MAX_IDLE`]. A request that finds a pooled connection
//! closed before it was written is sent again on another one (it never reached the upstream).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::LimitedBody;

/// An idle pooled connection is closed after this long.
const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per target per worker; more are closed once idle (a burst may open
/// more while it lasts).
const MAX_IDLE: usize = 512;
/// Pooled connections found closed under one request before a fresh one is made.
const STALE_RETRIES: usize = 4;

struct Pooled {
    send: SendRequest<LimitedBody>,
    last_used: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<Authority, Vec<Pooled>>> = RefCell::new(HashMap::new());
}

/// How an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection: DNS, refused, or the connect timeout.
    Connect(String),
    /// The connection failed before a response head arrived (or the request body failed).
    Exchange(hyper::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => f.write_str(e),
            SendError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled connection, or a new
/// one, and returns the response head with its streaming body.
pub async fn send(
    authority: &Authority,
    mut req: Request<LimitedBody>,
    connect_timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    for _ in 0..STALE_RETRIES {
        let Some(sent) = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let list = p.get_mut(authority)?;
            let now = Instant::now();
            list.retain(|c| !c.send.is_closed() && now.duration_since(c.last_used) < IDLE);
            if list.len() > MAX_IDLE {
                let mut idle = list.iter().filter(|c| c.send.is_ready()).count();
                list.retain(|c| {
                    let drop = idle > MAX_IDLE && c.send.is_ready();
                    idle -= usize::from(drop);
                    !drop
                });
            }
            let c = list.iter_mut().find(|c| c.send.is_ready())?;
            c.last_used = now;
            Some(c.send.try_send_request(req_take(&mut req)))
        }) else {
            break;
        };
        match sent.await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never written: the connection was closing. Try another.
                Some(back) => req = back,
                None => return Err(SendError::Exchange(e.into_error())),
            },
        }
    }
    let mut send = connect(authority, connect_timeout).await?;
    send.ready()
        .await
        .map_err(|e| SendError::Connect(format!("connection closed at once: {e}")))?;
    let resp = send.send_request(req);
    POOL.with(|p| {
        p.borrow_mut()
            .entry(authority.clone())
            .or_default()
            .push(Pooled {
                send,
                last_used: Instant::now(),
            })
    });
    resp.await.map_err(SendError::Exchange)
}

/// Moves the request out, leaving an empty placeholder (only ever read back on retry).
fn req_take(req: &mut Request<LimitedBody>) -> Request<LimitedBody> {
    std::mem::replace(req, Request::new(LimitedBody::empty()))
}

async fn connect(
    authority: &Authority,
    timeout: Duration,
) -> Result<SendRequest<LimitedBody>, SendError> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| SendError::Connect(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| SendError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection closed with an error: {e}");
        }
    });
    Ok(send)
}
