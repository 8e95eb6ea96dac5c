//! The Redis rate-limit counter store: one Redis (`redis://`, `rediss://`, a Unix socket), a
//! primary found through Sentinel (`redis+sentinel://`), or Redis Cluster. Decisions stay in
//! aegis-policy: this module moves bytes (`CounterRequest::redis_call` → EVALSHA of
//! `REDIS_SCRIPT` → `CounterRequest::redis_reply`) and keeps three exactness-preserving
//! shortcuts, all on the worker that serves the request:
//!
//! * **A connection per worker.** Each worker thread makes its own connection lazily, on its
//!   own runtime (a [`Lane`]), so a limited request never crosses threads. Health stays
//!   process-wide: one supervisor on the thread that built the store.
//! * **Coalescing.** Concurrent requests of one counter on one worker share one Redis call:
//!   while a call for the key is in flight, later requests queue; the queue goes out as one
//!   call of `n` (`step_batch`: the script admits the first `max - count` of them atomically)
//!   and each request gets its place in line (`Batch::reply`). Different keys' calls share the
//!   connection's writes (redis-rs pipelines whatever is queued when it flushes).
//! * **A negative cache.** A key the store said is over its limit is refused locally until its
//!   window ends (`NegativeCache`, sound because counts and TATs only grow).
//!
//! ```text
//!   Starting ──supervisor connects──▶ Up ◀──────── reconnect ok (info, once) ──┐
//!      │                               │                                        │
//!      └──connect fails──▶ Down ◀── worker I/O error / timeout / failed PING ───┘
//!                     (warn, once)     (warn, once per outage; epoch + 1)
//! ```
//!
//! While not Up, `apply` fails at once with a [`StoreError`] (nothing to wait on) and the
//! pipeline's `on_store_error` decides; the supervisor reconnects with capped exponential
//! backoff and, while Up, checks once a second so that health reflects a Redis that died while
//! no request was asking. One Redis is checked with a PING. A cluster is checked node by node:
//! every master that `CLUSTER SLOTS` names must answer `CLUSTER INFO` with `cluster_state:ok`
//! on this connection (a cluster-wide PING would not do: redis-rs sends it only to the masters
//! it is connected to, so a dead master's slots would fail every request while health said
//! Up). A new connection passes the same check before the store is Up. Every outage moves the
//! *epoch*: a worker's connection made in an earlier epoch is replaced before its next use, so
//! one outage is logged once, not once per worker connection that discovers it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aegis_policy::config::{RedisTopology, SentinelUrl, StoreConfig};
use aegis_policy::ratelimit::REDIS_SCRIPT;
use aegis_policy::{
    Batch, CounterKey, CounterReply, CounterRequest, Limit, NegativeCache, StoreError, UnixMillis,
};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, ServerErrorKind, TlsCertificates,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout};

/// First reconnect delay; doubled per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts: also the worst-case delay before service resumes
/// once Redis is back.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often an idle, connected store checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Connecting may take longer than one command (TCP + TLS + handshake), but not forever.
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_millis(500);
/// Keys remembered as over their limit, per worker (about 100 bytes each).
const NEGATIVE_CACHE_KEYS: usize = 10_000;

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A handle on the Redis counter store. Cheap to clone; clones share the supervisor and the
/// workers' connections. The supervisor stops soon after the last clone is dropped, and each
/// worker's connection with it.
#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// How to reach Redis. Built once per store: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Node(Client),
    Cluster(ClusterClient),
    Sentinel(SentinelUrl),
}

