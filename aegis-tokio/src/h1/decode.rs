//! Body decoding for both ends of the proxy: a `Content-Length`, chunked (RFC 9112 §7.1) or
//! close-delimited body out of successive buffers.

use std::ops::Range;

use super::buf::ReadBuf;
use super::framing::Framing;

/// The longest chunk-extension or trailer section accepted.
const MAX_CHUNK_META: usize = 16 * 1024;

/// What a body decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes at this range of the input; consume up to its end.
    Data(Range<usize>),
    /// The body ended after `usize` bytes of input.
    End(usize),
    /// All input consumed (this many bytes), more is needed.
    More(usize),
}

/// What [`BodyDecoder::next`] got.
#[derive(Debug)]
pub enum Step {
    Data(bytes::Bytes),
    End,
    /// Read more first.
    More,
}

/// Decodes a body of any framing out of successive buffers.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(Chunked::default()),
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// Whether the body is over (nothing more to read).
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length(n) => *n == 0,
            BodyDecoder::Chunked(c) => c.state == ChunkState::Done,
            BodyDecoder::Close => false,
        }
    }

    /// Bytes still to come when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// One step out of a connection's buffer: a frame's bytes (copied out and consumed), the
    /// body's end, or `More` when the buffer holds no more of it. Both ends of the proxy read
    /// bodies through this.
    pub fn next(&mut self, rbuf: &mut ReadBuf) -> Result<Step, &'static str> {
        if rbuf.is_empty() && !self.is_done() {
            return Ok(Step::More);
        }
        Ok(match self.decode(rbuf.filled())? {
            Decoded::Data(r) => {
                let data = bytes::Bytes::copy_from_slice(&rbuf.filled()[r.clone()]);
                rbuf.consume(r.end);
                Step::Data(data)
            }
            Decoded::End(n) => {
                rbuf.consume(n);
                Step::End
            }
            Decoded::More(n) => {
                rbuf.consume(n);
                Step::More
            }
        })
    }

    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, &'static str> {
        match self {
            BodyDecoder::Length(0) => Ok(Decoded::End(0)),
            BodyDecoder::Length(n) => {
                if input.is_empty() {
                    return Ok(Decoded::More(0));
                }
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
                *n -= take as u64;
                Ok(Decoded::Data(0..take))
            }
            BodyDecoder::Chunked(c) => c.decode(input),
            BodyDecoder::Close if input.is_empty() => Ok(Decoded::More(0)),
            BodyDecoder::Close => Ok(Decoded::Data(0..input.len())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions or whitespace until the line's end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    TrailerLine,
    EndLf,
    Done,
}

/// The chunked transfer coding's decoder (RFC 9112 §7.1); trailers are read and dropped.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen, bounded by [`MAX_CHUNK_META`].
    meta: usize,
}

impl Chunked {
    fn decode(&mut self, input: &[u8]) -> Result<Decoded, &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err("invalid chunk size"),
                    None => match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => self.end_of_size(),
                        b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                        _ => return Err("invalid chunk size"),
                    },
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_of_size(),
                    _ => self.meta_byte()?,
                },
                ChunkState::SizeLf if b == b'\n' => self.end_of_size(),
                ChunkState::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(i..i + n));
                }
                ChunkState::DataCr if b == b'\r' => self.state = ChunkState::DataLf,
                ChunkState::DataCr | ChunkState::DataLf if b == b'\n' => {
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End(i + 1));
                    }
                    _ => {
                        self.state = ChunkState::TrailerLine;
                        self.meta_byte()?;
                    }
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::Trailer;
                    } else {
                        self.meta_byte()?;
                    }
                }
                ChunkState::EndLf if b == b'\n' => {
                    self.state = ChunkState::Done;
                    return Ok(Decoded::End(i + 1));
                }
                ChunkState::Done => return Ok(Decoded::End(i)),
                ChunkState::SizeLf
                | ChunkState::DataCr
                | ChunkState::DataLf
                | ChunkState::EndLf => return Err("invalid chunk framing"),
            }
            i += 1;
        }
        if self.state == ChunkState::Done {
            return Ok(Decoded::End(i));
        }
        Ok(Decoded::More(i))
    }

    fn end_of_size(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data
        };
    }

    fn meta_byte(&mut self) -> Result<(), &'static str> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META {
            return Err("chunk extensions or trailers too large");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: BodyDecoder, wire: &[u8], step: usize) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for piece in wire.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                match d.decode(&pending)? {
                    Decoded::Data(r) => {
                        out.extend_from_slice(&pending[r.clone()]);
                        pending.drain(..r.end);
                    }
                    Decoded::End(n) => {
                        pending.drain(..n);
                        assert!(pending.is_empty(), "bytes after the body");
                        return Ok(out);
                    }
                    Decoded::More(n) => {
                        pending.drain(..n);
                        break;
                    }
                }
            }
        }
        Err("incomplete")
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..wire.len() {
            let got = decode_all(BodyDecoder::new(Framing::Chunked), wire, step);
            assert_eq!(
                got.as_deref(),
                Ok(&b"hello, world0123456789"[..]),
                "step {step}"
            );
        }
        let got = decode_all(BodyDecoder::new(Framing::Chunked), b"0\r\n\r\n", 1);
        assert_eq!(got.as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"x\r\nab\r\n"[..],
            b"2\r\nabc\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(
                decode_all(BodyDecoder::new(Framing::Chunked), wire, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
