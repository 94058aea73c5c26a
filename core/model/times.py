"""Journal times as text: one home for how the tool writes a time (UTC ISO-8601)."""

from __future__ import annotations

import time


def iso(at_ns: int | None) -> str | None:
    """Render a journal time (ns since the epoch) with milliseconds, as reports show it."""
    if at_ns is None:
        return None
    seconds, ns = divmod(at_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"


def iso_seconds(at_ns: int | None) -> str | None:
    """Render a time to the second: for one-line messages (a lock holder, a deadline)."""
    if at_ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_ns // 1_000_000_000))
