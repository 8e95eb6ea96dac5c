//! The fleet's invariants, checked from what the clients saw, with the bounds worked out here
//! from the scenario's numbers (not from aegis-policy's code).

use std::collections::BTreeMap;

use aegis_policy::CounterState;
use aegis_policy::config::{LimitAlgorithm, OnStoreError};

use super::model::{BACKOFF_MAX, CONNECT_TIMEOUT_MIN, Outcome, ReqRecord};
use super::scenario::{FleetScenario, MS};
use crate::violation::Violation;

/// A known hole, reported under its own name: the Redis script's TTL ends a counter's key when
/// its window (or TAT) ends *as measured from the caller's `now`*, so a call for that window
/// that reaches Redis after the key expired (it waited behind a slow call, the network was
/// slow, or another gateway's clock is ahead and expired the key early) finds no key and
/// admits up to `max` again; and a worker's negative cache then refuses what the store would
/// (wrongly) admit.
pub const STORE_KEY_EXPIRED_EARLY: &str = "store_key_expired_before_its_window_ended";

/// At most this many violations of one invariant are listed (the rest are counted).
const LIST: usize = 5;

#[derive(Debug)]
pub struct Checked {
    pub checks: u64,
    pub violations: Vec<Violation>,
}

struct Acc {
    checks: u64,
    found: BTreeMap<&'static str, (u64, Vec<Violation>)>,
}

impl Acc {
    fn check(
        &mut self,
        ok: bool,
        t_ms: u64,
        invariant: &'static str,
        detail: impl FnOnce() -> String,
    ) {
        self.checks += 1;
        if ok {
            return;
        }
        let (n, list) = self.found.entry(invariant).or_default();
        *n += 1;
        if list.len() < LIST {
            list.push(Violation {
                t_ms,
                invariant,
                detail: detail(),
            });
        }
    }
}

/// The client IP of key `k`, as the model numbers them.
pub fn key_name(k: u32) -> String {
    format!("10.0.{}.{}", k / 250, k % 250 + 1)
}

