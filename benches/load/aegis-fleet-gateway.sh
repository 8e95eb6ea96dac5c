#!/usr/bin/env bash
# GATEWAY_CMD for the loopback load harness (../shared/bench/run.sh) in one of the configs of
# issue 13's table, chosen by AEGIS_MODE:
#   passthrough        one route "/" round robin over the harness's upstreams (no auth, no limit)
#   jwt-memory         the same route with auth = true (HS256) and a limit per user, memory store
#   jwt-redis          the same with the Redis store: a redis-server started here
#   jwt-redis-cluster  the same with Redis Cluster: three redis-server masters started here
# The limit (1e9 per minute per user) is never reached: every request does the whole limiter
# round trip and is admitted. Redis runs in this script's session, so the harness stops it with
# the gateway and counts its CPU with the gateway's ("with redis-server"). Every request of
# the harness carries the same token (WRK_HEADER; see benches/load/fleet.sh).
set -euo pipefail
port=${PB_PORT:?run me from run.sh (PB_PORT unset)}
upstreams=${PB_UPSTREAMS:?run me from run.sh (PB_UPSTREAMS unset)}
workers=${PB_WORKERS:-1}
mode=${AEGIS_MODE:?set AEGIS_MODE: passthrough, jwt-memory, jwt-redis or jwt-redis-cluster}
secret=${AEGIS_BENCH_SECRET:-bench-secret}
here=$(cd "$(dirname "$0")" && pwd)
bin=${AEGIS_BIN:-$here/../../target/release/aegis}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p aegis-tokio --bin aegis" >&2; exit 1; }
dir=$(mktemp -d -t aegis-fleet.XXXXXX)
cfg=$dir/aegis.toml
targets=$(echo "$upstreams" | sed 's/[^,]*/"http:\/\/&"/g')

# Redis ports: fixed, far from the harness's (3001-3003, 8081-8083, 6390); the harness runs one
# gateway at a time, and each run's processes die with its session.
redis_port=16391
cluster_ports=(17101 17102 17103)

wait_redis() { # PORT [cluster]: until it answers (and, for a cluster, says ok)
  local i
  for i in $(seq 200); do
    if [ "${2:-}" = cluster ]; then
      redis-cli -p "$1" cluster info 2>/dev/null | grep -q cluster_state:ok && return 0
    else
      redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    fi
    sleep 0.05
  done
  echo "redis on $1 not ready" >&2
  exit 1
}

store=""
case $mode in
passthrough | jwt-memory) ;;
jwt-redis)
  redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    >"$dir/redis.log" 2>&1 &
  wait_redis $redis_port
  store="store = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\""
  ;;
jwt-redis-cluster)
  nodes=()
  for p in "${cluster_ports[@]}"; do
    redis-server --port "$p" --cluster-port $((p + 100)) --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$p.conf" --save "" --appendonly no --dir "$dir" \
      >"$dir/redis-$p.log" 2>&1 &
    wait_redis "$p"
    nodes+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$dir/create.log" 2>&1
  for p in "${cluster_ports[@]}"; do wait_redis "$p" cluster; done
  list=$(printf '"redis://%s", ' "${nodes[@]}")
  store="store = \"redis\"
redis_cluster_nodes = [${list%, }]"
  ;;
*)
  echo "unknown AEGIS_MODE $mode" >&2
  exit 2
  ;;
esac

if [ "$mode" = passthrough ]; then
  route=""
else
  route='auth = true
rate_limit = { max = 1000000000, window = "60s", key = "user" }'
fi

cat >"$cfg" <<TOML
[server]
listen = "127.0.0.1:$port"
# All of wrk's connections come from 127.0.0.1.
max_requests_per_ip = 100000

[auth]
secret = "$secret"

[rate_limit]
$store
# A store error would be a non-2xx in the harness's table, not a silent admit.
on_store_error = "deny"

[[routes]]
path = "/"
targets = [$targets]
$route
TOML
RUST_LOG=${RUST_LOG:-warn} exec "$bin" run --config "$cfg" --workers "$workers"
