"""Named crash points (CRASH-TESTING.md): where a test may cut the process dead.

`FLYWALL_CRASH_AT=name[:n]` kills this process with SIGKILL at the n-th hit of `name`
(default the first): no `finally`, no atexit, exactly like a power cut as far as this
process is concerned. `FLYWALL_CRASH_LIST=path` appends every point reached, one
`name n` line each, so tests enumerate the points instead of hard-coding them.
Off, a point costs one truth test of a module global.
"""

from __future__ import annotations

import os
import signal


def _parse_target(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_TARGET = _parse_target(os.environ.get("FLYWALL_CRASH_AT"))
_LIST = os.environ.get("FLYWALL_CRASH_LIST")
_ACTIVE = _TARGET is not None or bool(_LIST)
_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Mark a point just before or after a side effect; may kill the process in tests."""
    if _ACTIVE:
        _hit(name)


def _hit(name: str) -> None:
    count = _hits[name] = _hits.get(name, 0) + 1
    if _LIST:
        with open(_LIST, "a", encoding="utf-8") as out:  # noqa: PTH123 - one tiny append
            out.write(f"{name} {count}\n")
    if (name, count) == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
