//! `aegis-sim replay`: a recorded JSON access log (`aegis run --log-format json`) through a
//! candidate config, on the log's own timestamps, and what would change: statuses before and
//! after, requests that would now be 401/404/429/503 (or no longer), the keys that would be
//! rate limited, per route.
//!
//! Every decision is the policy's: each logged request becomes a [`RequestView`] driven through
//! the same [`Driver`] (and so the same invariants) as a scenario run. What the log cannot say
//! is synthesised, and the report counts every assumption:
//!
//! * **Time.** A request arrives at `ts_ms` (monotonic = `ts_ms` − the first `ts_ms`; wall =
//!   `ts_ms`); lines are taken in `ts_ms` order, ties in file order. A forwarded request's
//!   outcome is reported `duration_ms` later.
//! * **Tokens.** The log has none. `verified`, and `unchecked` with a user, become a valid
//!   token for that user; `unchecked` without a user a valid token for `anonymous@<client_ip>`;
//!   `rejected` a token with a bad signature; `absent` no `Authorization` header. Tokens are
//!   minted with the candidate's HS secret. A candidate that allows only public-key
//!   algorithms cannot be signed for, so its key material is swapped for a stand-in HS256 key
//!   (claims, issuer, audience and leeway unchanged): valid tokens pass, bad ones fail, as
//!   they would have.
//! * **Upstream outcomes.** A request the candidate sends to the target the log shows gets
//!   the logged outcome (status, 502 connect error or 504 timeout), `duration_ms` later.
//!   Sent to another target: if that target's latest logged outcome at that instant was a
//!   refused connection or a timeout, it was down, and the request gets that; otherwise the
//!   request's own logged HTTP answer (instances of a service answer a request alike: a
//!   `/fail` fails everywhere). A request refused in the log, or whose logged instance was
//!   down while the candidate's is up, gets the latest HTTP answer logged for the same path,
//!   else 200. A logged duration at or past the candidate's route timeout becomes a timeout.
//! * **Header-keyed limits** count per client IP (the log records no headers), as the
//!   policy does for requests without the header.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use aegis_policy::config::{ConfigEnv, JwtAlgorithm, Secret};
use aegis_policy::http::{HeaderMap, Method};
use aegis_policy::{Config, Nanos, Now, Policy, RequestView, UnixMillis, UpstreamOutcome};
use serde::Serialize;
use serde_json::Value;

use crate::driver::{Driver, FaultyStore, Handled};
use crate::report::{LimitedKey, TransitionReport, secs};
use crate::scenario::TokenKind;
use crate::tokens::Minter;
use crate::violation::Violation;

const NS_PER_MS: u64 = 1_000_000;

/// How many bad lines the report lists by number.
const LIST_LINES: usize = 20;

/// A replay that cannot start: the log or the config is unreadable or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

/// What the log says about the request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSeen {
    Absent,
    Verified,
    Rejected,
    Unchecked,
}

/// How a logged request ended upstream, if it was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedOutcome {
    pub outcome: UpstreamOutcome,
    /// `duration_ms`, in nanoseconds.
    pub after: u64,
}

/// One access-log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the file.
    pub line: usize,
    pub ts_ms: u64,
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
    pub route: Option<String>,
    pub target: Option<String>,
    pub status: u16,
    pub duration_ns: u64,
    pub client_ip: IpAddr,
    pub user: Option<String>,
    pub auth: AuthSeen,
    pub reason: String,
}

impl Record {
    /// The upstream outcome, when the gateway forwarded this request.
    pub fn logged_outcome(&self) -> Option<LoggedOutcome> {
        let outcome = match self.reason.as_str() {
            "forwarded" => UpstreamOutcome::Status(self.status),
            "upstream_error" => UpstreamOutcome::ConnectError,
            "upstream_timeout" => UpstreamOutcome::Timeout,
            _ => return None,
        };
        self.target.as_ref()?;
        Some(LoggedOutcome {
            outcome,
            after: self.duration_ns,
        })
    }
}

/// A parsed access log: the request lines and an account of every other line.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    pub records: Vec<Record>,
    /// Lines read (blank ones included).
    pub lines: usize,
    /// JSON lines whose `message` is not `"request"` (startup, reload, store outages).
    pub other_messages: u64,
    /// The Redis store's outage windows the log shows (its `unavailable` / `available again`
    /// lines), replayed as store failures so that the candidate's `on_store_error` decides
    /// the requests inside them.
    pub store_outages: Vec<crate::replay_outage::OutageWindow>,
    /// Requests the gateway answered from its admin endpoints (`reason = "admin"`): not part
    /// of the pipeline, so not replayed.
    pub admin: u64,
    /// Line numbers of lines that are not a JSON object.
    pub not_json: Vec<usize>,
    /// Request lines with a missing or ill-typed field: line number and what is wrong.
    pub malformed: Vec<(usize, String)>,
}

fn field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a Value, String> {
    o.get(k).ok_or_else(|| format!("{k}: missing"))
}

