#!/usr/bin/env bash
# Consul's three read modes against three replicated servers on loopback: default (leader
# lease), ?stale (any server, from its own state) and ?consistent (ReadIndex at the leader),
# with the clients on a follower (the usual place of a Consul client's server) and then on
# the leader. Usage: bench/consul-reads.sh [RUNS]   (needs target/release/colony)
set -euo pipefail
runs=${1:-5}
bin=${COLONY_BIN:-target/release/colony}
dir=$(mktemp -d /tmp/colony-reads-XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/three-servers.sh"
start_three_servers "$bin" "$dir" 0 --log-level warn
leader_http="127.0.0.1:$((18500 + leader_index))"
follower_http="127.0.0.1:$((18500 + (leader_index + 1) % 3))"
echo "leader: server $leader_index (http $leader_http), clients on follower $follower_http then on the leader" >&2
for where in "$follower_http" "$leader_http"; do
  echo "== clients on $where" >&2
  "$bin" --http-addr "$where" bench --external --runs "$runs" \
    --workloads get,get-stale,get-consistent
done
