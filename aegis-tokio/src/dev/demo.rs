//! `aegis demo`: the README's first command. One process, no setup: six fake upstreams on
//! loopback, the seed's two routes in front of them, the in-memory store, a ready token and
//! the seed's curl walkthrough.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{token, upstream};
use crate::observe::log::LogFormat;
use crate::server;
use crate::state::ConfigSource;

pub const DEFAULT_SECRET: &str = "your_secret_key_here";

pub async fn run(
    listen: SocketAddr,
    upstream_port: u16,
    open_for: &str,
    log_format: LogFormat,
) -> Result<(), String> {
    let mut users = Vec::new();
    let mut products = Vec::new();
    for (i, name) in [
        "user-service-1",
        "user-service-2",
        "user-service-3",
        "product-service-1",
        "product-service-2",
        "product-service-3",
    ]
    .into_iter()
    .enumerate()
    {
        let port = if upstream_port == 0 {
            0
        } else {
            upstream_port
                .checked_add(i as u16)
                .ok_or("--upstream-port too high")?
        };
        let l = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port} for {name}: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        crate::say!("upstream {name} listening on http://{addr}");
        tokio::spawn(upstream::serve(Arc::from(name), l));
        let url = format!("\"http://{addr}\"");
        if i < 3 { &mut users } else { &mut products }.push(url);
    }
    let secret = std::env::var("JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SECRET.to_owned());
    let config = format!(
        r#"# aegis demo: the seed's routes.
[server]
listen = "{listen}"

[auth]
secret = {secret}

[breaker]
failure_threshold = 3
open_for = {open_for}

[[routes]]
path = "/users"
targets = [{users}]
auth = true
rate_limit = {{ max = 10, window = "60s" }}

[[routes]]
path = "/product"
targets = [{products}]
auth = true
"#,
        secret = serde_json::to_string(&secret).unwrap_or_default(),
        open_for = serde_json::to_string(open_for).unwrap_or_default(),
        users = users.join(", "),
        products = products.join(", "),
    );
    let token = token::mint(&secret, "test-123", &[], Duration::from_secs(24 * 3600))?;
    // One worker: the demo's six upstreams share the main thread.
    server::serve(ConfigSource::Inline(config), log_format, 1, move |addr| {
        print_walkthrough(addr, &token)
    })
    .await
}

fn print_walkthrough(addr: SocketAddr, token: &str) {
    let base = if addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    crate::say!(
        r#"
A token for userId test-123 (HS256, valid 24 h):

  export TOKEN='{token}'

The seed's walkthrough:

  curl -i {base}/users                                          # 401: no token
  curl -i -H "Authorization: Bearer $TOKEN" {base}/users        # 200 from a user-service, x-user-id echoed
  curl -i -H "Authorization: Bearer $TOKEN" {base}/product      # another route
  for i in $(seq 15); do curl -s -o /dev/null -w '%{{http_code}} ' -H "Authorization: Bearer $TOKEN" {base}/users; done; echo
                                                                # 10 x 200, then 429 (RateLimit-* and Retry-After headers)
  for i in 1 2 3; do curl -s -H "Authorization: Bearer $TOKEN" {base}/product/fail; echo; done
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H "Authorization: Bearer $TOKEN" {base}/product/fail; done; echo
                                                                # 500s until a circuit opens (3 in a row on one target)
  curl -s {base}/gateway/stats                                  # path, targetUrl, failures, state per target
  curl -s {base}/gateway/metrics | head                         # Prometheus metrics

Ctrl-C stops the demo."#
    );
}
