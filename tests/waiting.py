"""Waiting on the event itself: a test polls what it waits for instead of sleeping a guess.

A fixed sleep blocks an xdist worker for its whole length, and a short one races a loaded
machine: a poll returns as soon as the event happened and fails (with a message) only
after a generous deadline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flywall.cli import memo

if TYPE_CHECKING:
    from pathlib import Path

DEADLINE = 20.0
"""Seconds before a wait gives up: far beyond any window the product keeps."""


def past_the_racy_window(root: Path) -> None:
    """Return once no file or folder under `root` is too recent for the status memo.

    The memo trusts an input only if its ctime is older than the racy window before the
    status began (`memo.racy`: the filesystem's ctime granularity + RACY_TICK_NS,
    about 0.1 s here, 3 s on a whole-second filesystem). A status started after this
    returns may write a memo; the window is read from the files, not guessed.
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        now = time.time_ns()
        if not any(_racy(p, now) for p in [root, *root.rglob("*")]):
            return
        assert time.monotonic() < deadline, f"{root}: inputs still in the racy window"
        time.sleep(0.01)


def _racy(path: Path, now: int) -> bool:
    try:
        return memo.racy(path.stat(), now)
    except FileNotFoundError:  # a file that went away meanwhile (a -journal) is no input
        return False
