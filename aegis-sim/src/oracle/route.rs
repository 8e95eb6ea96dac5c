//! The oracle's router, from the README's rules, on its own path normalisation:
//!
//! * the path is split from the query at the first `?`; `%XX` escapes of unreserved
//!   characters (letters, digits, `-._~`) are decoded, other escapes upper-cased, a `%` without
//!   two hex digits is a 400; empty and `.` segments vanish, `..` removes the segment before
//!   it (never above the root); a path that ended in `/`, `.` or `..` keeps a trailing `/`;
//! * refused (400), whatever it would normalise to: a raw `\`; an escape of `/`, `\`, a
//!   control character (`%00`-`%1F`, `%7F`); `%25` followed by two hex digits; escapes that
//!   together do not decode to UTF-8; a `.` or `..` segment followed by `;` (after escapes of
//!   unreserved characters are decoded);
//! * a route matches when its host pattern (if any) matches the request's host (port
//!   dropped, case ignored; `*.x` needs at least one label before `.x`) and its path is the
//!   whole request path or the request path continues it with a `/` (`/` matches anything);
//! * the longest matching path wins; among routes with that path, host-specific ones before
//!   the others, then file order; the first that accepts the method is the route; if none
//!   does, 405.

use aegis_policy::config::{HostPattern, RouteConfig};
use aegis_policy::http::Method;

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// True when normalising would change nothing: no escape, and no empty, `.` or `..`
/// segment (an empty last one, the trailing slash, is fine).
fn already_normal(raw: &str) -> bool {
    let mut segments = raw.split('/').skip(1).peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if s == "." || s == ".." || (s.is_empty() && !last) {
            return false;
        }
    }
    !raw.contains('%')
}

/// The normal form of an absolute path (no query), or `None` when an escape is broken.
pub fn normal_path(raw: &str) -> Option<String> {
    if already_normal(raw) {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let c = (hi * 16 + lo) as char;
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                decoded.push(c);
            } else {
                decoded.push('%');
                decoded.push((bytes[i + 1] as char).to_ascii_uppercase());
                decoded.push((bytes[i + 2] as char).to_ascii_uppercase());
            }
            i += 3;
        } else {
            let c = raw[i..].chars().next()?;
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_with_slash = false;
    for segment in decoded.split('/').skip(1) {
        ends_with_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::new();
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if ends_with_slash || kept.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Whether the policy refuses `raw` outright (see the module's rules).
pub fn refused(raw: &str) -> bool {
    if raw.contains('\\') {
        return true;
    }
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&c| hex_value(c)),
            bytes.get(i + 2).and_then(|&c| hex_value(c)),
        ) else {
            // A broken escape: normal_path refuses it.
            return false;
        };
        let b = hi * 16 + lo;
        if b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f {
            return true;
        }
        let next_two_hex = bytes.get(i + 3).and_then(|&c| hex_value(c)).is_some()
            && bytes.get(i + 4).and_then(|&c| hex_value(c)).is_some();
        if b == b'%' && next_two_hex {
            return true;
        }
        decoded.push(b);
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return true;
    }
    // Dot segments with parameters, once escapes of unreserved characters are decoded.
    let text = String::from_utf8_lossy(&decoded);
    text.split('/')
        .any(|s| s.starts_with(".;") || s.starts_with("..;"))
}

/// How the most lenient common backends read a normal path: parameters after `;` dropped in
/// each segment, letters in lower case, trailing `%20`, `%00` and `.` taken off each segment
/// (but a segment of only dots stays), and dot segments resolved again.
pub fn lenient(normal: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for segment in normal.split('/').skip(1) {
        let mut s = match segment.find(';') {
            Some(i) => segment[..i].to_owned(),
            None => segment.to_owned(),
        };
        loop {
            if s.ends_with("%20") || s.ends_with("%00") {
                s.truncate(s.len() - 3);
            } else if s.ends_with('.') && s.chars().any(|c| c != '.') {
                s.pop();
            } else {
                break;
            }
        }
        segments.push(s.to_ascii_lowercase());
    }
    let joined = format!("/{}", segments.join("/"));
    normal_path(&joined).unwrap_or(joined)
}

/// The host without its port (`[v6]` keeps its brackets).
pub fn bare_host(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
        // At least one character, then a dot, then the suffix.
        HostPattern::Suffix(s) => {
            let h = host.as_bytes();
            h.len() > s.len() + 1
                && h[h.len() - s.len() - 1] == b'.'
                && h[h.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }
    }
}

fn covers(route_path: &str, path: &str) -> bool {
    route_path == "/"
        || path == route_path
        || (path.starts_with(route_path) && path[route_path.len()..].starts_with('/'))
}

/// Which route takes the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Route(usize),
    NotFound,
    MethodNotAllowed,
}

pub fn find(routes: &[RouteConfig], method: &Method, host: Option<&str>, path: &str) -> Routed {
    let host = host.map(bare_host);
    let matches = |r: &RouteConfig| {
        let host_ok = match (&r.host, host) {
            (None, _) => true,
            (Some(p), Some(h)) => host_matches(p, h),
            (Some(_), None) => false,
        };
        host_ok && covers(&r.path, path)
    };
    let Some(longest) = routes
        .iter()
        .filter(|r| matches(r))
        .map(|r| r.path.len())
        .max()
    else {
        return Routed::NotFound;
    };
    // Among the longest: host-specific routes first, then the others, each in file order.
    for with_host in [true, false] {
        for (i, r) in routes.iter().enumerate() {
            if r.path.len() != longest || r.host.is_some() != with_host || !matches(r) {
                continue;
            }
            let accepts = match &r.methods {
                None => true,
                Some(list) => list.contains(method),
            };
            if accepts {
                return Routed::Route(i);
            }
        }
    }
    Routed::MethodNotAllowed
}

/// The path and query the upstream gets: the normal path (less the route's prefix with
/// `strip_prefix`, `/` if nothing is left), the query as sent, under the target's base path.
pub fn upstream_path(
    route: &RouteConfig,
    target: usize,
    normal: &str,
    query: Option<&str>,
) -> String {
    let mut path = normal;
    if route.strip_prefix && route.path != "/" {
        path = &normal[route.path.len()..];
        if path.is_empty() {
            path = "/";
        }
    }
    let mut out = route.targets[target].base_path.clone();
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
