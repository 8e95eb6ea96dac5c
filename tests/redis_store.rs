//! The gateway's Redis counter store (`aegis_tokio::state::redis::RedisStore`) against a real
//! redis-server: same answers as the in-memory store, keys prefixed and always with a TTL,
//! NOSCRIPT recovery, fail-fast while Redis is down, bounded time while it hangs, and
//! reconnection by itself when it returns; concurrent requests of one key coalesced into few
//! calls that still admit exactly `max` (also across two stores: two gateways), and keys over
//! their limit refused from the negative cache without a call.
#![allow(clippy::disallowed_methods)] // real time: deadlines and Unix windows

use std::time::{Duration, Instant};

use aegis_policy::config::LimitAlgorithm;
use aegis_policy::{
    ClientKey, CounterKey, CounterRequest, CounterStore, FixedHasher, Limit, MemoryStore,
    UnixMillis,
};
use aegis_testkit::{RedisServer, send_signal};
use aegis_tokio::state::redis::RedisStore;

const TIMEOUT: Duration = Duration::from_millis(200);

fn req(route: &str, user: &str, limit: Limit, now: u64) -> CounterRequest {
    CounterRequest {
        key: CounterKey {
            route: route.into(),
            client: ClientKey::User(user.into()),
        },
        limit,
        now: UnixMillis(now),
    }
}

async fn wait_async(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(redis: &RedisServer, prefix: &str) -> RedisStore {
    let store = RedisStore::new(&redis.url(), prefix, TIMEOUT).expect("store");
    wait_async(
        "the store to connect",
        Duration::from_secs(10),
        async || store.is_healthy(),
    )
    .await;
    store
}

/// A sequence through `RedisStore::apply` and through `MemoryStore` (the pure step) gives the
/// same replies. Windows are 60 s so that no key can expire in real time during the test:
/// fixed windows are written in their first 20 s, and every GCRA key lives at least
/// `window / max` = 2 s while the whole sequence takes a fraction of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_agrees_with_memory_store() {
    let redis = RedisServer::start();
    let store = connected(&redis, "agree:").await;
    let mut memory = MemoryStore::with_hasher(1000, FixedHasher);
    let mut state = 0x00c0_ffee_u64;
    let mut rand = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let base = 1_800_000_040_000 - 1_800_000_040_000 % 60_000; // a window start
    let mut now = base;
    let started = Instant::now();
    let (mut yes, mut no) = (0, 0);
    for i in 0..400 {
        let alg = if rand(2) == 0 {
            LimitAlgorithm::FixedWindow
        } else {
            LimitAlgorithm::Gcra
        };
        let max = [2, 5, 30][rand(3) as usize];
        let limit = Limit {
            algorithm: alg,
            max,
            window_ms: 60_000,
        };
        now += rand(40);
        assert!(now < base + 20_000);
        let r = req(
            &format!("/r{max}{alg:?}"),
            &format!("u{}", rand(4)),
            limit,
            now,
        );
        let got = store
            .apply(&r)
            .await
            .unwrap_or_else(|e| panic!("op {i}: {e}"));
        let want = memory.apply(&r).unwrap();
        assert_eq!(got, want, "op {i}: {r:?}");
        if got.admitted {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(yes > 50 && no > 50, "admitted {yes}, denied {no}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "too slow for the no-expiry assumption: {:?}",
        started.elapsed()
    );
}

/// Keys carry the prefix and a TTL; a flushed script cache (Redis restarted, SCRIPT FLUSH)
/// is recovered within the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_prefixed_expire_and_noscript_is_recovered() {
    let redis = RedisServer::start();
    let store = connected(&redis, "pfx:").await;
    let fixed = Limit {
        algorithm: LimitAlgorithm::FixedWindow,
        max: 3,
        window_ms: 60_000,
    };
    let gcra = Limit {
        algorithm: LimitAlgorithm::Gcra,
        ..fixed
    };
    let now = aegis_testkit::unix_millis();
    let mut replies = Vec::new();
    for i in 0..4 {
        replies.push(store.apply(&req("/f", "u", fixed, now + i)).await.unwrap());
    }
    let admitted: Vec<bool> = replies.iter().map(|r| r.admitted).collect();
    assert_eq!(admitted, [true, true, true, false]);
    assert!(
        store
            .apply(&req("/g", "u", gcra, now))
            .await
            .unwrap()
            .admitted
    );

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    keys.sort();
    let start = now - now % 60_000;
    assert_eq!(
        keys,
        [
            format!("pfx:{{/f|user:u}}:{start}"),
            "pfx:{/g|user:u}".to_owned()
        ]
    );
    for k in &keys {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        // A counter outlives its window by a window (at least 2 s): a call that reaches Redis
        // late must still find its window's count (aegis-policy `late_call_slack`).
        assert!(pttl > 0 && pttl <= 120_000, "{k}: PTTL {pttl}");
    }

    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    let r = store.apply(&req("/f", "v", fixed, now)).await;
    assert!(
        r.as_ref().is_ok_and(|r| r.admitted),
        "after SCRIPT FLUSH: {r:?}"
    );
    assert!(store.is_healthy());
}

/// Redis killed: calls fail at once (no waiting on a dead connection), health says so, and
/// the store reconnects by itself when Redis returns on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let store = connected(&redis, "out:").await;
    let limit = Limit {
        algorithm: LimitAlgorithm::FixedWindow,
        max: 1000,
        window_ms: 60_000,
    };
    let now = aegis_testkit::unix_millis();
    assert!(store.apply(&req("/r", "u", limit, now)).await.is_ok());

    redis.stop();
    wait_async(
        "the store to notice the outage",
        Duration::from_secs(5),
        async || {
            let _ = store.apply(&req("/r", "u", limit, now)).await;
            !store.is_healthy()
        },
    )
    .await;
    // While down, every call fails well inside the command timeout.
    for _ in 0..50 {
        let t = Instant::now();
        let e = store.apply(&req("/r", "u", limit, now)).await.unwrap_err();
        assert!(t.elapsed() < TIMEOUT / 2, "took {:?}: {e}", t.elapsed());
        assert!(e.to_string().contains("redis"), "{e}");
    }

    redis.restart();
    wait_async(
        "the store to reconnect",
        Duration::from_secs(10),
        async || store.is_healthy(),
    )
    .await;
    let r = store.apply(&req("/r", "u", limit, now)).await;
    assert!(r.is_ok_and(|r| r.admitted));
}

