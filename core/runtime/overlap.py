"""A migrate run's backup (and validate_before) made while its first step's SQL runs.

With the seed's defaults a run copies state.db, quick_checks it, and only then starts its
first step. On a large database the copy and the check cost as much as a fifth of the
step, and the step's SQL keeps one core busy while the other idles. They can run side by
side, because nothing the step writes is seen by the copy or the check before its COMMIT:

- state.db is in WAL mode: an open write transaction writes its pages to the -wal only
  (also when its cache spills), never to the main file, and no other connection reads
  them;
- the step's own `BEGIN IMMEDIATE` holds the write lock, so no one else can commit; the
  backup's checkpoint, taken after it, moves every earlier commit into the main file,
  which from then on is the whole committed database, unchanged until the step commits.

So the copy holds, and the checks read, the very database the sequential order would have
backed up and checked. The step waits for both before anything is journaled and before it
commits: the journal reads as in that order (ValidationPerformed, BackupCreated and
MigrationStarted in one durable append, then the COMMIT), and every write to a target still
follows the journal entry that explains it. A crash or power cut before the COMMIT leaves
state.db as it was (SQLite ignores a -wal's uncommitted frames) and a backup that is partial
(recovery removes it) or complete but unjournaled, as a crash inside the sequential backup
does. A failing check or backup undoes the step's transaction and ends the run as it
would have ended before the step. With `backup_before = false`, validate_before alone runs
beside the step, the same way.

Only a SQL migration of the schema qualifies: vendor Python could reach outside its
transaction or log before its MigrationStarted, and a batched state step commits batches.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flywall.core.targets.dbcopy import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.core.scripts.discovery import Migration
    from flywall.core.services.backup import Manifest
    from flywall.core.targets.database import DatabaseTarget


INTERRUPT_EVERY = 0.05
"""Seconds between two interrupts of the step once the backup or a check failed."""


def eligible(m: Migration, db: DatabaseTarget) -> bool:
    """Tell whether `m` may run while the backup is made (see the module's docstring)."""
    return m.kind == "sql" and m.component == "database" and db.wal


class Beside:
    """The backup `make` writes, in a thread of its own or, under a test VFS, when asked.

    The power-cut simulation counts its I/O events in one order, so there the backup is
    made by `outcome()`, after the step's SQL and before its COMMIT: the same order of
    durable writes, one thread.
    """

    def __init__(
        self,
        make: Callable[[], Manifest | None],
        *,
        threaded: bool,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """Hold `make` (the run's backup); `threaded` or made when asked, under a test VFS.

        `on_failure` runs in the thread when `make` raised: it stops the step's SQL
        (`Connection.interrupt`), which would only be undone once it ended.
        """
        self._make = make
        self._threaded = threaded
        self._on_failure = on_failure
        self._worker: Worker | None = None
        self._outcome: Manifest | BaseException | None = None
        self._done = False
        self._asked = threading.Event()
        self.started = False
        self.checks: dict[str, str] | None = None
        """validate_before's checks, as its thread made them (None: not made)."""
        self.recorded = False
        """The engine has journaled what the backup did (or raised what failed)."""
        self.journaled = False
        """The step's MigrationStarted is durable: it may commit."""

    def start(self) -> None:
        """Begin the backup (threaded); call with the step's write lock held."""
        self.started = True
        if self._threaded:
            self._worker = Worker(self._made)

    def _made(self) -> Manifest | None:
        try:
            return self._make()
        except BaseException:
            # An interrupt stops only a running statement: one that has not begun yet
            # (the step still setting up) would miss it, so it comes again until the step
            # asks for the outcome.
            while self._on_failure is not None:
                self._on_failure()
                if self._asked.wait(INTERRUPT_EVERY):
                    break
            raise

    def outcome(self) -> Manifest | BaseException | None:
        """Wait: the backup's manifest (None: no backup, checks only), or what it raised.

        Call with the step's write lock held.
        """
        self._asked.set()
        if not self._done:
            try:
                self._outcome = self._worker.result() if self._worker else self._make()
            except BaseException as e:  # the caller journals, then raises it
                self._outcome = e
            self._done = True
        return self._outcome
