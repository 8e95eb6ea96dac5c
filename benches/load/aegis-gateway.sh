#!/usr/bin/env bash
# GATEWAY_CMD for the loopback load harness (../shared/bench/run.sh): serves one passthrough
# route "/" round robin over the harness's upstreams, access log off (as nginx and haproxy
# run there), with the harness's worker count as tokio worker threads.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   GATEWAY_NAME=aegis GATEWAY_CMD="$PWD/benches/load/aegis-gateway.sh" ../shared/bench/run.sh http
set -euo pipefail
port=${PB_PORT:?run me from run.sh (PB_PORT unset)}
upstreams=${PB_UPSTREAMS:?run me from run.sh (PB_UPSTREAMS unset)}
workers=${PB_WORKERS:-1}
here=$(cd "$(dirname "$0")" && pwd)
bin=${AEGIS_BIN:-$here/../../target/release/aegis}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p aegis-tokio --bin aegis" >&2; exit 1; }
cfg=$(mktemp -t aegis-bench.XXXXXX.toml)
targets=$(echo "$upstreams" | sed 's/[^,]*/"http:\/\/&"/g')
cat >"$cfg" <<TOML
[server]
listen = "127.0.0.1:$port"

[[routes]]
path = "/"
targets = [$targets]
TOML
RUST_LOG=${RUST_LOG:-warn} exec "$bin" run --config "$cfg" --workers "$workers"
