"""The journal's own tables, versioned by `PRAGMA user_version` and upgraded step by step.

Each step is applied in its own transaction together with the new version number, so an
upgrade interrupted by a power cut leaves the journal at a whole earlier version. A step is
never edited once released; changes are new steps (anchor: yoyo's internalmigrations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywall.journal.errors import JournalTooNew

if TYPE_CHECKING:
    from collections.abc import Callable

    import apsw

_V1 = """
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    at_ns     INTEGER NOT NULL,
    run_id    TEXT    NOT NULL,
    migration TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    body      BLOB    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);
CREATE INDEX events_by_migration ON events (migration, seq);

-- The database itself enforces the append-only rule and the chain's shape: no update, no
-- delete, and each insert must extend the head by exactly one seq and link to its hash.
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE of events refused'); END;
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE of events refused'); END;
CREATE TRIGGER events_extend_head BEFORE INSERT ON events
WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM events)
  OR NEW.prev_hash IS NOT coalesce(
       (SELECT hash FROM events ORDER BY seq DESC LIMIT 1), zeroblob(32))
BEGIN SELECT RAISE(ABORT, 'journal chain: an event must extend the head'); END;

-- Migration sources, content-addressed by the blake3 checksum of their normalised bytes.
CREATE TABLE sources (digest TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TRIGGER sources_refuse_update BEFORE UPDATE ON sources
BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE of sources refused'); END;
CREATE TRIGGER sources_refuse_delete BEFORE DELETE ON sources
BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE of sources refused'); END;
"""

_V2 = """
-- Derived caches (projection snapshots): rebuilt freely, so they may be replaced and
-- deleted; each is keyed by the seq and chain hash it was computed at.
CREATE TABLE snapshots (
    name  TEXT PRIMARY KEY,
    seq   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    body  BLOB    NOT NULL
) WITHOUT ROWID;
"""


_V3 = """
-- Facts about the journal itself, written once: `chain` is "keyed" when its hashes are
-- device-key MACs, else "plain" (recorded with seq 1), so verify can tell a keyed journal
-- read without its key from a tampered one.
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TRIGGER meta_refuse_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'journal meta is write-once: UPDATE refused'); END;
CREATE TRIGGER meta_refuse_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'journal meta is write-once: DELETE refused'); END;
"""


def _sql_step(sql: str) -> Callable[[apsw.Connection], None]:
    def step(conn: apsw.Connection) -> None:
        conn.execute(sql)

    return step


STEPS: tuple[Callable[[apsw.Connection], None], ...] = (
    _sql_step(_V1),
    _sql_step(_V2),
    _sql_step(_V3),
)
"""Step n (1-based) brings the journal from version n-1 to n."""

CURRENT = len(STEPS)


def version(conn: apsw.Connection) -> int:
    """Return the journal's schema version (0 for a new, empty file)."""
    (value,) = conn.execute("PRAGMA user_version").fetchall()[0]
    assert isinstance(value, int)  # SQLite keeps user_version as a 32-bit integer
    return value


def upgrade(conn: apsw.Connection, path: str) -> None:
    """Bring the journal's tables to `CURRENT`, one transaction per step (a new file: one).

    :raises JournalTooNew: the file was written by a newer flywall-migration.
    """
    found = version(conn)
    if found > CURRENT:
        raise JournalTooNew(
            f"{path}: journal schema version {found} is newer than this program's {CURRENT}"
        )
    # A new file (version 0) goes to CURRENT in one transaction: it is still either empty
    # or whole, and creating a journal costs one durable commit instead of one per step.
    batches = (
        [list(range(1, CURRENT + 1))]
        if found == 0
        else [[n] for n in range(found + 1, CURRENT + 1)]
    )
    for numbers in batches:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for number in numbers:
                STEPS[number - 1](conn)
            conn.execute(f"PRAGMA user_version = {numbers[-1]}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
