//! Shared by the test files that run the `aegis-sim` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `aegis-sim` from the repository root, as a user would (fixtures name key files and
/// scenarios relative to it).
pub fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aegis-sim"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the aegis-sim binary runs")
}
