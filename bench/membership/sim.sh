#!/usr/bin/env bash
# Simulator figures for BENCHMARKS.md (issue 3): scaling of dissemination and detection with n,
# false positives under loss, Lifeguard on/off with slow members, partition healing, churn,
# simulator speed, and the foca baseline beside colony's core. Every run is deterministic: the seed is in the file name.
# Usage: bench/membership/sim.sh [COLONY_BIN]    (default: target/release/colony)
# Output: bench-results/sim/*.json, then a summary table and bench-results/sim/scaling.svg.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/release/colony}"
out="$root/bench-results/sim"
mkdir -p "$out"
run() { local name=$1; shift; echo "sim: $name" >&2; "$bin" sim membership --json "$@" > "$out/$name.json"; }

for s in 1 2 3 4 5; do
  run "scale_n10_s$s" --nodes 10 --seed "$s"
  run "scale_n100_s$s" --nodes 100 --seed "$s"
  run "lgoff_n100_s$s" --nodes 100 --seed "$s" --lifeguard off
done
for s in $(seq 1 40); do run "join_n50_s$s" --nodes 50 --seed "$s"; done
for s in 1 2 3; do
  run "scale_n1000_s$s" --nodes 1000 --seed "$s" --warm
  run "join_n1000_s$s" --nodes 1000 --seed "$s" --duration 40s --kill 0 --injections 0
done
for s in 1 2; do run "scale_n10000_s$s" --nodes 10000 --seed "$s" --warm; done
# The foca baseline on the same phases (n >= 1,000 warm as above; 10,000 nodes take 3.5–5 min a seed).
for s in 1 2 3 4 5; do
  run "foca_n10_s$s" --nodes 10 --seed "$s" --impl foca
  run "foca_n100_s$s" --nodes 100 --seed "$s" --impl foca
done
for s in 1 2 3; do run "foca_n1000_s$s" --nodes 1000 --seed "$s" --impl foca --warm; done
for s in 1 2; do run "foca_n10000_s$s" --nodes 10000 --seed "$s" --impl foca --warm; done
# Loss, steady state (warm start), both implementations.
for loss in 0.1 0.2; do for s in 1 2 3; do
  run "warmloss${loss}_s$s" --nodes 100 --seed "$s" --loss "$loss" --duration 3600s --warm
  run "foca_loss${loss}_s$s" --nodes 100 --seed "$s" --loss "$loss" --duration 3600s --warm --impl foca
done; done
for loss in 0.1 0.2; do for s in 1 2 3; do
  run "loss${loss}_s$s" --nodes 100 --seed "$s" --loss "$loss" --duration 3600s
done; done
for lg in on off; do for s in 1 2 3; do
  run "slow_lg${lg}_s$s" --nodes 20 --seed "$s" --slow-fraction 0.1 --duration 600s --lifeguard "$lg"
done; done
for s in 1 2 3; do
  run "partition_s$s" --nodes 50 --seed "$s" --partition 25/25@30s+120s --duration 200s --kill 0
done
run churn_s1 --nodes 100 --seed 1 --churn 50 --kill 0 --duration 2030s
python3 "$here/sim_summary.py" "$out"
