"""The migration timeout: one watchdog thread that interrupts SQLite past a deadline.

`Connection.interrupt()` is the one safe way to stop a running statement from another
thread: SQLite abandons it at its next step and the engine's transaction is undone. One
long-lived thread per run, armed and disarmed around each step, costs nothing per
migration (a timer thread per migration cost ~0.5 ms each).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import apsw


class Watchdog:
    """Interrupt the armed connection once its deadline passes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._target: tuple[apsw.Connection, float] | None = None
        self._thread: threading.Thread | None = None

    def arm(self, db: apsw.Connection, seconds: float) -> None:
        """Interrupt `db` if it is still armed `seconds` from now."""
        with self._lock:
            self._target = (db, time.monotonic() + seconds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True)
                self._thread.start()
        self._wake.set()

    def disarm(self) -> None:
        """The step finished in time."""
        with self._lock:
            self._target = None

    def _watch(self) -> None:
        while True:
            with self._lock:
                target = self._target
            if target is None:
                self._wake.wait()
                self._wake.clear()
                continue
            db, deadline = target
            left = deadline - time.monotonic()
            if left > 0:
                self._wake.wait(left)
                self._wake.clear()
                continue
            with self._lock:
                if self._target is target:
                    db.interrupt()
                    self._target = None
