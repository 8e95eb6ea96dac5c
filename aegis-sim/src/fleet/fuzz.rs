//! Random fleets from seeds: shape, limit, load, store latency and outages are drawn from the
//! seed, the fleet runs, and every invariant is checked. A failing seed's scenario is saved as
//! a file that `aegis-sim run` reproduces.

use std::fmt::Write as _;

use super::scenario::FleetScenario;
use super::{FleetReport, run};
use crate::rng::Rng;
use crate::scenario::ScenarioError;

/// What a fuzz campaign did.
#[derive(Debug)]
pub struct FleetFuzzOutcome {
    pub seeds_run: u64,
    pub requests: u64,
    /// The first failing seed, its report and its scenario file's text.
    pub failure: Option<(u64, FleetReport, String)>,
}

/// The scenario text of seed `seed`: around `base`'s `[gateway]` when given.
pub fn scenario_text(seed: u64, base: Option<&FleetScenario>) -> String {
    let mut r = Rng::derive(seed, "fleet-fuzz");
    let mut t = String::new();
    let _ = writeln!(t, "name = \"fleet-fuzz-{seed}\"\nseed = {seed}\n");
    let gcra = r.below(3) == 0;
    let ct = [20, 50, 100, 250][r.below(4) as usize];
    match base {
        Some(b) => {
            // Only the [gateway] table of the base, as written.
            let doc: toml::Table = b.text.parse().unwrap_or_default();
            let mut only = toml::Table::new();
            if let Some(g) = doc.get("gateway") {
                only.insert("gateway".to_owned(), g.clone());
            }
            let _ = writeln!(t, "{}", toml::to_string(&only).unwrap_or_default());
        }
        None => {
            let on_error = if r.below(2) == 0 { "deny" } else { "allow" };
            let max = [1, 3, 10, 50, 100][r.below(5) as usize];
            let window = [100, 250, 1000, 2000][r.below(4) as usize];
            let alg = if gcra { "gcra" } else { "fixed_window" };
            let _ = writeln!(
                t,
                "[gateway.rate_limit]\nstore = \"redis\"\nredis_url = \"redis://redis:6379\"\non_store_error = \"{on_error}\"\ncommand_timeout = \"{ct}ms\"\n\n[[gateway.routes]]\npath = \"/api\"\ntargets = [\"http://api:8000\"]\nrate_limit = {{ max = {max}, window = \"{window}ms\", algorithm = \"{alg}\" }}\n"
            );
        }
    }
    let ct = base.map_or(ct, |b| b.command_timeout / super::scenario::MS);
    let gcra = base.map_or(gcra, |b| {
        b.limit.algorithm == aegis_policy::config::LimitAlgorithm::Gcra
    });
    let lat_min = r.range(0, 3000);
    // Now and then a store whose normal round trip can outlast the timeout.
    let lat_max = if r.below(4) == 0 {
        ct * 1000 / 2 + r.range(0, ct * 300)
    } else {
        lat_min + r.range(0, 5000)
    };
    let _ = writeln!(
        t,
        "[fleet]\ngateways = {}\nworkers = {}\nduration = \"{}ms\"\nrate = {}\nkeys = {}\nhot_key_percent = {}\nstore_latency = {{ min = \"{lat_min}us\", max = \"{lat_max}us\" }}",
        r.range(1, 4),
        r.range(1, 3),
        r.range(1000, 4000),
        r.range(100, 3000),
        r.range(1, 6),
        r.range(0, 100)
    );
    if !gcra && r.below(2) == 0 {
        let _ = writeln!(t, "clock_skew = \"{}ms\"", r.range(0, 50));
    }
    for _ in 0..r.below(3) {
        let from = r.range(0, 3000);
        let until = from + r.range(1, 1500);
        let (kind, latency) = match r.below(3) {
            0 => ("down", String::new()),
            1 => ("blackhole", String::new()),
            _ => ("slow", format!("latency = \"{}ms\"\n", r.range(1, ct * 2))),
        };
        let _ = writeln!(
            t,
            "\n[[fleet.outages]]\nkind = \"{kind}\"\nfrom = \"{from}ms\"\nuntil = \"{until}ms\"\n{latency}"
        );
    }
    t
}

/// Runs seeds `first..first + seeds`, stopping at the first violation.
pub fn fuzz(
    first: u64,
    seeds: u64,
    base: Option<&FleetScenario>,
) -> Result<FleetFuzzOutcome, ScenarioError> {
    let mut out = FleetFuzzOutcome {
        seeds_run: 0,
        requests: 0,
        failure: None,
    };
    for seed in first..first.saturating_add(seeds) {
        let text = scenario_text(seed, base);
        let sc = FleetScenario::from_toml(&text, &format!("fleet-fuzz-{seed}"))?;
        let report = run(&sc, seed, None, "").map_err(|e| ScenarioError::new("gateway", e))?;
        out.seeds_run += 1;
        out.requests += report.requests;
        let v = &report.invariant_violations;
        if !v.is_empty() {
            out.failure = Some((seed, report, text));
            break;
        }
    }
    Ok(out)
}
