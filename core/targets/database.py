"""The `database` target: the SQLite schema of state.db (DESIGN §1, §7).

Each migration runs in one transaction the engine owns, together with its marker row and
the seed's `schema_versions` row, so "marker present" is exact evidence that it committed.
Durability: FULL in WAL mode, EXTRA in rollback-journal mode (FULL alone can lose the last
commit when the journal's unlink is not yet on disk); NORMAL is never used.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw
import blake3

from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MARKERS = "flywall_migration_markers"
CHECKPOINTS = "flywall_batches"
"""A batched state step's committed checkpoints (written by targets/records.py). Named here,
not there: a run that steps nothing (every boot's noop) must not import the record helper."""


class DatabaseTarget:
    """One open connection to state.db for the length of a run.

    Not a `Target` itself: both state.db targets (`statedb.py`: the schema and the
    records) run their steps through it, so a run opens state.db once.
    """

    def __init__(
        self,
        path: Path,
        version_table: str,
        *,
        vfs: str | None = None,
        create: bool = True,
        synchronous: str | None = None,
        autocheckpoint: int | None = None,
    ) -> None:
        flags = apsw.SQLITE_OPEN_READWRITE
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags |= apsw.SQLITE_OPEN_CREATE
        self.path = path
        self.version_table = version_table
        self._catalog: _Catalog | None = None
        self._rows: dict[tuple[str, str, str, str], int] = {}
        self._tables_ready = False
        new = create and not path.exists()
        try:
            self.db = (
                apsw.Connection(str(path), flags=flags, vfs=vfs)
                if vfs
                else apsw.Connection(str(path), flags=flags)
            )
        except apsw.CantOpenError as e:  # e.g. a directory in its place
            from flywall.core.model.errors import ValidationFailed

            raise ValidationFailed(f"{path}: cannot open the database: {e}") from e
        self.db.set_busy_timeout(5000)
        try:
            if new:  # ours to choose: WAL commits with one fsync, durable with FULL
                self.db.execute("PRAGMA journal_mode = WAL").fetchall()
            mode = self.db.execute("PRAGMA journal_mode").fetchall()[0][0]
        except (apsw.NotADBError, apsw.CorruptError, apsw.CantOpenError) as e:
            from flywall.core.model.errors import ValidationFailed

            self.db.close()
            raise ValidationFailed(f"{path}: cannot open the database: {e}") from e
        self.wal = mode == "wal"
        durable = "FULL" if self.wal else "EXTRA"
        self.db.execute(f"PRAGMA synchronous = {synchronous or durable}")
        self.db.execute(f"PRAGMA cache_size = {CACHE_SIZE}")
        self._vfs = vfs
        self._synchronous = synchronous or durable
        self._deferred = False  # a commit's automatic checkpoint not yet done
        self._autocheckpoint = autocheckpoint or _AUTOCHECKPOINT  # lower in crash tests
        if mode == "wal":
            self.db.set_wal_hook(self._wal_committed)  # in place of SQLite's own

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints and removes the WAL)."""
        self.db.close()

    def _wal_committed(self, _db: apsw.Connection, name: str, pages: int) -> int:
        """SQLite's automatic checkpoint (at 1000 WAL pages), one commit late.

        SQLite's own copies the WAL into the database inside the COMMIT that crosses 1000
        pages, so a migration rewriting a large table paid a second full write of it
        before anything else could run. Here the first such commit leaves it pending:
        `checkpointing` does it alongside validate_after's quick_check, `transaction`
        before the next migration, a later commit here, or the close. A commit is durable
        once its frames are in the WAL (synchronous = FULL), and a checkpoint is SQLite's
        own crash-safe copy whenever it runs, so a crash or a power cut sees nothing new;
        the WAL grows by at most the next transaction's pages before its copy.
        Errors are ignored, as SQLite's automatic checkpoint ignores them: the commit
        happened, and the close checkpoints again.
        """
        if pages >= self._autocheckpoint:
            if self._deferred:
                self._checkpoint(name)
            else:
                self._deferred = True
        return apsw.SQLITE_OK

    def _checkpoint(self, name: str = "main") -> None:
        with contextlib.suppress(apsw.Error):
            self.db.wal_checkpoint(name, apsw.SQLITE_CHECKPOINT_PASSIVE)
        self._deferred = False

    @contextlib.contextmanager
    def checkpointing(self) -> Iterator[None]:
        """Do a pending checkpoint from a second connection while `body` reads (quick_check).

        The checkpoint (writing the committed pages into state.db, then its fsync) is I/O,
        a quick_check is CPU: side by side they take about the longer of the two, not the
        sum. PASSIVE neither waits for nor blocks this connection's reads; whatever it
        could not copy the close copies. Under a test VFS (the power-cut simulation counts
        its events in one order) the checkpoint runs here first, in this thread.
        """
        if not self._deferred:
            yield
            return
        if self._vfs is not None:
            self._checkpoint()
            crashpoint("database-checkpointed")
            yield
            return
        self._deferred = False
        worker = _Checkpointer(self.path, self._synchronous)
        try:
            yield
        finally:
            worker.join()
        crashpoint("database-checkpointed")

    def fingerprint(self) -> str:
        """Return the blake3 of the normalised schema, our own bookkeeping tables left out.

        Cached by SQLite's schema cookie (`PRAGMA schema_version`, bumped by every schema
        change, in any connection): the fingerprint before a migration is then free, and
        each row's digest is reused while its SQL is unchanged. A migration that only
        created objects has its new catalog rows added to the cache (`_watching_schema`),
        so the fingerprint after it reads those rows, not the whole catalog.
        """
        cookie = self._cookie()
        if self._catalog is None or self._catalog.cookie != cookie:
            total, last = _catalog_sum(
                self.db, bookkeeping(self.version_table), self._rows, _ALL_ROWS
            )
            self._catalog = _Catalog(cookie, last, total)
        return _hex(self._catalog.total)

    def _cookie(self) -> int:
        row = self.db.execute("PRAGMA schema_version").fetchone()
        assert row is not None  # an aggregate or PRAGMA always returns one row
        return int(row[0])

    @contextlib.contextmanager
    def _watching_schema(self) -> Iterator[None]:
        """Inside the run's transaction: keep the cached catalog exact across `body`.

        SQLite appends the rows of new tables, indexes, views and triggers to
        `sqlite_master` with rowids above every existing one, and changes no existing row
        to do so. So when the authorizer saw nothing but creations (and reads, and writes
        to ordinary tables), no commit happened inside (which could let another connection
        in), and the cache was exact when the window opened (same schema cookie, taken
        under this transaction's write lock), then the schema afterwards is the cached
        rows plus the rows past the cached last rowid. Anything else (a DROP, an ALTER,
        any PRAGMA, an unknown action) leaves the cache alone: the cookie then differs
        and `fingerprint` reads the whole catalog, as it always did. Installing an
        authorizer expires every prepared statement, so none runs in the window unseen.
        """
        start = self._catalog
        if start is None or start.last_rowid >= _ROWID_LIMIT or start.cookie != self._cookie():
            yield
            return
        watch = _SchemaWatch()
        previous = self.db.authorizer
        self.db.authorizer = watch.authorize
        self.db.set_commit_hook(watch.committed, id=_SchemaWatch)
        try:
            yield
        finally:
            if self.db.authorizer != watch.authorize:  # the body put its own in: unseen
                watch.creations_only = False
            self.db.authorizer = previous
            self.db.set_commit_hook(None, id=_SchemaWatch)
        if watch.creations_only and self._catalog is start:
            added, last = _catalog_sum(
                self.db, bookkeeping(self.version_table), self._rows, start.last_rowid + 1
            )
            self._catalog = _Catalog(self._cookie(), last, start.total + added)

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
        rows = self.db.execute(f"SELECT version, checksum FROM {MARKERS}").fetchall()
        return {str(version): str(checksum) for version, checksum in rows}

    def checkpoints(self, version: str, direction: str = "%") -> dict[str, str]:
        """Return a batched state migration's committed checkpoints: "step table" -> rows.

        `direction` ("up" or "down") keeps only that step's: the evidence that it was cut
        half done.
        """
        if not self._table_exists(CHECKPOINTS):
            return {}
        rows = self.db.execute(
            f"SELECT step, tbl, last_key, rows FROM {CHECKPOINTS} WHERE step LIKE ?",
            (f"{version}:{direction}",),
        ).fetchall()
        return {f"{step} {table}": f"{n} rows, last key {key}" for step, table, key, n in rows}

    def batch_checkpoints(self) -> list[tuple[str, str, str, int]]:
        """Every batched step's checkpoint: (version, direction, table, rows done).

        A row exists only while a step is half done: the step's last transaction (the one
        that moves its marker) deletes it.
        """
        if not self._table_exists(CHECKPOINTS):
            return []
        rows = self.db.execute(f"SELECT step, tbl, rows FROM {CHECKPOINTS} ORDER BY step, tbl")
        return [(*step.rsplit(":", 1), table, n) for step, table, n in rows]

    def _table_exists(self, name: str) -> bool:
        """Tell whether main has table `name` (one of ours: a plain identifier).

        `PRAGMA table_info` looks the name up in SQLite's in-memory schema; a query of
        `sqlite_master` scans every row of it (~0.1 ms at 1000 tables, per migration).
        """
        return self.db.execute(f"PRAGMA main.table_info({name})").fetchone() is not None

    def _markers_exist(self) -> bool:
        return self._table_exists(MARKERS)

    def run(self, *, component: str, **step: Any) -> str | None:
        """Run one migration step and move its markers, in one transaction.

        Returns the new fingerprint. Any exception leaves the database exactly as before
        (SQLite undoes the transaction). `step` is what `apply` takes.
        """
        with self.transaction(component):
            return self.apply(component=component, **step)

    @contextlib.contextmanager
    def transaction(
        self, component: str, ready: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """One write transaction, committed (with crash points around) or undone.

        `ready` runs after the body and before the COMMIT, inside the transaction: what
        must be durable elsewhere before this commits (`core/runtime/overlap.py`). If it
        raises, the transaction is undone.
        """
        db = self.db
        if self._deferred:  # before this transaction's frames: the WAL stays as bounded
            self._checkpoint()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if ready is not None:
                ready()
            crashpoint(f"{component}-before-commit")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._tables_ready = False  # the ROLLBACK may have undone their creation
            # The cache may describe the undone schema, and a later change can bring the
            # cookie back to the same number: read the catalog afresh next time.
            self._catalog = None
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
        fingerprint: bool = True,
    ) -> str | None:
        """Inside the open transaction: run `body`, move the markers; return the fingerprint.

        `previous` is the (version, checksum) the component returns to after a down.
        Without `fingerprint` (the `full` strategy, which fingerprints once, after the last
        migration of its transaction) None is returned.
        """
        db = self.db
        self._ensure_tables()
        # Without a fingerprint to return, watching would only save a whole read later
        # at the price of a tail read now, per migration (the `full` strategy reads once).
        with self._watching_schema() if fingerprint else contextlib.nullcontext():
            body(db)
        if db.in_transaction is False:
            msg = "the migration ended the engine's transaction (no BEGIN/COMMIT inside)"
            raise RuntimeError(msg)
        if direction == "up":
            self._mark_applied(version, component, checksum, run_id, schema_version)
        else:
            self._mark_rolled_back(version, component, previous)
        if self._table_exists(CHECKPOINTS):  # only ever made by a state migration
            # a finished migration's checkpoints go in the transaction that sets its marker
            db.execute(f"DELETE FROM {CHECKPOINTS} WHERE step LIKE ?", (f"{version}:%",))
        return self.fingerprint() if fingerprint else None

    def move_marker(
        self,
        *,
        version: str,
        component: str,
        checksum: str,
        run_id: str,
        schema_version: str | None,
        applied: bool,
        previous: tuple[str, str] | None,
    ) -> None:
        """Inside the open transaction: set or clear a marker by hand (`force`)."""
        self._ensure_tables()
        if applied:
            self._mark_applied(version, component, checksum, run_id, schema_version)
        else:
            self._mark_rolled_back(version, component, previous)

    def rebind_marker(self, version: str, checksum: str) -> None:
        """Inside the open transaction: the marker takes a repaired file's checksum."""
        self.db.execute(f"UPDATE {MARKERS} SET checksum = ? WHERE version = ?", (checksum, version))

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
        row = self.db.execute(
            f"SELECT max(version) FROM {MARKERS} WHERE component = ?", (component,)
        ).fetchone()
        assert row is not None  # an aggregate or PRAGMA always returns one row
        (newest,) = row
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


