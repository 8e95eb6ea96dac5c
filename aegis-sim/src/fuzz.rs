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

/// Public keys (aegis-policy/tests/keys/) for configs that allow a public-key algorithm beside
/// HS256; the simulator has none of the private keys, so its tokens under them are forgeries.
const ED25519_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEACOQq99rHItyyOPgBLwWahFnCVfjFuVOlV1abDx7l8nw=\n-----END PUBLIC KEY-----\n";
const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzzZnpSKOV0NtMoBsCSLoZ1ya/nrT\nypM69K8SjY4ZWgBd27AU49HxyvM7slPMQIoHW2nLuDeqqnuqxopLEtmXtA==\n-----END PUBLIC KEY-----\n";
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsTCPdFfS5IXT/RksrtUP\nHq3ZmYDVVgQLQW6fuByXihKtmiGvyQP5miLxg1nq/t0b60JLY5NzXzGQ3SpjED3a\nfg361neZDagHhrFyWS48+vGu6eO3/vxmGGBCEaXHC1nKWbGun7hzPzl4ZLby8uXy\nWwsrl8NHtT4YGl4LFxYQpmi7B5FzYyTIBM4f/RCT0e9U3lODRn/AerLnLUfDF1c6\ncIB/ytd1D/P9NNW3xR3xyoo8YT3KbB0y47ymIh7U53GteDeqTxWD4rRMjJSmEMVa\nQREdk7WLYfiTTCO2bWjlMmCh2lbxrlSAO5++bf0Vyo6UEwdVnMCsOgkwv9w9ENM2\noQIDAQAB\n-----END PUBLIC KEY-----\n";

/// Route paths to draw from: some share a prefix without a segment boundary (`/svc0`,
/// `/svc01`), some nest (`/svc0`, `/svc0/admin`), and `/` catches what the others leave.
const ROUTE_PATHS: [&str; 6] = ["/svc0", "/svc0/admin", "/svc01", "/svc", "/svc1", "/"];

