//! The policy crate stays sans-IO: nothing async, no sockets, no Redis in its dependency tree.

use std::process::Command;

#[test]
fn aegis_policy_depends_on_no_async_or_io_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "aegis-policy",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.starts_with("aegis-policy "),
        "unexpected output: {tree}"
    );
    let forbidden = [
        "tokio",
        "hyper",
        "redis",
        "mio",
        "async-std",
        "futures",
        "socket2",
        "rand",
    ];
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        for f in forbidden {
            assert!(
                name != f && !name.starts_with(&format!("{f}-")),
                "aegis-policy must stay sans-IO, but depends on {name}"
            );
        }
    }
}
