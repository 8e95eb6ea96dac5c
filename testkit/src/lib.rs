//! aegis-testkit: the end-to-end test harness (real `aegis` processes, real `redis-server`, raw
//! HTTP/1.1 and HTTP/2 over loopback) shared by the end-to-end tests in the workspace root's
//! `tests/`.
//!
//! Every process a test starts is owned by a value here and killed by PID on `Drop`; every wait
//! polls a condition until a deadline (no fixed sleeps); all traffic goes to 127.0.0.1.
#![forbid(unsafe_code)]
// End-to-end tests live in real time: deadlines and rate-limit windows read the real clocks.
#![allow(clippy::disallowed_methods)]

pub mod cluster;
pub mod h2raw;
pub mod sentinel;
pub mod tls;

pub use cluster::RedisCluster;
pub use sentinel::RedisSentinel;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a process gets to print its listening line.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// Socket read/write timeout of the test client: a hung gateway fails the test, not CI.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Waiting and time.

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(2);
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Like [`wait_until`], but the condition yields a value.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    wait_until(what, within, || {
        out = f();
        out.is_some()
    });
    out.expect("set when the wait succeeded")
}

/// Wall-clock milliseconds since the Unix epoch (fixed rate-limit windows are aligned to it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Returns once at least `room` of the current epoch-aligned window of `window` remains, so
/// that a burst of requests lands in one fixed rate-limit window. Waits at most `room`.
pub fn wait_for_window_room(window: Duration, room: Duration) {
    let w = window.as_millis() as u64;
    let r = room.as_millis() as u64;
    assert!(r * 2 <= w, "room must be at most half the window");
    wait_until(
        "a fixed window with enough time left",
        room + Duration::from_secs(1),
        || w - unix_millis() % w >= r,
    );
}

// ---------------------------------------------------------------------------------------------
// Ports, temp dirs, binaries.

/// A port that was free a moment ago on 127.0.0.1 (bind to :0 and release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub use tempfile::TempDir;

