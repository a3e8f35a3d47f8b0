#!/usr/bin/env bash
# Batch downloads: `kie download -j 8` vs `aria2c -j 8` vs `curl --parallel
# --parallel-max 8`, the same URL list from the same nginx on loopback, same run.
#
#   bench/download.sh                     # ROUNDS=5 FILES=200 SIZE_MIB=5 BIG_GIB=1
#   ROUNDS=3 FILES=50 bench/download.sh   # quicker
#
# `kie` is the default, which fsyncs every file before its rename (curl and aria2c do
# not). Two more contestants: aria2c-nf, aria2c with --file-allocation=none (in case its
# default preallocation is what costs it time), and kie-nofsync, `kie download
# --no-fsync` (the same durability as curl and aria2c). Each round runs every tool once, in an order that
# rotates from round to round (A/B/C/D, B/C/D/A, …); the output directory is emptied and the page cache's
# dirty pages written back (`sync`, untimed) before every run, so no tool pays for the
# previous one's writes. Every run is checked: FILES files, every byte equal. Prints
# per-tool medians and min–max of the wall time, the ratios kie/aria2c and kie/curl,
# and the peak RSS (`/usr/bin/time -f %M`) of each tool; then kie's peak RSS on two
# sparse files of BIG_GIB GiB each and on JOBS files of 256 MiB (all at once), to show
# memory does not grow with file size.
#
# The URLs are plain nginx URLs, not KIE links: `kie download` fetches any http(s) URL
# directly and only asks /download-url for a fresh link when a URL answers 403
# (SPEC §7), so no API key is involved here.
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
FILES=${FILES:-200}
SIZE_MIB=${SIZE_MIB:-5}
BIG_GIB=${BIG_GIB:-1}
JOBS=${JOBS:-8}

need nginx nginx-light
need aria2c aria2
need curl curl
need wrk wrk
[ -x /usr/bin/time ] || { echo "bench: installing time" >&2; (apt-get update -qq && apt-get install -y -qq time) >/dev/null; }
build_kie

WORK=$(mktemp -d /tmp/kie-bench-download.XXXXXX)
NGINX_PID=""
cleanup() {
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

SRC="$WORK/www"
mkdir -p "$SRC/big"
echo "bench: writing $FILES files of $SIZE_MIB MiB" >&2
for i in $(seq -f '%03g' 1 "$FILES"); do
  head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$SRC/f$i.bin"
done
# sparse: the server reads zeros from the page cache, the client writes real blocks
for b in 1 2; do truncate -s "${BIG_GIB}G" "$SRC/big/large$b.bin"; done
for b in $(seq 1 "$JOBS"); do truncate -s 256M "$SRC/big/mid$b.bin"; done
chmod -R a+rX "$WORK"

start_nginx "$WORK" "root $SRC;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;"

LIST="$WORK/urls.txt"
for i in $(seq -f '%03g' 1 "$FILES"); do echo "$NGINX_URL/f$i.bin"; done >"$LIST"
mapfile -t URLS <"$LIST"
OUT="$WORK/out"

# run TOOL → writes "WALL_SECONDS MAXRSS_KIB" to $WORK/time.TOOL; exits loudly if the
# tool failed or the files are not right
run() {
  local tool=$1 stamp="$WORK/time.$1"
  rm -rf "$OUT"; mkdir -p "$OUT"; sync
  case $tool in
    kie)
      /usr/bin/time -f '%e %M' -o "$stamp" env -u KIE_API_KEY \
        "$KIE_BIN" download -j "$JOBS" -o "$OUT" -i "$LIST" >"$WORK/kie.log" 2>&1 ;;
    kie-nofsync) # kie --no-fsync: no fsync before the rename, like curl and aria2c
      /usr/bin/time -f '%e %M' -o "$stamp" env -u KIE_API_KEY \
        "$KIE_BIN" download --no-fsync -j "$JOBS" -o "$OUT" -i "$LIST" >"$WORK/kie-nofsync.log" 2>&1 ;;
    aria2c)
      /usr/bin/time -f '%e %M' -o "$stamp" \
        aria2c -q -j "$JOBS" -d "$OUT" -i "$LIST" >"$WORK/aria2c.log" 2>&1 ;;
    aria2c-nf) # aria2c without its default preallocation, in case that is what slows it
      /usr/bin/time -f '%e %M' -o "$stamp" \
        aria2c -q -j "$JOBS" --file-allocation=none -d "$OUT" -i "$LIST" >"$WORK/aria2c-nf.log" 2>&1 ;;
    curl)
      /usr/bin/time -f '%e %M' -o "$stamp" \
        curl -sSf --parallel --parallel-max "$JOBS" --output-dir "$OUT" --remote-name-all \
        "${URLS[@]}" >"$WORK/curl.log" 2>&1 ;;
  esac || { echo "bench: $tool failed" >&2; cat "$WORK/$tool.log" >&2; exit 1; }
  verify "$tool"
}

