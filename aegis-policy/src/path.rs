//! Path normalisation, so that a request is routed and authorised by the path the upstream will
//! see: `/public/../users` is `/users`, `/%75sers` is `/users`, `//users` is `/users`.
//!
//! The rules: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are
//! decoded and other escapes have their hex upper-cased (§6.2.2.1); runs of `/` collapse to one;
//! `.` and `..` segments are removed (§5.2.4), never climbing above the root.
//!
//! What a lenient backend could read as another path is refused, not normalised (Envoy's
//! "reject" choice): an encoded separator (`%2F`, `%5C`), a raw backslash, an encoded control
//! character (`%00`–`%1F`, `%7F`), an escaped escape (`%25` before two hex digits, which a
//! server that decodes twice reads as `%2e`...), escapes that do not decode to UTF-8 (overlong
//! forms such as `%C0%AE` included), and a dot segment with parameters (`..;x`). What is left
//! has one reading, which routing, auth, the rate-limit key and the upstream all see.
//! [`lenient_view`] gives the path as the most lenient common backends would read it, so that
//! the pipeline can refuse one that would land on a more protected route there.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F` or `%5C`: a separator a backend may decode and then split on.
    EncodedSeparator,
    /// A raw `\`, which some backends read as `/`.
    Backslash,
    /// `%00`–`%1F` or `%7F`.
    EncodedControl,
    /// `%25` followed by two hex digits: an escape escaped.
    DoubleEncoded,
    /// Escapes that do not decode to UTF-8 (overlong forms included).
    InvalidUtf8,
    /// `.;x` or `..;x`: a dot segment with parameters, which servlet containers resolve.
    DotSegmentParams,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with \"/\"",
            PathError::BadPercentEncoding => "\"%\" must be followed by two hex digits",
            PathError::EncodedSeparator => "an encoded \"/\" or \"\\\" (%2F, %5C) is not allowed",
            PathError::Backslash => "a \"\\\" is not allowed",
            PathError::EncodedControl => {
                "an encoded control character (%00-%1F, %7F) is not allowed"
            }
            PathError::DoubleEncoded => {
                "a double-encoded escape (%25 before two hex digits) is not allowed"
            }
            PathError::InvalidUtf8 => "escapes must decode to UTF-8",
            PathError::DotSegmentParams => {
                "a \".\" or \"..\" segment with \";\" parameters is not allowed"
            }
        })
    }
}

/// Normalises an absolute path (no query). Borrows when the path is already normal, which is
/// the common case and allocation-free.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    check_escapes(path.as_bytes())?;
    let decoded = decode_unreserved(path)?;
    if decoded
        .split('/')
        .any(|s| s.starts_with(".;") || s.starts_with("..;"))
    {
        return Err(PathError::DotSegmentParams);
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when no rule would change or refuse the path: no `%` or `\\`, no empty, `.` or `..`
/// segment except a final empty one (the trailing slash), no dot segment with parameters.
fn is_normal(p: &[u8]) -> bool {
    let mut seg_start = 1;
    for i in 1..=p.len() {
        if i == p.len() || p[i] == b'/' {
            let seg = &p[seg_start..i];
            let last = i == p.len();
            if (seg.is_empty() && !last)
                || seg == b"."
                || seg == b".."
                || seg.starts_with(b".;")
                || seg.starts_with(b"..;")
            {
                return false;
            }
            seg_start = i + 1;
        } else if p[i] == b'%' || p[i] == b'\\' {
            return false;
        }
    }
    true
}

/// Refuses a backslash and every escape a lenient backend could read another way; checks
/// that all escapes together decode to UTF-8.
fn check_escapes(p: &[u8]) -> Result<(), PathError> {
    let mut decoded = Vec::new();
    let mut high = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let v = match (
                    p.get(i + 1).copied().and_then(hex),
                    p.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::BadPercentEncoding),
                };
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    b'%' if p.get(i + 3).is_some_and(|&c| hex(c).is_some())
                        && p.get(i + 4).is_some_and(|&c| hex(c).is_some()) =>
                    {
                        return Err(PathError::DoubleEncoded);
                    }
                    _ => {}
                }
                high |= v >= 0x80;
                decoded.push(v);
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    if high && std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(())
}

