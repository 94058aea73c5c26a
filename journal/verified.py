"""The chain's verified point: how far a walk has checked the chain, sealed against forgery.

A writer that has walked the chain from a trusted start to (seq, hash) may record that
point, so the next writer walks only the events after it: the boot path (`migrate` and
`recover` with nothing to do) then costs the same on a journal of any length (issue 18.1).
`Journal.verify()` with no start, what `journal verify` and `validate` run, still walks
every stored row, so a rewrite of an event before the point is theirs to catch; every
event after it is checked by each writer exactly as a whole walk checks it.

The point is a derived cache, kept in the `snapshots` table (row `verified`): deleting it
costs one whole walk. Its body is `keyed_from` (u64 BE, 0 for a plain chain) and a 32-byte
blake3 over a fixed domain text, seq, hash and that field, keyed with the device key where
one is used. So a person who may write the file but has not the key cannot record a point
past events they rewrote (the walk would skip them); without a device key the events
themselves are plain hashes that such a person can recompute anyway, and the digest only
keeps a damaged row from being trusted. A point sealed under another key, or none, is not
trusted: the next walk starts from seq 1.
"""

from __future__ import annotations

import struct

import blake3

from flywall.journal.chain import ChainEnd

ROW = "verified"
"""The name of the `snapshots` row that holds the point."""

_DOMAIN = b"flywall-migration verified chain point\0"
_POINT = struct.Struct(">Q32sQ")  # seq, hash, keyed_from (0: none)
_KEYED_FROM = struct.Struct(">Q")
_MAC = 32


def seal(end: ChainEnd, key: bytes | None) -> bytes:
    """The stored body of the point `end`: its keyed_from, then its MAC (digest without a key)."""
    keyed_from = _KEYED_FROM.pack(end.keyed_from or 0)
    return keyed_from + _mac(end, key)


def unseal(seq: int, digest: bytes, body: bytes, key: bytes | None) -> ChainEnd | None:
    """The point stored as (seq, digest, body); None if damaged or sealed under another key."""
    if not isinstance(body, bytes) or len(body) != _KEYED_FROM.size + _MAC:
        return None
    if not isinstance(digest, bytes) or len(digest) != _MAC:
        return None
    (keyed_from,) = _KEYED_FROM.unpack(body[: _KEYED_FROM.size])
    end = ChainEnd(seq, digest, keyed_from or None)
    try:
        expected = _mac(end, key)
    except struct.error:  # a seq outside u64: no walk ever recorded it
        return None
    # A plain comparison: the MAC covers values anyone can read, and a guess costs a boot.
    return end if body[_KEYED_FROM.size :] == expected else None


def _mac(end: ChainEnd, key: bytes | None) -> bytes:
    data = _DOMAIN + _POINT.pack(end.seq, end.hash, end.keyed_from or 0)
    return (blake3.blake3(data, key=key) if key else blake3.blake3(data)).digest()
