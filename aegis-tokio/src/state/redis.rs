//! The Redis rate-limit counter store: one EVALSHA of the policy's Lua mirror per decision, over
//! a multiplexed connection that a background task keeps alive.
//!
//! Decisions stay in aegis-policy: this module only moves bytes
//! (`CounterRequest::redis_call` → EVALSHA → `CounterRequest::redis_reply`).
//!
//! ```text
//!   Starting ──connect ok──▶ Up ◀──────────── reconnect ok (info, once) ──┐
//!      │                      │                                           │
//!      └──connect fails──▶ Down ◀── I/O error / timeout / failed PING ────┘
//!                    (warn, once)        (warn, once per outage)
//! ```
//!
//! While Down, `apply` fails at once with a [`StoreError`] (no connection to wait on) and the
//! pipeline's `on_store_error` decides; the background task retries with capped exponential
//! backoff. While Up, the task PINGs once a second so that health reflects a Redis that died
//! while no request was asking.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aegis_policy::ratelimit::REDIS_SCRIPT;
use aegis_policy::{CounterReply, CounterRequest, StoreError};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout};

/// First reconnect delay; doubled per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts: also the worst-case delay before service resumes
/// once Redis is back.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an idle, connected store checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Connecting may take longer than one command (TCP + handshake), but not forever.
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_millis(500);

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A handle on the Redis counter store. Cheap to clone; all clones share one connection.
/// The background task stops soon after the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    command_timeout: Duration,
    /// SHA1 of [`REDIS_SCRIPT`], computed once.
    sha: String,
    /// The live connection and its generation (so that an error seen on an old connection
    /// never drops a newer one). Held only to clone or swap: never across an `.await`.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    state: AtomicU8,
    /// Wakes the background task when a request saw the connection fail.
    wake: Arc<Notify>,
    /// Why the store is down (for error messages while it is) and since when (for the log line
    /// that ends the outage).
    down: Mutex<(String, Option<Instant>)>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: show only the prefix and the state.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("healthy", &(self.state.load(Ordering::Relaxed) == UP))
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// No I/O here: connects in the background; the gateway starts even while Redis is down.
    /// Fails on a malformed URL or when called outside a tokio runtime.
    pub fn new(
        url: &str,
        key_prefix: &str,
        command_timeout: Duration,
    ) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the redis store must be created inside a tokio runtime".to_owned())?;
        let inner = Arc::new(Inner {
            client,
            prefix: key_prefix.to_owned(),
            command_timeout,
            sha: redis::Script::new(REDIS_SCRIPT).get_hash().to_owned(),
            conn: Mutex::new(None),
            state: AtomicU8::new(STARTING),
            wake: Arc::new(Notify::new()),
            down: Mutex::new(("not connected yet".to_owned(), None)),
        });
        runtime.spawn(supervise(Arc::downgrade(&inner), inner.wake.clone()));
        Ok(RedisStore { inner })
    }

    /// One EVALSHA round trip of `REDIS_SCRIPT` (EVAL when Redis answers NOSCRIPT, which also
    /// caches it), bounded by `command_timeout`. Fails at once while Redis is unreachable.
    pub async fn apply(&self, req: &CounterRequest) -> Result<CounterReply, StoreError> {
        let inner = &*self.inner;
        let Some((generation, mut conn)) = inner.connection() else {
            return Err(StoreError(format!(
                "redis unavailable: {}",
                lock(&inner.down).0
            )));
        };
        let (key, args) = req.redis_call(&inner.prefix);
        let result = timeout(inner.command_timeout, async {
            match eval(&mut conn, "EVALSHA", &inner.sha, &key, &args).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    eval(&mut conn, "EVAL", REDIS_SCRIPT, &key, &args).await
                }
                other => other,
            }
        })
        .await;
        match result {
            Ok(Ok(values)) => req.redis_reply(&values),
            Ok(Err(e)) if is_connection_error(&e) => {
                let why = format!("{e}");
                inner.lost(generation, &why);
                Err(StoreError(format!("redis: {why}")))
            }
            // A script or type error: Redis is up, this request just failed.
            Ok(Err(e)) => Err(StoreError(format!("redis: {e}"))),
            Err(_) => {
                let why = format!("no reply within {}ms", inner.command_timeout.as_millis());
                // A connection that stops answering is replaced: it may be half-open.
                inner.lost(generation, &why);
                Err(StoreError(format!("redis: {why}")))
            }
        }
    }

    /// False while Redis is unreachable (for /gateway/health and metrics).
    pub fn is_healthy(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == UP
    }
}

