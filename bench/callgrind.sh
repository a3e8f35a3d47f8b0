#!/usr/bin/env bash
# Instructions per request (valgrind/callgrind Ir) of kie endpoints: stable on a noisy
# machine where req/s is not. Collection is switched on only while wrk runs, so the
# count is (everything kie executed during the window) / (requests answered).
# Usage: bench/callgrind.sh [KIE_BINARY…]   (default: target/release/kie)
# Prints one line per binary and endpoint: "Ir/request".
source "$(dirname "$0")/lib.sh"
need wrk wrk
need valgrind valgrind
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then build_kie; bins=("$KIE_BIN"); fi
work=$(mktemp -d)
trap 'kill ${VG_PID:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for bin in "${bins[@]}"; do
  dir="$work/$(basename "$bin")-$RANDOM"; mkdir -p "$dir"
  # the data dir (demo account and key) is made by a normal start first
  BIN=$bin start_kie "$dir"; kill "$KIE_PID"; wait "$KIE_PID" 2>/dev/null
  port=$(free_port)
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.%p" \
    "$bin" serve --demo --data-dir "$dir/data" --bind "127.0.0.1:$port" --key-rate-limit 0 \
      >"$dir/out" 2>"$dir/err" &
  VG_PID=$!
  for _ in $(seq 1 600); do grep -q '^listening on' "$dir/out" 2>/dev/null && break; sleep 0.1; done
  key=$(sed -n 's/^demo API key: //p' "$dir/out")
  # added now: file URLs carry the public URL of the running server
  head -c 4096 /dev/urandom >"$dir/f.bin"
  file_url=$("$bin" admin --data-dir "$dir/data" --json file add --account demo "$dir/f.bin" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
  url="http://127.0.0.1:$port"
  link=$(curl -fsS "$url/api/v1/common/download-url" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d "{\"url\": \"$file_url\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"])')
  case $link in http*) ;; *) echo "download-url gave no link" >&2; exit 1 ;; esac
  cat >"$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"url": "$file_url"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  measure() { # NAME WRK-ARGS…
    local name=$1; shift
    wrk -t1 -c4 -d2s "$@" >/dev/null 2>&1 # warm-up (caches, connections)
    callgrind_control -z "$VG_PID" >/dev/null 2>&1
    callgrind_control -i on "$VG_PID" >/dev/null 2>&1
    local n; n=$(wrk -t1 -c4 -d5s "$@" | awk '/requests in/ {print $1}')
    rm -f "$dir"/cg.*
    callgrind_control -d "$VG_PID" >/dev/null 2>&1
    callgrind_control -i off "$VG_PID" >/dev/null 2>&1
    sleep 0.5
    local cg; cg=$(ls "$dir"/cg.* | sort -V | head -n 1)
    local ir; ir=$(awk '/^summary:/ {s+=$2} /^totals:/ {t+=$2} END {print (s>0?s:t)}' "$cg")
    # CALLGRIND_KEEP=DIR keeps each profile (callgrind_annotate DIR/…) for a look inside
    if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP"; cp "$cg" "$CALLGRIND_KEEP/$(basename "$bin")-$name.cg"; fi
    printf '%-22s %-16s %10.0f Ir/request  (%s requests)\n' "$(basename "$bin")" "$name" "$(awk -v a="$ir" -v b="$n" 'BEGIN{print a/b}')" "$n"
  }
  measure healthz "$url/healthz"
  measure credit -H "Authorization: Bearer $key" "$url/api/v1/chat/credit"
  measure download-url -s "$dir/post.lua" -H "Authorization: Bearer $key" "$url/api/v1/common/download-url"
  measure link-4KiB "$link"
  kill "$VG_PID"; wait "$VG_PID" 2>/dev/null
done
