//! Where a target's requests go: its authority, the `Host` it is sent, its slot in the
//! workers' connection pools, and the bound on requests in flight to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aegis_policy::config::UpstreamConfig;
use http::HeaderValue;
use http::uri::Authority;
use rustls::pki_types::ServerName;
use tokio::sync::Notify;

/// Where a target's requests go.
#[derive(Debug)]
pub struct Target {
    pub authority: Authority,
    /// The `Host` header sent to it.
    pub host: HeaderValue,
    /// Its slot in the upstream connection pools.
    pub pool: Key,
    /// `[upstream] idle_timeout` and `max_idle_per_target`.
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// Requests in flight to it, bounded.
    pub slots: Arc<Slots>,
    /// `https://`: the TLS client config and the name its certificate must have (SNI for a
    /// host name; an IP address is checked against the certificate's IP addresses).
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Target {
    pub fn new(
        authority: &Authority,
        upstream: &UpstreamConfig,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Target {
        let tls = tls.map(|c| {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .expect("a validated authority's host is a DNS name or an IP address");
            (c.clone(), name)
        });
        Target {
            pool: key(authority, tls.is_some()),
            tls,
            host: HeaderValue::from_str(authority.as_str())
                .expect("a validated authority is a header value"),
            authority: authority.clone(),
            idle_timeout: upstream.idle_timeout,
            max_idle: upstream.max_idle_per_target,
            slots: Arc::new(Slots {
                in_use: AtomicUsize::new(0),
                max: upstream.max_requests_per_target,
                waiting: AtomicUsize::new(0),
                max_waiting: upstream.max_pending_per_target,
                wait: upstream.pending_timeout,
                freed: Notify::new(),
            }),
        }
    }
}

/// The requests in flight to one target, bounded across the process's workers (Envoy's
/// cluster `max_requests` and `max_pending_requests`): a request takes a slot before it is
/// sent and gives it back when its response has been read; past the bound it waits up to
/// `pending_timeout`, unless `max_pending_per_target` already wait. Taking and giving back a
/// slot are two atomic operations (no lock) unless someone waits.
#[derive(Debug)]
pub struct Slots {
    in_use: AtomicUsize,
    max: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    wait: Duration,
    freed: Notify,
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// `max_pending_per_target` requests already wait.
    QueueFull,
    /// None came free within `pending_timeout`.
    TimedOut,
}

/// A slot held; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

impl Slots {
    /// A free slot, if there is one.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) < self.max {
            return Some(Slot(self.clone()));
        }
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        None
    }

    /// A slot after waiting (when [`Slots::try_take`] found none).
    pub(super) async fn wait(self: &Arc<Self>) -> Result<Slot, NoSlot> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(NoSlot::QueueFull);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let got = loop {
            let freed = self.freed.notified();
            if let Some(s) = self.try_take() {
                break Ok(s);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break self.try_take().ok_or(NoSlot::TimedOut);
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        got
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed).min(self.max)
    }
}

/// A target authority's slot in every worker's pool: one number per authority for the life
/// of the process (reloads that keep a target keep its pooled connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub(super) usize);

/// The slot of `authority` over plain TCP or TLS, assigned the first time it is seen (an
/// `http://` and an `https://` target on one authority never share connections).
fn key(authority: &Authority, tls: bool) -> Key {
    static KEYS: Mutex<Option<HashMap<(Authority, bool), usize>>> = Mutex::new(None);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let keys = keys.get_or_insert_with(HashMap::default);
    let next = keys.len();
    Key(*keys.entry((authority.clone(), tls)).or_insert(next))
}
