"""`test` (DESIGN §10): rehearsals on copies that name failing, irreversible and lossy ones."""

from __future__ import annotations

import json
import re
import tempfile
import time
from typing import TYPE_CHECKING

import apsw
import blake3
import pytest
from conftest import Appliance, create_table_migration
from templates import build_demo

from flywall.core import commands
from flywall.core.model import errors
from flywall.core.rehearsal import trial
from flywall.core.runtime.lock import Holder, WriterLock

if TYPE_CHECKING:
    from pathlib import Path

HOSTS = """\
-- The hosts table, with two hosts.
-- migrate:up
CREATE TABLE hosts (mac TEXT PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO hosts VALUES ('aa:bb', 'printer'), ('cc:dd', 'nas');
-- migrate:down
DROP TABLE hosts;
"""

# Deliberately lossy: up moves the hosts into an archive; down drops the archive and never
# moves them back. The schema comes back exactly; the data does not.
ARCHIVE_HOSTS = """\
-- Move hosts into an archive table.
-- migrate:up
CREATE TABLE hosts_archive (mac TEXT PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO hosts_archive SELECT mac, name FROM hosts;
DELETE FROM hosts;
-- migrate:down
DROP TABLE hosts_archive;
"""

INDEX_NO_DOWN = """\
-- Index host names (no down: irreversible).
-- migrate:up
CREATE INDEX idx_hosts_name ON hosts(name);
"""


@pytest.fixture
def lossy(appliance: Appliance) -> Appliance:
    """hosts applied for real (live data); a lossy and an irreversible migration pending."""
    appliance.write("202401010001_hosts.sql", HOSTS)
    commands.migrate(appliance.workspace())
    appliance.write("202401010002_archive_hosts.sql", ARCHIVE_HOSTS)
    create_table_migration(appliance, "202401010003", "notes")
    appliance.write("202401010004_index_hosts.sql", INDEX_NO_DOWN)
    return appliance


