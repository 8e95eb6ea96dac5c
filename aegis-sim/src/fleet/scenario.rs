//! Fleet scenario files (`scenarios/fleet-*.toml`): the gateway config every gateway runs, the
//! fleet's shape (gateways × workers, one shared store), the store's latency and outages, the
//! clients' load, and what the run must produce.

use std::collections::BTreeMap;
use std::path::Path;

use aegis_policy::config::{LimitAlgorithm, OnStoreError};
use aegis_policy::time::parse_duration;
use aegis_policy::{Config, Limit, MapEnv};
use serde::{Deserialize, Serialize};

use crate::scenario::ScenarioError;

/// Nanoseconds per millisecond.
pub const MS: u64 = 1_000_000;

/// How the store misbehaves in an outage window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageKind {
    /// Redis is gone: connections are refused and calls on open ones fail after a round trip
    /// (an I/O error). Nothing is applied.
    Down,
    /// Redis (or the path to it) swallows everything: no reply, calls end at `command_timeout`.
    /// Nothing is applied.
    Blackhole,
    /// Redis answers, `latency` late: calls are applied at the store, but a reply later than
    /// `command_timeout` is an error at the gateway.
    Slow,
}

/// One outage window, in virtual nanoseconds from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outage {
    pub kind: OutageKind,
    pub from: u64,
    pub until: u64,
    /// `slow` only: how long Redis takes to run a call.
    pub latency: u64,
}

/// A validated fleet scenario.
#[derive(Debug, Clone)]
pub struct FleetScenario {
    pub name: String,
    pub seed: u64,
    /// The gateway config every gateway runs (its first limited route is the one driven).
    pub config: Config,
    /// The driven route's path (requests go to it).
    pub path: String,
    pub limit: Limit,
    pub on_store_error: OnStoreError,
    pub command_timeout: u64,
    pub key_prefix: String,
    pub gateways: u32,
    pub workers: u32,
    pub duration: u64,
    /// Requests per second, whole fleet.
    pub rate: u64,
    pub keys: u32,
    /// Share of the requests from the first (hot) key, in percent.
    pub hot_key_percent: u32,
    /// Each way, uniform in `[min, max]`.
    pub latency_min: u64,
    pub latency_max: u64,
    /// Each gateway's wall clock is ahead of the store's by up to this much (seeded).
    pub clock_skew: u64,
    pub outages: Vec<Outage>,
    pub expect: FleetExpect,
    /// The source, as written (for `fuzz` to save a failing scenario).
    pub text: String,
}

/// What a fleet run must produce (`aegis-sim run` exits 3 otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetExpect {
    pub requests: Option<u64>,
    pub status_counts: BTreeMap<u16, u64>,
    pub coalesced_at_least: Option<u64>,
    pub pipelined_at_least: Option<u64>,
    pub cached_refusals_at_least: Option<u64>,
    pub admitted_unchecked: Option<u64>,
    pub applied_after_timeout_at_least: Option<u64>,
    pub outages_logged: Option<u64>,
}

