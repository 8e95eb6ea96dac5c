//! Store outage windows in a gateway's JSON log, for `aegis-sim replay`: the Redis store logs
//! one line when an outage is noticed and one when it ends (aegis-tokio/src/state/redis.rs):
//!
//! ```text
//! {"timestamp":"2026-12-04T18:00:01.250000Z","level":"WARN","message":"redis store unavailable; rate limits follow on_store_error until it returns","error":"..."}
//! {"timestamp":"2026-12-04T18:00:03.830000Z","level":"INFO","message":"redis store available again","outage_ms":2580}
//! ```
//!
//! Those lines carry no `ts_ms`; their `timestamp` (RFC 3339, UTC, from the same wall clock
//! as the access lines' `ts_ms`) says when. An `available again` line without its `unavailable`
//! line (the log began during the outage) starts the window `outage_ms` earlier; an
//! `unavailable` line without its end lasts to the end of the log.

use serde_json::{Map, Value};

/// The message of the line that starts an outage (its beginning: the text goes on).
pub const DOWN_MESSAGE: &str = "redis store unavailable";
/// The message of the line that ends one.
pub const UP_MESSAGE: &str = "redis store available again";

/// One outage window, Unix ms: `[from, until)`; `until` is `u64::MAX` for one still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutageWindow {
    pub from_ms: u64,
    pub until_ms: u64,
    /// 1-based line of the log line that began it (0: the log began during it).
    pub line: usize,
}

/// Collects outage windows from log lines, in file order.
#[derive(Debug, Clone, Default)]
pub struct OutageLog {
    pub windows: Vec<OutageWindow>,
    /// The start of an outage whose end is not logged yet: (Unix ms, line).
    open: Option<(u64, usize)>,
}

impl OutageLog {
    /// Looks at a non-request JSON line; true if it was a store health line.
    pub fn note(&mut self, line: usize, o: &Map<String, Value>) -> bool {
        let Some(msg) = o.get("message").and_then(Value::as_str) else {
            return false;
        };
        let down = msg.starts_with(DOWN_MESSAGE);
        let up = msg.starts_with(UP_MESSAGE);
        if !down && !up {
            return false;
        }
        let Some(at) = line_ms(o) else {
            return false;
        };
        if down {
            // A second warning inside one outage (another gateway's log merged in) keeps the
            // earliest start.
            self.open.get_or_insert((at, line));
        } else {
            let (from, line) = match self.open.take() {
                Some(open) => open,
                None => {
                    let outage = o.get("outage_ms").and_then(Value::as_u64).unwrap_or(0);
                    (at.saturating_sub(outage), 0)
                }
            };
            self.windows.push(OutageWindow {
                from_ms: from,
                until_ms: at.max(from),
                line,
            });
        }
        true
    }

    /// The windows, with one still open at the end of the log lasting forever.
    pub fn finish(mut self) -> Vec<OutageWindow> {
        if let Some((from, line)) = self.open.take() {
            self.windows.push(OutageWindow {
                from_ms: from,
                until_ms: u64::MAX,
                line,
            });
        }
        self.windows
    }
}

/// When a log line was written, Unix ms: its `ts_ms`, else its RFC 3339 `timestamp`.
fn line_ms(o: &Map<String, Value>) -> Option<u64> {
    if let Some(ms) = o.get("ts_ms").and_then(Value::as_u64) {
        return Some(ms);
    }
    rfc3339_ms(o.get("timestamp")?.as_str()?)
}

/// `2026-12-04T18:00:01.250000Z` (UTC, as tracing-subscriber writes it; a `+00:00` offset is
/// read as `Z`, other offsets are applied) to Unix milliseconds.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        // Milliseconds: the first three digits, padded.
        for k in 0..3 {
            ms = ms * 10 + frac.as_bytes().get(k).map_or(0, |c| i64::from(c - b'0'));
        }
    }
    let offset_s = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let oh: i64 = tz.get(1..3)?.parse().ok()?;
            let om: i64 = tz.get(4..6)?.parse().ok()?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2026-11-29T02:19:08.284976Z"),
            Some(1_795_918_748_284)
        );
        assert_eq!(
            rfc3339_ms("2000-02-29T12:00:00.5+01:00"),
            Some(951_822_000_500)
        );
        assert_eq!(rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_ms("yesterday"), None);
        assert_eq!(rfc3339_ms("2026-11-29T02:19:08.28Zjunk"), None);
    }

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s) {
            Ok(Value::Object(o)) => o,
            _ => panic!("{s}"),
        }
    }

    #[test]
    fn windows_from_lines() {
        let mut log = OutageLog::default();
        assert!(!log.note(1, &obj(r#"{"message":"request","ts_ms":5}"#)));
        assert!(log.note(2, &obj(r#"{"message":"redis store unavailable; rate limits follow on_store_error until it returns","ts_ms":1000}"#)));
        assert!(log.note(
            3,
            &obj(r#"{"message":"redis store available again","ts_ms":3000,"outage_ms":2000}"#)
        ));
        // Began before the log: outage_ms says when.
        let mut early = OutageLog::default();
        early.note(1, &obj(r#"{"message":"redis store available again","timestamp":"1970-01-01T00:00:05Z","outage_ms":1500}"#));
        early.note(
            2,
            &obj(r#"{"message":"redis store unavailable; x","timestamp":"1970-01-01T00:00:09Z"}"#),
        );
        assert_eq!(
            log.finish(),
            [OutageWindow {
                from_ms: 1000,
                until_ms: 3000,
                line: 2
            }]
        );
        assert_eq!(
            early.finish(),
            [
                OutageWindow {
                    from_ms: 3500,
                    until_ms: 5000,
                    line: 0
                },
                OutageWindow {
                    from_ms: 9000,
                    until_ms: u64::MAX,
                    line: 2
                },
            ]
        );
    }
}
