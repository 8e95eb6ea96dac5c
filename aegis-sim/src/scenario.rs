//! Scenario files: the gateway config (inline under `[gateway]` or by `gateway_config` path),
//! upstream behaviour per target over virtual time, client load, scripted requests and store
//! faults; parsed and validated with errors that name the key path and the reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use aegis_policy::config::ConfigEnv;
use aegis_policy::http::Method;
use aegis_policy::time::parse_duration;
use aegis_policy::{Config, UnixMillis};
use serde::Deserialize;

/// Unix ms at virtual time zero unless a scenario says otherwise (2027-01-15, a multiple of
/// every common window so fixed windows start at t = 0).
pub const DEFAULT_WALL_START: u64 = 1_800_000_000_000;

const NS_PER_MS: u64 = 1_000_000;

/// An invalid scenario: the key path (`load[0].rate`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ScenarioError {
    pub path: String,
    pub reason: String,
}

impl ScenarioError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
        ScenarioError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated model. Times are virtual nanoseconds since the start of the run.

/// A latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    Fixed(u64),
    /// Uniform over `min..=max`.
    Uniform {
        min: u64,
        max: u64,
    },
    /// `min` plus an exponential with mean `mean`, capped at `max`.
    Exponential {
        min: u64,
        mean: u64,
        max: u64,
    },
}

/// What a target does while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Connection refused: the gateway answers 502.
    Refused,
    /// Accepts and never answers: the route's timeout fires (504).
    Hang,
    /// Answers this status.
    Status(u16),
    /// The outcome is lost: it never reaches the gateway's policy (a shell bug, a task that
    /// died). The client gets a 504 from the shell's own deadline; the policy's only way out
    /// is the breaker's `probe_timeout`.
    Lost,
    /// Reads the request, then closes the connection without a response: a failure after
    /// the request was sent (only an idempotent request may be sent again).
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Down(Down),
    /// A fraction (per million) of requests answered with `status`.
    Errors {
        ppm: u32,
        status: u16,
    },
    /// Responses take this long instead.
    Slow(Latency),
    /// Down for `down_for` at the start of every `period`, then up for the rest of it.
    Flap {
        period: u64,
        down_for: u64,
        down: Down,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFault {
    pub from: u64,
    pub until: u64,
    pub kind: FaultKind,
}

/// One target URL's behaviour. URLs are instances: a URL used by two routes is one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub latency: Latency,
    pub error_ppm: u32,
    pub error_status: u16,
    /// How long a refused connection takes to be known.
    pub connect_latency: u64,
    pub faults: Vec<UpstreamFault>,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        UpstreamSpec {
            latency: Latency::Uniform {
                min: NS_PER_MS,
                max: 5 * NS_PER_MS,
            },
            error_ppm: 0,
            error_status: 500,
            connect_latency: NS_PER_MS / 2,
            faults: Vec::new(),
        }
    }
}

/// What a simulated client puts in `Authorization`. The edge kinds are minted at the
/// instant the request is sent, relative to its wall time and the config's leeway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenKind {
    Valid,
    Missing,
    /// Expired a day before the run, far past any leeway.
    Expired,
    BadSignature,
    /// `exp` one second inside the leeway: still accepted.
    ExpiredInLeeway,
    /// `exp` exactly at the leeway's end: refused as expired.
    ExpiredPastLeeway,
    /// `nbf` at the far end of the leeway: accepted.
    NbfInLeeway,
    /// `nbf` one second beyond the leeway: refused as not yet valid.
    NbfPastLeeway,
    /// `iss` other than the configured issuer (valid when none is configured).
    WrongIssuer,
    /// `aud` other than the configured audience (valid when none is configured).
    WrongAudience,
    /// No `exp` claim (refused when `require_exp`, the default).
    NoExp,
    /// `Authorization: Basic ...`: not a bearer token.
    NotBearer,
    /// Signed with the secret under an HMAC algorithm the config does not allow (valid when
    /// it allows all three).
    OtherAlg,
    /// `aud` as a list holding the configured audience among others.
    AudienceList,
    /// An empty identity claim.
    EmptyUser,
    /// No identity claim (neither the configured one nor `sub`).
    NoUser,
    /// `exp` as a fraction of a second (NumericDate allows it).
    FractionalExp,
    /// A negative `exp`.
    NegativeExp,
    /// Claims a public-key signature (the first such algorithm the config allows, else
    /// EdDSA): a forgery, since the simulator holds no private key.
    Forged,
    /// `aud` as a list without the configured audience.
    WrongAudienceList,
    /// `[idp]` scenarios: signed by a key the IdP never published, naming a fresh `kid` each
    /// time (a flood of random kids).
    UnknownKid,
}