/// One live connection, of whichever kind. Clones share it.
#[derive(Clone)]
enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Conn::Node(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

struct Inner {
    /// Tells this store's worker lanes from those of a store an earlier config built.
    id: u64,
    target: Target,
    prefix: String,
    command_timeout: Duration,
    /// SHA1 of [`REDIS_SCRIPT`], computed once.
    sha: String,
    state: AtomicU8,
    /// Moves on every transition to Down: connections made before it are not used again.
    epoch: AtomicU64,
    /// Wakes the supervisor when a worker saw its connection fail.
    wake: Arc<Notify>,
    /// Why the store is down (for error messages while it is) and since when (for the log line
    /// that ends the outage).
    down: Mutex<(String, Option<Instant>)>,
    /// Redis calls made, and requests answered without one (for the metrics).
    calls: AtomicU64,
    coalesced: AtomicU64,
    cached_refusals: AtomicU64,
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

/// What the store did without Redis, since it was made (for `/gateway/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisCounts {
    /// Redis calls (each decides one key's batch of requests).
    pub calls: u64,
    /// Requests decided by another request's call (coalesced into it).
    pub coalesced: u64,
    /// Requests refused from the negative cache, with no call.
    pub cached_refusals: u64,
}

impl RedisStore {
    /// One Redis at `url` (no cluster, no CA): for tests and tools.
    pub fn new(
        url: &str,
        key_prefix: &str,
        command_timeout: Duration,
    ) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        RedisStore::start(Target::Node(client), key_prefix, command_timeout)
    }

    /// The store `[rate_limit]` describes. No I/O here: it connects in the background, and the
    /// gateway starts even while Redis is down. Fails on a URL or certificate redis-rs refuses,
    /// or when called outside a tokio runtime.
    pub fn from_config(c: &StoreConfig) -> Result<RedisStore, String> {
        // rediss:// runs on rustls with ring. Installed as the process default (a provider
        // installed before is kept), so that redis-rs's `ClientConfig::builder()` finds one
        // whatever rustls features other crates turn on.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = c.redis_tls_ca.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem.clone().into_bytes()),
        });
        let target = match c.redis_topology() {
            RedisTopology::Node(url) => Target::Node(
                match certs {
                    Some(certs) => Client::build_with_tls(url.as_str(), certs),
                    None => Client::open(url.as_str()),
                }
                .map_err(|e| format!("rate_limit.redis_url: {e}"))?,
            ),
            RedisTopology::Cluster(nodes) => {
                let connect = c.command_timeout.max(CONNECT_TIMEOUT_MIN);
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(connect)
                    .response_timeout(connect);
                if let Some(certs) = certs {
                    b = b.certs(certs);
                }
                Target::Cluster(
                    b.build()
                        .map_err(|e| format!("rate_limit.redis_cluster_nodes: {e}"))?,
                )
            }
            RedisTopology::Sentinel(s) => Target::Sentinel(s),
        };
        RedisStore::start(target, &c.key_prefix, c.command_timeout)
    }

    fn start(
        target: Target,
        key_prefix: &str,
        command_timeout: Duration,
    ) -> Result<RedisStore, String> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the redis store must be created inside a tokio runtime".to_owned())?;
        let inner = Arc::new(Inner {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            target,
            prefix: key_prefix.to_owned(),
            command_timeout,
            sha: redis::Script::new(REDIS_SCRIPT).get_hash().to_owned(),
            state: AtomicU8::new(STARTING),
            epoch: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            down: Mutex::new(("not connected yet".to_owned(), None)),
            calls: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            cached_refusals: AtomicU64::new(0),
        });
        runtime.spawn(supervise(Arc::downgrade(&inner), inner.wake.clone()));
        Ok(RedisStore { inner })
    }

    /// Decides `req` on the calling worker's connection: from the negative cache, or in the
    /// next call for its key (alone, or coalesced with the key's other waiting requests),
    /// bounded by `command_timeout`. Fails at once while Redis is unreachable.
    pub async fn apply(&self, req: &CounterRequest) -> Result<CounterReply, StoreError> {
        let inner = &self.inner;
        let lane = Lane::of(inner);
        if let Some(reply) = lock(&lane.negative).check(&req.key, &req.limit, req.now) {
            inner.cached_refusals.fetch_add(1, Ordering::Relaxed);
            return Ok(reply);
        }
        if !inner.is_up() {
            return Err(inner.unavailable());
        }
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { now: req.now, tx };
        let key = BatchKey::of(req);
        let pump = {
            let mut queues = lock(&lane.queues);
            match queues.get_mut(&key) {
                Some(waiting) => {
                    waiting.push(waiter);
                    None
                }
                None => {
                    queues.insert(key.clone(), vec![waiter]);
                    Some(key)
                }
            }
        };
        if let Some(key) = pump {
            // On this worker's runtime: the key's calls run on the thread that serves it.
            tokio::spawn(pump_key(lane, key));
        }
        match timeout(inner.command_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError("redis: the store was dropped".to_owned())),
            Err(_) => Err(StoreError(format!(
                "redis: no reply within {}ms",
                inner.command_timeout.as_millis()
            ))),
        }
    }

    /// False while Redis is unreachable (for /gateway/health and metrics).
    pub fn is_healthy(&self) -> bool {
        self.inner.is_up()
    }

    /// What the store did since it was made.
    pub fn counts(&self) -> RedisCounts {
        RedisCounts {
            calls: self.inner.calls.load(Ordering::Relaxed),
            coalesced: self.inner.coalesced.load(Ordering::Relaxed),
            cached_refusals: self.inner.cached_refusals.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    fn unavailable(&self) -> StoreError {
        StoreError(format!("redis unavailable: {}", lock(&self.down).0))
    }

    /// A connection of `epoch` failed (a worker's, or the supervisor's): if no newer outage was
    /// noticed since, this is a new one: log it, and let the supervisor reconnect.
    fn lost(&self, epoch: u64, why: &str) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return; // an outage already noticed; the connection is being replaced
        }
        self.mark_down(why);
        self.wake.notify_one();
    }

    fn mark_down(&self, why: &str) {
        let mut down = lock(&self.down);
        down.0 = why.to_owned();
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            self.epoch.fetch_add(1, Ordering::AcqRel);
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

    fn connect_timeout(&self) -> Duration {
        self.command_timeout.max(CONNECT_TIMEOUT_MIN)
    }

    /// A new connection (bounded by the connect timeout). The supervisor's also loads the
    /// script (on every node of a cluster), so that requests after a (re)connect are one
    /// EVALSHA; a worker's relies on that, and on EVAL when a node answers NOSCRIPT.
    async fn connect(&self, load_script: bool) -> Result<(Conn, Option<String>), String> {
        let connect_timeout = self.connect_timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(connect_timeout));
        let made = async {
            match &self.target {
                Target::Node(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(|c| (Conn::Node(c), None))
                    .map_err(|e| format!("connect: {e}")),
                Target::Cluster(client) => client
                    .get_async_connection()
                    .await
                    .map(|c| (Conn::Cluster(c), None))
                    .map_err(|e| format!("connect to the cluster: {e}")),
                Target::Sentinel(s) => {
                    let client = sentinel_primary(s).await?;
                    let addr = address(client.get_connection_info().addr());
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(|c| (Conn::Node(c), Some(addr)))
                        .map_err(|e| format!("connect to the primary {:?}: {e}", s.primary))
                }
            }
        };
        let (mut conn, primary) = timeout(connect_timeout, made)
            .await
            .map_err(|_| format!("connect timed out after {}ms", connect_timeout.as_millis()))??;
        if load_script {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(REDIS_SCRIPT);
            timeout(connect_timeout, conn.query::<redis::Value>(&load))
                .await
                .map_err(|_| "SCRIPT LOAD timed out".to_owned())?
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        }
        Ok((conn, primary))
    }
}

