//! aegis-suite: holds the workspace's end-to-end tests (`tests/`) and criterion benches
//! (`benches/`).
#![forbid(unsafe_code)]
