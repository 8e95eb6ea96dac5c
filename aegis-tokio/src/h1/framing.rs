//! Body framing (RFC 9112 §6) and what framing needs to know of a head's headers, gathered
//! in one pass for requests and responses alike.

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderName, Version};

/// Header lines parsed per head; a head with more is refused (431).
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    Chunked,
    /// Until the peer closes (responses only).
    Close,
}

/// read: one pass, no map lookups afterwards.
#[derive(Debug, Default)]
pub(super) struct Meta {
    /// `Host` header lines seen.
    pub(super) hosts: u8,
    /// `Transfer-Encoding` was sent: its codings, and whether the last one is `chunked`.
    pub(super) te: bool,
    pub(super) te_codings: usize,
    pub(super) te_last_chunked: bool,
    /// A coding follows `chunked` (which must be applied once, last).
    pub(super) te_chunked_not_last: bool,
    /// `Content-Length`: the value all of its values agree on; `cl_bad` if they do not, or
    /// one is not a number.
    pub(super) cl: Option<u64>,
    pub(super) cl_bad: bool,
    /// `Connection` tokens.
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
}

impl Meta {
    pub(super) fn see(&mut self, name: &HeaderName, value: &[u8]) {
        if name == HOST {
            self.hosts = self.hosts.saturating_add(1);
        } else if name == CONTENT_LENGTH {
            self.content_length_value(value);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding(value);
        } else if name == CONNECTION {
            self.connection(value);
        } else if name == EXPECT {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    pub(super) fn content_length_value(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            match parse_length(part) {
                Some(n) if self.cl.is_none_or(|c| c == n) => self.cl = Some(n),
                _ => self.cl_bad = true,
            }
        }
    }

    pub(super) fn transfer_encoding(&mut self, value: &[u8]) {
        self.te = true;
        for t in tokens(value) {
            // Something follows `chunked`: chunked applied twice, or not last (RFC 9112 §6.1).
            self.te_chunked_not_last |= self.te_last_chunked;
            self.te_codings += 1;
            self.te_last_chunked = t.eq_ignore_ascii_case(b"chunked");
        }
    }

    pub(super) fn connection(&mut self, value: &[u8]) {
        for t in tokens(value) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// Whether the sender wants the connection kept after this message.
    pub(super) fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }

    /// All `Content-Length` values agree: that value; none: `None`.
    pub(super) fn content_length(&self) -> Result<Option<u64>, ()> {
        if self.cl_bad { Err(()) } else { Ok(self.cl) }
    }
}

/// The non-empty comma-separated tokens of a header value.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A decimal length of at most 19 digits.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}