/// The path as lenient backends read it (a normalised path in, `None` when they read it as
/// it is): `;params` dropped from every segment (servlet containers), letters folded to lower
/// case (case-insensitive file systems), trailing `%20`, `.` and `%00` trimmed from segments
/// (Windows), dot segments resolved again.
pub fn lenient_view(path: &str) -> Option<String> {
    // One pass: letters to fold, parameters, escapes, or a segment ending in `.`.
    let b = path.as_bytes();
    let may_differ = b.iter().enumerate().any(|(i, &c)| {
        c.is_ascii_uppercase()
            || c == b';'
            || c == b'%'
            || (c == b'.' && i > 1 && b[i - 1] != b'/' && b.get(i + 1).is_none_or(|&n| n == b'/'))
    });
    if !may_differ {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        let mut seg = seg.split(';').next().unwrap_or_default();
        loop {
            let trimmed = seg
                .strip_suffix("%20")
                .or_else(|| seg.strip_suffix("%00"))
                .or_else(|| (seg.len() > 2).then(|| seg.strip_suffix('.')).flatten());
            match trimmed {
                Some(t) => seg = t,
                None => break,
            }
        }
        out.push('/');
        out.push_str(&seg.to_ascii_lowercase());
    }
    let view = remove_dot_segments(&out);
    (view != path).then_some(view)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (h, l) = match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadPercentEncoding),
            };
            let v = h * 16 + l;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(b[i + 1].to_ascii_uppercase()));
                out.push(char::from(b[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Copy the run up to the next '%' in one go (it is valid UTF-8: it came from a str
            // and '%' is ASCII, so the split is on a char boundary).
            let next = b[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(b.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
        }
    }
    Ok(out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segs.pop();
                trailing_slash = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segs.is_empty() {
        out.push('/');
    }
    out
}

/// Splits `"/a/b?x=1"` into `("/a/b", Some("x=1"))`.
pub fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
        None => (path_and_query, None),
    }
}

/// Does `path` (normalised) fall under `prefix` on a whole-segment boundary? `/users` covers
/// `/users`, `/users/` and `/users/42`, never `/usersX`; `/` covers everything.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn examples() {
        assert_eq!(n("/users"), "/users");
        assert_eq!(n("/users/"), "/users/");
        assert_eq!(n("/public/../users"), "/users");
        assert_eq!(n("/public/%2e%2e/users"), "/users");
        assert_eq!(n("/public/%2E%2E/users"), "/users");
        assert_eq!(n("/%75sers"), "/users");
        assert_eq!(n("//users///42"), "/users/42");
        assert_eq!(n("/./users/./42/."), "/users/42/");
        assert_eq!(n("/../../users"), "/users");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a%c3%a9"), "/a%C3%A9");
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("users"), Err(PathError::NotAbsolute));
        assert!(matches!(normalize("/users/42"), Ok(Cow::Borrowed(_))));
    }

    /// What an attacker sends to reach a protected route through a lenient backend.
    #[test]
    fn ambiguous_paths_are_refused() {
        for (p, e) in [
            ("/secure%2fx", PathError::EncodedSeparator),
            ("/a/..%2Fsecure/x", PathError::EncodedSeparator),
            ("/secure%5Cx", PathError::EncodedSeparator),
            ("/secure\\x", PathError::Backslash),
            ("/secure%00/x", PathError::EncodedControl),
            ("/secure%0a", PathError::EncodedControl),
            ("/a/%252e%252e/secure", PathError::DoubleEncoded),
            ("/a/%252f", PathError::DoubleEncoded),
            ("/a/%c0%ae%c0%ae/secure", PathError::InvalidUtf8),
            ("/a/%ff", PathError::InvalidUtf8),
            ("/a/..;x/secure", PathError::DotSegmentParams),
            ("/a/%2e%2e;x/secure", PathError::DotSegmentParams),
            ("/a/.;/secure", PathError::DotSegmentParams),
        ] {
            assert_eq!(normalize(p), Err(e), "{p}");
        }
        // A literal percent that is not an escaped escape is fine.
        assert_eq!(n("/100%25"), "/100%25");
        assert_eq!(n("/100%25x"), "/100%25x");
    }

    #[test]
    fn lenient_views() {
        let v = |p: &str| lenient_view(&n(p));
        assert_eq!(v("/secure;x=1/y").as_deref(), Some("/secure/y"));
        assert_eq!(v("/SECURE/x").as_deref(), Some("/secure/x"));
        assert_eq!(v("/secure%20/x").as_deref(), Some("/secure/x"));
        assert_eq!(v("/secure./x").as_deref(), Some("/secure/x"));
        assert_eq!(
            v("/a/b;c/../secure").as_deref(),
            None,
            "dot segments resolved first: /a/secure"
        );
        assert_eq!(v("/users/42"), None);
        assert_eq!(v("/users/v1.2"), None);
    }

    #[test]
    fn prefixes() {
        assert!(has_prefix("/users", "/users"));
        assert!(has_prefix("/users/", "/users"));
        assert!(has_prefix("/users/42", "/users"));
        assert!(!has_prefix("/usersX", "/users"));
        assert!(!has_prefix("/user", "/users"));
        assert!(has_prefix("/anything", "/"));
        assert_eq!(split_query("/users?x=1"), ("/users", Some("x=1")));
    }

    proptest! {
        /// Normalising twice changes nothing, and the result holds no dot or empty segment.
        #[test]
        fn idempotent_and_clean(segs in prop::collection::vec(
            prop_oneof!["[a-z]{1,3}", Just(".".to_owned()), Just("..".to_owned()),
                        Just("".to_owned()), Just("%2e".to_owned()), Just("%41".to_owned()),
                        Just("%C3%A9".to_owned()), Just("x;p".to_owned())], 0..8)) {
            let p = format!("/{}", segs.join("/"));
            let once = normalize(&p).unwrap().into_owned();
            let twice = normalize(&once).unwrap().into_owned();
            prop_assert_eq!(&once, &twice);
            prop_assert!(once.starts_with('/'));
            let segs: Vec<&str> = once.split('/').skip(1).collect();
            for (i, s) in segs.iter().enumerate() {
                prop_assert!(*s != "." && *s != "..", "{} -> {}", p, once);
                prop_assert!(!s.is_empty() || i + 1 == segs.len(), "{} -> {}", p, once);
            }
        }
    }
}
