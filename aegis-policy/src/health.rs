//! Active health checks of a route's targets: which are due for a probe, and what a probe's
//! result does to a target's standing. The probes themselves (a `GET` to each target) are the
//! shell's; time comes in as an argument and the jitter from a seeded generator.
//!
//! ```text
//!             unhealthy_after failed checks in a row
//!   HEALTHY ────────────────────────────────────────▶ UNHEALTHY
//!      ▲                                                  │
//!      └──────────── healthy_after passed checks in a row ┘
//! ```
//!
//! Every target starts healthy (traffic flows before the first probe) and is probed every
//! `interval`, give or take a tenth of it at random, so that targets (and gateways) do not
//! probe in step. A probe whose result never comes is the shell's to time out (`timeout`) and
//! report as failed.

use std::time::Duration;

use crate::config::HealthCheckConfig;
use crate::time::Nanos;

/// One target's health change, at the instant its probe result came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTransition {
    pub target: usize,
    pub at: Nanos,
    pub healthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Standing {
    healthy: bool,
    /// Consecutive results against the current standing.
    streak: u32,
    /// When the next probe is due, and whether one is out now.
    next: Nanos,
    probing: bool,
}

/// The health checks of one route's targets.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    path: String,
    interval: Duration,
    timeout: Duration,
    unhealthy_after: u32,
    healthy_after: u32,
    targets: Vec<Standing>,
    transitions: Vec<HealthTransition>,
    rng: u64,
    started: bool,
}

impl HealthChecks {
    pub fn new(c: &HealthCheckConfig, targets: usize, seed: u64) -> HealthChecks {
        HealthChecks {
            path: c.path.clone(),
            interval: c.interval,
            timeout: c.timeout,
            unhealthy_after: c.unhealthy_after,
            healthy_after: c.healthy_after,
            targets: vec![
                Standing {
                    healthy: true,
                    streak: 0,
                    next: Nanos::ZERO,
                    probing: false,
                };
                targets
            ],
            transitions: Vec::new(),
            rng: seed,
            started: false,
        }
    }

    pub(crate) fn reseed(&mut self, seed: u64) {
        self.rng = seed;
    }

    /// Keeps the standing of targets whose URL `old` also has (a reload).
    pub(crate) fn inherit(&mut self, old: &HealthChecks, urls: &[String], old_urls: &[String]) {
        for (i, url) in urls.iter().enumerate() {
            if let Some(j) = old_urls.iter().position(|u| u == url) {
                self.targets[i].healthy = old.targets[j].healthy;
                self.targets[i].streak = old.targets[j].streak;
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        crate::mix::splitmix64(&mut self.rng)
    }

    /// `interval`, give or take a tenth of it.
    fn jittered(&mut self) -> Duration {
        let tenth = self.interval.as_nanos() as u64 / 10;
        let span = 2 * tenth + 1;
        let offset = self.next_random() % span;
        Duration::from_nanos((self.interval.as_nanos() as u64 - tenth).saturating_add(offset))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a probe may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_healthy(&self, target: usize) -> bool {
        self.targets.get(target).is_none_or(|s| s.healthy)
    }

    /// The targets due for a probe at `now`, marked as probing (each gets exactly one result
    /// back through [`HealthChecks::on_probe`]). The first call spreads the first probes over
    /// the first interval.
    pub fn due(&mut self, now: Nanos) -> Vec<usize> {
        if !self.started {
            self.started = true;
            for i in 0..self.targets.len() {
                let first = Duration::from_nanos(
                    self.next_random() % (self.interval.as_nanos() as u64).max(1),
                );
                self.targets[i].next = now.saturating_add(first);
            }
        }
        let mut due = Vec::new();
        for (i, s) in self.targets.iter_mut().enumerate() {
            if !s.probing && s.next <= now {
                s.probing = true;
                due.push(i);
            }
        }
        due
    }

    /// When the next probe falls due (none while every target has one out).
    pub fn next_due(&self) -> Option<Nanos> {
        if !self.started {
            return Some(Nanos::ZERO);
        }
        self.targets
            .iter()
            .filter(|s| !s.probing)
            .map(|s| s.next)
            .min()
    }

    /// A probe's result: a pass or a failure (a timeout is a failure).
    pub fn on_probe(&mut self, target: usize, passed: bool, now: Nanos) {
        let next = now.saturating_add(self.jittered());
        let (unhealthy_after, healthy_after) = (self.unhealthy_after, self.healthy_after);
        let Some(s) = self.targets.get_mut(target) else {
            return;
        };
        s.probing = false;
        s.next = next;
        if passed == s.healthy {
            s.streak = 0;
            return;
        }
        s.streak += 1;
        let needed = if s.healthy {
            unhealthy_after
        } else {
            healthy_after
        };
        if s.streak >= needed {
            s.healthy = passed;
            s.streak = 0;
            self.transitions.push(HealthTransition {
                target,
                at: now,
                healthy: passed,
            });
        }
    }

    pub fn drain_transitions(&mut self) -> Vec<HealthTransition> {
        std::mem::take(&mut self.transitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(n: usize) -> HealthChecks {
        HealthChecks::new(
            &HealthCheckConfig {
                path: "/health".into(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                unhealthy_after: 2,
                healthy_after: 3,
            },
            n,
            7,
        )
    }

    #[test]
    fn thresholds_and_resets() {
        let mut h = checks(1);
        let t = |s: u64| Nanos::from_millis(s * 1000);
        assert!(h.is_healthy(0));
        h.on_probe(0, false, t(0));
        assert!(h.is_healthy(0), "one failure is not enough");
        h.on_probe(0, true, t(5));
        h.on_probe(0, false, t(10));
        assert!(h.is_healthy(0), "a pass in between resets the count");
        h.on_probe(0, false, t(15));
        assert!(!h.is_healthy(0));
        for (i, s) in [20, 25].iter().enumerate() {
            h.on_probe(0, true, t(*s));
            assert!(!h.is_healthy(0), "pass {i}");
        }
        h.on_probe(0, true, t(30));
        assert!(h.is_healthy(0));
        let tr = h.drain_transitions();
        assert_eq!(
            tr.iter().map(|x| (x.at, x.healthy)).collect::<Vec<_>>(),
            [(t(15), false), (t(30), true)]
        );
    }

    #[test]
    fn probes_are_due_once_each_every_interval_with_jitter() {
        let mut h = checks(3);
        let t0 = Nanos::from_millis(1_000_000);
        // First probes spread over the first interval.
        let mut first = Vec::new();
        let mut now = t0;
        while first.len() < 3 {
            for i in h.due(now) {
                first.push((i, now));
            }
            now = now.saturating_add(Duration::from_millis(100));
            assert!(now.since(t0) <= Duration::from_secs(5), "{first:?}");
        }
        assert!(h.due(now).is_empty(), "one probe out per target");
        // After a result, the next is 4.5 s to 5.5 s later.
        let (i, at) = first[0];
        h.on_probe(i, true, at);
        let next = h.next_due().unwrap();
        let gap = next.since(at);
        assert!(
            gap >= Duration::from_millis(4500) && gap <= Duration::from_millis(5500),
            "{gap:?}"
        );
    }
}
