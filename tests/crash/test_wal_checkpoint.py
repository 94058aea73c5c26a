"""state.db's WAL checkpoint one commit late: alongside validate_after, never unbounded.

A commit that fills the WAL past SQLite's automatic threshold (1000 pages) leaves its copy
into the database pending; `DatabaseTarget.checkpointing` does it from a second
connection while validate_after's quick_check reads, `transaction` before the next
migration. Real files, real SQLite; the kill test cuts the CLI right after the copy, the\npower-cut test every I/O event around it (under the simulation it runs in-thread).
"""

from __future__ import annotations

import contextlib
import shutil
from typing import TYPE_CHECKING

import apsw
import pytest
from crashkit import check_after_cut, check_settled, killed, observe
from crashsim import vfs

from flywall.core.targets import database
from flywall.core.targets.database import DatabaseTarget

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

PAGE = 4096
BIG = 1500  # rows of ~4000 bytes: one page each, past the 1000-page threshold


def _fill(target: DatabaseTarget, table: str, rows: int = BIG) -> None:
    with target.transaction("database"):
        target.db.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, blob BLOB);"
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO {table} (blob) SELECT randomblob(4000) FROM n",
            (rows,),
        )


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _open(path: Path) -> DatabaseTarget:
    return DatabaseTarget(path, "schema_versions")


def test_a_big_commit_leaves_its_checkpoint_for_the_quick_check_alongside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    target = _open(path)
    before = path.stat().st_size
    _fill(target, "big")
    assert path.stat().st_size == before, "the COMMIT copied the WAL (SQLite's own checkpoint)"
    with target.checkpointing():
        (result,) = target.db.execute("PRAGMA quick_check").fetchone()
    assert result == "ok"
    assert path.stat().st_size >= before + BIG * PAGE, "checkpointing did not copy the WAL"
    target.close()
    assert not _wal(path).exists()
    reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("SELECT count(*) FROM big").fetchone() == (BIG,)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()


def test_small_commits_keep_sqlites_own_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    target = _open(path)
    _fill(target, "small", rows=10)
    with target.checkpointing():  # nothing pending: no second connection, no copy
        pass
    assert _wal(path).stat().st_size > 0
    target.close()


def test_a_pending_checkpoint_is_done_before_the_next_transaction(tmp_path: Path) -> None:
    """The WAL holds at most the pending commit and the next one, as bounded as before."""
    path = tmp_path / "state.db"
    target = _open(path)
    _fill(target, "first")
    first_wal = _wal(path).stat().st_size
    _fill(target, "second")
    # the first commit was copied before the second began, so the second reused its frames
    assert _wal(path).stat().st_size <= first_wal + 16 * PAGE
    _fill(target, "third")  # the second's copy was pending: done before this one
    assert _wal(path).stat().st_size <= first_wal + 16 * PAGE
    target.close()
    reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    for table in ("first", "second", "third"):
        assert reader.execute(f"SELECT count(*) FROM {table}").fetchone() == (BIG,)
    reader.close()


def test_a_commit_past_a_pending_one_checkpoints_inline(tmp_path: Path) -> None:
    """Commits outside `transaction` (a batched state migration's) are bounded by the hook."""
    path = tmp_path / "state.db"
    target = _open(path)
    _fill(target, "first")
    size = path.stat().st_size
    target.db.execute(
        "CREATE TABLE raw (blob BLOB);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) "
        "INSERT INTO raw SELECT randomblob(4000) FROM n"
    )
    assert path.stat().st_size >= size + BIG * PAGE, "the second commit past 1000 pages must copy"
    target.close()


LARGE = """\
-- A table rewritten past the WAL's 1000-page automatic checkpoint.
-- migrate:up
CREATE TABLE blobs (id INTEGER PRIMARY KEY, blob BLOB NOT NULL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
INSERT INTO blobs (blob) SELECT zeroblob(4000) FROM n;
-- migrate:down
DROP TABLE blobs;
"""


def test_a_kill_right_after_the_deferred_checkpoint_recovers(
    appliance: Appliance, tmp_path: Path
) -> None:
    appliance.write("202401010001_blobs.sql", LARGE)
    reference = tmp_path / "reference"
    shutil.copytree(appliance.root, reference)
    listing = tmp_path / "points.txt"
    done = appliance.cli("migrate", env={"FLYWALL_CRASH_LIST": str(listing)})
    assert done.returncode == 0, done.stderr
    assert "database-checkpointed 1" in listing.read_text().splitlines()
    expected = observe(appliance.root)

    cut = tmp_path / "cut"
    shutil.copytree(reference, cut)
    app = type(appliance)(cut)
    result = app.cli("migrate", env={"FLYWALL_CRASH_AT": "database-checkpointed"})
    assert killed(result), result.stderr
    assert check_after_cut(app.root) == []
    rerun = app.cli("migrate")
    assert rerun.returncode == 0, rerun.stderr
    assert check_settled(app.root, expected) == []
    db = apsw.Connection(str(app.state_db), flags=apsw.SQLITE_OPEN_READONLY)
    assert db.execute("SELECT count(*) FROM blobs").fetchone() == (1500,)
    db.close()


def _powercut_run(directory: Path, acked: list[str]) -> None:
    """A commit past the (lowered) threshold, its late checkpoint, another commit, close."""
    target = DatabaseTarget(directory / "state.db", "schema_versions", vfs=vfs.NAME)
    try:
        _fill(target, "first", rows=40)
        acked.append("first")
        assert target._deferred, "the late checkpoint is what this run is about"
        with target.checkpointing():
            target.db.execute("PRAGMA quick_check").fetchall()
        _fill(target, "second", rows=40)
        acked.append("second")
    finally:
        target.close()


@pytest.mark.parametrize("fate", ["drop", "tear", "reorder"])
def test_a_power_cut_around_the_late_checkpoint_loses_no_acknowledged_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fate: vfs.Fate
) -> None:
    """Every I/O event of the run (WAL appends, the late copy, the close) cut in turn."""
    monkeypatch.setattr(database, "_AUTOCHECKPOINT", 20)  # 40 pages defer, as 1000 would
    directory = tmp_path / "run"
    directory.mkdir()
    sim = vfs.start()
    _powercut_run(directory, [])
    sim.settle()
    assert any(path.endswith("state.db") for event, path in sim.log if event == "write")
    for k in range(1, sim.events + 2):
        shutil.rmtree(directory)
        directory.mkdir()
        acked: list[str] = []
        sim = vfs.start(k, fate, seed=k)
        with contextlib.suppress(apsw.Error):
            _powercut_run(directory, acked)
        sim.settle()
        db = apsw.Connection(str(directory / "state.db"))
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (k, fate)
        for table in acked:
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (40,), (k, table)
        db.close()
