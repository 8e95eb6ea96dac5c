//! The body of a response to a client ([`ProxyBody`]: made by the gateway, or streamed from
//! the upstream) and the client's request body on its way upstream ([`LimitedBody`], cut off
//! past the route's size limit).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::error::{BodyError, BoxError};
use crate::upstream::UpBody;

/// The response body: a gateway-made reply, or the upstream's body streamed through.
#[derive(Debug)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(UpBody),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(i) => Pin::new(i).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(i) => i.size_hint(),
        }
    }
}

/// The client's request body, streamed upstream frame by frame, cut off past a size limit.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: Option<B>,
    limit: Option<u64>,
    seen: u64,
    /// Set once the client's body has been read to its end (only made for requests that have
    /// a body): a timeout before then is the client's slowness, not the upstream's.
    done: Option<Arc<AtomicBool>>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: Option<u64>, done: Option<Arc<AtomicBool>>) -> LimitedBody<B> {
        LimitedBody {
            inner: Some(inner),
            limit,
            seen: 0,
            done,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(d)) = (this.limit, frame.data_ref()) {
                    this.seen += d.len() as u64;
                    if this.seen > limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e.into())))),
            Poll::Ready(None) => {
                if let Some(d) = &this.done {
                    d.store(true, Ordering::Relaxed);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The request body as the upstream exchange reads it: streamed from the client, or kept
/// whole (small, of known length) so that a retry can send it again.
#[derive(Debug)]
pub enum RequestBody<B> {
    Stream(LimitedBody<B>),
    Kept { data: Bytes, sent: bool },
}

impl<B> RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads all of `body` (at most its size limit, else `TooLarge`) to keep it.
    pub async fn keep(mut body: LimitedBody<B>) -> Result<RequestBody<B>, BodyError> {
        let mut data = bytes::BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(d) = frame?.into_data() {
                data.extend_from_slice(&d);
            }
        }
        Ok(RequestBody::Kept {
            data: data.freeze(),
            sent: false,
        })
    }

    /// Makes a kept body readable again from its start.
    pub fn rewind(&mut self) {
        if let RequestBody::Kept { sent, .. } = self {
            *sent = false;
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Kept { data, sent } => {
                if *sent || data.is_empty() {
                    *sent = true;
                    return Poll::Ready(None);
                }
                *sent = true;
                Poll::Ready(Some(Ok(Frame::data(data.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Kept { data, sent } => *sent || data.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Kept { data, sent } => {
                SizeHint::with_exact(if *sent { 0 } else { data.len() as u64 })
            }
        }
    }
}