fn opt_str(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{k}: expected a string or null, got {v}")),
    }
}

fn req_str<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a str, String> {
    field(o, k)?
        .as_str()
        .ok_or_else(|| format!("{k}: expected a string"))
}

fn parse_record(line: usize, o: &serde_json::Map<String, Value>) -> Result<Record, String> {
    let ts_ms = field(o, "ts_ms")?
        .as_u64()
        .ok_or("ts_ms: expected an unsigned integer (Unix milliseconds)")?;
    let m = req_str(o, "method")?;
    let method = Method::from_bytes(m.as_bytes()).map_err(|_| format!("method: {m:?}"))?;
    let path = req_str(o, "path")?.to_owned();
    let status = field(o, "status")?
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or("status: expected an HTTP status")?;
    let duration_ms = match o.get("duration_ms") {
        None | Some(Value::Null) => 0.0,
        Some(v) => v
            .as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or("duration_ms: expected a non-negative number")?,
    };
    let ip = req_str(o, "client_ip")?;
    let client_ip = ip
        .parse()
        .map_err(|_| format!("client_ip: {ip:?} is not an IP address"))?;
    let auth = match req_str(o, "auth")? {
        "absent" => AuthSeen::Absent,
        "verified" => AuthSeen::Verified,
        "rejected" => AuthSeen::Rejected,
        "unchecked" => AuthSeen::Unchecked,
        other => {
            return Err(format!(
                "auth: {other:?} is not absent, verified, rejected or unchecked"
            ));
        }
    };
    Ok(Record {
        line,
        ts_ms,
        method,
        path,
        host: opt_str(o, "host")?,
        route: opt_str(o, "route")?,
        target: opt_str(o, "target")?.map(|t| t.trim_end_matches('/').to_owned()),
        status,
        duration_ns: (duration_ms * NS_PER_MS as f64).round() as u64,
        client_ip,
        user: opt_str(o, "user")?,
        auth,
        reason: req_str(o, "reason")?.to_owned(),
    })
}

impl AccessLog {
    /// Parses a log; never fails: bad lines are counted and listed.
    pub fn parse(bytes: &[u8]) -> AccessLog {
        let mut log = AccessLog::default();
        if bytes.is_empty() {
            return log;
        }
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let mut outages = crate::replay_outage::OutageLog::default();
        for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
            let n = i + 1;
            log.lines = n;
            let Ok(text) = std::str::from_utf8(raw) else {
                log.not_json.push(n);
                continue;
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) else {
                log.not_json.push(n);
                continue;
            };
            if o.get("message").and_then(Value::as_str) != Some("request") {
                log.other_messages += 1;
                outages.note(n, &o);
                continue;
            }
            if o.get("reason").and_then(Value::as_str) == Some("admin") {
                log.admin += 1;
                continue;
            }
            match parse_record(n, &o) {
                Ok(r) => log.records.push(r),
                Err(e) => log.malformed.push((n, e)),
            }
        }
        log.store_outages = outages.finish();
        log
    }

    pub fn load(path: &Path) -> Result<AccessLog, ReplayError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ReplayError(format!("cannot read the log {}: {e}", path.display())))?;
        Ok(AccessLog::parse(&bytes))
    }
}

/// `${VAR}` from the process environment and key files relative to the working directory,
/// as `aegis run` reads its config.
#[derive(Debug, Clone, Copy)]
struct ProcessEnv;

impl ConfigEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))
    }
}

