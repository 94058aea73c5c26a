"""Key files: the device key and signing keys share their two accepted forms."""

from __future__ import annotations


def raw_or_hex(raw: bytes) -> bytes | None:
    """32 key bytes from a key file's content: 32 raw bytes or 64 hex characters, else None."""
    if len(raw) == 32:  # noqa: PLR2004 - an Ed25519 seed
        return raw
    text = raw.strip()
    if len(text) == 64:  # noqa: PLR2004 - 32 bytes in hex
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
    return None
