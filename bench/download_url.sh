#!/usr/bin/env bash
# POST /api/v1/common/download-url (valid key, a file of the caller's) vs nginx answering
# a constant JSON body, same wrk settings (1 thread, 32 connections; a Lua script sends
# the POST body to both), alternating rounds, medians, min–max and the ratio.
# Usage: bench/download_url.sh [ROUNDS] [SECONDS]
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-5}
need wrk wrk
need nginx nginx-light
build_kie
work=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
head -c 4096 /dev/urandom >"$work/f.bin"
add_file() { # DATA_DIR → the file URL
  "$KIE_BIN" admin --data-dir "$1" --json file add --account demo "$work/f.bin" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])'
}
start_kie "$work/kie"; PIDS+=("$KIE_PID")
FILE_URL=$(add_file "$work/kie/data")
if [ -n "$KIE_BASELINE_BIN" ]; then
  K_URL=$KIE_URL; K_KEY=$KIE_KEY
  BIN=$KIE_BASELINE_BIN start_kie "$work/base"; PIDS+=("$KIE_PID"); B_URL=$KIE_URL; B_KEY=$KIE_KEY
  B_FILE_URL=$(add_file "$work/base/data")
  KIE_URL=$K_URL; KIE_KEY=$K_KEY
  cat >"$work/post-base.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"url": "$B_FILE_URL"}'
wrk.headers["Content-Type"] = "application/json"
LUA
fi
start_nginx "$work" "location / { default_type application/json; return 200 '{\"code\":200,\"msg\":\"success\",\"data\":100}'; }"
PIDS+=("$NGINX_PID")
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"url": "$FILE_URL"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# the endpoint must answer a link before it is measured
curl -sf "$KIE_URL/api/v1/common/download-url" -H "Authorization: Bearer $KIE_KEY" \
  -H 'Content-Type: application/json' -d "{\"url\": \"$FILE_URL\"}" | grep -q '"code":200' ||
  { echo "download-url did not answer 200" >&2; exit 1; }
echo "download-url vs nginx constant JSON: $ROUNDS rounds x ${SECS}s, wrk -t1 -c32 ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
: >"$work/kie.txt"; : >"$work/ngx.txt"; : >"$work/base.txt"
for r in $(seq 1 "$ROUNDS"); do
  read -r nr np <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -s "$work/post.lua" "$NGINX_URL/")"
  read -r kr kp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -s "$work/post.lua" -H "Authorization: Bearer $KIE_KEY" "$KIE_URL/api/v1/common/download-url")"
  line="round $r: nginx ${nr} req/s (p99 ${np} ms)   kie ${kr} req/s (p99 ${kp} ms)"
  echo "$nr $np" >>"$work/ngx.txt"; echo "$kr $kp" >>"$work/kie.txt"
  if [ -n "$KIE_BASELINE_BIN" ]; then
    read -r br bp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -s "$work/post-base.lua" -H "Authorization: Bearer $B_KEY" "$B_URL/api/v1/common/download-url")"
    line="$line   kie-baseline ${br} req/s (p99 ${bp} ms)"; echo "$br $bp" >>"$work/base.txt"
  fi
  echo "$line"
done
nm=$(cut -d' ' -f1 "$work/ngx.txt" | median); km=$(cut -d' ' -f1 "$work/kie.txt" | median)
echo "nginx req/s: $(cut -d' ' -f1 "$work/ngx.txt" | stats)"
echo "kie   req/s: $(cut -d' ' -f1 "$work/kie.txt" | stats)"
echo "kie   p99 ms: $(cut -d' ' -f2 "$work/kie.txt" | stats)"
ratio=$(awk -v k="$km" -v n="$nm" 'BEGIN {printf "%.2f", k/n}')
echo "ratio kie/nginx (median req/s): $ratio"
if [ -n "$KIE_BASELINE_BIN" ]; then
  bm=$(cut -d' ' -f1 "$work/base.txt" | median)
  echo "kie-baseline req/s: $(cut -d' ' -f1 "$work/base.txt" | stats); p99 ms: $(cut -d' ' -f2 "$work/base.txt" | stats)"
  echo "ratio kie/kie-baseline: $(awk -v k="$km" -v n="$bm" 'BEGIN {printf "%.2f", k/n}')   kie-baseline/nginx: $(awk -v k="$bm" -v n="$nm" 'BEGIN {printf "%.2f", k/n}')"
fi
echo "SUMMARY download-url: kie $km req/s vs nginx $nm req/s, ratio $ratio (target >= 0.5)"
