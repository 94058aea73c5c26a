"""Flywall's own state store: buckets of JSON entries and their hash-chained change log.

A real Flywall `state.db` (FLYWALL.md §5) is a key-value store: `entries(bucket, key,
value, version, updated_at, expires_at)` and an append-only `changes` log that
replication peers verify. Every write takes the store's next `version` (one counter for
the whole store) and appends one `changes` row whose `hash` is the lower-case hex SHA-256
of `prev_hash|bucket|key|value|change_type|version|timestamp_unix_ns`. A migration that
changed `entries` without such a row would break replication, so state migrations change
entries only through `Bucket` (`records.bucket(name)`), which writes both in the same
transaction, batch by batch, resumable like `Records.transform`.

This module holds what we know of the store: its schema (as v0.2 and v0.3 create it), the
Go `time.Time` text its timestamps are stored in, the hash formula, the bucket helper and
`check_chain`, the checker `validate` runs. The formula is Flywall's (SHA-256), not ours
(blake3): it is what the peers compute.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import apsw

TABLES = ("buckets", "entries", "changes")
"""A database holding all three is a Flywall store (`is_store`)."""

SCHEMA_V02 = """\
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS entries (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    version INTEGER NOT NULL,
    updated_at DATETIME NOT NULL,
    expires_at DATETIME,
    PRIMARY KEY (bucket, key),
    FOREIGN KEY (bucket) REFERENCES buckets(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    change_type TEXT NOT NULL,
    version INTEGER NOT NULL,
    timestamp DATETIME NOT NULL
);
CREATE TABLE IF NOT EXISTS metadata (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE INDEX IF NOT EXISTS idx_entries_expires ON entries(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_changes_version ON changes(version);
CREATE INDEX IF NOT EXISTS idx_changes_timestamp ON changes(timestamp);
"""
"""The store as Flywall v0.2 creates it (our own text of the shape FLYWALL.md §5 describes)."""

SCHEMA_V03 = SCHEMA_V02.replace(
    "    timestamp DATETIME NOT NULL\n);", "    timestamp DATETIME NOT NULL,\n    hash TEXT\n);"
)
"""v0.3: `changes` gains `hash` (v0.3 adds the column to an older store at open)."""

CHANGE_TYPES = frozenset({"insert", "update", "delete"})


def create_store(path: Path, schema: str = SCHEMA_V02) -> None:
    """Create an empty store at `path`, as the firmware does at its first open.

    v0.2's schema by default: the oldest store our shipped migrations move forward (the
    v0.3 chain is one of them), so a migration tried on it meets the field's oldest shape.
    Rollback-journal mode, as Flywall's driver leaves it.
    """
    import apsw

    db = apsw.Connection(str(path))
    try:
        db.execute(schema)
    finally:
        db.close()


_CHUNK = 10_000
"""Entries per range of an atomic run (as records.py's): bounds the pending new values."""

_decode = msgspec.json.Decoder()
_sha256 = hashlib.sha256
_encode = msgspec.json.Encoder()


class _Delete:
    """The type of `DELETE`: one object, compared by identity."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()
"""What a bucket transform's `fn` returns to delete the entry (`records.DELETE`)."""


def is_store(db: apsw.Connection) -> bool:
    """Tell whether `db` is shaped like Flywall's store: it has buckets, entries and changes."""
    row = db.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?, ?)", TABLES
    ).fetchone()
    assert row is not None  # an aggregate always returns one row
    return bool(row[0] == len(TABLES))


def has_hash(db: apsw.Connection) -> bool:
    """Tell whether `changes` has v0.3's `hash` column (a v0.2 store has not)."""
    return any(row[1] == "hash" for row in db.execute("PRAGMA main.table_info(changes)"))


# --- Go's time.Time text ---------------------------------------------------------------

_GO_TIME = re.compile(
    r"(\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))? ([+-]\d{4})"
    r"(?: [A-Za-z0-9+-]+)?(?: m=[+-][0-9.]+)?"
)


def go_time(unix_ns: int) -> str:
    """Format an instant as Go's `time.Time.String()` does in UTC.

    `2026-02-15 10:04:05.123456789 +0000 UTC`: the fraction loses its trailing zeros, and
    a whole second has none at all (Go's `.999999999` layout).
    """
    seconds, fraction = divmod(unix_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + " +0000 UTC"


def parse_go_time(text: str) -> int:
    """The Unix time in nanoseconds of a Go `time.Time` text, in any zone.

    The hash formula hashes `timestamp_unix_ns`, which only the stored text tells a
    checker; a monotonic-clock suffix (` m=+0.5`) is accepted and ignored, as Go does.

    :raises ValueError: the text is not a Go time.
    """
    match = _GO_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Go time (2006-01-02 15:04:05.999999999 -0700 MST)")
    whole, fraction, zone = match.groups()
    return _seconds(whole, zone) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


@functools.lru_cache(maxsize=1024)
def _seconds(whole: str, zone: str) -> int:
    """Unix seconds of `YYYY-MM-DD HH:MM:SS` at UTC offset `zone` (+hhmm).

    A log's rows share their second with their neighbours: the checker computes each once.
    """
    date, clock = whole.split(" ")
    year, month, day = (int(part) for part in date.split("-"))
    hour, minute, second = (int(part) for part in clock.split(":"))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
    return seconds - offset if zone[0] == "+" else seconds + offset


# --- the change log's hash ---------------------------------------------------------------


def _bytes(value: bytes | str | None) -> bytes:
    """A value as the formula hashes it: its bytes; NULL hashes as nothing."""
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


def change_hash(
    prev_hash: str,
    bucket: str,
    key: str,
    value: bytes | str | None,
    change_type: str,
    version: int,
    unix_ns: int,
) -> str:
    """The `hash` of one `changes` row, chained on `prev_hash` (`""` for the first row)."""
    head = f"{prev_hash}|{bucket}|{key}|".encode()
    tail = f"|{change_type}|{version}|{unix_ns}".encode()
    return _sha256(head + _bytes(value) + tail).hexdigest()


def check_chain(db: apsw.Connection) -> str | None:
    """Walk `changes` in id order; return the first bad row (its id and why), or None.

    Flywall's own change-log chain in state.db (SHA-256, FLYWALL.md §5), not our journal's
    (`Journal.verify`): a finding for `validate` to show, so it returns rather than raises.

    Each row has a known `change_type`, a `version` above the row before it (one counter
    for the store), a Go time, and, when the store has `hash`, the hash the formula gives
    on the previous row's. The first row chains on `""` when it is row 1; after the
    daemon's 24-hour purge the oldest row left is the anchor, its hash taken as given.
    Rows v0.3 has not hashed yet (NULL) may only end the log: v0.3 fills them at open.
    """
    hashed = has_hash(db)
    columns = "id, bucket, key, value, change_type, version, timestamp"
    query = f"SELECT {columns}{', hash' if hashed else ', NULL'} FROM changes ORDER BY id"
    walk = _ChainWalk(hashed=hashed)
    for row in db.execute(query):
        problem = walk.step(*row)
        if problem is not None:
            return problem
    return None


class _ChainWalk:
    """What `check_chain` carries from one row to the next."""

    def __init__(self, *, hashed: bool) -> None:
        self.hashed = hashed
        self.prev_hash: str | None = None
        self.prev_version: int | None = None
        self.unfilled: int | None = None  # the first row without a hash
        self.stamp, self.ns = "", 0  # a batch shares one timestamp: parse it once

    def step(
        self,
        row_id: int,
        bucket: str,
        key: str,
        value: bytes | str | None,
        kind: str,
        version: int,
        stamp: str,
        stored: str | None,
    ) -> str | None:
        """Check one row; return why it is bad, or None."""
        where = f"changes row {row_id} ({bucket}/{key})"
        problem = self._fields(kind, version, stamp)
        if problem is not None:
            return f"{where}: {problem}"
        if not self.hashed:
            return None
        if stored is None:
            self.unfilled = self.unfilled or row_id
            return None
        if self.unfilled is not None:
            return f"{where}: hashed after row {self.unfilled}, which has no hash"
        expected = self._expected(row_id, (bucket, key, value, kind, version), stored)
        if stored != expected:
            return f"{where}: hash {stored} is not {expected}, the formula's on the row before"
        self.prev_hash = stored
        return None

    def _expected(self, row_id: int, fields: tuple[Any, ...], stored: str) -> str:
        """The hash the row must have; the anchor after a purge has the one it has."""
        if self.prev_hash is None and row_id != 1:
            return stored
        bucket, key, value, kind, version = fields
        return change_hash(
            self.prev_hash or "", str(bucket), str(key), value, kind, version, self.ns
        )

    def _fields(self, kind: str, version: int, stamp: str) -> str | None:
        if kind not in CHANGE_TYPES:
            return f"change_type {kind!r} is not insert, update or delete"
        if not isinstance(version, int) or (
            self.prev_version is not None and version <= self.prev_version
        ):
            return f"version {version!r} does not follow {self.prev_version}"
        self.prev_version = version
        if stamp != self.stamp:
            try:
                self.ns = parse_go_time(str(stamp))
            except ValueError as e:
                return f"timestamp {e}"
            self.stamp = stamp
        return None


# --- the bucket helper -------------------------------------------------------------------


@dataclass
class Progress:
    """What `Records` lends a bucket: its checkpoints, batch commits and progress."""

    ensure_checkpoints: Callable[[], None]
    checkpoint: Callable[[str], tuple[Any, int]]
    commit_batch: Callable[[str, Any, int, int], None]
    progress: Callable[[int, int], None]
    atomic: bool


class Bucket:
    """One bucket of the store, as a state migration changes it (`records.bucket(name)`).

    Each entry a transform changes gets the store's next `version` and a fresh
    `updated_at`, and one `changes` row (`update` or `delete`) chained by the formula, in
    the transaction that changes the entry. Entries are walked in key order, in ranges;
    with `batch_size` each range commits with its checkpoint (`bucket:NAME` in
    `flywall_batches`) and a resumed run starts after it, as `Records.transform` does. A
    rollback's `down` uses the same helper: its changes are appended too, never removed.
    """

    def __init__(self, db: apsw.Connection, name: str, steps: Progress) -> None:
        self.db = db
        self.name = name
        self._steps = steps
        self._version = 0  # the store's counter: the last version given out
        self._hashed = False

    def transform(
        self,
        fn: Callable[[Any], Any],
        *,
        where: str | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Apply `fn` to each entry's decoded JSON value; return the entries changed.

        `fn` returns the new value, `None` to leave the entry alone (no new version, no
        change row), or `DELETE` to delete it. A value equal byte for byte to the stored
        one is left alone too. `where` (SQL over `key`, `value`, `expires_at`) picks the
        entries `fn` sees; with `batch_size`, each batch (that many entries of the bucket
        in key order, of which `where` picks) commits with its checkpoint.
        """
        decode, encode = _decode.decode, _encode.encode

        def judge(raw: bytes | str | None) -> Any:
            new = fn(decode(raw) if raw is not None else None)
            return new if new is None or new is DELETE else encode(new)

        return self._walk(batch_size, lambda low, high: self._change(low, high, where, judge))

    def transform_sql(
        self, expression: str, *, where: str | None = None, batch_size: int | None = None
    ) -> int:
        """Set each entry's value to the SQL `expression`; return the entries changed.

        The expression sees the entry's columns by name (`json_set(value, '$.hostname',
        'gw')`); its text is stored as the value's bytes. An entry whose new value is NULL
        or equal to its old one is left alone, so a repeated run changes nothing. Same key
        order, batches and checkpoints as `transform`.
        """

        def judge(_raw: bytes | str | None, new: bytes | None) -> bytes | None:
            return new

        new = f"CAST(({expression}) AS BLOB)"
        return self._walk(batch_size, lambda low, high: self._change(low, high, where, judge, new))

    # -- one range --------------------------------------------------------------------

    def _range(self, low: str | None) -> str:
        """The key condition of a range: after `low` (the first range has no lower end)."""
        lower = "key > :low" if low is not None else "key >= ''"
        return f"bucket = :bucket AND {lower} AND key <= :high"

    def _change(
        self,
        low: str | None,
        high: str,
        where: str | None,
        judge: Callable[..., Any],
        new_sql: str | None = None,
    ) -> list[_Change]:
        """Change one range with one UPDATE that calls `judge` per entry; then delete.

        WHERE asks `judge(value[, new_sql's value])` once per entry, in key order, and
        numbers each change; SET takes the new value and version (in whichever order
        SQLite evaluates them: `pending` lives as long as the range). No entry becomes a
        Python tuple, and an entry left alone is not written at all. `judge` returns the
        new bytes, None, or DELETE.
        """
        found: list[_Change] = []
        pending: dict[str, _Change] = {}

        def decide(key: str, raw: bytes | str | None, *new: Any) -> int:
            data = judge(raw, *new)
            if data is None or (data is not DELETE and raw is not None and data == _bytes(raw)):
                return 0
            if data is DELETE:
                found.append(_Change(key, None, "delete", self._next()))
                return 0
            change = pending[key] = _Change(key, data, "update", self._next())
            found.append(change)
            return 1

        call = f"flywall_entry_changes(key, value{', ' + new_sql if new_sql else ''})"
        update = (
            "UPDATE entries SET value = flywall_entry_value(key), "
            "version = flywall_entry_version(key), updated_at = :now "
            f"WHERE {self._range(low)} AND "
            + (f"CASE WHEN ({where}) THEN {call} END" if where else call)
        )
        functions: dict[str, tuple[Callable[..., Any], int]] = {
            "flywall_entry_changes": (decide, 3 if new_sql else 2),
            "flywall_entry_value": (lambda key: pending[key].value, 1),
            "flywall_entry_version": (lambda key: pending[key].version, 1),
        }
        with self._functions(functions):
            self.db.execute(update, self._params(low, high))
        self._delete([c.key for c in found if c.change_type == "delete"])
        return found

    def _params(self, low: str | None, high: str) -> dict[str, Any]:
        params = {"bucket": self.name, "high": high, "now": self._now_text}
        if low is not None:
            params["low"] = low
        return params

    def _delete(self, keys: list[str]) -> None:
        self.db.executemany(
            "DELETE FROM entries WHERE bucket = ? AND key = ?", [(self.name, k) for k in keys]
        )

    def _functions(self, functions: dict[str, tuple[Callable[..., Any], int]]) -> _Registered:
        return _Registered(self.db, functions)

    # -- the counter, the log, the walk ---------------------------------------------------

    def _next(self) -> int:
        self._version += 1
        return self._version

    def _start_counter(self) -> None:
        """Read the store's counter: the highest version in entries or in the log.

        Both, because a deleted entry's version lives on only in `changes`, and the
        daemon's 24-hour purge can leave `changes` older than `entries`.
        """
        row = self.db.execute(
            "SELECT max(coalesce((SELECT max(version) FROM entries), 0), "
            "coalesce((SELECT max(version) FROM changes), 0))"
        ).fetchone()
        assert row is not None  # an aggregate always returns one row
        (top,) = row
        self._version = top

    def _follow_log(self) -> None:
        """After a commit: never give out a version the log already holds (its index is cheap).

        Nobody else should write while a migration runs (the daemon is stopped); if
        someone did between two batches, the counter still only grows.
        """
        row = self.db.execute("SELECT max(version) FROM changes").fetchone()
        assert row is not None  # an aggregate always returns one row
        (top,) = row
        self._version = max(self._version, top or 0)

    def _append(self, found: list[_Change]) -> None:
        """Append one `changes` row per change, in version order, hashed when the log is."""
        if not found:
            return
        stamp, ns, bucket = self._now_text, self._now_ns, self.name
        if not self._hashed:
            self.db.executemany(
                "INSERT INTO changes (bucket, key, value, change_type, version, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(bucket, c.key, c.value, c.change_type, c.version, stamp) for c in found],
            )
            return
        row = self.db.execute("SELECT hash FROM changes ORDER BY id DESC LIMIT 1").fetchone()
        prev: str | None = "" if row is None else row[0]
        rows = []
        for c in found:
            if prev is not None:  # an unhashed tail stays unhashed: v0.3 fills it in order
                prev = change_hash(prev, bucket, c.key, c.value, c.change_type, c.version, ns)
            rows.append((bucket, c.key, c.value, c.change_type, c.version, stamp, prev))
        self.db.executemany(
            "INSERT INTO changes (bucket, key, value, change_type, version, timestamp, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _walk(
        self, batch_size: int | None, change: Callable[[str | None, str], list[_Change]]
    ) -> int:
        """Change each key range still to do, in key order; return the entries changed.

        A range is the bucket's next `batch_size` entries after the last checkpoint (as
        `Records._walk`); its entries, its change rows and its checkpoint commit together.
        """
        changed = 0
        steps, table = self._steps, f"bucket:{self.name}"
        steps.ensure_checkpoints()
        if steps.atomic:
            batch_size = None
        self._hashed = has_hash(self.db)
        self._start_counter()
        row = self.db.execute(
            "SELECT count(*) FROM entries WHERE bucket = ?", (self.name,)
        ).fetchone()
        assert row is not None  # an aggregate always returns one row
        (total,) = row
        last_key, done = steps.checkpoint(table)
        low: str | None = last_key if done else None
        size = batch_size or _CHUNK
        for high, rows in self._ranges(low, size):
            self._stamp()
            found = change(low, high)
            self._append(found)
            changed += len(found)
            done, low = done + rows, high
            steps.progress(done, total)
            if batch_size is not None:
                steps.commit_batch(table, low, done, total)
                self._follow_log()
        return changed

    def _ranges(self, low: str | None, size: int) -> Iterator[tuple[str, int]]:
        """Yield (last key, entries) of each next range of `size` entries after `low`."""
        while True:
            lower = "AND key > :low " if low is not None else ""
            params: dict[str, Any] = {"bucket": self.name, "skip": size - 1}
            if low is not None:
                params["low"] = low
            end = self.db.execute(
                f"SELECT key FROM entries WHERE bucket = :bucket {lower}"
                "ORDER BY key LIMIT 1 OFFSET :skip",
                params,
            ).fetchone()
            if end is not None:
                yield end[0], size
                low = end[0]
                continue
            del params["skip"]
            row = self.db.execute(
                f"SELECT max(key), count(*) FROM entries WHERE bucket = :bucket {lower}", params
            ).fetchone()
            assert row is not None  # an aggregate always returns one row
            high, rows = row
            if rows:
                yield high, rows
            return

    def _stamp(self) -> None:
        """Take the time a range's entries and change rows are written at."""
        self._now_ns = time.time_ns()
        self._now_text = go_time(self._now_ns)

    _now_ns = 0
    _now_text = ""


@dataclass(slots=True)
class _Change:
    """One change a range made: the `changes` row it needs, but for bucket and time."""

    key: str
    value: bytes | None
    change_type: str
    version: int


class _Registered:
    """SQL functions registered on a connection for one statement, then removed."""

    def __init__(
        self, db: apsw.Connection, functions: dict[str, tuple[Callable[..., Any], int]]
    ) -> None:
        self._db = db
        self._functions = functions

    def __enter__(self) -> None:
        for name, (function, arity) in self._functions.items():
            self._db.create_scalar_function(name, function, arity)

    def __exit__(self, *_: object) -> None:
        for name, (_function, arity) in self._functions.items():
            self._db.create_scalar_function(name, None, arity)
