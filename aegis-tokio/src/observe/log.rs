//! Logging setup: `tracing` to stderr, as text or JSON, through a non-blocking writer: a
//! worker thread formats a line into a bounded channel and goes on; a writer thread of its
//! own writes to stderr. When stderr cannot keep up and the channel is full, lines are
//! dropped (counted in `aegis_log_lines_dropped_total`) rather than stalling requests.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines buffered for the writer thread before new ones are dropped.
const BUFFERED_LINES: usize = 128_000;

/// How log lines are written (`--log-format text|json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the writer thread; dropping it writes out the lines still buffered (hold it until
/// the process exits).
#[derive(Debug)]
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// The drop counter of the installed writer.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the writer fell behind, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Installs the tracing subscriber on stderr: `RUST_LOG` (default `info`) picks levels.
/// A second call (a subscriber already installed) changes nothing.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("aegis-log")
        .finish(std::io::stderr());
    let counter = writer.error_counter();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_err() {
        return LogGuard { _writer: None };
    }
    let _ = DROPPED.set(counter);
    LogGuard {
        _writer: Some(guard),
    }
}

/// Writes a line to stdout. A closed stdout (`aegis check ... | head -0`) is not an error and
/// not a panic, as `println!` would make it: the line is dropped.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// `println!` that a closed stdout cannot turn into a panic (see [`say`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::observe::log::say(format_args!($($arg)*))
    };
}
