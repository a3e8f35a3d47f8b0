#!/usr/bin/env bash
# Soak benchmark (issue 13): mixed load for MINUTES (default 10) against a release
# `kie serve` — credit reads, download-url, link downloads of a 4 KiB and a 16 MiB
# file, uploads, createTask with callbacks to a local receiver — on SQLite and on
# PostgreSQL, once without and once with a /metrics scraper (1/s). Every 10 s the
# client samples the server's RSS, descriptors, threads, database connections and
# errors; each run ends with one line:
#   SOAK slope X MiB/10min (anonymous Y, Theil-Sen Z); rss …; fds a-b; threads a-b; db conns a-b; requests …; errors N; 429s N
# after a line of RSS per minute (the median of each minute's samples).
# Target: slope < 1 MiB per 10 min after the one-minute warm-up, descriptors, threads
# and connections flat, no errors but intended 429s.
#
#   bench/soak.sh                     # 4 runs of 10 minutes
#   MINUTES=3 bench/soak.sh sqlite    # only SQLite, 3 minutes each
#   SCRAPE=off bench/soak.sh          # only the runs without a scraper
#   KIE=/path/to/kie NO_BUILD=1 bench/soak.sh sqlite   # another build of kie (compare allocators)
#   SOAK_ARGS="--tasks-per-sec 0 --uploads-per-sec 0" bench/soak.sh sqlite   # part of the mix
#   SOAK_KEEP=/tmp/soak bench/soak.sh postgres   # keep each run's server output (e.g. jemalloc's MALLOC_CONF=stats_interval:… reports)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$BENCH_ROOT"
minutes="${MINUTES:-10}"
backends=("${@:-sqlite postgres}")
read -r -a backends <<<"${backends[*]}"
scrapes=(off on)
[ -n "${SCRAPE:-}" ] && scrapes=("$SCRAPE")
pg_base="${KIE_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p kie --bin kie --example soak
kie="${KIE:-target/release/kie}"
soak=target/release/examples/soak
status=0
for backend in "${backends[@]}"; do
  for scrape in "${scrapes[@]}"; do
    tmp=$(mktemp -d)
    db=()
    pgdb=""
    if [ "$backend" = postgres ]; then
      pgdb="kie_soak_$$_$RANDOM"
      psql "$pg_base/postgres" -qc "CREATE DATABASE $pgdb" >/dev/null
      db=(--database-url "$pg_base/$pgdb")
    fi
    printf 'task_rate = 0\n' >"$tmp/config.toml"
    acc=$($kie admin --data-dir "$tmp/data" "${db[@]}" account create --name soak --credits 10000000 --json | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
    key=$($kie admin --data-dir "$tmp/data" "${db[@]}" key create --account "$acc" --json | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
    $kie serve --bind 127.0.0.1:0 --data-dir "$tmp/data" "${db[@]}" --config "$tmp/config.toml" \
      --allow-private-targets --key-rate-limit 0 >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$tmp/out" && break; sleep 0.1; done
    base=$(sed -n 's/^listening on //p' "$tmp/out")
    echo "== soak $backend, scraper $scrape, $minutes min ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
    target=(--sqlite "$tmp/data/kie.db")
    [ "$backend" = postgres ] && target=(--pg "$pg_base/$pgdb")
    extra=()
    [ "$scrape" = on ] && extra=(--scrape)
    if ! "$soak" --base "$base" --key "$key" --pid "$pid" --minutes "$minutes" "${target[@]}" "${extra[@]}" ${SOAK_ARGS:-} | tee "$tmp/soak.log"; then
      status=1
    fi
    line=$(grep '^SOAK' "$tmp/soak.log" || echo "SOAK failed")
    echo "SUMMARY soak $backend scraper-$scrape: ${line#SOAK }"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ -n "${SOAK_KEEP:-}" ]; then
      mkdir -p "$SOAK_KEEP"
      for f in out err soak.log; do cp "$tmp/$f" "$SOAK_KEEP/$backend-scraper-$scrape.$f"; done
    fi
    [ -n "$pgdb" ] && psql "$pg_base/postgres" -qc "DROP DATABASE $pgdb WITH (FORCE)" >/dev/null
    rm -rf "$tmp"
  done
done
exit $status
