#!/usr/bin/env bash
# bench/profile.sh - profile ours (import time + cProfile): bench/profile.py under our venv.
# Env: FLYWALL (default bench/.work/venv-ours/bin/flywall, else .venv/bin/flywall), WORK (default bench/.work), M (default 1000).
# Output: $WORK/profile/summary.md and the full texts/.prof files beside it.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
FLYWALL=${FLYWALL:-${WORK:-$HERE/.work}/venv-ours/bin/flywall}   # run.sh installs it (make bench)
[ -x "$FLYWALL" ] || FLYWALL=$HERE/../.venv/bin/flywall   # not yet: the dev install
unset PYTHONDONTWRITEBYTECODE   # as in run.sh: bytecode cached, outside the sources
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-${WORK:-$HERE/.work}/pycache}
exec "$(dirname "$FLYWALL")/python" "$HERE/profile.py" "${WORK:-$HERE/.work}" "${M:-1000}"
