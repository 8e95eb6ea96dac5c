//! A TLS client connection: the handshake (bounded by `server.tls.handshake_timeout`, counted
//! among the open connections), then the same connection loop as plaintext over the TLS
//! stream (ALPN h2 clients send the HTTP/2 preface, which the loop hands to hyper). The
//! handshake is counted in `server.max_connections`/`max_connections_per_ip`. A client
//! that speaks plaintext HTTP to the TLS port gets a 400 saying so, then the close.

use std::sync::Arc;

use http::HeaderValue;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Limits, serve};
use crate::gateway::Listener;
use crate::record::Peer;
use crate::state::Shared;
use crate::tls::server::TlsServer;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves one accepted TCP connection of a TLS listener.
pub async fn serve_tls(
    stream: TcpStream,
    mut peer: Peer,
    shared: Arc<Shared>,
    tls: TlsServer,
    listener: Listener,
    limits: Limits,
    stop: CancellationToken,
) {
    // The handshake counts in the connection caps: past one, the connection is closed
    // before any TLS work (the 503 of a plaintext listener would need the handshake first).
    let counted = super::Counted::enter(&shared.connections);
    let (max_total, max_per_ip) = {
        let rt = shared.runtime.load();
        let server = &rt.policy.config().server;
        (server.max_connections, server.max_connections_per_ip)
    };
    let held = shared.connections_per_ip.enter(peer.addr.ip(), max_per_ip);
    if counted.0 > max_total || held.is_none() {
        return;
    }
    let handshake = async {
        let _open = crate::observe::metrics::GaugeGuard::enter(shared.metrics.connections.mine());
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] != TLS_HANDSHAKE => {
                plaintext_to_tls_port(stream).await;
                return None;
            }
            Ok(1) => {}
            _ => return None,
        }
        match tls.acceptor.accept(stream).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("TLS handshake with {} failed: {e}", peer.addr);
                None
            }
        }
    };
    let stream = tokio::select! {
        r = tokio::time::timeout(tls.handshake_timeout, handshake) => match r {
            Ok(Some(s)) => s,
            // Failed, or no handshake within the timeout: closed (the socket is dropped).
            _ => return,
        },
        () = stop.cancelled() => return,
    };
    // The connection loop counts it from here.
    drop((held, counted));
    peer.tls = true;
    peer.client_subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::pem::validity(c).ok())
        .and_then(|v| HeaderValue::from_str(&v.subject).ok());
    serve(stream, peer, shared, listener, limits, stop).await;
}

/// Plain HTTP on the TLS port: answer 400 in plain HTTP (what nginx does too), then close.
async fn plaintext_to_tls_port(mut stream: TcpStream) {
    let body = r#"{"error":"tls_required","message":"this port speaks TLS: use https://"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client sent for a moment, so closing does not reset the answer away.
    let mut sink = [0u8; 1024];
    let drain = async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}
