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

/// Where the chunked decoder is in RFC 9112 §7.1's grammar:
///
/// ```text
///   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
///   chunk-ext  = *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )
///   last-chunk = 1*"0" [ chunk-ext ] CRLF,  then  *( field-line CRLF ) CRLF
/// ```
///
/// Strict: a bare LF, whitespace after the size that no `;` follows, an extension or trailer
/// byte outside the grammar, or a trailer line that is not `name: value` is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: a `;` must follow.
    SizeWs,
    /// After `;` (and any whitespace): an extension name must start.
    ExtPreName,
    ExtName,
    /// Whitespace after a name: `=` or `;` must follow.
    ExtPostName,
    /// After `=` (and any whitespace): a token or a quoted string must start.
    ExtPreValue,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtEscape,
    /// After a value: `;`, whitespace or the line's end.
    ExtPostValue,
    /// Whitespace after a value: `;` must follow.
    ExtValueWs,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked transfer coding's decoder (RFC 9112 §7.1); trailers are checked and dropped.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen, bounded by [`MAX_CHUNK_META`].
    meta: usize,
}

/// RFC 9110 §5.6.2 `tchar`: the bytes of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl Chunked {
    fn decode(&mut self, input: &[u8]) -> Result<Decoded, &'static str> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            let state = self.state;
            if matches!(
                state,
                S::SizeWs
                    | S::ExtPreName
                    | S::ExtName
                    | S::ExtPostName
                    | S::ExtPreValue
                    | S::ExtToken
                    | S::ExtQuoted
                    | S::ExtEscape
                    | S::ExtPostValue
                    | S::ExtValueWs
                    | S::Trailer
                    | S::TrailerName
                    | S::TrailerValue
            ) {
                self.meta_byte()?;
            }
            self.state = match (state, b) {
                (S::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).unwrap_or_default();
                    self.size = self.size * 16 + u64::from(d);
                    self.digits += 1;
                    S::Size
                }
                (S::Size, _) if self.digits == 0 => return Err("invalid chunk size"),
                (S::Size, b'\r') => S::SizeLf,
                (S::Size, b';') => S::ExtPreName,
                (S::Size, _) if is_ws(b) => S::SizeWs,
                (S::Size, _) => return Err("invalid chunk size line"),
                (S::SizeWs, b';') => S::ExtPreName,
                (S::SizeWs, _) if is_ws(b) => S::SizeWs,
                (S::SizeWs, _) => {
                    return Err("whitespace after the chunk size without an extension");
                }
                (S::ExtPreName, _) if is_ws(b) => S::ExtPreName,
                (S::ExtPreName | S::ExtName, _) if is_tchar(b) => S::ExtName,
                (S::ExtName, b'\r') => S::SizeLf,
                (S::ExtName | S::ExtPostName, b';') => S::ExtPreName,
                (S::ExtName | S::ExtPostName, b'=') => S::ExtPreValue,
                (S::ExtName | S::ExtPostName, _) if is_ws(b) => S::ExtPostName,
                (S::ExtPreValue, _) if is_ws(b) => S::ExtPreValue,
                (S::ExtPreValue, b'"') => S::ExtQuoted,
                (S::ExtPreValue | S::ExtToken, _) if is_tchar(b) => S::ExtToken,
                (S::ExtToken | S::ExtPostValue, b'\r') => S::SizeLf,
                (S::ExtToken | S::ExtPostValue | S::ExtValueWs, b';') => S::ExtPreName,
                (S::ExtToken | S::ExtPostValue | S::ExtValueWs, _) if is_ws(b) => S::ExtValueWs,
                (S::ExtQuoted, b'"') => S::ExtPostValue,
                (S::ExtQuoted, b'\\') => S::ExtEscape,
                // qdtext: HTAB, SP, VCHAR but `"` and `\\`, obs-text.
                (S::ExtQuoted, _) if is_ws(b) || b >= 0x21 && b != 0x7f => S::ExtQuoted,
                (S::ExtEscape, _) if is_ws(b) || b >= 0x21 && b != 0x7f => S::ExtQuoted,
                (
                    S::ExtPreName
                    | S::ExtName
                    | S::ExtPostName
                    | S::ExtPreValue
                    | S::ExtToken
                    | S::ExtQuoted
                    | S::ExtEscape
                    | S::ExtPostValue
                    | S::ExtValueWs,
                    _,
                ) => return Err("invalid chunk extension"),
                (S::SizeLf, b'\n') => {
                    if self.size == 0 {
                        S::Trailer
                    } else {
                        S::Data
                    }
                }
                (S::SizeLf, _) => return Err("chunk size line not ended by CRLF"),
                (S::Data, _) => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.size -= n as u64;
                    self.state = if self.size == 0 { S::DataCr } else { S::Data };
                    return Ok(Decoded::Data(i..i + n));
                }
                (S::DataCr, b'\r') => S::DataLf,
                (S::DataLf, b'\n') => {
                    self.digits = 0;
                    S::Size
                }
                (S::DataCr | S::DataLf, _) => return Err("chunk data not followed by CRLF"),
                (S::Trailer, b'\r') => S::EndLf,
                (S::Trailer | S::TrailerName, _) if is_tchar(b) => S::TrailerName,
                (S::TrailerName, b':') => S::TrailerValue,
                // field-value and OWS: VCHAR, obs-text, SP, HTAB.
                (S::TrailerValue, _) if is_ws(b) || b >= 0x21 && b != 0x7f => S::TrailerValue,
                (S::TrailerValue, b'\r') => S::TrailerLf,
                (S::TrailerLf, b'\n') => S::Trailer,
                (S::Trailer | S::TrailerName | S::TrailerValue | S::TrailerLf, _) => {
                    return Err("invalid trailer line");
                }
                (S::EndLf, b'\n') => {
                    self.state = S::Done;
                    return Ok(Decoded::End(i + 1));
                }
                (S::EndLf, _) => return Err("chunked body not ended by CRLF"),
                (S::Done, _) => return Ok(Decoded::End(i)),
            };
            i += 1;
        }
        if self.state == S::Done {
            return Ok(Decoded::End(i));
        }
        Ok(Decoded::More(i))
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
        let wire = b"5;ext=1\r\nhello\r\n7 ; a ; b = \"q \\\" s\"\r\n, world\r\n\
                     A;x\r\n0123456789\r\n0\r\nX-T: 1\r\nX-Empty:\r\n\r\n";
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

    /// Everything RFC 9112 §7.1 calls invalid, at every split: refused, never read past.
    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"x\r\nab\r\n"[..],
            b"2\r\nabc\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
            // Bare LF: in the size line, after the data, in the last chunk, in trailers.
            b"2\nab\r\n0\r\n\r\n",
            b"2\r\nab\n0\r\n\r\n",
            b"2\r\nab\r\n0\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-T: 1\n\r\n",
            b"2;a\nab\r\n0\r\n\r\n",
            // Whitespace after the size not followed by an extension.
            b"2 \r\nab\r\n0\r\n\r\n",
            b"2\t\r\nab\r\n0\r\n\r\n",
            // Extensions with CR/LF or non-token bytes.
            b"2;a\rb\r\nab\r\n0\r\n\r\n",
            b"2;a b\r\nab\r\n0\r\n\r\n",
            b"2;\r\nab\r\n0\r\n\r\n",
            b"2;a=\r\nab\r\n0\r\n\r\n",
            b"2;a=(b)\r\nab\r\n0\r\n\r\n",
            b"2;a=\"b\r\nab\r\n0\r\n\r\n",
            b"2;a=\"b\x01\"\r\nab\r\n0\r\n\r\n",
            b"2;a@b\r\nab\r\n0\r\n\r\n",
            // Trailer lines that are not `name: value`.
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: empty-name\r\n\r\n",
            b"0\r\n bad: folded\r\n\r\n",
            b"0\r\nX T: 1\r\n\r\n",
            b"0\r\nX-T: a\x00b\r\n\r\n",
            b"0\r\nX-T: 1\r\r\n\r\n",
        ] {
            for step in [1, 3, 64] {
                let got = decode_all(BodyDecoder::new(Framing::Chunked), wire, step);
                assert!(
                    got.is_err_and(|e| e != "incomplete"),
                    "{:?} at step {step}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;
        use crate::h1::encode::{LAST_CHUNK, put_chunk};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any bytes at any split: data, an end or an error, never a panic, and never a
            /// range outside the input.
            #[test]
            fn any_bytes_get_an_answer(
                bytes in prop::collection::vec(any::<u8>(), 0..200),
                step in 1usize..17,
            ) {
                let _ = decode_all(BodyDecoder::new(Framing::Chunked), &bytes, step);
            }

            /// A chunked body this gateway writes (its chunks, optional extensions, optional
            /// trailers) decodes to the data it carried, at every split.
            #[test]
            fn written_bodies_round_trip(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6),
                ext in prop_oneof![Just(""), Just(";a"), Just(";a=b"), Just(" ; q=\"x y\"")],
                trailer in prop_oneof![Just(""), Just("X-T: 1\r\n"), Just("Etag: \"v\"\r\n")],
                step in 1usize..23,
            ) {
                let mut wire = Vec::new();
                for c in &chunks {
                    let mut one = Vec::new();
                    put_chunk(&mut one, c);
                    // The extension goes between the size and its CRLF.
                    let crlf = one.iter().position(|&b| b == b'\r').unwrap();
                    wire.extend_from_slice(&one[..crlf]);
                    wire.extend_from_slice(ext.as_bytes());
                    wire.extend_from_slice(&one[crlf..]);
                }
                wire.extend_from_slice(&LAST_CHUNK[..3]);
                wire.extend_from_slice(trailer.as_bytes());
                wire.extend_from_slice(b"\r\n");
                let data: Vec<u8> = chunks.concat();
                let got = decode_all(BodyDecoder::new(Framing::Chunked), &wire, step);
                prop_assert_eq!(got, Ok(data));
            }
        }
    }
}
