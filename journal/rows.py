"""The two shapes of an event: one to append, and one as stored (what readers get back)."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    """An event to append; the store assigns seq, time (if not given) and hashes."""

    kind: str
    body: bytes
    run_id: str = ""
    migration: str = ""
    at_ns: int | None = None


class StoredEvent(NamedTuple):
    """One row of the `events` table, exactly as stored."""

    seq: int
    at_ns: int
    run_id: str
    migration: str
    kind: str
    body: bytes
    prev_hash: bytes
    hash: bytes
