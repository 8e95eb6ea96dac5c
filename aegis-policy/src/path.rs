//! Path normalisation, so that a request is routed and authorised by the path the upstream will
//! see: `/public/../users` is `/users`, `/%75sers` is `/users`, `//users` is `/users`.
//!
//! The rules: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are
//! decoded and other escapes have their hex upper-cased (§6.2.2.1); runs of `/` collapse to one;
//! `.` and `..` segments are removed (§5.2.4), never climbing above the root. An encoded slash
//! (`%2F`) is data, not a separator, and stays encoded.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with \"/\"",
            PathError::BadPercentEncoding => "\"%\" must be followed by two hex digits",
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
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when no rule would change the path: no `%`, no empty, `.` or `..` segment except a
/// final empty one (the trailing slash).
fn is_normal(p: &[u8]) -> bool {
    let mut seg_start = 1;
    for i in 1..=p.len() {
        if i == p.len() || p[i] == b'/' {
            let seg = &p[seg_start..i];
            let last = i == p.len();
            if (seg.is_empty() && !last) || seg == b"." || seg == b".." {
                return false;
            }
            seg_start = i + 1;
        } else if p[i] == b'%' {
            return false;
        }
    }
    true
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
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2F..%2Fb"), "/a%2F..%2Fb", "encoded slashes are data");
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("users"), Err(PathError::NotAbsolute));
        assert!(matches!(normalize("/users/42"), Ok(Cow::Borrowed(_))));
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
                        Just("".to_owned()), Just("%2e".to_owned()), Just("%41".to_owned())], 0..8)) {
            let p = format!("/{}", segs.join("/"));
            let once = normalize(&p).unwrap().into_owned();
            let twice = normalize(&once).unwrap().into_owned();
            prop_assert_eq!(&once, &twice);
            prop_assert!(once.starts_with('/'));
            prop_assert!(is_normal(once.as_bytes()), "{} -> {}", p, once);
        }
    }
}
