#!/usr/bin/env bash
# bench/profile.sh - profile ours (import time + cProfile): bench/profile.py under our venv.
# Env: FLYWALL (default .venv/bin/flywall), WORK (default bench/.work), M (default 1000).
# Output: $WORK/profile/summary.md and the full texts/.prof files beside it.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
FLYWALL=${FLYWALL:-$HERE/../.venv/bin/flywall}
unset PYTHONDONTWRITEBYTECODE   # as in run.sh: bytecode cached, outside the sources
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-${WORK:-$HERE/.work}/pycache}
exec "$(dirname "$FLYWALL")/python" "$HERE/profile.py" "${WORK:-$HERE/.work}" "${M:-1000}"