/// A Redis that hangs (SIGSTOP) costs each call at most the command timeout, never more; the
/// store is unhealthy meanwhile and healthy again once Redis resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_is_bounded_by_the_command_timeout() {
    let redis = RedisServer::start();
    let store = connected(&redis, "hang:").await;
    let limit = Limit {
        algorithm: LimitAlgorithm::Gcra,
        max: 1000,
        window_ms: 1000,
    };
    let now = aegis_testkit::unix_millis();
    // If an assertion fails while Redis is stopped, RedisServer's Drop resumes and kills it.
    send_signal(redis.pid(), "STOP");
    for _ in 0..5 {
        let t = Instant::now();
        let r = store.apply(&req("/r", "u", limit, now)).await;
        assert!(r.is_err(), "a stopped redis answered: {r:?}");
        assert!(
            t.elapsed() < TIMEOUT + Duration::from_millis(150),
            "call took {:?}",
            t.elapsed()
        );
    }
    assert!(!store.is_healthy());
    send_signal(redis.pid(), "CONT");
    wait_async(
        "the store to recover",
        Duration::from_secs(10),
        async || store.is_healthy(),
    )
    .await;
    assert!(store.apply(&req("/r", "u", limit, now)).await.is_ok());
}

/// Calls of the script Redis has run (EVALSHA and EVAL), from `INFO commandstats`.
async fn script_calls(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `n` concurrent requests for one key on `stores` (round robin), all at `now`.
async fn burst(
    stores: &[RedisStore],
    n: usize,
    limit: Limit,
    now: u64,
) -> Vec<aegis_policy::CounterReply> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        set.spawn(async move { store.apply(&req("/c", "hot", limit, now)).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task").expect("store answered"));
    }
    out
}

/// 300 concurrent requests of one key against `max = 100`: exactly 100 admitted, each with its
/// own place in line (remaining 99 down to 0), in far fewer Redis calls than requests, for both
/// algorithms; then the key's further requests are refused from the negative cache without a
/// call, until a later window.
#[tokio::test]
async fn coalesced_requests_admit_exactly_max() {
    let redis = RedisServer::start();
    let store = connected(&redis, "co:").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for algorithm in [LimitAlgorithm::FixedWindow, LimitAlgorithm::Gcra] {
        let limit = Limit {
            algorithm,
            max: 100,
            window_ms: 60_000,
        };
        let now = aegis_testkit::unix_millis();
        let before = store.counts();
        let calls_before = script_calls(&mut con).await;
        let replies = burst(std::slice::from_ref(&store), 300, limit, now).await;
        let admitted: Vec<_> = replies.iter().filter(|r| r.admitted).collect();
        assert_eq!(admitted.len(), 100, "{algorithm:?}");
        let mut remaining: Vec<u64> = admitted
            .iter()
            .map(|r| aegis_policy::ratelimit::decide(&limit, r, UnixMillis(now)).remaining)
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..100).collect::<Vec<u64>>(), "{algorithm:?}");
        let counts = store.counts();
        let calls = counts.calls - before.calls;
        assert_eq!(
            script_calls(&mut con).await - calls_before,
            calls,
            "{algorithm:?}"
        );
        assert!(calls < 100, "{algorithm:?}: {calls} calls for 300 requests");
        assert_eq!(
            calls
                + (counts.coalesced - before.coalesced)
                + (counts.cached_refusals - before.cached_refusals),
            300,
            "{algorithm:?}: every request decided once: {counts:?}"
        );

        // Over its limit: refused here, Redis not asked.
        let calls_before = script_calls(&mut con).await;
        let cached_before = store.counts().cached_refusals;
        for i in 0..50 {
            let r = store
                .apply(&req("/c", "hot", limit, now + i))
                .await
                .unwrap();
            assert!(!r.admitted);
        }
        assert_eq!(script_calls(&mut con).await, calls_before, "{algorithm:?}");
        assert_eq!(store.counts().cached_refusals - cached_before, 50);
        // Another key is not affected.
        assert!(
            store
                .apply(&req("/c", "cold", limit, now))
                .await
                .unwrap()
                .admitted
        );
    }
    // A fixed window's refusal ends with the window: the next one asks Redis again.
    let short = Limit {
        algorithm: LimitAlgorithm::FixedWindow,
        max: 1,
        window_ms: 1_000,
    };
    let now = aegis_testkit::unix_millis();
    assert!(
        store
            .apply(&req("/s", "k", short, now))
            .await
            .unwrap()
            .admitted
    );
    assert!(
        !store
            .apply(&req("/s", "k", short, now))
            .await
            .unwrap()
            .admitted
    );
    let calls_before = script_calls(&mut con).await;
    assert!(
        !store
            .apply(&req("/s", "k", short, now))
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(
        script_calls(&mut con).await,
        calls_before,
        "refused from the cache"
    );
    let next = short.window_start(UnixMillis(now)) + 1_000;
    assert!(
        store
            .apply(&req("/s", "k", short, next))
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(script_calls(&mut con).await, calls_before + 1);
}

/// Two stores (two gateways) on one Redis, each on its own threads, 400 concurrent requests
/// of one key spread over both: exactly `max` admitted between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_exact_limit() {
    let redis = RedisServer::start();
    let a = connected(&redis, "two:").await;
    let b = connected(&redis, "two:").await;
    for algorithm in [LimitAlgorithm::FixedWindow, LimitAlgorithm::Gcra] {
        let limit = Limit {
            algorithm,
            max: 100,
            window_ms: 60_000,
        };
        let now = aegis_testkit::unix_millis();
        let replies = burst(&[a.clone(), b.clone()], 400, limit, now).await;
        let admitted = replies.iter().filter(|r| r.admitted).count();
        assert_eq!(admitted, 100, "{algorithm:?}");
        // Both reached Redis (neither answered everything from the other's cache).
        assert!(a.counts().calls > 0 && b.counts().calls > 0);
    }
}
