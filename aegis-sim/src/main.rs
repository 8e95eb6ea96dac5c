//! The `aegis-sim` command line: run a scenario, fuzz seeds, replay an access log, benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_sim::{RunOptions, Scenario};
use clap::{Parser, Subcommand};

/// Deterministic simulator of the Aegis gateway: the real policy pipeline on virtual time,
/// simulated clients, upstreams and store faults, reproducible from one seed.
///
/// Exit codes: 0 ok; 1 bad input (scenario, log or config); 2 usage; 3 an invariant or an
/// [expect] entry failed.
#[derive(Debug, Parser)]
#[command(name = "aegis-sim", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario file and print what happened.
    Run {
        /// The scenario TOML file (see scenarios/).
        scenario: PathBuf,
        /// Seed for every random choice; defaults to the scenario's `seed` (or 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON document instead of the summary.
        #[arg(long)]
        json: bool,
        /// Also list every request: time, client, method, path, status, target.
        #[arg(long)]
        trace: bool,
    },
    /// Validate a scenario file: prints `ok` or the error naming the key.
    Check { scenario: PathBuf },
    /// Random scenarios, one per seed: a 60 s safety phase with upstream and store faults,
    /// then a liveness phase without them after which every breaker must be CLOSED. Stops at
    /// the first violation, saves that scenario and prints the command that reproduces it.
    Fuzz {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// Keep this scenario's gateway config and fuzz faults and load around it.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Directory where a failing scenario is saved.
        #[arg(long, default_value = ".")]
        save: PathBuf,
        /// Fuzz fleets instead (gateways × workers sharing one store, with store latency and
        /// outages; see scenarios/fleet-*.toml). Implied by a fleet `--scenario`.
        #[arg(long)]
        fleet: bool,
    },
    /// Feed a recorded JSON access log (`aegis run --log-format json 2> access.jsonl`) through
    /// a candidate config on the log's own timestamps and report what would change: statuses
    /// before and after, requests that would now be 401/404/429/503 (or no longer), the keys
    /// that would be rate limited, per route. Lines that are not access-log lines are skipped;
    /// malformed access-log lines are reported by line number.
    Replay {
        /// The access log, one JSON object per line.
        #[arg(long)]
        log: PathBuf,
        /// The candidate gateway config (the format `aegis run` reads; `${VAR}` from the
        /// environment).
        #[arg(long)]
        config: PathBuf,
        /// Print one JSON document instead of the summary.
        #[arg(long)]
        json: bool,
        /// How many rate-limited keys, and changed requests, to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            scenario,
            seed,
            json,
            trace: _,
        } if aegis_sim::fleet::is_fleet_file(&scenario) => fleet_run(&scenario, seed, json),
        Cmd::Run {
            scenario,
            seed,
            json,
            trace,
        } => {
            let s = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {}: {e}", scenario.display());
                    return ExitCode::from(1);
                }
            };
            let opts = RunOptions {
                seed: seed.unwrap_or(s.seed),
                trace,
                scenario_ref: scenario.display().to_string(),
            };
            let report = match aegis_sim::run(&s, &opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {}: {e}", scenario.display());
                    return ExitCode::from(1);
                }
            };
            if json {
                print!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if let Some(r) = &report.reproduce {
                eprintln!("reproduce: {r}");
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Cmd::Fuzz {
            seeds,
            first,
            scenario,
            save,
            fleet,
        } => {
            if fleet
                || scenario
                    .as_deref()
                    .is_some_and(aegis_sim::fleet::is_fleet_file)
            {
                fleet_fuzz(seeds, first, scenario, save)
            } else {
                fuzz(seeds, first, scenario, save)
            }
        }
        Cmd::Replay {
            log,
            config,
            json,
            top,
        } => match aegis_sim::replay::replay_files(&log, &config, top) {
            Ok(r) => {
                if json {
                    print!("{}", r.to_json());
                } else {
                    print!("{}", r.to_text());
                }
                if r.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Check { scenario } if aegis_sim::fleet::is_fleet_file(&scenario) => {
            match aegis_sim::fleet::FleetScenario::load(&scenario) {
                Ok(s) => {
                    println!(
                        "ok: a fleet of {} gateways × {} workers, {} keys, {} outages",
                        s.gateways,
                        s.workers,
                        s.keys,
                        s.outages.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", scenario.display());
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Check { scenario } => match Scenario::load(&scenario) {
            Ok(s) => {
                println!(
                    "ok: {} routes, {} upstreams, {} loads, {} scripted requests",
                    s.config.routes.len(),
                    s.upstreams.len(),
                    s.loads.len(),
                    s.requests.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", scenario.display());
                ExitCode::from(1)
            }
        },
    }
}

fn fuzz(seeds: u64, first: u64, scenario: Option<PathBuf>, save: PathBuf) -> ExitCode {
    let base = match scenario
        .as_deref()
        .map(aegis_sim::fuzz::Base::load)
        .transpose()
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let out = match aegis_sim::fuzz::fuzz(first, seeds, base.as_ref()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((seed, mut report, text)) = out.failure else {
        println!(
            "fuzz: {} seeds ({}..={}), {} requests: every invariant held and every breaker closed again after the faults",
            out.seeds_run,
            first,
            first + out.seeds_run.saturating_sub(1),
            out.requests
        );
        return ExitCode::SUCCESS;
    };
    report.reproduce = None;
    print!("{}", report.to_text());
    let file = save.join(format!("fuzz-{seed}.toml"));
    let base_arg = scenario
        .map(|p| format!(" --scenario {}", p.display()))
        .unwrap_or_default();
    match std::fs::write(&file, text) {
        Ok(()) => println!("reproduce: aegis-sim run {} --seed {seed}", file.display()),
        Err(e) => eprintln!("cannot save the scenario to {}: {e}", file.display()),
    }
    println!("or: aegis-sim fuzz --first {seed} --seeds 1{base_arg}");
    ExitCode::from(3)
}

/// `run` for a fleet scenario (a file with a `[fleet]` table).
fn fleet_run(scenario: &std::path::Path, seed: Option<u64>, json: bool) -> ExitCode {
    let s = match aegis_sim::fleet::FleetScenario::load(scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}: {e}", scenario.display());
            return ExitCode::from(1);
        }
    };
    let seed = seed.unwrap_or(s.seed);
    let report = match aegis_sim::fleet::run(&s, seed, None, &scenario.display().to_string()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", scenario.display());
            return ExitCode::from(1);
        }
    };
    if json {
        print!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if let Some(r) = &report.reproduce {
        eprintln!("reproduce: {r}");
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `fuzz --fleet`: random fleets, or fleets around a fleet scenario's gateway config.
fn fleet_fuzz(seeds: u64, first: u64, scenario: Option<PathBuf>, save: PathBuf) -> ExitCode {
    let base = match scenario
        .as_deref()
        .map(aegis_sim::fleet::FleetScenario::load)
        .transpose()
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let out = match aegis_sim::fleet::fuzz::fuzz(first, seeds, base.as_ref()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((seed, report, text)) = out.failure else {
        println!(
            "fuzz --fleet: {} seeds ({}..={}), {} requests: every invariant held",
            out.seeds_run,
            first,
            first + out.seeds_run.saturating_sub(1),
            out.requests
        );
        return ExitCode::SUCCESS;
    };
    print!("{}", report.to_text());
    let file = save.join(format!("fleet-fuzz-{seed}.toml"));
    match std::fs::write(&file, text) {
        Ok(()) => println!("reproduce: aegis-sim run {} --seed {seed}", file.display()),
        Err(e) => eprintln!("cannot save the scenario to {}: {e}", file.display()),
    }
    ExitCode::from(3)
}
