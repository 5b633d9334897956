#!/usr/bin/env bash
# Snapshots of a large state on three replicated servers: 64 clients put 2 KiB values over
# 65,536 keys at the leader while the servers snapshot every 20,000 entries (the state grows
# to ~160 MB), and a probe reads ?consistent at the leader every 10 ms, reporting its slowest
# answer (a stopped raft thread shows there). Compare two builds by running it with each.
# Usage: bench/snapshot-stall.sh [COLONY_BIN] [RUNS]   (default target/release/colony, 3)
set -euo pipefail
bin=${1:-target/release/colony}
runs=${2:-3}
. "$(dirname "${BASH_SOURCE[0]}")/three-servers.sh"
for run in $(seq 1 "$runs"); do
  dir=$(mktemp -d /tmp/colony-snap-XXXXXX)
  pids=()
  cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
  trap cleanup EXIT
  start_three_servers "$bin" "$dir" 100 --log-level info --snapshot-every 20000
  port=$((18600 + leader_index))
  python3 - "$port" 22 >"$dir/probe.txt" <<'PY' &
import sys, time, urllib.request
port, duration = sys.argv[1], float(sys.argv[2])
took, end = [], time.time() + duration
while time.time() < end:
    start = time.time()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/kv/probe?consistent", timeout=10).read()
    except Exception:
        pass
    took.append((time.time() - start) * 1000)
    time.sleep(0.01)
took.sort()
print(f"probe: {len(took)} reads, p50 {took[len(took) // 2]:.1f} ms, p99 {took[int(len(took) * 0.99)]:.1f} ms, slowest {took[-1]:.0f} ms")
PY
  probe=$!
  echo "run $run/$runs ($bin):"
  "$bin" bench --external --http-addr "127.0.0.1:$port" --workloads put --put-clients 64 \
    --duration 20s --runs 1 --value-bytes 2048 2>&1 | grep -E "ops_per_s=" | sed 's/^ *//'
  wait "$probe" || true
  cat "$dir/probe.txt"
  grep -h "snapshot written" "$dir"/s*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -o "index=.*" | sort -u | head -3 || true
  cleanup
  trap - EXIT
done
