//! The `aegis` command line. Exit codes: 0 ok, 1 bad config or runtime failure, 2 usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use aegis_policy::time::parse_duration;
#[cfg(feature = "dev")]
use aegis_tokio::dev::{demo, token, upstream};
use aegis_tokio::observe::log::{self, LogFormat};
use aegis_tokio::server;
use aegis_tokio::state::ConfigSource;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Aegis: an API gateway with JWT auth, rate limits (memory or Redis), round-robin load
/// balancing and circuit breakers, whose policy also runs in a deterministic simulator.
#[derive(Debug, Parser)]
#[command(name = "aegis", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a config file. PORT, REDIS_URL and JWT_SECRET override it; SIGHUP reloads it;
    /// SIGTERM drains and exits.
    Run {
        #[arg(long, short, default_value = "aegis.toml")]
        config: PathBuf,
        /// Access log: the seed's text line, or one JSON object per request (for
        /// `aegis-sim replay`).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Worker threads, each with its own listener (SO_REUSEPORT) and upstream pool
        /// (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    #[cfg(feature = "dev")]
    /// Everything in one process, no setup: the gateway, six demo upstreams, the seed's routes,
    /// the in-memory store, a ready token and the curl walkthrough.
    Demo {
        #[arg(long, default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
        /// First of six consecutive upstream ports on 127.0.0.1 (0: any free ports).
        #[arg(long, default_value_t = 3001)]
        upstream_port: u16,
        /// How long an opened circuit stays open.
        #[arg(long, default_value = "60s")]
        open_for: String,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file: prints `ok: N routes`, or the error naming the key (exit 1).
    Check {
        #[arg(long, short, default_value = "aegis.toml")]
        config: PathBuf,
    },
    #[cfg(feature = "dev")]
    /// Mint an HS256 test token.
    Token {
        /// The HS256 secret (default: $JWT_SECRET).
        #[arg(long)]
        secret: Option<String>,
        /// The identity, as `userId` and `sub`.
        #[arg(long, default_value = "test-123")]
        user: String,
        /// An extra claim, `key=value` (repeatable; JSON values keep their type).
        #[arg(long)]
        claim: Vec<String>,
        /// Lifetime.
        #[arg(long, default_value = "1h")]
        exp: String,
    },
    #[cfg(feature = "dev")]
    /// A fake upstream service answering JSON (what the demo and compose file run).
    Upstream {
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "port")]
        listen: Option<SocketAddr>,
        /// Listen on 0.0.0.0:PORT.
        #[arg(long)]
        port: Option<u16>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's runtime: signals, reloads, the admin listener (and the demo's upstreams).
/// Proxy traffic runs on the worker threads `server::serve` starts.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// `--workers`, or one per CPU.
fn worker_count(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run {
            config,
            log_format,
            workers,
        } => {
            if !config.exists() {
                return Err(format!(
                    "config file {} not found (pass --config FILE, or try `aegis demo`)",
                    config.display()
                ));
            }
            let _log = log::init(log_format);
            runtime()?.block_on(server::serve(
                ConfigSource::File(config),
                log_format,
                worker_count(workers),
                |_| {},
            ))
        }
        #[cfg(feature = "dev")]
        Cmd::Demo {
            listen,
            upstream_port,
            open_for,
            log_format,
        } => {
            parse_duration(&open_for).map_err(|e| format!("--open-for: {e}"))?;
            let _log = log::init(log_format);
            runtime()?.block_on(demo::run(listen, upstream_port, &open_for, log_format))
        }
        Cmd::Check { config } => {
            let c = ConfigSource::File(config).load()?;
            for w in c.warnings() {
                eprintln!("warning: {w}");
            }
            if let Some(t) = &c.server.tls {
                let certs = aegis_tokio::tls::server::CertStore::load(
                    t,
                    aegis_tokio::time::wall().as_secs(),
                )
                .map_err(|e| format!("server.tls: {e}"))?;
                aegis_tokio::tls::server::TlsServer::new(t, certs)
                    .map_err(|e| format!("server.tls: {e}"))?;
            }
            let n = c.routes.len();
            aegis_tokio::say!("ok: {n} route{}", if n == 1 { "" } else { "s" });
            Ok(())
        }
        #[cfg(feature = "dev")]
        Cmd::Token {
            secret,
            user,
            claim,
            exp,
        } => {
            let secret = secret
                .or_else(|| std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()))
                .ok_or("--secret is required (or set JWT_SECRET)")?;
            let exp = parse_duration(&exp).map_err(|e| format!("--exp: {e}"))?;
            aegis_tokio::say!("{}", token::mint(&secret, &user, &claim, exp)?);
            Ok(())
        }
        #[cfg(feature = "dev")]
        Cmd::Upstream { name, listen, port } => {
            let addr =
                listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port.unwrap_or(3000))));
            let _log = log::init(LogFormat::Text);
            runtime()?.block_on(upstream::run(&name, addr))
        }
    }
}
