//! The one HTTP/1 body reader, for request bodies (client side) and response bodies (upstream
//! side) alike: decode what the connection's buffer holds, read more from the stream when it
//! holds no more of the body.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::buf::ReadBuf;
use super::decode::{BodyDecoder, Step};

/// Why a body could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a valid body of its framing (a bad chunk, say).
    Malformed(&'static str),
    /// The peer closed the connection before the body's end.
    Closed,
    Io(io::Error),
}

/// The body's next bytes (`Some`), or its end (`None`): from what `rbuf` holds, else read
/// from `io` into it (growing it up to `limit` bytes). A close-delimited body ends when the
/// peer closes; any other ends where its framing says.
pub fn poll_body<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    decoder: &mut BodyDecoder,
    rbuf: &mut ReadBuf,
    io: &mut R,
    limit: usize,
) -> Poll<Result<Option<Bytes>, ReadError>> {
    loop {
        match decoder.next(rbuf) {
            Ok(Step::Data(data)) => return Poll::Ready(Ok(Some(data))),
            Ok(Step::End) => return Poll::Ready(Ok(None)),
            Ok(Step::More) => {}
            Err(e) => return Poll::Ready(Err(ReadError::Malformed(e))),
        }
        match ready!(rbuf.poll_fill(cx, io, limit)) {
            Ok(0) if matches!(decoder, BodyDecoder::Close) => return Poll::Ready(Ok(None)),
            Ok(0) => return Poll::Ready(Err(ReadError::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(ReadError::Io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::h1::Framing;

    /// Reads a whole body through `poll_body` from a pipe the peer writes `wire` into in
    /// pieces of `step` bytes, then closes (or not).
    async fn read_all(
        framing: Framing,
        wire: &[u8],
        step: usize,
        close: bool,
    ) -> Result<Vec<u8>, String> {
        let (mut peer, mut io) = tokio::io::duplex(64);
        let wire = wire.to_vec();
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(step) {
                peer.write_all(piece).await.unwrap();
            }
            if !close {
                // Keep the pipe open until the reader is done.
                std::future::pending::<()>().await;
            }
        });
        let mut decoder = BodyDecoder::new(framing);
        let mut rbuf = ReadBuf::new();
        let mut out = Vec::new();
        let result = loop {
            match poll_fn(|cx| poll_body(cx, &mut decoder, &mut rbuf, &mut io, 1024)).await {
                Ok(Some(d)) => out.extend_from_slice(&d),
                Ok(None) => break Ok(out),
                Err(e) => break Err(format!("{e:?}")),
            }
        };
        writer.abort();
        result
    }

    #[tokio::test]
    async fn every_framing_reads_to_its_end_across_reads() {
        let chunked = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for step in [1, 3, 64] {
            assert_eq!(
                read_all(Framing::Chunked, chunked, step, false)
                    .await
                    .unwrap(),
                b"abcde"
            );
            assert_eq!(
                read_all(Framing::Length(5), b"abcde", step, false)
                    .await
                    .unwrap(),
                b"abcde"
            );
            assert_eq!(
                read_all(Framing::Close, b"abcde", step, true)
                    .await
                    .unwrap(),
                b"abcde"
            );
        }
    }

    #[tokio::test]
    async fn a_peer_that_closes_mid_body_or_sends_garbage_is_an_error() {
        let cut = read_all(Framing::Length(10), b"abc", 1, true)
            .await
            .unwrap_err();
        assert_eq!(cut, "Closed");
        let cut = read_all(Framing::Chunked, b"5\r\nab", 1, true)
            .await
            .unwrap_err();
        assert_eq!(cut, "Closed");
        let bad = read_all(Framing::Chunked, b"zz\r\n", 1, false)
            .await
            .unwrap_err();
        assert!(bad.starts_with("Malformed"), "{bad}");
    }
}
