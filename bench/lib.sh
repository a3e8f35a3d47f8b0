# Shared helpers for the benchmark scripts (sourced, not run).
# Every figure is measured against a baseline in the same run, alternating A and B.

set -euo pipefail
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIE_BIN="${KIE_BIN:-$BENCH_ROOT/target/release/kie}"
# KIE_BASELINE_BIN=/path/to/older/kie: scripts that support it measure that binary as a
# third contender in the same alternating rounds (before/after of a change).
KIE_BASELINE_BIN="${KIE_BASELINE_BIN:-}"

need() { # need CMD DEBIAN-PACKAGE
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "bench: installing $2" >&2
    (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

build_kie() {
  (cd "$BENCH_ROOT" && cargo build --release --quiet -p kie)
}

# start_kie DATA_DIR EXTRA_ARGS… — starts kie serve --demo; sets KIE_PID, KIE_URL, KIE_KEY.
# Logs at kie's default level (info; BENCH_KIE_LOG overrides) to DATA_DIR/serve.err, as
# an operator would run it. BIN=path overrides the binary for one call.
start_kie() {
  local dir=$1; shift
  local bin=${BIN:-$KIE_BIN}
  local port; port=$(free_port)
  local out="$dir/serve.out"
  mkdir -p "$dir"
  ${BENCH_KIE_LOG:+env KIE_LOG=$BENCH_KIE_LOG} "$bin" serve --demo --data-dir "$dir/data" --bind "127.0.0.1:$port" --key-rate-limit 0 "$@" >"$out" 2>"$dir/serve.err" &
  KIE_PID=$!
  for _ in $(seq 1 200); do
    grep -q '^listening on' "$out" 2>/dev/null && break
    sleep 0.05
  done
  KIE_URL="http://127.0.0.1:$port"
  KIE_KEY=$(sed -n 's/^demo API key: //p' "$out")
}

# start_nginx DIR CONF_BODY — nginx with one server block; sets NGINX_PID, NGINX_URL
start_nginx() {
  local dir=$1 body=$2
  local port; port=$(free_port)
  mkdir -p "$dir/nginx/logs"
  cat >"$dir/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    $body
  }
}
CONF
  nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!
  NGINX_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$NGINX_URL/" && break
    sleep 0.05
  done
}

# wrk_rps ARGS… — prints "REQS_PER_SEC P99_MS"
wrk_rps() {
  wrk --latency "$@" 2>/dev/null | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    END {print rps, p99}'
}

# median and min-max of numbers on stdin
stats() {
  sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "median %.1f (min %.1f, max %.1f)", m, a[1], a[NR]}'
}
median() {
  sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'
}
