"""The projection of a journal file, read through its snapshot cache (DESIGN §6).

The fold is pure (`flywall.core.model.projection`); this module is where it meets the
journal: a snapshot of the projection is kept beside the events, keyed by the seq and chain
hash it was computed at, so a read replays only what was appended since. It is stored
under the version of `SNAPSHOT` (the format below and the fold's code), so a snapshot that
another fold computed is replayed over, never served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw
import msgspec

from flywall.core.appliance.caches import Cache
from flywall.core.model.projection import Projection, replay
from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from flywall.journal import Journal

FOLD = ("model/events.py", "model/lifecycle.py", "model/projection.py")
"""The modules whose code computes a projection: the fold, its events and its lifecycle."""

SNAPSHOT_FORMAT = 2
"""Bump on any change to FOLD that changes what a fold of the same events gives (and then
set FOLD_DIGEST): tests/core/appliance/test_caches.py fails until both agree with the code."""
FOLD_DIGEST = "50faa353b05f408144d8acad64dcbb01cadcc25ac7d37bb01e566e9995f66d7c"
"""`caches.sources_digest(FOLD)` when SNAPSHOT_FORMAT was last reviewed."""

SNAPSHOT = Cache("projection snapshot", SNAPSHOT_FORMAT, FOLD)

_SNAPSHOT = "projection"
_snapshot_decoder = msgspec.msgpack.Decoder(Projection)


def save(journal: Journal, projection: Projection) -> None:
    """Cache `projection` beside the journal's events (a derived cache: safe to lose).

    Written with the journal's own durability (synchronous = FULL), never less: the
    snapshot shares the journal's file, and a commit can push the WAL past SQLite's
    auto-checkpoint threshold, so this write may be the one that copies the run's events
    into the main file and resets the WAL. Under a lower setting that copy would skip its
    fsync, and a power cut right after the command returned would lose every event of the
    run (issue 13). It is keyed by the seq and hash it was computed at, so it cannot be
    taken for another point of the chain, and sealed with `SNAPSHOT`'s version, so it
    cannot be taken for another fold's.
    """
    body = SNAPSHOT.seal(msgspec.msgpack.encode(projection))
    journal.connection.execute(
        "INSERT OR REPLACE INTO snapshots (name, seq, hash, body) VALUES (?, ?, ?, ?)",
        (_SNAPSHOT, projection.seq, projection.head_hash, body),
    )


def load(journal: Journal | None, *, use_snapshot: bool = True) -> Projection:
    """Return the projection of the whole journal, starting from a valid snapshot if any.

    `transitions` is imported only when events follow the snapshot.
    """
    return _load(journal, use_snapshot=use_snapshot)[0]


SAVE_AFTER = 1000
"""Events a writer must have replayed past the snapshot before it saves the snapshot anew."""


def load_for_writer(journal: Journal) -> Projection:
    """`load`, for a writer under the lock: a long replay past the snapshot is saved at once.

    A run saves the snapshot when it ends, but events appended outside runs (a dead
    channel's `NotificationFailed` after every boot, ...) and runs that journal nothing leave
    it behind: without this, every boot would replay them all again, more each year.
    """
    projection, replayed = _load(journal, use_snapshot=True)
    if replayed >= SAVE_AFTER:
        crashpoint("before-snapshot-catch-up")
        save(journal, projection)
        crashpoint("after-snapshot-catch-up")
    return projection


def _load(journal: Journal | None, *, use_snapshot: bool) -> tuple[Projection, int]:
    """The projection, and how many events were replayed past the snapshot to get it."""
    if journal is None:
        return Projection(), 0
    with journal.reading():
        start = _load_cached(journal) if use_snapshot else None
    head_seq, _ = journal.head()
    if start is not None and start.seq == head_seq:
        return start, 0
    from flywall.core.model.lifecycle import Lifecycle

    after = 0 if start is None else start.seq
    return replay(journal.read(after), Lifecycle(), start), head_seq - after


def _load_cached(journal: Journal) -> Projection | None:
    conn = journal.connection
    try:
        row = conn.execute(
            "SELECT s.seq, s.hash, s.body FROM snapshots s "
            "JOIN events e ON e.seq = s.seq AND e.hash = s.hash WHERE s.name = ?",
            (_SNAPSHOT,),
        ).fetchone()
    except apsw.SQLError:
        # No snapshots table: a journal at schema version 1, written by an older release
        # or left there by a power cut between the upgrade's steps. Readers never upgrade,
        # and the cache is derived, so there is simply no snapshot.
        return None
    body = None if row is None else SNAPSHOT.unseal(row[2])
    if body is None:  # none, or written under another version: replay from the start
        return None
    try:
        return _snapshot_decoder.decode(body)
    except msgspec.DecodeError:
        return None
