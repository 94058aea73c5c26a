"""How a backup copies state.db: byte for byte under its write lock, or by SQLite's backup API.

Real databases in tmp_path, real second connections holding real locks and snapshots: the
copy must hold every committed row (also ones still only in the WAL), be a plain
rollback-mode database that passes `integrity_check`, and match its manifest digest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import apsw
import pytest
from crashkit import observe

from flywall.core import commands
from flywall.core.runtime import fileio
from flywall.core.services import backup
from flywall.core.targets import dbcopy

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance


def fill(db: apsw.Connection, rows: int, start: int = 0) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, body BLOB);"
        "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "INSERT INTO blobs SELECT x, randomblob(700) FROM c",
        (start + 1, start + rows),
    )


def wal_database(app: Appliance) -> apsw.Connection:
    """state.db in WAL mode with committed rows left in the WAL (no checkpoint yet)."""
    app.state_db.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(app.state_db))
    db.execute("PRAGMA journal_mode = WAL").fetchall()
    db.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
    fill(db, 2000)
    assert app.state_db.with_name("state.db-wal").stat().st_size > 0
    return db


def backed_up(app: Appliance, backup_id: str = "b1") -> tuple[backup.Manifest, Path]:
    ws = app.workspace()
    manifest = backup.create(ws, backup_id, journal_seq=0, applied=[], reason="test")
    assert backup.verify(ws, manifest) == []
    return manifest, ws.paths.backups / backup_id / "state.db"


def rows_of(path: Path) -> list[tuple[int, bytes]]:
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT id, body FROM blobs ORDER BY id").fetchall()
    finally:
        db.close()


def test_rows_still_in_the_wal_are_in_the_copy(appliance: Appliance) -> None:
    db = wal_database(appliance)
    expected = db.execute("SELECT id, body FROM blobs ORDER BY id").fetchall()

    manifest, copy = backed_up(appliance)

    assert rows_of(copy) == expected
    item = manifest.items[0]
    assert (item.name, item.size) == ("state.db", copy.stat().st_size)
    assert item.digest == backup.file_digest(copy)
    header = copy.read_bytes()[:100]
    assert header[18:20] == b"\x01\x01", "the copy is a rollback-mode database"
    # the live database is still in WAL mode and still has its rows
    assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    assert db.execute("SELECT count(*) FROM blobs").fetchall() == [(2000,)]
    db.close()


def test_the_copy_is_the_live_file_byte_for_byte_but_the_journal_mode(appliance: Appliance) -> None:
    wal_database(appliance).close()  # closing checkpoints: the main file is the database
    live = appliance.state_db.read_bytes()

    _, copy = backed_up(appliance)

    copied = copy.read_bytes()
    assert copied[:18] == live[:18]
    assert copied[20:] == live[20:]


def test_a_rollback_mode_database_is_copied_unchanged(appliance: Appliance) -> None:
    appliance.state_db.parent.mkdir(parents=True)
    db = apsw.Connection(str(appliance.state_db))
    db.execute("PRAGMA journal_mode = DELETE").fetchall()
    fill(db, 500)
    db.close()

    _, copy = backed_up(appliance)

    assert copy.read_bytes() == appliance.state_db.read_bytes()


def test_a_reader_on_an_old_snapshot_leaves_the_copy_whole(appliance: Appliance) -> None:
    """The checkpoint cannot pass the reader's snapshot: the online backup API copies."""
    db = wal_database(appliance)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    reader = apsw.Connection(str(appliance.state_db))
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM blobs").fetchall() == [(2000,)]
    fill(db, 300, start=2000)  # committed after the reader's snapshot: only in the WAL
    expected = db.execute("SELECT id, body FROM blobs ORDER BY id").fetchall()

    _, copy = backed_up(appliance)

    assert len(rows_of(copy)) == 2300
    assert rows_of(copy) == expected
    reader.execute("COMMIT")
    reader.close()
    db.close()


