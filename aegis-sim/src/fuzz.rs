//! Random scenarios from seeds (TigerBeetle's VOPR shape): each seed derives a gateway config
//! (or takes a base scenario's), upstream faults, store faults and client load; a one-minute
//! safety phase with faults is followed by a liveness phase without them, at whose end every
//! breaker must be CLOSED. The scenario is built as a TOML document and goes through the same
//! parser as a file, so a failure is saved as a file that `aegis-sim run` reproduces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_policy::Config;
use aegis_policy::config::{ConfigEnv, HostPattern};
use toml::{Table, Value};

use crate::report::Report;
use crate::rng::Rng;
use crate::run::{RunOptions, run};
use crate::scenario::{Scenario, ScenarioEnv, ScenarioError};

/// Length of the safety phase: faults happen only before this.
pub const SAFETY_MS: u64 = 60_000;

/// A base scenario whose gateway config (and `[env]`) every generated scenario reuses.
#[derive(Debug, Clone)]
pub struct Base {
    pub gateway: Table,
    pub env: Table,
    pub dir: PathBuf,
    config: Config,
}

impl Base {
    /// Reads the gateway part of a scenario file (inline, or its `gateway_config` file inlined).
    pub fn load(path: &Path) -> Result<Base, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ScenarioError::new("scenario", format!("cannot read {}: {e}", path.display()))
        })?;
        let value: Table = toml::from_str(&text)
            .map_err(|e| ScenarioError::new("scenario", e.to_string().replace('\n', " ")))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let env = match value.get("env") {
            Some(Value::Table(t)) => t.clone(),
            _ => Table::new(),
        };
        let senv = ScenarioEnv {
            vars: env
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect(),
            base: dir.clone(),
        };
        let gateway = match (value.get("gateway"), value.get("gateway_config")) {
            (Some(Value::Table(t)), _) => t.clone(),
            (_, Some(Value::String(file))) => {
                let text = senv
                    .read_file(file)
                    .map_err(|r| ScenarioError::new("gateway_config", r))?;
                toml::from_str(&text).map_err(|e| {
                    ScenarioError::new("gateway_config", e.to_string().replace('\n', " "))
                })?
            }
            _ => {
                return Err(ScenarioError::new(
                    "gateway",
                    "the base scenario has no [gateway] table or gateway_config",
                ));
            }
        };
        let gtext =
            toml::to_string(&gateway).map_err(|e| ScenarioError::new("gateway", e.to_string()))?;
        let config = Config::from_toml(&gtext, &senv)
            .map_err(|e| ScenarioError::new(format!("gateway.{}", e.path), e.reason))?;
        Ok(Base {
            gateway,
            env,
            dir,
            config,
        })
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn ms(v: u64) -> Value {
    Value::String(format!("{v}ms"))
}