impl FleetExpect {
    pub fn is_empty(&self) -> bool {
        *self == FleetExpect::default()
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleetScenario {
    pub name: Option<String>,
    pub description: Option<String>,
    pub seed: Option<u64>,
    pub gateway: toml::Table,
    pub fleet: RawFleet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<RawFleetExpect>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub gateways: u32,
    pub workers: u32,
    pub duration: String,
    pub rate: u64,
    pub keys: u32,
    pub hot_key_percent: Option<u32>,
    pub store_latency: RawLatency,
    pub clock_skew: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<RawOutage>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLatency {
    pub min: String,
    pub max: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutage {
    pub kind: String,
    pub from: String,
    pub until: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleetExpect {
    pub requests: Option<u64>,
    pub status_counts: Option<BTreeMap<String, u64>>,
    pub coalesced_at_least: Option<u64>,
    pub pipelined_at_least: Option<u64>,
    pub cached_refusals_at_least: Option<u64>,
    pub admitted_unchecked: Option<u64>,
    pub applied_after_timeout_at_least: Option<u64>,
    pub outages_logged: Option<u64>,
}

/// Whether `text` is a fleet scenario (it has a `[fleet]` table) rather than a one-gateway one.
pub fn is_fleet_text(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("fleet"))
}

/// Whether the file at `path` is a fleet scenario (false when unreadable).
pub fn is_fleet_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| is_fleet_text(&t))
}

fn dur(path: &str, s: &str) -> Result<u64, ScenarioError> {
    let d = parse_duration(s).map_err(|r| ScenarioError::new(path, r))?;
    Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl FleetScenario {
    pub fn load(path: &Path) -> Result<FleetScenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ScenarioError::new("file", format!("cannot read {}: {e}", path.display()))
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        FleetScenario::from_toml(&text, &name)
    }

    pub fn from_toml(text: &str, name: &str) -> Result<FleetScenario, ScenarioError> {
        let value: toml::Value = toml::from_str(text).map_err(|e| {
            ScenarioError::new(
                "scenario",
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        let raw: RawFleetScenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ScenarioError::new(
                if path == "." {
                    "scenario".to_owned()
                } else {
                    path
                },
                e.into_inner()
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        validate(raw, name, text)
    }
}

fn validate(raw: RawFleetScenario, name: &str, text: &str) -> Result<FleetScenario, ScenarioError> {
    let gw =
        toml::to_string(&raw.gateway).map_err(|e| ScenarioError::new("gateway", e.to_string()))?;
    let config = Config::from_toml(&gw, &MapEnv::default())
        .map_err(|e| ScenarioError::new(format!("gateway.{}", e.path), e.reason))?;
    let Some(route) = config.routes.iter().find(|r| r.rate_limit.is_some()) else {
        return Err(ScenarioError::new(
            "gateway.routes",
            "a fleet scenario needs a route with a rate_limit",
        ));
    };
    let limit_cfg = route.rate_limit.as_ref().expect("found above");
    if limit_cfg.key != aegis_policy::config::LimitKeyKind::Ip {
        return Err(ScenarioError::new(
            "gateway.routes.rate_limit.key",
            "the fleet's clients are told apart by IP: use key = \"ip\"",
        ));
    }
    let path = route.path.clone();
    let limit = Limit::from_config(limit_cfg);
    let rl = &config.rate_limit;
    let f = &raw.fleet;
    let bad = |p: &str, why: &str| Err(ScenarioError::new(format!("fleet.{p}"), why));
    if !(1..=16).contains(&f.gateways) {
        return bad("gateways", "between 1 and 16");
    }
    if !(1..=16).contains(&f.workers) {
        return bad("workers", "between 1 and 16");
    }
    if !(1..=250).contains(&f.keys) {
        return bad("keys", "between 1 and 250");
    }
    if !(1..=100_000).contains(&f.rate) {
        return bad("rate", "between 1 and 100000 requests per second");
    }
    let hot = f.hot_key_percent.unwrap_or(0);
    if hot > 100 {
        return bad("hot_key_percent", "at most 100");
    }
    let duration = dur("fleet.duration", &f.duration)?;
    if duration == 0 || duration > 600_000 * MS {
        return bad("duration", "more than 0 and at most 10m");
    }
    let latency_min = dur("fleet.store_latency.min", &f.store_latency.min)?;
    let latency_max = dur("fleet.store_latency.max", &f.store_latency.max)?;
    if latency_max < latency_min || latency_max > 60_000 * MS {
        return bad("store_latency.max", "at least min and at most 60s");
    }
    let clock_skew = match &f.clock_skew {
        Some(s) => dur("fleet.clock_skew", s)?,
        None => 0,
    };
    if clock_skew > 0 && limit.algorithm == LimitAlgorithm::Gcra {
        return bad(
            "clock_skew",
            "only with fixed_window (a GCRA TAT shared by skewed clocks has no exact bound)",
        );
    }
    let mut outages = Vec::new();
    for (i, o) in f.outages.iter().enumerate() {
        let p = format!("fleet.outages[{i}]");
        let kind = match o.kind.as_str() {
            "down" => OutageKind::Down,
            "blackhole" => OutageKind::Blackhole,
            "slow" => OutageKind::Slow,
            other => {
                return Err(ScenarioError::new(
                    format!("{p}.kind"),
                    format!("{other:?}: one of down, blackhole, slow"),
                ));
            }
        };
        let from = dur(&format!("{p}.from"), &o.from)?;
        let until = dur(&format!("{p}.until"), &o.until)?;
        if until <= from {
            return Err(ScenarioError::new(format!("{p}.until"), "after from"));
        }
        let latency = match (&o.latency, kind) {
            (Some(l), OutageKind::Slow) => dur(&format!("{p}.latency"), l)?,
            (None, OutageKind::Slow) => {
                return Err(ScenarioError::new(
                    format!("{p}.latency"),
                    "a slow outage needs a latency",
                ));
            }
            (Some(_), _) => {
                return Err(ScenarioError::new(
                    format!("{p}.latency"),
                    "only a slow outage has a latency",
                ));
            }
            (None, _) => 0,
        };
        outages.push(Outage {
            kind,
            from,
            until,
            latency,
        });
    }
    let e = raw.expect.unwrap_or_default();
    let mut status_counts = BTreeMap::new();
    for (k, v) in e.status_counts.unwrap_or_default() {
        let code: u16 = k.parse().map_err(|_| {
            ScenarioError::new(format!("expect.status_counts.{k}"), "not a status code")
        })?;
        status_counts.insert(code, v);
    }
    Ok(FleetScenario {
        name: raw.name.unwrap_or_else(|| name.to_owned()),
        seed: raw.seed.unwrap_or(1),
        path,
        limit,
        on_store_error: rl.on_store_error,
        command_timeout: u64::try_from(rl.command_timeout.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1),
        key_prefix: rl.key_prefix.clone(),
        config,
        gateways: f.gateways,
        workers: f.workers,
        duration,
        rate: f.rate,
        keys: f.keys,
        hot_key_percent: hot,
        latency_min,
        latency_max,
        clock_skew,
        outages,
        expect: FleetExpect {
            requests: e.requests,
            status_counts,
            coalesced_at_least: e.coalesced_at_least,
            pipelined_at_least: e.pipelined_at_least,
            cached_refusals_at_least: e.cached_refusals_at_least,
            admitted_unchecked: e.admitted_unchecked,
            applied_after_timeout_at_least: e.applied_after_timeout_at_least,
            outages_logged: e.outages_logged,
        },
        text: text.to_owned(),
    })
}

impl FleetScenario {
    /// The outage in force at `t`, if any (the first listed wins where they overlap).
    pub fn outage_at(&self, t: u64) -> Option<&Outage> {
        self.outages.iter().find(|o| o.from <= t && t < o.until)
    }
}
