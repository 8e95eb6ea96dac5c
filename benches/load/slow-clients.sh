#!/usr/bin/env bash
# Normal traffic's latency with 1,000 slow clients connected (issue "Hardening II"): the
# gateway (one worker, the harness's upstream), wrk -c64 for 10 s alone, then again while
# benches/load/slow-clients.py holds 1,000 slow connections (slowloris heads, slow bodies,
# idle keep-alive), with the gateway's RSS before and during. Loopback only, bounded in time.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   benches/load/slow-clients.sh
#
# Needs wrk, python3 and the harness's upstream binary (built by ../shared/bench/run.sh into
# /tmp/peer-bench-target).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
up_bin=${UPSTREAM_BIN:-/tmp/peer-bench-target/release/peer-bench-upstream}
[ -x "$up_bin" ] || { echo "no $up_bin: run ../shared/bench/run.sh install/http once" >&2; exit 1; }
bin=${AEGIS_BIN:-$here/../../target/release/aegis}
slow=${SLOW:-1000}
work=$(mktemp -d -t aegis-slow.XXXXXX)
port=18084
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$up_bin" 13011 13012 13013 >/dev/null 2>&1 & pids+=($!)
cat >"$work/aegis.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
header_read_timeout = "10s"
idle_timeout = "60s"
# Every client here is 127.0.0.1.
max_connections_per_ip = 5000

[[routes]]
path = "/"
targets = ["http://127.0.0.1:13011", "http://127.0.0.1:13012", "http://127.0.0.1:13013"]
timeout = "10s"
TOML
RUST_LOG=warn "$bin" run --config "$work/aegis.toml" --workers 1 >/dev/null 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$gw/status"; }
p99() { awk '/ 99%/{print $2}'; }

wrk -t1 -c64 -d3s "http://127.0.0.1:$port/" >/dev/null   # warm-up
echo "RSS idle: $(rss) KiB"
base=$(wrk -t1 -c64 -d10s --latency "http://127.0.0.1:$port/")
echo "alone:              $(echo "$base" | awk '/Requests\/sec/{print $2}') req/s, p99 $(echo "$base" | p99)"
python3 "$here/slow-clients.py" 127.0.0.1 "$port" "$slow" 25 >"$work/slow.out" &
pids+=($!)
sleep 5
echo "RSS with $slow slow clients: $(rss) KiB"
loaded=$(wrk -t1 -c64 -d10s --latency "http://127.0.0.1:$port/")
echo "with $slow slow:    $(echo "$loaded" | awk '/Requests\/sec/{print $2}') req/s, p99 $(echo "$loaded" | p99)"
wait "${pids[-1]}" || true
cat "$work/slow.out"
echo "RSS after: $(rss) KiB"