def test_a_writer_holding_the_lock_past_the_timeout_leaves_the_copy_whole(
    appliance: Appliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lock within the timeout: the online backup API copies what is committed."""
    monkeypatch.setattr(dbcopy, "BUSY_MS", 50)
    db = wal_database(appliance)
    committed = db.execute("SELECT id, body FROM blobs ORDER BY id").fetchall()
    writer = apsw.Connection(str(appliance.state_db))
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM blobs WHERE id > 10")  # not committed: not in the backup

    _, copy = backed_up(appliance)

    assert rows_of(copy) == committed
    writer.execute("ROLLBACK")
    writer.close()
    db.close()


def test_a_restore_from_a_byte_copy_brings_back_every_row(appliance: Appliance) -> None:
    db = wal_database(appliance)
    expected = db.execute("SELECT id, body FROM blobs ORDER BY id").fetchall()
    manifest, _ = backed_up(appliance)
    db.execute("DELETE FROM blobs WHERE id % 2 = 0")
    db.close()

    backup.restore_items(appliance.workspace(), manifest)

    assert rows_of(appliance.state_db) == expected


def test_a_changed_byte_in_the_copy_is_found_by_verify(appliance: Appliance) -> None:
    wal_database(appliance).close()
    manifest, copy = backed_up(appliance)
    with copy.open("r+b") as f:
        f.seek(copy.stat().st_size - 10)
        f.write(b"\xff")

    assert backup.verify(appliance.workspace(), manifest) == [
        f"{copy}: digest differs from the manifest"
    ]


def test_migrate_checkpoints_and_copies_under_a_named_crash_point(
    appliance: Appliance, tmp_path: Path
) -> None:
    """The checkpoint is a side effect on state.db: it has a crash point (killed there, the
    rerun ends where an uninterrupted run ends)."""
    wal_database(appliance).close()
    appliance.write("202401010001_t.sql", "-- migrate:up\nCREATE TABLE t (x);\n")
    points = tmp_path / "points.txt"
    killed = appliance.cli(
        "migrate",
        env={"FLYWALL_CRASH_LIST": str(points), "FLYWALL_CRASH_AT": "backup-state-checkpointed"},
    )
    assert killed.returncode in (-9, 137), killed.stderr
    assert "backup-state-checkpointed" in points.read_text()
    assert rows_of(appliance.state_db)  # state.db whole, its rows there

    appliance.migrate()
    assert observe(appliance.root).states == {"202401010001": "applied"}
    (kept,) = commands.backup_list(appliance.workspace())
    assert kept.ok


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "buffer"])
@pytest.mark.parametrize("size", [0, 1, 4095, fileio.CHUNK + 3])
def test_each_copy_method_copies_exactly_the_range(tmp_path: Path, method: str, size: int) -> None:
    data = os.urandom(size + 100)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert fileio.copy_range(src, dst, size, (method,)) == method
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == data[:size]


def test_a_source_shorter_than_the_range_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 100)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="source ended at byte 100 of 200"):
            fileio.copy_range(src, dst, 200)
    finally:
        os.close(src)
        os.close(dst)


def test_alongside_runs_once_while_the_copy_holds_the_write_lock(appliance: Appliance) -> None:
    """validate_before runs during the copy: no writer can change what it checks."""
    wal_database(appliance).close()
    calls: list[str] = []

    def check() -> None:
        other = apsw.Connection(str(appliance.state_db))
        other.set_busy_timeout(0)
        (count,) = other.execute("SELECT count(*) FROM blobs").fetchone()  # readers go on
        with pytest.raises(apsw.BusyError):
            other.execute("INSERT INTO blobs (body) VALUES (x'00')")
        other.close()
        calls.append(f"checked {count}")

    ws = appliance.workspace()
    backup.create(ws, "b1", journal_seq=0, applied=[], reason="t", alongside=check)

    assert calls == ["checked 2000"]


def test_a_failing_alongside_wins_and_leaves_no_backup(appliance: Appliance) -> None:
    wal_database(appliance).close()

    class Refused(Exception):
        pass

    def check() -> None:
        raise Refused("validate_before failed: integrity: bad page")

    ws = appliance.workspace()
    with pytest.raises(Refused):
        backup.create(ws, "b1", journal_seq=0, applied=[], reason="t", alongside=check)
    assert list(ws.paths.backups.iterdir()) == []


def test_alongside_still_runs_first_when_the_backup_cannot_be_written(
    appliance: Appliance, tmp_path: Path
) -> None:
    """A backup that fails before the copy: the check still speaks first, as it used to."""
    wal_database(appliance).close()
    appliance.configure('backup_location = "/blocked/backups"\n')
    (appliance.root / "blocked").write_text("a file where the folder should be")
    calls: list[int] = []
    ws = appliance.workspace()

    with pytest.raises(backup.BackupFailed, match="nothing was changed"):
        backup.create(
            ws, "b1", journal_seq=0, applied=[], reason="t", alongside=lambda: calls.append(1)
        )
    assert calls == [1]

    def refuse() -> None:
        raise backup.ValidationFailed("validate_before failed: drift")

    with pytest.raises(backup.ValidationFailed, match="drift"):
        backup.create(ws, "b1", journal_seq=0, applied=[], reason="t", alongside=refuse)


VERIFIED = """\
-- A table that must keep its one row.
-- migrate:up
CREATE TABLE kept (x);
INSERT INTO kept VALUES (1);
-- migrate:down
DROP TABLE kept;
-- migrate:verify
SELECT CASE WHEN count(*) = 1 THEN 1 ELSE json('not json: kept lost its row') END FROM kept;
"""


def test_a_failing_validate_before_stops_the_run_with_no_backup_and_no_change(
    appliance: Appliance,
) -> None:
    appliance.write("202401010001_kept.sql", VERIFIED)
    appliance.migrate()
    (first,) = commands.backup_list(appliance.workspace())
    db = apsw.Connection(str(appliance.state_db))
    db.execute("DELETE FROM kept")  # behind the journal's back: the verify now fails
    db.close()
    appliance.write("202401010002_t.sql", "-- migrate:up\nCREATE TABLE t (x);\n")

    result = appliance.cli("migrate")

    assert result.returncode == 4, result.stderr
    assert "validate_before failed: verify 202401010001" in result.stderr
    assert [b.backup_id for b in commands.backup_list(appliance.workspace())] == [first.backup_id]
    assert list(appliance.workspace().paths.backups.iterdir()) == [
        appliance.workspace().paths.backups / first.backup_id
    ]
    assert observe(appliance.root).states == {"202401010001": "applied"}
    db = apsw.Connection(str(appliance.state_db))
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == []
    db.close()
    last_run = commands.history(appliance.workspace())[-3:]
    assert [e["kind"] for e in last_run] == ["RunStarted", "ValidationPerformed", "RunFinished"]
