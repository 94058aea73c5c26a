"""The migration timeout for Python code: SIGALRM in the main thread (issue 16.12).

The watchdog (core/runtime/watchdog.py) interrupts SQLite, but a migration spending its time in
Python (a sleep, a loop, a network call) never reaches SQLite's next step, so it ran past
`timeout` and was applied. In the main thread an `ITIMER_REAL` alarm now raises
`PythonTimeout` in it, but only while the vendor's own code runs (`vendor`): the engine's
commit and journal code inside it (`Records._commit_batch`) runs under `engine_code`, and
an alarm landing there is held until the vendor's code resumes. The alarm fires a moment
after the watchdog (`GRACE`), so a slow SQL statement is still reported as SQLite's.

Signals reach only the main thread: a run in another thread (the API server's) keeps the
watchdog's SQLite interrupt alone.

SIGINT (Ctrl-C) and SIGTERM (issue 16.9) stop a run the same way, under `ending_runs`: in
the vendor's code at once (its transaction is undone), in the engine's own code at the next
safe point (`checkpoint`, before each step, or back in the vendor's code), so a signal never
lands between a commit and its journal event. The engine then ends the run as failed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

GRACE = 0.1
"""Seconds after the deadline: the watchdog interrupts a running statement first."""


class _State:
    vendor = False  # the vendor's code is running (the alarm may raise)
    pending = False  # the alarm went off while the engine's own code ran
    signalled: int | None = None  # SIGINT or SIGTERM arrived (under `ending_runs`)
    raised = False  # ... and was raised: a second one is ignored while the run ends


_state = _State()  # signals run in the main thread only: one state for the process


class PythonTimeout(BaseException):
    """The vendor's Python code ran past the timeout.

    A BaseException, as KeyboardInterrupt: a migration's `except Exception` cannot swallow
    it; the engine's transaction undoes the step as for any error.
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run (a KeyboardInterrupt, as Ctrl-C always was)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def ending_runs() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted`, raised only where it is safe (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.signalled, _state.raised = None, False
    previous = {s: signal.signal(s, _signalled) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.signalled = None


def checkpoint() -> None:
    """A safe point of the engine's own code: raise a signal that arrived meanwhile."""
    if _state.signalled is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(_state.signalled)


def _signalled(signum: int, _frame: object) -> None:
    if _state.signalled is None:
        _state.signalled = signum
    if _state.vendor:
        checkpoint()


@contextlib.contextmanager
def limit(seconds: float | None) -> Iterator[bool]:
    """Arm the alarm for one step; yield whether it is armed (main thread only)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = signal.signal(signal.SIGALRM, _alarm)
    _state.pending = False
    signal.setitimer(signal.ITIMER_REAL, seconds + GRACE)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _state.pending = False


def vendor(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a migration body: the alarm raises in it (and only in it)."""

    def run(*args: Any) -> Any:
        outer, _state.vendor = _state.vendor, True
        try:
            _raise_if_due()
            return fn(*args)
        finally:
            _state.vendor = outer

    return run


@contextlib.contextmanager
def engine_code() -> Iterator[None]:
    """Hold the alarm off while the engine commits and journals inside a migration body."""
    outer, _state.vendor = _state.vendor, False
    try:
        yield
    finally:
        _state.vendor = outer
    _raise_if_due()  # back in the vendor's code, past its deadline


def _alarm(_signum: int, _frame: object) -> None:
    _state.pending = True
    _raise_if_due()


def _raise_if_due() -> None:
    if _state.vendor:
        checkpoint()
    if _state.vendor and _state.pending:
        _state.pending = False
        raise PythonTimeout
