//! The upstream connection pool: HTTP/1.1 keep-alive connections per target authority, one
//! pool per worker thread (no locks; a connection is only ever used by the thread that made
//! it).
//!
//! A connection goes back to the pool when its response is read to the end and is closed when
//! it has been idle for `[upstream] idle_timeout` (below the upstreams' own keep-alive
//! timeouts, so that the gateway, not the upstream, ends it), when the pool of its target
//! already holds `max_idle_per_target`, or when its target left the config. A worker's reaper
//! ([`sweep`]) watches the idle ones: one the upstream closed is dropped at once (no
//! CLOSE_WAIT left behind), expired ones as their time comes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use super::stream::Stream;
use super::target::Key;
use crate::h1::{self, BodyDecoder, ReadBuf};
use crate::time::{Stall, Timer};

/// The largest response head accepted from an upstream.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One upstream connection, its buffers, its timer and the state of the response it is
/// reading. Boxed: it is moved in and out of the pool and through every response body, a
/// pointer is cheaper to move (and the response's state rides along without being copied).
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: Stream,
    pub(super) rbuf: ReadBuf,
    /// Pooled and unused until then: closed (set when pooled).
    pub(super) idle_until: Instant,
    /// `[upstream] idle_timeout` and `max_idle_per_target` of its target.
    pub(super) idle_timeout: Duration,
    pub(super) max_idle: usize,
    /// The target's in-flight slot, held from the request until its response is read.
    pub(super) permit: Option<super::target::Slot>,
    pub(super) timer: Timer,
    /// The current response's headers (their buffer kept for the next response).
    pub(super) headers: h1::RawHeaders,
    pub(super) body: BodyState,
}

/// Where the current response's body is.
#[derive(Debug)]
pub(super) struct BodyState {
    pub(super) decoder: BodyDecoder,
    /// The connection can carry another exchange after this body.
    pub(super) reusable: bool,
    /// No body bytes for this long fails the body (the route's timeout).
    pub(super) stall: Duration,
    /// The deadline while no body bytes come.
    pub(super) stalled: Stall,
}

impl Conn {
    /// A fresh connection over `io`, with no response read yet.
    pub(super) fn new(io: Stream, idle_timeout: Duration, max_idle: usize) -> Box<Conn> {
        let now = Instant::now();
        Box::new(Conn {
            io,
            rbuf: ReadBuf::new(),
            idle_until: now + idle_timeout,
            idle_timeout,
            max_idle,
            permit: None,
            timer: Timer::default(),
            headers: h1::RawHeaders::default(),
            body: BodyState {
                decoder: BodyDecoder::Length(0),
                reusable: false,
                stall: Duration::ZERO,
                stalled: Stall::default(),
            },
        })
    }

    /// Still usable: nothing to read (the upstream has not closed it nor sent stray bytes).
    pub(super) fn is_quiet(&mut self, cx: &mut Context<'_>) -> bool {
        self.rbuf.is_empty()
            && self
                .rbuf
                .poll_fill(cx, &mut self.io, MAX_RESPONSE_HEAD)
                .is_pending()
    }
}

thread_local! {
    /// Idle connections by [`Key`].
    static POOL: RefCell<Vec<VecDeque<Box<Conn>>>> = const { RefCell::new(Vec::new()) };
}

/// Takes the most recently used live idle connection of slot `key`.
pub(super) fn checkout(key: Key, now: Instant, cx: &mut Context<'_>) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(key.0)?;
        while let Some(mut c) = list.pop_back() {
            if c.idle_until <= now {
                // Idle times are set at release, in order: the rest are older still.
                list.clear();
                return None;
            }
            if c.is_quiet(cx) {
                return Some(c);
            }
        }
        None
    })
}

/// Puts a connection whose exchange is complete back in the pool, idle from now (a response
/// that took long does not make its connection look old), its in-flight slot given back.
pub(super) fn release(key: Key, mut conn: Box<Conn>) {
    conn.permit = None;
    conn.rbuf.park();
    let now = Instant::now();
    conn.idle_until = now + conn.idle_timeout;
    // `try_with`: a body dropped while its thread shuts down (the pool already gone) just
    // closes its connection.
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.len() <= key.0 {
            p.resize_with(key.0 + 1, VecDeque::new);
        }
        let list = &mut p[key.0];
        while list.front().is_some_and(|c| c.idle_until <= now) {
            list.pop_front();
        }
        if list.len() < conn.max_idle {
            list.push_back(conn);
        }
    });
}

/// The reaper's pass over this worker's idle connections: drops those of targets no longer
/// `live`, those idle past their time, and those the upstream closed or sent bytes on; the
/// rest are left registered with `cx`, so that an upstream closing one wakes the reaper.
/// Returns how many idle connections remain.
pub fn sweep(cx: &mut Context<'_>, live: impl Fn(Key) -> bool) -> usize {
    let now = Instant::now();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let mut left = 0;
        for (i, list) in p.iter_mut().enumerate() {
            if !live(Key(i)) {
                list.clear();
                continue;
            }
            list.retain_mut(|c| c.idle_until > now && c.is_quiet(cx));
            left += list.len();
        }
        left
    })
}
