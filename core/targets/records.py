"""The `state` target: JSON records inside state.db tables, transformed row by row.

A state migration's `up(ctx, records)` calls `records.transform(table, fn)` (a Python
function per record) or `records.transform_sql(table, expression)` (an SQL expression per
row, for reshapes SQLite's JSON functions can do). Atomic by default: every row changes in
the engine's one transaction. With `batch_size=N` each batch commits together with a
checkpoint row in the target (`flywall_batches`) and is journaled as `BatchCommitted`;
after a crash the next attempt resumes after the last committed key, so no row is redone or
skipped. The checkpoint is the evidence, the journal event the audit trail.

Both walk the table in key ranges of N rows (`SELECT key ... LIMIT 1 OFFSET N-1` finds a
range's end), and change a range with one `UPDATE ... WHERE key > ? AND key <= ?`: SQLite
walks the rows itself, and a Python `fn` is called from inside that UPDATE, so no row
becomes a Python tuple and no row is bound to a statement one by one. That call is one
per row (in the SET) when no trigger or foreign key watches the table, two (in the WHERE,
then the SET) when one does: see `transform`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from flywall.core.runtime import pytimeout
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets.database import CHECKPOINTS
from flywall.core.targets.store import DELETE, Bucket, Progress

if TYPE_CHECKING:
    from collections.abc import Callable

    import apsw

_CHUNK = 10_000
"""Rows per range of an atomic run: bounds the pending new values a range keeps."""

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class Records:
    """The record helper a state migration receives; `db` is also there for plain SQL."""

    DELETE = DELETE
    """What a bucket transform's `fn` returns to delete the entry."""

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

    def bucket(self, name: str) -> Bucket:
        """Flywall's bucket `name` (FLYWALL.md §5): its entries change with chained `changes`.

        Same batches, checkpoints and progress as `transform`; see store.py.
        """
        steps = Progress(
            self._ensure_checkpoints,
            self._checkpoint,
            self._commit_batch,
            self._progress,
            atomic=self._atomic,
        )
        return Bucket(self.db, name, steps)

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

        `fn` returns the new value, or None to leave the row as it is (it is then not
        written: no UPDATE trigger fires for it, and under a statement tracer SQLite's
        change count leaves it out); it sees only the rows `where` selects, in `key`
        order. With `batch_size`, each batch (that many rows of the table, of which
        `where` picks) commits with its checkpoint.
        """
        changed = [0]
        one_call = not self._watched(table) and self.db.exec_trace is None
        build = _one_call_update if one_call else _two_call_update
        update, functions = build(table, fn, column, key, where, changed, utf8=self._utf8())
        for name, (function, arity) in functions.items():
            self.db.create_scalar_function(name, function, arity)
        try:
            self._walk(
                table, key, batch_size, lambda low, high: self.db.execute(update, (low, high))
            )
        finally:
            for name, (_, arity) in functions.items():
                self.db.create_scalar_function(name, None, arity)
        return changed[0]

    def _utf8(self) -> bool:
        """Whether the database stores text as UTF-8 (what `CAST(bytes AS TEXT)` then reads)."""
        row = self.db.execute("PRAGMA main.encoding").fetchone()
        return row is not None and row[0] == "UTF-8"

    def _watched(self, table: str) -> bool:
        """Whether a trigger or a foreign key sees every row an UPDATE of `table` touches.

        Such an UPDATE fires the triggers, checks the child keys and runs the parent keys'
        actions for a row even when its new value is its old one, so `transform` must not
        touch the rows `fn` leaves alone. Temp triggers can watch a main table too.
        """
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema "
            "WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE) "
            "OR EXISTS (SELECT 1 FROM temp.sqlite_schema "
            "WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE) "
            "OR EXISTS (SELECT 1 FROM main.pragma_foreign_key_list(?1)) "
            "OR EXISTS (SELECT 1 FROM main.sqlite_schema AS s, "
            "main.pragma_foreign_key_list(s.name) AS f "
            "WHERE s.type = 'table' AND f.\"table\" = ?1 COLLATE NOCASE)",
            (table,),
        ).fetchone()
        assert row is not None  # a SELECT without FROM always returns one row
        return bool(row[0])

    def transform_sql(
        self,
        table: str,
        expression: str,
        *,
        column: str = "data",
        key: str = "rowid",
        where: str | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Set `column` to the SQL `expression` in each row `where` selects; return rows written.

        The expression sees the row's columns by name, e.g. a reshape with SQLite's JSON
        functions: `json_object('ipv4', data ->> '$.ip')`. Every row `where` selects is
        written, so `where` is also how a resumed or repeated run skips rows already done
        (`json_type(data, '$.address') IS NULL`). Same key order, batches and checkpoints
        as `transform`.
        """
        condition = f" AND ({where})" if where else ""
        update = (
            f'UPDATE "{table}" SET "{column}" = ({expression}) '
            f'WHERE "{key}" > ? AND "{key}" <= ?{condition}'
        )
        written = [0]

        def change(low: Any, high: Any) -> None:
            self.db.execute(update, (low, high))
            written[0] += self.db.changes()

        self._walk(table, key, batch_size, change)
        return written[0]

    def _walk(
        self, table: str, key: str, batch_size: int | None, change: Callable[[Any, Any], object]
    ) -> None:
        """Call `change(after, last)` for each key range still to do, in key order.

        A range is the table's next `batch_size` rows after the last checkpoint, whatever
        `where` selects among them: `where` then costs one evaluation per row (in the
        UPDATE), not one more per row to find the ranges and to count them. Progress and
        checkpoints count rows walked. With `batch_size`, each range commits with its
        checkpoint.
        """
        self._ensure_checkpoints()
        if self._atomic:
            batch_size = None
        counted = self.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        assert counted is not None  # an aggregate always returns one row
        (total,) = counted
        nth = f'SELECT "{key}" FROM "{table}" WHERE "{key}" > ? ORDER BY "{key}" LIMIT 1 OFFSET ?'
        rest = f'SELECT max("{key}"), count(*) FROM "{table}" WHERE "{key}" > ?'
        last_key, done = self._checkpoint(table)
        size = batch_size or _CHUNK
        end: Any = ()
        while end is not None:
            end = self.db.execute(nth, (last_key, size - 1)).fetchone()
            if end is None:  # fewer than `size` rows left: this range ends at the last one
                tail = self.db.execute(rest, (last_key,)).fetchone()
                assert tail is not None  # an aggregate always returns one row
                high, rows = tail
                if rows == 0:
                    return
            else:
                high, rows = end[0], size
            change(last_key, high)
            done, last_key = done + rows, high
            self._progress(done, total)
            if batch_size is not None:
                self._commit_batch(table, last_key, done, total)

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
        """Commit this batch with its checkpoint, journal it, and open the next transaction.

        The engine's own code: a Python timeout waits until it is done (core/runtime/pytimeout).
        """
        with pytimeout.engine_code():
            self._commit_and_journal(table, last_key, done, total)

    def _commit_and_journal(self, table: str, last_key: Any, done: int, total: int) -> None:
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


