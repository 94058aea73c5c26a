"""The `database` target: the SQLite schema of state.db (DESIGN §1, §7).

Each migration runs in one transaction the engine owns, together with its marker row and
the seed's `schema_versions` row, so "marker present" is exact evidence that it committed.
Durability: FULL in WAL mode, EXTRA in rollback-journal mode (FULL alone can lose the last
commit when the journal's unlink is not yet on disk); NORMAL is never used.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw
import blake3

from flywall.core.crash import crashpoint
from flywall.core.targets.records import CHECKPOINTS, clear_checkpoints

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MARKERS = "flywall_migration_markers"


class DatabaseTarget:
    """One open connection to state.db for the length of a run."""

    def __init__(
        self,
        path: Path,
        version_table: str,
        *,
        vfs: str | None = None,
        create: bool = True,
        synchronous: str | None = None,
    ) -> None:
        flags = apsw.SQLITE_OPEN_READWRITE
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags |= apsw.SQLITE_OPEN_CREATE
        kwargs = {"vfs": vfs} if vfs else {}
        self.path = path
        self.version_table = version_table
        self._fingerprint: tuple[int, str] | None = None
        self._rows: dict[tuple[str, str, str, str], int] = {}
        self._tables_ready = False
        new = create and not path.exists()
        self.db = apsw.Connection(str(path), flags=flags, **kwargs)
        self.db.set_busy_timeout(5000)
        if new:  # ours to choose: WAL commits with one fsync, durable with FULL
            self.db.execute("PRAGMA journal_mode = WAL").fetchall()
        mode = self.db.execute("PRAGMA journal_mode").fetchall()[0][0]
        durable = "FULL" if mode == "wal" else "EXTRA"
        self.db.execute(f"PRAGMA synchronous = {synchronous or durable}")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def fingerprint(self) -> str:
        """Return the blake3 of the normalised schema, our own bookkeeping tables left out.

        Cached by SQLite's schema cookie (`PRAGMA schema_version`, bumped by every schema
        change, in any connection): the fingerprint before a migration is then free, and
        each row's digest is reused while its SQL is unchanged.
        """
        cookie = self.db.execute("PRAGMA schema_version").fetchall()[0][0]
        if self._fingerprint is None or self._fingerprint[0] != cookie:
            value = schema_fingerprint(self.db, bookkeeping(self.version_table), self._rows)
            self._fingerprint = (cookie, value)
        return self._fingerprint[1]

    def has_marker(self, version: str) -> bool:
        """Tell whether `version`'s marker row is committed: the recovery evidence."""
        return bool(self._markers_exist()) and (
            self.db.execute(f"SELECT 1 FROM {MARKERS} WHERE version = ?", (version,)).fetchone()
            is not None
        )

    def markers(self) -> dict[str, str]:
        """Return every marker row as version -> checksum (for drift detection)."""
        if not self._markers_exist():
            return {}
        return dict(self.db.execute(f"SELECT version, checksum FROM {MARKERS}").fetchall())

    def checkpoints(self, version: str) -> dict[str, str]:
        """Return a batched state migration's committed checkpoints: "step table" -> rows."""
        if not self._table_exists(CHECKPOINTS):
            return {}
        rows = self.db.execute(
            f"SELECT step, tbl, last_key, rows FROM {CHECKPOINTS} WHERE step LIKE ?",
            (f"{version}:%",),
        ).fetchall()
        return {f"{step} {table}": f"{n} rows, last key {key}" for step, table, key, n in rows}

    def _table_exists(self, name: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
            is not None
        )

    def _markers_exist(self) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MARKERS,)
            ).fetchone()
            is not None
        )

    def run(self, *, component: str, **step: Any) -> str:
        """Run one migration step and move its markers, in one transaction.

        Returns the new fingerprint. Any exception leaves the database exactly as before
        (SQLite undoes the transaction). `step` is what `apply` takes.
        """
        with self.transaction(component):
            return self.apply(component=component, **step)

    @contextlib.contextmanager
    def transaction(self, component: str) -> Iterator[None]:
        """One write transaction, committed (with crash points around) or undone."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            crashpoint(f"{component}-before-commit")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._tables_ready = False  # the ROLLBACK may have undone their creation
            raise
        crashpoint(f"{component}-after-commit")

    def apply(
        self,
        *,
        version: str,
        component: str,
        direction: str,
        checksum: str,
        body: Callable[[apsw.Connection], None],
        run_id: str,
        schema_version: str | None,
        previous: tuple[str, str] | None,
    ) -> str:
        """Inside the open transaction: run `body`, move the markers; return the fingerprint.

        `previous` is the (version, checksum) the component returns to after a down.
        """
        db = self.db
        self._ensure_tables()
        body(db)
        if db.in_transaction is False:
            msg = "the migration ended the engine's transaction (no BEGIN/COMMIT inside)"
            raise RuntimeError(msg)
        if direction == "up":
            self._mark_applied(version, component, checksum, run_id, schema_version)
        else:
            self._mark_rolled_back(version, component, previous)
        clear_checkpoints(db, version)
        return self.fingerprint()

    def _ensure_tables(self) -> None:
        if self._tables_ready:
            return
        self._tables_ready = True  # a rolled-back create is re-checked: see `transaction`
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {self.version_table} ("
            "component TEXT PRIMARY KEY, version TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL, checksum TEXT NOT NULL);"
            f"CREATE TABLE IF NOT EXISTS {MARKERS} ("
            "version TEXT PRIMARY KEY, component TEXT NOT NULL, checksum TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL, run_id TEXT NOT NULL)"
        )

    def _mark_applied(
        self, version: str, component: str, checksum: str, run_id: str, schema_version: str | None
    ) -> None:
        now = int(time.time())
        self.db.execute(
            f"INSERT INTO {MARKERS} (version, component, checksum, applied_at, run_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (version, component, checksum, now, run_id),
        )
        # The component's version is its newest applied migration's (as `_previous` and the
        # journal's projection have it): re-applying an older one after a rollback keeps it.
        (newest,) = self.db.execute(
            f"SELECT max(version) FROM {MARKERS} WHERE component = ?", (component,)
        ).fetchone()
        if newest == version:
            self._set_version(component, schema_version or version, checksum, now)

    def _mark_rolled_back(
        self, version: str, component: str, previous: tuple[str, str] | None
    ) -> None:
        self.db.execute(f"DELETE FROM {MARKERS} WHERE version = ?", (version,))
        if previous is None:
            self.db.execute(f"DELETE FROM {self.version_table} WHERE component = ?", (component,))
        else:
            self._set_version(component, previous[0], previous[1], int(time.time()))

    def _set_version(self, component: str, version: str, checksum: str, now: int) -> None:
        self.db.execute(
            f"INSERT INTO {self.version_table} (component, version, applied_at, checksum) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (component) DO UPDATE SET "
            "version = excluded.version, applied_at = excluded.applied_at, "
            "checksum = excluded.checksum",
            (component, version, now, checksum),
        )


def bookkeeping(version_table: str) -> tuple[str, ...]:
    """Our own tables in state.db, left out of the schema fingerprint."""
    return (MARKERS, CHECKPOINTS, version_table)


def schema_fingerprint(
    db: apsw.Connection,
    exclude: tuple[str, ...] = (),
    cache: dict[tuple[str, str, str, str], int] | None = None,
) -> str:
    """Return a blake3 fingerprint of `sqlite_master`, normalised (whitespace folded).

    Each row (type, name, table, SQL) is hashed on its own and the digests are added
    modulo 2**256: the result depends on the set of rows, not their order, and a `cache`
    of row digests makes a fingerprint after a small change cost one read of the catalog.
    Internal `sqlite_%` objects and the `exclude`d tables (with their indexes) are left out.
    """
    cache = {} if cache is None else cache
    total = 0
    rows = db.execute(
        "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for row in rows:
        if row[2] in exclude:
            continue
        digest = cache.get(row)
        if digest is None:
            kind, name, table, sql = row
            text = " ".join(sql.split())
            raw = blake3.blake3(f"{kind}\0{name}\0{table}\0{text}".encode()).digest()
            digest = cache[row] = int.from_bytes(raw, "big")
        total += digest
    return (total % (1 << 256)).to_bytes(32, "big").hex()


def open_existing(path: Path, version_table: str) -> DatabaseTarget | None:
    """Open state.db for reading evidence; None if it does not exist (readers never create)."""
    if not Path(path).exists():
        return None
    return DatabaseTarget(path, version_table, create=False)
