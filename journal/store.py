"""The append-only event store: one SQLite file through APSW (DESIGN §5).

The store knows nothing of migrations: it keeps opaque event bodies with their kind, run id
and migration name, chains them by hash, and keeps migration sources by digest. Append is
the only write, and every append is one durable transaction (WAL, synchronous=FULL), so an
event that recovery needs is on disk before the caller starts the side effect it explains.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import apsw

from flywall.journal import _schema, verified
from flywall.journal.chain import ADOPTED, GENESIS, ChainEnd, event_hash, walk_chain
from flywall.journal.errors import (
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalKeyedAlready,
    JournalTooNew,
    JournalUnreadable,
)
from flywall.journal.rows import Entry, StoredEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType

_COLUMNS = "seq, at_ns, run_id, migration, kind, body, prev_hash, hash"
# What `verify` hashes: the text columns as their stored bytes, so a tampered byte that is
# not valid UTF-8 is a hash mismatch at its seq rather than a decoding error.
_STORED_BYTES = (
    "seq, at_ns, CAST(run_id AS BLOB), CAST(migration AS BLOB), CAST(kind AS BLOB), "
    "CAST(body AS BLOB), CAST(prev_hash AS BLOB), CAST(hash AS BLOB)"
)


class Journal:
    """An open journal file. Use `Journal.open` (writers) or `Journal.open_existing`."""

    def __init__(self, conn: apsw.Connection, path: str, key: bytes | None) -> None:
        self._conn = conn
        self.path = path
        self._key = key
        self._key_checked = False
        self._walked: ChainEnd | None = None  # see `walked_end`

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        synchronous: str = "FULL",
        vfs: str | None = None,
        autocheckpoint: int | None = None,
    ) -> Self:
        """Open (creating if needed) the journal for writing; upgrades its tables.

        `synchronous` exists for the crash tests' negative control only: the product
        always uses FULL, because WAL with NORMAL loses acknowledged commits on power loss,
        and a checkpoint under less than FULL copies the WAL into the file without an
        fsync. `autocheckpoint` (WAL pages) is the crash tests' too: checkpoints inside
        every run they cut.
        """
        path = os.fspath(path)
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn = _connect(path, flags, vfs)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
        _schema.upgrade(conn, path)
        return cls(conn, path, key)

    @classmethod
    def open_existing(
        cls, path: str | os.PathLike[str], *, key: bytes | None = None
    ) -> Self | None:
        """Open an existing journal for reading; None when there is none yet.

        Readers never create the file nor upgrade its tables.
        """
        path = os.fspath(path)
        if not Path(path).exists():
            return None
        conn = _connect_reader(path)
        found = _schema.version(conn)
        if found == 0:
            conn.close()
            return None
        if found > _schema.CURRENT:
            conn.close()
            raise JournalTooNew(
                f"{path}: journal schema version {found} is newer than this program's "
                f"{_schema.CURRENT}"
            )
        return cls(conn, path, key)

    def close(self) -> None:
        """Close the connection; the WAL is checkpointed by SQLite."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Turn SQLite finding the file malformed into `JournalUnreadable`, naming it.

        A damaged page is found only when a statement reaches it, long after the open.

        :raises JournalUnreadable: the file is corrupt (truncated, a page of garbage).
        """
        try:
            yield
        except (apsw.CorruptError, apsw.NotADBError) as e:
            raise JournalUnreadable(f"{self.path}: journal is corrupt: {e}") from e

    @property
    def connection(self) -> apsw.Connection:
        """The APSW connection, for the derived caches kept beside the events."""
        return self._conn

    def append(
        self, entries: Sequence[Entry], sources: Iterable[tuple[str, bytes]] = ()
    ) -> list[StoredEvent]:
        """Append `entries` (and store `sources`) in one durable transaction.

        :raises JournalConflict: SQLite refused the rows (the chain trigger, a constraint).
        """
        with self.reading():
            stored = self._transaction(lambda: self._insert(entries, sources))
        self._carry_walk(stored)
        return stored

    def adopt_key(self, entry: Entry) -> StoredEvent:
        """Start keying a plain chain: check it whole, then append `entry` as its first MAC.

        `entry` is the `DeviceKeyAdopted` event; both steps are one transaction, so no
        event can slip in between the check and the adoption.

        :raises JournalKeyedAlready: the journal is keyed already (since its `keyed_from`).
        :raises JournalError: no key was given, or the journal is empty (its first event
            will be keyed anyway).
        :raises JournalCorrupt: the plain chain is broken; nothing is adopted over it.
        """
        if not self._key or entry.kind != ADOPTED:
            raise JournalError(f"{self.path}: adopt_key needs a device key and {ADOPTED}")
        self._walked = None  # the chain's keying changes: no walk carries over it

        def adopt() -> list[StoredEvent]:
            end = self._walk()
            if end.seq == 0:
                raise JournalError(f"{self.path}: empty journal: its first event will be keyed")
            if end.keyed_from is not None:
                raise JournalKeyedAlready(self.path, end.keyed_from)
            stored = self._insert([entry], ())
            self._conn.execute(
                "INSERT INTO meta (name, value) VALUES ('keyed_from', ?)", (str(stored[0].seq),)
            )
            return stored

        with self.reading():
            return self._transaction(adopt)[0]

    def _check_key_fits(self, *, adopting: bool) -> None:
        """Refuse to hash new events unlike the chain's: that would break it for good.

        A keyed chain needs the key; a plain one gets no MAC until it adopts a key (then
        `meta` records `keyed_from`). Checked once per open file.
        """
        if self._key_checked:
            return
        meta = dict(self._conn.execute("SELECT name, value FROM meta"))
        keyed = meta.get("chain") == "keyed" or "keyed_from" in meta or adopting
        if keyed and not self._key:
            raise JournalError(f"{self.path}: the journal is keyed; no device key is set")
        if self._key and not keyed and meta.get("chain") == "plain":
            raise JournalError(
                f"{self.path}: the journal was begun without a device key; adopt the key "
                "first (flywall migration journal adopt-key)"
            )
        self._key_checked = True

    def _transaction(self, work: Callable[[], list[StoredEvent]]) -> list[StoredEvent]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = work()
        except apsw.ConstraintError as e:
            conn.execute("ROLLBACK")
            raise JournalConflict(f"{self.path}: append refused: {e}") from e
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return stored

    def _insert(
        self, entries: Sequence[Entry], sources: Iterable[tuple[str, bytes]]
    ) -> list[StoredEvent]:
        """Insert the rows (inside the caller's transaction)."""
        conn = self._conn
        stored: list[StoredEvent] = []
        seq, prev = self._head()
        if seq == 0 and entries:  # the chain's kind is fixed by its first event
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('chain', ?)",
                ("keyed" if self._key else "plain",),
            )
        elif entries:
            self._check_key_fits(adopting=entries[0].kind == ADOPTED)
        for entry in entries:
            seq += 1
            at_ns = time.time_ns() if entry.at_ns is None else entry.at_ns
            digest = event_hash(
                prev, seq, at_ns, entry.kind, entry.run_id, entry.migration, entry.body,
                self._key,
            )  # fmt: skip
            row = (entry.run_id, entry.migration, entry.kind, entry.body, prev, digest)
            stored.append(StoredEvent(seq, at_ns, *row))
            prev = digest
        if stored:  # one statement for the batch (the `full` strategy writes 1000)
            conn.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", stored)
        blobs = list(sources)
        if blobs:
            conn.executemany("INSERT OR IGNORE INTO sources (digest, body) VALUES (?, ?)", blobs)
        return stored

    def head(self) -> tuple[int, bytes]:
        """Return (seq, hash) of the newest event; (0, GENESIS) when empty."""
        with self.reading():
            return self._head()

    def _head(self) -> tuple[int, bytes]:
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def read(
        self, after: int = 0, *, until: int | None = None, migration: str | None = None
    ) -> Iterator[StoredEvent]:
        """Yield events with seq > `after` (and <= `until`), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM events WHERE seq > ?"
        args: list[object] = [after]
        if until is not None:
            sql += " AND seq <= ?"
            args.append(until)
        if migration is not None:
            sql += " AND migration = ?"
            args.append(migration)
        with self.reading():
            for row in self._conn.execute(sql + " ORDER BY seq", args):
                yield StoredEvent(*row)

    def source(self, digest: str) -> bytes | None:
        """Return the migration source stored under `digest`, if any."""
        with self.reading():
            row = self._conn.execute(
                "SELECT body FROM sources WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else row[0]

    def chain_kind(self) -> str | None:
        """Return "keyed" or "plain" as recorded with seq 1; None if not recorded."""
        try:
            with self.reading():
                row = self._conn.execute("SELECT value FROM meta WHERE name = 'chain'").fetchone()
        except apsw.SQLError:  # a journal at schema version 2 or older, opened to read
            return None
        return None if row is None else str(row[0])

    def verify(self, since: ChainEnd | None = None) -> ChainEnd:
        """Walk the chain (all of it, or the tail after `since`); return where it ends, keyed since.

        The journal's one check of its chain (`walk_chain` over the stored rows): with no
        `since`, what `journal verify`, `validate` and the rescue run; from the chain's
        `verified_point`, what every writer's pre-flight runs (`journal/verified.py` says why
        that is enough there).

        Every stored row is walked, whatever its seq (a row renumbered below 1 must not
        drop out of sight), with its text columns as stored bytes. A chain recorded as
        keyed, read without a key, fails at seq 1 saying so; so does a plain one read with
        a key it never adopted. One that adopted a key fails, read without it, at the seq
        of the adoption. From `since`, the rows after its seq are walked the same way,
        starting from its hash: the first must link to it.

        :raises JournalCorrupt: naming the first bad seq.
        """
        end = self._walk(since)
        if self._key and end.keyed_from is None and end.seq:
            raise JournalCorrupt(
                1,
                "this journal was written without a device key, but a key is given "
                "(flywall migration journal adopt-key starts keying it)",
            )
        self._walked = end
        return end

    def walked_end(self) -> ChainEnd | None:
        """Where this connection's last `verify` ended, carried over the events it appended since.

        A walk from a trusted start checked the chain up to its end; each later `append`
        whose first row linked to that end (read inside its own write transaction) hashed
        its rows itself, so the chain is as checked up to the last of them. None when
        there was no walk, or anything else was written after it (another writer's event,
        a key adoption): a walk must then start from the verified point again. What a
        writing run records as the chain's verified point at its end (`record_verified`),
        so the next writer does not walk the run's own events again.
        """
        return self._walked

    def _carry_walk(self, stored: Sequence[StoredEvent]) -> None:
        """Move the walked end over `stored`, if they follow it directly (see `walked_end`)."""
        walked = self._walked
        if walked is None or not stored:
            return
        first, last = stored[0], stored[-1]
        linked = first.seq == walked.seq + 1 and first.prev_hash == walked.hash
        if not linked or any(row.kind == ADOPTED for row in stored):
            self._walked = None
            return
        self._walked = ChainEnd(last.seq, last.hash, walked.keyed_from)

    def verified_point(self) -> ChainEnd | None:
        """Return the chain's recorded verified point, if it is trusted and still on the chain.

        None when none was recorded, its seal fails under this journal's key (damaged,
        forged, or sealed under another key), or the event at its seq no longer carries
        its hash: the next walk then starts from seq 1.
        """
        try:
            with self.reading():
                row = self._conn.execute(
                    "SELECT s.seq, s.hash, s.body FROM snapshots s "
                    "JOIN events e ON e.seq = s.seq AND e.hash = s.hash WHERE s.name = ?",
                    (verified.ROW,),
                ).fetchone()
        except apsw.SQLError:  # no snapshots table: a journal at schema version 1, read only
            return None
        return None if row is None else verified.unseal(row[0], row[1], row[2], self._key)

    def record_verified(self, end: ChainEnd) -> None:
        """Record `end` as the chain's verified point, in one durable commit.

        Only for a point a walk from a trusted start has just reached (`verify`): the next
        writer's walk starts there.
        """
        with self.reading():
            self._conn.execute(
                "INSERT OR REPLACE INTO snapshots (name, seq, hash, body) VALUES (?, ?, ?, ?)",
                (verified.ROW, end.seq, end.hash, verified.seal(end, self._key)),
            )

    def _walk(self, since: ChainEnd | None = None) -> ChainEnd:
        """Walk every stored row (after `since`): keyed from seq 1, or plain as recorded with seq 1.

        Unlike `verify`, a plain chain that never adopted the given key passes (a key is
        being adopted); it then ends with `keyed_from` None.

        :raises JournalCorrupt: naming the first bad seq.
        """
        kind = self.chain_kind()
        if kind == "keyed" and not self._key:
            raise JournalCorrupt(1, "this journal is keyed (device key MAC); no key given")
        with self.reading():
            if since is None:
                rows = self._conn.execute(f"SELECT {_STORED_BYTES} FROM events ORDER BY seq")
                # plain tuples, in StoredEvent's field order
                return walk_chain(rows, self._key, keyed=kind != "plain" and self._key is not None)
            rows = self._conn.execute(
                f"SELECT {_STORED_BYTES} FROM events WHERE seq > ? ORDER BY seq", (since.seq,)
            )
            keyed = since.keyed_from is not None
            end = walk_chain(rows, self._key, (since.seq, since.hash), keyed=keyed)
        return end._replace(keyed_from=since.keyed_from) if keyed else end


def _connect(path: str, flags: int, vfs: str | None) -> apsw.Connection:
    try:
        conn = (
            apsw.Connection(path, flags=flags, vfs=vfs)
            if vfs
            else apsw.Connection(path, flags=flags)
        )
        conn.set_busy_timeout(5000)
        # Every connection, readers too: the last one to close checkpoints the WAL into
        # the file, and that copy must be synced before the WAL goes (issue 13).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except (apsw.NotADBError, apsw.CorruptError) as e:
        raise JournalUnreadable(f"{path}: journal is corrupt: {e}") from e
    except apsw.Error as e:
        raise JournalError(f"{path}: cannot open journal: {e}") from e
    return conn


_NO_WRITE_ACCESS = (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError)


def _connect_reader(path: str) -> apsw.Connection:
    """Open the journal for a reader, also one who may not write it (issue 16.11).

    As before, read-write first: the last connection to close checkpoints the WAL. A user
    without write access gets a read-only connection; when SQLite cannot give one either
    (a WAL database needs its -shm, and the folder is not writable to create it), a
    snapshot of the file in memory, provided no write-ahead log holds events the file
    lacks. Never `immutable`: that would read a journal being written as if it were not.
    """
    try:
        return _connect(path, apsw.SQLITE_OPEN_READWRITE, None)
    except JournalError as e:
        if not isinstance(e.__cause__, _NO_WRITE_ACCESS):
            raise
    try:
        return _connect(path, apsw.SQLITE_OPEN_READONLY, None)
    except JournalError as e:
        if not isinstance(e.__cause__, _NO_WRITE_ACCESS):
            raise
    return _snapshot(path)


def _snapshot(path: str) -> apsw.Connection:
    """Read the whole journal file into an in-memory database (no -wal content pending).

    :raises JournalError: a non-empty -wal holds events the file lacks; naming what to do.
    """
    wal = Path(path + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        folder = Path(path).parent
        raise JournalError(
            f"{path}: cannot read the journal as this user: its write-ahead log {wal.name} "
            f"holds events not yet in the file and {folder} is not writable to read it; run "
            "any command once as the journal's owner (its close folds the log into the file)"
        )
    try:
        data = bytearray(Path(path).read_bytes())
    except OSError as e:
        raise JournalError(f"{path}: cannot read journal: {e.strerror}") from e
    if len(data) >= 20 and data[18:20] == b"\x02\x02":  # noqa: PLR2004 - the header's WAL flag
        data[18:20] = b"\x01\x01"  # read as a rollback-journal file: nothing else differs
    conn = apsw.Connection(":memory:")
    try:
        conn.deserialize("main", bytes(data))
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except (apsw.NotADBError, apsw.CorruptError) as e:
        raise JournalUnreadable(f"{path}: journal is corrupt: {e}") from e
    return conn
