#!/usr/bin/env bash
# Run the colony compatibility suite (py-consul against target/debug/colony).
#
#   tests/compat/run.sh                 # whole suite
#   tests/compat/run.sh -k kv -x        # extra args go to pytest
#
# Env: COMPAT_VENV (default /tmp/colony-compat-venv), COLONY_BIN (default
# target/debug/colony), COLONY_START_TIMEOUT, COLONY_CRASH_SEED.
# Exits non-zero if anything fails (including "no tests collected").
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${COMPAT_VENV:-/tmp/colony-compat-venv}"
REQS="$REPO_ROOT/tests/compat/requirements.txt"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"

cd "$REPO_ROOT"
exec "$VENV/bin/python" -m pytest -q tests/compat "$@"
