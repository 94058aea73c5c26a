"""The run's backup and validate_before made beside its first step (core/runtime/overlap.py).

Each test runs the real CLI and reads what it left: the crash-point listing says which
order ran (`beside-backup-step-done` is reached only there), the backup's copy says what was
copied, and the journal must read exactly as in the sequential order.
"""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
from conftest import Appliance

from flywall.core.services import backup

PEERS = """\
-- Peers, 200 of them, each pointing at a zone.
-- migrate:up
CREATE TABLE zones (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO zones (name) VALUES ('lan');
CREATE TABLE peers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, zone INTEGER REFERENCES zones);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO peers (name, zone) SELECT printf('peer-%03d', i), 1 FROM n;
-- migrate:down
DROP TABLE peers;
DROP TABLE zones;
"""

LABEL = """\
-- Label every peer.
-- migrate:up
ALTER TABLE peers ADD COLUMN label TEXT;
UPDATE peers SET label = upper(name);
-- migrate:down
ALTER TABLE peers DROP COLUMN label;
"""

DUPLICATE_IDS = """\
-- Renames every peer, then takes one primary key twice.
-- migrate:up
UPDATE peers SET name = name || '!';
UPDATE peers SET id = 1;
-- migrate:down
SELECT 1;
"""

LABEL_IN_PYTHON = '''\
"""Label every peer, in Python."""
component = "database"


def up(ctx, db):
    db.execute("ALTER TABLE peers ADD COLUMN label TEXT")


def down(ctx, db):
    db.execute("ALTER TABLE peers DROP COLUMN label")
'''

COUNT = """\
-- A second step: the run goes on after the one beside the backup.
-- migrate:up
CREATE TABLE peer_count AS SELECT count(*) AS n FROM peers;
-- migrate:down
DROP TABLE peer_count;
"""

BESIDE = "beside-backup-step-done"


def with_peers(tmp_path: Path, settings: str = "") -> Appliance:
    """A box whose state.db exists and holds 200 peers (applied by an earlier run)."""
    app = Appliance(tmp_path / "box")
    app.configure(settings)
    app.write("202401010001_peers.sql", PEERS)
    if "custom" in settings:
        app.write("_strategy.py", "def order(plan, migrations):\n    return list(plan)\n")
    app.migrate()
    return app


def break_a_foreign_key(app: Appliance) -> None:
    """A peer in a zone that does not exist: validate_before's foreign_key_check fails."""
    db = apsw.Connection(str(app.state_db))
    db.execute("INSERT INTO peers (name, zone) VALUES ('stray', 99)")  # foreign_keys are off
    db.close()


def migrate(app: Appliance, tmp_path: Path) -> tuple[int, str, list[str]]:
    """Run `migrate`; return its exit code, stderr and the crash points it reached."""
    listing = tmp_path / "points.txt"
    listing.unlink(missing_ok=True)
    result = app.cli("migrate", env={"FLYWALL_CRASH_LIST": str(listing)})
    points = [line.split()[0] for line in listing.read_text().splitlines()]
    return result.returncode, result.stderr, points


def last_run(app: Appliance) -> list[dict[str, object]]:
    """The events of the newest run, RunStarted first."""
    events = json.loads(app.cli("history", "--json").stdout)
    start = max(i for i, e in enumerate(events) if e["kind"] == "RunStarted")
    return events[start:]


def kinds(events: list[dict[str, object]]) -> list[str]:
    return [f"{e['kind']} {e.get('migration') or ''}".strip() for e in events]


def run_backups(app: Appliance) -> list[str]:
    """Every folder in the backup location, partial ones included."""
    folder = app.root / "var/lib/flywall/migration-backups"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_the_backup_made_beside_the_first_step_holds_the_database_before_it(
    tmp_path: Path,
) -> None:
    app = with_peers(tmp_path)
    before = run_backups(app)
    app.write("202401010002_label.sql", LABEL)
    app.write("202401010003_count.sql", COUNT)

    code, stderr, points = migrate(app, tmp_path)

    assert code == 0, stderr
    assert BESIDE in points
    assert points.index("backup-state-copied") < points.index("database-before-commit")
    assert query(app.state_db, "SELECT count(label) FROM peers") == [(200,)]
    (new,) = set(run_backups(app)) - set(before)
    manifest = backup.read_manifest(app.workspace(), new)
    assert backup.verify(app.workspace(), manifest) == []
    copy = app.root / "var/lib/flywall/migration-backups" / new / "state.db"
    columns = [row[1] for row in query(copy, "PRAGMA table_info(peers)")]
    assert columns == ["id", "name", "zone"]  # copied before the step's commit
    assert query(copy, "SELECT count(*) FROM peers") == [(200,)]
    assert query(copy, "PRAGMA journal_mode") == [("delete",)]
    events = last_run(app)
    assert kinds(events) == [
        "RunStarted",
        "ValidationPerformed",
        "BackupCreated",
        "MigrationStarted 202401010002",
        "MigrationApplied 202401010002",
        "MigrationStarted 202401010003",
        "MigrationApplied 202401010003",
        "ValidationPerformed",
        "RunFinished",
    ]
    assert events[1]["phase"] == "validate_before"
    assert events[1]["ok"] is True
    assert events[2]["backup_id"] == new
    assert app.cli("journal", "verify").returncode == 0


