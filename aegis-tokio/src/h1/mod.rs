//! The HTTP/1.1 wire format, for both ends of the proxy: heads parsed with `httparse` out of a
//! reused read buffer (header values copied out of one buffer, no allocation per read), body
//! framing (RFC 9112 §6), one body decoder for requests and responses, and heads written into
//! a reused write buffer.
//!
//! ```text
//!   buf       ReadBuf: bytes read, not yet consumed
//!   framing   Framing, and the framing facts of a head's headers (Meta)
//!   request   request heads → Parts + RequestHead            (the client side)
//!   response  response heads → RawHeaders + ResponseHead     (the upstream side)
//!   decode    BodyDecoder: Content-Length, chunked, close-delimited
//!   reader    poll_body: the one body reader over any AsyncRead, for both ends
//!   encode    heads, chunks, and the Pump that writes a message and its body
//! ```
//!
//! No I/O happens here except reads into a [`ReadBuf`] and the [`Pump`]'s writes; the
//! connection loops live in `downstream` (clients) and `upstream` (targets).

mod buf;
mod decode;
mod encode;
mod framing;
mod reader;
mod request;
mod response;

pub use buf::{ReadBuf, give_write_buf, park_headers, take_write_buf, unpark_headers};
pub use decode::{BodyDecoder, Chunked, Decoded, Step};
pub use encode::{
    FLUSH_AT, LAST_CHUNK, Pump, Pumped, date, put_chunk, put_header, put_status_line, put_u64,
};
pub use framing::{Framing, MAX_HEADERS};
pub use reader::{ReadError, poll_body};
pub use request::{HeadError, RequestHead, parse_request};
pub use response::{RawHeaders, ResponseHead, is_hop_by_hop, parse_response};
