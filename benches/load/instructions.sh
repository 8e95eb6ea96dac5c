#!/usr/bin/env bash
# User-space instructions per proxied request, counted exactly by callgrind (no noise, unlike
# CPU time on a shared VM): the gateway under test runs under valgrind with one worker, wrk
# drives it for 8 s through the harness's upstream (../shared/bench), and the instruction count
# of the measured window is divided by wrk's request count.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   benches/load/instructions.sh            # aegis
#   TARGET=nginx benches/load/instructions.sh
#   MODE=jwt-memory benches/load/instructions.sh                # HS256 token + memory limit
#   MODE=jwt-memory TOKEN_CACHE=0 benches/load/instructions.sh  # the same, every token verified
#
# Needs valgrind, wrk, curl, the harness's upstream binary (built by ../shared/bench/run.sh
# into /tmp/peer-bench-target) and, for TARGET=nginx, nginx.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${TARGET:-aegis}
up_bin=${UPSTREAM_BIN:-/tmp/peer-bench-target/release/peer-bench-upstream}
[ -x "$up_bin" ] || { echo "no $up_bin: run ../shared/bench/run.sh install/http once" >&2; exit 1; }
work=$(mktemp -d -t aegis-insn.XXXXXX)
port=18083
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$up_bin" 13001 13002 13003 >/dev/null 2>&1 & pids+=($!)
mode=${MODE:-passthrough}
bin=${AEGIS_BIN:-$here/../../target/release/aegis}
wrk_args=()
case "$target" in
aegis)
    cat >"$work/aegis.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
max_requests_per_ip = 100000

TOML
    route=""
    if [ "$mode" = jwt-memory ]; then
        # Every request carries the same token, as in issue 13's table; the limit is never
        # reached, so each request does the whole limiter step and is admitted.
        cat >>"$work/aegis.toml" <<TOML
[auth]
secret = "bench-secret"
token_cache = ${TOKEN_CACHE:-1024}

TOML
        route='auth = true
rate_limit = { max = 1000000000, window = "60s", key = "user" }'
        token=$("$bin" token --secret bench-secret --user bench --exp 24h)
        wrk_args=(-H "Authorization: Bearer $token")
    fi
    cat >>"$work/aegis.toml" <<TOML
[[routes]]
path = "/"
targets = ["http://127.0.0.1:13001", "http://127.0.0.1:13002", "http://127.0.0.1:13003"]
$route
TOML
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        --dump-instr=no --instr-atstart=no \
        "$bin" run --config "$work/aegis.toml" \
        --workers 1 >/dev/null 2>"$work/valgrind.log" &
    ;;
nginx)
    mkdir -p "$work/tmp"
    cat >"$work/nginx.conf" <<NGX
user root;
worker_processes 1;
daemon off;
master_process off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $work/tmp;
    proxy_temp_path $work/tmp;
    keepalive_requests 100000000;
    upstream pool {
        server 127.0.0.1:13001; server 127.0.0.1:13002; server 127.0.0.1:13003;
        keepalive 1024;
    }
    server {
        listen 127.0.0.1:$port;
        location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGX
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
        --instr-atstart=no nginx -c "$work/nginx.conf" >/dev/null 2>"$work/valgrind.log" &
    ;;
*) echo "TARGET is aegis or nginx" >&2; exit 2 ;;
esac
pid=$!
pids+=("$pid")
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/gateway/health" && break
    sleep 0.2
done
callgrind_control -i on "$pid" >/dev/null 2>&1
wrk "${wrk_args[@]}" -t1 -c16 -d3s "http://127.0.0.1:$port/" >/dev/null   # warm-up: pools filled
callgrind_control -z "$pid" >/dev/null 2>&1
reqs=$(wrk "${wrk_args[@]}" -t1 -c16 -d8s "http://127.0.0.1:$port/" | awk '/requests in/{print $1}')
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
total=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$target ($mode): $reqs requests, $((total / reqs)) user-space instructions per request"
