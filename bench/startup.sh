#!/usr/bin/env bash
# Time from exec to the first `GET /readyz` 200 on an existing data dir, and idle RSS
# 2 s after ready. Baseline in the same run, alternating: nginx from exec to its first
# 200 (same poller) — nginx is the reference for "a server that is ready at once"; the
# targets themselves are absolute (ready ≤ 200 ms, idle RSS < 30 MiB).
# Usage: bench/startup.sh [STARTS]
source "$(dirname "$0")/lib.sh"
STARTS=${1:-9}
need nginx nginx-light
build_kie
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# an existing data dir: created, migrated and given a demo account by one earlier start
start_kie "$work/kie"
kill "$KIE_PID"; wait "$KIE_PID" 2>/dev/null || true
mkdir -p "$work/nginx/logs"
nginx_conf() { # PORT
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$1; location / { return 200 'ok'; } } }
CONF
}
# measure PORT PATH CMD… → "READY_MS RSS_KIB" (RSS summed over the process group)
measure() {
  python3 - "$@" <<'PY'
import os, signal, socket, subprocess, sys, time
port, path, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
t0 = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
ready = None
while time.monotonic() - t0 < 10:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(req)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                ready = (time.monotonic() - t0) * 1000
                break
    except OSError:
        pass
    time.sleep(0.001)
time.sleep(2)  # idle
def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
group = [q for q in pids if q == p.pid or (os.path.exists(f"/proc/{q}/stat") and
         open(f"/proc/{q}/stat").read().rsplit(")", 1)[1].split()[2] == str(p.pid))]
total = sum(rss(q) for q in group)
os.killpg(p.pid, signal.SIGTERM)
p.wait(timeout=30)
print(f"{ready if ready is not None else 'nan'} {total}")
PY
}
echo "startup: $STARTS alternating starts each ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
: >"$work/kie.txt"; : >"$work/ngx.txt"
for r in $(seq 1 "$STARTS"); do
  np=$(free_port); nginx_conf "$np"
  read -r nms nrss <<<"$(measure "$np" / nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;')"
  kp=$(free_port)
  read -r kms krss <<<"$(KIE_LOG=warn measure "$kp" /readyz "$KIE_BIN" serve --demo --data-dir "$work/kie/data" --bind "127.0.0.1:$kp")"
  nms=$(printf %.1f "$nms"); kms=$(printf %.1f "$kms")
  echo "start $r: nginx ready ${nms} ms (RSS $((nrss / 1024)) MiB)   kie ready ${kms} ms (idle RSS $((krss / 1024)) MiB)"
  echo "$nms $nrss" >>"$work/ngx.txt"; echo "$kms $krss" >>"$work/kie.txt"
done
km=$(cut -d' ' -f1 "$work/kie.txt" | median); nm=$(cut -d' ' -f1 "$work/ngx.txt" | median)
kr=$(cut -d' ' -f2 "$work/kie.txt" | median)
echo "nginx ready ms: $(cut -d' ' -f1 "$work/ngx.txt" | stats)"
echo "kie   ready ms: $(cut -d' ' -f1 "$work/kie.txt" | stats)"
echo "kie   idle RSS KiB: $(cut -d' ' -f2 "$work/kie.txt" | stats)"
echo "SUMMARY startup: kie ready $(printf %.1f "$km") ms (nginx $(printf %.1f "$nm") ms, ratio $(awk -v a="$km" -v b="$nm" 'BEGIN{printf "%.2f", a/b}')), target <= 200 ms; idle RSS $(awk -v a="$kr" 'BEGIN{printf "%.1f", a/1024}') MiB, target < 30"
