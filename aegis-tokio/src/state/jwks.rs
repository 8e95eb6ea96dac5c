//! The JWKS of auth providers with a `jwks_url`: one background task per provider fetches the
//! document when the policy's [`Jwks`] says so, and publishes the keys for requests to read
//! without a lock. A request whose token names an unknown `kid` asks the policy whether to
//! refetch, and if a fetch runs, waits for it and is checked again.
//!
//! ```text
//!   fetch task (control thread)                     request (any worker)
//!   loop: poll_fetch(now) ─ Some ─▶ GET jwks_url    keys(now) ─▶ verify ─ unknown kid ─▶
//!         ├ on_fetched ─▶ publish keys, bump gen    on_unknown_kid(now): Started → wake task;
//!         └ None ─▶ sleep until poll_timeout/wake   Started|InFlight → wait gen (≤ timeout)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aegis_policy::jwks::{self, FetchOutcome, FetchReason, Jwks, JwksConfig, JwksStatus, Refetch};
use aegis_policy::{KeySet, KeySource, Nanos, ProviderId};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::time::Clock;

/// The largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

/// One provider's keys from its JWKS URL: the policy's state machine behind a short lock, the
/// usable keys published for lock-free reads, and the signals between requests and the task.
#[derive(Debug)]
pub struct JwksHandle {
    /// For logs and metrics: `auth` or `auth_providers.NAME`.
    pub section: String,
    pub config: JwksConfig,
    state: Mutex<Jwks>,
    keys: ArcSwapOption<KeySet>,
    /// Monotonic nanoseconds until which `keys` may be used.
    usable_until: AtomicU64,
    /// Bumped after every fetch, good or bad: what waiting requests watch.
    fetched: watch::Sender<u64>,
    /// Shared with the task, which sleeps on it without holding the handle (dropping the
    /// handle is what stops the task).
    wake: Arc<Notify>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl Drop for JwksHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(m: &Mutex<Jwks>) -> std::sync::MutexGuard<'_, Jwks> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JwksHandle {
    pub fn new(section: String, config: JwksConfig, now: Nanos) -> Arc<JwksHandle> {
        Arc::new(JwksHandle {
            section,
            state: Mutex::new(Jwks::new(config.clone(), now)),
            config,
            keys: ArcSwapOption::empty(),
            usable_until: AtomicU64::new(0),
            fetched: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        })
    }

    /// The keys usable at `now`.
    pub fn keys(&self, now: Nanos) -> Option<Arc<KeySet>> {
        if now.0 >= self.usable_until.load(Relaxed) {
            return None;
        }
        self.keys.load_full()
    }

    pub fn status(&self, now: Nanos) -> JwksStatus {
        lock(&self.state).status(now)
    }