/// A fresh directory under the system temp dir (`aegis-TAG-…`), removed when dropped.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("aegis-{tag}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// The `aegis` binary of this build profile (`target/<profile>/aegis`, beside the test
/// executable's `deps/`). Built once per test process with `cargo build -p aegis-tokio --bin
/// aegis`, which is a no-op when it is fresh, so a test never runs a stale gateway. Set
/// `AEGIS_BIN` to use another binary.
pub fn aegis_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("AEGIS_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join(format!("aegis{}", std::env::consts::EXE_SUFFIX));
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "aegis-tokio", "--bin", "aegis"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Cargo sets these for the test process. Build scripts that watch them (ring's, via
        // `rerun-if-env-changed`) would see a changed environment and rebuild, and the next
        // plain `cargo build` would rebuild them back: build as from a shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    &*k,
                    "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&*k);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build for the aegis binary");
        assert!(
            out.status.success(),
            "cargo build -p aegis-tokio --bin aegis failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Sends a signal (`"HUP"`, `"TERM"`, `"STOP"`, `"CONT"`, ...) to one PID with `kill(1)`.
pub fn send_signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// Reads a child's stdout on a thread: lines are kept for inspection and sent to the waiter.
fn pump_lines(
    stdout: impl Read + Send + 'static,
) -> (mpsc::Receiver<String>, Arc<Mutex<Vec<String>>>) {
    let (tx, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (rx, lines)
}

/// Waits for a stdout line starting with `prefix` and returns the address after it.
fn wait_listen_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    child: &mut Child,
    what: &str,
    stderr: &Path,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix(prefix) {
                    // The proxy listener says `https://` when it speaks TLS.
                    let rest = rest
                        .strip_prefix("s://")
                        .or(rest.strip_prefix("://"))
                        .unwrap_or(rest);
                    return rest
                        .trim()
                        .parse()
                        .map_err(|_| format!("{what}: unparsable line {line:?}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().ok();
                return Err(format!(
                    "{what} exited ({status:?}) before printing {prefix:?}; stderr:\n{}",
                    read_lossy(stderr)
                ));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before printing {prefix:?}; stderr:\n{}",
                read_lossy(stderr)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} printed no {prefix:?} line within {START_DEADLINE:?}; stderr:\n{}",
                read_lossy(stderr)
            ));
        }
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// redis-server.

/// A `redis-server` from PATH on its own port, no persistence; killed by PID on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// More `redis-server` arguments (e.g. a TLS port and its certificates).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with more `redis-server` arguments (the plain port stays,
    /// for the readiness PING).
    pub fn start_with(extra: &[String]) -> RedisServer {
        // Another process may grab the port between probe and bind: retry a few times.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match RedisServer::try_start_with(port, extra) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// Starts on `port` (e.g. to restart on the same address after [`RedisServer::stop`]).
    pub fn try_start_on(port: u16) -> Result<RedisServer, String> {
        RedisServer::try_start_with(port, &[])
    }

    fn try_start_with(port: u16, extra: &[String]) -> Result<RedisServer, String> {
        let dir = temp_dir("redis");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.to_vec(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::from(File::create(&log).expect("redis log file")))
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("redis-server not found on PATH: apt-get install redis-server")
            }
            Err(e) => return Err(format!("spawn redis-server: {e}")),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = self.child.as_mut().unwrap().try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let mut c = self.child.take().unwrap();
                kill_child(&mut c);
                return Err(format!(
                    "redis-server on port {} did not answer PING ({exited:?}); log:\n{}",
                    self.port,
                    read_lossy(&log)
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// True when the server answers `PING` with `+PONG` right now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Kills the server (SIGKILL, by PID): an outage as abrupt as a crash.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger a moment.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("restart redis-server: {e}"),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A SIGSTOPped server would ignore nothing but SIGKILL anyway; CONT is harmless.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway and the fake upstreams.

/// An `aegis run` process serving a config written to a temp dir; killed by PID on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    /// The proxy listener, from the `listening on http://...` (or `https://`) line.
    pub addr: SocketAddr,
    /// The admin listener, when the config sets `server.admin_listen`.
    pub admin: Option<SocketAddr>,
    config_path: PathBuf,
    stderr_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Gateway {
    /// Starts `aegis run --config <file>` with exactly the `env` overrides given (the caller's
    /// `PORT`, `REDIS_URL` and `JWT_SECRET` are removed). Panics with its stderr on failure.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(config, env, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Gateway::start`] with extra arguments after `run --config F` (e.g.
    /// `--log-format json`); returns the failure instead of panicking. Two workers unless the
    /// arguments say `--workers`.
    pub fn start_with(
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Gateway, String> {
        let dir = temp_dir("gateway");
        let config_path = dir.path().join("aegis.toml");
        fs::write(&config_path, config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        // `AEGIS_TEST_NOFILE=N` in `env`: the gateway runs with at most N file descriptors
        // (`ulimit -n`, through sh), for tests of what it does when it runs out.
        let nofile = env.iter().find(|(k, _)| *k == "AEGIS_TEST_NOFILE");
        let mut cmd = match nofile {
            Some((_, n)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(aegis_bin());
                c
            }
            None => Command::new(aegis_bin()),
        };
        cmd.arg("run").arg("--config").arg(&config_path).args(args);
        // The same worker count on every machine (tests count connections and ports).
        if !args.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        cmd.env_remove("PORT")
            .env_remove("REDIS_URL")
            .env_remove("JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                File::create(&stderr_path).expect("stderr file"),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn aegis: {e}"))?;
        let (rx, stdout) = pump_lines(child.stdout.take().expect("piped stdout"));
        let addr = match wait_listen_line(
            &rx,
            "listening on http",
            &mut child,
            "aegis run",
            &stderr_path,
        ) {
            Ok(a) => a,
            Err(e) => {
                kill_child(&mut child);
                return Err(e);
            }
        };
        let admin = if config_sets_admin_listen(config) {
            match wait_listen_line(
                &rx,
                "admin listening on http://",
                &mut child,
                "aegis run (admin)",
                &stderr_path,
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    kill_child(&mut child);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Gateway {
            child,
            addr,
            admin,
            config_path,
            stderr_path,
            stdout,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where `/gateway/*` is served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or(self.addr)
    }

    /// `GET path` on the proxy listener.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.addr, path, headers)
    }

    /// The `/gateway/stats` array.
    pub fn stats(&self) -> Vec<serde_json::Value> {
        let r = get(self.admin_addr(), "/gateway/stats", &[]);
        assert_eq!(r.status, 200, "GET /gateway/stats: {r:?}");
        match r.json() {
            serde_json::Value::Array(a) => a,
            other => panic!("/gateway/stats is not an array: {other}"),
        }
    }

    pub fn health(&self) -> Response {
        get(self.admin_addr(), "/gateway/health", &[])
    }

    /// Replaces the config file (then send `HUP` to reload it).
    pub fn write_config(&self, text: &str) {
        fs::write(&self.config_path, text).expect("rewrite config");
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// The exit status, once the process has exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the gateway wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Waits up to 10 s for the gateway to log `needle`, and panics naming it if it does not
    /// (the gateway's last log lines follow, from `Drop`). Its log lines are written by a
    /// background thread, so a line about something that has happened may land a little later.
    pub fn wait_logged(&self, needle: &str) {
        wait_until(
            &format!("the gateway to log {needle:?}"),
            Duration::from_secs(10),
            || self.stderr().contains(needle),
        );
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "---- aegis (pid {}) stderr, last 60 lines ----",
                self.child.id()
            );
            let text = self.stderr();
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn config_sets_admin_listen(config: &str) -> bool {
    config
        .lines()
        .any(|l| l.trim_start().starts_with("admin_listen"))
}

/// A config with one catch-all route `/` to `target` on a free port; `extra` is appended to
/// the route (e.g. `timeout = "300s"`).
pub fn one_route_config(target: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/\"\ntargets = [{target:?}]\n{extra}\n"
    )
}

/// An `aegis upstream --name N --listen 127.0.0.1:0` process; killed by PID on drop.
#[derive(Debug)]
pub struct Upstream {
    child: Child,
    pub name: String,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let dir = temp_dir("upstream");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(aegis_bin())
            .args(["upstream", "--name", name, "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                File::create(&stderr_path).expect("stderr file"),
            ))
            .spawn()
            .expect("spawn aegis upstream");
        let (rx, _) = pump_lines(child.stdout.take().expect("piped stdout"));
        let prefix = format!("upstream {name} listening on http://");
        let addr = match wait_listen_line(&rx, &prefix, &mut child, "aegis upstream", &stderr_path)
        {
            Ok(a) => a,
            Err(e) => {
                kill_child(&mut child);
                panic!("{e}");
            }
        };
        Upstream {
            child,
            name: name.to_owned(),
            addr,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`, as a route target.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// A URL on 127.0.0.1 where nothing listens (a port bound and released): connect errors.
pub fn dead_target() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A one-request-at-a-time raw HTTP upstream inside the test process, for what `aegis
/// upstream` cannot do (hop-by-hop response headers, holding a request until told). Each
/// received request head is sent on `requests`; the handler writes the raw response.
#[derive(Debug)]
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub requests: mpsc::Receiver<String>,
}

impl RawUpstream {
    /// `respond(head, stream)` is called on the accept thread for each request.
    pub fn start(respond: impl Fn(&str, &mut TcpStream) + Send + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { break };
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let Ok(head) = read_head(&mut s) else {
                    continue;
                };
                let head = String::from_utf8_lossy(&head).into_owned();
                if tx.send(head.clone()).is_err() {
                    break;
                }
                respond(&head, &mut s);
                let _ = s.flush();
            }
        });
        RawUpstream { addr, requests: rx }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// What a [`ScriptedUpstream`] does after a request it received.
#[derive(Debug, Clone)]
pub enum Then {
    /// Write these bytes and keep the connection for its next request.
    Answer(Vec<u8>),
    /// Write these bytes, then close.
    AnswerAndClose(Vec<u8>),
    /// Close without a byte of answer (a keep-alive race: the request was received).
    Close,
}

/// One request a [`ScriptedUpstream`] received: on which connection (numbered from 0 in
/// accept order), its place on that connection, its head and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub conn: usize,
    pub nth_on_conn: usize,
    pub head: String,
    pub body: Vec<u8>,
}

/// A keep-alive raw HTTP/1.1 upstream in the test process that answers by script and records
/// every request it received (bodies included: `Content-Length` only), so a test can count
/// what reached it and on which connections.
#[derive(Debug)]
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptedUpstream {
    /// `script(request)` decides each answer; it runs on the connection's thread.
    pub fn start(script: impl Fn(&Received) -> Then + Send + Sync + 'static) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted upstream");
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(script);
        let log = received.clone();
        thread::spawn(move || {
            for (conn, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { break };
                let (script, log) = (script.clone(), log.clone());
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    // Bounded: a connection carries at most this many requests.
                    for nth_on_conn in 0..10_000 {
                        let Ok(head) = read_head(&mut s) else { return };
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let len = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        if s.read_exact(&mut body).is_err() {
                            return;
                        }
                        let r = Received {
                            conn,
                            nth_on_conn,
                            head,
                            body,
                        };
                        let then = script(&r);
                        log.lock().unwrap().push(r);
                        match then {
                            Then::Answer(b) => {
                                if s.write_all(&b).is_err() {
                                    return;
                                }
                            }
                            Then::AnswerAndClose(b) => {
                                let _ = s.write_all(&b);
                                return;
                            }
                            Then::Close => return,
                        }
                    }
                });
            }
        });
        ScriptedUpstream { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in the order they were.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many connections carried a request.
    pub fn connections(&self) -> usize {
        let mut conns: Vec<usize> = self.received().iter().map(|r| r.conn).collect();
        conns.sort_unstable();
        conns.dedup();
        conns.len()
    }
}

/// TCP states (Linux's numbers: 01 ESTABLISHED, 08 CLOSE_WAIT, ...) of every loopback socket
/// connected to `port` on this machine: the client ends of connections to it, as
/// `/proc/net/tcp` and `/proc/net/tcp6` list them.
pub fn tcp_states_to(port: u16) -> Vec<u8> {
    let mut states = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (cols.get(2), cols.get(3)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port)
                && let Ok(s) = u8::from_str_radix(state, 16)
            {
                states.push(s);
            }
        }
    }
    states
}

/// `ESTABLISHED` in [`tcp_states_to`].
pub const TCP_ESTABLISHED: u8 = 0x01;
/// `CLOSE_WAIT` in [`tcp_states_to`]: the peer closed, this end has not.
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// What a [`Backend`] received in one request.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    /// The request head, as sent by the gateway.
    pub head: String,
    /// The body bytes read.
    pub body: Vec<u8>,
    /// Whether the body arrived whole (by its `Content-Length` or chunked framing); false if
    /// the gateway closed the connection first.
    pub complete: bool,
}

/// A threaded HTTP/1.1 upstream inside the test process that sees everything the gateway
/// sends: each connection on its own thread, keep-alive, bodies read by their framing. Every
/// head is recorded when it arrives, every request again when its body ended (whole or not),
/// and `respond(head, body)` gives the raw response bytes (it may block, e.g. on a [`Gate`]).
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    received: Arc<Mutex<Vec<BackendRequest>>>,
    /// Responses whose write failed (the gateway went away mid-response).
    write_errors: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections accepted.
    conns: Arc<std::sync::atomic::AtomicUsize>,
}

impl Backend {
    pub fn start(respond: impl Fn(&str, &[u8]) -> Vec<u8> + Send + Sync + 'static) -> Backend {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        let addr = listener.local_addr().unwrap();
        let respond = Arc::new(respond);
        let heads = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let write_errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b = Backend {
            addr,
            heads: heads.clone(),
            received: received.clone(),
            write_errors: write_errors.clone(),
            conns: conns.clone(),
        };
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { break };
                conns.fetch_add(1, Ordering::SeqCst);
                let (respond, heads, received, write_errors) = (
                    respond.clone(),
                    heads.clone(),
                    received.clone(),
                    write_errors.clone(),
                );
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    loop {
                        let Ok(head) = read_head(&mut s) else { return };
                        let head = String::from_utf8_lossy(&head).into_owned();
                        heads.lock().unwrap().push(head.clone());
                        let (body, complete) = read_request_body(&mut s, &head);
                        received.lock().unwrap().push(BackendRequest {
                            head: head.clone(),
                            body: body.clone(),
                            complete,
                        });
                        if !complete {
                            return;
                        }
                        let out = respond(&head, &body);
                        if s.write_all(&out).and_then(|()| s.flush()).is_err() {
                            write_errors.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        b
    }

    /// Answers every request `200` with `body`.
    pub fn ok(body: &'static str) -> Backend {
        Backend::start(move |_, _| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request head so far, in arrival order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Every request whose body ended so far (whole or cut off).
    pub fn received(&self) -> Vec<BackendRequest> {
        self.received.lock().unwrap().clone()
    }

    pub fn write_errors(&self) -> usize {
        self.write_errors.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.conns.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A request body after `head`, by its framing: the bytes and whether all of them came.
fn read_request_body(s: &mut TcpStream, head: &str) -> (Vec<u8>, bool) {
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return match read_chunked(s) {
            Ok(b) => (b, true),
            Err(_) => (Vec::new(), false),
        };
    }
    let len: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let mut got = 0;
    while got < len {
        match s.read(&mut body[got..]) {
            Ok(0) | Err(_) => {
                body.truncate(got);
                return (body, false);
            }
            Ok(n) => got += n,
        }
    }
    (body, true)
}

/// A gate that [`Backend`] handlers can wait at until the test opens it (a held response),
/// for at most [`IO_TIMEOUT`].
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let guard = lock.lock().unwrap();
        let _ = cv.wait_timeout_while(guard, IO_TIMEOUT, |open| !*open);
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client over raw sockets (so malformed and oversized requests can be sent).

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw_exchange(addr, &bytes, method == "HEAD")
}

/// `GET path`; panics (naming the request) on a connection error.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `n` GETs in flight at once: `n` connections opened (spread round robin over `targets`),
/// every request written, and only then every response read, so the servers hold all `n`
/// requests at the same time. One thread, no sleeps; responses in request order.
pub fn concurrent_gets(
    targets: &[SocketAddr],
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<Response> {
    let mut extra = String::new();
    for (k, v) in headers {
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let addr = targets[i % targets.len()];
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr} (connection {i} of {n}): {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_nodelay(true).expect("nodelay");
        conns.push((addr, s));
    }
    for (addr, s) in &mut conns {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    }
    conns
        .iter_mut()
        .enumerate()
        .map(|(i, (addr, s))| {
            read_response(s, false)
                .unwrap_or_else(|e| panic!("response {i} of {n} from {addr}: {e}"))
        })
        .collect()
}

/// Writes `bytes` as is and reads one response. A write error is ignored when a response can
/// still be read (the server may answer and close before reading everything).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], head_only: bool) -> io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let write_err = s.write_all(bytes).err();
    match read_response(&mut s, head_only) {
        Ok(r) => Ok(r),
        Err(e) => Err(write_err.unwrap_or(e)),
    }
}

/// Reads bytes up to and including the blank line that ends a message head.
pub fn read_head(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} bytes of the head: {:?}",
                    head.len(),
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(b[0]);
        if head.len() > 1 << 20 {
            return Err(io::Error::other("head larger than 1MiB"));
        }
    }
    Ok(head)
}

/// Reads one HTTP/1.1 response (1xx skipped) with its body.
pub fn read_response(s: &mut impl Read, head_only: bool) -> io::Result<Response> {
    loop {
        let head = read_head(s)?;
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            continue;
        }
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(r);
        }
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            r.body = read_chunked(s)?;
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("bad content-length {len:?}")))?;
            r.body = vec![0; len];
            s.read_exact(&mut r.body)?;
        } else {
            s.read_to_end(&mut r.body)?;
        }
        return Ok(r);
    }
}

fn read_chunked(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if s.read(&mut b)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in chunk size",
                ));
            }
            line.push(b[0]);
        }
        let size_text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers (if any) up to the blank line.
            let mut tail = Vec::new();
            while !(tail.ends_with(b"\r\n") && (tail.len() == 2 || tail.ends_with(b"\r\n\r\n"))) {
                if s.read(&mut b)? == 0 {
                    break;
                }
                tail.push(b[0]);
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        s.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        s.read_exact(&mut crlf)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens.

/// An HS256 token over `claims`, with `exp` one hour ahead unless the claims set it.
pub fn mint_token(secret: &str, claims: serde_json::Value) -> String {
    let mut claims = claims;
    if let serde_json::Value::Object(m) = &mut claims {
        m.entry("exp")
            .or_insert_with(|| serde_json::json!(unix_millis() / 1000 + 3600));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key"),
    )
    .expect("encode token")
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A raw client connection to `addr` with read and write timeouts and Nagle off.
pub fn connect_raw(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, timeout).expect("connect to the gateway");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Bytes as text, for assertion messages.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether a read error means the peer reset the connection.
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Asserts the gateway closes the connection `r` reads: the next read sees the end of the
/// stream (a reset also counts when `reset_ok`, e.g. when the gateway left bytes unread);
/// bytes, a timeout or another error fail.
pub fn expect_closed(r: &mut impl Read, reset_ok: bool) {
    let mut b = [0u8; 256];
    match r.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected the gateway to close the connection, read {:?}",
            lossy(&b[..n])
        ),
        Err(e) if reset_ok && is_reset(&e) => {}
        Err(e) => panic!("expected the gateway to close the connection: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_content_length_responses() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.header("x-a"), Some("1"));
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!((r.status, r.json()), (404, serde_json::json!({})));
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\n"[..], false).is_err());
    }

    #[test]
    fn client_round_trips_with_a_raw_upstream() {
        let up = RawUpstream::start(|head, s| {
            // Read the 5-byte body first: closing with unread bytes would reset the connection
            // under the client before it reads the response.
            let mut sent = [0u8; 5];
            let _ = s.read_exact(&mut sent);
            let body = format!("{{\"line\":{:?}}}", head.lines().next().unwrap_or(""));
            let _ = write!(
                s,
                "HTTP/1.1 201 Created\r\nX-Two: a\r\nX-Two: b\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let r = request(up.addr, "POST", "/p?q=1", &[("X-A", "1")], b"hello").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header_all("x-two"), ["a", "b"]);
        assert_eq!(r.json()["line"], "POST /p?q=1 HTTP/1.1");
        let head = up.requests.recv_timeout(IO_TIMEOUT).unwrap();
        assert!(head.contains("Content-Length: 5\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        wait_until("a true condition", Duration::from_millis(10), || true);
        assert_eq!(wait_for("a value", Duration::from_secs(1), || Some(7)), 7);
    }

    #[test]
    fn tokens_carry_an_expiry() {
        let t = mint_token("s", serde_json::json!({"userId": "u"}));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp".to_owned()].into();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s").unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["userId"], "u");
    }
}
