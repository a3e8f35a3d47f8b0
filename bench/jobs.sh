#!/usr/bin/env bash
# Jobs benchmark: end-to-end demo/text tasks per second with callbacks on, and the
# completion → callback latency, against a release `kie serve` on SQLite (default) or
# PostgreSQL (DATABASE_URL=postgres://…). The creation limit is lifted.
#
#   bench/jobs.sh [N=5000] [CONCURRENCY=64]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5000}"
c="${2:-64}"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p kie --bin kie --example bench_jobs
kie=target/release/kie
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
cat >"$tmp/config.toml" <<TOML
task_rate = 0
demo_workers = 4
TOML
db=()
if [ -n "${DATABASE_URL:-}" ]; then db=(--database-url "$DATABASE_URL"); fi
acc=$($kie admin --data-dir "$tmp/data" "${db[@]}" account create --name "bench-$$" --credits 10000000 --json | jq -r .id)
key=$($kie admin --data-dir "$tmp/data" "${db[@]}" key create --account "$acc" --json | jq -r .key)
KIE_LOG=warn $kie serve --bind 127.0.0.1:0 --data-dir "$tmp/data" "${db[@]}" --config "$tmp/config.toml" \
  --allow-private-targets >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$tmp/out" && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$tmp/out")
echo "server $base ($(if [ -n "${DATABASE_URL:-}" ]; then echo postgres; else echo sqlite; fi)), $(nproc) cores"
target/release/examples/bench_jobs "$base" "$key" "$n" "$c"
