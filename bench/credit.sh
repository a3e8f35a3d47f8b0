#!/usr/bin/env bash
# GET /api/v1/chat/credit with a valid key vs nginx answering a constant JSON body,
# same wrk settings (1 thread, 32 connections), alternating rounds, medians and ratio.
# With KIE_BASELINE_BIN=<older kie binary> that binary is measured too, in the same
# alternating rounds (before/after of a change).
# Usage: bench/credit.sh [ROUNDS] [SECONDS]
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-5}
need wrk wrk
need nginx nginx-light
build_kie
(cd "$BENCH_ROOT" && cargo build --release --quiet -p kie-server --example bare_hyper)
work=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
start_kie "$work/kie"; PIDS+=("$KIE_PID"); K_URL=$KIE_URL; K_KEY=$KIE_KEY
if [ -n "$KIE_BASELINE_BIN" ]; then
  BIN=$KIE_BASELINE_BIN start_kie "$work/base"; PIDS+=("$KIE_PID"); B_URL=$KIE_URL; B_KEY=$KIE_KEY
fi
start_nginx "$work" "location / { default_type application/json; return 200 '{\"code\":200,\"msg\":\"success\",\"data\":100}'; }"
PIDS+=("$NGINX_PID")
# The ceiling of the Rust stack kie is built on: bare hyper answering the same constant.
H_PORT=$(free_port)
"$BENCH_ROOT/target/release/examples/bare_hyper" "127.0.0.1:$H_PORT" >"$work/hyper.out" &
PIDS+=("$!"); H_URL="http://127.0.0.1:$H_PORT"
for _ in $(seq 1 100); do curl -s -o /dev/null "$H_URL/" && break; sleep 0.05; done
curl -sf "$K_URL/api/v1/chat/credit" -H "Authorization: Bearer $K_KEY" | grep -q '"code":200' || { echo "credit did not answer 200" >&2; exit 1; }
echo "credit endpoint vs nginx constant JSON: $ROUNDS rounds x ${SECS}s, wrk -t1 -c32 ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
: >"$work/kie.txt"; : >"$work/ngx.txt"; : >"$work/base.txt"; : >"$work/hyp.txt"
for r in $(seq 1 "$ROUNDS"); do
  read -r nr np <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" "$NGINX_URL/")"
  read -r kr kp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -H "Authorization: Bearer $K_KEY" "$K_URL/api/v1/chat/credit")"
  read -r hr hp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" "$H_URL/")"
  line="round $r: nginx ${nr} req/s (p99 ${np} ms)   kie ${kr} req/s (p99 ${kp} ms)   bare-hyper ${hr} req/s"
  echo "$nr $np" >>"$work/ngx.txt"; echo "$kr $kp" >>"$work/kie.txt"; echo "$hr $hp" >>"$work/hyp.txt"
  if [ -n "$KIE_BASELINE_BIN" ]; then
    read -r br bp <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -H "Authorization: Bearer $B_KEY" "$B_URL/api/v1/chat/credit")"
    line="$line   kie-baseline ${br} req/s (p99 ${bp} ms)"; echo "$br $bp" >>"$work/base.txt"
  fi
  echo "$line"
done
nm=$(cut -d' ' -f1 "$work/ngx.txt" | median); km=$(cut -d' ' -f1 "$work/kie.txt" | median)
kp=$(cut -d' ' -f2 "$work/kie.txt" | median)
echo "nginx req/s: $(cut -d' ' -f1 "$work/ngx.txt" | stats)"
echo "kie   req/s: $(cut -d' ' -f1 "$work/kie.txt" | stats)"
echo "kie   p99 ms: $(cut -d' ' -f2 "$work/kie.txt" | stats)"
ratio=$(awk -v k="$km" -v n="$nm" 'BEGIN {printf "%.2f", k/n}')
echo "ratio kie/nginx (median req/s): $ratio"
hm=$(cut -d' ' -f1 "$work/hyp.txt" | median)
echo "bare-hyper req/s: $(cut -d' ' -f1 "$work/hyp.txt" | stats); bare-hyper/nginx $(awk -v k="$hm" -v n="$nm" 'BEGIN {printf "%.2f", k/n}'), kie/bare-hyper $(awk -v k="$km" -v n="$hm" 'BEGIN {printf "%.2f", k/n}')"
if [ -n "$KIE_BASELINE_BIN" ]; then
  bm=$(cut -d' ' -f1 "$work/base.txt" | median)
  echo "kie-baseline req/s: $(cut -d' ' -f1 "$work/base.txt" | stats); p99 ms: $(cut -d' ' -f2 "$work/base.txt" | stats)"
  echo "ratio kie/kie-baseline: $(awk -v k="$km" -v n="$bm" 'BEGIN {printf "%.2f", k/n}')   kie-baseline/nginx: $(awk -v k="$bm" -v n="$nm" 'BEGIN {printf "%.2f", k/n}')"
fi
echo "SUMMARY credit: kie $km req/s vs nginx $nm req/s, ratio $ratio (target >= 0.7); kie p99 $kp ms (target <= 2)"
