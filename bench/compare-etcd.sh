#!/usr/bin/env bash
# Colony (HTTP, `colony bench`) beside etcd 3.4 (gRPC, the lean Rust client from
# ../shared/bench/etcd/rustload), single node, fsync on every commit for both, alternating
# runs on the same disk. Prints medians and colony/etcd ratios as a Markdown table.
#
#   bench/compare-etcd.sh                 # RUNS=5 DUR=5
#   RUNS=3 DUR=3 bench/compare-etcd.sh    # quicker
#
# Needs: etcd (Debian etcd-server; installed if missing), cargo. Only loopback is used; only
# processes this script started are signalled.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
RUNS="${RUNS:-5}"
DUR="${DUR:-5}"
OUT="${OUT:-$ROOT/bench-results/$(date -u +%Y%m%dT%H%M%S)}"
WORK="$(mktemp -d /tmp/colony-vs-etcd.XXXXXX)"
mkdir -p "$OUT"
ETCD_PID=""
cleanup() { [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
RL_TARGET="${RL_TARGET:-/tmp/rustload-target}"
RL="$RL_TARGET/release/rustload"
if [ ! -x "$RL" ]; then
  echo "building rustload" >&2
  (cd "$SHARED/bench/etcd/rustload" && CARGO_TARGET_DIR="$RL_TARGET" cargo build --release -q)
fi
(cd "$ROOT" && cargo build --release -q -p colony)
COLONY="$ROOT/target/release/colony"

{
  echo "date: $(date -u)"; echo "etcd: $(etcd --version | head -1)"; echo "colony: $($COLONY --version)"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"; echo "RUNS=$RUNS DUR=$DUR"
} > "$OUT/env.txt"

start_etcd() {
  rm -rf "$WORK/etcd"
  etcd --name s1 --data-dir "$WORK/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster s1=http://127.0.0.1:23800 >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 1 100); do
    "$RL" get 127.0.0.1:23790 1 1 1 1 0 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd did not start" >&2; cat "$WORK/etcd.log" >&2; exit 1
}

for r in $(seq 1 "$RUNS"); do
  echo "[run $r/$RUNS] etcd" >&2
  start_etcd
  for spec in "put_c1 put 1 1" "put_c64 put 64 4" "get_c64 get 64 4"; do
    set -- $spec
    "$RL" "$2" 127.0.0.1:23790 "$3" "$4" "$DUR" 1 1 "$ETCD_PID" \
      | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(system='etcd', label='$1', run=$r); print(json.dumps(d))" \
      >> "$OUT/results.jsonl"
  done
  kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=""
  echo "[run $r/$RUNS] colony" >&2
  "$COLONY" bench --runs 1 --workloads put,get,wake,fsync --duration "${DUR}s" --data-dir "$WORK/colony-$r" --json 2>/dev/null \
    | python3 -c "
import json, sys
medians = json.load(sys.stdin)['medians']
for label, figures in medians.items():
    row = {k: v['median'] for k, v in figures.items()}
    row.update(system='colony', label=label.replace('get', 'get_c64') if label == 'get' else label, run=$r)
    print(json.dumps(row))" >> "$OUT/results.jsonl"
done

python3 "$HERE/summarize.py" "$OUT/results.jsonl" | tee "$OUT/summary.md"
echo "results: $OUT" >&2