/// A random gateway config for `seed`.
fn gateway(rng: &mut Rng, seed: u64) -> Table {
    let mut g = Table::new();
    let auth = rng.chance_ppm(500_000);
    if auth {
        let mut a = vec![
            ("secret", s(&format!("fuzz-secret-{seed}"))),
            ("leeway", s(pick(rng, &["0s", "1s", "5s", "30s", "90s"]))),
        ];
        // The allow-list: the default (HS256), another HMAC, or HMAC beside a public key (the
        // simulator signs with the first HMAC one; EdDSA tokens it sends are forgeries).
        match rng.below(8) {
            0 => a.push(("algorithms", Value::Array(vec![s("HS384")]))),
            1 => a.push(("algorithms", Value::Array(vec![s("HS512"), s("HS256")]))),
            2 => {
                a.push(("algorithms", Value::Array(vec![s("HS256"), s("EdDSA")])));
                a.push(("public_key_pem", s(ED25519_PUBLIC_PEM)));
            }
            3 => {
                a.push(("algorithms", Value::Array(vec![s("HS256"), s("ES256")])));
                a.push(("public_key_pem", s(EC_PUBLIC_PEM)));
            }
            4 => {
                a.push(("algorithms", Value::Array(vec![s("HS256"), s("RS256")])));
                a.push(("public_key_pem", s(RSA_PUBLIC_PEM)));
            }
            _ => {}
        }
        if rng.chance_ppm(300_000) {
            a.push(("issuer", s("fuzz-iss")));
        }
        if rng.chance_ppm(300_000) {
            a.push(("audience", s("fuzz-aud")));
        }
        if rng.chance_ppm(200_000) {
            a.push(("require_exp", Value::Boolean(false)));
        }
        g.insert("auth".into(), table(a));
    }
    g.insert(
        "rate_limit".into(),
        table(vec![
            ("store", s(pick(rng, &["memory", "redis"]))),
            ("on_store_error", s(pick(rng, &["allow", "deny"]))),
        ]),
    );
    // The server's edges: a proxy in front, the smallest URI and header limits.
    let mut server = Vec::new();
    if rng.chance_ppm(300_000) {
        server.push(("trusted_proxies", Value::Array(vec![s("10.9.0.0/16")])));
    }
    if rng.chance_ppm(200_000) {
        server.push(("max_uri_length", int(64)));
    }
    if rng.chance_ppm(200_000) {
        server.push(("max_header_size", int(1024)));
    }
    if !server.is_empty() {
        g.insert("server".into(), table(server));
    }
    let mut paths: Vec<&str> = ROUTE_PATHS.to_vec();
    let mut routes = Vec::new();
    let mut max_timeout = 0;
    for r in 0..rng.range(1, 3) {
        let mut route = Table::new();
        let path = paths.remove(rng.below(paths.len() as u64) as usize);
        route.insert("path".into(), s(path));
        // Named routes count separately; a default name is the path.
        if rng.chance_ppm(800_000) {
            route.insert("name".into(), s(&format!("r{r}")));
        }
        let targets = (0..rng.range(1, 4))
            .map(|t| {
                let base = if rng.chance_ppm(200_000) { "/base" } else { "" };
                s(&format!("http://svc{r}-{t}:80{base}"))
            })
            .collect();
        route.insert("targets".into(), Value::Array(targets));
        let route_auth = auth && rng.chance_ppm(600_000);
        route.insert("auth".into(), Value::Boolean(route_auth));
        match rng.below(10) {
            0 | 1 => {
                route.insert("host".into(), s("api.fuzz"));
            }
            2 => {
                route.insert("host".into(), s("*.fuzz"));
            }
            _ => {}
        }
        match rng.below(10) {
            0 | 1 => {
                route.insert("methods".into(), Value::Array(vec![s("GET"), s("POST")]));
            }
            2 => {
                route.insert("methods".into(), Value::Array(vec![s("POST")]));
            }
            _ => {}
        }
        if rng.chance_ppm(250_000) {
            route.insert("strip_prefix".into(), Value::Boolean(true));
        }
        if rng.chance_ppm(200_000) {
            route.insert("max_body_size".into(), int(100));
        }
        // At least 100 ms: baseline latencies stay below 90 ms.
        let timeout = rng.range(100, 2_000);
        max_timeout = max_timeout.max(timeout);
        route.insert("timeout".into(), ms(timeout));
        if rng.chance_ppm(600_000) {
            let keys: &[&str] = if route_auth {
                &["ip", "user", "header:x-api-key"]
            } else {
                &["ip", "header:x-api-key"]
            };
            route.insert(
                "rate_limit".into(),
                table(vec![
                    ("max", int(rng.range(1, 50))),
                    (
                        "window",
                        s(pick(rng, &["250ms", "1s", "1500ms", "2s", "5s", "10s"])),
                    ),
                    ("key", s(pick(rng, keys))),
                    ("algorithm", s(pick(rng, &["fixed_window", "gcra"]))),
                ]),
            );
        }
        routes.push(Value::Table(route));
    }
    let mut breaker = vec![
        ("failure_threshold", int(rng.range(1, 5))),
        ("open_for", ms(rng.range(500, 10_000))),
    ];
    if rng.chance_ppm(400_000) {
        breaker.push(("probe_timeout", ms(max_timeout + rng.range(0, 3_000))));
    }
    match rng.below(8) {
        0 => breaker.push(("failure_statuses", Value::Array(vec![s("5xx"), int(429)]))),
        1 => breaker.push((
            "failure_statuses",
            Value::Array(vec![int(500), int(502), int(503), int(504)]),
        )),
        2 => breaker.push(("failure_statuses", Value::Array(vec![s("4xx"), s("5xx")]))),
        _ => {}
    }
    g.insert("breaker".into(), table(breaker));
    g.insert("routes".into(), Value::Array(routes));
    g
}

