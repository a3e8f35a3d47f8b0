#!/usr/bin/env bash
# Ledger throughput through the real store (crates/kie-server/examples/bench_ledger.rs).
#
#   bench/ledger.sh [sqlite|postgres|all] [ROUNDS=5] [SECONDS=5]
#
# sqlite:   holds/s with 64 concurrent callers, group commit (default) vs one
#           transaction per hold (--sqlite-group-commit=false path), alternating.
#           WAL + synchronous=FULL in both: every acknowledged hold is on disk.
# postgres: holds+posts/s with 32 concurrent callers vs `pgbench -N -c 32 -j 2` on the
#           same database (PG_URL, default postgres://postgres@127.0.0.1:5432), alternating.
# Prints every round, then medians, min–max and the ratio.
# LEDGER_BASELINE_BIN=/path/to/older/bench_ledger (sqlite): that build's group commit is
# measured as a third arm in the same alternating rounds (before/after of a change).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
which="${1:-all}"
rounds="${2:-5}"
secs="${3:-5}"
cd "$BENCH_ROOT"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p kie-server --example bench_ledger
bin="$BENCH_ROOT/target/release/examples/bench_ledger"
tmp=$(mktemp -d)
pg_base="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
pg_db="kie_bench_ledger_$$"
cleanup() {
  rm -rf "$tmp"
  if [ "$which" != sqlite ]; then psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

ops() { sed -n 's/^ops\/s \([0-9]*\).*/\1/p'; }

if [ "$which" = sqlite ] || [ "$which" = all ]; then
  base="${LEDGER_BASELINE_BIN:-}"
  arms="off on"; [ -z "$base" ] || arms="off base on"
  : >"$tmp/on"; : >"$tmp/off"; : >"$tmp/base"
  for r in $(seq "$rounds"); do
    for arm in $arms; do
      rm -f "$tmp"/l.db*
      if [ "$arm" = base ]; then
        n=$("$base" "sqlite://$tmp/l.db" holds 64 "$secs" on | ops)
        echo "sqlite round $r baseline group-commit=on: $n holds/s"
      else
        n=$("$bin" "sqlite://$tmp/l.db" holds 64 "$secs" "$arm" | ops)
        echo "sqlite round $r group-commit=$arm: $n holds/s"
      fi
      echo "$n" >>"$tmp/$arm"
    done
  done
  on=$(median <"$tmp/on"); off=$(median <"$tmp/off")
  echo "machine after: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "SQLite holds/s, 64 callers: group commit $(stats <"$tmp/on"); one tx per hold $(stats <"$tmp/off"); ratio $(awk -v a="$on" -v b="$off" 'BEGIN{printf "%.2f", a/b}')"
  if [ -n "$base" ]; then
    b=$(median <"$tmp/base")
    echo "  baseline build's group commit $(stats <"$tmp/base"); ratio to one tx per hold $(awk -v a="$b" -v b="$off" 'BEGIN{printf "%.2f", a/b}'); this build / baseline $(awk -v a="$on" -v b="$b" 'BEGIN{printf "%.2f", a/b}')"
  fi
fi

if [ "$which" = postgres ] || [ "$which" = all ]; then
  psql "$pg_base/postgres" -qc "CREATE DATABASE $pg_db" >/dev/null
  url="$pg_base/$pg_db"
  pgbench -i -q -s 10 "$url" >/dev/null 2>&1
  : >"$tmp/kie1"; : >"$tmp/kieN"; : >"$tmp/pgb"
  for r in $(seq "$rounds"); do
    n=$(pgbench -N -c 32 -j 2 -T "$secs" "$url" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
    echo "postgres round $r pgbench -N -c 32 -j 2: $n tps"
    echo "$n" >>"$tmp/pgb"
    n=$("$bin" "$url" holds+posts 32 "$secs" on per-caller | ops)
    echo "postgres round $r kie holds+posts, 32 callers, one account each: $n ops/s"
    echo "$n" >>"$tmp/kieN"
    n=$("$bin" "$url" holds+posts 32 "$secs" on one | ops)
    echo "postgres round $r kie holds+posts, 32 callers, one shared account: $n ops/s"
    echo "$n" >>"$tmp/kie1"
  done
  p=$(median <"$tmp/pgb")
  echo "PostgreSQL, 32 clients: pgbench -N tps $(stats <"$tmp/pgb")"
  for f in kieN kie1; do
    k=$(median <"$tmp/$f")
    what=$([ $f = kieN ] && echo "one account per caller" || echo "one shared account")
    echo "  kie holds+posts/s ($what) $(stats <"$tmp/$f"); ratio to pgbench $(awk -v a="$k" -v b="$p" 'BEGIN{printf "%.2f", a/b}')"
  done
fi
