//! A broken invariant, as the driver finds it and the reports list it: a leaf module, so that
//! the driver (which finds them) and the reports (which show them) both point down to it.

/// A broken invariant: when, which, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub t_ms: u64,
    pub invariant: &'static str,
    pub detail: String,
}
