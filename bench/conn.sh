#!/usr/bin/env bash
# The connection guard's cost (conn_guard: own hyper-util accept loop with header/body
# timeouts, connection limit, per-IP limiter) against a baseline binary that serves with
# plain axum::serve. GET /api/v1/chat/credit with wrk -t1 -c32, alternating rounds,
# first on a quiet server, then while IDLE idle connections are held open.
# Usage: BASELINE=/path/to/kie-built-without-conn_guard bench/conn.sh [ROUNDS] [SECONDS] [IDLE]
#   (e.g. `git archive <commit before conn_guard> | tar -x -C /tmp/base` and
#    `cargo build --release -p kie` there)
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-5}
IDLE=${3:-2000}
: "${BASELINE:?set BASELINE to a kie binary built before conn_guard}"
need wrk wrk
NEW=${NEW:-}
if [ -z "$NEW" ]; then build_kie; NEW=$KIE_BIN; fi
ulimit -n 20000 2>/dev/null || true
work=$(mktemp -d)
trap 'kill $A_PID $B_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
KIE_BIN=$BASELINE start_kie "$work/a"; A_PID=$KIE_PID A_URL=$KIE_URL A_KEY=$KIE_KEY
KIE_BIN=$NEW start_kie "$work/b"; B_PID=$KIE_PID B_URL=$KIE_URL B_KEY=$KIE_KEY

# hold N idle TCP connections to URL's port for S seconds (background)
hold_idle() {
  python3 - "$1" "$2" "$3" <<'PY' &
import socket, sys, time
port = int(sys.argv[1].rsplit(':', 1)[1]); n = int(sys.argv[2]); secs = float(sys.argv[3])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
time.sleep(secs)
PY
  HOLD_PID=$!
}

echo "conn_guard vs axum::serve: $ROUNDS rounds x ${SECS}s, wrk -t1 -c32 ($(nproc) cores), load $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in quiet idle; do
  : >"$work/a.txt"; : >"$work/b.txt"
  for r in $(seq 1 "$ROUNDS"); do
    for side in a b; do
      if [ $side = a ]; then url=$A_URL key=$A_KEY; else url=$B_URL key=$B_KEY; fi
      if [ $mode = idle ]; then hold_idle "$url" "$IDLE" $((SECS + 3)); sleep 2; fi
      read -r rps p99 <<<"$(wrk_rps -t1 -c32 -d"${SECS}s" -H "Authorization: Bearer $key" "$url/api/v1/chat/credit")"
      if [ $mode = idle ]; then kill $HOLD_PID 2>/dev/null; wait $HOLD_PID 2>/dev/null || true; fi
      echo "$rps $p99" >>"$work/$side.txt"
      printf '%s round %d %s: %s req/s p99 %s ms\n' "$mode" "$r" "$side" "$rps" "$p99"
    done
  done
  am=$(cut -d' ' -f1 "$work/a.txt" | median); bm=$(cut -d' ' -f1 "$work/b.txt" | median)
  echo "[$mode] baseline req/s: $(cut -d' ' -f1 "$work/a.txt" | stats); p99 ms: $(cut -d' ' -f2 "$work/a.txt" | stats)"
  echo "[$mode] conn_guard req/s: $(cut -d' ' -f1 "$work/b.txt" | stats); p99 ms: $(cut -d' ' -f2 "$work/b.txt" | stats)"
  awk -v b="$bm" -v a="$am" -v m="$mode" 'BEGIN {printf "[%s] ratio conn_guard/baseline (median req/s): %.2f\n", m, b/a}'
done
echo "RSS KiB at the end: baseline $(awk '/VmRSS/ {print $2}' /proc/$A_PID/status), conn_guard $(awk '/VmRSS/ {print $2}' /proc/$B_PID/status)"
