"""`backup create`: a backup on the operator's word, journaled as its own run, kill-safe.

Real subprocesses of the CLI on a real appliance tree; the crash test kills the command at
the crash points it reaches (a sample; every one under FLYWALL_TORTURE=long) and checks
what is left: no partial backup survives recovery, every journaled backup exists whole,
and the next `backup create` works.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import pytest
from conftest import Appliance, create_table_migration
from crashkit import check_after_cut, killed, sample

from flywall.core import commands
from flywall.core.services import backup
from flywall.journal import Journal

if TYPE_CHECKING:
    from pathlib import Path


def applied(app: Appliance) -> Appliance:
    create_table_migration(app, "202401010001", "peers")
    app.migrate()
    (app.root / "var/lib/flywall/api.json").write_text('{"clients": []}\n')
    return app


def events(app: Appliance) -> list[tuple[str, str, dict]]:
    """(kind, run_id, event as history --json shows it), oldest first (read in this process)."""
    return [(e["kind"], e["run_id"], e) for e in commands.history(app.workspace())]


def test_create_backs_up_every_target_verified_and_journaled(appliance: Appliance) -> None:
    app = applied(appliance)
    result = app.cli("backup", "create", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["ok"] is True
    assert row["items"] == ["state.db", "flywall.hcl", "api.json"]
    assert row["reason"] == "operator: backup create"

    folder = app.root / "var/lib/flywall/migration-backups" / row["backup_id"]
    assert (folder / "api.json").read_text() == '{"clients": []}\n'
    listed = json.loads(app.cli("backup", "list", "--json").stdout)
    assert [b["backup_id"] for b in listed][-1] == row["backup_id"]

    run = [e for e in events(app) if e[1] == row["backup_id"]]
    assert [kind for kind, _, _ in run] == ["RunStarted", "BackupCreated", "RunFinished"]
    assert run[0][2]["command"] == "backup create"
    assert run[1][2]["backup_id"] == row["backup_id"]
    assert run[2][2]["outcome"] == "completed"


def test_the_backup_restores_what_was_there_when_it_was_taken(appliance: Appliance) -> None:
    app = applied(appliance)
    result = app.cli("backup", "create")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created backup ")
    assert result.stdout.rstrip().endswith("check ok")
    backup_id = result.stdout.split()[2]

    api = app.root / "var/lib/flywall/api.json"
    api.write_text('{"clients": ["changed by hand"]}\n')
    restored = app.cli("backup", "restore", backup_id, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert api.read_text() == '{"clients": []}\n'


def test_no_verify_says_the_copies_were_not_checked(appliance: Appliance) -> None:
    app = applied(appliance)
    text = app.cli("backup", "create", "--no-verify")
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().endswith("check not verified")
    row = json.loads(app.cli("backup", "create", "--no-verify", "--json").stdout)
    assert row["ok"] is None
    # the copies are whole all the same: list checks them against the manifest
    listed = json.loads(app.cli("backup", "list", "--json").stdout)
    assert [b["ok"] for b in listed] == [True, True, True]  # migrate's, and these two


def test_on_a_fresh_box_the_backup_holds_what_exists(appliance: Appliance) -> None:
    """No journal, no state.db yet: the backup copies the config and records the rest absent.

    Restoring it later would then remove a state.db or api.json made since, as it should.
    """
    result = appliance.cli("backup", "create", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["ok"] is True
    manifest = backup.read_manifest(appliance.workspace(), row["backup_id"])
    assert {i.name: i.absent for i in manifest.items} == {
        "state.db": True,
        "flywall.hcl": False,
        "api.json": True,
    }
    folder = appliance.root / "var/lib/flywall/migration-backups" / row["backup_id"]
    assert (folder / "flywall.hcl").read_bytes() == (
        appliance.root / "etc/flywall/flywall.hcl"
    ).read_bytes()
    assert not (folder / "state.db").exists()


def crash_points(app: Appliance, tmp_path: Path) -> list[str]:
    listing = tmp_path / "points.txt"
    assert app.cli("backup", "create", env={"FLYWALL_CRASH_LIST": str(listing)}).returncode == 0
    return [line.replace(" ", ":") for line in listing.read_text().splitlines()]


@pytest.mark.torture
def test_a_kill_anywhere_in_create_leaves_only_whole_journaled_backups(
    tmp_path: Path,
) -> None:
    template = Appliance(tmp_path / "template")
    template.configure()
    template.migrations_dir.mkdir(parents=True)
    applied(template)
    probe = Appliance(tmp_path / "probe")
    shutil.copytree(template.root, probe.root)
    points = crash_points(probe, tmp_path)
    for expected in ("backup-state-checkpointed", "backup-written", "backup-completed"):
        assert any(p.startswith(expected) for p in points), points

    chosen = sample(points)
    for i, point in enumerate(chosen):
        app = Appliance(tmp_path / f"cut-{i}")
        shutil.copytree(template.root, app.root)
        cut = app.cli("backup", "create", env={"FLYWALL_CRASH_AT": point})
        assert killed(cut), f"{point} was listed but not reached: {cut.stderr}"
        assert check_after_cut(app.root) == [], point

        assert app.cli("recover").returncode == 0, point
        folder = app.root / "var/lib/flywall/migration-backups"
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")], point
        ws = app.workspace()
        for manifest in backup.list_backups(ws):
            assert backup.verify(ws, manifest) == [], (point, manifest.backup_id)
        with Journal.open_existing(ws.paths.journal) as journal:
            journal.verify()
        history = events(app)
        journaled = {e["backup_id"] for kind, _, e in history if kind == "BackupCreated"}
        assert journaled <= {m.backup_id for m in backup.list_backups(ws)}, point
        started = {run for kind, run, _ in history if kind == "RunStarted"}
        finished = {run for kind, run, _ in history if kind == "RunFinished"}
        assert started == finished, f"{point}: a run left open after recover"

        again = app.cli("backup", "create", "--json")
        assert again.returncode == 0, f"{point}: {again.stderr}"
        assert json.loads(again.stdout)["ok"] is True, point
    print(f"\nbackup create: kills at {len(chosen)} of {len(points)} crash points, violations 0")