/// `host:port` of a TCP address (what Sentinel answers).
fn address(addr: &redis::ConnectionAddr) -> String {
    match addr {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => format!("{other}"),
    }
}

/// The primary's `host:port` as the first Sentinel that answers names it now.
async fn sentinel_names(s: &SentinelUrl, within: Duration) -> Option<String> {
    for h in &s.sentinels {
        let ask = async {
            let client = Client::open(format!("redis://{h}")).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let (host, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&s.primary)
                .query_async(&mut conn)
                .await
                .ok()?;
            Some(format!("{host}:{port}"))
        };
        if let Ok(Some(addr)) = timeout(within, ask).await {
            return Some(addr);
        }
    }
    None
}

/// Asks the Sentinels for the primary (redis-rs checks its ROLE before answering).
async fn sentinel_primary(s: &SentinelUrl) -> Result<Client, String> {
    use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
    let urls: Vec<String> = s.sentinels.iter().map(|h| format!("redis://{h}")).collect();
    let mut sentinel = Sentinel::build(urls).map_err(|e| format!("sentinel: {e}"))?;
    let mut info = redis::RedisConnectionInfo::default().set_db(s.db);
    if let Some(u) = &s.username {
        info = info.set_username(u);
    }
    if let Some(p) = &s.password {
        info = info.set_password(p);
    }
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    sentinel
        .async_master_for(&s.primary, Some(&node))
        .await
        .map_err(|e| format!("sentinel: no primary {:?}: {e}", s.primary))
}