impl TokenKind {
    pub const ALL: [TokenKind; 21] = [
        TokenKind::Valid,
        TokenKind::Missing,
        TokenKind::Expired,
        TokenKind::BadSignature,
        TokenKind::ExpiredInLeeway,
        TokenKind::ExpiredPastLeeway,
        TokenKind::NbfInLeeway,
        TokenKind::NbfPastLeeway,
        TokenKind::WrongIssuer,
        TokenKind::WrongAudience,
        TokenKind::NoExp,
        TokenKind::NotBearer,
        TokenKind::OtherAlg,
        TokenKind::AudienceList,
        TokenKind::EmptyUser,
        TokenKind::NoUser,
        TokenKind::FractionalExp,
        TokenKind::NegativeExp,
        TokenKind::Forged,
        TokenKind::WrongAudienceList,
        TokenKind::UnknownKid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Valid => "valid",
            TokenKind::Missing => "missing",
            TokenKind::Expired => "expired",
            TokenKind::BadSignature => "bad_signature",
            TokenKind::ExpiredInLeeway => "expired_in_leeway",
            TokenKind::ExpiredPastLeeway => "expired_past_leeway",
            TokenKind::NbfInLeeway => "nbf_in_leeway",
            TokenKind::NbfPastLeeway => "nbf_past_leeway",
            TokenKind::WrongIssuer => "wrong_issuer",
            TokenKind::WrongAudience => "wrong_audience",
            TokenKind::NoExp => "no_exp",
            TokenKind::NotBearer => "not_bearer",
            TokenKind::OtherAlg => "other_alg",
            TokenKind::AudienceList => "audience_list",
            TokenKind::EmptyUser => "empty_user",
            TokenKind::NoUser => "no_user",
            TokenKind::FractionalExp => "fractional_exp",
            TokenKind::NegativeExp => "negative_exp",
            TokenKind::Forged => "forged",
            TokenKind::WrongAudienceList => "wrong_audience_list",
            TokenKind::UnknownKid => "unknown_kid",
        }
    }

    /// Minted per request, from the request's wall time (the others are minted once per user).
    pub fn per_request(self) -> bool {
        matches!(
            self,
            TokenKind::ExpiredInLeeway
                | TokenKind::ExpiredPastLeeway
                | TokenKind::NbfInLeeway
                | TokenKind::NbfPastLeeway
        )
    }

    /// Index into [`TokenKind::ALL`].
    pub fn index(self) -> usize {
        TokenKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    fn parse(path: &str, s: &str) -> Result<TokenKind, ScenarioError> {
        TokenKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = TokenKind::ALL.iter().map(|k| k.name()).collect();
                ScenarioError::new(
                    path,
                    format!("{s:?} is not a token kind ({})", names.join(", ")),
                )
            })
    }
}

/// A steady stream of requests from a pool of clients.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    pub name: String,
    /// Requests per 1000 seconds (rate × 1000), so the schedule is integer arithmetic.
    pub rate_milli: u64,
    pub from: u64,
    pub until: u64,
    pub poisson: bool,
    pub method: Method,
    pub host: Option<String>,
    pub paths: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub users: Vec<String>,
    /// Walk the ip and user pools in order instead of drawing from them.
    pub sequential: bool,
    /// Cumulative weights (per million of the total) of each token kind.
    pub tokens: Vec<(TokenKind, u64)>,
    /// Send `x-api-key: <user>` with every request (for `key = "header:x-api-key"` limits).
    pub api_key: bool,
    /// Send a forged `x-user-id: mallory` with every request: it must never reach an upstream.
    pub forge_user_id: bool,
    /// Send `content-length` with one of these values (by user: user i sends value i mod n).
    pub content_lengths: Vec<u64>,
    /// Send this many extra headers (`x-extra-0: 1` ...).
    pub extra_headers: u32,
    /// Pad the headers (`x-pad`) to one byte under, exactly at, or one byte over this size
    /// (by user), as the gateway counts them: name, value and 4 bytes each.
    pub header_budget: Option<usize>,
    /// Send `x-forwarded-for` (values by user: a client behind a trusted proxy, an unparsable
    /// entry, only trusted proxies, two untrusted addresses before a proxy, a bare client).
    pub forwarded_for: bool,
    /// Fraction (per million) of requests whose client goes away before the answer: the
    /// upstream attempt ends as `Cancelled` at a uniform instant before its outcome.
    pub cancel_ppm: u32,
    /// Every request is an upgrade (WebSocket): the upstream answers `101` and the tunnel
    /// stays open this long (ns).
    pub tunnel: Option<u64>,
}

impl LoadSpec {
    /// Whether requests carry headers besides the token.
    pub fn has_extras(&self) -> bool {
        self.api_key
            || self.forge_user_id
            || !self.content_lengths.is_empty()
            || self.extra_headers > 0
            || self.header_budget.is_some()
            || self.forwarded_for
    }
}

/// `count` requests at `at`, `at + every`, ...
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptSpec {
    pub at: u64,
    pub every: u64,
    pub count: u32,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub ip: IpAddr,
    pub user: String,
    pub token: TokenKind,
}

/// The counter store is unreachable (`slow: None`) or answers after `slow` between the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFault {
    pub from: u64,
    pub until: u64,
    pub slow: Option<u64>,
}

/// The wall clock steps (an NTP correction) by `by_ms` at virtual time `at`; the monotonic
/// clock the breakers use does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockJump {
    pub at: u64,
    pub by_ms: i64,
}

/// `[idp]`, validated: a simulated identity provider serving the gateway's JWKS. Times in
/// virtual nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpSpec {
    /// `"auth"` or the name of an `[auth_providers.NAME]`.
    pub provider: String,
    pub fetch_latency: u64,
    /// The `Cache-Control: max-age` the endpoint sends (whole seconds; the gateway's policy
    /// reads it from the header, as the real one does).
    pub max_age: Option<std::time::Duration>,
    /// Published keys: (kid, from, until).
    pub keys: Vec<(String, u64, u64)>,
    /// The key that signs tokens from a time on: (kid, from), in time order.
    pub signing: Vec<(String, u64)>,
    /// The endpoint fails between these times.
    pub outages: Vec<(u64, u64)>,
}

impl IdpSpec {
    /// Whether the endpoint is down at `t`.
    pub fn down_at(&self, t: u64) -> bool {
        self.outages.iter().any(|(f, u)| *f <= t && t < *u)
    }