    /// Starts the fetch task on the current runtime (once; later calls do nothing).
    pub fn start(self: &Arc<Self>, clock: Clock, tls: Arc<ClientConfig>) {
        if self.started.swap(true, Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = run(weak, clock, tls) => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Waits until the first fetch has given keys, for at most `within`. Whether it did.
    pub async fn wait_ready(&self, clock: &Clock, within: Duration) -> bool {
        let mut rx = self.fetched.subscribe();
        let ready = async {
            loop {
                if self.keys(clock.now().mono).is_some() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(within, ready).await.is_ok()
    }

    /// A token named a `kid` none of the keys has: whether the keys were refetched since (the
    /// request is then checked again). Waits for the fetch, at most the fetch timeout.
    pub async fn refetch_for_unknown_kid(&self, now: Nanos) -> bool {
        let mut rx = self.fetched.subscribe();
        let decision = lock(&self.state).on_unknown_kid(now);
        match decision {
            Refetch::Started => self.wake.notify_one(),
            Refetch::InFlight => {}
            Refetch::Refused { .. } => return false,
        }
        let wait = self.config.timeout + Duration::from_millis(100);
        matches!(tokio::time::timeout(wait, rx.changed()).await, Ok(Ok(())))
    }

    fn publish(&self, j: &Jwks, now: Nanos) {
        self.keys.store(j.keys(now).cloned());
        self.usable_until
            .store(j.usable_until().map_or(0, |t| t.0), Relaxed);
    }
}

/// The fetch loop of one provider; ends when its handle is dropped.
async fn run(weak: std::sync::Weak<JwksHandle>, clock: Clock, tls: Arc<ClientConfig>) {
    loop {
        let Some(h) = weak.upgrade() else { return };
        let now = clock.now().mono;
        let due = lock(&h.state).poll_fetch(now);
        if let Some(reason) = due {
            let result = fetch(&h.config, &tls).await;
            let now = clock.now().mono;
            let outcome = {
                let mut j = lock(&h.state);
                let outcome = j.on_fetched(now, result);
                h.publish(&j, now);
                outcome
            };
            log(&h, reason, outcome);
            h.fetched.send_modify(|g| *g += 1);
            continue;
        }
        let next = lock(&h.state).poll_timeout();
        let sleep = next.map_or(Duration::from_secs(3600), |t| t.since(now));
        let (stop, wake) = (h.stop.clone(), h.wake.clone());
        // Only a weak reference while asleep: a runtime that no longer uses this provider
        // drops the handle, which cancels `stop`.
        drop(h);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = wake.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// A failure is logged once, when fetches start failing; the recovery once, when they stop.
fn log(h: &JwksHandle, reason: FetchReason, outcome: FetchOutcome) {
    let url = &h.config.url;
    let section = &h.section;
    match outcome {
        FetchOutcome::Updated {
            keys, recovered, ..
        } => {
            if recovered {
                tracing::warn!("{section}: JWKS {url} fetched again ({keys} keys): recovered");
            } else {
                tracing::info!(
                    "{section}: JWKS {url}: {keys} keys ({} fetch)",
                    reason.label()
                );
            }
        }
        FetchOutcome::FirstFailure { error, .. } => {
            let serving = if h.keys.load().is_some() {
                "the last good keys keep serving"
            } else {
                "no keys yet: its routes answer 503"
            };
            tracing::error!("{section}: JWKS {url} fetch failed: {error}; {serving}; retrying");
        }
        FetchOutcome::StillFailing { .. } => {}
    }
}

/// GETs the JWKS document and parses it.
async fn fetch(cfg: &JwksConfig, tls: &Arc<ClientConfig>) -> Result<jwks::Fetched, String> {
    let (body, cache_control) = tokio::time::timeout(cfg.timeout, get(&cfg.url, tls))
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout))??;
    let max_age = cache_control.as_deref().and_then(jwks::max_age);
    jwks::parse_jwks(&body, max_age)
}

/// One HTTP/1.1 GET on a fresh connection: the body (at most [`MAX_DOCUMENT`]) and the
/// `Cache-Control` value.
async fn get(url: &str, tls: &Arc<ClientConfig>) -> Result<(Bytes, Option<String>), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().to_owned();
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    if https {
        let name = ServerName::try_from(bare.clone()).map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        exchange(stream, &authority, &path).await
    } else {
        exchange(tcp, &authority, &path).await
    }
}

async fn exchange<S>(io: S, authority: &str, path: &str) -> Result<(Bytes, Option<String>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "aegis")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let cache_control = resp
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("reading the document: {e}"))?
        .to_bytes();
    Ok((body, Some(cache_control).filter(|c| !c.is_empty())))
}

/// The runtime's fetched keys, as the policy reads them (indexed by provider).
#[derive(Debug)]
pub struct FetchedKeys<'a> {
    pub handles: &'a [Option<Arc<JwksHandle>>],
    pub now: Nanos,
}

impl KeySource for FetchedKeys<'_> {
    fn key_set(&self, provider: ProviderId) -> Option<Arc<KeySet>> {
        self.handles.get(provider.0)?.as_ref()?.keys(self.now)
    }
}