/// Errors after which the connection cannot be trusted: replace it. `READONLY` means a
/// Sentinel failover demoted the server this connection reaches: ask again for the primary.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Errors of a cluster whose slots are not all served (a master down, not yet replaced).
fn is_cluster_gap(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown)
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// A worker's lane: its connection, its queues of waiting requests per key, its negative cache.

thread_local! {
    /// The lanes of the stores this thread has served (one, unless a reload replaced it).
    static LANES: std::cell::RefCell<Vec<Arc<Lane>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One worker thread's side of a store. Its locks are taken by that thread's tasks only
/// (uncontended) and never across an `.await`.
struct Lane {
    store: u64,
    inner: Weak<Inner>,
    /// The connection and the epoch it was made in.
    conn: Mutex<Option<(u64, Conn)>>,
    /// One connect at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Requests waiting for their key's next call. A key is present while its pump runs.
    queues: Mutex<HashMap<BatchKey, Vec<Waiter>, RandomState>>,
    negative: Mutex<NegativeCache<RandomState>>,
}

/// One counter's queue: a fixed window's requests are only ever batched with those of the
/// same window (one Redis key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BatchKey {
    key: CounterKey,
    limit: Limit,
    window: u64,
}

impl BatchKey {
    fn of(req: &CounterRequest) -> BatchKey {
        let window = match req.limit.algorithm {
            aegis_policy::config::LimitAlgorithm::FixedWindow => req.limit.window_start(req.now),
            aegis_policy::config::LimitAlgorithm::Gcra => 0,
        };
        BatchKey {
            key: req.key.clone(),
            limit: req.limit,
            window,
        }
    }
}

struct Waiter {
    now: UnixMillis,
    tx: oneshot::Sender<Result<CounterReply, StoreError>>,
}

impl Lane {
    /// This thread's lane of `inner`, made on first use (and the lanes of dropped stores let go).
    fn of(inner: &Arc<Inner>) -> Arc<Lane> {
        LANES.with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            if let Some(l) = lanes.iter().find(|l| l.store == inner.id) {
                return l.clone();
            }
            lanes.retain(|l| l.inner.strong_count() > 0);
            let lane = Arc::new(Lane {
                store: inner.id,
                inner: Arc::downgrade(inner),
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                queues: Mutex::new(HashMap::default()),
                negative: Mutex::new(NegativeCache::with_hasher(
                    NEGATIVE_CACHE_KEYS,
                    RandomState::new(),
                )),
            });
            lanes.push(lane.clone());
            lane
        })
    }

    /// This lane's connection of the current epoch, made now if it has none.
    async fn connection(&self, inner: &Inner) -> Result<(u64, Conn), StoreError> {
        let current = || {
            let epoch = inner.epoch.load(Ordering::Acquire);
            match &*lock(&self.conn) {
                Some((e, c)) if *e == epoch => Some((epoch, c.clone())),
                _ => None,
            }
        };
        if let Some(c) = current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = current() {
            return Ok(c);
        }
        let epoch = inner.epoch.load(Ordering::Acquire);
        match inner.connect(false).await {
            Ok((conn, _)) => {
                *lock(&self.conn) = Some((epoch, conn.clone()));
                Ok((epoch, conn))
            }
            Err(why) => {
                inner.lost(epoch, &why);
                Err(StoreError(format!("redis: {why}")))
            }
        }
    }

    /// One call for `n` requests like `req`: EVALSHA (EVAL when the node answers NOSCRIPT,
    /// which also caches it there), bounded by `command_timeout`.
    async fn call(&self, inner: &Inner, req: &CounterRequest, n: u64) -> Result<Batch, StoreError> {
        if !inner.is_up() {
            return Err(inner.unavailable());
        }
        let (epoch, mut conn) = self.connection(inner).await?;
        let (key, args) = req.redis_call(&inner.prefix, n);
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let result = timeout(inner.command_timeout, async {
            match conn
                .query::<Vec<i64>>(&eval("EVALSHA", &inner.sha, &key, &args))
                .await
            {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    conn.query::<Vec<i64>>(&eval("EVAL", REDIS_SCRIPT, &key, &args))
                        .await
                }
                other => other,
            }
        })
        .await;
        let why = match result {
            Ok(Ok(values)) => return req.redis_reply(&values, n),
            Ok(Err(e)) if is_connection_error(&e) => format!("{e}"),
            // A cluster missing a master: the supervisor checks every master now, rather
            // than at its next round.
            Ok(Err(e)) if is_cluster_gap(&e) => {
                inner.wake.notify_one();
                return Err(StoreError(format!("redis: {e}")));
            }
            // A script or type error: Redis is up, this call just failed.
            Ok(Err(e)) => return Err(StoreError(format!("redis: {e}"))),
            // A connection that stops answering is replaced: it may be half-open.
            Err(_) => format!("no reply within {}ms", inner.command_timeout.as_millis()),
        };
        {
            let mut conn = lock(&self.conn);
            if matches!(&*conn, Some((e, _)) if *e == epoch) {
                *conn = None;
            }
        }
        inner.lost(epoch, &why);
        Err(StoreError(format!("redis: {why}")))
    }
}

