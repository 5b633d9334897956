#!/usr/bin/env bash
# Serf vs colony gossip membership on loopback, alternating runs (see compare.py's docstring).
# Usage:
#   bench/membership/run.sh                                          # default scenario, N=5,20,50 x 3 runs
#   bench/membership/run.sh --scenario starve  --sizes 20 --runs 2
#   bench/membership/run.sh --scenario pause8s --sizes 20 --runs 2
#   bench/membership/run.sh --system colony --sizes 5 --runs 1       # quick smoke test
# Extra flags go to compare.py (--help). Needs serf (Debian `serf`) and target/release/colony
# (not built here). Uses only 127.0.0.x; kills only the agents it started (by PID).
# BENCH_TIMEOUT (seconds, default 7200, idle waits included) bounds the whole invocation.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v serf >/dev/null || { echo "install serf first: apt-get update && apt-get install -y serf" >&2; exit 1; }
[ -x "$here/../../target/release/colony" ] || { echo "missing target/release/colony: cargo build --release -p colony" >&2; exit 1; }
exec timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-7200}" python3 "$here/compare.py" "$@"
