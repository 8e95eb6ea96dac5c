//! The router: a pure `find` over a borrowed view of the request (method, host, normalised path).
//!
//! Precedence, in order:
//! 1. only routes whose host pattern matches (or that have none) and whose path is a
//!    whole-segment prefix of the request path are candidates;
//! 2. the longest path prefix wins;
//! 3. among routes with that same path, one with a host pattern beats one without, and the first
//!    in the file wins a remaining tie;
//! 4. if routes with that path exist but none accepts the method, the answer is 405 with the
//!    methods they accept, rather than falling back to a shorter prefix (which could route
//!    `POST /api/admin` to a looser `/api` route).

use http::Method;

use crate::config::RouteConfig;
use crate::path::has_prefix;

/// Index of a route in the configuration's `routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId(pub usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Found(RouteId),
    /// The path matched, the method did not: these methods would be accepted.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

#[derive(Debug, Clone)]
struct Entry {
    id: RouteId,
    path: String,
    host: Option<crate::config::HostPattern>,
    methods: Option<Vec<Method>>,
}

#[derive(Debug, Clone)]
pub struct Router {
    /// Sorted by precedence: longer path first, equal paths together, host-specific first, then
    /// file order.
    entries: Vec<Entry>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut entries: Vec<Entry> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| Entry {
                id: RouteId(i),
                path: r.path.clone(),
                host: r.host.clone(),
                methods: r.methods.clone(),
            })
            .collect();
        entries.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| a.path.cmp(&b.path))
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
                .then_with(|| a.id.cmp(&b.id))
        });
        Router { entries }
    }

    /// `host` is the request's host without the port, if it sent one; `path` is normalised.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> RouteMatch {
        let mut best_path: Option<&str> = None;
        let mut allowed: Vec<Method> = Vec::new();
        for e in &self.entries {
            if let Some(p) = best_path
                && e.path != p
            {
                break;
            }
            let host_ok = match (&e.host, host) {
                (None, _) => true,
                (Some(pat), Some(h)) => pat.matches(h),
                (Some(_), None) => false,
            };
            if !host_ok || !has_prefix(path, &e.path) {
                continue;
            }
            best_path = Some(&e.path);
            match &e.methods {
                None => return RouteMatch::Found(e.id),
                Some(ms) if ms.contains(method) => return RouteMatch::Found(e.id),
                Some(ms) => {
                    for m in ms {
                        if !allowed.contains(m) {
                            allowed.push(m.clone());
                        }
                    }
                }
            }
        }
        if best_path.is_some() {
            RouteMatch::MethodNotAllowed(allowed)
        } else {
            RouteMatch::NotFound
        }
    }
}

/// The host a request names, lower-cased and without its port: from the URI authority
/// (HTTP/2, absolute-form) or the `Host` header.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};
    use proptest::prelude::*;

    fn router(routes: &str) -> Router {
        let c = Config::from_toml(routes, &MapEnv::default()).unwrap();
        Router::new(&c.routes)
    }

    const ROUTES: &str = r#"
        [[routes]]
        path = "/"
        targets = ["http://h:1"]
        [[routes]]
        path = "/users"
        targets = ["http://h:1"]
        [[routes]]
        path = "/users/admin"
        methods = ["GET"]
        targets = ["http://h:1"]
        [[routes]]
        path = "/users/admin"
        methods = ["DELETE"]
        name = "admin-delete"
        targets = ["http://h:1"]
        [[routes]]
        path = "/users"
        host = "*.example.com"
        name = "users-example"
        targets = ["http://h:1"]
    "#;

    #[test]
    fn precedence() {
        let r = router(ROUTES);
        let get = Method::GET;
        assert_eq!(r.find(&get, None, "/users"), RouteMatch::Found(RouteId(1)));
        assert_eq!(
            r.find(&get, None, "/users/42"),
            RouteMatch::Found(RouteId(1))
        );
        assert_eq!(r.find(&get, None, "/usersX"), RouteMatch::Found(RouteId(0)));
        assert_eq!(
            r.find(&get, Some("api.example.com"), "/users"),
            RouteMatch::Found(RouteId(4))
        );
        assert_eq!(
            r.find(&get, Some("other.org"), "/users"),
            RouteMatch::Found(RouteId(1))
        );
        assert_eq!(
            r.find(&get, None, "/users/admin/x"),
            RouteMatch::Found(RouteId(2))
        );
        assert_eq!(
            r.find(&Method::DELETE, None, "/users/admin"),
            RouteMatch::Found(RouteId(3))
        );
        assert_eq!(
            r.find(&Method::POST, None, "/users/admin"),
            RouteMatch::MethodNotAllowed(vec![Method::GET, Method::DELETE])
        );
        let no_root = router("[[routes]]\npath = \"/users\"\ntargets = [\"http://h:1\"]\n");
        assert_eq!(no_root.find(&get, None, "/usersX"), RouteMatch::NotFound);
        assert_eq!(no_root.find(&get, None, "/"), RouteMatch::NotFound);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("example.com:8000"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8000"), "[::1]");
    }

    proptest! {
        /// Over generated route sets and paths, `find` picks exactly the longest route path that
        /// is a whole-segment prefix, and never matches inside a segment.
        #[test]
        fn longest_whole_segment_prefix(
            routes in prop::collection::btree_set("(/[ab]{1,2}){1,3}", 1..6),
            req in "(/[ab]{0,3}){1,4}",
        ) {
            let toml: String = routes.iter()
                .map(|p| format!("[[routes]]\npath = \"{p}\"\ntargets = [\"http://h:1\"]\n"))
                .collect();
            let r = router(&toml);
            let routes: Vec<&String> = routes.iter().collect();
            let expected = routes.iter()
                .filter(|p| req == ***p || req.starts_with(&format!("{p}/")))
                .max_by_key(|p| p.len());
            let got = r.find(&Method::GET, None, &req);
            match expected {
                None => prop_assert_eq!(got, RouteMatch::NotFound),
                Some(p) => {
                    // Route ids follow the order the TOML listed them, which is the set's order.
                    let id = routes.iter().position(|q| q == p).unwrap();
                    prop_assert_eq!(got, RouteMatch::Found(RouteId(id)));
                }
            }
        }
    }
}
