#!/usr/bin/env bash
# Stream uploads into S3 (moto) vs the local store, measured in the same run.
#
#   bench/s3_upload.sh                  # ROUNDS=5 SIZE_MB=64, release build
#   KIE_BIN=target/debug/kie ROUNDS=3 bench/s3_upload.sh
#   (SIZE_MB must stay under the default max_upload of 100 MiB)
#
# Each round starts a fresh `kie serve --demo` twice, alternating A = local store
# (file://, the baseline) and B = S3 (moto's server from scripts/install-test-tools),
# uploads one SIZE_MB file with `curl -F file=@…` to /api/file-stream-upload and
# records the wall time and kie's peak RSS (VmHWM) minus its RSS before the upload.
# Shows that the S3 path streams (8 MiB parts, at most 4 in flight): its peak stays
# far below the body size. Prints medians, min–max and the S3/local ratios.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SIZE_MB=${SIZE_MB:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIE=${KIE_BIN:-$ROOT/target/release/kie}
case "$KIE" in /*) ;; *) KIE="$ROOT/$KIE" ;; esac
source "$ROOT/bench/lib.sh"

"$ROOT/scripts/install-test-tools"
if [ -z "${KIE_BIN:-}" ]; then (cd "$ROOT" && cargo build --release -p kie); fi

WORK=$(mktemp -d /tmp/kie-bench-s3.XXXXXX)
KIE_PID=""
MOTO_PID=""
cleanup() {
    [ -n "$KIE_PID" ] && kill "$KIE_PID" 2>/dev/null || true
    [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom >"$WORK/body.bin"

"$ROOT/target/test-tools/venv/bin/moto_server" -H 127.0.0.1 -p 0 2>"$WORK/moto.err" >/dev/null &
MOTO_PID=$!
for _ in $(seq 1 200); do
    grep -q 'Running on http://' "$WORK/moto.err" 2>/dev/null && break
    sleep 0.05
done
MOTO=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/moto.err" | head -1)
curl -sf -X PUT "$MOTO/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1

kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$KIE_PID/status"; }

# run_one KIND DIR → prints "SECONDS PEAK_MB"
run_one() {
    local kind=$1 dir=$2 port out
    port=$(free_port)
    out="$dir/serve.out"
    mkdir -p "$dir"
    local storage=()
    [ "$kind" = s3 ] && storage=(--storage "s3://bench/r$(basename "$dir")" --s3-endpoint "$MOTO")
    KIE_LOG=warn "$KIE" serve --demo --data-dir "$dir/data" --bind "127.0.0.1:$port" \
        --key-rate-limit 0 "${storage[@]}" >"$out" 2>"$dir/serve.err" &
    KIE_PID=$!
    for _ in $(seq 1 400); do
        grep -q '^listening on' "$out" 2>/dev/null && break
        sleep 0.05
    done
    local key before t0 t1 peak
    key=$(sed -n 's/^demo API key: //p' "$out")
    before=$(kb VmRSS)
    t0=$(date +%s.%N)
    if ! curl -sS "http://127.0.0.1:$port/api/file-stream-upload" -H "Authorization: Bearer $key" \
        -F "file=@$WORK/body.bin" -F uploadPath=bench | grep -q '"success":true'; then
        echo "bench: the $kind upload failed (SIZE_MB above max_upload, 100 MiB?)" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    peak=$(kb VmHWM)
    kill "$KIE_PID"
    wait "$KIE_PID" 2>/dev/null || true
    KIE_PID=""
    awk -v a="$t0" -v b="$t1" -v p="$peak" -v r="$before" 'BEGIN {printf "%.3f %.1f\n", b - a, (p - r) / 1024}'
}

: >"$WORK/res-local"
: >"$WORK/res-s3"
for r in $(seq 1 "$ROUNDS"); do
    run_one local "$WORK/l$r" >>"$WORK/res-local"
    run_one s3 "$WORK/s$r" >>"$WORK/res-s3"
    echo "round $r: local $(tail -1 "$WORK/res-local")  s3 $(tail -1 "$WORK/res-s3")  (seconds, peak MiB over start)" >&2
done

echo "stream upload of $SIZE_MB MiB, $ROUNDS rounds alternating, $(basename "$KIE") $(nproc) cores"
echo "  local store: time $(cut -d' ' -f1 "$WORK/res-local" | stats) s; peak RSS growth $(cut -d' ' -f2 "$WORK/res-local" | stats) MiB"
echo "  S3 (moto):   time $(cut -d' ' -f1 "$WORK/res-s3" | stats) s; peak RSS growth $(cut -d' ' -f2 "$WORK/res-s3" | stats) MiB"
lt=$(cut -d' ' -f1 "$WORK/res-local" | median)
st=$(cut -d' ' -f1 "$WORK/res-s3" | median)
lm=$(cut -d' ' -f2 "$WORK/res-local" | median)
sm=$(cut -d' ' -f2 "$WORK/res-s3" | median)
awk -v lt="$lt" -v st="$st" -v lm="$lm" -v sm="$sm" -v size="$SIZE_MB" 'BEGIN {
    printf "  ratio S3/local: time %.2fx, peak RSS growth %.2fx; S3 peak growth = %.0f%% of the body\n",
        st / lt, (lm > 0 ? sm / lm : 0), 100 * sm / size }'
