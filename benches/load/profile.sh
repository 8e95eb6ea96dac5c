#!/usr/bin/env bash
# Where a proxy's CPU goes, per proxied request: system calls and scheduler events (perf
# tracepoints), then a sampled profile split into kernel and user space with the hottest
# user-space symbols. The process profiled is the proxy or the harness's upstream behind it.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   benches/load/profile.sh                          # aegis, one worker, the proxy
#   TARGET=nginx benches/load/profile.sh
#   WORKERS=2 benches/load/profile.sh                # the balancer lock shows with two
#   WHO=upstream benches/load/profile.sh             # the upstream's cost of what aegis sends
#   WHO=upstream TARGET=nginx benches/load/profile.sh
#   SYMBOLS='regex' ...                              # also: the share of matching symbols
#
# wrk -t1 -c64 against the proxy on loopback, as ../shared/bench/run.sh runs it, bounded in
# time (1 s warm-up, 4 s counted, 6 s sampled). Needs perf (with tracepoints), wrk, curl,
# nginx for TARGET=nginx and the harness's upstream binary (built by ../shared/bench/run.sh
# into /tmp/peer-bench-target).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${TARGET:-aegis}
workers=${WORKERS:-1}
who=${WHO:-proxy}
up_bin=${UPSTREAM_BIN:-/tmp/peer-bench-target/release/peer-bench-upstream}
[ -x "$up_bin" ] || { echo "no $up_bin: run ../shared/bench/run.sh install/http once" >&2; exit 1; }
work=$(mktemp -d -t aegis-prof.XXXXXX)
port=18097
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$up_bin" 13011 13012 13013 >/dev/null 2>&1 &
up=$!
pids+=("$up")
case "$target" in
aegis)
    cat >"$work/aegis.toml" <<TOML
[server]
listen = "127.0.0.1:$port"

[[routes]]
path = "/"
targets = ["http://127.0.0.1:13011", "http://127.0.0.1:13012", "http://127.0.0.1:13013"]
TOML
    RUST_LOG=warn "${AEGIS_BIN:-$here/../../target/release/aegis}" run --config "$work/aegis.toml" \
        --workers "$workers" >/dev/null 2>&1 &
    ;;
nginx)
    mkdir -p "$work/tmp"
    cat >"$work/nginx.conf" <<NGX
user root;
worker_processes $workers;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $work/tmp;
    proxy_temp_path $work/tmp;
    keepalive_requests 100000000;
    upstream pool {
        server 127.0.0.1:13011; server 127.0.0.1:13012; server 127.0.0.1:13013;
        keepalive 1024;
    }
    server {
        listen 127.0.0.1:$port reuseport;
        location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGX
    nginx -c "$work/nginx.conf" >/dev/null 2>&1 &
    ;;
*) echo "TARGET is aegis or nginx" >&2; exit 2 ;;
esac
proxy=$!
pids+=("$proxy")
for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
done
# nginx: its worker processes (children of the master); aegis: the process (all its threads).
case "$who:$target" in
proxy:aegis) watch=$proxy ;;
proxy:nginx) watch=$(pgrep -d, -P "$proxy") ;;
upstream:*) watch=$up ;;
*) echo "WHO is proxy or upstream" >&2; exit 2 ;;
esac
url="http://127.0.0.1:$port/"
wrk -t1 -c64 -d1s "$url" >/dev/null

events=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto
events=$events,syscalls:sys_enter_writev,syscalls:sys_enter_getsockopt
events=$events,syscalls:sys_enter_epoll_wait,sched:sched_switch,sched:sched_wakeup
perf stat -e "$events" -p "$watch" -o "$work/stat" &
stat=$!
reqs=$(wrk -t1 -c64 -d4s "$url" | awk '/requests in/{print $1}')
kill -INT "$stat"
wait "$stat" || true
echo "$target ($workers worker(s)), $who: $reqs requests in 4 s; per request:"
awk -v r="$reqs" '$1 ~ /^[0-9,]+$/ {gsub(",", "", $1); printf "  %-34s %7.3f\n", $2, $1 / r}' "$work/stat"

perf record -F 4999 -g -p "$watch" -o "$work/perf.data" >/dev/null 2>&1 &
rec=$!
wrk -t1 -c64 -d6s "$url" >/dev/null
kill -INT "$rec"
wait "$rec" || true
echo "CPU samples by object (kernel vs user space):"
perf report -i "$work/perf.data" --no-children --sort dso -g none 2>/dev/null |
    grep '%' | head -5 || true
echo "hottest user-space symbols:"
perf report -i "$work/perf.data" --no-children --sort dso,sym -g none 2>/dev/null |
    grep '%' | grep -v kernel.kallsyms | head -25 || true
if [ -n "${SYMBOLS:-}" ]; then
    echo "symbols matching /$SYMBOLS/:"
    perf report -i "$work/perf.data" --no-children --sort sym -g none 2>/dev/null |
        grep '%' | grep -E "$SYMBOLS" |
        awk '{ sum += $1; print } END { printf "  together %.2f%% of the samples\n", sum }' || true
fi
