//! The Redis Lua mirror (`REDIS_SCRIPT`) and the pure `step` + `decide` agree: the same
//! seeded random inputs (both algorithms, many keys, window and GCRA edges, clock skew between
//! gateways, batches of `n` coalesced requests) give identical replies, identical stored state
//! and the same TTL. A batch of `n` is compared with `n` calls of `step` in a row: the script
//! admits exactly the requests, and leaves exactly the state, the sequential steps would.
//!
//! Each input runs in one MULTI/EXEC: PTTL and GET the stored state, EVALSHA, GET it again,
//! PTTL. The inputs use virtual times while Redis expires keys in real time, so a key written
//! with a 1-2 ms TTL (a fixed window's last milliseconds) can expire between the first GET and
//! the script. Only that case may differ from the step, only in that way (the script saw no
//! state), and it must stay rare; everything else must be identical.

use aegis_policy::config::LimitAlgorithm;
use aegis_policy::ratelimit::{REDIS_SCRIPT, decide, step, step_batch};
use aegis_policy::{ClientKey, CounterKey, CounterRequest, CounterState, Limit, UnixMillis};
use aegis_testkit::RedisServer;

/// SplitMix64: a fixed-seed generator written here so the inputs are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const PREFIX: &str = "parity:";

fn interval_us(l: &Limit) -> u64 {
    (l.window_ms.saturating_mul(1000) / l.max.max(1)).max(1)
}

fn keys(rng: &mut Rng) -> Vec<(CounterKey, Limit)> {
    // Clients whose text needs care in a Redis key: separators, spaces, unicode.
    let clients = [
        ClientKey::Ip("127.0.0.1".parse().unwrap()),
        ClientKey::Ip("::1".parse().unwrap()),
        ClientKey::User("test-123".into()),
        ClientKey::User("a|b:c d".into()),
        ClientKey::Header("ключ".into()),
        ClientKey::Header("x".repeat(200).into()),
    ];
    let mut out = Vec::new();
    for i in 0..24 {
        let algorithm = if i % 2 == 0 {
            LimitAlgorithm::FixedWindow
        } else {
            LimitAlgorithm::Gcra
        };
        let limit = Limit {
            algorithm,
            max: rng.pick(&[1, 2, 3, 5, 10, 40]),
            window_ms: rng.pick(&[1, 2, 7, 100, 999, 1000, 60_000, 86_400_000]),
        };
        let key = CounterKey {
            route: format!("/route{}", i % 5).into(),
            client: clients[i % clients.len()].clone(),
        };
        out.push((key, limit));
    }
    out
}

/// The key the script writes (KEYS[1]: a fixed window's names its window).
fn stored_key(req: &CounterRequest) -> String {
    let key = req.redis_key(PREFIX);
    if req.limit.algorithm == LimitAlgorithm::FixedWindow {
        assert!(key.ends_with(&format!("}}:{}", req.limit.window_start(req.now))));
    }
    key
}

fn state_from(req: &CounterRequest, stored: Option<String>) -> Option<CounterState> {
    let s = stored?;
    Some(match req.limit.algorithm {
        LimitAlgorithm::FixedWindow => CounterState::Fixed {
            window_start: req.limit.window_start(req.now),
            count: s.parse().unwrap_or_else(|_| panic!("count {s:?}")),
        },
        LimitAlgorithm::Gcra => CounterState::Gcra {
            tat_us: s.parse().unwrap_or_else(|_| panic!("tat {s:?}")),
        },
    })
}