_Functions = dict[str, tuple["Callable[..., Any]", int]]
"""SQL functions an UPDATE calls: name -> (Python callable, number of arguments)."""


def _one_call_update(
    table: str,
    fn: Callable[[Any], Any],
    column: str,
    key: str,
    where: str | None,
    changed: list[int],
    *,
    utf8: bool = True,
) -> tuple[str, _Functions]:
    """The UPDATE for a table nothing watches: one call into Python per row, in the SET.

    A row `fn` leaves alone keeps its own value (the call returns NULL, `coalesce` takes
    the column), the very record SQLite has, and SQLite writes no page for a record that
    did not change (its b-tree overwrites a cell only when the bytes differ; an index on
    the column gets its same entry again). Half the calls of the two-call form, and no
    dict in between: ~0.25 s less CPU on 1M rows.

    A new value is encoded into one reused buffer and handed to SQLite as bytes that
    `CAST(... AS TEXT)` stores as the same text `encode(new).decode()` gave: no growing
    buffer, no bytes and no str object per row (~1,400 fewer instructions a row). The
    cast reads the bytes in the database's encoding, so a UTF-16 database (`utf8`
    false) takes the str path.
    """
    decode = _decode.decode
    if not utf8:
        encode = _encode.encode

        def text(raw: Any) -> Any:
            new = fn(decode(raw) if raw is not None else None)
            if new is None:
                return raw
            changed[0] += 1
            return encode(new).decode()

        name = "flywall_record_text"
        set_to = f'{name}("{column}")'
        return _range_update(table, column, key, where, set_to), {name: (text, 1)}

    encode_into = _encode.encode_into
    buffer = bytearray(256)  # one buffer for every row: SQLite copies the bytes at once

    def value(raw: Any) -> Any:
        new = fn(decode(raw) if raw is not None else None)
        if new is None:
            return None
        changed[0] += 1
        encode_into(new, buffer)
        return buffer

    name = "flywall_record_value"
    set_to = f'coalesce(CAST({name}("{column}") AS TEXT), "{column}")'
    return _range_update(table, column, key, where, set_to), {name: (value, 1)}


def _range_update(table: str, column: str, key: str, where: str | None, set_to: str) -> str:
    """`UPDATE table SET column = set_to` over one key range, `where` selecting among it."""
    condition = f" AND ({where})" if where else ""
    return (
        f'UPDATE "{table}" SET "{column}" = {set_to} WHERE "{key}" > ? AND "{key}" <= ?{condition}'
    )


def _two_call_update(
    table: str,
    fn: Callable[[Any], Any],
    column: str,
    key: str,
    where: str | None,
    changed: list[int],
    *,
    utf8: bool = True,
) -> tuple[str, _Functions]:
    """The UPDATE for a watched table: a row `fn` leaves alone is not updated at all.

    A trigger or a foreign key sees each row UPDATE touches, even with its own value back,
    and so does SQLite's change count, which a statement tracer on the connection reads
    (`test --performance` charges a migration the rows it changed): WHERE decides (and
    keeps the new value), SET takes it. Each row's fn runs once, whether SQLite updates in
    one pass or collects the rows first (it does with triggers). CASE keeps `where` first.
    The new value is kept as bytes that CAST makes TEXT; as a str in a UTF-16 database,
    where the cast would read UTF-8 bytes as UTF-16.
    """
    decode, encode = _decode.decode, _encode.encode
    pending: dict[Any, bytes | str] = {}

    def changes(row_key: Any, raw: str | None) -> int:
        new = fn(decode(raw) if raw is not None else None)
        if new is None:
            return 0
        pending[row_key] = encode(new) if utf8 else encode(new).decode()
        changed[0] += 1
        return 1

    test, value_of = "flywall_record_changes", "flywall_record_value"
    call = f'{test}("{key}", "{column}")'
    update = (
        f'UPDATE "{table}" SET "{column}" = CAST({value_of}("{key}") AS TEXT) '
        f'WHERE "{key}" > ? AND "{key}" <= ? AND '
        + (f"CASE WHEN ({where}) THEN {call} END" if where else call)
    )
    return update, {test: (changes, 2), value_of: (pending.pop, 1)}