NOTES = "flywall_migration_notes"
"""What a migration remembers for its own `down` (version, item): e.g. which records it
filled, so a rollback undoes only those. Ours, like the markers: never Flywall's tables."""


def bookkeeping(version_table: str) -> tuple[str, ...]:
    """Our own tables in state.db, left out of the schema fingerprint."""
    return (MARKERS, CHECKPOINTS, NOTES, version_table)


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
    total, _ = _catalog_sum(db, exclude, {} if cache is None else cache, _ALL_ROWS)
    return _hex(total)


_ALL_ROWS = -(1 << 63)
_ROWID_LIMIT = 1 << 62
"""Past this rowid SQLite may pick new rowids at random: no appending assumed then."""
_CATALOG_ROWS = (
    "SELECT rowid, type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
    "WHERE rowid >= ? AND name NOT LIKE 'sqlite_%'"
)
_CATALOG_END = "SELECT coalesce(max(rowid), 0) FROM sqlite_master"


def _catalog_sum(
    db: apsw.Connection,
    exclude: tuple[str, ...],
    cache: dict[tuple[str, str, str, str], int],
    first_rowid: int,
) -> tuple[int, int]:
    """Return the sum of `sqlite_master`'s row digests from `first_rowid` on, and its last rowid.

    The same two statements serve the whole read and a tail (the dry run learns them).
    """
    total = 0
    for _, kind, name, table, sql in db.execute(_CATALOG_ROWS, (first_rowid,)).fetchall():
        if table in exclude:
            continue
        row = (str(kind), str(name), str(table), str(sql))  # sqlite_master's text columns
        digest = cache.get(row)
        if digest is None:
            text = " ".join(row[3].split())
            raw = blake3.blake3(f"{kind}\0{name}\0{table}\0{text}".encode()).digest()
            digest = cache[row] = int.from_bytes(raw, "big")
        total += digest
    end = db.execute(_CATALOG_END).fetchone()
    assert end is not None  # an aggregate or PRAGMA always returns one row
    return total, int(end[0])


