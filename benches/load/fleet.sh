#!/usr/bin/env bash
# Issue 13's table: passthrough, JWT (HS256) + memory limit, JWT + Redis limit, 1 and 2 workers,
# c=64 and c=256, nginx beside them, in ONE interleaved run of the loopback harness
# (../shared/bench/run.sh; every request carries the same token); then Redis Cluster against a
# single Redis in a second run. Prints both tables (medians over reps; "vs passthrough" is the
# median over reps of the ratio to passthrough with the same workers, rep and concurrency;
# CPU µs/req is the gateway session's, redis-server included) and writes them to
# $OUT/fleet.md.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   benches/load/fleet.sh                     # REPS=2 DURATION=6s: about 10 minutes
#   REPS=1 DURATION=3s benches/load/fleet.sh  # a smoke run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
bin=${AEGIS_BIN:-$root/target/release/aegis}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p aegis-tokio --bin aegis" >&2; exit 1; }
[ -x "$bench/run.sh" ] || { echo "no harness at $bench (set BENCH_DIR)" >&2; exit 1; }
out=${OUT:-/tmp/aegis-fleet-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

secret=bench-secret
token=$("$bin" token --secret "$secret" --user bench --exp 24h)
gw=$here/aegis-fleet-gateway.sh
export WRK_HEADER="Authorization: Bearer $token" AEGIS_BENCH_SECRET=$secret AEGIS_BIN=$bin
export REPS=${REPS:-2} DURATION=${DURATION:-6s} WARMUP=${WARMUP:-2s} CONNS=${CONNS:-"64 256"}
export MODES=unpinned WORKERS_LIST=${WORKERS_LIST:-"1 2"}

echo "== run 1: passthrough, jwt-memory, jwt-redis (and nginx) -> $out/table" >&2
OUT=$out/table TARGETS=nginx \
  GATEWAY_NAME=passthrough GATEWAY_CMD="AEGIS_MODE=passthrough $gw" \
  GATEWAY2_NAME=jwt-memory GATEWAY2_CMD="AEGIS_MODE=jwt-memory $gw" \
  GATEWAY3_NAME=jwt-redis GATEWAY3_CMD="AEGIS_MODE=jwt-redis $gw" \
  "$bench/run.sh" http >/dev/null

echo "== run 2: Redis Cluster vs one Redis -> $out/cluster" >&2
OUT=$out/cluster TARGETS="" \
  GATEWAY_NAME=jwt-redis GATEWAY_CMD="AEGIS_MODE=jwt-redis $gw" \
  GATEWAY2_NAME=jwt-redis-cluster GATEWAY2_CMD="AEGIS_MODE=jwt-redis-cluster $gw" \
  "$bench/run.sh" http >/dev/null

# table TSV BASE: one row per target, c=64 and c=256 side by side; ratios against BASE-wN.
table() {
  awk -F'\t' -v base="$2" '
    function med(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
      if (n == 0) return ""
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR == 1 { next }
    {
      rep = $1; t = $3; c = $4; rps[t, c] = rps[t, c] " " $5; cpu[t, c] = cpu[t, c] " " $12
      bad[t, c] += $10 + $11; runs[rep, t, c] = $5
      if (!(t in seen)) { seen[t] = 1; order[++nt] = t }
      if (!(c in seenc)) { seenc[c] = 1; conns[++nc] = c }
      if (rep > reps) reps = rep
    }
    END {
      printf "| config | "; for (k = 1; k <= nc; k++) printf "c=%s req/s | vs %s | CPU µs/req | ", conns[k], base
      print "non-2xx |"
      printf "|---|"; for (k = 1; k <= nc; k++) printf "---:|---:|---:|"; print "---:|"
      for (i = 1; i <= nt; i++) {
        t = order[i]; w = t; sub(/.*-w/, "", w); b = base "-w" w; errs = 0
        printf "| %s |", t
        for (k = 1; k <= nc; k++) {
          c = conns[k]; ratios = ""
          for (r = 1; r <= reps; r++) if (runs[r, b, c] > 0 && (r, t, c) in runs) ratios = ratios " " runs[r, t, c] / runs[r, b, c]
          printf " %\047.0f | %s | %.1f |", med(rps[t, c]), (ratios == "" ? "-" : sprintf("%.2f", med(ratios))), med(cpu[t, c])
          errs += bad[t, c]
        }
        printf " %d |\n", errs
      }
    }' "$1"
}

{
  echo "### Issue 13's table ($(date -u +%Y-%m-%d), REPS=$REPS DURATION=$DURATION, wrk -t1, unpinned)"
  echo
  table "$out/table/http.tsv" passthrough
  echo
  echo "### Redis Cluster (3 masters) vs one Redis"
  echo
  table "$out/cluster/http.tsv" jwt-redis
} | tee "$out/fleet.md"