/// Upstream traffic management on a generated gateway (from its own stream, so that the
/// other draws of a seed stay as they were): weights, power of two choices, health checks,
/// per-route retries and a retry budget. Returns whether the scenario models retries.
fn traffic_features(rng: &mut Rng, g: &mut Table) -> bool {
    let retries = rng.chance_ppm(400_000);
    if retries {
        g.insert(
            "retry_budget".into(),
            table(vec![
                ("ratio", Value::Float(rng.range(0, 50) as f64 / 100.0)),
                ("min_per_second", int(rng.range(0, 10))),
                ("window", s(pick(rng, &["1s", "5s", "10s"]))),
            ]),
        );
    }
    let Some(Value::Array(routes)) = g.get_mut("routes") else {
        return retries;
    };
    for route in routes.iter_mut() {
        let Value::Table(r) = route else { continue };
        let n = match r.get("targets") {
            Some(Value::Array(t)) => t.len(),
            _ => 0,
        };
        if n >= 2
            && rng.chance_ppm(300_000)
            && let Some(Value::Array(targets)) = r.get_mut("targets")
        {
            for t in targets.iter_mut() {
                let url = t.as_str().unwrap_or_default().to_owned();
                *t = table(vec![("url", s(&url)), ("weight", int(rng.range(1, 8)))]);
            }
        }
        if rng.chance_ppm(250_000) {
            // Without a draw of its own (the other draws stay as they were): consistent
            // hashing on routes with an odd number of targets, P2C on the others.
            let balance = if n % 2 == 1 { "hash" } else { "p2c" };
            r.insert("balance".into(), s(balance));
        }
        if rng.chance_ppm(300_000) {
            let interval = rng.range(500, 5_000);
            r.insert(
                "health_check".into(),
                table(vec![
                    ("path", s("/health")),
                    ("interval", ms(interval)),
                    ("timeout", ms(rng.range(50, interval.min(1_000)))),
                    ("unhealthy_after", int(rng.range(1, 4))),
                    ("healthy_after", int(rng.range(1, 3))),
                ]),
            );
        }
        if retries {
            r.insert("retries".into(), int(rng.range(0, 3)));
        }
    }
    retries
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
    match rng.below(7) {
        0 => f.push(("kind", s("refused"))),
        6 => f.push(("kind", s("lose"))),
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
            f.push(("down", s(pick(rng, &["refused", "hang", "status", "lose"]))));
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

/// Requests aimed at `path` the way clients write them: plain, with a query, failing, asking
/// for a status, percent-encoded, with dot and empty segments, continuing the prefix inside a
/// segment, with an encoded slash, with a broken escape.
fn paths_for(rng: &mut Rng, path: &str) -> Vec<Value> {
    let mut paths = vec![s(path), s(&sub(path, "item?x=1"))];
    if rng.chance_ppm(300_000) {
        paths.push(s(&sub(path, "fail")));
    }
    if rng.chance_ppm(300_000) {
        let status = pick(rng, &["503", "429", "404", "500"]);
        paths.push(s(&sub(path, &format!("item?status={status}"))));
    }
    if rng.chance_ppm(300_000) && path.len() > 1 {
        // `/svc0` as `/%73vc0`: the same route after decoding.
        let first = path.as_bytes()[1];
        paths.push(s(&format!("/%{first:02x}{}/item", &path[2..])));
        paths.push(s(&format!("/{}//./item/", &path[1..])));
        paths.push(s(&format!("/other/..{path}/x/../item")));
        // Escapes in both cases: unreserved ones decode (`%7e` `~`, `%4A` `J`, `%2e` `.`),
        // reserved ones stay, upper-cased (`%2f`, `%3a`).
        paths.push(s(&sub(path, "%7euser/%4Aoe/%2e/item")));
        paths.push(s(&sub(path, "a%2fb%3ac")));
        paths.push(s(&sub(path, "x/%2E%2e/item")));
        // Empty segments alone, and paths of nothing but dot segments.
        paths.push(s(&format!("/{path}//item")));
        paths.push(s(pick(rng, &["/.", "/..", "/./", "/./.."])));
    }
    if rng.chance_ppm(200_000) {
        let p = if path == "/" { "/x" } else { path };
        paths.push(s(&format!("{p}x/item")));
        paths.push(s(&format!("{p}%2Fitem")));
        paths.push(s(&format!("{p}/")));
    }
    if rng.chance_ppm(100_000) {
        paths.push(s(&sub(path, "%zz")));
    }
    if rng.chance_ppm(100_000) {
        paths.push(s("/no-such-route-here"));
    }
    paths
}

/// A token mix: mostly valid, some of every kind of refusal, and the edges of the leeway.
fn token_mix(rng: &mut Rng) -> Value {
    let mut mix = vec![("valid", Value::Float(0.8))];
    for (kind, most) in [
        ("missing", 5),
        ("expired", 3),
        ("bad_signature", 2),
        ("expired_in_leeway", 3),
        ("expired_past_leeway", 3),
        ("nbf_in_leeway", 2),
        ("nbf_past_leeway", 2),
        ("wrong_issuer", 2),
        ("wrong_audience", 2),
        ("no_exp", 2),
        ("not_bearer", 1),
        ("other_alg", 2),
        ("audience_list", 2),
        ("empty_user", 1),
        ("no_user", 1),
        ("fractional_exp", 2),
        ("negative_exp", 1),
        ("forged", 2),
        ("wrong_audience_list", 1),
    ] {
        mix.push((kind, Value::Float(rng.range(0, most) as f64 / 100.0)));
    }
    table(mix)
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
    // Traffic management draws from its own stream.
    let mut trng = Rng::derive(seed, "fuzz traffic");
    let (gw, env, retries) = match base {
        Some(b) => (b.gateway.clone(), b.env.clone(), false),
        None => {
            let mut g = gateway(&mut rng, seed);
            let retries = traffic_features(&mut trng, &mut g);
            (g, Table::new(), retries)
        }
    };
    if retries {
        doc.insert(
            "traffic".into(),
            table(vec![("retries", Value::Boolean(true))]),
        );
    }
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
        let mut faults: Vec<Value> = (0..rng.below(3)).map(|_| fault(&mut rng)).collect();
        // Resets (the request was read, then the connection closed): only idempotent
        // requests may be retried after one.
        if trng.chance_ppm(200_000) {
            let (from, until) = window(&mut trng);
            faults.push(table(vec![
                ("kind", s("reset")),
                ("from", ms(from)),
                ("until", ms(until)),
            ]));
        }
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

    // Safety load: one stream per route, with strays (404s, /fail, encodings) and a token mix.
    let header_keys = config.routes.iter().any(|r| {
        matches!(
            r.rate_limit.as_ref().map(|l| &l.key),
            Some(aegis_policy::config::LimitKeyKind::Header(_))
        )
    });
    let mut loads = Vec::new();
    let mut all_paths = Vec::new();
    for r in &config.routes {
        let (path, host, method) = route_request(r);
        let mut paths = paths_for(&mut rng, &path);
        if config.server.max_uri_bytes == 64 {
            // One byte under, at and over the limit.
            let base = sub(&path, "item?pad=");
            for len in [63, 64, 65] {
                let pad = "x".repeat(len - base.len().min(len));
                paths.push(s(&format!("{base}{pad}")));
            }
        }
        all_paths.extend(paths.iter().cloned());
        let mut l = vec![
            ("rate", Value::Float(rng.range(2, 20) as f64)),
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
            token_mix(&mut rng)
        } else {
            table(vec![("missing", Value::Float(1.0))])
        };
        l.push(("tokens", tokens));
        if header_keys && rng.chance_ppm(500_000) {
            l.push(("api_key", Value::Boolean(true)));
        }
        if rng.chance_ppm(300_000) {
            l.push(("forge_user_id", Value::Boolean(true)));
        }
        if rng.chance_ppm(200_000) {
            l.push((
                "content_lengths",
                Value::Array(vec![int(99), int(100), int(101)]),
            ));
        }
        if rng.chance_ppm(200_000) {
            l.push(("extra_headers", int(9)));
        }
        if config.server.max_header_bytes == 1024 && rng.chance_ppm(500_000) {
            l.push(("header_budget", int(1024)));
        }
        if !config.server.trusted_proxies.is_empty() && rng.chance_ppm(500_000) {
            l.push(("forwarded_for", Value::Boolean(true)));
            l.retain(|(k, _)| *k != "ips");
            l.push((
                "ips",
                Value::Array(vec![s("10.9.0.1"), s("10.9.0.2"), s("192.0.2.50")]),
            ));
        }
        if rng.chance_ppm(300_000) {
            l.push(("cancel", Value::Float(rng.range(1, 10) as f64 / 100.0)));
        }
        loads.push(table(l));
    }
    // Strays: any of those paths, with another method and host.
    if rng.chance_ppm(500_000) {
        let mut l = vec![
            ("name", s("strays")),
            ("rate", Value::Float(rng.range(1, 4) as f64)),
            ("until", ms(SAFETY_MS)),
            ("method", s(pick(&mut rng, &["GET", "POST", "DELETE"]))),
            ("paths", Value::Array(all_paths)),
            ("ips", int(rng.range(1, 5))),
            ("users", int(rng.range(1, 3))),
        ];
        match rng.below(4) {
            0 => l.push(("host", s("api.fuzz:8000"))),
            1 => l.push(("host", s("x.FUZZ"))),
            2 => l.push(("host", s("elsewhere.example"))),
            _ => {}
        }
        let tokens = if can_mint {
            token_mix(&mut rng)
        } else {
            table(vec![("missing", Value::Float(1.0))])
        };
        l.push(("tokens", tokens));
        loads.push(table(l));
    }

    // Upgrades (WebSocket tunnels) to one route.
    if trng.chance_ppm(200_000)
        && let Some(r) = config.routes.first()
    {
        let (path, host, method) = route_request(r);
        let mut l = vec![
            ("name", s("tunnels")),
            ("rate", Value::Float(1.0)),
            ("until", ms(SAFETY_MS)),
            ("method", s(&method)),
            ("paths", Value::Array(vec![s(&path)])),
            ("tunnel", ms(trng.range(1_000, 30_000))),
        ];
        if let Some(h) = host {
            l.push(("host", s(&h)));
        }
        if !can_mint {
            l.push(("tokens", table(vec![("missing", Value::Float(1.0))])));
        }
        loads.push(table(l));
    }

    // The wall clock steps (NTP) forward during the safety phase: to just before or onto a
    // window edge of a limit, or by up to two minutes.
    let windows: Vec<u64> = config
        .routes
        .iter()
        .filter_map(|r| r.rate_limit.as_ref())
        .map(|l| u64::try_from(l.window.as_millis()).unwrap_or(1).max(1))
        .collect();
    // Only forward steps: after a step back, whether a key that expired before it counts
    // again depends on whether the store swept it meanwhile (it sweeps at most once a second
    // of wall time), which is the store's housekeeping rather than a rule to check.
    if rng.chance_ppm(300_000) {
        let mut jumps = Vec::new();
        let mut offset: i64 = 0;
        let mut at = 0;
        for _ in 0..rng.range(1, 2) {
            at = rng.range(at + 1_000, SAFETY_MS - 5_000);
            let wall = i64::try_from(at).unwrap_or(0) + offset;
            let by = match (windows.is_empty(), rng.below(3)) {
                (false, 0 | 1) => {
                    let w = i64::try_from(windows[rng.below(windows.len() as u64) as usize])
                        .unwrap_or(1);
                    // DEFAULT_WALL_START is a multiple of every window; land on an edge or 1 ms
                    // before it.
                    let edge = (wall / w + 1) * w;
                    edge - wall - i64::try_from(rng.below(2)).unwrap_or(0)
                }
                _ => i64::try_from(rng.range(1, 120_000)).unwrap_or(1),
            };
            offset += by;
            let by_text = if by < 0 {
                format!("-{}ms", -by)
            } else {
                format!("{by}ms")
            };
            jumps.push(table(vec![("at", ms(at)), ("by", s(&by_text))]));
        }
        doc.insert("clock_jumps".into(), Value::Array(jumps));
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
    // A target back from its faults is in rotation again after healthy_after passed probes.
    let health = config
        .routes
        .iter()
        .filter_map(|r| r.health_check.as_ref())
        .map(|h| (h.interval + h.timeout) * (h.healthy_after + 1) * 11 / 10)
        .max()
        .unwrap_or(Duration::ZERO);
    let liveness = 2 * (max_timeout + config.breaker.open_for + config.breaker.probe_timeout)
        + health
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
