//! A tunnel after a `101 Switching Protocols` (a WebSocket): bytes both ways between the
//! client and the upstream until both have closed their sending side (a half-close is passed
//! on and the other way keeps flowing), or until no byte has moved either way for
//! `server.websocket_idle_timeout`.

use std::cell::Cell;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What went through a tunnel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tunneled {
    /// Client to upstream, and upstream to client.
    pub(super) up: u64,
    pub(super) down: u64,
    pub(super) idle_out: bool,
}

/// Carries bytes between `client` and `upstream` until both sides are done or the tunnel
/// idles for `idle`.
pub(super) async fn run<C, U>(client: C, upstream: U, idle: Duration) -> Tunneled
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = Cell::new(Instant::now());
    let (up, down) = (Cell::new(0u64), Cell::new(0u64));
    let mut a = Watched {
        io: client,
        last: &last,
        read: &up,
    };
    let mut b = Watched {
        io: upstream,
        last: &last,
        read: &down,
    };
    let idle_out = {
        let mut copy = pin!(tokio::io::copy_bidirectional(&mut a, &mut b));
        loop {
            let deadline = last.get() + idle;
            tokio::select! {
                _ = copy.as_mut() => break false,
                () = tokio::time::sleep_until(deadline) => {
                    if last.get() + idle <= Instant::now() {
                        break true;
                    }
                }
            }
        }
    };
    Tunneled {
        up: up.get(),
        down: down.get(),
        idle_out,
    }
}

/// A stream that counts the bytes read from it and notes when any byte moved.
struct Watched<'a, S> {
    io: S,
    last: &'a Cell<Instant>,
    read: &'a Cell<u64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.set(this.read.get() + n as u64);
            this.last.set(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bytes_flow_both_ways_half_closes_pass_and_idle_tunnels_close() {
        let (mut client, client_end) = tokio::io::duplex(64);
        let (upstream_end, mut upstream) = tokio::io::duplex(64);
        let t = run(client_end, upstream_end, Duration::from_secs(10));
        let drive = async {
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            upstream.write_all(b"pong!").await.unwrap();
            let mut got = [0u8; 5];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong!");
            // The client stops sending: the upstream sees the end, and can still answer.
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            upstream.read_to_end(&mut rest).await.unwrap();
            upstream.write_all(b"bye").await.unwrap();
            upstream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"bye");
        };
        let (done, ()) = tokio::join!(t, drive);
        assert_eq!((done.up, done.down, done.idle_out), (4, 8, false));

        // Idle: nothing for 10 s closes it.
        let (_client, client_end) = tokio::io::duplex(64);
        let (upstream_end, _upstream) = tokio::io::duplex(64);
        let start = Instant::now();
        let done = run(client_end, upstream_end, Duration::from_secs(10)).await;
        assert!(done.idle_out);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
