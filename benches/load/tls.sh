#!/usr/bin/env bash
# TLS row of the load bench: wrk over https against aegis and nginx terminating TLS with the
# same certificate (ECDSA P-256, made here with openssl) in front of the same plaintext
# upstream (an nginx `return 200 "ok"` on 127.0.0.1:3101), one worker each, interleaved
# (rep → target). Two runs per target and rep:
#   keep-alive   wrk -c$CONNS over persistent TLS connections: req/s, p99, proxy CPU µs/req
#   handshakes   the same with "Connection: close": every request a new TLS connection, so
#                req/s is full handshakes per second
# The proxy's CPU is utime+stime of all its processes (nginx: master + worker) over the
# measured run, from /proc. Everything on 127.0.0.1; every process started here is stopped by
# its PID on exit; every wrk run is bounded by -d.
#
#   cargo build --release -p aegis-tokio --bin aegis
#   REPS=3 DURATION=5s CONNS=64 benches/load/tls.sh
set -euo pipefail
REPS=${REPS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-16}
here=$(cd "$(dirname "$0")" && pwd)
bin=${AEGIS_BIN:-$here/../../target/release/aegis}
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p aegis-tokio --bin aegis" >&2; exit 1; }
for tool in wrk nginx openssl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk nginx openssl)" >&2; exit 1; }
done

dir=$(mktemp -d -t aegis-tls-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

up_port=3101 nginx_port=8443 aegis_port=8444
mkdir -p "$dir/up" "$dir/px"
cat >"$dir/up.conf" <<EOF
worker_processes 1; daemon off; master_process on; pid $dir/up.pid; error_log $dir/up.err warn;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 100000000;
  client_body_temp_path $dir/up; proxy_temp_path $dir/up; fastcgi_temp_path $dir/up;
  uwsgi_temp_path $dir/up; scgi_temp_path $dir/up;
  server { listen 127.0.0.1:$up_port reuseport; location / { return 200 "ok"; } } }
EOF
cat >"$dir/px.conf" <<EOF
worker_processes 1; daemon off; master_process on; pid $dir/px.pid; error_log $dir/px.err warn;
events { worker_connections 16384; }
http { access_log off; keepalive_timeout 75s; keepalive_requests 100000000;
  client_body_temp_path $dir/px; proxy_temp_path $dir/px; fastcgi_temp_path $dir/px;
  uwsgi_temp_path $dir/px; scgi_temp_path $dir/px;
  upstream pool { server 127.0.0.1:$up_port; keepalive 1024; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$nginx_port ssl reuseport;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat >"$dir/aegis.toml" <<EOF
[server]
listen = "127.0.0.1:$aegis_port"
[server.tls]
cert = "$dir/cert.pem"
key = "$dir/key.pem"
[[routes]]
path = "/"
targets = ["http://127.0.0.1:$up_port"]
EOF

nginx -c "$dir/up.conf" -p "$dir" & pids+=($!)
nginx -c "$dir/px.conf" -p "$dir" & pids+=($!)
nginx_pid=$!
RUST_LOG=warn "$bin" run --config "$dir/aegis.toml" --workers 1 >/dev/null & pids+=($!)
aegis_pid=$!
for port in $up_port $nginx_port $aegis_port; do
  for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

# utime+stime (clock ticks) of a PID and its children.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    [ -r /proc/"$p"/stat ] || continue
    total=$((total + $(awk '{print $14 + $15}' /proc/"$p"/stat)))
  done
  echo "$total"
}

hz=$(getconf CLK_TCK)
printf 'rep\ttarget\tmode\treq_s\tp99_ms\tcpu_us_per_req\n' >"$dir/results.tsv"
run() { # run REP NAME PID PORT MODE
  local rep=$1 name=$2 pid=$3 port=$4 mode=$5 conns=$CONNS hdr=()
  if [ "$mode" = handshakes ]; then conns=$HS_CONNS; hdr=(-H "Connection: close"); fi
  wrk -t1 -c"$conns" -d"$WARMUP" "${hdr[@]}" "https://127.0.0.1:$port/" >/dev/null
  local before after out reqs rate p99
  before=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$conns" -d"$DURATION" --latency "${hdr[@]}" "https://127.0.0.1:$port/")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}')
  local us
  us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "$mode" "$rate" "$p99" "$us" >>"$dir/results.tsv"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "$name $mode: $(echo "$out" | grep -E 'Non-2xx|Socket errors')" >&2
  fi
}
for rep in $(seq "$REPS"); do
  for t in nginx aegis; do
    if [ $t = nginx ]; then pid=$nginx_pid port=$nginx_port; else pid=$aegis_pid port=$aegis_port; fi
    run "$rep" $t "$pid" $port keep-alive
    run "$rep" $t "$pid" $port handshakes
  done
done

echo "| target | mode | req/s (median) | [min–max] | p99 ms | proxy CPU µs/req |"
echo "|---|---|---:|---|---:|---:|"
for t in nginx aegis; do
  for m in keep-alive handshakes; do
    awk -F'\t' -v t=$t -v m=$m 'NR > 1 && $2 == t && $3 == m {print $4, $5, $6}' "$dir/results.tsv" |
      sort -n | awk -v t=$t -v m=$m '{r[NR]=$1; p[NR]=$2; c[NR]=$3} END {
        mid = int((NR + 1) / 2);
        printf "| %s | %s | %.0f | %.0f–%.0f | %.2f | %.1f |\n", t, m, r[mid], r[1], r[NR], p[mid], c[mid] }'
  done
done
