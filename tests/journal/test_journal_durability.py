"""The rule: nothing reaches the journal's file without an fsync (issue 13, bug 2).

A derived cache written into the journal's file under `synchronous = OFF` let SQLite's
automatic checkpoint copy a whole run's events into the file without an fsync and then
drop the WAL that held them: a power cut after `migrate` exited 0 lost every event it
wrote. The rule is checked here on every connection of the process, readers included,
through a VFS made the default one, so no code path can open the journal around it:

- when the journal's WAL is restarted, truncated or deleted, every write to the journal's
  main file must already be synced (the checkpointed events live nowhere else then);
- when a command returns, no write to the journal's files is left unsynced.

The workflow runs every command that opens the journal, with a checkpoint threshold of two
pages so that checkpoints happen inside every command, as they do on a box with history.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import pytest
from conftest import lease_table_sql

from flywall.core import commands
from flywall.core.appliance.settings import load_settings
from flywall.core.appliance.workspace import SqliteOptions, Workspace
from flywall.core.model import errors
from flywall.core.services import validate

if TYPE_CHECKING:
    from collections.abc import Iterator

CONFIG = """\
schema_version = "1.0"
"""
SETTINGS = """\
migration {
  include_shipped = false
  backup_before = true
}
"""

LEASES = lease_table_sql(400)

RESHAPE = '''\
"""Reshape leases in batches of 10: forty journal appends each way."""
component = "state"
depends_on = ["202401010001"]


def up(ctx, records):
    records.transform("leases", lambda r: {"hw": r["mac"]}, batch_size=10)


def down(ctx, records):
    records.transform("leases", lambda r: {"mac": r["hw"]}, batch_size=10)
'''


class SyncWatch(apsw.VFS):
    """The process's default VFS while a test runs: tracks unsynced writes per file."""

    def __init__(self, journal: Path) -> None:
        self.journal = str(journal)
        self.unsynced: set[str] = set()
        self.violations: list[str] = []
        self.checked = 0
        super().__init__("syncwatch", "unix", makedefault=True)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> WatchedFile:  # noqa: N802 - APSW's name
        return WatchedFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802 - APSW's name
        if filename == f"{self.journal}-wal":
            self.wal_dropped("deleted")
        self.unsynced.discard(filename)
        super().xDelete(filename, syncdir)

    def wal_dropped(self, how: str) -> None:
        """The WAL's frames are about to be gone: the file must hold them durably."""
        self.checked += 1
        if self.journal in self.unsynced:
            self.violations.append(f"journal WAL {how} while the journal file has unsynced writes")

    def settled(self, command: str) -> None:
        """A command returned: nothing of the journal's may be waiting for an fsync."""
        left = sorted(p for p in self.unsynced if p.startswith(self.journal))
        if left:
            self.violations.append(f"{command}: unsynced writes left in {left}")


class WatchedFile(apsw.VFSFile):
    def __init__(self, vfs: SyncWatch, name: str | apsw.URIFilename | None, flags: list[int]):
        self.vfs = vfs
        self.path = name.filename() if isinstance(name, apsw.URIFilename) else (name or "")
        super().__init__("unix", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802 - APSW's name
        if self.path == f"{self.vfs.journal}-wal" and offset == 0 and self.xFileSize() > 0:
            self.vfs.wal_dropped("restarted")
        self.vfs.unsynced.add(self.path)
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:  # noqa: N802 - APSW's name
        if self.path == f"{self.vfs.journal}-wal":
            self.vfs.wal_dropped("truncated")
        self.vfs.unsynced.add(self.path)
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:  # noqa: N802 - APSW's name
        super().xSync(flags)
        self.vfs.unsynced.discard(self.path)


@pytest.fixture
def appliance(tmp_path: Path) -> Path:
    (tmp_path / "etc/flywall/migrations").mkdir(parents=True)
    (tmp_path / "etc/flywall/flywall.hcl").write_text(CONFIG)
    (tmp_path / "etc/flywall/migration.hcl").write_text(SETTINGS)
    migrations = tmp_path / "etc/flywall/migrations"
    (migrations / "202401010001_leases.sql").write_text(LEASES)
    (migrations / "202401010002_reshape.py").write_text(textwrap.dedent(RESHAPE))
    return tmp_path


@contextlib.contextmanager
def watched(journal: Path) -> Iterator[SyncWatch]:
    watch = SyncWatch(journal)
    try:
        yield watch
    finally:
        watch.unregister()


def every_command(ws: Workspace, watch: SyncWatch) -> None:
    """Each command that opens the journal, writers and readers, in an operator's order."""
    steps = [
        ("migrate", lambda: commands.migrate(ws)),
        ("status", lambda: commands.status(ws, verbose=True)),
        ("list", lambda: commands.list_migrations(ws)),
        ("history", lambda: commands.history(ws)),
        ("validate", lambda: validate.validate(ws)),
        ("journal verify", lambda: commands.journal_verify(ws)),
        ("dry run", lambda: commands.dry_run(ws)),
        ("backup create", lambda: commands.backup_create(ws)),
        ("rollback", lambda: commands.rollback(ws, version="202401010002")),
        ("recover", lambda: commands.recover(ws)),
        ("migrate again", lambda: commands.migrate(ws)),
        ("checksums", lambda: commands.checksums(ws)),
    ]
    for name, step in steps:
        with contextlib.suppress(errors.NothingToDo):
            step()
        watch.settled(name)


def test_no_write_reaches_the_journal_file_without_an_fsync(appliance: Path) -> None:
    settings = load_settings(appliance)
    ws = Workspace(settings, SqliteOptions(wal_autocheckpoint=2))
    with watched(settings.paths.journal) as watch:
        every_command(ws, watch)
    assert watch.checked > 10, "the workflow never checkpointed the journal: the rule was idle"
    assert watch.violations == []


def test_the_rule_catches_a_cache_written_without_sync(appliance: Path) -> None:
    """Negative control: the snapshot as it was written before the fix breaks the rule."""
    settings = load_settings(appliance)
    ws = Workspace(settings, SqliteOptions(wal_autocheckpoint=2))
    commands.migrate(ws)
    with watched(settings.paths.journal) as watch:
        journal = ws.write_journal()
        conn = journal.connection
        conn.execute("PRAGMA synchronous = OFF")
        for i in range(20):
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (name, seq, hash, body) VALUES (?, 0, '', ?)",
                (f"cache-{i}", b"x" * 8000),
            )
        journal.close()
        watch.settled("a cache write under synchronous = OFF")
    assert watch.violations
