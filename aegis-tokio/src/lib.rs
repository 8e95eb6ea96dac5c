//! aegis-tokio: the I/O shell of the Aegis gateway (tokio, hyper, Redis) and the `aegis`
//! binary. It drives the aegis-policy pipeline over real sockets.
#![forbid(unsafe_code)]

pub mod redis_store;