/// Reads and validates a candidate config as `aegis check` would.
pub fn load_config(path: &Path) -> Result<Config, ReplayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReplayError(format!("cannot read the config {}: {e}", path.display())))?;
    Config::from_toml(&text, &ProcessEnv)
        .map_err(|e| ReplayError(format!("invalid config {}: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BadLines {
    pub count: u64,
    /// The first line numbers.
    pub lines: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MalformedLine {
    pub line: usize,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Malformed {
    pub count: u64,
    pub lines: Vec<MalformedLine>,
}

/// How each logged `auth` value was turned into a request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthAccount {
    /// `candidate_secret` (HS tokens signed with the candidate's secret), `stand_in_key`
    /// (public-key candidate: see the module docs) or `none` (the candidate has no [auth]).
    pub tokens: &'static str,
    pub absent: u64,
    pub verified: u64,
    pub rejected: u64,
    pub unchecked_with_user: u64,
    /// `unchecked` without a user: assumed valid, for `anonymous@<client_ip>`.
    pub unchecked_anonymous: u64,
}

/// Where the upstream outcome of each request the candidate forwards came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeAccount {
    /// The log shows the same target: its outcome, exactly.
    pub as_logged: u64,
    /// Another target (or refused in the log), whose latest logged outcome at that instant
    /// was a refused connection or a timeout: that target was down, so this again.
    pub target_down: u64,
    /// Another target, up: the HTTP answer the request got from the logged one (instances of
    /// a service answer a request alike).
    pub answer_from_other_target: u64,
    /// Refused in the log, or its logged instance was down: the latest HTTP answer logged for
    /// the same path and query.
    pub path_history: u64,
    /// ... none logged: assumed 200.
    pub assumed_ok: u64,
    /// Logged durations at or past the candidate's route timeout, replayed as timeouts.
    pub now_timeouts: u64,
}

/// An HTTP answer (the service's), as opposed to a refused connection or a timeout (the
/// instance's health).
fn is_answer(o: LoggedOutcome) -> bool {
    matches!(o.outcome, UpstreamOutcome::Status(_))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusChange {
    pub from: u16,
    pub to: u16,
    pub requests: u64,
}

/// One request whose status changes, to find it in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedRequest {
    pub line: usize,
    /// Since the first request.
    pub t_ms: u64,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub before: u16,
    pub after: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GainedLost {
    /// Requests that get this status now and did not before.
    pub gained: u64,
    /// Requests that got this status before and do not now.
    pub lost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteReplay {
    /// The candidate's route name, or `(no route)` for 400/404/405.
    pub route: String,
    pub requests: u64,
    pub before: BTreeMap<u16, u64>,
    pub after: BTreeMap<u16, u64>,
    pub changed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub log: String,
    pub config: String,
    pub lines: usize,
    pub requests: u64,
    /// Virtual span of the replay: last `ts_ms` − first.
    pub span_ms: u64,
    pub other_messages: u64,
    /// Store outage windows taken from the log (ms since the first request; `until_ms` null
    /// for one that had not ended when the log did), and the requests that met them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub store_outages: Vec<ReplayedOutage>,
    #[serde(skip_serializing_if = "is_zero")]
    pub store_errors: u64,
    pub admin_skipped: u64,
    pub not_json: BadLines,
    pub malformed: Malformed,
    /// Request lines whose `ts_ms` is earlier than a line before them (replayed in time order).
    pub out_of_order: u64,
    pub auth: AuthAccount,
    pub upstream_outcomes: OutcomeAccount,
    pub status_before: BTreeMap<u16, u64>,
    pub status_after: BTreeMap<u16, u64>,
    /// Requests whose status differs.
    pub changed: u64,
    /// Every (before, after) pair that differs, by count then codes.
    pub changes: Vec<StatusChange>,
    /// The first requests (in time order) whose status changes, up to `--top`.
    pub first_changed: Vec<ChangedRequest>,
    /// 401, 404, 429 and 503: gained and lost.
    pub gained_lost: BTreeMap<u16, GainedLost>,
    pub per_route: Vec<RouteReplay>,
    /// Distinct keys with at least one 429 under the candidate.
    pub limited_keys_total: u64,
    /// The most-limited keys: by 429s descending, then key.
    pub limited_keys: Vec<LimitedKey>,
    /// Breaker transitions under the candidate (t_ms from the first request).
    pub transitions: Vec<TransitionReport>,
    pub invariant_checks: u64,
    pub invariant_violations: Vec<Violation>,
}

/// A store outage window the log showed, as replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayedOutage {
    /// Since the first request.
    pub from_ms: u64,
    pub until_ms: Option<u64>,
    /// The log line that began it (0: the log began during it).
    pub line: usize,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// How many limited keys, and changed requests, to list.
    pub top: usize,
    /// How to name the log and the config in the report.
    pub log_name: String,
    pub config_name: String,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            top: 10,
            log_name: String::new(),
            config_name: String::new(),
        }
    }
}

const STAND_IN_SECRET: &str = "aegis-sim replay stand-in key for a public-key config";

/// An upstream answer due at `.0` (virtual ns), pushed `.1`-th, for the flight in slot `.2`;
/// a min-heap of these delivers answers in time order, ties in push order.
type Due = std::cmp::Reverse<(u64, u64, u32)>;

/// Replays `log` through `config`.
pub fn replay(
    log: &AccessLog,
    mut config: Config,
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    if log.records.is_empty() {
        return Err(ReplayError(format!(
            "{}: no access-log lines (JSON with \"message\":\"request\") in {} lines; record one with `aegis run --log-format json 2> access.jsonl`",
            opts.log_name, log.lines
        )));
    }
    let mut order: Vec<usize> = (0..log.records.len()).collect();
    order.sort_by_key(|&i| (log.records[i].ts_ms, i));
    let out_of_order = log
        .records
        .windows(2)
        .filter(|w| w[1].ts_ms < w[0].ts_ms)
        .count() as u64;
    let first = log.records[order[0]].ts_ms;
    let last = log.records[order[order.len() - 1]].ts_ms;

    // Tokens: the candidate's HS secret, or a stand-in key when it only verifies public keys.
    let mut tokens = "none";
    if let Some(auth) = config.auth.as_mut() {
        if auth.secret.is_some() && auth.algorithms.iter().any(|a| a.is_hmac()) {
            tokens = "candidate_secret";
        } else {
            auth.algorithms = vec![JwtAlgorithm::HS256];
            auth.secret = Some(Secret(STAND_IN_SECRET.to_owned()));
            auth.public_key_pem = None;
            tokens = "stand_in_key";
        }
    }
    let minter = config
        .auth
        .as_ref()
        .and_then(|a| Minter::new(a, first / 1000, last / 1000 + 1));
    let policy = Policy::new(config.clone())
        .map_err(|e| ReplayError(format!("invalid config {}: {e}", opts.config_name)))?;
    // The log's store outages, on the replay's clock (ns since the first request).
    let faults = log
        .store_outages
        .iter()
        .map(|w| crate::scenario::StoreFault {
            from: w.from_ms.saturating_sub(first).saturating_mul(NS_PER_MS),
            until: w.until_ms.saturating_sub(first).saturating_mul(NS_PER_MS),
            slow: None,
        })
        .collect();
    let store = FaultyStore::new(
        config.rate_limit.memory_max_keys,
        faults,
        config.rate_limit.command_timeout,
    );
    let mut driver = Driver::new(policy, store);
    let wall0 = UnixMillis(first);

    let mut headers: BTreeMap<(String, TokenKind), HeaderMap> = BTreeMap::new();
    let empty = HeaderMap::new();
    let mut auth_acc = AuthAccount {
        tokens,
        ..AuthAccount::default()
    };
    let mut outcomes = OutcomeAccount::default();
    // The latest logged outcome of each target (its health), and the latest HTTP answer to
    // each path (the service's answer, whichever instance gave it).
    let mut last_by_target: BTreeMap<&str, LoggedOutcome> = BTreeMap::new();
    let mut last_by_path: BTreeMap<&str, LoggedOutcome> = BTreeMap::new();
    // Status after, by the driver's request id (= position in `order`).
    let mut after: Vec<u16> = vec![0; order.len()];
    let mut after_route: Vec<Option<usize>> = vec![None; order.len()];
    let mut in_flight: Vec<(UpstreamOutcome, u64)> = Vec::new();
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut ticks: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut seq = 0u64;

    // Delivers completions and breaker ticks due by `until`, in time order; returns the time
    // of the last one delivered.
    let deliver = |driver: &mut Driver,
                   heap: &mut BinaryHeap<Due>,
                   ticks: &mut BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
                   in_flight: &[(UpstreamOutcome, u64)],
                   after: &mut [u16],
                   until: u64|
     -> u64 {
        let mut last = 0;
        loop {
            let next_done = heap.peek().map(|d| d.0.0).filter(|t| *t <= until);
            let next_tick = ticks.peek().map(|r| r.0.0).filter(|t| *t <= until);
            match (next_done, next_tick) {
                (Some(d), Some(t)) if t < d => {
                    let std::cmp::Reverse((t, route)) = ticks.pop().expect("peeked");
                    driver.tick(route, Nanos(t));
                    last = t;
                }
                (Some(_), _) => {
                    let std::cmp::Reverse((t, _, slot)) = heap.pop().expect("peeked");
                    let now = Now::virtual_at(Nanos(t), wall0);
                    let (outcome, _) = in_flight[slot as usize];
                    if let Some((req, status)) = driver.complete(slot, outcome, now) {
                        after[req as usize] = status;
                    }
                    last = t;
                }
                (None, Some(_)) => {
                    let std::cmp::Reverse((t, route)) = ticks.pop().expect("peeked");
                    driver.tick(route, Nanos(t));
                    last = t;
                }
                (None, None) => return last,
            }
            for (t, route) in driver.ticks.drain(..) {
                ticks.push(std::cmp::Reverse((t.max(last), route)));
            }
        }
    };

    for (req_id, &ri) in order.iter().enumerate() {
        let r = &log.records[ri];
        let t = (r.ts_ms - first).saturating_mul(NS_PER_MS);
        deliver(
            &mut driver,
            &mut heap,
            &mut ticks,
            &in_flight,
            &mut after,
            t,
        );
        let now = Now::virtual_at(Nanos(t), wall0);
        // What the log knows of upstream health at this instant includes this request.
        let own = r.logged_outcome();
        if let (Some(o), Some(target)) = (own, r.target.as_deref()) {
            last_by_target.insert(target, o);
            if is_answer(o) {
                last_by_path.insert(r.path.as_str(), o);
            }
        }

        let (user, kind) = match r.auth {
            AuthSeen::Absent => {
                auth_acc.absent += 1;
                (None, TokenKind::Missing)
            }
            AuthSeen::Verified => {
                auth_acc.verified += 1;
                (r.user.clone(), TokenKind::Valid)
            }
            AuthSeen::Rejected => {
                auth_acc.rejected += 1;
                (r.user.clone(), TokenKind::BadSignature)
            }
            AuthSeen::Unchecked if r.user.is_some() => {
                auth_acc.unchecked_with_user += 1;
                (r.user.clone(), TokenKind::Valid)
            }
            AuthSeen::Unchecked => {
                auth_acc.unchecked_anonymous += 1;
                (Some(format!("anonymous@{}", r.client_ip)), TokenKind::Valid)
            }
        };
        let hdrs: &HeaderMap = match (&minter, kind) {
            (None, _) | (_, TokenKind::Missing) => &empty,
            (Some(m), kind) => {
                let user = user.unwrap_or_else(|| format!("anonymous@{}", r.client_ip));
                headers
                    .entry((user, kind))
                    .or_insert_with_key(|(u, k)| m.headers(u, *k, 0))
            }
        };
        let view = RequestView {
            method: &r.method,
            host: r.host.as_deref(),
            path_and_query: &r.path,
            headers: hdrs,
            peer: r.client_ip,
        };
        match driver.request(&view, now) {
            Handled::Respond { status, route, .. } => {
                after[req_id] = status;
                after_route[req_id] = route;
            }
            Handled::Forward {
                slot,
                route,
                target,
                timeout,
                ..
            } => {
                after_route[req_id] = Some(route);
                let url = driver.balancers[route].url(target);
                let chosen = if let Some(o) = own.filter(|_| r.target.as_deref() == Some(url)) {
                    outcomes.as_logged += 1;
                    o
                } else if let Some(o) = last_by_target.get(url).filter(|o| !is_answer(**o)) {
                    outcomes.target_down += 1;
                    *o
                } else if let Some(o) = own.filter(|o| is_answer(*o)) {
                    outcomes.answer_from_other_target += 1;
                    o
                } else if let Some(o) = last_by_path.get(r.path.as_str()) {
                    outcomes.path_history += 1;
                    *o
                } else {
                    outcomes.assumed_ok += 1;
                    LoggedOutcome {
                        outcome: UpstreamOutcome::Status(200),
                        after: 0,
                    }
                };
                let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
                let (outcome, delay) = match chosen.outcome {
                    UpstreamOutcome::Timeout => (UpstreamOutcome::Timeout, timeout_ns),
                    o if chosen.after >= timeout_ns => {
                        if o != UpstreamOutcome::ConnectError {
                            outcomes.now_timeouts += 1;
                            (UpstreamOutcome::Timeout, timeout_ns)
                        } else {
                            (o, timeout_ns)
                        }
                    }
                    o => (o, chosen.after),
                };
                let s = slot as usize;
                if in_flight.len() <= s {
                    in_flight.resize(s + 1, (UpstreamOutcome::Cancelled, 0));
                }
                in_flight[s] = (outcome, delay);
                seq += 1;
                heap.push(std::cmp::Reverse((t.saturating_add(delay), seq, slot)));
            }
        }
        for (tt, route) in driver.ticks.drain(..) {
            ticks.push(std::cmp::Reverse((tt.max(t), route)));
        }
        if driver.failed() {
            break;
        }
    }
    let drained = deliver(
        &mut driver,
        &mut heap,
        &mut ticks,
        &in_flight,
        &mut after,
        u64::MAX,
    );
    let end = (last - first).saturating_mul(NS_PER_MS).max(drained);
    if !driver.failed() {
        driver.finish(Nanos(end));
    }

    // Compare.
    let config = driver.policy.config();
    let mut status_before = BTreeMap::new();
    let mut status_after = BTreeMap::new();
    let mut changes: BTreeMap<(u16, u16), u64> = BTreeMap::new();
    let mut gained_lost: BTreeMap<u16, GainedLost> = [401, 404, 429, 503]
        .into_iter()
        .map(|c| (c, GainedLost::default()))
        .collect();
    let mut per_route: Vec<RouteReplay> = config
        .routes
        .iter()
        .map(|r| r.name.clone())
        .chain(std::iter::once("(no route)".to_owned()))
        .map(|route| RouteReplay {
            route,
            requests: 0,
            before: BTreeMap::new(),
            after: BTreeMap::new(),
            changed: 0,
        })
        .collect();
    let no_route = per_route.len() - 1;
    let replayed = driver.counts.requests as usize;
    let mut first_changed = Vec::new();
    for (req_id, &ri) in order.iter().enumerate().take(replayed) {
        let b = log.records[ri].status;
        let a = after[req_id];
        *status_before.entry(b).or_insert(0u64) += 1;
        *status_after.entry(a).or_insert(0u64) += 1;
        let pr = &mut per_route[after_route[req_id].unwrap_or(no_route)];
        pr.requests += 1;
        *pr.before.entry(b).or_insert(0) += 1;
        *pr.after.entry(a).or_insert(0) += 1;
        if a != b {
            pr.changed += 1;
            *changes.entry((b, a)).or_insert(0) += 1;
            if first_changed.len() < opts.top {
                let rec = &log.records[ri];
                first_changed.push(ChangedRequest {
                    line: rec.line,
                    t_ms: rec.ts_ms - first,
                    client_ip: rec.client_ip.to_string(),
                    method: rec.method.to_string(),
                    path: rec.path.clone(),
                    before: b,
                    after: a,
                });
            }
            if let Some(g) = gained_lost.get_mut(&a) {
                g.gained += 1;
            }
            if let Some(l) = gained_lost.get_mut(&b) {
                l.lost += 1;
            }
        }
    }
    per_route.retain(|r| r.requests > 0);
    let mut changes: Vec<StatusChange> = changes
        .into_iter()
        .map(|((from, to), requests)| StatusChange { from, to, requests })
        .collect();
    changes.sort_by(|x, y| {
        y.requests
            .cmp(&x.requests)
            .then((x.from, x.to).cmp(&(y.from, y.to)))
    });
    let mut limited: Vec<(String, u64)> = driver
        .limited
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    limited.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    let limited_keys_total = limited.len() as u64;
    limited.truncate(opts.top);
    let transitions = driver.transition_reports();
    Ok(ReplayReport {
        log: opts.log_name.clone(),
        config: opts.config_name.clone(),
        lines: log.lines,
        requests: replayed as u64,
        span_ms: last - first,
        other_messages: log.other_messages,
        store_outages: log
            .store_outages
            .iter()
            .map(|w| ReplayedOutage {
                from_ms: w.from_ms.saturating_sub(first),
                until_ms: (w.until_ms != u64::MAX).then(|| w.until_ms.saturating_sub(first)),
                line: w.line,
            })
            .collect(),
        store_errors: driver.counts.store_errors,
        admin_skipped: log.admin,
        not_json: BadLines {
            count: log.not_json.len() as u64,
            lines: log.not_json.iter().take(LIST_LINES).copied().collect(),
        },
        malformed: Malformed {
            count: log.malformed.len() as u64,
            lines: log
                .malformed
                .iter()
                .take(LIST_LINES)
                .map(|(line, error)| MalformedLine {
                    line: *line,
                    error: error.clone(),
                })
                .collect(),
        },
        out_of_order,
        auth: auth_acc,
        upstream_outcomes: outcomes,
        changed: changes.iter().map(|c| c.requests).sum(),
        status_before,
        status_after,
        changes,
        first_changed,
        gained_lost,
        per_route,
        limited_keys_total,
        limited_keys: limited
            .into_iter()
            .map(|(key, limited)| LimitedKey { key, limited })
            .collect(),
        transitions,
        invariant_checks: driver.counts.checks,
        invariant_violations: driver.violations.clone(),
    })
}

/// Reads the log and the config, then replays.
pub fn replay_files(log: &Path, config: &Path, top: usize) -> Result<ReplayReport, ReplayError> {
    let cfg = load_config(config)?;
    let parsed = AccessLog::load(log)?;
    replay(
        &parsed,
        cfg,
        &ReplayOptions {
            top,
            log_name: log.display().to_string(),
            config_name: config.display().to_string(),
        },
    )
}

fn counts(m: &BTreeMap<u16, u64>) -> String {
    let v: Vec<String> = m.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

/// `1 key`, `2 keys`.
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn signed(d: i128) -> String {
    if d > 0 {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

impl ReplayReport {
    pub fn ok(&self) -> bool {
        self.invariant_violations.is_empty()
    }

    /// The `--json` document (pretty, newline-terminated; byte-identical for the same inputs).
    pub fn to_json(&self) -> String {
        crate::report::pretty_json(self)
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "replay of {} through {}: {} requests over {}",
            self.log,
            self.config,
            self.requests,
            secs(self.span_ms)
        );
        let mut skipped = vec![format!("{} lines", self.lines)];
        if self.other_messages > 0 {
            skipped.push(format!(
                "{} skipped",
                plural(self.other_messages, "other log line")
            ));
        }
        if !self.store_outages.is_empty() {
            let w: Vec<String> = self
                .store_outages
                .iter()
                .map(|o| match o.until_ms {
                    Some(u) => format!("{}-{}", secs(o.from_ms), secs(u)),
                    None => format!("{}-end", secs(o.from_ms)),
                })
                .collect();
            skipped.push(format!(
                "store outage {} replayed ({} requests met it)",
                w.join(", "),
                self.store_errors
            ));
        }
        if self.admin_skipped > 0 {
            skipped.push(format!(
                "{} skipped",
                plural(self.admin_skipped, "admin request")
            ));
        }
        if self.not_json.count > 0 {
            let l: Vec<String> = self.not_json.lines.iter().map(|n| n.to_string()).collect();
            let more = if self.not_json.count as usize > l.len() {
                ", ..."
            } else {
                ""
            };
            skipped.push(format!(
                "{} not JSON (line {}{more})",
                self.not_json.count,
                l.join(", ")
            ));
        }
        if self.out_of_order > 0 {
            skipped.push(format!("{} out of time order", self.out_of_order));
        }
        let _ = writeln!(o, "  log: {}", skipped.join(", "));
        if self.malformed.count > 0 {
            let _ = writeln!(
                o,
                "  MALFORMED request lines (not replayed): {}",
                self.malformed.count
            );
            for m in &self.malformed.lines {
                let _ = writeln!(o, "    line {}: {}", m.line, m.error);
            }
        }
        let a = &self.auth;
        let _ = writeln!(
            o,
            "  auth (tokens: {}): {} verified and {} unchecked with a user → valid; {} unchecked anonymous → valid; {} rejected → bad signature; {} absent",
            a.tokens,
            a.verified,
            a.unchecked_with_user,
            a.unchecked_anonymous,
            a.rejected,
            a.absent
        );
        let u = &self.upstream_outcomes;
        let _ = writeln!(
            o,
            "  upstream outcomes: {} as logged, {} to a target that was down, {} answered as on the logged target, {} from the path's history, {} assumed 200; {} now time out",
            u.as_logged,
            u.target_down,
            u.answer_from_other_target,
            u.path_history,
            u.assumed_ok,
            u.now_timeouts
        );
        let _ = writeln!(o, "status      before     after    change");
        let codes: std::collections::BTreeSet<u16> = self
            .status_before
            .keys()
            .chain(self.status_after.keys())
            .copied()
            .collect();
        for c in codes {
            let b = self.status_before.get(&c).copied().unwrap_or(0);
            let a = self.status_after.get(&c).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "  {c}    {b:>9} {a:>9} {:>9}",
                signed(i128::from(a) - i128::from(b))
            );
        }
        let _ = writeln!(o, "{} change status:", plural(self.changed, "request"));
        for c in &self.changes {
            let _ = writeln!(o, "  {} → {}  {}", c.from, c.to, c.requests);
        }
        let gl: Vec<String> = self
            .gained_lost
            .iter()
            .map(|(c, g)| format!("{c} +{}/-{}", g.gained, g.lost))
            .collect();
        let _ = writeln!(o, "  gained/lost: {}", gl.join("  "));
        if !self.first_changed.is_empty() {
            let _ = writeln!(
                o,
                "  first {} changed (log line, time, client, request):",
                self.first_changed.len()
            );
            for c in &self.first_changed {
                let _ = writeln!(
                    o,
                    "    line {:<6} {:>10} {:<15} {} {}  {} → {}",
                    c.line,
                    secs(c.t_ms),
                    c.client_ip,
                    c.method,
                    c.path,
                    c.before,
                    c.after
                );
            }
        }
        let _ = writeln!(o, "per route (candidate's routing):");
        for r in &self.per_route {
            let _ = writeln!(
                o,
                "  {:<16} {:>7} req  {}  →  {}  ({} changed)",
                r.route,
                r.requests,
                counts(&r.before),
                counts(&r.after),
                r.changed
            );
        }
        if self.limited_keys_total > 0 {
            let _ = writeln!(
                o,
                "would be rate limited ({}; top {}):",
                plural(self.limited_keys_total, "key"),
                self.limited_keys.len()
            );
            for k in &self.limited_keys {
                let _ = writeln!(o, "  {:<40} {} × 429", k.key, k.limited);
            }
        } else {
            let _ = writeln!(o, "no key would be rate limited");
        }
        if !self.transitions.is_empty() {
            let _ = writeln!(o, "breaker transitions under the candidate:");
            for t in &self.transitions {
                let _ = writeln!(
                    o,
                    "  {:>10} {} {} {} → {}",
                    secs(t.t_ms),
                    t.route,
                    t.target,
                    t.from,
                    t.to
                );
            }
        }
        if self.invariant_violations.is_empty() {
            let _ = writeln!(o, "invariants: all held ({} checks)", self.invariant_checks);
        } else {
            let _ = writeln!(o, "INVARIANT VIOLATED:");
            for v in &self.invariant_violations {
                let _ = writeln!(o, "  at {}: {}: {}", secs(v.t_ms), v.invariant, v.detail);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_counts_every_kind_of_line() {
        let text = concat!(
            "{\"message\":\"listening on http://0.0.0.0:8000\",\"level\":\"INFO\"}\n",
            "not json at all\n",
            "\n",
            "{\"message\":\"request\",\"ts_ms\":5,\"method\":\"GET\",\"path\":\"/a\",\"host\":null,\"route\":null,\"target\":null,\"status\":404,\"duration_ms\":0.1,\"client_ip\":\"10.0.0.1\",\"user\":null,\"auth\":\"absent\",\"reason\":\"no_route\"}\n",
            "{\"message\":\"request\",\"method\":\"GET\",\"path\":\"/a\",\"status\":404,\"client_ip\":\"10.0.0.1\",\"auth\":\"absent\",\"reason\":\"no_route\"}\n",
            "{\"message\":\"request\",\"ts_ms\":6,\"method\":\"GET\",\"path\":\"/gateway/stats\",\"status\":200,\"client_ip\":\"10.0.0.1\",\"auth\":\"absent\",\"reason\":\"admin\"}\n",
            "{\"message\":\"request\",\"ts_ms\":7,\"method\":\"GET\",\"path\":\"/a\",\"status\":200,\"client_ip\":\"nope\",\"auth\":\"absent\",\"reason\":\"forwarded\"}\n",
            "{\"message\":\"request\",\"ts_ms\":8,\"method\":\"GET\",\"path\":\"/a\",\"status\":200,\"client_ip\":\"10.0.0.1\",\"auth\":\"absent\",\"reason\":\"forwarded\"",
        );
        let log = AccessLog::parse(text.as_bytes());
        assert_eq!(log.lines, 8);
        assert_eq!(log.records.len(), 1);
        assert_eq!(log.records[0].line, 4);
        assert_eq!(log.other_messages, 1);
        assert_eq!(log.admin, 1);
        assert_eq!(log.not_json, vec![2, 8]);
        assert_eq!(
            log.malformed,
            vec![
                (5, "ts_ms: missing".to_owned()),
                (7, "client_ip: \"nope\" is not an IP address".to_owned())
            ]
        );
    }

    /// Random logs (valid lines with every field value, out-of-order times, truncated lines,
    /// junk bytes, other messages) never panic the parser or the replay, every parsed request
    /// gets exactly one status after, and the invariants hold.
    #[test]
    fn random_logs_replay_without_surprises() {
        use crate::rng::Rng;
        let config = Config::from_toml(
            "[auth]\nsecret = \"s\"\n[breaker]\nfailure_threshold = 2\nopen_for = \"2s\"\n\
             [[routes]]\npath = \"/a\"\ntargets = [\"http://t1:1\", \"http://t2:1\"]\nauth = true\n\
             rate_limit = { max = 3, window = \"1s\", key = \"user\" }\ntimeout = \"50ms\"\n\
             [[routes]]\npath = \"/b\"\ntargets = [\"http://t3:1\"]\n\
             rate_limit = { max = 5, window = \"2s\", algorithm = \"gcra\" }\n",
            &aegis_policy::MapEnv::default(),
        )
        .expect("valid");
        for seed in 1..=20u64 {
            let mut rng = Rng::derive(seed, "replay log");
            let mut text = Vec::new();
            let mut ts = 1_800_000_000_000u64;
            for _ in 0..400 {
                ts = match rng.below(10) {
                    0 => ts.saturating_sub(rng.below(50)),
                    _ => ts + rng.below(40),
                };
                let pick =
                    |rng: &mut Rng, xs: &[&'static str]| xs[rng.below(xs.len() as u64) as usize];
                let target = pick(
                    &mut rng,
                    &[
                        "\"http://t1:1\"",
                        "\"http://t2:1\"",
                        "\"http://t3:1\"",
                        "null",
                    ],
                );
                let reason = pick(
                    &mut rng,
                    &[
                        "forwarded",
                        "upstream_error",
                        "upstream_timeout",
                        "unauthorized",
                        "rate_limited",
                        "no_route",
                    ],
                );
                let line = format!(
                    "{{\"message\":\"request\",\"ts_ms\":{ts},\"method\":\"{}\",\"path\":\"{}\",\"host\":null,\
                     \"route\":\"/a\",\"target\":{target},\"status\":{},\"duration_ms\":{}.5,\"client_ip\":\"10.0.0.{}\",\
                     \"user\":{},\"auth\":\"{}\",\"reason\":\"{reason}\"}}",
                    pick(&mut rng, &["GET", "POST", "DELETE"]),
                    pick(
                        &mut rng,
                        &["/a", "/a/x?y=1", "/b/fail", "/c", "/a/../b", "//a"]
                    ),
                    pick(&mut rng, &["200", "500", "502", "504", "401", "429"]),
                    rng.below(80),
                    rng.below(5),
                    pick(&mut rng, &["null", "\"u1\"", "\"u2\""]),
                    pick(&mut rng, &["absent", "verified", "rejected", "unchecked"]),
                );
                match rng.below(20) {
                    0 => text.extend_from_slice(&line.as_bytes()[..line.len() / 2]),
                    1 => text.extend_from_slice(&[0xff, 0xfe, b'{']),
                    2 => text.extend_from_slice(b"{\"message\":\"reload\"}"),
                    3 => text.extend_from_slice(line.replace("\"ts_ms\"", "\"ts\"").as_bytes()),
                    _ => text.extend_from_slice(line.as_bytes()),
                }
                text.push(b'\n');
            }
            let log = AccessLog::parse(&text);
            let r = replay(&log, config.clone(), &ReplayOptions::default()).expect("replays");
            assert!(r.ok(), "seed {seed}: {:?}", r.invariant_violations);
            assert_eq!(r.requests, log.records.len() as u64, "seed {seed}");
            assert_eq!(
                r.status_after.values().sum::<u64>(),
                r.requests,
                "seed {seed}"
            );
            assert!(
                !r.status_after.contains_key(&0),
                "seed {seed}: a request got no status"
            );
            assert_eq!(
                log.records.len()
                    + log.not_json.len()
                    + log.malformed.len()
                    + log.other_messages as usize,
                400,
                "seed {seed}: every line accounted for"
            );
        }
    }
}
