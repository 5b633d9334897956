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
for i in 0 1 2; do
  joins=()
  for j in 0 1 2; do [ "$j" != "$i" ] && joins+=(--retry-join "127.0.0.1:$((18301 + j))"); done
  "$bin" agent --server --bootstrap-expect 3 --node "s$i" --log-level warn \
    --bind "127.0.0.1:$((18301 + i))" --rpc-addr "127.0.0.1:$((18300 + 10 * (i + 1)))" \
    --http-addr "127.0.0.1:$((18500 + i))" --grpc-addr "127.0.0.1:$((12379 + i))" \
    --retry-interval 200ms --data-dir "$dir/s$i" "${joins[@]}" >/dev/null 2>&1 &
  pids+=($!)
done
leader=""
for _ in $(seq 1 300); do
  leader=$(curl -sf http://127.0.0.1:18500/v1/status/leader | tr -d '"' || true)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader within 30 s" >&2; exit 1; }
# The leader's RPC address names the server: map it to its HTTP port.
leader_http=""
for i in 0 1 2; do
  [ "$leader" = "127.0.0.1:$((18300 + 10 * (i + 1)))" ] && leader_http="127.0.0.1:$((18500 + i))"
done
follower_http=""
for i in 0 1 2; do
  addr="127.0.0.1:$((18500 + i))"
  [ "$addr" != "$leader_http" ] && { follower_http=$addr; break; }
done
echo "leader $leader (http $leader_http), clients on follower $follower_http then on the leader" >&2
for where in "$follower_http" "$leader_http"; do
  echo "== clients on $where" >&2
  "$bin" --http-addr "$where" bench --external --runs "$runs" \
    --workloads get,get-stale,get-consistent
done
