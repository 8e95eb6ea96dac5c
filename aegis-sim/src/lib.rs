//! aegis-sim: a deterministic simulator that replays failure scenarios through the same
//! aegis-policy pipeline on virtual time, reproducible from a seed.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]