def _hex(total: int) -> str:
    return (total % (1 << 256)).to_bytes(32, "big").hex()


class _Catalog(NamedTuple):
    """The cached schema: its fingerprint sum as of `cookie`, and its last rowid then."""

    cookie: int
    last_rowid: int
    total: int


# Authorizer actions that cannot change an existing row of the main `sqlite_master`:
# creations (they append rows; a CREATE also writes the row it just appended), temp
# drops (temp schema), reads, functions, and writes to ordinary tables (a DELETE from
# `sqlite_master` itself is refused in `_SchemaWatch.authorize`).
_APPENDING = frozenset(
    {
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TABLE,
        apsw.SQLITE_CREATE_TEMP_INDEX,
        apsw.SQLITE_CREATE_TEMP_TABLE,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_CREATE_TEMP_VIEW,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_VIEW,
        apsw.SQLITE_DROP_TEMP_INDEX,
        apsw.SQLITE_DROP_TEMP_TABLE,
        apsw.SQLITE_DROP_TEMP_TRIGGER,
        apsw.SQLITE_DROP_TEMP_VIEW,
        apsw.SQLITE_INSERT,
        apsw.SQLITE_UPDATE,
        apsw.SQLITE_DELETE,
        apsw.SQLITE_READ,
        apsw.SQLITE_SELECT,
        apsw.SQLITE_FUNCTION,
        apsw.SQLITE_RECURSIVE,
        apsw.SQLITE_REINDEX,
    }
)
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})