fn run(seed: u64, base: u64, ops: usize) {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().expect("connect to the test redis");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(REDIS_SCRIPT)
        .query(&mut con)
        .unwrap();

    let mut rng = Rng(seed);
    let keys = keys(&mut rng);
    let mut last_tat: Vec<Option<u64>> = vec![None; keys.len()];
    let mut now = base + rng.below(1_000_000);
    let (mut admitted, mut denied, mut edges, mut expired_in_flight) = (0u32, 0u32, 0u32, 0u32);
    let (mut batches, mut split) = (0u32, 0u32);

    for op in 0..ops {
        let k = rng.below(keys.len() as u64) as usize;
        let (key, limit) = &keys[k];
        let roll = rng.below(100);
        let t = match roll {
            0..50 => now,
            50..70 => {
                now += rng.below(5);
                now
            }
            70..75 => {
                now += rng.below(limit.window_ms * 2);
                now
            }
            75..85 => {
                // A fixed window's edge: its last millisecond, its first, the one after.
                edges += 1;
                let next = limit.window_start(UnixMillis(now)) + limit.window_ms;
                now = next + rng.below(3) - 1;
                now
            }
            85..93 => match (limit.algorithm, last_tat[k]) {
                (LimitAlgorithm::Gcra, Some(tat)) => {
                    // Around the first instant GCRA admits again: tat + T - burst.
                    edges += 1;
                    let burst = interval_us(limit) * limit.max;
                    let at_us = (tat + interval_us(limit)).saturating_sub(burst);
                    (at_us.div_ceil(1000) + rng.below(3)).saturating_sub(1)
                }
                _ => now,
            },
            // Another gateway whose clock runs a little behind.
            _ => now.saturating_sub(rng.below(50)),
        };
        let req = CounterRequest {
            key: key.clone(),
            limit: *limit,
            now: UnixMillis(t),
        };
        // Mostly single requests; one in five a coalesced batch of 2-12.
        let n = if rng.below(5) == 0 {
            2 + rng.below(11)
        } else {
            1
        };
        let (redis_key, args) = req.redis_call(PREFIX, n);
        assert_eq!(args[4], n);
        let skey = stored_key(&req);
        assert_eq!(redis_key, skey);
        type Row = (i64, Option<String>, Vec<i64>, Option<String>, i64);
        let (pttl_before, before, values, after, pttl): Row = redis::pipe()
            .atomic()
            .cmd("PTTL")
            .arg(&skey)
            .cmd("GET")
            .arg(&skey)
            .cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(&redis_key)
            .arg(args[0])
            .arg(args[1])
            .arg(args[2])
            .arg(args[3])
            .arg(args[4])
            .cmd("GET")
            .arg(&skey)
            .cmd("PTTL")
            .arg(&skey)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("op {op}: redis error {e}"));

        let prev = state_from(&req, before);
        // The reference: n sequential steps.
        let sequential = |prev: Option<CounterState>| {
            let mut state = prev;
            let mut out = Vec::new();
            let mut ttl = 0;
            for _ in 0..n {
                let (r, t) = step(limit, state, req.now);
                state = Some(r.state);
                ttl = t;
                out.push(r);
            }
            (out, ttl)
        };
        let (mut want, mut ttl) = sequential(prev);
        let ctx = || {
            format!("op {op} seed {seed}: key {skey} limit {limit:?} now {t} n {n} prev {prev:?}")
        };
        // The script's reply, read back through the pure model (which checks its count).
        let got = match req.redis_reply(&values, n) {
            Ok(b) => b,
            Err(e) if prev.is_some() && (0..=2).contains(&pttl_before) => {
                // The key expired (real time) between the GET and the script.
                expired_in_flight += 1;
                (want, ttl) = sequential(None);
                let (b, _) = step_batch(limit, None, req.now, n);
                assert_eq!(
                    b.admitted,
                    want.iter().filter(|r| r.admitted).count() as u64,
                    "{}: {e}",
                    ctx()
                );
                b
            }
            Err(e) => panic!("{}: {e}", ctx()),
        };
        let got_replies: Vec<_> = (0..n).map(|i| got.reply(i)).collect();
        if got_replies != want && prev.is_some() && (0..=2).contains(&pttl_before) {
            (want, ttl) = sequential(None);
            expired_in_flight += 1;
        }
        assert_eq!(got_replies, want, "{}", ctx());
        for (g, w) in got_replies.iter().zip(&want) {
            assert_eq!(
                decide(limit, g, req.now),
                decide(limit, w, req.now),
                "{}",
                ctx()
            );
        }
        if n > 1 {
            batches += 1;
            if got.admitted > 0 && got.admitted < n {
                split += 1;
            }
        }
        let want = *want.last().expect("n >= 1");
        // What Redis stored is the state the steps left (unless its 1-2 ms TTL already ran
        // out, in real time, within this EXEC).
        let stored = state_from(&req, after);
        if stored.is_none() && ttl <= 2 {
            expired_in_flight += 1;
        } else {
            assert_eq!(stored, Some(want.state), "{}", ctx());
            // Every key written has the step's TTL (PTTL runs in real time: allow a few ms).
            let ttl = ttl as i64;
            assert!(
                pttl <= ttl && pttl >= (ttl - 25).max(0),
                "{}: PTTL {pttl}, step says {ttl}",
                ctx()
            );
        }
        if let CounterState::Gcra { tat_us } = want.state {
            last_tat[k] = Some(tat_us);
        }
        if want.admitted {
            admitted += 1;
        } else {
            denied += 1;
        }
    }
    // The inputs exercised both outcomes and the edges, or the test proves little.
    let n = ops as u32;
    assert!(
        admitted > n / 20 && denied > n / 20,
        "admitted {admitted}, denied {denied}"
    );
    assert!(edges > n / 20, "only {edges} edge inputs");
    assert!(
        batches > n / 10 && split > n / 100,
        "{batches} batches, {split} split between admitted and refused"
    );
    assert!(
        expired_in_flight < n / 100,
        "{expired_in_flight} inputs raced a real-time expiry: the comparison proves too little"
    );

    // No key is ever left without a TTL.
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query(&mut con)
        .unwrap();
    for k in all {
        let pttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut con).unwrap();
        assert!(pttl != -1, "{k} has no TTL");
    }
}

#[test]
fn script_matches_pure_step_today() {
    run(0x5eed_0001, 1_800_000_000_000, 6_000);
}

#[test]
fn script_matches_pure_step_in_2100() {
    // Large Unix times: the Lua side computes in doubles; microsecond TATs stay below 2^53.
    run(0x5eed_0002, 4_102_444_800_000, 6_000);
}