fn eval(command: &str, script_or_sha: &str, key: &str, args: &[u64; 5]) -> Cmd {
    let mut cmd = redis::cmd(command);
    cmd.arg(script_or_sha).arg(1).arg(key);
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// Sends one key's queued requests, a batch per call, until none is left waiting. Requests
/// that gave up (timed out, or their client left) before their batch went out do not count.
async fn pump_key(lane: Arc<Lane>, key: BatchKey) {
    loop {
        let batch: Vec<Waiter> = {
            let mut queues = lock(&lane.queues);
            let Some(waiting) = queues.get_mut(&key) else {
                return;
            };
            waiting.retain(|w| !w.tx.is_closed());
            if waiting.is_empty() {
                queues.remove(&key);
                return;
            }
            std::mem::take(waiting)
        };
        let n = batch.len() as u64;
        // Decided at the latest of their arrival times: none is decided before it arrived.
        let now = batch.iter().map(|w| w.now).max().unwrap_or(UnixMillis(0));
        let req = CounterRequest {
            key: key.key.clone(),
            limit: key.limit,
            now,
        };
        let answer = match lane.inner.upgrade() {
            Some(inner) => {
                inner.coalesced.fetch_add(n - 1, Ordering::Relaxed);
                lane.call(&inner, &req, n).await
            }
            None => Err(StoreError("redis: the store was replaced".to_owned())),
        };
        match answer {
            Ok(b) => {
                lock(&lane.negative).record(&req.key, &req.limit, &b.state(), now);
                for (i, w) in batch.into_iter().enumerate() {
                    let _ = w.tx.send(Ok(b.reply(i as u64)));
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The supervisor: health for the whole process.

/// Connect, reconnect with backoff, PING while idle, on its own connection. Holds only a weak
/// reference, so it ends once every `RedisStore` clone is gone.
async fn supervise(weak: Weak<Inner>, wake: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    // The connection, the epoch it was made in, and (Sentinel) the primary it reaches.
    let mut conn: Option<(u64, Conn, Option<String>)> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match conn.take() {
            None => {
                let epoch = inner.epoch.load(Ordering::Acquire);
                // A new cluster connection leaves out the masters it could not reach: the
                // store is Up only once the check passes on it too.
                let made = match inner.connect(true).await {
                    Ok((mut c, primary)) => match check(&mut c, inner.command_timeout).await {
                        None => Ok((c, primary)),
                        Some(why) => Err(why),
                    },
                    Err(why) => Err(why),
                };
                match made {
                    Ok((c, primary)) => {
                        conn = Some((epoch, c, primary));
                        inner.mark_up();
                        backoff = BACKOFF_MIN;
                    }
                    Err(why) => {
                        inner.mark_down(&why);
                        drop(inner);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            Some((epoch, mut c, primary)) => {
                let woken = wake.notified();
                let command_timeout = inner.command_timeout;
                // Do not keep the store alive while waiting.
                drop(inner);
                tokio::select! {
                    // A worker saw a failure: check with a fresh connection.
                    _ = woken => continue,
                    _ = tokio::time::sleep(PING_EVERY) => {}
                }
                let mut failure = check(&mut c, command_timeout).await;
                let Some(inner) = weak.upgrade() else { return };
                // A Sentinel failover whose old primary lives on (demoted later, or never, if
                // it is cut off) would leave every connection writing to it: move all of
                // them as soon as the Sentinels name another primary.
                if let (None, Target::Sentinel(s), Some(was)) = (&failure, &inner.target, &primary)
                    && let Some(now) = sentinel_names(s, command_timeout).await
                    && &now != was
                {
                    failure = Some(format!("sentinel names a new primary, {now} (was {was})"));
                }
                match failure {
                    Some(why) => inner.lost(epoch, &why),
                    None if inner.epoch.load(Ordering::Acquire) == epoch => {
                        conn = Some((epoch, c, primary));
                    }
                    // Down since this connection was made (a worker's failure): reconnect.
                    None => {}
                }
            }
        }
    }
}

/// Why the store should count as down, judged on the supervisor's connection; `None` if it
/// answers. One Redis: a PING. A cluster: every master in `CLUSTER SLOTS` must answer
/// `CLUSTER INFO` with `cluster_state:ok`, each on its own connection (see the module doc).
async fn check(conn: &mut Conn, within: Duration) -> Option<String> {
    let late = || format!("no reply within {}ms", within.as_millis());
    let c = match conn {
        Conn::Node(_) => {
            return match timeout(within, conn.query::<redis::Value>(&redis::cmd("PING"))).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) if is_connection_error(&e) => Some(format!("PING: {e}")),
                // e.g. LOADING: connected, Redis will answer soon
                Ok(Err(_)) => None,
                Err(_) => Some(format!("PING: {}", late())),
            };
        }
        Conn::Cluster(c) => c,
    };
    let slots = match timeout(within, redis::cmd("CLUSTER").arg("SLOTS").query_async(c)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Some(format!("CLUSTER SLOTS: {e}")),
        Err(_) => return Some(format!("CLUSTER SLOTS: {}", late())),
    };
    let masters = slot_masters(&slots);
    if masters.is_empty() {
        return Some("CLUSTER SLOTS names no master".to_owned());
    }
    for (host, port) in masters {
        let node = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port,
            },
        );
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        let why = match timeout(within, c.route_command(info, node)).await {
            Ok(Ok(v)) => match redis::from_redis_value::<String>(v) {
                Ok(text) if text.contains("cluster_state:ok") => continue,
                Ok(_) => "cluster_state is not ok".to_owned(),
                Err(e) => format!("CLUSTER INFO: {e}"),
            },
            Ok(Err(e)) => format!("CLUSTER INFO: {e}"),
            Err(_) => format!("CLUSTER INFO: {}", late()),
        };
        return Some(format!("cluster master {host}:{port}: {why}"));
    }
    None
}

/// The distinct masters (host, port) of a `CLUSTER SLOTS` reply, in order. A master announced
/// without a usable host (empty, `?`, a wildcard) is left out: it cannot be addressed here.
fn slot_masters(reply: &redis::Value) -> Vec<(String, u16)> {
    use redis::Value;
    let mut masters: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = reply else {
        return masters;
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            continue;
        };
        let (Some(Value::BulkString(host)), Some(&Value::Int(port))) =
            (master.first(), master.get(1))
        else {
            continue;
        };
        let host = String::from_utf8_lossy(host).into_owned();
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if matches!(host.as_str(), "" | "?" | "0.0.0.0" | "::") {
            continue;
        }
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    masters
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
    fn slot_masters_lists_each_addressable_master_once() {
        use redis::Value;
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(a), Value::Int(b), master, replica])
        };
        let reply = Value::Array(vec![
            range(0, 99, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            range(100, 199, node("127.0.0.1", 7001), node("127.0.0.1", 7004)),
            // A second range of the first master, and one announced without a host.
            range(200, 299, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            range(300, 399, node("", 7002), node("127.0.0.1", 7005)),
            Value::Int(3),
        ]);
        assert_eq!(
            slot_masters(&reply),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
        assert!(slot_masters(&Value::Nil).is_empty());
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
