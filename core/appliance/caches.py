"""The one way a derived cache keys, seals and writes itself (docs/caches.md).

Four caches spare work that can always be redone: the projection snapshot (in the
journal), the discovery cache, the settings cache and the status memo. Each is a `Cache`:
a name, a format number bumped by hand when what it stores changes shape or meaning, and
the modules whose code computes what it stores. Its version, a digest of all three, is
stored in front of every entry, so an entry written by other code (a release that changed
the projection fold, a downgrade) is not found rather than trusted. The entry's bytes are
sealed by a blake3 digest, keyed with the device key where one is configured, so a cache
damaged or edited on disk is ignored too.

Only the standard library and blake3 are imported here: the status memo's hit path, which
must cost less than the imports it saves, reads its memo through this module.
"""

from __future__ import annotations

import os

import blake3

_CORE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # noqa: PTH100, PTH120
_VERSION = 32
_DIGEST = 32


def sources_digest(sources: tuple[str, ...], core: str = _CORE) -> str:
    """The hex blake3 of the modules `sources` (paths under flywall/core, or `core`), in order.

    What a cache's entries depend on in code: a change to any byte of them is a new version.
    """
    hasher = blake3.blake3()
    for source in sources:
        with open(os.path.join(core, source), "rb") as f:  # noqa: PTH118, PTH123
            hasher.update(source.encode() + b"\0" + f.read() + b"\0")
    return hasher.hexdigest()


class Cache:
    """One derived cache: how its entries are keyed, sealed, read back and written."""

    __slots__ = ("_version", "format_version", "name", "point", "sources")

    def __init__(
        self, name: str, format_version: int, sources: tuple[str, ...] = (), point: str = ""
    ) -> None:
        self.name = name
        self.format_version = format_version
        self.sources = sources
        self.point = point  # the prefix of its write's crash points
        self._version: bytes | None = None

    def version(self) -> bytes:
        """The cache's name, format and code digest, as 32 bytes (computed once a process)."""
        if self._version is None:
            try:
                code = sources_digest(self.sources) if self.sources else ""
            except OSError:  # an install without sources: the format number alone decides
                code = "no sources"
            ident = f"{self.name}\0{self.format_version}\0{code}".encode()
            self._version = blake3.blake3(ident).digest()
        return self._version

    def seal(self, body: bytes, key: bytes | None = None) -> bytes:
        """`body` stored with this version and its digest (a MAC with the device key `key`)."""
        version = self.version()
        return version + _digest(version + body, key) + body

    def unseal(self, data: bytes, key: bytes | None = None) -> bytes | None:
        """The body sealed in `data`; None if another version, another key, or damaged."""
        version, digest = data[:_VERSION], data[_VERSION : _VERSION + _DIGEST]
        body = data[_VERSION + _DIGEST :]
        if not versioned(data, self) or digest != _digest(version + body, key):
            return None
        return body

    def read(self, path: str | os.PathLike[str], key: bytes | None = None) -> bytes | None:
        """The body of the entry at `path`; None if it is missing, unreadable or not trusted."""
        try:
            with open(path, "rb") as f:  # noqa: PTH123
                return self.unseal(f.read(), key)
        except OSError:
            return None

    def write(
        self, path: str | os.PathLike[str], body: bytes, key: bytes | None = None, mode: int = 0o666
    ) -> bool:
        """Seal `body` and replace the entry at `path` atomically; best effort.

        A cache that cannot be written only costs the work again next time, so an OSError
        is returned as False. `mode` is narrowed by the umask (0o600: one user's cache).
        """
        from flywall.core.runtime.fileio import replace_cache  # pathlib: not on the memo's hit path

        try:
            replace_cache(os.fspath(path), self.seal(body, key), self.point, mode)
        except OSError:
            return False
        return True


def versioned(data: bytes, cache: Cache) -> bool:
    """True if `data` was sealed under `cache`'s current version (name, format and code)."""
    return len(data) >= _VERSION + _DIGEST and data[:_VERSION] == cache.version()


def _digest(data: bytes, key: bytes | None) -> bytes:
    return blake3.blake3(data, key=key).digest() if key else blake3.blake3(data).digest()
