//! `aegis upstream`: the fake service behind the demo, the compose file and the end-to-end
//! tests. It answers JSON naming itself and echoing what it received; the last path segment
//! `fail` answers 500, `?status=N` answers N, `?sleep_ms=N` waits first, and `?bytes=N`
//! answers N bytes of `x` instead of JSON (streamed in 64 KiB chunks, for large transfers).
//! `peerPort` in the JSON is the client port of the connection (to see connection reuse).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// The longest `?sleep_ms` honoured.
const MAX_SLEEP_MS: u64 = 60_000;

/// Binds `addr`, prints `upstream NAME listening on http://ADDR`, and serves forever.
pub async fn run(name: &str, addr: SocketAddr) -> Result<(), String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    crate::say!("upstream {name} listening on http://{local}");
    serve(Arc::from(name), l).await;
    Ok(())
}

/// Serves on an already bound listener until the process ends.
pub async fn serve(name: Arc<str>, l: TcpListener) {
    let builder = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("upstream {name}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| respond(name.clone(), peer, req)),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

/// `n` bytes of `x`, in chunks that share one buffer.
#[derive(Debug)]
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn respond(
    name: Arc<str>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    // Count the body as it streams: memory stays flat whatever its size.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let query = parts.uri.query().unwrap_or("");
    let param = |k: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    if let Some(ms) = param("sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_SLEEP_MS))).await;
    }
    let last = parts.uri.path().rsplit('/').next().unwrap_or("");
    let status = if last == "fail" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        param("status")
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    };
    if let Some(n) = param("bytes") {
        let body = Repeat {
            left: n,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        };
        let mut resp = Response::new(body.boxed());
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str())
            .or_default()
            .push(v.to_str().unwrap_or("<non-ascii>"));
    }
    let text = |h: &str| parts.headers.get(h).and_then(|v| v.to_str().ok());
    let mut v = json!({
        "service": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "userId": text("x-user-id"),
        "requestId": text("x-request-id"),
        "headers": headers,
        "bodyBytes": body_bytes,
        "peerPort": peer.port(),
    });
    if status == StatusCode::INTERNAL_SERVER_ERROR && last == "fail" {
        v["error"] = json!("simulated failure");
    }
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(n) = HeaderValue::from_str(&name) {
        h.insert("x-upstream", n);
    }
    Ok(resp)
}