verify() {
  local n; n=$(find "$OUT" -maxdepth 1 -type f -name 'f*.bin' | wc -l)
  [ "$n" -eq "$FILES" ] || { echo "bench: $1 left $n of $FILES files" >&2; cat "$WORK/$1.log" >&2; exit 1; }
  [ -z "$(find "$OUT" -name '*.part' -o -name '*.aria2' | head -1)" ] || { echo "bench: $1 left partial files" >&2; exit 1; }
  diff -rq "$SRC" "$OUT" -x big >/dev/null || { echo "bench: $1 wrote different bytes" >&2; exit 1; }
}

TOOLS=(kie aria2c curl aria2c-nf kie-nofsync)
NT=${#TOOLS[@]}
declare -A WALL RSS
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for k in $(seq 0 $((NT - 1))); do
    t=${TOOLS[$(((r - 1 + k) % NT))]}
    run "$t"
    read -r wall rss <"$WORK/time.$t"
    WALL[$t]+="$wall "
    RSS[$t]+="$rss "
    line+="  $t ${wall}s ($((rss / 1024)) MiB)"
  done
  echo "$line"
done
rm -rf "$OUT"

# peak RSS of kie on two big files, at the same -j
BIGLIST="$WORK/big.txt"
printf '%s\n' "$NGINX_URL/big/large1.bin" "$NGINX_URL/big/large2.bin" >"$BIGLIST"
mkdir -p "$OUT"; sync
/usr/bin/time -f '%e %M' -o "$WORK/time.big" env -u KIE_API_KEY \
  "$KIE_BIN" download -j "$JOBS" -o "$OUT" -i "$BIGLIST" >"$WORK/kie-big.log" 2>&1 \
  || { cat "$WORK/kie-big.log" >&2; exit 1; }
cmp "$OUT/large1.bin" "$SRC/big/large1.bin"
read -r big_wall big_rss <"$WORK/time.big"
rm -rf "$OUT"
MIDLIST="$WORK/mid.txt"
for b in $(seq 1 "$JOBS"); do echo "$NGINX_URL/big/mid$b.bin"; done >"$MIDLIST"
mkdir -p "$OUT"; sync
/usr/bin/time -f '%e %M' -o "$WORK/time.mid" env -u KIE_API_KEY \
  "$KIE_BIN" download -j "$JOBS" -o "$OUT" -i "$MIDLIST" >"$WORK/kie-mid.log" 2>&1 \
  || { cat "$WORK/kie-mid.log" >&2; exit 1; }
cmp "$OUT/mid1.bin" "$SRC/big/mid1.bin"
read -r mid_wall mid_rss <"$WORK/time.mid"
rm -rf "$OUT"

numbers() { tr ' ' '\n' | grep -v '^$'; }
med() { printf '%s' "$1" | numbers | median; }
mib_stats() { printf '%s' "$1" | numbers | awk '{printf "%.1f\n", $1/1024}' | stats; }

echo
echo "== $FILES files × $SIZE_MIB MiB from nginx on loopback, -j $JOBS, $ROUNDS rounds, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) =="
for t in "${TOOLS[@]}"; do
  printf '%-12s wall s: %s   peak RSS MiB: %s\n' "$t" "$(printf '%s' "${WALL[$t]}" | numbers | stats)" "$(mib_stats "${RSS[$t]}")"
done
k=$(med "${WALL[kie]}"); a=$(med "${WALL[aria2c]}"); c=$(med "${WALL[curl]}"); an=$(med "${WALL[aria2c-nf]}")
kf=$(med "${WALL[kie-nofsync]}")
awk -v k="$k" -v a="$a" -v c="$c" -v an="$an" -v kf="$kf" 'BEGIN {
  printf "ratio of medians  kie/aria2c %.2f   kie/curl %.2f   kie/aria2c-nf %.2f   (target ≤ 1.00)\n", k/a, k/c, k/an
  printf "                  kie-nofsync/aria2c %.2f   kie-nofsync/curl %.2f\n", kf/a, kf/c }'
printf 'kie on 2 × %s GiB (sparse source): %.1f s, peak RSS %.1f MiB (target < 50 whatever the size)\n' \
  "$BIG_GIB" "$big_wall" "$(awk -v r="$big_rss" 'BEGIN{print r/1024}')"
printf 'kie on %s × 256 MiB at once (sparse source): %.1f s, peak RSS %.1f MiB\n' \
  "$JOBS" "$mid_wall" "$(awk -v r="$mid_rss" 'BEGIN{print r/1024}')"
