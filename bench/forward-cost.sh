#!/usr/bin/env bash
# What forwarding costs a write: one client puts through the Consul API at the leader, then
# at a follower (which forwards it to the leader over the RPC port), alternating, on three
# replicated servers on loopback; prints each run's p50/p99.
# Usage: bench/forward-cost.sh [COLONY_BIN] [ROUNDS]   (default target/release/colony, 3)
set -euo pipefail
bin=${1:-target/release/colony}
rounds=${2:-3}
. "$(dirname "${BASH_SOURCE[0]}")/three-servers.sh"
dir=$(mktemp -d /tmp/colony-fwd-XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
start_three_servers "$bin" "$dir" 200 --log-level warn
follower=$(( (leader_index + 1) % 3 ))
for round in $(seq 1 "$rounds"); do
  for who in leader follower; do
    index=$leader_index
    [ "$who" = follower ] && index=$follower
    figures=$("$bin" bench --external --http-addr "127.0.0.1:$((18500 + index + 200))" \
      --workloads put --put-clients 1 --runs 1 --duration 4s 2>&1 |
      grep -o "p50_ms=[0-9.]* p99_ms=[0-9.]*" | head -1)
    echo "round $round, at the $who: $figures"
  done
done
