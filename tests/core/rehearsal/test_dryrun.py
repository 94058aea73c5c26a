"""Dry run (DESIGN §7): the plan runs on copies; the appliance gains one audit event only."""

from __future__ import annotations

import json
import tempfile
from typing import TYPE_CHECKING

import blake3
import msgspec
import pytest
from conftest import Appliance, create_table_migration
from templates import build_demo

from flywall.core import commands
from flywall.core.appliance import demo
from flywall.core.model import events as ev
from flywall.core.model import projection
from flywall.core.rehearsal.dryrun import RecoveryNeeded
from flywall.core.runtime import snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from flywall.core.appliance.workspace import Workspace

CONFIG_MIGRATION = '''\
"""Set a login banner (a config migration of the test's own)."""

component = "config"


def up(ctx, config):
    config.body.set("banner", "Managed by the fleet")


def down(ctx, config):
    config.body.delete("banner")
'''

SQL_HEAD = "CREATE TABLE IF NOT EXISTS dns_cache ("  # 202312010002, a .sql migration
PYTHON_HEAD = "ALTER TABLE dhcp_leases ADD COLUMN hostname TEXT"  # 202312010003, a .py one


@pytest.fixture
def demo_tree(tmp_path: Path) -> Appliance:
    """The demo appliance plus a config migration, with the first migration applied."""
    app = Appliance(tmp_path / "demo")
    build_demo(app.root, "seed")
    app.write("209901010001_set_banner.py", CONFIG_MIGRATION)
    commands.migrate(app.workspace(), target="202312010002")
    return app


@pytest.fixture
def sandbox_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put every temp folder (the sandboxes) where the test can see it is cleaned up."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def digests(app: Appliance, *, tree: bool = True) -> dict[str, str]:
    """blake3 of each target file, and (with `tree`) the list of files in the appliance."""
    ws = app.workspace()
    found = {
        name: blake3.blake3(path.read_bytes()).hexdigest()
        for name, path in (
            ("state.db", ws.paths.state_db),
            ("flywall.hcl", ws.paths.config),
            ("api.json", ws.paths.api_document),
        )
    }
    if tree:
        found["tree"] = " ".join(sorted(str(p.relative_to(app.root)) for p in app.root.rglob("*")))
    return found


def journal_state(ws: Workspace) -> tuple[list[tuple[int, str]], projection.Projection]:
    journal = ws.read_journal()
    assert journal is not None
    with journal:
        rows = [(row.seq, row.kind) for row in journal.read()]
        return rows, snapshot.load(journal, use_snapshot=False)


def without_head(state: projection.Projection) -> dict[str, object]:
    fields = msgspec.to_builtins(state)
    del fields["seq"], fields["head_hash"]
    return fields


def test_dry_run_changes_no_target_and_journals_exactly_one_event(
    demo_tree: Appliance, sandbox_tmp: Path
) -> None:
    """Every target stays byte-identical; the journal gains one DryRunPerformed and its
    projection (every migration's state, runs, fingerprints) is otherwise unchanged."""
    ws = demo_tree.workspace()
    files_before = digests(demo_tree)
    rows_before, state_before = journal_state(ws)

    report = commands.dry_run(ws)

    assert report.ok
    assert digests(demo_tree) == files_before
    rows_after, state_after = journal_state(ws)
    assert rows_after[:-1] == rows_before
    assert rows_after[-1] == (len(rows_before) + 1, "DryRunPerformed")
    assert report.journal_seq == rows_after[-1][0]
    assert without_head(state_after) == without_head(state_before)
    event = ev.decode(next(ws.read_journal().read(after=len(rows_before))).body)
    assert isinstance(event, ev.DryRunPerformed)
    assert event.planned == report.planned == [s.version for s in report.steps]
    assert event.ok
    assert list(sandbox_tmp.iterdir()) == []  # the sandbox removed itself


def test_dry_run_reports_the_sql_of_each_migration_and_the_diffs(demo_tree: Appliance) -> None:
    report = commands.dry_run(demo_tree.workspace())

    steps = {s.version: s for s in report.steps}
    assert "202312010002" not in steps  # already applied: not in the plan
    assert {s.component for s in report.steps} == {"database", "state", "config", "api"}
    sql = {v: [st.sql for st in s.sql] for v, s in steps.items()}
    assert PYTHON_HEAD in sql["202312010003"]
    reshape = [st for st in steps["202312010008"].sql if st.sql.startswith('UPDATE "lease_r')]
    assert [st.times for st in reshape] == [1]  # one UPDATE per key range (batch_size 500)
    assert steps["202312010008"].log == [f"reshaped {demo.LEASES} lease record(s)"]
    everything = " ".join(s for lines in sql.values() for s in lines)
    for engine_own in ("flywall_migration_markers", "flywall_batches", "BEGIN", "COMMIT"):
        assert engine_own not in everything
    assert all(not s.sql for s in report.steps if s.component in ("config", "api"))
    assert all(s.duration_ms > 0 for s in report.steps)
    assert steps["202312010003"].log == ["filled hostname on 200 lease(s) from dhcp_hosts"]
    assert "+CREATE TABLE dhcp_leases" in report.schema_diff
    assert "hostname TEXT, vendor_class TEXT" in report.schema_diff
    assert '+banner = "Managed by the fleet"\n' in report.config_diff
    assert '-      "route": "/api/v1/alerts",' in report.api_diff


