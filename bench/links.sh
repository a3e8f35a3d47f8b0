#!/usr/bin/env bash
# Download-link serving vs nginx, measured in the same run on loopback.
#
#   bench/links.sh            # ROUNDS=5 DURATION=5s by default
#   ROUNDS=7 DURATION=10s bench/links.sh
#
# Starts `kie serve` (release build) and nginx serving the same two files (4 KiB and
# 64 MiB) from kie's store directory, then alternates wrk runs against a signed link
# and the nginx URL: 4 KiB with 1 thread / 32 connections (requests/s), 64 MiB with
# 1 thread / 4 connections (throughput). Prints medians, min–max and kie/nginx ratios,
# and kie's peak RSS while 32 clients download the 64 MiB file at once.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIE="${KIE_BIN:-$ROOT/target/release/kie}"
# KIE_BASELINE_BIN=<older kie>: also measured (4 KiB) in the same rounds, on the same data dir
KIE_BASELINE_BIN=${KIE_BASELINE_BIN:-}
BASE_PID=""

need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_install+=(nginx-light)
if [ ${#need_install[@]} -gt 0 ]; then
    apt-get update
    apt-get install -y "${need_install[@]}" || apt-get install -y wrk nginx
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

(cd "$ROOT" && cargo build --release -p kie)

WORK=$(mktemp -d /tmp/kie-bench-links.XXXXXX)
KIE_PID=""
NGINX_PID=""
cleanup() {
    [ -n "$KIE_PID" ] && kill "$KIE_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    [ -n "$BASE_PID" ] && kill "$BASE_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KIE_PORT=$(free_port)
NGINX_PORT=$(free_port)
DATA="$WORK/data"

KIE_LOG=warn "$KIE" serve --bind "127.0.0.1:$KIE_PORT" --data-dir "$DATA" --link-ttl 2h \
    >"$WORK/kie.out" 2>"$WORK/kie.err" &
KIE_PID=$!
for _ in $(seq 100); do
    grep -q "listening on" "$WORK/kie.out" 2>/dev/null && break
    sleep 0.1
done
grep -q "listening on" "$WORK/kie.out" || { cat "$WORK/kie.err"; exit 1; }

admin() { "$KIE" admin --data-dir "$DATA" --json "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ACC=$(admin account create --name bench --credits 1 | json '["id"]')
KEY=$(admin key create --account "$ACC" | json '["key"]')

head -c 4096 /dev/urandom >"$WORK/small.bin"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/big.bin"
SMALL=$(admin file add --account "$ACC" "$WORK/small.bin")
BIG=$(admin file add --account "$ACC" "$WORK/big.bin")

link_for() {
    curl -fsS "http://127.0.0.1:$KIE_PORT/api/v1/common/download-url" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "{\"url\": \"$1\"}" | json '["data"]'
}
SMALL_LINK=$(link_for "$(echo "$SMALL" | json '["url"]')")
BIG_LINK=$(link_for "$(echo "$BIG" | json '["url"]')")
SMALL_ID=$(echo "$SMALL" | json '["id"]')
BIG_ID=$(echo "$BIG" | json '["id"]')
# nginx serves the very same bytes from kie's store (keys are {id[..2]}/{id})
SMALL_NGINX="http://127.0.0.1:$NGINX_PORT/${SMALL_ID:0:2}/$SMALL_ID"
BIG_NGINX="http://127.0.0.1:$NGINX_PORT/${BIG_ID:0:2}/$BIG_ID"

# nginx workers run unprivileged: let them read the store
chmod -R a+rX "$WORK"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $DATA/files;
        default_type application/octet-stream;
    }
}
EOF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "$SMALL_NGINX" 2>/dev/null && break; sleep 0.1; done

if [ -n "$KIE_BASELINE_BIN" ]; then
    BASE_PORT=$(free_port)
    "$KIE_BASELINE_BIN" serve --bind "127.0.0.1:$BASE_PORT" --data-dir "$DATA" --link-ttl 2h \
        --public-url "http://127.0.0.1:$KIE_PORT" >"$WORK/base.out" 2>"$WORK/base.err" &
    BASE_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$WORK/base.out" 2>/dev/null && break; sleep 0.1; done
    SMALL_BASE=${SMALL_LINK/127.0.0.1:$KIE_PORT/127.0.0.1:$BASE_PORT}
    cmp <(curl -fsS "$SMALL_BASE") "$WORK/small.bin"
fi
# both must serve identical bytes
cmp <(curl -fsS "$SMALL_LINK") "$WORK/small.bin"
cmp <(curl -fsS "$SMALL_NGINX") "$WORK/small.bin"

# wrk → "requests_per_s bytes_per_s"
run_wrk() {
    local conns=$1 url=$2
    wrk -t1 -c"$conns" -d"$DURATION" "$url" | awk '
        /Requests\/sec:/ { rps = $2 }
        /Transfer\/sec:/ {
            v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v);
            m = 1; if (u == "KB") m = 1024; if (u == "MB") m = 1024^2; if (u == "GB") m = 1024^3;
            bps = v * m
        }
        END { printf "%s %.0f\n", rps, bps }'
}

declare -a K_RPS N_RPS K_BPS N_BPS B_RPS
for r in $(seq "$ROUNDS"); do
    read -r k _ < <(run_wrk 32 "$SMALL_LINK");   K_RPS+=("$k")
    read -r n _ < <(run_wrk 32 "$SMALL_NGINX");  N_RPS+=("$n")
    if [ -n "$KIE_BASELINE_BIN" ]; then
        read -r b _ < <(run_wrk 32 "$SMALL_BASE"); B_RPS+=("$b")
        echo "round $r: 4KiB req/s kie-baseline=$b"
    fi
    read -r _ kb < <(run_wrk 4 "$BIG_LINK");     K_BPS+=("$kb")
    read -r _ nb < <(run_wrk 4 "$BIG_NGINX");    N_BPS+=("$nb")
    echo "round $r: 4KiB req/s kie=$k nginx=$n | 64MiB MiB/s kie=$((kb / 1048576)) nginx=$((nb / 1048576))"
done

stats() { # values… → "median min max"
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f %.0f %.0f\n", m, a[1], a[NR] }'
}
read -r krm krl krh < <(stats "${K_RPS[@]}")
read -r nrm nrl nrh < <(stats "${N_RPS[@]}")
read -r kbm kbl kbh < <(stats "${K_BPS[@]}")
read -r nbm nbl nbh < <(stats "${N_BPS[@]}")
mib() { echo $(($1 / 1048576)); }
if [ -n "$KIE_BASELINE_BIN" ]; then
    read -r brm brl brh < <(stats "${B_RPS[@]}")
    echo "4 KiB kie-baseline req/s median $brm ($brl–$brh); kie/kie-baseline $(awk -v a="$krm" -v b="$brm" 'BEGIN{printf "%.2f", a/b}')"
fi

# Peak RSS while 32 clients download the 64 MiB file concurrently.
wrk -t1 -c32 -d"$DURATION" "$BIG_LINK" >/dev/null &
WRK_PID=$!
PEAK=0
while kill -0 "$WRK_PID" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$KIE_PID/status")
    [ "$rss" -gt "$PEAK" ] && PEAK=$rss
    sleep 0.1
done
wait "$WRK_PID" || true

echo
echo "== results ($ROUNDS rounds of $DURATION each, $(nproc) cores, loopback) =="
printf '4 KiB  req/s   kie median %s (%s–%s)   nginx median %s (%s–%s)   ratio %s (target ≥ 0.6; issue 3: ≥ 0.5)\n' \
    "$krm" "$krl" "$krh" "$nrm" "$nrl" "$nrh" "$(awk -v a="$krm" -v b="$nrm" 'BEGIN{printf "%.2f", a/b}')"
printf '64 MiB MiB/s   kie median %s (%s–%s)   nginx median %s (%s–%s)   ratio %s (target ≥ 0.9; issue 3: ≥ 0.8)\n' \
    "$(mib "$kbm")" "$(mib "$kbl")" "$(mib "$kbh")" "$(mib "$nbm")" "$(mib "$nbl")" "$(mib "$nbh")" \
    "$(awk -v a="$kbm" -v b="$nbm" 'BEGIN{printf "%.2f", a/b}')"
printf 'kie RSS peak during 32 concurrent 64 MiB downloads: %s MiB (target < 100)\n' "$((PEAK / 1024))"
echo "SUMMARY links 4KiB: kie $krm req/s vs nginx $nrm req/s, ratio $(awk -v a="$krm" -v b="$nrm" 'BEGIN{printf "%.2f", a/b}') (target >= 0.6)"
echo "SUMMARY links 64MiB: kie $(mib "$kbm") MiB/s vs nginx $(mib "$nbm") MiB/s, ratio $(awk -v a="$kbm" -v b="$nbm" 'BEGIN{printf "%.2f", a/b}') (target >= 0.9); RSS peak $((PEAK / 1024)) MiB with 32 x 64 MiB (target < 100)"