    /// The kids the document publishes at `t`.
    pub fn published_at(&self, t: u64) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(_, f, u)| *f <= t && t < *u)
            .map(|(k, _, _)| k.as_str())
            .collect()
    }

    /// The kid that signs tokens at `t`.
    pub fn signing_kid(&self, t: u64) -> &str {
        self.signing
            .iter()
            .rev()
            .find(|(_, from)| *from <= t)
            .or(self.signing.first())
            .map_or("", |(k, _)| k.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// Liveness: once the load has ended and every outcome is in, every breaker is CLOSED.
    pub all_closed_at_end: bool,
    /// Exact counts for the statuses listed.
    pub status_counts: BTreeMap<u16, u64>,
    /// Lower and upper bounds for the statuses listed.
    pub status_at_least: BTreeMap<u16, u64>,
    pub status_at_most: BTreeMap<u16, u64>,
    /// Exact number of requests.
    pub requests: Option<u64>,
    /// The exact breaker timeline: `"<t> <target url> <FROM>><TO>"`, e.g.
    /// `"13.506s http://user-service-1:3001 CLOSED>OPEN"`.
    pub transitions: Option<Vec<String>>,
    /// Exact number of breaker transitions (for timelines too long to list).
    pub transition_count: Option<u64>,
    /// Exact 429 counts per counter key; keys not listed must have none.
    pub limited_keys: Option<BTreeMap<String, u64>>,
    pub store_errors: Option<u64>,
    pub admitted_unchecked: Option<u64>,
    /// Exact number of retries (`[traffic] retries`).
    pub retries: Option<u64>,
    /// The exact health-check timeline: `"<t> <target url> UNHEALTHY|HEALTHY"`.
    pub health_transitions: Option<Vec<String>>,
}

impl Expect {
    /// True when the scenario states what it expects of its outcome (a status count or
    /// bound) and of its breakers (a timeline, its length, or liveness).
    pub fn states_outcome(&self) -> bool {
        let statuses = !self.status_counts.is_empty()
            || !self.status_at_least.is_empty()
            || !self.status_at_most.is_empty();
        let breakers =
            self.transitions.is_some() || self.transition_count.is_some() || self.all_closed_at_end;
        statuses && breakers
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The seed used when the command line gives none.
    pub seed: u64,
    pub config: Config,
    pub wall_start: UnixMillis,
    /// When arrivals stop; the run then continues until every outcome is in.
    pub duration: u64,
    /// Every target URL of the config, in URL order.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub loads: Vec<LoadSpec>,
    pub requests: Vec<ScriptSpec>,
    pub store_faults: Vec<StoreFault>,
    pub clock_jumps: Vec<ClockJump>,
    pub expect: Expect,
    /// A simulated identity provider serving the gateway's JWKS (`[idp]`).
    pub idp: Option<IdpSpec>,
    /// A deliberate bug in the simulated shell (tests set it to see an invariant break).
    pub plant: Option<Plant>,
    pub traffic: TrafficSpec,
}

/// `[traffic]`: what the simulated shell does beyond one try per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Send failed tries again through the policy's retry rule and budget, as the gateway's
    /// loop does. Off by default: the scenarios written before it expect one try each.
    pub retries: bool,
    /// The gateway drains from this instant (SIGTERM): no new requests are accepted, open
    /// tunnels run until they end or `drain_timeout` has passed.
    pub drain_at: Option<u64>,
    pub drain_timeout: u64,
}

/// A deliberate bug planted in the simulated shell (never in the policy): the tests that
/// prove an invariant can fail set one on a loaded scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// A token naming an unknown kid never asks the JWKS cache for a refetch: rotation is
    /// only seen at the next scheduled refresh.
    IgnoreUnknownKid,
    /// The pipeline gets no keys once a JWKS fetch has failed (no stale-while-error).
    DropKeysOnFailure,
    /// A failed try is sent again whenever the policy's retry rule allows it, without
    /// asking the retry budget.
    RetryPastBudget,
    /// Health probe results are never reported to the policy.
    IgnoreHealthProbes,
}

