//! The fleet's invariants, checked from what the clients saw, with the bounds worked out here
//! from the scenario's numbers (not from aegis-policy's code).

use std::collections::BTreeMap;

use aegis_policy::CounterState;
use aegis_policy::config::{LimitAlgorithm, OnStoreError};

use super::model::{BACKOFF_MAX, CONNECT_TIMEOUT_MIN, Outcome, ReqRecord};
use super::scenario::{FleetScenario, MS};
use crate::violation::Violation;

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
    let slow_anyway = sc.latency_max.saturating_mul(2) > ct;
    let recovery = BACKOFF_MAX + ct.max(CONNECT_TIMEOUT_MIN) + 2 * sc.latency_max + ct;
    let near_fault = |t: u64| {
        slow_anyway
            || sc.outages.iter().any(|o| {
                t.saturating_add(ct) >= o.from && t <= o.until.saturating_add(recovery + o.latency)
            })
    };
    let mut per_window: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut gcra: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
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
                    *per_window.entry((r.key, decided / window)).or_default() += 1;
                }
                LimitAlgorithm::Gcra => gcra
                    .entry(r.key)
                    .or_default()
                    .push(r.decided_wall_ms.unwrap_or(r.wall_ms)),
            },
            Outcome::CachedRefusal => {
                let state = r.store_state_at_refusal.flatten();
                let refuses = store_refuses(sc, state, r.wall_ms);
                acc.check(refuses, t / MS, "cached_refusal_only_where_the_store_refuses", || {
                    format!(
                        "request {i} (key {}) at wall {} refused from a worker's cache; the store holds {state:?}, which admits",
                        key_name(r.key),
                        r.wall_ms
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
    for ((key, w), n) in &per_window {
        acc.check(
            *n <= max,
            (w * window).saturating_sub(super::model::WALL_ORIGIN_MS),
            "fixed_window_at_most_max",
            || {
                format!(
                    "key {} admitted {n} in the window starting at wall {} (max {max})",
                    key_name(*key),
                    w * window
                )
            },
        );
    }
    // GCRA: in any interval of length L, at most max + ceil(L / T) - 1 admissions, with
    // T = window / max in whole microseconds.
    let t_us = (window * 1000 / max.max(1)).max(1);
    for (key, mut times) in gcra {
        times.sort_unstable();
        for l_ms in [1, window.div_ceil(2), window, 2 * window] {
            let bound = max + (l_ms * 1000).div_ceil(t_us) - 1;
            let mut j = 0;
            let mut worst = (0u64, 0u64);
            for (i, &a) in times.iter().enumerate() {
                j = j.max(i);
                while j < times.len() && times[j] < a + l_ms {
                    j += 1;
                }
                let n = (j - i) as u64;
                if n > worst.0 {
                    worst = (n, a);
                }
            }
            acc.check(worst.0 <= bound, worst.1.saturating_sub(super::model::WALL_ORIGIN_MS), "gcra_interval_bound", || {
                format!(
                    "key {} admitted {} in [{}, +{l_ms}ms) (bound {bound} = max + ceil(L/T) - 1)",
                    key_name(key),
                    worst.0,
                    worst.1
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
