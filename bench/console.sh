#!/usr/bin/env bash
# Console pages with 100,000 tasks (issue 16): seeds a SQLite data dir with one account
# holding N tasks (default 100000) spread over the last 23 days, each with its hold and
# its charge in the ledger, starts `kie serve` on it, signs in through an invite and
# prints the median time of 5 requests for each page:
#   CONSOLE /console/overview 0.004s …
# Target: every page under 50 ms (release build). The first Overview computes the
# settled days' totals once (kept in ledger_spent_days); the median is of later ones.
#
#   bench/console.sh                 # release build
#   KIE=target/debug/kie N=20000 bench/console.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n="${N:-100000}"
kie="${KIE:-target/release/kie}"
if [ -z "${KIE:-}" ] && [ -z "${NO_BUILD:-}" ]; then cargo build --release -q -p kie --bin kie; fi
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$kie" admin --data-dir "$dir" account create --name big --email big@example.com --credits 100000000 >/dev/null
acc=$(sqlite3 "$dir/kie.db" "SELECT id FROM accounts WHERE name = 'big'")
base=$(( $(date +%s%3N) - 23 * 86400000 ))
step=$(( 23 * 86400000 / n ))
sqlite3 "$dir/kie.db" <<SQL
PRAGMA foreign_keys = ON;
WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < $n)
INSERT INTO holds (id, account_id, amount, state, charged, created_at, resolved_at)
SELECT 'hold_' || k, '$acc', 50, 'posted', 50, $base + k * $step, $base + k * $step + 1000 FROM i;
WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < $n)
INSERT INTO tasks (id, account_id, model, state, param, hold_id, price, result_json,
                   consume_credits, created_at, updated_at, claimed_at, completed_at, deadline_at)
SELECT printf('task_%08d', k), '$acc', CASE WHEN k % 3 = 0 THEN 'demo/image' ELSE 'demo/text' END,
       CASE WHEN k % 10 = 0 THEN 'fail' ELSE 'success' END,
       '{"model":"demo/text","input":{"prompt":"p"}}', 'hold_' || k, 50, '{"resultObject":"x"}', 50,
       $base + k * $step, $base + k * $step, $base + k * $step, $base + k * $step + 1000,
       $base + k * $step + 600000 FROM i;
WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < $n)
INSERT INTO ledger_entries (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at)
SELECT 'ent_h' || k, '$acc', 'hold', 0, 50, 'hold_' || k, 'task', 'hold:' || k, $base + k * $step FROM i
UNION ALL
SELECT 'ent_p' || k, '$acc', 'post', -50, -50, 'hold_' || k, 'task', 'post:' || k, $base + k * $step + 1000 FROM i;
UPDATE accounts SET balance = balance - 50 * $n WHERE id = '$acc';
SQL
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$kie" serve --data-dir "$dir" --bind "127.0.0.1:$port" 2>"$dir/serve.log" &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
url=$("$kie" admin --data-dir "$dir" console invite --account big --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
curl -sf -c "$dir/jar" -o /dev/null -X POST "$url" -d 'password=bench+password+1&confirm=bench+password+1'
mid=$(printf 'task_%08d' $(( n / 2 )))
for p in overview tasks "tasks?state=fail" "tasks?model=demo/image" "tasks?from=$(date -u -d @$(( base / 1000 + 86400 * 10 )) +%F)&to=$(date -u -d @$(( base / 1000 + 86400 * 11 )) +%F)" \
         "tasks/$mid" files usage callbacks keys; do
  curl -s -b "$dir/jar" -o /dev/null "http://127.0.0.1:$port/console/$p"   # warm-up
  t=$(for _ in 1 2 3 4 5; do curl -s -b "$dir/jar" -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/console/$p"; done | sort -n | sed -n 3p)
  echo "CONSOLE /console/$p ${t}s"
done
