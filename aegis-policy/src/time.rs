//! Time as values: a monotonic instant for breakers and a wall-clock instant for tokens and
//! shared rate-limit windows. Nothing in this crate reads a clock; callers pass these in.

use std::fmt;
use std::time::Duration;

/// A monotonic instant, in nanoseconds since an origin the caller picks (process start in the
/// gateway, zero in the simulator). Arithmetic saturates: time that runs backwards never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// `self + d`, saturating at `u64::MAX` nanoseconds (about 584 years).
    pub fn saturating_add(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_add(duration_nanos(d)))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.as_millis())
    }
}

/// Wall-clock time in milliseconds since the Unix epoch. Used where several processes must agree
/// on time (rate-limit windows in a shared Redis) and for JWT `exp`/`nbf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }
}

/// The two clocks a decision may need, read once by the caller per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    pub mono: Nanos,
    pub wall: UnixMillis,
}

impl Now {
    /// A `Now` whose wall clock starts at `wall_origin` and advances with the monotonic one:
    /// what a simulator or a test uses.
    pub fn virtual_at(mono: Nanos, wall_origin: UnixMillis) -> Now {
        Now {
            mono,
            wall: UnixMillis(wall_origin.0.saturating_add(mono.as_millis())),
        }
    }
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up, with a floor of one: what `Retry-After` and `RateLimit-Reset`
/// carry (a client told "0" retries at once).
pub fn ceil_secs_min1(d: Duration) -> u64 {
    let ms = duration_millis(d);
    ms.div_ceil(1000).max(1)
}

/// Parses `"60s"`, `"500ms"`, `"2m"`, `"1h"`, `"1m30s"`. A bare number is refused so that a
/// unit is never guessed.
/// The units a duration may use, smallest first.
const UNITS: [&str; 7] = ["ns", "us", "ms", "s", "m", "h", "d"];

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. \"60s\" or \"500ms\"".into());
    }
    let mut total: u128 = 0;
    let bytes = t.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "{s:?} is not a duration; write e.g. \"60s\" or \"500ms\""
            ));
        }
        let n: u128 = t[start..i]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        // A space before the unit: say which unit it is and how to write it.
        let mut spaced = i;
        while spaced < bytes.len() && bytes[spaced].is_ascii_whitespace() {
            spaced += 1;
        }
        if spaced > i && spaced < bytes.len() && bytes[spaced].is_ascii_alphabetic() {
            let mut end = spaced;
            while end < bytes.len() && bytes[end].is_ascii_alphabetic() {
                end += 1;
            }
            let unit = &t[spaced..end];
            let n = &t[start..i];
            return Err(if UNITS.contains(&unit) {
                format!("{s:?}: no space between a number and its unit; write \"{n}{unit}\"")
            } else {
                format!(
                    "{s:?}: unknown unit {unit:?}; units are {}",
                    UNITS.join(", ")
                )
            });
        }
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ns: u128 = match &t[ustart..i] {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => {
                return Err(format!(
                    "{s:?} has no unit; write e.g. \"{n}s\" or \"{n}ms\""
                ));
            }
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?}; units are {}",
                    UNITS.join(", ")
                ));
            }
        };
        total = n
            .checked_mul(unit_ns)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: duration too large"))?;
    }
    let nanos = u64::try_from(total).map_err(|_| format!("{s:?}: duration too large"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way the config accepts it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ns", d.as_nanos())
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("60").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(Nanos(5).since(Nanos(10)), Duration::ZERO);
        assert_eq!(
            Nanos(u64::MAX).saturating_add(Duration::from_secs(1)),
            Nanos(u64::MAX)
        );
        assert_eq!(ceil_secs_min1(Duration::ZERO), 1);
        assert_eq!(ceil_secs_min1(Duration::from_millis(1001)), 2);
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
    }
}