impl Inner {
    fn connection(&self) -> Option<(u64, MultiplexedConnection)> {
        lock(&self.conn).clone()
    }

    /// A request (or the PING) saw connection `generation` fail: drop it, log the outage if it
    /// is new, and let the background task reconnect.
    fn lost(&self, generation: u64, why: &str) {
        {
            let mut conn = lock(&self.conn);
            if !matches!(&*conn, Some((g, _)) if *g == generation) {
                return; // already replaced or dropped by someone else
            }
            *conn = None;
        }
        self.mark_down(why);
        self.wake.notify_one();
    }

    fn mark_down(&self, why: &str) {
        let mut down = lock(&self.down);
        down.0 = why.to_owned();
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            down.1 = Some(Instant::now());
            tracing::warn!(
                error = why,
                "redis store unavailable; rate limits follow on_store_error until it returns"
            );
        }
    }

    fn mark_up(&self) {
        let since = lock(&self.down).1.take();
        match self.state.swap(UP, Ordering::AcqRel) {
            DOWN => tracing::info!(
                outage_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64),
                "redis store available again"
            ),
            STARTING => tracing::info!("redis store connected"),
            _ => {}
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let connect_timeout = self.command_timeout.max(CONNECT_TIMEOUT_MIN);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(connect_timeout));
        let mut conn = timeout(
            connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| format!("connect timed out after {}ms", connect_timeout.as_millis()))?
        .map_err(|e| format!("connect: {e}"))?;
        // Load the script now, so the first request after a (re)connect is one EVALSHA.
        timeout(
            connect_timeout,
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(REDIS_SCRIPT)
                .query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| "SCRIPT LOAD timed out".to_owned())?
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        Ok(conn)
    }
}

async fn eval(
    conn: &mut MultiplexedConnection,
    command: &str,
    script_or_sha: &str,
    key: &str,
    args: &[u64; 4],
) -> Result<Vec<i64>, RedisError> {
    let mut cmd = redis::cmd(command);
    cmd.arg(script_or_sha).arg(1).arg(key);
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await
}

/// Errors after which the connection cannot be trusted: replace it.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The background task: connect, reconnect with backoff, PING while idle. Holds only a weak
/// reference, so it ends once every `RedisStore` clone is gone.
async fn supervise(weak: Weak<Inner>, wake: Arc<Notify>) {
    let mut generation = 0u64;
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match inner.connection() {
            None => match inner.connect().await {
                Ok(conn) => {
                    generation += 1;
                    *lock(&inner.conn) = Some((generation, conn));
                    inner.mark_up();
                    backoff = BACKOFF_MIN;
                }
                Err(why) => {
                    inner.mark_down(&why);
                    drop(inner);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            },
            Some((g, mut conn)) => {
                let woken = wake.notified();
                let command_timeout = inner.command_timeout;
                // Do not keep the store alive while waiting.
                drop(inner);
                tokio::select! {
                    // A request dropped the connection: reconnect on the next turn.
                    _ = woken => continue,
                    _ = tokio::time::sleep(PING_EVERY) => {}
                }
                let ping = timeout(
                    command_timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                let Some(inner) = weak.upgrade() else { return };
                let failure = match ping {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) if is_connection_error(&e) => Some(format!("PING: {e}")),
                    Ok(Err(_)) => None, // e.g. LOADING: connected, Redis will answer soon
                    Err(_) => Some(format!(
                        "PING: no reply within {}ms",
                        command_timeout.as_millis()
                    )),
                };
                if let Some(why) = failure {
                    inner.lost(g, &why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_does_no_io_and_fails_fast_while_unreachable() {
        // Port 1 on loopback: nothing listens there, and nothing is ever sent.
        let store = RedisStore::new("redis://127.0.0.1:1", "t:", Duration::from_millis(200))
            .expect("a valid url");
        assert!(!store.is_healthy());
        let req = CounterRequest {
            key: aegis_policy::CounterKey {
                route: "/r".into(),
                client: aegis_policy::ClientKey::User("u".into()),
            },
            limit: aegis_policy::Limit {
                algorithm: aegis_policy::config::LimitAlgorithm::FixedWindow,
                max: 1,
                window_ms: 1000,
            },
            now: aegis_policy::UnixMillis(1_000_000),
        };
        let started = Instant::now();
        let err = store.apply(&req).await.unwrap_err();
        assert!(err.0.contains("redis unavailable"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn bad_url_is_an_error_and_needs_no_runtime() {
        let err = RedisStore::new("http://x", "p:", Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("redis url"), "{err}");
        let err =
            RedisStore::new("redis://127.0.0.1:1", "p:", Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("tokio runtime"), "{err}");
    }
}
