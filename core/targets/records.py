"""The `state` target: JSON records inside state.db tables, transformed row by row.

A state migration's `up(ctx, records)` calls `records.transform(table, fn)`. Atomic by
default: every row changes in the engine's one transaction. With `batch_size=N` each
batch commits together with a checkpoint row in the target (`flywall_batches`) and is
journaled as `BatchCommitted`; after a crash the next attempt resumes after the last
committed key, so no row is redone or skipped. The checkpoint is the evidence, the
journal event the audit trail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from flywall.core.crash import crashpoint

if TYPE_CHECKING:
    from collections.abc import Callable

    import apsw

CHECKPOINTS = "flywall_batches"

_CHUNK = 10_000
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class Records:
    """The record helper a state migration receives; `db` is also there for plain SQL."""

    def __init__(
        self,
        db: apsw.Connection,
        step: str,
        *,
        on_batch: Callable[[str, int, int], None],
        progress: Callable[[int, int], None],
        atomic: bool = False,
    ) -> None:
        self.db = db
        self._atomic = atomic  # the `full` strategy: one transaction, batches ignored
        self._step = step  # "VERSION:up" or "VERSION:down": checkpoints per direction
        self._on_batch = on_batch
        self._progress = progress

    def transform(
        self,
        table: str,
        fn: Callable[[Any], Any],
        *,
        column: str = "data",
        key: str = "rowid",
        where: str | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Apply `fn` to the decoded JSON value of `column` in each row; return rows changed.

        `fn` returns the new value, or None to leave the row as it is. Rows are visited in
        `key` order. With `batch_size`, each batch commits with its checkpoint.
        """
        self._ensure_checkpoints()
        if self._atomic:
            batch_size = None
        condition = f" AND ({where})" if where else ""
        total = self.db.execute(f'SELECT count(*) FROM "{table}" WHERE 1{condition}').fetchone()[0]
        last_key, done = self._checkpoint(table)
        changed = 0
        select = (
            f'SELECT "{key}", "{column}" FROM "{table}" WHERE "{key}" > ?{condition} '
            f'ORDER BY "{key}" LIMIT ?'
        )
        update = f'UPDATE "{table}" SET "{column}" = ? WHERE "{key}" = ?'
        # Atomic runs read in chunks too (bounded memory) but commit only at the end.
        limit = batch_size or _CHUNK
        while True:
            rows = self.db.execute(select, (last_key, limit)).fetchall()
            if not rows:
                break
            updates = []
            for row_key, raw in rows:
                new = fn(_decode.decode(raw) if raw is not None else None)
                if new is not None:
                    updates.append((_encode.encode(new).decode(), row_key))
            self.db.executemany(update, updates)
            changed += len(updates)
            last_key, done = rows[-1][0], done + len(rows)
            self._progress(done, total)
            if batch_size is not None:
                self._commit_batch(table, last_key, done, total)
        return changed

    def _ensure_checkpoints(self) -> None:
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ("
            "step TEXT NOT NULL, tbl TEXT NOT NULL, last_key, rows INTEGER NOT NULL, "
            "PRIMARY KEY (step, tbl))"
        )

    def _checkpoint(self, table: str) -> tuple[Any, int]:
        row = self.db.execute(
            f"SELECT last_key, rows FROM {CHECKPOINTS} WHERE step = ? AND tbl = ?",
            (self._step, table),
        ).fetchone()
        return (row[0], row[1]) if row else (-(2**63), 0)

    def _commit_batch(self, table: str, last_key: Any, done: int, total: int) -> None:
        """Commit this batch with its checkpoint, journal it, and open the next transaction."""
        self.db.execute(
            f"INSERT INTO {CHECKPOINTS} (step, tbl, last_key, rows) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (step, tbl) DO UPDATE SET last_key = excluded.last_key, "
            "rows = excluded.rows",
            (self._step, table, last_key, done),
        )
        self.db.execute("COMMIT")
        crashpoint("state-batch-committed")
        self._on_batch(str(last_key), done, total)
        self.db.execute("BEGIN IMMEDIATE")


def clear_checkpoints(db: apsw.Connection, version: str) -> None:
    """Drop a finished migration's checkpoints, in the transaction that sets its marker."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (CHECKPOINTS,)
    ).fetchone()
    if exists:
        db.execute(f"DELETE FROM {CHECKPOINTS} WHERE step LIKE ?", (f"{version}:%",))
