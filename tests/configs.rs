//! The shipped configuration files: every `config/*.toml` passes `aegis check` with the
//! environment of `.env.example`, the example documents every key the config model knows, the
//! compose config's targets are the compose file's services, and `.env.example` carries the
//! seed's three overrides.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use aegis_policy::config::{Config, MapEnv, StoreKind};
use aegis_testkit::aegis_bin;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `config/*.toml`, sorted.
fn config_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("config"))
        .expect("read config/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected config/aegis.compose.toml and config/aegis.example.toml, found {files:?}"
    );
    files
}

/// `KEY=VALUE` lines of a compose-style env file (comments and blank lines skipped).
fn env_file(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!(".env.example line {}: no '=' in {line:?}", n + 1));
        let prev = vars.insert(k.trim().to_owned(), v.trim().to_owned());
        assert!(prev.is_none(), ".env.example sets {k} twice");
    }
    vars
}

fn example_env() -> BTreeMap<String, String> {
    env_file(&read(".env.example"))
}

fn parse(path: &Path) -> Config {
    let env = example_env()
        .into_iter()
        .fold(MapEnv::default(), |e, (k, v)| e.with(&k, &v));
    let text = fs::read_to_string(path).expect("read config");
    Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn env_example_has_the_seed_overrides() {
    let vars = example_env();
    for key in ["PORT", "REDIS_URL", "JWT_SECRET"] {
        let v = vars
            .get(key)
            .unwrap_or_else(|| panic!(".env.example has no {key}"));
        assert!(!v.is_empty(), ".env.example: {key} is empty");
    }
    // The values are ones the gateway accepts as overrides.
    let mut c = parse(&root().join("config/aegis.compose.toml"));
    c.apply_overrides(
        Some(&vars["PORT"]),
        Some(&vars["REDIS_URL"]),
        Some(&vars["JWT_SECRET"]),
    )
    .expect(".env.example's values are valid overrides");
    assert_eq!(c.server.listen.port().to_string(), vars["PORT"]);
    assert_eq!(c.rate_limit.store, StoreKind::Redis);
}

#[test]
fn every_config_parses_with_the_example_env() {
    for f in config_files() {
        let c = parse(&f);
        assert!(!c.routes.is_empty(), "{}", f.display());
    }
}

#[test]
fn compose_config_targets_are_the_compose_services() {
    let compose = read("docker-compose.yml");
    let c = parse(&root().join("config/aegis.compose.toml"));
    assert_eq!(c.rate_limit.store, StoreKind::Redis);
    assert!(
        compose.contains("redis:7-alpine"),
        "compose has a redis service"
    );
    let mut n = 0;
    for route in &c.routes {
        for t in &route.targets {
            let host = t.authority.host();
            let port = t.authority.port_u16().expect("compose targets name a port");
            let cmd = format!(r#"["upstream", "--name", "{host}", "--port", "{port}"]"#);
            assert!(
                compose.contains(&format!("\n  {host}:\n")) && compose.contains(&cmd),
                "route {} target {}: docker-compose.yml has no service {host} running {cmd}",
                route.name,
                t.url
            );
            n += 1;
        }
    }
    assert_eq!(n, 6, "the seed's six upstream instances");
    // The gateway serves the file this test parsed: config/ is mounted where its command looks.
    assert!(
        compose.contains("- ./config:/etc/aegis/config:ro")
            && compose.contains(r#"["run", "--config", "/etc/aegis/config/aegis.compose.toml"]"#),
        "docker-compose.yml's gateway does not run config/aegis.compose.toml"
    );
}

/// Field names of `struct NAME { ... }` in the config model's source.
fn raw_fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("config.rs has no struct {name}"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .map(str::to_owned)
        .collect()
}

/// `key =` as a key (not as the end of a longer key), set or commented out.
fn mentions_key(text: &str, key: &str) -> bool {
    let needle = format!("{key} =");
    text.match_indices(&needle).any(|(i, _)| {
        i == 0 || {
            let before = text.as_bytes()[i - 1];
            !(before.is_ascii_alphanumeric() || before == b'_')
        }
    })
}

#[test]
fn example_config_shows_every_key_of_the_model() {
    let src = read("aegis-policy/src/config.rs");
    let example = read("config/aegis.example.toml");
    let mut missing = Vec::new();
    let mut total = 0;
    for (section, raw) in [
        ("server", "RawServer"),
        ("upstream", "RawUpstream"),
        ("retry_budget", "RawRetryBudget"),
        ("health_check", "RawHealthCheck"),
        ("auth", "RawAuth"),
        ("rate_limit", "RawStore"),
        ("breaker", "RawBreaker"),
        ("routes", "RawRoute"),
        ("routes.rate_limit", "RawLimit"),
        ("auth.keys", "RawKey"),
        ("server.tls", "RawTls"),
        ("server.tls.certificates", "RawCert"),
        ("upstream_tls", "RawUpstreamTls"),
    ] {
        // Sub-tables (routes.rate_limit, auth.keys) are shown inline or commented out.
        assert!(
            section.contains('.')
                || section.starts_with("routes")
                || example.contains(&format!("\n[{section}]\n")),
            "config/aegis.example.toml has no [{section}] section"
        );
        for key in raw_fields(&src, raw) {
            total += 1;
            if !mentions_key(&example, &key) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(total >= 40, "read only {total} keys from config.rs");
    assert!(
        missing.is_empty(),
        "config/aegis.example.toml does not show {missing:?}"
    );
}

#[test]
fn aegis_check_accepts_every_config() {
    let bin = aegis_bin();
    let vars = example_env();
    for f in config_files() {
        let routes = parse(&f).routes.len();
        let out = Command::new(&bin)
            .args(["check", "--config"])
            .arg(&f)
            .envs(&vars)
            .output()
            .expect("run aegis check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "aegis check --config {}\nstdout: {stdout}\nstderr: {stderr}",
            f.display()
        );
        assert!(
            stdout.contains(&format!("ok: {routes} routes")),
            "aegis check --config {}: expected \"ok: {routes} routes\", got {stdout:?}",
            f.display()
        );
    }
}

#[test]
fn aegis_check_names_the_bad_key() {
    let dir = aegis_testkit::temp_dir("configs");
    let bad = dir.path().join("bad.toml");
    let text = read("config/aegis.compose.toml").replace(
        "\"http://product-service-1:3004\"",
        "\"htp://product-service-1:3004\"",
    );
    fs::write(&bad, text).expect("write bad config");
    let out = Command::new(aegis_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .envs(example_env())
        .output()
        .expect("run aegis check");
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains(r#"routes[1].targets[0]: "htp://product-service-1:3004" is not an http URL"#),
        "{all}"
    );
}