def file_digests(app: Appliance) -> dict[str, str]:
    ws = app.workspace()
    paths = (ws.paths.state_db, ws.paths.journal, ws.paths.config)
    return {p.name: blake3.blake3(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def test_rollback_names_a_lossy_down_and_an_irreversible_migration(
    lossy: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = file_digests(lossy)

    report = commands.test(lossy.workspace(), "rollback")

    outcomes = {s.version: s.outcome for s in report.steps}
    assert outcomes == {
        "202401010002": "lossy",
        "202401010003": "ok",
        "202401010004": "irreversible",
    }
    archive = report.steps[0]
    assert archive.problems == [
        "data digest after down differs from before up",
        "data digest after up → down → up differs from after the first up",
    ]
    assert (report.ok, report.exit_code) == (False, errors.EXIT_VALIDATION)
    assert file_digests(lossy) == before  # only a copy was touched
    assert not list(tmp_path.glob("flywall-sandbox-*"))


def test_cli_test_rollback_exits_4_naming_the_lossy_migration(lossy: Appliance) -> None:
    result = lossy.cli("test", "--rollback")

    assert result.returncode == 4, result.stderr
    assert "202401010002  database  lossy" in result.stdout
    assert "    data digest after down differs from before up\n" in result.stdout
    assert "irreversible: 202401010004\nlossy: 202401010002\n" in result.stdout
    as_json = json.loads(lossy.cli("test", "--rollback", "--json").stdout)
    assert [s["outcome"] for s in as_json["steps"]] == ["lossy", "ok", "irreversible"]


def test_a_reversible_plan_passes_the_rollback_test(appliance: Appliance) -> None:
    appliance.write("202401010001_hosts.sql", HOSTS)
    create_table_migration(appliance, "202401010002", "notes")

    report = commands.test(appliance.workspace(), "rollback")

    assert [(s.version, s.outcome) for s in report.steps] == [
        ("202401010001", "ok"),
        ("202401010002", "ok"),
    ]
    assert report.exit_code == 0


def test_a_failing_up_stops_the_rollback_test_and_skips_the_rest(appliance: Appliance) -> None:
    appliance.write(
        "202401010001_broken.sql", "-- Broken.\n-- migrate:up\nINSERT INTO nowhere VALUES (1);\n"
    )
    create_table_migration(appliance, "202401010002", "notes")

    report = commands.test(appliance.workspace(), "rollback")

    assert [s.outcome for s in report.steps] == ["failed", "skipped"]
    assert "no such table: nowhere" in (report.steps[0].error or "")
    assert report.exit_code == errors.EXIT_MIGRATION_FAILED


def test_with_data_applies_the_demo_to_a_copy_and_validates_it(tmp_path: Path) -> None:
    app = Appliance(tmp_path / "demo")
    build_demo(app.root, "seed")
    before = file_digests(app)

    result = app.cli("test", "--with-data", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    versions = [s["version"] for s in report["steps"]]
    assert {"202312010002", "202312010003", "202312010008", "202312010009"} <= set(versions)
    assert all(s["outcome"] == "ok" for s in report["steps"])
    assert {"journal chain", "integrity", "drift"} <= set(report["checks"])
    assert set(report["checks"].values()) == {"ok"}
    assert file_digests(app) == before
    assert commands.list_migrations(app.workspace(), applied=True) == []


def test_with_data_fails_a_migration_whose_verify_fails(appliance: Appliance) -> None:
    appliance.write(
        "202401010001_hosts.sql",
        HOSTS.replace(
            "-- migrate:down", "-- migrate:verify\nSELECT nickname FROM hosts;\n-- migrate:down"
        ),
    )

    report = commands.test(appliance.workspace(), "with-data")

    assert report.steps[0].outcome == "verify_failed"
    assert report.steps[0].problems == ["verify: SQLError: no such column: nickname"]
    assert report.exit_code == errors.EXIT_VALIDATION


def test_performance_prints_a_line_per_migration_with_rows_per_second(tmp_path: Path) -> None:
    app = Appliance(tmp_path / "demo")
    build_demo(app.root, "seed")

    result = app.cli("test", "--performance")

    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[:-1]}
    pending = [m.version for m in app.workspace().migrations]
    assert list(lines) == pending
    assert re.fullmatch(
        r"202312010003  database  ok            [\d.]+ ms, 200 rows, \d+ rows/s",
        lines["202312010003"],
    )
    assert ", 300 rows, " in lines["202312010008"]  # the state migration's records
    assert "rows" not in lines["202312010009"]  # api: a document, no rows
    assert result.stdout.splitlines()[-1] == "test --performance: ok"


def test_performance_counts_only_the_migrations_own_rows(appliance: Appliance) -> None:
    appliance.write("202401010001_hosts.sql", HOSTS)
    create_table_migration(appliance, "202401010002", "notes")

    report = commands.test(appliance.workspace(), "performance")

    assert [(s.version, s.rows) for s in report.steps] == [
        ("202401010001", 2),
        ("202401010002", 0),
    ]
    assert all(s.duration_ms and s.duration_ms > 0 for s in report.steps)


def test_isolation_runs_the_version_alone_on_a_fresh_store_up_and_down(
    lossy: Appliance,
) -> None:
    report = commands.test(lossy.workspace(), "isolation", "202401010003")

    assert report.prepared == []  # it depends on nothing: 0001 and 0002 are left out
    assert [(s.version, s.outcome, s.problems) for s in report.steps] == [
        ("202401010003", "ok", [])
    ]
    assert report.exit_code == 0
    with apsw.Connection(str(lossy.state_db)) as db:  # the live database kept its data
        assert db.execute("SELECT count(*) FROM hosts").fetchone() == (2,)


def test_isolation_names_a_down_that_leaves_schema_behind(appliance: Appliance) -> None:
    appliance.write("202401010001_hosts.sql", HOSTS)
    appliance.write(
        "202401010002_index_hosts.sql",
        "-- depends_on: 202401010001\n"
        + INDEX_NO_DOWN
        + "-- migrate:down\nSELECT 1;\n",  # a down that forgets the index
    )

    result = appliance.cli("test", "--isolation", "202401010002")

    assert result.returncode == 4
    assert result.stdout.startswith(
        "fresh store, with what 202401010002 depends on applied: 202401010001\n"
        "202401010002  database  lossy"
    )
    assert "schema fingerprint after down differs from before 202401010002" in result.stdout


def test_isolation_of_the_demo_s_first_database_migration(tmp_path: Path) -> None:
    app = Appliance(tmp_path / "demo")
    build_demo(app.root, "seed")

    report = commands.test(app.workspace(), "isolation", "202312010002")

    assert [(s.version, s.outcome) for s in report.steps] == [("202312010002", "ok")]


def test_cli_test_needs_exactly_one_mode(appliance: Appliance) -> None:
    for args in ((), ("--rollback", "--with-data"), ("--performance", "--isolation", "1")):
        result = appliance.cli("test", *args)
        assert result.returncode == 2
        assert "give exactly one of --with-data, --rollback" in result.stderr
    unknown = appliance.cli("test", "--isolation", "209901010001")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "FAILED: unknown migration 209901010001: no such file\n",
    )


def test_test_refuses_to_copy_while_a_run_holds_the_lock(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "notes")
    ws = appliance.workspace()
    holder = Holder(run_id="r1", command="migrate", pid=1, user="ops", since_ns=time.time_ns())

    with WriterLock(ws.paths.lock, holder), pytest.raises(errors.Busy, match="run r1"):
        trial.run(ws, "rollback")


def test_data_digest_ignores_row_order_but_not_values() -> None:
    a, b = apsw.Connection(":memory:"), apsw.Connection(":memory:")
    a.execute("CREATE TABLE t (x, y); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    b.execute("CREATE TABLE t (x, y); INSERT INTO t VALUES (2, 'b'), (1, 'a')")
    assert trial.data_digest(a) == trial.data_digest(b)
    b.execute("UPDATE t SET y = 'c' WHERE x = 2")
    assert trial.data_digest(a) != trial.data_digest(b)
    assert trial.data_digest(a, exclude=("t",)) == trial.data_digest(b, exclude=("t",))