/// Every invariant over every request.
pub fn check(sc: &FleetScenario, reqs: &[ReqRecord]) -> Checked {
    let mut acc = Acc {
        checks: 0,
        found: BTreeMap::new(),
    };
    let ct = sc.command_timeout;
    let max = sc.limit.max;
    let window = sc.limit.window_ms;
    // Store errors are expected only around the outages, or anywhere if a normal round trip
    // can outlast command_timeout. After an outage, a gateway is back within one backoff, one
    // connect attempt begun during the outage, and a round trip; requests waiting then are
    // answered within command_timeout.
    // A request queued behind its key's call in flight waits for that call and then its own:
    // two round trips.
    let slow_anyway = sc.latency_max.saturating_mul(4) > ct;
    let recovery = BACKOFF_MAX + ct.max(CONNECT_TIMEOUT_MIN) + 2 * sc.latency_max + ct;
    let near_fault = |t: u64| {
        slow_anyway
            || sc.outages.iter().any(|o| {
                t.saturating_add(ct) >= o.from && t <= o.until.saturating_add(recovery + o.latency)
            })
    };
    let mut per_window: BTreeMap<(u32, u64), (u64, bool)> = BTreeMap::new();
    let mut gcra: BTreeMap<u32, Vec<(u64, bool)>> = BTreeMap::new();
    for (i, r) in reqs.iter().enumerate() {
        acc.check(
            r.answers.len() == 1,
            r.arrival / MS,
            "answered_exactly_once",
            || {
                format!(
                    "request {i} (key {}) answered {} times: {:?}",
                    key_name(r.key),
                    r.answers.len(),
                    r.answers
                )
            },
        );
        let Some(&(t, outcome)) = r.answers.first() else {
            continue;
        };
        let waited = t.saturating_sub(r.arrival);
        acc.check(
            waited <= ct,
            t / MS,
            "waits_at_most_command_timeout",
            || {
                format!(
                    "request {i} (key {}) waited {}µs, command_timeout is {}µs",
                    key_name(r.key),
                    waited / 1000,
                    ct / 1000
                )
            },
        );
        match outcome {
            Outcome::Admitted => match sc.limit.algorithm {
                LimitAlgorithm::FixedWindow => {
                    let decided = r.decided_wall_ms.unwrap_or(r.wall_ms);
                    let e = per_window.entry((r.key, decided / window)).or_default();
                    e.0 += 1;
                    e.1 |= r.reopened;
                }
                LimitAlgorithm::Gcra => gcra
                    .entry(r.key)
                    .or_default()
                    .push((r.decided_wall_ms.unwrap_or(r.wall_ms), r.reopened)),
            },
            Outcome::CachedRefusal => {
                let state = r.store_state_at_refusal.flatten();
                let refuses = store_refuses(sc, state, r.wall_ms);
                // The store would admit only because the key expired before its window ended.
                let early = !refuses && r.key_expired_at_refusal;
                let invariant = if early {
                    STORE_KEY_EXPIRED_EARLY
                } else {
                    "cached_refusal_only_where_the_store_refuses"
                };
                acc.check(refuses, t / MS, invariant, || {
                    format!(
                        "request {i} (key {}) at wall {} refused from a worker's cache; the store holds {state:?}{}, which admits",
                        key_name(r.key),
                        r.wall_ms,
                        r.expired_state_at_refusal
                            .map(|s| format!(" (its key, {s:?}, expired before the window's end)"))
                            .unwrap_or_default()
                    )
                });
            }
            Outcome::AdmittedUnchecked | Outcome::DeniedStoreError => {
                acc.check(
                    (outcome == Outcome::AdmittedUnchecked)
                        == (sc.on_store_error == OnStoreError::Allow),
                    t / MS,
                    "on_store_error_decides_store_failures",
                    || {
                        format!(
                            "request {i}: {outcome:?} under on_store_error = {:?}",
                            sc.on_store_error
                        )
                    },
                );
                acc.check(near_fault(r.arrival), t / MS, "store_errors_only_near_faults", || {
                    format!(
                        "request {i} (key {}) arriving at {}ms got a store error, far from any outage",
                        key_name(r.key),
                        r.arrival / MS
                    )
                });
            }
            Outcome::Limited => {}
        }
    }
    for ((key, w), (n, reopened)) in &per_window {
        // Told apart: a window whose key expired in the store before a late call for it
        // arrived (the store restarts the count: a known hole, see README), and any other.
        let invariant = if *reopened {
            STORE_KEY_EXPIRED_EARLY
        } else {
            "fixed_window_at_most_max"
        };
        let t_ms = (w * window).saturating_sub(super::model::WALL_ORIGIN_MS);
        acc.check(*n <= max, t_ms, invariant, || {
            format!(
                "key {} admitted {n} in the window starting at wall {} (max {max})",
                key_name(*key),
                w * window
            )
        });
    }
    // GCRA: in any interval of length L, at most max + ceil(L / T) - 1 admissions, with
    // T = window / max in whole microseconds.
    let t_us = (window * 1000 / max.max(1)).max(1);
    for (key, mut times) in gcra {
        times.sort_unstable();
        for l_ms in [1, window.div_ceil(2), window, 2 * window] {
            let bound = max + (l_ms * 1000).div_ceil(t_us) - 1;
            let mut j = 0;
            // (count, start, index of the first) of the fullest interval.
            let mut worst = (0u64, 0u64, 0usize);
            for (i, &(a, _)) in times.iter().enumerate() {
                j = j.max(i);
                while j < times.len() && times[j].0 < a + l_ms {
                    j += 1;
                }
                let n = (j - i) as u64;
                if n > worst.0 {
                    worst = (n, a, i);
                }
            }
            let (n, a, first) = worst;
            let reopened = times[first..first + n as usize].iter().any(|x| x.1);
            let invariant = if reopened {
                STORE_KEY_EXPIRED_EARLY
            } else {
                "gcra_interval_bound"
            };
            let t_ms = a.saturating_sub(super::model::WALL_ORIGIN_MS);
            acc.check(n <= bound, t_ms, invariant, || {
                format!(
                    "key {} admitted {n} in [{a}, +{l_ms}ms) (bound {bound} = max + ceil(L/T) - 1)",
                    key_name(key),
                )
            });
        }
    }
    let mut violations = Vec::new();
    for (invariant, (n, list)) in acc.found {
        let shown = list.len() as u64;
        violations.extend(list);
        if n > shown {
            violations.push(Violation {
                t_ms: 0,
                invariant,
                detail: format!("... and {} more", n - shown),
            });
        }
    }
    violations.sort_by(|a, b| (a.t_ms, a.invariant).cmp(&(b.t_ms, b.invariant)));
    Checked {
        checks: acc.checks,
        violations,
    }
}

/// Whether the store, holding `state` for the key, refuses one more request at `now_ms`:
/// worked out from the limit's definition, not from aegis-policy's step.
fn store_refuses(sc: &FleetScenario, state: Option<CounterState>, now_ms: u64) -> bool {
    let max = sc.limit.max;
    let window = sc.limit.window_ms;
    match state {
        None => false,
        Some(CounterState::Fixed {
            window_start,
            count,
        }) => window_start == now_ms - now_ms % window && count >= max,
        Some(CounterState::Gcra { tat_us }) => {
            // Admitted iff max(tat, now) + T - now <= max·T.
            let t = (window * 1000 / max.max(1)).max(1);
            let now_us = now_ms * 1000;
            tat_us.max(now_us) + t - now_us > max * t
        }
    }
}