def test_a_step_that_fails_beside_the_backup_is_undone_and_journaled_after_it(
    tmp_path: Path,
) -> None:
    app = with_peers(tmp_path)
    before = run_backups(app)
    app.write("202401010002_duplicate_ids.sql", DUPLICATE_IDS)

    code, stderr, points = migrate(app, tmp_path)

    assert code == 1
    assert "202401010002" in stderr
    assert "UNIQUE constraint failed" in stderr
    assert BESIDE not in points  # the step failed before it could be ready to commit
    assert "backup-completed" in points
    assert query(app.state_db, "SELECT count(*) FROM peers WHERE name LIKE '%!'") == [(0,)]
    (new,) = set(run_backups(app)) - set(before)
    assert backup.verify(app.workspace(), backup.read_manifest(app.workspace(), new)) == []
    assert kinds(last_run(app)) == [
        "RunStarted",
        "ValidationPerformed",
        "BackupCreated",
        "MigrationStarted 202401010002",
        "MigrationFailed 202401010002",
        "RunFinished",
    ]
    assert json.loads(app.cli("list", "--json").stdout)[-1]["state"] == "failed"


def test_validate_before_failing_beside_the_step_undoes_it_and_keeps_no_backup(
    tmp_path: Path,
) -> None:
    app = with_peers(tmp_path)
    break_a_foreign_key(app)
    before = run_backups(app)
    app.write("202401010002_label.sql", LABEL)

    code, stderr, points = migrate(app, tmp_path)

    assert code == 4, stderr
    assert "validate_before failed: foreign keys: 1 violation(s)" in stderr
    assert BESIDE in points  # the check ran beside the step, which then waited for it
    assert run_backups(app) == before  # neither a partial nor a complete copy is left
    columns = [row[1] for row in query(app.state_db, "PRAGMA table_info(peers)")]
    assert "label" not in columns
    events = last_run(app)
    assert kinds(events) == ["RunStarted", "ValidationPerformed", "RunFinished"]
    assert events[1]["ok"] is False
    assert json.loads(app.cli("list", "--json").stdout)[-1]["state"] == "pending"


def test_without_a_backup_validate_before_alone_runs_beside_the_first_step(
    tmp_path: Path,
) -> None:
    app = with_peers(tmp_path, "backup_before = false\n")
    before = run_backups(app)
    app.write("202401010002_label.sql", LABEL)

    code, stderr, points = migrate(app, tmp_path)

    assert code == 0, stderr
    assert BESIDE in points
    assert not any(p.startswith("backup-") for p in points)
    assert run_backups(app) == before
    events = last_run(app)
    assert kinds(events) == [
        "RunStarted",
        "ValidationPerformed",
        "MigrationStarted 202401010002",
        "MigrationApplied 202401010002",
        "ValidationPerformed",
        "RunFinished",
    ]
    assert events[1]["phase"] == "validate_before"


def test_without_a_backup_a_failing_check_beside_the_step_undoes_it(tmp_path: Path) -> None:
    app = with_peers(tmp_path, "backup_before = false\n")
    break_a_foreign_key(app)
    app.write("202401010002_label.sql", LABEL)

    code, stderr, points = migrate(app, tmp_path)

    assert code == 4, stderr
    assert "validate_before failed: foreign keys: 1 violation(s)" in stderr
    assert BESIDE in points
    assert "label" not in [row[1] for row in query(app.state_db, "PRAGMA table_info(peers)")]
    assert kinds(last_run(app)) == ["RunStarted", "ValidationPerformed", "RunFinished"]


ENDLESS = """\
-- Counts without end: only an interrupt stops it.
-- migrate:up
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n;
-- migrate:down
SELECT 1;
"""


def test_a_check_that_fails_beside_the_step_stops_its_sql(tmp_path: Path) -> None:
    """The step's SQL is interrupted as soon as the check fails: it does not run to its end
    (here it has none) only to be undone."""
    app = with_peers(tmp_path)  # timeout: the default 30 minutes
    break_a_foreign_key(app)
    app.write("202401010002_endless.sql", ENDLESS)

    code, stderr, points = migrate(app, tmp_path)  # the CLI's own 60 s limit would fail it

    assert code == 4, stderr
    assert "validate_before failed: foreign keys: 1 violation(s)" in stderr
    assert "backup-state-checkpointed" in points  # the copy had begun beside the step
    assert kinds(last_run(app)) == ["RunStarted", "ValidationPerformed", "RunFinished"]


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("a Python step first", ""),
        ("state.db in rollback-journal mode", ""),
        ("no backup, no validate_before", "backup_before = false\nvalidate_before = false\n"),
        ("the custom strategy", 'strategy = "custom"\n'),
    ],
)
def test_only_a_sql_step_of_the_schema_on_a_wal_state_db_runs_beside_the_backup(
    tmp_path: Path, case: str, settings: str
) -> None:
    app = with_peers(tmp_path, settings)
    if case == "a Python step first":
        app.write("202401010002_label.py", LABEL_IN_PYTHON)
    else:
        app.write("202401010002_label.sql", LABEL)
    if case == "state.db in rollback-journal mode":
        db = apsw.Connection(str(app.state_db))
        db.execute("PRAGMA journal_mode = DELETE").fetchall()
        db.close()

    code, stderr, points = migrate(app, tmp_path)

    assert code == 0, stderr
    assert BESIDE not in points
    assert "label" in [row[1] for row in query(app.state_db, "PRAGMA table_info(peers)")]
    sequential = ["RunStarted", "ValidationPerformed", "BackupCreated", "MigrationStarted"]
    if case.startswith("no backup"):
        sequential = ["RunStarted", "MigrationStarted"]
    assert [k.split()[0] for k in kinds(last_run(app))][: len(sequential)] == sequential