fn int(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn table(entries: Vec<(&str, Value)>) -> Value {
    Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

/// A random gateway config for `seed`.
fn gateway(rng: &mut Rng, seed: u64) -> Table {
    let mut g = Table::new();
    let auth = rng.chance_ppm(500_000);
    if auth {
        g.insert(
            "auth".into(),
            table(vec![("secret", s(&format!("fuzz-secret-{seed}")))]),
        );
    }
    g.insert(
        "breaker".into(),
        table(vec![
            ("failure_threshold", int(rng.range(1, 5))),
            ("open_for", ms(rng.range(500, 10_000))),
        ]),
    );
    g.insert(
        "rate_limit".into(),
        table(vec![
            ("store", s(pick(rng, &["memory", "redis"]))),
            ("on_store_error", s(pick(rng, &["allow", "deny"]))),
        ]),
    );
    let mut routes = Vec::new();
    for r in 0..rng.range(1, 3) {
        let mut route = Table::new();
        route.insert("path".into(), s(&format!("/svc{r}")));
        let targets = (0..rng.range(1, 4))
            .map(|t| s(&format!("http://svc{r}-{t}:80")))
            .collect();
        route.insert("targets".into(), Value::Array(targets));
        let route_auth = auth && rng.chance_ppm(600_000);
        route.insert("auth".into(), Value::Boolean(route_auth));
        // At least 100 ms: baseline latencies stay below 90 ms.
        route.insert("timeout".into(), ms(rng.range(100, 2_000)));
        if rng.chance_ppm(600_000) {
            let keys: &[&str] = if route_auth {
                &["ip", "user", "header:x-api-key"]
            } else {
                &["ip", "header:x-api-key"]
            };
            route.insert(
                "rate_limit".into(),
                table(vec![
                    ("max", int(rng.range(5, 50))),
                    ("window", s(pick(rng, &["1s", "2s", "5s", "10s"]))),
                    ("key", s(pick(rng, keys))),
                    ("algorithm", s(pick(rng, &["fixed_window", "gcra"]))),
                ]),
            );
        }
        routes.push(Value::Table(route));
    }
    g.insert("routes".into(), Value::Array(routes));
    g
}

/// A latency distribution; `cap` bounds it (baseline latencies stay under every route
/// timeout, so that a healthy instance is healthy; slow faults may exceed them).
fn latency(rng: &mut Rng, cap: u64) -> Value {
    let cap = cap.max(2);
    let min = rng.range(1, 20.min(cap - 1));
    if rng.chance_ppm(300_000) {
        table(vec![
            ("min", ms(min)),
            ("mean", ms(rng.range(1, cap / 2))),
            ("max", ms(rng.range(min + 1, cap))),
        ])
    } else {
        table(vec![("min", ms(min)), ("max", ms(rng.range(min, cap)))])
    }
}

/// A fault window inside the safety phase.
fn window(rng: &mut Rng) -> (u64, u64) {
    let from = rng.range(0, SAFETY_MS - 1_000);
    let until = rng.range(from + 500, SAFETY_MS);
    (from, until)
}

fn fault(rng: &mut Rng) -> Value {
    let (from, until) = window(rng);
    let mut f = vec![("from", ms(from)), ("until", ms(until))];
    match rng.below(6) {
        0 => f.push(("kind", s("refused"))),
        1 => f.push(("kind", s("hang"))),
        2 => {
            f.push(("kind", s("status")));
            f.push((
                "status",
                int(*[500u64, 502, 503, 429, 404]
                    .get(rng.below(5) as usize)
                    .unwrap_or(&500)),
            ));
        }
        3 => {
            f.push(("kind", s("errors")));
            f.push(("rate", Value::Float(rng.range(1, 100) as f64 / 100.0)));
        }
        4 => {
            f.push(("kind", s("slow")));
            f.push(("latency", latency(rng, 3_000)));
        }
        _ => {
            let period = rng.range(1_000, 20_000);
            f.push(("kind", s("flap")));
            f.push(("period", ms(period)));
            f.push(("down_for", ms(rng.range(0, period))));
            f.push(("down", s(pick(rng, &["refused", "hang", "status"]))));
        }
    }
    table(f)
}

/// Paths, host and method that reach `route`.
fn route_request(r: &aegis_policy::config::RouteConfig) -> (String, Option<String>, String) {
    let path = r.path.clone();
    let host = match &r.host {
        None => None,
        Some(HostPattern::Exact(h)) => Some(h.clone()),
        Some(HostPattern::Suffix(sfx)) => Some(format!("fuzz.{sfx}")),
    };
    let method = r
        .methods
        .as_ref()
        .and_then(|m| m.first())
        .map_or_else(|| "GET".to_owned(), |m| m.as_str().to_owned());
    (path, host, method)
}

fn sub(path: &str, rest: &str) -> String {
    if path == "/" {
        format!("/{rest}")
    } else {
        format!("{path}/{rest}")
    }
}

/// The scenario document for `seed`.
pub fn generate(seed: u64, base: Option<&Base>) -> Result<Table, ScenarioError> {
    let mut rng = Rng::derive(seed, "fuzz scenario");
    let mut doc = Table::new();
    doc.insert("name".into(), s(&format!("fuzz-{seed}")));
    doc.insert(
        "description".into(),
        s("generated by aegis-sim fuzz: faults before 60 s, a quiet liveness phase after"),
    );
    doc.insert("seed".into(), int(seed));
    let (gw, env) = match base {
        Some(b) => (b.gateway.clone(), b.env.clone()),
        None => (gateway(&mut rng, seed), Table::new()),
    };
    let text = toml::to_string(&gw).map_err(|e| ScenarioError::new("gateway", e.to_string()))?;
    let senv = ScenarioEnv {
        vars: env
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|x| (k.clone(), x.to_owned())))
            .collect(),
        base: base.map(|b| b.dir.clone()).unwrap_or_default(),
    };
    let config = match base {
        Some(b) => b.config.clone(),
        None => Config::from_toml(&text, &senv)
            .map_err(|e| ScenarioError::new(format!("gateway.{}", e.path), e.reason))?,
    };
    doc.insert("gateway".into(), Value::Table(gw));
    if !env.is_empty() {
        doc.insert("env".into(), Value::Table(env));
    }
    let can_mint = config
        .auth
        .as_ref()
        .is_none_or(|a| a.algorithms.iter().any(|x| x.is_hmac()));

    // Upstreams: a latency each, faults only inside the safety phase.
    let mut urls: Vec<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.targets.iter().map(|t| t.url.as_str()))
        .collect();
    urls.sort_unstable();
    urls.dedup();
    let min_timeout = config
        .routes
        .iter()
        .map(|r| u64::try_from(r.timeout.as_millis()).unwrap_or(u64::MAX))
        .min()
        .unwrap_or(1_000);
    let cap = min_timeout.saturating_sub(1).min(90);
    let mut ups = Table::new();
    for url in urls {
        let mut u = Table::new();
        u.insert("latency".into(), latency(&mut rng, cap));
        let faults: Vec<Value> = (0..rng.below(3)).map(|_| fault(&mut rng)).collect();
        if !faults.is_empty() {
            u.insert("faults".into(), Value::Array(faults));
        }
        ups.insert(url.to_owned(), Value::Table(u));
    }
    doc.insert("upstreams".into(), Value::Table(ups));

    if rng.chance_ppm(400_000) {
        let (from, until) = window(&mut rng);
        let mut f = vec![("from", ms(from)), ("until", ms(until))];
        if rng.chance_ppm(500_000) {
            f.push(("kind", s("unavailable")));
        } else {
            f.push(("kind", s("slow")));
            f.push(("latency", ms(rng.range(10, 2_000))));
        }
        doc.insert("store_faults".into(), Value::Array(vec![table(f)]));
    }

    // Safety load: one stream per route, with strays (404s, /fail) and a token mix.
    let mut loads = Vec::new();
    for r in &config.routes {
        let (path, host, method) = route_request(r);
        let mut paths = vec![s(&path), s(&sub(&path, "item?x=1"))];
        if rng.chance_ppm(300_000) {
            paths.push(s(&sub(&path, "fail")));
        }
        if rng.chance_ppm(100_000) {
            paths.push(s("/no-such-route-here"));
        }
        let mut l = vec![
            ("rate", Value::Float(rng.range(2, 25) as f64)),
            ("until", ms(SAFETY_MS)),
            ("arrival", s(pick(&mut rng, &["uniform", "poisson"]))),
            ("method", s(&method)),
            ("paths", Value::Array(paths)),
            ("ips", int(rng.range(1, 20))),
            ("users", int(rng.range(1, 5))),
        ];
        if let Some(h) = host {
            l.push(("host", s(&h)));
        }
        let tokens = if can_mint {
            table(vec![
                ("valid", Value::Float(0.9)),
                ("missing", Value::Float(rng.range(0, 5) as f64 / 100.0)),
                ("expired", Value::Float(rng.range(0, 3) as f64 / 100.0)),
                (
                    "bad_signature",
                    Value::Float(rng.range(0, 2) as f64 / 100.0),
                ),
            ])
        } else {
            table(vec![("missing", Value::Float(1.0))])
        };
        l.push(("tokens", tokens));
        loads.push(table(l));
    }

    // Liveness phase: no faults; a steady stream to every route from ever-new clients, long
    // enough for any open circuit to half-open and be probed: 2·(timeout + open_for +
    // probe_timeout) + 5 s after the last fault.
    let max_timeout = config
        .routes
        .iter()
        .map(|r| r.timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    let liveness = 2 * (max_timeout + config.breaker.open_for + config.breaker.probe_timeout)
        + Duration::from_secs(5);
    let live_until = SAFETY_MS + u64::try_from(liveness.as_millis()).unwrap_or(u64::MAX);
    if can_mint {
        for r in &config.routes {
            let (path, host, method) = route_request(r);
            let mut l = vec![
                ("name", s(&format!("liveness {}", r.name))),
                ("rate", Value::Float(8.0)),
                ("from", ms(SAFETY_MS)),
                ("until", ms(live_until)),
                ("method", s(&method)),
                ("paths", Value::Array(vec![s(&path)])),
                ("ips", int(4096)),
                ("users", int(64)),
                ("pick", s("sequential")),
            ];
            if let Some(h) = host {
                l.push(("host", s(&h)));
            }
            loads.push(table(l));
        }
        doc.insert(
            "expect".into(),
            table(vec![("all_closed_at_end", Value::Boolean(true))]),
        );
    }
    doc.insert("load".into(), Value::Array(loads));
    Ok(doc)
}

