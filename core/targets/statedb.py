"""The two targets inside state.db: its schema (`database`) and its records (`state`).

Both run a step in one transaction of the run's connection (`DatabaseTarget`, opened once
per run and shared by both), together with the step's marker row: "marker present" is
exact evidence that the step committed (DESIGN §7). They differ only in what a step's
function receives: the connection itself, or the record helper (`Records`) whose batched
transforms commit batch by batch, each with its checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw

from flywall.core.model.errors import FlywallError
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets import dbcopy
from flywall.core.targets.protocol import Copy, Evidence, Step

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flywall.core.model.projection import MigrationRecord
    from flywall.core.runtime import fileio
    from flywall.core.targets.database import DatabaseTarget


class _InStateDb:
    """What both state.db targets share: the marker, verify, backup and restore."""

    component = ""
    marked = True

    def __init__(
        self, path: Path, db: DatabaseTarget | None = None, *, vfs: str | None = None
    ) -> None:
        """`db`: the run's open connection (None: state.db does not exist, or is not open).

        `vfs` is the workspace's SQLite VFS (the power-cut simulation sits there in tests):
        backup and restore open their own connections through it.
        """
        self._path = path
        self.db = db
        self._vfs = vfs

    @property
    def path(self) -> Path:
        """state.db."""
        return self._path

    def _connection(self) -> DatabaseTarget:
        if self.db is None:
            msg = "state.db does not exist"
            raise FlywallError(msg)
        return self.db

    def open(self, step: Step) -> Any:  # noqa: ARG002 - the records target's needs the step
        """The run's connection (`database`) or the record helper (`state`)."""
        return self._connection().db

    def apply(self, step: Step, change: Callable[[Any], None]) -> str | None:
        """One transaction: `change`, then the marker; returns the schema fingerprint."""
        db = self._connection()
        with db.transaction(self.component):
            return self.apply_within(step, change)

    def apply_within(
        self, step: Step, change: Callable[[Any], None], *, fingerprint: bool = True
    ) -> str | None:
        """`apply` inside a transaction the caller holds (the `full` strategy's one).

        Without `fingerprint` (that strategy fingerprints once, after its last step)
        None is returned.
        """
        return self._connection().apply(
            version=step.version,
            component=self.component,
            direction=step.direction,
            checksum=step.checksum,
            body=lambda _conn: change(self.open(step)),
            run_id=step.run_id,
            schema_version=step.schema_version,
            previous=step.previous,
            fingerprint=fingerprint,
        )

    def evidence(self, record: MigrationRecord) -> Evidence:
        """The marker row (present: the step committed) and a batched step's checkpoints."""
        db, direction = self.db, record.direction or "up"
        present = db is not None and db.has_marker(record.version)
        evidence = {
            "target": str(db.path) if db is not None else "state.db missing",
            "marker": "present" if present else "absent",
        }
        if db is not None:
            evidence["fingerprint"] = db.fingerprint()
            checkpoints = db.checkpoints(record.version)
            evidence.update({f"checkpoint {k}": v for k, v in checkpoints.items()})
        done = present if direction == "up" else not present
        half_done = not done and db is not None and bool(db.checkpoints(record.version, direction))
        return Evidence(done=done, evidence=evidence, half_done=half_done)

    def verify(self, check: Callable[[Any], None]) -> None:
        """Run `check` on the connection inside a savepoint that is always rolled back.

        Both state.db targets give a verify the connection: a `state` verify reads rows.
        """
        conn = self._connection().db
        conn.execute("SAVEPOINT flywall_verify")
        try:
            check(conn)
        finally:
            conn.execute("ROLLBACK TO flywall_verify")
            conn.execute("RELEASE flywall_verify")

    def backup(
        self, copy: Path, io: fileio.IO, alongside: Callable[[], None], *, held: bool = False
    ) -> Copy:
        """Copy state.db byte for byte under its write lock (see `dbcopy.copy_database`)."""
        size, digest = dbcopy.copy_database(self._path, copy, self._vfs, io, alongside, held=held)
        crashpoint("backup-state-copied")
        return Copy(size, digest)

    def restore(self, copy: Path | None) -> None:
        """Restore with SQLite's online backup API into the live database.

        One write transaction: a cut leaves it whole, old or new. An absent state.db is
        restored as an empty one: deleting a live database (and its -wal or -journal) is
        not atomic; emptying it in one transaction is.
        """
        if copy is None and not self._path.exists():
            return
        dest = dbcopy.connect(str(self._path), self._vfs)
        source = ":memory:" if copy is None else str(copy)
        src = dbcopy.connect(source, self._vfs, apsw.SQLITE_OPEN_READONLY)
        try:
            mode = dest.execute("PRAGMA journal_mode").fetchall()[0][0]
            dest.execute(f"PRAGMA synchronous = {'FULL' if mode == 'wal' else 'EXTRA'}")
            with dest.backup("main", src, "main") as job:
                job.step(-1)
        finally:
            src.close()
            dest.close()
        crashpoint("restore-state-done")


class SchemaTarget(_InStateDb):
    """The SQLite schema of state.db: a step's function receives the connection."""

    component = "database"


class RecordsTarget(_InStateDb):
    """The records in state.db (table rows, Flywall's buckets): a step receives `Records`."""

    component = "state"

    def open(self, step: Step) -> Any:
        """The record helper, checkpointing under `step.name` and journaling each batch."""
        from flywall.core.targets.records import Records  # lazy: a state step's only (~5 ms)

        return Records(
            self._connection().db,
            step.name,
            on_batch=step.on_batch,
            progress=step.progress,
            atomic=step.atomic,
        )
