#!/usr/bin/env bash
# GET /api/v1/chat/credit with a valid key vs nginx answering a constant JSON body,
# same wrk settings (1 thread, 32 connections), alternating rounds, medians and ratio.
# Usage: bench/credit.sh [ROUNDS] [SECONDS]
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-5}
need wrk wrk
need nginx nginx-light
build_kie
work=$(mktemp -d)
trap 'kill $KIE_PID $NGINX_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
start_kie "$work/kie"
start_nginx "$work" "location / { default_type application/json; return 200 '{\"code\":200,\"msg\":\"success\",\"data\":100}'; }"
curl -sf "$KIE_URL/api/v1/chat/credit" -H "Authorization: Bearer $KIE_KEY" >/dev/null
echo "credit endpoint vs nginx constant JSON: $ROUNDS rounds x ${SECS}s, wrk -t1 -c32 ($(nproc) cores)"
: >"$work/kie.txt"; : >"$work/ngx.txt"
for r in $(seq 1 "$ROUNDS"); do
  read -r nr np <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" "$NGINX_URL/")"
  read -r kr kp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -H "Authorization: Bearer $KIE_KEY" "$KIE_URL/api/v1/chat/credit")"
  echo "round $r: nginx ${nr} req/s (p99 ${np} ms)   kie ${kr} req/s (p99 ${kp} ms)"
  echo "$nr $np" >>"$work/ngx.txt"; echo "$kr $kp" >>"$work/kie.txt"
done
nm=$(cut -d' ' -f1 "$work/ngx.txt" | median); km=$(cut -d' ' -f1 "$work/kie.txt" | median)
echo "nginx req/s: $(cut -d' ' -f1 "$work/ngx.txt" | stats)"
echo "kie   req/s: $(cut -d' ' -f1 "$work/kie.txt" | stats)"
echo "kie   p99 ms: $(cut -d' ' -f2 "$work/kie.txt" | stats)"
awk -v k="$km" -v n="$nm" 'BEGIN {printf "ratio kie/nginx (median req/s): %.2f\n", k/n}'