/// What a fuzz campaign found.
#[derive(Debug)]
pub struct FuzzOutcome {
    pub seeds_run: u64,
    pub requests: u64,
    /// The first failing seed, its report and the scenario document.
    pub failure: Option<(u64, Report, String)>,
}

/// Runs seeds `first .. first + seeds`, stopping at the first violation.
pub fn fuzz(first: u64, seeds: u64, base: Option<&Base>) -> Result<FuzzOutcome, ScenarioError> {
    let mut out = FuzzOutcome {
        seeds_run: 0,
        requests: 0,
        failure: None,
    };
    for seed in first..first.saturating_add(seeds) {
        let doc = generate(seed, base)?;
        let dir = base.map(|b| b.dir.clone()).unwrap_or_default();
        let scenario =
            Scenario::from_value(Value::Table(doc.clone()), &format!("fuzz-{seed}"), &dir)
                .map_err(|e| ScenarioError::new(format!("seed {seed}: {}", e.path), e.reason))?;
        let report = run(
            &scenario,
            &RunOptions {
                seed,
                trace: false,
                scenario_ref: format!("fuzz-{seed}.toml"),
            },
        )?;
        out.seeds_run += 1;
        out.requests += report.requests;
        if !report.ok() {
            let text = toml::to_string(&doc).unwrap_or_default();
            out.failure = Some((seed, report, text));
            break;
        }
    }
    Ok(out)
}
