//! What the gateway knows of one request as it goes: its client ([`Peer`]), its id
//! ([`RequestId`]) and the record the access log is written from ([`Exchange`]).

use std::net::{IpAddr, SocketAddr};
use tokio::time::Instant;

use aegis_policy::header;
use http::{HeaderMap, HeaderValue};

use crate::headers::X_REQUEST_ID;

/// The longest client-sent `X-Request-ID` that is kept.
const MAX_REQUEST_ID: usize = 128;

/// The client end of a connection: its address and, made once per connection, the header
/// value `X-Forwarded-For` gets.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// mTLS: the verified client certificate's subject, sent upstream.
    pub client_subject: Option<HeaderValue>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip_header =
            HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a header value");
        Peer {
            addr,
            ip_header,
            tls: false,
            client_subject: None,
        }
    }
}

/// A request's `X-Request-ID`: the client's when it is sane (1–128 visible ASCII
/// characters), else a fresh UUID v4, held inline (no allocation, copied where it goes).
#[derive(Debug, Clone)]
pub enum RequestId {
    Client(HeaderValue),
    Fresh([u8; uuid::fmt::Hyphenated::LENGTH]),
}

impl RequestId {
    pub fn of(headers: &HeaderMap) -> RequestId {
        if let Some(v) = header(headers, &X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID
                && b.iter().all(|c| (0x21..=0x7e).contains(c))
            {
                return RequestId::Client(v.clone());
            }
        }
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId::Fresh(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v.as_bytes(),
            RequestId::Fresh(b) => b,
        }
    }

    /// Visible ASCII either way.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    pub fn to_header(&self) -> HeaderValue {
        match self {
            RequestId::Client(v) => v.clone(),
            RequestId::Fresh(b) => HeaderValue::from_bytes(b).expect("a uuid is a header value"),
        }
    }
}

/// What the access log needs to know about a request, filled as it goes (the request's
/// headers move upstream, so what the log reads of them is kept here first).
#[derive(Debug)]
pub struct Exchange {
    pub started: Instant,
    pub request_id: RequestId,
    pub route: Option<usize>,
    pub target: Option<usize>,
    pub user: Option<HeaderValue>,
    pub reason: &'static str,
    pub has_authorization: bool,
    /// The request's host, as routing sees it (authority or `Host`), kept only for the JSON
    /// access log.
    pub host: Option<HeaderValue>,
    /// The rate-limit client IP, worked out only for the JSON log.
    pub client_ip: Option<IpAddr>,
    /// Why an upstream exchange failed, when the reason alone does not say (an https
    /// target whose certificate did not verify).
    pub error: Option<String>,
    /// Tries made upstream (retries included; 0: none).
    pub attempts: u32,
    /// The protocol the request asks to switch to, when it is one the gateway tunnels.
    pub upgrade: Option<HeaderValue>,
}
