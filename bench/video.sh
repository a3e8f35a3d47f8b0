#!/usr/bin/env bash
# Video benchmark (issue 15): createTask → success for catalog video models on the
# built-in H.264 generator, against a release `kie serve` on SQLite (default) or
# PostgreSQL (DATABASE_URL=postgres://…), creation limit lifted, no generation delay.
# Per model: end-to-end tasks/s (first creation → last task seen `success` by polling
# recordInfo), result size and length (ffprobe), and the server's CPU per second of
# video generated (utime+stime of kie serve over the run, HTTP and database included).
# Then the generator alone (crates/kie-server/examples/video_cost.rs): CPU per second
# of video and bytes per second of video, without HTTP or database.
#
#   bench/video.sh [N=300] [CONCURRENCY=32]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-300}"
c="${2:-32}"
need_cmd() { command -v "$1" >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null; }; }
need_cmd jq jq
need_cmd ffprobe ffmpeg
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p kie --bin kie -p kie-server --example video_cost
kie=target/release/kie
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$tmp"' EXIT
cat >"$tmp/config.toml" <<TOML
task_rate = 0
demo_workers = 4
TOML
db=()
if [ -n "${DATABASE_URL:-}" ]; then db=(--database-url "$DATABASE_URL"); fi
acc=$($kie admin --data-dir "$tmp/data" "${db[@]}" account create --name "bench-video-$$" --credits 100000000 --json | jq -r .id)
key=$($kie admin --data-dir "$tmp/data" "${db[@]}" key create --account "$acc" --json | jq -r .key)
KIE_LOG=warn $kie serve --bind 127.0.0.1:0 --data-dir "$tmp/data" "${db[@]}" --config "$tmp/config.toml" \
  --key-rate-limit 0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$tmp/out" && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$tmp/out")
backend=$(if [ -n "${DATABASE_URL:-}" ]; then echo postgres; else echo sqlite; fi)
echo "server $base ($backend), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_ms() { awk '{print ($14 + $15) * 1000 / '"$(getconf CLK_TCK)"'}' "/proc/$pid/stat"; }

run_model() { # MODEL INPUT_JSON
  local model=$1 input=$2 before after
  before=$(cpu_ms)
  python3 - "$base" "$key" "$model" "$input" "$n" "$c" "$tmp" <<'PY' >"$tmp/run.json"
import json, sys, threading, time, urllib.request
base, key, model, inp, n, c, tmp = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
H = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def call(method, path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(), headers=H, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())
lock = threading.Lock(); todo = list(range(n)); results = []; errors = []
def worker():
    while True:
        with lock:
            if not todo: return
            todo.pop()
        r = call("POST", "/api/v1/jobs/createTask", {"model": model, "input": inp})
        if r["code"] != 200:
            errors.append(r); continue
        tid = r["data"]["taskId"]
        while True:
            d = call("GET", "/api/v1/jobs/recordInfo?taskId=" + tid)["data"]
            if d["state"] in ("success", "fail"): break
            time.sleep(0.02)
        with lock: results.append(d)
t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(c)]
[t.start() for t in ts]; [t.join() for t in ts]
elapsed = time.time() - t0
ok = [d for d in results if d["state"] == "success"]
urls = [json.loads(d["resultJson"])["resultUrls"][0] for d in ok[:5]]
sizes = []
for i, u in enumerate(urls):
    b = urllib.request.urlopen(u, timeout=60).read(); sizes.append(len(b))
    open(f"{tmp}/sample{i}.mp4", "wb").write(b)
print(json.dumps({"ok": len(ok), "failed": len(results) - len(ok) + len(errors), "elapsed": elapsed,
                  "tps": len(ok) / elapsed, "size": sum(sizes) / max(len(sizes), 1)}))
PY
  after=$(cpu_ms)
  local secs
  secs=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/sample0.mp4")
  local codec
  codec=$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 "$tmp/sample0.mp4")
  jq -r --arg m "$model" --arg s "$secs" --arg codec "$codec" --arg cpu "$(echo "$after - $before" | bc -l)" --arg b "$backend" --arg c "$c" '
    "SUMMARY video \($m) (\($b), \(.ok) tasks, concurrency \($c)): \(.tps * 100 | round / 100) tasks/s end to end, "
    + "result \(.size / 1000 | round) KB = \($s | tonumber) s of \($codec), "
    + "server CPU \((($cpu | tonumber) / (.ok * ($s | tonumber))) * 100 | round / 100) ms per second of video"
    + (if .failed > 0 then ", \(.failed) FAILED" else "" end)' "$tmp/run.json"
}

need_cmd bc bc
run_model "bytedance/seedance-2" '{"prompt":"a red fox running through snow"}'
run_model "kling-2.6/text-to-video" '{"prompt":"a red fox","sound":false,"aspect_ratio":"16:9","duration":"5"}'
run_model "hailuo/02-text-to-video-standard" '{"prompt":"a red fox","duration":"6"}'
target/release/examples/video_cost 40 5
