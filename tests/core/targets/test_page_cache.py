"""state.db's page cache: a big UPDATE commits without re-reading its WAL frames.

With SQLite's default 2 MiB cache, a migration rewriting a table larger than the cache
spilled a page that a later b-tree rebalance changed again; SQLite then overwrote that WAL
frame and, at COMMIT, re-read every frame after it to redo the running checksums.
`database.CACHE_SIZE` keeps such pages in memory. A counting VFS (real files underneath)
tells how many WAL reads the COMMIT did; the data is checked after a reopen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw
import pytest

from flywall.core.targets import database
from flywall.core.targets.database import DatabaseTarget

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ROWS = 200_000  # ~8 MB growing to ~14 MB: well past SQLite's default 2 MiB cache
NAME = "flywall-count-wal"


class _CountingFile(apsw.VFSFile):
    def __init__(self, vfs: _CountingVFS, name: str | apsw.URIFilename | None, flags: list[int]):
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        self._vfs = vfs
        self._wal = bool(path) and str(path).endswith("-wal")
        super().__init__("", name, flags)

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 - APSW's name
        if self._wal:
            self._vfs.wal_reads += 1
        return super().xRead(amount, offset)


class _CountingVFS(apsw.VFS):
    """The default VFS, counting reads of any -wal file."""

    def __init__(self) -> None:
        self.wal_reads = 0
        super().__init__(NAME, "")

    def xOpen(  # noqa: N802 - APSW's name
        self, name: str | apsw.URIFilename | None, flags: list[int]
    ) -> _CountingFile:
        return _CountingFile(self, name, flags)


@pytest.fixture
def counting() -> Iterator[_CountingVFS]:
    vfs = _CountingVFS()
    yield vfs
    vfs.unregister()


def _hosts(path: Path) -> DatabaseTarget:
    target = DatabaseTarget(path, "schema_versions", vfs=NAME)
    with target.transaction("database"):
        target.db.execute(
            "CREATE TABLE hosts (id INTEGER PRIMARY KEY, mac TEXT, hostname TEXT);"
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "INSERT INTO hosts SELECT x, printf('02:00:%08x', x), "
            "CASE WHEN x % 3 THEN 'host-' || x || '.example.net' END FROM c",
            (ROWS,),
        )
    return target


def test_the_cache_is_larger_than_sqlites_default(tmp_path: Path) -> None:
    target = DatabaseTarget(tmp_path / "state.db", "schema_versions")
    assert target.db.execute("PRAGMA cache_size").fetchone() == (database.CACHE_SIZE,)
    assert database.CACHE_SIZE < -2000  # KiB, and more of them than the default's 2000
    target.close()


def test_a_table_rewrite_commits_without_rereading_the_wal(
    tmp_path: Path, counting: _CountingVFS
) -> None:
    path = tmp_path / "state.db"
    target = _hosts(path)
    with target.transaction("database"):
        target.db.execute(
            "ALTER TABLE hosts ADD COLUMN label TEXT;"
            "UPDATE hosts SET label = coalesce(hostname, 'host-' || lower(mac))"
        )
        spilled = counting.wal_reads  # the UPDATE itself may read back spilled pages
    assert counting.wal_reads == spilled, "the COMMIT re-read WAL frames (checksums redone)"
    target.close()
    reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("SELECT count(label) FROM hosts").fetchone() == (ROWS,)
    assert reader.execute("PRAGMA quick_check").fetchone() == ("ok",)
    reader.close()
