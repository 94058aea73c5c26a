"""Long work in the background: a run answers 202 once it holds the writer lock.

The whole `with Engine(...)` runs in a worker thread (flock belongs to the file
description that thread opens); the request thread waits only until the worker says
"lock held" or raised before that, so a busy writer is a 409 at once, never a 202.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from flywall.core.commands import FlywallError, iso, new_run_id
from flywall.core.commands.reports import RunReport  # noqa: TC001 - msgspec reads RunStatus's fields at runtime

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

LOCK_WAIT = 60.0
"""Longest a request waits for the worker to take the lock (journal verify included)."""
KEEP = 100
"""Finished runs remembered; older ones are only in the journal."""


class RunAccepted(msgspec.Struct, kw_only=True):
    """The answer to a 202: where to follow the run."""

    run_id: str


class RunStatus(msgspec.Struct, kw_only=True):
    """A run started through the API: running, then completed or failed."""

    run_id: str
    command: str
    state: Literal["running", "completed", "failed"]
    started_at: str | None
    finished_at: str | None = None
    report: RunReport | None = None
    error: str | None = None


class Runs:
    """The runs this server started, by id (the journal keeps the lasting record)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunStatus] = {}
        self._guard = threading.Lock()

    def get(self, run_id: str) -> RunStatus | None:
        """Return a copy of the run's status, or None if this server never started it."""
        with self._guard:
            run = self._runs.get(run_id)
            return None if run is None else msgspec.structs.replace(run)

    def start(self, command: str, work: Callable[[str, Callable[[], None]], RunReport]) -> str:
        """Run `work(run_id, on_locked)` in a thread; return once it holds the lock.

        :raises FlywallError: whatever the work raised before holding the lock (`Busy`...).
        """
        run_id = new_run_id()
        locked = threading.Event()
        early: list[BaseException] = []
        answered = [False]  # once True, the client has the run id: errors go into the run
        with self._guard:
            finished = [r for r, run in self._runs.items() if run.state != "running"]
            for old in finished[: max(0, len(self._runs) - KEEP)]:  # oldest first
                del self._runs[old]
            self._runs[run_id] = RunStatus(
                run_id=run_id, command=command, state="running", started_at=iso(time.time_ns())
            )

        def worker() -> None:
            try:
                report = work(run_id, locked.set)
            except FlywallError as e:
                self._end(run_id, locked, answered, early, e, str(e))
            except Exception as e:  # a bug: keep the server up, the traceback in its log
                log.exception("run %s failed", run_id)
                self._end(run_id, locked, answered, early, e, f"internal error: {type(e).__name__}")
            else:
                self._finish(
                    run_id, "failed" if report.outcome == "failed" else "completed", report
                )
            finally:  # notices: the core delivered them as the run closed
                locked.set()

        # Not a daemon: stopping the server waits for the run instead of cutting it off.
        threading.Thread(target=worker, name=f"run-{run_id}").start()
        locked.wait(LOCK_WAIT)
        with self._guard:
            if early:
                raise early[0]
            answered[0] = True
        return run_id

    def _end(
        self,
        run_id: str,
        locked: threading.Event,
        answered: list[bool],
        early: list[BaseException],
        error: BaseException,
        message: str,
    ) -> None:
        with self._guard:
            if not locked.is_set() and not answered[0]:
                # Never held the lock: the waiting request answers with this error.
                del self._runs[run_id]
                early.append(error)
                return
        self._finish(run_id, "failed", None, message)

    def _finish(
        self,
        run_id: str,
        state: Literal["completed", "failed"],
        report: RunReport | None,
        error: str | None = None,
    ) -> None:
        with self._guard:
            run = self._runs[run_id]
            run.state, run.report, run.finished_at = state, report, iso(time.time_ns())
            run.error = error if error is not None else report.error if report else None