class _SchemaWatch:
    """Authorizer and commit hook of one migration body: tells whether it only appended.

    An UPDATE of `sqlite_master` is allowed: CREATE TABLE and CREATE VIEW fill in the row
    they appended that way; anyone else needs writable_schema, which takes a PRAGMA (seen)
    and does not move the schema cookie either, so the cookie cache never saw those edits.
    A DELETE from it (DROP, or such an edit) is not allowed.
    """

    def __init__(self) -> None:
        self.creations_only = True

    def authorize(
        self, action: int, name: str | None, _extra: str | None, _db: str | None, _src: str | None
    ) -> int:
        if action not in _APPENDING or (action == apsw.SQLITE_DELETE and name in _SCHEMA_TABLES):
            self.creations_only = False
        return apsw.SQLITE_OK

    def committed(self) -> bool:
        self.creations_only = False  # another connection may have changed it since
        return False  # let the commit go ahead


CACHE_SIZE = -8192
"""Page cache of a state.db connection, in KiB (8 MiB; SQLite's default is 2 MiB).

A migration rewriting a large table (in WAL mode) spills dirty pages to the WAL before it
commits. At 2 MiB it spilled an interior b-tree page that a later rebalance changed again:
SQLite then overwrites that frame in place and, at COMMIT, re-reads every frame after it
to redo the WAL's running checksums: for 1M rows (bench scenario e) 17k frame reads and
17k header writes, ~0.02 s of a 0.08 s COMMIT. 3 MiB already avoided it for 1M and 3M
rows; 8 MiB leaves room for wider pages and rows. Memory only, taken as pages are used;
not a durability setting.
"""

_AUTOCHECKPOINT = 1000
"""SQLite's default automatic checkpoint threshold, in WAL pages (kept, one commit late)."""


class _Checkpointer(threading.Thread):
    """A PASSIVE checkpoint of state.db on its own connection, in a thread.

    APSW releases the GIL while SQLite works, so the caller's own statements run
    meanwhile. A failure is left for the close's checkpoint to meet again (SQLite's
    automatic checkpoint ignores its errors too): nothing depends on this one finishing.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(name="state.db checkpoint", daemon=True)
        self._path = path
        self._synchronous = synchronous
        self.start()

    def run(self) -> None:
        with contextlib.suppress(apsw.Error):
            db = apsw.Connection(str(self._path), flags=apsw.SQLITE_OPEN_READWRITE)
            try:
                db.execute(f"PRAGMA synchronous = {self._synchronous}")
                db.execute("PRAGMA schema_version").fetchall()  # opens the WAL (else a no-op)
                db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            finally:
                db.close()


def open_existing(path: Path, version_table: str) -> DatabaseTarget | None:
    """Open state.db for reading evidence; None if it does not exist (readers never create)."""
    if not Path(path).exists():
        return None
    return DatabaseTarget(path, version_table, create=False)