// ---------------------------------------------------------------------------------------------
// The raw TOML model.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    seed: Option<u64>,
    duration: Option<String>,
    wall_clock_start: Option<u64>,
    gateway_config: Option<String>,
    gateway: Option<toml::Table>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    load: Vec<RawLoad>,
    #[serde(default)]
    requests: Vec<RawScript>,
    #[serde(default)]
    store_faults: Vec<RawStoreFault>,
    #[serde(default)]
    clock_jumps: Vec<RawClockJump>,
    expect: Option<RawExpect>,
    idp: Option<RawIdp>,
    traffic: Option<RawTraffic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    retries: Option<bool>,
    drain_at: Option<String>,
    drain_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdp {
    provider: Option<String>,
    fetch_latency: Option<String>,
    max_age: Option<String>,
    keys: Vec<RawIdpKey>,
    signing: Vec<RawIdpKey>,
    #[serde(default)]
    outages: Vec<RawWindow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdpKey {
    kid: String,
    from: Option<String>,
    until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    from: String,
    until: String,
}

fn idp(raw: RawIdp) -> Result<IdpSpec, ScenarioError> {
    let mut keys = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let p = format!("idp.keys[{i}]");
        let from = opt_dur(&format!("{p}.from"), k.from.as_deref(), 0)?;
        let until = opt_dur(&format!("{p}.until"), k.until.as_deref(), u64::MAX)?;
        if until <= from {
            return Err(ScenarioError::new(
                format!("{p}.until"),
                "must be later than from",
            ));
        }
        keys.push((k.kid.clone(), from, until));
    }
    let mut signing: Vec<(String, u64)> = Vec::new();
    for (i, k) in raw.signing.iter().enumerate() {
        let p = format!("idp.signing[{i}]");
        if k.until.is_some() {
            return Err(ScenarioError::new(
                format!("{p}.until"),
                "a signing key signs until the next one's from",
            ));
        }
        let from = opt_dur(&format!("{p}.from"), k.from.as_deref(), 0)?;
        if signing.last().is_some_and(|(_, f)| *f > from) {
            return Err(ScenarioError::new(
                format!("{p}.from"),
                "signing keys go in time order",
            ));
        }
        signing.push((k.kid.clone(), from));
    }
    if signing.is_empty() {
        return Err(ScenarioError::new(
            "idp.signing",
            "name at least one signing key",
        ));
    }
    let outages = raw
        .outages
        .iter()
        .enumerate()
        .map(|(i, w)| window(&format!("idp.outages[{i}]"), &w.from, &w.until))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(IdpSpec {
        provider: raw.provider.unwrap_or_else(|| "auth".to_owned()),
        fetch_latency: opt_dur(
            "idp.fetch_latency",
            raw.fetch_latency.as_deref(),
            50 * NS_PER_MS,
        )?,
        max_age: raw
            .max_age
            .as_deref()
            .map(|m| {
                let ns = dur("idp.max_age", m)?;
                // It goes out as a Cache-Control header, which counts whole seconds.
                if ns % 1_000_000_000 != 0 {
                    return Err(ScenarioError::new(
                        "idp.max_age",
                        format!(
                            "{m:?} is not whole seconds (Cache-Control: max-age counts seconds)"
                        ),
                    ));
                }
                Ok(std::time::Duration::from_nanos(ns))
            })
            .transpose()?,
        keys,
        signing,
        outages,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClockJump {
    at: String,
    /// `"30s"` forward, `"-1500ms"` back.
    by: String,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    min: Option<String>,
    max: Option<String>,
    mean: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    latency: Option<RawLatency>,
    error_rate: Option<f64>,
    error_status: Option<u16>,
    connect_latency: Option<String>,
    #[serde(default)]
    faults: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    from: String,
    until: String,
    status: Option<u16>,
    rate: Option<f64>,
    latency: Option<RawLatency>,
    period: Option<String>,
    down_for: Option<String>,
    down: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPool {
    Count(u32),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    name: Option<String>,
    rate: f64,
    from: Option<String>,
    duration: Option<String>,
    until: Option<String>,
    arrival: Option<String>,
    method: Option<String>,
    host: Option<String>,
    paths: Vec<String>,
    ips: Option<RawPool>,
    users: Option<RawPool>,
    pick: Option<String>,
    tokens: Option<BTreeMap<String, f64>>,
    api_key: Option<bool>,
    forge_user_id: Option<bool>,
    content_lengths: Option<Vec<u64>>,
    extra_headers: Option<u32>,
    header_budget: Option<usize>,
    forwarded_for: Option<bool>,
    cancel: Option<f64>,
    tunnel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    at: String,
    path: String,
    method: Option<String>,
    host: Option<String>,
    ip: Option<String>,
    user: Option<String>,
    token: Option<String>,
    count: Option<u32>,
    every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreFault {
    kind: String,
    from: String,
    until: String,
    latency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    all_closed_at_end: Option<bool>,
    status_counts: Option<BTreeMap<String, u64>>,
    status_at_least: Option<BTreeMap<String, u64>>,
    status_at_most: Option<BTreeMap<String, u64>>,
    requests: Option<u64>,
    transitions: Option<Vec<String>>,
    transition_count: Option<u64>,
    limited_keys: Option<BTreeMap<String, u64>>,
    store_errors: Option<u64>,
    admitted_unchecked: Option<u64>,
    retries: Option<u64>,
    health_transitions: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// `${VAR}` values come from the scenario's `[env]` table (never the process environment, so a
/// run does not depend on where it runs); key files are read relative to the scenario.
#[derive(Debug, Clone)]
pub struct ScenarioEnv {
    pub vars: BTreeMap<String, String>,
    pub base: PathBuf,
}

impl ConfigEnv for ScenarioEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        let p = self.base.join(path);
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn dur(path: &str, s: &str) -> Result<u64, ScenarioError> {
    let d = parse_duration(s).map_err(|r| ScenarioError::new(path, r))?;
    Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn opt_dur(path: &str, s: Option<&str>, default: u64) -> Result<u64, ScenarioError> {
    s.map_or(Ok(default), |s| dur(path, s))
}

fn ppm(path: &str, p: f64) -> Result<u32, ScenarioError> {
    if !p.is_finite() || !(0.0..=1.0).contains(&p) {
        return Err(ScenarioError::new(
            path,
            format!("{p} is not a fraction between 0 and 1"),
        ));
    }
    Ok((p * 1_000_000.0).round() as u32)
}

fn status(path: &str, s: u16) -> Result<u16, ScenarioError> {
    if (100..=599).contains(&s) {
        Ok(s)
    } else {
        Err(ScenarioError::new(
            path,
            format!("{s} is not an HTTP status"),
        ))
    }
}

fn window(path: &str, from: &str, until: &str) -> Result<(u64, u64), ScenarioError> {
    let f = dur(&format!("{path}.from"), from)?;
    let u = dur(&format!("{path}.until"), until)?;
    if u <= f {
        return Err(ScenarioError::new(
            format!("{path}.until"),
            format!("{until:?} must be later than from ({from:?})"),
        ));
    }
    Ok((f, u))
}

fn method(path: &str, m: Option<&str>) -> Result<Method, ScenarioError> {
    let m = m.unwrap_or("GET");
    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
        .map_err(|_| ScenarioError::new(path, format!("{m:?} is not a method")))
}

fn request_path(path: &str, p: &str) -> Result<String, ScenarioError> {
    if !p.starts_with('/') {
        return Err(ScenarioError::new(
            path,
            format!("{p:?} must start with \"/\""),
        ));
    }
    Ok(p.to_owned())
}

fn ip(path: &str, s: &str) -> Result<IpAddr, ScenarioError> {
    s.parse()
        .map_err(|_| ScenarioError::new(path, format!("{s:?} is not an IP address")))
}

fn latency(path: &str, raw: &RawLatency) -> Result<Latency, ScenarioError> {
    let min = raw
        .min
        .as_deref()
        .map(|s| dur(&format!("{path}.min"), s))
        .transpose()?;
    let max = raw
        .max
        .as_deref()
        .map(|s| dur(&format!("{path}.max"), s))
        .transpose()?;
    let mean = raw
        .mean
        .as_deref()
        .map(|s| dur(&format!("{path}.mean"), s))
        .transpose()?;
    match (min, max, mean) {
        (Some(a), None, None) | (None, Some(a), None) => Ok(Latency::Fixed(a)),
        (Some(a), Some(b), None) if b >= a => Ok(Latency::Uniform { min: a, max: b }),
        (Some(_), Some(_), None) => Err(ScenarioError::new(
            format!("{path}.max"),
            "must not be less than min",
        )),
        (min, max, Some(m)) => {
            let min = min.unwrap_or(0);
            let max = max.unwrap_or(u64::MAX);
            if max < min {
                return Err(ScenarioError::new(
                    format!("{path}.max"),
                    "must not be less than min",
                ));
            }
            Ok(Latency::Exponential { min, mean: m, max })
        }
        (None, None, None) => Err(ScenarioError::new(
            path,
            "give min (fixed), min and max (uniform), or mean (exponential)",
        )),
    }
}

fn down(path: &str, kind: &str, status_raw: Option<u16>) -> Result<Down, ScenarioError> {
    match kind {
        "refused" => Ok(Down::Refused),
        "hang" => Ok(Down::Hang),
        "lose" => Ok(Down::Lost),
        "reset" => Ok(Down::Reset),
        "status" => Ok(Down::Status(status(
            &format!("{path}.status"),
            status_raw.unwrap_or(500),
        )?)),
        other => Err(ScenarioError::new(
            path,
            format!(
                "{other:?} is not a way to be down (\"refused\", \"reset\", \"hang\", \"lose\" or \"status\")"
            ),
        )),
    }
}

fn fault(path: &str, f: &RawFault) -> Result<UpstreamFault, ScenarioError> {
    let (from, until) = window(path, &f.from, &f.until)?;
    let kp = format!("{path}.kind");
    let kind = match f.kind.as_str() {
        "refused" | "reset" | "hang" | "lose" | "status" => {
            FaultKind::Down(down(&kp, &f.kind, f.status)?)
        }
        "errors" => FaultKind::Errors {
            ppm: ppm(&format!("{path}.rate"), f.rate.unwrap_or(1.0))?,
            status: status(&format!("{path}.status"), f.status.unwrap_or(500))?,
        },
        "slow" => {
            let raw = f.latency.clone().ok_or_else(|| {
                ScenarioError::new(format!("{path}.latency"), "a slow fault needs a latency")
            })?;
            FaultKind::Slow(latency(&format!("{path}.latency"), &raw)?)
        }
        "flap" => {
            let pp = format!("{path}.period");
            let period = dur(
                &pp,
                f.period
                    .as_deref()
                    .ok_or_else(|| ScenarioError::new(&pp, "a flap fault needs a period"))?,
            )?;
            if period == 0 {
                return Err(ScenarioError::new(pp, "must be greater than zero"));
            }
            let down_for = opt_dur(
                &format!("{path}.down_for"),
                f.down_for.as_deref(),
                period / 2,
            )?;
            if down_for > period {
                return Err(ScenarioError::new(
                    format!("{path}.down_for"),
                    "must not exceed period",
                ));
            }
            FaultKind::Flap {
                period,
                down_for,
                down: down(
                    &format!("{path}.down"),
                    f.down.as_deref().unwrap_or("refused"),
                    f.status,
                )?,
            }
        }
        other => {
            return Err(ScenarioError::new(
                kp,
                format!(
                    "{other:?} is not a fault (refused, hang, lose, status, errors, slow, flap)"
                ),
            ));
        }
    };
    Ok(UpstreamFault { from, until, kind })
}

fn upstream(
    path: &str,
    base: &UpstreamSpec,
    raw: &RawUpstream,
) -> Result<UpstreamSpec, ScenarioError> {
    let mut u = base.clone();
    if let Some(l) = &raw.latency {
        u.latency = latency(&format!("{path}.latency"), l)?;
    }
    if let Some(r) = raw.error_rate {
        u.error_ppm = ppm(&format!("{path}.error_rate"), r)?;
    }
    if let Some(s) = raw.error_status {
        u.error_status = status(&format!("{path}.error_status"), s)?;
    }
    if let Some(c) = &raw.connect_latency {
        u.connect_latency = dur(&format!("{path}.connect_latency"), c)?;
    }
    for (i, f) in raw.faults.iter().enumerate() {
        u.faults.push(fault(&format!("{path}.faults[{i}]"), f)?);
    }
    Ok(u)
}

fn pool_ips(
    path: &str,
    pool: Option<&RawPool>,
    index: usize,
) -> Result<Vec<IpAddr>, ScenarioError> {
    match pool {
        None => Ok(vec![generated_ip(index, 0)]),
        Some(RawPool::Count(0)) => Err(ScenarioError::new(path, "must be at least 1")),
        Some(RawPool::Count(n)) if *n > 65_000 => {
            Err(ScenarioError::new(path, "must be at most 65000"))
        }
        Some(RawPool::Count(n)) => Ok((0..*n).map(|i| generated_ip(index, i)).collect()),
        Some(RawPool::List(l)) if l.is_empty() => {
            Err(ScenarioError::new(path, "must list at least one address"))
        }
        Some(RawPool::List(l)) => l
            .iter()
            .enumerate()
            .map(|(i, s)| ip(&format!("{path}[{i}]"), s))
            .collect(),
    }
}

/// Client `i` of load `index`: `10.<index+1>.<i/256>.<i%256 + 1>`-ish, distinct per load.
fn generated_ip(index: usize, i: u32) -> IpAddr {
    let i = i + 1;
    IpAddr::V4(Ipv4Addr::new(
        10,
        (index as u8).wrapping_add(1),
        (i >> 8) as u8,
        (i & 0xff) as u8,
    ))
}

fn pool_users(path: &str, pool: Option<&RawPool>) -> Result<Vec<String>, ScenarioError> {
    match pool {
        None => Ok(vec!["test-123".to_owned()]),
        Some(RawPool::Count(0)) => Err(ScenarioError::new(path, "must be at least 1")),
        Some(RawPool::Count(n)) if *n > 100_000 => {
            Err(ScenarioError::new(path, "must be at most 100000"))
        }
        Some(RawPool::Count(n)) => Ok((1..=*n).map(|i| format!("user-{i}")).collect()),
        Some(RawPool::List(l)) if l.is_empty() => {
            Err(ScenarioError::new(path, "must list at least one user"))
        }
        Some(RawPool::List(l)) => {
            for (i, u) in l.iter().enumerate() {
                if u.is_empty() || u.len() > 256 || !u.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(ScenarioError::new(
                        format!("{path}[{i}]"),
                        format!("{u:?} is not a header-safe user id"),
                    ));
                }
            }
            Ok(l.clone())
        }
    }
}

fn load(i: usize, raw: &RawLoad) -> Result<LoadSpec, ScenarioError> {
    let p = |k: &str| format!("load[{i}].{k}");
    if !raw.rate.is_finite() || raw.rate <= 0.0 || raw.rate > 10_000_000.0 {
        return Err(ScenarioError::new(
            p("rate"),
            format!(
                "{} is not a rate between 0 and 10000000 requests per second",
                raw.rate
            ),
        ));
    }
    let rate_milli = ((raw.rate * 1000.0).round() as u64).max(1);
    let from = opt_dur(&p("from"), raw.from.as_deref(), 0)?;
    let until = match (&raw.duration, &raw.until) {
        (Some(_), Some(_)) => {
            return Err(ScenarioError::new(
                p("until"),
                "set duration or until, not both",
            ));
        }
        (Some(d), None) => from.saturating_add(dur(&p("duration"), d)?),
        (None, Some(u)) => dur(&p("until"), u)?,
        (None, None) => {
            return Err(ScenarioError::new(
                p("duration"),
                "a load needs a duration or an until",
            ));
        }
    };
    if until <= from {
        return Err(ScenarioError::new(p("until"), "must be later than from"));
    }
    let poisson = match raw.arrival.as_deref().unwrap_or("uniform") {
        "uniform" => false,
        "poisson" => true,
        other => {
            return Err(ScenarioError::new(
                p("arrival"),
                format!("{other:?} is not an arrival process (\"uniform\" or \"poisson\")"),
            ));
        }
    };
    let sequential = match raw.pick.as_deref().unwrap_or("random") {
        "random" => false,
        "sequential" => true,
        other => {
            return Err(ScenarioError::new(
                p("pick"),
                format!("{other:?} is not a pick (\"random\" or \"sequential\")"),
            ));
        }
    };
    if raw.paths.is_empty() {
        return Err(ScenarioError::new(
            p("paths"),
            "must list at least one path",
        ));
    }
    let paths = raw
        .paths
        .iter()
        .enumerate()
        .map(|(j, s)| request_path(&format!("load[{i}].paths[{j}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = Vec::new();
    match &raw.tokens {
        None => tokens.push((TokenKind::Valid, 1_000_000)),
        Some(map) => {
            let mut total = 0u64;
            for (k, w) in map {
                let kind = TokenKind::parse(&p("tokens"), k)?;
                let w = u64::from(ppm(&format!("load[{i}].tokens.{k}"), *w)?);
                if w > 0 {
                    total += w;
                    tokens.push((kind, total));
                }
            }
            if total == 0 {
                return Err(ScenarioError::new(
                    p("tokens"),
                    "the weights add up to zero",
                ));
            }
        }
    }
    Ok(LoadSpec {
        name: raw.name.clone().unwrap_or_else(|| format!("load[{i}]")),
        rate_milli,
        from,
        until,
        poisson,
        method: method(&p("method"), raw.method.as_deref())?,
        host: raw.host.clone(),
        paths,
        ips: pool_ips(&p("ips"), raw.ips.as_ref(), i)?,
        users: pool_users(&p("users"), raw.users.as_ref())?,
        sequential,
        tokens,
        api_key: raw.api_key.unwrap_or(false),
        forge_user_id: raw.forge_user_id.unwrap_or(false),
        content_lengths: raw.content_lengths.clone().unwrap_or_default(),
        extra_headers: raw.extra_headers.unwrap_or(0).min(64),
        header_budget: raw.header_budget,
        forwarded_for: raw.forwarded_for.unwrap_or(false),
        cancel_ppm: ppm(&p("cancel"), raw.cancel.unwrap_or(0.0))?,
        tunnel: raw
            .tunnel
            .as_deref()
            .map(|t| dur(&p("tunnel"), t))
            .transpose()?,
    })
}

fn script(i: usize, raw: &RawScript) -> Result<ScriptSpec, ScenarioError> {
    let p = |k: &str| format!("requests[{i}].{k}");
    let count = raw.count.unwrap_or(1);
    if count == 0 {
        return Err(ScenarioError::new(p("count"), "must be at least 1"));
    }
    let user = raw.user.clone().unwrap_or_else(|| "test-123".to_owned());
    pool_users(&p("user"), Some(&RawPool::List(vec![user.clone()])))
        .map_err(|e| ScenarioError::new(p("user"), e.reason))?;
    Ok(ScriptSpec {
        at: dur(&p("at"), &raw.at)?,
        every: opt_dur(&p("every"), raw.every.as_deref(), 0)?,
        count,
        method: method(&p("method"), raw.method.as_deref())?,
        host: raw.host.clone(),
        path: request_path(&p("path"), &raw.path)?,
        ip: ip(&p("ip"), raw.ip.as_deref().unwrap_or("10.0.0.1"))?,
        user,
        token: TokenKind::parse(&p("token"), raw.token.as_deref().unwrap_or("valid"))?,
    })
}

impl Scenario {
    /// Reads and validates a scenario file; its name defaults to the file stem.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ScenarioError::new("scenario", format!("cannot read {}: {e}", path.display()))
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".to_owned());
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Scenario::from_toml(&text, &name, &base)
    }

    pub fn from_toml(text: &str, name: &str, base: &Path) -> Result<Scenario, ScenarioError> {
        let value: toml::Value = toml::from_str(text)
            .map_err(|e| ScenarioError::new("scenario", one_line(&e.to_string())))?;
        Scenario::from_value(value, name, base)
    }

    /// Validates an already-parsed document (the fuzzer builds them in memory).
    pub fn from_value(
        value: toml::Value,
        name: &str,
        base: &Path,
    ) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "scenario".to_owned()
            } else {
                path
            };
            let msg = one_line(&e.into_inner().to_string());
            let msg = if msg.contains("untagged enum RawPool") {
                "expected a count or a list of strings".to_owned()
            } else {
                msg
            };
            ScenarioError::new(path, msg)
        })?;
        validate(raw, name, base)
    }
}

fn validate(raw: RawScenario, name: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    let env = ScenarioEnv {
        vars: raw.env.clone(),
        base: base.to_path_buf(),
    };
    let config = match (&raw.gateway, &raw.gateway_config) {
        (Some(_), Some(_)) => {
            return Err(ScenarioError::new(
                "gateway_config",
                "set either [gateway] or gateway_config, not both",
            ));
        }
        (None, None) => {
            return Err(ScenarioError::new(
                "gateway",
                "a scenario needs the gateway config: a [gateway] table or gateway_config = \"path\"",
            ));
        }
        (Some(table), None) => {
            let text = toml::to_string(table)
                .map_err(|e| ScenarioError::new("gateway", one_line(&e.to_string())))?;
            Config::from_toml(&text, &env).map_err(|e| {
                let path = if e.path == "config" {
                    "gateway".to_owned()
                } else {
                    format!("gateway.{}", e.path)
                };
                ScenarioError::new(path, e.reason)
            })?
        }
        (None, Some(file)) => {
            let text = env
                .read_file(file)
                .map_err(|r| ScenarioError::new("gateway_config", r))?;
            Config::from_toml(&text, &env)
                .map_err(|e| ScenarioError::new("gateway_config", format!("{file}: {e}")))?
        }
    };

    let defaults = match &raw.upstream {
        Some(u) => upstream("upstream", &UpstreamSpec::default(), u)?,
        None => UpstreamSpec::default(),
    };
    let mut upstreams: BTreeMap<String, UpstreamSpec> = BTreeMap::new();
    for route in &config.routes {
        for t in &route.targets {
            upstreams.insert(t.url.clone(), defaults.clone());
        }
    }
    for (url, u) in &raw.upstreams {
        let key = url.trim_end_matches('/');
        let path = format!("upstreams.{url:?}");
        let Some(slot) = upstreams.get_mut(key) else {
            let known: Vec<&str> = config
                .routes
                .iter()
                .flat_map(|r| r.targets.iter().map(|t| t.url.as_str()))
                .collect();
            return Err(ScenarioError::new(
                path,
                format!(
                    "is not a target of any route (targets: {})",
                    known.join(", ")
                ),
            ));
        };
        *slot = upstream(&path, &defaults, u)?;
    }

    let loads = raw
        .load
        .iter()
        .enumerate()
        .map(|(i, l)| load(i, l))
        .collect::<Result<Vec<_>, _>>()?;
    let requests = raw
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| script(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store_faults = Vec::new();
    for (i, f) in raw.store_faults.iter().enumerate() {
        let p = format!("store_faults[{i}]");
        let (from, until) = window(&p, &f.from, &f.until)?;
        let slow = match f.kind.as_str() {
            "unavailable" => None,
            "slow" => Some(dur(
                &format!("{p}.latency"),
                f.latency.as_deref().ok_or_else(|| {
                    ScenarioError::new(format!("{p}.latency"), "a slow store fault needs a latency")
                })?,
            )?),
            other => {
                return Err(ScenarioError::new(
                    format!("{p}.kind"),
                    format!("{other:?} is not a store fault (\"unavailable\" or \"slow\")"),
                ));
            }
        };
        store_faults.push(StoreFault { from, until, slow });
    }

    let mut clock_jumps = Vec::new();
    for (i, j) in raw.clock_jumps.iter().enumerate() {
        let p = format!("clock_jumps[{i}]");
        let at = dur(&format!("{p}.at"), &j.at)?;
        let (neg, by) = match j.by.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, j.by.trim()),
        };
        let ms = dur(&format!("{p}.by"), by)? / NS_PER_MS;
        let ms =
            i64::try_from(ms).map_err(|_| ScenarioError::new(format!("{p}.by"), "is too large"))?;
        clock_jumps.push(ClockJump {
            at,
            by_ms: if neg { -ms } else { ms },
        });
    }
    clock_jumps.sort_by_key(|j| j.at);

    let last_arrival = loads
        .iter()
        .map(|l| l.until)
        .chain(requests.iter().map(|r| {
            r.at.saturating_add(r.every.saturating_mul(u64::from(r.count - 1)))
                .saturating_add(1)
        }))
        .max()
        .unwrap_or(0);
    let duration = match &raw.duration {
        Some(d) => dur("duration", d)?,
        None => last_arrival,
    };
    if duration == 0 {
        return Err(ScenarioError::new(
            "load",
            "the scenario sends no requests: add [[load]] or [[requests]] entries",
        ));
    }

    let mut expect = Expect::default();
    if let Some(e) = raw.expect {
        expect.all_closed_at_end = e.all_closed_at_end.unwrap_or(false);
        let codes = |name: &str, m: Option<BTreeMap<String, u64>>| {
            let mut out = BTreeMap::new();
            for (k, v) in m.unwrap_or_default() {
                let code = k
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        ScenarioError::new(
                            format!("expect.{name}.{k}"),
                            format!("{k:?} is not an HTTP status"),
                        )
                    })?;
                out.insert(code, v);
            }
            Ok::<_, ScenarioError>(out)
        };
        expect.status_counts = codes("status_counts", e.status_counts)?;
        expect.status_at_least = codes("status_at_least", e.status_at_least)?;
        expect.status_at_most = codes("status_at_most", e.status_at_most)?;
        expect.requests = e.requests;
        expect.transitions = e.transitions;
        expect.transition_count = e.transition_count;
        expect.limited_keys = e.limited_keys;
        expect.store_errors = e.store_errors;
        expect.admitted_unchecked = e.admitted_unchecked;
        expect.retries = e.retries;
        expect.health_transitions = e.health_transitions;
    }

    let traffic = match &raw.traffic {
        None => TrafficSpec::default(),
        Some(t) => TrafficSpec {
            retries: t.retries.unwrap_or(false),
            drain_at: t
                .drain_at
                .as_deref()
                .map(|d| dur("traffic.drain_at", d))
                .transpose()?,
            drain_timeout: opt_dur(
                "traffic.drain_timeout",
                t.drain_timeout.as_deref(),
                30_000 * NS_PER_MS,
            )?,
        },
    };
    Ok(Scenario {
        name: raw.name.unwrap_or_else(|| name.to_owned()),
        description: raw.description.unwrap_or_default(),
        seed: raw.seed.unwrap_or(1),
        config,
        wall_start: UnixMillis(raw.wall_clock_start.unwrap_or(DEFAULT_WALL_START)),
        duration,
        upstreams,
        loads,
        requests,
        store_faults,
        clock_jumps,
        expect,
        idp: raw.idp.map(idp).transpose()?,
        plant: None,
        traffic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = r#"
[gateway]
[[gateway.routes]]
path = "/users"
targets = ["http://u1:1", "http://u2:1"]
"#;

    fn err(extra: &str) -> String {
        let text = format!("{GW}\n{extra}");
        Scenario::from_toml(&text, "t", Path::new("."))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_key_path() {
        assert_eq!(
            err("[[load]]\nrate = -1.0\nduration = \"1s\"\npaths = [\"/users\"]"),
            "load[0].rate: -1 is not a rate between 0 and 10000000 requests per second"
        );
        assert!(
            err("[[load]]\nrate = 1.0\nduration = \"1s\"\npaths = [\"/users\"]\nips = true")
                .starts_with("load[0].ips: expected a count or a list")
        );
        assert!(
            err("[upstreams.\"http://nope:1\"]\nerror_rate = 0.1\n[[requests]]\nat = \"0s\"\npath = \"/users\"")
                .starts_with("upstreams.\"http://nope:1\": is not a target of any route")
        );
        assert!(
            err("[upstreams.\"http://u1:1\"]\nfaults = [{ kind = \"melt\", from = \"0s\", until = \"1s\" }]")
                .starts_with("upstreams.\"http://u1:1\".faults[0].kind: \"melt\" is not a fault")
        );
        assert!(
            err("[[store_faults]]\nkind = \"unavailable\"\nfrom = \"5s\"\nuntil = \"1s\"")
                .starts_with("store_faults[0].until:")
        );
        assert!(err("[[requests]]\nat = \"0\"\npath = \"/users\"").starts_with("requests[0].at:"));
        assert!(
            err("bogus = 1").starts_with("bogus: unknown field")
                || err("bogus = 1").contains("unknown field `bogus`")
        );
        let bad_gw = Scenario::from_toml(
            "[gateway]\n[[gateway.routes]]\npath = \"/x\"\ntargets = [\"htp://x\"]\n",
            "t",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(bad_gw.path, "gateway.routes[0].targets[0]");
    }

    #[test]
    fn defaults_and_pools() {
        let s = Scenario::from_toml(
            &format!("{GW}\n[[load]]\nrate = 2.5\nduration = \"10s\"\npaths = [\"/users\"]\nips = 3\nusers = 2\ntokens = {{ valid = 0.75, missing = 0.25 }}"),
            "t",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.duration, 10_000_000_000);
        assert_eq!(s.upstreams.len(), 2);
        let l = &s.loads[0];
        assert_eq!(l.rate_milli, 2500);
        assert_eq!(l.ips.len(), 3);
        assert_eq!(l.users, vec!["user-1", "user-2"]);
        assert_eq!(
            l.tokens,
            vec![(TokenKind::Missing, 250_000), (TokenKind::Valid, 1_000_000)]
        );
    }
}
