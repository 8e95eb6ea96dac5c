//! Errors that cross layers: why a request body stopped on its way upstream.

use std::error::Error as StdError;
use std::fmt;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a request body stopped streaming upstream.
#[derive(Debug)]
pub enum BodyError {
    /// It grew past the route's `max_body_size` (bytes).
    TooLarge(u64),
    /// The client's connection failed mid-body.
    Client(BoxError),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge(n) => write!(f, "request body larger than {n} bytes"),
            BodyError::Client(e) => write!(f, "client body: {e}"),
        }
    }
}

impl StdError for BodyError {}