def test_cli_dry_run_prints_sql_indented_under_each_migration_then_the_diffs(
    tmp_path: Path,
) -> None:
    app = Appliance(tmp_path / "demo")
    build_demo(app.root, "seed")
    app.write("209901010001_set_banner.py", CONFIG_MIGRATION)
    before = digests(app, tree=False)  # the journal is created: it holds the audit event

    result = app.cli("migrate", "--dry-run")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("== ")
    assert "\n== 202312010002 database (" in out
    assert f"\n    {SQL_HEAD}\n        id INTEGER PRIMARY KEY AUTOINCREMENT," in out
    assert f"\n    {PYTHON_HEAD};\n" in out
    assert '\n    UPDATE "lease_records" SET "data" = CAST(flywall_record_value("rowid")' in out
    assert out.index("== 202312010003") < out.index(PYTHON_HEAD) < out.index("== 202312010008")
    assert "\n-- schema diff\n--- " in out
    assert "\n+CREATE TABLE dns_cache ( id INTEGER PRIMARY KEY AUTOINCREMENT," in out
    assert '\n+banner = "Managed by the fleet"\n' in out
    assert "\ndry run ok; nothing changed (journaled as seq 1, run " in out
    assert digests(app, tree=False) == before
    listing = json.loads(app.cli("history", "--json").stdout)
    assert [e["kind"] for e in listing] == ["DryRunPerformed"]

    as_json = json.loads(app.cli("migrate", "--dry-run", "--json").stdout)
    assert as_json["ok"] is True
    assert as_json["planned"] == [s["version"] for s in as_json["steps"]]
    steps = {s["version"]: s for s in as_json["steps"]}
    assert {"sql": PYTHON_HEAD, "times": 1} in steps["202312010003"]["sql"]


def test_dry_run_true_in_settings_makes_migrate_a_dry_run(appliance: Appliance) -> None:
    appliance.configure("dry_run = true\n")
    create_table_migration(appliance, "202401010001", "hosts")

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert "    CREATE TABLE hosts (id INTEGER PRIMARY KEY, name TEXT);\n" in result.stdout
    assert "dry run ok" in result.stdout
    rows = commands.list_migrations(appliance.workspace())
    assert [r.state for r in rows] == ["pending"]
    assert not appliance.state_db.exists()


def test_a_failing_migration_is_reported_exits_1_and_still_journals_one_event(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.write(
        "202401010002_broken.sql",
        """\
        -- Refers to a table that does not exist.
        -- migrate:up
        INSERT INTO nowhere VALUES (1);
        """,
    )

    result = appliance.cli("migrate", "--dry-run", "--json")

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [s["ok"] for s in report["steps"]] == [True, False]
    assert "no such table: nowhere" in report["steps"][1]["error"]
    assert "202401010002" in report["error"]
    events = commands.history(appliance.workspace())
    assert [(e["kind"], e["ok"]) for e in events] == [("DryRunPerformed", False)]
    assert not appliance.state_db.exists()


def test_dry_run_refuses_when_recovery_would_be_needed(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    cut = appliance.cli("migrate", env={"FLYWALL_CRASH_AT": "database-after-commit:1"})
    assert cut.returncode < 0  # killed mid-run: 202401010001 is left running
    ws = appliance.workspace()
    rows_before, state = journal_state(ws)
    (interrupted_run,) = state.open_runs

    with pytest.raises(RecoveryNeeded, match="202401010001"):
        commands.dry_run(ws)

    assert journal_state(ws)[0] == rows_before
    result = appliance.cli("migrate", "--dry-run")
    assert result.returncode == 4
    assert result.stderr.startswith(
        f"FAILED: dry run refused: migration 202401010001, run {interrupted_run} interrupted"
    )


def test_nothing_pending_is_still_one_audit_event(appliance: Appliance) -> None:
    report = commands.dry_run(appliance.workspace())

    assert (report.ok, report.planned, report.steps) == (True, [], [])
    assert [e["kind"] for e in commands.history(appliance.workspace())] == ["DryRunPerformed"]
