//! Toward the targets: the HTTP/1.1 client, its per-worker keep-alive pools, the response body
//! read from an upstream connection, and the targets themselves.
//!
//! ```text
//!   target   Target: authority, Host, pool slot
//!   client   send: check out (or connect) → write head + body → read the response head
//!   pool     idle connections per target slot, per worker thread
//!   body     UpBody: the response body, read as it is polled; the connection back to the pool
//! ```

mod body;
mod client;
mod pool;
mod stream;
mod target;

pub use body::UpBody;
pub use client::{Outgoing, SendError, SetHeaders, Timing, send};
pub use pool::sweep;
pub use stream::Stream;
pub use target::{Key, NoSlot, Target};
