"""The hash chain: what exactly is hashed, and how a chain is verified.

Each event's hash covers, in this order::

    prev_hash (32 bytes) | seq (u64 BE) | at_ns (u64 BE)
    | len(kind) (u32 BE) | kind (UTF-8) | len(run_id) | run_id | len(migration) | migration
    | body (the stored msgpack bytes, exactly as stored)

DESIGN §5 names prev_hash, seq, at_ns, kind and body; run_id and migration are added
because they are stored columns too, and a column outside the hash could be rewritten
unnoticed. Lengths prefix the variable fields so no two different rows hash alike.

With a device key the same bytes go through keyed BLAKE3 (a MAC): a person with write
access to the file, but not the key, can no longer recompute a valid chain.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import blake3

from flywall.journal.errors import JournalCorrupt

if TYPE_CHECKING:
    from collections.abc import Iterable

    from flywall.journal.store import StoredEvent

GENESIS = bytes(32)
"""The prev_hash of seq 1."""

_HEADER = struct.Struct(">QQ")
_LEN = struct.Struct(">I")


def event_hash(
    prev_hash: bytes,
    seq: int,
    at_ns: int,
    kind: str | bytes,
    run_id: str | bytes,
    migration: str | bytes,
    body: bytes,
    key: bytes | None = None,
) -> bytes:
    """Return the 32-byte chain hash (or MAC, with `key`) of one event.

    The text fields may also be given as their stored UTF-8 bytes (as `verify` reads them).
    """
    h = blake3.blake3(key=key) if key else blake3.blake3()
    h.update(prev_hash)
    h.update(_HEADER.pack(seq, at_ns))
    for text in (kind, run_id, migration):
        raw = text if isinstance(text, bytes) else text.encode()
        h.update(_LEN.pack(len(raw)))
        h.update(raw)
    h.update(body)
    return h.digest()


def verify_chain(
    rows: Iterable[StoredEvent], key: bytes | None = None, start: tuple[int, bytes] = (0, GENESIS)
) -> tuple[int, bytes]:
    """Walk `rows` in order; return (last seq, last hash) or raise at the first bad row.

    :raises JournalCorrupt: naming the first seq that is missing, out of order, not linked
        to its predecessor, or whose hash does not match its content.
    """
    seq, prev = start
    for row in rows:
        if row.seq != seq + 1:
            raise JournalCorrupt(seq + 1, f"expected seq {seq + 1}, found {row.seq} (gap)")
        if row.prev_hash != prev:
            raise JournalCorrupt(row.seq, "prev_hash does not link to the previous event")
        try:
            expected = event_hash(
                prev, row.seq, row.at_ns, row.kind, row.run_id, row.migration, row.body, key
            )
        except struct.error as e:  # at_ns outside u64: no event was ever stored like that
            raise JournalCorrupt(row.seq, f"at_ns {row.at_ns} is out of range") from e
        if row.hash != expected:
            raise JournalCorrupt(row.seq, "hash does not match the event's content")
        seq, prev = row.seq, row.hash
    return seq, prev
