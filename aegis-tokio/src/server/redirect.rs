//! `server.tls.redirect_listen`: a plaintext listener that answers every request with a
//! permanent redirect (308) to the same host and path over https on the proxy listener's port.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Redirects until `stop`. `https_port`: the proxy listener's port (left out of the URL when
/// it is 443).
pub(super) async fn serve(listener: TcpListener, https_port: u16, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(redirect(&req, https_port))
        });
        tokio::task::spawn_local(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    // The host without its port (an IPv6 literal keeps its brackets).
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let h = req.headers().get(HOST)?.to_str().ok()?;
            h.parse::<http::uri::Authority>()
                .ok()
                .map(|a| a.host().to_owned())
        })
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"{\"error\":\"bad_request\",\"message\":\"no Host to redirect to\"}",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = location.parse() {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut()
        .insert(CONNECTION, http::HeaderValue::from_static("close"));
    r
}
